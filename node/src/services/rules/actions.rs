//! A rule's actions, read from the JSON they were created with. `republish` and `http` run,
//! the actions of AWS services (s3, sqs, sns, kinesis, firehose, lambda, dynamoDBv2) go to
//! the configured AWS-compatible endpoint, and `timestream` writes to the configured
//! PostgreSQL; every other action of AWS's API is kept and echoed, and fails when it runs, so
//! that the rule's error action reports it.

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
    Http(Http),
    Aws(AwsAction),
    Timestream(super::timestream::Timestream),
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
            "http" => Http::parse(body, version).map(Action::Http),
            "timestream" => {
                super::timestream::Timestream::parse(body, version).map(Action::Timestream)
            }
            "s3" | "sqs" | "sns" | "kinesis" | "firehose" | "lambda" | "dynamoDBv2" => {
                AwsAction::parse(kind, body, version).map(Action::Aws)
            }
            kind => Ok(Action::NotRun { kind }),
        }
    }

    /// The action's name in error reports (`RepublishAction`).
    pub fn failed_action(&self) -> String {
        let kind = match self {
            Action::Republish(_) => "republish",
            Action::Http(_) => "http",
            Action::Aws(aws) => aws.kind,
            Action::Timestream(_) => "timestream",
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

/// AWS's HTTP action: a POST of the rule's output to a URL.
#[derive(Debug, Clone)]
pub struct Http {
    pub url: Template,
    /// The URL as written, for error reports.
    pub url_text: String,
    pub headers: Vec<(String, Template)>,
    /// `auth.sigv4`: requests signed for this region and service with the node's
    /// `rules.aws_access_key_id`.
    pub sigv4: Option<SigV4>,
    /// `enableBatching`: messages for one URL sent together as a JSON array.
    pub batching: Option<Batching>,
}

#[derive(Debug, Clone)]
pub struct SigV4 {
    pub region: String,
    pub service: String,
}

/// AWS's `batchConfig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// How long a batch waits for more messages after its first.
    pub open: std::time::Duration,
    pub messages: usize,
    pub bytes: usize,
}

impl Batching {
    fn parse(config: Option<&serde_json::Value>) -> Result<Batching, String> {
        let number = |field: &str, default: u64, min: u64, max: u64| -> Result<u64, String> {
            match config.and_then(|c| c.get(field)) {
                None | Some(serde_json::Value::Null) => Ok(default),
                Some(value) => value
                    .as_u64()
                    .filter(|n| (min..=max).contains(n))
                    .ok_or_else(|| {
                        format!("http: batchConfig.{field} must be from {min} to {max}")
                    }),
            }
        };
        Ok(Batching {
            open: std::time::Duration::from_millis(number("maxBatchOpenMs", 20, 5, 200)?),
            messages: usize::try_from(number("maxBatchSize", 10, 2, 10)?).unwrap_or(10),
            bytes: usize::try_from(number("maxBatchSizeBytes", 5120, 100, 131_072)?)
                .unwrap_or(5120),
        })
    }
}

const MAX_URL: usize = 2000;
const MAX_HEADERS: usize = 100;

impl Http {
    fn parse(body: &serde_json::Value, version: SqlVersion) -> Result<Http, String> {
        let url_text = body
            .get("url")
            .and_then(serde_json::Value::as_str)
            .filter(|u| !u.is_empty())
            .ok_or("http: url is required")?;
        if url_text.len() > MAX_URL {
            return Err(format!("http: url is longer than {MAX_URL} characters"));
        }
        // AWS takes only HTTPS; a self-hosted cluster may post to plain HTTP inside its
        // network too.
        if !(url_text.starts_with("https://") || url_text.starts_with("http://")) {
            return Err(format!(
                "http: url {url_text} is not an https:// or http:// URL"
            ));
        }
        if let Some(confirmation) = body
            .get("confirmationUrl")
            .and_then(serde_json::Value::as_str)
            && !url_text.starts_with(confirmation)
        {
            return Err(format!(
                "http: confirmationUrl {confirmation} is not a prefix of the url {url_text}"
            ));
        }
        let url = Template::compile(url_text, version).map_err(|e| format!("http: url: {e}"))?;
        let mut headers = Vec::new();
        if let Some(list) = body.get("headers") {
            let list = list.as_array().ok_or("http: headers must be a list")?;
            if list.len() > MAX_HEADERS {
                return Err(format!("http: at most {MAX_HEADERS} headers"));
            }
            for header in list {
                let key = header
                    .get("key")
                    .and_then(serde_json::Value::as_str)
                    .filter(|k| {
                        !k.is_empty() && k.bytes().all(|b| b.is_ascii_graphic() && b != b':')
                    })
                    .ok_or("http: every header needs a key that is a header name")?;
                let value = header
                    .get("value")
                    .and_then(serde_json::Value::as_str)
                    .ok_or_else(|| format!("http: header {key} needs a value"))?;
                let value = Template::compile(value, version)
                    .map_err(|e| format!("http: header {key}: {e}"))?;
                headers.push((key.to_owned(), value));
            }
        }
        let sigv4 = match body.get("auth").and_then(|a| a.get("sigv4")) {
            None | Some(serde_json::Value::Null) => None,
            Some(sigv4) => {
                let field = |name: &str| {
                    sigv4
                        .get(name)
                        .and_then(serde_json::Value::as_str)
                        .filter(|v| !v.is_empty())
                        .map(str::to_owned)
                        .ok_or_else(|| format!("http: auth.sigv4.{name} is required"))
                };
                Some(SigV4 {
                    region: field("signingRegion")?,
                    service: field("serviceName")?,
                })
            }
        };
        let batching = match body.get("enableBatching") {
            None | Some(serde_json::Value::Null | serde_json::Value::Bool(false)) => None,
            Some(serde_json::Value::Bool(true)) => Some(Batching::parse(body.get("batchConfig"))?),
            Some(_) => return Err("http: enableBatching must be true or false".to_owned()),
        };
        Ok(Http {
            url,
            url_text: url_text.to_owned(),
            headers,
            sigv4,
            batching,
        })
    }
}

/// An action of an AWS service, sent to the configured AWS-compatible endpoint.
#[derive(Debug, Clone)]
pub struct AwsAction {
    pub kind: &'static str,
    pub target: AwsTarget,
}

#[derive(Debug, Clone)]
pub enum AwsTarget {
    S3 {
        bucket: String,
        key: Template,
        canned_acl: Option<String>,
    },
    Sqs {
        queue_url: String,
        base64: bool,
    },
    Sns {
        target_arn: String,
        json: bool,
    },
    Kinesis {
        stream: String,
        partition_key: Option<Template>,
    },
    Firehose {
        stream: String,
        separator: Option<String>,
    },
    Lambda {
        function_arn: String,
    },
    DynamoDbV2 {
        table: String,
    },
}

impl AwsAction {
    fn parse(
        kind: &'static str,
        body: &serde_json::Value,
        version: SqlVersion,
    ) -> Result<AwsAction, String> {
        let text = |field: &str| -> Result<String, String> {
            body.get(field)
                .and_then(serde_json::Value::as_str)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| format!("{kind}: {field} is required"))
        };
        let optional = |field: &str| body.get(field).and_then(serde_json::Value::as_str);
        let template = |field: &str, text: &str| {
            Template::compile(text, version).map_err(|e| format!("{kind}: {field}: {e}"))
        };
        let target = match kind {
            "s3" => AwsTarget::S3 {
                bucket: text("bucketName")?,
                key: template("key", &text("key")?)?,
                canned_acl: optional("cannedAcl").map(str::to_owned),
            },
            "sqs" => AwsTarget::Sqs {
                queue_url: text("queueUrl")?,
                base64: body
                    .get("useBase64")
                    .and_then(serde_json::Value::as_bool)
                    .unwrap_or(false),
            },
            "sns" => AwsTarget::Sns {
                target_arn: text("targetArn")?,
                json: optional("messageFormat") == Some("JSON"),
            },
            "kinesis" => AwsTarget::Kinesis {
                stream: text("streamName")?,
                partition_key: optional("partitionKey")
                    .map(|k| template("partitionKey", k))
                    .transpose()?,
            },
            "firehose" => AwsTarget::Firehose {
                stream: text("deliveryStreamName")?,
                separator: optional("separator").map(str::to_owned),
            },
            "lambda" => AwsTarget::Lambda {
                function_arn: text("functionArn")?,
            },
            _ => AwsTarget::DynamoDbV2 {
                table: body
                    .get("putItem")
                    .and_then(|p| p.get("tableName"))
                    .and_then(serde_json::Value::as_str)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .ok_or_else(|| format!("{kind}: putItem.tableName is required"))?,
            },
        };
        Ok(AwsAction { kind, target })
    }
}
