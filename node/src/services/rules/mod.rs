//! Topic rules: the records (`rule/{name}` in the replicated store, so that every node's
//! engine follows the same set), their validation when created (the statement must compile,
//! the actions must be well formed), and the engine that runs them ([`engine`]).

pub use aws::AwsEndpoint;

pub mod actions;
mod aws;
mod delivery;
pub mod destinations;
pub mod engine;
mod timestream;

use halyard_sql::{SqlVersion, Statement};
use serde::{Deserialize, Serialize};

use crate::clock::epoch_seconds_fraction;
use crate::services::arn::{Arns, Kind};
use crate::services::error::{Error, Result};
use crate::services::records::{Page, Records};
use crate::store::keys;

/// A rule as stored and as GetTopicRule answers it; actions are kept as they were given, so
/// that they are echoed exactly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RuleRecord {
    pub rule_name: String,
    pub sql: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub created_at: f64,
    #[serde(default)]
    pub actions: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_action: Option<serde_json::Value>,
    #[serde(default)]
    pub rule_disabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_iot_sql_version: Option<String>,
}

impl RuleRecord {
    /// The SQL version its statement is read in: as given, else 2015-10-08 (AWS's default).
    pub fn version(&self) -> SqlVersion {
        self.aws_iot_sql_version
            .as_deref()
            .and_then(SqlVersion::parse)
            .unwrap_or(halyard_sql::DEFAULT_VERSION)
    }

    /// The FROM filter of its statement, if it compiles and has one.
    pub fn topic_pattern(&self) -> Option<String> {
        Statement::compile(&self.sql, self.version())
            .ok()
            .and_then(|s| s.topic_filter().map(str::to_owned))
    }
}

/// CreateTopicRule's and ReplaceTopicRule's body: the TopicRulePayload itself.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct TopicRulePayload {
    pub sql: Option<String>,
    pub description: Option<String>,
    #[serde(default)]
    pub actions: Vec<serde_json::Value>,
    pub rule_disabled: Option<bool>,
    pub aws_iot_sql_version: Option<String>,
    pub error_action: Option<serde_json::Value>,
}

/// ListTopicRules' filters.
#[derive(Debug, Clone, Default)]
pub struct RuleFilter {
    pub topic: Option<String>,
    pub rule_disabled: Option<bool>,
}

const MAX_ACTIONS: usize = 10;

#[derive(Clone)]
pub struct Rules {
    records: Records,
    arns: Arns,
}

/// The URLs of a rule's `http` actions (and its error action) that a destination must cover:
/// the confirmation URL when given, else the URL up to its first substitution template.
fn http_destination_urls(record: &RuleRecord) -> Vec<String> {
    record
        .actions
        .iter()
        .chain(record.error_action.iter())
        .filter_map(|action| action.get("http"))
        .filter_map(|http| {
            let url = http
                .get("confirmationUrl")
                .or_else(|| http.get("url"))?
                .as_str()?;
            Some(url.split("${").next().unwrap_or(url).to_owned())
        })
        .collect()
}

/// `^[a-zA-Z0-9_]+$`, 1 to 128 characters.
fn check_rule_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 128 {
        return Err(Error::validation(
            "ruleName",
            name,
            "Member must have length between 1 and 128",
        ));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(Error::validation(
            "ruleName",
            name,
            "Member must satisfy regular expression pattern: ^[a-zA-Z0-9_]+$",
        ));
    }
    Ok(())
}

impl Rules {
    pub fn new(records: Records, arns: Arns) -> Self {
        Rules { records, arns }
    }

    pub fn rule_arn(&self, name: &str) -> String {
        self.arns.of(Kind::Rule, name)
    }

    /// A record from `payload`, refused as AWS refuses it: a statement that does not compile
    /// (SqlParseException, with the position), more than ten actions, an action that is not
    /// one of AWS's or lacks what it needs.
    fn record(name: &str, payload: TopicRulePayload, created_at: f64) -> Result<RuleRecord> {
        let sql = payload
            .sql
            .ok_or_else(|| Error::invalid("The sql of a topic rule is required"))?;
        let version = match payload.aws_iot_sql_version.as_deref() {
            None => halyard_sql::DEFAULT_VERSION,
            Some(v) => SqlVersion::parse(v).ok_or_else(|| {
                Error::invalid(format!(
                    "awsIotSqlVersion {v} is not one of 2015-10-08, 2016-03-23, beta"
                ))
            })?,
        };
        Statement::compile(&sql, version).map_err(|e| Error::SqlParse(e.to_string()))?;
        if payload.actions.len() > MAX_ACTIONS {
            return Err(Error::invalid(format!(
                "A topic rule can have at most {MAX_ACTIONS} actions"
            )));
        }
        for action in &payload.actions {
            actions::Action::parse(action, version).map_err(Error::invalid)?;
        }
        if let Some(error_action) = &payload.error_action {
            actions::Action::parse(error_action, version)
                .map_err(|e| Error::invalid(format!("errorAction: {e}")))?;
        }
        Ok(RuleRecord {
            rule_name: name.to_owned(),
            sql,
            description: payload.description,
            created_at,
            actions: payload.actions,
            error_action: payload.error_action,
            rule_disabled: payload.rule_disabled.unwrap_or(false),
            aws_iot_sql_version: payload.aws_iot_sql_version,
        })
    }

    pub async fn create(&self, name: &str, payload: TopicRulePayload) -> Result<RuleRecord> {
        check_rule_name(name)?;
        let record = Self::record(name, payload, epoch_seconds_fraction())?;
        self.ensure_destinations(&http_destination_urls(&record))
            .await?;
        if !self.records.create(&keys::rule(name), &record).await? {
            return Err(Error::already_exists(
                format!("Rule {name} already exists"),
                name,
                self.rule_arn(name),
            ));
        }
        Ok(record)
    }

    fn denied(name: &str) -> Error {
        Error::Unauthorized(format!("Access to topic rule '{name}' was denied"))
    }

    pub async fn get(&self, name: &str) -> Result<RuleRecord> {
        check_rule_name(name)?;
        self.records
            .get::<RuleRecord>(&keys::rule(name))
            .await?
            .map(|r| r.value)
            .ok_or_else(|| Self::denied(name))
    }

    /// ReplaceTopicRule: a new statement and actions; the creation time stays.
    pub async fn replace(&self, name: &str, payload: TopicRulePayload) -> Result<()> {
        check_rule_name(name)?;
        let key = keys::rule(name);
        let current = self
            .records
            .get::<RuleRecord>(&key)
            .await?
            .ok_or_else(|| Self::denied(name))?;
        let record = Self::record(name, payload, current.value.created_at)?;
        self.ensure_destinations(&http_destination_urls(&record))
            .await?;
        if !self
            .records
            .replace(&key, &record, current.mod_revision)
            .await?
        {
            return Err(Error::conflict(format!(
                "Rule {name} changed meanwhile; retry."
            )));
        }
        Ok(())
    }

    /// EnableTopicRule and DisableTopicRule.
    pub async fn set_disabled(&self, name: &str, disabled: bool) -> Result<()> {
        check_rule_name(name)?;
        let key = keys::rule(name);
        let current = self
            .records
            .get::<RuleRecord>(&key)
            .await?
            .ok_or_else(|| Self::denied(name))?;
        let mut record = current.value;
        record.rule_disabled = disabled;
        if !self
            .records
            .replace(&key, &record, current.mod_revision)
            .await?
        {
            return Err(Error::conflict(format!(
                "Rule {name} changed meanwhile; retry."
            )));
        }
        Ok(())
    }

    pub async fn delete(&self, name: &str) -> Result<()> {
        check_rule_name(name)?;
        let key = keys::rule(name);
        let Some(current) = self.records.get::<RuleRecord>(&key).await? else {
            return Err(Self::denied(name));
        };
        if !self.records.delete(&key, current.mod_revision).await? {
            return Err(Error::conflict(format!(
                "Rule {name} changed meanwhile; retry."
            )));
        }
        Ok(())
    }

    /// ListTopicRules: a page of rules, by name, that pass `filter`.
    pub async fn list(
        &self,
        filter: &RuleFilter,
        page: &Page,
    ) -> Result<(Vec<RuleRecord>, Option<String>)> {
        page.collect(&self.records, keys::RULES, |r: &RuleRecord| {
            filter.rule_disabled.is_none_or(|d| r.rule_disabled == d)
                && filter
                    .topic
                    .as_ref()
                    .is_none_or(|t| r.topic_pattern().as_deref() == Some(t.as_str()))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(sql: &str, actions: serde_json::Value) -> TopicRulePayload {
        serde_json::from_value(serde_json::json!({"sql": sql, "actions": actions})).unwrap()
    }

    #[test]
    fn rule_names_are_checked_as_aws_does() {
        assert!(check_rule_name("my_rule_1").is_ok());
        for bad in ["", "has-dash", "has space", &"x".repeat(129)] {
            assert!(
                matches!(check_rule_name(bad), Err(Error::Validation { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_statement_that_does_not_parse_is_a_sql_parse_error_with_its_position() {
        let err =
            Rules::record("r", payload("SELECT * FROM", serde_json::json!([])), 0.0).unwrap_err();
        assert_eq!(
            err,
            Error::SqlParse(
                "Line 1:13 unexpected end of statement, expecting a quoted topic filter".into()
            )
        );
    }

    #[test]
    fn actions_are_checked_when_the_rule_is_created() {
        let ok = payload(
            "SELECT * FROM 'a'",
            serde_json::json!([{"republish": {"topic": "out/${topic(1)}", "roleArn": "arn:aws:iam::1:role/r"}}]),
        );
        assert!(Rules::record("r", ok, 0.0).is_ok());
        let cases = [
            (
                serde_json::json!([{"republish": {}}]),
                "republish: topic is required",
            ),
            (
                serde_json::json!([{"nosuch": {}}]),
                "nosuch is not a topic rule action",
            ),
            (serde_json::json!([{}]), "an action names exactly one of"),
            (
                serde_json::json!([{"republish": {"topic": "a", "qos": 2}}]),
                "republish: qos must be 0 or 1",
            ),
            (
                serde_json::json!([{"republish": {"topic": "$$aws/things/t/jobs/get"}}]),
                "republish: jobs topics cannot be republished to",
            ),
            (
                serde_json::json!([{"republish": {"topic": "a/${nosuch()}"}}]),
                "republish: topic: Line 1:4 in substitution template: unknown function",
            ),
        ];
        for (actions, want) in cases {
            let err = Rules::record("r", payload("SELECT * FROM 'a'", actions.clone()), 0.0)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{actions}: {err}");
        }
        let eleven: Vec<_> = (0..11)
            .map(|_| serde_json::json!({"republish": {"topic": "a"}}))
            .collect();
        let err = Rules::record("r", payload("SELECT * FROM 'a'", eleven.into()), 0.0).unwrap_err();
        assert!(err.to_string().contains("at most 10 actions"), "{err}");
    }
}
