//! The node's long-running tasks and whether the node is ready. A task that must run for as
//! long as the node does (the durable writer, the deadline sweep, the registry follower, each
//! listener) is spawned here by name: should it end or panic before shutdown, that is logged,
//! counted in `halyard_task_up{task}` and `halyard_task_failures_total{task}`, and reported by
//! `/readyz`, never silent.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio::task::JoinHandle;

/// Applied entries the store may trail its commit index by before the node says it lags.
pub const MAX_APPLY_LAG: u64 = 10_000;

/// What `/readyz` reports, shared by the supervisor and whoever serves the probe.
pub struct Health {
    /// Critical tasks that ended while the node was not stopping, with why.
    ended: Mutex<BTreeMap<String, String>>,
    /// Set once every listener is bound and every service started.
    serving: AtomicBool,
    stopping: AtomicBool,
    draining: AtomicBool,
    up: IntGaugeVec,
    failures: IntCounterVec,
}

impl Health {
    pub fn new(registry: &Registry) -> Result<Arc<Self>, prometheus::Error> {
        let up = IntGaugeVec::new(
            Opts::new(
                "halyard_task_up",
                "Whether each of the node's critical tasks is running (1) or has ended (0)",
            ),
            &["task"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "halyard_task_failures_total",
                "Critical tasks that ended or panicked while the node was running, by task",
            ),
            &["task"],
        )?;
        registry.register(Box::new(up.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        Ok(Arc::new(Health {
            ended: Mutex::new(BTreeMap::new()),
            serving: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            up,
            failures,
        }))
    }

    /// The node has bound its listeners and started its services.
    pub fn set_serving(&self) {
        self.serving.store(true, Ordering::Release);
    }

    /// Tasks ending from now on are stopping as asked.
    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// The node is leaving the cluster: not ready, so that load balancers stop sending to it.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Why the node is not ready, one reason per line; empty when it is. `store` is the store's
    /// view of the cluster.
    pub fn reasons(&self, store: Option<&halyard_raft::NodeStatus>) -> Vec<String> {
        let mut reasons = Vec::new();
        if !self.serving.load(Ordering::Acquire) {
            reasons.push("the node is starting: not every listener is bound yet".to_owned());
        }
        if self.stopping.load(Ordering::Acquire) {
            reasons.push("the node is shutting down".to_owned());
        } else if self.draining.load(Ordering::Acquire) {
            reasons.push("the node is draining: leaving the cluster".to_owned());
        }
        if let Some(status) = store {
            if status.leader.is_none() {
                reasons.push("the store has no leader".to_owned());
            }
            let lag = status.committed_index.saturating_sub(status.applied_index);
            if lag > MAX_APPLY_LAG {
                reasons.push(format!(
                    "the store lags: {lag} committed entries not yet applied"
                ));
            }
        }
        for (task, why) in self.ended.lock().iter() {
            reasons.push(format!("task {task} ended: {why}"));
        }
        reasons
    }

    fn started(&self, task: &str) {
        self.up.with_label_values(&[task]).set(1);
    }

    fn ended(&self, task: &str, why: String) {
        self.up.with_label_values(&[task]).set(0);
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        tracing::error!(task, reason = %why, "a critical task ended; the node is no longer ready");
        self.failures.with_label_values(&[task]).inc();
        self.ended.lock().insert(task.to_owned(), why);
    }
}

/// Spawns and keeps the node's tasks.
pub struct Supervisor {
    health: Arc<Health>,
    tasks: Vec<JoinHandle<()>>,
}

impl Supervisor {
    pub fn new(health: Arc<Health>) -> Self {
        Supervisor {
            health,
            tasks: Vec::new(),
        }
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Runs `task`, which should run until the node stops; its ending earlier, or its panic,
    /// makes the node unready.
    pub fn spawn_critical<F>(&mut self, name: &str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let monitor = self.spawn_critical_detached(name, task);
        self.tasks.push(monitor);
    }

    /// Runs `task` like [`Supervisor::spawn_critical`], but hands back its handle instead of
    /// keeping it, for a task that stops at a point of the caller's choosing during shutdown
    /// (the durable writer, which must outlive the connections it writes for).
    pub fn spawn_critical_detached<F>(&self, name: &str, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let health = Arc::clone(&self.health);
        let name = name.to_owned();
        health.started(&name);
        let inner = tokio::spawn(task);
        tokio::spawn(async move {
            let why = match inner.await {
                Ok(()) => "it returned".to_owned(),
                Err(e) if e.is_panic() => "it panicked".to_owned(),
                Err(e) => format!("it was cancelled: {e}"),
            };
            health.ended(&name, why);
        })
    }

    /// Runs `task`, whose end matters to nobody but itself (a peer link, say).
    pub fn spawn(&mut self, task: JoinHandle<()>) {
        self.tasks.push(task);
    }

    /// Waits for every task; call once shutdown has been signalled.
    pub async fn join(self) {
        self.health.begin_shutdown();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_ends_early_makes_the_node_unready() {
        let registry = Registry::new();
        let health = Health::new(&registry).unwrap();
        health.set_serving();
        let mut supervisor = Supervisor::new(Arc::clone(&health));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        supervisor.spawn_critical("steady", async move {
            let _ = stopped.await;
        });
        supervisor.spawn_critical("fragile", async { panic!("boom") });
        for _ in 0..100 {
            if !health.reasons(None).is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            health.reasons(None),
            vec!["task fragile ended: it panicked"]
        );
        let text = crate::metrics::render(&registry);
        assert!(
            text.contains("halyard_task_up{task=\"fragile\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("halyard_task_up{task=\"steady\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("halyard_task_failures_total{task=\"fragile\"} 1"),
            "{text}"
        );
        let _ = stop.send(());
        supervisor.join().await;
        // Ending while stopping is what was asked: not a failure.
        let text = crate::metrics::render(&registry);
        assert!(
            !text.contains("halyard_task_failures_total{task=\"steady\"}"),
            "{text}"
        );
    }

    #[test]
    fn a_store_without_a_leader_or_far_behind_is_not_ready() {
        let health = Health::new(&Registry::new()).unwrap();
        assert_eq!(
            health.reasons(None),
            vec!["the node is starting: not every listener is bound yet".to_owned()]
        );
        health.set_serving();
        let mut status = halyard_raft::NodeStatus {
            id: 1,
            role: "Follower".into(),
            term: 2,
            leader: None,
            last_log_index: 50_000,
            committed_index: 50_000,
            applied_index: 30_000,
            revision: 1,
            compacted_revision: 0,
            members: Vec::new(),
        };
        assert_eq!(
            health.reasons(Some(&status)),
            vec![
                "the store has no leader".to_owned(),
                "the store lags: 20000 committed entries not yet applied".to_owned()
            ]
        );
        status.leader = Some(1);
        status.applied_index = 49_999;
        assert!(health.reasons(Some(&status)).is_empty());
    }
}
