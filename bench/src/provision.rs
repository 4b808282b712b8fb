//! A provisioning storm: devices sharing one claim certificate each connect over mTLS, ask for
//! a key pair and certificate (`$aws/certificates/create/json`), register with a template
//! (`$aws/provisioning-templates/{name}/provision/json`), and connect again with their new
//! identity as their thing, all at once, as a production line's devices do on first power-up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use halyard_node::mqtt::{
    Ack, Connect, Encoder, Packet, Properties, ProtocolVersion, Publish, QoS, Subscribe,
    SubscriptionOptions, TopicSubscription, decode_packet,
};
use hdrhistogram::Histogram;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

pub struct ProvisionOptions {
    pub broker: SocketAddr,
    pub server_name: String,
    pub ca: PathBuf,
    pub claim_cert: PathBuf,
    pub claim_key: PathBuf,
    pub template: String,
    pub devices: usize,
    /// Devices provisioning at the same time.
    pub concurrency: usize,
    pub serial_prefix: String,
    pub timeout: Duration,
}

#[derive(Debug, Serialize)]
pub struct Steps {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct ProvisionReport {
    pub devices: usize,
    pub provisioned: u64,
    pub failed: u64,
    pub seconds: f64,
    pub per_second: f64,
    /// From the claim connection's start to the new identity's CONNACK.
    pub device: Steps,
    pub connect_claim: Steps,
    pub create_keys: Steps,
    pub register_thing: Steps,
    pub connect_new: Steps,
    pub first_error: Option<String>,
}

type Stream = TlsStream<tokio::net::TcpStream>;

fn roots(ca: &PathBuf) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("cannot read {}", ca.display()))?
    {
        roots.add(certificate?)?;
    }
    Ok(roots)
}

fn client_config(
    roots: rustls::RootCertStore,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"x-amzn-mqtt-ca".to_vec()];
    Ok(Arc::new(config))
}

struct Connection {
    stream: Stream,
    input: BytesMut,
    encoder: Encoder,
}

impl Connection {
    async fn open(
        opts: &ProvisionOptions,
        config: Arc<rustls::ClientConfig>,
        client_id: &str,
    ) -> anyhow::Result<Self> {
        let name = ServerName::try_from(opts.server_name.clone())?;
        let tcp = tokio::net::TcpStream::connect(opts.broker).await?;
        tcp.set_nodelay(true)?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        let mut connection = Self {
            stream,
            input: BytesMut::new(),
            encoder: Encoder::new(),
        };
        connection
            .send(&Packet::Connect(Box::new(Connect {
                protocol: ProtocolVersion::V311,
                clean_start: true,
                keep_alive: 60,
                client_id: client_id.to_owned(),
                will: None,
                username: None,
                password: None,
                properties: Properties::default(),
            })))
            .await?;
        match connection.next().await? {
            Packet::ConnAck(ack) if ack.reason_code == 0 => Ok(connection),
            Packet::ConnAck(ack) => bail!("CONNECT refused with 0x{:02x}", ack.reason_code),
            other => bail!("expected CONNACK, got {}", other.name()),
        }
    }

    async fn send(&mut self, packet: &Packet) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        self.encoder
            .encode(packet, ProtocolVersion::V311, &mut out)?;
        self.stream.write_all(&out).await?;
        self.stream.flush().await?;
        Ok(())
    }

    async fn next(&mut self) -> anyhow::Result<Packet> {
        loop {
            if let Some(packet) =
                decode_packet(&mut self.input, ProtocolVersion::V311, 1024 * 1024)?
            {
                return Ok(packet);
            }
            if self.stream.read_buf(&mut self.input).await? == 0 {
                bail!("the broker closed the connection");
            }
        }
    }

    /// Publishes `body` at QoS 1 on `topic` and waits for the answer on `{topic}/accepted`.
    async fn request(&mut self, topic: &str, body: &Value, id: u16) -> anyhow::Result<Value> {
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: Arc::from(topic),
            packet_id: id,
            payload: Bytes::from(body.to_string()),
            properties: Properties::default(),
        }))
        .await?;
        loop {
            match self.next().await? {
                Packet::Publish(answer) if answer.topic.starts_with(topic) => {
                    if answer.qos != QoS::AtMostOnce {
                        self.send(&Packet::PubAck(Ack::new(answer.packet_id, 0)))
                            .await?;
                    }
                    let value: Value = serde_json::from_slice(&answer.payload)?;
                    if answer.topic.ends_with("/accepted") {
                        return Ok(value);
                    }
                    bail!("{topic} rejected: {value}");
                }
                _ => {}
            }
        }
    }

    async fn close(mut self) {
        let _ = self.stream.write_all(&[0xE0, 0]).await;
        let _ = self.stream.shutdown().await;
    }
}

struct Timings {
    device: Duration,
    connect_claim: Duration,
    create_keys: Duration,
    register_thing: Duration,
    connect_new: Duration,
}

async fn provision_one(
    opts: &ProvisionOptions,
    claim: Arc<rustls::ClientConfig>,
    roots: rustls::RootCertStore,
    n: usize,
) -> anyhow::Result<Timings> {
    let began = Instant::now();
    let serial = format!("{}{n}", opts.serial_prefix);
    let mut connection = Connection::open(opts, claim, &format!("factory-{serial}")).await?;
    let connected = Instant::now();
    let provision = format!(
        "$aws/provisioning-templates/{}/provision/json",
        opts.template
    );
    connection
        .send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            subscriptions: [
                "$aws/certificates/create/json/+".to_owned(),
                format!("{provision}/+"),
            ]
            .into_iter()
            .map(|filter| TopicSubscription {
                filter,
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            })
            .collect(),
            properties: Properties::default(),
        }))
        .await?;
    match connection.next().await? {
        Packet::SubAck(ack) if ack.reason_codes.iter().all(|c| *c < 0x80) => {}
        other => bail!("SUBSCRIBE refused: {other:?}"),
    }
    let keys = connection
        .request("$aws/certificates/create/json", &json!({}), 2)
        .await?;
    let created = Instant::now();
    let token = keys["certificateOwnershipToken"]
        .as_str()
        .unwrap_or_default();
    let answer = connection
        .request(
            &provision,
            &json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": serial}}),
            3,
        )
        .await?;
    let registered = Instant::now();
    connection.close().await;
    let thing = answer["thingName"].as_str().unwrap_or_default().to_owned();
    let chain = CertificateDer::pem_slice_iter(
        keys["certificatePem"]
            .as_str()
            .unwrap_or_default()
            .as_bytes(),
    )
    .collect::<Result<Vec<_>, _>>()?;
    let key =
        PrivateKeyDer::from_pem_slice(keys["privateKey"].as_str().unwrap_or_default().as_bytes())?;
    let own = client_config(roots, chain, key)?;
    Connection::open(opts, own, &thing).await?.close().await;
    let done = Instant::now();
    Ok(Timings {
        device: done - began,
        connect_claim: connected - began,
        create_keys: created - connected,
        register_thing: registered - created,
        connect_new: done - registered,
    })
}

fn steps(histogram: &Histogram<u64>) -> Steps {
    Steps {
        p50_ms: histogram.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: histogram.value_at_quantile(0.99) as f64 / 1000.0,
    }
}

pub async fn run(opts: ProvisionOptions) -> anyhow::Result<ProvisionReport> {
    let roots = roots(&opts.ca)?;
    let chain = CertificateDer::pem_file_iter(&opts.claim_cert)
        .with_context(|| format!("cannot read {}", opts.claim_cert.display()))?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&opts.claim_key)
        .with_context(|| format!("cannot read {}", opts.claim_key.display()))?;
    let claim = client_config(roots.clone(), chain, key)?;
    let opts = Arc::new(opts);
    let permits = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.max(1)));
    let began = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..opts.devices {
        let opts = Arc::clone(&opts);
        let claim = Arc::clone(&claim);
        let roots = roots.clone();
        let permits = Arc::clone(&permits);
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            tokio::time::timeout(opts.timeout, provision_one(&opts, claim, roots, n))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
        });
    }
    let new = || Histogram::<u64>::new_with_bounds(1, 600_000_000, 3);
    let (mut device, mut claim_h, mut create, mut register, mut own) =
        (new()?, new()?, new()?, new()?, new()?);
    let (mut provisioned, mut failed, mut first_error) = (0, 0, None);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(t)) => {
                provisioned += 1;
                for (h, d) in [
                    (&mut device, t.device),
                    (&mut claim_h, t.connect_claim),
                    (&mut create, t.create_keys),
                    (&mut register, t.register_thing),
                    (&mut own, t.connect_new),
                ] {
                    h.saturating_record(d.as_micros() as u64);
                }
            }
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let seconds = began.elapsed().as_secs_f64();
    Ok(ProvisionReport {
        devices: opts.devices,
        provisioned,
        failed,
        seconds,
        per_second: provisioned as f64 / seconds.max(1e-9),
        device: steps(&device),
        connect_claim: steps(&claim_h),
        create_keys: steps(&create),
        register_thing: steps(&register),
        connect_new: steps(&own),
        first_error,
    })
}
