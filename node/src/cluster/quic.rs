//! The Raft transport over QUIC: one connection per peer, reused and re-dialled with backoff;
//! a bidirectional stream per request; snapshots streamed on a stream of their own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use halyard_raft::transport::BoxFuture;
use halyard_raft::{
    NodeId, RaftRequest, RaftResponse, RaftService, RaftTransport, SnapshotFile, SnapshotMeta,
    SnapshotResponse, TransportError, Vote,
};
use parking_lot::Mutex;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::ClusterError;
use super::certs::{PEER_SERVER_NAME, PeerTls};
use super::frame::{Kind, read_frame, write_frame};
use super::links::{OpenFuture, PeerLinks, PeerRecv, PeerSend, Priority};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);
const SNAPSHOT_CHUNK: usize = 64 * 1024;
const PEER_IDLE_TIMEOUT_MS: u32 = 5000;
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Peer {
    connection: Option<quinn::Connection>,
    failures: u32,
    retry_at: Option<Instant>,
}

pub struct QuicTransport {
    endpoint: quinn::Endpoint,
    transport: Arc<quinn::TransportConfig>,
    /// What this node dials with; replaced when its certificates are.
    client: Mutex<quinn::ClientConfig>,
    peers: Mutex<HashMap<NodeId, Peer>>,
}

impl QuicTransport {
    /// Binds the peer endpoint: it serves the other nodes and dials them.
    pub fn bind(addr: SocketAddr, tls: PeerTls) -> Result<Arc<Self>, ClusterError> {
        let mut transport = quinn::TransportConfig::default();
        // Peers are on one network: a silent peer is dead soon (its routes go with the
        // connection), and windows are sized for a fast link rather than a long one.
        transport.keep_alive_interval(Some(Duration::from_secs(1)));
        transport.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
            PEER_IDLE_TIMEOUT_MS,
        ))));
        transport.stream_receive_window(quinn::VarInt::from_u32(STREAM_WINDOW));
        transport.send_window(u64::from(STREAM_WINDOW) * 16);
        transport.max_concurrent_bidi_streams(1024u32.into());
        transport.max_concurrent_uni_streams(256u32.into());
        let transport = Arc::new(transport);
        let (server, client) = endpoint_configs(tls, &transport)?;
        let endpoint = quinn::Endpoint::server(server, addr)
            .map_err(|source| ClusterError::Bind { addr, source })?;
        Ok(Arc::new(Self {
            endpoint,
            transport,
            client: Mutex::new(client),
            peers: Mutex::new(HashMap::new()),
        }))
    }

    /// Serves and dials with new certificates from now on. Connections already open stay:
    /// their peers were authenticated when they opened.
    pub fn reload(&self, tls: PeerTls) -> Result<(), ClusterError> {
        let (server, client) = endpoint_configs(tls, &self.transport)?;
        self.endpoint.set_server_config(Some(server));
        *self.client.lock() = client;
        Ok(())
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    pub fn endpoint(&self) -> quinn::Endpoint {
        self.endpoint.clone()
    }

    async fn connection(
        &self,
        target: NodeId,
        addr: &str,
    ) -> Result<quinn::Connection, TransportError> {
        if target == 0 {
            // No id to cache it under: a node asking its way into the cluster.
            return self.dial(target, addr).await;
        }
        {
            let peers = self.peers.lock();
            if let Some(peer) = peers.get(&target) {
                if let Some(c) = &peer.connection
                    && c.close_reason().is_none()
                {
                    return Ok(c.clone());
                }
                if peer.retry_at.is_some_and(|at| Instant::now() < at) {
                    return Err(TransportError::Unreachable(
                        target,
                        "backing off after a failed dial".into(),
                    ));
                }
            }
        }
        let result = self.dial(target, addr).await;
        let mut peers = self.peers.lock();
        let peer = peers.entry(target).or_default();
        match &result {
            Ok(c) => {
                peer.connection = Some(c.clone());
                peer.failures = 0;
                peer.retry_at = None;
            }
            Err(_) => {
                peer.connection = None;
                peer.failures = peer.failures.saturating_add(1);
                let backoff = MIN_BACKOFF
                    .saturating_mul(1 << peer.failures.min(6))
                    .min(MAX_BACKOFF);
                peer.retry_at = Some(Instant::now() + backoff);
            }
        }
        result
    }

    async fn dial(&self, target: NodeId, addr: &str) -> Result<quinn::Connection, TransportError> {
        let unreachable = |m: String| TransportError::Unreachable(target, m);
        let socket = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| unreachable(format!("cannot resolve {addr}: {e}")))?
            .next()
            .ok_or_else(|| unreachable(format!("{addr} resolves to nothing")))?;
        let client = self.client.lock().clone();
        let connecting = self
            .endpoint
            .connect_with(client, socket, PEER_SERVER_NAME)
            .map_err(|e| unreachable(e.to_string()))?;
        match tokio::time::timeout(REQUEST_TIMEOUT, connecting).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(unreachable(e.to_string())),
            Err(_) => Err(TransportError::Timeout(target)),
        }
    }

    fn forget(&self, target: NodeId) {
        if let Some(peer) = self.peers.lock().get_mut(&target) {
            peer.connection = None;
        }
    }

    async fn call(
        &self,
        target: NodeId,
        addr: &str,
        request: &RaftRequest,
    ) -> Result<RaftResponse, TransportError> {
        let network = |m: String| TransportError::Network(target, m);
        let connection = self.connection(target, addr).await?;
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| {
            self.forget(target);
            network(e.to_string())
        })?;
        let body = postcard::to_stdvec(request).map_err(|e| network(format!("encode: {e}")))?;
        write_frame(&mut send, Kind::Request, body)
            .await
            .map_err(|e| network(e.to_string()))?;
        let _ = send.finish();
        let frame = read_frame(&mut recv)
            .await
            .map_err(|e| network(e.to_string()))?;
        match Kind::try_from(frame.kind) {
            Ok(Kind::Response) => {
                postcard::from_bytes(&frame.body).map_err(|e| network(format!("decode: {e}")))
            }
            _ => Err(network(String::from_utf8_lossy(&frame.body).into_owned())),
        }
    }

    async fn push_snapshot(
        &self,
        target: NodeId,
        addr: &str,
        vote: Vote,
        meta: SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> Result<SnapshotResponse, TransportError> {
        let network = |m: String| TransportError::Network(target, m);
        let connection = self.connection(target, addr).await?;
        let (mut send, mut recv) = connection
            .open_bi()
            .await
            .map_err(|e| network(e.to_string()))?;
        let header = postcard::to_stdvec(&(vote, meta, snapshot.size))
            .map_err(|e| network(format!("encode: {e}")))?;
        write_frame(&mut send, Kind::SnapshotHeader, header)
            .await
            .map_err(|e| network(e.to_string()))?;
        let mut file = tokio::fs::File::open(&snapshot.path)
            .await
            .map_err(|e| network(format!("snapshot file: {e}")))?;
        let mut chunk = vec![0u8; SNAPSHOT_CHUNK];
        loop {
            let n = file
                .read(&mut chunk)
                .await
                .map_err(|e| network(format!("snapshot file: {e}")))?;
            if n == 0 {
                break;
            }
            send.write_all(&chunk[..n])
                .await
                .map_err(|e| network(e.to_string()))?;
        }
        let _ = send.finish();
        let frame = read_frame(&mut recv)
            .await
            .map_err(|e| network(e.to_string()))?;
        match Kind::try_from(frame.kind) {
            Ok(Kind::SnapshotResponse) => {
                postcard::from_bytes(&frame.body).map_err(|e| network(format!("decode: {e}")))
            }
            _ => Err(network(String::from_utf8_lossy(&frame.body).into_owned())),
        }
    }
}

impl RaftTransport for QuicTransport {
    fn request(
        &self,
        target: NodeId,
        addr: &str,
        request: RaftRequest,
    ) -> BoxFuture<'_, Result<RaftResponse, TransportError>> {
        let addr = addr.to_owned();
        Box::pin(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, self.call(target, &addr, &request)).await {
                Ok(result) => result,
                Err(_) => Err(TransportError::Timeout(target)),
            }
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
            let push = self.push_snapshot(target, &addr, vote, meta, snapshot);
            match tokio::time::timeout(SNAPSHOT_TIMEOUT, push).await {
                Ok(result) => result,
                Err(_) => Err(TransportError::Timeout(target)),
            }
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.endpoint.close(0u32.into(), b"shutting down");
            let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        })
    }
}

/// Answers the other nodes until `shutdown` turns true; the endpoint itself stays open for
/// this node's own requests until the store closes its transport.
/// The data plane shares each peer's connection with the store's traffic, a stream each.
impl PeerLinks for QuicTransport {
    fn open<'a>(&'a self, node: NodeId, addr: &'a str, priority: Priority) -> OpenFuture<'a> {
        Box::pin(async move {
            let connection = self
                .connection(node, addr)
                .await
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::NotConnected, e))?;
            let (send, recv) = connection.open_bi().await?;
            let _ = send.set_priority(stream_priority(priority));
            Ok((Box::new(send) as PeerSend, Box::new(recv) as PeerRecv))
        })
    }

    /// The round trip as QUIC last estimated it, while connected.
    fn rtt(&self, node: NodeId) -> Option<Duration> {
        let peers = self.peers.lock();
        let connection = peers.get(&node)?.connection.as_ref()?;
        connection
            .close_reason()
            .is_none()
            .then(|| connection.rtt())
    }
}

/// Routes, takeover and acknowledgements go before messages on a shared connection.
fn endpoint_configs(
    tls: PeerTls,
    transport: &Arc<quinn::TransportConfig>,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), ClusterError> {
    let server_crypto =
        QuicServerConfig::try_from(tls.server).map_err(|e| ClusterError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(Arc::clone(transport));
    let client_crypto =
        QuicClientConfig::try_from(tls.client).map_err(|e| ClusterError::Tls(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(Arc::clone(transport));
    Ok((server, client))
}

fn stream_priority(priority: Priority) -> i32 {
    match priority {
        Priority::Control => 1,
        Priority::Messages => 0,
    }
}

pub async fn serve_peers(
    endpoint: quinn::Endpoint,
    service: RaftService,
    inbound: super::Inbound,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let service = service.clone();
                let inbound = std::sync::Arc::clone(&inbound);
                tokio::spawn(async move {
                    match incoming.await {
                        Ok(connection) => serve_connection(connection, service, inbound).await,
                        Err(e) => tracing::debug!(error = %e, "peer handshake failed"),
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
}

async fn serve_connection(
    connection: quinn::Connection,
    service: RaftService,
    inbound: super::Inbound,
) {
    // The store's requests and the data plane's streams, told apart by their first frame.
    while let Ok((send, recv)) = connection.accept_bi().await {
        let service = service.clone();
        let inbound = std::sync::Arc::clone(&inbound);
        tokio::spawn(async move {
            if let Err(e) = serve_stream(send, recv, service, inbound).await {
                tracing::debug!(error = %e, "peer stream failed");
            }
        });
    }
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Frame(#[from] super::frame::FrameError),
    #[error("decode: {0}")]
    Decode(#[from] postcard::Error),
    #[error("snapshot spool: {0}")]
    Spool(#[from] std::io::Error),
    #[error("snapshot stream: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("snapshot is larger than its header said ({0} bytes)")]
    Oversized(u64),
    #[error("unexpected frame kind {0}")]
    Unexpected(i32),
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    service: RaftService,
    inbound: super::Inbound,
) -> Result<(), StreamError> {
    let frame = read_frame(&mut recv).await?;
    match Kind::try_from(frame.kind) {
        Ok(Kind::Messages | Kind::Routes) => {
            // Acknowledgements on a lane go before messages.
            let _ = send.set_priority(stream_priority(Priority::Control));
            if let Some(plane) = super::data_plane_of(&inbound).await {
                plane.accept(frame, Box::new(send), Box::new(recv)).await;
            }
            return Ok(());
        }
        Ok(Kind::Request) => {
            let request: RaftRequest = postcard::from_bytes(&frame.body)?;
            let response = service.handle(request).await;
            write_frame(&mut send, Kind::Response, postcard::to_stdvec(&response)?).await?;
        }
        Ok(Kind::SnapshotHeader) => {
            let (vote, meta, size): (Vote, SnapshotMeta, u64) = postcard::from_bytes(&frame.body)?;
            let path = service.snapshot_spool_path();
            let received = spool(&mut recv, &path, size).await;
            let outcome = match received {
                Ok(()) => service
                    .install_snapshot(
                        vote,
                        meta,
                        SnapshotFile {
                            path: path.clone(),
                            size,
                        },
                    )
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match outcome {
                Ok(response) => {
                    write_frame(
                        &mut send,
                        Kind::SnapshotResponse,
                        postcard::to_stdvec(&response)?,
                    )
                    .await?;
                }
                Err(message) => {
                    let _ = tokio::fs::remove_file(&path).await;
                    write_frame(&mut send, Kind::Error, message.into_bytes()).await?;
                }
            }
        }
        _ => return Err(StreamError::Unexpected(frame.kind)),
    }
    let _ = send.finish();
    Ok(())
}

/// Writes the snapshot's bytes to `path` a chunk at a time, refusing more than announced.
async fn spool(
    recv: &mut quinn::RecvStream,
    path: &std::path::Path,
    size: u64,
) -> Result<(), StreamError> {
    let mut file = tokio::fs::File::create(path).await?;
    let mut written = 0u64;
    while let Some(chunk) = recv.read_chunk(SNAPSHOT_CHUNK, true).await? {
        written += chunk.bytes.len() as u64;
        if written > size {
            return Err(StreamError::Oversized(written));
        }
        file.write_all(&chunk.bytes).await?;
    }
    file.sync_all().await?;
    Ok(())
}
