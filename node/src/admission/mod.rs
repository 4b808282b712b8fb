//! Admission of devices: what a client certificate or a custom authorizer lets a connection
//! do, compiled once when it connects and kept current while it stays connected.
//!
//! A certificate's access is compiled from the registry (the certificate, its CA, its
//! policies, the thing it is attached to and that thing's groups); `live` follows the
//! registry and recompiles the access of the connections a change may concern, cutting those
//! that may no longer connect. An authorizer's access comes from its function's answer and is
//! refreshed and ended as that answer says (`custom_auth` runs the authorizer,
//! `authorizer_gate` admits through it).

mod authorizer_gate;
pub mod custom_auth;
mod live;

pub use live::follow_registry;

use std::sync::Arc;

use crate::auth::permissions::{Access, Permissions};
use crate::auth::policy::{Context, Policy};
use crate::gateway::http::ConnectionInfo;
use crate::gateway::tls::PresentedCertificate;
use crate::gateway::{ConnectCredentials, Gate, GateFuture};
use crate::mqtt::reason;
use crate::services::arn::{Arns, Kind};
use crate::services::certs::pki;
use crate::services::certs::{CertificateStatus, Certificates};
use crate::services::error::Error;
use crate::services::links;
use crate::services::policies::Policies;
use crate::services::provisioning::Provisioning;
use crate::services::provisioning::jit::{JustInTime, claim_policy};
use crate::services::records::Records;
use authorizer_gate::AuthorizerGate;
use custom_auth::{Credentials, CustomAuth};
use live::LiveConnections;

/// Decides what devices may do, and keeps it current.
pub struct DeviceAdmission {
    records: Records,
    arns: Arns,
    certs: Certificates,
    policies: Policies,
    custom: Arc<CustomAuth>,
    provisioning: Provisioning,
    live: LiveConnections,
}

impl DeviceAdmission {
    pub fn new(
        records: Records,
        arns: Arns,
        certs: Certificates,
        policies: Policies,
        custom: Arc<CustomAuth>,
        provisioning: Provisioning,
    ) -> Self {
        Self {
            records,
            arns,
            certs,
            policies,
            custom,
            provisioning,
            live: LiveConnections::default(),
        }
    }

    /// The gate of a connection that proved `certificate`.
    pub fn certificate_gate(self: &Arc<Self>, certificate: PresentedCertificate) -> Arc<dyn Gate> {
        Arc::new(CertificateGate {
            admission: Arc::clone(self),
            certificate,
        })
    }

    /// Admits a certificate the registry did not know if a CA with auto-registration
    /// provisions it now (JITP); otherwise the connection stays refused.
    async fn admit_just_in_time(
        &self,
        certificate: &PresentedCertificate,
        client_id: &str,
    ) -> Result<Arc<Access>, u8> {
        if certificate.der.is_empty() {
            return Err(reason::NOT_AUTHORIZED);
        }
        match self
            .provisioning
            .register_just_in_time(&certificate.der, certificate.server_name.as_deref())
            .await
        {
            Ok(JustInTime::Provisioned(_)) => {
                self.admit_certificate(&certificate.id, client_id).await
            }
            Ok(JustInTime::NotEligible | JustInTime::Registered) => Err(reason::NOT_AUTHORIZED),
            // Another connection of the same device may have provisioned it meanwhile.
            Err(Error::Conflict(_)) => self.admit_certificate(&certificate.id, client_id).await,
            Err(e) => {
                tracing::warn!(certificate = %certificate.id, error = %e, "just-in-time provisioning failed");
                Err(reason::NOT_AUTHORIZED)
            }
        }
    }

    /// The gate of a connection that is admitted through a custom authorizer, from what its
    /// HTTP upgrade carried and then its CONNECT.
    pub fn authorizer_gate(
        self: &Arc<Self>,
        info: ConnectionInfo,
        credentials: Credentials,
    ) -> Arc<dyn Gate> {
        Arc::new(AuthorizerGate::new(Arc::clone(self), info, credentials))
    }

    /// The access of certificate `id` connecting as `client_id`, kept current while it lives.
    async fn admit_certificate(&self, id: &str, client_id: &str) -> Result<Arc<Access>, u8> {
        let (permissions, policies) = self.device_permissions(id, client_id).await?;
        let access = Access::new(permissions, id);
        self.live.add(&access, id, client_id, policies);
        Ok(access)
    }

    /// The compiled permissions of certificate `id` connecting as `client_id` (empty for
    /// HTTPS) and the names of the policies they come from, or the reason code that refuses
    /// the connection.
    pub async fn device_permissions(
        &self,
        id: &str,
        client_id: &str,
    ) -> Result<(Permissions, Vec<String>), u8> {
        if id.is_empty() {
            return Err(reason::NOT_AUTHORIZED);
        }
        let read = self
            .records
            .settled(self.read_permissions(id, client_id))
            .await;
        match read {
            Ok(Ok(Some(admitted))) => Ok(admitted),
            Ok(Ok(None)) => Err(reason::NOT_AUTHORIZED),
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(error = %e, "cannot read the registry to admit a device");
                Err(reason::SERVER_UNAVAILABLE)
            }
        }
    }

    /// What certificate `id` may do connected as `client_id`; `None` if it may not connect.
    async fn read_permissions(
        &self,
        id: &str,
        client_id: &str,
    ) -> Result<Option<(Permissions, Vec<String>)>, Error> {
        let Some(certificate) = self.certs.find(id).await? else {
            if let Some(template) = self.provisioning.claim_template(id).await? {
                return Ok(Some(self.claim_permissions(&template)));
            }
            tracing::debug!(certificate = id, "unregistered client certificate");
            return Ok(None);
        };
        let now = crate::clock::epoch_seconds_signed();
        if certificate.status != CertificateStatus::Active
            || now < certificate.not_before
            || now > certificate.not_after
        {
            tracing::debug!(
                certificate = id,
                status = certificate.status.as_str(),
                "certificate may not connect"
            );
            return Ok(None);
        }
        if !self.certs.vouched_for(&certificate).await? {
            tracing::debug!(certificate = id, "the certificate's CA is not active");
            return Ok(None);
        }
        let arn = self.arns.of(Kind::Certificate, id);
        let (mut context, thing) = if client_id.is_empty() {
            // HTTPS publish has no client id: the thing is the one the certificate is
            // attached to, if there is only one.
            match links::sole_thing(&self.records, &arn).await? {
                Some(thing) => {
                    let (mut context, thing) = self
                        .policies
                        .connection_context(Some(&thing), Some(&arn))
                        .await?;
                    context.remove("iot:ClientId");
                    (context, thing)
                }
                None => {
                    let mut context = Context::new();
                    context.set("iot:Connection.Thing.IsAttached", "false");
                    (context, None)
                }
            }
        } else {
            self.policies
                .connection_context(Some(client_id), Some(&arn))
                .await?
        };
        if let Ok(parsed) = pki::parse(&certificate.certificate_pem) {
            for (name, value) in pki::name_fields(&parsed.der) {
                context.set(format!("iot:Certificate.{name}"), value);
            }
        }
        let names = self
            .policies
            .effective_names(Some(&arn), thing.as_deref())
            .await?;
        let mut policies = Vec::new();
        for (name, document) in self.policies.documents(&names).await? {
            match Policy::parse(&document) {
                Ok(policy) => policies.push(policy),
                Err(e) => {
                    tracing::warn!(policy = %name, error = %e, "stored policy is unreadable; ignored")
                }
            }
        }
        Ok(Some((
            Permissions::compile(&policies, &context, self.arns.account()),
            names,
        )))
    }
}

impl DeviceAdmission {
    /// What a temporary claim certificate of `template` may do: provision with it, no more.
    fn claim_permissions(&self, template: &str) -> (Permissions, Vec<String>) {
        let document = claim_policy(self.arns.account(), template);
        let policies: Vec<Policy> = Policy::parse(&document).into_iter().collect();
        (
            Permissions::compile(&policies, &Context::new(), self.arns.account()),
            vec![format!("provisioning-claim/{template}")],
        )
    }
}

/// Admits the holder of one client certificate.
struct CertificateGate {
    admission: Arc<DeviceAdmission>,
    certificate: PresentedCertificate,
}

impl Gate for CertificateGate {
    fn admit<'a>(&'a self, connect: ConnectCredentials<'a>) -> GateFuture<'a> {
        Box::pin(async move {
            let admitted = self
                .admission
                .admit_certificate(&self.certificate.id, connect.client_id)
                .await;
            match admitted {
                Err(reason::NOT_AUTHORIZED) => {
                    self.admission
                        .admit_just_in_time(&self.certificate, connect.client_id)
                        .await
                }
                other => other,
            }
        })
    }
}

/// Admits a client whose upgrade request was signed with the node's access keys: an
/// administrator, allowed everything.
pub struct SignedGate {
    pub access_key_id: String,
}

impl Gate for SignedGate {
    fn admit<'a>(&'a self, _: ConnectCredentials<'a>) -> GateFuture<'a> {
        let access = Access::new(Permissions::allow_all(), self.access_key_id.clone());
        Box::pin(async move { Ok(access) })
    }
}
