//! The operations a device (or its factory) provisions itself with: a key pair and certificate
//! made for it (or a certificate for its CSR) with an ownership token, RegisterThing by a
//! template and that token, RegisterThing over HTTP with a template of its own, and temporary
//! claim certificates.

use std::collections::BTreeMap;
use std::time::Duration;

use super::apply::Seed;
use super::hook::{self, HookInput, Verdict};
use super::template::Kind;
use super::templates::{TemplateType, parse_body};
use super::{Provisioned, Provisioning};
use crate::services::certs::pki::IssuedKeys;
use crate::services::certs::{CertificateRecord, CertificateStatus};
use crate::services::error::Error;
use crate::services::records::Batch;

/// Why a device's provisioning request was refused, as the MQTT API answers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub status_code: u16,
    pub error_code: &'static str,
    pub message: String,
}

impl Refusal {
    fn new(status_code: u16, error_code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status_code,
            error_code,
            message: message.into(),
        }
    }

    pub fn invalid_payload(message: impl Into<String>) -> Self {
        Self::new(400, "InvalidPayload", message)
    }
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e {
            Error::Validation { .. } | Error::Invalid(_) | Error::MalformedPolicy(_) => {
                Self::new(400, "InvalidParameters", message)
            }
            Error::NotFound(_) => Self::new(404, "ResourceNotFound", message),
            Error::ResourceRegistrationFailure(_) => {
                Self::new(400, "ResourceRegistrationFailure", message)
            }
            Error::ResourceConflicts(_) => Self::new(409, "ResourceConflictsException", message),
            Error::CertificateState(_) | Error::CertificateInvalid(_) => {
                Self::new(400, "InvalidCertificate", message)
            }
            Error::LimitExceeded(_) => Self::new(400, "LimitExceeded", message),
            Error::AlreadyExists { .. }
            | Error::VersionConflict(_)
            | Error::Conflict(_)
            | Error::DeleteConflict(_)
            | Error::VersionsLimitExceeded(_) => {
                Self::new(409, "ConflictingResourceUpdate", message)
            }
            Error::Unauthorized(_) => Self::new(403, "AccessDenied", message),
            Error::Unavailable(_) => Self::new(503, "ServiceUnavailable", message),
            Error::SqlParse(_)
            | Error::InvalidQuery(_)
            | Error::IndexNotReady(_)
            | Error::InvalidAggregation(_)
            | Error::Internal(_) => Self::new(500, "InternalFailure", message),
        }
    }
}

/// Whether a connection's principal is a certificate's id (rather than a custom
/// authorizer's or an access key's principal).
fn is_certificate_id(principal: &str) -> bool {
    principal.len() == 64 && principal.bytes().all(|b| b.is_ascii_hexdigit())
}

/// RegisterThing by a device over MQTT.
pub struct DeviceProvision<'a> {
    pub template_name: &'a str,
    pub ownership_token: &'a str,
    pub parameters: BTreeMap<String, String>,
    /// The certificate the device is connected with (its claim), and its client id.
    pub claim_certificate_id: &'a str,
    pub client_id: &'a str,
}

impl Provisioning {
    /// CreateKeysAndCertificate for a device: a PENDING_ACTIVATION certificate for a new key
    /// pair, and its ownership token.
    pub async fn create_keys_for_device(
        &self,
    ) -> Result<(CertificateRecord, IssuedKeys, String), Error> {
        let (record, keys) = self
            .inner
            .certs
            .issue_keys(CertificateStatus::PendingActivation)
            .await?;
        let mut batch = Batch::default();
        let token = self.stage_pending(&record, &mut batch)?;
        if !self.inner.records.commit(batch).await? {
            return Err(Error::conflict("The certificate exists already; retry."));
        }
        Ok((record, keys, token))
    }

    /// CreateCertificateFromCsr for a device: a PENDING_ACTIVATION certificate for the CSR's
    /// key, and its ownership token.
    pub async fn create_from_csr_for_device(
        &self,
        csr: &str,
    ) -> Result<(CertificateRecord, String), Error> {
        let record = self
            .inner
            .certs
            .issue_for_csr(csr, CertificateStatus::PendingActivation)?;
        let mut batch = Batch::default();
        let token = self.stage_pending(&record, &mut batch)?;
        if !self.inner.records.commit(batch).await? {
            return Err(Error::conflict(
                "A certificate for this CSR exists already; make a new CSR.",
            ));
        }
        Ok((record, token))
    }

    /// RegisterThing by a device: the template `request` names applied for the certificate
    /// its ownership token proves, after the template's hook allows it.
    pub async fn provision_device(
        &self,
        request: DeviceProvision<'_>,
    ) -> Result<Provisioned, Refusal> {
        let inner = &self.inner;
        if request.ownership_token.is_empty() {
            return Err(Refusal::new(
                400,
                "InvalidCertificateOwnershipToken",
                "Certificate ownership token cannot be empty.",
            ));
        }
        let (template, body) = inner.templates.usable(request.template_name).await?;
        if template.template_type != TemplateType::FleetProvisioning {
            return Err(Refusal::new(
                400,
                "InvalidParameters",
                format!(
                    "The provisioning template {} is a JITP template",
                    template.name
                ),
            ));
        }
        if !template.enabled {
            return Err(Refusal::new(
                400,
                "TemplateDisabled",
                format!("The provisioning template {} is disabled", template.name),
            ));
        }
        match self.claim_template(request.claim_certificate_id).await? {
            Some(claimed) if claimed != template.name => {
                return Err(Refusal::new(
                    403,
                    "AccessDenied",
                    format!(
                        "The claim certificate is for the provisioning template {claimed}, not {}",
                        template.name
                    ),
                ));
            }
            Some(_) => {}
            // A claim certificate that lapsed while its connection stayed open may provision
            // no more.
            None if is_certificate_id(request.claim_certificate_id)
                && inner
                    .certs
                    .find(request.claim_certificate_id)
                    .await?
                    .is_none() =>
            {
                return Err(Refusal::new(
                    403,
                    "AccessDenied",
                    "The claim certificate has expired",
                ));
            }
            None => {}
        }
        let Some((certificate_id, spent)) = self.token_certificate(request.ownership_token).await?
        else {
            return Err(Refusal::new(
                400,
                "InvalidCertificateOwnershipToken",
                "The certificate ownership token is invalid or has expired.",
            ));
        };
        let mut parameters = request.parameters;
        if let Some(hook) = &template.pre_provisioning_hook {
            let certificate = inner.certs.certificate(&certificate_id).await?;
            let template_arn = self.template_arn(&template.name);
            let input = HookInput {
                claim_certificate_id: request.claim_certificate_id,
                certificate_id: &certificate_id,
                certificate_pem: &certificate.certificate_pem,
                template_arn: &template_arn,
                client_id: request.client_id,
                parameters: &parameters,
            };
            let timeout = Duration::from_millis(inner.config.hook_timeout_ms);
            match hook::ask(hook, &input, timeout).await {
                Verdict::Allowed(overrides) => {
                    inner.metrics.hooks.with_label_values(&["allowed"]).inc();
                    parameters.extend(overrides);
                }
                Verdict::Denied(reason) => {
                    inner.metrics.hooks.with_label_values(&["denied"]).inc();
                    return Err(Refusal::new(403, "AccessDenied", reason));
                }
            }
        }
        let resolved = body
            .resolve(&parameters, &self.pseudo(&certificate_id))
            .map_err(|e| Refusal::new(400, "InvalidParameters", e.0))?;
        if !resolved.provisions_only(&certificate_id) {
            return Err(Refusal::new(
                400,
                "InvalidParameters",
                "The template's certificate must be the one the ownership token proves",
            ));
        }
        let seed = Seed {
            token: Some(spent),
            new_certificate: None,
        };
        match self.apply(&resolved, "fleet", &seed).await {
            Ok(provisioned) => Ok(provisioned),
            Err(_)
                if self
                    .token_certificate(request.ownership_token)
                    .await?
                    .is_none() =>
            {
                Err(Refusal::new(
                    400,
                    "InvalidCertificateOwnershipToken",
                    "The certificate ownership token was used or has expired.",
                ))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// RegisterThing over HTTP: a template brought by the caller, with its parameters.
    pub async fn register_thing(
        &self,
        template_body: &str,
        parameters: &BTreeMap<String, String>,
    ) -> Result<Provisioned, Error> {
        let template = parse_body(template_body, Kind::Registration)?;
        // The caller is the account's operator: it may give the pseudo-parameters too.
        let resolved = template
            .resolve(parameters, parameters)
            .map_err(|e| Error::ResourceRegistrationFailure(e.0))?;
        self.apply(&resolved, "register", &Seed::default()).await
    }

    /// CreateProvisioningClaim: a claim certificate that may only provision with `template`,
    /// for five minutes; and when it expires (milliseconds since the epoch).
    pub async fn create_claim(
        &self,
        template_name: &str,
    ) -> Result<(CertificateRecord, IssuedKeys, u64), Error> {
        let (template, _) = self.inner.templates.usable(template_name).await?;
        if template.template_type != TemplateType::FleetProvisioning {
            return Err(Error::invalid(format!(
                "The provisioning template {template_name} is not a fleet provisioning template"
            )));
        }
        let (record, keys) = self
            .inner
            .certs
            .issue_keys(CertificateStatus::Active)
            .await?;
        let expires = self.store_claim(&record, template_name).await?;
        Ok((record, keys, expires))
    }
}
