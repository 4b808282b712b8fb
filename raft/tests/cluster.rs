//! Multi-node behaviour over the in-process transport: failover, catch-up by log and by
//! snapshot, partitions, membership changes, watches and leases.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use halyard_raft::local::LocalNetwork;
use halyard_raft::{
    Compare, Consistency, EventKind, KvEngine, MemEngine, NodeId, Op, RaftMetrics, RangeRequest,
    Store, StoreConfig, StoreError, Txn,
};

struct Cluster {
    network: Arc<LocalNetwork>,
    dir: tempfile::TempDir,
    engines: BTreeMap<NodeId, MemEngine>,
    stores: BTreeMap<NodeId, Store>,
    snapshot_every: u64,
}

impl Cluster {
    async fn new(n: u64) -> Self {
        Self::with_snapshots(n, 10_000).await
    }

    async fn with_snapshots(n: u64, snapshot_every: u64) -> Self {
        let mut cluster = Cluster {
            network: LocalNetwork::new(),
            dir: tempfile::tempdir().unwrap(),
            engines: BTreeMap::new(),
            stores: BTreeMap::new(),
            snapshot_every,
        };
        for id in 1..=n {
            cluster.start(id).await;
        }
        let members = (1..=n).map(|id| (id, format!("node-{id}"))).collect();
        cluster.stores[&1].initialize(members).await.unwrap();
        for store in cluster.stores.values() {
            store.wait_ready(Duration::from_secs(10)).await.unwrap();
        }
        cluster
    }

    fn config(&self, id: NodeId) -> StoreConfig {
        let mut config = StoreConfig::new(
            id,
            format!("node-{id}"),
            self.dir.path().join(format!("snap-{id}")),
        );
        config.heartbeat_interval = Duration::from_millis(50);
        config.election_timeout = Duration::from_millis(300);
        config.snapshot_every = self.snapshot_every;
        config
    }

    async fn start(&mut self, id: NodeId) {
        let engine = self.engines.entry(id).or_default().clone();
        let store = Store::open(
            self.config(id),
            Arc::new(engine) as Arc<dyn KvEngine>,
            self.network.transport(id),
            RaftMetrics::unregistered(),
        )
        .await
        .unwrap();
        self.network.register(id, store.service());
        self.stores.insert(id, store);
    }

    /// Stops the node and loses its unsynced writes, as a power cut would.
    async fn crash(&mut self, id: NodeId) {
        self.network.unregister(id);
        if let Some(store) = self.stores.remove(&id) {
            store.shutdown().await;
        }
        self.engines[&id].crash();
    }

    async fn leader(&self) -> NodeId {
        for _ in 0..200 {
            for store in self.stores.values() {
                if store.raft().is_leader() {
                    return store.id();
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no leader elected");
    }

    fn ids(&self) -> Vec<NodeId> {
        self.stores.keys().copied().collect()
    }

    async fn converge(&self) {
        for _ in 0..400 {
            let revisions: Vec<_> = self.stores.values().map(|s| s.revision()).collect();
            let applied: Vec<_> = self
                .stores
                .values()
                .map(|s| s.status().applied_index)
                .collect();
            if revisions.windows(2).all(|w| w[0] == w[1])
                && applied.windows(2).all(|w| w[0] == w[1])
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("replicas did not converge");
    }

    async fn dump(&self, id: NodeId) -> Vec<(Vec<u8>, Vec<u8>)> {
        let range = self.stores[&id]
            .range(RangeRequest::prefix(""), Consistency::Local)
            .await
            .unwrap();
        range.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect()
    }

    async fn shutdown(self) {
        for store in self.stores.values() {
            store.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_replicate_and_reads_are_linearizable_on_every_node() {
    let cluster = Cluster::new(3).await;
    let r = cluster.stores[&2].put("a", "1").await.unwrap();
    assert!(r.succeeded);
    for store in cluster.stores.values() {
        let got = store.get(b"a", Consistency::Linearizable).await.unwrap();
        let kv = got.kv.unwrap();
        assert_eq!(kv.value, b"1");
        assert_eq!(kv.mod_revision, r.revision);
        assert_eq!(kv.version, 1);
    }
    // Compare-and-swap: only the txn that sees the old value wins.
    let swap = |from: &'static str, to: &'static str| {
        Txn::new()
            .when([Compare::value_equals("a", from)])
            .and_then([Op::put("a", to)])
    };
    assert!(
        cluster.stores[&3]
            .txn(swap("1", "2"))
            .await
            .unwrap()
            .succeeded
    );
    assert!(
        !cluster.stores[&1]
            .txn(swap("1", "3"))
            .await
            .unwrap()
            .succeeded
    );
    let got = cluster.stores[&1]
        .get(b"a", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(got.kv.unwrap().value, b"2");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_loses_no_acknowledged_write() {
    let mut cluster = Cluster::new(3).await;
    let mut acknowledged = Vec::new();
    for i in 0..50 {
        let key = format!("k{i:03}");
        cluster.stores[&1].put(key.clone(), "v").await.unwrap();
        acknowledged.push(key);
    }
    let leader = cluster.leader().await;
    cluster.crash(leader).await;
    let survivor = *cluster.stores.keys().next().unwrap();
    for i in 50..80 {
        let key = format!("k{i:03}");
        cluster.stores[&survivor]
            .put(key.clone(), "v")
            .await
            .unwrap();
        acknowledged.push(key);
    }
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    for store in cluster.stores.values() {
        let range = store
            .range(RangeRequest::prefix("k"), Consistency::Linearizable)
            .await
            .unwrap();
        let keys: Vec<String> = range
            .kvs
            .into_iter()
            .map(|kv| String::from_utf8(kv.key).unwrap())
            .collect();
        assert_eq!(keys, acknowledged);
    }
    // The crashed node comes back and catches up from the log.
    cluster.start(leader).await;
    cluster.converge().await;
    assert_eq!(cluster.dump(leader).await, cluster.dump(new_leader).await);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_follower_catches_up_by_snapshot() {
    let mut cluster = Cluster::with_snapshots(3, 20).await;
    cluster.crash(3).await;
    for i in 0..120 {
        cluster.stores[&1]
            .put(format!("k{i:03}"), format!("{i}"))
            .await
            .unwrap();
    }
    cluster.start(3).await;
    cluster.converge().await;
    assert_eq!(cluster.dump(3).await, cluster.dump(1).await);
    assert_eq!(cluster.stores[&3].revision(), cluster.stores[&1].revision());
    let got = cluster.stores[&3]
        .get(b"k119", Consistency::Local)
        .await
        .unwrap();
    assert_eq!(got.kv.unwrap().value, b"119");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_minority_cannot_commit_and_heals() {
    let cluster = Cluster::new(3).await;
    let leader = cluster.leader().await;
    let ids = cluster.ids();
    cluster.network.isolate(leader, &ids);
    let isolated = cluster.stores[&leader].clone();
    let err = tokio::time::timeout(Duration::from_secs(8), isolated.put("lost", "x")).await;
    assert!(
        matches!(err, Ok(Err(StoreError::Timeout(_))) | Err(_)),
        "{err:?}"
    );
    // The majority elects a new leader and keeps serving.
    let other = *ids.iter().find(|id| **id != leader).unwrap();
    cluster.stores[&other].put("majority", "y").await.unwrap();
    cluster.network.heal();
    cluster.converge().await;
    for store in cluster.stores.values() {
        let got = store.get(b"lost", Consistency::Linearizable).await.unwrap();
        assert!(got.kv.is_none(), "uncommitted write surfaced");
        let got = store
            .get(b"majority", Consistency::Linearizable)
            .await
            .unwrap();
        assert!(got.kv.is_some());
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_are_idempotent_and_work_under_load() {
    let mut cluster = Cluster::new(1).await;
    cluster.start(2).await;
    cluster.start(3).await;
    let leader = cluster.stores[&1].clone();
    let writer = {
        let leader = leader.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                leader.put(format!("w{i:03}"), "v").await.unwrap();
            }
        })
    };
    for id in [2, 3] {
        leader.add_learner(id, format!("node-{id}")).await.unwrap();
        leader.add_learner(id, format!("node-{id}")).await.unwrap();
        leader.promote(id).await.unwrap();
        leader.promote(id).await.unwrap();
    }
    writer.await.unwrap();
    let status = leader.status();
    assert_eq!(status.members.iter().filter(|m| m.voter).count(), 3);
    cluster.converge().await;
    assert_eq!(cluster.dump(3).await.len(), 200);
    leader.transfer_leader(2).await.unwrap();
    assert_eq!(cluster.leader().await, 2);
    cluster.stores[&2].remove(3).await.unwrap();
    cluster.stores[&2].remove(3).await.unwrap();
    assert_eq!(cluster.stores[&2].status().members.len(), 2);
    assert!(matches!(
        cluster.stores[&2].promote(9).await,
        Err(StoreError::InvalidRequest(_))
    ));
    // The leader removes itself; the one voter left takes over and the cluster keeps writing.
    cluster.stores[&2].remove(2).await.unwrap();
    let survivor = cluster.stores[&1].clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !survivor.raft().is_leader() {
        assert!(
            std::time::Instant::now() < deadline,
            "node 1 never took over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    survivor.put("after", "removal").await.unwrap();
    let members = survivor.status().members;
    assert_eq!(members.iter().map(|m| m.id).collect::<Vec<_>>(), vec![1]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_replays_history_then_follows_live_changes() {
    let cluster = Cluster::new(3).await;
    let first = cluster.stores[&1].put("w/a", "1").await.unwrap().revision;
    cluster.stores[&1].put("other", "x").await.unwrap();
    cluster.stores[&1].delete("w/a").await.unwrap();
    let mut watch = cluster.stores[&3].watch("w/", Some(first)).unwrap();
    let e1 = watch.next().await.unwrap().unwrap();
    assert_eq!(e1.revision, first);
    assert_eq!(e1.events[0].kind, EventKind::Put);
    let e2 = watch.next().await.unwrap().unwrap();
    assert_eq!(e2.events[0].kind, EventKind::Delete);
    let live = cluster.stores[&2].put("w/b", "2").await.unwrap().revision;
    let e3 = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(e3.revision, live);
    assert_eq!(e3.events[0].kv.key, b"w/b");
    // History below the compaction point is gone, and says so.
    cluster.stores[&1].compact(live).await.unwrap();
    cluster.converge().await;
    assert!(matches!(
        cluster.stores[&1].watch("w/", Some(first)),
        Err(StoreError::Compacted { .. })
    ));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_far_behind_replays_every_revision_in_order() {
    let cluster = Cluster::new(1).await;
    let store = &cluster.stores[&1];
    let first = store.put("far/0", "0").await.unwrap().revision;
    // Several replay batches' worth of history.
    for n in 1..700 {
        store.put(format!("far/{n}"), n.to_string()).await.unwrap();
    }
    let mut watch = store.watch("far/", Some(first)).unwrap();
    for (expected, n) in (first..).zip(0..700) {
        let revision = watch.next().await.unwrap().unwrap();
        assert_eq!(revision.revision, expected, "event {n}");
        assert_eq!(revision.events[0].kv.key, format!("far/{n}").into_bytes());
    }
    let live = store.put("far/live", "x").await.unwrap().revision;
    let next = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.revision, live);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lease_deletes_its_keys_on_every_replica() {
    let cluster = Cluster::new(3).await;
    let lease = cluster.stores[&2]
        .lease_grant(Duration::from_millis(600))
        .await
        .unwrap();
    cluster.stores[&2]
        .txn(Txn::ops([Op::put_with_lease("session/x", "1", lease)]))
        .await
        .unwrap();
    let kept = cluster.stores[&3]
        .lease_grant(Duration::from_millis(600))
        .await
        .unwrap();
    cluster.stores[&3]
        .txn(Txn::ops([Op::put_with_lease("session/y", "1", kept)]))
        .await
        .unwrap();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        cluster.stores[&1].lease_keep_alive(kept).await.unwrap();
    }
    cluster.converge().await;
    for store in cluster.stores.values() {
        assert!(
            store
                .get(b"session/x", Consistency::Linearizable)
                .await
                .unwrap()
                .kv
                .is_none()
        );
        assert!(
            store
                .get(b"session/y", Consistency::Linearizable)
                .await
                .unwrap()
                .kv
                .is_some()
        );
    }
    assert!(matches!(
        cluster.stores[&1].lease_keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    assert!(matches!(
        cluster.stores[&1]
            .txn(Txn::ops([Op::put_with_lease("z", "1", lease)]))
            .await,
        Err(StoreError::LeaseNotFound(_))
    ));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused_before_the_log() {
    let cluster = Cluster::new(1).await;
    let big = vec![0u8; 2 << 20];
    let err = cluster.stores[&1].put("k", big).await.unwrap_err();
    assert!(
        matches!(err, StoreError::TooLarge { what: "value", .. }),
        "{err}"
    );
    assert_eq!(cluster.stores[&1].revision(), 0);
    cluster.shutdown().await;
}

/// Found by the simulation: a follower that resent a forwarded write after losing the
/// leader's answer applied it twice, so a later write could be overwritten by the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_whose_answer_is_lost_is_not_applied_twice() {
    let cluster = Cluster::new(3).await;
    let leader = cluster.leader().await;
    let follower = *cluster.stores.keys().find(|id| **id != leader).unwrap();
    cluster.network.set_lose_forward_answers(true);
    let err = cluster.stores[&follower].put("k", "1").await.unwrap_err();
    assert!(matches!(err, StoreError::OutcomeUnknown(_)), "{err}");
    cluster.network.set_lose_forward_answers(false);
    let got = cluster.stores[&leader]
        .get(b"k", Consistency::Linearizable)
        .await
        .unwrap();
    let kv = got.kv.expect("the write was applied once");
    assert_eq!(kv.version, 1, "the write was applied {} times", kv.version);
    cluster.shutdown().await;
}
