//! The `jobs` scenario's devices: N things online over MQTT, each running the AWS IoT Device
//! SDK's jobs sample flow. It subscribes to `notify-next`, asks `start-next` at start and
//! whenever `notify-next` names an execution, reports each started execution SUCCEEDED
//! (`{jobId}/update` with its `expectedVersion`), and asks `start-next` again, until it has
//! done `executions` of them. Counts completed executions and times the `start-next` and
//! `update` round trips; the jobs themselves are created by the caller (`bench/jobs.sh`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use halyard_node::mqtt::{Ack, Packet, ProtocolVersion, QoS};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::{self, ConnectOptions, PacketWriter};
use crate::stats::{Latency, new_histogram};

#[derive(Debug, Clone)]
pub struct JobsOptions {
    pub target: SocketAddr,
    pub devices: usize,
    /// Things are `{thing_prefix}{n}`, n from 0.
    pub thing_prefix: String,
    /// Executions each device completes before it stops.
    pub executions: u64,
    /// The longest the devices run.
    pub duration: Duration,
    /// Written once every device is connected and subscribed.
    pub ready_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobsReport {
    pub devices: usize,
    pub completed: u64,
    pub rejected: u64,
    /// When the first execution was started and the last completed, epoch milliseconds.
    pub first_started_ms: u64,
    pub last_completed_ms: u64,
    pub executions_per_sec: f64,
    pub start_next: Latency,
    pub update: Latency,
}

struct Shared {
    completed: AtomicU64,
    rejected: AtomicU64,
    first_started_ms: AtomicU64,
    last_completed_ms: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

pub async fn run(opts: JobsOptions) -> anyhow::Result<JobsReport> {
    anyhow::ensure!(opts.devices > 0, "--devices must be at least 1");
    let shared = Arc::new(Shared {
        completed: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        first_started_ms: AtomicU64::new(u64::MAX),
        last_completed_ms: AtomicU64::new(0),
    });
    let (stop_tx, stop) = watch::channel(false);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(opts.devices);
    let mut tasks = Vec::with_capacity(opts.devices);
    for n in 0..opts.devices {
        let (opts, shared, stop, ready) = (
            opts.clone(),
            Arc::clone(&shared),
            stop.clone(),
            ready_tx.clone(),
        );
        tasks.push(tokio::spawn(device(opts, n, shared, stop, ready)));
        // Connections opened at a steady pace rather than all in one burst.
        if n % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    drop(ready_tx);
    for _ in 0..opts.devices {
        ready_rx
            .recv()
            .await
            .context("a device stopped before it was ready")?;
    }
    if let Some(path) = &opts.ready_file {
        std::fs::write(path, b"ready\n").context("cannot write the ready file")?;
    }
    let deadline = Instant::now() + opts.duration;
    let mut start_next = new_histogram();
    let mut update = new_histogram();
    let mut finished = Vec::new();
    for task in tasks {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, task).await {
            Ok(joined) => finished.push(joined.context("device task panicked")??),
            Err(_) => break,
        }
    }
    let _ = stop_tx.send(true);
    for (s, u) in finished {
        start_next.add(&s)?;
        update.add(&u)?;
    }
    let completed = shared.completed.load(Ordering::Acquire);
    let first = shared.first_started_ms.load(Ordering::Acquire);
    let last = shared.last_completed_ms.load(Ordering::Acquire);
    let span = last.saturating_sub(first).max(1) as f64 / 1000.0;
    Ok(JobsReport {
        devices: opts.devices,
        completed,
        rejected: shared.rejected.load(Ordering::Acquire),
        first_started_ms: if first == u64::MAX { 0 } else { first },
        last_completed_ms: last,
        executions_per_sec: completed as f64 / span,
        start_next: Latency::from_histogram(&start_next),
        update: Latency::from_histogram(&update),
    })
}

fn publish(
    writer: &mut PacketWriter,
    packet_id: &mut u16,
    topic: &str,
    body: &Value,
) -> anyhow::Result<()> {
    *packet_id = packet_id.checked_add(1).unwrap_or(1);
    writer.queue_publish(
        topic,
        QoS::AtLeastOnce,
        *packet_id,
        body.to_string().as_bytes(),
    )?;
    Ok(())
}

async fn device(
    opts: JobsOptions,
    n: usize,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    ready: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
    let thing = format!("{}{n}", opts.thing_prefix);
    let connect = ConnectOptions {
        broker: opts.target,
        source: None,
        client_id: thing.clone(),
        version: ProtocolVersion::V311,
        clean_start: true,
        keep_alive: 120,
        timeout: Duration::from_secs(30),
    };
    let (mut reader, mut writer) = client::connect(&connect)
        .await
        .with_context(|| format!("device {thing} cannot connect"))?;
    let prefix = format!("$aws/things/{thing}/jobs");
    client::subscribe(
        &mut reader,
        &mut writer,
        &format!("{prefix}/notify-next"),
        QoS::AtLeastOnce,
        Duration::from_secs(30),
    )
    .await?;
    let _ = ready.send(()).await;
    let mut start_next = new_histogram();
    let mut update = new_histogram();
    let mut packet_id = 0u16;
    let mut done = 0u64;
    // The request in flight and when it was sent: the sample runs one job at a time.
    let start_topic = format!("{prefix}/start-next");
    publish(
        &mut writer,
        &mut packet_id,
        &start_topic,
        &json!({"clientToken": "s"}),
    )?;
    let mut waiting: Option<(&'static str, Instant)> = Some(("start", Instant::now()));
    writer.flush().await?;
    while done < opts.executions {
        let packet = tokio::select! {
            packet = reader.next() => packet?,
            _ = stop.changed() => break,
        };
        let Packet::Publish(message) = packet else {
            continue;
        };
        if message.qos == QoS::AtLeastOnce {
            writer.queue(&Packet::PubAck(Ack::new(message.packet_id, 0)))?;
        }
        let body: Value = serde_json::from_slice(&message.payload).unwrap_or(Value::Null);
        let topic = &*message.topic;
        if topic.ends_with("/notify-next") {
            if body.get("execution").is_some() && waiting.is_none() {
                publish(
                    &mut writer,
                    &mut packet_id,
                    &start_topic,
                    &json!({"clientToken": "s"}),
                )?;
                waiting = Some(("start", Instant::now()));
            }
        } else if topic.ends_with("/start-next/accepted") {
            if let Some(("start", sent)) = waiting {
                let _ = start_next.record(sent.elapsed().as_micros() as u64);
            }
            waiting = None;
            if let Some(execution) = body.get("execution") {
                shared
                    .first_started_ms
                    .fetch_min(now_ms(), Ordering::AcqRel);
                let job = execution["jobId"].as_str().unwrap_or_default();
                let version = execution["versionNumber"].as_u64().unwrap_or(0);
                publish(
                    &mut writer,
                    &mut packet_id,
                    &format!("{prefix}/{job}/update"),
                    &json!({"status": "SUCCEEDED", "expectedVersion": version, "clientToken": "u"}),
                )?;
                waiting = Some(("update", Instant::now()));
            }
        } else if topic.ends_with("/update/accepted") {
            if let Some(("update", sent)) = waiting {
                let _ = update.record(sent.elapsed().as_micros() as u64);
            }
            done += 1;
            shared.completed.fetch_add(1, Ordering::AcqRel);
            shared
                .last_completed_ms
                .fetch_max(now_ms(), Ordering::AcqRel);
            waiting = None;
            if done < opts.executions {
                publish(
                    &mut writer,
                    &mut packet_id,
                    &start_topic,
                    &json!({"clientToken": "s"}),
                )?;
                waiting = Some(("start", Instant::now()));
            }
        } else if topic.ends_with("/rejected") {
            shared.rejected.fetch_add(1, Ordering::AcqRel);
            waiting = None;
        }
        writer.flush().await?;
    }
    Ok((start_next, update))
}

pub fn summary(report: &JobsReport) -> String {
    format!(
        "{} devices: {} executions completed ({} rejected), {:.0}/s; start-next p99 {:.2} ms, update p99 {:.2} ms",
        report.devices,
        report.completed,
        report.rejected,
        report.executions_per_sec,
        report.start_next.p99_ms,
        report.update.p99_ms
    )
}
