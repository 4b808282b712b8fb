//! Things: created idempotently, updated under an expected version, deleted with their group
//! memberships in one transaction, and listed by type or attribute.

use std::collections::BTreeMap;

use halyard_raft::{Op, Txn};
use serde::{Deserialize, Serialize};

use super::{AttributeChange, Registry, check_attribute_name, check_name, initial_attributes};
use crate::ids::uuid_v4;
use crate::services::error::{Error, Result};
use crate::services::links;
use crate::services::records::{Page, Versioned, unchanged_since};
use crate::store::keys;

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

/// CreateThing's request.
#[derive(Debug, Clone, Default)]
pub struct NewThing {
    pub thing_type_name: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

/// How UpdateThing changes a thing's type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TypeChange {
    #[default]
    Keep,
    Set(String),
    Remove,
}

/// UpdateThing's request.
#[derive(Debug, Clone, Default)]
pub struct ThingUpdate {
    pub thing_type: TypeChange,
    pub attributes: Option<AttributeChange>,
    pub expected_version: Option<u64>,
}

/// ListThings' filters.
#[derive(Debug, Clone, Default)]
pub struct ThingFilter {
    pub thing_type_name: Option<String>,
    pub attribute_name: Option<String>,
    pub attribute_value: Option<String>,
    /// The attribute's value starts with `attribute_value` rather than equals it.
    pub prefix_match: bool,
}

impl ThingFilter {
    fn matches(&self, thing: &ThingRecord) -> bool {
        let type_ok = self
            .thing_type_name
            .as_deref()
            .is_none_or(|n| thing.thing_type_name.as_deref() == Some(n));
        let attribute_ok = match (&self.attribute_name, &self.attribute_value) {
            (Some(n), Some(v)) => thing.attributes.get(n).is_some_and(|have| {
                if self.prefix_match {
                    have.starts_with(v.as_str())
                } else {
                    have == v
                }
            }),
            (Some(n), None) => thing.attributes.contains_key(n),
            _ => true,
        };
        type_ok && attribute_ok
    }
}

pub(super) fn check_attributes(attributes: &BTreeMap<String, String>, typed: bool) -> Result<()> {
    for (name, value) in attributes {
        check_attribute_name("attributePayload.attributes", name)?;
        if value.len() > 800
            || !value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.,@/:#=[]-".contains(&b))
        {
            return Err(Error::validation(
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
        return Err(Error::invalid(format!(
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

fn version_mismatch(name: &str) -> Error {
    Error::VersionConflict(format!(
        "The version for thing {name} does not match the expected version."
    ))
}

impl Registry {
    /// CreateThing: the thing, new or (configured alike) the one that exists.
    pub async fn create_thing(&self, name: &str, new: NewThing) -> Result<ThingRecord> {
        check_name("thingName", name)?;
        let attributes = initial_attributes(new.attributes);
        if let Some(t) = &new.thing_type_name {
            self.usable_type(t).await?;
        }
        check_attributes(&attributes, new.thing_type_name.is_some())?;
        let fresh = ThingRecord {
            thing_name: name.to_owned(),
            thing_id: uuid_v4(),
            thing_type_name: new.thing_type_name,
            attributes,
            version: 1,
        };
        let key = keys::thing(name);
        if self.records.create(&key, &fresh).await? {
            self.thing_event("CREATED", &fresh);
            return Ok(fresh);
        }
        // The same configuration again succeeds and changes nothing; another one conflicts.
        let existing = self
            .records
            .get::<ThingRecord>(&key)
            .await?
            .ok_or_else(|| Error::conflict("The thing changed meanwhile; retry."))?
            .value;
        if existing.thing_type_name != fresh.thing_type_name
            || existing.attributes != fresh.attributes
        {
            return Err(Error::already_exists(
                format!("Thing {name} already exists with different attributes"),
                existing.thing_id.as_str(),
                self.thing_arn(name),
            ));
        }
        Ok(existing)
    }

    async fn versioned_thing(&self, name: &str) -> Result<Versioned<ThingRecord>> {
        self.records
            .get::<ThingRecord>(&keys::thing(name))
            .await?
            .ok_or_else(|| Error::not_found(format!("Thing {name} cannot be found.")))
    }

    /// The thing `name`; not found if it does not exist.
    pub async fn thing(&self, name: &str) -> Result<ThingRecord> {
        check_name("thingName", name)?;
        Ok(self.versioned_thing(name).await?.value)
    }

    /// The thing `name`, if it exists.
    pub async fn find_thing(&self, name: &str) -> Result<Option<ThingRecord>> {
        Ok(self
            .records
            .get::<ThingRecord>(&keys::thing(name))
            .await?
            .map(|t| t.value))
    }

    /// UpdateThing.
    pub async fn update_thing(&self, name: &str, update: ThingUpdate) -> Result<()> {
        check_name("thingName", name)?;
        if let TypeChange::Set(t) = &update.thing_type {
            self.usable_type(t).await?;
        }
        let current = self.versioned_thing(name).await?;
        if update
            .expected_version
            .is_some_and(|expected| expected != current.value.version)
        {
            return Err(version_mismatch(name));
        }
        let mut thing = current.value;
        match update.thing_type {
            TypeChange::Keep => {}
            TypeChange::Set(t) => thing.thing_type_name = Some(t),
            TypeChange::Remove => thing.thing_type_name = None,
        }
        if let Some(change) = update.attributes {
            change.apply(&mut thing.attributes);
        }
        check_attributes(&thing.attributes, thing.thing_type_name.is_some())?;
        thing.version += 1;
        if !self
            .records
            .replace(&keys::thing(name), &thing, current.mod_revision)
            .await?
        {
            return Err(version_mismatch(name));
        }
        self.thing_event("UPDATED", &thing);
        Ok(())
    }

    /// DeleteThing: a thing that does not exist is deleted already; one with principals
    /// attached is not deleted.
    pub async fn delete_thing(&self, name: &str, expected_version: Option<u64>) -> Result<()> {
        check_name("thingName", name)?;
        let Some(current) = self.records.get::<ThingRecord>(&keys::thing(name)).await? else {
            return Ok(());
        };
        if expected_version.is_some_and(|v| v != current.value.version) {
            return Err(version_mismatch(name));
        }
        if links::has_principals(&self.records, name).await? {
            return Err(Error::invalid(format!(
                "Cannot delete thing {name}: detach its principals first"
            )));
        }
        // The thing leaves its groups in the same transaction; a concurrent join rewrites the
        // thing's record and so makes this one fail rather than leave a dangling membership.
        let key = keys::thing(name);
        let mut ops = self.leave_all_groups(name).await?;
        ops.push(Op::delete(key.clone()));
        let txn = Txn::new()
            .when([unchanged_since(&key, current.mod_revision)])
            .and_then(ops);
        if !self.records.txn(txn).await?.succeeded {
            return Err(Error::VersionConflict(format!(
                "Thing {name} changed while it was being deleted; retry."
            )));
        }
        self.thing_event("DELETED", &current.value);
        Ok(())
    }

    /// ListThings.
    pub async fn list_things(
        &self,
        filter: &ThingFilter,
        page: &Page,
    ) -> Result<(Vec<ThingRecord>, Option<String>)> {
        if filter.attribute_value.is_some() && filter.attribute_name.is_none() {
            return Err(Error::invalid("attributeValue requires attributeName"));
        }
        page.collect(&self.records, keys::THINGS, |t: &ThingRecord| {
            filter.matches(t)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn filters_match_type_and_attributes() {
        let thing = ThingRecord {
            thing_name: "lamp".into(),
            thing_id: "id".into(),
            thing_type_name: Some("light".into()),
            attributes: BTreeMap::from([("floor".to_owned(), "12b".to_owned())]),
            version: 1,
        };
        let by = |f: ThingFilter| f.matches(&thing);
        assert!(by(ThingFilter::default()));
        assert!(by(ThingFilter {
            thing_type_name: Some("light".into()),
            ..Default::default()
        }));
        assert!(!by(ThingFilter {
            thing_type_name: Some("fan".into()),
            ..Default::default()
        }));
        assert!(by(ThingFilter {
            attribute_name: Some("floor".into()),
            attribute_value: Some("12".into()),
            prefix_match: true,
            ..Default::default()
        }));
        assert!(!by(ThingFilter {
            attribute_name: Some("floor".into()),
            attribute_value: Some("12".into()),
            ..Default::default()
        }));
    }
}
