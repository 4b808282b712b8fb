//! HTTP: the admin API (`admin`) and the AWS-shaped API (`aws`, the front door), whose
//! control plane (`iot`) and data plane (`iot_data`) adapt AWS's requests and answers to the
//! services; MQTT over WebSocket is upgraded from the same routes (`websocket`).

pub mod admin;
pub mod aws;
pub mod error;
pub mod iot;
pub mod iot_data;
pub mod request;
pub mod routes;
mod websocket;

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
