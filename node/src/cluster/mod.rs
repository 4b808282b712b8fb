//! Node-to-node traffic: the Raft transport over QUIC with mutual TLS, and the cluster
//! certificates it needs.

pub mod certs;
mod frame;
mod quic;

pub use quic::{QuicTransport, serve_peers};

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
