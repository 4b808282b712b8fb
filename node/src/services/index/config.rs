//! The fleet indexing configuration: what the thing and thing group indexes hold, as
//! UpdateIndexingConfiguration sets it and GetIndexingConfiguration answers it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::services::error::{Error, Result};

/// Named shadows one configuration may index.
const MAX_NAMED_SHADOWS: usize = 10;
/// Custom fields of one index.
const MAX_CUSTOM_FIELDS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ThingIndexingMode {
    #[default]
    Off,
    Registry,
    RegistryAndShadow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FieldType {
    Number,
    String,
    Boolean,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    pub name: String,
    #[serde(rename = "type")]
    pub field_type: Option<FieldType>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexingFilter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub named_shadow_names: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThingIndexing {
    pub thing_indexing_mode: ThingIndexingMode,
    /// `STATUS` or `OFF`.
    #[serde(default)]
    pub connectivity_status: bool,
    #[serde(default)]
    pub named_shadows: bool,
    #[serde(default)]
    pub custom_fields: Vec<Field>,
    #[serde(default)]
    pub filter: IndexingFilter,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupIndexing {
    pub on: bool,
    #[serde(default)]
    pub custom_fields: Vec<Field>,
}

/// The stored configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexingConfiguration {
    pub thing: ThingIndexing,
    pub group: GroupIndexing,
}

/// The type a custom field declares, by field name.
pub type FieldTypes = BTreeMap<String, FieldType>;

impl ThingIndexing {
    pub fn on(&self) -> bool {
        self.thing_indexing_mode != ThingIndexingMode::Off
    }

    pub fn shadows(&self) -> bool {
        self.thing_indexing_mode == ThingIndexingMode::RegistryAndShadow
    }

    /// Whether this named shadow is indexed.
    pub fn indexes_named_shadow(&self, name: &str) -> bool {
        self.shadows()
            && self.named_shadows
            && self.filter.named_shadow_names.iter().any(|n| n == name)
    }

    pub fn field_types(&self) -> FieldTypes {
        types_of(&self.custom_fields)
    }

    /// DescribeIndex's schema.
    pub fn schema(&self) -> &'static str {
        match (self.shadows(), self.connectivity_status) {
            (false, false) => "REGISTRY",
            (true, false) => "REGISTRY_AND_SHADOW",
            (false, true) => "REGISTRY_AND_CONNECTIVITY_STATUS",
            (true, true) => "REGISTRY_AND_SHADOW_AND_CONNECTIVITY_STATUS",
        }
    }

    /// The fields the index knows the type of without being told.
    pub fn managed_fields(&self) -> Vec<Field> {
        let mut fields = vec![
            field("thingName", FieldType::String),
            field("thingId", FieldType::String),
            field("thingTypeName", FieldType::String),
            field("thingGroupNames", FieldType::String),
            field("registry.version", FieldType::Number),
        ];
        if self.shadows() {
            fields.push(field("shadow.version", FieldType::Number));
            fields.push(field("shadow.hasDelta", FieldType::Boolean));
        }
        if self.connectivity_status {
            fields.push(field("connectivity.connected", FieldType::Boolean));
            fields.push(field("connectivity.timestamp", FieldType::Number));
            fields.push(field("connectivity.disconnectReason", FieldType::String));
        }
        fields
    }
}

impl GroupIndexing {
    pub fn field_types(&self) -> FieldTypes {
        types_of(&self.custom_fields)
    }

    pub fn managed_fields(&self) -> Vec<Field> {
        if !self.on {
            return Vec::new();
        }
        vec![
            field("thingGroupName", FieldType::String),
            field("thingGroupId", FieldType::String),
            field("thingGroupDescription", FieldType::String),
            field("parentGroupNames", FieldType::String),
        ]
    }
}

fn field(name: &str, field_type: FieldType) -> Field {
    Field {
        name: name.to_owned(),
        field_type: Some(field_type),
    }
}

fn types_of(fields: &[Field]) -> FieldTypes {
    fields
        .iter()
        .filter_map(|f| Some((f.name.clone(), f.field_type?)))
        .collect()
}

/// UpdateIndexingConfiguration's thing part, as AWS spells it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThingIndexingRequest {
    pub thing_indexing_mode: Option<String>,
    pub thing_connectivity_indexing_mode: Option<String>,
    pub device_defender_indexing_mode: Option<String>,
    pub named_shadow_indexing_mode: Option<String>,
    pub managed_fields: Option<Vec<Field>>,
    pub custom_fields: Option<Vec<Field>>,
    pub filter: Option<IndexingFilter>,
}

/// UpdateIndexingConfiguration's thing group part.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupIndexingRequest {
    pub thing_group_indexing_mode: Option<String>,
    pub managed_fields: Option<Vec<Field>>,
    pub custom_fields: Option<Vec<Field>>,
}

fn one_of<'a>(field: &str, value: &'a str, allowed: &[&str]) -> Result<&'a str> {
    if allowed.contains(&value) {
        Ok(value)
    } else {
        Err(Error::validation(
            field,
            value,
            &format!(
                "Member must satisfy enum value set: [{}]",
                allowed.join(", ")
            ),
        ))
    }
}

fn check_custom_fields(field: &str, fields: &[Field]) -> Result<()> {
    if fields.len() > MAX_CUSTOM_FIELDS {
        return Err(Error::invalid(format!(
            "{field} holds {} fields; at most {MAX_CUSTOM_FIELDS} are allowed",
            fields.len()
        )));
    }
    for f in fields {
        if f.name.is_empty() {
            return Err(Error::invalid(format!("A field of {field} has no name")));
        }
        if f.field_type.is_none() {
            return Err(Error::invalid(format!(
                "Custom field {} needs a type: Number, String or Boolean",
                f.name
            )));
        }
    }
    let mut names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
    names.sort_unstable();
    if let Some(twice) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::invalid(format!(
            "Custom field {} is given twice",
            twice[0]
        )));
    }
    Ok(())
}

impl ThingIndexingRequest {
    pub fn into_config(self) -> Result<ThingIndexing> {
        let mode = match self.thing_indexing_mode.as_deref() {
            None => {
                return Err(Error::invalid(
                    "thingIndexingConfiguration.thingIndexingMode is required",
                ));
            }
            Some(m) => match one_of(
                "thingIndexingConfiguration.thingIndexingMode",
                m,
                &["OFF", "REGISTRY", "REGISTRY_AND_SHADOW"],
            )? {
                "REGISTRY" => ThingIndexingMode::Registry,
                "REGISTRY_AND_SHADOW" => ThingIndexingMode::RegistryAndShadow,
                _ => ThingIndexingMode::Off,
            },
        };
        let connectivity = match self.thing_connectivity_indexing_mode.as_deref() {
            None => false,
            Some(m) => {
                one_of(
                    "thingIndexingConfiguration.thingConnectivityIndexingMode",
                    m,
                    &["OFF", "STATUS"],
                )? == "STATUS"
            }
        };
        if let Some(m) = self.device_defender_indexing_mode.as_deref()
            && one_of(
                "thingIndexingConfiguration.deviceDefenderIndexingMode",
                m,
                &["OFF", "VIOLATIONS"],
            )? == "VIOLATIONS"
        {
            return Err(Error::invalid(
                "Device Defender indexing (VIOLATIONS) is not available: this deployment has no Device Defender",
            ));
        }
        let named_shadows = match self.named_shadow_indexing_mode.as_deref() {
            None => false,
            Some(m) => {
                one_of(
                    "thingIndexingConfiguration.namedShadowIndexingMode",
                    m,
                    &["OFF", "ON"],
                )? == "ON"
            }
        };
        if mode == ThingIndexingMode::Off && (connectivity || named_shadows) {
            return Err(Error::invalid(
                "Connectivity and named shadow indexing need thingIndexingMode REGISTRY or REGISTRY_AND_SHADOW",
            ));
        }
        if named_shadows && mode != ThingIndexingMode::RegistryAndShadow {
            return Err(Error::invalid(
                "Named shadow indexing needs thingIndexingMode REGISTRY_AND_SHADOW",
            ));
        }
        let filter = self.filter.unwrap_or_default();
        if filter.named_shadow_names.len() > MAX_NAMED_SHADOWS {
            return Err(Error::invalid(format!(
                "filter.namedShadowNames holds {} names; at most {MAX_NAMED_SHADOWS} are allowed",
                filter.named_shadow_names.len()
            )));
        }
        if !filter.named_shadow_names.is_empty() && !named_shadows {
            return Err(Error::invalid(
                "filter.namedShadowNames needs namedShadowIndexingMode ON",
            ));
        }
        let custom_fields = self.custom_fields.unwrap_or_default();
        check_custom_fields("thingIndexingConfiguration.customFields", &custom_fields)?;
        if mode == ThingIndexingMode::Off && !custom_fields.is_empty() {
            return Err(Error::invalid(
                "Custom fields need thingIndexingMode REGISTRY or REGISTRY_AND_SHADOW",
            ));
        }
        Ok(ThingIndexing {
            thing_indexing_mode: mode,
            connectivity_status: connectivity,
            named_shadows,
            custom_fields,
            filter,
        })
    }
}

impl GroupIndexingRequest {
    pub fn into_config(self) -> Result<GroupIndexing> {
        let on = match self.thing_group_indexing_mode.as_deref() {
            None => {
                return Err(Error::invalid(
                    "thingGroupIndexingConfiguration.thingGroupIndexingMode is required",
                ));
            }
            Some(m) => {
                one_of(
                    "thingGroupIndexingConfiguration.thingGroupIndexingMode",
                    m,
                    &["OFF", "ON"],
                )? == "ON"
            }
        };
        let custom_fields = self.custom_fields.unwrap_or_default();
        check_custom_fields(
            "thingGroupIndexingConfiguration.customFields",
            &custom_fields,
        )?;
        Ok(GroupIndexing { on, custom_fields })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> ThingIndexingRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_thing_configuration_is_checked_whole() {
        let config = request(
            r#"{"thingIndexingMode":"REGISTRY_AND_SHADOW","thingConnectivityIndexingMode":"STATUS",
                "namedShadowIndexingMode":"ON","filter":{"namedShadowNames":["config"]},
                "customFields":[{"name":"attributes.version","type":"Number"}]}"#,
        )
        .into_config()
        .unwrap();
        assert_eq!(
            config.schema(),
            "REGISTRY_AND_SHADOW_AND_CONNECTIVITY_STATUS"
        );
        assert!(config.indexes_named_shadow("config") && !config.indexes_named_shadow("other"));
        assert_eq!(
            config.field_types().get("attributes.version"),
            Some(&FieldType::Number)
        );
        for (bad, says) in [
            (r#"{}"#, "required"),
            (r#"{"thingIndexingMode":"ALL"}"#, "enum value set"),
            (
                r#"{"thingIndexingMode":"OFF","thingConnectivityIndexingMode":"STATUS"}"#,
                "need thingIndexingMode",
            ),
            (
                r#"{"thingIndexingMode":"REGISTRY","namedShadowIndexingMode":"ON"}"#,
                "REGISTRY_AND_SHADOW",
            ),
            (
                r#"{"thingIndexingMode":"REGISTRY","customFields":[{"name":"a"}]}"#,
                "needs a type",
            ),
            (
                r#"{"thingIndexingMode":"REGISTRY","deviceDefenderIndexingMode":"VIOLATIONS"}"#,
                "Device Defender",
            ),
        ] {
            let error = request(bad).into_config().unwrap_err().to_string();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }
}
