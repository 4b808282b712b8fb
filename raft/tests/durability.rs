//! A single node on RocksDB: what was acknowledged survives a restart, revisions included,
//! and group commit shares fsyncs between concurrent writers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use halyard_raft::local::LocalNetwork;
use halyard_raft::{
    Consistency, KvEngine, MemEngine, RaftMetrics, RangeRequest, RocksEngine, Store, StoreConfig,
};

async fn open(engine: Arc<dyn KvEngine>, dir: &std::path::Path) -> Store {
    let network = LocalNetwork::new();
    let store = Store::open(
        StoreConfig::new(1, "local", dir.join("snapshots")),
        engine,
        network.transport(1),
        RaftMetrics::unregistered(),
    )
    .await
    .unwrap();
    network.register(1, store.service());
    store
        .initialize(BTreeMap::from([(1, "local".to_string())]))
        .await
        .unwrap();
    store.wait_ready(Duration::from_secs(10)).await.unwrap();
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocksdb_store_recovers_state_and_revision_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (revision, applied, released);
    {
        let engine = Arc::new(RocksEngine::open(&dir.path().join("db")).unwrap());
        released = Arc::downgrade(&engine);
        let store = open(engine, dir.path()).await;
        for i in 0..100 {
            store.put(format!("k{i:03}"), format!("{i}")).await.unwrap();
        }
        store.delete("k000").await.unwrap();
        revision = store.revision();
        applied = store.status().applied_index;
        store.shutdown().await;
    }
    // The database stays locked until the last task of the old store lets go of it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while released.upgrade().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the store still holds its engine after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The last reference can be gone while RocksDB is still closing on the thread that dropped
    // it, so the lock file may stay held a moment longer.
    let engine = loop {
        match RocksEngine::open(&dir.path().join("db")) {
            Ok(engine) => break Arc::new(engine),
            Err(error) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the database stayed locked after shutdown: {error}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let store = open(engine, dir.path()).await;
    assert_eq!(store.revision(), revision);
    assert!(store.status().applied_index >= applied);
    let range = store
        .range(RangeRequest::prefix("k"), Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(range.kvs.len(), 99);
    assert_eq!(range.kvs[0].key, b"k001");
    let next = store.put("after", "restart").await.unwrap();
    assert_eq!(next.revision, revision + 1);
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let engine = MemEngine::new();
    let revision;
    {
        let store = open(Arc::new(engine.clone()), dir.path()).await;
        let writers: Vec<_> = (0..16)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..20 {
                        store.put(format!("w{w:02}/{i:02}"), "v").await.unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        revision = store.revision();
        store.shutdown().await;
    }
    let syncs = engine.sync_count();
    assert!(
        syncs < 320,
        "{syncs} fsyncs for 320 concurrent writes: no group commit"
    );
    engine.crash();
    let store = open(Arc::new(engine.clone()), dir.path()).await;
    let range = store
        .range(RangeRequest::prefix("w"), Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(range.kvs.len(), 320);
    assert_eq!(store.revision(), revision);
    store.shutdown().await;
}
