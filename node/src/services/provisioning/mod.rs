//! Fleet provisioning: devices that arrive with a claim certificate, a CSR or a certificate of
//! their maker's CA leave with their own certificate, a thing and a policy.
//!
//! - `template`: the template grammar, checked when saved, evaluated per device (pure);
//! - `templates`: the templates' records and versions (the control plane);
//! - `apply`: a template's resources staged by the registry, certificate and policy services
//!   into one transaction, all or nothing;
//! - `claims`: ownership tokens of certificates made for provisioning, temporary claim
//!   certificates, and the sweep of those that lapse unused;
//! - `device`: the operations devices provision themselves with, and RegisterThing over HTTP;
//! - `hook`: the pre-provisioning webhook;
//! - `topics`: the MQTT API (`$aws/certificates/...`, `$aws/provisioning-templates/...`);
//! - `jit`: just-in-time registration and provisioning of certificates of registered CAs.

mod apply;
pub mod claims;
pub mod device;
mod hook;
pub mod jit;
pub mod template;
pub mod templates;
pub mod topics;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::broker::{Broker, TopicService};
use crate::config::ProvisioningConfig;
use crate::metrics::ProvisioningMetrics;
use crate::services::arn::Arns;
use crate::services::certs::Certificates;
use crate::services::policies::Policies;
use crate::services::records::Records;
use crate::services::registry::Registry;
use crate::supervisor::Supervisor;
pub use apply::Provisioned;
use templates::Templates;

/// What provisioning is built from.
pub struct Parts {
    pub records: Records,
    pub arns: Arns,
    pub registry: Registry,
    pub certs: Certificates,
    pub policies: Policies,
    pub broker: Broker,
    pub config: ProvisioningConfig,
    pub account_id: String,
    pub region: String,
    pub metrics: ProvisioningMetrics,
}

pub(crate) struct Inner {
    records: Records,
    templates: Templates,
    registry: Registry,
    certs: Certificates,
    policies: Policies,
    broker: Broker,
    config: ProvisioningConfig,
    account_id: String,
    region: String,
    metrics: ProvisioningMetrics,
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// The CAs that register certificates just in time, and when they were read.
    #[allow(clippy::type_complexity)]
    jit_cas: parking_lot::Mutex<
        Option<(
            std::time::Instant,
            Arc<Vec<crate::services::certs::CaCertificateRecord>>,
        )>,
    >,
}

/// Fleet provisioning of one account.
#[derive(Clone)]
pub struct Provisioning {
    inner: Arc<Inner>,
}

impl Provisioning {
    pub fn new(parts: Parts, shutdown: tokio::sync::watch::Receiver<bool>) -> Self {
        Self {
            inner: Arc::new(Inner {
                templates: Templates::new(parts.records.clone(), parts.arns.clone()),
                records: parts.records,
                registry: parts.registry,
                certs: parts.certs,
                policies: parts.policies,
                broker: parts.broker,
                config: parts.config,
                account_id: parts.account_id,
                region: parts.region,
                metrics: parts.metrics,
                shutdown,
                jit_cas: parking_lot::Mutex::new(None),
            }),
        }
    }

    /// The templates' control plane.
    pub fn templates(&self) -> &Templates {
        &self.inner.templates
    }

    pub fn certs(&self) -> &Certificates {
        &self.inner.certs
    }

    pub fn metrics(&self) -> &ProvisioningMetrics {
        &self.inner.metrics
    }

    /// The template `name`'s ARN.
    pub fn template_arn(&self, name: &str) -> String {
        self.inner.templates.arn(name)
    }

    /// DeleteProvisioningTemplate, refused while a CA's registration config names the template.
    pub async fn delete_template(&self, name: &str) -> crate::services::error::Result<()> {
        let user = self.ca_using_template(name).await?;
        self.inner.templates.delete(name, user.as_deref()).await
    }

    /// The parameters that name pseudo-parameters the provisioning supplies.
    fn pseudo(&self, certificate_id: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                template::CERTIFICATE_ID.to_owned(),
                certificate_id.to_owned(),
            ),
            ("AWS::Region".to_owned(), self.inner.region.clone()),
            ("AWS::AccountId".to_owned(), self.inner.account_id.clone()),
        ])
    }
}

impl crate::services::Service for Provisioning {
    fn name(&self) -> &'static str {
        "provisioning"
    }

    fn topics(self: Arc<Self>) -> Option<Arc<dyn TopicService>> {
        Some(Arc::new(topics::ProvisioningTopics::new(
            self.as_ref().clone(),
        )))
    }

    fn start(self: Arc<Self>, tasks: &mut Supervisor) {
        let pool = Arc::clone(self.inner.certs.key_pool());
        tasks.spawn(tokio::spawn(pool.refill(self.inner.shutdown.clone())));
        tasks.spawn_critical(
            "provisioning-sweeper",
            claims::sweep(self.as_ref().clone(), self.inner.shutdown.clone()),
        );
    }
}
