//! MQTT over TLS with a client certificate, as AWS IoT devices connect: the handshake proves
//! the device holds the key of the certificate it presents; whether that certificate may
//! connect (registered, ACTIVE, its CA ACTIVE, within its validity) and what it may do is the
//! [`Gate`]'s decision at CONNECT, against the registry, so that a certificate created a
//! moment ago on any node is known.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::http::{ConnectionInfo, serve_http};
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

/// The protocols one TLS port serves, by ALPN, as AWS IoT Core's port 443 does.
pub const ALPN_MQTT_CERTIFICATE: &[u8] = b"x-amzn-mqtt-ca";
pub const ALPN_MQTT_CUSTOM_AUTH: &[u8] = b"mqtt";
pub const ALPN_HTTP_CERTIFICATE: &[u8] = b"x-amzn-http-ca";
const ALPN_MULTIPLEXED: [&[u8]; 5] = [
    ALPN_MQTT_CERTIFICATE,
    ALPN_MQTT_CUSTOM_AUTH,
    ALPN_HTTP_CERTIFICATE,
    b"h2",
    b"http/1.1",
];

/// What a TLS port serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPort {
    /// MQTT from devices with a client certificate (8883), whatever ALPN they offer.
    Mqtt,
    /// Everything on one port (443), chosen by ALPN: MQTT with a certificate or with custom
    /// authentication, HTTPS publish with a certificate, and HTTP (the APIs, HTTPS publish,
    /// MQTT over WebSocket) for `h2`, `http/1.1` or no ALPN. A client certificate is optional.
    Multiplexed,
}

/// Where the gateway hands each connection once it knows what the client speaks.
pub trait Devices: Send + Sync + 'static {
    /// The gate of an MQTT client that proved `certificate`.
    fn certificate_gate(&self, certificate: PresentedCertificate) -> Arc<dyn Gate>;
    /// The gate of an MQTT client that authenticates with a custom authorizer.
    fn custom_auth_gate(&self, info: ConnectionInfo) -> Arc<dyn Gate>;
    /// What answers HTTP: the APIs, HTTPS publish and WebSocket upgrades.
    fn router(&self) -> axum::Router;
}

/// The client certificate a device proved it holds the key of, and the server name it asked
/// for: what a certificate the registry does not know yet is registered by (JITR/JITP).
#[derive(Debug, Clone)]
pub struct PresentedCertificate {
    pub id: String,
    pub der: Vec<u8>,
    pub server_name: Option<String>,
}

/// Accepts any client certificate whose holder proves its key; the registry decides the rest.
#[derive(Debug)]
struct RegistryDecides {
    algorithms: WebPkiSupportedAlgorithms,
    mandatory: bool,
}

impl ClientCertVerifier for RegistryDecides {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

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

/// A device port's TLS: TLS 1.2 and 1.3, the server certificate `served` (which may change
/// under it), a client certificate as `port` needs it.
pub fn device_server_config(
    served: Arc<super::server_cert::ServerCertificate>,
    port: TlsPort,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(RegistryDecides {
        algorithms: provider.signature_verification_algorithms,
        mandatory: port == TlsPort::Mqtt,
    });
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(served);
    if port == TlsPort::Multiplexed {
        config.alpn_protocols = ALPN_MULTIPLEXED.iter().map(|p| p.to_vec()).collect();
    }
    Ok(Arc::new(config))
}

/// Accepts TLS connections until `shutdown` turns true and hands each to what it negotiated.
pub async fn run_tls_listener(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    port: TlsPort,
    broker: Broker,
    devices: Arc<dyn Devices>,
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
                    let devices = Arc::clone(&devices);
                    let shutdown = shutdown.clone();
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
                        serve_session(stream, peer, port, broker, devices, shutdown).await;
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

async fn serve_session(
    stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    peer: SocketAddr,
    port: TlsPort,
    broker: Broker,
    devices: Arc<dyn Devices>,
    shutdown: watch::Receiver<bool>,
) {
    let session = &stream.get_ref().1;
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let presented = session.peer_certificates().and_then(|chain| chain.first());
    let certificate_id = presented.map(|der| crate::auth::identity::x509::certificate_id(der));
    let certificate_der = presented.map(|der| der.as_ref().to_vec());
    let server_name = session.server_name().map(str::to_owned);
    let info = ConnectionInfo::new(peer, certificate_id, server_name, None);
    let mqtt_with_certificate =
        port == TlsPort::Mqtt || alpn.as_deref() == Some(ALPN_MQTT_CERTIFICATE);
    let certificate_required =
        mqtt_with_certificate || alpn.as_deref() == Some(ALPN_HTTP_CERTIFICATE);
    if certificate_required && info.certificate_id.is_none() {
        broker.metrics().packet_error("tls_no_client_certificate");
        tracing::debug!(%peer, "no client certificate where one is required");
        return;
    }
    if mqtt_with_certificate {
        let gate = devices.certificate_gate(PresentedCertificate {
            id: info.certificate_id.clone().unwrap_or_default(),
            der: certificate_der.unwrap_or_default(),
            server_name: info.server_name.clone(),
        });
        let stream = BufferedStream::new(stream);
        serve_connection(stream, broker, Admission::Gated(gate), Some(peer.ip())).await;
    } else if alpn.as_deref() == Some(ALPN_MQTT_CUSTOM_AUTH) {
        let gate = devices.custom_auth_gate(info);
        let stream = BufferedStream::new(stream);
        serve_connection(stream, broker, Admission::Gated(gate), Some(peer.ip())).await;
    } else {
        serve_http(stream, devices.router(), info, shutdown).await;
    }
}
