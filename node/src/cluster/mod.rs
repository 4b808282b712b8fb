//! Node-to-node traffic: the broker's data plane (routes and forwarded messages) on streams of
//! any link between nodes, and between real nodes QUIC with mutual TLS, which also carries the
//! Raft transport, and the cluster certificates it needs.

#[cfg(not(madsim))]
pub mod certs;
mod control;
mod data_plane;
mod directory;
mod frame;
mod lane;
pub mod links;
#[cfg(not(madsim))]
mod quic;
mod routes;
mod takeover;

pub use data_plane::DataPlane;
#[cfg(not(madsim))]
pub use quic::{QuicTransport, serve_peers};
pub use routes::{RouteTable, SharedPick};

/// The peer certificate and trusted CAs this node uses now, as `GET /cluster/tls` reports
/// them: an operator rotating the CA waits for every node to have loaded each step.
#[derive(Debug, Default)]
pub struct PeerTlsStatus(parking_lot::RwLock<Option<LoadedPeer>>);

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadedPeer {
    /// SHA-256 of the node certificate's DER, in hex.
    pub certificate_sha256: String,
    /// When it ends, in Unix seconds.
    pub not_after: i64,
    /// SHA-256 of each trusted CA certificate's DER, in hex, in the bundle's order.
    pub trusted_ca_sha256: Vec<String>,
}

impl PeerTlsStatus {
    pub fn set(&self, loaded: LoadedPeer) {
        *self.0.write() = Some(loaded);
    }

    pub fn get(&self) -> Option<LoadedPeer> {
        self.0.read().clone()
    }
}

/// Where the streams other nodes open for the broker's data plane go, once it exists.
pub type Inbound = std::sync::Arc<std::sync::OnceLock<std::sync::Arc<DataPlane>>>;

/// How long a peer's data plane stream waits for this node's data plane to start (the store
/// answers its peers before the broker is up) before it is refused and opened again.
const DATA_PLANE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// This node's data plane, once it exists; `None` if it did not start in time.
async fn data_plane_of(inbound: &Inbound) -> Option<std::sync::Arc<DataPlane>> {
    let deadline = tokio::time::Instant::now() + DATA_PLANE_WAIT;
    loop {
        if let Some(plane) = inbound.get() {
            return Some(std::sync::Arc::clone(plane));
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Takes a data plane stream a peer opened on a link other than QUIC: reads its first frame
/// and hands it to this node's data plane once that exists.
pub async fn accept_stream(inbound: Inbound, send: links::PeerSend, mut recv: links::PeerRecv) {
    let Ok(first) = frame::read_frame(&mut recv).await else {
        return;
    };
    if let Some(plane) = data_plane_of(&inbound).await {
        plane.accept(first, send, recv).await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read {what} from {path}: {source}")]
    Read {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{what} in {path} is not valid PEM: {message}")]
    Pem {
        what: &'static str,
        path: std::path::PathBuf,
        message: String,
    },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("cannot bind the peer listener to {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot generate certificates: {0}")]
    Generate(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}
