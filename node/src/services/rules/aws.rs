//! The actions of AWS services as requests to one AWS-compatible endpoint (`rules.aws_endpoint`:
//! MinIO, LocalStack, moto, or AWS itself), in each service's own protocol, signed with SigV4
//! when keys are configured.

use base64::Engine as _;
use bytes::Bytes;
use halyard_sql::{Environment, Message as SqlMessage};

use super::actions::{AwsAction, AwsTarget};
use crate::auth::identity::sigv4;

/// Where AWS service actions go, and how they are signed.
#[derive(Debug, Clone)]
pub struct AwsEndpoint {
    /// Without a trailing `/`.
    pub url: String,
    pub region: String,
    /// `(access key id, secret)`; unset, requests go unsigned.
    pub keys: Option<(String, String)>,
}

/// One request, ready to sign and send.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub method: &'static str,
    pub url: String,
    /// The SigV4 service name.
    pub service: std::borrow::Cow<'static, str>,
    pub content_type: &'static str,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// What failed, as the error report names it.
    pub resource: String,
}

/// The request `action` makes of `payload` (the rule's output) for `message`.
pub fn prepare(
    endpoint: &AwsEndpoint,
    action: &AwsAction,
    message: &SqlMessage<'_>,
    env: &dyn Environment,
    payload: &Bytes,
) -> Result<Prepared, (String, String)> {
    let base = &endpoint.url;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let text = || String::from_utf8_lossy(payload).into_owned();
    let prepared = match &action.target {
        AwsTarget::S3 {
            bucket,
            key,
            canned_acl,
        } => {
            let key = key.render(message, env);
            let resource = format!("{bucket}/{key}");
            if key.is_empty() {
                return Err((resource, "the object key is empty".to_owned()));
            }
            let path: Vec<String> = key
                .split('/')
                .map(|segment| sigv4::uri_encode(segment, false))
                .collect();
            Prepared {
                method: "PUT",
                url: format!(
                    "{base}/{}/{}",
                    sigv4::uri_encode(bucket, false),
                    path.join("/")
                ),
                service: "s3".into(),
                content_type: "application/octet-stream",
                headers: canned_acl
                    .iter()
                    .map(|acl| ("x-amz-acl".to_owned(), acl.clone()))
                    .collect(),
                body: payload.clone(),
                resource,
            }
        }
        AwsTarget::Sqs { queue_url, base64 } => {
            let body = if *base64 { b64(payload) } else { text() };
            form(
                base,
                "sqs",
                queue_url,
                &[
                    ("Action", "SendMessage"),
                    ("Version", "2012-11-05"),
                    ("QueueUrl", queue_url),
                    ("MessageBody", &body),
                ],
            )
        }
        AwsTarget::Sns { target_arn, json } => {
            let body = text();
            let mut fields = vec![
                ("Action", "Publish"),
                ("Version", "2010-03-31"),
                ("TargetArn", target_arn.as_str()),
                ("Message", body.as_str()),
            ];
            if *json {
                fields.push(("MessageStructure", "json"));
            }
            form(base, "sns", target_arn, &fields)
        }
        AwsTarget::Kinesis {
            stream,
            partition_key,
        } => {
            let partition_key = partition_key
                .as_ref()
                .map_or_else(crate::ids::uuid_v4, |k| k.render(message, env));
            json_target(
                base,
                "kinesis",
                "Kinesis_20131202.PutRecord",
                "application/x-amz-json-1.1",
                stream,
                serde_json::json!({
                    "StreamName": stream,
                    "Data": b64(payload),
                    "PartitionKey": partition_key,
                }),
            )
        }
        AwsTarget::Firehose { stream, separator } => {
            let mut data = payload.to_vec();
            if let Some(separator) = separator {
                data.extend_from_slice(separator.as_bytes());
            }
            json_target(
                base,
                "firehose",
                "Firehose_20150804.PutRecord",
                "application/x-amz-json-1.1",
                stream,
                serde_json::json!({
                    "DeliveryStreamName": stream,
                    "Record": {"Data": b64(&data)},
                }),
            )
        }
        AwsTarget::Lambda { function_arn } => Prepared {
            method: "POST",
            url: format!(
                "{base}/2015-03-31/functions/{}/invocations",
                sigv4::uri_encode(function_arn, false)
            ),
            service: "lambda".into(),
            content_type: "application/json",
            // Asynchronously, as the rules engine invokes functions.
            headers: vec![("x-amz-invocation-type".to_owned(), "Event".to_owned())],
            body: payload.clone(),
            resource: function_arn.clone(),
        },
        AwsTarget::DynamoDbV2 { table } => {
            let Ok(serde_json::Value::Object(output)) =
                serde_json::from_slice::<serde_json::Value>(payload)
            else {
                return Err((
                    table.clone(),
                    "dynamoDBv2 writes the output's fields as attributes; the output is not a JSON object".to_owned(),
                ));
            };
            let item: serde_json::Map<String, serde_json::Value> = output
                .iter()
                .map(|(k, v)| (k.clone(), attribute(v)))
                .collect();
            json_target(
                base,
                "dynamodb",
                "DynamoDB_20120810.PutItem",
                "application/x-amz-json-1.0",
                table,
                serde_json::json!({"TableName": table, "Item": item}),
            )
        }
    };
    Ok(prepared)
}

/// A query-protocol call (SQS, SNS): the fields form-encoded in the body.
fn form(base: &str, service: &'static str, resource: &str, fields: &[(&str, &str)]) -> Prepared {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                sigv4::uri_encode(k, false),
                sigv4::uri_encode(v, false)
            )
        })
        .collect();
    Prepared {
        method: "POST",
        url: format!("{base}/"),
        service: service.into(),
        content_type: "application/x-www-form-urlencoded; charset=utf-8",
        headers: Vec::new(),
        body: Bytes::from(body.join("&")),
        resource: resource.to_owned(),
    }
}

/// A JSON-protocol call (Kinesis, Firehose, DynamoDB): the operation in `X-Amz-Target`.
fn json_target(
    base: &str,
    service: &'static str,
    target: &str,
    content_type: &'static str,
    resource: &str,
    body: serde_json::Value,
) -> Prepared {
    Prepared {
        method: "POST",
        url: format!("{base}/"),
        service: service.into(),
        content_type,
        headers: vec![("x-amz-target".to_owned(), target.to_owned())],
        body: Bytes::from(body.to_string()),
        resource: resource.to_owned(),
    }
}

/// A JSON value as a DynamoDB attribute value.
fn attribute(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::{Value, json};
    match value {
        Value::Null => json!({"NULL": true}),
        Value::Bool(b) => json!({"BOOL": b}),
        Value::Number(n) => json!({"N": n.to_string()}),
        Value::String(s) => json!({"S": s}),
        Value::Array(items) => json!({"L": items.iter().map(attribute).collect::<Vec<_>>()}),
        Value::Object(map) => json!({
            "M": map.iter().map(|(k, v)| (k.clone(), attribute(v))).collect::<serde_json::Map<_, _>>()
        }),
    }
}

/// The headers to send, with `x-amz-date`, `x-amz-content-sha256` and, when keys are set,
/// `authorization` (SigV4 over the host, the content type and every header given).
pub fn signed_headers(
    endpoint: &AwsEndpoint,
    prepared: &Prepared,
    now_epoch: i64,
) -> Result<Vec<(String, String)>, String> {
    let uri: axum::http::Uri = prepared
        .url
        .parse()
        .map_err(|_| format!("{} is not a URL", prepared.url))?;
    let host = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .ok_or_else(|| format!("{} has no host", prepared.url))?;
    let amz_date = sigv4::format_amz_date(now_epoch);
    let digest = ring::digest::digest(&ring::digest::SHA256, &prepared.body);
    let mut payload_hash = String::with_capacity(64);
    crate::store::keys::push_hex(&mut payload_hash, digest.as_ref());
    let mut headers = prepared.headers.clone();
    headers.push(("x-amz-date".to_owned(), amz_date.clone()));
    headers.push(("x-amz-content-sha256".to_owned(), payload_hash));
    let Some((key_id, secret)) = &endpoint.keys else {
        return Ok(headers);
    };
    let mut signed: Vec<(String, String)> = vec![
        ("host".to_owned(), host),
        ("content-type".to_owned(), prepared.content_type.to_owned()),
    ];
    signed.extend(headers.iter().cloned());
    let request = sigv4::SignedRequest {
        method: prepared.method,
        raw_path: uri.path(),
        raw_query: uri.query().unwrap_or(""),
        headers: &signed,
        body: &prepared.body,
    };
    let authorization = sigv4::authorization_header(
        &request,
        key_id,
        secret,
        &endpoint.region,
        &prepared.service,
        &amz_date,
    );
    headers.push(("authorization".to_owned(), authorization));
    Ok(headers)
}
