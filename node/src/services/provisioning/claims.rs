//! What lets a device that is not provisioned yet ask to be: ownership tokens (proof that the
//! caller holds a certificate made for it moments ago), temporary claim certificates
//! (CreateProvisioningClaim), and the sweep that removes those left unused: an expired token,
//! an expired claim, and a certificate made for provisioning that no template activated or
//! attached within the token's life.
//!
//! Each lapses at a `provisioning/expiry/{deadline}/{certificate}` key written with it; the
//! sweeper runs on every node and acts only on the store's leader, each removal one
//! transaction conditioned on what it read, so two sweepers never remove anything twice.

use std::time::Duration;

use halyard_raft::Op;
use serde::{Deserialize, Serialize};

use super::Provisioning;
use crate::clock::epoch_millis;
use crate::services::certs::{CertificateRecord, CertificateStatus};
use crate::services::error::{Error, Result};
use crate::services::links;
use crate::services::records::Batch;
use crate::store::keys;

/// How long a claim certificate of CreateProvisioningClaim is valid.
pub const CLAIM_LIFETIME_MS: u64 = 5 * 60 * 1000;
/// How often the sweeper looks for what lapsed.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Most lapsed entries removed in one round.
const SWEEP_BATCH: usize = 500;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub certificate_id: String,
    pub expires_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimRecord {
    pub certificate_id: String,
    pub template_name: String,
    pub expires_ms: u64,
}

/// What lapses at an expiry key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Lapse {
    /// A certificate made for provisioning, and the ownership token that proves it.
    Token { token: String },
    /// A claim certificate.
    Claim,
}

/// A new ownership token: opaque, unguessable.
pub fn new_token() -> String {
    let halves: [[u8; 32]; 2] = [rand::random(), rand::random()];
    let mut token = String::with_capacity(128);
    for half in halves {
        keys::push_hex(&mut token, &half);
    }
    token
}

impl Provisioning {
    /// Stages `certificate` (made for provisioning, PENDING_ACTIVATION) with a new ownership
    /// token into `batch`; the token.
    pub(super) fn stage_pending(
        &self,
        certificate: &CertificateRecord,
        batch: &mut Batch,
    ) -> Result<String> {
        let token = new_token();
        let expires_ms = epoch_millis()
            + self
                .inner
                .config
                .ownership_token_seconds
                .saturating_mul(1000);
        self.inner.certs.stage_new(certificate, batch)?;
        batch.put(
            &keys::ownership_token(&token),
            &TokenRecord {
                certificate_id: certificate.certificate_id.clone(),
                expires_ms,
            },
        )?;
        batch.put(
            &keys::provisioning_expiry(expires_ms, &certificate.certificate_id),
            &Lapse::Token {
                token: token.clone(),
            },
        )?;
        Ok(token)
    }

    /// The certificate an ownership token proves, if it is valid, and the token to spend.
    pub(super) async fn token_certificate(
        &self,
        token: &str,
    ) -> Result<Option<(String, super::apply::SpentToken)>> {
        if token.is_empty() || token.len() > 256 {
            return Ok(None);
        }
        let key = keys::ownership_token(token);
        let record = self.inner.records.get::<TokenRecord>(&key).await?;
        Ok(record
            .filter(|r| r.value.expires_ms > epoch_millis())
            .map(|r| {
                let spent = super::apply::SpentToken {
                    key,
                    revision: r.mod_revision,
                };
                (r.value.certificate_id, spent)
            }))
    }

    /// Stores a claim certificate of `template`.
    pub(super) async fn store_claim(
        &self,
        certificate: &CertificateRecord,
        template: &str,
    ) -> Result<u64> {
        let expires_ms = epoch_millis() + CLAIM_LIFETIME_MS;
        let mut batch = Batch::default();
        // The claim's certificate is kept beside it, not among the account's certificates:
        // AWS does not list claims.
        let key = keys::provisioning_claim(&certificate.certificate_id);
        batch.read(&key, 0);
        batch.put(
            &key,
            &ClaimRecord {
                certificate_id: certificate.certificate_id.clone(),
                template_name: template.to_owned(),
                expires_ms,
            },
        )?;
        batch.put(
            &keys::provisioning_expiry(expires_ms, &certificate.certificate_id),
            &Lapse::Claim,
        )?;
        if !self.inner.records.commit(batch).await? {
            return Err(Error::conflict("The claim exists already; retry."));
        }
        Ok(expires_ms)
    }

    /// The template a valid claim certificate `id` may provision with.
    pub async fn claim_template(&self, certificate_id: &str) -> Result<Option<String>> {
        let record = self
            .inner
            .records
            .get::<ClaimRecord>(&keys::provisioning_claim(certificate_id))
            .await?;
        Ok(record
            .map(|r| r.value)
            .filter(|r| r.expires_ms > epoch_millis())
            .map(|r| r.template_name))
    }

    /// Removes what lapsed before `now`; how many entries were handled.
    pub async fn sweep_once(&self, now: u64) -> Result<usize> {
        let records = &self.inner.records;
        let (due, _) = records
            .page::<Lapse>(keys::PROVISIONING_EXPIRIES, None, SWEEP_BATCH)
            .await?;
        let mut handled = 0;
        for (key, lapse) in due {
            let Some((deadline, certificate_id)) = keys::parse_provisioning_expiry(&key) else {
                continue;
            };
            if deadline > now {
                break;
            }
            let mut batch = Batch::default();
            let Some(marker) = records.get::<Lapse>(&key).await? else {
                continue;
            };
            batch.read(&key, marker.mod_revision);
            batch.ops([Op::delete(key.clone())]);
            match lapse {
                Lapse::Token { token } => {
                    batch.ops([Op::delete(keys::ownership_token(&token))]);
                    let certificate_key = keys::certificate(certificate_id);
                    if let Some(certificate) =
                        records.get::<CertificateRecord>(&certificate_key).await?
                    {
                        let arn = self.inner.certs.arn(certificate_id);
                        let unused = certificate.value.status
                            == CertificateStatus::PendingActivation
                            && links::things_of(records, &arn, 1).await?.is_empty()
                            && links::policies_of(records, &arn).await?.is_empty();
                        if unused {
                            batch.read(&certificate_key, certificate.mod_revision);
                            batch.ops([Op::delete(certificate_key.clone())]);
                        }
                    }
                }
                Lapse::Claim => {
                    batch.ops([Op::delete(keys::provisioning_claim(certificate_id))]);
                }
            }
            if records.commit(batch).await? {
                self.inner.metrics.swept.inc();
                handled += 1;
            }
        }
        Ok(handled)
    }
}

/// What the key pool had handed out when last reported, to export the difference.
#[derive(Default)]
struct KeyCounts {
    from_pool: u64,
    on_demand: u64,
}

impl KeyCounts {
    fn report(&mut self, provisioning: &Provisioning) {
        use std::sync::atomic::Ordering;
        let metrics = &provisioning.inner.metrics;
        let pool = provisioning.inner.certs.key_pool();
        metrics.keys_pooled.set(pool.available() as i64);
        let from_pool = pool.from_pool.load(Ordering::Relaxed);
        let on_demand = pool.on_demand.load(Ordering::Relaxed);
        metrics
            .keys_taken
            .with_label_values(&["pool"])
            .inc_by(from_pool.saturating_sub(self.from_pool));
        metrics
            .keys_taken
            .with_label_values(&["on_demand"])
            .inc_by(on_demand.saturating_sub(self.on_demand));
        self.from_pool = from_pool;
        self.on_demand = on_demand;
    }
}

/// The sweeper of one node: acts while this node leads the store; every node reports its
/// key pool.
pub async fn sweep(provisioning: Provisioning, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let store = provisioning.inner.records.store().clone();
    let mut keys = KeyCounts::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        keys.report(&provisioning);
        if store.status().leader != Some(store.id()) {
            continue;
        }
        if let Err(e) = provisioning.sweep_once(epoch_millis()).await {
            tracing::debug!(error = %e, "provisioning sweep postponed");
        }
    }
}
