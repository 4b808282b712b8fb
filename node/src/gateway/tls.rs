//! MQTT over TLS with a client certificate, as AWS IoT devices connect: the handshake proves
//! the device holds the key of the certificate it presents; whether that certificate may
//! connect (registered, ACTIVE, its CA ACTIVE, within its validity) and what it may do is the
//! [`Gate`]'s decision at CONNECT, against the registry, so that a certificate created a
//! moment ago on any node is known.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::{Admission, BufferedStream, Gate, serve_connection};
use crate::broker::Broker;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {message}")]
    Pem {
        what: &'static str,
        path: std::path::PathBuf,
        message: String,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Accepts any client certificate whose holder proves its key; the registry decides the rest.
#[derive(Debug)]
struct RegistryDecides {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for RegistryDecides {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn pem_error(
    what: &'static str,
    path: &Path,
) -> impl Fn(rustls::pki_types::pem::Error) -> TlsError {
    move |e| TlsError::Pem {
        what,
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// The device listener's TLS: TLS 1.2 and 1.3, a client certificate required, the server
/// certificate and key from PEM files.
pub fn device_server_config(
    certificate: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = CertificateDer::pem_file_iter(certificate)
        .map_err(pem_error("server certificate", certificate))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error("server certificate", certificate))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(pem_error("server key", key))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(RegistryDecides {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Accepts TLS connections until `shutdown` turns true; each authenticated device's CONNECT
/// goes through `gate`.
pub async fn run_tls_listener(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    broker: Broker,
    gate: Arc<dyn Gate>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(config);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let acceptor = acceptor.clone();
                    let broker = broker.clone();
                    let gate = Arc::clone(&gate);
                    tokio::spawn(async move {
                        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                broker.metrics().packet_error("tls_handshake");
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                broker.metrics().packet_error("tls_handshake");
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                        let principal = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .map(|der| crate::aws::pki::certificate_id(der))
                            .unwrap_or_default();
                        let admission = Admission::Authenticated { principal, gate };
                        serve_connection(BufferedStream::new(stream), broker, admission, Some(peer.ip())).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}
