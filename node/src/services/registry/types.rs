//! Thing types: created idempotently, deprecated (and back) before they can be deleted, and
//! never deleted while a thing has the type.

use serde::{Deserialize, Serialize};

use super::Registry;
use super::check_name;
use super::things::ThingRecord;
use crate::clock::epoch_seconds_fraction;
use crate::ids::uuid_v4;
use crate::services::error::{Error, Result};
use crate::services::records::{Page, Versioned};
use crate::store::keys;

/// Searchable attributes a thing type may declare.
const MAX_SEARCHABLE_ATTRIBUTES: usize = 3;

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

/// CreateThingType's request.
#[derive(Debug, Clone, Default)]
pub struct NewThingType {
    pub description: Option<String>,
    pub searchable_attributes: Vec<String>,
}

impl Registry {
    /// CreateThingType: the type, new or (configured alike) the one that exists.
    pub async fn create_thing_type(
        &self,
        name: &str,
        new: NewThingType,
    ) -> Result<ThingTypeRecord> {
        check_name("thingTypeName", name)?;
        if new.searchable_attributes.len() > MAX_SEARCHABLE_ATTRIBUTES {
            return Err(Error::invalid(format!(
                "A thing type can have at most {MAX_SEARCHABLE_ATTRIBUTES} searchable attributes"
            )));
        }
        let fresh = ThingTypeRecord {
            thing_type_name: name.to_owned(),
            thing_type_id: uuid_v4(),
            description: new.description,
            searchable_attributes: new.searchable_attributes,
            deprecated: false,
            deprecation_date: None,
            creation_date: epoch_seconds_fraction(),
        };
        let key = keys::thing_type(name);
        if self.records.create(&key, &fresh).await? {
            return Ok(fresh);
        }
        let existing = self
            .records
            .get::<ThingTypeRecord>(&key)
            .await?
            .ok_or_else(|| Error::conflict("The thing type changed meanwhile; retry."))?
            .value;
        if existing.description != fresh.description
            || existing.searchable_attributes != fresh.searchable_attributes
        {
            return Err(Error::already_exists(
                format!("Thing Type {name} already exists with different properties"),
                existing.thing_type_id.as_str(),
                self.thing_type_arn(name),
            ));
        }
        Ok(existing)
    }

    /// The type a thing may be given: it must exist and not be deprecated.
    pub(super) async fn usable_type(&self, name: &str) -> Result<()> {
        check_name("thingTypeName", name)?;
        match self
            .records
            .get::<ThingTypeRecord>(&keys::thing_type(name))
            .await?
        {
            None => Err(Error::not_found(format!(
                "Thing Type {name} does not exist"
            ))),
            Some(t) if t.value.deprecated => Err(Error::invalid(format!(
                "Can not create new thing with deprecated thing type: {name}"
            ))),
            Some(_) => Ok(()),
        }
    }

    async fn versioned_thing_type(&self, name: &str) -> Result<Versioned<ThingTypeRecord>> {
        check_name("thingTypeName", name)?;
        self.records
            .get::<ThingTypeRecord>(&keys::thing_type(name))
            .await?
            .ok_or_else(|| Error::not_found(format!("Thing Type {name} does not exist")))
    }

    pub async fn thing_type(&self, name: &str) -> Result<ThingTypeRecord> {
        Ok(self.versioned_thing_type(name).await?.value)
    }

    /// DeprecateThingType, or its undoing.
    pub async fn deprecate_thing_type(&self, name: &str, undo: bool) -> Result<()> {
        let current = self.versioned_thing_type(name).await?;
        let mut t = current.value;
        t.deprecated = !undo;
        t.deprecation_date = t.deprecated.then(epoch_seconds_fraction);
        if !self
            .records
            .replace(&keys::thing_type(name), &t, current.mod_revision)
            .await?
        {
            return Err(Error::conflict(format!(
                "Thing Type {name} changed meanwhile; retry."
            )));
        }
        Ok(())
    }

    /// DeleteThingType: only a deprecated type that no thing has.
    pub async fn delete_thing_type(&self, name: &str) -> Result<()> {
        let current = self.versioned_thing_type(name).await?;
        if !current.value.deprecated {
            return Err(Error::invalid(format!(
                "Thing Type {name} must be deprecated for at least 5 minutes before it can be deleted"
            )));
        }
        let (in_use, _) = Page::first(1)
            .collect(&self.records, keys::THINGS, |t: &ThingRecord| {
                t.thing_type_name.as_deref() == Some(name)
            })
            .await?;
        if !in_use.is_empty() {
            return Err(Error::invalid(format!(
                "Can not delete thing type {name}: things are still associated with it"
            )));
        }
        self.records
            .delete(&keys::thing_type(name), current.mod_revision)
            .await?;
        Ok(())
    }

    /// ListThingTypes, all or the one named.
    pub async fn list_thing_types(
        &self,
        name: Option<&str>,
        page: &Page,
    ) -> Result<(Vec<ThingTypeRecord>, Option<String>)> {
        page.collect(&self.records, keys::THING_TYPES, |t: &ThingTypeRecord| {
            name.is_none_or(|n| t.thing_type_name == n)
        })
        .await
    }
}
