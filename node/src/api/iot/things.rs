//! `/things` and `/thing-types`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiResult, ControlPlane};
use crate::api::error::AwsError;
use crate::api::request::{ApiRequest, with_token};
use crate::services::registry::AttributeChange;
use crate::services::registry::things::{
    NewThing, ThingFilter, ThingRecord, ThingUpdate, TypeChange,
};
use crate::services::registry::types::{NewThingType, ThingTypeRecord};

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct AttributePayload {
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default)]
    merge: bool,
}

impl From<AttributePayload> for AttributeChange {
    fn from(p: AttributePayload) -> Self {
        AttributeChange {
            attributes: p.attributes,
            merge: p.merge,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct CreateThing {
    thing_type_name: Option<String>,
    attribute_payload: Option<AttributePayload>,
    /// Billing groups are not kept yet; the name is accepted and ignored.
    #[serde(rename = "billingGroupName")]
    _billing_group_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct UpdateThing {
    thing_type_name: Option<String>,
    attribute_payload: Option<AttributePayload>,
    expected_version: Option<u64>,
    #[serde(default)]
    remove_thing_type: bool,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ThingTypeProperties {
    thing_type_description: Option<String>,
    #[serde(default)]
    searchable_attributes: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct CreateThingType {
    thing_type_properties: Option<ThingTypeProperties>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DeprecateThingType {
    #[serde(default)]
    undo_deprecate: bool,
}

impl ControlPlane {
    fn thing_json(&self, thing: &ThingRecord) -> Value {
        let mut answer = json!({
            "thingName": thing.thing_name,
            "thingArn": self.registry.thing_arn(&thing.thing_name),
            "attributes": thing.attributes,
            "version": thing.version,
        });
        if let Some(t) = &thing.thing_type_name {
            answer["thingTypeName"] = json!(t);
        }
        answer
    }

    pub(super) async fn create_thing(&self, name: &str, request: &ApiRequest) -> ApiResult {
        let body: CreateThing = request.json()?;
        let thing = self
            .registry
            .create_thing(
                name,
                NewThing {
                    thing_type_name: body.thing_type_name,
                    attributes: body
                        .attribute_payload
                        .map(|p| p.attributes)
                        .unwrap_or_default(),
                },
            )
            .await?;
        Ok(json!({
            "thingName": thing.thing_name,
            "thingArn": self.registry.thing_arn(&thing.thing_name),
            "thingId": thing.thing_id,
        }))
    }

    pub(super) async fn describe_thing(&self, name: &str) -> ApiResult {
        let thing = self.registry.thing(name).await?;
        let mut answer = self.thing_json(&thing);
        answer["defaultClientId"] = json!(thing.thing_name);
        answer["thingId"] = json!(thing.thing_id);
        Ok(answer)
    }

    pub(super) async fn update_thing(&self, name: &str, request: &ApiRequest) -> ApiResult {
        let body: UpdateThing = request.json()?;
        let thing_type = match (body.remove_thing_type, body.thing_type_name) {
            (true, Some(_)) => {
                return Err(AwsError::invalid_request(
                    "Cannot remove a thing type and set one in the same request",
                ));
            }
            (true, None) => TypeChange::Remove,
            (false, Some(t)) => TypeChange::Set(t),
            (false, None) => TypeChange::Keep,
        };
        self.registry
            .update_thing(
                name,
                ThingUpdate {
                    thing_type,
                    attributes: body.attribute_payload.map(AttributeChange::from),
                    expected_version: body.expected_version,
                },
            )
            .await?;
        Ok(json!({}))
    }

    pub(super) async fn delete_thing(&self, name: &str, request: &ApiRequest) -> ApiResult {
        let expected = request.query_u64("expectedVersion")?;
        self.registry.delete_thing(name, expected).await?;
        Ok(json!({}))
    }

    pub(super) async fn list_things(&self, request: &ApiRequest) -> ApiResult {
        let page = request.page(50, 250)?;
        let filter = ThingFilter {
            thing_type_name: request.query("thingTypeName").map(str::to_owned),
            attribute_name: request.query("attributeName").map(str::to_owned),
            attribute_value: request.query("attributeValue").map(str::to_owned),
            prefix_match: request.query("usePrefixAttributeValue") == Some("true"),
        };
        let (things, next) = self.registry.list_things(&filter, &page).await?;
        let things: Vec<Value> = things.iter().map(|t| self.thing_json(t)).collect();
        Ok(with_token(json!({ "things": things }), "nextToken", next))
    }

    pub(super) async fn create_thing_type(&self, name: &str, request: &ApiRequest) -> ApiResult {
        let body: CreateThingType = request.json()?;
        let properties = body.thing_type_properties.unwrap_or_default();
        let thing_type = self
            .registry
            .create_thing_type(
                name,
                NewThingType {
                    description: properties.thing_type_description,
                    searchable_attributes: properties.searchable_attributes,
                },
            )
            .await?;
        Ok(json!({
            "thingTypeName": thing_type.thing_type_name,
            "thingTypeArn": self.registry.thing_type_arn(name),
            "thingTypeId": thing_type.thing_type_id,
        }))
    }

    fn thing_type_json(&self, t: &ThingTypeRecord) -> Value {
        let mut properties = json!({ "searchableAttributes": t.searchable_attributes });
        if let Some(d) = &t.description {
            properties["thingTypeDescription"] = json!(d);
        }
        let mut metadata = json!({
            "deprecated": t.deprecated,
            "creationDate": t.creation_date,
        });
        if let Some(d) = t.deprecation_date {
            metadata["deprecationDate"] = json!(d);
        }
        json!({
            "thingTypeName": t.thing_type_name,
            "thingTypeArn": self.registry.thing_type_arn(&t.thing_type_name),
            "thingTypeProperties": properties,
            "thingTypeMetadata": metadata,
        })
    }

    pub(super) async fn describe_thing_type(&self, name: &str) -> ApiResult {
        let t = self.registry.thing_type(name).await?;
        let mut answer = self.thing_type_json(&t);
        answer["thingTypeId"] = json!(t.thing_type_id);
        Ok(answer)
    }

    pub(super) async fn deprecate_thing_type(&self, name: &str, request: &ApiRequest) -> ApiResult {
        let body: DeprecateThingType = request.json()?;
        self.registry
            .deprecate_thing_type(name, body.undo_deprecate)
            .await?;
        Ok(json!({}))
    }

    pub(super) async fn delete_thing_type(&self, name: &str) -> ApiResult {
        self.registry.delete_thing_type(name).await?;
        Ok(json!({}))
    }

    pub(super) async fn list_thing_types(&self, request: &ApiRequest) -> ApiResult {
        let page = request.page(50, 250)?;
        let (types, next) = self
            .registry
            .list_thing_types(request.query("thingTypeName"), &page)
            .await?;
        let types: Vec<Value> = types.iter().map(|t| self.thing_type_json(t)).collect();
        Ok(with_token(
            json!({ "thingTypes": types }),
            "nextToken",
            next,
        ))
    }
}
