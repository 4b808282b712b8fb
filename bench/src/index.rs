//! The `index` scenario: fleet indexing at scale. `load` registers a fleet over the HTTP API
//! (CreateThing with attributes, then each thing's shadow); `measure` connects some of them
//! over MQTT, then times SearchIndex for a selective and a wide query, and the lag from a
//! registry write being acknowledged to it being found by SearchIndex while writes go on at a
//! set rate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use halyard_node::auth::identity::sigv4::{SignedRequest, authorization_header, format_amz_date};
use halyard_node::mqtt::ProtocolVersion;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::client::{self, ConnectOptions};
use crate::stats::{Latency, new_histogram};
use shared_histogram::Shared;

/// Models the fleet's things are spread over: a query on one matches 1 %.
pub const MODELS: usize = 100;

#[derive(Debug, Clone)]
pub struct IndexOptions {
    pub http: SocketAddr,
    pub mqtt: SocketAddr,
    pub credentials: (String, String),
    pub region: String,
    pub things: usize,
    /// Things are `{prefix}{n}`.
    pub prefix: String,
    /// HTTP connections used at once.
    pub connections: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub things: usize,
    pub seconds: f64,
    pub requests_per_sec: f64,
    pub failed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MeasureReport {
    pub things: usize,
    pub online: usize,
    pub selective_query: String,
    pub selective_matches: usize,
    pub selective: Latency,
    pub wide_query: String,
    pub wide: Latency,
    pub write_rate: f64,
    pub writes: u64,
    pub lag: Latency,
}

/// One keep-alive HTTP connection that signs each request.
struct Api {
    sender: SendRequest<Full<Bytes>>,
    host: String,
    credentials: (String, String),
    region: String,
}

impl Api {
    async fn connect(opts: &IndexOptions) -> anyhow::Result<Self> {
        let tcp = tokio::net::TcpStream::connect(opts.http)
            .await
            .with_context(|| format!("cannot connect to {}", opts.http))?;
        tcp.set_nodelay(true)?;
        let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(driver);
        Ok(Self {
            sender,
            host: opts.http.to_string(),
            credentials: opts.credentials.clone(),
            region: opts.region.clone(),
        })
    }

    async fn call(
        &mut self,
        method: &str,
        service: &str,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<(u16, Value)> {
        let body = body.to_string();
        let amz_date = format_amz_date(
            i64::try_from(halyard_node::clock::epoch_seconds()).unwrap_or(i64::MAX),
        );
        let headers = vec![
            ("host".to_owned(), self.host.clone()),
            ("x-amz-date".to_owned(), amz_date.clone()),
        ];
        let authorization = authorization_header(
            &SignedRequest {
                method,
                raw_path: path,
                raw_query: "",
                headers: &headers,
                body: body.as_bytes(),
            },
            &self.credentials.0,
            &self.credentials.1,
            &self.region,
            service,
            &amz_date,
        );
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .header("x-amz-date", &amz_date)
            .header("authorization", authorization)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    }

    async fn search(&mut self, query: &str, max_results: usize) -> anyhow::Result<Value> {
        let (status, answer) = self
            .call(
                "POST",
                "iot",
                "/indices/search",
                &json!({ "queryString": query, "maxResults": max_results }),
            )
            .await?;
        if status != 200 {
            bail!("SearchIndex {query} answered {status}: {answer}");
        }
        Ok(answer)
    }
}

fn thing_body(n: usize) -> Value {
    json!({ "attributePayload": { "attributes": {
        "model": format!("model-{}", n % MODELS),
        "fw": format!("{}.{}", 1 + n % 4, n % 10),
        "site": format!("site-{}", n % 1000),
    }}})
}

fn shadow_body(n: usize) -> Value {
    json!({ "state": { "reported": { "temp": (n % 50) as f64 + 0.5, "battery": n % 100, "mode": "eco" } } })
}

/// Registers the fleet: every thing, then every thing's shadow.
pub async fn load(opts: IndexOptions) -> anyhow::Result<LoadReport> {
    let started = Instant::now();
    let failed = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..opts.connections.max(1) {
        let opts = opts.clone();
        let failed = Arc::clone(&failed);
        let next = Arc::clone(&next);
        workers.push(tokio::spawn(async move {
            let mut api = Api::connect(&opts).await?;
            loop {
                let n = next.fetch_add(1, Ordering::AcqRel);
                if n >= opts.things * 2 {
                    return anyhow::Ok(());
                }
                let (n, done) = if n < opts.things {
                    let name = format!("{}{n}", opts.prefix);
                    (
                        n,
                        api.call("POST", "iot", &format!("/things/{name}"), &thing_body(n))
                            .await?,
                    )
                } else {
                    let n = n - opts.things;
                    let name = format!("{}{n}", opts.prefix);
                    (
                        n,
                        api.call(
                            "POST",
                            "iotdata",
                            &format!("/things/{name}/shadow"),
                            &shadow_body(n),
                        )
                        .await?,
                    )
                };
                if done.0 != 200 && failed.fetch_add(1, Ordering::AcqRel) < 5 {
                    eprintln!("request for thing {n} answered {}: {}", done.0, done.1);
                }
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(LoadReport {
        things: opts.things,
        seconds,
        requests_per_sec: (opts.things * 2) as f64 / seconds,
        failed: failed.load(Ordering::Acquire),
    })
}

/// The things that are online: every `things / online`-th.
fn online_things(opts: &IndexOptions, online: usize) -> Vec<usize> {
    let step = (opts.things / online.max(1)).max(1);
    (0..opts.things).step_by(step).take(online).collect()
}

pub struct MeasureOptions {
    pub online: usize,
    pub repeat: usize,
    pub write_rate: f64,
    pub write_seconds: f64,
    /// One write in this many is followed until SearchIndex finds it.
    pub sample_every: u64,
}

pub async fn measure(opts: IndexOptions, measure: MeasureOptions) -> anyhow::Result<MeasureReport> {
    // Devices online, each a thing's client id, held until the measurement ends.
    let mut devices = Vec::new();
    for n in online_things(&opts, measure.online) {
        let connect = ConnectOptions {
            broker: opts.mqtt,
            source: None,
            client_id: format!("{}{n}", opts.prefix),
            version: ProtocolVersion::V311,
            clean_start: true,
            keep_alive: 600,
            timeout: Duration::from_secs(30),
        };
        devices.push(
            client::connect(&connect)
                .await
                .context("a device cannot connect")?,
        );
    }
    let mut api = Api::connect(&opts).await?;
    let model = format!(
        "model-{}",
        online_things(&opts, measure.online)
            .first()
            .copied()
            .unwrap_or(0)
            % MODELS
    );
    let selective_query = format!("attributes.model:{model} AND connectivity.connected:true");
    // Connectivity reaches the index a little after the connections.
    let deadline = Instant::now() + Duration::from_secs(60);
    let expected = online_things(&opts, measure.online)
        .iter()
        .filter(|n| {
            *n % MODELS
                == model
                    .trim_start_matches("model-")
                    .parse::<usize>()
                    .unwrap_or(0)
        })
        .count();
    let mut selective_matches = 0;
    while Instant::now() < deadline {
        let found = api.search(&selective_query, 500).await?;
        selective_matches = found["things"].as_array().map_or(0, Vec::len);
        if selective_matches >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let wide_query = "shadow.reported.temp>5 AND attributes.fw:*".to_owned();
    let mut selective = new_histogram();
    let mut wide = new_histogram();
    for _ in 0..measure.repeat {
        let started = Instant::now();
        api.search(&selective_query, 100).await?;
        let _ = selective.record(started.elapsed().as_micros() as u64);
        let started = Instant::now();
        api.search(&wide_query, 100).await?;
        let _ = wide.record(started.elapsed().as_micros() as u64);
    }
    let (writes, lag) = write_lag(&opts, &measure).await?;
    drop(devices);
    Ok(MeasureReport {
        things: opts.things,
        online: measure.online,
        selective_query,
        selective_matches,
        selective: Latency::from_histogram(&selective),
        wide_query,
        wide: Latency::from_histogram(&wide),
        write_rate: measure.write_rate,
        writes,
        lag: Latency::from_histogram(&lag),
    })
}

/// Writes at the set rate (UpdateThing of one attribute); samples are followed until
/// SearchIndex finds them.
async fn write_lag(
    opts: &IndexOptions,
    measure: &MeasureOptions,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let writers = opts.connections.clamp(1, 64);
    let per_writer = Duration::from_secs_f64(writers as f64 / measure.write_rate.max(1.0));
    let stop_at = Instant::now() + Duration::from_secs_f64(measure.write_seconds);
    let written = Arc::new(AtomicU64::new(0));
    let lag = Arc::new(Shared::new(new_histogram()));
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let opts = opts.clone();
        let written = Arc::clone(&written);
        let lag = Arc::clone(&lag);
        let sample_every = measure.sample_every.max(1);
        tasks.push(tokio::spawn(async move {
            let mut api = Api::connect(&opts).await?;
            let mut ticker = tokio::time::interval(per_writer);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = writer;
            while Instant::now() < stop_at {
                ticker.tick().await;
                let seq = written.fetch_add(1, Ordering::AcqRel);
                let thing = format!("{}{}", opts.prefix, n % opts.things);
                n += writers;
                let stamp = format!("w{seq}");
                // A thing without a type has at most three attributes: the stamp is one of them.
                let body = json!({ "attributePayload": { "attributes": { "site": stamp }, "merge": true } });
                let (status, answer) = api.call("PATCH", "iot", &format!("/things/{thing}"), &body).await?;
                if status != 200 {
                    bail!("UpdateThing answered {status}: {answer}");
                }
                if seq.is_multiple_of(sample_every) {
                    let acknowledged = Instant::now();
                    let opts = opts.clone();
                    let lag = Arc::clone(&lag);
                    tokio::spawn(async move {
                        let Ok(mut follower) = Api::connect(&opts).await else {
                            return;
                        };
                        let query = format!("thingName:{thing} AND attributes.site:{stamp}");
                        let give_up = acknowledged + Duration::from_secs(30);
                        while Instant::now() < give_up {
                            if let Ok(found) = follower.search(&query, 1).await
                                && found["things"].as_array().is_some_and(|t| !t.is_empty())
                            {
                                lag.record(acknowledged.elapsed().as_micros() as u64);
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                    });
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    // The last samples' followers finish.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let histogram = lag.take();
    Ok((written.load(Ordering::Acquire), histogram))
}

/// A histogram recorded into from many tasks.
mod shared_histogram {
    use std::sync::Mutex;

    use hdrhistogram::Histogram;

    pub struct Shared(Mutex<Histogram<u64>>);

    impl Shared {
        pub fn new(h: Histogram<u64>) -> Self {
            Self(Mutex::new(h))
        }

        pub fn record(&self, value: u64) {
            if let Ok(mut h) = self.0.lock() {
                let _ = h.record(value);
            }
        }

        pub fn take(&self) -> Histogram<u64> {
            self.0
                .lock()
                .map(|h| h.clone())
                .unwrap_or_else(|_| crate::stats::new_histogram())
        }
    }
}

pub fn load_summary(r: &LoadReport) -> String {
    format!(
        "registered {} things and their shadows in {:.1} s ({:.0} requests/s, {} failed)",
        r.things, r.seconds, r.requests_per_sec, r.failed
    )
}

pub fn measure_summary(r: &MeasureReport) -> String {
    format!(
        "{} things, {} online\nselective `{}` ({} found): p50 {:.2} ms, p99 {:.2} ms\nwide `{}`: p50 {:.2} ms, p99 {:.2} ms\n{} writes at {:.0}/s: lag to searchable p50 {:.1} ms, p99 {:.1} ms ({} samples)",
        r.things,
        r.online,
        r.selective_query,
        r.selective_matches,
        r.selective.p50_ms,
        r.selective.p99_ms,
        r.wide_query,
        r.wide.p50_ms,
        r.wide.p99_ms,
        r.writes,
        r.write_rate,
        r.lag.p50_ms,
        r.lag.p99_ms,
        r.lag.samples,
    )
}
