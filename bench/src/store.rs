//! Committed transactions per second of the replicated store: one node, or three on loopback
//! talking QUIC as a real cluster does, with RocksDB underneath and N concurrent writers.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use halyard_raft::{KvEngine, RaftMetrics, RaftTransport, RocksEngine, Store, StoreConfig};
use prometheus::Registry;
use serde::Serialize;

use crate::stats::{Latency, new_histogram};

#[derive(Debug, Clone)]
pub struct StoreBenchOptions {
    pub nodes: usize,
    pub clients: usize,
    pub duration: Duration,
    pub value_size: usize,
    /// Where the nodes keep their data; RocksDB, so a real disk.
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoreBenchReport {
    pub nodes: usize,
    pub clients: usize,
    pub value_size: usize,
    pub committed: u64,
    pub txn_per_sec: f64,
    pub latency: Latency,
    /// Log fsyncs on the leader per committed transaction.
    pub leader_fsyncs_per_commit: f64,
    pub errors: u64,
}

struct Node {
    store: Store,
    metrics: RaftMetrics,
    /// Keeps the peer server running while the node is.
    _peers: Option<tokio::sync::watch::Sender<bool>>,
}

fn free_udp_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn start_nodes(options: &StoreBenchOptions) -> anyhow::Result<Vec<Node>> {
    let certs = options.dir.join("certs");
    let ids: Vec<u64> = (1..=options.nodes as u64).collect();
    let mut addrs = BTreeMap::new();
    for id in &ids {
        addrs.insert(*id, format!("127.0.0.1:{}", free_udp_port()?));
    }
    if options.nodes > 1 {
        halyard_node::cluster::certs::generate(&certs, &ids)?;
    }
    let local = halyard_raft::local::LocalNetwork::new();
    let mut nodes = Vec::new();
    for id in &ids {
        let dir = options.dir.join(format!("node-{id}"));
        let engine: Arc<dyn KvEngine> = Arc::new(RocksEngine::open(&dir.join("db"))?);
        let registry = Registry::new();
        let metrics = RaftMetrics::new(&registry)?;
        let addr = addrs[id].clone();
        let mut config = StoreConfig::new(*id, addr.clone(), dir.join("snapshots"));
        config.snapshot_every = 100_000;
        let (transport, quic): (Arc<dyn RaftTransport>, _) = if options.nodes > 1 {
            let tls = halyard_node::cluster::certs::load(
                &certs.join("ca.pem"),
                &certs.join(format!("node-{id}.pem")),
                &certs.join(format!("node-{id}.key")),
            )?;
            let socket: SocketAddr = addr.parse()?;
            let quic = halyard_node::cluster::QuicTransport::bind(socket, tls)?;
            (quic.clone(), Some(quic))
        } else {
            (local.transport(*id), None)
        };
        let store = Store::open(config, engine, transport, metrics.clone()).await?;
        let peers = match quic {
            Some(quic) => {
                let (stop, rx) = tokio::sync::watch::channel(false);
                tokio::spawn(halyard_node::cluster::serve_peers(
                    quic.endpoint(),
                    store.service(),
                    halyard_node::cluster::Inbound::default(),
                    rx,
                ));
                Some(stop)
            }
            None => {
                local.register(*id, store.service());
                None
            }
        };
        nodes.push(Node {
            store,
            metrics,
            _peers: peers,
        });
    }
    nodes[0].store.initialize(addrs).await?;
    for node in &nodes {
        node.store.wait_ready(Duration::from_secs(30)).await?;
    }
    Ok(nodes)
}

pub async fn run(options: StoreBenchOptions) -> anyhow::Result<StoreBenchReport> {
    std::fs::create_dir_all(&options.dir)
        .with_context(|| format!("cannot create {}", options.dir.display()))?;
    let nodes = start_nodes(&options).await?;
    let leader = nodes
        .iter()
        .find(|n| n.store.raft().is_leader())
        .context("no leader after startup")?;
    let fsyncs_before = leader.metrics.fsyncs.get();
    let value = vec![b'x'; options.value_size];
    let deadline = Instant::now() + options.duration;
    let started = Instant::now();
    let mut workers = Vec::new();
    for client in 0..options.clients {
        let store = leader.store.clone();
        let value = value.clone();
        workers.push(tokio::spawn(async move {
            let mut histogram = new_histogram();
            let mut committed = 0u64;
            let mut errors = 0u64;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let key = format!("bench/{client}/{}", i % 1024);
                i += 1;
                let begun = Instant::now();
                match store.put(key, value.clone()).await {
                    Ok(_) => {
                        committed += 1;
                        let _ = histogram.record(begun.elapsed().as_micros().max(1) as u64);
                    }
                    Err(_) => errors += 1,
                }
            }
            (histogram, committed, errors)
        }));
    }
    let mut histogram = new_histogram();
    let mut committed = 0;
    let mut errors = 0;
    for worker in workers {
        let (h, c, e) = worker.await?;
        histogram.add(&h).ok();
        committed += c;
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let fsyncs = leader.metrics.fsyncs.get() - fsyncs_before;
    for node in &nodes {
        node.store.shutdown().await;
    }
    Ok(StoreBenchReport {
        nodes: options.nodes,
        clients: options.clients,
        value_size: options.value_size,
        committed,
        txn_per_sec: committed as f64 / elapsed,
        latency: Latency::from_histogram(&histogram),
        leader_fsyncs_per_commit: if committed == 0 {
            0.0
        } else {
            fsyncs as f64 / committed as f64
        },
        errors,
    })
}

pub fn summary(r: &StoreBenchReport) -> String {
    format!(
        "{} node(s), {} clients: {:.0} txn/s committed, p50 {:.2} ms, p99 {:.2} ms, {:.3} leader fsyncs per commit, {} errors",
        r.nodes,
        r.clients,
        r.txn_per_sec,
        r.latency.p50_ms,
        r.latency.p99_ms,
        r.leader_fsyncs_per_commit,
        r.errors
    )
}

/// A scratch directory under `base` for one run.
pub fn scratch_dir(base: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    base.join(format!("store-bench-{nanos:x}"))
}
