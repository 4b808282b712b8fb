//! The AWS-shaped HTTP API's front door: every request is read once (body bounded, path split
//! and decoded, headers as signed), its caller identified (a SigV4 signature with the
//! cluster's access keys, a client certificate, or a custom authorizer), and handed by its
//! signing name to the control plane (`iot`) or the data plane (`iot_data`); the answer is
//! counted and timed per operation.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use super::error::AwsError;
use super::iot::ControlPlane;
use super::iot_data::{self, Caller, DataPlane};
use super::request::ApiRequest;
use crate::admission::DeviceAdmission;
use crate::admission::custom_auth::{Credentials, Refusal};
use crate::auth::identity::sigv4::{self, SignedRequest, percent_decode};
use crate::auth::permissions::Access;
use crate::gateway::http::ConnectionInfo;
use crate::services::credentials::AccessKeys;

/// Largest request body accepted (AWS IoT's largest documents are policies, at 2 KiB, and
/// certificates; a megabyte leaves room).
pub(super) const MAX_BODY: usize = 1 << 20;
/// The signing name the control plane answers to.
const CONTROL_PLANE: &str = "iot";

#[derive(Clone)]
pub struct ApiMetrics {
    requests: IntCounterVec,
    latency: HistogramVec,
}

impl ApiMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "halyard_aws_requests_total",
                "AWS API requests by operation and outcome (ok or the AWS error code)",
            ),
            &["operation", "outcome"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "halyard_aws_request_duration_seconds",
                "Time to answer an AWS API request, by operation",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["operation"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(Self { requests, latency })
    }
}

/// What the HTTP API answers with.
pub struct Api {
    pub control: ControlPlane,
    pub data: DataPlane,
    pub admission: Arc<DeviceAdmission>,
    keys: AccessKeys,
    region: String,
    metrics: ApiMetrics,
}

impl Api {
    pub fn new(
        control: ControlPlane,
        data: DataPlane,
        admission: Arc<DeviceAdmission>,
        keys: AccessKeys,
        metrics: ApiMetrics,
    ) -> Self {
        let region = control.config.region.clone();
        Self {
            control,
            data,
            admission,
            keys,
            region,
            metrics,
        }
    }

    /// Verifies a SigV4 signature (header or presigned query) made with the node's keys.
    pub(super) fn verify_signature(
        &self,
        method: &str,
        raw_path: &str,
        raw_query: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<sigv4::Signer, AwsError> {
        let now = crate::clock::epoch_seconds_signed();
        let signed = SignedRequest {
            method,
            raw_path,
            raw_query,
            headers,
            body,
        };
        Ok(sigv4::verify(
            &signed,
            |k| self.keys.secret(k),
            &self.region,
            now,
        )?)
    }
}

/// The request's headers as signed: names in lowercase and, over HTTP/2, the `:authority`
/// pseudo-header as the `host` that HTTP/1.1 clients send and sign.
pub(super) fn header_pairs(
    headers: &axum::http::HeaderMap,
    uri: &axum::http::Uri,
) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    if !headers.contains_key(axum::http::header::HOST)
        && let Some(authority) = uri.authority()
    {
        pairs.push(("host".to_owned(), authority.as_str().to_owned()));
    }
    pairs
}

pub(super) async fn handle(State(api): State<Arc<Api>>, request: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return AwsError::too_large(format!(
                "The request body is larger than {MAX_BODY} bytes or could not be read"
            ))
            .into_response();
        }
    };
    let info = parts.extensions.get::<ConnectionInfo>();
    let headers = header_pairs(&parts.headers, &parts.uri);
    let raw_path = parts.uri.path();
    let raw_query = parts.uri.query().unwrap_or("");
    let query = sigv4::parse_query(raw_query);
    // An `Authorization` header that is not SigV4 (a bearer token, say) is left to the
    // custom authorizers.
    let signed = query.iter().any(|(k, _)| k == "X-Amz-Signature")
        || headers
            .iter()
            .any(|(k, v)| k == "authorization" && v.starts_with(sigv4::ALGORITHM));
    let request = ApiRequest {
        method: parts.method.as_str().to_owned(),
        // Split before decoding, so that an encoded `/` stays inside its segment.
        segments: raw_path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect(),
        query,
        headers,
        body,
    };
    let certificate = info.and_then(|i| i.certificate_id.as_deref());
    let (operation, outcome) = if signed {
        match api.verify_signature(
            &request.method,
            raw_path,
            raw_query,
            &request.headers,
            &request.body,
        ) {
            Err(e) => ("Unauthenticated", Err(e)),
            Ok(signer) if signer.service == CONTROL_PLANE => api.control.dispatch(&request).await,
            Ok(signer) if signer.service == iot_data::JOBS_SIGNING_NAME => {
                api.data.dispatch(&request, &Caller::Signed).await
            }
            Ok(signer) if iot_data::SIGNING_NAMES.contains(&signer.service.as_str()) => {
                api.data.dispatch(&request, &Caller::Signed).await
            }
            Ok(_) => (
                "Unknown",
                Err(AwsError::unknown_operation(&request.method, raw_path)),
            ),
        }
    } else if let Some(id) = certificate {
        match api.admission.device_permissions(id, "").await {
            Ok((permissions, _)) => {
                let caller = Caller::Device(Access::new(permissions, id));
                api.data.dispatch(&request, &caller).await
            }
            Err(_) => ("Unauthenticated", Err(AwsError::forbidden())),
        }
    } else if let Some(info) = info {
        let credentials = Credentials::from_http(&request.headers, &request.query, raw_query);
        match api.admission.authorize_http(info, credentials).await {
            Ok(access) => api.data.dispatch(&request, &Caller::Device(access)).await,
            Err(refusal) => ("Unauthenticated", Err(refused(refusal))),
        }
    } else {
        (
            "Unauthenticated",
            Err(AwsError::from(sigv4::SigV4Error::Missing)),
        )
    };
    let label = match &outcome {
        Ok(_) => "ok",
        Err(e) => e.code,
    };
    api.metrics
        .requests
        .with_label_values(&[operation, label])
        .inc();
    api.metrics
        .latency
        .with_label_values(&[operation])
        .observe(started.elapsed().as_secs_f64());
    match outcome {
        Ok(answer) => (StatusCode::OK, axum::Json(answer)).into_response(),
        Err(e) => {
            tracing::debug!(operation, code = e.code, message = %e.message, "AWS API request refused");
            e.into_response()
        }
    }
}

/// What an HTTP caller an authorizer did not admit is told.
fn refused(refusal: Refusal) -> AwsError {
    match refusal {
        // Nothing to authorize with: the request carried no credentials at all.
        Refusal::NoAuthorizer => AwsError::from(sigv4::SigV4Error::Missing),
        Refusal::Denied(reason) => {
            tracing::debug!(%reason, "custom authentication refused");
            AwsError::unauthorized("Unauthorized")
        }
        Refusal::Unavailable(m) => AwsError::unavailable(m),
    }
}
