//! The execution state machine, pure: what a device's update, a timer, a retry or a
//! cancellation makes of an execution, or why it may not.
//!
//! QUEUED and IN_PROGRESS are the only states that change; SUCCEEDED, FAILED and REJECTED are
//! the device's to reach, TIMED_OUT, CANCELED and REMOVED the service's. `versionNumber` is 1
//! when queued and grows by one with every change.

use std::collections::BTreeMap;

use super::error::JobsError;
use super::model::{ExecutionRecord, ExecutionState, ExecutionStatus, JobRecord};

const MINUTE_MS: u64 = 60_000;
/// The longest step timeout, a week.
const MAX_STEP_MINUTES: i64 = 10_080;

/// A device's UpdateJobExecution.
#[derive(Debug, Clone, Default)]
pub struct Update {
    pub status: Option<ExecutionStatus>,
    pub status_details: Option<BTreeMap<String, String>>,
    pub expected_version: Option<u64>,
    pub execution_number: Option<u64>,
    pub step_timeout_in_minutes: Option<i64>,
}

/// Checks a step timeout: 1 to 10080 minutes, or -1 to cancel the step timer.
pub fn check_step_timeout(minutes: Option<i64>) -> Result<(), JobsError> {
    match minutes {
        None | Some(-1) => Ok(()),
        Some(m) if (1..=MAX_STEP_MINUTES).contains(&m) => Ok(()),
        Some(m) => Err(JobsError::invalid(format!(
            "stepTimeoutInMinutes {m} is not valid: it must be between 1 and {MAX_STEP_MINUTES}, or -1"
        ))),
    }
}

/// When `execution`, being (or going) in progress, times out after a step timeout of
/// `step_minutes` set at `now_ms`: the step's end, capped by the in-progress deadline.
fn timeout_after(
    execution: &ExecutionRecord,
    step_minutes: Option<i64>,
    now_ms: u64,
) -> Option<u64> {
    let overall = execution.in_progress_deadline_ms;
    let step = match step_minutes {
        // Unchanged: the step timer set before, if any, goes on.
        None => execution.timeout_at_ms,
        Some(-1) => None,
        Some(m) => Some(now_ms + u64::try_from(m).unwrap_or(0) * MINUTE_MS),
    };
    match (step, overall) {
        (Some(step), Some(overall)) => Some(step.min(overall)),
        (step, overall) => step.or(overall),
    }
}

/// Starts `execution` (QUEUED) on its device's request: IN_PROGRESS, with its in-progress
/// deadline from the job's timeout and the step timer asked for.
pub fn start(
    execution: &ExecutionRecord,
    job: &JobRecord,
    status_details: Option<BTreeMap<String, String>>,
    step_minutes: Option<i64>,
    now_ms: u64,
) -> ExecutionRecord {
    let mut next = execution.clone();
    next.status = ExecutionStatus::InProgress;
    next.started_at_ms = Some(now_ms);
    next.in_progress_deadline_ms = job.in_progress_timeout_ms().map(|t| now_ms + t);
    next.timeout_at_ms = None;
    next.timeout_at_ms = timeout_after(&next, step_minutes, now_ms);
    if let Some(details) = status_details {
        next.status_details = details;
    }
    next.version_number += 1;
    next.last_updated_at_ms = now_ms;
    next
}

/// Applies a device's update, or says why it may not be applied.
pub fn update(
    execution: &ExecutionRecord,
    job: &JobRecord,
    update: &Update,
    now_ms: u64,
) -> Result<ExecutionRecord, JobsError> {
    let state = || Some(ExecutionState::from(execution));
    if let Some(number) = update.execution_number
        && number != execution.execution_number
    {
        return Err(JobsError::NotFound(format!(
            "Job execution number {number} of job {} on thing {} was not found",
            execution.job_id, execution.thing_name
        )));
    }
    if execution.status.is_terminal() {
        return Err(JobsError::transition(
            format!(
                "Job execution of job {} on thing {} is in the terminal state {} and cannot be updated",
                execution.job_id,
                execution.thing_name,
                execution.status.name()
            ),
            state(),
        ));
    }
    if let Some(expected) = update.expected_version
        && expected != execution.version_number
    {
        return Err(JobsError::VersionMismatch {
            message: format!(
                "The expected version {expected} does not match the job execution's version {}",
                execution.version_number
            ),
            state: state(),
        });
    }
    let status = update
        .status
        .ok_or_else(|| JobsError::invalid("status is required"))?;
    if !matches!(
        status,
        ExecutionStatus::InProgress
            | ExecutionStatus::Succeeded
            | ExecutionStatus::Failed
            | ExecutionStatus::Rejected
    ) {
        return Err(JobsError::invalid(format!(
            "A device may set the status IN_PROGRESS, SUCCEEDED, FAILED or REJECTED, not {}",
            status.name()
        )));
    }
    if let Some(details) = &update.status_details {
        super::model::check_status_details(details)?;
    }
    check_step_timeout(update.step_timeout_in_minutes)?;
    if status == ExecutionStatus::InProgress && execution.status == ExecutionStatus::Queued {
        return Ok(start(
            execution,
            job,
            update.status_details.clone(),
            update.step_timeout_in_minutes,
            now_ms,
        ));
    }
    let mut next = execution.clone();
    next.status = status;
    if let Some(details) = &update.status_details {
        next.status_details = details.clone();
    }
    next.timeout_at_ms = if status.is_terminal() {
        None
    } else {
        timeout_after(execution, update.step_timeout_in_minutes, now_ms)
    };
    next.version_number += 1;
    next.last_updated_at_ms = now_ms;
    Ok(next)
}

/// The execution timed out, if its deadline has passed and it is not terminal.
pub fn time_out(execution: &ExecutionRecord, now_ms: u64) -> Option<ExecutionRecord> {
    let due = execution.timeout_at_ms.is_some_and(|at| at <= now_ms);
    if !due || execution.status.is_terminal() {
        return None;
    }
    Some(finish(execution, ExecutionStatus::TimedOut, now_ms))
}

/// `execution` ended by the service in `status` (TIMED_OUT, CANCELED, REMOVED).
pub fn finish(
    execution: &ExecutionRecord,
    status: ExecutionStatus,
    now_ms: u64,
) -> ExecutionRecord {
    let mut next = execution.clone();
    next.status = status;
    next.timeout_at_ms = None;
    next.version_number += 1;
    next.last_updated_at_ms = now_ms;
    next
}

/// The execution queued again, if it failed or timed out and its job allows another try.
pub fn retry(execution: &ExecutionRecord, job: &JobRecord, now_ms: u64) -> Option<ExecutionRecord> {
    if !matches!(
        execution.status,
        ExecutionStatus::Failed | ExecutionStatus::TimedOut
    ) {
        return None;
    }
    let allowed = job
        .job_executions_retry_config
        .as_ref()
        .is_some_and(|c| c.allows_retry(execution.status, execution));
    if !allowed {
        return None;
    }
    let mut next = ExecutionRecord::queued(
        &execution.job_id,
        &execution.thing_name,
        execution.execution_number + 1,
        now_ms,
    );
    next.retry_attempt = execution.retry_attempt + 1;
    next.retries_failed = execution.retries_failed;
    next.retries_timed_out = execution.retries_timed_out;
    match execution.status {
        ExecutionStatus::Failed => next.retries_failed += 1,
        _ => next.retries_timed_out += 1,
    }
    Some(next)
}

/// Whether an execution in `status` is done for good: terminal, and not to be retried.
pub fn is_final(execution: &ExecutionRecord, job: &JobRecord) -> bool {
    execution.status.is_terminal() && retry(execution, job, 0).is_none()
}

/// CancelJobExecution: a queued execution, or with `force` one in progress, is CANCELED.
pub fn cancel(
    execution: &ExecutionRecord,
    force: bool,
    expected_version: Option<u64>,
    status_details: Option<BTreeMap<String, String>>,
    now_ms: u64,
) -> Result<ExecutionRecord, JobsError> {
    let state = || Some(ExecutionState::from(execution));
    if execution.status.is_terminal() {
        return Err(JobsError::transition(
            format!(
                "Job execution of job {} on thing {} is already {}",
                execution.job_id,
                execution.thing_name,
                execution.status.name()
            ),
            state(),
        ));
    }
    if execution.status == ExecutionStatus::InProgress && !force {
        return Err(JobsError::transition(
            format!(
                "Job execution of job {} on thing {} is IN_PROGRESS; cancel it with force",
                execution.job_id, execution.thing_name
            ),
            state(),
        ));
    }
    if let Some(expected) = expected_version
        && expected != execution.version_number
    {
        return Err(JobsError::VersionMismatch {
            message: format!(
                "The expected version {expected} does not match the job execution's version {}",
                execution.version_number
            ),
            state: state(),
        });
    }
    if let Some(details) = &status_details {
        super::model::check_status_details(details)?;
    }
    let mut next = finish(execution, ExecutionStatus::Canceled, now_ms);
    next.force_canceled = execution.status == ExecutionStatus::InProgress;
    if let Some(details) = status_details {
        next.status_details = details;
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::jobs::model::{
        FailureType, JobStatus, RetryConfig, RetryCriteria, TargetSelection, TimeoutConfig,
    };

    fn job(timeout_minutes: Option<u64>, retries: u32) -> JobRecord {
        JobRecord {
            job_id: "j".into(),
            job_arn: "arn".into(),
            target_selection: TargetSelection::Snapshot,
            status: JobStatus::InProgress,
            force_canceled: false,
            reason_code: None,
            comment: None,
            description: None,
            document: "{}".into(),
            document_source: None,
            targets: vec![],
            target_groups: vec![],
            presigned_url_config: None,
            job_executions_rollout_config: None,
            abort_config: None,
            timeout_config: timeout_minutes.map(|m| TimeoutConfig {
                in_progress_timeout_in_minutes: Some(m),
            }),
            job_executions_retry_config: Some(RetryConfig {
                criteria_list: vec![RetryCriteria {
                    failure_type: FailureType::All,
                    number_of_retries: retries,
                }],
            }),
            scheduling_config: None,
            job_template_arn: None,
            document_parameters: None,
            namespace_id: None,
            created_at_ms: 0,
            last_updated_at_ms: 0,
            completed_at_ms: None,
            starts_at_ms: None,
            ends_at_ms: None,
            rollout: Default::default(),
            pending_cancel: false,
        }
    }

    fn set(status: ExecutionStatus) -> Update {
        Update {
            status: Some(status),
            ..Update::default()
        }
    }

    #[test]
    fn a_device_takes_an_execution_through_to_success() {
        let job = job(Some(10), 0);
        let queued = ExecutionRecord::queued("j", "t", 1, 1_000);
        let started = update(&queued, &job, &set(ExecutionStatus::InProgress), 2_000).unwrap();
        assert_eq!(started.status, ExecutionStatus::InProgress);
        assert_eq!(started.version_number, 2);
        assert_eq!(started.started_at_ms, Some(2_000));
        assert_eq!(started.timeout_at_ms, Some(2_000 + 600_000));
        let again = update(&started, &job, &set(ExecutionStatus::InProgress), 3_000).unwrap();
        assert_eq!(again.version_number, 3);
        assert_eq!(again.started_at_ms, Some(2_000));
        let done = update(&again, &job, &set(ExecutionStatus::Succeeded), 4_000).unwrap();
        assert_eq!(done.status, ExecutionStatus::Succeeded);
        assert_eq!(done.timeout_at_ms, None);
        let late = update(&done, &job, &set(ExecutionStatus::Failed), 5_000).unwrap_err();
        assert_eq!(late.mqtt_code(), "InvalidStateTransition");
        assert_eq!(
            late.execution_state().map(|s| s.status),
            Some(ExecutionStatus::Succeeded)
        );
    }

    #[test]
    fn versions_must_match_when_expected() {
        let job = job(None, 0);
        let queued = ExecutionRecord::queued("j", "t", 1, 0);
        let mut stale = set(ExecutionStatus::InProgress);
        stale.expected_version = Some(2);
        let e = update(&queued, &job, &stale, 1).unwrap_err();
        assert_eq!(e.mqtt_code(), "VersionMismatch");
        assert_eq!(e.execution_state().map(|s| s.version_number), Some(1));
        stale.expected_version = Some(1);
        assert!(update(&queued, &job, &stale, 1).is_ok());
    }

    #[test]
    fn step_timers_are_capped_by_the_in_progress_deadline() {
        let job = job(Some(5), 0);
        let queued = ExecutionRecord::queued("j", "t", 1, 0);
        let mut step = set(ExecutionStatus::InProgress);
        step.step_timeout_in_minutes = Some(2);
        let started = update(&queued, &job, &step, 0).unwrap();
        assert_eq!(started.timeout_at_ms, Some(120_000));
        step.step_timeout_in_minutes = Some(60);
        let longer = update(&started, &job, &step, 60_000).unwrap();
        assert_eq!(longer.timeout_at_ms, Some(300_000), "capped at 5 minutes");
        step.step_timeout_in_minutes = Some(-1);
        let cleared = update(&longer, &job, &step, 70_000).unwrap();
        assert_eq!(cleared.timeout_at_ms, Some(300_000));
        assert!(time_out(&cleared, 299_999).is_none());
        let timed_out = time_out(&cleared, 300_000).unwrap();
        assert_eq!(timed_out.status, ExecutionStatus::TimedOut);
        step.step_timeout_in_minutes = Some(0);
        assert!(update(&cleared, &job, &step, 0).is_err());
    }

    #[test]
    fn failures_are_retried_up_to_the_configured_count() {
        let job = job(None, 1);
        let queued = ExecutionRecord::queued("j", "t", 1, 0);
        let failed = update(&queued, &job, &set(ExecutionStatus::Failed), 10).unwrap();
        assert!(!is_final(&failed, &job));
        let retried = retry(&failed, &job, 20).unwrap();
        assert_eq!(retried.status, ExecutionStatus::Queued);
        assert_eq!(retried.execution_number, 2);
        assert_eq!(retried.retry_attempt, 1);
        assert_eq!(retried.version_number, 1);
        let failed_again = update(&retried, &job, &set(ExecutionStatus::Failed), 30).unwrap();
        assert!(retry(&failed_again, &job, 40).is_none());
        assert!(is_final(&failed_again, &job));
        let rejected = update(&queued, &job, &set(ExecutionStatus::Rejected), 10).unwrap();
        assert!(
            retry(&rejected, &job, 20).is_none(),
            "rejections are not retried"
        );
    }

    #[test]
    fn each_failure_type_counts_its_own_retries() {
        let mut job = job(None, 0);
        job.job_executions_retry_config = Some(RetryConfig {
            criteria_list: vec![
                RetryCriteria {
                    failure_type: FailureType::Failed,
                    number_of_retries: 1,
                },
                RetryCriteria {
                    failure_type: FailureType::TimedOut,
                    number_of_retries: 2,
                },
            ],
        });
        let mut execution = ExecutionRecord::queued("j", "t", 1, 0);
        for _ in 0..2 {
            execution.status = ExecutionStatus::TimedOut;
            execution = retry(&execution, &job, 0).unwrap();
        }
        execution.status = ExecutionStatus::TimedOut;
        assert!(
            retry(&execution, &job, 0).is_none(),
            "two timeouts retried already"
        );
        execution.status = ExecutionStatus::Failed;
        let again = retry(&execution, &job, 0).unwrap();
        assert_eq!(
            (
                again.retry_attempt,
                again.retries_failed,
                again.retries_timed_out
            ),
            (3, 1, 2)
        );
    }

    #[test]
    fn devices_may_not_set_service_states_and_cancel_needs_force_in_progress() {
        let job = job(None, 0);
        let queued = ExecutionRecord::queued("j", "t", 1, 0);
        let e = update(&queued, &job, &set(ExecutionStatus::Canceled), 1).unwrap_err();
        assert_eq!(e.mqtt_code(), "InvalidRequest");
        let started = update(&queued, &job, &set(ExecutionStatus::InProgress), 1).unwrap();
        assert!(cancel(&started, false, None, None, 2).is_err());
        let canceled = cancel(&started, true, None, None, 2).unwrap();
        assert_eq!(canceled.status, ExecutionStatus::Canceled);
        assert!(canceled.force_canceled);
        assert!(cancel(&canceled, true, None, None, 3).is_err());
    }
}
