//! HTTP routers.

pub mod admin;

/// Serves `router` on `listener` until `shutdown` turns true, then lets requests in flight
/// finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    name: &str,
) {
    let stop = async move {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
    };
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, server = name, "HTTP server failed");
    }
}
