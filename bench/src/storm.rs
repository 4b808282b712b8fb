//! A subscribe storm under load: 1:1 traffic at a fixed rate, measured alone and then while
//! other clients add a large number of subscriptions (exact filters and wildcards, several per
//! SUBSCRIBE), spread over the whole measured phase. What a broker's subscription index costs
//! its publishers shows as the second phase's latency against the first's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use halyard_node::mqtt::{
    Packet, Properties, ProtocolVersion, QoS, Subscribe, SubscriptionOptions, TopicSubscription,
};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::client::{self, ConnectOptions};
use crate::pubsub::{self, PubSubOptions, PubSubReport};

#[derive(Debug, Clone)]
pub struct StormOptions {
    /// The traffic: its broker, rate and phase duration are the storm's too.
    pub traffic: PubSubOptions,
    /// Subscriptions added during the second phase.
    pub subscriptions: usize,
    /// Connections that add them.
    pub subscribers: usize,
    /// Filters per SUBSCRIBE packet.
    pub per_packet: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    pub quiet: PubSubReport,
    pub storm: PubSubReport,
    /// Subscriptions acknowledged during the storm phase.
    pub subscribed: usize,
    /// Seconds from the first SUBSCRIBE to the last SUBACK.
    pub subscribe_secs: f64,
    /// Storm p99 over quiet p99.
    pub p99_ratio: f64,
}

pub async fn run(opts: StormOptions) -> anyhow::Result<StormReport> {
    anyhow::ensure!(opts.subscribers > 0, "--storm-clients must be at least 1");
    anyhow::ensure!(opts.subscriptions > 0, "--subscriptions must be at least 1");
    anyhow::ensure!(
        (1..=1000).contains(&opts.per_packet),
        "--per-packet must be 1..1000"
    );
    let mut quiet_traffic = opts.traffic.clone();
    quiet_traffic.topic_prefix = format!("{}-quiet", opts.traffic.topic_prefix);
    let quiet = pubsub::run(quiet_traffic).await.context("quiet phase")?;

    let storm_opts = opts.clone();
    let duration = opts.traffic.duration;
    let storm = tokio::spawn(async move { subscribe_storm(&storm_opts, duration).await });
    let mut storm_traffic = opts.traffic.clone();
    storm_traffic.topic_prefix = format!("{}-storm", opts.traffic.topic_prefix);
    let loaded = pubsub::run(storm_traffic).await.context("storm phase")?;
    let (subscribed, subscribe_secs) = storm.await?.context("subscribe storm")?;
    let p99_ratio = if quiet.latency.p99_ms > 0.0 {
        loaded.latency.p99_ms / quiet.latency.p99_ms
    } else {
        0.0
    };
    Ok(StormReport {
        quiet,
        storm: loaded,
        subscribed,
        subscribe_secs,
        p99_ratio,
    })
}

/// Adds `opts.subscriptions` subscriptions from `opts.subscribers` connections, paced to
/// spread over `over`; how many were acknowledged and how long it took.
async fn subscribe_storm(opts: &StormOptions, over: Duration) -> anyhow::Result<(usize, f64)> {
    let per_client = opts.subscriptions.div_ceil(opts.subscribers);
    let packets_per_client = per_client.div_ceil(opts.per_packet).max(1);
    // Started a little after the traffic, so that the storm falls inside its measured window.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spacing = over.mul_f64(0.8) / u32::try_from(packets_per_client).unwrap_or(u32::MAX);
    let started = Instant::now();
    let limiter = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::with_capacity(opts.subscribers);
    for c in 0..opts.subscribers {
        let broker = opts.traffic.publisher_brokers[0];
        let version = opts.traffic.version;
        let prefix = format!("{}-storm-subs/{c}", opts.traffic.topic_prefix);
        let per_packet = opts.per_packet;
        let limiter = Arc::clone(&limiter);
        tasks.push(tokio::spawn(async move {
            let connected = {
                let _permit = limiter.acquire().await?;
                client::connect(&connect_options(broker, version, &prefix)).await?
            };
            let (mut reader, mut writer) = connected;
            let mut acknowledged = 0;
            let mut next = 0usize;
            for packet in 0..packets_per_client {
                let filters = (next..(next + per_packet).min(per_client))
                    .map(|n| TopicSubscription {
                        // Half exact, half wildcard: both kinds of index entry.
                        filter: if n % 2 == 0 {
                            format!("{prefix}/{n}/state")
                        } else {
                            format!("{prefix}/{n}/+/#")
                        },
                        options: SubscriptionOptions {
                            qos: QoS::AtLeastOnce,
                            ..Default::default()
                        },
                    })
                    .collect::<Vec<_>>();
                next += filters.len();
                if filters.is_empty() {
                    break;
                }
                let packet_id = u16::try_from(packet % 65_535 + 1).unwrap_or(1);
                writer
                    .send(&Packet::Subscribe(Subscribe {
                        packet_id,
                        subscriptions: filters,
                        properties: Properties::default(),
                    }))
                    .await?;
                loop {
                    match tokio::time::timeout(Duration::from_secs(30), reader.next()).await {
                        Ok(Ok(Packet::SubAck(ack))) => {
                            acknowledged += ack.reason_codes.iter().filter(|c| **c < 0x80).count();
                            break;
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(anyhow::Error::from(e)),
                        Err(_) => anyhow::bail!("no SUBACK within 30 s"),
                    }
                }
                tokio::time::sleep(spacing).await;
            }
            anyhow::Ok(acknowledged)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok((total, started.elapsed().as_secs_f64()))
}

fn connect_options(
    broker: SocketAddr,
    version: ProtocolVersion,
    client_id: &str,
) -> ConnectOptions {
    ConnectOptions {
        broker,
        source: None,
        client_id: client_id.replace('/', "-"),
        version,
        clean_start: true,
        keep_alive: 60,
        timeout: Duration::from_secs(30),
    }
}

pub fn summary(r: &StormReport) -> String {
    format!(
        "quiet: {:.0} msg/s out, p50 {:.2} ms, p99 {:.2} ms | storm ({} subscriptions in {:.1} s): \
         {:.0} msg/s out, p50 {:.2} ms, p99 {:.2} ms | p99 x{:.2}; lost {} + {}",
        r.quiet.throughput_out,
        r.quiet.latency.p50_ms,
        r.quiet.latency.p99_ms,
        r.subscribed,
        r.subscribe_secs,
        r.storm.throughput_out,
        r.storm.latency.p50_ms,
        r.storm.latency.p99_ms,
        r.p99_ratio,
        r.quiet.lost,
        r.storm.lost,
    )
}
