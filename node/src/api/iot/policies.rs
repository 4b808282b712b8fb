//! `/policies` and their versions, attachments (`/target-policies`, the older
//! `/principal-policies`), and the questions asked of them (`/effective-policies`,
//! `/test-authorization`).

use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiResult, ControlPlane};
use crate::api::error::AwsError;
use crate::api::request::{ApiRequest, with_token};
use crate::services::policies::{
    ActionType, AuthInfo, AuthResult, AuthorizationTest, parse_version_id,
};

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DocumentBody {
    policy_document: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TargetBody {
    target: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct EffectiveBody {
    principal: Option<String>,
    /// Cognito identities are not kept; the pool is accepted and ignored.
    #[serde(rename = "cognitoIdentityPoolId")]
    _cognito_identity_pool_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AuthInfoBody {
    action_type: Option<String>,
    #[serde(default)]
    resources: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TestAuthorizationBody {
    principal: Option<String>,
    #[serde(rename = "cognitoIdentityPoolId")]
    _cognito_identity_pool_id: Option<String>,
    #[serde(default)]
    auth_infos: Vec<AuthInfoBody>,
    #[serde(default)]
    policy_names_to_add: Vec<String>,
    #[serde(default)]
    policy_names_to_skip: Vec<String>,
}

/// The policy document of the request body, required.
fn document_of(request: &ApiRequest) -> Result<String, AwsError> {
    let body: DocumentBody = request.json()?;
    body.policy_document
        .ok_or_else(|| AwsError::invalid_request("policyDocument is required"))
}

fn target_of(request: &ApiRequest) -> Result<String, AwsError> {
    let body: TargetBody = request.json()?;
    body.target
        .filter(|t| !t.is_empty())
        .ok_or_else(|| AwsError::invalid_request("target is required"))
}

/// The principal of the older policy operations, from `x-amzn-iot-principal`.
fn principal_header(request: &ApiRequest) -> Result<String, AwsError> {
    request
        .header("x-amzn-iot-principal")
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            AwsError::invalid_request("The principal (x-amzn-iot-principal) is required")
        })
}

impl ControlPlane {
    fn policy_summary(&self, name: &str) -> Value {
        json!({ "policyName": name, "policyArn": self.policies.arn(name) })
    }

    fn policy_list(&self, field: &str, names: &[String], next: Option<String>) -> Value {
        let summaries: Vec<Value> = names.iter().map(|n| self.policy_summary(n)).collect();
        with_token(json!({ field: summaries }), "nextMarker", next)
    }

    pub(super) async fn create_policy(&self, name: &str, request: &ApiRequest) -> ApiResult {
        let version = self.policies.create(name, document_of(request)?).await?;
        Ok(json!({
            "policyName": name,
            "policyArn": self.policies.arn(name),
            "policyDocument": version.document,
            "policyVersionId": version.version_id.to_string(),
        }))
    }

    pub(super) async fn get_policy(&self, name: &str) -> ApiResult {
        let (policy, version) = self.policies.get(name).await?;
        Ok(json!({
            "policyName": name,
            "policyArn": self.policies.arn(name),
            "policyDocument": version.document,
            "defaultVersionId": policy.default_version.to_string(),
            "creationDate": policy.creation_date,
            "lastModifiedDate": policy.last_modified_date,
            "generationId": policy.generation_id,
        }))
    }

    pub(super) async fn delete_policy(&self, name: &str) -> ApiResult {
        self.policies.delete(name).await?;
        Ok(json!({}))
    }

    pub(super) async fn list_policies(&self, request: &ApiRequest) -> ApiResult {
        let page = request.marker_page()?;
        let (policies, next) = self.policies.list(&page).await?;
        let names: Vec<String> = policies.into_iter().map(|p| p.name).collect();
        Ok(self.policy_list("policies", &names, next))
    }

    pub(super) async fn create_policy_version(
        &self,
        name: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        let document = document_of(request)?;
        let set_as_default = request.query_flag("setAsDefault")?;
        let version = self
            .policies
            .create_version(name, document, set_as_default)
            .await?;
        Ok(json!({
            "policyArn": self.policies.arn(name),
            "policyDocument": version.document,
            "policyVersionId": version.version_id.to_string(),
            "isDefaultVersion": set_as_default,
        }))
    }

    pub(super) async fn get_policy_version(&self, name: &str, version: &str) -> ApiResult {
        let id = parse_version_id(version)?;
        let (policy, version) = self.policies.version(name, id).await?;
        Ok(json!({
            "policyArn": self.policies.arn(name),
            "policyName": name,
            "policyDocument": version.document,
            "policyVersionId": id.to_string(),
            "isDefaultVersion": policy.default_version == id,
            "creationDate": version.create_date,
            "lastModifiedDate": version.create_date,
            "generationId": policy.generation_id,
        }))
    }

    pub(super) async fn list_policy_versions(&self, name: &str) -> ApiResult {
        let (policy, versions) = self.policies.versions(name).await?;
        let versions: Vec<Value> = versions
            .iter()
            .map(|v| {
                json!({
                    "versionId": v.version_id.to_string(),
                    "isDefaultVersion": v.version_id == policy.default_version,
                    "createDate": v.create_date,
                })
            })
            .collect();
        Ok(json!({ "policyVersions": versions }))
    }

    pub(super) async fn set_default_policy_version(&self, name: &str, version: &str) -> ApiResult {
        let id = parse_version_id(version)?;
        self.policies.set_default_version(name, id).await?;
        Ok(json!({}))
    }

    pub(super) async fn delete_policy_version(&self, name: &str, version: &str) -> ApiResult {
        let id = parse_version_id(version)?;
        self.policies.delete_version(name, id).await?;
        Ok(json!({}))
    }

    pub(super) async fn attach_policy(&self, policy: &str, request: &ApiRequest) -> ApiResult {
        self.policies.attach(policy, &target_of(request)?).await?;
        Ok(json!({}))
    }

    pub(super) async fn detach_policy(&self, policy: &str, request: &ApiRequest) -> ApiResult {
        self.policies.detach(policy, &target_of(request)?).await?;
        Ok(json!({}))
    }

    pub(super) async fn attach_principal_policy(
        &self,
        policy: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        self.policies
            .attach(policy, &principal_header(request)?)
            .await?;
        Ok(json!({}))
    }

    pub(super) async fn detach_principal_policy(
        &self,
        policy: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        self.policies
            .detach(policy, &principal_header(request)?)
            .await?;
        Ok(json!({}))
    }

    pub(super) async fn list_principal_policies(&self, request: &ApiRequest) -> ApiResult {
        let principal = principal_header(request)?;
        let page = request.marker_page()?;
        let (names, next) = self.policies.attached(&principal, false, &page).await?;
        Ok(self.policy_list("policies", &names, next))
    }

    pub(super) async fn list_attached_policies(
        &self,
        target: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        let recursive = request.query_flag("recursive")?;
        let page = request.marker_page()?;
        let (names, next) = self.policies.attached(target, recursive, &page).await?;
        Ok(self.policy_list("policies", &names, next))
    }

    pub(super) async fn list_targets_for_policy(
        &self,
        policy: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        let page = request.marker_page()?;
        let (targets, next) = self.policies.targets(policy, false, &page).await?;
        Ok(with_token(
            json!({ "targets": targets }),
            "nextMarker",
            next,
        ))
    }

    pub(super) async fn list_policy_principals(&self, request: &ApiRequest) -> ApiResult {
        let policy = request.header("x-amzn-iot-policy").ok_or_else(|| {
            AwsError::invalid_request("The policy name (x-amzn-iot-policy) is required")
        })?;
        let page = request.marker_page()?;
        let (principals, next) = self.policies.targets(policy, true, &page).await?;
        Ok(with_token(
            json!({ "principals": principals }),
            "nextMarker",
            next,
        ))
    }

    pub(super) async fn get_effective_policies(&self, request: &ApiRequest) -> ApiResult {
        let body: EffectiveBody = request.json()?;
        let effective: Vec<Value> = self
            .policies
            .effective(body.principal.as_deref(), request.query("thingName"))
            .await?
            .into_iter()
            .map(|(name, document)| {
                json!({
                    "policyName": name,
                    "policyArn": self.policies.arn(&name),
                    "policyDocument": document,
                })
            })
            .collect();
        Ok(json!({ "effectivePolicies": effective }))
    }

    pub(super) async fn test_authorization(&self, request: &ApiRequest) -> ApiResult {
        let body: TestAuthorizationBody = request.json()?;
        let auth_infos = body
            .auth_infos
            .into_iter()
            .map(|info| {
                Ok(AuthInfo {
                    action: ActionType::parse(info.action_type.as_deref().unwrap_or_default())?,
                    resources: info.resources,
                })
            })
            .collect::<Result<Vec<_>, crate::services::error::Error>>()?;
        let results = self
            .policies
            .test_authorization(AuthorizationTest {
                principal: body.principal,
                client_id: request.query("clientId").map(str::to_owned),
                auth_infos,
                policies_to_add: body.policy_names_to_add,
                policies_to_skip: body.policy_names_to_skip,
            })
            .await?;
        let results: Vec<Value> = results.iter().map(|r| self.auth_result(r)).collect();
        Ok(json!({ "authResults": results }))
    }

    fn auth_result(&self, result: &AuthResult) -> Value {
        let summaries = |names: &[String]| -> Vec<Value> {
            names.iter().map(|n| self.policy_summary(n)).collect()
        };
        json!({
            "authInfo": {
                "actionType": result.info.action.as_str(),
                "resources": result.info.resources,
            },
            "allowed": { "policies": summaries(&result.allowing) },
            "denied": {
                "implicitDeny": { "policies": summaries(&result.implicitly_denying) },
                "explicitDeny": { "policies": summaries(&result.explicitly_denying) },
            },
            "authDecision": result.decision.as_str(),
            "missingContextValues": [],
        })
    }
}
