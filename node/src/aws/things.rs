//! The registry's things and thing types: `/things` and `/thing-types`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::AwsError;
use super::request::{ApiRequest, Page};
use super::{Api, ApiResult};

use crate::store::keys;

pub(super) const THINGS: &str = keys::THINGS;
pub(super) const THING_TYPES: &str = keys::THING_TYPES;
/// Attributes a thing may have without a thing type, and with one.
const MAX_ATTRIBUTES_UNTYPED: usize = 3;
const MAX_ATTRIBUTES_TYPED: usize = 50;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ThingRecord {
    pub thing_name: String,
    pub thing_id: String,
    pub thing_type_name: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub version: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ThingTypeRecord {
    pub thing_type_name: String,
    pub thing_type_id: String,
    pub description: Option<String>,
    pub searchable_attributes: Vec<String>,
    pub deprecated: bool,
    pub deprecation_date: Option<f64>,
    pub creation_date: f64,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AttributePayload {
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default)]
    merge: bool,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct CreateThing {
    thing_type_name: Option<String>,
    attribute_payload: Option<AttributePayload>,
    #[allow(dead_code)]
    billing_group_name: Option<String>,
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

/// A name of a thing, thing type or group: AWS's pattern and length.
pub fn check_name(field: &str, name: &str) -> Result<(), AwsError> {
    if name.is_empty() || name.len() > 128 {
        return Err(AwsError::validation(
            field,
            name,
            "Member must have length between 1 and 128",
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'))
    {
        return Err(AwsError::validation(
            field,
            name,
            "Member must satisfy regular expression pattern: [a-zA-Z0-9:_-]+",
        ));
    }
    Ok(())
}

/// An attribute name of a thing or group, by AWS's pattern and length.
pub(super) fn check_attribute_name(field: &str, name: &str) -> Result<(), AwsError> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.,@/:#-".contains(&b))
    {
        return Err(AwsError::validation(
            field,
            name,
            "Map keys must satisfy constraint: [Member must have length less than or equal to 128, Member must satisfy regular expression pattern: [a-zA-Z0-9_.,@/:#-]+]",
        ));
    }
    Ok(())
}

fn check_attributes(attributes: &BTreeMap<String, String>, typed: bool) -> Result<(), AwsError> {
    for (name, value) in attributes {
        check_attribute_name("attributePayload.attributes", name)?;
        if value.len() > 800
            || !value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.,@/:#=[]-".contains(&b))
        {
            return Err(AwsError::validation(
                "attributePayload.attributes",
                value,
                "Map value must satisfy constraint: [Member must have length less than or equal to 800, Member must satisfy regular expression pattern: [a-zA-Z0-9_.,@/:#=\\[\\]-]*]",
            ));
        }
    }
    let limit = if typed {
        MAX_ATTRIBUTES_TYPED
    } else {
        MAX_ATTRIBUTES_UNTYPED
    };
    if attributes.len() > limit {
        return Err(AwsError::invalid_request(format!(
            "A thing {} can have at most {limit} attributes; got {}.",
            if typed {
                "with a thing type"
            } else {
                "without a thing type"
            },
            attributes.len()
        )));
    }
    Ok(())
}

pub(super) fn thing_key(name: &str) -> String {
    keys::thing(name)
}

fn thing_type_key(name: &str) -> String {
    keys::thing_type(name)
}

impl Api {
    fn thing_json(&self, thing: &ThingRecord) -> Value {
        let mut answer = json!({
            "thingName": thing.thing_name,
            "thingArn": self.arn(&format!("thing/{}", thing.thing_name)),
            "attributes": thing.attributes,
            "version": thing.version,
        });
        if let Some(t) = &thing.thing_type_name {
            answer["thingTypeName"] = json!(t);
        }
        answer
    }

    /// The type a thing may be given: it must exist and not be deprecated.
    async fn usable_type(&self, name: &str) -> Result<(), AwsError> {
        match self
            .records
            .get::<ThingTypeRecord>(&thing_type_key(name))
            .await?
        {
            None => Err(AwsError::not_found(format!(
                "Thing Type {name} does not exist"
            ))),
            Some(t) if t.value.deprecated => Err(AwsError::invalid_request(format!(
                "Can not create new thing with deprecated thing type: {name}"
            ))),
            Some(_) => Ok(()),
        }
    }

    pub(super) async fn create_thing(&self, name: &str, request: &ApiRequest) -> ApiResult {
        check_name("thingName", name)?;
        let body: CreateThing = request.json()?;
        let attributes: BTreeMap<String, String> = body
            .attribute_payload
            .map(|p| p.attributes)
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .collect();
        if let Some(t) = &body.thing_type_name {
            check_name("thingTypeName", t)?;
            self.usable_type(t).await?;
        }
        check_attributes(&attributes, body.thing_type_name.is_some())?;
        let fresh = ThingRecord {
            thing_name: name.to_owned(),
            thing_id: uuid_v4(),
            thing_type_name: body.thing_type_name,
            attributes,
            version: 1,
        };
        let key = thing_key(name);
        let thing = if self.records.create(&key, &fresh).await? {
            self.registry_event("thing", name, "CREATED", &fresh);
            fresh
        } else {
            // The same configuration again succeeds and changes nothing; another one conflicts.
            let existing = self
                .records
                .get::<ThingRecord>(&key)
                .await?
                .ok_or_else(|| AwsError::conflicting_update("The thing changed meanwhile; retry."))?
                .value;
            if existing.thing_type_name != fresh.thing_type_name
                || existing.attributes != fresh.attributes
            {
                return Err(AwsError::already_exists(
                    format!("Thing {name} already exists with different attributes"),
                    existing.thing_id.as_str(),
                    self.arn(&format!("thing/{name}")),
                ));
            }
            existing
        };
        Ok(json!({
            "thingName": thing.thing_name,
            "thingArn": self.arn(&format!("thing/{}", thing.thing_name)),
            "thingId": thing.thing_id,
        }))
    }

    pub(super) async fn describe_thing(&self, name: &str) -> ApiResult {
        check_name("thingName", name)?;
        let thing = self.thing(name).await?;
        let mut answer = self.thing_json(&thing);
        answer["defaultClientId"] = json!(thing.thing_name);
        answer["thingId"] = json!(thing.thing_id);
        Ok(answer)
    }

    pub(super) async fn thing(&self, name: &str) -> Result<ThingRecord, AwsError> {
        Ok(self.versioned_thing(name).await?.value)
    }

    async fn versioned_thing(
        &self,
        name: &str,
    ) -> Result<super::records::Versioned<ThingRecord>, AwsError> {
        self.records
            .get::<ThingRecord>(&thing_key(name))
            .await?
            .ok_or_else(|| AwsError::not_found(format!("Thing {name} cannot be found.")))
    }

    pub(super) async fn update_thing(&self, name: &str, request: &ApiRequest) -> ApiResult {
        check_name("thingName", name)?;
        let body: UpdateThing = request.json()?;
        if body.remove_thing_type && body.thing_type_name.is_some() {
            return Err(AwsError::invalid_request(
                "Cannot remove a thing type and set one in the same request",
            ));
        }
        if let Some(t) = &body.thing_type_name {
            check_name("thingTypeName", t)?;
            self.usable_type(t).await?;
        }
        let current = self.versioned_thing(name).await?;
        if let Some(expected) = body.expected_version
            && expected != current.value.version
        {
            return Err(AwsError::version_conflict(format!(
                "The version for thing {name} does not match the expected version."
            )));
        }
        let mut thing = current.value;
        if body.remove_thing_type {
            thing.thing_type_name = None;
        } else if let Some(t) = body.thing_type_name {
            thing.thing_type_name = Some(t);
        }
        if let Some(payload) = body.attribute_payload {
            if !payload.merge {
                thing.attributes.clear();
            }
            for (k, v) in payload.attributes {
                // An empty value removes the attribute.
                if v.is_empty() {
                    thing.attributes.remove(&k);
                } else {
                    thing.attributes.insert(k, v);
                }
            }
        }
        check_attributes(&thing.attributes, thing.thing_type_name.is_some())?;
        thing.version += 1;
        if !self
            .records
            .replace(&thing_key(name), &thing, current.mod_revision)
            .await?
        {
            return Err(AwsError::version_conflict(format!(
                "The version for thing {name} does not match the expected version."
            )));
        }
        self.registry_event("thing", name, "UPDATED", &thing);
        Ok(json!({}))
    }

    pub(super) async fn delete_thing(&self, name: &str, request: &ApiRequest) -> ApiResult {
        check_name("thingName", name)?;
        let expected = request.query_u64("expectedVersion")?;
        // Deleting a thing that does not exist succeeds, as in AWS.
        let Some(current) = self.records.get::<ThingRecord>(&thing_key(name)).await? else {
            return Ok(json!({}));
        };
        if expected.is_some_and(|v| v != current.value.version) {
            return Err(AwsError::version_conflict(format!(
                "The version for thing {name} does not match the expected version."
            )));
        }
        if self.has_principals(name).await? {
            return Err(AwsError::invalid_request(format!(
                "Cannot delete thing {name}: detach its principals first"
            )));
        }
        // The thing leaves its groups in the same transaction; a concurrent join rewrites the
        // thing's record and so makes this one fail rather than leave a dangling membership.
        let key = thing_key(name);
        let mut ops = self.leave_all_groups(name).await?;
        ops.push(halyard_raft::Op::delete(key.clone()));
        let txn = halyard_raft::Txn::new()
            .when([super::records::unchanged_since(&key, current.mod_revision)])
            .and_then(ops);
        if !self.records.txn(txn).await?.succeeded {
            return Err(AwsError::version_conflict(format!(
                "Thing {name} changed while it was being deleted; retry."
            )));
        }
        self.registry_event("thing", name, "DELETED", &current.value);
        Ok(json!({}))
    }

    pub(super) async fn list_things(&self, request: &ApiRequest) -> ApiResult {
        let page = Page::from_request(request, 50, 250)?;
        let attribute_name = request.query("attributeName");
        let attribute_value = request.query("attributeValue");
        let type_name = request.query("thingTypeName");
        let prefix_match = request.query("usePrefixAttributeValue") == Some("true");
        if attribute_value.is_some() && attribute_name.is_none() {
            return Err(AwsError::invalid_request(
                "attributeValue requires attributeName",
            ));
        }
        let matches = |t: &ThingRecord| {
            let type_ok = type_name.is_none_or(|n| t.thing_type_name.as_deref() == Some(n));
            let attribute_ok = match (attribute_name, attribute_value) {
                (Some(n), Some(v)) => t.attributes.get(n).is_some_and(|have| {
                    if prefix_match {
                        have.starts_with(v)
                    } else {
                        have == v
                    }
                }),
                (Some(n), None) => t.attributes.contains_key(n),
                _ => true,
            };
            type_ok && attribute_ok
        };
        let (things, next) = page
            .collect(&self.records, THINGS, |t: &ThingRecord| matches(t))
            .await?;
        let things: Vec<Value> = things.iter().map(|t| self.thing_json(t)).collect();
        Ok(with_token(json!({ "things": things }), next))
    }

    pub(super) async fn create_thing_type(&self, name: &str, request: &ApiRequest) -> ApiResult {
        check_name("thingTypeName", name)?;
        let body: CreateThingType = request.json()?;
        let properties = body.thing_type_properties.unwrap_or_default();
        if properties.searchable_attributes.len() > 3 {
            return Err(AwsError::invalid_request(
                "A thing type can have at most 3 searchable attributes",
            ));
        }
        let fresh = ThingTypeRecord {
            thing_type_name: name.to_owned(),
            thing_type_id: uuid_v4(),
            description: properties.thing_type_description,
            searchable_attributes: properties.searchable_attributes,
            deprecated: false,
            deprecation_date: None,
            creation_date: now_seconds(),
        };
        let key = thing_type_key(name);
        let thing_type = if self.records.create(&key, &fresh).await? {
            fresh
        } else {
            let existing = self
                .records
                .get::<ThingTypeRecord>(&key)
                .await?
                .ok_or_else(|| {
                    AwsError::conflicting_update("The thing type changed meanwhile; retry.")
                })?
                .value;
            if existing.description != fresh.description
                || existing.searchable_attributes != fresh.searchable_attributes
            {
                return Err(AwsError::already_exists(
                    format!("Thing Type {name} already exists with different properties"),
                    existing.thing_type_id.as_str(),
                    self.arn(&format!("thingtype/{name}")),
                ));
            }
            existing
        };
        Ok(json!({
            "thingTypeName": thing_type.thing_type_name,
            "thingTypeArn": self.arn(&format!("thingtype/{name}")),
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
            "thingTypeArn": self.arn(&format!("thingtype/{}", t.thing_type_name)),
            "thingTypeProperties": properties,
            "thingTypeMetadata": metadata,
        })
    }

    async fn versioned_thing_type(
        &self,
        name: &str,
    ) -> Result<super::records::Versioned<ThingTypeRecord>, AwsError> {
        self.records
            .get::<ThingTypeRecord>(&thing_type_key(name))
            .await?
            .ok_or_else(|| AwsError::not_found(format!("Thing Type {name} does not exist")))
    }

    pub(super) async fn describe_thing_type(&self, name: &str) -> ApiResult {
        check_name("thingTypeName", name)?;
        let t = self.versioned_thing_type(name).await?.value;
        let mut answer = self.thing_type_json(&t);
        answer["thingTypeId"] = json!(t.thing_type_id);
        Ok(answer)
    }

    pub(super) async fn deprecate_thing_type(&self, name: &str, request: &ApiRequest) -> ApiResult {
        check_name("thingTypeName", name)?;
        let body: DeprecateThingType = request.json()?;
        let current = self.versioned_thing_type(name).await?;
        let mut t = current.value;
        t.deprecated = !body.undo_deprecate;
        t.deprecation_date = t.deprecated.then(now_seconds);
        if !self
            .records
            .replace(&thing_type_key(name), &t, current.mod_revision)
            .await?
        {
            return Err(AwsError::conflicting_update(format!(
                "Thing Type {name} changed meanwhile; retry."
            )));
        }
        Ok(json!({}))
    }

    pub(super) async fn delete_thing_type(&self, name: &str) -> ApiResult {
        check_name("thingTypeName", name)?;
        let current = self.versioned_thing_type(name).await?;
        if !current.value.deprecated {
            return Err(AwsError::invalid_request(format!(
                "Thing Type {name} must be deprecated for at least 5 minutes before it can be deleted"
            )));
        }
        let (in_use, _) = Page::first(1)
            .collect(&self.records, THINGS, |t: &ThingRecord| {
                t.thing_type_name.as_deref() == Some(name)
            })
            .await?;
        if !in_use.is_empty() {
            return Err(AwsError::invalid_request(format!(
                "Can not delete thing type {name}: things are still associated with it"
            )));
        }
        self.records
            .delete(&thing_type_key(name), current.mod_revision)
            .await?;
        Ok(json!({}))
    }

    pub(super) async fn list_thing_types(&self, request: &ApiRequest) -> ApiResult {
        let page = Page::from_request(request, 50, 250)?;
        let wanted = request.query("thingTypeName");
        let (types, next) = page
            .collect(&self.records, THING_TYPES, |t: &ThingTypeRecord| {
                wanted.is_none_or(|w| t.thing_type_name == w)
            })
            .await?;
        let types: Vec<Value> = types.iter().map(|t| self.thing_type_json(t)).collect();
        Ok(with_token(json!({ "thingTypes": types }), next))
    }
}

pub(super) fn with_token(mut answer: Value, next: Option<String>) -> Value {
    if let Some(token) = next {
        answer["nextToken"] = json!(token);
    }
    answer
}

/// Seconds since the epoch with a fraction, as AWS timestamps are sent.
pub fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| (d.as_millis() as f64) / 1000.0)
        .unwrap_or_default()
}

/// A random (version 4) UUID, as AWS gives things and types.
pub fn uuid_v4() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_aws_rules() {
        assert!(check_name("thingName", "sensor-1:a_b").is_ok());
        assert!(check_name("thingName", "").is_err());
        assert!(check_name("thingName", "has space").is_err());
        assert!(check_name("thingName", &"x".repeat(129)).is_err());
    }

    #[test]
    fn attributes_are_limited_by_count_and_pattern() {
        let three: BTreeMap<String, String> =
            (0..3).map(|i| (format!("a{i}"), "v".into())).collect();
        assert!(check_attributes(&three, false).is_ok());
        let mut four = three.clone();
        four.insert("a3".into(), "v".into());
        assert!(check_attributes(&four, false).is_err());
        assert!(check_attributes(&four, true).is_ok());
        let bad = BTreeMap::from([("bad name".to_owned(), "v".to_owned())]);
        assert!(check_attributes(&bad, true).is_err());
        let bad_value = BTreeMap::from([("k".to_owned(), "x".repeat(801))]);
        assert!(check_attributes(&bad_value, true).is_err());
    }

    #[test]
    fn uuids_are_version_4() {
        let id = uuid_v4();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
    }
}
