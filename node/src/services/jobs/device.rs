//! The device's side of jobs, whatever door it comes through (MQTT topics or `iot-jobs-data`
//! over HTTPS): its pending executions, starting the next, describing one, updating one.

use std::collections::BTreeMap;

use halyard_raft::Consistency;

use super::error::JobsError;
use super::execution::{self, Update};
use super::model::{ExecutionRecord, ExecutionStatus, JobRecord, MAX_LISTED, check_status_details};
use super::notify;
use super::{Jobs, Result, Which};
use crate::clock::epoch_millis;

/// An execution with its job, as an answer to its device.
pub struct ForDevice {
    pub execution: ExecutionRecord,
    pub job: JobRecord,
}

impl Jobs {
    /// GetPendingJobExecutions: the thing's executions in progress, then queued, at most ten.
    pub async fn pending_executions(&self, thing: &str) -> Result<Vec<ExecutionRecord>> {
        let executions: Vec<ExecutionRecord> = self
            .inner()
            .store
            .executions_of_thing(thing, Consistency::Linearizable)
            .await?
            .into_iter()
            .map(|r| r.value)
            .collect();
        Ok(notify::pending(&executions)
            .into_iter()
            .take(MAX_LISTED)
            .cloned()
            .collect())
    }

    /// StartNextPendingJobExecution: the next execution, started if it was queued; none when
    /// nothing is pending.
    pub async fn start_next(
        &self,
        thing: &str,
        status_details: Option<BTreeMap<String, String>>,
        step_timeout_in_minutes: Option<i64>,
    ) -> Result<Option<ForDevice>> {
        if let Some(details) = &status_details {
            check_status_details(details)?;
        }
        execution::check_step_timeout(step_timeout_in_minutes)?;
        let now = epoch_millis();
        let changed = self
            .inner()
            .change_execution(thing, Which::Next, |current, job| {
                Ok((current.status == ExecutionStatus::Queued).then(|| {
                    execution::start(
                        current,
                        job,
                        status_details.clone(),
                        step_timeout_in_minutes,
                        now,
                    )
                }))
            })
            .await?;
        Ok(changed.map(|c| ForDevice {
            execution: c.after,
            job: c.job,
        }))
    }

    /// DescribeJobExecution as a device asks it: `job` (or the next pending one, for `None`).
    pub async fn describe_for_device(
        &self,
        thing: &str,
        job: Option<&str>,
        execution_number: Option<u64>,
    ) -> Result<ForDevice> {
        let store = &self.inner().store;
        let execution = match job {
            Some(job) => store
                .execution(thing, job, Consistency::Linearizable)
                .await?
                .map(|r| r.value),
            None => self.pending_executions(thing).await?.into_iter().next(),
        };
        let not_found = || {
            JobsError::NotFound(match job {
                Some(job) => format!("Job execution of job {job} on thing {thing} was not found"),
                None => format!("Thing {thing} has no pending job execution"),
            })
        };
        let execution = execution.ok_or_else(not_found)?;
        if execution_number.is_some_and(|n| n != execution.execution_number) {
            return Err(not_found());
        }
        if execution.status.is_terminal() && job.is_some() && execution_number.is_none() {
            return Err(JobsError::TerminalStateReached(format!(
                "Job execution of job {} on thing {thing} is in the terminal state {}",
                execution.job_id,
                execution.status.name()
            )));
        }
        let job = store
            .job(&execution.job_id, Consistency::Local)
            .await?
            .ok_or_else(not_found)?
            .value;
        Ok(ForDevice { execution, job })
    }

    /// UpdateJobExecution from the device.
    pub async fn update_for_device(
        &self,
        thing: &str,
        job: &str,
        update: &Update,
    ) -> Result<ForDevice> {
        let now = epoch_millis();
        let changed = self
            .inner()
            .change_execution(thing, Which::Job(job), |current, job| {
                execution::update(current, job, update, now).map(Some)
            })
            .await?;
        let changed = changed.ok_or_else(|| {
            JobsError::NotFound(format!(
                "Job execution of job {job} on thing {thing} was not found"
            ))
        })?;
        Ok(ForDevice {
            execution: changed.after,
            job: changed.job,
        })
    }
}
