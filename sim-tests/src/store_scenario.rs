//! The replicated store under faults. Clients run a register workload and a counter workload
//! (compare-and-set through `txn`) on whichever node they reach; a watcher on every host
//! follows every change; a nemesis crashes hosts, cuts and degrades the network, slows disks
//! and jumps clocks while an operator adds, removes and promotes members and moves the
//! leadership. Once the faults heal, every check runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use halyard_raft::{
    Compare, CompareOp, CompareTarget, Consistency, EventKind, NodeId, Op, RangeRequest, Revision,
    RevisionEvents, Store, StoreError, Txn,
};
use madsim::rand::{Rng, thread_rng};
use parking_lot::Mutex;

use crate::checker::{
    Answer, Call, Operation, check_register, check_revisions_increase, check_watch_stream,
};
use crate::cluster::{SimCluster, node_addr};

const REGISTERS: [&str; 2] = ["r/0", "r/1"];
const COUNTER: &str = "c/0";
/// Written once the faults have healed; every watcher on a member must reach it.
const SENTINEL: &str = "z/end";
const CLIENTS: usize = 4;
const OPS_PER_CLIENT: usize = 12;
const VOTERS: u64 = 3;
const SPARES: u64 = 1;
const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// A write whose success the client saw, with the revision it was told.
#[derive(Debug)]
struct AckedWrite {
    client: usize,
    key: &'static str,
    value: Vec<u8>,
    revision: Revision,
}

/// What one incarnation of a host's watcher saw.
#[derive(Debug)]
struct WatchLog {
    host: NodeId,
    start: Revision,
    seen: Vec<RevisionEvents>,
    /// Why the stream ended, if it did while its host was up.
    ended: Option<String>,
}

#[derive(Default)]
struct Recorder {
    clock: AtomicU64,
    operations: Mutex<BTreeMap<&'static str, Vec<Operation>>>,
    acked: Mutex<Vec<AckedWrite>>,
    watches: Mutex<Vec<WatchLog>>,
}

impl Recorder {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }

    fn record(&self, key: &'static str, operation: Operation) {
        self.operations
            .lock()
            .entry(key)
            .or_default()
            .push(operation);
    }
}

/// Runs one seed of the scenario; returns its event log.
pub async fn run() -> String {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("no scratch directory: {e}"),
    };
    let cluster = Arc::new(SimCluster::start(VOTERS, SPARES, dir.path().to_path_buf()).await);
    let recorder = Arc::new(Recorder::default());

    let watchers: Vec<_> = cluster
        .ids
        .iter()
        .map(|id| tokio::spawn(follow(Arc::clone(&cluster), *id, Arc::clone(&recorder))))
        .collect();
    let nemesis = tokio::spawn(nemesis(Arc::clone(&cluster)));
    let operator = tokio::spawn(reconfigure(Arc::clone(&cluster)));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let cluster = Arc::clone(&cluster);
            let recorder = Arc::clone(&recorder);
            tokio::spawn(async move {
                for n in 0..OPS_PER_CLIENT {
                    client_op(&cluster, &recorder, client, n).await;
                    let pause = thread_rng().gen_range(10..200);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            })
        })
        .collect();
    for client in clients {
        if let Err(e) = client.await {
            panic!("a client failed: {e}");
        }
    }
    nemesis.abort();
    operator.abort();

    heal_everything(&cluster).await;
    for key in REGISTERS.into_iter().chain([COUNTER]) {
        final_read(&cluster, &recorder, key).await;
    }
    let sentinel = write_sentinel(&cluster).await;
    let members = cluster.converge(Duration::from_secs(60)).await;
    let history = full_history(&cluster, sentinel).await;
    wait_for_watchers(&recorder, &members, sentinel).await;
    for watcher in watchers {
        watcher.abort();
    }

    let mut dumps = Vec::new();
    for id in &members {
        let Some(store) = cluster.store(*id) else {
            panic!("member {id} is down after healing");
        };
        let range = match store
            .range(RangeRequest::prefix(""), Consistency::Local)
            .await
        {
            Ok(r) => r,
            Err(e) => panic!("member {id} cannot list its keys: {e}"),
        };
        dumps.push((store.revision(), range.kvs));
    }
    assert!(
        dumps.windows(2).all(|w| w[0] == w[1]),
        "members {members:?} differ after healing"
    );

    check(&recorder, &history);
    let operations = recorder.operations.lock();
    let acked = recorder.acked.lock();
    format!("{operations:?}\n{acked:?}\n{members:?}\n{history:?}\n{dumps:?}")
}

fn check(recorder: &Recorder, history: &[RevisionEvents]) {
    let operations = recorder.operations.lock();
    let answered = operations
        .values()
        .flatten()
        .filter(|o| o.completed.is_some())
        .count();
    // However hard the faults, a run in which nothing got through tested nothing.
    assert!(answered > 0, "no operation was answered");
    for (key, ops) in operations.iter() {
        if let Err(v) = check_register(None, ops) {
            panic!("key {key} is not linearizable: {}", v.explanation);
        }
    }

    if let Err(v) = check_revisions_increase(history) {
        panic!("the history is out of order: {}", v.explanation);
    }
    let acked = recorder.acked.lock();
    for write in acked.iter() {
        let found = history
            .iter()
            .find(|r| r.revision == write.revision)
            .is_some_and(|r| {
                r.events.iter().any(|e| {
                    e.kind == EventKind::Put
                        && e.kv.key == write.key.as_bytes()
                        && e.kv.value == write.value
                })
            });
        assert!(
            found,
            "acknowledged write lost: {write:?}; the history has {:?}",
            history
                .iter()
                .flat_map(|r| r.events.iter().map(move |e| (r.revision, e)))
                .filter(|(_, e)| e.kv.key == write.key.as_bytes())
                .map(|(r, e)| format!("{r}:{}", String::from_utf8_lossy(&e.kv.value)))
                .collect::<Vec<_>>()
        );
    }
    for client in 0..CLIENTS {
        let revisions: Vec<Revision> = acked
            .iter()
            .filter(|w| w.client == client)
            .map(|w| w.revision)
            .collect();
        assert!(
            revisions.windows(2).all(|w| w[0] < w[1]),
            "client {client} was told revisions out of order: {revisions:?}"
        );
    }
    for watch in recorder.watches.lock().iter() {
        if let Err(v) = check_watch_stream(history, watch.start, &watch.seen) {
            panic!("the watcher on host {}: {}", watch.host, v.explanation);
        }
    }
}

async fn client_op(cluster: &SimCluster, recorder: &Recorder, client: usize, n: usize) {
    let (kind, node, register) = {
        let mut rng = thread_rng();
        (
            rng.gen_range(0..3),
            rng.gen_range(1..=cluster.ids.len() as NodeId),
            REGISTERS[rng.gen_range(0..REGISTERS.len())],
        )
    };
    match kind {
        0 => {
            let value = format!("c{client}-{n}").into_bytes();
            let written = value.clone();
            let invoked = recorder.tick();
            let answer = on_host(cluster, node, move |store| async move {
                store.put(register, written).await
            })
            .await;
            let completed = answer.map(|result| {
                recorder.acked.lock().push(AckedWrite {
                    client,
                    key: register,
                    value: value.clone(),
                    revision: result.revision,
                });
                (recorder.tick(), Answer::Written)
            });
            let call = Call::Write(value);
            recorder.record(register, op(client, call, invoked, completed));
        }
        1 => {
            read(cluster, recorder, client, node, register).await;
        }
        _ => {
            // An increment: read the counter, then set it one higher if nobody moved it.
            let Some(current) = read(cluster, recorder, client, node, COUNTER).await else {
                return;
            };
            let count: u64 = current
                .as_deref()
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let next = (count + 1).to_string().into_bytes();
            let compare = match &current {
                Some(value) => Compare {
                    key: COUNTER.into(),
                    op: CompareOp::Equal,
                    target: CompareTarget::Value(value.clone()),
                },
                None => Compare {
                    key: COUNTER.into(),
                    op: CompareOp::Equal,
                    target: CompareTarget::Version(0),
                },
            };
            let txn = Txn::new()
                .when([compare])
                .and_then([Op::put(COUNTER, next.clone())]);
            let invoked = recorder.tick();
            let answer = on_host(
                cluster,
                node,
                move |store| async move { store.txn(txn).await },
            )
            .await;
            let completed = answer.map(|result| {
                if result.succeeded {
                    recorder.acked.lock().push(AckedWrite {
                        client,
                        key: COUNTER,
                        value: next.clone(),
                        revision: result.revision,
                    });
                }
                let answer = Answer::Cas {
                    succeeded: result.succeeded,
                };
                (recorder.tick(), answer)
            });
            let call = Call::Cas {
                expect: current,
                new: next,
            };
            recorder.record(COUNTER, op(client, call, invoked, completed));
        }
    }
}

fn op(client: usize, call: Call, invoked: u64, completed: Option<(u64, Answer)>) -> Operation {
    Operation {
        client,
        call,
        invoked,
        completed,
    }
}

/// A linearizable read through `node`; the value if it was answered.
async fn read(
    cluster: &SimCluster,
    recorder: &Recorder,
    client: usize,
    node: NodeId,
    key: &'static str,
) -> Option<Option<Vec<u8>>> {
    let invoked = recorder.tick();
    let answer = on_host(cluster, node, move |store| async move {
        store
            .get(key.as_bytes(), Consistency::Linearizable)
            .await
            .map(|g| g.kv.map(|kv| kv.value))
    })
    .await;
    let completed = answer
        .clone()
        .map(|value| (recorder.tick(), Answer::Read(value)));
    recorder.record(key, op(client, Call::Read, invoked, completed));
    answer
}

/// Runs `call` against the store of `node`, on that host so that it dies with it; `None` if
/// the host is down, the call failed or no answer came in time.
async fn on_host<T, F, Fut>(cluster: &SimCluster, node: NodeId, call: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
{
    let store = cluster.store(node)?;
    let host = cluster.node(node)?;
    let task = host.spawn(call(store));
    match tokio::time::timeout(OP_TIMEOUT, task).await {
        Ok(Ok(Ok(value))) => Some(value),
        _ => None,
    }
}

async fn final_read(cluster: &SimCluster, recorder: &Recorder, key: &'static str) {
    for _ in 0..20 {
        let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
        if read(cluster, recorder, usize::MAX, leader, key)
            .await
            .is_some()
        {
            return;
        }
    }
    panic!("{key} could not be read after the faults healed");
}

async fn write_sentinel(cluster: &SimCluster) -> Revision {
    for _ in 0..20 {
        let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
        let written = on_host(cluster, leader, |store| async move {
            store.put(SENTINEL, "end").await
        })
        .await;
        if let Some(result) = written {
            return result.revision;
        }
    }
    panic!("nothing could be written after the faults healed");
}

/// Every revision with changes up to `last`, as the leader replays them from the first.
async fn full_history(cluster: &SimCluster, last: Revision) -> Vec<RevisionEvents> {
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let Some(store) = cluster.store(leader) else {
        panic!("the leader has no store");
    };
    let mut stream = match store.watch("", Some(1)) {
        Ok(s) => s,
        Err(e) => panic!("cannot replay the history: {e}"),
    };
    let mut history = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
            Ok(Some(Ok(revision))) => {
                let done = revision.revision >= last;
                history.push(revision);
                if done {
                    return history;
                }
            }
            other => panic!("the history replay stopped: {other:?}"),
        }
    }
}

/// Follows every change on host `id`, one watch per life of the host, each resuming after
/// the last revision the previous one saw.
async fn follow(cluster: Arc<SimCluster>, id: NodeId, recorder: Arc<Recorder>) {
    let mut resume = 1;
    loop {
        if let (Some(store), Some(host)) = (cluster.store(id), cluster.node(id)) {
            let index = {
                let mut watches = recorder.watches.lock();
                watches.push(WatchLog {
                    host: id,
                    start: resume,
                    seen: Vec::new(),
                    ended: None,
                });
                watches.len() - 1
            };
            let log = Arc::clone(&recorder);
            let watch = host.spawn(async move {
                let mut stream = match store.watch("", Some(resume)) {
                    Ok(s) => s,
                    Err(e) => {
                        log.watches.lock()[index].ended = Some(e.to_string());
                        return;
                    }
                };
                loop {
                    match stream.next().await {
                        Some(Ok(revision)) => log.watches.lock()[index].seen.push(revision),
                        Some(Err(e)) => {
                            log.watches.lock()[index].ended = Some(e.to_string());
                            return;
                        }
                        None => {
                            log.watches.lock()[index].ended = Some("stream closed".into());
                            return;
                        }
                    }
                }
            });
            if let Err(e) = watch.await {
                let mut watches = recorder.watches.lock();
                if watches[index].ended.is_none() {
                    watches[index].ended = Some(format!("host task: {e}"));
                }
            }
            if let Some(last) = recorder.watches.lock()[index].seen.last() {
                resume = last.revision + 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_watchers(recorder: &Recorder, members: &[NodeId], last: Revision) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let behind: Vec<NodeId> = {
            let watches = recorder.watches.lock();
            members
                .iter()
                .copied()
                .filter(|id| {
                    !watches
                        .iter()
                        .filter(|w| w.host == *id)
                        .any(|w| w.seen.last().is_some_and(|r| r.revision >= last))
                })
                .collect()
        };
        if behind.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watchers on {behind:?} never saw revision {last}: {:?}",
            recorder
                .watches
                .lock()
                .iter()
                .filter(|w| behind.contains(&w.host))
                .map(|w| (
                    w.host,
                    w.start,
                    w.seen.iter().map(|r| r.revision).collect::<Vec<_>>(),
                    w.ended.clone()
                ))
                .take(4)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Ends every fault: the network is whole and steady, disks are fast, every host is up.
pub(crate) async fn heal_everything(cluster: &SimCluster) {
    cluster.heal();
    cluster.steady_network();
    for id in cluster.ids.clone() {
        cluster.set_slow_disk(id, None);
        if cluster.store(id).is_none() {
            cluster.restart(id);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.wait_for_leader(Duration::from_secs(30)).await;
}

/// One fault at a time, each healed before the next.
pub(crate) async fn nemesis(cluster: Arc<SimCluster>) {
    let hosts = cluster.ids.len() as NodeId;
    loop {
        let (pause, fault, victim, hold) = {
            let mut rng = thread_rng();
            (
                rng.gen_range(100..600),
                rng.gen_range(0..7),
                rng.gen_range(1..=hosts),
                Duration::from_millis(rng.gen_range(200..1500)),
            )
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let others = |side: &[NodeId]| -> Vec<NodeId> {
            cluster
                .ids
                .iter()
                .copied()
                .filter(|i| !side.contains(i))
                .collect()
        };
        match fault {
            0 => {
                cluster.crash(victim);
                tokio::time::sleep(hold).await;
                cluster.restart(victim);
            }
            1 => {
                cluster.partition(&[victim], &others(&[victim]));
                tokio::time::sleep(hold).await;
                cluster.heal();
            }
            2 => {
                if let Some(leader) = cluster.leader().await {
                    cluster.partition(&[leader], &others(&[leader]));
                    tokio::time::sleep(hold).await;
                    cluster.heal();
                }
            }
            3 => {
                // Splits the hosts in two halves.
                let mut side = vec![victim];
                let partner = thread_rng().gen_range(1..=hosts);
                if partner != victim {
                    side.push(partner);
                }
                cluster.partition(&side, &others(&side));
                tokio::time::sleep(hold).await;
                cluster.heal();
            }
            4 => {
                let (loss, latency) = {
                    let mut rng = thread_rng();
                    (rng.gen_range(0.05..0.3), rng.gen_range(50..500))
                };
                cluster.lossy_network(loss, Duration::from_millis(latency));
                tokio::time::sleep(hold).await;
                cluster.steady_network();
            }
            5 => {
                let by = Duration::from_millis(thread_rng().gen_range(200..5000));
                cluster.clock_jump(victim, by);
            }
            _ => {
                cluster.set_slow_disk(victim, Some(Duration::from_millis(20)));
                tokio::time::sleep(hold).await;
                cluster.set_slow_disk(victim, None);
            }
        }
    }
}

/// Membership changes while the nemesis works: the voters go from three to four and back,
/// a learner is promoted, and the leadership moves.
async fn reconfigure(cluster: Arc<SimCluster>) {
    loop {
        let pause = thread_rng().gen_range(300..1500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let (Some(leader), Some((voters, learners))) =
            (cluster.leader().await, cluster.membership().await)
        else {
            continue;
        };
        let (transfer, pick) = {
            let mut rng = thread_rng();
            (rng.gen_bool(0.3), rng.gen_range(0..voters.len().max(1)))
        };
        if transfer {
            let to = voters[pick];
            on_host(&cluster, leader, move |store| async move {
                store.transfer_leader(to).await
            })
            .await;
        } else if let Some(learner) = learners.first().copied() {
            on_host(&cluster, leader, move |store| async move {
                store.promote(learner).await
            })
            .await;
        } else if voters.len() as u64 <= VOTERS {
            let spare = cluster.ids.iter().copied().find(|id| !voters.contains(id));
            if let Some(spare) = spare {
                on_host(&cluster, leader, move |store| async move {
                    store.add_learner(spare, node_addr(spare)).await?;
                    store.promote(spare).await
                })
                .await;
            }
        } else {
            let gone = voters[pick];
            on_host(&cluster, leader, move |store| async move {
                store.remove(gone).await
            })
            .await;
        }
    }
}
