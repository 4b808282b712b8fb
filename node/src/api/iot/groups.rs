//! `/thing-groups`: static thing groups and their things.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use super::things::AttributePayload;
use super::{ApiResult, ControlPlane};
use crate::api::error::AwsError;
use crate::api::request::{ApiRequest, with_token};
use crate::services::arn::Kind;
use crate::services::registry::AttributeChange;
use crate::services::registry::groups::{GroupFilter, GroupUpdate, NewGroup, ThingGroupRecord};

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct GroupProperties {
    thing_group_description: Option<String>,
    attribute_payload: Option<AttributePayload>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct CreateGroup {
    parent_group_name: Option<String>,
    thing_group_properties: Option<GroupProperties>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct UpdateGroup {
    thing_group_properties: Option<GroupProperties>,
    expected_version: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Membership {
    thing_group_name: Option<String>,
    thing_group_arn: Option<String>,
    thing_name: Option<String>,
    thing_arn: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct UpdateGroupsForThing {
    thing_name: Option<String>,
    #[serde(default)]
    thing_groups_to_add: Vec<String>,
    #[serde(default)]
    thing_groups_to_remove: Vec<String>,
}

impl ControlPlane {
    fn group_summary(&self, name: &str) -> Value {
        json!({ "groupName": name, "groupArn": self.registry.group_arn(name) })
    }

    /// The resource named by a name or by an ARN of this account.
    fn name_or_arn(
        &self,
        kind: Kind,
        (name_field, arn_field): (&str, &str),
        name: Option<String>,
        arn: Option<String>,
    ) -> Result<String, AwsError> {
        match (name, arn) {
            (Some(n), _) => Ok(n),
            (None, Some(a)) => self
                .registry
                .arns()
                .name(kind, &a)
                .map(str::to_owned)
                .ok_or_else(|| {
                    AwsError::invalid_request(format!(
                        "{a} is not a {} ARN of this account",
                        match kind {
                            Kind::ThingGroup => "thing group",
                            _ => "thing",
                        }
                    ))
                }),
            (None, None) => Err(AwsError::invalid_request(format!(
                "{name_field} or {arn_field} is required"
            ))),
        }
    }

    fn membership(&self, body: Membership) -> Result<(String, String), AwsError> {
        let group = self.name_or_arn(
            Kind::ThingGroup,
            ("thingGroupName", "thingGroupArn"),
            body.thing_group_name,
            body.thing_group_arn,
        )?;
        let thing = self.name_or_arn(
            Kind::Thing,
            ("thingName", "thingArn"),
            body.thing_name,
            body.thing_arn,
        )?;
        Ok((group, thing))
    }

    fn group_json(&self, g: &ThingGroupRecord) -> Value {
        let mut properties = json!({ "attributePayload": { "attributes": g.attributes } });
        if let Some(d) = &g.description {
            properties["thingGroupDescription"] = json!(d);
        }
        let mut metadata = json!({
            "rootToParentThingGroups": g.root_to_parent.iter().map(|n| self.group_summary(n)).collect::<Vec<_>>(),
            "creationDate": g.creation_date,
        });
        if let Some(p) = &g.parent {
            metadata["parentGroupName"] = json!(p);
        }
        json!({
            "thingGroupName": g.name,
            "thingGroupId": g.id,
            "thingGroupArn": self.registry.group_arn(&g.name),
            "version": g.version,
            "thingGroupProperties": properties,
            "thingGroupMetadata": metadata,
        })
    }

    pub(super) async fn create_thing_group(&self, name: &str, request: &ApiRequest) -> ApiResult {
        let body: CreateGroup = request.json()?;
        let properties = body.thing_group_properties.unwrap_or_default();
        let attributes: BTreeMap<String, String> = properties
            .attribute_payload
            .map(|p| AttributeChange::from(p).attributes)
            .unwrap_or_default();
        let group = self
            .registry
            .create_group(
                name,
                NewGroup {
                    parent: body.parent_group_name,
                    description: properties.thing_group_description,
                    attributes,
                },
            )
            .await?;
        Ok(json!({
            "thingGroupName": name,
            "thingGroupArn": self.registry.group_arn(name),
            "thingGroupId": group.id,
        }))
    }

    pub(super) async fn describe_thing_group(&self, name: &str) -> ApiResult {
        let group = self.registry.group(name).await?;
        Ok(self.group_json(&group))
    }

    pub(super) async fn update_thing_group(&self, name: &str, request: &ApiRequest) -> ApiResult {
        let body: UpdateGroup = request.json()?;
        let properties = body.thing_group_properties.unwrap_or_default();
        let version = self
            .registry
            .update_group(
                name,
                GroupUpdate {
                    description: properties.thing_group_description,
                    attributes: properties.attribute_payload.map(AttributeChange::from),
                    expected_version: body.expected_version,
                },
            )
            .await?;
        Ok(json!({ "version": version }))
    }

    pub(super) async fn delete_thing_group(&self, name: &str, request: &ApiRequest) -> ApiResult {
        let expected = request.query_u64("expectedVersion")?;
        self.registry.delete_group(name, expected).await?;
        Ok(json!({}))
    }

    pub(super) async fn list_thing_groups(&self, request: &ApiRequest) -> ApiResult {
        let page = request.page(50, 250)?;
        let recursive = match request.query("recursive") {
            None => None,
            Some(_) => Some(request.query_flag("recursive")?),
        };
        let filter = GroupFilter {
            parent: request.query("parentGroup").map(str::to_owned),
            name_prefix: request
                .query("namePrefixFilter")
                .unwrap_or_default()
                .to_owned(),
            recursive,
        };
        let (groups, next) = self.registry.list_groups(&filter, &page).await?;
        let groups: Vec<Value> = groups.iter().map(|g| self.group_summary(&g.name)).collect();
        Ok(with_token(
            json!({ "thingGroups": groups }),
            "nextToken",
            next,
        ))
    }

    pub(super) async fn add_thing_to_thing_group(&self, request: &ApiRequest) -> ApiResult {
        let (group, thing) = self.membership(request.json()?)?;
        self.registry.add_thing_to_group(&group, &thing).await?;
        Ok(json!({}))
    }

    pub(super) async fn remove_thing_from_thing_group(&self, request: &ApiRequest) -> ApiResult {
        let (group, thing) = self.membership(request.json()?)?;
        self.registry
            .remove_thing_from_group(&group, &thing)
            .await?;
        Ok(json!({}))
    }

    pub(super) async fn update_thing_groups_for_thing(&self, request: &ApiRequest) -> ApiResult {
        let body: UpdateGroupsForThing = request.json()?;
        let thing = body
            .thing_name
            .ok_or_else(|| AwsError::invalid_request("thingName is required"))?;
        self.registry
            .update_groups_for_thing(
                &thing,
                &body.thing_groups_to_add,
                &body.thing_groups_to_remove,
            )
            .await?;
        Ok(json!({}))
    }

    pub(super) async fn list_things_in_thing_group(
        &self,
        name: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        let page = request.page(50, 250)?;
        let recursive = request.query_flag("recursive")?;
        let (things, next) = self
            .registry
            .things_in_group(name, recursive, &page)
            .await?;
        Ok(with_token(json!({ "things": things }), "nextToken", next))
    }

    pub(super) async fn list_thing_groups_for_thing(
        &self,
        thing: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        let page = request.page(25, 250)?;
        let (groups, next) = self.registry.groups_of_thing(thing, &page).await?;
        let groups: Vec<Value> = groups.iter().map(|g| self.group_summary(g)).collect();
        Ok(with_token(
            json!({ "thingGroups": groups }),
            "nextToken",
            next,
        ))
    }
}
