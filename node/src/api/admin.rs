//! The admin HTTP server: Prometheus metrics, health probes, the cluster's status and its
//! membership operations.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use halyard_raft::{Store, StoreError};
use prometheus::Registry;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics;
use crate::supervisor::Health;

#[derive(Clone)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    pub store: Store,
    /// Bearer token the cluster operations require; `None` refuses them.
    pub token: Option<String>,
    /// What `/readyz` reports besides the store.
    pub health: Arc<Health>,
    pub drain: Arc<crate::drain::Drain>,
    pub peer_tls: Arc<crate::cluster::PeerTlsStatus>,
    /// The certificate devices see, once the TLS listeners have one.
    pub server_tls: ServerTls,
}

pub type ServerTls = Arc<std::sync::OnceLock<Arc<crate::gateway::server_cert::ServerCertificate>>>;

/// Serves the admin API until `shutdown` turns true.
pub async fn run(listener: TcpListener, state: AdminState, shutdown: watch::Receiver<bool>) {
    let router = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(ok))
        .route("/readyz", get(ready))
        .route("/cluster/status", get(cluster_status))
        .route("/cluster/members", post(add_member))
        .route("/cluster/members/{id}/promote", post(promote_member))
        .route("/cluster/members/{id}/demote", post(demote_member))
        .route(
            "/cluster/members/{id}",
            axum::routing::delete(remove_member),
        )
        .route("/cluster/leader", post(transfer_leader))
        .route("/cluster/drain", post(drain).get(drain_status))
        .route("/cluster/tls", get(tls_status))
        .with_state(state);
    crate::api::serve(listener, router, shutdown, "admin").await;
}

async fn render_metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(&state.registry),
    )
}

async fn ok() -> &'static str {
    "ok\n"
}

/// 200 when the node can serve; 503 with one reason per line when it cannot: the store has
/// no leader or lags, or a critical task (the durable writer, a listener, the registry
/// follower) has ended.
async fn ready(State(state): State<AdminState>) -> Response {
    let reasons = state.health.reasons(Some(&state.store.status()));
    if reasons.is_empty() {
        return (StatusCode::OK, "ok\n").into_response();
    }
    let mut body = String::from("not ready\n");
    for reason in reasons {
        body.push_str(&reason);
        body.push('\n');
    }
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

async fn cluster_status(State(state): State<AdminState>) -> Response {
    Json(state.store.status()).into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// The refusal, unless the request carries the configured admin token.
fn refusal(state: &AdminState, headers: &HeaderMap) -> Option<Response> {
    let Some(expected) = &state.token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "cluster operations are disabled: set admin_token (HALYARD_ADMIN_TOKEN)",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compared in full every time, so that timing does not tell how much of a guess matched.
    let matches = given.is_some_and(|g| {
        g.len() == expected.len()
            && g.bytes()
                .zip(expected.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    (!matches).then(|| error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token"))
}

fn outcome(result: Result<(), StoreError>) -> Response {
    match result {
        Ok(()) => (StatusCode::OK, Json(json!({ "ok": true }))).into_response(),
        Err(StoreError::NotLeader {
            leader,
            leader_addr,
        }) => (
            StatusCode::CONFLICT,
            Json(json!({
                "error": "this node is not the leader; send the request to the leader",
                "leader": leader,
                "leader_addr": leader_addr,
            })),
        )
            .into_response(),
        Err(e @ StoreError::InvalidRequest(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ StoreError::Timeout(_)) => error(StatusCode::GATEWAY_TIMEOUT, e.to_string()),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddMember {
    id: u64,
    addr: String,
    /// Promote to voter once caught up; default true.
    #[serde(default = "default_true")]
    voter: bool,
}

fn default_true() -> bool {
    true
}

async fn add_member(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Result<Json<AddMember>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Some(denied) = refusal(&state, &headers) {
        return denied;
    }
    let Json(member) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    if member.id == 0 {
        return error(StatusCode::BAD_REQUEST, "id: node ids start at 1");
    }
    let mut result = state.store.add_learner(member.id, member.addr).await;
    if result.is_ok() && member.voter {
        result = state.store.promote(member.id).await;
    }
    outcome(result)
}

async fn promote_member(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    if let Some(denied) = refusal(&state, &headers) {
        return denied;
    }
    outcome(state.store.promote(id).await)
}

async fn demote_member(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    if let Some(denied) = refusal(&state, &headers) {
        return denied;
    }
    outcome(state.store.demote(id).await)
}

async fn remove_member(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    if let Some(denied) = refusal(&state, &headers) {
        return denied;
    }
    outcome(state.store.remove(id).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferLeader {
    id: u64,
}

/// Starts draining this node (see `crate::drain`); 202 at once, the drain runs on. The node
/// keeps running drained until it is stopped.
async fn drain(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(denied) = refusal(&state, &headers) {
        return denied;
    }
    let already = state.drain.is_started();
    if !already {
        let drain = Arc::clone(&state.drain);
        tokio::spawn(async move {
            drain.run().await;
        });
    }
    (
        StatusCode::ACCEPTED,
        Json(json!({"draining": true, "alreadyDraining": already})),
    )
        .into_response()
}

/// The peer certificate and the CAs this node uses now (`null` on a node without peers), and
/// the server certificate its TLS listeners present (`null` before they start).
async fn tls_status(State(state): State<AdminState>) -> Response {
    let server = state.server_tls.get().map(|served| served.loaded());
    Json(json!({ "peer": state.peer_tls.get(), "server": server })).into_response()
}

/// Whether this node drains and whether its drain is done (`done` holds what it did).
async fn drain_status(State(state): State<AdminState>) -> Response {
    Json(state.drain.status()).into_response()
}

async fn transfer_leader(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Result<Json<TransferLeader>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Some(denied) = refusal(&state, &headers) {
        return denied;
    }
    let Json(target) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    outcome(state.store.transfer_leader(target.id).await)
}
