//! Device connections per second over MQTT with TLS and a client certificate: each one a TCP
//! connect, a TLS handshake (full, or resumed from an earlier session), CONNECT and CONNACK,
//! then DISCONNECT, from several workers at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
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

fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(12 + client_id.len());
    body.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30]);
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend(body);
    packet
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
    tls.write_all(&connect_packet(client_id)).await?;
    tls.flush().await?;
    let mut connack = [0u8; 4];
    if tls.read_exact(&mut connack).await.is_err() {
        return Ok(Outcome::Refused);
    }
    if connack[0] != 0x20 || connack[3] != 0 {
        return Ok(Outcome::Refused);
    }
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
