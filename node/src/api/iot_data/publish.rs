//! HTTPS publish: `POST /topics/{topic}?qos=&retain=` with the payload as the body and MQTT 5
//! properties from the query and `x-amz-mqtt5-*` headers, through the broker's ingest path
//! like any MQTT PUBLISH.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};

use super::{ApiResult, Caller, DataPlane};
use crate::api::error::AwsError;
use crate::api::request::ApiRequest;
use crate::auth::permissions::Action;
use crate::broker::Message;
use crate::mqtt::{Properties, QoS, topic};

/// How long an HTTPS publish waits for the store before answering 503.
const PERSIST_TIMEOUT: Duration = Duration::from_secs(10);

impl DataPlane {
    /// HTTPS publish: `POST /topics/{topic}?qos=&retain=` with the payload as the body and
    /// MQTT 5 properties from the query and `x-amz-mqtt5-*` headers.
    pub(super) async fn publish(
        &self,
        topic_name: &str,
        request: &ApiRequest,
        caller: &Caller,
    ) -> ApiResult {
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
        Ok(json!({"message": "OK", "traceId": crate::ids::uuid_v4()}))
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
