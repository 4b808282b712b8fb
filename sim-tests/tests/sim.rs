//! Seeds of the register workload under faults. Each seed is one deterministic run; a failing
//! seed is printed with the command that replays it alone.
#![cfg(madsim)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use halyard_raft::{Consistency, NodeId, RangeRequest};
use halyard_sim_tests::checker::{Call, Operation, check_register};
use halyard_sim_tests::cluster::SimCluster;
use madsim::rand::{Rng, thread_rng};
use parking_lot::Mutex;

const KEYS: [&str; 2] = ["r/0", "r/1"];
const CLIENTS: usize = 3;
const OPS_PER_CLIENT: usize = 12;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One run on a thread of its own: thread-local state (hash seeds, generators) must not
/// carry over from one run to the next, or a seed would not replay.
fn run_seed(seed: u64) -> String {
    let run = std::thread::spawn(move || {
        let mut runtime =
            madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        runtime.set_time_limit(Duration::from_secs(600));
        runtime.block_on(register_scenario())
    });
    match run.join() {
        Ok(log) => log,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Replays a few seeds the way a user would, each in a process of its own, and compares the
/// event logs.
#[test]
fn the_same_seed_replays_the_same_run() {
    let exe = std::env::current_exe().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for seed in [11, 12, 13] {
        let mut logs = Vec::new();
        for attempt in 0..2 {
            let log = dir.path().join(format!("run{attempt}"));
            let status = std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "register_workload_stays_linearizable_under_faults",
                    "--quiet",
                ])
                .env("SIM_SEED", seed.to_string())
                .env("SIM_SEEDS", "1")
                .env("SIM_LOG", &log)
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "seed {seed} failed when replayed");
            logs.push(std::fs::read_to_string(format!("{}.{seed}", log.display())).unwrap());
        }
        assert!(
            logs[0] == logs[1],
            "seed {seed} is not deterministic: two runs differ"
        );
    }
}

#[test]
fn register_workload_stays_linearizable_under_faults() {
    let first = env_u64("SIM_SEED", 1);
    let count = env_u64("SIM_SEEDS", 20);
    for seed in first..first + count {
        let outcome = std::panic::catch_unwind(|| run_seed(seed));
        if let (Ok(log), Ok(path)) = (&outcome, std::env::var("SIM_LOG")) {
            let _ = std::fs::write(format!("{path}.{seed}"), log);
        }
        if outcome.is_err() {
            panic!(
                "seed {seed} failed; replay it alone with:\n  SIM_SEED={seed} SIM_SEEDS=1 scripts/sim.sh"
            );
        }
    }
}

/// Runs the workload; returns its event log: every operation with its answer, and the state.
async fn register_scenario() -> String {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Arc::new(SimCluster::start(3, dir.path().to_path_buf()).await);
    let clock = Arc::new(AtomicU64::new(0));
    let history: Arc<Mutex<BTreeMap<&'static str, Vec<Operation>>>> = Arc::default();

    let nemesis = {
        let cluster = Arc::clone(&cluster);
        tokio::spawn(async move { nemesis(&cluster).await })
    };
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let cluster = Arc::clone(&cluster);
        let clock = Arc::clone(&clock);
        let history = Arc::clone(&history);
        clients.push(tokio::spawn(async move {
            for n in 0..OPS_PER_CLIENT {
                run_op(&cluster, client, n, &clock, &history).await;
                tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(10..200))).await;
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    nemesis.abort();

    // Faults heal: every node returns, the cluster settles, every replica agrees.
    cluster.heal();
    for id in cluster.ids.clone() {
        cluster.set_slow_disk(id, None);
        if cluster.store(id).is_none() {
            cluster.restart(id);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    for key in KEYS {
        let invoked = clock.fetch_add(1, Ordering::SeqCst);
        let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
        let got = cluster
            .store(leader)
            .unwrap()
            .get(key.as_bytes(), Consistency::Linearizable)
            .await
            .unwrap();
        let done = clock.fetch_add(1, Ordering::SeqCst);
        history.lock().entry(key).or_default().push(Operation {
            client: usize::MAX,
            call: Call::Read,
            invoked,
            completed: Some((done, got.kv.map(|kv| kv.value))),
        });
    }
    cluster.converge(Duration::from_secs(30)).await;
    let mut dumps = Vec::new();
    for id in &cluster.ids {
        let store = cluster.store(*id).unwrap();
        let range = store
            .range(RangeRequest::prefix(""), Consistency::Local)
            .await
            .unwrap();
        dumps.push((store.revision(), range.kvs));
    }
    assert!(
        dumps.windows(2).all(|w| w[0] == w[1]),
        "replicas differ after healing"
    );

    let history = history.lock();
    let total: usize = history.values().map(Vec::len).sum();
    let answered: usize = history
        .values()
        .flatten()
        .filter(|o| o.completed.is_some())
        .count();
    tracing::info!(total, answered, revision = dumps[0].0, "run finished");
    // However hard the faults, a run in which nothing got through tested nothing.
    assert!(answered > 0, "no operation of {total} was answered");
    for (key, ops) in history.iter() {
        if let Err(v) = check_register(None, ops) {
            panic!("key {key} is not linearizable: {}", v.explanation);
        }
    }
    format!("{history:?}\n{dumps:?}")
}

async fn run_op(
    cluster: &Arc<SimCluster>,
    client: usize,
    n: usize,
    clock: &AtomicU64,
    history: &Mutex<BTreeMap<&'static str, Vec<Operation>>>,
) {
    let (key, node, write) = {
        let mut rng = thread_rng();
        (
            KEYS[rng.gen_range(0..KEYS.len())],
            rng.gen_range(1..=cluster.ids.len() as NodeId),
            rng.gen_bool(0.5),
        )
    };
    let Some(store) = cluster.store(node) else {
        return;
    };
    let Some(host) = cluster.node(node) else {
        return;
    };
    let value = format!("c{client}-{n}").into_bytes();
    let call = if write {
        Call::Write(value.clone())
    } else {
        Call::Read
    };
    let invoked = clock.fetch_add(1, Ordering::SeqCst);
    // The operation runs on the host it was sent to, and dies with it.
    let task = host.spawn(async move {
        if write {
            store.put(key, value).await.map(|_| None)
        } else {
            store
                .get(key.as_bytes(), Consistency::Linearizable)
                .await
                .map(|g| g.kv.map(|kv| kv.value))
        }
    });
    let answer = tokio::time::timeout(Duration::from_secs(5), task).await;
    let completed = match answer {
        Ok(Ok(Ok(value))) => Some((clock.fetch_add(1, Ordering::SeqCst), value)),
        _ => None,
    };
    history.lock().entry(key).or_default().push(Operation {
        client,
        call,
        invoked,
        completed,
    });
}

/// Crashes, partitions and slow disks, one at a time, each healed before the next.
async fn nemesis(cluster: &SimCluster) {
    loop {
        let (pause, fault, victim, hold) = {
            let mut rng = thread_rng();
            (
                rng.gen_range(100..600),
                rng.gen_range(0..4),
                rng.gen_range(1..=cluster.ids.len() as NodeId),
                rng.gen_range(200..1500),
            )
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
        match fault {
            0 => {
                cluster.crash(victim);
                tokio::time::sleep(Duration::from_millis(hold)).await;
                cluster.restart(victim);
            }
            1 => {
                let others: Vec<NodeId> = cluster
                    .ids
                    .iter()
                    .copied()
                    .filter(|i| *i != victim)
                    .collect();
                cluster.partition(&[victim], &others);
                tokio::time::sleep(Duration::from_millis(hold)).await;
                cluster.heal();
            }
            2 => {
                if let Some(leader) = cluster.leader().await {
                    let others: Vec<NodeId> = cluster
                        .ids
                        .iter()
                        .copied()
                        .filter(|i| *i != leader)
                        .collect();
                    cluster.partition(&[leader], &others);
                    tokio::time::sleep(Duration::from_millis(hold)).await;
                    cluster.heal();
                }
            }
            _ => {
                cluster.set_slow_disk(victim, Some(Duration::from_millis(20)));
                tokio::time::sleep(Duration::from_millis(hold)).await;
                cluster.set_slow_disk(victim, None);
            }
        }
    }
}
