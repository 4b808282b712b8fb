//! The jobs MQTT API: requests published on `$aws/things/{thing}/jobs/...`, answered on the
//! request's topic `/accepted` or `/rejected`, to the requester even without a subscription,
//! with its `clientToken`. A thing's requests are taken in the order they arrived here, so
//! that an update followed by a get sees the update.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};

use super::Jobs;
use super::device::ForDevice;
use super::error::JobsError;
use super::execution::Update;
use super::model::{ExecutionState, ExecutionStatus};
use super::notify::{document_json, execution_json, pending_lists};
use crate::broker::{InFlight, ServiceRequest, Session, TopicService};
use crate::clock::{epoch_millis, epoch_seconds};

/// Most requests a connection may have unanswered.
const MAX_IN_FLIGHT: u32 = 100;
/// Most requests waiting for one thing.
const MAX_QUEUED: usize = 100;

/// What a request topic asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    GetPending,
    StartNext,
    Describe(&'a str),
    Update(&'a str),
    /// A topic under `jobs/` that names no operation.
    Unknown,
}

impl Request<'_> {
    fn name(&self) -> &'static str {
        match self {
            Request::GetPending => "GetPendingJobExecutions",
            Request::StartNext => "StartNextPendingJobExecution",
            Request::Describe(_) => "DescribeJobExecution",
            Request::Update(_) => "UpdateJobExecution",
            Request::Unknown => "Unknown",
        }
    }
}

/// The thing and request of a topic under `$aws/things/{thing}/jobs/`; none for the topics
/// the service itself publishes (answers and notifications), which are not requests.
pub fn request_topic(topic: &str) -> Option<(&str, Request<'_>)> {
    let rest = topic.strip_prefix("$aws/things/")?;
    let (thing, rest) = rest.split_once("/jobs/")?;
    if thing.is_empty() || thing.contains('/') {
        return None;
    }
    if rest.ends_with("/accepted") || rest.ends_with("/rejected") {
        return None;
    }
    let request = match rest.split('/').collect::<Vec<_>>().as_slice() {
        ["notify"] | ["notify-next"] => return None,
        ["get"] => Request::GetPending,
        ["start-next"] => Request::StartNext,
        [job, "get"] if !job.is_empty() => Request::Describe(job),
        [job, "update"] if !job.is_empty() => Request::Update(job),
        _ => Request::Unknown,
    };
    Some((thing, request))
}

struct Job {
    topic: Arc<str>,
    payload: Bytes,
    requester: Option<Arc<Session>>,
    in_flight: Option<InFlight>,
}

struct Inner {
    jobs: Jobs,
    /// Requests waiting behind the one being served, per thing.
    queues: Mutex<HashMap<String, VecDeque<Job>>>,
}

/// The jobs topics as a [`TopicService`].
#[derive(Clone)]
pub struct JobTopics {
    inner: Arc<Inner>,
}

/// A rejection, as AWS publishes it.
fn rejection(error: &JobsError, client_token: Option<&str>) -> Value {
    let mut body = json!({
        "code": error.mqtt_code(),
        "message": error.to_string(),
        "timestamp": epoch_seconds(),
    });
    if let Some(token) = client_token {
        body["clientToken"] = json!(token);
    }
    if let Some(state) = error.execution_state() {
        body["executionState"] = state_json(state);
    }
    body
}

fn state_json(state: &ExecutionState) -> Value {
    json!({
        "status": state.status.name(),
        "statusDetails": state.status_details,
        "versionNumber": state.version_number,
    })
}

/// A request's fields, checked for their types.
struct Fields {
    object: Map<String, Value>,
}

impl Fields {
    /// The request's JSON object; none when the payload is not UTF-8 JSON of an object
    /// (AWS's `InvalidJson`). An empty payload is an empty request.
    fn parse(payload: &[u8]) -> Option<Self> {
        if payload.iter().all(u8::is_ascii_whitespace) {
            return Some(Self { object: Map::new() });
        }
        let text = std::str::from_utf8(payload).ok()?;
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(object)) => Some(Self { object }),
            _ => None,
        }
    }

    fn client_token(&self) -> Option<String> {
        self.object
            .get("clientToken")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    fn bool(&self, name: &str, default: bool) -> Result<bool, JobsError> {
        match self.object.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(JobsError::invalid(format!("{name} must be a boolean"))),
        }
    }

    fn integer(&self, name: &str) -> Result<Option<i64>, JobsError> {
        match self.object.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| JobsError::invalid(format!("{name} must be an integer"))),
        }
    }

    fn count(&self, name: &str) -> Result<Option<u64>, JobsError> {
        match self.integer(name)? {
            None => Ok(None),
            Some(n) => u64::try_from(n)
                .map(Some)
                .map_err(|_| JobsError::invalid(format!("{name} must not be negative"))),
        }
    }

    fn status_details(&self) -> Result<Option<BTreeMap<String, String>>, JobsError> {
        match self.object.get("statusDetails") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    _ => Err(JobsError::invalid(format!(
                        "statusDetails value of '{k}' must be a string"
                    ))),
                })
                .collect::<Result<_, _>>()
                .map(Some),
            Some(_) => Err(JobsError::invalid(
                "statusDetails must be an object of strings",
            )),
        }
    }

    fn status(&self) -> Result<Option<ExecutionStatus>, JobsError> {
        match self.object.get("status") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => ExecutionStatus::parse(s).map(Some).ok_or_else(|| {
                JobsError::invalid(format!("status '{s}' is not a job execution status"))
            }),
            Some(_) => Err(JobsError::invalid("status must be a string")),
        }
    }
}

impl JobTopics {
    pub fn new(jobs: Jobs) -> Self {
        Self {
            inner: Arc::new(Inner {
                jobs,
                queues: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn submit(&self, thing: String, job: Job) {
        let mut queues = self.inner.queues.lock();
        if let Some(waiting) = queues.get_mut(&thing) {
            if waiting.len() >= MAX_QUEUED {
                drop(queues);
                let token = Fields::parse(&job.payload).and_then(|f| f.client_token());
                let error = JobsError::LimitExceeded("Too many requests for this thing".into());
                return self.answer(
                    &job,
                    "Throttled",
                    Err(error),
                    token.as_deref(),
                    Instant::now(),
                );
            }
            waiting.push_back(job);
            return;
        }
        queues.insert(thing.clone(), VecDeque::new());
        drop(queues);
        let topics = self.clone();
        tokio::spawn(async move { topics.drain(thing, job).await });
    }

    async fn drain(self, thing: String, mut job: Job) {
        loop {
            self.serve(&thing, &job).await;
            let next = {
                let mut queues = self.inner.queues.lock();
                let next = queues.get_mut(&thing).and_then(VecDeque::pop_front);
                if next.is_none() {
                    queues.remove(&thing);
                }
                next
            };
            match next {
                Some(next) => job = next,
                None => return,
            }
        }
    }

    async fn serve(&self, thing: &str, job: &Job) {
        let started = Instant::now();
        let Some((_, request)) = request_topic(&job.topic) else {
            return;
        };
        let fields = match Fields::parse(&job.payload) {
            Some(fields) => fields,
            None => {
                let error = JobsError::InvalidRequest("Request payload is not valid JSON".into());
                return self.answer_code(job, request.name(), "InvalidJson", error, None, started);
            }
        };
        let token = fields.client_token();
        if request == Request::Unknown {
            let error = JobsError::InvalidRequest(format!(
                "Topic {} is not a jobs request topic",
                job.topic
            ));
            return self.answer_code(
                job,
                request.name(),
                "InvalidTopic",
                error,
                token.as_deref(),
                started,
            );
        }
        let outcome = self.handle(thing, &request, &fields).await;
        let outcome = outcome.map(|mut body| {
            if let Some(token) = &token {
                body["clientToken"] = json!(token);
            }
            body
        });
        self.answer(job, request.name(), outcome, token.as_deref(), started);
    }

    async fn handle(
        &self,
        thing: &str,
        request: &Request<'_>,
        fields: &Fields,
    ) -> Result<Value, JobsError> {
        let jobs = &self.inner.jobs;
        let now = epoch_millis();
        match request {
            Request::GetPending => {
                let pending = jobs.pending_executions(thing).await?;
                let refs: Vec<_> = pending.iter().collect();
                let (in_progress, queued) = pending_lists(&refs);
                Ok(json!({
                    "inProgressJobs": in_progress,
                    "queuedJobs": queued,
                    "timestamp": epoch_seconds(),
                }))
            }
            Request::StartNext => {
                let details = fields.status_details()?;
                let step = fields.integer("stepTimeoutInMinutes")?;
                let started = jobs.start_next(thing, details, step).await?;
                let mut body = json!({ "timestamp": epoch_seconds() });
                if let Some(ForDevice { execution, job }) = started {
                    body["execution"] = execution_json(
                        &execution,
                        Some(document_json(&jobs.device_document(&job))),
                        now,
                    );
                }
                Ok(body)
            }
            Request::Describe(job_id) => {
                let number = fields.count("executionNumber")?;
                let include_document = fields.bool("includeJobDocument", true)?;
                let which = (*job_id != "$next").then_some(*job_id);
                if let Some(id) = which {
                    super::model::check_id("jobId", id)?;
                }
                let ForDevice { execution, job } =
                    jobs.describe_for_device(thing, which, number).await?;
                let document = include_document.then(|| document_json(&jobs.device_document(&job)));
                Ok(json!({
                    "execution": execution_json(&execution, document, now),
                    "timestamp": epoch_seconds(),
                }))
            }
            Request::Update(job_id) => {
                super::model::check_id("jobId", job_id)?;
                let update = Update {
                    status: fields.status()?,
                    status_details: fields.status_details()?,
                    expected_version: fields.count("expectedVersion")?,
                    execution_number: fields.count("executionNumber")?,
                    step_timeout_in_minutes: fields.integer("stepTimeoutInMinutes")?,
                };
                let include_state = fields.bool("includeJobExecutionState", false)?;
                let include_document = fields.bool("includeJobDocument", false)?;
                let ForDevice { execution, job } =
                    jobs.update_for_device(thing, job_id, &update).await?;
                let mut body = json!({ "timestamp": epoch_seconds() });
                if include_state {
                    body["executionState"] = state_json(&ExecutionState::from(&execution));
                }
                if include_document {
                    body["jobDocument"] = document_json(&jobs.device_document(&job));
                }
                Ok(body)
            }
            Request::Unknown => Err(JobsError::invalid("Unknown jobs topic")),
        }
    }

    /// A rejection whose code is not one of [`JobsError`]'s own (InvalidJson, InvalidTopic).
    fn answer_code(
        &self,
        job: &Job,
        operation: &str,
        code: &str,
        error: JobsError,
        client_token: Option<&str>,
        started: Instant,
    ) {
        let mut body = rejection(&error, client_token);
        body["code"] = json!(code);
        self.publish(job, operation, "rejected", body, code, started);
    }

    fn answer(
        &self,
        job: &Job,
        operation: &str,
        outcome: Result<Value, JobsError>,
        client_token: Option<&str>,
        started: Instant,
    ) {
        match outcome {
            Ok(body) => self.publish(job, operation, "accepted", body, "accepted", started),
            Err(error) => {
                if matches!(error, JobsError::Internal(_) | JobsError::Unavailable(_)) {
                    tracing::warn!(topic = %job.topic, %error, "jobs request failed");
                }
                let code = error.mqtt_code();
                let body = rejection(&error, client_token);
                self.publish(job, operation, "rejected", body, code, started);
            }
        }
    }

    fn publish(
        &self,
        job: &Job,
        operation: &str,
        result: &str,
        body: Value,
        outcome: &str,
        started: Instant,
    ) {
        if let Some(in_flight) = &job.in_flight {
            in_flight.release();
        }
        let jobs = self.inner.jobs.inner();
        jobs.metrics
            .request(operation, "mqtt", outcome, started.elapsed());
        jobs.broker.reply(
            format!("{}/{result}", job.topic),
            body.to_string(),
            job.requester.as_ref(),
        );
    }
}

impl TopicService for JobTopics {
    fn answers(&self, topic: &str) -> bool {
        request_topic(topic).is_some()
    }

    fn request(&self, request: ServiceRequest) {
        let Some((thing, _)) = request_topic(&request.topic) else {
            return;
        };
        let thing = thing.to_owned();
        let in_flight = match &request.requester {
            None => None,
            Some(session) => match InFlight::begin(session, MAX_IN_FLIGHT) {
                Some(counted) => Some(counted),
                None => {
                    let job = Job {
                        topic: request.topic.clone(),
                        payload: request.payload.clone(),
                        requester: request.requester.clone(),
                        in_flight: None,
                    };
                    let token = Fields::parse(&request.payload).and_then(|f| f.client_token());
                    let error = JobsError::LimitExceeded(
                        "Too many jobs requests in flight on this connection".into(),
                    );
                    return self.answer(
                        &job,
                        "Throttled",
                        Err(error),
                        token.as_deref(),
                        Instant::now(),
                    );
                }
            },
        };
        self.submit(
            thing,
            Job {
                topic: request.topic,
                payload: request.payload,
                requester: request.requester,
                in_flight,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_topics_name_the_thing_and_operation() {
        assert_eq!(
            request_topic("$aws/things/t1/jobs/get"),
            Some(("t1", Request::GetPending))
        );
        assert_eq!(
            request_topic("$aws/things/t1/jobs/start-next"),
            Some(("t1", Request::StartNext))
        );
        assert_eq!(
            request_topic("$aws/things/t1/jobs/$next/get"),
            Some(("t1", Request::Describe("$next")))
        );
        assert_eq!(
            request_topic("$aws/things/t1/jobs/job-7/update"),
            Some(("t1", Request::Update("job-7")))
        );
        assert_eq!(
            request_topic("$aws/things/t1/jobs/job-7/frobnicate"),
            Some(("t1", Request::Unknown))
        );
        for not_a_request in [
            "$aws/things/t1/jobs/notify",
            "$aws/things/t1/jobs/notify-next",
            "$aws/things/t1/jobs/get/accepted",
            "$aws/things/t1/jobs/job-7/update/rejected",
            "$aws/things/t1/shadow/get",
            "$aws/things//jobs/get",
        ] {
            assert_eq!(request_topic(not_a_request), None, "{not_a_request}");
        }
    }

    #[test]
    fn rejections_carry_the_token_and_state_only_where_aws_gives_it() {
        let state = ExecutionState {
            status: ExecutionStatus::Succeeded,
            status_details: BTreeMap::new(),
            version_number: 3,
        };
        let error = JobsError::transition("done", Some(state));
        let body = rejection(&error, Some("tok"));
        assert_eq!(body["code"], "InvalidStateTransition");
        assert_eq!(body["clientToken"], "tok");
        assert_eq!(body["executionState"]["versionNumber"], 3);
        let body = rejection(&JobsError::NotFound("x".into()), None);
        assert_eq!(body["code"], "ResourceNotFound");
        assert!(body.get("executionState").is_none());
        assert!(body.get("clientToken").is_none());
    }
}
