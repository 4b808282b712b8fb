//! Certificates and CA certificates: issued from the cluster's CA (from a key pair it makes or
//! a CSR), registered from the holder's own CA or without one, their status, and the CAs
//! registered to vouch for devices' certificates.

pub mod authority;
pub mod keygen;
pub mod pki;
mod provisioned;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::arn::{Arns, Kind};
use super::error::{Error, Result};
use super::links;
use super::records::{Batch, Page, Records, Versioned};
use crate::clock::epoch_seconds_fraction;
use crate::ids::uuid_v4;
use crate::store::keys;
use keygen::KeyPool;
use pki::{CaPair, IssuedKeys, ParsedCertificate};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CertificateStatus {
    Active,
    Inactive,
    Revoked,
    RegisterInactive,
    /// Made for a device that has not been provisioned yet: it may connect only once a
    /// template activates it, and is removed if none does within the hour.
    PendingActivation,
}

impl CertificateStatus {
    /// The statuses' names, as a validation message lists them.
    pub const NAMES: &'static str =
        "[ACTIVE, INACTIVE, REVOKED, REGISTER_INACTIVE, PENDING_ACTIVATION]";

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "ACTIVE" => Self::Active,
            "INACTIVE" => Self::Inactive,
            "REVOKED" => Self::Revoked,
            "REGISTER_INACTIVE" => Self::RegisterInactive,
            "PENDING_ACTIVATION" => Self::PendingActivation,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Inactive => "INACTIVE",
            Self::Revoked => "REVOKED",
            Self::RegisterInactive => "REGISTER_INACTIVE",
            Self::PendingActivation => "PENDING_ACTIVATION",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CaStatus {
    Active,
    Inactive,
}

impl CaStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Inactive => "INACTIVE",
        }
    }
}

/// Whether certificates signed by a CA are registered when they first connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AutoRegistration {
    Enable,
    Disable,
}

impl AutoRegistration {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enable => "ENABLE",
            Self::Disable => "DISABLE",
        }
    }
}

/// `DEFAULT`: the CA is known and devices present their certificate alone; `SNI_ONLY`: the
/// device must name the endpoint (SNI), and its certificate needs no registered CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CertificateMode {
    Default,
    SniOnly,
}

impl CertificateMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "DEFAULT",
            Self::SniOnly => "SNI_ONLY",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CertificateRecord {
    pub certificate_id: String,
    pub certificate_pem: String,
    pub ca_certificate_id: Option<String>,
    pub status: CertificateStatus,
    pub creation_date: f64,
    pub last_modified_date: f64,
    pub generation_id: String,
    pub customer_version: u64,
    pub not_before: i64,
    pub not_after: i64,
    pub certificate_mode: CertificateMode,
}

/// What provisions the devices whose certificates a CA registers just in time (JITP): a
/// template given inline or by name.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RegistrationConfig {
    pub template_body: Option<String>,
    pub template_name: Option<String>,
    pub role_arn: Option<String>,
}

impl RegistrationConfig {
    pub fn is_empty(&self) -> bool {
        self.template_body.is_none() && self.template_name.is_none()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CaCertificateRecord {
    pub certificate_id: String,
    pub certificate_pem: String,
    pub status: CaStatus,
    pub auto_registration_status: AutoRegistration,
    pub creation_date: f64,
    pub last_modified_date: f64,
    pub generation_id: String,
    pub customer_version: u64,
    pub not_before: i64,
    pub not_after: i64,
    pub certificate_mode: CertificateMode,
    #[serde(default)]
    pub registration_config: Option<RegistrationConfig>,
}

/// A CA certificate to register.
pub struct NewCaCertificate {
    pub certificate_pem: String,
    /// A certificate signed by the CA's key, proving that the registrant holds it.
    pub verification_certificate_pem: Option<String>,
    pub mode: CertificateMode,
    pub active: bool,
    pub auto_registration: bool,
    pub registration_config: Option<RegistrationConfig>,
}

/// The certificates of one account.
#[derive(Clone)]
pub struct Certificates {
    records: Records,
    arns: Arns,
    ca: Arc<CaPair>,
    /// The cluster's CA certificate, parsed once.
    own_ca: Arc<ParsedCertificate>,
    keys: Arc<KeyPool>,
}

fn check_certificate_id(id: &str) -> Result<()> {
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::validation(
            "certificateId",
            id,
            "Member must have length 64 and satisfy regular expression pattern: (0x)?[a-fA-F0-9]+",
        ));
    }
    Ok(())
}

fn invalid_pem(e: pki::PkiError) -> Error {
    Error::CertificateInvalid(e.to_string())
}

fn new_record(
    parsed: &ParsedCertificate,
    pem: String,
    ca: Option<String>,
    status: CertificateStatus,
    mode: CertificateMode,
) -> CertificateRecord {
    let now = epoch_seconds_fraction();
    CertificateRecord {
        certificate_id: parsed.id.clone(),
        certificate_pem: pem,
        ca_certificate_id: ca,
        status,
        creation_date: now,
        last_modified_date: now,
        generation_id: uuid_v4(),
        customer_version: 1,
        not_before: parsed.not_before,
        not_after: parsed.not_after,
        certificate_mode: mode,
    }
}

impl Certificates {
    /// The certificates of the account `arns` names, issuing from `ca` for keys from `keys`.
    pub fn new(records: Records, arns: Arns, ca: CaPair, keys: Arc<KeyPool>) -> Result<Self> {
        let own_ca = pki::parse(&ca.certificate_pem)
            .map_err(|e| Error::internal(format!("the cluster's CA is unreadable: {e}")))?;
        Ok(Self {
            records,
            arns,
            ca: Arc::new(ca),
            own_ca: Arc::new(own_ca),
            keys,
        })
    }

    pub fn arn(&self, id: &str) -> String {
        self.arns.of(Kind::Certificate, id)
    }

    pub fn ca_arn(&self, id: &str) -> String {
        self.arns.of(Kind::CaCertificate, id)
    }

    /// The id of the cluster's own CA certificate.
    pub fn own_ca_id(&self) -> &str {
        &self.own_ca.id
    }

    async fn store_new(&self, record: &CertificateRecord) -> Result<()> {
        if self
            .records
            .create(&keys::certificate(&record.certificate_id), record)
            .await?
        {
            Ok(())
        } else {
            Err(Error::already_exists(
                format!(
                    "The certificate is already provisioned or registered: {}",
                    record.certificate_id
                ),
                record.certificate_id.as_str(),
                self.arn(&record.certificate_id),
            ))
        }
    }

    /// The pool the device key pairs come from.
    pub fn key_pool(&self) -> &Arc<KeyPool> {
        &self.keys
    }

    /// A new key pair and a certificate for it from the cluster's CA, not yet stored.
    pub async fn issue_keys(
        &self,
        status: CertificateStatus,
    ) -> Result<(CertificateRecord, IssuedKeys)> {
        let key = self
            .keys
            .take()
            .await
            .map_err(|e| Error::internal(e.to_string()))?;
        let certificate_pem =
            pki::issue_for_key(&self.ca, &key).map_err(|e| Error::internal(e.to_string()))?;
        let parsed = pki::parse(&certificate_pem).map_err(|e| Error::internal(e.to_string()))?;
        let record = new_record(
            &parsed,
            certificate_pem.clone(),
            Some(self.own_ca.id.clone()),
            status,
            CertificateMode::Default,
        );
        Ok((
            record,
            IssuedKeys {
                certificate_pem,
                public_key_pem: key.public_key_pem,
                private_key_pem: key.private_key_pem,
            },
        ))
    }

    /// A certificate from the cluster's CA for a CSR's key, not yet stored.
    pub fn issue_for_csr(
        &self,
        csr_pem: &str,
        status: CertificateStatus,
    ) -> Result<CertificateRecord> {
        if csr_pem.is_empty() {
            return Err(Error::invalid("certificateSigningRequest is required"));
        }
        let pem =
            pki::issue_from_csr(&self.ca, csr_pem).map_err(|e| Error::invalid(e.to_string()))?;
        let parsed = pki::parse(&pem).map_err(|e| Error::internal(e.to_string()))?;
        Ok(new_record(
            &parsed,
            pem,
            Some(self.own_ca.id.clone()),
            status,
            CertificateMode::Default,
        ))
    }

    /// Stages a certificate issued (and not yet stored) into `batch`.
    pub fn stage_new(&self, record: &CertificateRecord, batch: &mut Batch) -> Result<()> {
        let key = keys::certificate(&record.certificate_id);
        batch.read(&key, 0);
        batch.put(&key, record)
    }

    /// CreateKeysAndCertificate: a new key pair and a certificate for it from the cluster's CA.
    pub async fn create_keys_and_certificate(
        &self,
        status: CertificateStatus,
    ) -> Result<(CertificateRecord, IssuedKeys)> {
        let (record, keys) = self.issue_keys(status).await?;
        self.store_new(&record).await?;
        Ok((record, keys))
    }

    /// CreateCertificateFromCsr: a certificate from the cluster's CA for the CSR's key.
    pub async fn create_from_csr(
        &self,
        csr_pem: &str,
        status: CertificateStatus,
    ) -> Result<CertificateRecord> {
        let record = self.issue_for_csr(csr_pem, status)?;
        self.store_new(&record).await?;
        Ok(record)
    }

    /// RegisterCertificate: a certificate signed by the cluster's CA or by a registered,
    /// active one (the one `ca_pem` names, if given).
    pub async fn register(
        &self,
        certificate_pem: String,
        ca_pem: Option<&str>,
        status: CertificateStatus,
    ) -> Result<CertificateRecord> {
        let parsed = pki::parse(&certificate_pem).map_err(invalid_pem)?;
        let ca = self.issuing_ca(&parsed, ca_pem).await?;
        let record = new_record(
            &parsed,
            certificate_pem,
            Some(ca),
            status,
            CertificateMode::Default,
        );
        self.store_new(&record).await?;
        Ok(record)
    }

    /// RegisterCertificateWithoutCA: a certificate whose devices name the endpoint (SNI).
    pub async fn register_without_ca(
        &self,
        certificate_pem: String,
        status: CertificateStatus,
    ) -> Result<CertificateRecord> {
        let parsed = pki::parse(&certificate_pem).map_err(invalid_pem)?;
        let record = new_record(
            &parsed,
            certificate_pem,
            None,
            status,
            CertificateMode::SniOnly,
        );
        self.store_new(&record).await?;
        Ok(record)
    }

    /// The registered, active CA that signed `certificate`: the cluster's own, or one
    /// registered.
    async fn issuing_ca(
        &self,
        certificate: &ParsedCertificate,
        named: Option<&str>,
    ) -> Result<String> {
        let own = &self.own_ca;
        if named.is_none() && pki::signed_by(&certificate.der, &own.der) {
            return Ok(own.id.clone());
        }
        let candidates: Vec<CaCertificateRecord> = match named {
            Some(pem) => {
                let ca = pki::parse(pem).map_err(invalid_pem)?;
                if ca.id == own.id {
                    if pki::signed_by(&certificate.der, &own.der) {
                        return Ok(own.id.clone());
                    }
                    return Err(Error::CertificateInvalid(
                        "The certificate is not signed by the given CA certificate".into(),
                    ));
                }
                let record = self
                    .records
                    .get::<CaCertificateRecord>(&keys::ca_certificate(&ca.id))
                    .await?
                    .ok_or_else(|| {
                        Error::not_found(format!("CA certificate {} is not registered", ca.id))
                    })?;
                vec![record.value]
            }
            None => {
                Page::first(1000)
                    .collect(
                        &self.records,
                        keys::CA_CERTIFICATES,
                        |_: &CaCertificateRecord| true,
                    )
                    .await?
                    .0
            }
        };
        for ca in candidates {
            let Ok(parsed) = pki::parse(&ca.certificate_pem) else {
                continue;
            };
            if pki::signed_by(&certificate.der, &parsed.der) {
                if ca.status != CaStatus::Active {
                    return Err(Error::CertificateState(format!(
                        "The CA certificate {} is not active",
                        ca.certificate_id
                    )));
                }
                return Ok(ca.certificate_id);
            }
        }
        Err(Error::CertificateInvalid(
            "The certificate is not signed by a registered CA certificate".into(),
        ))
    }

    async fn versioned(&self, id: &str) -> Result<Versioned<CertificateRecord>> {
        check_certificate_id(id)?;
        self.records
            .get::<CertificateRecord>(&keys::certificate(id))
            .await?
            .ok_or_else(|| Error::not_found(format!("The certificate {id} does not exist")))
    }

    /// The certificate `id`; not found if it is not registered.
    pub async fn certificate(&self, id: &str) -> Result<CertificateRecord> {
        Ok(self.versioned(id).await?.value)
    }

    /// The certificate `id`, if it is registered.
    pub async fn find(&self, id: &str) -> Result<Option<CertificateRecord>> {
        Ok(self
            .records
            .get::<CertificateRecord>(&keys::certificate(id))
            .await?
            .map(|c| c.value))
    }

    /// Checks that `principal` is the ARN of a registered certificate of this account.
    pub async fn check_principal(&self, principal: &str) -> Result<()> {
        let Some(id) = self.arns.name(Kind::Certificate, principal) else {
            return Err(Error::invalid(format!(
                "The principal {principal} is not a certificate ARN of this account and region"
            )));
        };
        self.certificate(id).await.map(drop)
    }

    /// A page of the certificates, or of those a CA issued.
    pub async fn list(
        &self,
        by_ca: Option<&str>,
        page: &Page,
    ) -> Result<(Vec<CertificateRecord>, Option<String>)> {
        if let Some(ca) = by_ca {
            check_certificate_id(ca)?;
        }
        page.collect(
            &self.records,
            keys::CERTIFICATES,
            |c: &CertificateRecord| {
                by_ca.is_none_or(|ca| c.ca_certificate_id.as_deref() == Some(ca))
            },
        )
        .await
    }

    /// UpdateCertificate: a revoked certificate stays revoked.
    pub async fn update_status(&self, id: &str, new_status: CertificateStatus) -> Result<()> {
        let current = self.versioned(id).await?;
        let mut c = current.value;
        if c.status == CertificateStatus::Revoked && new_status != CertificateStatus::Revoked {
            return Err(Error::CertificateState(format!(
                "Certificate {id} is revoked and cannot change status"
            )));
        }
        if c.status == new_status {
            return Ok(());
        }
        c.status = new_status;
        c.last_modified_date = epoch_seconds_fraction();
        c.customer_version += 1;
        c.generation_id = uuid_v4();
        if !self
            .records
            .replace(&keys::certificate(id), &c, current.mod_revision)
            .await?
        {
            return Err(Error::conflict(format!(
                "Certificate {id} changed meanwhile; retry."
            )));
        }
        Ok(())
    }

    /// DeleteCertificate: only one that is not active, and attached to nothing.
    pub async fn delete(&self, id: &str) -> Result<()> {
        let current = self.versioned(id).await?;
        if current.value.status == CertificateStatus::Active {
            return Err(Error::CertificateState(
                "Certificate must be deactivated (not ACTIVE) before deletion.".into(),
            ));
        }
        let arn = self.arn(id);
        if !links::things_of(&self.records, &arn, 1).await?.is_empty() {
            return Err(Error::DeleteConflict(format!(
                "Things must be detached before deletion (arn: {arn})"
            )));
        }
        if !links::policies_of(&self.records, &arn).await?.is_empty() {
            return Err(Error::DeleteConflict(format!(
                "Certificate policies must be detached before deletion (arn: {arn})"
            )));
        }
        if !self
            .records
            .delete(&keys::certificate(id), current.mod_revision)
            .await?
        {
            return Err(Error::conflict(format!(
                "Certificate {id} changed meanwhile; retry."
            )));
        }
        Ok(())
    }

    /// RegisterCACertificate.
    pub async fn register_ca(&self, new: NewCaCertificate) -> Result<CaCertificateRecord> {
        let parsed = pki::parse(&new.certificate_pem).map_err(invalid_pem)?;
        if !parsed.is_ca {
            return Err(Error::CertificateInvalid(
                "The certificate is not a CA certificate (basic constraints CA:TRUE)".into(),
            ));
        }
        if let Some(verification) = &new.verification_certificate_pem {
            let proof = pki::parse(verification).map_err(invalid_pem)?;
            if !pki::signed_by(&proof.der, &parsed.der) {
                return Err(Error::CertificateInvalid(
                    "The verification certificate is not signed by the CA certificate".into(),
                ));
            }
        }
        let now = epoch_seconds_fraction();
        let record = CaCertificateRecord {
            certificate_id: parsed.id.clone(),
            certificate_pem: new.certificate_pem,
            status: if new.active {
                CaStatus::Active
            } else {
                CaStatus::Inactive
            },
            auto_registration_status: if new.auto_registration {
                AutoRegistration::Enable
            } else {
                AutoRegistration::Disable
            },
            creation_date: now,
            last_modified_date: now,
            generation_id: uuid_v4(),
            customer_version: 1,
            not_before: parsed.not_before,
            not_after: parsed.not_after,
            certificate_mode: new.mode,
            registration_config: new.registration_config.filter(|c| !c.is_empty()),
        };
        if !self
            .records
            .create(&keys::ca_certificate(&parsed.id), &record)
            .await?
        {
            return Err(Error::already_exists(
                format!("The CA certificate is already registered: {}", parsed.id),
                parsed.id.as_str(),
                self.ca_arn(&parsed.id),
            ));
        }
        Ok(record)
    }

    async fn versioned_ca(&self, id: &str) -> Result<Versioned<CaCertificateRecord>> {
        // An id of the wrong shape names no CA certificate either: AWS answers not found.
        self.records
            .get::<CaCertificateRecord>(&keys::ca_certificate(id))
            .await?
            .ok_or_else(|| Error::not_found(format!("The CA certificate {id} does not exist")))
    }

    pub async fn ca_certificate(&self, id: &str) -> Result<CaCertificateRecord> {
        Ok(self.versioned_ca(id).await?.value)
    }

    pub async fn list_cas(
        &self,
        page: &Page,
    ) -> Result<(Vec<CaCertificateRecord>, Option<String>)> {
        page.collect(
            &self.records,
            keys::CA_CERTIFICATES,
            |_: &CaCertificateRecord| true,
        )
        .await
    }

    /// UpdateCACertificate: its status, its auto-registration, its registration config.
    pub async fn update_ca(
        &self,
        id: &str,
        status: Option<CaStatus>,
        auto_registration: Option<AutoRegistration>,
        registration_config: Option<RegistrationConfig>,
    ) -> Result<()> {
        let current = self.versioned_ca(id).await?;
        let mut c = current.value;
        if let Some(status) = status {
            c.status = status;
        }
        if let Some(auto) = auto_registration {
            c.auto_registration_status = auto;
        }
        if let Some(config) = registration_config {
            c.registration_config = (!config.is_empty()).then_some(config);
        }
        c.last_modified_date = epoch_seconds_fraction();
        c.customer_version += 1;
        if !self
            .records
            .replace(&keys::ca_certificate(id), &c, current.mod_revision)
            .await?
        {
            return Err(Error::conflict(format!(
                "CA certificate {id} changed meanwhile; retry."
            )));
        }
        Ok(())
    }

    /// DeleteCACertificate: only one that is not active and vouches for no certificate.
    pub async fn delete_ca(&self, id: &str) -> Result<()> {
        let current = self.versioned_ca(id).await?;
        if current.value.status == CaStatus::Active {
            return Err(Error::CertificateState(
                "A CA certificate must be deactivated (not ACTIVE) before deletion.".into(),
            ));
        }
        let (issued, _) = Page::first(1)
            .collect(
                &self.records,
                keys::CERTIFICATES,
                |c: &CertificateRecord| c.ca_certificate_id.as_deref() == Some(id),
            )
            .await?;
        if !issued.is_empty() {
            return Err(Error::CertificateState(
                "The CA certificate still has certificates registered under it.".into(),
            ));
        }
        self.records
            .delete(&keys::ca_certificate(id), current.mod_revision)
            .await?;
        Ok(())
    }

    /// Whether the CA that vouches for `certificate` still does: the cluster's own, one
    /// registered and active, or none (registered without a CA).
    pub async fn vouched_for(&self, certificate: &CertificateRecord) -> Result<bool> {
        match &certificate.ca_certificate_id {
            None => Ok(true),
            Some(ca) if *ca == self.own_ca.id => Ok(true),
            Some(ca) => Ok(self
                .records
                .get::<CaCertificateRecord>(&keys::ca_certificate(ca))
                .await?
                .is_some_and(|c| c.value.status == CaStatus::Active)),
        }
    }
}
