//! Node-to-node traffic over QUIC with mutual TLS: the Raft transport, the broker's data plane
//! (routes and forwarded messages), and the cluster certificates they need.

pub mod certs;
mod data_plane;
mod frame;
mod lane;
mod quic;

pub use data_plane::DataPlane;
pub use quic::{QuicTransport, serve_peers};

/// Where the streams other nodes open for the broker's data plane go, once it exists; until
/// then they are dropped (the peers open them again).
pub type Inbound = std::sync::Arc<std::sync::OnceLock<std::sync::Arc<DataPlane>>>;

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
