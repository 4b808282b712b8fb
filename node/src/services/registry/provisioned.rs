//! The thing of a provisioning template, staged into the template's one transaction: created,
//! or the existing one changed as the template's override settings say, with its groups.

use std::collections::{BTreeMap, BTreeSet};

use super::groups::{MAX_GROUPS_PER_THING, ThingGroupRecord};
use super::things::{ThingRecord, check_attributes};
use super::{Registry, check_name, initial_attributes};
use crate::ids::uuid_v4;
use crate::services::error::{Error, Result};
use crate::services::provisioning::template::{Override, ThingSpec};
use crate::services::records::{Batch, encode_name};
use crate::store::keys;

/// The thing as the batch leaves it.
pub struct StagedThing {
    pub record: ThingRecord,
    pub created: bool,
    pub changed: bool,
}

fn conflict(name: &str, property: &str) -> Error {
    Error::ResourceConflicts(format!(
        "Thing {name} exists with another {property} and the template says FAIL"
    ))
}

/// The value of one property after the template's setting for it.
fn overridden<T: PartialEq + Clone>(
    current: &T,
    wanted: Option<&T>,
    setting: Override,
    merge: impl FnOnce(&T, &T) -> T,
    on_fail: impl FnOnce() -> Error,
) -> Result<T> {
    let Some(wanted) = wanted else {
        return Ok(current.clone());
    };
    match setting {
        Override::DoNothing => Ok(current.clone()),
        Override::Replace => Ok(wanted.clone()),
        Override::Merge => Ok(merge(current, wanted)),
        Override::Fail if current != wanted => Err(on_fail()),
        Override::Fail => Ok(current.clone()),
    }
}

impl Registry {
    /// Stages the thing `spec` describes into `batch`.
    pub async fn stage_thing(&self, spec: &ThingSpec, batch: &mut Batch) -> Result<StagedThing> {
        let name = spec.name.as_str();
        check_name("thingName", name)?;
        if let Some(t) = &spec.thing_type {
            self.usable_type(t).await?;
        }
        let key = keys::thing(name);
        let existing = self.records.get::<ThingRecord>(&key).await?;
        batch.read(&key, existing.as_ref().map_or(0, |t| t.mod_revision));
        let current_groups: BTreeSet<String> = match &existing {
            Some(_) => self
                .records
                .names(&keys::groups_of_thing(name), MAX_GROUPS_PER_THING + 1)
                .await?
                .into_iter()
                .collect(),
            None => BTreeSet::new(),
        };
        let wanted_groups: Option<BTreeSet<String>> =
            spec.groups.as_ref().map(|g| g.iter().cloned().collect());
        let (record, created, modified, groups) = match existing {
            None => {
                let attributes = initial_attributes(spec.attributes.clone().unwrap_or_default());
                let record = ThingRecord {
                    thing_name: name.to_owned(),
                    thing_id: uuid_v4(),
                    thing_type_name: spec.thing_type.clone(),
                    attributes,
                    version: 1,
                };
                (record, true, true, wanted_groups.unwrap_or_default())
            }
            Some(existing) => {
                let mut record = existing.value;
                let before = record.clone();
                record.attributes = overridden(
                    &record.attributes,
                    spec.attributes.as_ref(),
                    spec.attributes_override,
                    |current, wanted| {
                        let mut merged = current.clone();
                        merged.extend(wanted.iter().map(|(k, v)| (k.clone(), v.clone())));
                        merged
                    },
                    || conflict(name, "AttributePayload"),
                )?;
                record.attributes.retain(|_, v| !v.is_empty());
                record.thing_type_name = overridden(
                    &record.thing_type_name,
                    spec.thing_type.as_ref().map(|t| Some(t.clone())).as_ref(),
                    spec.type_override,
                    |_, wanted| wanted.clone(),
                    || conflict(name, "ThingTypeName"),
                )?;
                let groups = overridden(
                    &current_groups,
                    wanted_groups.as_ref(),
                    spec.groups_override,
                    |current, wanted| current.union(wanted).cloned().collect(),
                    || conflict(name, "ThingGroups"),
                )?;
                let modified = record != before;
                if modified {
                    record.version += 1;
                }
                (record, false, modified, groups)
            }
        };
        check_attributes(&record.attributes, record.thing_type_name.is_some())?;
        if groups.len() > MAX_GROUPS_PER_THING {
            return Err(Error::LimitExceeded(format!(
                "Thing {name} would be in {} thing groups; at most {MAX_GROUPS_PER_THING}",
                groups.len()
            )));
        }
        let mut roots = BTreeMap::new();
        for group in &groups {
            check_name("thingGroupName", group)?;
            let group_key = keys::thing_group(group);
            let record = match self.records.get::<ThingGroupRecord>(&group_key).await? {
                Some(g) if !g.value.deleting => g,
                _ => {
                    return Err(Error::ResourceRegistrationFailure(format!(
                        "Thing group {group} does not exist"
                    )));
                }
            };
            if let Some(other) = roots.insert(record.value.root().to_owned(), group.clone()) {
                return Err(Error::invalid(format!(
                    "Thing {name} cannot be in both {other} and {group}: they are of the same hierarchy"
                )));
            }
            batch.read(&group_key, record.mod_revision);
        }
        for group in groups.difference(&current_groups) {
            batch.ops([
                halyard_raft::Op::put(keys::group_thing(group, name), encode_name(name)),
                halyard_raft::Op::put(keys::group_of_thing(name, group), encode_name(group)),
            ]);
        }
        for group in current_groups.difference(&groups) {
            batch.ops([
                halyard_raft::Op::delete(keys::group_thing(group, name)),
                halyard_raft::Op::delete(keys::group_of_thing(name, group)),
            ]);
        }
        let changed = modified || groups != current_groups;
        // Rewritten even unchanged, so that a concurrent group change or deletion of the thing
        // and this batch see each other.
        batch.put(&key, &record)?;
        Ok(StagedThing {
            record,
            created,
            changed,
        })
    }

    /// Announces a staged thing once its batch is committed.
    pub fn thing_committed(&self, staged: &StagedThing) {
        if staged.created {
            self.thing_event("CREATED", &staged.record);
        } else if staged.changed {
            self.thing_event("UPDATED", &staged.record);
        }
    }
}
