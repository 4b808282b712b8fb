//! The `halyard-bench` command.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use halyard_bench::{compare, conn, loopback_sources, pubsub, stats};
use halyard_node::mqtt::{ProtocolVersion, QoS};

#[derive(Parser)]
#[command(
    name = "halyard-bench",
    version,
    about = "MQTT load generator and side-by-side broker comparison"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// P publishers x S subscribers over T topics; latency, throughput, loss.
    Pubsub(PubsubArgs),
    /// Open N connections and keep them idle; connect rate and broker memory.
    Conn(ConnArgs),
    /// Run the standard scenarios against Halyard and its peers, write docs/benchmarks.md.
    Compare(CompareArgs),
    /// Committed transactions per second of the replicated store (RocksDB, QUIC on loopback).
    Store(StoreArgs),
    /// MQTT-over-TLS connections per second with a client certificate (full or resumed).
    Handshakes(HandshakeArgs),
    /// Device Shadow updates per second, over MQTT or the HTTP data plane.
    Shadow(ShadowArgs),
    /// 1:1 traffic at a fixed rate, alone and then during a subscribe storm; the p99 of each.
    Storm(StormArgs),
    /// Devices running the jobs sample flow (start-next, update SUCCEEDED) on the jobs they
    /// are sent.
    Jobs(JobsArgs),
    /// Devices sharing a claim certificate provisioning at once over mTLS: create keys and
    /// certificate, register their thing, connect with the new identity.
    Provision(ProvisionArgs),
    /// Fleet indexing: register a fleet (`load`), or measure searches and the lag from a
    /// write to it being searchable (`measure`).
    Index(IndexArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum IndexAction {
    Load,
    Measure,
}

#[derive(Args)]
struct IndexArgs {
    #[arg(value_enum)]
    action: IndexAction,
    #[command(flatten)]
    target: Target,
    /// HTTP API port.
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// An AWS shared-credentials file whose first profile signs the requests.
    #[arg(long)]
    credentials: PathBuf,
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// Things in the fleet, `{thing_prefix}{n}`.
    #[arg(long, default_value_t = 1_000_000)]
    things: usize,
    #[arg(long, default_value = "meter-")]
    thing_prefix: String,
    /// HTTP connections used at once.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Things online over MQTT while measuring.
    #[arg(long, default_value_t = 1000)]
    online: usize,
    /// Times each query is timed.
    #[arg(long, default_value_t = 200)]
    repeat: usize,
    /// Registry writes per second while the lag is measured.
    #[arg(long, default_value_t = 1000.0)]
    write_rate: f64,
    #[arg(long, default_value_t = 30.0)]
    write_seconds: f64,
    /// One write in this many is followed until SearchIndex finds it.
    #[arg(long, default_value_t = 20)]
    sample_every: u64,
}

#[derive(Args)]
struct ProvisionArgs {
    #[command(flatten)]
    target: Target,
    /// The name the server certificate must carry (sent as SNI).
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// PEM: the CA the server certificate is checked against.
    #[arg(long)]
    ca: PathBuf,
    /// PEM: the claim certificate and its key.
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    /// The fleet provisioning template, taking a `SerialNumber` parameter.
    #[arg(long)]
    template: String,
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Devices provisioning at once.
    #[arg(long, default_value_t = 1000)]
    concurrency: usize,
    /// Serial numbers are `{prefix}{n}`.
    #[arg(long, default_value = "storm-")]
    serial_prefix: String,
    /// The longest one device may take, in seconds.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
}

#[derive(Args)]
struct JobsArgs {
    #[command(flatten)]
    target: Target,
    /// Devices online, things `{thing_prefix}{n}`.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    #[arg(long, default_value = "dev-")]
    thing_prefix: String,
    /// Executions each device completes.
    #[arg(long, default_value_t = 1)]
    executions: u64,
    /// The longest the devices run, in seconds.
    #[arg(long, default_value_t = 300.0)]
    duration: f64,
    /// A file written once every device is connected and subscribed.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

#[derive(Args)]
struct StormArgs {
    #[command(flatten)]
    target: Target,
    /// Publisher/subscriber pairs of the traffic.
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// Total messages per second of the traffic.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Seconds of each phase.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Subscriptions added during the storm phase.
    #[arg(long, default_value_t = 100_000)]
    subscriptions: usize,
    /// Connections adding them.
    #[arg(long, default_value_t = 100)]
    storm_clients: usize,
    /// Filters per SUBSCRIBE packet.
    #[arg(long, default_value_t = 10)]
    per_packet: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum ShadowVia {
    Mqtt,
    Http,
}

#[derive(Args)]
struct ShadowArgs {
    /// Host of the broker.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// MQTT port (with `--via mqtt`).
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// HTTP API port (with `--via http`).
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    #[arg(long, value_enum, default_value_t = ShadowVia::Mqtt)]
    via: ShadowVia,
    /// Devices, each updating its own shadow.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Requests each device keeps outstanding (MQTT: pipelined; HTTP: connections).
    #[arg(long, default_value_t = 4)]
    inflight: usize,
    /// Seconds of updating.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Total updates per second over all devices, or `max` (each answer starts the next).
    #[arg(long, default_value = "max")]
    rate: String,
    /// For HTTP: an AWS shared-credentials file whose first profile signs the requests
    /// (`halyard serve` writes one as `{data_dir}/credentials`).
    #[arg(long)]
    credentials: Option<PathBuf>,
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// Write the JSON result here as well as to standard output.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct HandshakeArgs {
    #[command(flatten)]
    target: Target,
    /// The name the server certificate must carry.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// PEM: the CA the server certificate is checked against.
    #[arg(long)]
    ca: PathBuf,
    /// PEM: the client certificate.
    #[arg(long)]
    cert: PathBuf,
    /// PEM: the client certificate's key.
    #[arg(long)]
    key: PathBuf,
    /// Client ids are `{prefix}{worker}-{n}`.
    #[arg(long, default_value = "bench-")]
    client_prefix: String,
    /// Resume TLS sessions (off: every handshake is a full one).
    #[arg(long)]
    resume: bool,
    /// Connections in progress at once.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Seconds of connecting.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
}

#[derive(Args)]
struct StoreArgs {
    /// Nodes in the cluster: 1, or 3 on loopback.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Concurrent writers, comma-separated for several runs, e.g. 1,16,256.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    clients: Vec<usize>,
    /// Seconds per run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Directory for the nodes' data (a real disk: fsync is what is measured).
    #[arg(long, default_value = "target/store-bench")]
    dir: PathBuf,
    /// Write the JSON results here as well as to standard output.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct Target {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// MQTT version.
    #[arg(long, value_enum, default_value_t = Version::V311)]
    mqtt_version: Version,
    /// Spread connections over this many loopback source addresses (127.0.0.1..N).
    #[arg(long, default_value_t = 1)]
    sources: usize,
    /// Write the JSON result here as well as to standard output.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Version {
    V311,
    V5,
}

#[derive(Args)]
struct PubsubArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    #[arg(long, default_value_t = 1)]
    subscribers: usize,
    #[arg(long, default_value_t = 1)]
    topics: usize,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Payload size in bytes (at least 20, the benchmark header).
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// Total publish rate in messages per second, or `max`.
    #[arg(long, default_value = "max")]
    rate: String,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unacknowledged messages per publisher.
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// Connect the subscribers to this port of the same host instead (another node of a
    /// cluster): every message then crosses between nodes.
    #[arg(long)]
    subscriber_port: Option<u16>,
    /// Spread the clients over these brokers (`host:port`, comma separated: the nodes of a
    /// cluster) instead of `--host`/`--port`: publisher i connects to the i-th (modulo their
    /// number), subscriber j to the (j + `--subscriber-offset`)-th.
    #[arg(long, value_delimiter = ',')]
    hosts: Vec<String>,
    /// With `--hosts`: 0 puts each 1:1 pair on one node, 1 makes every message cross to the
    /// next node.
    #[arg(long, default_value_t = 0)]
    subscriber_offset: usize,
    /// Subscribers keep persistent sessions: QoS 1/2 messages are stored until acknowledged.
    #[arg(long)]
    persistent: bool,
    /// Subscribers take `{prefix}/t{j}` rather than the publishers' topics (the topics a
    /// topic rule republishes to).
    #[arg(long)]
    subscribe_prefix: Option<String>,
}

#[derive(Args)]
struct ConnArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Connections per second, or `max`.
    #[arg(long, default_value = "max")]
    rate: String,
    /// Handshakes in progress at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Seconds to keep the connections open after the last one connected.
    #[arg(long, default_value_t = 1.0)]
    hold: f64,
    /// The broker's process id, to measure its memory per connection.
    #[arg(long)]
    broker_pid: Option<u32>,
}

#[derive(Args)]
struct CompareArgs {
    /// The halyard binary to measure.
    #[arg(long)]
    halyard: PathBuf,
    /// The mosquitto binary; without it Mosquitto is left out.
    #[arg(long)]
    mosquitto: Option<PathBuf>,
    /// The rumqttd binary; without it rumqttd is left out.
    #[arg(long)]
    rumqttd: Option<PathBuf>,
    /// Markdown file whose generated section is replaced with the results.
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: PathBuf,
    /// Short scenarios (seconds instead of tens of seconds), to check the runner.
    #[arg(long)]
    quick: bool,
    /// Only the scenarios whose name contains this text.
    #[arg(long)]
    only: Option<String>,
    /// The command line recorded with the results.
    #[arg(long, default_value = "bench/compare.sh")]
    command_line: String,
}

fn parse_rate(raw: &str, flag: &str) -> anyhow::Result<Option<f64>> {
    if raw == "max" {
        return Ok(None);
    }
    let rate: f64 = raw
        .parse()
        .with_context(|| format!("{flag} must be a number or `max`, not {raw:?}"))?;
    anyhow::ensure!(rate > 0.0, "{flag} must be positive");
    Ok(Some(rate))
}

fn resolve(target: &Target) -> anyhow::Result<SocketAddr> {
    resolve_port(target, target.port)
}

/// A `host:port` of `--hosts`.
fn resolve_host(host: &str) -> anyhow::Result<SocketAddr> {
    host.to_socket_addrs()
        .with_context(|| format!("cannot resolve {host} (expected host:port)"))?
        .next()
        .with_context(|| format!("no address for {host}"))
}

/// The target's host at `port`.
fn resolve_port(target: &Target, port: u16) -> anyhow::Result<SocketAddr> {
    (target.host.as_str(), port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {}:{port}", target.host))?
        .next()
        .with_context(|| format!("no address for {}", target.host))
}

fn version(v: Version) -> ProtocolVersion {
    match v {
        Version::V311 => ProtocolVersion::V311,
        Version::V5 => ProtocolVersion::V5,
    }
}

fn emit<T: serde::Serialize>(value: &T, path: Option<&PathBuf>) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(value)?;
    println!("{json}");
    if let Some(p) = path {
        std::fs::write(p, &json).with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}

fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("bench{:x}", nanos & 0xFFFF_FFFF)
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    stats::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Storm(a) => {
                let qos = QoS::from_u8(a.qos).context("--qos must be 0, 1 or 2")?;
                anyhow::ensure!(a.rate > 0.0, "--rate must be positive");
                let broker = resolve(&a.target)?;
                let traffic = pubsub::PubSubOptions {
                    publisher_brokers: vec![broker],
                    subscriber_brokers: vec![broker],
                    persistent_subscribers: false,
                    sources: loopback_sources(a.target.sources),
                    publishers: a.pairs,
                    subscribers: a.pairs,
                    topics: a.pairs,
                    qos,
                    payload: 256,
                    rate: Some(a.rate),
                    duration: Duration::from_secs_f64(a.duration.max(1.0)),
                    inflight: 64,
                    version: version(a.target.mqtt_version),
                    topic_prefix: run_id(),
                    subscribe_prefix: None,
                    drain_timeout: Duration::from_secs(10),
                    progress: false,
                };
                let report = halyard_bench::storm::run(halyard_bench::storm::StormOptions {
                    traffic,
                    subscriptions: a.subscriptions,
                    subscribers: a.storm_clients,
                    per_packet: a.per_packet,
                })
                .await?;
                eprintln!("{}", halyard_bench::storm::summary(&report));
                emit(&report, a.target.json.as_ref())
            }
            Command::Pubsub(a) => {
                let qos = QoS::from_u8(a.qos).context("--qos must be 0, 1 or 2")?;
                let publisher_brokers = if a.hosts.is_empty() {
                    vec![resolve(&a.target)?]
                } else {
                    a.hosts
                        .iter()
                        .map(|host| resolve_host(host))
                        .collect::<anyhow::Result<Vec<_>>>()?
                };
                let subscriber_brokers = match a.subscriber_port {
                    Some(port) => vec![resolve_port(&a.target, port)?],
                    None => {
                        let mut brokers = publisher_brokers.clone();
                        let shift = a.subscriber_offset % brokers.len();
                        brokers.rotate_left(shift);
                        brokers
                    }
                };
                let opts = pubsub::PubSubOptions {
                    publisher_brokers,
                    subscriber_brokers,
                    persistent_subscribers: a.persistent,
                    sources: loopback_sources(a.target.sources),
                    publishers: a.publishers,
                    subscribers: a.subscribers,
                    topics: a.topics,
                    qos,
                    payload: a.payload,
                    rate: parse_rate(&a.rate, "--rate")?,
                    duration: Duration::from_secs_f64(a.duration.max(0.1)),
                    inflight: a.inflight,
                    version: version(a.target.mqtt_version),
                    topic_prefix: run_id(),
                    subscribe_prefix: a.subscribe_prefix,
                    drain_timeout: Duration::from_secs(10),
                    progress: true,
                };
                let report = pubsub::run(opts).await?;
                eprintln!("{}", pubsub::summary(&report));
                emit(&report, a.target.json.as_ref())
            }
            Command::Handshakes(a) => {
                let opts = halyard_bench::handshakes::HandshakeOptions {
                    broker: resolve(&a.target)?,
                    server_name: a.server_name,
                    ca: a.ca,
                    cert: a.cert,
                    key: a.key,
                    client_prefix: a.client_prefix,
                    resume: a.resume,
                    workers: a.workers,
                    duration: Duration::from_secs_f64(a.duration.max(0.1)),
                };
                let report = halyard_bench::handshakes::run(opts).await?;
                eprintln!(
                    "{} connections ({} resumed, {} refused, {} failed): {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
                    report.connections,
                    report.resumed,
                    report.refused,
                    report.failed,
                    report.per_second,
                    report.p50_ms,
                    report.p99_ms
                );
                emit(&report, a.target.json.as_ref())
            }
            Command::Jobs(a) => {
                let opts = halyard_bench::jobs::JobsOptions {
                    target: resolve(&a.target)?,
                    devices: a.devices,
                    thing_prefix: a.thing_prefix,
                    executions: a.executions,
                    duration: Duration::from_secs_f64(a.duration.max(1.0)),
                    ready_file: a.ready_file,
                };
                let report = halyard_bench::jobs::run(opts).await?;
                eprintln!("{}", halyard_bench::jobs::summary(&report));
                emit(&report, a.target.json.as_ref())
            }
            Command::Index(a) => {
                let opts = halyard_bench::index::IndexOptions {
                    http: resolve_port(&a.target, a.http_port)?,
                    mqtt: resolve(&a.target)?,
                    credentials: halyard_bench::shadow::read_credentials(&a.credentials)?,
                    region: a.region,
                    things: a.things,
                    prefix: a.thing_prefix,
                    connections: a.connections,
                };
                match a.action {
                    IndexAction::Load => {
                        let report = halyard_bench::index::load(opts).await?;
                        eprintln!("{}", halyard_bench::index::load_summary(&report));
                        emit(&report, a.target.json.as_ref())
                    }
                    IndexAction::Measure => {
                        let measure = halyard_bench::index::MeasureOptions {
                            online: a.online,
                            repeat: a.repeat,
                            write_rate: a.write_rate,
                            write_seconds: a.write_seconds,
                            sample_every: a.sample_every,
                        };
                        let report = halyard_bench::index::measure(opts, measure).await?;
                        eprintln!("{}", halyard_bench::index::measure_summary(&report));
                        emit(&report, a.target.json.as_ref())
                    }
                }
            }
            Command::Provision(a) => {
                let opts = halyard_bench::provision::ProvisionOptions {
                    broker: resolve(&a.target)?,
                    server_name: a.server_name,
                    ca: a.ca,
                    claim_cert: a.cert,
                    claim_key: a.key,
                    template: a.template,
                    devices: a.devices,
                    concurrency: a.concurrency,
                    serial_prefix: a.serial_prefix,
                    timeout: Duration::from_secs_f64(a.timeout.max(1.0)),
                };
                let report = halyard_bench::provision::run(opts).await?;
                eprintln!(
                    "{} of {} devices provisioned in {:.1} s ({:.1}/s), p50 {:.0} ms, p99 {:.0} ms per device",
                    report.provisioned,
                    report.devices,
                    report.seconds,
                    report.per_second,
                    report.device.p50_ms,
                    report.device.p99_ms
                );
                emit(&report, a.target.json.as_ref())
            }
            Command::Shadow(a) => {
                let (protocol, port) = match a.via {
                    ShadowVia::Mqtt => (halyard_bench::shadow::ShadowProtocol::Mqtt, a.port),
                    ShadowVia::Http => (halyard_bench::shadow::ShadowProtocol::Http, a.http_port),
                };
                let target = (a.host.as_str(), port)
                    .to_socket_addrs()
                    .with_context(|| format!("cannot resolve {}:{port}", a.host))?
                    .next()
                    .with_context(|| format!("no address for {}", a.host))?;
                let credentials = a.credentials.as_deref().map(halyard_bench::shadow::read_credentials).transpose()?;
                let opts = halyard_bench::shadow::ShadowOptions {
                    protocol,
                    target,
                    devices: a.devices,
                    inflight: a.inflight,
                    duration: Duration::from_secs_f64(a.duration.max(0.1)),
                    thing_prefix: format!("{}-", run_id()),
                    credentials,
                    region: a.region,
                    rate: parse_rate(&a.rate, "--rate")?,
                };
                let report = halyard_bench::shadow::run(opts).await?;
                eprintln!("{}", halyard_bench::shadow::summary(&report));
                emit(&report, a.json.as_ref())
            }
            Command::Conn(a) => {
                let opts = conn::ConnOptions {
                    broker: resolve(&a.target)?,
                    sources: loopback_sources(a.target.sources),
                    connections: a.connections,
                    rate: parse_rate(&a.rate, "--rate")?,
                    concurrency: a.concurrency,
                    hold: Duration::from_secs_f64(a.hold.max(0.0)),
                    version: version(a.target.mqtt_version),
                    broker_pid: a.broker_pid,
                    client_prefix: run_id(),
                    progress: true,
                };
                let report = conn::run(opts).await?;
                eprintln!("{}", conn::summary(&report));
                emit(&report, a.target.json.as_ref())
            }
            Command::Compare(a) => {
                let opts = compare::CompareOptions {
                    halyard: a.halyard,
                    mosquitto: a.mosquitto,
                    rumqttd: a.rumqttd,
                    out: a.out,
                    quick: a.quick,
                    only: a.only,
                    command_line: a.command_line,
                };
                compare::run(opts).await
            }
            Command::Store(a) => {
                if a.nodes == 0 {
                    anyhow::bail!("--nodes must be at least 1");
                }
                let mut reports = Vec::new();
                for clients in a.clients {
                    let opts = halyard_bench::store::StoreBenchOptions {
                        nodes: a.nodes,
                        clients: clients.max(1),
                        duration: Duration::from_secs_f64(a.duration.max(0.5)),
                        value_size: a.value_size,
                        dir: halyard_bench::store::scratch_dir(&a.dir),
                    };
                    let dir = opts.dir.clone();
                    let report = halyard_bench::store::run(opts).await;
                    let _ = std::fs::remove_dir_all(&dir);
                    let report = report?;
                    eprintln!("{}", halyard_bench::store::summary(&report));
                    reports.push(report);
                }
                emit(&reports, a.json.as_ref())
            }
        }
    })
}
