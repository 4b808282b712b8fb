//! `/rules` and `/destinations`: the topic rule and topic rule destination operations. The
//! rule create and replace bodies are the TopicRulePayload itself.

use serde_json::{Value, json};

use super::{ApiResult, ControlPlane};
use crate::api::error::AwsError;
use crate::api::request::{ApiRequest, with_token};
use crate::services::rules::destinations::DestinationRecord;
use crate::services::rules::{RuleFilter, RuleRecord, TopicRulePayload};

impl ControlPlane {
    pub(super) async fn create_topic_rule(&self, name: &str, request: &ApiRequest) -> ApiResult {
        let payload: TopicRulePayload = request.json()?;
        self.rules.create(name, payload).await?;
        Ok(json!({}))
    }

    pub(super) async fn replace_topic_rule(&self, name: &str, request: &ApiRequest) -> ApiResult {
        let payload: TopicRulePayload = request.json()?;
        self.rules.replace(name, payload).await?;
        Ok(json!({}))
    }

    pub(super) async fn get_topic_rule(&self, name: &str) -> ApiResult {
        let rule = self.rules.get(name).await?;
        Ok(json!({
            "ruleArn": self.rules.rule_arn(name),
            "rule": rule_json(&rule),
        }))
    }

    pub(super) async fn delete_topic_rule(&self, name: &str) -> ApiResult {
        self.rules.delete(name).await?;
        Ok(json!({}))
    }

    pub(super) async fn set_topic_rule_disabled(&self, name: &str, disabled: bool) -> ApiResult {
        self.rules.set_disabled(name, disabled).await?;
        Ok(json!({}))
    }

    pub(super) async fn list_topic_rules(&self, request: &ApiRequest) -> ApiResult {
        let page = request.page(1000, 10_000)?;
        let filter = RuleFilter {
            topic: request.query("topic").map(str::to_owned),
            rule_disabled: match request.query("ruleDisabled") {
                None => None,
                Some(_) => Some(request.query_flag("ruleDisabled")?),
            },
        };
        let (rules, next) = self.rules.list(&filter, &page).await?;
        let rules: Vec<Value> = rules
            .iter()
            .map(|r| {
                let mut item = json!({
                    "ruleArn": self.rules.rule_arn(&r.rule_name),
                    "ruleName": r.rule_name,
                    "createdAt": r.created_at,
                    "ruleDisabled": r.rule_disabled,
                });
                if let Some(pattern) = r.topic_pattern() {
                    item["topicPattern"] = json!(pattern);
                }
                item
            })
            .collect();
        Ok(with_token(json!({ "rules": rules }), "nextToken", next))
    }
}

/// The `rule` of GetTopicRule.
fn rule_json(rule: &RuleRecord) -> Value {
    let mut answer = json!({
        "ruleName": rule.rule_name,
        "sql": rule.sql,
        "createdAt": rule.created_at,
        "actions": rule.actions,
        "ruleDisabled": rule.rule_disabled,
        "awsIotSqlVersion": rule.aws_iot_sql_version.as_deref().unwrap_or(halyard_sql::DEFAULT_VERSION.as_str()),
    });
    if let Some(description) = &rule.description {
        answer["description"] = json!(description);
    }
    if let Some(error_action) = &rule.error_action {
        answer["errorAction"] = error_action.clone();
    }
    answer
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct HttpUrlConfiguration {
    confirmation_url: Option<String>,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DestinationConfiguration {
    http_url_configuration: Option<HttpUrlConfiguration>,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct CreateDestination {
    destination_configuration: Option<DestinationConfiguration>,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct UpdateDestination {
    arn: Option<String>,
    status: Option<String>,
}

impl ControlPlane {
    fn destination_json(&self, d: &DestinationRecord) -> Value {
        json!({
            "arn": self.rules.destination_arn(&d.id),
            "status": d.status,
            "createdAt": d.created_at,
            "lastUpdatedAt": d.last_updated_at,
            "httpUrlProperties": {"confirmationUrl": d.confirmation_url},
        })
    }

    pub(super) async fn create_topic_rule_destination(&self, request: &ApiRequest) -> ApiResult {
        let body: CreateDestination = request.json()?;
        let url = body
            .destination_configuration
            .and_then(|c| c.http_url_configuration)
            .and_then(|h| h.confirmation_url)
            .ok_or_else(|| {
                AwsError::invalid_request(
                    "destinationConfiguration.httpUrlConfiguration.confirmationUrl is required",
                )
            })?;
        let destination = self.rules.create_destination(&url).await?;
        Ok(json!({ "topicRuleDestination": self.destination_json(&destination) }))
    }

    pub(super) async fn get_topic_rule_destination(&self, arn: &str) -> ApiResult {
        let destination = self.rules.destination(arn).await?;
        Ok(json!({ "topicRuleDestination": self.destination_json(&destination) }))
    }

    pub(super) async fn list_topic_rule_destinations(&self, request: &ApiRequest) -> ApiResult {
        let page = request.page(1000, 1000)?;
        let (destinations, next) = self.rules.list_destinations(&page).await?;
        let summaries: Vec<Value> = destinations
            .iter()
            .map(|d| {
                json!({
                    "arn": self.rules.destination_arn(&d.id),
                    "status": d.status,
                    "createdAt": d.created_at,
                    "lastUpdatedAt": d.last_updated_at,
                    "httpUrlSummary": {"confirmationUrl": d.confirmation_url},
                })
            })
            .collect();
        Ok(with_token(
            json!({ "destinationSummaries": summaries }),
            "nextToken",
            next,
        ))
    }

    pub(super) async fn update_topic_rule_destination(&self, request: &ApiRequest) -> ApiResult {
        let body: UpdateDestination = request.json()?;
        let (Some(arn), Some(status)) = (body.arn, body.status) else {
            return Err(AwsError::invalid_request("arn and status are required"));
        };
        self.rules.update_destination(&arn, &status).await?;
        Ok(json!({}))
    }

    pub(super) async fn delete_topic_rule_destination(&self, arn: &str) -> ApiResult {
        self.rules.delete_destination(arn).await?;
        Ok(json!({}))
    }
}
