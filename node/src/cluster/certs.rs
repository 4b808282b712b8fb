//! TLS between nodes: every node presents a certificate signed by the cluster CA and accepts
//! only peers that do the same.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::ClusterError;

/// The name every node certificate carries and every node dials.
pub const PEER_SERVER_NAME: &str = "halyard-peer";
pub const ALPN: &[u8] = b"halyard-raft/1";

fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ClusterError> {
    let pem_error = |message: String| ClusterError::Pem {
        what,
        path: path.to_owned(),
        message,
    };
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::Io(source) => ClusterError::Read {
            what,
            path: path.to_owned(),
            source,
        },
        other => pem_error(other.to_string()),
    })?;
    let certs = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error("no certificate found".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, ClusterError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::Io(source) => ClusterError::Read {
            what: "node key",
            path: path.to_owned(),
            source,
        },
        other => ClusterError::Pem {
            what: "node key",
            path: path.to_owned(),
            message: other.to_string(),
        },
    })
}

/// Client and server TLS for the peer endpoint.
pub struct PeerTls {
    pub server: rustls::ServerConfig,
    pub client: rustls::ClientConfig,
    /// When the node certificate ends, in Unix seconds.
    pub cert_not_after: i64,
    /// When the first trusted CA to end does, in Unix seconds.
    pub ca_not_after: i64,
    pub loaded: super::LoadedPeer,
}

/// When the certificate ends, in Unix seconds.
fn not_after(what: &'static str, path: &Path, der: &CertificateDer) -> Result<i64, ClusterError> {
    let (_, certificate) =
        x509_parser::parse_x509_certificate(der).map_err(|e| ClusterError::Pem {
            what,
            path: path.to_owned(),
            message: format!("not an X.509 certificate: {e}"),
        })?;
    Ok(certificate.validity().not_after.timestamp())
}

pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<PeerTls, ClusterError> {
    let tls = |e: rustls::Error| ClusterError::Tls(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    // During a CA rotation the bundle holds the old CA and the new one.
    let mut ca_not_after = i64::MAX;
    let mut trusted_ca_sha256 = Vec::new();
    for ca_cert in read_certs("cluster CA", ca)? {
        ca_not_after = ca_not_after.min(not_after("cluster CA", ca, &ca_cert)?);
        trusted_ca_sha256.push(crate::auth::identity::x509::certificate_id(&ca_cert));
        roots.add(ca_cert).map_err(tls)?;
    }
    let roots = Arc::new(roots);
    let chain = read_certs("node certificate", cert)?;
    let cert_not_after = not_after("node certificate", cert, &chain[0])?;
    let loaded = super::LoadedPeer {
        certificate_sha256: crate::auth::identity::x509::certificate_id(&chain[0]),
        not_after: cert_not_after,
        trusted_ca_sha256,
    };
    let key = read_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::clone(&roots),
        Arc::clone(&provider),
    )
    .build()
    .map_err(|e| ClusterError::Tls(e.to_string()))?;
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(tls)?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(tls)?;
    client.alpn_protocols = vec![ALPN.to_vec()];
    Ok(PeerTls {
        server,
        client,
        cert_not_after,
        ca_not_after,
        loaded,
    })
}

/// Issues a certificate and key for each node id into `out` (`node-<id>.pem`, `node-<id>.key`),
/// signed by the cluster CA in `out` (`ca.pem`, `ca.key`), which is created when absent. Keep
/// `ca.key` private; it is only needed to issue certificates for nodes added later.
pub fn generate(out: &Path, nodes: &[u64]) -> Result<Vec<PathBuf>, ClusterError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let gen_error = |e: rcgen::Error| ClusterError::Generate(e.to_string());
    std::fs::create_dir_all(out).map_err(|source| ClusterError::Write {
        path: out.to_owned(),
        source,
    })?;
    let mut written = Vec::new();
    let write = |written: &mut Vec<PathBuf>, name: String, contents: String, private: bool| {
        let path = out.join(name);
        write_file(&path, contents.as_bytes(), private).map_err(|source| ClusterError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(path);
        Ok::<(), ClusterError>(())
    };
    // The CA is its distinguished name and its key: a CA rebuilt from both signs certificates
    // that chain to the ca.pem written the first time.
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(gen_error)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Halyard cluster CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key_path = out.join("ca.key");
    let ca_key = if ca_key_path.exists() && out.join("ca.pem").exists() {
        let pem = std::fs::read_to_string(&ca_key_path).map_err(|source| ClusterError::Read {
            what: "cluster CA key",
            path: ca_key_path.clone(),
            source,
        })?;
        KeyPair::from_pem(&pem).map_err(|e| ClusterError::Pem {
            what: "cluster CA key",
            path: ca_key_path.clone(),
            message: e.to_string(),
        })?
    } else {
        let key = KeyPair::generate().map_err(gen_error)?;
        let ca_cert = ca_params.self_signed(&key).map_err(gen_error)?;
        write(&mut written, "ca.pem".into(), ca_cert.pem(), false)?;
        write(&mut written, "ca.key".into(), key.serialize_pem(), true)?;
        key
    };
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    for id in nodes {
        let key = KeyPair::generate().map_err(gen_error)?;
        let mut params = CertificateParams::new(vec![
            PEER_SERVER_NAME.to_owned(),
            format!("node-{id}"),
            "localhost".to_owned(),
        ])
        .map_err(gen_error)?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("halyard node {id}"));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &issuer).map_err(gen_error)?;
        write(&mut written, format!("node-{id}.pem"), cert.pem(), false)?;
        write(
            &mut written,
            format!("node-{id}.key"),
            key.serialize_pem(),
            true,
        )?;
    }
    Ok(written)
}

/// Private keys are readable by their owner only.
fn write_file(path: &Path, contents: &[u8], private: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        options.mode(0o600);
    }
    options.open(path)?.write_all(contents)
}

/// The files of the peer certificates, and what was last loaded from them.
pub struct PeerFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl PeerFiles {
    fn read(&self) -> Option<[Vec<u8>; 3]> {
        Some([
            std::fs::read(&self.ca).ok()?,
            std::fs::read(&self.cert).ok()?,
            std::fs::read(&self.key).ok()?,
        ])
    }

    pub fn load(&self) -> Result<PeerTls, ClusterError> {
        load(&self.ca, &self.cert, &self.key)
    }
}

/// Loads the peer certificates again whenever their files change (read every `check`), so
/// that certificates and the trusted CAs rotate without a restart, until `shutdown`.
/// Kubernetes updates a mounted Secret by swapping a symlink: a read sees all old or all new
/// files.
pub async fn follow_peer_files(
    files: PeerFiles,
    transport: Arc<super::QuicTransport>,
    metrics: crate::metrics::TlsMetrics,
    status: Arc<super::PeerTlsStatus>,
    check: std::time::Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    crate::file_watch::on_change(|| files.read(), check, shutdown, || {
        let outcome = match files.load().and_then(|tls| {
            let expiry = (tls.cert_not_after, tls.ca_not_after);
            let loaded = tls.loaded.clone();
            transport.reload(tls)?;
            metrics.set_peer_expiry(expiry.0, expiry.1);
            status.set(loaded);
            Ok(())
        }) {
            Ok(()) => {
                tracing::info!(cert = %files.cert.display(), "peer certificates reloaded");
                "ok"
            }
            Err(e) => {
                tracing::error!(error = %e, "changed peer certificates do not load; the previous ones stay in use");
                "error"
            }
        };
        metrics.reloaded("peer", outcome);
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_issued_later_chain_to_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), &[1]).unwrap();
        let ca_before = std::fs::read(dir.path().join("ca.pem")).unwrap();
        generate(dir.path(), &[2]).unwrap();
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca_before);
        for id in [1, 2] {
            let tls = load(
                &dir.path().join("ca.pem"),
                &dir.path().join(format!("node-{id}.pem")),
                &dir.path().join(format!("node-{id}.key")),
            );
            assert!(tls.is_ok());
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("node-2.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_missing_certificate_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let err = load(&missing, &missing, &missing).err().unwrap();
        assert!(err.to_string().contains("cluster CA"), "{err}");
        assert!(err.to_string().contains("nope.pem"), "{err}");
    }
}
