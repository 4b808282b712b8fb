//! MQTT over WebSocket at `/mqtt`: the upgrade is authenticated by a SigV4 presigned URL
//! (service `iotdevicegateway`), by a custom authorizer (headers or query), or anonymously
//! where the listener allows it; then the connection speaks MQTT.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::aws::{Api, header_pairs};
use super::iot_data;
use crate::admission::SignedGate;
use crate::admission::custom_auth::Credentials;
use crate::auth::identity::sigv4;
use crate::gateway::http::ConnectionInfo;
use crate::gateway::{Admission, websocket};

fn plain_error(status: StatusCode, message: &str) -> Response {
    (status, message.to_owned()).into_response()
}

pub(super) async fn mqtt_over_websocket(
    State(api): State<Arc<Api>>,
    mut request: Request,
) -> Response {
    let Some(info) = request.extensions().get::<ConnectionInfo>().cloned() else {
        return plain_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no connection information",
        );
    };
    let headers = request.headers();
    let handshake = match websocket::handshake(|name| headers.get(name)?.to_str().ok()) {
        Ok(h) => h,
        Err(e) => return plain_error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let header_pairs = header_pairs(headers, request.uri());
    let raw_path = request.uri().path().to_owned();
    let raw_query = request.uri().query().unwrap_or("").to_owned();
    let query = sigv4::parse_query(&raw_query);
    let admission = if query.iter().any(|(k, _)| k == "X-Amz-Signature") {
        match api.verify_signature(
            request.method().as_str(),
            &raw_path,
            &raw_query,
            &header_pairs,
            b"",
        ) {
            Ok(signer) if iot_data::SIGNING_NAMES.contains(&signer.service.as_str()) => {
                Admission::Gated(Arc::new(SignedGate {
                    access_key_id: signer.access_key_id,
                }))
            }
            Ok(_) => return plain_error(StatusCode::FORBIDDEN, "Forbidden"),
            Err(e) => {
                tracing::debug!(error = %e.message, "WebSocket upgrade with a bad signature");
                return plain_error(StatusCode::FORBIDDEN, "Forbidden");
            }
        }
    } else {
        // A custom authorizer, or where none applies the listener's anonymous admission.
        let credentials = Credentials::from_http(&header_pairs, &query, &raw_query);
        Admission::Gated(api.admission.authorizer_gate(info.clone(), credentials))
    };
    let upgrade = hyper::upgrade::on(&mut request);
    let broker = api.data.broker.clone();
    let peer = info.peer.ip();
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => websocket::serve_upgraded(upgraded, broker, admission, peer).await,
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&handshake.accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(protocol) = handshake.protocol {
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(protocol),
        );
    }
    response
}
