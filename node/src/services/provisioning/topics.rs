//! The fleet provisioning MQTT API: `$aws/certificates/create/{json|cbor}`,
//! `$aws/certificates/create-from-csr/{json|cbor}` and
//! `$aws/provisioning-templates/{name}/provision/{json|cbor}`, answered on the request's topic
//! `/accepted` or `/rejected` to the requester alone (it holds a private key and an ownership
//! token; every device of a fleet subscribes to the same topics), in the request's encoding.
//! There is no clientToken: a client matches answers by topic.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::Provisioning;
use super::device::{DeviceProvision, Refusal};
use crate::broker::{InFlight, ServiceRequest, Session, TopicService};

/// What a request topic asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    CreateKeysAndCertificate,
    CreateCertificateFromCsr,
    RegisterThing(&'a str),
}

impl Request<'_> {
    fn name(&self) -> &'static str {
        match self {
            Request::CreateKeysAndCertificate => "CreateKeysAndCertificate",
            Request::CreateCertificateFromCsr => "CreateCertificateFromCsr",
            Request::RegisterThing(_) => "RegisterThing",
        }
    }
}

/// How a request and its answer are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Cbor,
}

/// The request and encoding of a provisioning topic; none for the answers' topics.
pub fn request_topic(topic: &str) -> Option<(Request<'_>, Encoding)> {
    let (rest, encoding) = if let Some(rest) = topic.strip_suffix("/json") {
        (rest, Encoding::Json)
    } else if let Some(rest) = topic.strip_suffix("/cbor") {
        (rest, Encoding::Cbor)
    } else {
        return None;
    };
    let request = match rest {
        "$aws/certificates/create" => Request::CreateKeysAndCertificate,
        "$aws/certificates/create-from-csr" => Request::CreateCertificateFromCsr,
        _ => {
            let name = rest
                .strip_prefix("$aws/provisioning-templates/")?
                .strip_suffix("/provision")?;
            if name.is_empty() || name.contains('/') {
                return None;
            }
            Request::RegisterThing(name)
        }
    };
    Some((request, encoding))
}

/// A request's payload as JSON, whichever encoding it came in. An empty payload is an empty
/// request (the V1 client sends none, the V2 client `{}`).
fn decode(payload: &[u8], encoding: Encoding) -> Result<Map<String, Value>, Refusal> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let value: Value = match encoding {
        Encoding::Json => serde_json::from_slice(payload)
            .map_err(|e| Refusal::invalid_payload(format!("The payload is not valid JSON: {e}")))?,
        Encoding::Cbor => ciborium::from_reader(payload)
            .map_err(|e| Refusal::invalid_payload(format!("The payload is not valid CBOR: {e}")))?,
    };
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(Refusal::invalid_payload("The payload must be an object")),
    }
}

fn encode(body: &Value, encoding: Encoding) -> Bytes {
    match encoding {
        Encoding::Json => Bytes::from(body.to_string()),
        Encoding::Cbor => {
            let mut out = Vec::new();
            // Writing a JSON value into a Vec cannot fail.
            let _ = ciborium::into_writer(body, &mut out);
            Bytes::from(out)
        }
    }
}

fn string_field<'a>(request: &'a Map<String, Value>, name: &str) -> Result<&'a str, Refusal> {
    match request.get(name) {
        None | Some(Value::Null) => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(Refusal::invalid_payload(format!("{name} must be a string"))),
    }
}

fn parameters(request: &Map<String, Value>) -> Result<BTreeMap<String, String>, Refusal> {
    match request.get("parameters") {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(Refusal::invalid_payload(format!(
                    "parameters.{k} must be a string"
                ))),
            })
            .collect(),
        Some(_) => Err(Refusal::invalid_payload(
            "parameters must be an object of strings",
        )),
    }
}

/// The provisioning topics as a [`TopicService`].
pub struct ProvisioningTopics {
    provisioning: Provisioning,
}

impl ProvisioningTopics {
    pub fn new(provisioning: Provisioning) -> Self {
        Self { provisioning }
    }
}

impl TopicService for ProvisioningTopics {
    fn answers(&self, topic: &str) -> bool {
        topic.starts_with("$aws/")
            && (topic.starts_with("$aws/certificates/")
                || topic.starts_with("$aws/provisioning-templates/"))
            && request_topic(topic).is_some()
    }

    fn private(&self) -> bool {
        true
    }

    fn request(&self, request: ServiceRequest) {
        let limit = self.provisioning.inner.config.max_inflight_requests;
        let in_flight = match &request.requester {
            Some(session) => match InFlight::begin(session, limit) {
                Some(counted) => Some(counted),
                None => {
                    let refusal = Refusal {
                        status_code: 429,
                        error_code: "Throttling",
                        message: "Too many provisioning requests in flight on this connection"
                            .into(),
                    };
                    answer(
                        &self.provisioning,
                        &request.topic,
                        request.requester.as_ref(),
                        None,
                        Err(refusal),
                        Instant::now(),
                    );
                    return;
                }
            },
            None => None,
        };
        let provisioning = self.provisioning.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = serve(&provisioning, &request).await;
            answer(
                &provisioning,
                &request.topic,
                request.requester.as_ref(),
                in_flight,
                outcome,
                started,
            );
        });
    }
}

async fn serve(provisioning: &Provisioning, request: &ServiceRequest) -> Result<Value, Refusal> {
    let Some((operation, encoding)) = request_topic(&request.topic) else {
        return Err(Refusal::invalid_payload("Not a provisioning topic"));
    };
    let fields = decode(&request.payload, encoding)?;
    match operation {
        Request::CreateKeysAndCertificate => {
            let (record, keys, token) = provisioning.create_keys_for_device().await?;
            Ok(json!({
                "certificateId": record.certificate_id,
                "certificatePem": keys.certificate_pem,
                "privateKey": keys.private_key_pem,
                "certificateOwnershipToken": token,
            }))
        }
        Request::CreateCertificateFromCsr => {
            let csr = string_field(&fields, "certificateSigningRequest")?;
            if csr.is_empty() {
                return Err(Refusal::invalid_payload(
                    "certificateSigningRequest is required",
                ));
            }
            let (record, token) = provisioning.create_from_csr_for_device(csr).await?;
            Ok(json!({
                "certificateId": record.certificate_id,
                "certificatePem": record.certificate_pem,
                "certificateOwnershipToken": token,
            }))
        }
        Request::RegisterThing(template_name) => {
            let token = string_field(&fields, "certificateOwnershipToken")?;
            let principal = request
                .requester
                .as_ref()
                .and_then(|s| s.principal())
                .unwrap_or_default();
            let client_id = request
                .requester
                .as_ref()
                .map(|s| s.client_id.clone())
                .unwrap_or_default();
            let provisioned = provisioning
                .provision_device(DeviceProvision {
                    template_name,
                    ownership_token: token,
                    parameters: parameters(&fields)?,
                    claim_certificate_id: &principal,
                    client_id: &client_id,
                })
                .await?;
            let mut body = json!({ "deviceConfiguration": provisioned.device_configuration });
            if let Some(thing) = provisioned.thing_name {
                body["thingName"] = json!(thing);
            }
            Ok(body)
        }
    }
}

fn answer(
    provisioning: &Provisioning,
    topic: &Arc<str>,
    requester: Option<&Arc<Session>>,
    in_flight: Option<InFlight>,
    outcome: Result<Value, Refusal>,
    started: Instant,
) {
    if let Some(in_flight) = &in_flight {
        in_flight.release();
    }
    let Some((operation, encoding)) = request_topic(topic) else {
        return;
    };
    let (result, body, outcome_label) = match outcome {
        Ok(body) => ("accepted", body, "accepted"),
        Err(refusal) => {
            if refusal.status_code >= 500 {
                tracing::warn!(%topic, error = %refusal.message, "provisioning request failed");
            }
            (
                "rejected",
                json!({
                    "statusCode": refusal.status_code,
                    "errorCode": refusal.error_code,
                    "errorMessage": refusal.message,
                }),
                refusal.error_code,
            )
        }
    };
    provisioning
        .inner
        .metrics
        .request(operation.name(), "mqtt", outcome_label, started.elapsed());
    let reply_topic = match topic.rsplit_once('/') {
        Some((base, format)) => format!("{base}/{format}/{result}"),
        None => return,
    };
    provisioning
        .inner
        .broker
        .reply_privately(reply_topic, encode(&body, encoding), requester);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_name_their_request_and_encoding_and_answers_are_not_requests() {
        assert_eq!(
            request_topic("$aws/certificates/create/json"),
            Some((Request::CreateKeysAndCertificate, Encoding::Json))
        );
        assert_eq!(
            request_topic("$aws/certificates/create-from-csr/cbor"),
            Some((Request::CreateCertificateFromCsr, Encoding::Cbor))
        );
        assert_eq!(
            request_topic("$aws/provisioning-templates/meters/provision/json"),
            Some((Request::RegisterThing("meters"), Encoding::Json))
        );
        assert_eq!(
            request_topic("$aws/certificates/create/json/accepted"),
            None
        );
        assert_eq!(
            request_topic("$aws/provisioning-templates/meters/provision/json/rejected"),
            None
        );
        assert_eq!(
            request_topic("$aws/provisioning-templates//provision/json"),
            None
        );
        assert_eq!(request_topic("$aws/certificates/create/xml"), None);
    }

    #[test]
    fn cbor_and_json_requests_decode_alike() {
        let request = json!({"certificateOwnershipToken": "t", "parameters": {"a": "b"}});
        let cbor = encode(&request, Encoding::Cbor);
        assert_eq!(
            decode(&cbor, Encoding::Cbor).unwrap(),
            decode(request.to_string().as_bytes(), Encoding::Json).unwrap()
        );
        assert!(decode(b"", Encoding::Json).unwrap().is_empty());
        assert!(decode(b"{}", Encoding::Json).unwrap().is_empty());
        assert_eq!(
            decode(b"[1]", Encoding::Json).unwrap_err().error_code,
            "InvalidPayload"
        );
        let wrong = decode(br#"{"parameters": {"a": 1}}"#, Encoding::Json).unwrap();
        assert!(parameters(&wrong).is_err());
    }
}
