//! HTTP/1.1 and HTTP/2 over any stream (plain TCP or a TLS session), with upgrades, so that
//! the APIs, HTTPS publish and MQTT over WebSocket share a port. Each request carries the
//! [`ConnectionInfo`] of the connection it came on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

use parking_lot::Mutex;

use super::Admission;
use crate::auth::permissions::Access;

/// What the gateway knows of the connection a request arrived on.
#[derive(Clone)]
pub struct ConnectionInfo {
    pub peer: SocketAddr,
    /// The id of the client certificate the peer proved, if it presented one.
    pub certificate_id: Option<String>,
    /// The server name (SNI) the client asked for over TLS.
    pub server_name: Option<String>,
    /// How MQTT over WebSocket is admitted when the upgrade request carries no credentials;
    /// `None` where anonymous clients are not let in.
    pub anonymous: Option<Admission>,
    /// A custom authorizer's answer that requests on this connection may reuse.
    pub authorization: Arc<Mutex<Option<CachedAuthorization>>>,
}

impl ConnectionInfo {
    pub fn new(
        peer: SocketAddr,
        certificate_id: Option<String>,
        server_name: Option<String>,
        anonymous: Option<Admission>,
    ) -> Self {
        Self {
            peer,
            certificate_id,
            server_name,
            anonymous,
            authorization: Arc::default(),
        }
    }
}

/// An authorization reused for the requests of one connection, for the same credentials, until
/// `until`.
pub struct CachedAuthorization {
    /// Identifies the credentials it was given for.
    pub fingerprint: [u8; 32],
    pub access: Arc<Access>,
    pub until: tokio::time::Instant,
}

/// Serves HTTP on `stream` until the client leaves or `shutdown` turns true (then requests in
/// flight finish).
pub async fn serve_http<S>(
    stream: S,
    router: axum::Router,
    info: ConnectionInfo,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router.layer(axum::Extension(info)));
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        }
        _ = shutdown.changed() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Accepts plain HTTP connections until `shutdown` turns true.
pub async fn run_http_listener(
    listener: TcpListener,
    router: axum::Router,
    anonymous: Option<Admission>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let info = ConnectionInfo::new(peer, None, None, anonymous.clone());
                    tokio::spawn(serve_http(stream, router.clone(), info, shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}
