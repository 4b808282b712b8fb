//! The Raft transport on the simulator's network: requests and snapshots are messages between
//! simulated hosts, so partitions, loss and latency apply to them as to packets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use halyard_raft::transport::BoxFuture;
use halyard_raft::{
    NodeId, RaftRequest, RaftResponse, RaftService, RaftTransport, SnapshotFile, SnapshotMeta,
    SnapshotResponse, TransportError, Vote,
};
use madsim::net::Endpoint;

pub const RAFT_PORT: u16 = 7000;
const REQUEST: u64 = 1;
const SNAPSHOT: u64 = 2;
const TIMEOUT: Duration = Duration::from_secs(2);

type Wire = Vec<u8>;

pub struct SimTransport {
    endpoint: Arc<Endpoint>,
    next_tag: AtomicU64,
}

impl SimTransport {
    /// Binds the node's Raft port; call from inside the simulated node.
    pub async fn bind() -> std::io::Result<Arc<Self>> {
        let endpoint = Endpoint::bind(("0.0.0.0", RAFT_PORT)).await?;
        // Replies are matched to requests by tag. A late reply to a request of the host's
        // previous life must not match a request of this one, so each life numbers its tags
        // from a random base of its own.
        let life = u64::from(madsim::rand::random::<u32>() | 1);
        Ok(Arc::new(Self {
            endpoint: Arc::new(endpoint),
            next_tag: AtomicU64::new(life << 32),
        }))
    }

    fn tag(&self) -> u64 {
        self.next_tag.fetch_add(1, Ordering::Relaxed)
    }

    async fn exchange(
        &self,
        target: NodeId,
        addr: &str,
        kind: u64,
        body: Wire,
    ) -> Result<Wire, TransportError> {
        let dst: SocketAddr = addr
            .parse()
            .map_err(|_| TransportError::Unreachable(target, format!("bad address {addr}")))?;
        let reply = self.tag();
        let mut message = reply.to_be_bytes().to_vec();
        message.extend_from_slice(&body);
        self.endpoint
            .send_to_raw(dst, kind, Box::new(message))
            .await
            .map_err(|e| TransportError::Unreachable(target, e.to_string()))?;
        match tokio::time::timeout(TIMEOUT, self.endpoint.recv_from_raw(reply)).await {
            Ok(Ok((payload, _))) => payload
                .downcast::<Wire>()
                .map(|b| *b)
                .map_err(|_| TransportError::Network(target, "unexpected payload".into())),
            Ok(Err(e)) => Err(TransportError::Network(target, e.to_string())),
            Err(_) => Err(TransportError::Timeout(target)),
        }
    }

    /// Answers the other nodes with `service` until the node dies.
    pub fn serve(self: &Arc<Self>, service: RaftService) {
        for kind in [REQUEST, SNAPSHOT] {
            let endpoint = Arc::clone(&self.endpoint);
            let service = service.clone();
            tokio::spawn(async move {
                while let Ok((payload, from)) = endpoint.recv_from_raw(kind).await {
                    let endpoint = Arc::clone(&endpoint);
                    let service = service.clone();
                    tokio::spawn(async move {
                        let Ok(message) = payload.downcast::<Wire>() else {
                            return;
                        };
                        let Some((reply, body)) = split(&message) else {
                            return;
                        };
                        let answer = if kind == REQUEST {
                            answer_request(&service, body).await
                        } else {
                            answer_snapshot(&service, body).await
                        };
                        if let Some(answer) = answer {
                            let _ = endpoint.send_to_raw(from, reply, Box::new(answer)).await;
                        }
                    });
                }
            });
        }
    }
}

fn split(message: &[u8]) -> Option<(u64, &[u8])> {
    let tag = u64::from_be_bytes(message.get(..8)?.try_into().ok()?);
    Some((tag, &message[8..]))
}

async fn answer_request(service: &RaftService, body: &[u8]) -> Option<Wire> {
    let request: RaftRequest = postcard::from_bytes(body).ok()?;
    postcard::to_stdvec(&service.handle(request).await).ok()
}

async fn answer_snapshot(service: &RaftService, body: &[u8]) -> Option<Wire> {
    let (vote, meta, bytes): (Vote, SnapshotMeta, Vec<u8>) = postcard::from_bytes(body).ok()?;
    let path = service.snapshot_spool_path();
    std::fs::write(&path, &bytes).ok()?;
    let size = bytes.len() as u64;
    let result = service
        .install_snapshot(vote, meta, SnapshotFile { path, size })
        .await;
    postcard::to_stdvec(&result.map_err(|e| e.to_string())).ok()
}

impl RaftTransport for SimTransport {
    fn request(
        &self,
        target: NodeId,
        addr: &str,
        request: RaftRequest,
    ) -> BoxFuture<'_, Result<RaftResponse, TransportError>> {
        let addr = addr.to_owned();
        Box::pin(async move {
            let body = postcard::to_stdvec(&request)
                .map_err(|e| TransportError::Network(target, e.to_string()))?;
            let answer = self.exchange(target, &addr, REQUEST, body).await?;
            postcard::from_bytes(&answer)
                .map_err(|e| TransportError::Network(target, e.to_string()))
        })
    }

    fn send_snapshot(
        &self,
        target: NodeId,
        addr: &str,
        vote: Vote,
        meta: SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> BoxFuture<'_, Result<SnapshotResponse, TransportError>> {
        let addr = addr.to_owned();
        Box::pin(async move {
            let network = |m: String| TransportError::Network(target, m);
            let bytes = std::fs::read(&snapshot.path).map_err(|e| network(e.to_string()))?;
            let body =
                postcard::to_stdvec(&(vote, meta, bytes)).map_err(|e| network(e.to_string()))?;
            let answer = self.exchange(target, &addr, SNAPSHOT, body).await?;
            let result: Result<SnapshotResponse, String> =
                postcard::from_bytes(&answer).map_err(|e| network(e.to_string()))?;
            result.map_err(network)
        })
    }
}
