//! AWS IoT Jobs: jobs sent to things and thing groups, and each thing's execution of them.
//!
//! - `model`: the records and the checks of a job's configuration;
//! - `execution`: the execution state machine (pure);
//! - `store`: the records in the replicated store, every change one transaction;
//! - `control`: the control plane's operations (CreateJob ... DeleteJobExecution, templates);
//! - `device`: the device's four operations, over MQTT (`topics`) and HTTP (`iot-jobs-data`);
//! - `notify`: `notify`, `notify-next` and the job events, from whichever node made a change;
//! - `presign`: presigned S3 URLs in job documents;
//! - `schedule`: maintenance windows (AWS's cron expressions);
//! - `driver`: what no device asks for (rollout at its rate, timeouts, retries, aborts,
//!   completion, cancellation and deletion of executions, schedules), run by the store's leader
//!   and fenced by the records' revisions, so that a second driver during a leader change
//!   applies nothing twice.

pub mod control;
pub mod device;
pub mod driver;
pub mod error;
pub mod execution;
pub mod model;
pub mod notify;
pub mod presign;
pub mod schedule;
pub mod store;
pub mod topics;

use std::sync::Arc;

use halyard_raft::Store;

use self::error::JobsError;
use self::notify::Notifier;
use self::store::JobStore;
use crate::broker::{Broker, TopicService};
use crate::metrics::JobsMetrics;
use crate::services::arn::{Arns, Kind};
use crate::supervisor::Supervisor;

pub type Result<T, E = JobsError> = std::result::Result<T, E>;

pub(crate) struct Inner {
    store: JobStore,
    broker: Broker,
    arns: Arns,
    notifier: Notifier,
    metrics: JobsMetrics,
    /// Wakes this node's driver when an operation here left it work.
    driver_wake: tokio::sync::Notify,
    /// Becomes true when the node stops.
    shutdown: tokio::sync::watch::Receiver<bool>,
    presigner: Option<presign::Presigner>,
}

/// The jobs service of one node; cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

impl Jobs {
    pub fn build(
        context: &crate::services::ServiceContext<'_>,
        arns: Arns,
        presigner: Option<presign::Presigner>,
    ) -> Result<Self, prometheus::Error> {
        Ok(Self::new(
            context.store.clone(),
            context.broker.clone(),
            arns,
            JobsMetrics::new(context.registry)?,
            context.shutdown.clone(),
            presigner,
        ))
    }

    pub fn new(
        store: Store,
        broker: Broker,
        arns: Arns,
        metrics: JobsMetrics,
        shutdown: tokio::sync::watch::Receiver<bool>,
        presigner: Option<presign::Presigner>,
    ) -> Self {
        let store = JobStore::new(store);
        let notifier = Notifier::new(
            broker.clone(),
            store.clone(),
            arns.clone(),
            presigner.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                store,
                broker,
                arns,
                notifier,
                metrics,
                driver_wake: tokio::sync::Notify::new(),
                shutdown,
                presigner,
            }),
        }
    }

    pub fn job_arn(&self, id: &str) -> String {
        self.inner.arns.of(Kind::Job, id)
    }

    pub fn thing_arn(&self, thing: &str) -> String {
        self.inner.arns.of(Kind::Thing, thing)
    }

    pub fn arns(&self) -> &Arns {
        &self.inner.arns
    }

    /// The job's document as its devices are given it: presigned URLs made now.
    pub fn device_document(&self, job: &model::JobRecord) -> String {
        presign::substitute(
            &job.document,
            job.presigned_url_config.as_ref(),
            self.inner.presigner.as_ref(),
            crate::clock::epoch_seconds_signed(),
        )
        .into_owned()
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }
}

impl crate::services::Service for Jobs {
    fn name(&self) -> &'static str {
        "jobs"
    }

    fn topics(self: Arc<Self>) -> Option<Arc<dyn TopicService>> {
        Some(Arc::new(topics::JobTopics::new((*self).clone())))
    }

    fn start(self: Arc<Self>, tasks: &mut Supervisor) {
        let jobs = (*self).clone();
        tasks.spawn_critical("jobs-driver", async move {
            driver::run(jobs).await;
        });
    }
}

/// Which of a thing's executions an operation is on.
#[derive(Debug, Clone, Copy)]
pub enum Which<'a> {
    Job(&'a str),
    /// The next pending one: in progress first, then by when queued.
    Next,
}

/// An execution changed by [`Inner::change_execution`]: as written, with its job.
pub struct Changed {
    pub before: model::ExecutionRecord,
    pub after: model::ExecutionRecord,
    pub job: model::JobRecord,
}

/// How often a change is tried again when another writer got to the execution first.
const ATTEMPTS: usize = 16;

impl Inner {
    /// Reads `thing`'s executions, lets `change` make a new version of the one `which`
    /// names (`Ok(None)`: nothing to change, answered with the execution as it is), writes
    /// it on the revision read, and publishes what the change means; again from a fresh read
    /// when another writer changed it first.
    pub(crate) async fn change_execution<F>(
        &self,
        thing: &str,
        which: Which<'_>,
        mut change: F,
    ) -> Result<Option<Changed>>
    where
        F: FnMut(
            &model::ExecutionRecord,
            &model::JobRecord,
        ) -> Result<Option<model::ExecutionRecord>>,
    {
        for attempt in 0..ATTEMPTS {
            let consistency = if attempt == 0 {
                halyard_raft::Consistency::Local
            } else {
                halyard_raft::Consistency::Linearizable
            };
            let executions = self.store.executions_of_thing(thing, consistency).await?;
            let found = match which {
                Which::Job(id) => executions.iter().find(|e| e.value.job_id == id),
                Which::Next => {
                    let values: Vec<model::ExecutionRecord> =
                        executions.iter().map(|e| e.value.clone()).collect();
                    let next = notify::pending(&values).first().map(|e| e.job_id.clone());
                    next.and_then(|id| executions.iter().find(|e| e.value.job_id == id))
                }
            };
            let Some(current) = found else {
                if attempt == 0 {
                    // This node's copy may be behind a write made elsewhere.
                    continue;
                }
                return Ok(None);
            };
            let Some(job) = self
                .store
                .job(&current.value.job_id, halyard_raft::Consistency::Local)
                .await?
            else {
                return Err(error::JobsError::NotFound(format!(
                    "Job {} was not found",
                    current.value.job_id
                )));
            };
            let new = match change(&current.value, &job.value) {
                Ok(Some(new)) => new,
                Ok(None) => {
                    return Ok(Some(Changed {
                        before: current.value.clone(),
                        after: current.value.clone(),
                        job: job.value,
                    }));
                }
                // A refusal read from a copy that may be stale is read again.
                Err(e) if attempt == 0 => {
                    tracing::trace!(error = %e, "jobs: refusal from the local copy, reading again");
                    continue;
                }
                Err(e) => return Err(e),
            };
            if self
                .store
                .write_execution(Some(current), &new, Vec::new())
                .await?
            {
                self.metrics.transition(new.status.name());
                let others: Vec<model::ExecutionRecord> =
                    executions.iter().map(|e| e.value.clone()).collect();
                self.notifier
                    .execution_changed(
                        &others,
                        notify::Change {
                            before: Some(&current.value),
                            after: Some(&new),
                        },
                    )
                    .await;
                if new.status.is_terminal() {
                    self.driver_wake.notify_one();
                }
                return Ok(Some(Changed {
                    before: current.value.clone(),
                    after: new,
                    job: job.value,
                }));
            }
        }
        Err(error::JobsError::Unavailable(
            "The job execution kept changing; try again".into(),
        ))
    }
}
