//! The control plane (`iot`): thin adapters from AWS's REST paths, query strings and JSON
//! bodies to the registry, certificate, policy and authorizer services, and from their typed
//! answers and errors back to AWS's JSON shapes.

mod authorizers;
mod certificates;
mod groups;
mod indexing;
mod jobs;
mod policies;
mod provisioning;
mod rules;
mod things;

use std::sync::Arc;

use serde_json::{Value, json};

use super::error::AwsError;
use super::request::ApiRequest;
use crate::admission::custom_auth::CustomAuth;
use crate::config::AwsConfig;
use crate::services::authorizers::Authorizers;
use crate::services::certs::Certificates;
use crate::services::index::FleetIndex;
use crate::services::jobs::Jobs;
use crate::services::policies::Policies;
use crate::services::provisioning::Provisioning;
use crate::services::registry::Registry;
use crate::services::rules::Rules;

type ApiResult = Result<Value, AwsError>;

/// The services the control plane reaches.
pub struct ControlPlane {
    pub registry: Registry,
    pub certs: Certificates,
    pub policies: Policies,
    pub authorizers: Authorizers,
    pub rules: Rules,
    pub jobs: Jobs,
    pub provisioning: Provisioning,
    pub index: FleetIndex,
    pub custom: Arc<CustomAuth>,
    pub config: AwsConfig,
}

/// The host of a `Host` header, without its port (`[::1]:8080` gives `::1`).
fn host_of(header: &str) -> String {
    let host = match header.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => header.rsplit_once(':').map_or(header, |(host, _)| host),
    };
    host.to_owned()
}

impl ControlPlane {
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

    /// Routes a verified request to its operation; the operation's name and its answer.
    pub async fn dispatch(&self, request: &ApiRequest) -> (&'static str, ApiResult) {
        let segments: Vec<&str> = request.segments.iter().map(String::as_str).collect();
        let method = request.method.as_str();
        match (method, segments.as_slice()) {
            ("GET", ["things"]) => ("ListThings", self.list_things(request).await),
            ("POST", ["things"]) => ("RegisterThing", self.register_thing(request).await),
            ("POST", ["provisioning-templates"]) => (
                "CreateProvisioningTemplate",
                self.create_provisioning_template(request).await,
            ),
            ("GET", ["provisioning-templates"]) => (
                "ListProvisioningTemplates",
                self.list_provisioning_templates(request).await,
            ),
            ("GET", ["provisioning-templates", name]) => (
                "DescribeProvisioningTemplate",
                self.describe_provisioning_template(name).await,
            ),
            ("PATCH", ["provisioning-templates", name]) => (
                "UpdateProvisioningTemplate",
                self.update_provisioning_template(name, request).await,
            ),
            ("DELETE", ["provisioning-templates", name]) => (
                "DeleteProvisioningTemplate",
                self.delete_provisioning_template(name).await,
            ),
            ("POST", ["provisioning-templates", name, "versions"]) => (
                "CreateProvisioningTemplateVersion",
                self.create_provisioning_template_version(name, request)
                    .await,
            ),
            ("GET", ["provisioning-templates", name, "versions"]) => (
                "ListProvisioningTemplateVersions",
                self.list_provisioning_template_versions(name, request)
                    .await,
            ),
            ("GET", ["provisioning-templates", name, "versions", version]) => (
                "DescribeProvisioningTemplateVersion",
                self.describe_provisioning_template_version(name, version)
                    .await,
            ),
            ("DELETE", ["provisioning-templates", name, "versions", version]) => (
                "DeleteProvisioningTemplateVersion",
                self.delete_provisioning_template_version(name, version)
                    .await,
            ),
            ("POST", ["provisioning-templates", name, "provisioning-claim"]) => (
                "CreateProvisioningClaim",
                self.create_provisioning_claim(name).await,
            ),
            ("PUT", ["jobs", id]) => ("CreateJob", self.create_job(id, request).await),
            ("GET", ["jobs"]) => ("ListJobs", self.list_jobs(request).await),
            ("GET", ["jobs", id]) => ("DescribeJob", self.describe_job(id).await),
            ("PATCH", ["jobs", id]) => ("UpdateJob", self.update_job(id, request).await),
            ("DELETE", ["jobs", id]) => ("DeleteJob", self.delete_job(id, request).await),
            ("PUT", ["jobs", id, "cancel"]) => ("CancelJob", self.cancel_job(id, request).await),
            ("GET", ["jobs", id, "job-document"]) => {
                ("GetJobDocument", self.get_job_document(id).await)
            }
            ("POST", ["jobs", id, "targets"]) => (
                "AssociateTargetsWithJob",
                self.associate_targets(id, request).await,
            ),
            ("GET", ["jobs", id, "things"]) => (
                "ListJobExecutionsForJob",
                self.list_job_executions_for_job(id, request).await,
            ),
            ("GET", ["things", thing, "jobs"]) => (
                "ListJobExecutionsForThing",
                self.list_job_executions_for_thing(thing, request).await,
            ),
            ("GET", ["things", thing, "jobs", job]) => (
                "DescribeJobExecution",
                self.describe_job_execution(thing, job, request).await,
            ),
            ("PUT", ["things", thing, "jobs", job, "cancel"]) => (
                "CancelJobExecution",
                self.cancel_job_execution(thing, job, request).await,
            ),
            ("DELETE", ["things", thing, "jobs", job, "executionNumber", number]) => (
                "DeleteJobExecution",
                self.delete_job_execution(thing, job, number, request).await,
            ),
            ("PUT", ["job-templates", id]) => (
                "CreateJobTemplate",
                self.create_job_template(id, request).await,
            ),
            ("GET", ["job-templates"]) => {
                ("ListJobTemplates", self.list_job_templates(request).await)
            }
            ("GET", ["job-templates", id]) => {
                ("DescribeJobTemplate", self.describe_job_template(id).await)
            }
            ("DELETE", ["job-templates", id]) => {
                ("DeleteJobTemplate", self.delete_job_template(id).await)
            }
            ("GET", ["event-configurations"]) => (
                "DescribeEventConfigurations",
                self.describe_event_configurations().await,
            ),
            ("PATCH", ["event-configurations"]) => (
                "UpdateEventConfigurations",
                self.update_event_configurations(request).await,
            ),
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
            ("GET", ["indexing", "config"]) => (
                "GetIndexingConfiguration",
                self.get_indexing_configuration().await,
            ),
            ("POST", ["indexing", "config"]) => (
                "UpdateIndexingConfiguration",
                self.update_indexing_configuration(request).await,
            ),
            ("GET", ["indices"]) => ("ListIndices", self.list_indices().await),
            ("POST", ["indices", "search"]) => ("SearchIndex", self.search_index(request).await),
            ("POST", ["indices", "statistics"]) => (
                "GetStatistics",
                self.aggregate_index(request, "statistics").await,
            ),
            ("POST", ["indices", "cardinality"]) => (
                "GetCardinality",
                self.aggregate_index(request, "cardinality").await,
            ),
            ("POST", ["indices", "percentiles"]) => (
                "GetPercentiles",
                self.aggregate_index(request, "percentiles").await,
            ),
            ("POST", ["indices", "buckets"]) => (
                "GetBucketsAggregation",
                self.aggregate_index(request, "buckets").await,
            ),
            ("GET", ["indices", name]) => ("DescribeIndex", self.describe_index(name).await),
            ("POST", ["things", name, "connectivity-data"]) => (
                "GetThingConnectivityData",
                self.get_thing_connectivity_data(name).await,
            ),
            ("GET", ["rules"]) => ("ListTopicRules", self.list_topic_rules(request).await),
            ("POST", ["rules", name]) => (
                "CreateTopicRule",
                self.create_topic_rule(name, request).await,
            ),
            ("PATCH", ["rules", name]) => (
                "ReplaceTopicRule",
                self.replace_topic_rule(name, request).await,
            ),
            ("GET", ["rules", name]) => ("GetTopicRule", self.get_topic_rule(name).await),
            ("DELETE", ["rules", name]) => ("DeleteTopicRule", self.delete_topic_rule(name).await),
            ("POST", ["rules", name, "enable"]) => (
                "EnableTopicRule",
                self.set_topic_rule_disabled(name, false).await,
            ),
            ("POST", ["rules", name, "disable"]) => (
                "DisableTopicRule",
                self.set_topic_rule_disabled(name, true).await,
            ),
            ("POST", ["destinations"]) => (
                "CreateTopicRuleDestination",
                self.create_topic_rule_destination(request).await,
            ),
            ("GET", ["destinations"]) => (
                "ListTopicRuleDestinations",
                self.list_topic_rule_destinations(request).await,
            ),
            ("PATCH", ["destinations"]) => (
                "UpdateTopicRuleDestination",
                self.update_topic_rule_destination(request).await,
            ),
            ("GET", ["destinations", arn @ ..]) => (
                "GetTopicRuleDestination",
                self.get_topic_rule_destination(&arn.join("/")).await,
            ),
            ("DELETE", ["destinations", arn @ ..]) => (
                "DeleteTopicRuleDestination",
                self.delete_topic_rule_destination(&arn.join("/")).await,
            ),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(host_of("iot.example.com:8443"), "iot.example.com");
        assert_eq!(host_of("[::1]:8080"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }
}
