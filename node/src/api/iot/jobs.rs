//! `/jobs`, `/things/{thing}/jobs`, `/job-templates` and `/event-configurations`: the jobs
//! control plane. Targets are resolved here, through the registry (a group's things,
//! recursively), and a `documentSource` is fetched here, so that the jobs service sees only
//! things and documents.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{ApiResult, ControlPlane};
use crate::api::error::AwsError;
use crate::api::request::{ApiRequest, with_token};
use crate::services::arn::Kind;
use crate::services::jobs::control::{
    Counts, JobFilter, JobSpec, JobUpdate, Resolved, TemplateSpec,
};
use crate::services::jobs::model::{
    ExecutionRecord, ExecutionStatus, JobRecord, JobStatus, TargetSelection, TemplateRecord,
};
use crate::services::records::Page;

/// Seconds with a millisecond fraction, as the control plane stamps times.
fn stamp(ms: u64) -> Value {
    json!(ms as f64 / 1000.0)
}

fn selection_name(selection: TargetSelection) -> &'static str {
    match selection {
        TargetSelection::Continuous => "CONTINUOUS",
        TargetSelection::Snapshot => "SNAPSHOT",
    }
}

/// Largest document fetched from a `documentSource`.
const MAX_DOCUMENT_SOURCE: usize = 32_768;

impl ControlPlane {
    /// The things and groups `targets` name, each checked to exist.
    async fn resolve_targets(&self, targets: &[String]) -> Result<Resolved, AwsError> {
        let arns = self.registry.arns();
        let mut resolved = Resolved::default();
        for target in targets {
            if let Some(thing) = arns.name(Kind::Thing, target) {
                if self.registry.find_thing(thing).await?.is_none() {
                    return Err(AwsError::not_found(format!("Thing {thing} does not exist")));
                }
                resolved.things.push(thing.to_owned());
                resolved.named.push(thing.to_owned());
            } else if let Some(group) = arns.name(Kind::ThingGroup, target) {
                let mut page = Page::first(1000);
                loop {
                    let (things, next) = self.registry.things_in_group(group, true, &page).await?;
                    resolved.things.extend(things);
                    match next {
                        Some(token) => page = Page::after_token(1000, Some(&token))?,
                        None => break,
                    }
                }
                resolved.groups.push(group.to_owned());
            } else {
                return Err(AwsError::invalid_request(format!(
                    "Target {target} is not the ARN of a thing or thing group of this account"
                )));
            }
        }
        Ok(resolved)
    }

    /// The document a `documentSource` URL holds.
    async fn fetch_document(&self, url: &str) -> Result<String, AwsError> {
        if url.len() > 1350 {
            return Err(AwsError::invalid_request(
                "documentSource may be at most 1350 characters long",
            ));
        }
        let (status, body) = crate::http_client::shared()
            .send_body(
                "GET",
                url,
                &[],
                "application/json",
                bytes::Bytes::new(),
                std::time::Duration::from_secs(10),
            )
            .await
            .map_err(|e| {
                AwsError::invalid_request(format!(
                    "The job document at {url} could not be read: {e}"
                ))
            })?;
        if !(200..300).contains(&status) {
            return Err(AwsError::invalid_request(format!(
                "The job document at {url} could not be read: HTTP {status}"
            )));
        }
        if body.len() > MAX_DOCUMENT_SOURCE {
            return Err(AwsError::invalid_request(format!(
                "The job document at {url} is larger than {MAX_DOCUMENT_SOURCE} bytes"
            )));
        }
        String::from_utf8(body.to_vec()).map_err(|_| {
            AwsError::invalid_request(format!("The job document at {url} is not UTF-8"))
        })
    }

    pub(super) async fn create_job(&self, id: &str, request: &ApiRequest) -> ApiResult {
        let mut spec: JobSpec = request.json()?;
        if spec.document.is_some() && spec.document_source.is_some() {
            return Err(AwsError::invalid_request(
                "Only one of document and documentSource may be given",
            ));
        }
        if spec.document.is_none()
            && let Some(source) = spec.document_source.clone()
        {
            spec.document = Some(self.fetch_document(&source).await?);
        }
        let resolved = self.resolve_targets(&spec.targets).await?;
        let job = self.jobs.create_job(id, spec, resolved).await?;
        let mut answer = json!({ "jobArn": job.job_arn, "jobId": job.job_id });
        if let Some(description) = &job.description {
            answer["description"] = json!(description);
        }
        Ok(answer)
    }

    pub(super) async fn describe_job(&self, id: &str) -> ApiResult {
        let (job, counts) = self.jobs.describe_job(id).await?;
        let mut answer = json!({ "job": job_json(&job, &counts) });
        if let Some(source) = &job.document_source {
            answer["documentSource"] = json!(source);
        }
        Ok(answer)
    }

    pub(super) async fn get_job_document(&self, id: &str) -> ApiResult {
        Ok(json!({ "document": self.jobs.job_document(id).await? }))
    }

    pub(super) async fn list_jobs(&self, request: &ApiRequest) -> ApiResult {
        let page = request.page(50, 250)?;
        let filter = JobFilter {
            status: match request.query("status") {
                None => None,
                Some(s) => Some(JobStatus::parse(s).ok_or_else(|| {
                    AwsError::validation("status", s, "Member must be a job status")
                })?),
            },
            target_selection: match request.query("targetSelection") {
                None => None,
                Some("SNAPSHOT") => Some(TargetSelection::Snapshot),
                Some("CONTINUOUS") => Some(TargetSelection::Continuous),
                Some(other) => {
                    return Err(AwsError::validation(
                        "targetSelection",
                        other,
                        "Member must satisfy enum value set: [SNAPSHOT, CONTINUOUS]",
                    ));
                }
            },
            thing_group: request.query("thingGroupName").map(str::to_owned),
        };
        let (jobs, next) = self
            .jobs
            .list_jobs(&filter, page.after(), page.limit())
            .await?;
        let jobs: Vec<Value> = jobs
            .iter()
            .map(|job| {
                let mut summary = json!({
                    "jobArn": job.job_arn,
                    "jobId": job.job_id,
                    "targetSelection": selection_name(job.target_selection),
                    "status": job.status.name(),
                    "createdAt": stamp(job.created_at_ms),
                    "lastUpdatedAt": stamp(job.last_updated_at_ms),
                    "isConcurrent": false,
                });
                if let Some(completed) = job.completed_at_ms {
                    summary["completedAt"] = stamp(completed);
                }
                summary
            })
            .collect();
        let next = next.map(|id| Page::token_for(&id));
        Ok(with_token(json!({ "jobs": jobs }), "nextToken", next))
    }

    pub(super) async fn update_job(&self, id: &str, request: &ApiRequest) -> ApiResult {
        let update: JobUpdate = request.json()?;
        self.jobs.update_job(id, update).await?;
        Ok(json!({}))
    }

    pub(super) async fn cancel_job(&self, id: &str, request: &ApiRequest) -> ApiResult {
        #[derive(serde::Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct Body {
            reason_code: Option<String>,
            comment: Option<String>,
        }
        let body: Body = request.json()?;
        let force = request.query_flag("force")?;
        let job = self
            .jobs
            .cancel_job(id, force, body.reason_code, body.comment)
            .await?;
        let mut answer = json!({ "jobArn": job.job_arn, "jobId": job.job_id });
        if let Some(description) = &job.description {
            answer["description"] = json!(description);
        }
        Ok(answer)
    }

    pub(super) async fn delete_job(&self, id: &str, request: &ApiRequest) -> ApiResult {
        let force = request.query_flag("force")?;
        self.jobs.delete_job(id, force).await?;
        Ok(json!({}))
    }

    pub(super) async fn associate_targets(&self, id: &str, request: &ApiRequest) -> ApiResult {
        #[derive(serde::Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct Body {
            #[serde(default)]
            targets: Vec<String>,
            comment: Option<String>,
        }
        let body: Body = request.json()?;
        if body.targets.is_empty() {
            return Err(AwsError::invalid_request("targets must not be empty"));
        }
        let resolved = self.resolve_targets(&body.targets).await?;
        let job = self
            .jobs
            .associate_targets(id, body.targets, resolved, body.comment)
            .await?;
        let mut answer = json!({ "jobArn": job.job_arn, "jobId": job.job_id });
        if let Some(description) = &job.description {
            answer["description"] = json!(description);
        }
        Ok(answer)
    }

    pub(super) async fn describe_job_execution(
        &self,
        thing: &str,
        job: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        let number = request.query_u64("executionNumber")?;
        let execution = self.jobs.describe_execution(thing, job, number).await?;
        Ok(json!({ "execution": self.execution_json(&execution) }))
    }

    fn execution_json(&self, e: &ExecutionRecord) -> Value {
        let mut answer = json!({
            "jobId": e.job_id,
            "status": e.status.name(),
            "forceCanceled": e.force_canceled,
            "statusDetails": { "detailsMap": e.status_details },
            "thingArn": self.jobs.thing_arn(&e.thing_name),
            "queuedAt": stamp(e.queued_at_ms),
            "lastUpdatedAt": stamp(e.last_updated_at_ms),
            "executionNumber": e.execution_number,
            "versionNumber": e.version_number,
        });
        if let Some(started) = e.started_at_ms {
            answer["startedAt"] = stamp(started);
        }
        if let Some(at) = e.timeout_at_ms
            && !e.status.is_terminal()
        {
            let now = crate::clock::epoch_millis();
            answer["approximateSecondsBeforeTimedOut"] = json!(at.saturating_sub(now) / 1000);
        }
        answer
    }

    fn summary_json(e: &ExecutionRecord) -> Value {
        let mut summary = json!({
            "status": e.status.name(),
            "queuedAt": stamp(e.queued_at_ms),
            "lastUpdatedAt": stamp(e.last_updated_at_ms),
            "executionNumber": e.execution_number,
            "retryAttempt": e.retry_attempt,
        });
        if let Some(started) = e.started_at_ms {
            summary["startedAt"] = stamp(started);
        }
        summary
    }

    fn status_filter(request: &ApiRequest) -> Result<Option<ExecutionStatus>, AwsError> {
        match request.query("status") {
            None => Ok(None),
            Some(s) => ExecutionStatus::parse(s).map(Some).ok_or_else(|| {
                AwsError::validation("status", s, "Member must be a job execution status")
            }),
        }
    }

    pub(super) async fn list_job_executions_for_job(
        &self,
        job: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        let page = request.page(50, 250)?;
        let status = Self::status_filter(request)?;
        let (executions, next) = self
            .jobs
            .executions_of_job(job, status, page.after(), page.limit())
            .await?;
        let items: Vec<Value> = executions
            .iter()
            .map(|e| {
                json!({
                    "thingArn": self.jobs.thing_arn(&e.thing_name),
                    "jobExecutionSummary": Self::summary_json(e),
                })
            })
            .collect();
        let next = next.map(|t| Page::token_for(&t));
        Ok(with_token(
            json!({ "executionSummaries": items }),
            "nextToken",
            next,
        ))
    }

    pub(super) async fn list_job_executions_for_thing(
        &self,
        thing: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        let page = request.page(50, 250)?;
        let status = Self::status_filter(request)?;
        let (executions, next) = self
            .jobs
            .executions_of_thing(
                thing,
                status,
                request.query("jobId"),
                page.after(),
                page.limit(),
            )
            .await?;
        let items: Vec<Value> = executions
            .iter()
            .map(|e| {
                json!({
                    "jobId": e.job_id,
                    "jobExecutionSummary": Self::summary_json(e),
                })
            })
            .collect();
        let next = next.map(|t| Page::token_for(&t));
        Ok(with_token(
            json!({ "executionSummaries": items }),
            "nextToken",
            next,
        ))
    }

    pub(super) async fn cancel_job_execution(
        &self,
        thing: &str,
        job: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        #[derive(serde::Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct Body {
            expected_version: Option<u64>,
            status_details: Option<BTreeMap<String, String>>,
        }
        let body: Body = request.json()?;
        let force = request.query_flag("force")?;
        self.jobs
            .cancel_execution(
                thing,
                job,
                force,
                body.expected_version,
                body.status_details,
            )
            .await?;
        Ok(json!({}))
    }

    pub(super) async fn delete_job_execution(
        &self,
        thing: &str,
        job: &str,
        number: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        let number: u64 = number.parse().map_err(|_| {
            AwsError::validation("executionNumber", number, "Member must be a whole number")
        })?;
        let force = request.query_flag("force")?;
        self.jobs
            .delete_execution(thing, job, number, force)
            .await?;
        Ok(json!({}))
    }

    pub(super) async fn create_job_template(&self, id: &str, request: &ApiRequest) -> ApiResult {
        let mut spec: TemplateSpec = request.json()?;
        if spec.document.is_none()
            && spec.job_arn.is_none()
            && let Some(source) = spec.document_source.clone()
        {
            spec.document = Some(self.fetch_document(&source).await?);
        }
        let template = self.jobs.create_template(id, spec).await?;
        Ok(json!({
            "jobTemplateArn": template.job_template_arn,
            "jobTemplateId": template.job_template_id,
        }))
    }

    pub(super) async fn describe_job_template(&self, id: &str) -> ApiResult {
        let template = self.jobs.describe_template(id).await?;
        Ok(template_json(&template))
    }

    pub(super) async fn list_job_templates(&self, request: &ApiRequest) -> ApiResult {
        let page = request.page(50, 250)?;
        let (templates, next) = self.jobs.list_templates(page.after(), page.limit()).await?;
        let items: Vec<Value> = templates
            .iter()
            .map(|t| {
                json!({
                    "jobTemplateArn": t.job_template_arn,
                    "jobTemplateId": t.job_template_id,
                    "description": t.description,
                    "createdAt": stamp(t.created_at_ms),
                })
            })
            .collect();
        let next = next.map(|t| Page::token_for(&t));
        Ok(with_token(
            json!({ "jobTemplates": items }),
            "nextToken",
            next,
        ))
    }

    pub(super) async fn delete_job_template(&self, id: &str) -> ApiResult {
        self.jobs.delete_template(id).await?;
        Ok(json!({}))
    }

    pub(super) async fn describe_event_configurations(&self) -> ApiResult {
        const TYPES: [&str; 12] = [
            "THING",
            "THING_GROUP",
            "THING_TYPE",
            "THING_GROUP_MEMBERSHIP",
            "THING_GROUP_HIERARCHY",
            "THING_TYPE_ASSOCIATION",
            "JOB",
            "JOB_EXECUTION",
            "POLICY",
            "CERTIFICATE",
            "CA_CERTIFICATE",
            "PROVISIONING",
        ];
        let config = self.jobs.event_configurations().await?;
        let configurations: serde_json::Map<String, Value> = TYPES
            .iter()
            .map(|t| {
                let enabled = config.get(*t).copied().unwrap_or(false);
                ((*t).to_owned(), json!({ "Enabled": enabled }))
            })
            .collect();
        Ok(json!({ "eventConfigurations": configurations }))
    }

    pub(super) async fn update_event_configurations(&self, request: &ApiRequest) -> ApiResult {
        #[derive(serde::Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct Body {
            #[serde(default)]
            event_configurations: BTreeMap<String, Enabled>,
        }
        #[derive(serde::Deserialize, Default)]
        struct Enabled {
            #[serde(rename = "Enabled", default)]
            enabled: bool,
        }
        let body: Body = request.json()?;
        let changes: BTreeMap<String, bool> = body
            .event_configurations
            .into_iter()
            .map(|(k, v)| (k, v.enabled))
            .collect();
        self.jobs.update_event_configurations(&changes).await?;
        Ok(json!({}))
    }
}

/// DescribeJob's `job`.
fn job_json(job: &JobRecord, counts: &Counts) -> Value {
    let mut details = json!(counts);
    if !job.rollout.done && job.status == JobStatus::InProgress {
        details["processingTargets"] = json!(job.targets);
    }
    let mut answer = json!({
        "jobArn": job.job_arn,
        "jobId": job.job_id,
        "targetSelection": selection_name(job.target_selection),
        "status": job.status.name(),
        "forceCanceled": job.force_canceled,
        "targets": job.targets,
        "createdAt": stamp(job.created_at_ms),
        "lastUpdatedAt": stamp(job.last_updated_at_ms),
        "jobProcessDetails": details,
        "isConcurrent": false,
    });
    let optional = [
        ("description", job.description.as_ref().map(|d| json!(d))),
        ("reasonCode", job.reason_code.as_ref().map(|d| json!(d))),
        ("comment", job.comment.as_ref().map(|d| json!(d))),
        ("completedAt", job.completed_at_ms.map(stamp)),
        ("presignedUrlConfig", job.presigned_url_config.clone()),
        (
            "jobExecutionsRolloutConfig",
            job.job_executions_rollout_config.as_ref().map(|c| json!(c)),
        ),
        ("abortConfig", job.abort_config.as_ref().map(|c| json!(c))),
        (
            "timeoutConfig",
            job.timeout_config.as_ref().map(|c| json!(c)),
        ),
        (
            "jobExecutionsRetryConfig",
            job.job_executions_retry_config.as_ref().map(|c| json!(c)),
        ),
        (
            "schedulingConfig",
            job.scheduling_config.as_ref().map(|c| json!(c)),
        ),
        (
            "jobTemplateArn",
            job.job_template_arn.as_ref().map(|c| json!(c)),
        ),
        (
            "documentParameters",
            job.document_parameters.as_ref().map(|c| json!(c)),
        ),
        ("namespaceId", job.namespace_id.as_ref().map(|c| json!(c))),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            answer[name] = value;
        }
    }
    answer
}

fn template_json(t: &TemplateRecord) -> Value {
    let mut answer = json!({
        "jobTemplateArn": t.job_template_arn,
        "jobTemplateId": t.job_template_id,
        "description": t.description,
        "createdAt": stamp(t.created_at_ms),
    });
    let optional = [
        ("document", t.document.as_ref().map(|d| json!(d))),
        (
            "documentSource",
            t.document_source.as_ref().map(|d| json!(d)),
        ),
        ("presignedUrlConfig", t.presigned_url_config.clone()),
        (
            "jobExecutionsRolloutConfig",
            t.job_executions_rollout_config.as_ref().map(|c| json!(c)),
        ),
        ("abortConfig", t.abort_config.as_ref().map(|c| json!(c))),
        ("timeoutConfig", t.timeout_config.as_ref().map(|c| json!(c))),
        (
            "jobExecutionsRetryConfig",
            t.job_executions_retry_config.as_ref().map(|c| json!(c)),
        ),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            answer[name] = value;
        }
    }
    if !t.maintenance_windows.is_empty() {
        answer["maintenanceWindows"] = json!(t.maintenance_windows);
    }
    answer
}
