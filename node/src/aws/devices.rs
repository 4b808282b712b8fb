//! What devices reach through the gateway: MQTT with a certificate or a custom authorizer,
//! MQTT over WebSocket (SigV4 presigned URL, custom authorizer, or anonymous on a dev
//! listener) and HTTPS publish (certificate, SigV4 or custom authorizer).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};

use super::authorizers::{AuthorizerGate, Credentials};
use super::error::AwsError;
use super::request::ApiRequest;
use super::{Api, ApiResult};
use crate::auth::permissions::{Access, Action, Permissions};
use crate::broker::Message;
use crate::gateway::http::ConnectionInfo;
use crate::gateway::tls::Devices;
use crate::gateway::{Admission, ConnectCredentials, Gate, GateFuture, websocket};
use crate::mqtt::{Properties, QoS, topic};

/// How long an HTTPS publish waits for the store before answering 503.
const PERSIST_TIMEOUT: Duration = Duration::from_secs(10);

/// Signing names that reach the device data plane.
pub const DATA_PLANE: [&str; 2] = ["iotdata", "iotdevicegateway"];

/// How an HTTP caller of the data plane was authenticated.
pub enum Caller {
    /// SigV4 with the node's access keys: an administrator.
    Signed,
    /// A device, with the permissions its certificate or authorizer gave it.
    Device(Arc<Access>),
}

impl Caller {
    pub(super) fn allows(&self, action: Action, name: &str) -> bool {
        match self {
            Caller::Signed => true,
            Caller::Device(access) => access.allows(action, name),
        }
    }
}

/// The gateway's view of the API.
pub struct DeviceServices {
    api: Arc<Api>,
    router: Router,
}

impl DeviceServices {
    pub fn new(api: Arc<Api>) -> Self {
        let router = router(Arc::clone(&api));
        Self { api, router }
    }
}

impl Devices for DeviceServices {
    fn certificate_gate(&self, certificate_id: String) -> Arc<dyn Gate> {
        Arc::new(CertificateGate {
            api: Arc::clone(&self.api),
            certificate_id,
        })
    }

    fn custom_auth_gate(&self, info: ConnectionInfo) -> Arc<dyn Gate> {
        Arc::new(AuthorizerGate::new(
            Arc::clone(&self.api),
            info,
            Credentials::default(),
        ))
    }

    fn router(&self) -> Router {
        self.router.clone()
    }
}

/// Every HTTP route: MQTT over WebSocket at `/mqtt`, the rest by SigV4 service and path.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/mqtt", any(mqtt_over_websocket))
        .fallback(super::handle)
        .layer(axum::extract::DefaultBodyLimit::max(super::MAX_BODY))
        .with_state(api)
}

/// Admits the holder of one client certificate.
struct CertificateGate {
    api: Arc<Api>,
    certificate_id: String,
}

impl Gate for CertificateGate {
    fn admit<'a>(&'a self, connect: ConnectCredentials<'a>) -> GateFuture<'a> {
        Box::pin(
            self.api
                .admit_certificate(&self.certificate_id, connect.client_id),
        )
    }
}

/// Admits a client whose upgrade request was signed with the node's access keys.
struct SignedGate {
    access_key_id: String,
}

impl Gate for SignedGate {
    fn admit<'a>(&'a self, _: ConnectCredentials<'a>) -> GateFuture<'a> {
        let access = Access::new(Permissions::allow_all(), self.access_key_id.clone());
        Box::pin(async move { Ok(access) })
    }
}

fn plain_error(status: StatusCode, message: &str) -> Response {
    (status, message.to_owned()).into_response()
}

/// The WebSocket upgrade at `/mqtt`: authenticated by a SigV4 presigned URL (service
/// `iotdevicegateway`), by a custom authorizer (headers or query), or anonymously where the
/// listener allows it; then the connection speaks MQTT.
async fn mqtt_over_websocket(State(api): State<Arc<Api>>, mut request: Request) -> Response {
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
    let header_pairs = super::header_pairs(headers, request.uri());
    let raw_path = request.uri().path().to_owned();
    let raw_query = request.uri().query().unwrap_or("").to_owned();
    let query = super::sigv4::parse_query(&raw_query);
    let admission = if query.iter().any(|(k, _)| k == "X-Amz-Signature") {
        match api.verify_signature(
            request.method().as_str(),
            &raw_path,
            &raw_query,
            &header_pairs,
            b"",
        ) {
            Ok(signer) if DATA_PLANE.contains(&signer.service.as_str()) => {
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
        Admission::Gated(Arc::new(AuthorizerGate::new(
            Arc::clone(&api),
            info.clone(),
            credentials,
        )))
    };
    let upgrade = hyper::upgrade::on(&mut request);
    let broker = api.broker.clone();
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

impl Api {
    /// The access of certificate `id` connecting as `client_id`, kept current while it lives.
    pub(super) async fn admit_certificate(
        &self,
        id: &str,
        client_id: &str,
    ) -> Result<Arc<Access>, u8> {
        let (permissions, policies) = self.device_permissions(id, client_id).await?;
        let access = Access::new(permissions, id);
        self.live.add(&access, id, client_id, policies);
        Ok(access)
    }

    /// Routes a data-plane request.
    pub(super) async fn dispatch_data(
        &self,
        request: &ApiRequest,
        caller: &Caller,
    ) -> (&'static str, ApiResult) {
        let segments: Vec<&str> = request.segments.iter().map(String::as_str).collect();
        match (request.method.as_str(), segments.as_slice()) {
            // Devices send the topic's slashes encoded or not.
            ("POST", ["topics", levels @ ..]) if !levels.is_empty() => {
                let topic = levels.join("/");
                ("Publish", self.publish(&topic, request, caller).await)
            }
            ("GET", ["things", thing, "shadow"]) => (
                "GetThingShadow",
                self.get_thing_shadow(thing, request, caller).await,
            ),
            ("POST", ["things", thing, "shadow"]) => (
                "UpdateThingShadow",
                self.update_thing_shadow(thing, request, caller).await,
            ),
            ("DELETE", ["things", thing, "shadow"]) => (
                "DeleteThingShadow",
                self.delete_thing_shadow(thing, request, caller).await,
            ),
            ("GET", ["retainedMessage"]) => (
                "ListRetainedMessages",
                self.list_retained_messages(request, caller).await,
            ),
            ("GET", ["retainedMessage", levels @ ..]) => {
                let topic = levels.join("/");
                (
                    "GetRetainedMessage",
                    self.get_retained_message(&topic, caller).await,
                )
            }
            ("GET", ["api", "things", "shadow", "ListNamedShadowsForThing", thing]) => (
                "ListNamedShadowsForThing",
                self.list_named_shadows(thing, request, caller).await,
            ),
            (method, _) => (
                "Unknown",
                Err(AwsError::unknown_operation(
                    method,
                    &format!("/{}", request.segments.join("/")),
                )),
            ),
        }
    }

    /// HTTPS publish: `POST /topics/{topic}?qos=&retain=` with the payload as the body and
    /// MQTT 5 properties from the query and `x-amz-mqtt5-*` headers.
    async fn publish(&self, topic_name: &str, request: &ApiRequest, caller: &Caller) -> ApiResult {
        let config = self.broker.config();
        let reserved = topic_name.starts_with("$aws/");
        let (max_length, max_levels) = if reserved {
            (usize::from(u16::MAX), usize::MAX)
        } else {
            (config.max_topic_length, config.max_topic_levels)
        };
        topic::validate_name(topic_name, max_length, max_levels).map_err(|e| {
            AwsError::invalid_request(format!("Invalid topic name {topic_name:?}: {e}"))
        })?;
        let qos = match request.query_u64("qos")? {
            None | Some(0) => QoS::AtMostOnce,
            Some(1) => QoS::AtLeastOnce,
            Some(other) => {
                return Err(AwsError::invalid_request(format!(
                    "Invalid QoS {other}: HTTP publish supports QoS 0 and 1"
                )));
            }
        };
        let retain = request.query_flag("retain")?;
        if request.body.len() > config.max_payload_size as usize {
            return Err(AwsError::too_large(format!(
                "The payload exceeds the maximum size of {} bytes",
                config.max_payload_size
            )));
        }
        if !caller.allows(Action::Publish, topic_name)
            || (retain && !caller.allows(Action::RetainPublish, topic_name))
        {
            return Err(AwsError::forbidden());
        }
        let properties = publish_properties(request)?;
        let expires_at = properties
            .as_ref()
            .and_then(|p| p.message_expiry_interval)
            .map(|s| tokio::time::Instant::now() + Duration::from_secs(u64::from(s)));
        let message = Message {
            topic: topic_name.into(),
            payload: request.body.clone(),
            qos,
            retain,
            properties,
            expires_at,
            origin: 0,
        };
        // A publish to a shadow's request topic is a shadow request, as over MQTT (the ingest
        // path hands it to the service); its answer goes to the topic's subscribers.
        if !self
            .broker
            .publish_persisted(message, PERSIST_TIMEOUT)
            .await
        {
            return Err(AwsError::unavailable(
                "The message was routed but could not be stored in time",
            ));
        }
        Ok(json!({"message": "OK", "traceId": super::things::uuid_v4()}))
    }
}

fn publish_properties(request: &ApiRequest) -> Result<Option<Box<Properties>>, AwsError> {
    let mut properties = Properties::default();
    let mut any = false;
    if let Some(content_type) = request.query("contentType") {
        properties.content_type = Some(content_type.to_owned());
        any = true;
    }
    if let Some(response_topic) = request.query("responseTopic") {
        topic::validate_name(response_topic, usize::from(u16::MAX), usize::MAX).map_err(|e| {
            AwsError::invalid_request(format!("Invalid responseTopic {response_topic:?}: {e}"))
        })?;
        properties.response_topic = Some(response_topic.to_owned());
        any = true;
    }
    if let Some(expiry) = request.query_u64("messageExpiry")? {
        properties.message_expiry_interval = Some(u32::try_from(expiry).map_err(|_| {
            AwsError::validation(
                "messageExpiry",
                &expiry.to_string(),
                "Member must be at most 4294967295",
            )
        })?);
        any = true;
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    if let Some(value) = request.header("x-amz-mqtt5-user-properties") {
        let decoded = b64
            .decode(value.trim())
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            // The AWS CLI passes the JSON as a string, which the SDK encodes once more.
            .and_then(|v| match v {
                Value::String(inner) => serde_json::from_str(&inner).ok(),
                other => Some(other),
            })
            .ok_or_else(|| {
                AwsError::invalid_request("x-amz-mqtt5-user-properties must be base64-encoded JSON")
            })?;
        properties.user_properties = user_properties(&decoded).ok_or_else(|| {
            AwsError::invalid_request(
                "x-amz-mqtt5-user-properties must be a JSON array of objects with string values",
            )
        })?;
        any = true;
    }
    if let Some(value) = request.header("x-amz-mqtt5-payload-format-indicator") {
        properties.payload_format_indicator = Some(match value.trim() {
            "UNSPECIFIED_BYTES" => 0,
            "UTF8_DATA" => 1,
            other => {
                return Err(AwsError::invalid_request(format!(
                    "Invalid x-amz-mqtt5-payload-format-indicator {other:?}: UNSPECIFIED_BYTES or UTF8_DATA"
                )));
            }
        });
        if properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&request.body).is_err()
        {
            return Err(AwsError::invalid_request(
                "The payload is not UTF-8 but its format indicator says UTF8_DATA",
            ));
        }
        any = true;
    }
    if let Some(value) = request.header("x-amz-mqtt5-correlation-data") {
        let data = b64.decode(value.trim()).map_err(|_| {
            AwsError::invalid_request("x-amz-mqtt5-correlation-data must be base64-encoded")
        })?;
        properties.correlation_data = Some(Bytes::from(data));
        any = true;
    }
    Ok(any.then(|| Box::new(properties)))
}

/// AWS's user-property JSON: `[{"key": "value"}, ...]`, order kept, keys may repeat.
fn user_properties(value: &Value) -> Option<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    for entry in value.as_array()? {
        for (key, value) in entry.as_object()? {
            pairs.push((key.clone(), value.as_str()?.to_owned()));
        }
    }
    Some(pairs)
}
