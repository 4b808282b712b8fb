//! The certificate devices see on the TLS listeners. It is swapped in place when its files
//! change (a Secret renewed by cert-manager or by its owner), so a renewal reaches new
//! connections without a restart; connections already open keep the one they shook hands
//! with.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use super::tls::TlsError;
use crate::metrics::TlsMetrics;

/// The certificate and key files, PEM.
#[derive(Debug, Clone)]
pub struct ServerFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

/// What is served now, as `GET /cluster/tls` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadedServer {
    /// SHA-256 of the certificate's DER, in hex.
    pub certificate_sha256: String,
    /// When it ends, in Unix seconds.
    pub not_after: i64,
}

struct Loaded {
    key: Arc<CertifiedKey>,
    report: LoadedServer,
}

/// The server certificate every TLS handshake is given.
pub struct ServerCertificate {
    current: RwLock<Loaded>,
}

impl std::fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("loaded", &self.current.read().report)
            .finish()
    }
}

impl ServerCertificate {
    pub fn load(files: &ServerFiles) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(ServerCertificate {
            current: RwLock::new(files.load()?),
        }))
    }

    pub fn loaded(&self) -> LoadedServer {
        self.current.read().report.clone()
    }

    fn replace(&self, loaded: Loaded) {
        *self.current.write() = loaded;
    }
}

impl ResolvesServerCert for ServerCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read().key))
    }
}

fn pem_error(what: &'static str, path: &Path, message: String) -> TlsError {
    TlsError::Pem {
        what,
        path: path.to_owned(),
        message,
    }
}

impl ServerFiles {
    fn read(&self) -> Option<[Vec<u8>; 2]> {
        Some([
            std::fs::read(&self.certificate).ok()?,
            std::fs::read(&self.key).ok()?,
        ])
    }

    fn load(&self) -> Result<Loaded, TlsError> {
        let certificate = &self.certificate;
        let chain = CertificateDer::pem_file_iter(certificate)
            .map_err(|e| pem_error("server certificate", certificate, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error("server certificate", certificate, e.to_string()))?;
        let Some(leaf) = chain.first() else {
            return Err(pem_error(
                "server certificate",
                certificate,
                "no certificate found".into(),
            ));
        };
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf).map_err(|e| {
            pem_error(
                "server certificate",
                certificate,
                format!("not an X.509 certificate: {e}"),
            )
        })?;
        let report = LoadedServer {
            certificate_sha256: crate::auth::identity::x509::certificate_id(leaf),
            not_after: parsed.validity().not_after.timestamp(),
        };
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| pem_error("server key", &self.key, e.to_string()))?;
        let provider = rustls::crypto::ring::default_provider();
        let key = CertifiedKey::from_der(chain, key, &provider)?;
        Ok(Loaded {
            key: Arc::new(key),
            report,
        })
    }
}

/// Loads the server certificate again whenever its files change (read every `check`), until
/// `shutdown`. A pair that does not load (a key that does not match, a half-written file)
/// leaves the previous one in use and counts as an error.
pub async fn follow(
    files: ServerFiles,
    served: Arc<ServerCertificate>,
    metrics: TlsMetrics,
    check: Duration,
    shutdown: watch::Receiver<bool>,
) {
    crate::file_watch::on_change(|| files.read(), check, shutdown, || {
        let outcome = match files.load() {
            Ok(loaded) => {
                metrics.set_expiry("server", loaded.report.not_after);
                served.replace(loaded);
                tracing::info!(cert = %files.certificate.display(), "server certificate reloaded");
                "ok"
            }
            Err(e) => {
                tracing::error!(error = %e, "the changed server certificate does not load; the previous one stays in use");
                "error"
            }
        };
        metrics.reloaded("server", outcome);
    })
    .await;
}
