//! An in-process transport for tests: every node of a cluster in one process, with knobs to
//! drop, delay and partition traffic. Requests go through the same serialization as the wire.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::snapshot::SnapshotFile;
use crate::store::{RaftService, WeakRaftService};
use crate::transport::{BoxFuture, RaftRequest, RaftResponse, RaftTransport, TransportError};
use crate::types::{NodeId, SnapshotMeta, TypeConfig, Vote};

const SNAPSHOT_CHUNK: usize = 64 * 1024;

#[derive(Default)]
struct Faults {
    /// Directed links that carry nothing.
    cut: HashSet<(NodeId, NodeId)>,
    /// Probability of losing a request or its response.
    drop_rate: f64,
    delay: Duration,
    /// Commands forwarded to the leader arrive and are applied, but their answers are lost.
    lose_forward_answers: bool,
}

/// The shared medium of an in-process cluster.
#[derive(Default)]
pub struct LocalNetwork {
    nodes: Mutex<HashMap<NodeId, WeakRaftService>>,
    faults: Mutex<Faults>,
}

impl LocalNetwork {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A transport for node `id`, sending from it.
    pub fn transport(self: &Arc<Self>, id: NodeId) -> Arc<LocalTransport> {
        Arc::new(LocalTransport {
            from: id,
            network: self.clone(),
        })
    }

    pub fn register(&self, id: NodeId, service: RaftService) {
        self.nodes.lock().insert(id, service.downgrade());
    }

    /// The node stops answering, as if its process died.
    pub fn unregister(&self, id: NodeId) {
        self.nodes.lock().remove(&id);
    }

    /// Cuts every link between `side` and the other nodes, both ways.
    pub fn partition(&self, side: &[NodeId], others: &[NodeId]) {
        let mut faults = self.faults.lock();
        for a in side {
            for b in others {
                faults.cut.insert((*a, *b));
                faults.cut.insert((*b, *a));
            }
        }
    }

    pub fn isolate(&self, id: NodeId, all: &[NodeId]) {
        let others: Vec<NodeId> = all.iter().copied().filter(|n| *n != id).collect();
        self.partition(&[id], &others);
    }

    pub fn heal(&self) {
        self.faults.lock().cut.clear();
    }

    pub fn set_drop_rate(&self, rate: f64) {
        self.faults.lock().drop_rate = rate;
    }

    pub fn set_lose_forward_answers(&self, lose: bool) {
        self.faults.lock().lose_forward_answers = lose;
    }

    pub fn set_delay(&self, delay: Duration) {
        self.faults.lock().delay = delay;
    }

    fn check(&self, from: NodeId, to: NodeId) -> Result<Duration, TransportError> {
        let faults = self.faults.lock();
        if faults.cut.contains(&(from, to)) {
            return Err(TransportError::Unreachable(
                to,
                "link is partitioned".into(),
            ));
        }
        if faults.drop_rate > 0.0
            && (crate::runtime::random_u64() as f64 / u64::MAX as f64) < faults.drop_rate
        {
            return Err(TransportError::Network(to, "message lost".into()));
        }
        Ok(faults.delay)
    }

    fn service(&self, to: NodeId) -> Result<RaftService, TransportError> {
        self.nodes
            .lock()
            .get(&to)
            .and_then(WeakRaftService::upgrade)
            .ok_or_else(|| TransportError::Unreachable(to, "node is down".into()))
    }
}

pub struct LocalTransport {
    from: NodeId,
    network: Arc<LocalNetwork>,
}

fn ambiguous(e: TransportError) -> TransportError {
    match e {
        TransportError::Unreachable(to, why) => {
            TransportError::Network(to, format!("answer lost: {why}"))
        }
        other => other,
    }
}

fn roundtrip<T: serde::Serialize + serde::de::DeserializeOwned>(
    to: NodeId,
    value: &T,
) -> Result<T, TransportError> {
    let bytes = postcard::to_stdvec(value)
        .map_err(|e| TransportError::Network(to, format!("encode: {e}")))?;
    postcard::from_bytes(&bytes).map_err(|e| TransportError::Network(to, format!("decode: {e}")))
}

impl LocalTransport {
    async fn pass(&self, from: NodeId, to: NodeId) -> Result<(), TransportError> {
        let delay = self.network.check(from, to)?;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok(())
    }

    fn copy_snapshot(source: &SnapshotFile, target: &std::path::Path) -> std::io::Result<u64> {
        let mut input = std::fs::File::open(&source.path)?;
        let mut output = std::fs::File::create(target)?;
        let mut chunk = vec![0u8; SNAPSHOT_CHUNK];
        let mut copied = 0u64;
        loop {
            let n = input.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            output.write_all(&chunk[..n])?;
            copied += n as u64;
        }
        output.sync_all()?;
        Ok(copied)
    }
}

impl RaftTransport for LocalTransport {
    fn request(
        &self,
        target: NodeId,
        _addr: &str,
        request: RaftRequest,
    ) -> BoxFuture<'_, Result<RaftResponse, TransportError>> {
        Box::pin(async move {
            self.pass(self.from, target).await?;
            let request = roundtrip(target, &request)?;
            let forwarded = matches!(request, RaftRequest::Forward(_));
            let service = self.network.service(target)?;
            let response = service.handle(request).await;
            if forwarded && self.network.faults.lock().lose_forward_answers {
                return Err(TransportError::Network(target, "answer lost".into()));
            }
            // The request was handled: losing the answer leaves its outcome unknown.
            self.pass(target, self.from).await.map_err(ambiguous)?;
            roundtrip(target, &response)
        })
    }

    fn send_snapshot(
        &self,
        target: NodeId,
        _addr: &str,
        vote: Vote,
        meta: SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> BoxFuture<'_, Result<openraft::raft::SnapshotResponse<TypeConfig>, TransportError>> {
        Box::pin(async move {
            self.pass(self.from, target).await?;
            let service = self.network.service(target)?;
            let spool = service.snapshot_spool_path();
            let size = Self::copy_snapshot(&snapshot, &spool)
                .map_err(|e| TransportError::Network(target, format!("snapshot copy: {e}")))?;
            let meta = roundtrip(target, &meta)?;
            let response = service
                .install_snapshot(vote, meta, SnapshotFile { path: spool, size })
                .await
                .map_err(|e| TransportError::Network(target, e.to_string()))?;
            self.pass(target, self.from).await.map_err(ambiguous)?;
            Ok(response)
        })
    }
}
