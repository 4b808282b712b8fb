//! The admin HTTP server: Prometheus metrics and health probes.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics;

/// Serves `/metrics`, `/healthz` and `/readyz` until `shutdown` turns true.
pub async fn run(
    listener: TcpListener,
    registry: Arc<Registry>,
    mut shutdown: watch::Receiver<bool>,
) {
    let router = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(ok))
        .route("/readyz", get(ok))
        .with_state(registry);
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
        tracing::error!(error = %e, "admin server failed");
    }
}

async fn render_metrics(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(&registry),
    )
}

async fn ok() -> &'static str {
    "ok\n"
}
