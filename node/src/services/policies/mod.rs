//! Policies: up to five versions each with one default, attached to certificates and thing
//! groups; and the questions asked of them (`effective`): which apply to a principal, what a
//! connection's policy variables are, and what the policies allow.
//!
//! AttachPolicy rewrites the policy's record unchanged, and a provisioning template's
//! transaction is conditioned on the revision it read; DeletePolicy first marks the policy as
//! being deleted (failing both), then checks for attachments and deletes only if nothing
//! changed since the mark. So it never removes a policy that was attached meanwhile.

mod effective;
mod provisioned;

pub use provisioned::name_of_document;

pub use effective::{ActionType, AuthInfo, AuthResult, AuthorizationTest, Decision};

use halyard_raft::{Compare, CompareOp, CompareTarget, Op, Txn};
use serde::{Deserialize, Serialize};

use super::arn::{Arns, Kind};
use super::certs::Certificates;
use super::error::{Error, Result};
use super::links::{self, MAX_POLICIES_PER_TARGET};
use super::records::{Page, Records, Versioned, encode, unchanged_since};
use super::registry::Registry;
use crate::auth::policy::Policy;
use crate::clock::epoch_seconds_fraction;
use crate::ids::uuid_v4;
use crate::store::keys;

/// Versions a policy keeps at most.
const MAX_VERSIONS: usize = 5;
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
    /// DeletePolicy has begun: nothing may be attached to it any more.
    #[serde(default)]
    pub deleting: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PolicyVersionRecord {
    pub version_id: u32,
    pub document: String,
    pub create_date: f64,
}

/// The policies of one account.
#[derive(Clone)]
pub struct Policies {
    records: Records,
    arns: Arns,
    registry: Registry,
    certs: Certificates,
}

fn check_policy_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 128 {
        return Err(Error::validation(
            "policyName",
            name,
            "Member must have length between 1 and 128",
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b))
    {
        return Err(Error::validation(
            "policyName",
            name,
            "Member must satisfy regular expression pattern: [\\w+=,.@-]+",
        ));
    }
    Ok(())
}

/// A policy version's id as it appears in requests.
pub fn parse_version_id(text: &str) -> Result<u32> {
    text.parse::<u32>().ok().filter(|v| *v > 0).ok_or_else(|| {
        Error::validation(
            "policyVersionId",
            text,
            "Member must satisfy regular expression pattern: [0-9]+",
        )
    })
}

fn check_document(document: &str) -> Result<()> {
    Policy::parse(document)
        .map(drop)
        .map_err(|e| Error::MalformedPolicy(e.0))
}

fn changed_meanwhile(name: &str) -> Error {
    Error::conflict(format!("Policy {name} changed meanwhile; retry."))
}

impl Policies {
    pub fn new(records: Records, arns: Arns, registry: Registry, certs: Certificates) -> Self {
        Self {
            records,
            arns,
            registry,
            certs,
        }
    }

    pub fn arn(&self, name: &str) -> String {
        self.arns.of(Kind::Policy, name)
    }

    async fn versioned(&self, name: &str) -> Result<Versioned<PolicyRecord>> {
        check_policy_name(name)?;
        self.records
            .get::<PolicyRecord>(&keys::policy(name))
            .await?
            .ok_or_else(|| Error::not_found(format!("Policy {name} does not exist")))
    }

    /// The policy `name`; not found if it does not exist.
    pub async fn policy(&self, name: &str) -> Result<PolicyRecord> {
        Ok(self.versioned(name).await?.value)
    }

    async fn version_record(&self, name: &str, version: u32) -> Result<PolicyVersionRecord> {
        Ok(self
            .records
            .get::<PolicyVersionRecord>(&keys::policy_version(name, version))
            .await?
            .ok_or_else(|| Error::not_found(format!("Policy {name} has no version {version}")))?
            .value)
    }

    async fn version_records(&self, name: &str) -> Result<Vec<PolicyVersionRecord>> {
        Ok(Page::first(MAX_VERSIONS + 1)
            .collect(
                &self.records,
                &keys::policy_versions(name),
                |_: &PolicyVersionRecord| true,
            )
            .await?
            .0)
    }

    /// CreatePolicy: the policy and its first version, the default.
    pub async fn create(&self, name: &str, document: String) -> Result<PolicyVersionRecord> {
        check_policy_name(name)?;
        check_document(&document)?;
        let now = epoch_seconds_fraction();
        let record = PolicyRecord {
            name: name.to_owned(),
            default_version: 1,
            last_version: 1,
            creation_date: now,
            last_modified_date: now,
            generation_id: uuid_v4(),
            deleting: false,
        };
        let version = PolicyVersionRecord {
            version_id: 1,
            document,
            create_date: now,
        };
        let key = keys::policy(name);
        let txn = Txn::new().when([unchanged_since(&key, 0)]).and_then([
            Op::put(key.clone(), encode(&record)?),
            Op::put(keys::policy_version(name, 1), encode(&version)?),
        ]);
        if !self.records.txn(txn).await?.succeeded {
            return Err(Error::already_exists(
                format!("Policy cannot be created - name already exists (name={name})"),
                name,
                self.arn(name),
            ));
        }
        Ok(version)
    }

    /// GetPolicy: the policy and its default version.
    pub async fn get(&self, name: &str) -> Result<(PolicyRecord, PolicyVersionRecord)> {
        let policy = self.policy(name).await?;
        let version = self.version_record(name, policy.default_version).await?;
        Ok((policy, version))
    }

    /// DeletePolicy: only one attached to nothing, with no version but the default.
    ///
    /// In two steps, since a provisioning template attaches a policy by only reading its
    /// record: the policy is first marked as being deleted (which fails every transaction that
    /// read it before), then checked for attachments, then deleted if nothing changed since
    /// the mark.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let current = self.versioned(name).await?;
        let key = keys::policy(name);
        if self.version_records(name).await?.len() > 1 {
            return Err(Error::DeleteConflict(format!(
                "Cannot delete the policy because it has one or more policy versions other than the default (name={name})"
            )));
        }
        let mut marked = current.value.clone();
        marked.deleting = true;
        let txn = Txn::new()
            .when([unchanged_since(&key, current.mod_revision)])
            .and_then([Op::put(key.clone(), encode(&marked)?)]);
        let mark = self.records.txn(txn).await?;
        if !mark.succeeded {
            return Err(changed_meanwhile(name));
        }
        let marked_at = mark.revision;
        if !self
            .records
            .names(&keys::policy_targets(name), 1)
            .await?
            .is_empty()
        {
            let mut unmarked = marked;
            unmarked.deleting = false;
            let txn = Txn::new()
                .when([unchanged_since(&key, marked_at)])
                .and_then([Op::put(key.clone(), encode(&unmarked)?)]);
            self.records.txn(txn).await?;
            return Err(Error::DeleteConflict(format!(
                "The policy cannot be deleted as the policy is attached to one or more principals (name={name})"
            )));
        }
        let txn = Txn::new()
            .when([unchanged_since(&key, marked_at)])
            .and_then([
                Op::delete(key.clone()),
                Op::delete(keys::policy_version(name, current.value.default_version)),
            ]);
        if !self.records.txn(txn).await?.succeeded {
            return Err(Error::conflict(format!(
                "Policy {name} changed while it was being deleted; retry."
            )));
        }
        Ok(())
    }

    /// ListPolicies.
    pub async fn list(&self, page: &Page) -> Result<(Vec<PolicyRecord>, Option<String>)> {
        page.collect(&self.records, keys::POLICIES, |_: &PolicyRecord| true)
            .await
    }

    /// CreatePolicyVersion: a new version, made the default if asked.
    pub async fn create_version(
        &self,
        name: &str,
        document: String,
        set_as_default: bool,
    ) -> Result<PolicyVersionRecord> {
        check_document(&document)?;
        let current = self.versioned(name).await?;
        if self.version_records(name).await?.len() >= MAX_VERSIONS {
            return Err(Error::VersionsLimitExceeded(format!(
                "The policy {name} already has the maximum number of versions ({MAX_VERSIONS})"
            )));
        }
        let mut policy = current.value;
        policy.last_version += 1;
        let id = policy.last_version;
        let now = epoch_seconds_fraction();
        policy.last_modified_date = now;
        if set_as_default {
            policy.default_version = id;
            policy.generation_id = uuid_v4();
        }
        let version = PolicyVersionRecord {
            version_id: id,
            document,
            create_date: now,
        };
        let key = keys::policy(name);
        let txn = Txn::new()
            .when([unchanged_since(&key, current.mod_revision)])
            .and_then([
                Op::put(key.clone(), encode(&policy)?),
                Op::put(keys::policy_version(name, id), encode(&version)?),
            ]);
        if !self.records.txn(txn).await?.succeeded {
            return Err(changed_meanwhile(name));
        }
        Ok(version)
    }

    /// GetPolicyVersion: the policy and the version.
    pub async fn version(
        &self,
        name: &str,
        version: u32,
    ) -> Result<(PolicyRecord, PolicyVersionRecord)> {
        let policy = self.policy(name).await?;
        let version = self.version_record(name, version).await?;
        Ok((policy, version))
    }

    /// ListPolicyVersions: the policy and its versions, newest first.
    pub async fn versions(&self, name: &str) -> Result<(PolicyRecord, Vec<PolicyVersionRecord>)> {
        let policy = self.policy(name).await?;
        let mut versions = self.version_records(name).await?;
        versions.reverse();
        Ok((policy, versions))
    }

    /// SetDefaultPolicyVersion.
    pub async fn set_default_version(&self, name: &str, version: u32) -> Result<()> {
        let current = self.versioned(name).await?;
        self.version_record(name, version).await?;
        let mut policy = current.value;
        if policy.default_version == version {
            return Ok(());
        }
        policy.default_version = version;
        policy.generation_id = uuid_v4();
        policy.last_modified_date = epoch_seconds_fraction();
        let key = keys::policy(name);
        let txn = Txn::new()
            .when([
                unchanged_since(&key, current.mod_revision),
                // The version still exists.
                Compare {
                    key: keys::policy_version(name, version).into_bytes(),
                    op: CompareOp::Greater,
                    target: CompareTarget::CreateRevision(0),
                },
            ])
            .and_then([Op::put(key.clone(), encode(&policy)?)]);
        if !self.records.txn(txn).await?.succeeded {
            return Err(changed_meanwhile(name));
        }
        Ok(())
    }

    /// DeletePolicyVersion: any but the default.
    pub async fn delete_version(&self, name: &str, version: u32) -> Result<()> {
        let current = self.versioned(name).await?;
        self.version_record(name, version).await?;
        if current.value.default_version == version {
            return Err(Error::DeleteConflict(
                "Cannot delete the default version of a policy".into(),
            ));
        }
        let key = keys::policy(name);
        let txn = Txn::new()
            .when([unchanged_since(&key, current.mod_revision)])
            .and_then([Op::delete(keys::policy_version(name, version))]);
        if !self.records.txn(txn).await?.succeeded {
            return Err(changed_meanwhile(name));
        }
        Ok(())
    }

    /// Checks that `target` is a certificate or thing group of this account that exists.
    pub async fn check_target(&self, target: &str) -> Result<()> {
        if let Some(id) = self.arns.name(Kind::Certificate, target) {
            return match self.certs.find(id).await? {
                Some(_) => Ok(()),
                None => Err(Error::not_found(format!(
                    "The certificate {target} does not exist"
                ))),
            };
        }
        if let Some(group) = self.arns.name(Kind::ThingGroup, target) {
            return self.registry.group(group).await.map(drop);
        }
        Err(Error::invalid(format!(
            "The target {target} is neither a certificate ARN nor a thing group ARN of this account"
        )))
    }

    /// AttachPolicy: a no-op if it is attached already.
    pub async fn attach(&self, policy: &str, target: &str) -> Result<()> {
        self.check_target(target).await?;
        let key = keys::policy(policy);
        for _ in 0..ATTEMPTS {
            let current = self.versioned(policy).await?;
            if current.value.deleting {
                return Err(changed_meanwhile(policy));
            }
            let attached = links::policies_of(&self.records, target).await?;
            if attached.iter().any(|p| p == policy) {
                return Ok(());
            }
            if attached.len() >= MAX_POLICIES_PER_TARGET {
                return Err(Error::LimitExceeded(format!(
                    "{target} already has {MAX_POLICIES_PER_TARGET} policies attached, the most it can have"
                )));
            }
            let mut ops = links::attach_policy(policy, target).to_vec();
            ops.push(Op::put(key.clone(), encode(&current.value)?));
            let txn = Txn::new()
                .when([unchanged_since(&key, current.mod_revision)])
                .and_then(ops);
            if self.records.txn(txn).await?.succeeded {
                return Ok(());
            }
        }
        Err(Error::conflict(format!(
            "Policy {policy} kept changing; retry."
        )))
    }

    /// DetachPolicy.
    pub async fn detach(&self, policy: &str, target: &str) -> Result<()> {
        self.versioned(policy).await?;
        let txn = Txn::new().and_then(links::detach_policy(policy, target));
        self.records.txn(txn).await?;
        Ok(())
    }

    /// ListAttachedPolicies (and ListPrincipalPolicies): the policies on `target` and, if
    /// `recursive` and it is a group, on its ancestors; a page of their names.
    pub async fn attached(
        &self,
        target: &str,
        recursive: bool,
        page: &Page,
    ) -> Result<(Vec<String>, Option<String>)> {
        self.check_target(target).await?;
        let mut targets = vec![target.to_owned()];
        if recursive && let Some(group) = self.arns.name(Kind::ThingGroup, target) {
            let group = self.registry.group(group).await?;
            targets.extend(
                group
                    .root_to_parent
                    .iter()
                    .rev()
                    .map(|g| self.registry.group_arn(g)),
            );
        }
        let mut names: Vec<String> = Vec::new();
        for t in &targets {
            for p in links::policies_of(&self.records, t).await? {
                if !names.contains(&p) {
                    names.push(p);
                }
            }
        }
        let start = page
            .after()
            .and_then(|after| names.iter().position(|n| n == after).map(|i| i + 1))
            .unwrap_or(0)
            .min(names.len());
        let end = (start + page.limit()).min(names.len());
        let next = (end < names.len()).then(|| Page::token_for(&names[end - 1]));
        Ok((names[start..end].to_vec(), next))
    }

    /// ListTargetsForPolicy, or (`principals_only`) ListPolicyPrincipals.
    pub async fn targets(
        &self,
        policy: &str,
        principals_only: bool,
        page: &Page,
    ) -> Result<(Vec<String>, Option<String>)> {
        self.versioned(policy).await?;
        links::targets_of(&self.records, policy, page, principals_only).await
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
        assert!(keys::policy_version("p", 9) < keys::policy_version("p", 10));
        assert!(keys::policy_version("p", 10).starts_with(&keys::policy_versions("p")));
    }
}
