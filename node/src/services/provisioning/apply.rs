//! A template applied for one device: its resources staged by the services that own them into
//! one transaction (the certificate's status, the thing and its groups, the policies and their
//! attachments), committed all or nothing, and done again from fresh reads if a concurrent
//! change overtook it.

use std::collections::BTreeMap;

use super::Provisioning;
use super::template::Resolved;
use crate::services::certs::CertificateRecord;
use crate::services::error::{Error, Result};
use crate::services::links;
use crate::services::records::Batch;
use crate::services::registry::StagedThing;

/// Attempts at a template whose records kept changing under it.
const ATTEMPTS: usize = 8;

/// An ownership token a provisioning uses up: its transaction holds only while the token is
/// as read, and removes it, so one token provisions once.
pub struct SpentToken {
    pub key: String,
    pub revision: halyard_raft::Revision,
}

/// What a provisioning brings into its template's transaction besides the resources.
#[derive(Default)]
pub struct Seed {
    pub token: Option<SpentToken>,
    /// A certificate registered in the same transaction (JITP), not in the store yet.
    pub new_certificate: Option<CertificateRecord>,
}

/// What a template made.
#[derive(Debug, Clone)]
pub struct Provisioned {
    pub thing_name: Option<String>,
    pub certificate: Option<CertificateRecord>,
    /// Each resource's logical id and ARN.
    pub resource_arns: BTreeMap<String, String>,
    pub device_configuration: BTreeMap<String, String>,
}

/// A template's resources staged, not yet committed.
struct Staged {
    batch: Batch,
    resource_arns: BTreeMap<String, String>,
    certificate: Option<CertificateRecord>,
    thing: Option<StagedThing>,
}

impl Provisioning {
    /// Creates or updates the resources of `resolved` in one transaction.
    pub async fn apply(&self, resolved: &Resolved, via: &str, seed: &Seed) -> Result<Provisioned> {
        let inner = &self.inner;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                // Spread the next attempts of writers that overtook one another.
                let jitter = rand::random::<u64>() % (5 << attempt.min(5));
                tokio::time::sleep(std::time::Duration::from_millis(jitter)).await;
            }
            // One read barrier, then every owner reads from this node's applied state: the
            // batch's conditions catch anything that changed since.
            let staged = inner.records.settled(self.stage(resolved, seed)).await??;
            if inner.records.commit(staged.batch).await? {
                if let Some(thing) = &staged.thing {
                    inner.registry.thing_committed(thing);
                }
                inner.metrics.provisioned.with_label_values(&[via]).inc();
                return Ok(Provisioned {
                    thing_name: staged.thing.map(|t| t.record.thing_name),
                    certificate: staged.certificate,
                    resource_arns: staged.resource_arns,
                    device_configuration: resolved.device_configuration.clone(),
                });
            }
            if let Some(registered) = &seed.new_certificate
                && inner
                    .certs
                    .find(&registered.certificate_id)
                    .await?
                    .is_some()
            {
                return Err(Error::conflict(
                    "The certificate was registered by another connection meanwhile.",
                ));
            }
            if let Some(token) = &seed.token {
                let now = inner.records.get::<serde_json::Value>(&token.key).await?;
                if now.is_none_or(|t| t.mod_revision != token.revision) {
                    return Err(Error::NotFound(
                        "The certificate ownership token was used or has expired.".into(),
                    ));
                }
            }
        }
        Err(Error::conflict(
            "The template's resources kept changing while it was applied; retry.",
        ))
    }

    async fn stage(&self, resolved: &Resolved, seed: &Seed) -> Result<Staged> {
        let inner = &self.inner;
        let mut batch = Batch::default();
        if let Some(token) = &seed.token {
            // The lapse key stays: if the template activates nothing, the sweeper still
            // removes the certificate once it lapses.
            batch.read(&token.key, token.revision);
            batch.ops([halyard_raft::Op::delete(token.key.clone())]);
        }
        let mut resource_arns = BTreeMap::new();
        let certificate = match &resolved.certificate {
            Some(spec) => {
                let record = inner
                    .certs
                    .stage_provisioned(spec, seed.new_certificate.as_ref(), &mut batch)
                    .await?;
                resource_arns.insert(
                    spec.logical_id.clone(),
                    inner.certs.arn(&record.certificate_id),
                );
                Some(record)
            }
            None => None,
        };
        let certificate_arn = certificate
            .as_ref()
            .map(|c| inner.certs.arn(&c.certificate_id));
        let thing = match &resolved.thing {
            Some(spec) => {
                let staged = inner.registry.stage_thing(spec, &mut batch).await?;
                resource_arns.insert(
                    spec.logical_id.clone(),
                    inner.registry.thing_arn(&spec.name),
                );
                Some(staged)
            }
            None => None,
        };
        for policy in &resolved.policies {
            let target = certificate_arn.as_deref().ok_or_else(|| {
                Error::ResourceRegistrationFailure(
                    "A policy needs the template's certificate to be attached to".into(),
                )
            })?;
            let name = inner
                .policies
                .stage_attached(policy, target, &mut batch)
                .await?;
            let logical_id = match policy {
                super::template::PolicySpec::Named { logical_id, .. }
                | super::template::PolicySpec::Document { logical_id, .. } => logical_id,
            };
            resource_arns.insert(logical_id.clone(), inner.policies.arn(&name));
        }
        if let (Some(thing), Some(arn)) = (&thing, &certificate_arn) {
            batch.ops(links::attach_principal(&thing.record.thing_name, arn));
        }
        // A certificate registered just in time is stored even by a template that does not
        // name it.
        if let Some(registered) = &seed.new_certificate
            && certificate
                .as_ref()
                .is_none_or(|c| c.certificate_id != registered.certificate_id)
        {
            inner.certs.stage_new(registered, &mut batch)?;
        }
        Ok(Staged {
            batch,
            resource_arns,
            certificate,
            thing,
        })
    }
}
