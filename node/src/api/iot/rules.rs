//! `/rules`: the topic rule operations. The create and replace bodies are the
//! TopicRulePayload itself.

use serde_json::{Value, json};

use super::{ApiResult, ControlPlane};
use crate::api::request::{ApiRequest, with_token};
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
