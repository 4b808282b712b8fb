//! Jobs under faults: a job over a fleet rolls out at a limited rate while simulated devices
//! on every node start their executions and report SUCCEEDED or FAILED, or go silent and are
//! timed out, and the nemesis kills, restarts and partitions the nodes (the job's driver, the
//! store's leader, among them). Once the faults heal the job must complete with:
//! - every execution terminal, its status in the job's index the same as in its record, and
//!   DescribeJob's counts those of the records;
//! - every update a device saw accepted still true: an execution the device saw SUCCEEDED
//!   was never retried or changed, one it saw FAILED only retried as a later execution;
//!   never two accepted terminal updates of one execution;
//! - the rollout never above its rate: in any minute, at most the maximum per minute (and
//!   the one execution a second the rate allows at once) were created.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use halyard_node::server::Server;
use halyard_node::services::jobs::Jobs;
use halyard_node::services::jobs::control::{JobSpec, Resolved};
use halyard_node::services::jobs::error::JobsError;
use halyard_node::services::jobs::execution::Update;
use halyard_node::services::jobs::model::{
    ExecutionStatus, FailureType, JobStatus, RetryConfig, RetryCriteria, RolloutConfig,
    TimeoutConfig,
};
use halyard_raft::{Consistency, NodeId};
use madsim::rand::{Rng, thread_rng};
use parking_lot::Mutex;

use crate::cluster_broker_scenario::Brokers;

const NODES: u64 = 3;
const THINGS: usize = 16;
const JOB: &str = "firmware";
/// Executions created a minute at most.
const RATE: u64 = 30;
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct Recorder {
    /// (thing, execution number, status) of every terminal update a device saw accepted.
    accepted: Vec<(String, u64, ExecutionStatus)>,
    /// Updates whose outcome the device never learned.
    unknown: u64,
    faults: Vec<String>,
}

fn jobs_of(brokers: &Brokers, id: NodeId) -> Option<Arc<Server>> {
    brokers.servers.lock().get(&id).cloned()
}

/// A live node's jobs service, any.
async fn some_jobs(brokers: &Brokers) -> Arc<Server> {
    loop {
        let ids = brokers.ids.clone();
        let id = ids[thread_rng().gen_range(0..ids.len())];
        if let Some(server) = jobs_of(brokers, id) {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn call<T>(
    future: impl std::future::Future<Output = Result<T, JobsError>>,
) -> Option<Result<T, JobsError>> {
    tokio::time::timeout(CALL_TIMEOUT, future).await.ok()
}

/// What a thing's device does with its execution `number`: most succeed, some fail, and
/// some never answer (and are timed out); a retried execution always succeeds.
fn choice(thing: usize, number: u64) -> Option<ExecutionStatus> {
    if number > 1 {
        return Some(ExecutionStatus::Succeeded);
    }
    match thing % 5 {
        0 => Some(ExecutionStatus::Failed),
        1 => None,
        _ => Some(ExecutionStatus::Succeeded),
    }
}

/// One device: takes its next execution from whichever node is up and answers it, until
/// the job is done.
async fn device(brokers: Arc<Brokers>, recorder: Arc<Mutex<Recorder>>, index: usize) {
    let thing = format!("thing-{index}");
    let mut silent: BTreeSet<u64> = BTreeSet::new();
    loop {
        tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(200..1200))).await;
        let server = some_jobs(&brokers).await;
        let jobs: &Jobs = server.jobs();
        match call(jobs.describe_job(JOB)).await {
            Some(Ok((job, _))) if job.status == JobStatus::Completed => return,
            _ => {}
        }
        let started = match call(jobs.start_next(&thing, None, None)).await {
            Some(Ok(Some(started))) => started.execution,
            _ => continue,
        };
        let number = started.execution_number;
        let Some(status) = choice(index, number) else {
            silent.insert(number);
            continue;
        };
        let update = Update {
            status: Some(status),
            expected_version: Some(started.version_number),
            execution_number: Some(number),
            ..Update::default()
        };
        match call(jobs.update_for_device(&thing, JOB, &update)).await {
            Some(Ok(done)) => {
                assert_eq!(done.execution.status, status);
                recorder
                    .lock()
                    .accepted
                    .push((thing.clone(), number, status));
            }
            // Another writer (a timer, a retry of an earlier attempt) was first.
            Some(Err(
                JobsError::VersionMismatch { .. }
                | JobsError::InvalidStateTransition { .. }
                | JobsError::NotFound(_),
            )) => {}
            Some(Err(_)) | None => recorder.lock().unknown += 1,
        }
    }
}

async fn nemesis(brokers: Arc<Brokers>, recorder: Arc<Mutex<Recorder>>) {
    loop {
        tokio::time::sleep(Duration::from_secs(thread_rng().gen_range(3..10))).await;
        let ids = brokers.ids.clone();
        let victim = match thread_rng().gen_range(0..3) {
            // The driver, most of the time.
            0 | 1 => brokers.leader().unwrap_or(ids[0]),
            _ => ids[thread_rng().gen_range(0..ids.len())],
        };
        match thread_rng().gen_range(0..3) {
            0 => {
                recorder.lock().faults.push(format!("restart {victim}"));
                brokers.restart(victim);
            }
            1 => {
                recorder.lock().faults.push(format!("kill {victim}"));
                brokers.kill(victim);
                tokio::time::sleep(Duration::from_secs(thread_rng().gen_range(1..6))).await;
                brokers.restart(victim);
            }
            _ => {
                recorder.lock().faults.push(format!("partition {victim}"));
                brokers.partition(&[victim]);
                tokio::time::sleep(Duration::from_secs(thread_rng().gen_range(1..6))).await;
                brokers.heal();
            }
        }
    }
}

/// Runs one seed of the scenario; returns its event log.
pub async fn run() -> String {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("no scratch directory: {e}"),
    };
    let brokers = Arc::new(Brokers::start(NODES, dir.path()));
    brokers.wait_until_serving(Duration::from_secs(30)).await;
    let things: Vec<String> = (0..THINGS).map(|n| format!("thing-{n}")).collect();
    let spec = JobSpec {
        targets: things
            .iter()
            .map(|t| format!("arn:aws:iot:us-east-1:000000000000:thing/{t}"))
            .collect(),
        document: Some(r#"{"firmware":"2.0"}"#.to_owned()),
        job_executions_rollout_config: Some(RolloutConfig {
            maximum_per_minute: Some(RATE),
            exponential_rate: None,
        }),
        timeout_config: Some(TimeoutConfig {
            in_progress_timeout_in_minutes: Some(1),
        }),
        job_executions_retry_config: Some(RetryConfig {
            criteria_list: vec![RetryCriteria {
                failure_type: FailureType::All,
                number_of_retries: 1,
            }],
        }),
        ..JobSpec::default()
    };
    loop {
        let server = some_jobs(&brokers).await;
        let resolved = Resolved {
            things: things.clone(),
            named: things.clone(),
            groups: Vec::new(),
        };
        match call(server.jobs().create_job(JOB, spec.clone(), resolved)).await {
            Some(Ok(_)) | Some(Err(JobsError::AlreadyExists { .. })) => break,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }

    let recorder = Arc::new(Mutex::new(Recorder::default()));
    let faults = tokio::spawn(nemesis(Arc::clone(&brokers), Arc::clone(&recorder)));
    let devices: Vec<_> = (0..THINGS)
        .map(|n| tokio::spawn(device(Arc::clone(&brokers), Arc::clone(&recorder), n)))
        .collect();
    // Long enough for the rollout (THINGS at RATE a minute), the timeouts and the retries.
    tokio::time::sleep(Duration::from_secs(60)).await;
    faults.abort();
    brokers.heal();
    for id in brokers.ids.clone() {
        if jobs_of(&brokers, id).is_none() {
            brokers.restart(id);
        }
    }
    brokers.wait_until_serving(Duration::from_secs(60)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    for device in devices {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, device).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("a device failed: {e}"),
            Err(_) => {
                let server = some_jobs(&brokers).await;
                let state = server.jobs().describe_job(JOB).await;
                panic!(
                    "the job did not complete: {:?}\nfaults: {:?}",
                    state.map(|(j, c)| (j.status, j.rollout, c)),
                    recorder.lock().faults
                );
            }
        }
    }
    check(&brokers, &recorder, &things).await
}

async fn check(brokers: &Brokers, recorder: &Mutex<Recorder>, things: &[String]) -> String {
    let server = some_jobs(brokers).await;
    let jobs = server.jobs();
    let (job, counts) = match jobs.describe_job(JOB).await {
        Ok(described) => described,
        Err(e) => panic!("the job cannot be described: {e}"),
    };
    assert_eq!(job.status, JobStatus::Completed);
    let mut tally: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut finals = BTreeMap::new();
    let mut first_queued = Vec::new();
    for thing in things {
        let execution = match jobs.describe_execution(thing, JOB, None).await {
            Ok(e) => e,
            Err(e) => panic!("{thing} has no execution: {e}"),
        };
        assert!(
            execution.status.is_terminal(),
            "{thing} is {:?} in a completed job",
            execution.status
        );
        *tally.entry(execution.status.count_name()).or_default() += 1;
        if execution.execution_number == 1 {
            first_queued.push(execution.queued_at_ms);
        }
        finals.insert(thing.clone(), execution);
    }
    for (name, count) in &counts {
        assert_eq!(
            tally.get(name).copied().unwrap_or(0),
            *count,
            "DescribeJob's {name} is not the records' count: {counts:?} vs {tally:?}"
        );
    }
    let (indexed, _) = match server
        .store()
        .range(
            halyard_raft::RangeRequest::prefix(format!("job-things/{JOB}/")),
            Consistency::Linearizable,
        )
        .await
    {
        Ok(range) => (range.kvs, range.more),
        Err(e) => panic!("the index is unreadable: {e}"),
    };
    assert_eq!(indexed.len(), things.len(), "the index has other things");
    for kv in &indexed {
        let thing =
            String::from_utf8_lossy(&kv.key[format!("job-things/{JOB}/").len()..]).to_string();
        // A JSON string: the status's name in quotes.
        let name = String::from_utf8_lossy(&kv.value)
            .trim_matches('"')
            .to_owned();
        let Some(status) = ExecutionStatus::parse(&name) else {
            panic!("index entry of {thing} unreadable: {name}");
        };
        assert_eq!(
            Some(status),
            finals.get(&thing).map(|e| e.status),
            "the index and the record of {thing} disagree"
        );
    }

    let recorder = recorder.lock();
    let mut seen = BTreeSet::new();
    for (thing, number, status) in &recorder.accepted {
        assert!(
            seen.insert((thing.clone(), *number)),
            "two terminal updates of {thing}'s execution {number} were accepted"
        );
        let Some(last) = finals.get(thing) else {
            panic!("{thing} has no final execution");
        };
        if last.execution_number == *number {
            assert_eq!(
                last.status, *status,
                "{thing}'s accepted {status:?} was overwritten"
            );
        } else {
            assert!(
                last.execution_number > *number && *status == ExecutionStatus::Failed,
                "{thing}'s accepted {status:?} of execution {number} was retried as {}",
                last.execution_number
            );
        }
    }

    // The rollout's rate: the executions still in their first attempt carry their creation
    // time; in any minute at most the rate (and the one a second allowed at once).
    first_queued.sort_unstable();
    for (i, start) in first_queued.iter().enumerate() {
        let within = first_queued[i..]
            .iter()
            .take_while(|t| **t < start + 60_000)
            .count() as u64;
        assert!(
            within <= RATE + 1,
            "{within} executions were created within a minute, over the rate {RATE}"
        );
    }
    assert_eq!(
        job.rollout.queued,
        things.len() as u64,
        "every thing notified once"
    );
    format!(
        "{:?}\n{counts:?}\n{:?}\nunknown {}",
        recorder.faults, recorder.accepted, recorder.unknown
    )
}
