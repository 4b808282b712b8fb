//! The retained messages of the data plane (iot-data): ListRetainedMessages and
//! GetRetainedMessage, read from the replicated store, so that every node answers with what
//! the cluster holds.

use base64::Engine;
use serde_json::json;

use super::{ApiResult, Caller, DataPlane};
use crate::api::error::AwsError;
use crate::api::request::ApiRequest;
use crate::auth::permissions::Action;
use crate::broker::Message;
use crate::services::records::Page;

/// AWS's default and largest page of ListRetainedMessages.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 200;

fn durable_missing() -> AwsError {
    AwsError::unavailable("Retained messages are not kept on this node")
}

impl DataPlane {
    /// GetRetainedMessage: `GET /retainedMessage/{topic}`.
    pub(super) async fn get_retained_message(&self, topic: &str, caller: &Caller) -> ApiResult {
        if topic.is_empty() {
            return Err(AwsError::validation(
                "topic",
                topic,
                "Member must have length greater than or equal to 1",
            ));
        }
        if !caller.allows(Action::GetRetainedMessage, topic) {
            return Err(AwsError::forbidden());
        }
        let durable = self.broker.durable().ok_or_else(durable_missing)?;
        let Some((message, modified_ms)) = durable.retained(topic).await? else {
            return Err(AwsError::not_found(format!(
                "No retained message exists for the topic {topic}"
            )));
        };
        let mut answer = json!({
            "topic": &*message.topic,
            "payload": base64::engine::general_purpose::STANDARD.encode(&message.payload),
            "qos": message.qos.as_u8(),
            "lastModifiedTime": modified_ms,
        });
        if let Some(properties) = user_properties(&message) {
            answer["userProperties"] = json!(properties);
        }
        Ok(answer)
    }

    /// ListRetainedMessages: `GET /retainedMessage?maxResults=&nextToken=`.
    pub(super) async fn list_retained_messages(
        &self,
        request: &ApiRequest,
        caller: &Caller,
    ) -> ApiResult {
        if !caller.allows(Action::ListRetainedMessages, "*") {
            return Err(AwsError::forbidden());
        }
        let page = request.page(DEFAULT_PAGE, MAX_PAGE)?;
        let durable = self.broker.durable().ok_or_else(durable_missing)?;
        let (messages, more) = durable.retained_page(page.after(), page.limit()).await?;
        let next = more
            .then(|| messages.last().map(|(m, _)| Page::token_for(&m.topic)))
            .flatten();
        let topics: Vec<_> = messages
            .iter()
            .map(|(message, modified_ms)| {
                json!({
                    "topic": &*message.topic,
                    "payloadSize": message.payload.len(),
                    "qos": message.qos.as_u8(),
                    "lastModifiedTime": modified_ms,
                })
            })
            .collect();
        let mut answer = json!({ "retainedTopics": topics });
        if let Some(token) = next {
            answer["nextToken"] = json!(token);
        }
        Ok(answer)
    }
}

/// A message's MQTT 5 user properties as AWS encodes them: base64 of a JSON list of
/// single-pair objects.
fn user_properties(message: &Message) -> Option<String> {
    let properties = message.properties.as_ref()?;
    if properties.user_properties.is_empty() {
        return None;
    }
    let list: Vec<_> = properties
        .user_properties
        .iter()
        .map(|(k, v)| json!({ k.as_str(): v }))
        .collect();
    Some(base64::engine::general_purpose::STANDARD.encode(json!(list).to_string()))
}
