//! The Device Shadow service: answers get, update and delete requests published on the shadow
//! topics, and carries out the same operations for the HTTP API, publishing the same
//! notifications either way.
//!
//! Requests for one shadow are taken in the order they arrived on this node, so that a
//! device's `update` followed by its `get` sees the update; requests for different shadows
//! run concurrently.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};

use super::document::{
    self, NameError, Section, ShadowDocument, ShadowError, metadata_for, parse_plain_request,
    parse_update, with_token,
};
use super::store::{ShadowStore, ShadowStoreError};
use crate::broker::{Broker, InFlight, ServiceRequest, Session, TopicService};
use crate::clock::epoch_seconds;
use crate::config::ShadowConfig;
use crate::metrics::ShadowMetrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Get,
    Update,
    Delete,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Get => "get",
            Operation::Update => "update",
            Operation::Delete => "delete",
        }
    }
}

/// A thing's classic shadow (`shadow` none) or one of its named shadows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShadowName {
    pub thing: String,
    pub shadow: Option<String>,
}

impl ShadowName {
    pub fn new(thing: &str, shadow: Option<&str>) -> Self {
        Self {
            thing: thing.to_owned(),
            shadow: shadow.map(str::to_owned),
        }
    }

    fn shadow(&self) -> Option<&str> {
        self.shadow.as_deref()
    }

    /// `$aws/things/{thing}/shadow` or `$aws/things/{thing}/shadow/name/{shadow}`.
    pub fn topic_prefix(&self) -> String {
        match &self.shadow {
            None => format!("$aws/things/{}/shadow", self.thing),
            Some(name) => format!("$aws/things/{}/shadow/name/{name}", self.thing),
        }
    }

    /// The name AWS's "No shadow exists" message gives.
    fn display_name(&self) -> &str {
        self.shadow.as_deref().unwrap_or(&self.thing)
    }

    /// Checks the names against AWS's patterns; the message names the one that fails.
    pub fn check(&self) -> Result<(), NameError> {
        let valid = |name: &str, max: usize, extra: &[u8]| {
            (1..=max).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b":_-".contains(&b) || extra.contains(&b))
        };
        if !valid(&self.thing, 128, b"") {
            return Err(NameError::Thing);
        }
        if let Some(name) = &self.shadow
            && !valid(name, 64, b"$")
        {
            return Err(NameError::Shadow);
        }
        Ok(())
    }
}

/// The thing, shadow and operation of a request topic:
/// `$aws/things/{thing}/shadow[/name/{shadow}]/{get|update|delete}`.
pub fn request_topic(topic: &str) -> Option<(&str, Option<&str>, Operation)> {
    let rest = topic.strip_prefix("$aws/things/")?;
    let (thing, rest) = rest.split_once("/shadow/")?;
    if thing.is_empty() || thing.contains('/') {
        return None;
    }
    let (shadow, operation) = match rest.strip_prefix("name/") {
        Some(named) => {
            let (shadow, operation) = named.split_once('/')?;
            (Some(shadow), operation)
        }
        None => (None, rest),
    };
    let operation = match operation {
        "get" => Operation::Get,
        "update" => Operation::Update,
        "delete" => Operation::Delete,
        _ => return None,
    };
    Some((thing, shadow, operation))
}

/// Where a request came from: an MQTT publish (with the session to answer when there is one)
/// or the HTTP API, whose caller gets the answer in the response.
#[derive(Clone, Copy)]
pub enum Origin<'a> {
    Mqtt {
        requester: Option<&'a Arc<Session>>,
        /// The request's place in its connection's limit, given up as it is answered.
        in_flight: Option<&'a InFlight>,
    },
    Http,
}

impl Origin<'_> {
    fn label(&self) -> &'static str {
        match self {
            Origin::Mqtt { .. } => "mqtt",
            Origin::Http => "http",
        }
    }
}

fn section_json(section: &Section) -> Option<Value> {
    match section {
        Section::Absent => None,
        Section::Remove => Some(Value::Null),
        Section::Merge(map) => Some(Value::Object(map.clone())),
    }
}

impl From<&ShadowStoreError> for ShadowError {
    fn from(e: &ShadowStoreError) -> Self {
        match e {
            ShadowStoreError::Shadow(e) => e.clone(),
            ShadowStoreError::Store(_) | ShadowStoreError::Corrupt(_) => ShadowError::internal(),
        }
    }
}

struct Job {
    name: ShadowName,
    operation: Operation,
    payload: Bytes,
    requester: Option<Arc<Session>>,
    in_flight: Option<InFlight>,
    /// Where an HTTP request's caller waits for the outcome; none for MQTT.
    answer: Option<tokio::sync::oneshot::Sender<Result<Value, ShadowStoreError>>>,
}

struct Inner {
    store: ShadowStore,
    broker: Broker,
    config: ShadowConfig,
    metrics: ShadowMetrics,
    /// Requests waiting behind the one being served, per shadow; a shadow is in the map
    /// while a task serves it.
    queues: Mutex<HashMap<ShadowName, VecDeque<Job>>>,
}

#[derive(Clone)]
pub struct ShadowService {
    inner: Arc<Inner>,
}

impl crate::services::Service for ShadowService {
    fn name(&self) -> &'static str {
        "shadow"
    }

    fn topics(self: Arc<Self>) -> Option<Arc<dyn TopicService>> {
        Some(self)
    }
}

impl ShadowService {
    /// The service on `context`'s store and broker, with its metrics registered there.
    pub fn build(
        context: &crate::services::ServiceContext<'_>,
        config: ShadowConfig,
    ) -> Result<Self, prometheus::Error> {
        Ok(Self::new(
            context.store.clone(),
            context.broker.clone(),
            config,
            ShadowMetrics::new(context.registry)?,
        ))
    }

    pub fn new(
        store: halyard_raft::Store,
        broker: Broker,
        config: ShadowConfig,
        metrics: ShadowMetrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store: ShadowStore::new(store, config.clone()),
                broker,
                config,
                metrics,
                queues: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn store(&self) -> &ShadowStore {
        &self.inner.store
    }

    /// UpdateThingShadow: taken in turn with the shadow's other requests, so that concurrent
    /// updates without a version all apply rather than race for it.
    pub async fn update(
        &self,
        name: &ShadowName,
        payload: Bytes,
    ) -> Result<Value, ShadowStoreError> {
        self.over_http(name, Operation::Update, payload).await
    }

    /// DeleteThingShadow, in turn with the shadow's other requests.
    pub async fn delete(&self, name: &ShadowName) -> Result<Value, ShadowStoreError> {
        self.over_http(name, Operation::Delete, Bytes::new()).await
    }

    async fn over_http(
        &self,
        name: &ShadowName,
        operation: Operation,
        payload: Bytes,
    ) -> Result<Value, ShadowStoreError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job = Job {
            name: name.clone(),
            operation,
            payload,
            requester: None,
            in_flight: None,
            answer: Some(answer),
        };
        self.submit(job);
        answered
            .await
            .unwrap_or_else(|_| Err(ShadowError::internal().into()))
    }

    /// Queues `job` behind the shadow's requests, or serves it now when there are none; refuses
    /// it with 429 when `shadow.max_queued_requests` already wait for that shadow.
    fn submit(&self, job: Job) {
        let mut queues = self.inner.queues.lock();
        if let Some(waiting) = queues.get_mut(&job.name) {
            if waiting.len() >= self.inner.config.max_queued_requests {
                drop(queues);
                return self.refuse(job, ShadowError::too_many_requests());
            }
            waiting.push_back(job);
            return;
        }
        queues.insert(job.name.clone(), VecDeque::new());
        drop(queues);
        tokio::spawn(self.clone().drain(job));
    }

    /// Answers `job` with `error` without serving it, where serving would have answered.
    fn refuse(&self, job: Job, error: ShadowError) {
        let outcome = Err(error.into());
        match job.answer {
            Some(answer) => {
                let name = &job.name;
                self.inner.finish(
                    job.operation,
                    name,
                    &outcome,
                    None,
                    Origin::Http,
                    Instant::now(),
                );
                let _ = answer.send(outcome);
            }
            None => {
                let token = document::client_token_of(&job.payload);
                let origin = Origin::Mqtt {
                    requester: job.requester.as_ref(),
                    in_flight: job.in_flight.as_ref(),
                };
                self.inner.finish(
                    job.operation,
                    &job.name,
                    &outcome,
                    token.as_deref(),
                    origin,
                    Instant::now(),
                );
            }
        }
    }

    /// The GET answer: state with delta, metadata, version, timestamp.
    pub async fn get(
        &self,
        name: &ShadowName,
        client_token: Option<&str>,
        origin: Origin<'_>,
    ) -> Result<Value, ShadowStoreError> {
        let started = Instant::now();
        let outcome = self.inner.get(name, client_token).await;
        self.inner.finish(
            Operation::Get,
            name,
            &outcome,
            client_token,
            origin,
            started,
        );
        outcome
    }

    /// Applies an update request; publishes `/update/accepted`, `/update/delta` when desired
    /// and reported differ, and `/update/documents`. The answer is the accepted document.
    async fn update_now(
        &self,
        name: &ShadowName,
        payload: &[u8],
        origin: Origin<'_>,
    ) -> Result<Value, ShadowStoreError> {
        let started = Instant::now();
        let (outcome, notifications) = match self.inner.update(name, payload).await {
            Ok((accepted, notifications)) => (Ok(accepted), notifications),
            Err(e) => (Err(e), Vec::new()),
        };
        let client_token = match &outcome {
            Ok(_) => None,
            Err(_) => document::client_token_of(payload),
        };
        self.inner.finish(
            Operation::Update,
            name,
            &outcome,
            client_token.as_deref(),
            origin,
            started,
        );
        // After the answer, as AWS IoT orders them: a device that waits for its update to be
        // accepted is then told the delta.
        for (topic, payload) in notifications {
            self.inner.broker.publish_event(topic, payload);
        }
        outcome
    }

    /// Deletes the shadow, keeping its version; publishes `/delete/accepted`.
    async fn delete_now(
        &self,
        name: &ShadowName,
        client_token: Option<&str>,
        version: Option<u64>,
        origin: Origin<'_>,
    ) -> Result<Value, ShadowStoreError> {
        let started = Instant::now();
        let outcome = self.inner.delete(name, client_token, version).await;
        self.inner.finish(
            Operation::Delete,
            name,
            &outcome,
            client_token,
            origin,
            started,
        );
        outcome
    }
}

impl Inner {
    async fn get(
        &self,
        name: &ShadowName,
        client_token: Option<&str>,
    ) -> Result<Value, ShadowStoreError> {
        let document = self
            .store
            .get(&name.thing, name.shadow())
            .await?
            .ok_or_else(|| ShadowError::no_shadow(name.display_name()))?;
        let (state, metadata) = document.state_and_metadata(true);
        Ok(with_token(
            json!({
                "state": state,
                "metadata": metadata,
                "version": document.version,
                "timestamp": epoch_seconds(),
            }),
            client_token,
        ))
    }

    /// The accepted document, and the delta and documents messages to publish after it.
    async fn update(
        &self,
        name: &ShadowName,
        payload: &[u8],
    ) -> Result<(Value, Vec<(String, String)>), ShadowStoreError> {
        let update = parse_update(payload, &self.config)?;
        let timestamp = epoch_seconds();
        let updated = self
            .store
            .update(&name.thing, name.shadow(), &update, timestamp)
            .await?;
        let client_token = update.client_token.as_deref();
        let mut state = Map::new();
        let mut metadata = Map::new();
        for (section, request) in [("desired", &update.desired), ("reported", &update.reported)] {
            if let Some(value) = section_json(request) {
                metadata.insert(section.into(), document::metadata_of(&value, timestamp));
                state.insert(section.into(), value);
            }
        }
        let accepted = with_token(
            json!({
                "state": state,
                "metadata": metadata,
                "version": updated.current.version,
                "timestamp": timestamp,
            }),
            client_token,
        );
        let prefix = name.topic_prefix();
        let mut notifications = Vec::with_capacity(2);
        let delta_topic = format!("{prefix}/update/delta");
        if self.broker.wants(&delta_topic)
            && let Some(delta) = updated.current.delta()
        {
            let empty = Map::new();
            let delta_metadata = metadata_for(
                &delta,
                updated.current.desired_metadata.as_ref().unwrap_or(&empty),
            );
            let message = with_token(
                json!({
                    "state": delta,
                    "metadata": delta_metadata,
                    "version": updated.current.version,
                    "timestamp": timestamp,
                }),
                client_token,
            );
            notifications.push((delta_topic, message.to_string()));
        }
        let documents_topic = format!("{prefix}/update/documents");
        if !self.broker.wants(&documents_topic) {
            return Ok((accepted, notifications));
        }
        let snapshot = |d: &ShadowDocument| {
            let (state, metadata) = d.state_and_metadata(false);
            json!({ "state": state, "metadata": metadata, "version": d.version })
        };
        let mut documents = json!({
            "current": snapshot(&updated.current),
            "timestamp": timestamp,
        });
        if updated.previous.exists {
            documents["previous"] = snapshot(&updated.previous);
        }
        notifications.push((
            documents_topic,
            with_token(documents, client_token).to_string(),
        ));
        Ok((accepted, notifications))
    }

    async fn delete(
        &self,
        name: &ShadowName,
        client_token: Option<&str>,
        version: Option<u64>,
    ) -> Result<Value, ShadowStoreError> {
        let deleted = self
            .store
            .delete(&name.thing, name.shadow(), version)
            .await?
            .ok_or_else(|| ShadowError::no_shadow(name.display_name()))?;
        Ok(with_token(
            json!({ "version": deleted.version, "timestamp": epoch_seconds() }),
            client_token,
        ))
    }

    /// Counts the request and publishes its answer: the accepted document on every path
    /// (update and delete notify the shadow's subscribers however they were asked; a get
    /// over HTTP answers only its caller), a rejection only to MQTT.
    fn finish(
        &self,
        operation: Operation,
        name: &ShadowName,
        outcome: &Result<Value, ShadowStoreError>,
        client_token: Option<&str>,
        origin: Origin<'_>,
        started: Instant,
    ) {
        let code = match outcome {
            Ok(_) => None,
            Err(e) => {
                if !matches!(e, ShadowStoreError::Shadow(_)) {
                    tracing::warn!(thing = %name.thing, shadow = ?name.shadow, error = %e, "shadow request failed");
                }
                Some(ShadowError::from(e).code)
            }
        };
        self.metrics
            .request(operation.name(), origin.label(), code, started.elapsed());
        let requester = match origin {
            Origin::Mqtt {
                requester,
                in_flight,
            } => {
                if let Some(in_flight) = in_flight {
                    in_flight.release();
                }
                requester
            }
            Origin::Http if operation == Operation::Get => return,
            Origin::Http => None,
        };
        let topic = |result: &str| format!("{}/{}/{result}", name.topic_prefix(), operation.name());
        match outcome {
            Ok(accepted) => {
                self.broker
                    .reply(topic("accepted"), accepted.to_string(), requester);
            }
            Err(e) if matches!(origin, Origin::Mqtt { .. }) => {
                let error = ShadowError::from(e).to_json(epoch_seconds(), client_token);
                self.broker
                    .reply(topic("rejected"), error.to_string(), requester);
            }
            Err(_) => {}
        }
    }
}

impl ShadowService {
    /// Answers one request.
    async fn serve(&self, job: Job) {
        if let Some(answer) = job.answer {
            let outcome = match job.operation {
                Operation::Update => self.update_now(&job.name, &job.payload, Origin::Http).await,
                Operation::Delete => self.delete_now(&job.name, None, None, Origin::Http).await,
                Operation::Get => self.get(&job.name, None, Origin::Http).await,
            };
            let _ = answer.send(outcome);
            return;
        }
        let origin = Origin::Mqtt {
            requester: job.requester.as_ref(),
            in_flight: job.in_flight.as_ref(),
        };
        if job.operation == Operation::Update {
            let _ = self.update_now(&job.name, &job.payload, origin).await;
            return;
        }
        let (client_token, version) = match parse_plain_request(&job.payload, &self.inner.config) {
            Ok(parsed) => parsed,
            Err(e) => {
                let token = document::client_token_of(&job.payload);
                self.inner.finish(
                    job.operation,
                    &job.name,
                    &Err(e.into()),
                    token.as_deref(),
                    origin,
                    Instant::now(),
                );
                return;
            }
        };
        let _ = match job.operation {
            Operation::Get => self.get(&job.name, client_token.as_deref(), origin).await,
            _ => {
                self.delete_now(&job.name, client_token.as_deref(), version, origin)
                    .await
            }
        };
    }

    /// Serves `job`, then whatever queued behind it for the same shadow.
    async fn drain(self, mut job: Job) {
        loop {
            let name = job.name.clone();
            self.serve(job).await;
            let mut queues = self.inner.queues.lock();
            let next = queues.get_mut(&name).and_then(VecDeque::pop_front);
            match next {
                Some(next) => job = next,
                None => {
                    queues.remove(&name);
                    return;
                }
            }
        }
    }
}

impl TopicService for ShadowService {
    fn answers(&self, topic: &str) -> bool {
        request_topic(topic).is_some()
    }

    fn request(&self, request: ServiceRequest) {
        let Some((thing, shadow, operation)) = request_topic(&request.topic) else {
            return;
        };
        let name = ShadowName::new(thing, shadow);
        let origin = Origin::Mqtt {
            requester: request.requester.as_ref(),
            in_flight: None,
        };
        let refuse = |error: ShadowError| {
            let token = document::client_token_of(&request.payload);
            self.inner.finish(
                operation,
                &name,
                &Err(error.into()),
                token.as_deref(),
                origin,
                Instant::now(),
            );
        };
        if let Err(e) = name.check() {
            return refuse(ShadowError::invalid_name(e));
        }
        let in_flight = match &request.requester {
            None => None,
            Some(session) => {
                match InFlight::begin(session, self.inner.config.max_inflight_requests) {
                    Some(counted) => Some(counted),
                    None => return refuse(ShadowError::too_many_requests()),
                }
            }
        };
        let job = Job {
            name,
            operation,
            payload: request.payload,
            requester: request.requester,
            in_flight,
            answer: None,
        };
        self.submit(job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_topics_name_thing_shadow_and_operation() {
        for (topic, expected) in [
            (
                "$aws/things/lamp/shadow/update",
                Some(("lamp", None, Operation::Update)),
            ),
            (
                "$aws/things/lamp/shadow/get",
                Some(("lamp", None, Operation::Get)),
            ),
            (
                "$aws/things/lamp/shadow/name/config/delete",
                Some(("lamp", Some("config"), Operation::Delete)),
            ),
            (
                "$aws/things/lamp/shadow/name/update/update",
                Some(("lamp", Some("update"), Operation::Update)),
            ),
            ("$aws/things/lamp/shadow/update/accepted", None),
            ("$aws/things/lamp/shadow/update/delta", None),
            ("$aws/things/lamp/shadow/name/config/get/accepted", None),
            ("$aws/things/lamp/shadow/name/config", None),
            ("$aws/things/lamp/jobs/get", None),
            ("$aws/things//shadow/get", None),
            ("things/lamp/shadow/get", None),
        ] {
            assert_eq!(request_topic(topic), expected, "{topic}");
        }
    }

    #[test]
    fn names_follow_aws_patterns() {
        assert_eq!(ShadowName::new("lamp-1:a_b", Some("$cfg")).check(), Ok(()));
        assert_eq!(
            ShadowName::new("lamp.1", None).check(),
            Err(NameError::Thing)
        );
        assert_eq!(
            ShadowName::new(&"t".repeat(129), None).check(),
            Err(NameError::Thing)
        );
        assert_eq!(
            ShadowName::new("lamp", Some(&"s".repeat(65))).check(),
            Err(NameError::Shadow)
        );
    }
}
