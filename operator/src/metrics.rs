//! `halyard_operator_*` Prometheus metrics: reconcile rounds, the steps taken and where each
//! cluster waits.

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::controller::step_name;
use crate::plan::Action;
use crate::resources::Names;

#[derive(Clone)]
pub struct Metrics {
    reconciles: IntCounterVec,
    reconcile_seconds: HistogramVec,
    steps: IntCounterVec,
    waiting: IntGaugeVec,
}

impl Metrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Metrics {
            reconciles: IntCounterVec::new(
                Opts::new(
                    "halyard_operator_reconciles_total",
                    "Reconcile rounds, by cluster and outcome (ok, error)",
                ),
                &["namespace", "cluster", "outcome"],
            )?,
            reconcile_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "halyard_operator_reconcile_seconds",
                    "Time a reconcile round takes, node calls included",
                )
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                &["namespace", "cluster"],
            )?,
            steps: IntCounterVec::new(
                Opts::new(
                    "halyard_operator_steps_total",
                    "Steps the planner chose, by cluster and step (Scale, Promote, Drain, ...)",
                ),
                &["namespace", "cluster", "step"],
            )?,
            waiting: IntGaugeVec::new(
                Opts::new(
                    "halyard_operator_cluster_waiting",
                    "1 while a cluster waits on the planner's condition (the reason label), else 0",
                ),
                &["namespace", "cluster", "reason"],
            )?,
        };
        registry.register(Box::new(metrics.reconciles.clone()))?;
        registry.register(Box::new(metrics.reconcile_seconds.clone()))?;
        registry.register(Box::new(metrics.steps.clone()))?;
        registry.register(Box::new(metrics.waiting.clone()))?;
        Ok(metrics)
    }

    pub fn reconciled(&self, names: &Names, took: Duration, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.reconciles
            .with_label_values(&[&names.namespace, &names.cluster, outcome])
            .inc();
        self.reconcile_seconds
            .with_label_values(&[&names.namespace, &names.cluster])
            .observe(took.as_secs_f64());
    }

    pub fn planned(&self, names: &Names, action: &Action) {
        self.steps
            .with_label_values(&[&names.namespace, &names.cluster, step_name(action)])
            .inc();
        let waiting_on = match action {
            Action::Wait(wait) => Some(crate::controller::wait_reason(wait).0),
            _ => None,
        };
        for reason in crate::controller::WAIT_REASONS {
            self.waiting
                .with_label_values(&[&names.namespace, &names.cluster, reason])
                .set(i64::from(waiting_on == Some(reason)));
        }
    }

    /// Drops a deleted cluster's series.
    pub fn forget(&self, names: &Names) {
        for outcome in ["ok", "error"] {
            let _ =
                self.reconciles
                    .remove_label_values(&[&names.namespace, &names.cluster, outcome]);
        }
        let _ = self
            .reconcile_seconds
            .remove_label_values(&[&names.namespace, &names.cluster]);
        for reason in crate::controller::WAIT_REASONS {
            let _ = self
                .waiting
                .remove_label_values(&[&names.namespace, &names.cluster, reason]);
        }
    }
}
