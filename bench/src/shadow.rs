//! The `shadow` scenario: N devices each keep their own shadow updated as fast as the answers
//! come, over MQTT (publish to `.../shadow/update`, wait for `.../update/accepted`) or over the
//! HTTP data plane (UpdateThingShadow signed with SigV4). Counts accepted updates per second
//! and the latency from request to answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use halyard_node::auth::identity::sigv4::{SignedRequest, authorization_header, format_amz_date};
use halyard_node::mqtt::{Ack, Packet, ProtocolVersion, QoS};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::{self, ConnectOptions, PacketWriter};
use crate::stats::{Latency, new_histogram};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ShadowProtocol {
    Mqtt,
    Http,
}

#[derive(Debug, Clone)]
pub struct ShadowOptions {
    pub protocol: ShadowProtocol,
    /// The MQTT listener (for `Mqtt`) or the HTTP API (for `Http`).
    pub target: SocketAddr,
    pub devices: usize,
    /// Requests each device keeps outstanding: pipelined publishes over MQTT (AWS IoT allows
    /// 10), connections over HTTP.
    pub inflight: usize,
    pub duration: Duration,
    /// Things are `{thing_prefix}{n}`.
    pub thing_prefix: String,
    /// Signing key for HTTP: access key id and secret.
    pub credentials: Option<(String, String)>,
    pub region: String,
    /// Total updates per second offered over all devices; `None` sends each next update as
    /// soon as an answer comes (closed loop, where latency only mirrors the queue).
    pub rate: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShadowReport {
    pub protocol: ShadowProtocol,
    pub devices: usize,
    pub inflight: usize,
    pub offered_rate: Option<f64>,
    pub duration_secs: f64,
    pub accepted: u64,
    pub rejected: u64,
    /// Updates due at the offered rate but not sent, the device's requests all unanswered.
    pub skipped: u64,
    pub updates_per_sec: f64,
    pub latency: Latency,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    rejected: AtomicU64,
    skipped: AtomicU64,
}

/// Each device's period between updates at the offered rate.
fn device_period(opts: &ShadowOptions, senders: usize) -> Option<Duration> {
    opts.rate
        .map(|rate| Duration::from_secs_f64(senders as f64 / rate.max(0.001)))
}

fn update_body(device: usize, seq: u64) -> String {
    format!(
        r#"{{"state":{{"reported":{{"temperature":{},"humidity":{},"seq":{seq}}}}},"clientToken":"{seq}"}}"#,
        20 + (seq % 10),
        40 + (device % 50),
    )
}

pub async fn run(opts: ShadowOptions) -> anyhow::Result<ShadowReport> {
    anyhow::ensure!(opts.devices > 0, "--devices must be at least 1");
    anyhow::ensure!(opts.inflight > 0, "--inflight must be at least 1");
    anyhow::ensure!(
        opts.protocol == ShadowProtocol::Mqtt || opts.credentials.is_some(),
        "--via http needs --credentials"
    );
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::new();
    for device in 0..opts.devices {
        let opts = opts.clone();
        let counters = Arc::clone(&counters);
        let stop = stop.clone();
        match opts.protocol {
            ShadowProtocol::Mqtt => {
                tasks.push(tokio::spawn(mqtt_device(opts, device, counters, stop)));
            }
            ShadowProtocol::Http => {
                for connection in 0..opts.inflight {
                    let (opts, counters, stop) =
                        (opts.clone(), Arc::clone(&counters), stop.clone());
                    tasks.push(tokio::spawn(http_device(
                        opts, device, connection, counters, stop,
                    )));
                }
            }
        }
    }
    let started = Instant::now();
    tokio::time::sleep(opts.duration).await;
    let accepted = counters.accepted.load(Ordering::Acquire);
    let rejected = counters.rejected.load(Ordering::Acquire);
    let elapsed = started.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let mut histogram = new_histogram();
    for task in tasks {
        let device_histogram = task.await.context("device task panicked")??;
        histogram.add(&device_histogram)?;
    }
    Ok(ShadowReport {
        protocol: opts.protocol,
        devices: opts.devices,
        inflight: opts.inflight,
        offered_rate: opts.rate,
        duration_secs: elapsed,
        accepted,
        rejected,
        skipped: counters.skipped.load(Ordering::Acquire),
        updates_per_sec: accepted as f64 / elapsed,
        latency: Latency::from_histogram(&histogram),
    })
}

async fn mqtt_device(
    opts: ShadowOptions,
    device: usize,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Histogram<u64>> {
    let thing = format!("{}{device}", opts.thing_prefix);
    let (mut reader, mut writer) = client::connect(&ConnectOptions {
        broker: opts.target,
        source: None,
        client_id: thing.clone(),
        version: ProtocolVersion::V311,
        clean_start: true,
        keep_alive: 60,
        timeout: Duration::from_secs(10),
    })
    .await
    .with_context(|| format!("device {thing} cannot connect"))?;
    let topic = format!("$aws/things/{thing}/shadow/update");
    let mut histogram = new_histogram();
    // Sent times by sequence number, which is also the client token.
    let mut sent: std::collections::HashMap<u64, Instant> = Default::default();
    let mut seq = 0u64;
    let mut next_packet_id = 0u16;
    let mut send = |writer: &mut PacketWriter, seq: &mut u64| -> anyhow::Result<()> {
        *seq += 1;
        next_packet_id = next_packet_id.checked_add(1).unwrap_or(1);
        writer.queue_publish(
            &topic,
            QoS::AtLeastOnce,
            next_packet_id,
            update_body(device, *seq).as_bytes(),
        )?;
        Ok(())
    };
    let period = device_period(&opts, opts.devices);
    let mut ticker = tokio::time::interval(period.unwrap_or(Duration::from_secs(3600)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Devices start spread over one period, not all at once.
    if let Some(period) = period {
        tokio::time::sleep(period.mul_f64(device as f64 / opts.devices as f64)).await;
        ticker.reset();
    } else {
        for _ in 0..opts.inflight {
            send(&mut writer, &mut seq)?;
            sent.insert(seq, Instant::now());
        }
        writer.flush().await?;
    }
    loop {
        let packet = tokio::select! {
            packet = reader.next() => packet?,
            _ = ticker.tick(), if period.is_some() => {
                if sent.len() < opts.inflight {
                    send(&mut writer, &mut seq)?;
                    sent.insert(seq, Instant::now());
                    writer.flush().await?;
                } else {
                    counters.skipped.fetch_add(1, Ordering::AcqRel);
                }
                continue;
            }
            _ = stop.changed() => break,
        };
        let publishes =
            std::iter::once(packet).chain(std::iter::from_fn(|| reader.try_next().ok().flatten()));
        for packet in publishes {
            let Packet::Publish(publish) = packet else {
                continue;
            };
            if publish.qos == QoS::AtLeastOnce {
                writer.queue(&Packet::PubAck(Ack::new(publish.packet_id, 0)))?;
            }
            let token = token_of(&publish.payload);
            let Some(started) = token.and_then(|t| sent.remove(&t)) else {
                continue;
            };
            if publish.topic.ends_with("/accepted") {
                counters.accepted.fetch_add(1, Ordering::AcqRel);
                let _ = histogram.record(started.elapsed().as_micros() as u64);
            } else {
                counters.rejected.fetch_add(1, Ordering::AcqRel);
            }
            if period.is_none() {
                send(&mut writer, &mut seq)?;
                sent.insert(seq, Instant::now());
            }
        }
        writer.flush().await?;
    }
    let _ = writer.send(&Packet::Disconnect(Default::default())).await;
    Ok(histogram)
}

/// The `clientToken` of an answer, which the bench sets to the request's sequence number.
fn token_of(payload: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Answer<'a> {
        #[serde(rename = "clientToken", borrow)]
        client_token: Option<&'a str>,
    }
    serde_json::from_slice::<Answer<'_>>(payload)
        .ok()?
        .client_token?
        .parse()
        .ok()
}

async fn http_device(
    opts: ShadowOptions,
    device: usize,
    connection: usize,
    counters: Arc<Counters>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Histogram<u64>> {
    let (access_key, secret) = opts
        .credentials
        .clone()
        .context("--via http needs --credentials")?;
    let thing = format!("{}{device}", opts.thing_prefix);
    let tcp = tokio::net::TcpStream::connect(opts.target)
        .await
        .with_context(|| format!("cannot connect to {}", opts.target))?;
    tcp.set_nodelay(true)?;
    let (mut sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    let driver = tokio::spawn(driver);
    let host = opts.target.to_string();
    let path = format!("/things/{thing}/shadow");
    let mut histogram = new_histogram();
    let mut seq = connection as u64 * 1_000_000_000;
    let period = device_period(&opts, opts.devices * opts.inflight);
    let mut ticker = period.map(|p| {
        let mut ticker = tokio::time::interval(p);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        ticker
    });
    while !*stop.borrow() {
        if let Some(ticker) = ticker.as_mut() {
            ticker.tick().await;
        }
        seq += 1;
        let body = update_body(device, seq);
        let amz_date = format_amz_date(
            i64::try_from(halyard_node::clock::epoch_seconds()).unwrap_or(i64::MAX),
        );
        let headers = vec![
            ("host".to_owned(), host.clone()),
            ("x-amz-date".to_owned(), amz_date.clone()),
        ];
        let authorization = authorization_header(
            &SignedRequest {
                method: "POST",
                raw_path: &path,
                raw_query: "",
                headers: &headers,
                body: body.as_bytes(),
            },
            &access_key,
            &secret,
            &opts.region,
            "iotdata",
            &amz_date,
        );
        let request = hyper::Request::post(path.as_str())
            .header("host", &host)
            .header("x-amz-date", &amz_date)
            .header("authorization", authorization)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let started = Instant::now();
        let response = sender.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        if status.is_success() {
            counters.accepted.fetch_add(1, Ordering::AcqRel);
            let _ = histogram.record(started.elapsed().as_micros() as u64);
        } else {
            counters.rejected.fetch_add(1, Ordering::AcqRel);
        }
    }
    driver.abort();
    Ok(histogram)
}

/// The access key id and secret of the first profile in an AWS shared-credentials file.
pub fn read_credentials(path: &std::path::Path) -> anyhow::Result<(String, String)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value = |name: &str| {
        text.lines()
            .filter_map(|line| line.split_once('='))
            .find(|(key, _)| key.trim() == name)
            .map(|(_, value)| value.trim().to_owned())
            .with_context(|| format!("{} has no {name}", path.display()))
    };
    Ok((value("aws_access_key_id")?, value("aws_secret_access_key")?))
}

pub fn summary(report: &ShadowReport) -> String {
    format!(
        "{:?} {} devices x {} in flight, offered {}: {} accepted, {} rejected, {} skipped, {:.0} updates/s, p50 {:.2} ms, p99 {:.2} ms",
        report.protocol,
        report.devices,
        report.inflight,
        report
            .offered_rate
            .map_or("max".to_owned(), |r| format!("{r:.0}/s")),
        report.accepted,
        report.rejected,
        report.skipped,
        report.updates_per_sec,
        report.latency.p50_ms,
        report.latency.p99_ms
    )
}
