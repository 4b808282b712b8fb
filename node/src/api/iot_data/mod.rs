//! The data plane (`iotdata`, `iotdevicegateway`): HTTPS publish, the Device Shadow REST
//! operations and the retained-message reads, for administrators (SigV4) and for devices (a
//! client certificate or a custom authorizer, within their policies).

mod jobs;
mod publish;
mod retained;
mod shadows;

use std::sync::Arc;

use serde_json::Value;

use super::error::AwsError;
use super::request::ApiRequest;
use crate::auth::permissions::{Access, Action};
use crate::broker::Broker;
use crate::services::jobs::Jobs;
use crate::services::shadow::service::ShadowService;

type ApiResult = Result<Value, AwsError>;

/// Signing names that reach the device data plane.
pub const SIGNING_NAMES: [&str; 2] = ["iotdata", "iotdevicegateway"];
/// The signing name of the jobs data plane, whose paths (`/things/{thing}/jobs/...`) the
/// control plane also has.
pub const JOBS_SIGNING_NAME: &str = "iot-jobs-data";

/// How an HTTP caller of the data plane was authenticated.
pub enum Caller {
    /// SigV4 with the node's access keys: an administrator.
    Signed,
    /// A device, with the permissions its certificate or authorizer gave it.
    Device(Arc<Access>),
}

impl Caller {
    fn allows(&self, action: Action, name: &str) -> bool {
        match self {
            Caller::Signed => true,
            Caller::Device(access) => access.allows(action, name),
        }
    }
}

/// What the data plane reaches.
pub struct DataPlane {
    pub broker: Broker,
    pub shadows: ShadowService,
    pub jobs: Jobs,
}

impl DataPlane {
    /// Routes a data-plane request.
    pub async fn dispatch(
        &self,
        request: &ApiRequest,
        caller: &Caller,
    ) -> (&'static str, ApiResult) {
        let segments: Vec<&str> = request.segments.iter().map(String::as_str).collect();
        match (request.method.as_str(), segments.as_slice()) {
            // Devices send the topic's slashes encoded or not.
            ("POST", ["topics", levels @ ..]) if !levels.is_empty() => {
                let topic = levels.join("/");
                ("Publish", self.publish(&topic, request, caller).await)
            }
            ("GET", ["things", thing, "shadow"]) => (
                "GetThingShadow",
                self.get_thing_shadow(thing, request, caller).await,
            ),
            ("POST", ["things", thing, "shadow"]) => (
                "UpdateThingShadow",
                self.update_thing_shadow(thing, request, caller).await,
            ),
            ("DELETE", ["things", thing, "shadow"]) => (
                "DeleteThingShadow",
                self.delete_thing_shadow(thing, request, caller).await,
            ),
            ("GET", ["things", thing, "jobs"]) => (
                "GetPendingJobExecutions",
                self.get_pending_job_executions(thing, caller).await,
            ),
            ("PUT", ["things", thing, "jobs", "$next"]) => (
                "StartNextPendingJobExecution",
                self.start_next_pending_job_execution(thing, request, caller)
                    .await,
            ),
            ("GET", ["things", thing, "jobs", job]) => (
                "DescribeJobExecution",
                self.describe_job_execution(thing, job, request, caller)
                    .await,
            ),
            ("POST", ["things", thing, "jobs", job]) => (
                "UpdateJobExecution",
                self.update_job_execution(thing, job, request, caller).await,
            ),
            ("GET", ["retainedMessage"]) => (
                "ListRetainedMessages",
                self.list_retained_messages(request, caller).await,
            ),
            ("GET", ["retainedMessage", levels @ ..]) => {
                let topic = levels.join("/");
                (
                    "GetRetainedMessage",
                    self.get_retained_message(&topic, caller).await,
                )
            }
            ("GET", ["api", "things", "shadow", "ListNamedShadowsForThing", thing]) => (
                "ListNamedShadowsForThing",
                self.list_named_shadows(thing, request, caller).await,
            ),
            (method, _) => (
                "Unknown",
                Err(AwsError::unknown_operation(
                    method,
                    &format!("/{}", request.segments.join("/")),
                )),
            ),
        }
    }
}
