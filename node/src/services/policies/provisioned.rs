//! The policies of a provisioning template, staged into the template's one transaction: one
//! named, or one made from a document (named by the document's hash, so that every device
//! provisioned with the same document shares one policy), attached to the new certificate.

use super::{Policies, PolicyRecord, PolicyVersionRecord, check_document, check_policy_name};
use crate::clock::epoch_seconds_fraction;
use crate::ids::uuid_v4;
use crate::services::error::{Error, Result};
use crate::services::links::{self, MAX_POLICIES_PER_TARGET};
use crate::services::provisioning::template::PolicySpec;
use crate::services::records::Batch;
use crate::store::keys;

/// The name a policy made from `document` gets.
pub fn name_of_document(document: &str) -> String {
    let mut name = String::with_capacity(64);
    keys::push_hex(
        &mut name,
        ring::digest::digest(&ring::digest::SHA256, document.as_bytes()).as_ref(),
    );
    name
}

impl Policies {
    /// Stages the policy `spec` describes, attached to `target`, into `batch`; its name.
    pub async fn stage_attached(
        &self,
        spec: &PolicySpec,
        target: &str,
        batch: &mut Batch,
    ) -> Result<String> {
        let name = match spec {
            PolicySpec::Named { name, .. } => {
                check_policy_name(name)?;
                let current = self
                    .records
                    .get::<PolicyRecord>(&keys::policy(name))
                    .await?
                    .filter(|p| !p.value.deleting)
                    .ok_or_else(|| {
                        Error::ResourceRegistrationFailure(format!("Policy {name} does not exist"))
                    })?;
                // Read, not rewritten: every device of a fleet attaches the same policy, and a
                // rewrite would make their transactions overtake one another.
                batch.read(&keys::policy(name), current.mod_revision);
                name.clone()
            }
            PolicySpec::Document { document, .. } => {
                check_document(document)?;
                let name = name_of_document(document);
                let key = keys::policy(&name);
                match self.records.get::<PolicyRecord>(&key).await? {
                    Some(current) if current.value.deleting => {
                        return Err(Error::conflict(format!(
                            "Policy {name} is being deleted; retry."
                        )));
                    }
                    Some(current) => batch.read(&key, current.mod_revision),
                    None => {
                        let now = epoch_seconds_fraction();
                        batch.read(&key, 0);
                        batch.put(
                            &key,
                            &PolicyRecord {
                                name: name.clone(),
                                default_version: 1,
                                last_version: 1,
                                creation_date: now,
                                last_modified_date: now,
                                generation_id: uuid_v4(),
                                deleting: false,
                            },
                        )?;
                        batch.put(
                            &keys::policy_version(&name, 1),
                            &PolicyVersionRecord {
                                version_id: 1,
                                document: document.clone(),
                                create_date: now,
                            },
                        )?;
                    }
                }
                name
            }
        };
        let attached = links::policies_of(&self.records, target).await?;
        if !attached.contains(&name) {
            if attached.len() >= MAX_POLICIES_PER_TARGET {
                return Err(Error::LimitExceeded(format!(
                    "{target} already has {MAX_POLICIES_PER_TARGET} policies attached, the most it can have"
                )));
            }
            batch.ops(links::attach_policy(&name, target));
        }
        Ok(name)
    }
}
