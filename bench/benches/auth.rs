//! The device gateway's security costs: evaluating a 20-statement policy with variables (the
//! compiled per-connection form on the publish path, and the document interpreter that
//! TestAuthorization uses), compiling it for a connection, and full TLS handshakes with a
//! client certificate, with and without session resumption, in memory (CPU cost only).

// Every input here is the benchmark's own; a failure is a broken benchmark.
#![allow(clippy::expect_used)]

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use halyard_node::auth::permissions::{Action, Permissions};
use halyard_node::auth::policy::{Context, Policy};
use halyard_node::services::certs::pki;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

const PREFIX: &str = "arn:aws:iot:us-east-1:000000000000:";

/// Twenty statements with variables, within AWS's 2048 characters: the allowing one for the
/// benchmark's topic comes last, after a denial.
fn twenty_statement_policy() -> String {
    let any = "arn:aws:iot:*:*:";
    let me = "${iot:ClientId}";
    let mut statements = vec![format!(
        r#"{{"Effect":"Allow","Action":"iot:Connect","Resource":"{any}client/{me}"}}"#
    )];
    for n in 0..17 {
        statements.push(format!(
            r#"{{"Effect":"Allow","Action":"iot:Publish","Resource":"{any}topic/f{n}/{me}/*"}}"#
        ));
    }
    statements.push(format!(
        r#"{{"Effect":"Deny","Action":"iot:Publish","Resource":"{any}topic/things/*/admin"}}"#
    ));
    statements.push(format!(
        r#"{{"Effect":"Allow","Action":"iot:Publish","Resource":"{any}topic/things/{me}/*"}}"#
    ));
    format!(
        r#"{{"Version":"2012-10-17","Statement":[{}]}}"#,
        statements.join(",")
    )
}

fn policy(c: &mut Criterion) {
    let policy = Policy::parse(&twenty_statement_policy()).expect("valid policy");
    let mut context = Context::new();
    context.set("iot:ClientId", "sensor-42");
    context.set("iot:Connection.Thing.ThingName", "sensor-42");
    let permissions = Permissions::compile([&policy], &context, PREFIX);
    assert!(permissions.allows(Action::Publish, "things/sensor-42/telemetry"));
    assert!(!permissions.allows(Action::Publish, "things/other/telemetry"));

    let mut group = c.benchmark_group("policy_20_statements");
    group.throughput(Throughput::Elements(1));
    group.bench_function("compiled_allow", |b| {
        b.iter(|| permissions.allows(Action::Publish, "things/sensor-42/telemetry"))
    });
    group.bench_function("compiled_implicit_deny", |b| {
        b.iter(|| permissions.allows(Action::Publish, "things/other/telemetry"))
    });
    group.bench_function("compiled_explicit_deny", |b| {
        b.iter(|| permissions.allows(Action::Publish, "things/sensor-42/admin"))
    });
    let resource = format!("{PREFIX}topic/things/sensor-42/telemetry");
    group.bench_function("interpreted_allow", |b| {
        b.iter(|| policy.effect("iot:Publish", &resource, &context))
    });
    group.bench_function("compile_per_connection", |b| {
        b.iter(|| Permissions::compile([&policy], &context, PREFIX))
    });
    group.finish();
}

struct Pki {
    server: Arc<rustls::ServerConfig>,
    client_resuming: Arc<rustls::ClientConfig>,
    client_fresh: Arc<rustls::ClientConfig>,
}

fn pki_setup() -> Pki {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = pki::generate_ca("bench CA").expect("CA");
    let server = pki::issue_server(&ca, &["localhost".to_owned()]).expect("server certificate");
    let device = pki::issue_device(&ca).expect("device certificate");
    let cert_path = dir.path().join("server.pem");
    let key_path = dir.path().join("server.key");
    std::fs::write(&cert_path, &server.certificate_pem).expect("write");
    std::fs::write(&key_path, &server.key_pem).expect("write");
    let served = halyard_node::gateway::server_cert::ServerCertificate::load(
        &halyard_node::gateway::server_cert::ServerFiles {
            certificate: cert_path,
            key: key_path,
        },
    )
    .expect("server certificate files");
    let server = halyard_node::gateway::tls::device_server_config(
        served,
        halyard_node::gateway::tls::TlsPort::Mqtt,
    )
    .expect("server TLS");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.certificate_pem.as_bytes()).expect("CA PEM"))
        .expect("root");
    let chain = vec![
        CertificateDer::from_pem_slice(device.certificate_pem.as_bytes()).expect("device PEM"),
    ];
    let key = PrivateKeyDer::from_pem_slice(device.private_key_pem.as_bytes()).expect("key PEM");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = |resume: bool| {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .expect("client auth");
        if !resume {
            config.resumption = rustls::client::Resumption::disabled();
        }
        Arc::new(config)
    };
    Pki {
        server,
        client_resuming: client(true),
        client_fresh: client(false),
    }
}

/// One handshake, bytes passed in memory until both sides are done.
fn handshake(server: &Arc<rustls::ServerConfig>, client: &Arc<rustls::ClientConfig>) {
    let name = ServerName::try_from("localhost").expect("name");
    let mut client = rustls::ClientConnection::new(Arc::clone(client), name).expect("client");
    let mut server = rustls::ServerConnection::new(Arc::clone(server)).expect("server");
    let mut buffer = Vec::with_capacity(16 * 1024);
    while client.is_handshaking() || server.is_handshaking() {
        buffer.clear();
        while client.wants_write() {
            client.write_tls(&mut buffer).expect("client write");
        }
        let mut input = &buffer[..];
        while !input.is_empty() {
            server.read_tls(&mut input).expect("server read");
        }
        server.process_new_packets().expect("server handshake");
        buffer.clear();
        while server.wants_write() {
            server.write_tls(&mut buffer).expect("server write");
        }
        let mut input = &buffer[..];
        while !input.is_empty() {
            client.read_tls(&mut input).expect("client read");
        }
        client.process_new_packets().expect("client handshake");
    }
    assert!(server.peer_certificates().is_some());
}

fn tls(c: &mut Criterion) {
    let pki = pki_setup();
    let mut group = c.benchmark_group("tls_handshake_mtls");
    group.throughput(Throughput::Elements(1));
    group.bench_function("full", |b| {
        b.iter(|| handshake(&pki.server, &pki.client_fresh))
    });
    // Prime the client's session cache; every later handshake resumes.
    handshake(&pki.server, &pki.client_resuming);
    group.bench_function("resumed", |b| {
        b.iter(|| handshake(&pki.server, &pki.client_resuming))
    });
    group.finish();
}

criterion_group!(benches, policy, tls);
criterion_main!(benches);
