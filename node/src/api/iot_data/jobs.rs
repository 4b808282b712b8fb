//! `iot-jobs-data`: the device's four jobs operations over HTTPS, signed (SigV4 with the
//! cluster's keys) or as a device (its certificate or authorizer, within its policy:
//! `iot:GetPendingJobExecutions`, `iot:StartNextPendingJobExecution`,
//! `iot:DescribeJobExecution`, `iot:UpdateJobExecution` on the thing). Unlike MQTT, the job
//! document is a string here and `includeJobDocument` defaults to false.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{ApiResult, Caller, DataPlane};
use crate::api::error::AwsError;
use crate::api::request::ApiRequest;
use crate::auth::permissions::Action;
use crate::services::jobs::device::ForDevice;
use crate::services::jobs::error::JobsError;
use crate::services::jobs::execution::Update;
use crate::services::jobs::model::{ExecutionRecord, ExecutionStatus, check_id};
use crate::services::jobs::notify::pending_lists;

/// A refusal in iot-jobs-data's words, which differ from the control plane's: a version
/// mismatch is an InvalidStateTransitionException (the model has no version conflict), a
/// throttled request a 429.
fn refused(e: JobsError) -> AwsError {
    match e {
        JobsError::VersionMismatch { message, .. } => {
            AwsError::with_status(409, "InvalidStateTransitionException", message)
        }
        JobsError::LimitExceeded(message) => {
            AwsError::with_status(429, "ThrottlingException", message)
        }
        other => AwsError::from(other),
    }
}

fn seconds(ms: u64) -> u64 {
    ms / 1000
}

/// An execution as `iot-jobs-data` answers it.
fn execution_json(e: &ExecutionRecord, document: Option<&str>) -> Value {
    let mut answer = json!({
        "jobId": e.job_id,
        "thingName": e.thing_name,
        "status": e.status.name(),
        "statusDetails": e.status_details,
        "queuedAt": seconds(e.queued_at_ms),
        "lastUpdatedAt": seconds(e.last_updated_at_ms),
        "versionNumber": e.version_number,
        "executionNumber": e.execution_number,
    });
    if let Some(started) = e.started_at_ms {
        answer["startedAt"] = json!(seconds(started));
    }
    if let Some(at) = e.timeout_at_ms
        && !e.status.is_terminal()
    {
        let now = crate::clock::epoch_millis();
        answer["approximateSecondsBeforeTimedOut"] = json!(at.saturating_sub(now) / 1000);
    }
    if let Some(document) = document {
        answer["jobDocument"] = json!(document);
    }
    answer
}

fn check_thing(thing: &str) -> Result<(), AwsError> {
    let valid = (1..=128).contains(&thing.len())
        && thing
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":_-".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(AwsError::invalid_request(format!(
            "Thing name '{thing}' must match [a-zA-Z0-9:_-]+ and be 1 to 128 characters long"
        )))
    }
}

impl DataPlane {
    fn job_caller(&self, caller: &Caller, action: Action, thing: &str) -> Result<(), AwsError> {
        check_thing(thing)?;
        if caller.allows(action, thing) {
            Ok(())
        } else {
            Err(AwsError::forbidden())
        }
    }

    pub(super) async fn get_pending_job_executions(
        &self,
        thing: &str,
        caller: &Caller,
    ) -> ApiResult {
        self.job_caller(caller, Action::GetPendingJobExecutions, thing)?;
        let pending = self.jobs.pending_executions(thing).await.map_err(refused)?;
        let refs: Vec<&ExecutionRecord> = pending.iter().collect();
        let (in_progress, queued) = pending_lists(&refs);
        Ok(json!({ "inProgressJobs": in_progress, "queuedJobs": queued }))
    }

    pub(super) async fn start_next_pending_job_execution(
        &self,
        thing: &str,
        request: &ApiRequest,
        caller: &Caller,
    ) -> ApiResult {
        #[derive(serde::Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct Body {
            status_details: Option<BTreeMap<String, String>>,
            step_timeout_in_minutes: Option<i64>,
        }
        self.job_caller(caller, Action::StartNextPendingJobExecution, thing)?;
        let body: Body = request.json()?;
        let started = self
            .jobs
            .start_next(thing, body.status_details, body.step_timeout_in_minutes)
            .await
            .map_err(refused)?;
        Ok(match started {
            Some(ForDevice { execution, job }) => {
                json!({ "execution": execution_json(&execution, Some(&self.jobs.device_document(&job))) })
            }
            None => json!({}),
        })
    }

    pub(super) async fn describe_job_execution(
        &self,
        thing: &str,
        job: &str,
        request: &ApiRequest,
        caller: &Caller,
    ) -> ApiResult {
        self.job_caller(caller, Action::DescribeJobExecution, thing)?;
        let which = (job != "$next").then_some(job);
        if let Some(id) = which {
            check_id("jobId", id).map_err(refused)?;
        }
        let include_document = request.query_flag("includeJobDocument")?;
        let number = request.query_u64("executionNumber")?;
        let ForDevice { execution, job } = self
            .jobs
            .describe_for_device(thing, which, number)
            .await
            .map_err(refused)?;
        let document = include_document.then(|| self.jobs.device_document(&job));
        Ok(json!({ "execution": execution_json(&execution, document.as_deref()) }))
    }

    pub(super) async fn update_job_execution(
        &self,
        thing: &str,
        job: &str,
        request: &ApiRequest,
        caller: &Caller,
    ) -> ApiResult {
        #[derive(serde::Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct Body {
            status: Option<String>,
            status_details: Option<BTreeMap<String, String>>,
            step_timeout_in_minutes: Option<i64>,
            expected_version: Option<u64>,
            #[serde(default)]
            include_job_execution_state: bool,
            #[serde(default)]
            include_job_document: bool,
            execution_number: Option<u64>,
        }
        self.job_caller(caller, Action::UpdateJobExecution, thing)?;
        check_id("jobId", job).map_err(refused)?;
        let body: Body = request.json()?;
        let status = match body.status.as_deref() {
            None => return Err(AwsError::invalid_request("status is required")),
            Some(s) => ExecutionStatus::parse(s).ok_or_else(|| {
                AwsError::validation("status", s, "Member must be a job execution status")
            })?,
        };
        let update = Update {
            status: Some(status),
            status_details: body.status_details,
            expected_version: body.expected_version,
            execution_number: body.execution_number,
            step_timeout_in_minutes: body.step_timeout_in_minutes,
        };
        let ForDevice { execution, job } = self
            .jobs
            .update_for_device(thing, job, &update)
            .await
            .map_err(refused)?;
        let mut answer = json!({});
        if body.include_job_execution_state {
            answer["executionState"] = json!({
                "status": execution.status.name(),
                "statusDetails": execution.status_details,
                "versionNumber": execution.version_number,
            });
        }
        if body.include_job_document {
            answer["jobDocument"] = json!(self.jobs.device_document(&job));
        }
        Ok(answer)
    }
}
