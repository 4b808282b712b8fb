//! The streams the data plane runs on, whatever carries them: QUIC between real nodes
//! (`quic.rs`), the simulator's network in deterministic simulations. A stream is
//! bidirectional; either end learns that the other is gone, or that the link to it died, when
//! its reads end or fail.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use halyard_raft::NodeId;
use tokio::io::{AsyncRead, AsyncWrite};

pub type PeerSend = Box<dyn AsyncWrite + Send + Unpin>;
pub type PeerRecv = Box<dyn AsyncRead + Send + Unpin>;

pub type OpenFuture<'a> =
    Pin<Box<dyn Future<Output = std::io::Result<(PeerSend, PeerRecv)>> + Send + 'a>>;

/// How urgently a stream's writes go out when several share a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Routes, takeover and acknowledgements: small, and what everything else waits for.
    Control,
    Messages,
}

/// Streams to the other nodes of the cluster.
pub trait PeerLinks: Send + Sync + 'static {
    /// Opens a stream to peer `node`, reached at `addr` (its advertised address).
    fn open<'a>(&'a self, node: NodeId, addr: &'a str, priority: Priority) -> OpenFuture<'a>;

    /// The round trip to peer `node` while the link to it is up; `None` when it is down.
    fn rtt(&self, node: NodeId) -> Option<Duration>;
}
