//! Devices with client certificates: what a certificate may do when it connects, compiled from
//! the registry (the certificate, its CA, its policies, the thing it is attached to and that
//! thing's groups), and kept current while it stays connected: any change under `aws/` in the
//! store recompiles the live connections' access, and one that may no longer connect is cut.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::watch;

use super::certificates::{CaCertificateRecord, CertificateRecord};
use super::{Api, pki};
use crate::auth::permissions::{Access, Action, Permissions};
use crate::auth::policy::Policy;
use crate::mqtt::reason;

/// How long changes are gathered before the live connections are re-evaluated.
const SETTLE: Duration = Duration::from_millis(100);

struct LiveEntry {
    access: Weak<Access>,
    certificate: String,
    client_id: String,
}

/// The connections admitted by certificate that are still open.
#[derive(Default)]
pub struct LiveConnections {
    entries: Mutex<Vec<LiveEntry>>,
}

impl LiveConnections {
    pub(super) fn add(&self, access: &Arc<Access>, certificate: &str, client_id: &str) {
        let mut entries = self.entries.lock();
        entries.retain(|e| e.access.strong_count() > 0);
        entries.push(LiveEntry {
            access: Arc::downgrade(access),
            certificate: certificate.to_owned(),
            client_id: client_id.to_owned(),
        });
    }

    fn snapshot(&self) -> Vec<(Arc<Access>, String, String)> {
        let mut entries = self.entries.lock();
        entries.retain(|e| e.access.strong_count() > 0);
        entries
            .iter()
            .filter_map(|e| {
                Some((
                    e.access.upgrade()?,
                    e.certificate.clone(),
                    e.client_id.clone(),
                ))
            })
            .collect()
    }
}

fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

impl Api {
    /// The compiled permissions of certificate `id` connecting as `client_id` (empty for
    /// HTTPS), or the reason code that refuses the connection.
    pub(super) async fn device_permissions(
        &self,
        id: &str,
        client_id: &str,
    ) -> Result<Permissions, u8> {
        let unavailable = |e: super::error::AwsError| {
            tracing::warn!(error = %e.message, "cannot read the registry to admit a device");
            reason::SERVER_UNAVAILABLE
        };
        if id.is_empty() {
            return Err(reason::NOT_AUTHORIZED);
        }
        let Some(certificate) = self
            .records
            .get::<CertificateRecord>(&super::certificates::certificate_key(id))
            .await
            .map_err(unavailable)?
        else {
            tracing::debug!(certificate = id, "unregistered client certificate");
            return Err(reason::NOT_AUTHORIZED);
        };
        let certificate = certificate.value;
        let now = now_seconds();
        if certificate.status != "ACTIVE"
            || now < certificate.not_before
            || now > certificate.not_after
        {
            tracing::debug!(certificate = id, status = %certificate.status, "certificate may not connect");
            return Err(reason::NOT_AUTHORIZED);
        }
        if let Some(ca) = &certificate.ca_certificate_id
            && Some(ca) != self.own_ca_id.as_ref()
        {
            let active = self
                .records
                .get::<CaCertificateRecord>(&super::certificates::ca_key(ca))
                .await
                .map_err(unavailable)?
                .is_some_and(|c| c.value.status == "ACTIVE");
            if !active {
                tracing::debug!(certificate = id, ca = %ca, "the certificate's CA is not active");
                return Err(reason::NOT_AUTHORIZED);
            }
        }
        let arn = self.arn(&format!("cert/{id}"));
        let (mut context, thing) = if client_id.is_empty() {
            // HTTPS publish has no client id: the thing is the one the certificate is
            // attached to, if there is only one.
            match self.sole_thing(&arn).await.map_err(unavailable)? {
                Some(thing) => {
                    let (mut context, thing) = self
                        .connection_context(Some(&thing), Some(&arn))
                        .await
                        .map_err(unavailable)?;
                    context.remove("iot:ClientId");
                    (context, thing)
                }
                None => {
                    let mut context = crate::auth::policy::Context::new();
                    context.set("iot:Connection.Thing.IsAttached", "false");
                    (context, None)
                }
            }
        } else {
            self.connection_context(Some(client_id), Some(&arn))
                .await
                .map_err(unavailable)?
        };
        if let Ok(parsed) = pki::parse(&certificate.certificate_pem) {
            for (name, value) in pki::name_fields(&parsed.der) {
                context.set(format!("iot:Certificate.{name}"), value);
            }
        }
        let names = self
            .effective_policy_names(Some(&arn), thing.as_deref())
            .await
            .map_err(unavailable)?;
        let mut policies = Vec::new();
        for (name, document) in self.documents(&names).await.map_err(unavailable)? {
            match Policy::parse(&document) {
                Ok(policy) => policies.push(policy),
                Err(e) => {
                    tracing::warn!(policy = %name, error = %e, "stored policy is unreadable; ignored")
                }
            }
        }
        Ok(Permissions::compile(&policies, &context, &self.arn("")))
    }

    /// Re-evaluates every live certificate connection: new permissions, or the end of it.
    async fn refresh_live(&self) {
        for (access, certificate, client_id) in self.live.snapshot() {
            match self.device_permissions(&certificate, &client_id).await {
                Ok(permissions) if permissions.allows(Action::Connect, &client_id) => {
                    access.replace(permissions);
                }
                Err(reason::SERVER_UNAVAILABLE) => {}
                _ => {
                    tracing::info!(certificate = %certificate, client_id = %client_id, "access revoked");
                    access.revoke();
                }
            }
        }
    }
}

/// Follows registry changes and re-evaluates live device connections after each burst.
pub async fn follow_registry(api: Arc<Api>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let mut changes = match api.records.watch("aws/") {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e.message, "cannot watch the registry; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                next = changes.next() => match next {
                    Some(Ok(_)) => {
                        // Gather the rest of the burst.
                        while let Ok(Some(Ok(_))) = tokio::time::timeout(SETTLE, changes.next()).await {}
                        api.refresh_live().await;
                    }
                    // Behind the compaction point or closed: start over from now, after a
                    // full re-evaluation so that nothing missed stays in force.
                    Some(Err(_)) | None => {
                        api.refresh_live().await;
                        break;
                    }
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}
