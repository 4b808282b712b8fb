//! Static thing groups: a hierarchy of at most seven levels in which each group has one fixed
//! parent, and the things in each group.
//!
//! A group being deleted is first marked so: every change that depends on a group (a child
//! created under it, a thing added to it) is conditioned on the revision of the group it read,
//! so after the mark none can slip in while its children are checked and its members removed.
//! Adding a thing also rewrites the thing's record unchanged, so that the per-thing limit and a
//! concurrent DeleteThing see each other.

use std::collections::BTreeMap;

use halyard_raft::{Op, Txn};
use serde::{Deserialize, Serialize};

use super::things::ThingRecord;
use super::{AttributeChange, Registry, check_attribute_name, check_name, initial_attributes};
use crate::clock::epoch_seconds_fraction;
use crate::ids::uuid_v4;
use crate::services::error::{Error, Result};
use crate::services::links;
use crate::services::records::{Page, Versioned, encode, encode_name, unchanged_since};
use crate::store::keys;

/// Levels in a hierarchy, the root included.
const MAX_DEPTH: usize = 7;
/// Groups one thing may belong to.
pub(super) const MAX_GROUPS_PER_THING: usize = 10;
/// Attempts at a change that lost a race with another change of the same records.
const ATTEMPTS: usize = 8;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ThingGroupRecord {
    pub name: String,
    pub id: String,
    pub parent: Option<String>,
    /// Ancestors from the root down to the parent.
    pub root_to_parent: Vec<String>,
    pub description: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub version: u64,
    pub creation_date: f64,
    #[serde(default)]
    pub deleting: bool,
}

impl ThingGroupRecord {
    /// The group at the top of this group's hierarchy.
    pub(super) fn root(&self) -> &str {
        self.root_to_parent.first().unwrap_or(&self.name)
    }
}

/// CreateThingGroup's request.
#[derive(Debug, Clone, Default)]
pub struct NewGroup {
    pub parent: Option<String>,
    pub description: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

/// UpdateThingGroup's request. An empty description removes it.
#[derive(Debug, Clone, Default)]
pub struct GroupUpdate {
    pub description: Option<String>,
    pub attributes: Option<AttributeChange>,
    pub expected_version: Option<u64>,
}

/// ListThingGroups' filters.
#[derive(Debug, Clone, Default)]
pub struct GroupFilter {
    pub parent: Option<String>,
    pub name_prefix: String,
    /// With a parent: its descendants at any depth (`true`) or its children. Without one:
    /// only the roots (`false`) or every group.
    pub recursive: Option<bool>,
}

impl GroupFilter {
    fn matches(&self, g: &ThingGroupRecord) -> bool {
        let placed = match (&self.parent, self.recursive) {
            (Some(p), Some(true)) => g.root_to_parent.iter().any(|a| a == p),
            (Some(p), _) => g.parent.as_ref() == Some(p),
            (None, Some(false)) => g.parent.is_none(),
            (None, _) => true,
        };
        placed && !g.deleting && g.name.starts_with(&self.name_prefix)
    }
}

fn check_description(description: Option<&str>) -> Result<()> {
    if let Some(d) = description
        && d.chars().count() > 2028
    {
        return Err(Error::validation(
            "thingGroupProperties.thingGroupDescription",
            d,
            "Member must have length less than or equal to 2028",
        ));
    }
    Ok(())
}

fn check_group_attributes(attributes: &BTreeMap<String, String>) -> Result<()> {
    for (name, value) in attributes {
        check_attribute_name("thingGroupProperties.attributePayload.attributes", name)?;
        if value.len() > 800 {
            return Err(Error::validation(
                "thingGroupProperties.attributePayload.attributes",
                value,
                "Map value must have length less than or equal to 800",
            ));
        }
    }
    if attributes.len() > 50 {
        return Err(Error::invalid(format!(
            "A thing group can have at most 50 attributes; got {}.",
            attributes.len()
        )));
    }
    Ok(())
}

fn group_version_mismatch(name: &str) -> Error {
    Error::VersionConflict(format!(
        "The version for thing group {name} does not match the expected version."
    ))
}

fn has_children_error(name: &str) -> Error {
    Error::invalid(format!(
        "Cannot delete thing group : {name} when it still has child groups"
    ))
}

fn membership_ops(group: &str, thing: &str) -> [Op; 2] {
    [
        Op::delete(keys::group_thing(group, thing)),
        Op::delete(keys::group_of_thing(thing, group)),
    ]
}

impl Registry {
    async fn versioned_group(&self, name: &str) -> Result<Versioned<ThingGroupRecord>> {
        match self
            .records
            .get::<ThingGroupRecord>(&keys::thing_group(name))
            .await?
        {
            Some(g) if !g.value.deleting => Ok(g),
            _ => Err(Error::not_found(format!(
                "Thing Group {name} does not exist"
            ))),
        }
    }

    /// A group's record, if it exists and is not being deleted.
    pub async fn group(&self, name: &str) -> Result<ThingGroupRecord> {
        check_name("thingGroupName", name)?;
        Ok(self.versioned_group(name).await?.value)
    }

    /// CreateThingGroup: the group, new or (configured alike) the one that exists.
    pub async fn create_group(&self, name: &str, new: NewGroup) -> Result<ThingGroupRecord> {
        check_name("thingGroupName", name)?;
        check_description(new.description.as_deref())?;
        let attributes = initial_attributes(new.attributes);
        check_group_attributes(&attributes)?;
        if let Some(parent) = &new.parent {
            check_name("parentGroupName", parent)?;
            if parent == name {
                return Err(Error::invalid("A thing group cannot be its own parent"));
            }
        }
        let key = keys::thing_group(name);
        for _ in 0..ATTEMPTS {
            let mut fresh = ThingGroupRecord {
                name: name.to_owned(),
                id: uuid_v4(),
                parent: new.parent.clone(),
                root_to_parent: Vec::new(),
                description: new.description.clone(),
                attributes: attributes.clone(),
                version: 1,
                creation_date: epoch_seconds_fraction(),
                deleting: false,
            };
            let mut compares = vec![unchanged_since(&key, 0)];
            let mut ops = Vec::new();
            if let Some(parent_name) = &new.parent {
                let parent = self.versioned_group(parent_name).await?;
                if parent.value.root_to_parent.len() + 2 > MAX_DEPTH {
                    return Err(Error::invalid(format!(
                        "Thing group {name} cannot be created under {parent_name}: a hierarchy has at most {MAX_DEPTH} levels"
                    )));
                }
                fresh.root_to_parent = parent.value.root_to_parent;
                fresh.root_to_parent.push(parent_name.clone());
                compares.push(unchanged_since(
                    &keys::thing_group(parent_name),
                    parent.mod_revision,
                ));
                ops.push(Op::put(
                    keys::group_child(parent_name, name),
                    encode_name(name),
                ));
            }
            ops.push(Op::put(key.clone(), encode(&fresh)?));
            if self
                .records
                .txn(Txn::new().when(compares).and_then(ops))
                .await?
                .succeeded
            {
                return Ok(fresh);
            }
            // Either the group exists (idempotent if configured alike) or the parent changed.
            if let Some(existing) = self.records.get::<ThingGroupRecord>(&key).await? {
                let existing = existing.value;
                if existing.deleting {
                    return Err(Error::conflict(format!(
                        "Thing group {name} is being deleted; retry."
                    )));
                }
                if existing.parent != fresh.parent
                    || existing.description != fresh.description
                    || existing.attributes != fresh.attributes
                {
                    return Err(Error::already_exists(
                        format!("Thing Group {name} already exists with different properties"),
                        existing.id.as_str(),
                        self.group_arn(name),
                    ));
                }
                return Ok(existing);
            }
        }
        Err(Error::conflict(format!(
            "Thing group {name} kept changing; retry."
        )))
    }

    /// UpdateThingGroup: the group's new version.
    pub async fn update_group(&self, name: &str, update: GroupUpdate) -> Result<u64> {
        check_name("thingGroupName", name)?;
        check_description(update.description.as_deref())?;
        let current = self.versioned_group(name).await?;
        if update
            .expected_version
            .is_some_and(|v| v != current.value.version)
        {
            return Err(group_version_mismatch(name));
        }
        let mut group = current.value;
        if let Some(d) = update.description {
            group.description = (!d.is_empty()).then_some(d);
        }
        if let Some(change) = update.attributes {
            change.apply(&mut group.attributes);
        }
        check_group_attributes(&group.attributes)?;
        group.version += 1;
        if !self
            .records
            .replace(&keys::thing_group(name), &group, current.mod_revision)
            .await?
        {
            return Err(group_version_mismatch(name));
        }
        Ok(group.version)
    }

    async fn has_children(&self, name: &str) -> Result<bool> {
        Ok(!self
            .records
            .names(&keys::group_children(name), 1)
            .await?
            .is_empty())
    }

    /// DeleteThingGroup: a group that does not exist is deleted already; one with child
    /// groups is not deleted. Its members leave it and its policies are detached.
    pub async fn delete_group(&self, name: &str, expected_version: Option<u64>) -> Result<()> {
        check_name("thingGroupName", name)?;
        let key = keys::thing_group(name);
        let Some(current) = self.records.get::<ThingGroupRecord>(&key).await? else {
            return Ok(());
        };
        if expected_version.is_some_and(|v| v != current.value.version) {
            return Err(group_version_mismatch(name));
        }
        if self.has_children(name).await? {
            return Err(has_children_error(name));
        }
        let mut revision = current.mod_revision;
        if !current.value.deleting {
            let mut marked = current.value.clone();
            marked.deleting = true;
            let txn = Txn::new()
                .when([unchanged_since(&key, current.mod_revision)])
                .and_then([Op::put(key.clone(), encode(&marked)?)]);
            let result = self.records.txn(txn).await?;
            if !result.succeeded {
                return Err(Error::conflict(format!(
                    "Thing group {name} changed while it was being deleted; retry."
                )));
            }
            revision = result.revision;
            // A child created before the mark was written.
            if self.has_children(name).await? {
                let txn = Txn::new()
                    .when([unchanged_since(&key, revision)])
                    .and_then([Op::put(key.clone(), encode(&current.value)?)]);
                self.records.txn(txn).await?;
                return Err(has_children_error(name));
            }
        }
        // Members leave in batches; nothing new can join a group marked for deletion.
        let members = keys::group_things(name);
        loop {
            let (batch, more) = self.records.page::<String>(&members, None, 256).await?;
            if batch.is_empty() {
                break;
            }
            let ops: Vec<Op> = batch
                .iter()
                .flat_map(|(_, thing)| membership_ops(name, thing))
                .collect();
            self.records.txn(Txn::new().and_then(ops)).await?;
            if !more {
                break;
            }
        }
        links::detach_all_policies(&self.records, &self.group_arn(name)).await?;
        let mut ops = vec![Op::delete(key.clone())];
        if let Some(parent) = &current.value.parent {
            ops.push(Op::delete(keys::group_child(parent, name)));
        }
        let txn = Txn::new()
            .when([unchanged_since(&key, revision)])
            .and_then(ops);
        if !self.records.txn(txn).await?.succeeded {
            return Err(Error::conflict(format!(
                "Thing group {name} changed while it was being deleted; retry."
            )));
        }
        Ok(())
    }

    /// ListThingGroups.
    pub async fn list_groups(
        &self,
        filter: &GroupFilter,
        page: &Page,
    ) -> Result<(Vec<ThingGroupRecord>, Option<String>)> {
        if let Some(p) = &filter.parent {
            check_name("parentGroup", p)?;
            self.versioned_group(p).await?;
        }
        page.collect(&self.records, keys::THING_GROUPS, |g: &ThingGroupRecord| {
            filter.matches(g)
        })
        .await
    }

    /// AddThingToThingGroup: a no-op if it is there already.
    pub async fn add_thing_to_group(&self, group_name: &str, thing: &str) -> Result<()> {
        check_name("thingGroupName", group_name)?;
        check_name("thingName", thing)?;
        let thing_key = keys::thing(thing);
        for _ in 0..ATTEMPTS {
            let group = self.versioned_group(group_name).await?;
            let current = self
                .records
                .get::<ThingRecord>(&thing_key)
                .await?
                .ok_or_else(|| Error::not_found(format!("Thing {thing} cannot be found.")))?;
            let groups = self
                .records
                .names(&keys::groups_of_thing(thing), MAX_GROUPS_PER_THING + 1)
                .await?;
            if groups.iter().any(|g| g == group_name) {
                return Ok(());
            }
            if groups.len() >= MAX_GROUPS_PER_THING {
                return Err(Error::LimitExceeded(format!(
                    "Thing {thing} is already in {MAX_GROUPS_PER_THING} thing groups, the most a thing can be in"
                )));
            }
            for other in &groups {
                if let Some(g) = self
                    .records
                    .get::<ThingGroupRecord>(&keys::thing_group(other))
                    .await?
                    && g.value.root() == group.value.root()
                {
                    return Err(Error::invalid(format!(
                        "Thing {thing} is already in thing group {other} of the same hierarchy as {group_name}"
                    )));
                }
            }
            let txn = Txn::new()
                .when([
                    unchanged_since(&keys::thing_group(group_name), group.mod_revision),
                    unchanged_since(&thing_key, current.mod_revision),
                ])
                .and_then([
                    Op::put(keys::group_thing(group_name, thing), encode_name(thing)),
                    Op::put(
                        keys::group_of_thing(thing, group_name),
                        encode_name(group_name),
                    ),
                    Op::put(thing_key.clone(), encode(&current.value)?),
                ]);
            if self.records.txn(txn).await?.succeeded {
                return Ok(());
            }
        }
        Err(Error::conflict(format!(
            "Thing {thing} or thing group {group_name} kept changing; retry."
        )))
    }

    /// RemoveThingFromThingGroup.
    pub async fn remove_thing_from_group(&self, group_name: &str, thing: &str) -> Result<()> {
        self.group(group_name).await?;
        self.thing(thing).await?;
        let txn = Txn::new().and_then(membership_ops(group_name, thing));
        self.records.txn(txn).await?;
        Ok(())
    }

    /// UpdateThingGroupsForThing: removals first, then additions.
    pub async fn update_groups_for_thing(
        &self,
        thing: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<()> {
        for group in remove {
            self.remove_thing_from_group(group, thing).await?;
        }
        for group in add {
            self.add_thing_to_group(group, thing).await?;
        }
        Ok(())
    }

    /// ListThingsInThingGroup: the group's things, or (recursive) those of the group and its
    /// descendants, group by group in name order.
    pub async fn things_in_group(
        &self,
        name: &str,
        recursive: bool,
        page: &Page,
    ) -> Result<(Vec<String>, Option<String>)> {
        self.group(name).await?;
        if !recursive {
            return page
                .collect(&self.records, &keys::group_things(name), |_: &String| true)
                .await;
        }
        // The token is the last (group, thing) pair returned.
        let (groups, _) = Page::first(usize::MAX)
            .collect(&self.records, keys::THING_GROUPS, |g: &ThingGroupRecord| {
                !g.deleting && g.root_to_parent.iter().any(|a| a == name)
            })
            .await?;
        let mut names: Vec<String> = groups
            .into_iter()
            .map(|g| g.name)
            .filter(|g| g != name)
            .collect();
        names.push(name.to_owned());
        names.sort();
        let (start_group, start_thing) = match page.after() {
            Some(after) => match after.split_once('/') {
                Some((g, t)) => (Some(g.to_owned()), Some(t.to_owned())),
                None => return Err(Error::invalid("The nextToken is invalid.")),
            },
            None => (None, None),
        };
        let mut things: Vec<(usize, String)> = Vec::new();
        let limit = page.limit();
        for (index, group) in names.iter().enumerate() {
            if start_group.as_ref().is_some_and(|s| group < s) {
                continue;
            }
            let prefix = keys::group_things(group);
            let after = match (&start_group, &start_thing) {
                (Some(g), Some(t)) if g == group => Some(format!("{prefix}{t}")),
                _ => None,
            };
            let (batch, more) = self
                .records
                .page::<String>(&prefix, after.as_deref(), limit - things.len())
                .await?;
            things.extend(batch.into_iter().map(|(_, thing)| (index, thing)));
            if things.len() == limit {
                let token = (more || index + 1 < names.len())
                    .then(|| things.last())
                    .flatten()
                    .map(|(g, t)| Page::token_for(&format!("{}/{t}", names[*g])));
                return Ok((things.into_iter().map(|(_, t)| t).collect(), token));
            }
        }
        Ok((things.into_iter().map(|(_, t)| t).collect(), None))
    }

    /// ListThingGroupsForThing: the names of the groups the thing is in.
    pub async fn groups_of_thing(
        &self,
        thing: &str,
        page: &Page,
    ) -> Result<(Vec<String>, Option<String>)> {
        self.thing(thing).await?;
        page.collect(
            &self.records,
            &keys::groups_of_thing(thing),
            |_: &String| true,
        )
        .await
    }

    /// The groups `thing` is in, each followed by its ancestors: whose policies apply to it.
    pub async fn groups_and_ancestors_of(&self, thing: &str) -> Result<Vec<String>> {
        let groups = self
            .records
            .names(&keys::groups_of_thing(thing), MAX_GROUPS_PER_THING + 1)
            .await?;
        let mut all = Vec::new();
        for name in groups {
            if let Some(g) = self
                .records
                .get::<ThingGroupRecord>(&keys::thing_group(&name))
                .await?
            {
                all.push(name);
                all.extend(g.value.root_to_parent.into_iter().rev());
            }
        }
        all.dedup();
        Ok(all)
    }

    /// The operations that remove a thing from all its groups, for DeleteThing's transaction.
    pub(super) async fn leave_all_groups(&self, thing: &str) -> Result<Vec<Op>> {
        let groups = self
            .records
            .names(&keys::groups_of_thing(thing), MAX_GROUPS_PER_THING + 1)
            .await?;
        Ok(groups
            .iter()
            .flat_map(|g| membership_ops(g, thing))
            .collect())
    }
}
