//! Just-in-time registration (JITR) and provisioning (JITP): a device whose certificate was
//! signed by a registered, active CA with auto-registration connects naming the endpoint (SNI,
//! as AWS requires). Its certificate is registered PENDING_ACTIVATION and
//! `$aws/events/certificates/registered/{caCertificateId}` is published; if the CA has a
//! registration config, its template runs with the certificate's subject as parameters and the
//! certificate is activated, and the device is admitted on that same connection (AWS makes it
//! connect again).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;

use super::apply::Seed;
use super::template::{Kind, SUBJECT_PARAMETERS};
use super::templates::{TemplateType, parse_body};
use super::{Provisioned, Provisioning};
use crate::clock::epoch_millis;
use crate::services::certs::pki::{self, ParsedCertificate};
use crate::services::certs::{
    AutoRegistration, CaCertificateRecord, CaStatus, CertificateMode, CertificateRecord,
    CertificateStatus, RegistrationConfig,
};
use crate::services::error::{Error, Result};
use crate::services::records::{Batch, Page};
use crate::store::keys;

/// How long the list of auto-registering CAs serves before it is read again.
const JIT_CA_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// What became of a certificate the registry did not know.
#[derive(Debug)]
pub enum JustInTime {
    /// No registered CA with auto-registration vouches for it (or no SNI was sent).
    NotEligible,
    /// Registered PENDING_ACTIVATION; someone must activate it (JITR).
    Registered,
    /// Its CA's template provisioned it (JITP).
    Provisioned(Box<Provisioned>),
}

/// The policy of a claim certificate: it may ask for a certificate and provision with
/// `template`, and nothing else.
pub fn claim_policy(account: &str, template: &str) -> String {
    let topic = |t: &str| format!("{account}topic/{t}");
    let filter = |t: &str| format!("{account}topicfilter/{t}");
    let provision = format!("$aws/provisioning-templates/{template}/provision/*");
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"},
            {
                "Effect": "Allow",
                "Action": ["iot:Publish", "iot:Receive"],
                "Resource": [
                    topic("$aws/certificates/create/*"),
                    topic("$aws/certificates/create-from-csr/*"),
                    topic(&provision),
                ]
            },
            {
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": [
                    filter("$aws/certificates/create/*"),
                    filter("$aws/certificates/create-from-csr/*"),
                    filter(&provision),
                ]
            }
        ]
    })
    .to_string()
}

impl Provisioning {
    /// Checks a CA's registration config: an inline JITP template that parses, or the name of
    /// a JITP template that exists.
    pub async fn check_registration_config(&self, config: &RegistrationConfig) -> Result<()> {
        match (&config.template_body, &config.template_name) {
            (Some(_), Some(_)) => Err(Error::invalid(
                "registrationConfig takes templateBody or templateName, not both",
            )),
            (Some(body), None) => parse_body(body, Kind::Jitp).map(drop),
            (None, Some(name)) => {
                let (template, _) = self.inner.templates.usable(name).await?;
                if template.template_type != TemplateType::Jitp {
                    return Err(Error::invalid(format!(
                        "The provisioning template {name} is not a JITP template"
                    )));
                }
                Ok(())
            }
            (None, None) => Ok(()),
        }
    }

    /// The CA whose registration config names template `name`, if any.
    pub(super) async fn ca_using_template(&self, name: &str) -> Result<Option<String>> {
        let (cas, _) = Page::first(1)
            .collect(
                &self.inner.records,
                keys::CA_CERTIFICATES,
                |ca: &CaCertificateRecord| {
                    ca.registration_config
                        .as_ref()
                        .is_some_and(|c| c.template_name.as_deref() == Some(name))
                },
            )
            .await?;
        Ok(cas.into_iter().next().map(|ca| ca.certificate_id))
    }

    /// Forgets the list of auto-registering CAs: one was registered or changed here.
    pub fn forget_jit_cas(&self) {
        *self.inner.jit_cas.lock() = None;
    }

    /// The registered, active CA with auto-registration that signed `certificate`, as it is
    /// in the store now. The list of such CAs is read at most once a second when none signed
    /// the certificates presented: an unknown certificate costs a signature check per CA, not
    /// a scan of the store per connection.
    async fn auto_registering_ca(
        &self,
        certificate: &ParsedCertificate,
    ) -> Result<Option<CaCertificateRecord>> {
        let signer = |cas: &[CaCertificateRecord]| {
            cas.iter()
                .find(|ca| {
                    pki::parse(&ca.certificate_pem)
                        .is_ok_and(|parsed| pki::signed_by(&certificate.der, &parsed.der))
                })
                .map(|ca| ca.certificate_id.clone())
        };
        let cached = self.inner.jit_cas.lock().clone();
        let found = match cached {
            Some((read_at, cas)) if read_at.elapsed() < JIT_CA_REFRESH => signer(&cas),
            _ => {
                let (cas, _) = Page::first(1000)
                    .collect(
                        &self.inner.records,
                        keys::CA_CERTIFICATES,
                        |ca: &CaCertificateRecord| {
                            ca.status == CaStatus::Active
                                && ca.auto_registration_status == AutoRegistration::Enable
                        },
                    )
                    .await?;
                let found = signer(&cas);
                *self.inner.jit_cas.lock() = Some((std::time::Instant::now(), Arc::new(cas)));
                found
            }
        };
        let Some(id) = found else {
            return Ok(None);
        };
        // The CA as it is now: its status, auto-registration and registration config.
        let ca = match self.inner.certs.ca_certificate(&id).await {
            Ok(ca) => Some(ca),
            Err(Error::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        Ok(ca.filter(|ca| {
            ca.status == CaStatus::Active && ca.auto_registration_status == AutoRegistration::Enable
        }))
    }

    /// Registers (and, with a registration config, provisions) a certificate the registry
    /// does not know, presented by a device that named `server_name`.
    pub async fn register_just_in_time(
        &self,
        der: &[u8],
        server_name: Option<&str>,
    ) -> Result<JustInTime> {
        if server_name.is_none_or(str::is_empty) {
            return Ok(JustInTime::NotEligible);
        }
        let inner = &self.inner;
        let pem = pem_of(der);
        let Ok(parsed) = pki::parse(&pem) else {
            return Ok(JustInTime::NotEligible);
        };
        if parsed.is_ca || inner.certs.find(&parsed.id).await?.is_some() {
            return Ok(JustInTime::NotEligible);
        }
        let now_s = crate::clock::epoch_seconds_signed();
        if now_s < parsed.not_before || now_s > parsed.not_after {
            return Ok(JustInTime::NotEligible);
        }
        let Some(ca) = self.auto_registering_ca(&parsed).await? else {
            return Ok(JustInTime::NotEligible);
        };
        let now = crate::clock::epoch_seconds_fraction();
        let record = CertificateRecord {
            certificate_id: parsed.id.clone(),
            certificate_pem: pem,
            ca_certificate_id: Some(ca.certificate_id.clone()),
            status: CertificateStatus::PendingActivation,
            creation_date: now,
            last_modified_date: now,
            generation_id: crate::ids::uuid_v4(),
            customer_version: 1,
            not_before: parsed.not_before,
            not_after: parsed.not_after,
            certificate_mode: CertificateMode::Default,
        };
        let Some(config) = ca.registration_config.as_ref().filter(|c| !c.is_empty()) else {
            let mut batch = Batch::default();
            inner.certs.stage_new(&record, &mut batch)?;
            if !inner.records.commit(batch).await? {
                // Another connection of the same device registered it first.
                return Ok(JustInTime::NotEligible);
            }
            inner.metrics.jit_registered.inc();
            self.registered_event(&record, &ca.certificate_id, now);
            return Ok(JustInTime::Registered);
        };
        let body = match (&config.template_body, &config.template_name) {
            (Some(body), _) => parse_body(body, Kind::Jitp)?,
            (None, Some(name)) => {
                let (template, body) = inner.templates.usable(name).await?;
                if template.template_type != TemplateType::Jitp || !template.enabled {
                    return Err(Error::ResourceRegistrationFailure(format!(
                        "The provisioning template {name} is not an enabled JITP template"
                    )));
                }
                body
            }
            (None, None) => return Ok(JustInTime::NotEligible),
        };
        let mut pseudo = self.pseudo(&parsed.id);
        pseudo.extend(
            pki::name_fields(&parsed.der)
                .into_iter()
                .filter_map(|(field, value)| {
                    SUBJECT_PARAMETERS
                        .iter()
                        .find(|(_, name)| *name == field)
                        .map(|(parameter, _)| ((*parameter).to_owned(), value))
                }),
        );
        let resolved = body
            .resolve(&BTreeMap::new(), &pseudo)
            .map_err(|e| Error::ResourceRegistrationFailure(e.0))?;
        if !resolved.provisions_only(&parsed.id) {
            return Err(Error::ResourceRegistrationFailure(
                "A JITP template's certificate must be the connecting device's".into(),
            ));
        }
        // The certificate is registered in the template's own transaction: if the template
        // cannot be applied, nothing is left behind and the device's next attempt starts over.
        let seed = Seed {
            token: None,
            new_certificate: Some(record.clone()),
        };
        let provisioned = self.apply(&resolved, "jitp", &seed).await?;
        inner.metrics.jit_registered.inc();
        self.registered_event(&record, &ca.certificate_id, now);
        Ok(JustInTime::Provisioned(Box::new(provisioned)))
    }

    fn registered_event(&self, certificate: &CertificateRecord, ca: &str, registered_at: f64) {
        let topic = format!("$aws/events/certificates/registered/{ca}");
        let broker = &self.inner.broker;
        if !broker.wants(&topic) {
            return;
        }
        let payload = json!({
            "certificateId": certificate.certificate_id,
            "caCertificateId": ca,
            "timestamp": epoch_millis(),
            "certificateStatus": CertificateStatus::PendingActivation.as_str(),
            "awsAccountId": self.inner.account_id,
            "certificateRegistrationTimestamp": (registered_at * 1000.0) as u64,
        });
        broker.publish_event(topic, payload.to_string());
    }
}

/// The PEM text of a DER certificate.
fn pem_of(der: &[u8]) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}
