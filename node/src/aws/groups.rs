//! Static thing groups: `/thing-groups`, a hierarchy of at most seven levels in which each
//! group has one fixed parent, and the things in each group.
//!
//! A group being deleted is first marked so: every change that depends on a group (a child
//! created under it, a thing added to it) is conditioned on the revision of the group it read,
//! so after the mark none can slip in while its children are checked and its members removed.
//! Adding a thing also rewrites the thing's record unchanged, so that the per-thing limit and a
//! concurrent DeleteThing see each other.

use std::collections::BTreeMap;

use halyard_raft::{Op, Txn};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::AwsError;
use super::records::{Versioned, encode, unchanged_since};
use super::request::{ApiRequest, Page};
use super::things::{
    ThingRecord, check_attribute_name, check_name, now_seconds, uuid_v4, with_token,
};
use super::{Api, ApiResult};

use crate::store::keys;

const GROUPS: &str = keys::THING_GROUPS;
const GROUP_CHILDREN: &str = keys::GROUP_CHILDREN;
pub(super) const GROUP_THINGS: &str = keys::GROUP_THINGS;
pub(super) const THING_GROUPS: &str = keys::GROUPS_OF_THING;
/// Levels in a hierarchy, the root included.
const MAX_DEPTH: usize = 7;
/// Groups one thing may belong to.
const MAX_GROUPS_PER_THING: usize = 10;
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
    fn root(&self) -> &str {
        self.root_to_parent.first().unwrap_or(&self.name)
    }
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "camelCase")]
struct AttributePayload {
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default)]
    merge: bool,
}

#[derive(Deserialize, Default, Clone)]
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

pub(super) fn group_key(name: &str) -> String {
    keys::thing_group(name)
}

fn child_key(parent: &str, child: &str) -> String {
    keys::group_child(parent, child)
}

fn member_key(group: &str, thing: &str) -> String {
    keys::group_thing(group, thing)
}

fn membership_key(thing: &str, group: &str) -> String {
    keys::group_of_thing(thing, group)
}

fn as_json(s: &str) -> String {
    json!(s).to_string()
}

fn check_description(description: Option<&str>) -> Result<(), AwsError> {
    if let Some(d) = description
        && d.chars().count() > 2028
    {
        return Err(AwsError::validation(
            "thingGroupProperties.thingGroupDescription",
            d,
            "Member must have length less than or equal to 2028",
        ));
    }
    Ok(())
}

fn check_group_attributes(attributes: &BTreeMap<String, String>) -> Result<(), AwsError> {
    for (name, value) in attributes {
        check_attribute_name("thingGroupProperties.attributePayload.attributes", name)?;
        if value.len() > 800 {
            return Err(AwsError::validation(
                "thingGroupProperties.attributePayload.attributes",
                value,
                "Map value must have length less than or equal to 800",
            ));
        }
    }
    if attributes.len() > 50 {
        return Err(AwsError::invalid_request(format!(
            "A thing group can have at most 50 attributes; got {}.",
            attributes.len()
        )));
    }
    Ok(())
}

impl Api {
    pub(super) fn group_arn(&self, name: &str) -> String {
        self.arn(&format!("thinggroup/{name}"))
    }

    fn group_summary(&self, name: &str) -> Value {
        json!({ "groupName": name, "groupArn": self.group_arn(name) })
    }

    async fn versioned_group(&self, name: &str) -> Result<Versioned<ThingGroupRecord>, AwsError> {
        match self
            .records
            .get::<ThingGroupRecord>(&group_key(name))
            .await?
        {
            Some(g) if !g.value.deleting => Ok(g),
            _ => Err(AwsError::not_found(format!(
                "Thing Group {name} does not exist"
            ))),
        }
    }

    /// A group's record, if it exists and is not being deleted.
    pub(super) async fn group(&self, name: &str) -> Result<ThingGroupRecord, AwsError> {
        Ok(self.versioned_group(name).await?.value)
    }

    /// The group named by a name or an ARN of this account.
    fn group_name_of(&self, name: Option<String>, arn: Option<String>) -> Result<String, AwsError> {
        let prefix = self.group_arn("");
        match (name, arn) {
            (Some(n), _) => Ok(n),
            (None, Some(a)) => a.strip_prefix(&prefix).map(str::to_owned).ok_or_else(|| {
                AwsError::invalid_request(format!("{a} is not a thing group ARN of this account"))
            }),
            (None, None) => Err(AwsError::invalid_request(
                "thingGroupName or thingGroupArn is required",
            )),
        }
    }

    fn thing_name_of(&self, name: Option<String>, arn: Option<String>) -> Result<String, AwsError> {
        let prefix = self.arn("thing/");
        match (name, arn) {
            (Some(n), _) => Ok(n),
            (None, Some(a)) => a.strip_prefix(&prefix).map(str::to_owned).ok_or_else(|| {
                AwsError::invalid_request(format!("{a} is not a thing ARN of this account"))
            }),
            (None, None) => Err(AwsError::invalid_request(
                "thingName or thingArn is required",
            )),
        }
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
            "thingGroupArn": self.group_arn(&g.name),
            "version": g.version,
            "thingGroupProperties": properties,
            "thingGroupMetadata": metadata,
        })
    }

    pub(super) async fn create_thing_group(&self, name: &str, request: &ApiRequest) -> ApiResult {
        check_name("thingGroupName", name)?;
        let body: CreateGroup = request.json()?;
        let properties = body.thing_group_properties.unwrap_or_default();
        check_description(properties.thing_group_description.as_deref())?;
        let attributes: BTreeMap<String, String> = properties
            .attribute_payload
            .map(|p| p.attributes)
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .collect();
        check_group_attributes(&attributes)?;
        if let Some(parent) = &body.parent_group_name {
            check_name("parentGroupName", parent)?;
            if parent == name {
                return Err(AwsError::invalid_request(
                    "A thing group cannot be its own parent",
                ));
            }
        }
        for _ in 0..ATTEMPTS {
            let mut fresh = ThingGroupRecord {
                name: name.to_owned(),
                id: uuid_v4(),
                parent: body.parent_group_name.clone(),
                root_to_parent: Vec::new(),
                description: properties.thing_group_description.clone(),
                attributes: attributes.clone(),
                version: 1,
                creation_date: now_seconds(),
                deleting: false,
            };
            let key = group_key(name);
            let mut txn_compares = vec![unchanged_since(&key, 0)];
            let mut ops = vec![Op::put(key.clone(), encode(&fresh)?)];
            if let Some(parent_name) = &body.parent_group_name {
                let parent = self.versioned_group(parent_name).await?;
                if parent.value.root_to_parent.len() + 2 > MAX_DEPTH {
                    return Err(AwsError::invalid_request(format!(
                        "Thing group {name} cannot be created under {parent_name}: a hierarchy has at most {MAX_DEPTH} levels"
                    )));
                }
                fresh.root_to_parent = parent.value.root_to_parent.clone();
                fresh.root_to_parent.push(parent_name.clone());
                ops[0] = Op::put(key.clone(), encode(&fresh)?);
                txn_compares.push(unchanged_since(
                    &group_key(parent_name),
                    parent.mod_revision,
                ));
                ops.push(Op::put(child_key(parent_name, name), as_json(name)));
            }
            let result = self
                .records
                .txn(Txn::new().when(txn_compares).and_then(ops))
                .await?;
            if result.succeeded {
                return Ok(json!({
                    "thingGroupName": name,
                    "thingGroupArn": self.group_arn(name),
                    "thingGroupId": fresh.id,
                }));
            }
            // Either the group exists (idempotent if configured alike) or the parent changed.
            if let Some(existing) = self.records.get::<ThingGroupRecord>(&key).await? {
                let existing = existing.value;
                if existing.deleting {
                    return Err(AwsError::conflicting_update(format!(
                        "Thing group {name} is being deleted; retry."
                    )));
                }
                if existing.parent != fresh.parent
                    || existing.description != fresh.description
                    || existing.attributes != fresh.attributes
                {
                    return Err(AwsError::already_exists(
                        format!("Thing Group {name} already exists with different properties"),
                        existing.id.as_str(),
                        self.arn(&format!("thinggroup/{name}")),
                    ));
                }
                return Ok(json!({
                    "thingGroupName": name,
                    "thingGroupArn": self.group_arn(name),
                    "thingGroupId": existing.id,
                }));
            }
        }
        Err(AwsError::conflicting_update(format!(
            "Thing group {name} kept changing; retry."
        )))
    }

    pub(super) async fn describe_thing_group(&self, name: &str) -> ApiResult {
        check_name("thingGroupName", name)?;
        let group = self.group(name).await?;
        Ok(self.group_json(&group))
    }

    pub(super) async fn update_thing_group(&self, name: &str, request: &ApiRequest) -> ApiResult {
        check_name("thingGroupName", name)?;
        let body: UpdateGroup = request.json()?;
        let properties = body.thing_group_properties.unwrap_or_default();
        check_description(properties.thing_group_description.as_deref())?;
        let current = self.versioned_group(name).await?;
        if body
            .expected_version
            .is_some_and(|v| v != current.value.version)
        {
            return Err(AwsError::version_conflict(format!(
                "The version for thing group {name} does not match the expected version."
            )));
        }
        let mut group = current.value;
        if let Some(d) = properties.thing_group_description {
            group.description = (!d.is_empty()).then_some(d);
        }
        if let Some(payload) = properties.attribute_payload {
            if !payload.merge {
                group.attributes.clear();
            }
            for (k, v) in payload.attributes {
                if v.is_empty() {
                    group.attributes.remove(&k);
                } else {
                    group.attributes.insert(k, v);
                }
            }
        }
        check_group_attributes(&group.attributes)?;
        group.version += 1;
        if !self
            .records
            .replace(&group_key(name), &group, current.mod_revision)
            .await?
        {
            return Err(AwsError::version_conflict(format!(
                "The version for thing group {name} does not match the expected version."
            )));
        }
        Ok(json!({ "version": group.version }))
    }

    pub(super) async fn delete_thing_group(&self, name: &str, request: &ApiRequest) -> ApiResult {
        check_name("thingGroupName", name)?;
        let expected = request.query_u64("expectedVersion")?;
        let key = group_key(name);
        // Deleting a group that does not exist succeeds, as in AWS.
        let Some(current) = self.records.get::<ThingGroupRecord>(&key).await? else {
            return Ok(json!({}));
        };
        if expected.is_some_and(|v| v != current.value.version) {
            return Err(AwsError::version_conflict(format!(
                "The version for thing group {name} does not match the expected version."
            )));
        }
        let (children, _) = Page::first(1)
            .collect(
                &self.records,
                &format!("{GROUP_CHILDREN}{name}/"),
                |_: &String| true,
            )
            .await?;
        if !children.is_empty() {
            return Err(AwsError::invalid_request(format!(
                "Cannot delete thing group : {name} when it still has child groups"
            )));
        }
        let mut marked = current.value.clone();
        let mut revision = current.mod_revision;
        if !marked.deleting {
            marked.deleting = true;
            let txn = Txn::new()
                .when([unchanged_since(&key, current.mod_revision)])
                .and_then([Op::put(key.clone(), encode(&marked)?)]);
            let result = self.records.txn(txn).await?;
            if !result.succeeded {
                return Err(AwsError::conflicting_update(format!(
                    "Thing group {name} changed while it was being deleted; retry."
                )));
            }
            revision = result.revision;
            // A child created before the mark was written.
            let (children, _) = Page::first(1)
                .collect(
                    &self.records,
                    &format!("{GROUP_CHILDREN}{name}/"),
                    |_: &String| true,
                )
                .await?;
            if !children.is_empty() {
                let txn = Txn::new()
                    .when([unchanged_since(&key, revision)])
                    .and_then([Op::put(key.clone(), encode(&current.value)?)]);
                self.records.txn(txn).await?;
                return Err(AwsError::invalid_request(format!(
                    "Cannot delete thing group : {name} when it still has child groups"
                )));
            }
        }
        // Members leave in batches; nothing new can join a group marked for deletion.
        let members = format!("{GROUP_THINGS}{name}/");
        loop {
            let (batch, more) = self.records.page::<String>(&members, None, 256).await?;
            if batch.is_empty() {
                break;
            }
            let ops: Vec<Op> = batch
                .iter()
                .flat_map(|(_, thing)| {
                    [
                        Op::delete(member_key(name, thing)),
                        Op::delete(membership_key(thing, name)),
                    ]
                })
                .collect();
            self.records.txn(Txn::new().and_then(ops)).await?;
            if !more {
                break;
            }
        }
        self.detach_all_policies(&self.group_arn(name)).await?;
        let mut ops = vec![Op::delete(key.clone())];
        if let Some(parent) = &current.value.parent {
            ops.push(Op::delete(child_key(parent, name)));
        }
        let txn = Txn::new()
            .when([unchanged_since(&key, revision)])
            .and_then(ops);
        if !self.records.txn(txn).await?.succeeded {
            return Err(AwsError::conflicting_update(format!(
                "Thing group {name} changed while it was being deleted; retry."
            )));
        }
        Ok(json!({}))
    }

    pub(super) async fn list_thing_groups(&self, request: &ApiRequest) -> ApiResult {
        let page = Page::from_request(request, 50, 250)?;
        let parent = request.query("parentGroup");
        let name_prefix = request.query("namePrefixFilter").unwrap_or("");
        let recursive = match request.query("recursive") {
            None => None,
            Some(_) => Some(request.query_flag("recursive")?),
        };
        if let Some(p) = parent {
            check_name("parentGroup", p)?;
            self.group(p).await?;
        }
        let keep = |g: &ThingGroupRecord| {
            let placed = match (parent, recursive) {
                (Some(p), Some(true)) => g.root_to_parent.iter().any(|a| a == p),
                (Some(p), _) => g.parent.as_deref() == Some(p),
                (None, Some(false)) => g.parent.is_none(),
                (None, _) => true,
            };
            placed && !g.deleting && g.name.starts_with(name_prefix)
        };
        let (groups, next) = page.collect(&self.records, GROUPS, keep).await?;
        let groups: Vec<Value> = groups.iter().map(|g| self.group_summary(&g.name)).collect();
        Ok(with_token(json!({ "thingGroups": groups }), next))
    }

    /// Adds `thing` to `group_name`: a no-op if it is there already.
    async fn add_to_group(&self, group_name: &str, thing: &str) -> Result<(), AwsError> {
        check_name("thingGroupName", group_name)?;
        check_name("thingName", thing)?;
        for _ in 0..ATTEMPTS {
            let group = self.versioned_group(group_name).await?;
            let current = self
                .records
                .get::<ThingRecord>(&super::things::thing_key(thing))
                .await?
                .ok_or_else(|| AwsError::not_found(format!("Thing {thing} cannot be found.")))?;
            let (groups, _) = Page::first(MAX_GROUPS_PER_THING + 1)
                .collect(
                    &self.records,
                    &format!("{THING_GROUPS}{thing}/"),
                    |_: &String| true,
                )
                .await?;
            if groups.iter().any(|g| g == group_name) {
                return Ok(());
            }
            if groups.len() >= MAX_GROUPS_PER_THING {
                return Err(AwsError::limit_exceeded(format!(
                    "Thing {thing} is already in {MAX_GROUPS_PER_THING} thing groups, the most a thing can be in"
                )));
            }
            for other in &groups {
                if let Some(g) = self
                    .records
                    .get::<ThingGroupRecord>(&group_key(other))
                    .await?
                    && g.value.root() == group.value.root()
                {
                    return Err(AwsError::invalid_request(format!(
                        "Thing {thing} is already in thing group {other} of the same hierarchy as {group_name}"
                    )));
                }
            }
            let thing_key = super::things::thing_key(thing);
            let txn = Txn::new()
                .when([
                    unchanged_since(&group_key(group_name), group.mod_revision),
                    unchanged_since(&thing_key, current.mod_revision),
                ])
                .and_then([
                    Op::put(member_key(group_name, thing), as_json(thing)),
                    Op::put(membership_key(thing, group_name), as_json(group_name)),
                    Op::put(thing_key, encode(&current.value)?),
                ]);
            if self.records.txn(txn).await?.succeeded {
                return Ok(());
            }
        }
        Err(AwsError::conflicting_update(format!(
            "Thing {thing} or thing group {group_name} kept changing; retry."
        )))
    }

    async fn remove_from_group(&self, group_name: &str, thing: &str) -> Result<(), AwsError> {
        check_name("thingGroupName", group_name)?;
        check_name("thingName", thing)?;
        self.group(group_name).await?;
        self.thing(thing).await?;
        let txn = Txn::new().and_then([
            Op::delete(member_key(group_name, thing)),
            Op::delete(membership_key(thing, group_name)),
        ]);
        self.records.txn(txn).await?;
        Ok(())
    }

    pub(super) async fn add_thing_to_thing_group(&self, request: &ApiRequest) -> ApiResult {
        let body: Membership = request.json()?;
        let group = self.group_name_of(body.thing_group_name, body.thing_group_arn)?;
        let thing = self.thing_name_of(body.thing_name, body.thing_arn)?;
        self.add_to_group(&group, &thing).await?;
        Ok(json!({}))
    }

    pub(super) async fn remove_thing_from_thing_group(&self, request: &ApiRequest) -> ApiResult {
        let body: Membership = request.json()?;
        let group = self.group_name_of(body.thing_group_name, body.thing_group_arn)?;
        let thing = self.thing_name_of(body.thing_name, body.thing_arn)?;
        self.remove_from_group(&group, &thing).await?;
        Ok(json!({}))
    }

    pub(super) async fn update_thing_groups_for_thing(&self, request: &ApiRequest) -> ApiResult {
        let body: UpdateGroupsForThing = request.json()?;
        let thing = body
            .thing_name
            .ok_or_else(|| AwsError::invalid_request("thingName is required"))?;
        for group in &body.thing_groups_to_remove {
            self.remove_from_group(group, &thing).await?;
        }
        for group in &body.thing_groups_to_add {
            self.add_to_group(group, &thing).await?;
        }
        Ok(json!({}))
    }

    pub(super) async fn list_things_in_thing_group(
        &self,
        name: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        check_name("thingGroupName", name)?;
        self.group(name).await?;
        let page = Page::from_request(request, 50, 250)?;
        if !request.query_flag("recursive")? {
            let (things, next) = page
                .collect(
                    &self.records,
                    &format!("{GROUP_THINGS}{name}/"),
                    |_: &String| true,
                )
                .await?;
            return Ok(with_token(json!({ "things": things }), next));
        }
        // The group and its descendants in name order, then each one's members: the token is
        // the last (group, thing) pair returned.
        let (mut groups, _) = Page::first(usize::MAX)
            .collect(&self.records, GROUPS, |g: &ThingGroupRecord| {
                !g.deleting && g.root_to_parent.iter().any(|a| a == name)
            })
            .await?;
        groups.retain(|g| g.name != name);
        let mut names: Vec<String> = groups.into_iter().map(|g| g.name).collect();
        names.push(name.to_owned());
        names.sort();
        let (start_group, start_thing) = match page.after() {
            Some(after) => match after.split_once('/') {
                Some((g, t)) => (Some(g.to_owned()), Some(t.to_owned())),
                None => return Err(AwsError::invalid_request("The nextToken is invalid.")),
            },
            None => (None, None),
        };
        let mut things = Vec::new();
        let limit = page.limit();
        for group in names
            .iter()
            .filter(|g| start_group.as_ref().is_none_or(|s| *g >= s))
        {
            let prefix = format!("{GROUP_THINGS}{group}/");
            let after = match (&start_group, &start_thing) {
                (Some(g), Some(t)) if g == group => Some(format!("{prefix}{t}")),
                _ => None,
            };
            let (batch, more) = self
                .records
                .page::<String>(&prefix, after.as_deref(), limit - things.len())
                .await?;
            for (_, thing) in batch {
                things.push((group.clone(), thing));
            }
            if things.len() == limit {
                let last_group_index = names.iter().position(|g| g == group).unwrap_or(names.len());
                let token = (more || last_group_index + 1 < names.len()).then(|| {
                    let (g, t) = &things[things.len() - 1];
                    Page::token_for(&format!("{g}/{t}"))
                });
                let things: Vec<&String> = things.iter().map(|(_, t)| t).collect();
                return Ok(with_token(json!({ "things": things }), token));
            }
        }
        let things: Vec<&String> = things.iter().map(|(_, t)| t).collect();
        Ok(json!({ "things": things }))
    }

    pub(super) async fn list_thing_groups_for_thing(
        &self,
        thing: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        check_name("thingName", thing)?;
        self.thing(thing).await?;
        let page = Page::from_request(request, 25, 250)?;
        let (groups, next) = page
            .collect(
                &self.records,
                &format!("{THING_GROUPS}{thing}/"),
                |_: &String| true,
            )
            .await?;
        let groups: Vec<Value> = groups.iter().map(|g| self.group_summary(g)).collect();
        Ok(with_token(json!({ "thingGroups": groups }), next))
    }

    /// The groups `thing` is in, each followed by its ancestors: whose policies apply to it.
    pub(super) async fn groups_and_ancestors_of(
        &self,
        thing: &str,
    ) -> Result<Vec<String>, AwsError> {
        let (groups, _) = Page::first(MAX_GROUPS_PER_THING + 1)
            .collect(
                &self.records,
                &format!("{THING_GROUPS}{thing}/"),
                |_: &String| true,
            )
            .await?;
        let mut all = Vec::new();
        for name in groups {
            if let Some(g) = self
                .records
                .get::<ThingGroupRecord>(&group_key(&name))
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
    pub(super) async fn leave_all_groups(&self, thing: &str) -> Result<Vec<Op>, AwsError> {
        let (groups, _) = Page::first(MAX_GROUPS_PER_THING + 1)
            .collect(
                &self.records,
                &format!("{THING_GROUPS}{thing}/"),
                |_: &String| true,
            )
            .await?;
        Ok(groups
            .iter()
            .flat_map(|g| {
                [
                    Op::delete(member_key(g, thing)),
                    Op::delete(membership_key(thing, g)),
                ]
            })
            .collect())
    }
}
