//! The Device Shadow operations of the data plane (iot-data): GetThingShadow,
//! UpdateThingShadow, DeleteThingShadow and ListNamedShadowsForThing. An update or delete made
//! here publishes the same MQTT notifications as one made over MQTT.

use serde_json::{Value, json};

use super::devices::Caller;
use super::error::AwsError;
use super::request::ApiRequest;
use super::{Api, ApiResult};
use crate::auth::permissions::Action;
use crate::services::shadow::document::{self, Section, ShadowError, metadata_for, parse_update};
use crate::services::shadow::store::ShadowStoreError;

fn now_seconds() -> u64 {
    u64::try_from(super::epoch_seconds()).unwrap_or_default()
}

fn shadow_error(e: ShadowError) -> AwsError {
    let code = match e.code {
        404 => "ResourceNotFoundException",
        409 => "ConflictException",
        413 => "RequestEntityTooLargeException",
        415 => "UnsupportedDocumentEncodingException",
        401 => "UnauthorizedException",
        403 => "ForbiddenException",
        500 => "InternalFailureException",
        _ => "InvalidRequestException",
    };
    AwsError::with_status(e.code, code, e.message)
}

fn store_error(e: ShadowStoreError) -> AwsError {
    match e {
        ShadowStoreError::Shadow(e) => shadow_error(e),
        ShadowStoreError::Store(e) => e.into(),
        ShadowStoreError::Corrupt(key) => {
            AwsError::internal(format!("stored shadow {key} is unreadable"))
        }
    }
}

fn no_shadow(thing: &str, shadow: Option<&str>) -> AwsError {
    AwsError::not_found(format!(
        "No shadow exists with name: '{}'",
        shadow.unwrap_or(thing)
    ))
}

fn check_names(thing: &str, shadow: Option<&str>) -> Result<(), AwsError> {
    let valid = |name: &str, max: usize, extra: &[u8]| {
        (1..=max).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":_-".contains(&b) || extra.contains(&b))
    };
    if !valid(thing, 128, b"") {
        return Err(AwsError::validation(
            "thingName",
            thing,
            "Member must satisfy regular expression pattern: [a-zA-Z0-9:_-]+",
        ));
    }
    if let Some(name) = shadow
        && !valid(name, 64, b"$")
    {
        return Err(AwsError::validation(
            "shadowName",
            name,
            "Member must satisfy regular expression pattern: [$a-zA-Z0-9:_-]+",
        ));
    }
    Ok(())
}

/// The shadow's MQTT topic prefix.
fn topic_prefix(thing: &str, shadow: Option<&str>) -> String {
    match shadow {
        None => format!("$aws/things/{thing}/shadow"),
        Some(name) => format!("$aws/things/{thing}/shadow/name/{name}"),
    }
}

/// The policy resource name of a shadow: `thing/{thing}` or `thing/{thing}/{shadow}`.
fn resource(thing: &str, shadow: Option<&str>) -> String {
    match shadow {
        None => thing.to_owned(),
        Some(name) => format!("{thing}/{name}"),
    }
}

fn section_json(section: &Section) -> Option<Value> {
    match section {
        Section::Absent => None,
        Section::Remove => Some(Value::Null),
        Section::Merge(map) => Some(Value::Object(map.clone())),
    }
}

impl Api {
    fn shadow_target<'a>(
        &self,
        thing: &'a str,
        request: &'a ApiRequest,
        caller: &Caller,
        action: Action,
    ) -> Result<Option<&'a str>, AwsError> {
        let shadow = request.query("name").filter(|n| !n.is_empty());
        check_names(thing, shadow)?;
        if !caller.allows(action, &resource(thing, shadow)) {
            return Err(AwsError::forbidden());
        }
        Ok(shadow)
    }

    pub(super) async fn get_thing_shadow(
        &self,
        thing: &str,
        request: &ApiRequest,
        caller: &Caller,
    ) -> ApiResult {
        let shadow = self.shadow_target(thing, request, caller, Action::GetThingShadow)?;
        let document = self
            .shadows
            .get(thing, shadow)
            .await
            .map_err(store_error)?
            .ok_or_else(|| no_shadow(thing, shadow))?;
        let (state, metadata) = document.state_and_metadata(true);
        Ok(json!({
            "state": state,
            "metadata": metadata,
            "version": document.version,
            "timestamp": now_seconds(),
        }))
    }

    pub(super) async fn update_thing_shadow(
        &self,
        thing: &str,
        request: &ApiRequest,
        caller: &Caller,
    ) -> ApiResult {
        let shadow = self.shadow_target(thing, request, caller, Action::UpdateThingShadow)?;
        let update = parse_update(&request.body, self.shadows.limits()).map_err(shadow_error)?;
        let timestamp = now_seconds();
        let updated = self
            .shadows
            .update(thing, shadow, &update, timestamp)
            .await
            .map_err(store_error)?;
        let client_token = update.client_token.clone();
        let mut state = serde_json::Map::new();
        let mut metadata = serde_json::Map::new();
        for (name, section) in [("desired", &update.desired), ("reported", &update.reported)] {
            if let Some(value) = section_json(section) {
                metadata.insert(name.into(), document::metadata_of(&value, timestamp));
                state.insert(name.into(), value);
            }
        }
        let mut accepted = json!({
            "state": state,
            "metadata": metadata,
            "version": updated.current.version,
            "timestamp": timestamp,
        });
        let prefix = topic_prefix(thing, shadow);
        let with_token = |mut value: Value| {
            if let Some(token) = &client_token {
                value["clientToken"] = json!(token);
            }
            value
        };
        accepted = with_token(accepted);
        self.broker
            .publish_event(format!("{prefix}/update/accepted"), accepted.to_string());
        if let Some(delta) = updated.current.delta() {
            let empty = serde_json::Map::new();
            let delta_metadata = metadata_for(
                &delta,
                updated.current.desired_metadata.as_ref().unwrap_or(&empty),
            );
            let message = with_token(json!({
                "state": delta,
                "metadata": delta_metadata,
                "version": updated.current.version,
                "timestamp": timestamp,
            }));
            self.broker
                .publish_event(format!("{prefix}/update/delta"), message.to_string());
        }
        let snapshot = |d: &document::ShadowDocument| {
            let (state, metadata) = d.state_and_metadata(false);
            json!({ "state": state, "metadata": metadata, "version": d.version })
        };
        let mut documents = json!({
            "current": snapshot(&updated.current),
            "timestamp": timestamp,
        });
        if updated.previous.exists {
            documents["previous"] = snapshot(&updated.previous);
        }
        self.broker.publish_event(
            format!("{prefix}/update/documents"),
            with_token(documents).to_string(),
        );
        Ok(accepted)
    }

    pub(super) async fn delete_thing_shadow(
        &self,
        thing: &str,
        request: &ApiRequest,
        caller: &Caller,
    ) -> ApiResult {
        let shadow = self.shadow_target(thing, request, caller, Action::DeleteThingShadow)?;
        let deleted = self
            .shadows
            .delete(thing, shadow, None)
            .await
            .map_err(store_error)?
            .ok_or_else(|| no_shadow(thing, shadow))?;
        let accepted = json!({ "version": deleted.version, "timestamp": now_seconds() });
        self.broker.publish_event(
            format!("{}/delete/accepted", topic_prefix(thing, shadow)),
            accepted.to_string(),
        );
        Ok(accepted)
    }

    pub(super) async fn list_named_shadows(
        &self,
        thing: &str,
        request: &ApiRequest,
        caller: &Caller,
    ) -> ApiResult {
        check_names(thing, None)?;
        if !caller.allows(Action::ListNamedShadowsForThing, thing) {
            return Err(AwsError::forbidden());
        }
        let limit = match request.query_u64("pageSize")? {
            None => 25,
            Some(n @ 1..=100) => n as usize,
            Some(n) => {
                return Err(AwsError::validation(
                    "pageSize",
                    &n.to_string(),
                    "Member must have value between 1 and 100",
                ));
            }
        };
        let after = match request.query("nextToken") {
            None | Some("") => None,
            Some(token) => Some(
                super::records::unhex(token)
                    .ok_or_else(|| AwsError::invalid_request("The nextToken is invalid."))?,
            ),
        };
        let (names, more) = self
            .shadows
            .named(thing, after.as_deref(), limit)
            .await
            .map_err(store_error)?;
        let mut answer = json!({ "results": names, "timestamp": now_seconds() });
        if more && let Some(last) = names.last() {
            answer["nextToken"] = json!(super::records::hex(last));
        }
        Ok(answer)
    }
}
