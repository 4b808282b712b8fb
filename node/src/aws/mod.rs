//! The AWS IoT-compatible HTTP API: requests signed with SigV4 by the AWS CLI, boto3 or any
//! SDK pointed at `--endpoint-url`, answered in AWS's JSON shapes and error forms.

mod authority;
mod authorizers;
mod certificates;
pub mod credentials;
mod devices;
pub mod error;
mod gate;
mod groups;
pub mod pki;
mod policies;
mod records;
mod request;
mod retained;
mod shadows;
mod things;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use halyard_raft::Store;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::identity::{jwt, sigv4};
use crate::auth::permissions::Access;
use crate::broker::Broker;
use crate::config::AwsConfig;
use crate::gateway::http::ConnectionInfo;
use crate::services::shadow::service::ShadowService;
use credentials::AccessKeys;
use error::AwsError;
use records::Records;
use request::ApiRequest;
use sigv4::{SignedRequest, percent_decode};

/// Largest request body accepted (AWS IoT's largest documents are policies, at 2 KiB, and
/// certificates; a megabyte leaves room).
const MAX_BODY: usize = 1 << 20;
/// The signing name the control plane answers to.
const CONTROL_PLANE: &str = "iot";

type ApiResult = Result<Value, AwsError>;

#[derive(Clone)]
pub struct ApiMetrics {
    requests: IntCounterVec,
    latency: HistogramVec,
    authorizations: IntCounterVec,
    authorizer_latency: HistogramVec,
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
        let authorizations = IntCounterVec::new(
            Opts::new(
                "halyard_custom_authorizations_total",
                "Custom authorizer decisions by authorizer and outcome (allowed, denied, \
                 bad_signature, function_error)",
            ),
            &["authorizer", "outcome"],
        )?;
        let authorizer_latency = HistogramVec::new(
            HistogramOpts::new(
                "halyard_authorizer_function_duration_seconds",
                "Time an authorizer function took to answer, by authorizer",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["authorizer"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(authorizations.clone()))?;
        registry.register(Box::new(authorizer_latency.clone()))?;
        Ok(Self {
            requests,
            latency,
            authorizations,
            authorizer_latency,
        })
    }
}

/// What every operation needs.
pub struct Api {
    records: Records,
    broker: Broker,
    config: AwsConfig,
    keys: AccessKeys,
    ca: pki::CaPair,
    /// The id of `ca`'s certificate.
    own_ca_id: Option<String>,
    metrics: ApiMetrics,
    live: gate::LiveConnections,
    key_sets: jwt::KeySets,
    shadows: ShadowService,
}

/// What a node needs before it serves the API: the access keys and the cluster's CA.
pub struct Bootstrap {
    pub keys: AccessKeys,
    pub ca: pki::CaPair,
}

impl Api {
    pub fn new(
        store: Store,
        broker: Broker,
        config: AwsConfig,
        bootstrap: Bootstrap,
        metrics: ApiMetrics,
        shadows: ShadowService,
    ) -> Self {
        let own_ca_id = pki::parse(&bootstrap.ca.certificate_pem).ok().map(|c| c.id);
        Self {
            shadows,
            records: Records::new(store),
            broker,
            config,
            keys: bootstrap.keys,
            ca: bootstrap.ca,
            own_ca_id,
            metrics,
            live: gate::LiveConnections::default(),
            key_sets: jwt::KeySets::default(),
        }
    }

    /// Loads (or, on the cluster's first start, creates) the access keys and the CA, and
    /// writes `credentials` and `tls/` into `data_dir`.
    pub async fn bootstrap(
        store: &Store,
        config: &AwsConfig,
        data_dir: &std::path::Path,
    ) -> Result<Bootstrap, AwsError> {
        let records = Records::new(store.clone());
        let keys = credentials::load(&records, data_dir, &config.access_keys).await?;
        let ca = authority::load(&records, data_dir, config).await?;
        Ok(Bootstrap { keys, ca })
    }

    fn arn(&self, resource: &str) -> String {
        format!(
            "arn:aws:iot:{}:{}:{resource}",
            self.config.region, self.config.account_id
        )
    }

    /// DescribeEndpoint: the host devices and applications reach the cluster at, for each
    /// endpoint type AWS IoT Core names.
    fn describe_endpoint(&self, request: &ApiRequest) -> ApiResult {
        const TYPES: [&str; 4] = [
            "iot:Data",
            "iot:Data-ATS",
            "iot:CredentialProvider",
            "iot:Jobs",
        ];
        let endpoint_type = request.query("endpointType").unwrap_or("iot:Data");
        if !TYPES.contains(&endpoint_type) {
            return Err(AwsError::invalid_request(format!(
                "Endpoint type {endpoint_type} is not valid; use one of {}",
                TYPES.join(", ")
            )));
        }
        let host = self
            .config
            .public_host
            .clone()
            .or_else(|| self.config.server_names.first().cloned())
            .or_else(|| request.header("host").map(host_of))
            .unwrap_or_else(|| "localhost".to_owned());
        Ok(json!({ "endpointAddress": host }))
    }

    /// Publishes a registry event on `$aws/events/{kind}/{name}/{operation}`, as AWS IoT does.
    fn registry_event(&self, kind: &str, name: &str, operation: &str, thing: &things::ThingRecord) {
        let topic = format!(
            "$aws/events/{kind}/{name}/{}",
            operation.to_ascii_lowercase()
        );
        if !self.broker.wants(&topic) {
            return;
        }
        let timestamp = crate::clock::epoch_millis();
        let payload = json!({
            "eventType": "THING_EVENT",
            "eventId": things::uuid_v4(),
            "timestamp": timestamp,
            "operation": operation,
            "accountId": self.config.account_id,
            "thingId": thing.thing_id,
            "thingName": thing.thing_name,
            "versionNumber": thing.version,
            "thingTypeName": thing.thing_type_name,
            "attributes": thing.attributes,
        });
        self.broker.publish_event(topic, payload.to_string());
    }

    /// Routes a verified request to its operation; the operation's name and its answer.
    async fn dispatch(&self, request: &ApiRequest) -> (&'static str, ApiResult) {
        let segments: Vec<&str> = request.segments.iter().map(String::as_str).collect();
        let method = request.method.as_str();
        match (method, segments.as_slice()) {
            ("GET", ["things"]) => ("ListThings", self.list_things(request).await),
            ("POST", ["things", name]) => ("CreateThing", self.create_thing(name, request).await),
            ("GET", ["things", name]) => ("DescribeThing", self.describe_thing(name).await),
            ("PATCH", ["things", name]) => ("UpdateThing", self.update_thing(name, request).await),
            ("DELETE", ["things", name]) => ("DeleteThing", self.delete_thing(name, request).await),
            ("GET", ["thing-types"]) => ("ListThingTypes", self.list_thing_types(request).await),
            ("POST", ["thing-types", name]) => (
                "CreateThingType",
                self.create_thing_type(name, request).await,
            ),
            ("GET", ["thing-types", name]) => {
                ("DescribeThingType", self.describe_thing_type(name).await)
            }
            ("POST", ["thing-types", name, "deprecate"]) => (
                "DeprecateThingType",
                self.deprecate_thing_type(name, request).await,
            ),
            ("DELETE", ["thing-types", name]) => {
                ("DeleteThingType", self.delete_thing_type(name).await)
            }
            ("POST", ["keys-and-certificate"]) => (
                "CreateKeysAndCertificate",
                self.create_keys_and_certificate(request).await,
            ),
            ("POST", ["certificates"]) => (
                "CreateCertificateFromCsr",
                self.create_certificate_from_csr(request).await,
            ),
            ("GET", ["certificates"]) => (
                "ListCertificates",
                self.list_certificates(request, None).await,
            ),
            ("GET", ["certificates", id]) => {
                ("DescribeCertificate", self.describe_certificate(id).await)
            }
            ("PUT", ["certificates", id]) => (
                "UpdateCertificate",
                self.update_certificate(id, request).await,
            ),
            ("DELETE", ["certificates", id]) => (
                "DeleteCertificate",
                self.delete_certificate(id, request).await,
            ),
            ("POST", ["certificate", "register"]) => (
                "RegisterCertificate",
                self.register_certificate(request).await,
            ),
            ("POST", ["certificate", "register-no-ca"]) => (
                "RegisterCertificateWithoutCA",
                self.register_certificate_without_ca(request).await,
            ),
            ("POST", ["cacertificate"]) => (
                "RegisterCACertificate",
                self.register_ca_certificate(request).await,
            ),
            ("GET", ["cacertificates"]) => (
                "ListCACertificates",
                self.list_ca_certificates(request).await,
            ),
            ("GET", ["cacertificate", id]) => (
                "DescribeCACertificate",
                self.describe_ca_certificate(id).await,
            ),
            ("PUT", ["cacertificate", id]) => (
                "UpdateCACertificate",
                self.update_ca_certificate(id, request).await,
            ),
            ("DELETE", ["cacertificate", id]) => {
                ("DeleteCACertificate", self.delete_ca_certificate(id).await)
            }
            ("GET", ["certificates-by-ca", id]) => (
                "ListCertificatesByCA",
                self.list_certificates(request, Some(id)).await,
            ),
            ("PUT", ["things", name, "principals"]) => (
                "AttachThingPrincipal",
                self.attach_thing_principal(name, request).await,
            ),
            ("DELETE", ["things", name, "principals"]) => (
                "DetachThingPrincipal",
                self.detach_thing_principal(name, request).await,
            ),
            ("GET", ["things", name, "principals"]) => (
                "ListThingPrincipals",
                self.list_thing_principals(name, request).await,
            ),
            ("GET", ["principals", "things"]) => (
                "ListPrincipalThings",
                self.list_principal_things(request).await,
            ),
            ("POST", ["thing-groups", name]) => (
                "CreateThingGroup",
                self.create_thing_group(name, request).await,
            ),
            ("GET", ["thing-groups", name]) => {
                ("DescribeThingGroup", self.describe_thing_group(name).await)
            }
            ("PATCH", ["thing-groups", name]) => (
                "UpdateThingGroup",
                self.update_thing_group(name, request).await,
            ),
            ("DELETE", ["thing-groups", name]) => (
                "DeleteThingGroup",
                self.delete_thing_group(name, request).await,
            ),
            ("GET", ["thing-groups"]) => ("ListThingGroups", self.list_thing_groups(request).await),
            ("PUT", ["thing-groups", "addThingToThingGroup"]) => (
                "AddThingToThingGroup",
                self.add_thing_to_thing_group(request).await,
            ),
            ("PUT", ["thing-groups", "removeThingFromThingGroup"]) => (
                "RemoveThingFromThingGroup",
                self.remove_thing_from_thing_group(request).await,
            ),
            ("PUT", ["thing-groups", "updateThingGroupsForThing"]) => (
                "UpdateThingGroupsForThing",
                self.update_thing_groups_for_thing(request).await,
            ),
            ("GET", ["thing-groups", name, "things"]) => (
                "ListThingsInThingGroup",
                self.list_things_in_thing_group(name, request).await,
            ),
            ("GET", ["things", name, "thing-groups"]) => (
                "ListThingGroupsForThing",
                self.list_thing_groups_for_thing(name, request).await,
            ),
            ("GET", ["policies"]) => ("ListPolicies", self.list_policies(request).await),
            ("POST", ["policies", name]) => {
                ("CreatePolicy", self.create_policy(name, request).await)
            }
            ("GET", ["policies", name]) => ("GetPolicy", self.get_policy(name).await),
            ("DELETE", ["policies", name]) => ("DeletePolicy", self.delete_policy(name).await),
            ("POST", ["policies", name, "version"]) => (
                "CreatePolicyVersion",
                self.create_policy_version(name, request).await,
            ),
            ("GET", ["policies", name, "version"]) => {
                ("ListPolicyVersions", self.list_policy_versions(name).await)
            }
            ("GET", ["policies", name, "version", version]) => (
                "GetPolicyVersion",
                self.get_policy_version(name, version).await,
            ),
            ("PATCH", ["policies", name, "version", version]) => (
                "SetDefaultPolicyVersion",
                self.set_default_policy_version(name, version).await,
            ),
            ("DELETE", ["policies", name, "version", version]) => (
                "DeletePolicyVersion",
                self.delete_policy_version(name, version).await,
            ),
            ("PUT", ["target-policies", name]) => {
                ("AttachPolicy", self.attach_policy(name, request).await)
            }
            ("POST", ["target-policies", name]) => {
                ("DetachPolicy", self.detach_policy(name, request).await)
            }
            ("PUT", ["principal-policies", name]) => (
                "AttachPrincipalPolicy",
                self.attach_principal_policy(name, request).await,
            ),
            ("DELETE", ["principal-policies", name]) => (
                "DetachPrincipalPolicy",
                self.detach_principal_policy(name, request).await,
            ),
            ("GET", ["principal-policies"]) => (
                "ListPrincipalPolicies",
                self.list_principal_policies(request).await,
            ),
            ("GET", ["policy-principals"]) => (
                "ListPolicyPrincipals",
                self.list_policy_principals(request).await,
            ),
            ("POST", ["attached-policies", target]) => (
                "ListAttachedPolicies",
                self.list_attached_policies(target, request).await,
            ),
            ("POST", ["policy-targets", name]) => (
                "ListTargetsForPolicy",
                self.list_targets_for_policy(name, request).await,
            ),
            ("POST", ["effective-policies"]) => (
                "GetEffectivePolicies",
                self.get_effective_policies(request).await,
            ),
            ("POST", ["authorizer", name]) => (
                "CreateAuthorizer",
                self.create_authorizer(name, request).await,
            ),
            ("GET", ["authorizer", name]) => {
                ("DescribeAuthorizer", self.describe_authorizer(name).await)
            }
            ("PUT", ["authorizer", name]) => (
                "UpdateAuthorizer",
                self.update_authorizer(name, request).await,
            ),
            ("DELETE", ["authorizer", name]) => {
                ("DeleteAuthorizer", self.delete_authorizer(name).await)
            }
            ("POST", ["authorizer", name, "test"]) => (
                "TestInvokeAuthorizer",
                self.test_invoke_authorizer(name, request).await,
            ),
            ("GET", ["authorizers"]) => ("ListAuthorizers", self.list_authorizers(request).await),
            ("POST", ["default-authorizer"]) => (
                "SetDefaultAuthorizer",
                self.set_default_authorizer(request).await,
            ),
            ("GET", ["default-authorizer"]) => (
                "DescribeDefaultAuthorizer",
                self.describe_default_authorizer().await,
            ),
            ("GET", ["endpoint"]) => ("DescribeEndpoint", self.describe_endpoint(request)),
            ("POST", ["test-authorization"]) => {
                ("TestAuthorization", self.test_authorization(request).await)
            }
            _ => (
                "Unknown",
                Err(AwsError::unknown_operation(
                    method,
                    &format!("/{}", request.segments.join("/")),
                )),
            ),
        }
    }
}

pub use devices::{DeviceServices, router};
pub use gate::follow_registry;

/// Serves the HTTP routes on a plain listener until `shutdown` turns true; `anonymous` admits
/// MQTT over WebSocket without credentials.
pub async fn run(
    listener: TcpListener,
    api: Arc<Api>,
    anonymous: Option<crate::gateway::Admission>,
    shutdown: watch::Receiver<bool>,
) {
    crate::gateway::http::run_http_listener(listener, router(api), anonymous, shutdown).await;
}

async fn handle(State(api): State<Arc<Api>>, request: Request) -> Response {
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
            Ok(signer) if signer.service == CONTROL_PLANE => api.dispatch(&request).await,
            Ok(signer) if devices::DATA_PLANE.contains(&signer.service.as_str()) => {
                api.dispatch_data(&request, &devices::Caller::Signed).await
            }
            Ok(_) => (
                "Unknown",
                Err(AwsError::unknown_operation(&request.method, raw_path)),
            ),
        }
    } else if let Some(id) = certificate {
        match api.device_permissions(id, "").await {
            Ok((permissions, _)) => {
                let caller = devices::Caller::Device(Access::new(permissions, id));
                api.dispatch_data(&request, &caller).await
            }
            Err(_) => ("Unauthenticated", Err(AwsError::forbidden())),
        }
    } else if let Some(info) = info {
        let credentials =
            authorizers::Credentials::from_http(&request.headers, &request.query, raw_query);
        match api.authorize_http(info, credentials).await {
            Ok(access) => {
                api.dispatch_data(&request, &devices::Caller::Device(access))
                    .await
            }
            Err(e) => ("Unauthenticated", Err(e)),
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

/// The host of a `Host` header, without its port (`[::1]:8080` gives `::1`).
fn host_of(header: &str) -> String {
    let host = match header.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => header.rsplit_once(':').map_or(header, |(host, _)| host),
    };
    host.to_owned()
}

/// Whole seconds since the epoch, as policies, tokens and signatures count time.
fn epoch_seconds() -> i64 {
    i64::try_from(crate::clock::epoch_seconds()).unwrap_or(i64::MAX)
}

/// The request's headers as signed: names in lowercase and, over HTTP/2, the `:authority`
/// pseudo-header as the `host` that HTTP/1.1 clients send and sign.
fn header_pairs(headers: &axum::http::HeaderMap, uri: &axum::http::Uri) -> Vec<(String, String)> {
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

impl Api {
    /// Verifies a SigV4 signature (header or presigned query) made with the node's keys.
    fn verify_signature(
        &self,
        method: &str,
        raw_path: &str,
        raw_query: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<sigv4::Signer, AwsError> {
        let now = epoch_seconds();
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
            &self.config.region,
            now,
        )?)
    }
}
