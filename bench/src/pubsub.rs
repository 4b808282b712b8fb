//! The `pubsub` scenario: P publishers and S subscribers over T topics.
//!
//! Publisher i publishes to topic i mod T and subscriber j subscribes to
//! topic j mod T, which covers 1:1 pairs (P = S = T), fan-out (P = T = 1)
//! and fan-in (S = T = 1).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use halyard_node::mqtt::{Ack, Packet, ProtocolVersion, QoS};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::client::{self, ConnectOptions, PacketReader, PacketWriter};
use crate::stats::{Latency, SequenceTracker, new_histogram};

#[derive(Debug, Clone)]
pub struct PubSubOptions {
    /// Where the publishers connect: publisher i to `publisher_brokers[i % len]` (the nodes
    /// of a cluster, to spread the load over them).
    pub publisher_brokers: Vec<SocketAddr>,
    /// Where the subscribers connect: subscriber j to `subscriber_brokers[j % len]`. Other
    /// nodes than the publishers' make every message cross between nodes.
    pub subscriber_brokers: Vec<SocketAddr>,
    /// Subscribers keep their sessions (3.1.1 clean session off; MQTT 5 clean start off
    /// with a session expiry): what they are sent at QoS 1/2 is stored until acknowledged.
    pub persistent_subscribers: bool,
    pub sources: Vec<IpAddr>,
    pub publishers: usize,
    pub subscribers: usize,
    pub topics: usize,
    pub qos: QoS,
    pub payload: usize,
    /// Total messages per second over all publishers; `None` publishes as
    /// fast as acknowledgements (QoS 1/2) or the socket (QoS 0) allow.
    pub rate: Option<f64>,
    pub duration: Duration,
    /// Unacknowledged messages each publisher may have outstanding.
    pub inflight: usize,
    pub version: ProtocolVersion,
    /// Unique per run, so runs never see each other's messages.
    pub topic_prefix: String,
    /// Subscribers take `{this}/t{j}` instead of the publishers' topics, for messages that a
    /// topic rule republishes there.
    pub subscribe_prefix: Option<String>,
    /// How long to wait for the last messages after publishing stops.
    pub drain_timeout: Duration,
    /// Print a progress line every second.
    pub progress: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PubSubReport {
    pub publishers: usize,
    pub subscribers: usize,
    pub topics: usize,
    pub qos: u8,
    pub payload_bytes: usize,
    pub offered_rate: Option<f64>,
    pub duration_secs: f64,
    pub published: u64,
    /// Acknowledged by the broker (equal to `published` at QoS 0).
    pub acknowledged: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub throughput_in: f64,
    pub throughput_out: f64,
    pub latency: Latency,
}

struct Counters {
    published: AtomicU64,
    received: AtomicU64,
}

/// Wall-clock nanoseconds since the run started; publishers and subscribers
/// share the base because they live in this one process.
fn nanos_since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

pub async fn run(opts: PubSubOptions) -> anyhow::Result<PubSubReport> {
    anyhow::ensure!(opts.publishers > 0, "--publishers must be at least 1");
    anyhow::ensure!(opts.subscribers > 0, "--subscribers must be at least 1");
    anyhow::ensure!(opts.topics > 0, "--topics must be at least 1");
    anyhow::ensure!(
        !opts.publisher_brokers.is_empty() && !opts.subscriber_brokers.is_empty(),
        "no broker to connect to"
    );
    anyhow::ensure!(
        opts.inflight > 0 && opts.inflight < 65_535,
        "--inflight must be 1..65534"
    );
    let base = Instant::now();
    let counters = Arc::new(Counters {
        published: AtomicU64::new(0),
        received: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let limiter = Arc::new(Semaphore::new(200));

    let mut subscriber_tasks = Vec::with_capacity(opts.subscribers);
    let mut connecting = Vec::with_capacity(opts.subscribers);
    for j in 0..opts.subscribers {
        let mut copts = connect_options(&opts, format!("{}-sub-{j}", opts.topic_prefix), j);
        copts.broker = opts.subscriber_brokers[j % opts.subscriber_brokers.len()];
        copts.clean_start = !opts.persistent_subscribers;
        let prefix = opts.subscribe_prefix.as_ref().unwrap_or(&opts.topic_prefix);
        let topic = format!("{prefix}/t{}", j % opts.topics);
        let limiter = Arc::clone(&limiter);
        let qos = opts.qos;
        connecting.push(tokio::spawn(async move {
            let _permit = limiter.acquire().await?;
            let (mut reader, mut writer) = client::connect(&copts).await?;
            client::subscribe(&mut reader, &mut writer, &topic, qos, copts.timeout).await?;
            anyhow::Ok((reader, writer))
        }));
    }
    for (j, handle) in connecting.into_iter().enumerate() {
        let (reader, writer) = handle.await?.with_context(|| format!("subscriber {j}"))?;
        subscriber_tasks.push(tokio::spawn(subscriber(
            reader,
            writer,
            opts.publishers,
            base,
            Arc::clone(&counters),
            stop_rx.clone(),
        )));
    }

    let mut publishers = Vec::with_capacity(opts.publishers);
    let mut connecting = Vec::with_capacity(opts.publishers);
    for i in 0..opts.publishers {
        let mut copts = connect_options(&opts, format!("{}-pub-{i}", opts.topic_prefix), i);
        copts.broker = opts.publisher_brokers[i % opts.publisher_brokers.len()];
        let limiter = Arc::clone(&limiter);
        connecting.push(tokio::spawn(async move {
            let _permit = limiter.acquire().await?;
            anyhow::Ok(client::connect(&copts).await?)
        }));
    }
    for (i, handle) in connecting.into_iter().enumerate() {
        publishers.push(handle.await?.with_context(|| format!("publisher {i}"))?);
    }

    let payload_base = opts.payload;
    let per_publisher_rate = opts.rate.map(|r| r / opts.publishers as f64);
    let started = Instant::now();
    let end = started + opts.duration;
    let mut publisher_tasks = Vec::with_capacity(opts.publishers);
    for (i, (reader, writer)) in publishers.into_iter().enumerate() {
        let topic = format!("{}/t{}", opts.topic_prefix, i % opts.topics);
        publisher_tasks.push(tokio::spawn(publisher(PublisherPlan {
            id: i as u32,
            reader,
            writer,
            topic,
            qos: opts.qos,
            payload: payload_base,
            rate: per_publisher_rate,
            inflight: opts.inflight,
            base,
            end,
            drain_timeout: opts.drain_timeout,
            counters: Arc::clone(&counters),
        })));
    }

    let progress = opts.progress.then(|| {
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            let mut last = (0, 0);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let p = counters.published.load(Ordering::Relaxed);
                let r = counters.received.load(Ordering::Relaxed);
                eprintln!(
                    "  t={:>4.0}s published={p} ({}/s) received={r} ({}/s)",
                    started.elapsed().as_secs_f64(),
                    p - last.0,
                    r - last.1
                );
                last = (p, r);
            }
        })
    });

    // Acknowledged counts per publisher decide what every subscriber should get.
    let mut acknowledged = vec![0u64; opts.publishers];
    let mut published = 0;
    for (i, task) in publisher_tasks.into_iter().enumerate() {
        let outcome = task.await?.with_context(|| format!("publisher {i}"))?;
        acknowledged[i] = outcome.acknowledged;
        published += outcome.published;
    }
    let publishing_time = started.elapsed();
    let expected: u64 = (0..opts.subscribers)
        .map(|j| {
            (0..opts.publishers)
                .filter(|i| i % opts.topics == j % opts.topics)
                .map(|i| acknowledged[i])
                .sum::<u64>()
        })
        .sum();
    let drain_deadline = Instant::now() + opts.drain_timeout;
    while counters.received.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let _ = stop_tx.send(true);
    if let Some(p) = progress {
        p.abort();
    }

    let mut histogram = new_histogram();
    let (mut unique, mut duplicates) = (0, 0);
    for task in subscriber_tasks {
        let outcome = task.await??;
        histogram.add(&outcome.histogram)?;
        unique += outcome.tracker.unique;
        duplicates += outcome.tracker.duplicates;
    }
    let acknowledged_total: u64 = acknowledged.iter().sum();
    Ok(PubSubReport {
        publishers: opts.publishers,
        subscribers: opts.subscribers,
        topics: opts.topics,
        qos: opts.qos.as_u8(),
        payload_bytes: opts.payload.max(client::HEADER_LEN),
        offered_rate: opts.rate,
        duration_secs: publishing_time.as_secs_f64(),
        published,
        acknowledged: acknowledged_total,
        expected,
        received: unique,
        lost: expected.saturating_sub(unique),
        duplicates,
        throughput_in: acknowledged_total as f64 / publishing_time.as_secs_f64(),
        throughput_out: unique as f64 / elapsed.as_secs_f64(),
        latency: Latency::from_histogram(&histogram),
    })
}

fn connect_options(opts: &PubSubOptions, client_id: String, index: usize) -> ConnectOptions {
    ConnectOptions {
        broker: opts.publisher_brokers[0],
        source: (!opts.sources.is_empty()).then(|| opts.sources[index % opts.sources.len()]),
        client_id,
        version: opts.version,
        clean_start: true,
        keep_alive: 600,
        timeout: Duration::from_secs(30),
    }
}

struct SubscriberOutcome {
    histogram: Histogram<u64>,
    tracker: SequenceTracker,
}

async fn subscriber(
    mut reader: PacketReader,
    mut writer: PacketWriter,
    publishers: usize,
    base: Instant,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<SubscriberOutcome> {
    let mut histogram = new_histogram();
    let mut tracker = SequenceTracker::new(publishers);
    loop {
        while let Some(packet) = reader.try_next()? {
            match packet {
                Packet::Publish(p) => {
                    let now = nanos_since(base);
                    if let Some((publisher, seq, sent)) = client::decode_payload(&p.payload) {
                        let micros = now.saturating_sub(sent) / 1000;
                        histogram.saturating_record(micros.max(1));
                        tracker.record(publisher, seq);
                        counters.received.fetch_add(1, Ordering::Relaxed);
                    }
                    match p.qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => {
                            writer.queue(&Packet::PubAck(Ack::new(p.packet_id, 0)))?
                        }
                        QoS::ExactlyOnce => {
                            writer.queue(&Packet::PubRec(Ack::new(p.packet_id, 0)))?
                        }
                    }
                }
                Packet::PubRel(a) => writer.queue(&Packet::PubComp(Ack::new(a.packet_id, 0)))?,
                _ => {}
            }
        }
        writer.flush().await?;
        tokio::select! {
            filled = reader.fill() => filled?,
            _ = stop.changed() => break,
        }
    }
    Ok(SubscriberOutcome { histogram, tracker })
}

struct PublisherPlan {
    id: u32,
    reader: PacketReader,
    writer: PacketWriter,
    topic: String,
    qos: QoS,
    payload: usize,
    rate: Option<f64>,
    inflight: usize,
    base: Instant,
    end: Instant,
    drain_timeout: Duration,
    counters: Arc<Counters>,
}

struct PublisherOutcome {
    published: u64,
    acknowledged: u64,
}

/// Bytes queued before the publisher writes them out.
const WRITE_BATCH: usize = 64 * 1024;

async fn publisher(mut plan: PublisherPlan) -> anyhow::Result<PublisherOutcome> {
    let period = plan
        .rate
        .map(|r| Duration::from_secs_f64(1.0 / r.max(0.001)));
    let topic = plan.topic.clone();
    let mut next_send = Instant::now();
    let mut seq: u64 = 0;
    let mut outstanding: usize = 0;
    let mut acknowledged: u64 = 0;
    let qos0 = plan.qos == QoS::AtMostOnce;
    let mut payload = client::payload_buffer(plan.payload);
    loop {
        let now = Instant::now();
        if now >= plan.end {
            break;
        }
        while (qos0 || outstanding < plan.inflight)
            && period.is_none_or(|_| next_send <= now)
            && plan.writer.pending_bytes() < WRITE_BATCH
        {
            client::stamp_payload(&mut payload, plan.id, seq, nanos_since(plan.base));
            let packet_id = if qos0 { 0 } else { (seq % 65_535) as u16 + 1 };
            plan.writer
                .queue_publish(&topic, plan.qos, packet_id, &payload)?;
            seq += 1;
            plan.counters.published.fetch_add(1, Ordering::Relaxed);
            if !qos0 {
                outstanding += 1;
            }
            if let Some(p) = period {
                next_send += p;
            }
        }
        plan.writer.flush().await?;
        if qos0 && period.is_none() {
            tokio::task::yield_now().await;
            continue;
        }
        let can_send = qos0 || outstanding < plan.inflight;
        let wake = if can_send {
            next_send.min(plan.end)
        } else {
            plan.end
        };
        tokio::select! {
            filled = plan.reader.fill(), if !qos0 => {
                filled?;
                handle_acks(&mut plan, &mut outstanding, &mut acknowledged)?;
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
    // Wait for the acknowledgements of what was sent.
    let deadline = Instant::now() + plan.drain_timeout;
    while outstanding > 0 && !qos0 {
        plan.writer.flush().await?;
        match tokio::time::timeout_at(deadline, plan.reader.fill()).await {
            Ok(filled) => filled?,
            Err(_) => break,
        }
        handle_acks(&mut plan, &mut outstanding, &mut acknowledged)?;
    }
    if qos0 {
        acknowledged = seq;
    }
    Ok(PublisherOutcome {
        published: seq,
        acknowledged,
    })
}

fn handle_acks(
    plan: &mut PublisherPlan,
    outstanding: &mut usize,
    acknowledged: &mut u64,
) -> anyhow::Result<()> {
    while let Some(packet) = plan.reader.try_next()? {
        match packet {
            Packet::PubAck(_) | Packet::PubComp(_) => {
                *outstanding = outstanding.saturating_sub(1);
                *acknowledged += 1;
            }
            Packet::PubRec(a) => plan
                .writer
                .queue(&Packet::PubRel(Ack::new(a.packet_id, 0)))?,
            _ => {}
        }
    }
    Ok(())
}

/// A human summary of a run.
pub fn summary(r: &PubSubReport) -> String {
    format!(
        "pubsub {}x{} over {} topic(s), QoS {}, {} B, {}: in {:.0} msg/s, out {:.0} msg/s, \
         latency p50 {:.2} ms p90 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms max {:.2} ms, \
         expected {} received {} lost {} duplicates {}",
        r.publishers,
        r.subscribers,
        r.topics,
        r.qos,
        r.payload_bytes,
        r.offered_rate
            .map_or("max rate".to_owned(), |v| format!("{v:.0} msg/s offered")),
        r.throughput_in,
        r.throughput_out,
        r.latency.p50_ms,
        r.latency.p90_ms,
        r.latency.p99_ms,
        r.latency.p999_ms,
        r.latency.max_ms,
        r.expected,
        r.received,
        r.lost,
        r.duplicates,
    )
}
