//! Actions that leave the node (HTTP, the AWS services, PostgreSQL) run off the evaluation
//! path: each action of each rule has a bounded queue and a worker (HTTP's with a fixed number
//! of exchanges in flight, PostgreSQL's writing what is queued in batches). A full queue is a failure at once,
//! never a wait, so that one slow endpoint holds up no other rule. The outcomes of one
//! message's actions meet in a [`Report`], which sends the rule's error action one report
//! listing every failure once the last action has finished.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use halyard_sql::{Document, Message as SqlMessage, MqttProperties};
use parking_lot::Mutex;
use tokio::sync::{Semaphore, mpsc};

use super::actions::Batching;
use super::aws::{AwsEndpoint, Prepared, signed_headers};
use super::engine::{Compiled, RulesEngine};
use super::timestream::Row;

/// Messages waiting for one action; beyond, the action fails for them at once.
const QUEUE: usize = 10_000;
/// Exchanges one action has in flight at once.
const IN_FLIGHT: usize = 64;
/// AWS tries an HTTP action at most three times, again only on 429 and 5xx.
const TRIES: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const HTTP_TIMEOUT: Duration = Duration::from_secs(3);

/// A failed action, as the error action's report lists it.
#[derive(Debug, Clone)]
pub struct Failure {
    pub action: String,
    pub resource: String,
    pub message: String,
}

impl Failure {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "failedAction": self.action,
            "failedResource": self.resource,
            "errorMessage": self.message,
        })
    }
}

/// The message as the error action's templates read it after the evaluation is over.
pub struct OwnedMessage {
    pub topic: String,
    pub payload: Bytes,
    pub document: Document,
    pub client_id: Option<String>,
    pub principal: Option<String>,
    pub timestamp_ms: i64,
    pub properties: MqttProperties,
}

impl OwnedMessage {
    pub fn of(message: &SqlMessage<'_>) -> OwnedMessage {
        OwnedMessage {
            topic: message.topic.to_owned(),
            payload: Bytes::copy_from_slice(message.payload),
            document: message.document.clone(),
            client_id: message.client_id.map(str::to_owned),
            principal: message.principal.map(str::to_owned),
            timestamp_ms: message.timestamp_ms,
            properties: message.properties.clone(),
        }
    }

    pub fn with<R>(&self, f: impl FnOnce(&SqlMessage<'_>) -> R) -> R {
        f(&SqlMessage {
            topic: &self.topic,
            payload: &self.payload,
            document: &self.document,
            client_id: self.client_id.as_deref(),
            principal: self.principal.as_deref(),
            timestamp_ms: self.timestamp_ms,
            trace_id: None,
            properties: &self.properties,
        })
    }
}

/// Where one message's actions report; the last to report sends the failures, if any, to the
/// rule's error action.
pub struct Report {
    /// The engine, the rule and the message the report is about; `None` for the error
    /// action's own POST, which reports to no one.
    about: Option<(Arc<RulesEngine>, Arc<Compiled>, Arc<OwnedMessage>)>,
    pending: AtomicUsize,
    failures: Mutex<Vec<Failure>>,
}

impl Report {
    /// A report expecting `actions` outcomes, and one more from [`Report::sealed`] once every
    /// action has been started.
    pub fn new(
        engine: Arc<RulesEngine>,
        rule: Arc<Compiled>,
        message: Arc<OwnedMessage>,
        actions: usize,
    ) -> Arc<Report> {
        Arc::new(Report {
            about: Some((engine, rule, message)),
            pending: AtomicUsize::new(actions + 1),
            failures: Mutex::new(Vec::new()),
        })
    }

    /// A report that goes nowhere.
    pub fn new_detached() -> Arc<Report> {
        Arc::new(Report {
            about: None,
            pending: AtomicUsize::new(usize::MAX),
            failures: Mutex::new(Vec::new()),
        })
    }

    /// The outcome of an action that left the node, counted under its name.
    pub fn outcome(&self, action: &str, outcome: Result<(), Failure>) {
        if let Some((engine, rule, _)) = &self.about {
            let label = if outcome.is_ok() {
                "succeeded"
            } else {
                "failed"
            };
            engine.count_action(rule.name(), action, label);
        }
        self.done(outcome);
    }

    pub fn done(&self, outcome: Result<(), Failure>) {
        if let Err(failure) = outcome {
            self.failures.lock().push(failure);
        }
        self.finish_one();
    }

    /// Every action was started.
    pub fn sealed(&self) {
        self.finish_one();
    }

    fn finish_one(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let Some((engine, rule, message)) = &self.about else {
            return;
        };
        let failures = std::mem::take(&mut *self.failures.lock());
        if failures.is_empty() {
            return;
        }
        message.with(|message| engine.send_error_report(rule, message, &failures));
    }
}

/// What an action that leaves the node does for one message.
pub enum Work {
    Http {
        request: Box<Prepared>,
        /// Set for the actions of AWS services: signed again before each try, since the
        /// signature carries the time.
        signing: Option<Arc<AwsEndpoint>>,
    },
    /// A row for PostgreSQL (the timestream action).
    Row(Box<Row>),
}

impl Work {
    pub fn row(&self) -> Option<&Row> {
        match self {
            Work::Row(row) => Some(row),
            Work::Http { .. } => None,
        }
    }
}

/// One message's work for an action that leaves the node.
pub struct OutboundJob {
    pub work: Work,
    /// What failed, as the error report names it.
    pub resource: String,
    /// The action's name in reports and metrics (`HttpAction`, `S3Action`).
    pub action: String,
    pub report: Arc<Report>,
}

/// Where an action's worker sends its work.
pub enum Destination {
    Http,
    /// HTTP, consecutive JSON messages for one URL sent together as a JSON array.
    HttpBatched(Batching),
    Postgres(Arc<tokio_postgres::Config>),
}

/// An action's queue and worker. Dropping it (the rule was replaced or deleted) lets the
/// worker finish what is queued and end.
pub struct Sink {
    sender: mpsc::Sender<OutboundJob>,
    /// Messages waiting, as `halyard_rule_action_queue_depth` shows them.
    depth: prometheus::IntGauge,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sink")
    }
}

impl Sink {
    pub fn start(destination: Destination, depth: prometheus::IntGauge) -> Sink {
        let (sender, receiver) = mpsc::channel(QUEUE);
        match destination {
            Destination::Http => {
                tokio::spawn(worker(receiver, depth.clone()));
            }
            Destination::HttpBatched(batching) => {
                tokio::spawn(batching_worker(receiver, depth.clone(), batching));
            }
            Destination::Postgres(config) => {
                tokio::spawn(super::timestream::worker(receiver, depth.clone(), config));
            }
        }
        Sink { sender, depth }
    }

    /// Queues `job`, or gives it back when the queue is full.
    pub fn offer(&self, job: OutboundJob) -> Result<(), OutboundJob> {
        self.sender.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job) => job,
        })?;
        self.depth.inc();
        Ok(())
    }
}

async fn worker(mut receiver: mpsc::Receiver<OutboundJob>, depth: prometheus::IntGauge) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(job) = receiver.recv().await {
        depth.dec();
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        tokio::spawn(async move {
            let outcome = match &job.work {
                Work::Http { request, signing } => {
                    send_with_retries(request, signing.as_deref()).await
                }
                Work::Row(_) => Err("a row for PostgreSQL reached an HTTP worker".to_owned()),
            };
            let outcome = outcome.map_err(|message| Failure {
                action: job.action.clone(),
                resource: job.resource.clone(),
                message,
            });
            job.report.outcome(&job.action, outcome);
            drop(slot);
        });
    }
}

/// Gathers what comes within `batching.open` of a batch's first message, up to its count and
/// bytes, and sends each run of JSON messages for one URL (and the same headers) as one
/// request whose body is their array; each message's outcome is its request's.
async fn batching_worker(
    mut receiver: mpsc::Receiver<OutboundJob>,
    depth: prometheus::IntGauge,
    batching: Batching,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut held: Option<OutboundJob> = None;
    loop {
        let first = match held.take() {
            Some(job) => job,
            None => match receiver.recv().await {
                Some(job) => {
                    depth.dec();
                    job
                }
                None => return,
            },
        };
        let mut batch = vec![first];
        let mut bytes = batch[0].body_len();
        let deadline = tokio::time::Instant::now() + batching.open;
        while batch.len() < batching.messages && batch[0].is_json() {
            let Ok(Some(next)) = tokio::time::timeout_at(deadline, receiver.recv()).await else {
                break;
            };
            depth.dec();
            if !next.joins(&batch[0]) || bytes + next.body_len() > batching.bytes {
                held = Some(next);
                break;
            }
            bytes += next.body_len();
            batch.push(next);
        }
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        tokio::spawn(async move {
            let outcome = match batched_request(&batch) {
                Some((request, signing)) => send_with_retries(&request, signing.as_deref()).await,
                None => Err("a row for PostgreSQL reached an HTTP worker".to_owned()),
            };
            for job in &batch {
                let outcome = outcome.clone().map_err(|message| Failure {
                    action: job.action.clone(),
                    resource: job.resource.clone(),
                    message,
                });
                job.report.outcome(&job.action, outcome);
            }
            drop(slot);
        });
    }
}

/// One request carrying every job of `batch`: the JSON array of their bodies (of one, too, so
/// that a receiver always gets the same shape), or a lone message that is not JSON as it is.
fn batched_request(batch: &[OutboundJob]) -> Option<(Prepared, Option<Arc<AwsEndpoint>>)> {
    let Work::Http { request, signing } = &batch.first()?.work else {
        return None;
    };
    let mut combined = (**request).clone();
    if batch[0].is_json() {
        let mut body = Vec::with_capacity(
            batch.iter().map(OutboundJob::body_len).sum::<usize>() + batch.len() + 1,
        );
        body.push(b'[');
        for (i, job) in batch.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            if let Work::Http { request, .. } = &job.work {
                body.extend_from_slice(&request.body);
            }
        }
        body.push(b']');
        combined.body = Bytes::from(body);
    }
    Some((combined, signing.clone()))
}

impl OutboundJob {
    fn body_len(&self) -> usize {
        match &self.work {
            Work::Http { request, .. } => request.body.len(),
            Work::Row(_) => 0,
        }
    }

    fn is_json(&self) -> bool {
        matches!(&self.work, Work::Http { request, .. } if request.content_type == "application/json")
    }

    /// Whether this job may go in one request with `first`'s: JSON, to the same URL with the
    /// same headers.
    fn joins(&self, first: &OutboundJob) -> bool {
        match (&self.work, &first.work) {
            (Work::Http { request: a, .. }, Work::Http { request: b, .. }) => {
                self.is_json() && a.url == b.url && a.headers == b.headers
            }
            _ => false,
        }
    }
}

/// Sends the job; again after 429 and 5xx answers, up to three tries in all.
async fn send_with_retries(
    request: &Prepared,
    signing: Option<&AwsEndpoint>,
) -> Result<(), String> {
    let client = crate::http_client::shared();
    let mut backoff = FIRST_BACKOFF;
    let mut tries = 0;
    loop {
        tries += 1;
        let headers = match signing {
            Some(endpoint) => {
                signed_headers(endpoint, request, crate::clock::epoch_seconds_signed())?
            }
            None => request.headers.clone(),
        };
        let outcome = client
            .send_body(
                request.method,
                &request.url,
                &headers,
                request.content_type,
                request.body.clone(),
                HTTP_TIMEOUT,
            )
            .await;
        match outcome {
            Ok((status, _)) if (200..300).contains(&status) => return Ok(()),
            Ok((status, _)) if (status == 429 || status >= 500) && tries < TRIES => {}
            Ok((status, answer)) => {
                let answer = String::from_utf8_lossy(&answer);
                let answer: String = answer.chars().take(300).collect();
                return Err(format!(
                    "{} answered HTTP {status} (after {tries} tries){}{}",
                    request.url,
                    if answer.is_empty() { "" } else { ": " },
                    answer.trim()
                ));
            }
            Err(e) => return Err(e.to_string()),
        }
        tokio::time::sleep(backoff).await;
        backoff *= 2;
    }
}
