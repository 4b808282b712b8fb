//! What devices and applications are told of executions and jobs: `notify` when an execution
//! is queued or ends (not when it starts, as AWS), `notify-next` when a thing's next execution
//! changes, and the job and job-execution events when the account enabled them.
//!
//! The node that writes a change publishes its notifications, through the broker, which
//! forwards them to the subscribers' nodes.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::model::{ExecutionRecord, ExecutionStatus, JobRecord, MAX_LISTED};
use super::store::JobStore;
use crate::broker::Broker;
use crate::clock::{epoch_millis, epoch_seconds};
use crate::services::arn::{Arns, Kind};

pub const JOB_EVENTS: &str = "JOB";
pub const EXECUTION_EVENTS: &str = "JOB_EXECUTION";

/// An execution's change: as it was (none: it is new) and as it is (none: it was deleted).
pub struct Change<'a> {
    pub before: Option<&'a ExecutionRecord>,
    pub after: Option<&'a ExecutionRecord>,
}

impl Change<'_> {
    fn thing(&self) -> Option<&str> {
        self.after.or(self.before).map(|e| e.thing_name.as_str())
    }

    fn job(&self) -> Option<&str> {
        self.after.or(self.before).map(|e| e.job_id.as_str())
    }

    /// Queued (new, or again after a failure) or ended: what `notify` reports.
    fn changes_the_list(&self) -> bool {
        let pending_before = self.before.is_some_and(|e| !e.status.is_terminal());
        let queued_now = self
            .after
            .is_some_and(|e| e.status == ExecutionStatus::Queued)
            && self.before.is_none_or(|b| {
                b.status != ExecutionStatus::Queued
                    || b.execution_number != self.after.map_or(0, |a| a.execution_number)
            });
        let ended = pending_before && self.after.is_none_or(|e| e.status.is_terminal());
        queued_now || ended
    }
}

/// Seconds, as the device-side payloads count time.
pub fn seconds(ms: u64) -> u64 {
    ms / 1000
}

/// An execution's summary as `get` and `notify` list it.
pub fn summary_json(e: &ExecutionRecord) -> Value {
    let mut summary = json!({
        "jobId": e.job_id,
        "queuedAt": seconds(e.queued_at_ms),
        "lastUpdatedAt": seconds(e.last_updated_at_ms),
        "versionNumber": e.version_number,
        "executionNumber": e.execution_number,
    });
    if let Some(started) = e.started_at_ms {
        summary["startedAt"] = json!(seconds(started));
    }
    summary
}

/// A thing's pending executions, in the order its device takes them.
pub fn pending(executions: &[ExecutionRecord]) -> Vec<&ExecutionRecord> {
    let mut pending: Vec<&ExecutionRecord> = executions
        .iter()
        .filter(|e| !e.status.is_terminal())
        .collect();
    pending.sort_by(|a, b| a.queue_order().cmp(&b.queue_order()));
    pending
}

/// `{"IN_PROGRESS": [...], "QUEUED": [...]}` of a thing's pending executions, at most ten,
/// empty lists left out.
pub fn pending_lists(pending: &[&ExecutionRecord]) -> (Vec<Value>, Vec<Value>) {
    let mut in_progress = Vec::new();
    let mut queued = Vec::new();
    for e in pending.iter().take(MAX_LISTED) {
        match e.status {
            ExecutionStatus::InProgress => in_progress.push(summary_json(e)),
            _ => queued.push(summary_json(e)),
        }
    }
    (in_progress, queued)
}

fn next_id(pending: &[&ExecutionRecord]) -> Option<(String, u64)> {
    pending
        .first()
        .map(|e| (e.job_id.clone(), e.execution_number))
}

/// A job document as devices receive it over MQTT: the JSON object it holds.
pub fn document_json(document: &str) -> Value {
    serde_json::from_str(document).unwrap_or_else(|_| Value::String(document.to_owned()))
}

/// An execution as the device's MQTT answers and `notify-next` carry it.
pub fn execution_json(e: &ExecutionRecord, document: Option<Value>, now_ms: u64) -> Value {
    let mut execution = json!({
        "jobId": e.job_id,
        "thingName": e.thing_name,
        "status": e.status.name(),
        "queuedAt": seconds(e.queued_at_ms),
        "lastUpdatedAt": seconds(e.last_updated_at_ms),
        "versionNumber": e.version_number,
        "executionNumber": e.execution_number,
    });
    if !e.status_details.is_empty() {
        execution["statusDetails"] = json!(e.status_details);
    }
    if let Some(started) = e.started_at_ms {
        execution["startedAt"] = json!(seconds(started));
    }
    if let Some(document) = document {
        execution["jobDocument"] = document;
    }
    if let Some(at) = e.timeout_at_ms
        && !e.status.is_terminal()
    {
        execution["approximateSecondsBeforeTimedOut"] = json!(at.saturating_sub(now_ms) / 1000);
    }
    execution
}

#[derive(Clone)]
pub struct Notifier {
    broker: Broker,
    store: JobStore,
    arns: Arns,
    presigner: Option<super::presign::Presigner>,
}

impl Notifier {
    pub fn new(
        broker: Broker,
        store: JobStore,
        arns: Arns,
        presigner: Option<super::presign::Presigner>,
    ) -> Self {
        Self {
            broker,
            store,
            arns,
            presigner,
        }
    }

    async fn enabled(&self, kind: &str) -> bool {
        match self.store.event_configurations().await {
            Ok(config) => config.get(kind).copied().unwrap_or(false),
            Err(e) => {
                tracing::debug!(error = %e, "event configuration unreadable");
                false
            }
        }
    }

    /// Publishes what `change` means to its thing's device and to event subscribers;
    /// `others` are the thing's other executions as read with it.
    pub async fn execution_changed(&self, others: &[ExecutionRecord], change: Change<'_>) {
        let (Some(thing), Some(job)) = (change.thing(), change.job()) else {
            return;
        };
        let mut before: Vec<ExecutionRecord> =
            others.iter().filter(|e| e.job_id != job).cloned().collect();
        let mut after = before.clone();
        before.extend(change.before.cloned());
        after.extend(change.after.cloned());
        let pending_before = pending(&before);
        let pending_after = pending(&after);
        let timestamp = epoch_seconds();
        if change.changes_the_list() {
            let topic = format!("$aws/things/{thing}/jobs/notify");
            if self.broker.wants(&topic) {
                let (in_progress, queued) = pending_lists(&pending_after);
                let mut jobs = Map::new();
                if !in_progress.is_empty() {
                    jobs.insert("IN_PROGRESS".into(), Value::Array(in_progress));
                }
                if !queued.is_empty() {
                    jobs.insert("QUEUED".into(), Value::Array(queued));
                }
                let payload = json!({ "timestamp": timestamp, "jobs": jobs });
                self.broker.publish_event(topic, payload.to_string());
            }
        }
        if next_id(&pending_before) != next_id(&pending_after) {
            let topic = format!("$aws/things/{thing}/jobs/notify-next");
            if self.broker.wants(&topic) {
                let mut payload = json!({ "timestamp": timestamp });
                if let Some(next) = pending_after.first() {
                    let document = self.document_of(&next.job_id).await;
                    payload["execution"] = execution_json(next, document, epoch_millis());
                }
                self.broker.publish_event(topic, payload.to_string());
            }
        }
        self.execution_event(change).await;
    }

    async fn document_of(&self, job: &str) -> Option<Value> {
        match self.store.job(job, halyard_raft::Consistency::Local).await {
            Ok(Some(read)) => {
                let job = read.value;
                let document = super::presign::substitute(
                    &job.document,
                    job.presigned_url_config.as_ref(),
                    self.presigner.as_ref(),
                    crate::clock::epoch_seconds_signed(),
                );
                Some(document_json(&document))
            }
            _ => None,
        }
    }

    async fn execution_event(&self, change: Change<'_>) {
        let ended = match (change.before, change.after) {
            (Some(b), Some(a)) if !b.status.is_terminal() && a.status.is_terminal() => {
                a.status.event_name().map(|name| (name, a))
            }
            (Some(b), None) => Some(("deleted", b)),
            _ => None,
        };
        let Some((name, execution)) = ended else {
            return;
        };
        let topic = format!("$aws/events/jobExecution/{}/{name}", execution.job_id);
        if !self.broker.wants(&topic) || !self.enabled(EXECUTION_EVENTS).await {
            return;
        }
        let operation = if name == "deleted" { "deleted" } else { name };
        let payload = json!({
            "eventType": "JOB_EXECUTION",
            "eventId": event_id(),
            "timestamp": epoch_seconds(),
            "operation": operation,
            "jobId": execution.job_id,
            "thingArn": self.arns.of(Kind::Thing, &execution.thing_name),
            "status": execution.status.name(),
            "statusDetails": execution.status_details,
        });
        self.broker.publish_event(topic, payload.to_string());
    }

    /// A job event: `completed`, `canceled`, `deleted`, `cancellation_in_progress` or
    /// `deletion_in_progress`.
    pub async fn job_event(
        &self,
        job: &JobRecord,
        name: &str,
        process_details: Option<&BTreeMap<&'static str, u64>>,
    ) {
        let topic = format!("$aws/events/job/{}/{name}", job.job_id);
        if !self.broker.wants(&topic) || !self.enabled(JOB_EVENTS).await {
            return;
        }
        let mut payload = json!({
            "eventType": "JOB",
            "eventId": event_id(),
            "timestamp": epoch_seconds(),
            "operation": name,
            "jobId": job.job_id,
            "status": job.status.name(),
            "targetSelection": match job.target_selection {
                super::model::TargetSelection::Continuous => "CONTINUOUS",
                super::model::TargetSelection::Snapshot => "SNAPSHOT",
            },
            "targets": job.targets,
            "createdAt": job.created_at_ms,
            "lastUpdatedAt": job.last_updated_at_ms,
        });
        if let Some(description) = &job.description {
            payload["description"] = json!(description);
        }
        if let Some(completed) = job.completed_at_ms {
            payload["completedAt"] = json!(completed);
        }
        if let Some(comment) = &job.comment {
            payload["comment"] = json!(comment);
        }
        if let Some(details) = process_details {
            payload["jobProcessDetails"] = json!(details);
        }
        self.broker.publish_event(topic, payload.to_string());
    }
}

/// A unique id for an event.
fn event_id() -> String {
    let bytes: [u8; 16] = rand::random();
    let mut id = String::with_capacity(32);
    crate::store::keys::push_hex(&mut id, &bytes);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(job: &str, status: ExecutionStatus, queued_at: u64) -> ExecutionRecord {
        let mut e = ExecutionRecord::queued(job, "t", 1, queued_at);
        e.status = status;
        e
    }

    #[test]
    fn in_progress_executions_come_first_then_queue_order() {
        let executions = vec![
            exec("c", ExecutionStatus::Queued, 3),
            exec("a", ExecutionStatus::Queued, 1),
            exec("done", ExecutionStatus::Succeeded, 0),
            exec("b", ExecutionStatus::InProgress, 2),
        ];
        let order: Vec<&str> = pending(&executions)
            .iter()
            .map(|e| e.job_id.as_str())
            .collect();
        assert_eq!(order, ["b", "a", "c"]);
    }

    #[test]
    fn notify_follows_queueing_and_ending_not_starting() {
        let queued = exec("a", ExecutionStatus::Queued, 1);
        let started = exec("a", ExecutionStatus::InProgress, 1);
        let done = exec("a", ExecutionStatus::Succeeded, 1);
        let new = Change {
            before: None,
            after: Some(&queued),
        };
        assert!(new.changes_the_list());
        let start = Change {
            before: Some(&queued),
            after: Some(&started),
        };
        assert!(!start.changes_the_list());
        let end = Change {
            before: Some(&started),
            after: Some(&done),
        };
        assert!(end.changes_the_list());
        let deleted = Change {
            before: Some(&started),
            after: None,
        };
        assert!(deleted.changes_the_list());
    }
}
