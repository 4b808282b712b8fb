//! The certificate devices see, from files (a Secret kept by cert-manager or its owner):
//! served on the TLS port, swapped for new connections when the files change, kept when the
//! changed files do not load.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use halyard_node::services::certs::pki::{self, CaPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::common::{TestServer, wait_until, within};

fn issue(ca: &CaPair) -> CaPair {
    pki::issue_server(ca, &["localhost".to_owned()]).unwrap()
}

fn install(dir: &Path, certificate: &str, key: &str) {
    // As the kubelet updates a mounted Secret: the new files appear whole, by rename.
    for (name, text) in [("tls.crt", certificate), ("tls.key", key)] {
        let staged = dir.join(format!(".{name}.new"));
        std::fs::write(&staged, text).unwrap();
        std::fs::rename(&staged, dir.join(name)).unwrap();
    }
}

/// Whether a client that trusts only `ca` completes a TLS handshake with the TLS port.
async fn trusted_by(server: &TestServer, ca: &CaPair) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    let ca_der = CertificateDer::from_pem_slice(ca.certificate_pem.as_bytes()).unwrap();
    roots.add(ca_der).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let addr = server.server().tls_addr().unwrap();
    let stream = within("connect", tokio::net::TcpStream::connect(addr))
        .await
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    within("handshake", connector.connect(name, stream))
        .await
        .is_ok()
}

async fn served_sha256(server: &TestServer) -> String {
    let (status, body) = server.admin_get("/cluster/tls").await;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    report["server"]["certificateSha256"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_server_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
    let files = tempfile::tempdir().unwrap();
    let first_ca = pki::generate_ca("First CA").unwrap();
    let second_ca = pki::generate_ca("Second CA").unwrap();
    let first = issue(&first_ca);
    install(files.path(), &first.certificate_pem, &first.key_pem);
    let server = TestServer::start_with(|c| {
        c.aws.server_cert = Some(files.path().join("tls.crt"));
        c.aws.server_key = Some(files.path().join("tls.key"));
        c.cluster.tls_check_ms = 50;
    })
    .await;
    assert!(trusted_by(&server, &first_ca).await);
    assert!(!trusted_by(&server, &second_ca).await);
    let before = served_sha256(&server).await;
    assert_eq!(before.len(), 64, "{before}");
    assert!(
        server.metric("halyard_tls_certificate_expiry_timestamp_seconds{certificate=\"server\"}")
            > 0.0
    );

    let renewed = issue(&second_ca);
    install(files.path(), &renewed.certificate_pem, &renewed.key_pem);
    let reloads = "halyard_tls_reloads_total{certificate=\"server\",outcome=\"ok\"}";
    wait_until("the renewed certificate loaded", || {
        server.metric(reloads) >= 1.0
    })
    .await;
    assert!(trusted_by(&server, &second_ca).await);
    assert!(!trusted_by(&server, &first_ca).await);
    assert_ne!(served_sha256(&server).await, before);

    // A certificate with another certificate's key does not load: the renewed one stays.
    let other = issue(&first_ca);
    install(files.path(), &other.certificate_pem, &renewed.key_pem);
    let errors = "halyard_tls_reloads_total{certificate=\"server\",outcome=\"error\"}";
    wait_until("the broken pair refused", || server.metric(errors) >= 1.0).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(trusted_by(&server, &second_ca).await);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_files_the_server_certificate_is_issued_from_the_cluster_ca() {
    let mut data_dir = std::path::PathBuf::new();
    let server = TestServer::start_with(|c| data_dir = c.data_dir.clone()).await;
    let dir = data_dir.join("tls");
    let ca = CaPair {
        certificate_pem: std::fs::read_to_string(dir.join("ca.pem")).unwrap(),
        key_pem: std::fs::read_to_string(dir.join("ca.key")).unwrap(),
    };
    assert!(trusted_by(&server, &ca).await);
    assert_eq!(served_sha256(&server).await.len(), 64);
    server.shutdown().await;
}
