//! The jobs control plane: jobs, their executions and templates, as an operator manages them.
//! Targets arrive resolved (the HTTP adapter reads the registry): the things named, and the
//! things of the groups named, as of the call.

use std::collections::BTreeMap;

use halyard_raft::Consistency;
use serde::Deserialize;
use serde_json::Value;

use super::error::JobsError;
use super::execution;
use super::model::{
    self, AbortConfig, ExecutionRecord, ExecutionStatus, JobRecord, JobStatus, RetryConfig,
    RolloutConfig, RolloutState, SchedulingConfig, TargetSelection, TemplateRecord, TimeoutConfig,
};
use super::notify::Change;
use super::store::Read;
use super::{ATTEMPTS, Jobs, Result, Which};
use crate::clock::epoch_millis;
use crate::services::arn::Kind;

/// CreateJob's body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    #[serde(default)]
    pub targets: Vec<String>,
    pub document: Option<String>,
    pub document_source: Option<String>,
    pub description: Option<String>,
    pub target_selection: Option<TargetSelection>,
    pub presigned_url_config: Option<Value>,
    pub job_executions_rollout_config: Option<RolloutConfig>,
    pub abort_config: Option<AbortConfig>,
    pub timeout_config: Option<TimeoutConfig>,
    pub job_executions_retry_config: Option<RetryConfig>,
    pub scheduling_config: Option<SchedulingConfig>,
    pub job_template_arn: Option<String>,
    pub document_parameters: Option<BTreeMap<String, String>>,
    pub namespace_id: Option<String>,
}

/// UpdateJob's body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobUpdate {
    pub description: Option<String>,
    pub presigned_url_config: Option<Value>,
    pub job_executions_rollout_config: Option<RolloutConfig>,
    pub abort_config: Option<AbortConfig>,
    pub timeout_config: Option<TimeoutConfig>,
    pub job_executions_retry_config: Option<RetryConfig>,
}

/// CreateJobTemplate's body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateSpec {
    pub job_arn: Option<String>,
    pub document: Option<String>,
    pub document_source: Option<String>,
    pub description: Option<String>,
    pub presigned_url_config: Option<Value>,
    pub job_executions_rollout_config: Option<RolloutConfig>,
    pub abort_config: Option<AbortConfig>,
    pub timeout_config: Option<TimeoutConfig>,
    pub job_executions_retry_config: Option<RetryConfig>,
    #[serde(default)]
    pub maintenance_windows: Vec<model::MaintenanceWindow>,
}

/// The things and thing groups a job's target ARNs name, as the registry holds them now.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    /// Every thing to run the job on (those named, and the members of the groups named).
    pub things: Vec<String>,
    /// The things named themselves: what a continuous job keeps besides its groups, whose
    /// members it follows as they change.
    pub named: Vec<String>,
    /// The thing groups named.
    pub groups: Vec<String>,
}

/// The counts of DescribeJob's `jobProcessDetails`.
pub type Counts = BTreeMap<&'static str, u64>;

/// ListJobs' filters.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub target_selection: Option<TargetSelection>,
    /// Jobs targeting this thing group.
    pub thing_group: Option<String>,
}

/// Most jobs deleted at once, as AWS.
const MAX_DELETIONS: usize = 10;
const MAX_DESCRIPTION: usize = 2028;
/// How far ahead a scheduled job must start, and how long it must run at least.
const MIN_SCHEDULE_MS: u64 = 30 * 60_000;

fn check_document(document: &str) -> Result<()> {
    if document.len() > model::MAX_DOCUMENT {
        return Err(JobsError::invalid(format!(
            "The job document is {} bytes; at most {} are allowed",
            document.len(),
            model::MAX_DOCUMENT
        )));
    }
    if serde_json::from_str::<Value>(document).is_err() {
        return Err(JobsError::invalid("The job document is not valid JSON"));
    }
    Ok(())
}

fn check_description(description: Option<&str>) -> Result<()> {
    if description.is_some_and(|d| d.chars().count() > MAX_DESCRIPTION) {
        return Err(JobsError::invalid(format!(
            "The description may be at most {MAX_DESCRIPTION} characters long"
        )));
    }
    Ok(())
}

fn check_configs(
    rollout: Option<&RolloutConfig>,
    abort: Option<&AbortConfig>,
    timeout: Option<&TimeoutConfig>,
    retry: Option<&RetryConfig>,
) -> Result<()> {
    if let Some(rollout) = rollout {
        model::check_rollout(rollout)?;
    }
    if let Some(abort) = abort {
        model::check_abort(abort)?;
    }
    if let Some(timeout) = timeout {
        model::check_timeout(timeout)?;
    }
    if let Some(retry) = retry {
        model::check_retry(retry)?;
    }
    Ok(())
}

/// `${aws:iot:parameter:<name>}` in a template's document replaced by the job's parameters.
fn substitute_parameters(document: &str, parameters: &BTreeMap<String, String>) -> Result<String> {
    const OPEN: &str = "${aws:iot:parameter:";
    let mut out = String::with_capacity(document.len());
    let mut rest = document;
    while let Some(at) = rest.find(OPEN) {
        out.push_str(&rest[..at]);
        let after = &rest[at + OPEN.len()..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[at..]);
            rest = "";
            break;
        };
        let name = &after[..end];
        let value = parameters.get(name).ok_or_else(|| {
            JobsError::invalid(format!(
                "The document parameter {name} has no value in documentParameters"
            ))
        })?;
        // The value lands inside a JSON string of the document.
        let escaped =
            serde_json::to_string(value).map_err(|e| JobsError::Internal(e.to_string()))?;
        out.push_str(&escaped[1..escaped.len() - 1]);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The process counts of a job's executions.
pub fn count(statuses: &[(String, ExecutionStatus)]) -> Counts {
    let mut counts: Counts = ExecutionStatus::ALL
        .iter()
        .map(|s| (s.count_name(), 0))
        .collect();
    for (_, status) in statuses {
        *counts.entry(status.count_name()).or_default() += 1;
    }
    counts
}

impl Jobs {
    fn wake_driver(&self) {
        self.inner.driver_wake.notify_one();
    }

    async fn read_job(&self, id: &str) -> Result<Read<JobRecord>> {
        self.inner
            .store
            .job(id, Consistency::Linearizable)
            .await?
            .ok_or_else(|| JobsError::NotFound(format!("Job {id} does not exist")))
    }

    /// Changes job `id` by `change`, on the revision read; again when another writer was first.
    async fn modify_job<F>(&self, id: &str, mut change: F) -> Result<JobRecord>
    where
        F: FnMut(&mut JobRecord) -> Result<()>,
    {
        for _ in 0..ATTEMPTS {
            let read = self.read_job(id).await?;
            let mut job = read.value;
            change(&mut job)?;
            job.last_updated_at_ms = epoch_millis();
            if self
                .inner
                .store
                .replace_job(&job, read.revision, Vec::new())
                .await?
            {
                self.wake_driver();
                return Ok(job);
            }
        }
        Err(JobsError::Unavailable(format!(
            "Job {id} kept changing; try again"
        )))
    }

    /// CreateJob.
    pub async fn create_job(
        &self,
        id: &str,
        spec: JobSpec,
        resolved: Resolved,
    ) -> Result<JobRecord> {
        model::check_id("jobId", id)?;
        let mut spec = spec;
        if let Some(arn) = &spec.job_template_arn {
            let template_id = self
                .arns()
                .name(Kind::JobTemplate, arn)
                .ok_or_else(|| JobsError::invalid(format!("{arn} is not a job template ARN")))?;
            let template = self
                .inner
                .store
                .template(template_id, Consistency::Linearizable)
                .await?
                .ok_or_else(|| {
                    JobsError::NotFound(format!("Job template {template_id} does not exist"))
                })?
                .value;
            if spec.document.is_none() && spec.document_source.is_none() {
                spec.document = template.document.clone();
                spec.document_source = template.document_source.clone();
            }
            spec.presigned_url_config = spec.presigned_url_config.or(template.presigned_url_config);
            spec.job_executions_rollout_config = spec
                .job_executions_rollout_config
                .or(template.job_executions_rollout_config);
            spec.abort_config = spec.abort_config.or(template.abort_config);
            spec.timeout_config = spec.timeout_config.or(template.timeout_config);
            spec.job_executions_retry_config = spec
                .job_executions_retry_config
                .or(template.job_executions_retry_config);
            if let Some(document) = spec.document.take() {
                let parameters = spec.document_parameters.clone().unwrap_or_default();
                spec.document = Some(substitute_parameters(&document, &parameters)?);
            }
        } else if spec.document_parameters.is_some() {
            return Err(JobsError::invalid(
                "documentParameters can only be used with a jobTemplateArn",
            ));
        }
        let document = spec
            .document
            .clone()
            .ok_or_else(|| JobsError::invalid("One of document and documentSource is required"))?;
        check_document(&document)?;
        match &spec.presigned_url_config {
            Some(config) => super::presign::check_config(config)?,
            None if super::presign::has_placeholder(&document) => {
                return Err(JobsError::invalid(
                    "The job document has a presigned URL placeholder: presignedUrlConfig is required",
                ));
            }
            None => {}
        }
        check_description(spec.description.as_deref())?;
        check_configs(
            spec.job_executions_rollout_config.as_ref(),
            spec.abort_config.as_ref(),
            spec.timeout_config.as_ref(),
            spec.job_executions_retry_config.as_ref(),
        )?;
        if spec.targets.is_empty() {
            return Err(JobsError::invalid(
                "targets must name at least one thing or thing group",
            ));
        }
        let now = epoch_millis();
        let (starts_at_ms, ends_at_ms) = match &spec.scheduling_config {
            None => (None, None),
            Some(schedule) => schedule_times(schedule, now)?,
        };
        let status = if starts_at_ms.is_some() {
            JobStatus::Scheduled
        } else {
            JobStatus::InProgress
        };
        let job = JobRecord {
            job_id: id.to_owned(),
            job_arn: self.job_arn(id),
            target_selection: spec.target_selection.unwrap_or_default(),
            status,
            force_canceled: false,
            reason_code: None,
            comment: None,
            description: spec.description,
            document,
            document_source: spec.document_source,
            targets: spec.targets,
            target_groups: resolved.groups,
            presigned_url_config: spec.presigned_url_config,
            job_executions_rollout_config: spec.job_executions_rollout_config,
            abort_config: spec.abort_config,
            timeout_config: spec.timeout_config,
            job_executions_retry_config: spec.job_executions_retry_config,
            scheduling_config: spec.scheduling_config,
            job_template_arn: spec.job_template_arn,
            document_parameters: spec.document_parameters,
            namespace_id: spec.namespace_id,
            created_at_ms: now,
            last_updated_at_ms: now,
            completed_at_ms: None,
            starts_at_ms,
            ends_at_ms,
            rollout: RolloutState {
                segment_start_ms: now,
                ..RolloutState::default()
            },
            pending_cancel: false,
        };
        let mut things = match job.target_selection {
            TargetSelection::Continuous => resolved.named,
            TargetSelection::Snapshot => resolved.things,
        };
        things.sort();
        things.dedup();
        if !self.inner.store.create_job(&job, &things).await? {
            return Err(JobsError::AlreadyExists {
                message: format!("Job {id} already exists"),
                id: id.to_owned(),
                arn: job.job_arn.clone(),
            });
        }
        self.wake_driver();
        Ok(job)
    }

    /// DescribeJob: the job and the counts of its executions by status.
    pub async fn describe_job(&self, id: &str) -> Result<(JobRecord, Counts)> {
        let job = self.read_job(id).await?.value;
        let (statuses, _) = self
            .inner
            .store
            .statuses(id, None, usize::MAX, Consistency::Local)
            .await?;
        Ok((job, count(&statuses)))
    }

    /// GetJobDocument.
    pub async fn job_document(&self, id: &str) -> Result<String> {
        Ok(self.read_job(id).await?.value.document)
    }

    /// ListJobs: up to `limit` jobs after `after` (a job id) that pass `filter`; the id to go
    /// on after, when more may follow.
    pub async fn list_jobs(
        &self,
        filter: &JobFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<JobRecord>, Option<String>)> {
        let mut found = Vec::new();
        let mut after = after.map(str::to_owned);
        loop {
            let (batch, more) = self
                .inner
                .store
                .jobs(after.as_deref(), 500, Consistency::Linearizable)
                .await?;
            let count = batch.len();
            for (n, job) in batch.into_iter().enumerate() {
                after = Some(job.job_id.clone());
                let keep = filter.status.is_none_or(|s| s == job.status)
                    && filter
                        .target_selection
                        .is_none_or(|t| t == job.target_selection)
                    && filter
                        .thing_group
                        .as_ref()
                        .is_none_or(|g| job.target_groups.contains(g));
                if keep {
                    found.push(job);
                    if found.len() == limit {
                        let rest = n + 1 < count || more;
                        return Ok((found, if rest { after } else { None }));
                    }
                }
            }
            if !more {
                return Ok((found, None));
            }
        }
    }

    /// UpdateJob.
    pub async fn update_job(&self, id: &str, update: JobUpdate) -> Result<JobRecord> {
        check_description(update.description.as_deref())?;
        check_configs(
            update.job_executions_rollout_config.as_ref(),
            update.abort_config.as_ref(),
            update.timeout_config.as_ref(),
            update.job_executions_retry_config.as_ref(),
        )?;
        self.modify_job(id, |job| {
            if !matches!(job.status, JobStatus::InProgress | JobStatus::Scheduled) {
                return Err(JobsError::transition(
                    format!(
                        "Job {id} is {} and can no longer be updated",
                        job.status.name()
                    ),
                    None,
                ));
            }
            let update = update.clone();
            if update.description.is_some() {
                job.description = update.description;
            }
            if update.presigned_url_config.is_some() {
                job.presigned_url_config = update.presigned_url_config;
            }
            if let Some(rollout) = update.job_executions_rollout_config {
                job.job_executions_rollout_config = Some(rollout);
                // The new rate applies from now on.
                job.rollout.rate_per_minute = None;
                job.rollout.segment_start_ms = epoch_millis();
                job.rollout.segment_queued = 0;
            }
            if update.abort_config.is_some() {
                job.abort_config = update.abort_config;
            }
            if update.timeout_config.is_some() {
                job.timeout_config = update.timeout_config;
            }
            if update.job_executions_retry_config.is_some() {
                job.job_executions_retry_config = update.job_executions_retry_config;
            }
            Ok(())
        })
        .await
    }

    /// CancelJob: the job is CANCELED at once; its queued executions (and with `force` those
    /// in progress) are canceled by the driver.
    pub async fn cancel_job(
        &self,
        id: &str,
        force: bool,
        reason_code: Option<String>,
        comment: Option<String>,
    ) -> Result<JobRecord> {
        if let Some(code) = &reason_code {
            let valid = !code.is_empty()
                && code.len() <= 128
                && code
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            if !valid {
                return Err(JobsError::invalid(format!(
                    "reasonCode '{code}' must match [\\p{{Upper}}\\p{{Digit}}_]+ and be at most 128 characters"
                )));
            }
        }
        let mut was = JobStatus::InProgress;
        let job = self
            .modify_job(id, |job| {
                was = job.status;
                match job.status {
                    JobStatus::InProgress | JobStatus::Scheduled => {}
                    JobStatus::Canceled if force && !job.force_canceled => {}
                    JobStatus::Canceled => {
                        return Err(JobsError::transition(
                            format!("Job {id} is already canceled"),
                            None,
                        ));
                    }
                    status => {
                        return Err(JobsError::transition(
                            format!("Job {id} is {} and cannot be canceled", status.name()),
                            None,
                        ));
                    }
                }
                job.status = JobStatus::Canceled;
                job.force_canceled |= force;
                job.pending_cancel = true;
                if reason_code.is_some() {
                    job.reason_code = reason_code.clone();
                }
                if comment.is_some() {
                    job.comment = comment.clone();
                }
                Ok(())
            })
            .await?;
        if was != JobStatus::Canceled {
            self.inner
                .notifier
                .job_event(&job, "cancellation_in_progress", None)
                .await;
        }
        Ok(job)
    }

    /// DeleteJob: DELETION_IN_PROGRESS at once; the driver deletes the executions, then the job.
    pub async fn delete_job(&self, id: &str, force: bool) -> Result<()> {
        let (deleting, _) = self
            .inner
            .store
            .jobs(None, usize::MAX, Consistency::Local)
            .await?;
        let deleting = deleting
            .iter()
            .filter(|j| j.status == JobStatus::DeletionInProgress)
            .count();
        let job = self
            .modify_job(id, |job| {
                match job.status {
                    JobStatus::DeletionInProgress => {
                        return Err(JobsError::transition(
                            format!("Job {id} is already being deleted"),
                            None,
                        ));
                    }
                    JobStatus::Completed | JobStatus::Canceled => {}
                    status if !force => {
                        return Err(JobsError::transition(
                            format!(
                                "Job {id} is {}; it can be deleted only with force",
                                status.name()
                            ),
                            None,
                        ));
                    }
                    _ => {}
                }
                if deleting >= MAX_DELETIONS {
                    return Err(JobsError::LimitExceeded(format!(
                        "{deleting} jobs are being deleted already; at most {MAX_DELETIONS} may be at once"
                    )));
                }
                job.status = JobStatus::DeletionInProgress;
                Ok(())
            })
            .await?;
        self.inner
            .notifier
            .job_event(&job, "deletion_in_progress", None)
            .await;
        Ok(())
    }

    /// AssociateTargetsWithJob: more things for a job that is still rolling out.
    pub async fn associate_targets(
        &self,
        id: &str,
        targets: Vec<String>,
        resolved: Resolved,
        comment: Option<String>,
    ) -> Result<JobRecord> {
        for _ in 0..ATTEMPTS {
            let read = self.read_job(id).await?;
            let mut job = read.value;
            if !matches!(job.status, JobStatus::InProgress | JobStatus::Scheduled) {
                return Err(JobsError::transition(
                    format!(
                        "Job {id} is {}; targets can no longer be added",
                        job.status.name()
                    ),
                    None,
                ));
            }
            // New things go after the old ones, where the rollout's cursor has yet to reach.
            let mut things = self.inner.store.targets(id).await?;
            let before = things.len();
            let known: std::collections::HashSet<String> = things.iter().cloned().collect();
            let new_things = match job.target_selection {
                TargetSelection::Continuous => &resolved.named,
                TargetSelection::Snapshot => &resolved.things,
            };
            let mut added: Vec<String> = new_things
                .iter()
                .filter(|t| !known.contains(*t))
                .cloned()
                .collect();
            added.sort();
            added.dedup();
            things.extend(added);
            for target in &targets {
                if !job.targets.contains(target) {
                    job.targets.push(target.clone());
                }
            }
            for group in &resolved.groups {
                if !job.target_groups.contains(group) {
                    job.target_groups.push(group.clone());
                }
            }
            if comment.is_some() {
                job.comment = comment.clone();
            }
            job.rollout.done = false;
            job.last_updated_at_ms = epoch_millis();
            let put_targets = super::store::target_ops(id, &things, before)?;
            if self
                .inner
                .store
                .replace_job(&job, read.revision, put_targets)
                .await?
            {
                self.wake_driver();
                return Ok(job);
            }
        }
        Err(JobsError::Unavailable(format!(
            "Job {id} kept changing; try again"
        )))
    }

    /// DescribeJobExecution (control plane).
    pub async fn describe_execution(
        &self,
        thing: &str,
        job: &str,
        execution_number: Option<u64>,
    ) -> Result<ExecutionRecord> {
        let execution = self
            .inner
            .store
            .execution(thing, job, Consistency::Linearizable)
            .await?
            .map(|r| r.value)
            .filter(|e| execution_number.is_none_or(|n| n == e.execution_number));
        execution.ok_or_else(|| {
            JobsError::NotFound(format!(
                "Job execution of job {job} on thing {thing} was not found"
            ))
        })
    }

    /// ListJobExecutionsForJob: up to `limit` after the thing `after`, in thing order.
    pub async fn executions_of_job(
        &self,
        job: &str,
        status: Option<ExecutionStatus>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<ExecutionRecord>, Option<String>)> {
        self.read_job(job).await?;
        let mut found = Vec::new();
        let mut after = after.map(str::to_owned);
        loop {
            let (batch, more) = self
                .inner
                .store
                .statuses(job, after.as_deref(), 1000, Consistency::Linearizable)
                .await?;
            let count = batch.len();
            for (n, (thing, current)) in batch.into_iter().enumerate() {
                after = Some(thing.clone());
                if status.is_some_and(|s| s != current) {
                    continue;
                }
                if let Some(read) = self
                    .inner
                    .store
                    .execution(&thing, job, Consistency::Local)
                    .await?
                {
                    found.push(read.value);
                }
                if found.len() == limit {
                    let rest = n + 1 < count || more;
                    return Ok((found, if rest { after } else { None }));
                }
            }
            if !more {
                return Ok((found, None));
            }
        }
    }

    /// ListJobExecutionsForThing: the thing's executions in job order, after the job `after`.
    pub async fn executions_of_thing(
        &self,
        thing: &str,
        status: Option<ExecutionStatus>,
        job: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<ExecutionRecord>, Option<String>)> {
        let executions = self
            .inner
            .store
            .executions_of_thing(thing, Consistency::Linearizable)
            .await?;
        let mut kept = executions
            .into_iter()
            .map(|r| r.value)
            .filter(|e| status.is_none_or(|s| s == e.status))
            .filter(|e| job.is_none_or(|j| j == e.job_id))
            .filter(|e| after.is_none_or(|a| e.job_id.as_str() > a));
        let page: Vec<ExecutionRecord> = kept.by_ref().take(limit).collect();
        let next = if kept.next().is_some() {
            page.last().map(|e| e.job_id.clone())
        } else {
            None
        };
        Ok((page, next))
    }

    /// CancelJobExecution.
    pub async fn cancel_execution(
        &self,
        thing: &str,
        job: &str,
        force: bool,
        expected_version: Option<u64>,
        status_details: Option<BTreeMap<String, String>>,
    ) -> Result<()> {
        let now = epoch_millis();
        let changed = self
            .inner
            .change_execution(thing, Which::Job(job), |execution, _| {
                execution::cancel(
                    execution,
                    force,
                    expected_version,
                    status_details.clone(),
                    now,
                )
                .map(Some)
            })
            .await?;
        match changed {
            Some(_) => Ok(()),
            None => Err(JobsError::NotFound(format!(
                "Job execution of job {job} on thing {thing} was not found"
            ))),
        }
    }

    /// DeleteJobExecution: a terminal or queued execution, or with `force` one in progress.
    pub async fn delete_execution(
        &self,
        thing: &str,
        job: &str,
        execution_number: u64,
        force: bool,
    ) -> Result<()> {
        let not_found = || {
            JobsError::NotFound(format!(
                "Job execution {execution_number} of job {job} on thing {thing} was not found"
            ))
        };
        for _ in 0..ATTEMPTS {
            let executions = self
                .inner
                .store
                .executions_of_thing(thing, Consistency::Linearizable)
                .await?;
            let current = executions
                .iter()
                .find(|e| e.value.job_id == job)
                .filter(|e| e.value.execution_number == execution_number)
                .ok_or_else(not_found)?;
            if current.value.status == ExecutionStatus::InProgress && !force {
                return Err(JobsError::transition(
                    format!(
                        "Job execution of job {job} on thing {thing} is IN_PROGRESS; delete it with force"
                    ),
                    None,
                ));
            }
            if self.inner.store.delete_execution(current).await? {
                let others: Vec<ExecutionRecord> =
                    executions.iter().map(|e| e.value.clone()).collect();
                self.inner
                    .notifier
                    .execution_changed(
                        &others,
                        Change {
                            before: Some(&current.value),
                            after: None,
                        },
                    )
                    .await;
                self.wake_driver();
                return Ok(());
            }
        }
        Err(JobsError::Unavailable(
            "The job execution kept changing; try again".into(),
        ))
    }

    /// CreateJobTemplate.
    pub async fn create_template(&self, id: &str, spec: TemplateSpec) -> Result<TemplateRecord> {
        model::check_id("jobTemplateId", id)?;
        let description = spec
            .description
            .clone()
            .ok_or_else(|| JobsError::invalid("description is required"))?;
        check_description(Some(&description))?;
        let mut template = TemplateRecord {
            job_template_id: id.to_owned(),
            job_template_arn: self.arns().of(Kind::JobTemplate, id),
            description,
            document: spec.document,
            document_source: spec.document_source,
            presigned_url_config: spec.presigned_url_config,
            job_executions_rollout_config: spec.job_executions_rollout_config,
            abort_config: spec.abort_config,
            timeout_config: spec.timeout_config,
            job_executions_retry_config: spec.job_executions_retry_config,
            maintenance_windows: spec.maintenance_windows,
            created_at_ms: epoch_millis(),
        };
        if let Some(arn) = &spec.job_arn {
            let job_id = self
                .arns()
                .name(Kind::Job, arn)
                .ok_or_else(|| JobsError::invalid(format!("{arn} is not a job ARN")))?;
            let job = self.read_job(job_id).await?.value;
            template.document = template.document.or(Some(job.document));
            template.document_source = template.document_source.or(job.document_source);
            template.presigned_url_config =
                template.presigned_url_config.or(job.presigned_url_config);
            template.job_executions_rollout_config = template
                .job_executions_rollout_config
                .or(job.job_executions_rollout_config);
            template.abort_config = template.abort_config.or(job.abort_config);
            template.timeout_config = template.timeout_config.or(job.timeout_config);
            template.job_executions_retry_config = template
                .job_executions_retry_config
                .or(job.job_executions_retry_config);
        }
        match &template.document {
            Some(document) if document.len() > model::MAX_DOCUMENT => {
                return Err(JobsError::invalid(format!(
                    "The job document may be at most {} bytes",
                    model::MAX_DOCUMENT
                )));
            }
            None if template.document_source.is_none() => {
                return Err(JobsError::invalid(
                    "One of jobArn, document and documentSource is required",
                ));
            }
            _ => {}
        }
        super::schedule::check_windows(&template.maintenance_windows)?;
        check_configs(
            template.job_executions_rollout_config.as_ref(),
            template.abort_config.as_ref(),
            template.timeout_config.as_ref(),
            template.job_executions_retry_config.as_ref(),
        )?;
        if !self.inner.store.create_template(&template).await? {
            return Err(JobsError::Conflict(format!(
                "Job template {id} already exists"
            )));
        }
        Ok(template)
    }

    pub async fn describe_template(&self, id: &str) -> Result<TemplateRecord> {
        self.inner
            .store
            .template(id, Consistency::Linearizable)
            .await?
            .map(|r| r.value)
            .ok_or_else(|| JobsError::NotFound(format!("Job template {id} does not exist")))
    }

    pub async fn list_templates(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<TemplateRecord>, Option<String>)> {
        let (templates, more) = self.inner.store.templates(after, limit).await?;
        let next = if more {
            templates.last().map(|t| t.job_template_id.clone())
        } else {
            None
        };
        Ok((templates, next))
    }

    pub async fn delete_template(&self, id: &str) -> Result<()> {
        if self.inner.store.delete_template(id).await? {
            Ok(())
        } else {
            Err(JobsError::NotFound(format!(
                "Job template {id} does not exist"
            )))
        }
    }

    /// DescribeEventConfigurations: whether each event type is published.
    pub async fn event_configurations(&self) -> Result<BTreeMap<String, bool>> {
        self.inner.store.event_configurations().await
    }

    /// UpdateEventConfigurations.
    pub async fn update_event_configurations(
        &self,
        changes: &BTreeMap<String, bool>,
    ) -> Result<()> {
        self.inner.store.update_event_configurations(changes).await
    }
}

/// A schedule's start and end, checked as AWS checks them.
fn schedule_times(schedule: &SchedulingConfig, now: u64) -> Result<(Option<u64>, Option<u64>)> {
    let start = schedule
        .start_time
        .as_deref()
        .map(|t| model::parse_schedule_time("startTime", t))
        .transpose()?;
    let end = schedule
        .end_time
        .as_deref()
        .map(|t| model::parse_schedule_time("endTime", t))
        .transpose()?;
    if let Some(start) = start
        && start < now + MIN_SCHEDULE_MS
    {
        return Err(JobsError::invalid(
            "schedulingConfig.startTime must be at least 30 minutes from now",
        ));
    }
    if let Some(end) = end
        && end < start.unwrap_or(now) + MIN_SCHEDULE_MS
    {
        return Err(JobsError::invalid(
            "schedulingConfig.endTime must be at least 30 minutes after the start",
        ));
    }
    super::schedule::check_windows(&schedule.maintenance_windows)?;
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parameters_are_substituted_inside_strings() {
        let parameters: BTreeMap<String, String> =
            [("version".to_owned(), "2.\"1\"".to_owned())].into();
        let document = r#"{"firmware":"${aws:iot:parameter:version}"}"#;
        let substituted = substitute_parameters(document, &parameters).unwrap();
        let parsed: Value = serde_json::from_str(&substituted).unwrap();
        assert_eq!(parsed["firmware"], "2.\"1\"");
        assert!(
            substitute_parameters(r#"{"a":"${aws:iot:parameter:missing}"}"#, &parameters).is_err()
        );
    }

    #[test]
    fn schedules_start_half_an_hour_ahead_at_least() {
        let now = 1_000_000_000_000;
        let soon = SchedulingConfig {
            start_time: Some("2001-09-09T01:50".into()),
            ..SchedulingConfig::default()
        };
        assert!(schedule_times(&soon, now).is_err());
        let later = SchedulingConfig {
            start_time: Some("2001-09-09T03:00".into()),
            end_time: Some("2001-09-09T04:00".into()),
            end_behavior: Some(model::EndBehavior::Cancel),
            ..SchedulingConfig::default()
        };
        let (start, end) = schedule_times(&later, now).unwrap();
        assert!(start.unwrap() > now && end.unwrap() > start.unwrap());
    }
}
