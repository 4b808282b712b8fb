//! Device connections per second over MQTT with TLS and a client certificate: each one a TCP
//! connect, a TLS handshake (full, or resumed from an earlier session), CONNECT and CONNACK,
//! then DISCONNECT, from several workers at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::BytesMut;
use halyard_node::mqtt::{Connect, Encoder, Packet, Properties, ProtocolVersion, decode_packet};
use hdrhistogram::Histogram;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

pub struct HandshakeOptions {
    pub broker: SocketAddr,
    /// The name the server certificate is checked against.
    pub server_name: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client ids are `{prefix}{worker}-{n}`.
    pub client_prefix: String,
    /// Whether clients keep sessions to resume (TLS 1.3 PSK / 1.2 session ids and tickets).
    pub resume: bool,
    pub workers: usize,
    pub duration: Duration,
}

#[derive(Debug, Serialize)]
pub struct HandshakeReport {
    pub connections: u64,
    pub resumed: u64,
    pub refused: u64,
    pub failed: u64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

fn client_config(opts: &HandshakeOptions) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(&opts.ca)
        .with_context(|| format!("cannot read {}", opts.ca.display()))?
    {
        roots.add(certificate?)?;
    }
    let chain = CertificateDer::pem_file_iter(&opts.cert)
        .with_context(|| format!("cannot read {}", opts.cert.display()))?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&opts.key)
        .with_context(|| format!("cannot read {}", opts.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.resumption = if opts.resume {
        rustls::client::Resumption::in_memory_sessions(1024)
    } else {
        rustls::client::Resumption::disabled()
    };
    Ok(Arc::new(config))
}

fn connect_packet(client_id: &str) -> anyhow::Result<BytesMut> {
    let mut out = BytesMut::new();
    let connect = Connect {
        protocol: ProtocolVersion::V311,
        clean_start: true,
        keep_alive: 30,
        client_id: client_id.to_owned(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    };
    Encoder::new().encode(
        &Packet::Connect(Box::new(connect)),
        ProtocolVersion::V311,
        &mut out,
    )?;
    Ok(out)
}

/// Reads up to the CONNACK; whether it accepted the connection.
async fn accepted<S: AsyncReadExt + Unpin>(stream: &mut S) -> bool {
    let mut input = BytesMut::new();
    loop {
        match decode_packet(&mut input, ProtocolVersion::V311, 64) {
            Ok(Some(Packet::ConnAck(ack))) => return ack.reason_code == 0,
            Ok(None) => {}
            _ => return false,
        }
        match stream.read_buf(&mut input).await {
            Ok(n) if n > 0 => {}
            _ => return false,
        }
    }
}

enum Outcome {
    Connected { resumed: bool },
    Refused,
}

async fn one_connection(
    opts: &HandshakeOptions,
    connector: &tokio_rustls::TlsConnector,
    name: &ServerName<'static>,
    client_id: &str,
) -> anyhow::Result<Outcome> {
    let tcp = tokio::net::TcpStream::connect(opts.broker).await?;
    tcp.set_nodelay(true)?;
    let mut tls = connector.connect(name.clone(), tcp).await?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    tls.write_all(&connect_packet(client_id)?).await?;
    tls.flush().await?;
    if !accepted(&mut tls).await {
        return Ok(Outcome::Refused);
    }
    // DISCONNECT, normal.
    tls.write_all(&[0xE0, 0]).await?;
    let _ = tls.shutdown().await;
    Ok(Outcome::Connected { resumed })
}

pub async fn run(opts: HandshakeOptions) -> anyhow::Result<HandshakeReport> {
    let config = client_config(&opts)?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = ServerName::try_from(opts.server_name.clone())?;
    let opts = Arc::new(opts);
    let started = Instant::now();
    let deadline = started + opts.duration;
    let mut tasks = Vec::new();
    for worker in 0..opts.workers.max(1) {
        let opts = Arc::clone(&opts);
        let connector = connector.clone();
        let name = name.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let (mut resumed, mut refused, mut failed) = (0u64, 0u64, 0u64);
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let client_id = format!("{}{worker}-{n}", opts.client_prefix);
                let begun = Instant::now();
                match one_connection(&opts, &connector, &name, &client_id).await {
                    Ok(Outcome::Connected { resumed: r }) => {
                        latencies.saturating_record(begun.elapsed().as_micros() as u64);
                        resumed += u64::from(r);
                    }
                    Ok(Outcome::Refused) => refused += 1,
                    Err(_) => failed += 1,
                }
            }
            anyhow::Ok((latencies, resumed, refused, failed))
        }));
    }
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut resumed, mut refused, mut failed) = (0, 0, 0);
    for task in tasks {
        let (h, r, x, f) = task.await??;
        latencies.add(h)?;
        resumed += r;
        refused += x;
        failed += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(HandshakeReport {
        connections: latencies.len(),
        resumed,
        refused,
        failed,
        per_second: latencies.len() as f64 / elapsed,
        p50_ms: latencies.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: latencies.value_at_quantile(0.99) as f64 / 1000.0,
    })
}
