//! Side-by-side runs: the same scenarios against Halyard and its peers, in
//! alternation within one run, each broker freshly started for each
//! scenario so that its peak memory and CPU time belong to that scenario.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use halyard_node::mqtt::{ProtocolVersion, QoS};
use tokio::time::Instant;

use crate::stats::{ProcessSample, sample_process};
use crate::{conn, loopback_sources, pubsub};

pub struct CompareOptions {
    pub halyard: PathBuf,
    pub mosquitto: Option<PathBuf>,
    pub rumqttd: Option<PathBuf>,
    pub out: PathBuf,
    pub quick: bool,
    pub only: Option<String>,
    pub command_line: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Halyard,
    Mosquitto,
    Rumqttd,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Halyard => "Halyard",
            Kind::Mosquitto => "Mosquitto",
            Kind::Rumqttd => "rumqttd",
        }
    }
}

/// Settings every broker gets, so that they are compared like for like.
const MAX_INFLIGHT: u32 = 100;
const MAX_QUEUED: u32 = 1000;

struct Broker {
    child: Child,
    addr: SocketAddr,
}

impl Broker {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(mut self) {
        // SAFETY: kill only sends a signal to our own child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start(kind: Kind, bin: &Path, work: &Path) -> anyhow::Result<Broker> {
    let port = free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut cmd = Command::new(bin);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match kind {
        Kind::Halyard => {
            let data = work.join("halyard-data");
            let _ = std::fs::remove_dir_all(&data);
            cmd.arg("serve")
                .arg("--mqtt-listen")
                .arg(addr.to_string())
                .arg("--admin-listen")
                .arg("127.0.0.1:0")
                .arg("--http-listen")
                .arg("127.0.0.1:0")
                .arg("--mqtts-listen")
                .arg("127.0.0.1:0")
                .arg("--tls-listen")
                .arg("127.0.0.1:0")
                .arg("--ws-listen")
                .arg("127.0.0.1:0")
                .arg("--data-dir")
                .arg(&data)
                .env("HALYARD_LOG_LEVEL", "warn")
                .env(
                    "HALYARD_MQTT__MAX_INFLIGHT_MESSAGES",
                    MAX_INFLIGHT.to_string(),
                )
                .env("HALYARD_MQTT__MAX_QUEUED_MESSAGES", MAX_QUEUED.to_string());
        }
        Kind::Mosquitto => {
            let conf = work.join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                     max_inflight_messages {MAX_INFLIGHT}\nmax_queued_messages {MAX_QUEUED}\n\
                     set_tcp_nodelay true\nlog_dest none\n"
                ),
            )?;
            cmd.arg("-c").arg(&conf);
        }
        Kind::Rumqttd => {
            let conf = work.join("rumqttd.toml");
            std::fs::write(&conf, rumqttd_config(port))?;
            cmd.arg("--config").arg(&conf).arg("-q");
        }
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {} from {}", kind.name(), bin.display()))?;
    let mut broker = Broker { child, addr };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if TcpStream::connect(addr).is_ok() {
            return Ok(broker);
        }
        if let Ok(Some(status)) = broker.child.try_wait() {
            anyhow::bail!("{} exited at start: {status}", kind.name());
        }
        if std::time::Instant::now() > deadline {
            broker.stop();
            anyhow::bail!("{} did not listen on {addr} within 15 s", kind.name());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rumqttd_config(port: u16) -> String {
    format!(
        r#"id = 0

[router]
id = 0
max_connections = 20010
max_outgoing_packet_count = {MAX_INFLIGHT}
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 131072
    max_inflight_count = {MAX_INFLIGHT}
    dynamic_filters = true
"#
    )
}

#[derive(Debug, Clone)]
enum Scenario {
    PubSub {
        name: &'static str,
        publishers: usize,
        subscribers: usize,
        topics: usize,
        qos: QoS,
        rate: Option<f64>,
    },
    Idle {
        name: &'static str,
        connections: usize,
    },
    Storm {
        name: &'static str,
        connections: usize,
    },
}

impl Scenario {
    fn name(&self) -> &'static str {
        match self {
            Scenario::PubSub { name, .. }
            | Scenario::Idle { name, .. }
            | Scenario::Storm { name, .. } => name,
        }
    }
}

fn scenarios(quick: bool) -> Vec<Scenario> {
    let scale = |n: usize| if quick { (n / 10).max(1) } else { n };
    vec![
        Scenario::PubSub {
            name: "1:1, 100 pairs, QoS 1, 256 B, max rate",
            publishers: 100,
            subscribers: 100,
            topics: 100,
            qos: QoS::AtLeastOnce,
            rate: None,
        },
        Scenario::PubSub {
            name: "1:1, 100 pairs, QoS 1, 256 B, 10,000 msg/s offered",
            publishers: 100,
            subscribers: 100,
            topics: 100,
            qos: QoS::AtLeastOnce,
            rate: Some(10_000.0),
        },
        Scenario::PubSub {
            name: "fan-out, 1 to 1000, QoS 0, 256 B, 100 msg/s offered",
            publishers: 1,
            subscribers: scale(1000),
            topics: 1,
            qos: QoS::AtMostOnce,
            rate: Some(100.0),
        },
        Scenario::PubSub {
            name: "fan-out, 1 to 1000, QoS 1, 256 B, max rate",
            publishers: 1,
            subscribers: scale(1000),
            topics: 1,
            qos: QoS::AtLeastOnce,
            rate: None,
        },
        Scenario::PubSub {
            name: "fan-in, 1000 to 1, QoS 1, 256 B, max rate",
            publishers: scale(1000),
            subscribers: 1,
            topics: 1,
            qos: QoS::AtLeastOnce,
            rate: None,
        },
        Scenario::Idle {
            name: "10,000 idle connections",
            connections: scale(10_000),
        },
        Scenario::Storm {
            name: "connection storm, 5,000 connections",
            connections: scale(5000),
        },
    ]
}

/// What one broker did in one scenario.
#[derive(Debug, Clone)]
enum Outcome {
    PubSub(pubsub::PubSubReport, ProcessSample),
    Conn(conn::ConnReport, ProcessSample),
    Failed(String),
}

pub async fn run(opts: CompareOptions) -> anyhow::Result<()> {
    let mut brokers = vec![(Kind::Halyard, opts.halyard.clone())];
    if let Some(p) = &opts.mosquitto {
        brokers.push((Kind::Mosquitto, p.clone()));
    }
    if let Some(p) = &opts.rumqttd {
        brokers.push((Kind::Rumqttd, p.clone()));
    }
    let work = std::env::temp_dir().join(format!("halyard-compare-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let duration = Duration::from_secs(if opts.quick { 2 } else { 10 });
    let mut results: Vec<(Scenario, Vec<(Kind, Outcome)>)> = Vec::new();
    for scenario in scenarios(opts.quick) {
        if let Some(only) = &opts.only
            && !scenario.name().contains(only.as_str())
        {
            continue;
        }
        let mut row = Vec::new();
        for (kind, bin) in &brokers {
            eprintln!("== {} on {}", scenario.name(), kind.name());
            let outcome = match run_one(*kind, bin, &work, &scenario, duration).await {
                Ok(o) => o,
                Err(e) => Outcome::Failed(format!("{e:#}")),
            };
            match &outcome {
                Outcome::PubSub(r, p) => {
                    eprintln!(
                        "   {} | peak RSS {:.1} MiB, CPU {:.2} s",
                        pubsub::summary(r),
                        mib(p.peak_rss_bytes),
                        p.cpu_seconds
                    )
                }
                Outcome::Conn(r, p) => {
                    eprintln!(
                        "   {} | peak RSS {:.1} MiB, CPU {:.2} s",
                        conn::summary(r),
                        mib(p.peak_rss_bytes),
                        p.cpu_seconds
                    )
                }
                Outcome::Failed(e) => eprintln!("   failed: {e}"),
            }
            row.push((*kind, outcome));
        }
        results.push((scenario, row));
    }
    let _ = std::fs::remove_dir_all(&work);
    let report = render(&opts, &results);
    write_section(&opts.out, &report)?;
    eprintln!("results written to {}", opts.out.display());
    Ok(())
}

async fn run_one(
    kind: Kind,
    bin: &Path,
    work: &Path,
    scenario: &Scenario,
    duration: Duration,
) -> anyhow::Result<Outcome> {
    let broker = start(kind, bin, work)?;
    let pid = broker.pid();
    let addr = broker.addr;
    let result = async {
        match scenario {
            Scenario::PubSub {
                publishers,
                subscribers,
                topics,
                qos,
                rate,
                ..
            } => {
                let report = pubsub::run(pubsub::PubSubOptions {
                    publisher_brokers: vec![addr],
                    subscriber_brokers: vec![addr],
                    persistent_subscribers: false,
                    sources: loopback_sources(4),
                    publishers: *publishers,
                    subscribers: *subscribers,
                    topics: *topics,
                    qos: *qos,
                    payload: 256,
                    rate: *rate,
                    duration,
                    inflight: MAX_INFLIGHT as usize,
                    version: ProtocolVersion::V311,
                    topic_prefix: "cmp".to_owned(),
                    subscribe_prefix: None,
                    drain_timeout: Duration::from_secs(10),
                    progress: false,
                })
                .await?;
                let sample = sample_process(pid).unwrap_or_default();
                Ok(Outcome::PubSub(report, sample))
            }
            Scenario::Idle { connections, .. } | Scenario::Storm { connections, .. } => {
                let idle = matches!(scenario, Scenario::Idle { .. });
                let report = conn::run(conn::ConnOptions {
                    broker: addr,
                    sources: loopback_sources(8),
                    connections: *connections,
                    rate: None,
                    concurrency: if idle { 128 } else { 512 },
                    hold: Duration::from_secs(1),
                    version: ProtocolVersion::V311,
                    broker_pid: Some(pid),
                    client_prefix: "cmp".to_owned(),
                    progress: false,
                })
                .await?;
                let sample = sample_process(pid).unwrap_or_default();
                Ok(Outcome::Conn(report, sample))
            }
        }
    }
    .await;
    broker.stop();
    // Sockets in TIME_WAIT from the last run must not starve the next one.
    tokio::time::sleep_until(Instant::now() + Duration::from_millis(500)).await;
    result
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or("unknown memory".to_owned(), |kib| {
            format!("{:.0} GiB", kib as f64 / 1024.0 / 1024.0)
        });
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{cores} cores ({cpu}), {mem}")
}

fn today() -> String {
    Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown date".to_owned(), |s| s.trim().to_owned())
}

fn ratio(ours: f64, theirs: f64) -> String {
    if theirs > 0.0 {
        format!("{:.2}x", ours / theirs)
    } else {
        "n/a".to_owned()
    }
}

fn render(opts: &CompareOptions, results: &[(Scenario, Vec<(Kind, Outcome)>)]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "Run on {}, {}.\n", today(), machine());
    let _ = writeln!(
        md,
        "Command: `{}`{}\n",
        opts.command_line,
        if opts.quick { " (quick)" } else { "" }
    );
    let _ = writeln!(
        md,
        "Every broker: loopback only, no persistence, at most {MAX_INFLIGHT} unacknowledged and \
         {MAX_QUEUED} queued messages per client. Each broker is started afresh for each scenario; \
         peak RSS and CPU seconds are the broker process's own, for that scenario. Clients: \
         MQTT 3.1.1, 256-byte payloads, publishers with up to {MAX_INFLIGHT} messages in flight.\n"
    );
    for (scenario, row) in results {
        let _ = writeln!(md, "### {}\n", scenario.name());
        let halyard = row
            .iter()
            .find(|(k, _)| *k == Kind::Halyard)
            .map(|(_, o)| o);
        match scenario {
            Scenario::PubSub { .. } => {
                let _ = writeln!(
                    md,
                    "| Broker | in msg/s | out msg/s | p50 ms | p99 ms | p99.9 ms | max ms | lost | dup | peak RSS MiB | CPU s | Halyard / broker (out msg/s) |"
                );
                let _ = writeln!(
                    md,
                    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
                );
                for (kind, outcome) in row {
                    match outcome {
                        Outcome::PubSub(r, p) => {
                            let versus = match halyard {
                                Some(Outcome::PubSub(h, _)) => {
                                    ratio(h.throughput_out, r.throughput_out)
                                }
                                _ => "n/a".to_owned(),
                            };
                            let _ = writeln!(
                                md,
                                "| {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {:.1} | {:.2} | {} |",
                                kind.name(),
                                r.throughput_in,
                                r.throughput_out,
                                r.latency.p50_ms,
                                r.latency.p99_ms,
                                r.latency.p999_ms,
                                r.latency.max_ms,
                                r.lost,
                                r.duplicates,
                                mib(p.peak_rss_bytes),
                                p.cpu_seconds,
                                versus
                            );
                        }
                        Outcome::Failed(e) => {
                            let _ = writeln!(
                                md,
                                "| {} | failed: {} |||||||||||",
                                kind.name(),
                                e.replace('|', "/")
                            );
                        }
                        Outcome::Conn(..) => {}
                    }
                }
            }
            Scenario::Idle { .. } | Scenario::Storm { .. } => {
                let _ = writeln!(
                    md,
                    "| Broker | connected | seconds | connects/s | broker bytes per connection | peak RSS MiB | CPU s | Halyard / broker (bytes per conn) | Halyard / broker (connects/s) |"
                );
                let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
                for (kind, outcome) in row {
                    match outcome {
                        Outcome::Conn(r, p) => {
                            let (mem_ratio, rate_ratio) = match halyard {
                                Some(Outcome::Conn(h, _)) => (
                                    ratio(
                                        h.broker_bytes_per_connection.unwrap_or(0.0),
                                        r.broker_bytes_per_connection.unwrap_or(0.0),
                                    ),
                                    ratio(h.connect_rate, r.connect_rate),
                                ),
                                _ => ("n/a".to_owned(), "n/a".to_owned()),
                            };
                            let _ = writeln!(
                                md,
                                "| {} | {}/{} | {:.2} | {:.0} | {} | {:.1} | {:.2} | {} | {} |",
                                kind.name(),
                                r.connected,
                                r.connections,
                                r.seconds_to_all_connected,
                                r.connect_rate,
                                r.broker_bytes_per_connection
                                    .map_or("n/a".to_owned(), |b| format!("{b:.0}")),
                                mib(p.peak_rss_bytes),
                                p.cpu_seconds,
                                mem_ratio,
                                rate_ratio
                            );
                        }
                        Outcome::Failed(e) => {
                            let _ = writeln!(
                                md,
                                "| {} | failed: {} ||||||||",
                                kind.name(),
                                e.replace('|', "/")
                            );
                        }
                        Outcome::PubSub(..) => {}
                    }
                }
            }
        }
        let _ = writeln!(md);
    }
    md
}

const BEGIN: &str = "<!-- compare:begin -->";
const END: &str = "<!-- compare:end -->";

/// Replaces the generated section of `path` (between the markers), or
/// appends one; the hand-written rest of the file is kept.
fn write_section(path: &Path, body: &str) -> anyhow::Result<()> {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let section = format!("{BEGIN}\n{body}{END}");
    let updated = match (existing.find(BEGIN), existing.find(END)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{section}{}", &existing[..b], &existing[e + END.len()..])
        }
        _ => format!("{existing}\n## Latest side-by-side run\n\n{section}\n"),
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, updated).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_section_is_replaced_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.md");
        std::fs::write(&path, "# Title\n\nintro\n").unwrap();
        write_section(&path, "one\n").unwrap();
        write_section(&path, "two\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# Title\n\nintro\n"));
        assert!(text.contains("two\n") && !text.contains("one\n"));
        assert_eq!(text.matches(BEGIN).count(), 1);
    }
}
