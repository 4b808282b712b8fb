//! The Device Shadow operations of the data plane (iot-data): GetThingShadow,
//! UpdateThingShadow, DeleteThingShadow and ListNamedShadowsForThing. An update or delete made
//! here publishes the same MQTT notifications as one made over MQTT.

use serde_json::json;

use super::{ApiResult, Caller, DataPlane};
use crate::api::error::AwsError;
use crate::api::request::ApiRequest;
use crate::auth::permissions::Action;
use crate::clock::epoch_seconds;
use crate::services::shadow::document::NameError;
use crate::services::shadow::document::ShadowError;
use crate::services::shadow::service::{Origin, ShadowName};
use crate::services::shadow::store::ShadowStoreError;

fn shadow_error(e: ShadowError) -> AwsError {
    let code = match e.code {
        404 => "ResourceNotFoundException",
        409 => "ConflictException",
        413 => "RequestEntityTooLargeException",
        415 => "UnsupportedDocumentEncodingException",
        401 => "UnauthorizedException",
        403 => "ForbiddenException",
        429 => "ThrottlingException",
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

fn check_names(name: &ShadowName) -> Result<(), AwsError> {
    match name.check() {
        Ok(()) => Ok(()),
        Err(NameError::Thing) => Err(AwsError::validation(
            "thingName",
            &name.thing,
            "Member must satisfy regular expression pattern: [a-zA-Z0-9:_-]+",
        )),
        Err(NameError::Shadow) => Err(AwsError::validation(
            "shadowName",
            name.shadow.as_deref().unwrap_or_default(),
            "Member must satisfy regular expression pattern: [$a-zA-Z0-9:_-]+",
        )),
    }
}

/// The policy resource name of a shadow: `thing/{thing}` or `thing/{thing}/{shadow}`.
fn resource(name: &ShadowName) -> String {
    match &name.shadow {
        None => name.thing.clone(),
        Some(shadow) => format!("{}/{shadow}", name.thing),
    }
}

impl DataPlane {
    fn shadow_target(
        &self,
        thing: &str,
        request: &ApiRequest,
        caller: &Caller,
        action: Action,
    ) -> Result<ShadowName, AwsError> {
        let shadow = request.query("name").filter(|n| !n.is_empty());
        let name = ShadowName::new(thing, shadow);
        check_names(&name)?;
        if !caller.allows(action, &resource(&name)) {
            return Err(AwsError::forbidden());
        }
        Ok(name)
    }

    pub(super) async fn get_thing_shadow(
        &self,
        thing: &str,
        request: &ApiRequest,
        caller: &Caller,
    ) -> ApiResult {
        let name = self.shadow_target(thing, request, caller, Action::GetThingShadow)?;
        self.shadows
            .get(&name, None, Origin::Http)
            .await
            .map_err(store_error)
    }

    pub(super) async fn update_thing_shadow(
        &self,
        thing: &str,
        request: &ApiRequest,
        caller: &Caller,
    ) -> ApiResult {
        let name = self.shadow_target(thing, request, caller, Action::UpdateThingShadow)?;
        self.shadows
            .update(&name, request.body.clone())
            .await
            .map_err(store_error)
    }

    pub(super) async fn delete_thing_shadow(
        &self,
        thing: &str,
        request: &ApiRequest,
        caller: &Caller,
    ) -> ApiResult {
        let name = self.shadow_target(thing, request, caller, Action::DeleteThingShadow)?;
        self.shadows.delete(&name).await.map_err(store_error)
    }

    pub(super) async fn list_named_shadows(
        &self,
        thing: &str,
        request: &ApiRequest,
        caller: &Caller,
    ) -> ApiResult {
        check_names(&ShadowName::new(thing, None))?;
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
                crate::store::keys::unhex(token)
                    .ok_or_else(|| AwsError::invalid_request("The nextToken is invalid."))?,
            ),
        };
        let (names, more) = self
            .shadows
            .store()
            .named(thing, after.as_deref(), limit)
            .await
            .map_err(store_error)?;
        let mut answer = json!({ "results": names, "timestamp": epoch_seconds() });
        if more && let Some(last) = names.last() {
            answer["nextToken"] = json!(crate::store::keys::hex(last));
        }
        Ok(answer)
    }
}
