//! Fleet provisioning's control plane: provisioning templates and their versions
//! (`/provisioning-templates...`), claim certificates (`.../provisioning-claim`) and
//! RegisterThing (`POST /things`).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiResult, ControlPlane};
use crate::api::error::AwsError;
use crate::api::request::{ApiRequest, with_token};
use crate::services::provisioning::templates::{
    Hook, NewTemplate, TemplateRecord, TemplateType, TemplateUpdate,
};

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct HookBody {
    target_arn: String,
    payload_version: Option<String>,
}

impl From<HookBody> for Hook {
    fn from(body: HookBody) -> Self {
        Self {
            target_arn: body.target_arn,
            payload_version: body.payload_version.unwrap_or_else(|| "2020-04-01".into()),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct CreateTemplate {
    template_name: String,
    description: Option<String>,
    template_body: String,
    enabled: Option<bool>,
    provisioning_role_arn: String,
    pre_provisioning_hook: Option<HookBody>,
    #[serde(rename = "type")]
    template_type: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct UpdateTemplate {
    description: Option<String>,
    enabled: Option<bool>,
    default_version_id: Option<u32>,
    provisioning_role_arn: Option<String>,
    pre_provisioning_hook: Option<HookBody>,
    remove_pre_provisioning_hook: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct CreateVersion {
    template_body: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RegisterThing {
    template_body: String,
    parameters: Option<BTreeMap<String, String>>,
}

fn hook_json(hook: &Hook) -> Value {
    json!({ "targetArn": hook.target_arn, "payloadVersion": hook.payload_version })
}

fn version_id(text: &str) -> Result<u32, AwsError> {
    text.parse::<u32>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| AwsError::validation("versionId", text, "Member must be a positive integer"))
}

impl ControlPlane {
    fn template_summary(&self, t: &TemplateRecord) -> Value {
        let mut summary = json!({
            "templateArn": self.provisioning.template_arn(&t.name),
            "templateName": t.name,
            "creationDate": t.creation_date,
            "lastModifiedDate": t.last_modified_date,
            "enabled": t.enabled,
            "type": t.template_type.as_str(),
        });
        if let Some(description) = &t.description {
            summary["description"] = json!(description);
        }
        summary
    }

    pub(super) async fn create_provisioning_template(&self, request: &ApiRequest) -> ApiResult {
        let body: CreateTemplate = request.json()?;
        if body.template_body.is_empty() {
            return Err(AwsError::validation(
                "templateBody",
                "",
                "Member must not be null",
            ));
        }
        let template_type = match body.template_type.as_deref() {
            None => TemplateType::FleetProvisioning,
            Some(t) => TemplateType::parse(t)?,
        };
        let record = self
            .provisioning
            .templates()
            .create(NewTemplate {
                name: body.template_name,
                description: body.description,
                body: body.template_body,
                enabled: body.enabled.unwrap_or(false),
                provisioning_role_arn: body.provisioning_role_arn,
                pre_provisioning_hook: body.pre_provisioning_hook.map(Hook::from),
                template_type,
            })
            .await?;
        Ok(json!({
            "templateArn": self.provisioning.template_arn(&record.name),
            "templateName": record.name,
            "defaultVersionId": record.default_version_id,
        }))
    }

    pub(super) async fn describe_provisioning_template(&self, name: &str) -> ApiResult {
        let (template, version) = self.provisioning.templates().describe(name).await?;
        let mut answer = self.template_summary(&template);
        answer["defaultVersionId"] = json!(template.default_version_id);
        answer["templateBody"] = json!(version.template_body);
        answer["provisioningRoleArn"] = json!(template.provisioning_role_arn);
        if let Some(hook) = &template.pre_provisioning_hook {
            answer["preProvisioningHook"] = hook_json(hook);
        }
        Ok(answer)
    }

    pub(super) async fn update_provisioning_template(
        &self,
        name: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        let body: UpdateTemplate = request.json()?;
        self.provisioning
            .templates()
            .update(
                name,
                TemplateUpdate {
                    description: body.description,
                    enabled: body.enabled,
                    default_version_id: body.default_version_id,
                    provisioning_role_arn: body.provisioning_role_arn,
                    pre_provisioning_hook: body.pre_provisioning_hook.map(Hook::from),
                    remove_pre_provisioning_hook: body
                        .remove_pre_provisioning_hook
                        .unwrap_or(false),
                },
            )
            .await?;
        Ok(json!({}))
    }

    pub(super) async fn delete_provisioning_template(&self, name: &str) -> ApiResult {
        self.provisioning.delete_template(name).await?;
        Ok(json!({}))
    }

    pub(super) async fn list_provisioning_templates(&self, request: &ApiRequest) -> ApiResult {
        let page = request.page(50, 250)?;
        let (templates, next) = self.provisioning.templates().list(&page).await?;
        let items: Vec<Value> = templates.iter().map(|t| self.template_summary(t)).collect();
        Ok(with_token(json!({ "templates": items }), "nextToken", next))
    }

    pub(super) async fn create_provisioning_template_version(
        &self,
        name: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        let body: CreateVersion = request.json()?;
        let set_as_default = request.query_flag("setAsDefault")?;
        let (version, is_default) = self
            .provisioning
            .templates()
            .create_version(name, body.template_body, set_as_default)
            .await?;
        Ok(json!({
            "templateArn": self.provisioning.template_arn(name),
            "templateName": name,
            "versionId": version.version_id,
            "isDefaultVersion": is_default,
        }))
    }

    pub(super) async fn describe_provisioning_template_version(
        &self,
        name: &str,
        version: &str,
    ) -> ApiResult {
        let (record, is_default) = self
            .provisioning
            .templates()
            .version(name, version_id(version)?)
            .await?;
        Ok(json!({
            "versionId": record.version_id,
            "creationDate": record.creation_date,
            "templateBody": record.template_body,
            "isDefaultVersion": is_default,
        }))
    }

    pub(super) async fn list_provisioning_template_versions(
        &self,
        name: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        let page = request.page(50, 250)?;
        let (versions, default) = self.provisioning.templates().versions(name).await?;
        let start = page
            .after()
            .and_then(|after| after.parse::<u32>().ok())
            .unwrap_or(0);
        let mut items = Vec::new();
        let mut next = None;
        for version in versions.iter().filter(|v| v.version_id > start) {
            if items.len() == page.limit() {
                next = items
                    .last()
                    .and_then(|v: &Value| v["versionId"].as_u64())
                    .map(|v| crate::store::keys::hex(&v.to_string()));
                break;
            }
            items.push(json!({
                "versionId": version.version_id,
                "creationDate": version.creation_date,
                "isDefaultVersion": version.version_id == default,
            }));
        }
        Ok(with_token(json!({ "versions": items }), "nextToken", next))
    }

    pub(super) async fn delete_provisioning_template_version(
        &self,
        name: &str,
        version: &str,
    ) -> ApiResult {
        self.provisioning
            .templates()
            .delete_version(name, version_id(version)?)
            .await?;
        Ok(json!({}))
    }

    pub(super) async fn create_provisioning_claim(&self, name: &str) -> ApiResult {
        let (record, keys, expires_ms) = self.provisioning.create_claim(name).await?;
        Ok(json!({
            "certificateId": record.certificate_id,
            "certificatePem": keys.certificate_pem,
            "keyPair": {
                "PublicKey": keys.public_key_pem,
                "PrivateKey": keys.private_key_pem,
            },
            "expiration": expires_ms as f64 / 1000.0,
        }))
    }

    pub(super) async fn register_thing(&self, request: &ApiRequest) -> ApiResult {
        let body: RegisterThing = request.json()?;
        if body.template_body.is_empty() {
            return Err(AwsError::validation(
                "templateBody",
                "",
                "Member must not be null",
            ));
        }
        let provisioned = self
            .provisioning
            .register_thing(&body.template_body, &body.parameters.unwrap_or_default())
            .await?;
        let mut answer = json!({ "resourceArns": provisioned.resource_arns });
        if let Some(certificate) = &provisioned.certificate {
            answer["certificatePem"] = json!(certificate.certificate_pem);
        }
        Ok(answer)
    }
}
