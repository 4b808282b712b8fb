//! The operator's own HTTP endpoint: Prometheus metrics and a liveness probe.

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;

pub async fn metrics(listener: TcpListener, registry: Registry) {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut body = Vec::new();
                    match TextEncoder::new().encode(&registry.gather(), &mut body) {
                        Ok(()) => (
                            StatusCode::OK,
                            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                            body,
                        )
                            .into_response(),
                        Err(e) => {
                            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
                        }
                    }
                }
            }),
        );
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!(error = %e, "the metrics endpoint stopped");
    }
}
