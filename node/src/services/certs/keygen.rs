//! The key pairs Halyard makes for devices (CreateKeysAndCertificate, over HTTP and MQTT): RSA
//! 2048 as AWS IoT makes them (PKCS#1 PEM, `BEGIN RSA PRIVATE KEY`), or EC P-256 by
//! configuration. An RSA key costs tens of milliseconds of a core, so a pool of keys is made
//! ahead of demand on the blocking threads and refilled as it is drawn on: a burst of devices
//! is served from it, and beyond it each key is made as it is asked for.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use tokio::sync::Notify;

use super::pki::PkiError;
use crate::config::KeyAlgorithm;

/// A device's new key pair.
pub struct DeviceKey {
    pub private_key_pem: String,
    pub public_key_pem: String,
    /// The public key as X.509's SubjectPublicKeyInfo, for the certificate.
    pub public_key_der: Vec<u8>,
}

/// Makes one key pair; CPU-bound, for a blocking thread.
pub fn generate(algorithm: KeyAlgorithm) -> Result<DeviceKey, PkiError> {
    match algorithm {
        KeyAlgorithm::Rsa2048 => {
            let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)
                .map_err(|e| PkiError::Generate(e.to_string()))?;
            let private_key_pem = key
                .to_pkcs1_pem(LineEnding::LF)
                .map_err(|e| PkiError::Generate(e.to_string()))?
                .to_string();
            let public = key.to_public_key();
            Ok(DeviceKey {
                private_key_pem,
                public_key_pem: public
                    .to_public_key_pem(LineEnding::LF)
                    .map_err(|e| PkiError::Generate(e.to_string()))?,
                public_key_der: public
                    .to_public_key_der()
                    .map_err(|e| PkiError::Generate(e.to_string()))?
                    .as_bytes()
                    .to_vec(),
            })
        }
        KeyAlgorithm::EcP256 => {
            let key = rcgen::KeyPair::generate().map_err(|e| PkiError::Generate(e.to_string()))?;
            Ok(DeviceKey {
                private_key_pem: key.serialize_pem(),
                public_key_pem: key.public_key_pem(),
                public_key_der: rcgen::PublicKeyData::subject_public_key_info(&key),
            })
        }
    }
}

/// Key pairs made ahead of demand.
pub struct KeyPool {
    algorithm: KeyAlgorithm,
    capacity: usize,
    keys: Mutex<VecDeque<DeviceKey>>,
    drawn: Notify,
    /// Keys made on demand at once: no more than the cores, whatever the burst.
    making: tokio::sync::Semaphore,
    /// Keys handed out from the pool, and made on demand because it was empty.
    pub from_pool: AtomicU64,
    pub on_demand: AtomicU64,
}

impl KeyPool {
    pub fn new(algorithm: KeyAlgorithm, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            algorithm,
            capacity,
            keys: Mutex::new(VecDeque::with_capacity(capacity)),
            drawn: Notify::new(),
            making: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
            ),
            from_pool: AtomicU64::new(0),
            on_demand: AtomicU64::new(0),
        })
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// Keys waiting in the pool.
    pub fn available(&self) -> usize {
        self.keys.lock().len()
    }

    /// A key pair: from the pool if it has one, else made now.
    pub async fn take(&self) -> Result<DeviceKey, PkiError> {
        let pooled = self.keys.lock().pop_front();
        self.drawn.notify_one();
        if let Some(key) = pooled {
            self.from_pool.fetch_add(1, Ordering::Relaxed);
            return Ok(key);
        }
        self.on_demand.fetch_add(1, Ordering::Relaxed);
        let _turn = self
            .making
            .acquire()
            .await
            .map_err(|e| PkiError::Generate(e.to_string()))?;
        let algorithm = self.algorithm;
        tokio::task::spawn_blocking(move || generate(algorithm))
            .await
            .map_err(|e| PkiError::Generate(format!("key generation stopped: {e}")))?
    }

    /// Keeps the pool full until `shutdown`; one key at a time, so that it never takes more
    /// than one core from the node.
    pub async fn refill(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            while self.keys.lock().len() < self.capacity {
                let algorithm = self.algorithm;
                let made = tokio::select! {
                    made = tokio::task::spawn_blocking(move || generate(algorithm)) => made,
                    _ = shutdown.changed() => return,
                };
                match made {
                    Ok(Ok(key)) => self.keys.lock().push_back(key),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot make a key pair for the pool");
                        break;
                    }
                    Err(_) => return,
                }
            }
            tokio::select! {
                _ = self.drawn.notified() => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_keys_are_pkcs1_as_aws_returns_them() {
        let key = generate(KeyAlgorithm::Rsa2048).unwrap();
        assert!(
            key.private_key_pem
                .starts_with("-----BEGIN RSA PRIVATE KEY-----")
        );
        assert!(key.public_key_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert!(rcgen::SubjectPublicKeyInfo::from_der(&key.public_key_der).is_ok());
    }

    #[tokio::test]
    async fn the_pool_serves_made_keys_and_makes_more_on_demand() {
        let pool = KeyPool::new(KeyAlgorithm::EcP256, 2);
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let refill = tokio::spawn(Arc::clone(&pool).refill(shutdown));
        for _ in 0..200 {
            if pool.available() == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(pool.available(), 2);
        for _ in 0..3 {
            pool.take().await.unwrap();
        }
        assert!(pool.from_pool.load(Ordering::Relaxed) >= 2);
        let _ = stop.send(true);
        refill.await.unwrap();
    }
}
