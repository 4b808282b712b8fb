//! The certificate of a provisioning template, staged into the template's one transaction:
//! the device's existing one given a status, or one issued from a CSR or registered from a PEM
//! (RegisterThing over HTTP).

use super::{
    CertificateMode, CertificateRecord, CertificateStatus, Certificates, check_certificate_id,
    invalid_pem, new_record, pki,
};
use crate::clock::epoch_seconds_fraction;
use crate::ids::uuid_v4;
use crate::services::error::{Error, Result};
use crate::services::provisioning::template::{CertificateSource, CertificateSpec, Override};
use crate::services::records::Batch;
use crate::store::keys;

impl Certificates {
    /// Stages the certificate `spec` describes into `batch`: its record as the batch leaves it.
    /// `registered` is a certificate registered by the same batch (JITP), not stored yet.
    pub async fn stage_provisioned(
        &self,
        spec: &CertificateSpec,
        registered: Option<&CertificateRecord>,
        batch: &mut Batch,
    ) -> Result<CertificateRecord> {
        let wanted = if spec.active {
            CertificateStatus::Active
        } else {
            CertificateStatus::Inactive
        };
        if let (CertificateSource::Id(id), Some(registered)) = (&spec.source, registered)
            && registered.certificate_id == *id
        {
            let mut record = registered.clone();
            record.status = wanted;
            let key = keys::certificate(id);
            batch.read(&key, 0);
            batch.put(&key, &record)?;
            return Ok(record);
        }
        let fresh = match &spec.source {
            CertificateSource::Id(id) => {
                check_certificate_id(id)?;
                None
            }
            CertificateSource::Csr(csr) => {
                let pem = pki::issue_from_csr(&self.ca, csr)
                    .map_err(|e| Error::CertificateInvalid(e.to_string()))?;
                let parsed = pki::parse(&pem).map_err(|e| Error::internal(e.to_string()))?;
                Some(new_record(
                    &parsed,
                    pem,
                    Some(self.own_ca.id.clone()),
                    wanted,
                    CertificateMode::Default,
                ))
            }
            CertificateSource::Pem { pem, ca_pem } => {
                let parsed = pki::parse(pem).map_err(invalid_pem)?;
                if self.find(&parsed.id).await?.is_some() {
                    return self
                        .stage_existing(&parsed.id, wanted, spec.status_override, batch)
                        .await;
                }
                let ca = self.issuing_ca(&parsed, ca_pem.as_deref()).await?;
                Some(new_record(
                    &parsed,
                    pem.clone(),
                    Some(ca),
                    wanted,
                    CertificateMode::Default,
                ))
            }
        };
        match (fresh, &spec.source) {
            (Some(record), _) => {
                let key = keys::certificate(&record.certificate_id);
                batch.read(&key, 0);
                batch.put(&key, &record)?;
                Ok(record)
            }
            (None, CertificateSource::Id(id)) => {
                self.stage_existing(id, wanted, spec.status_override, batch)
                    .await
            }
            (None, _) => Err(Error::internal("a certificate source without a record")),
        }
    }

    async fn stage_existing(
        &self,
        id: &str,
        wanted: CertificateStatus,
        setting: Override,
        batch: &mut Batch,
    ) -> Result<CertificateRecord> {
        let key = keys::certificate(id);
        let current = self
            .records
            .get::<CertificateRecord>(&key)
            .await?
            .ok_or_else(|| {
                Error::ResourceRegistrationFailure(format!("Certificate {id} does not exist"))
            })?;
        let mut record = current.value;
        let status = match (record.status, setting) {
            (CertificateStatus::Revoked, _) => {
                return Err(Error::CertificateState(format!(
                    "Certificate {id} is revoked"
                )));
            }
            // A certificate made for provisioning takes the template's status whatever it says
            // about existing ones: it exists only for this.
            (CertificateStatus::PendingActivation, _) => wanted,
            (current, Override::DoNothing) => current,
            (_, Override::Replace | Override::Merge) => wanted,
            (current, Override::Fail) if current != wanted => {
                return Err(Error::ResourceConflicts(format!(
                    "Certificate {id} is {} and the template says FAIL",
                    current.as_str()
                )));
            }
            (current, Override::Fail) => current,
        };
        if status != record.status {
            record.status = status;
            record.last_modified_date = epoch_seconds_fraction();
            record.customer_version += 1;
            record.generation_id = uuid_v4();
        }
        batch.read(&key, current.mod_revision);
        batch.put(&key, &record)?;
        Ok(record)
    }
}
