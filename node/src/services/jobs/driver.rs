//! The jobs driver: the work no device asks for. Executions created at the rollout's rate,
//! timers fired, failures retried, jobs aborted when too many fail, completed when all is
//! done, canceled and deleted executions cleaned up, schedules started and ended.
//!
//! Every node runs the loop; only the store's leader acts, so there is one driver at a time
//! in a healthy cluster. Its state is in the store: a rollout's progress and rate in the job
//! record, timers as `job-timer/` keys. So a new leader goes on where the last one stopped,
//! and every write is a transaction on the revision the driver read, so that two drivers
//! (for the moment a leadership changes) never apply one change twice: the second one's
//! transaction fails and it reads again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use halyard_raft::{Consistency, Op};
use parking_lot::Mutex;

use super::control::count;
use super::execution;
use super::model::{
    EndBehavior, ExecutionRecord, ExecutionStatus, JobRecord, JobStatus, RolloutState,
    TargetSelection,
};
use super::notify::Change;
use super::store::{Read, delete_ops, execution_ops, unchanged_since};
use super::{Jobs, Result};
use crate::clock::epoch_millis;
use crate::store::keys;

/// Most executions created, changed or deleted in one transaction.
const BATCH: usize = 256;
/// Longest the driver sleeps between rounds.
const IDLE: Duration = Duration::from_secs(1);
/// How often every active job's executions are counted, changed or not.
const FULL_SCAN: Duration = Duration::from_secs(5);
/// The shortest wait between rounds (and between two counts of one job's executions), so that
/// a busy job or a conflict costs a few rounds a second, not a loop.
const PAUSE: Duration = Duration::from_millis(50);
/// The shortest wait between two counts of one job's executions when they changed.
const RESCAN: Duration = Duration::from_millis(250);

/// How many executions a rollout may create now (`None`: as many as there are), and its
/// state with the rate raised as its exponential configuration says.
pub fn allowance(job: &JobRecord, succeeded: u64, now_ms: u64) -> (Option<u64>, RolloutState) {
    let mut state = job.rollout.clone();
    let config = job
        .job_executions_rollout_config
        .clone()
        .unwrap_or_default();
    let initial = match &config.exponential_rate {
        Some(rate) => Some(rate.base_rate_per_minute as f64),
        None => config.maximum_per_minute.map(|m| m as f64),
    };
    let Some(mut rate) = state.rate_per_minute.or(initial) else {
        return (None, state);
    };
    if let Some(exponential) = &config.exponential_rate {
        let ceiling = config.maximum_per_minute.unwrap_or(1000) as f64;
        let criteria = &exponential.rate_increase_criteria;
        let (progress, step) = match (
            criteria.number_of_notified_things,
            criteria.number_of_succeeded_things,
        ) {
            (Some(n), _) => (state.queued, n.max(1)),
            (None, Some(n)) => (succeeded, n.max(1)),
            (None, None) => (0, u64::MAX),
        };
        while rate < ceiling && progress >= state.last_increase_at.saturating_add(step) {
            rate = (rate * exponential.increment_factor).min(ceiling);
            state.last_increase_at += step;
            state.segment_start_ms = now_ms;
            state.segment_queued = 0;
        }
    }
    state.rate_per_minute = Some(rate);
    let earned = |state: &RolloutState| {
        let elapsed = now_ms.saturating_sub(state.segment_start_ms) as f64;
        ((rate * elapsed / 60_000.0).floor() as u64).saturating_sub(state.segment_queued)
    };
    let burst = ((rate / 60.0).ceil() as u64).max(1);
    let mut allowed = earned(&state);
    if allowed > burst {
        // Time with nothing to do is not saved up for a burst later: the stretch restarts
        // with one second's worth due.
        state.segment_start_ms =
            now_ms.saturating_sub((burst as f64 * 60_000.0 / rate).ceil() as u64);
        state.segment_queued = 0;
        allowed = earned(&state).min(burst);
    }
    (Some(allowed), state)
}

/// When the rollout may create its next execution, in ms from now.
fn next_due(state: &RolloutState, now_ms: u64) -> Option<u64> {
    let rate = state.rate_per_minute?;
    let due = state.segment_start_ms as f64 + (state.segment_queued + 1) as f64 * 60_000.0 / rate;
    Some((due.ceil() as u64).saturating_sub(now_ms))
}

/// Whether the abort configuration cancels the job, given its executions' counts; the
/// reason if so.
pub fn abort_reason(job: &JobRecord, statuses: &[(String, ExecutionStatus)]) -> Option<String> {
    let config = job.abort_config.as_ref()?;
    let executed = statuses.iter().filter(|(_, s)| s.is_terminal()).count() as u64;
    config.criteria_list.iter().find_map(|criteria| {
        if executed < criteria.min_number_of_executed_things {
            return None;
        }
        let failed = statuses
            .iter()
            .filter(|(_, s)| criteria.failure_type.covers(*s))
            .count() as u64;
        let percentage = failed as f64 * 100.0 / executed as f64;
        (percentage >= criteria.threshold_percentage).then(|| {
            format!(
                "Job aborted: {failed} of {executed} executed things failed ({:?}), at or above {}%",
                criteria.failure_type, criteria.threshold_percentage
            )
        })
    })
}

struct Driver {
    jobs: Jobs,
    /// Jobs whose executions changed since they were last looked at.
    dirty: Arc<Mutex<HashSet<String>>>,
    /// Group membership changed: continuous jobs look for new things.
    groups_changed: Arc<Mutex<bool>>,
    last_full_scan: Option<tokio::time::Instant>,
    /// Each job's resolved targets, by the job's creation time (they change only by
    /// AssociateTargetsWithJob, which resets `rollout.done`).
    targets: HashMap<String, (u64, Arc<Vec<String>>)>,
    /// Each job's succeeded executions when last counted (an exponential rollout's measure).
    succeeded: HashMap<String, u64>,
    /// When each job's executions were last counted.
    scanned: HashMap<String, tokio::time::Instant>,
}

/// Runs the driver until the node stops.
pub async fn run(jobs: Jobs) {
    let dirty = Arc::new(Mutex::new(HashSet::new()));
    let groups_changed = Arc::new(Mutex::new(true));
    let mut shutdown = jobs.inner().shutdown.clone();
    let follower = tokio::spawn(follow(
        jobs.clone(),
        Arc::clone(&dirty),
        Arc::clone(&groups_changed),
    ));
    let mut driver = Driver {
        jobs,
        dirty,
        groups_changed,
        last_full_scan: None,
        targets: HashMap::new(),
        succeeded: HashMap::new(),
        scanned: HashMap::new(),
    };
    loop {
        let store = driver.jobs.inner().store.raw().clone();
        let leading = store.status().leader == Some(store.id());
        driver.jobs.inner().metrics.driving.set(i64::from(leading));
        let mut sleep = IDLE;
        if leading && !*shutdown.borrow() {
            match driver.round().await {
                Ok(next) => sleep = next.clamp(PAUSE, IDLE),
                Err(e) => tracing::debug!(error = %e, "jobs driver round failed"),
            }
        } else {
            driver.last_full_scan = None;
        }
        if *shutdown.borrow() {
            break;
        }
        let wake = &driver.jobs.inner().driver_wake;
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = wake.notified() => {}
            _ = shutdown.changed() => {}
        }
    }
    follower.abort();
}

/// Marks jobs whose executions change, and notes group membership changes, from the store.
async fn follow(jobs: Jobs, dirty: Arc<Mutex<HashSet<String>>>, groups_changed: Arc<Mutex<bool>>) {
    let store = jobs.inner().store.raw().clone();
    loop {
        let watches = (
            store.watch(keys::JOB_THINGS.as_bytes().to_vec(), None),
            store.watch(keys::GROUP_THINGS.as_bytes().to_vec(), None),
        );
        let (Ok(mut executions), Ok(mut groups)) = watches else {
            tokio::time::sleep(IDLE).await;
            continue;
        };
        loop {
            tokio::select! {
                batch = executions.next() => {
                    let Some(Ok(batch)) = batch else { break };
                    let mut dirty = dirty.lock();
                    for event in batch.events {
                        let key = String::from_utf8_lossy(&event.kv.key);
                        if let Some((job, _)) = key
                            .strip_prefix(keys::JOB_THINGS)
                            .and_then(|rest| rest.split_once('/'))
                        {
                            dirty.insert(job.to_owned());
                        }
                    }
                }
                batch = groups.next() => {
                    let Some(Ok(_)) = batch else { break };
                    *groups_changed.lock() = true;
                }
            }
            jobs.inner().driver_wake.notify_one();
        }
        // A watch that ended (compacted, or the store restarting) may have missed changes.
        *groups_changed.lock() = true;
        tokio::time::sleep(IDLE).await;
    }
}

impl Driver {
    fn store(&self) -> &super::store::JobStore {
        &self.jobs.inner().store
    }

    /// One round over timers and active jobs; how long until the next is due.
    async fn round(&mut self) -> Result<Duration> {
        let mut next = IDLE;
        self.fire_timers().await?;
        if let Some(at) = self.store().next_timer().await? {
            next = next.min(Duration::from_millis(at.saturating_sub(epoch_millis())));
        }
        let full = self
            .last_full_scan
            .is_none_or(|at| at.elapsed() >= FULL_SCAN);
        if full {
            self.last_full_scan = Some(tokio::time::Instant::now());
        }
        let dirty: HashSet<String> = std::mem::take(&mut *self.dirty.lock());
        let groups_changed = std::mem::take(&mut *self.groups_changed.lock());
        let (jobs, _) = self
            .store()
            .jobs(None, usize::MAX, Consistency::Local)
            .await?;
        let active: Vec<JobRecord> = jobs.into_iter().filter(JobRecord::is_active).collect();
        let ids: HashSet<&str> = active.iter().map(|j| j.job_id.as_str()).collect();
        self.targets.retain(|id, _| ids.contains(id.as_str()));
        self.succeeded.retain(|id, _| ids.contains(id.as_str()));
        self.scanned.retain(|id, _| ids.contains(id.as_str()));
        let now = tokio::time::Instant::now();
        for job in active {
            let changed = dirty.contains(&job.job_id)
                || (groups_changed && job.target_selection == TargetSelection::Continuous);
            let recent = self
                .scanned
                .get(&job.job_id)
                .is_some_and(|at| now.duration_since(*at) < RESCAN);
            if changed && recent && !full {
                // Counted a moment ago: again once RESCAN has passed.
                self.dirty.lock().insert(job.job_id.clone());
                if groups_changed {
                    *self.groups_changed.lock() = true;
                }
                next = next.min(RESCAN);
            }
            let scan = full || (changed && !recent);
            if scan {
                self.scanned.insert(job.job_id.clone(), now);
            }
            match self.drive(job, scan).await {
                Ok(Some(due)) => next = next.min(due),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "jobs driver: a job's step failed");
                }
            }
        }
        Ok(next)
    }

    async fn fire_timers(&self) -> Result<()> {
        let now = epoch_millis();
        for (thing, job) in self.store().due_timers(now, BATCH).await? {
            let changed = self
                .jobs
                .inner()
                .change_execution(&thing, super::Which::Job(&job), |current, _| {
                    Ok(execution::time_out(current, now))
                })
                .await;
            match changed {
                Ok(Some(c)) if c.after.status == ExecutionStatus::TimedOut => {
                    self.jobs.inner().metrics.timed_out.inc();
                }
                // The execution no longer names this timer (it moved, or the execution is
                // gone): the timer goes, or it would fire every round.
                Ok(_) => self.drop_stale_timer(&thing, &job, now).await?,
                // The execution or its job is gone: nothing is left to time out.
                Err(super::error::JobsError::NotFound(_)) => {
                    self.drop_stale_timer(&thing, &job, now).await?;
                }
                Err(e) => tracing::debug!(error = %e, %thing, %job, "jobs: timer not fired"),
            }
        }
        Ok(())
    }

    /// Deletes a due timer whose execution no longer names it.
    async fn drop_stale_timer(&self, thing: &str, job: &str, now: u64) -> Result<()> {
        let execution = self
            .store()
            .execution(thing, job, Consistency::Linearizable)
            .await?;
        let named = execution
            .as_ref()
            .and_then(|e| e.value.timeout_at_ms)
            .filter(|at| *at <= now);
        let (timers, _) = self
            .store()
            .range_all(keys::JOB_TIMERS, None, BATCH, Consistency::Local)
            .await?;
        let suffix = format!("/{thing}/{job}");
        let mut ops = Vec::new();
        for kv in timers {
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            if let Some((deadline, _, _)) = keys::parse_job_timer(&key)
                && key.ends_with(&suffix)
                && deadline <= now
                && Some(deadline) != named
            {
                ops.push(Op::delete(key));
            }
        }
        if !ops.is_empty() {
            self.store()
                .raw()
                .txn(halyard_raft::Txn::new().and_then(ops))
                .await?;
        }
        Ok(())
    }

    /// Advances one job; when it next needs the driver, if sooner than a round.
    async fn drive(&mut self, job: JobRecord, scan: bool) -> Result<Option<Duration>> {
        let now = epoch_millis();
        match job.status {
            JobStatus::Scheduled => {
                if job.starts_at_ms.is_some_and(|at| at <= now) {
                    self.set_status(&job.job_id, JobStatus::Scheduled, JobStatus::InProgress)
                        .await?;
                    return Ok(Some(PAUSE));
                }
                Ok(job
                    .starts_at_ms
                    .map(|at| Duration::from_millis(at.saturating_sub(now))))
            }
            JobStatus::DeletionInProgress => {
                self.delete_some(&job).await?;
                Ok(Some(PAUSE))
            }
            JobStatus::Canceled => {
                self.cancel_some(&job).await?;
                Ok(None)
            }
            JobStatus::InProgress => {
                if let Some(end) = job.ends_at_ms
                    && end <= now
                {
                    self.end_rollout(&job).await?;
                    return Ok(Some(PAUSE));
                }
                let statuses = if scan {
                    let (statuses, _) = self
                        .store()
                        .statuses(&job.job_id, None, usize::MAX, Consistency::Local)
                        .await?;
                    let succeeded = statuses
                        .iter()
                        .filter(|(_, s)| *s == ExecutionStatus::Succeeded)
                        .count() as u64;
                    self.succeeded.insert(job.job_id.clone(), succeeded);
                    Some(statuses)
                } else {
                    None
                };
                let continuous = job.target_selection == TargetSelection::Continuous;
                let due = if !job.rollout.done || (continuous && scan) {
                    self.roll_out(&job, statuses.as_deref()).await?
                } else {
                    None
                };
                if let Some(statuses) = statuses {
                    self.settle(&job, &statuses).await?;
                }
                Ok(due)
            }
            JobStatus::Completed => Ok(None),
        }
    }

    /// Moves job `id` from `from` to `to`, if it is still `from` (a cancel or delete since
    /// the round read it wins).
    async fn set_status(&self, id: &str, from: JobStatus, to: JobStatus) -> Result<()> {
        let Some(read) = self.store().job(id, Consistency::Linearizable).await? else {
            return Ok(());
        };
        if read.value.status != from {
            return Ok(());
        }
        let mut job = read.value;
        job.status = to;
        job.last_updated_at_ms = epoch_millis();
        if !self
            .store()
            .replace_job(&job, read.revision, Vec::new())
            .await?
        {
            self.jobs.inner().metrics.conflicts.inc();
        }
        Ok(())
    }

    /// The schedule's end: the rollout stops, or the job is canceled (with force for
    /// FORCE_CANCEL).
    async fn end_rollout(&self, job: &JobRecord) -> Result<()> {
        let behavior = job
            .scheduling_config
            .as_ref()
            .and_then(|s| s.end_behavior)
            .unwrap_or(EndBehavior::StopRollout);
        let Some(read) = self
            .store()
            .job(&job.job_id, Consistency::Linearizable)
            .await?
        else {
            return Ok(());
        };
        // A cancel or delete since the round read the job wins.
        if read.value.status != JobStatus::InProgress || read.value.ends_at_ms != job.ends_at_ms {
            return Ok(());
        }
        let mut next = read.value;
        next.ends_at_ms = None;
        next.last_updated_at_ms = epoch_millis();
        match behavior {
            EndBehavior::StopRollout => next.rollout.done = true,
            EndBehavior::Cancel | EndBehavior::ForceCancel => {
                next.status = JobStatus::Canceled;
                next.force_canceled = behavior == EndBehavior::ForceCancel;
                next.pending_cancel = true;
            }
        }
        if !self
            .store()
            .replace_job(&next, read.revision, Vec::new())
            .await?
        {
            self.jobs.inner().metrics.conflicts.inc();
        }
        Ok(())
    }

    /// The things the job was created for, as resolved then (and added to since).
    async fn targets(&mut self, job: &JobRecord) -> Result<Arc<Vec<String>>> {
        if let Some((stamp, targets)) = self.targets.get(&job.job_id)
            && *stamp == job.last_updated_at_ms
        {
            return Ok(Arc::clone(targets));
        }
        let targets = Arc::new(self.store().targets(&job.job_id).await?);
        self.targets.insert(
            job.job_id.clone(),
            (job.last_updated_at_ms, Arc::clone(&targets)),
        );
        Ok(targets)
    }

    /// A continuous job's things without an execution (or whose execution was REMOVED), and
    /// those with a pending execution that are no longer its targets: the things it names,
    /// and the members of its groups now.
    async fn continuous_candidates(
        &mut self,
        job: &JobRecord,
        statuses: &[(String, ExecutionStatus)],
    ) -> Result<(Vec<String>, Vec<String>)> {
        let mut wanted: Vec<String> = self.targets(job).await?.as_ref().clone();
        for group in &job.target_groups {
            wanted.extend(self.members(group).await?);
        }
        wanted.sort();
        wanted.dedup();
        let has: HashSet<&str> = statuses
            .iter()
            .filter(|(_, s)| *s != ExecutionStatus::Removed)
            .map(|(t, _)| t.as_str())
            .collect();
        let departed = statuses
            .iter()
            .filter(|(t, s)| !s.is_terminal() && wanted.binary_search(t).is_err())
            .map(|(t, _)| t.clone())
            .collect();
        let candidates = wanted
            .into_iter()
            .filter(|t| !has.contains(t.as_str()))
            .collect();
        Ok((candidates, departed))
    }

    /// Executions of things that left a continuous job's groups are REMOVED.
    async fn remove_departed(&self, job: &JobRecord, departed: &[String]) -> Result<()> {
        let now = epoch_millis();
        let fence = match self.store().job(&job.job_id, Consistency::Local).await? {
            Some(read) if read.value.status == JobStatus::InProgress => {
                Some((keys::job(&job.job_id), read.revision))
            }
            _ => return Ok(()),
        };
        for thing in departed.iter().take(BATCH) {
            let Some(current) = self
                .store()
                .execution(thing, &job.job_id, Consistency::Local)
                .await?
            else {
                continue;
            };
            if current.value.status.is_terminal() {
                continue;
            }
            let removed = execution::finish(&current.value, ExecutionStatus::Removed, now);
            if self
                .store()
                .write_execution_fenced(Some(&current), &removed, fence.clone())
                .await?
            {
                self.jobs.inner().metrics.transition(removed.status.name());
                self.notify(&removed, Some(&current.value)).await;
            }
        }
        Ok(())
    }

    /// The things of `group` and of the groups under it.
    async fn members(&self, group: &str) -> Result<Vec<String>> {
        let mut things = Vec::new();
        let mut groups = vec![group.to_owned()];
        let mut seen = HashSet::new();
        while let Some(group) = groups.pop() {
            if !seen.insert(group.clone()) {
                continue;
            }
            let prefix = keys::group_things(&group);
            let (kvs, _) = self
                .store()
                .range_all(&prefix, None, usize::MAX, Consistency::Local)
                .await?;
            things.extend(
                kvs.iter()
                    .map(|kv| String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned()),
            );
            let prefix = keys::group_children(&group);
            let (kvs, _) = self
                .store()
                .range_all(&prefix, None, usize::MAX, Consistency::Local)
                .await?;
            groups.extend(
                kvs.iter()
                    .map(|kv| String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned()),
            );
        }
        Ok(things)
    }

    /// Creates the executions the rollout's rate allows now; when the next is due.
    async fn roll_out(
        &mut self,
        job: &JobRecord,
        statuses: Option<&[(String, ExecutionStatus)]>,
    ) -> Result<Option<Duration>> {
        let windows = job
            .scheduling_config
            .as_ref()
            .map_or(&[][..], |s| s.maintenance_windows.as_slice());
        if !super::schedule::inside(windows, epoch_millis()) {
            // Outside its maintenance windows a rollout waits; looked at again each minute.
            return Ok(Some(Duration::from_secs(60)));
        }
        let continuous = job.target_selection == TargetSelection::Continuous;
        let (candidates, from) = if continuous {
            let Some(statuses) = statuses else {
                return Ok(None);
            };
            let (candidates, departed) = self.continuous_candidates(job, statuses).await?;
            if !departed.is_empty() {
                self.remove_departed(job, &departed).await?;
            }
            (candidates, 0)
        } else {
            let targets = self.targets(job).await?;
            let from = job.rollout.cursor.min(targets.len());
            (targets[from..].to_vec(), from)
        };
        let Some(read) = self.store().job(&job.job_id, Consistency::Local).await? else {
            return Ok(None);
        };
        if read.value != *job {
            // Changed since the round read it: the next round goes on from the new version.
            return Ok(Some(PAUSE));
        }
        let now = epoch_millis();
        let succeeded = self.succeeded.get(&job.job_id).copied().unwrap_or(0);
        let (allowed, mut state) = allowance(job, succeeded, now);
        let take = allowed
            .map_or(BATCH, |a| usize::try_from(a).unwrap_or(BATCH))
            .min(BATCH)
            .min(candidates.len());
        let mut compares = vec![unchanged_since(&keys::job(&job.job_id), read.revision)];
        let mut ops = Vec::with_capacity(take * 2 + 1);
        let mut created = Vec::with_capacity(take);
        let mut replaced = Vec::new();
        for thing in &candidates[..take] {
            let existing = self
                .store()
                .execution(thing, &job.job_id, Consistency::Local)
                .await?;
            let execution = match &existing {
                // A thing back in a continuous job's groups runs it again, retries afresh.
                Some(old) if old.value.status == ExecutionStatus::Removed => {
                    let mut again = ExecutionRecord::queued(
                        &job.job_id,
                        thing,
                        old.value.execution_number + 1,
                        now,
                    );
                    again.retry_attempt = 0;
                    replaced.push(old.value.clone());
                    again
                }
                Some(_) => continue,
                None => ExecutionRecord::queued(&job.job_id, thing, 1, now),
            };
            let key = keys::job_execution(thing, &job.job_id);
            compares.push(unchanged_since(
                &key,
                existing.as_ref().map_or(0, |e| e.revision),
            ));
            ops.extend(execution_ops(
                existing.as_ref().map(|e| &e.value),
                &execution,
            )?);
            created.push(execution);
        }
        state.queued += created.len() as u64;
        state.segment_queued += created.len() as u64;
        state.cursor = from + take;
        let everything = take == candidates.len();
        if everything {
            state.done = true;
        }
        // With nothing to create, only a change of progress is written (not the stretch the
        // rate is measured from, which moves every time): a continuous job with a rate does
        // not rewrite its record on every count.
        let progressed = state.done != job.rollout.done || state.cursor != job.rollout.cursor;
        if take == 0 && !progressed {
            return Ok(if everything {
                None
            } else {
                next_due(&state, now).map(Duration::from_millis)
            });
        }
        let mut next_job = job.clone();
        next_job.rollout = state.clone();
        ops.push(Op::put(
            keys::job(&job.job_id),
            super::store::encode(&next_job)?,
        ));
        let txn = halyard_raft::Txn::new().when(compares).and_then(ops);
        if !self.store().raw().txn(txn).await?.succeeded {
            self.jobs.inner().metrics.conflicts.inc();
            return Ok(Some(PAUSE));
        }
        let metrics = &self.jobs.inner().metrics;
        metrics.rolled_out.inc_by(created.len() as u64);
        for execution in &created {
            metrics.transition(execution.status.name());
            let before = replaced
                .iter()
                .find(|r| r.thing_name == execution.thing_name);
            self.notify(execution, before).await;
        }
        if everything {
            return Ok(None);
        }
        Ok(next_due(&state, epoch_millis())
            .map(Duration::from_millis)
            .or(Some(PAUSE)))
    }

    /// Tells `execution`'s device of its change (`before`: as it was, none when new).
    async fn notify(&self, execution: &ExecutionRecord, before: Option<&ExecutionRecord>) {
        let others = match self
            .store()
            .executions_of_thing(&execution.thing_name, Consistency::Local)
            .await
        {
            Ok(others) => others.into_iter().map(|r| r.value).collect::<Vec<_>>(),
            Err(_) => Vec::new(),
        };
        self.jobs
            .inner()
            .notifier
            .execution_changed(
                &others,
                Change {
                    before,
                    after: Some(execution),
                },
            )
            .await;
    }

    /// Retries, abort and completion, from the job's executions' statuses.
    async fn settle(&self, job: &JobRecord, statuses: &[(String, ExecutionStatus)]) -> Result<()> {
        let now = epoch_millis();
        let mut retrying = 0usize;
        let retries = job.job_executions_retry_config.is_some();
        // Retries hold only while the job is as read: a stale driver (leadership moving) does
        // not queue work on a job canceled or deleted meanwhile.
        let fence = match self.store().job(&job.job_id, Consistency::Local).await? {
            Some(read) if read.value.status == JobStatus::InProgress => read.revision,
            _ => return Ok(()),
        };
        for (thing, status) in statuses {
            if !retries || !matches!(status, ExecutionStatus::Failed | ExecutionStatus::TimedOut) {
                continue;
            }
            let Some(current) = self
                .store()
                .execution(thing, &job.job_id, Consistency::Local)
                .await?
            else {
                continue;
            };
            let Some(retried) = execution::retry(&current.value, job, now) else {
                continue;
            };
            retrying += 1;
            if self
                .store()
                .write_execution_fenced(
                    Some(&current),
                    &retried,
                    Some((keys::job(&job.job_id), fence)),
                )
                .await?
            {
                self.jobs.inner().metrics.retried.inc();
                self.jobs.inner().metrics.transition(retried.status.name());
                self.notify(&retried, Some(&current.value)).await;
            }
        }
        if retrying > 0 {
            return Ok(());
        }
        if let Some(reason) = abort_reason(job, statuses) {
            return self.abort(job, reason).await;
        }
        let all_final = statuses.iter().all(|(_, s)| s.is_terminal());
        if job.target_selection == TargetSelection::Snapshot && job.rollout.done && all_final {
            self.complete(job, statuses).await?;
        }
        Ok(())
    }

    async fn abort(&self, job: &JobRecord, reason: String) -> Result<()> {
        let Some(read) = self
            .store()
            .job(&job.job_id, Consistency::Linearizable)
            .await?
        else {
            return Ok(());
        };
        if read.value.status != JobStatus::InProgress {
            return Ok(());
        }
        let mut next = read.value;
        next.status = JobStatus::Canceled;
        next.pending_cancel = true;
        next.comment = Some(reason);
        next.last_updated_at_ms = epoch_millis();
        if self
            .store()
            .replace_job(&next, read.revision, Vec::new())
            .await?
        {
            self.jobs.inner().metrics.aborted.inc();
            tracing::info!(job = %next.job_id, "job aborted by its abort configuration");
        } else {
            self.jobs.inner().metrics.conflicts.inc();
        }
        Ok(())
    }

    async fn complete(
        &self,
        job: &JobRecord,
        statuses: &[(String, ExecutionStatus)],
    ) -> Result<()> {
        let Some(read) = self
            .store()
            .job(&job.job_id, Consistency::Linearizable)
            .await?
        else {
            return Ok(());
        };
        if read.value.status != JobStatus::InProgress || !read.value.rollout.done {
            return Ok(());
        }
        // The counts are read again after the barrier: an execution retried or created
        // since the round's read keeps the job going.
        let (fresh, _) = self
            .store()
            .statuses(&job.job_id, None, usize::MAX, Consistency::Local)
            .await?;
        if fresh.len() != statuses.len() || !fresh.iter().all(|(_, s)| s.is_terminal()) {
            return Ok(());
        }
        let mut next = read.value;
        let now = epoch_millis();
        next.status = JobStatus::Completed;
        next.completed_at_ms = Some(now);
        next.last_updated_at_ms = now;
        if self
            .store()
            .replace_job(&next, read.revision, Vec::new())
            .await?
        {
            let counts = count(&fresh);
            self.jobs
                .inner()
                .notifier
                .job_event(&next, "completed", Some(&counts))
                .await;
        } else {
            self.jobs.inner().metrics.conflicts.inc();
        }
        Ok(())
    }

    /// Cancels a batch of a canceled job's pending executions; once none is left, the job's
    /// cancellation is complete.
    async fn cancel_some(&self, job: &JobRecord) -> Result<()> {
        let (statuses, _) = self
            .store()
            .statuses(&job.job_id, None, usize::MAX, Consistency::Local)
            .await?;
        let now = epoch_millis();
        let mut left = 0;
        for (thing, status) in statuses {
            let cancels = status == ExecutionStatus::Queued
                || (status == ExecutionStatus::InProgress && job.force_canceled);
            if !cancels {
                continue;
            }
            left += 1;
            if left > BATCH {
                break;
            }
            let Some(current) = self
                .store()
                .execution(&thing, &job.job_id, Consistency::Local)
                .await?
            else {
                continue;
            };
            // The device may have started it since the statuses were read: without force, an
            // execution in progress is left to finish.
            let still = current.value.status == ExecutionStatus::Queued
                || (current.value.status == ExecutionStatus::InProgress && job.force_canceled);
            if !still {
                continue;
            }
            let mut canceled = execution::finish(&current.value, ExecutionStatus::Canceled, now);
            canceled.force_canceled = current.value.status == ExecutionStatus::InProgress;
            if self
                .store()
                .write_execution(Some(&current), &canceled, Vec::new())
                .await?
            {
                self.jobs.inner().metrics.transition(canceled.status.name());
                self.notify(&canceled, Some(&current.value)).await;
            }
        }
        if left > 0 {
            self.jobs.inner().driver_wake.notify_one();
            return Ok(());
        }
        let Some(read) = self
            .store()
            .job(&job.job_id, Consistency::Linearizable)
            .await?
        else {
            return Ok(());
        };
        let mut next = read.value;
        if next.status != JobStatus::Canceled {
            return Ok(());
        }
        next.pending_cancel = false;
        if self
            .store()
            .replace_job(&next, read.revision, Vec::new())
            .await?
        {
            self.jobs
                .inner()
                .notifier
                .job_event(&next, "canceled", None)
                .await;
        }
        Ok(())
    }

    /// Deletes a batch of a deleted job's executions; the job itself once none is left.
    async fn delete_some(&self, job: &JobRecord) -> Result<()> {
        let (statuses, more) = self
            .store()
            .statuses(&job.job_id, None, BATCH, Consistency::Local)
            .await?;
        if !statuses.is_empty() {
            let mut deleted: Vec<Read<ExecutionRecord>> = Vec::new();
            let mut compares = Vec::new();
            let mut ops = Vec::new();
            for (thing, _) in &statuses {
                match self
                    .store()
                    .execution(thing, &job.job_id, Consistency::Local)
                    .await?
                {
                    Some(current) => {
                        compares.push(unchanged_since(
                            &keys::job_execution(thing, &job.job_id),
                            current.revision,
                        ));
                        ops.extend(delete_ops(&current.value));
                        deleted.push(current);
                    }
                    None => ops.push(Op::delete(keys::job_thing(&job.job_id, thing))),
                }
            }
            let txn = halyard_raft::Txn::new().when(compares).and_then(ops);
            if !self.store().raw().txn(txn).await?.succeeded {
                self.jobs.inner().metrics.conflicts.inc();
                return Ok(());
            }
            for current in &deleted {
                if !current.value.status.is_terminal() {
                    let others = self
                        .store()
                        .executions_of_thing(&current.value.thing_name, Consistency::Local)
                        .await
                        .map(|all| all.into_iter().map(|r| r.value).collect::<Vec<_>>())
                        .unwrap_or_default();
                    self.jobs
                        .inner()
                        .notifier
                        .execution_changed(
                            &others,
                            Change {
                                before: Some(&current.value),
                                after: None,
                            },
                        )
                        .await;
                }
            }
            if more || statuses.len() == BATCH {
                return Ok(());
            }
        }
        let Some(read) = self
            .store()
            .job(&job.job_id, Consistency::Linearizable)
            .await?
        else {
            return Ok(());
        };
        // Every execution is gone (writes that could add one hold only while the job is as
        // it was before DELETION_IN_PROGRESS, or compare an execution already deleted).
        let (left, _) = self
            .store()
            .statuses(&job.job_id, None, 1, Consistency::Linearizable)
            .await?;
        if !left.is_empty() {
            return Ok(());
        }
        let key = keys::job(&job.job_id);
        let txn = halyard_raft::Txn::new()
            .when([unchanged_since(&key, read.revision)])
            .and_then([
                Op::delete(key),
                Op::delete_prefix(keys::job_targets(&job.job_id)),
            ]);
        let done = self.store().raw().txn(txn).await?.succeeded;
        if done {
            self.jobs
                .inner()
                .notifier
                .job_event(&read.value, "deleted", None)
                .await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::jobs::model::{
        ExponentialRate, RateIncreaseCriteria, RolloutConfig, TargetSelection,
    };

    fn job(rollout: Option<RolloutConfig>) -> JobRecord {
        let json = serde_json::json!({
            "jobId": "j", "jobArn": "a", "targetSelection": "SNAPSHOT", "status": "IN_PROGRESS",
            "document": "{}", "targets": [], "createdAtMs": 0, "lastUpdatedAtMs": 0,
        });
        let mut job: JobRecord = serde_json::from_value(json).unwrap();
        job.target_selection = TargetSelection::Snapshot;
        job.job_executions_rollout_config = rollout;
        job
    }

    #[test]
    fn without_a_rate_everything_may_go_at_once() {
        let (allowed, _) = allowance(&job(None), 0, 1_000);
        assert_eq!(allowed, None);
    }

    #[test]
    fn a_maximum_rate_spreads_executions_over_the_minute() {
        let mut job = job(Some(RolloutConfig {
            maximum_per_minute: Some(120),
            exponential_rate: None,
        }));
        let (allowed, state) = allowance(&job, 0, 0);
        assert_eq!(allowed, Some(0));
        job.rollout = state;
        let (allowed, _) = allowance(&job, 0, 500);
        assert_eq!(allowed, Some(1), "two a second");
        let (allowed, _) = allowance(&job, 0, 1_000);
        assert_eq!(allowed, Some(2));
        // An idle minute does not save up a minute's worth.
        let (allowed, state) = allowance(&job, 0, 60_000);
        assert_eq!(allowed, Some(2));
        job.rollout = state;
        job.rollout.segment_queued += 2;
        let (allowed, _) = allowance(&job, 0, 60_000);
        assert_eq!(allowed, Some(0));
    }

    #[test]
    fn an_exponential_rate_grows_with_notified_things_up_to_the_maximum() {
        let mut job = job(Some(RolloutConfig {
            maximum_per_minute: Some(40),
            exponential_rate: Some(ExponentialRate {
                base_rate_per_minute: 10,
                increment_factor: 2.0,
                rate_increase_criteria: RateIncreaseCriteria {
                    number_of_notified_things: Some(5),
                    number_of_succeeded_things: None,
                },
            }),
        }));
        let (_, state) = allowance(&job, 0, 0);
        assert_eq!(state.rate_per_minute, Some(10.0));
        job.rollout = state;
        job.rollout.queued = 5;
        let (_, state) = allowance(&job, 0, 1_000);
        assert_eq!(state.rate_per_minute, Some(20.0));
        job.rollout = state;
        job.rollout.queued = 100;
        let (_, state) = allowance(&job, 0, 2_000);
        assert_eq!(state.rate_per_minute, Some(40.0), "capped at the maximum");
    }

    #[test]
    fn aborts_need_enough_executed_things_and_failures() {
        let mut job = job(None);
        job.abort_config = Some(crate::services::jobs::model::AbortConfig {
            criteria_list: vec![crate::services::jobs::model::AbortCriteria {
                failure_type: crate::services::jobs::model::FailureType::Failed,
                action: "CANCEL".into(),
                threshold_percentage: 50.0,
                min_number_of_executed_things: 4,
            }],
        });
        let statuses = |list: &[ExecutionStatus]| -> Vec<(String, ExecutionStatus)> {
            list.iter()
                .enumerate()
                .map(|(i, s)| (format!("t{i}"), *s))
                .collect()
        };
        use ExecutionStatus::*;
        assert!(abort_reason(&job, &statuses(&[Failed, Failed, Failed, Queued])).is_none());
        assert!(abort_reason(&job, &statuses(&[Failed, Failed, Succeeded, Succeeded])).is_some());
        assert!(abort_reason(&job, &statuses(&[Failed, Rejected, Succeeded, Succeeded])).is_none());
    }
}
