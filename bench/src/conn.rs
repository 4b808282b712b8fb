//! The `conn` scenario: open N connections at a target rate, keep them idle,
//! and read what they cost the broker.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use halyard_node::mqtt::ProtocolVersion;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::client::{self, ConnectOptions};
use crate::stats::sample_process;

#[derive(Debug, Clone)]
pub struct ConnOptions {
    pub broker: SocketAddr,
    pub sources: Vec<IpAddr>,
    pub connections: usize,
    /// Connections opened per second; `None` opens them as fast as `concurrency` allows.
    pub rate: Option<f64>,
    /// Handshakes in progress at once.
    pub concurrency: usize,
    /// How long the connections stay open, idle, after the last one connected.
    pub hold: Duration,
    pub version: ProtocolVersion,
    /// The broker's process id, to read its memory from /proc.
    pub broker_pid: Option<u32>,
    pub client_prefix: String,
    pub progress: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnReport {
    pub connections: usize,
    pub connected: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub seconds_to_all_connected: f64,
    pub connect_rate: f64,
    pub broker_rss_before_bytes: Option<u64>,
    pub broker_rss_connected_bytes: Option<u64>,
    pub broker_bytes_per_connection: Option<f64>,
}

pub async fn run(opts: ConnOptions) -> anyhow::Result<ConnReport> {
    anyhow::ensure!(opts.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(opts.concurrency > 0, "--concurrency must be at least 1");
    let before = opts.broker_pid.and_then(sample_process);
    let limiter = Arc::new(Semaphore::new(opts.concurrency));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let progress = opts.progress.then(|| {
        let done = Arc::clone(&done);
        let total = opts.connections;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!(
                    "  t={:>4.0}s connected={}/{total}",
                    started.elapsed().as_secs_f64(),
                    done.load(Ordering::Relaxed)
                );
            }
        })
    });
    let mut tasks = Vec::with_capacity(opts.connections);
    for k in 0..opts.connections {
        let copts = ConnectOptions {
            broker: opts.broker,
            source: (!opts.sources.is_empty()).then(|| opts.sources[k % opts.sources.len()]),
            client_id: format!("{}-{k}", opts.client_prefix),
            version: opts.version,
            clean_start: true,
            keep_alive: 900,
            timeout: Duration::from_secs(30),
        };
        let start_at = opts
            .rate
            .map(|r| started + Duration::from_secs_f64(k as f64 / r));
        let limiter = Arc::clone(&limiter);
        let done = Arc::clone(&done);
        tasks.push(tokio::spawn(async move {
            if let Some(at) = start_at {
                tokio::time::sleep_until(at).await;
            }
            let _permit = limiter.acquire().await?;
            let (reader, writer) = client::connect(&copts).await?;
            done.fetch_add(1, Ordering::Relaxed);
            client::into_stream(reader, writer)
                .ok_or_else(|| anyhow::anyhow!("cannot reunite stream"))
        }));
    }
    let mut streams = Vec::with_capacity(opts.connections);
    let mut first_error = None;
    let mut failed = 0;
    for task in tasks {
        match task.await? {
            Ok(stream) => streams.push(stream),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(p) = progress {
        p.abort();
    }
    // Let the broker settle before reading its memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let connected_sample = opts.broker_pid.and_then(sample_process);
    tokio::time::sleep(opts.hold).await;
    let connected = streams.len();
    drop(streams);
    let per_connection = match (before, connected_sample) {
        (Some(b), Some(a)) if connected > 0 => {
            Some(a.rss_bytes.saturating_sub(b.rss_bytes) as f64 / connected as f64)
        }
        _ => None,
    };
    Ok(ConnReport {
        connections: opts.connections,
        connected,
        failed,
        first_error,
        seconds_to_all_connected: elapsed,
        connect_rate: connected as f64 / elapsed.max(f64::EPSILON),
        broker_rss_before_bytes: before.map(|s| s.rss_bytes),
        broker_rss_connected_bytes: connected_sample.map(|s| s.rss_bytes),
        broker_bytes_per_connection: per_connection,
    })
}

/// A human summary of a run.
pub fn summary(r: &ConnReport) -> String {
    let memory = r.broker_bytes_per_connection.map_or(String::new(), |b| {
        format!(", broker memory {b:.0} B per connection")
    });
    let error = r
        .first_error
        .as_ref()
        .map_or(String::new(), |e| format!(" (first error: {e})"));
    format!(
        "conn: {}/{} connected in {:.2} s ({:.0} connections/s), {} failed{error}{memory}",
        r.connected, r.connections, r.seconds_to_all_connected, r.connect_rate, r.failed
    )
}
