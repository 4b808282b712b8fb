//! Jobs and job executions as the store keeps them, with their configurations in AWS's own
//! JSON names (so that DescribeJob echoes what CreateJob was given), and the checks a new job's
//! configuration must pass.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::JobsError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    InProgress,
    Canceled,
    Completed,
    DeletionInProgress,
    Scheduled,
}

impl JobStatus {
    pub fn name(self) -> &'static str {
        match self {
            JobStatus::InProgress => "IN_PROGRESS",
            JobStatus::Canceled => "CANCELED",
            JobStatus::Completed => "COMPLETED",
            JobStatus::DeletionInProgress => "DELETION_IN_PROGRESS",
            JobStatus::Scheduled => "SCHEDULED",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExecutionStatus {
    Queued,
    InProgress,
    Succeeded,
    Failed,
    TimedOut,
    Rejected,
    Removed,
    Canceled,
}

impl ExecutionStatus {
    pub const ALL: [ExecutionStatus; 8] = [
        ExecutionStatus::Queued,
        ExecutionStatus::InProgress,
        ExecutionStatus::Succeeded,
        ExecutionStatus::Failed,
        ExecutionStatus::TimedOut,
        ExecutionStatus::Rejected,
        ExecutionStatus::Removed,
        ExecutionStatus::Canceled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ExecutionStatus::Queued => "QUEUED",
            ExecutionStatus::InProgress => "IN_PROGRESS",
            ExecutionStatus::Succeeded => "SUCCEEDED",
            ExecutionStatus::Failed => "FAILED",
            ExecutionStatus::TimedOut => "TIMED_OUT",
            ExecutionStatus::Rejected => "REJECTED",
            ExecutionStatus::Removed => "REMOVED",
            ExecutionStatus::Canceled => "CANCELED",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, ExecutionStatus::Queued | ExecutionStatus::InProgress)
    }

    /// The key of DescribeJob's count of executions in this status.
    pub fn count_name(self) -> &'static str {
        match self {
            ExecutionStatus::Queued => "numberOfQueuedThings",
            ExecutionStatus::InProgress => "numberOfInProgressThings",
            ExecutionStatus::Succeeded => "numberOfSucceededThings",
            ExecutionStatus::Failed => "numberOfFailedThings",
            ExecutionStatus::TimedOut => "numberOfTimedOutThings",
            ExecutionStatus::Rejected => "numberOfRejectedThings",
            ExecutionStatus::Removed => "numberOfRemovedThings",
            ExecutionStatus::Canceled => "numberOfCanceledThings",
        }
    }

    /// The job execution event's topic level for a change into this status.
    pub fn event_name(self) -> Option<&'static str> {
        match self {
            ExecutionStatus::Succeeded => Some("succeeded"),
            ExecutionStatus::Failed => Some("failed"),
            ExecutionStatus::Rejected => Some("rejected"),
            ExecutionStatus::Canceled => Some("canceled"),
            ExecutionStatus::TimedOut => Some("timed_out"),
            ExecutionStatus::Removed => Some("removed"),
            ExecutionStatus::Queued | ExecutionStatus::InProgress => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TargetSelection {
    Continuous,
    #[default]
    Snapshot,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateIncreaseCriteria {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number_of_notified_things: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number_of_succeeded_things: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExponentialRate {
    pub base_rate_per_minute: u64,
    pub increment_factor: f64,
    pub rate_increase_criteria: RateIncreaseCriteria,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RolloutConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maximum_per_minute: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exponential_rate: Option<ExponentialRate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailureType {
    Failed,
    Rejected,
    TimedOut,
    All,
}

impl FailureType {
    /// Whether an execution that ended in `status` is a failure of this type.
    pub fn covers(self, status: ExecutionStatus) -> bool {
        match self {
            FailureType::Failed => status == ExecutionStatus::Failed,
            FailureType::Rejected => status == ExecutionStatus::Rejected,
            FailureType::TimedOut => status == ExecutionStatus::TimedOut,
            FailureType::All => matches!(
                status,
                ExecutionStatus::Failed | ExecutionStatus::Rejected | ExecutionStatus::TimedOut
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AbortCriteria {
    pub failure_type: FailureType,
    pub action: String,
    pub threshold_percentage: f64,
    pub min_number_of_executed_things: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AbortConfig {
    pub criteria_list: Vec<AbortCriteria>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimeoutConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_progress_timeout_in_minutes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryCriteria {
    pub failure_type: FailureType,
    pub number_of_retries: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryConfig {
    pub criteria_list: Vec<RetryCriteria>,
}

impl RetryConfig {
    /// Whether an execution that ended in `status` may be tried again, given the retries it
    /// had: each criterion counts the retries of its own failure type (ALL counts them all),
    /// and no execution is retried more than 10 times in all.
    pub fn allows_retry(&self, status: ExecutionStatus, had: &ExecutionRecord) -> bool {
        had.retry_attempt < 10
            && self.criteria_list.iter().any(|c| {
                let used = match c.failure_type {
                    FailureType::Failed => had.retries_failed,
                    FailureType::TimedOut => had.retries_timed_out,
                    FailureType::All | FailureType::Rejected => had.retry_attempt,
                };
                c.failure_type != FailureType::Rejected
                    && c.failure_type.covers(status)
                    && used < c.number_of_retries
            })
    }

    /// How many retries an execution that ended in `status` may have.
    pub fn retries_for(&self, status: ExecutionStatus) -> u32 {
        self.criteria_list
            .iter()
            .filter(|c| c.failure_type != FailureType::Rejected && c.failure_type.covers(status))
            .map(|c| c.number_of_retries)
            .max()
            .unwrap_or(0)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceWindow {
    pub start_time: String,
    pub duration_in_minutes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EndBehavior {
    StopRollout,
    Cancel,
    ForceCancel,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SchedulingConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_behavior: Option<EndBehavior>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maintenance_windows: Vec<MaintenanceWindow>,
}

/// Where a rollout stands: what the driver needs to go on at the configured rate after a
/// restart or on another node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RolloutState {
    /// Executions created so far (things notified).
    pub queued: u64,
    /// How far through the job's resolved targets the rollout is.
    #[serde(default)]
    pub cursor: usize,
    /// Every target has its execution.
    pub done: bool,
    /// The rate now, per minute (an exponential rollout raises it).
    pub rate_per_minute: Option<f64>,
    /// The current stretch of the rollout at `rate_per_minute`: when it began and how many
    /// executions were created in it.
    pub segment_start_ms: u64,
    pub segment_queued: u64,
    /// The notified or succeeded count when the rate was last raised.
    pub last_increase_at: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    pub job_id: String,
    pub job_arn: String,
    pub target_selection: TargetSelection,
    pub status: JobStatus,
    #[serde(default)]
    pub force_canceled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub document: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document_source: Option<String>,
    pub targets: Vec<String>,
    /// The thing groups among `targets`, by name: a continuous job follows their members.
    #[serde(default)]
    pub target_groups: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presigned_url_config: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_executions_rollout_config: Option<RolloutConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort_config: Option<AbortConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_config: Option<TimeoutConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_executions_retry_config: Option<RetryConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduling_config: Option<SchedulingConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_template_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document_parameters: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_id: Option<String>,
    pub created_at_ms: u64,
    pub last_updated_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at_ms: Option<u64>,
    /// When a scheduled job starts and its rollout ends (epoch ms), from `scheduling_config`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starts_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ends_at_ms: Option<u64>,
    #[serde(default)]
    pub rollout: RolloutState,
    /// Canceled, with executions the driver has yet to cancel.
    #[serde(default)]
    pub pending_cancel: bool,
}

impl JobRecord {
    pub fn in_progress_timeout_ms(&self) -> Option<u64> {
        self.timeout_config
            .as_ref()
            .and_then(|t| t.in_progress_timeout_in_minutes)
            .map(|m| m * 60_000)
    }

    /// Whether the driver still has work on this job: executions to create, cancel or delete.
    pub fn is_active(&self) -> bool {
        match self.status {
            JobStatus::InProgress | JobStatus::Scheduled | JobStatus::DeletionInProgress => true,
            JobStatus::Canceled => self.pending_cancel,
            JobStatus::Completed => false,
        }
    }
}

/// A thing's execution of a job. Times are epoch milliseconds; the device sees seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionRecord {
    pub job_id: String,
    pub thing_name: String,
    pub status: ExecutionStatus,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub status_details: BTreeMap<String, String>,
    pub queued_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    pub last_updated_at_ms: u64,
    pub version_number: u64,
    pub execution_number: u64,
    /// Retries this thing has had of this job, in all and after each kind of failure.
    #[serde(default)]
    pub retry_attempt: u32,
    #[serde(default)]
    pub retries_failed: u32,
    #[serde(default)]
    pub retries_timed_out: u32,
    #[serde(default)]
    pub force_canceled: bool,
    /// When the in-progress timeout expires, from the job's timeout configuration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_progress_deadline_ms: Option<u64>,
    /// When the execution times out: the step timeout if one is set, capped by the in-progress
    /// deadline. A timer key `job-timer/{this}/...` exists while it is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_at_ms: Option<u64>,
}

impl ExecutionRecord {
    pub fn queued(job_id: &str, thing: &str, execution_number: u64, now_ms: u64) -> Self {
        Self {
            job_id: job_id.to_owned(),
            thing_name: thing.to_owned(),
            status: ExecutionStatus::Queued,
            status_details: BTreeMap::new(),
            queued_at_ms: now_ms,
            started_at_ms: None,
            last_updated_at_ms: now_ms,
            version_number: 1,
            execution_number,
            retry_attempt: 0,
            retries_failed: 0,
            retries_timed_out: 0,
            force_canceled: false,
            in_progress_deadline_ms: None,
            timeout_at_ms: None,
        }
    }

    /// The order devices take pending executions in: in progress first, then by when queued.
    pub fn queue_order(&self) -> (bool, u64, &str) {
        (
            self.status != ExecutionStatus::InProgress,
            self.queued_at_ms,
            &self.job_id,
        )
    }
}

/// What an execution reports of itself to its device after an update.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionState {
    pub status: ExecutionStatus,
    pub status_details: BTreeMap<String, String>,
    pub version_number: u64,
}

impl From<&ExecutionRecord> for ExecutionState {
    fn from(e: &ExecutionRecord) -> Self {
        Self {
            status: e.status,
            status_details: e.status_details.clone(),
            version_number: e.version_number,
        }
    }
}

/// A job template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRecord {
    pub job_template_id: String,
    pub job_template_arn: String,
    pub description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document_source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presigned_url_config: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_executions_rollout_config: Option<RolloutConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort_config: Option<AbortConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_config: Option<TimeoutConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_executions_retry_config: Option<RetryConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maintenance_windows: Vec<MaintenanceWindow>,
    pub created_at_ms: u64,
}

/// The most executions notify and GetPendingJobExecutions list.
pub const MAX_LISTED: usize = 10;
pub const MAX_DOCUMENT: usize = 32_768;
pub const MAX_STATUS_DETAILS: usize = 10;

fn invalid(message: impl Into<String>) -> JobsError {
    JobsError::InvalidRequest(message.into())
}

/// Checks an id (job or template) against `[a-zA-Z0-9_-]{1,64}`.
pub fn check_id(field: &str, id: &str) -> Result<(), JobsError> {
    let valid = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(invalid(format!(
            "1 validation error detected: Value '{id}' at '{field}' failed to satisfy constraint: \
             Member must satisfy regular expression pattern: [a-zA-Z0-9_-]+ and length 1..64"
        )))
    }
}

/// Checks status details against AWS's limits: at most 10 pairs, keys `[a-zA-Z0-9:_-]{1,128}`,
/// values of at least one character and no control characters.
pub fn check_status_details(details: &BTreeMap<String, String>) -> Result<(), JobsError> {
    if details.len() > MAX_STATUS_DETAILS {
        return Err(invalid(format!(
            "statusDetails may hold at most {MAX_STATUS_DETAILS} entries; it has {}",
            details.len()
        )));
    }
    for (key, value) in details {
        let key_ok = (1..=128).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":_-".contains(&b));
        if !key_ok {
            return Err(invalid(format!(
                "statusDetails key '{key}' must match [a-zA-Z0-9:_-]+ and be 1 to 128 characters long"
            )));
        }
        if value.is_empty() || value.chars().count() > 1024 || value.chars().any(char::is_control) {
            return Err(invalid(format!(
                "statusDetails value of '{key}' must be 1 to 1024 characters without control characters"
            )));
        }
    }
    Ok(())
}

pub fn check_rollout(config: &RolloutConfig) -> Result<(), JobsError> {
    if config
        .maximum_per_minute
        .is_some_and(|m| !(1..=1000).contains(&m))
    {
        return Err(invalid(
            "jobExecutionsRolloutConfig.maximumPerMinute must be between 1 and 1000",
        ));
    }
    if let Some(rate) = &config.exponential_rate {
        if !(1..=1000).contains(&rate.base_rate_per_minute) {
            return Err(invalid(
                "exponentialRate.baseRatePerMinute must be between 1 and 1000",
            ));
        }
        let tenths = rate.increment_factor * 10.0;
        if !(1.1..=5.0).contains(&rate.increment_factor) || (tenths - tenths.round()).abs() > 1e-9 {
            return Err(invalid(
                "exponentialRate.incrementFactor must be between 1.1 and 5 with one decimal",
            ));
        }
        let criteria = &rate.rate_increase_criteria;
        let count = |n: Option<u64>| n.is_some_and(|n| n >= 1);
        if count(criteria.number_of_notified_things) == count(criteria.number_of_succeeded_things) {
            return Err(invalid(
                "rateIncreaseCriteria must set exactly one of numberOfNotifiedThings and \
                 numberOfSucceededThings, at least 1",
            ));
        }
    }
    Ok(())
}

pub fn check_abort(config: &AbortConfig) -> Result<(), JobsError> {
    if config.criteria_list.is_empty() {
        return Err(invalid("abortConfig.criteriaList must not be empty"));
    }
    for criteria in &config.criteria_list {
        if criteria.action != "CANCEL" {
            return Err(invalid(format!(
                "abortConfig action '{}' is not valid; the only action is CANCEL",
                criteria.action
            )));
        }
        let hundredths = criteria.threshold_percentage * 100.0;
        if !(0.0..=100.0).contains(&criteria.threshold_percentage)
            || (hundredths - hundredths.round()).abs() > 1e-6
        {
            return Err(invalid(
                "abortConfig thresholdPercentage must be between 0 and 100 with at most two decimals",
            ));
        }
        if criteria.min_number_of_executed_things < 1 {
            return Err(invalid(
                "abortConfig minNumberOfExecutedThings must be at least 1",
            ));
        }
    }
    Ok(())
}

pub fn check_timeout(config: &TimeoutConfig) -> Result<(), JobsError> {
    if config
        .in_progress_timeout_in_minutes
        .is_some_and(|m| !(1..=10_080).contains(&m))
    {
        return Err(invalid(
            "timeoutConfig.inProgressTimeoutInMinutes must be between 1 and 10080",
        ));
    }
    Ok(())
}

pub fn check_retry(config: &RetryConfig) -> Result<(), JobsError> {
    if !(1..=2).contains(&config.criteria_list.len()) {
        return Err(invalid(
            "jobExecutionsRetryConfig.criteriaList must hold 1 or 2 criteria",
        ));
    }
    for criteria in &config.criteria_list {
        if criteria.failure_type == FailureType::Rejected {
            return Err(invalid(
                "jobExecutionsRetryConfig failureType must be FAILED, TIMED_OUT or ALL",
            ));
        }
        if criteria.number_of_retries > 10 {
            return Err(invalid(
                "jobExecutionsRetryConfig numberOfRetries must be between 0 and 10",
            ));
        }
    }
    Ok(())
}

/// Reads a scheduling time, `YYYY-MM-DDTHH:MM` in UTC, as epoch milliseconds.
pub fn parse_schedule_time(field: &str, value: &str) -> Result<u64, JobsError> {
    let bad = || {
        invalid(format!(
            "schedulingConfig.{field} '{value}' is not a time of the form YYYY-MM-DDTHH:MM"
        ))
    };
    let bytes = value.as_bytes();
    if bytes.len() != 16 || bytes[4] != b'-' || bytes[7] != b'-' || bytes[10] != b'T' {
        return Err(bad());
    }
    if bytes[13] != b':' {
        return Err(bad());
    }
    let number = |range: std::ops::Range<usize>| -> Result<i64, JobsError> {
        value
            .get(range)
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute) = (number(11..13)?, number(14..16)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return Err(bad());
    }
    let days = days_from_civil(year, month, day);
    let ms = ((days * 24 + hour) * 60 + minute) * 60_000;
    u64::try_from(ms).map_err(|_| bad())
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_times_are_utc_minutes() {
        assert_eq!(
            parse_schedule_time("startTime", "1970-01-01T00:01").unwrap(),
            60_000
        );
        assert_eq!(
            parse_schedule_time("startTime", "2026-12-07T18:30").unwrap(),
            1_796_668_200_000
        );
        for bad in [
            "2026-12-07 18:30",
            "2026-13-07T18:30",
            "2026-12-07T18:30:00",
            "x",
        ] {
            assert!(parse_schedule_time("startTime", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn retries_apply_to_the_failures_their_type_names() {
        let config = RetryConfig {
            criteria_list: vec![
                RetryCriteria {
                    failure_type: FailureType::Failed,
                    number_of_retries: 2,
                },
                RetryCriteria {
                    failure_type: FailureType::TimedOut,
                    number_of_retries: 5,
                },
            ],
        };
        assert_eq!(config.retries_for(ExecutionStatus::Failed), 2);
        assert_eq!(config.retries_for(ExecutionStatus::TimedOut), 5);
        assert_eq!(config.retries_for(ExecutionStatus::Rejected), 0);
    }

    #[test]
    fn status_details_follow_aws_limits() {
        let mut details = BTreeMap::new();
        details.insert("progress".to_owned(), "50%".to_owned());
        assert!(check_status_details(&details).is_ok());
        details.insert("bad key".to_owned(), "x".to_owned());
        assert!(check_status_details(&details).is_err());
        let too_many: BTreeMap<String, String> =
            (0..11).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        assert!(check_status_details(&too_many).is_err());
        let empty_value: BTreeMap<String, String> = [("k".to_owned(), String::new())].into();
        assert!(check_status_details(&empty_value).is_err());
    }

    #[test]
    fn rollout_and_abort_configs_are_checked() {
        let rollout = RolloutConfig {
            maximum_per_minute: Some(100),
            exponential_rate: Some(ExponentialRate {
                base_rate_per_minute: 10,
                increment_factor: 1.5,
                rate_increase_criteria: RateIncreaseCriteria {
                    number_of_notified_things: Some(5),
                    number_of_succeeded_things: None,
                },
            }),
        };
        assert!(check_rollout(&rollout).is_ok());
        let mut bad = rollout.clone();
        if let Some(rate) = bad.exponential_rate.as_mut() {
            rate.increment_factor = 1.25;
        }
        assert!(check_rollout(&bad).is_err());
        let abort = AbortConfig {
            criteria_list: vec![AbortCriteria {
                failure_type: FailureType::All,
                action: "CANCEL".to_owned(),
                threshold_percentage: 12.5,
                min_number_of_executed_things: 1,
            }],
        };
        assert!(check_abort(&abort).is_ok());
    }
}
