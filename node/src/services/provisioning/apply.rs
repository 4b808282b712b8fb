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

/// Attempts at a template whose records kept changing under it.
const ATTEMPTS: usize = 8;

/// What a template made.
#[derive(Debug, Clone)]
pub struct Provisioned {
    pub thing_name: Option<String>,
    pub certificate: Option<CertificateRecord>,
    /// Each resource's logical id and ARN.
    pub resource_arns: BTreeMap<String, String>,
    pub device_configuration: BTreeMap<String, String>,
}

impl Provisioning {
    /// Creates or updates the resources of `resolved` in one transaction.
    pub async fn apply(&self, resolved: &Resolved, via: &str) -> Result<Provisioned> {
        let inner = &self.inner;
        for _ in 0..ATTEMPTS {
            let mut batch = Batch::default();
            let mut resource_arns = BTreeMap::new();
            let certificate = match &resolved.certificate {
                Some(spec) => {
                    let record = inner.certs.stage_provisioned(spec, &mut batch).await?;
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
            if inner.records.commit(batch).await? {
                if let Some(thing) = &thing {
                    inner.registry.thing_committed(thing);
                }
                inner.metrics.provisioned.with_label_values(&[via]).inc();
                return Ok(Provisioned {
                    thing_name: thing.map(|t| t.record.thing_name),
                    certificate,
                    resource_arns,
                    device_configuration: resolved.device_configuration.clone(),
                });
            }
        }
        Err(Error::conflict(
            "The template's resources kept changing while it was applied; retry.",
        ))
    }
}
