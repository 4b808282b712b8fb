//! A rule's actions, read from the JSON they were created with. `republish` runs here; every
//! other action of AWS's API is kept and echoed, and fails when it runs, so that the rule's
//! error action reports it.

use halyard_sql::{SqlVersion, Template};

use crate::mqtt::QoS;

/// The members of AWS's Action shape.
pub const KINDS: [&str; 23] = [
    "dynamoDB",
    "dynamoDBv2",
    "lambda",
    "sns",
    "sqs",
    "kinesis",
    "republish",
    "s3",
    "firehose",
    "cloudwatchMetric",
    "cloudwatchAlarm",
    "cloudwatchLogs",
    "elasticsearch",
    "salesforce",
    "iotAnalytics",
    "iotEvents",
    "iotSiteWise",
    "stepFunctions",
    "timestream",
    "http",
    "kafka",
    "openSearch",
    "location",
];

#[derive(Debug, Clone)]
pub enum Action {
    Republish(Republish),
    /// An action this node does not run: it fails into the error action.
    NotRun {
        kind: &'static str,
    },
}

#[derive(Debug, Clone)]
pub struct Republish {
    pub topic: Template,
    /// The topic as written, for error reports.
    pub topic_text: String,
    pub qos: QoS,
}

impl Action {
    /// Reads `{"<kind>": {...}}`; the error says which member is wrong and why.
    pub fn parse(json: &serde_json::Value, version: SqlVersion) -> Result<Action, String> {
        let object = json
            .as_object()
            .filter(|o| o.len() == 1)
            .ok_or_else(|| format!("an action names exactly one of {}", KINDS.join(", ")))?;
        let Some((name, body)) = object.iter().next() else {
            return Err(format!(
                "an action names exactly one of {}",
                KINDS.join(", ")
            ));
        };
        let Some(kind) = KINDS.iter().find(|k| **k == name.as_str()) else {
            return Err(format!("{name} is not a topic rule action"));
        };
        if !body.is_object() {
            return Err(format!("{kind}: must be an object"));
        }
        match *kind {
            "republish" => Republish::parse(body, version).map(Action::Republish),
            kind => Ok(Action::NotRun { kind }),
        }
    }

    /// The action's name in error reports (`RepublishAction`).
    pub fn failed_action(&self) -> String {
        let kind = match self {
            Action::Republish(_) => "republish",
            Action::NotRun { kind } => kind,
        };
        let mut name = String::with_capacity(kind.len() + 6);
        let mut chars = kind.chars();
        if let Some(first) = chars.next() {
            name.extend(first.to_uppercase());
        }
        name.extend(chars);
        name.push_str("Action");
        name
    }
}

impl Republish {
    fn parse(body: &serde_json::Value, version: SqlVersion) -> Result<Republish, String> {
        let topic_text = body
            .get("topic")
            .and_then(serde_json::Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or("republish: topic is required")?;
        // `$$aws/...` publishes to the reserved topic `$aws/...`.
        let topic_text = topic_text
            .strip_prefix("$$")
            .map_or_else(|| topic_text.to_owned(), |rest| format!("${rest}"));
        if topic_text.starts_with("$aws/things/") && topic_text.contains("/jobs/") {
            return Err("republish: jobs topics cannot be republished to".to_owned());
        }
        let qos = match body.get("qos").map(serde_json::Value::as_u64) {
            None => QoS::AtMostOnce,
            Some(Some(0)) => QoS::AtMostOnce,
            Some(Some(1)) => QoS::AtLeastOnce,
            Some(_) => return Err("republish: qos must be 0 or 1".to_owned()),
        };
        let topic = Template::compile(&topic_text, version)
            .map_err(|e| format!("republish: topic: {e}"))?;
        Ok(Republish {
            topic,
            topic_text,
            qos,
        })
    }
}
