//! Policies: `/policies` with up to five versions each, their attachment to certificates and
//! thing groups (`/target-policies`, and the older `/principal-policies`), and the questions
//! asked of them: which apply to a principal (`/effective-policies`) and what they allow
//! (`/test-authorization`).
//!
//! Attaching rewrites the policy's record unchanged, so that DeletePolicy, which is conditioned
//! on the revision it read, never removes a policy that was attached meanwhile.

use std::collections::BTreeSet;

use halyard_raft::{Op, Txn};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::certificates::CertificateRecord;
use super::error::AwsError;
use super::records::{Versioned, encode, unchanged_since};
use super::request::{ApiRequest, Page};
use super::things::{ThingRecord, now_seconds, thing_key, uuid_v4};
use super::{Api, ApiResult};
use crate::auth::policy::{Context, Effect, Policy};

use crate::store::keys;

pub(super) const POLICIES: &str = keys::POLICIES;
pub(super) const POLICY_VERSIONS: &str = keys::POLICY_VERSIONS;
pub(super) const POLICY_TARGETS: &str = keys::POLICY_TARGETS;
/// Versions a policy keeps at most.
const MAX_VERSIONS: usize = 5;
/// Policies attached to one certificate or group at most.
const MAX_POLICIES_PER_TARGET: usize = 10;
const ATTEMPTS: usize = 8;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PolicyRecord {
    pub name: String,
    pub default_version: u32,
    /// The highest version id given out; ids are never reused.
    pub last_version: u32,
    pub creation_date: f64,
    pub last_modified_date: f64,
    pub generation_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PolicyVersionRecord {
    pub version_id: u32,
    pub document: String,
    pub create_date: f64,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DocumentBody {
    policy_document: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TargetBody {
    target: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct EffectiveBody {
    principal: Option<String>,
    #[allow(dead_code)]
    cognito_identity_pool_id: Option<String>,
}

#[derive(Deserialize, Serialize, Default, Clone)]
#[serde(rename_all = "camelCase")]
struct AuthInfo {
    action_type: Option<String>,
    #[serde(default)]
    resources: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TestAuthorizationBody {
    principal: Option<String>,
    #[allow(dead_code)]
    cognito_identity_pool_id: Option<String>,
    #[serde(default)]
    auth_infos: Vec<AuthInfo>,
    #[serde(default)]
    policy_names_to_add: Vec<String>,
    #[serde(default)]
    policy_names_to_skip: Vec<String>,
}

fn policy_key(name: &str) -> String {
    keys::policy(name)
}

fn version_key(name: &str, version: u32) -> String {
    keys::policy_version(name, version)
}

fn policy_target_key(policy: &str, target: &str) -> String {
    keys::policy_target(policy, target)
}

fn target_policy_key(target: &str, policy: &str) -> String {
    keys::target_policy(target, policy)
}

fn check_policy_name(name: &str) -> Result<(), AwsError> {
    if name.is_empty() || name.len() > 128 {
        return Err(AwsError::validation(
            "policyName",
            name,
            "Member must have length between 1 and 128",
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b))
    {
        return Err(AwsError::validation(
            "policyName",
            name,
            "Member must satisfy regular expression pattern: [\\w+=,.@-]+",
        ));
    }
    Ok(())
}

fn parse_version_id(text: &str) -> Result<u32, AwsError> {
    text.parse::<u32>().ok().filter(|v| *v > 0).ok_or_else(|| {
        AwsError::validation(
            "policyVersionId",
            text,
            "Member must satisfy regular expression pattern: [0-9]+",
        )
    })
}

/// A checked document from the request body.
fn document_of(request: &ApiRequest) -> Result<String, AwsError> {
    let body: DocumentBody = request.json()?;
    let document = body
        .policy_document
        .ok_or_else(|| AwsError::invalid_request("policyDocument is required"))?;
    Policy::parse(&document).map_err(|e| AwsError::malformed_policy(e.0))?;
    Ok(document)
}

/// The IoT action a TestAuthorization `actionType` stands for.
fn action_of(action_type: &str) -> Result<&'static str, AwsError> {
    Ok(match action_type {
        "PUBLISH" => "iot:Publish",
        "SUBSCRIBE" => "iot:Subscribe",
        "RECEIVE" => "iot:Receive",
        "CONNECT" => "iot:Connect",
        other => {
            return Err(AwsError::validation(
                "authInfos.member.actionType",
                other,
                "Member must satisfy enum value set: [PUBLISH, SUBSCRIBE, RECEIVE, CONNECT]",
            ));
        }
    })
}

impl Api {
    pub(super) fn policy_arn(&self, name: &str) -> String {
        self.arn(&format!("policy/{name}"))
    }

    fn policy_summary(&self, name: &str) -> Value {
        json!({ "policyName": name, "policyArn": self.policy_arn(name) })
    }

    async fn versioned_policy(&self, name: &str) -> Result<Versioned<PolicyRecord>, AwsError> {
        check_policy_name(name)?;
        self.records
            .get::<PolicyRecord>(&policy_key(name))
            .await?
            .ok_or_else(|| AwsError::not_found(format!("Policy {name} does not exist")))
    }

    async fn policy_version(
        &self,
        name: &str,
        version: u32,
    ) -> Result<PolicyVersionRecord, AwsError> {
        Ok(self
            .records
            .get::<PolicyVersionRecord>(&version_key(name, version))
            .await?
            .ok_or_else(|| AwsError::not_found(format!("Policy {name} has no version {version}")))?
            .value)
    }

    async fn versions(&self, name: &str) -> Result<Vec<PolicyVersionRecord>, AwsError> {
        let (versions, _) = Page::first(MAX_VERSIONS + 1)
            .collect(
                &self.records,
                &format!("{POLICY_VERSIONS}{name}/"),
                |_: &PolicyVersionRecord| true,
            )
            .await?;
        Ok(versions)
    }

    pub(super) async fn create_policy(&self, name: &str, request: &ApiRequest) -> ApiResult {
        check_policy_name(name)?;
        let document = document_of(request)?;
        let now = now_seconds();
        let record = PolicyRecord {
            name: name.to_owned(),
            default_version: 1,
            last_version: 1,
            creation_date: now,
            last_modified_date: now,
            generation_id: uuid_v4(),
        };
        let version = PolicyVersionRecord {
            version_id: 1,
            document: document.clone(),
            create_date: now,
        };
        let key = policy_key(name);
        let txn = Txn::new().when([unchanged_since(&key, 0)]).and_then([
            Op::put(key.clone(), encode(&record)?),
            Op::put(version_key(name, 1), encode(&version)?),
        ]);
        if !self.records.txn(txn).await?.succeeded {
            return Err(AwsError::already_exists(
                format!("Policy cannot be created - name already exists (name={name})"),
                name,
                self.arn(&format!("policy/{name}")),
            ));
        }
        Ok(json!({
            "policyName": name,
            "policyArn": self.policy_arn(name),
            "policyDocument": document,
            "policyVersionId": "1",
        }))
    }

    pub(super) async fn get_policy(&self, name: &str) -> ApiResult {
        let policy = self.versioned_policy(name).await?.value;
        let version = self.policy_version(name, policy.default_version).await?;
        Ok(json!({
            "policyName": name,
            "policyArn": self.policy_arn(name),
            "policyDocument": version.document,
            "defaultVersionId": policy.default_version.to_string(),
            "creationDate": policy.creation_date,
            "lastModifiedDate": policy.last_modified_date,
            "generationId": policy.generation_id,
        }))
    }

    pub(super) async fn delete_policy(&self, name: &str) -> ApiResult {
        let current = self.versioned_policy(name).await?;
        let (targets, _) = Page::first(1)
            .collect(
                &self.records,
                &format!("{POLICY_TARGETS}{name}/"),
                |_: &String| true,
            )
            .await?;
        if !targets.is_empty() {
            return Err(AwsError::delete_conflict(format!(
                "The policy cannot be deleted as the policy is attached to one or more principals (name={name})"
            )));
        }
        if self.versions(name).await?.len() > 1 {
            return Err(AwsError::delete_conflict(format!(
                "Cannot delete the policy because it has one or more policy versions other than the default (name={name})"
            )));
        }
        let key = policy_key(name);
        let txn = Txn::new()
            .when([unchanged_since(&key, current.mod_revision)])
            .and_then([
                Op::delete(key.clone()),
                Op::delete(version_key(name, current.value.default_version)),
            ]);
        if !self.records.txn(txn).await?.succeeded {
            return Err(AwsError::conflicting_update(format!(
                "Policy {name} changed while it was being deleted; retry."
            )));
        }
        Ok(json!({}))
    }

    pub(super) async fn list_policies(&self, request: &ApiRequest) -> ApiResult {
        let page = Self::marker_page(request)?;
        let (policies, next) = page
            .collect(&self.records, POLICIES, |_: &PolicyRecord| true)
            .await?;
        let mut answer = json!({
            "policies": policies.iter().map(|p| self.policy_summary(&p.name)).collect::<Vec<_>>(),
        });
        if let Some(marker) = next {
            answer["nextMarker"] = json!(marker);
        }
        Ok(answer)
    }

    pub(super) async fn create_policy_version(
        &self,
        name: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        let document = document_of(request)?;
        let set_as_default = request.query_flag("setAsDefault")?;
        let current = self.versioned_policy(name).await?;
        if self.versions(name).await?.len() >= MAX_VERSIONS {
            return Err(AwsError::versions_limit_exceeded(format!(
                "The policy {name} already has the maximum number of versions ({MAX_VERSIONS})"
            )));
        }
        let mut policy = current.value;
        policy.last_version += 1;
        let id = policy.last_version;
        let now = now_seconds();
        policy.last_modified_date = now;
        if set_as_default {
            policy.default_version = id;
            policy.generation_id = uuid_v4();
        }
        let version = PolicyVersionRecord {
            version_id: id,
            document: document.clone(),
            create_date: now,
        };
        let key = policy_key(name);
        let txn = Txn::new()
            .when([unchanged_since(&key, current.mod_revision)])
            .and_then([
                Op::put(key.clone(), encode(&policy)?),
                Op::put(version_key(name, id), encode(&version)?),
            ]);
        if !self.records.txn(txn).await?.succeeded {
            return Err(AwsError::conflicting_update(format!(
                "Policy {name} changed meanwhile; retry."
            )));
        }
        Ok(json!({
            "policyArn": self.policy_arn(name),
            "policyDocument": document,
            "policyVersionId": id.to_string(),
            "isDefaultVersion": set_as_default,
        }))
    }

    pub(super) async fn get_policy_version(&self, name: &str, version: &str) -> ApiResult {
        let id = parse_version_id(version)?;
        let policy = self.versioned_policy(name).await?.value;
        let version = self.policy_version(name, id).await?;
        Ok(json!({
            "policyArn": self.policy_arn(name),
            "policyName": name,
            "policyDocument": version.document,
            "policyVersionId": id.to_string(),
            "isDefaultVersion": policy.default_version == id,
            "creationDate": version.create_date,
            "lastModifiedDate": version.create_date,
            "generationId": policy.generation_id,
        }))
    }

    pub(super) async fn list_policy_versions(&self, name: &str) -> ApiResult {
        let policy = self.versioned_policy(name).await?.value;
        let mut versions = self.versions(name).await?;
        versions.reverse();
        let versions: Vec<Value> = versions
            .iter()
            .map(|v| {
                json!({
                    "versionId": v.version_id.to_string(),
                    "isDefaultVersion": v.version_id == policy.default_version,
                    "createDate": v.create_date,
                })
            })
            .collect();
        Ok(json!({ "policyVersions": versions }))
    }

    pub(super) async fn set_default_policy_version(&self, name: &str, version: &str) -> ApiResult {
        let id = parse_version_id(version)?;
        let current = self.versioned_policy(name).await?;
        self.policy_version(name, id).await?;
        let mut policy = current.value;
        if policy.default_version == id {
            return Ok(json!({}));
        }
        policy.default_version = id;
        policy.generation_id = uuid_v4();
        policy.last_modified_date = now_seconds();
        let key = policy_key(name);
        let txn = Txn::new()
            .when([
                unchanged_since(&key, current.mod_revision),
                halyard_raft::Compare {
                    key: version_key(name, id).into_bytes(),
                    op: halyard_raft::CompareOp::Greater,
                    target: halyard_raft::CompareTarget::CreateRevision(0),
                },
            ])
            .and_then([Op::put(key.clone(), encode(&policy)?)]);
        if !self.records.txn(txn).await?.succeeded {
            return Err(AwsError::conflicting_update(format!(
                "Policy {name} changed meanwhile; retry."
            )));
        }
        Ok(json!({}))
    }

    pub(super) async fn delete_policy_version(&self, name: &str, version: &str) -> ApiResult {
        let id = parse_version_id(version)?;
        let current = self.versioned_policy(name).await?;
        self.policy_version(name, id).await?;
        if current.value.default_version == id {
            return Err(AwsError::delete_conflict(
                "Cannot delete the default version of a policy",
            ));
        }
        let key = policy_key(name);
        let txn = Txn::new()
            .when([unchanged_since(&key, current.mod_revision)])
            .and_then([Op::delete(version_key(name, id))]);
        if !self.records.txn(txn).await?.succeeded {
            return Err(AwsError::conflicting_update(format!(
                "Policy {name} changed meanwhile; retry."
            )));
        }
        Ok(json!({}))
    }

    /// Checks that `target` is a certificate or thing group of this account that exists.
    async fn check_target(&self, target: &str) -> Result<(), AwsError> {
        if let Some(id) = target.strip_prefix(&self.arn("cert/")) {
            self.records
                .get::<CertificateRecord>(&super::certificates::certificate_key(id))
                .await?
                .ok_or_else(|| {
                    AwsError::not_found(format!("The certificate {target} does not exist"))
                })?;
            return Ok(());
        }
        if let Some(group) = target.strip_prefix(&self.group_arn("")) {
            self.group(group).await?;
            return Ok(());
        }
        Err(AwsError::invalid_request(format!(
            "The target {target} is neither a certificate ARN nor a thing group ARN of this account"
        )))
    }

    async fn attach(&self, policy: &str, target: &str) -> Result<(), AwsError> {
        self.check_target(target).await?;
        for _ in 0..ATTEMPTS {
            let current = self.versioned_policy(policy).await?;
            let attached = self.policies_of(target).await?;
            if attached.iter().any(|p| p == policy) {
                return Ok(());
            }
            if attached.len() >= MAX_POLICIES_PER_TARGET {
                return Err(AwsError::limit_exceeded(format!(
                    "{target} already has {MAX_POLICIES_PER_TARGET} policies attached, the most it can have"
                )));
            }
            let key = policy_key(policy);
            let txn = Txn::new()
                .when([unchanged_since(&key, current.mod_revision)])
                .and_then([
                    Op::put(policy_target_key(policy, target), json!(target).to_string()),
                    Op::put(target_policy_key(target, policy), json!(policy).to_string()),
                    Op::put(key.clone(), encode(&current.value)?),
                ]);
            if self.records.txn(txn).await?.succeeded {
                return Ok(());
            }
        }
        Err(AwsError::conflicting_update(format!(
            "Policy {policy} kept changing; retry."
        )))
    }

    async fn detach(&self, policy: &str, target: &str) -> Result<(), AwsError> {
        self.versioned_policy(policy).await?;
        let txn = Txn::new().and_then([
            Op::delete(policy_target_key(policy, target)),
            Op::delete(target_policy_key(target, policy)),
        ]);
        self.records.txn(txn).await?;
        Ok(())
    }

    /// Detaches every policy from `target`, which is being deleted.
    pub(super) async fn detach_all_policies(&self, target: &str) -> Result<(), AwsError> {
        let policies = self.policies_of(target).await?;
        let ops: Vec<Op> = policies
            .iter()
            .flat_map(|p| {
                [
                    Op::delete(policy_target_key(p, target)),
                    Op::delete(target_policy_key(target, p)),
                ]
            })
            .collect();
        if !ops.is_empty() {
            self.records.txn(Txn::new().and_then(ops)).await?;
        }
        Ok(())
    }

    /// The names of the policies attached to `target`.
    pub(super) async fn policies_of(&self, target: &str) -> Result<Vec<String>, AwsError> {
        let (policies, _) = Page::first(MAX_POLICIES_PER_TARGET + 1)
            .collect(
                &self.records,
                &keys::target_policies(target),
                |_: &String| true,
            )
            .await?;
        Ok(policies)
    }

    fn target_of(request: &ApiRequest) -> Result<String, AwsError> {
        let body: TargetBody = request.json()?;
        body.target
            .filter(|t| !t.is_empty())
            .ok_or_else(|| AwsError::invalid_request("target is required"))
    }

    pub(super) async fn attach_policy(&self, policy: &str, request: &ApiRequest) -> ApiResult {
        let target = Self::target_of(request)?;
        self.attach(policy, &target).await?;
        Ok(json!({}))
    }

    pub(super) async fn detach_policy(&self, policy: &str, request: &ApiRequest) -> ApiResult {
        let target = Self::target_of(request)?;
        self.detach(policy, &target).await?;
        Ok(json!({}))
    }

    fn principal_header(request: &ApiRequest) -> Result<String, AwsError> {
        request
            .header("x-amzn-iot-principal")
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                AwsError::invalid_request("The principal (x-amzn-iot-principal) is required")
            })
    }

    pub(super) async fn attach_principal_policy(
        &self,
        policy: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        let principal = Self::principal_header(request)?;
        self.attach(policy, &principal).await?;
        Ok(json!({}))
    }

    pub(super) async fn detach_principal_policy(
        &self,
        policy: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        let principal = Self::principal_header(request)?;
        self.detach(policy, &principal).await?;
        Ok(json!({}))
    }

    pub(super) async fn list_principal_policies(&self, request: &ApiRequest) -> ApiResult {
        let principal = Self::principal_header(request)?;
        self.check_target(&principal).await?;
        self.list_attached(&principal, false, request).await
    }

    pub(super) async fn list_attached_policies(
        &self,
        target: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        let recursive = request.query_flag("recursive")?;
        self.check_target(target).await?;
        self.list_attached(target, recursive, request).await
    }

    /// The policies on `target` (and, if `recursive` and it is a group, on its ancestors), a
    /// marker page of them.
    async fn list_attached(
        &self,
        target: &str,
        recursive: bool,
        request: &ApiRequest,
    ) -> ApiResult {
        let page = Self::marker_page(request)?;
        let mut targets = vec![target.to_owned()];
        if recursive && let Some(group) = target.strip_prefix(&self.group_arn("")) {
            let group = self.group(group).await?;
            targets.extend(group.root_to_parent.iter().rev().map(|g| self.group_arn(g)));
        }
        let mut names = Vec::new();
        for t in &targets {
            for p in self.policies_of(t).await? {
                if !names.contains(&p) {
                    names.push(p);
                }
            }
        }
        let start = page
            .after()
            .and_then(|after| names.iter().position(|n| n == after).map(|i| i + 1))
            .unwrap_or(0);
        let end = (start + page.limit()).min(names.len());
        let mut answer = json!({
            "policies": names[start..end].iter().map(|n| self.policy_summary(n)).collect::<Vec<_>>(),
        });
        if end < names.len() {
            answer["nextMarker"] = json!(Page::token_for(&names[end - 1]));
        }
        Ok(answer)
    }

    pub(super) async fn list_targets_for_policy(
        &self,
        policy: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        self.versioned_policy(policy).await?;
        let page = Self::marker_page(request)?;
        let (targets, next) = page
            .collect(
                &self.records,
                &format!("{POLICY_TARGETS}{policy}/"),
                |_: &String| true,
            )
            .await?;
        let mut answer = json!({ "targets": targets });
        if let Some(marker) = next {
            answer["nextMarker"] = json!(marker);
        }
        Ok(answer)
    }

    pub(super) async fn list_policy_principals(&self, request: &ApiRequest) -> ApiResult {
        let policy = request
            .header("x-amzn-iot-policy")
            .ok_or_else(|| {
                AwsError::invalid_request("The policy name (x-amzn-iot-policy) is required")
            })?
            .to_owned();
        self.versioned_policy(&policy).await?;
        let page = Self::marker_page(request)?;
        let (targets, next) = page
            .collect(
                &self.records,
                &format!("{POLICY_TARGETS}{policy}/"),
                |t: &String| !t.contains(":thinggroup/"),
            )
            .await?;
        let mut answer = json!({ "principals": targets });
        if let Some(marker) = next {
            answer["nextMarker"] = json!(marker);
        }
        Ok(answer)
    }

    /// The names of the policies in effect for `principal` connected as `thing`: the
    /// principal's own, then those of the thing's groups and their ancestors.
    pub(super) async fn effective_policy_names(
        &self,
        principal: Option<&str>,
        thing: Option<&str>,
    ) -> Result<Vec<String>, AwsError> {
        let mut names = Vec::new();
        if let Some(p) = principal {
            names.extend(self.policies_of(p).await?);
        }
        if let Some(t) = thing {
            for group in self.groups_and_ancestors_of(t).await? {
                for p in self.policies_of(&self.group_arn(&group)).await? {
                    if !names.contains(&p) {
                        names.push(p);
                    }
                }
            }
        }
        Ok(names)
    }

    /// The default version's document of each named policy that still exists.
    pub(super) async fn documents(
        &self,
        names: &[String],
    ) -> Result<Vec<(String, String)>, AwsError> {
        let mut documents = Vec::new();
        for name in names {
            let Some(policy) = self.records.get::<PolicyRecord>(&policy_key(name)).await? else {
                continue;
            };
            let version = self
                .policy_version(name, policy.value.default_version)
                .await?;
            documents.push((name.clone(), version.document));
        }
        Ok(documents)
    }

    pub(super) async fn get_effective_policies(&self, request: &ApiRequest) -> ApiResult {
        let body: EffectiveBody = request.json()?;
        let thing = request.query("thingName");
        if let Some(t) = thing {
            super::things::check_name("thingName", t)?;
            self.thing(t).await?;
        }
        if let Some(p) = &body.principal {
            self.check_target(p).await?;
        }
        let names = self
            .effective_policy_names(body.principal.as_deref(), thing)
            .await?;
        let effective: Vec<Value> = self
            .documents(&names)
            .await?
            .into_iter()
            .map(|(name, document)| {
                json!({
                    "policyName": name,
                    "policyArn": self.policy_arn(&name),
                    "policyDocument": document,
                })
            })
            .collect();
        Ok(json!({ "effectivePolicies": effective }))
    }

    /// The values a connection with `client_id` authenticated as `principal` gives to policy
    /// variables: the thing of that name if the principal is attached to it.
    pub(super) async fn connection_context(
        &self,
        client_id: Option<&str>,
        principal: Option<&str>,
    ) -> Result<(Context, Option<String>), AwsError> {
        let mut context = Context::new();
        let mut thing_name = None;
        if let Some(client_id) = client_id {
            context.set("iot:ClientId", client_id);
            let attached = match principal {
                Some(p) => self.principal_has_thing(p, client_id).await?,
                None => false,
            };
            if attached
                && let Some(thing) = self
                    .records
                    .get::<ThingRecord>(&thing_key(client_id))
                    .await?
            {
                let thing = thing.value;
                context.set("iot:Connection.Thing.ThingName", thing.thing_name.clone());
                if let Some(t) = &thing.thing_type_name {
                    context.set("iot:Connection.Thing.ThingTypeName", t.clone());
                }
                for (k, v) in &thing.attributes {
                    context.set(format!("iot:Connection.Thing.Attributes[{k}]"), v.clone());
                }
                context.set("iot:Connection.Thing.IsAttached", "true");
                thing_name = Some(thing.thing_name);
            } else {
                context.set("iot:Connection.Thing.IsAttached", "false");
            }
        }
        Ok((context, thing_name))
    }

    pub(super) async fn test_authorization(&self, request: &ApiRequest) -> ApiResult {
        let body: TestAuthorizationBody = request.json()?;
        if body.auth_infos.is_empty() || body.auth_infos.len() > 10 {
            return Err(AwsError::validation(
                "authInfos",
                &body.auth_infos.len().to_string(),
                "Member must have length between 1 and 10",
            ));
        }
        if let Some(p) = &body.principal {
            self.check_target(p).await?;
        }
        let (context, thing) = self
            .connection_context(request.query("clientId"), body.principal.as_deref())
            .await?;
        let mut names = self
            .effective_policy_names(body.principal.as_deref(), thing.as_deref())
            .await?;
        for extra in &body.policy_names_to_add {
            self.versioned_policy(extra).await?;
            if !names.contains(extra) {
                names.push(extra.clone());
            }
        }
        names.retain(|n| !body.policy_names_to_skip.contains(n));
        let mut policies = Vec::new();
        for (name, document) in self.documents(&names).await? {
            let parsed = Policy::parse(&document).map_err(|e| {
                AwsError::internal(format!("stored policy {name} is unreadable: {}", e.0))
            })?;
            policies.push((name, parsed));
        }
        let mut results = Vec::new();
        for info in &body.auth_infos {
            let action = action_of(info.action_type.as_deref().unwrap_or_default())?;
            if info.resources.is_empty() {
                return Err(AwsError::invalid_request(
                    "Each authInfo needs at least one resource",
                ));
            }
            let mut allowing = BTreeSet::new();
            let mut denying = BTreeSet::new();
            let mut all_allowed = true;
            for resource in &info.resources {
                let mut allowed_here = false;
                for (name, policy) in &policies {
                    match policy.effect(action, resource, &context) {
                        Some(Effect::Deny) => {
                            denying.insert(name.clone());
                        }
                        Some(Effect::Allow) => {
                            allowing.insert(name.clone());
                            allowed_here = true;
                        }
                        None => {}
                    }
                }
                all_allowed &= allowed_here;
            }
            let decision = if !denying.is_empty() {
                "EXPLICIT_DENY"
            } else if all_allowed {
                "ALLOWED"
            } else {
                "IMPLICIT_DENY"
            };
            let summaries = |set: &BTreeSet<String>| -> Vec<Value> {
                set.iter().map(|n| self.policy_summary(n)).collect()
            };
            let implicit: Vec<Value> = if decision == "IMPLICIT_DENY" {
                policies
                    .iter()
                    .filter(|(n, _)| !allowing.contains(n))
                    .map(|(n, _)| self.policy_summary(n))
                    .collect()
            } else {
                Vec::new()
            };
            results.push(json!({
                "authInfo": info,
                "allowed": { "policies": summaries(&allowing) },
                "denied": {
                    "implicitDeny": { "policies": implicit },
                    "explicitDeny": { "policies": summaries(&denying) },
                },
                "authDecision": decision,
                "missingContextValues": [],
            }));
        }
        Ok(json!({ "authResults": results }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_and_versions_are_checked() {
        assert!(check_policy_name("device-policy_1.2@x").is_ok());
        assert!(check_policy_name("").is_err());
        assert!(check_policy_name("has space").is_err());
        assert!(check_policy_name(&"p".repeat(129)).is_err());
        assert_eq!(parse_version_id("3"), Ok(3));
        assert!(parse_version_id("0").is_err());
        assert!(parse_version_id("x").is_err());
    }

    #[test]
    fn version_keys_sort_by_number() {
        assert!(version_key("p", 9) < version_key("p", 10));
        assert!(version_key("p", 10).starts_with(&format!("{POLICY_VERSIONS}p/")));
    }

    #[test]
    fn action_types_map_to_iot_actions() {
        assert_eq!(action_of("PUBLISH"), Ok("iot:Publish"));
        assert!(action_of("publish").is_err());
    }
}
