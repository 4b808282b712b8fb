//! Custom authorizers: their registry (Create/Describe/List/Update/Delete, the default one)
//! and authentication through them. A client presents a token (and its signature, checked
//! against the authorizer's public keys before anything else), the authorizer's function,
//! called over HTTP with AWS's authorizer event, answers with AWS's authorizer response, and
//! the policies it returns become the connection's permissions, refreshed and ended when the
//! response says.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::AwsError;
use super::request::ApiRequest;
use super::things::{check_name, now_seconds, uuid_v4};
use super::{Api, ApiResult};
use crate::auth::identity::jwt;
use crate::auth::permissions::{Access, Permissions};
use crate::auth::policy::{Context, Policy};
use crate::gateway::http::{CachedAuthorization, ConnectionInfo};
use crate::gateway::{ConnectCredentials, Gate, GateFuture};
use crate::mqtt::reason;

pub(super) const AUTHORIZERS: &str = crate::store::keys::AUTHORIZERS;
pub(super) const DEFAULT_AUTHORIZER: &str = crate::store::keys::DEFAULT_AUTHORIZER;
/// AWS IoT allows this many authorizers per account.
const MAX_AUTHORIZERS: usize = 100;
const MAX_POLICY_DOCUMENTS: usize = 10;
/// How long an authorizer function may take, as AWS IoT allows a Lambda authorizer.
const FUNCTION_TIMEOUT: Duration = Duration::from_secs(5);
/// A function ARN `jwt:{name}` is the built-in JWT verifier configured under that name.
const JWT_FUNCTION_PREFIX: &str = "jwt:";

pub const NAME_HEADER: &str = "x-amz-customauthorizer-name";
pub const SIGNATURE_HEADER: &str = "x-amz-customauthorizer-signature";

fn authorizer_key(name: &str) -> String {
    crate::store::keys::authorizer(name)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizerRecord {
    authorizer_name: String,
    authorizer_function_arn: String,
    token_key_name: Option<String>,
    token_signing_public_keys: BTreeMap<String, String>,
    status: String,
    signing_disabled: bool,
    enable_caching_for_http: bool,
    creation_date: f64,
    last_modified_date: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AuthorizerBody {
    authorizer_function_arn: Option<String>,
    token_key_name: Option<String>,
    token_signing_public_keys: Option<BTreeMap<String, String>>,
    status: Option<String>,
    tags: Option<Value>,
    signing_disabled: Option<bool>,
    enable_caching_for_http: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DefaultAuthorizerBody {
    authorizer_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TestInvokeBody {
    token: Option<String>,
    token_signature: Option<String>,
    http_context: Option<HttpContextBody>,
    mqtt_context: Option<MqttContextBody>,
    tls_context: Option<TlsContextBody>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HttpContextBody {
    headers: Option<BTreeMap<String, String>>,
    query_string: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MqttContextBody {
    username: Option<String>,
    /// Base64, as the blob arrives in JSON.
    password: Option<String>,
    client_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TlsContextBody {
    server_name: Option<String>,
}

fn check_status(status: &str) -> Result<(), AwsError> {
    if matches!(status, "ACTIVE" | "INACTIVE") {
        Ok(())
    } else {
        Err(AwsError::validation(
            "status",
            status,
            "Member must satisfy enum value set: [ACTIVE, INACTIVE]",
        ))
    }
}

fn check_token_key_name(name: &str) -> Result<(), AwsError> {
    let valid = (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(AwsError::validation(
            "tokenKeyName",
            name,
            "Member must satisfy regular expression pattern: [a-zA-Z0-9_-]+",
        ))
    }
}

/// Every key must be a usable RSA or EC public key, so that a bad one is refused here rather
/// than failing every connection later.
fn check_public_keys(keys: &BTreeMap<String, String>) -> Result<(), AwsError> {
    for (name, pem) in keys {
        let valid_name = (1..=128).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_:-".contains(&b));
        if !valid_name {
            return Err(AwsError::validation(
                "tokenSigningPublicKeys",
                name,
                "Member must have keys matching [a-zA-Z0-9:_-]+",
            ));
        }
        if pem.len() > 5120 || SigningKey::parse(pem).is_none() {
            return Err(AwsError::invalid_request(format!(
                "The token signing public key {name} is not a PEM-encoded RSA or EC public key"
            )));
        }
    }
    Ok(())
}

/// A token signing key, parsed from PEM (`PUBLIC KEY`, SubjectPublicKeyInfo).
enum SigningKey {
    Rsa(Vec<u8>),
    EcP256(Vec<u8>),
}

impl SigningKey {
    fn parse(pem: &str) -> Option<Self> {
        use rustls::pki_types::SubjectPublicKeyInfoDer;
        use rustls::pki_types::pem::PemObject;
        use x509_parser::prelude::FromDer;
        let der = SubjectPublicKeyInfoDer::from_pem_slice(pem.trim().as_bytes()).ok()?;
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der.as_ref()).ok()?;
        let key = spki.subject_public_key.data.to_vec();
        match spki.algorithm.algorithm.to_id_string().as_str() {
            "1.2.840.113549.1.1.1" => Some(Self::Rsa(key)),
            "1.2.840.10045.2.1" => Some(Self::EcP256(key)),
            _ => None,
        }
    }

    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        use ring::signature::{
            ECDSA_P256_SHA256_ASN1, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey,
        };
        match self {
            Self::Rsa(key) => UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key)
                .verify(message, signature)
                .is_ok(),
            Self::EcP256(key) => UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key)
                .verify(message, signature)
                .is_ok(),
        }
    }
}

/// What a client presented to be authenticated by an authorizer, from HTTP headers and query
/// (HTTPS, WebSocket) or from the query in an MQTT username.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Where the authorizer's name, the signature and the token (by the authorizer's
    /// `tokenKeyName`) are looked up: headers first, then query pairs (the request's, then
    /// those of an MQTT username).
    headers: Vec<(String, String)>,
    query: Vec<(String, String)>,
    /// The request's query as sent, for the authorizer event.
    raw_query: String,
}

impl Credentials {
    pub fn from_http(
        headers: &[(String, String)],
        query: &[(String, String)],
        raw_query: &str,
    ) -> Self {
        Self {
            headers: headers.to_vec(),
            query: query.to_vec(),
            raw_query: raw_query.to_owned(),
        }
    }

    /// These credentials and those in the query of an MQTT username
    /// (`name?x-amz-customauthorizer-name=..&..`).
    fn with_username(&self, username: Option<&str>) -> Self {
        let mut merged = self.clone();
        if let Some((_, raw_query)) = username.and_then(|u| u.split_once('?')) {
            merged.query.extend(super::sigv4::parse_query(raw_query));
            if merged.raw_query.is_empty() {
                merged.raw_query = raw_query.to_owned();
            }
        }
        merged
    }

    fn lookup(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .chain(&self.query)
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The authorizer asked for; the default one otherwise.
    fn authorizer(&self) -> Option<&str> {
        self.lookup(NAME_HEADER)
    }

    fn signature(&self) -> Option<&str> {
        self.lookup(SIGNATURE_HEADER)
    }

    fn token(&self, key_name: &str) -> Option<&str> {
        self.lookup(key_name)
    }
}

/// The MQTT side of an authorization request.
struct MqttSide {
    client_id: String,
    username: Option<String>,
    password: Option<Vec<u8>>,
}

/// Why an authorizer did not let a client in.
#[derive(Debug)]
pub enum Refusal {
    /// No authorizer applies (none named, no default).
    NoAuthorizer,
    /// The authorizer, its token or its answer says no.
    Denied(String),
    /// The store could not be read.
    Unavailable(String),
}

/// What an authorizer function answered, checked.
struct Verdict {
    principal_id: String,
    policies: Vec<Policy>,
    disconnect_after: Option<Duration>,
    refresh_after: Option<Duration>,
    /// Policy variables the function adds besides the connection's own.
    variables: Vec<(String, String)>,
}

fn check_verdict(answer: &Value) -> Result<(bool, Verdict), String> {
    let authenticated = answer
        .get("isAuthenticated")
        .and_then(Value::as_bool)
        .ok_or("the answer has no boolean isAuthenticated")?;
    let principal_id = answer
        .get("principalId")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if authenticated
        && !((1..=128).contains(&principal_id.len())
            && principal_id.bytes().all(|b| b.is_ascii_alphanumeric()))
    {
        return Err("principalId must be 1 to 128 letters and digits".into());
    }
    let documents = match answer.get("policyDocuments") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(_) => return Err("policyDocuments must be a list".into()),
    };
    if documents.len() > MAX_POLICY_DOCUMENTS {
        return Err(format!(
            "at most {MAX_POLICY_DOCUMENTS} policy documents may be returned"
        ));
    }
    let mut policies = Vec::new();
    for document in &documents {
        // AWS takes each document as a JSON string; an object is accepted as well.
        let text = match document {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        policies.push(Policy::parse(&text).map_err(|e| format!("policy document: {e}"))?);
    }
    let seconds = |field: &str| -> Result<Option<Duration>, String> {
        match answer.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .filter(|s| (1..=86_400).contains(s))
                .map(|s| Some(Duration::from_secs(s)))
                .ok_or_else(|| format!("{field} must be whole seconds from 1 to 86400")),
        }
    };
    Ok((
        authenticated,
        Verdict {
            principal_id,
            policies,
            disconnect_after: seconds("disconnectAfterInSeconds")?,
            refresh_after: seconds("refreshAfterInSeconds")?,
            variables: Vec::new(),
        },
    ))
}

impl Api {
    fn authorizer_description(&self, a: &AuthorizerRecord) -> Value {
        let mut description = json!({
            "authorizerName": a.authorizer_name,
            "authorizerArn": self.arn(&format!("authorizer/{}", a.authorizer_name)),
            "authorizerFunctionArn": a.authorizer_function_arn,
            "tokenSigningPublicKeys": a.token_signing_public_keys,
            "status": a.status,
            "creationDate": a.creation_date,
            "lastModifiedDate": a.last_modified_date,
            "signingDisabled": a.signing_disabled,
            "enableCachingForHttp": a.enable_caching_for_http,
        });
        if let Some(key) = &a.token_key_name {
            description["tokenKeyName"] = json!(key);
        }
        description
    }

    fn check_function(&self, arn: &str) -> Result<(), AwsError> {
        if arn.len() > 2048 {
            return Err(AwsError::validation(
                "authorizerFunctionArn",
                arn,
                "Member must have length less than or equal to 2048",
            ));
        }
        if let Some(verifier) = arn.strip_prefix(JWT_FUNCTION_PREFIX)
            && !self.config.jwt_verifiers.contains_key(verifier)
        {
            return Err(AwsError::invalid_request(format!(
                "No JWT verifier {verifier} is configured (aws.jwt_verifiers)"
            )));
        }
        Ok(())
    }

    fn authorizer_summary(&self, name: &str) -> Value {
        json!({
            "authorizerName": name,
            "authorizerArn": self.arn(&format!("authorizer/{name}")),
        })
    }

    async fn authorizer(&self, name: &str) -> Result<AuthorizerRecord, AwsError> {
        Ok(self.authorizer_versioned(name).await?.value)
    }

    async fn authorizer_versioned(
        &self,
        name: &str,
    ) -> Result<super::records::Versioned<AuthorizerRecord>, AwsError> {
        self.records
            .get::<AuthorizerRecord>(&authorizer_key(name))
            .await?
            .ok_or_else(|| AwsError::not_found(format!("Authorizer {name} does not exist")))
    }

    pub(super) async fn create_authorizer(&self, name: &str, request: &ApiRequest) -> ApiResult {
        check_authorizer_name(name)?;
        let body: AuthorizerBody = request.json()?;
        let _ = body.tags;
        let function = body
            .authorizer_function_arn
            .filter(|f| !f.is_empty())
            .ok_or_else(|| AwsError::invalid_request("authorizerFunctionArn is required"))?;
        self.check_function(&function)?;
        let signing_disabled = body.signing_disabled.unwrap_or(false);
        let keys = body.token_signing_public_keys.unwrap_or_default();
        if let Some(key_name) = &body.token_key_name {
            check_token_key_name(key_name)?;
        }
        if !signing_disabled && (keys.is_empty() || body.token_key_name.is_none()) {
            return Err(AwsError::invalid_request(
                "tokenKeyName and tokenSigningPublicKeys are required unless signingDisabled is true",
            ));
        }
        check_public_keys(&keys)?;
        let status = body.status.unwrap_or_else(|| "ACTIVE".to_owned());
        check_status(&status)?;
        let (existing, _) = self
            .records
            .page::<AuthorizerRecord>(AUTHORIZERS, None, MAX_AUTHORIZERS)
            .await?;
        if existing.len() >= MAX_AUTHORIZERS {
            return Err(AwsError::limit_exceeded(format!(
                "At most {MAX_AUTHORIZERS} authorizers may exist"
            )));
        }
        let now = now_seconds();
        let record = AuthorizerRecord {
            authorizer_name: name.to_owned(),
            authorizer_function_arn: function,
            token_key_name: body.token_key_name,
            token_signing_public_keys: keys,
            status,
            signing_disabled,
            enable_caching_for_http: body.enable_caching_for_http.unwrap_or(false),
            creation_date: now,
            last_modified_date: now,
        };
        if !self.records.create(&authorizer_key(name), &record).await? {
            return Err(AwsError::already_exists(
                format!("Authorizer {name} already exists"),
                name,
                self.arn(&format!("authorizer/{name}")),
            ));
        }
        Ok(self.authorizer_summary(name))
    }

    pub(super) async fn describe_authorizer(&self, name: &str) -> ApiResult {
        let authorizer = self.authorizer(name).await?;
        Ok(json!({ "authorizerDescription": self.authorizer_description(&authorizer) }))
    }

    pub(super) async fn list_authorizers(&self, request: &ApiRequest) -> ApiResult {
        let status = request.query("status");
        if let Some(s) = status {
            check_status(s)?;
        }
        let page = Self::marker_page(request)?;
        let (authorizers, next) = page
            .collect(&self.records, AUTHORIZERS, |a: &AuthorizerRecord| {
                status.is_none_or(|s| a.status == s)
            })
            .await?;
        let mut summaries: Vec<Value> = authorizers
            .iter()
            .map(|a| self.authorizer_summary(&a.authorizer_name))
            .collect();
        if request.query("isAscendingOrder") == Some("false") {
            summaries.reverse();
        }
        let mut answer = json!({ "authorizers": summaries });
        if let Some(marker) = next {
            answer["nextMarker"] = json!(marker);
        }
        Ok(answer)
    }

    pub(super) async fn update_authorizer(&self, name: &str, request: &ApiRequest) -> ApiResult {
        let body: AuthorizerBody = request.json()?;
        if body.tags.is_some() || body.signing_disabled.is_some() {
            return Err(AwsError::invalid_request(
                "tags and signingDisabled cannot be changed by UpdateAuthorizer",
            ));
        }
        let key = authorizer_key(name);
        let current = self.authorizer_versioned(name).await?;
        let mut record = current.value;
        if let Some(function) = body.authorizer_function_arn {
            self.check_function(&function)?;
            record.authorizer_function_arn = function;
        }
        if let Some(key_name) = body.token_key_name {
            check_token_key_name(&key_name)?;
            record.token_key_name = Some(key_name);
        }
        if let Some(keys) = body.token_signing_public_keys {
            check_public_keys(&keys)?;
            record.token_signing_public_keys = keys;
        }
        if let Some(status) = body.status {
            check_status(&status)?;
            record.status = status;
        }
        if let Some(caching) = body.enable_caching_for_http {
            record.enable_caching_for_http = caching;
        }
        if !record.signing_disabled && record.token_signing_public_keys.is_empty() {
            return Err(AwsError::invalid_request(
                "An authorizer that checks signatures needs tokenSigningPublicKeys",
            ));
        }
        record.last_modified_date = now_seconds();
        if !self
            .records
            .replace(&key, &record, current.mod_revision)
            .await?
        {
            return Err(AwsError::conflicting_update(
                "The authorizer changed meanwhile; retry.",
            ));
        }
        Ok(self.authorizer_summary(name))
    }

    pub(super) async fn delete_authorizer(&self, name: &str) -> ApiResult {
        let key = authorizer_key(name);
        let current = self.authorizer_versioned(name).await?;
        if current.value.status == "ACTIVE" {
            return Err(AwsError::delete_conflict(format!(
                "Authorizer {name} is ACTIVE; set it INACTIVE before deleting it"
            )));
        }
        let default = self.records.get::<String>(DEFAULT_AUTHORIZER).await?;
        if default.as_ref().is_some_and(|d| d.value == name) {
            return Err(AwsError::delete_conflict(format!(
                "Authorizer {name} is the default authorizer"
            )));
        }
        if !self.records.delete(&key, current.mod_revision).await? {
            return Err(AwsError::conflicting_update(
                "The authorizer changed meanwhile; retry.",
            ));
        }
        Ok(json!({}))
    }

    pub(super) async fn set_default_authorizer(&self, request: &ApiRequest) -> ApiResult {
        let body: DefaultAuthorizerBody = request.json()?;
        let name = body
            .authorizer_name
            .ok_or_else(|| AwsError::invalid_request("authorizerName is required"))?;
        self.authorizer(&name).await?;
        let current = self.records.get::<String>(DEFAULT_AUTHORIZER).await?;
        if current.as_ref().is_some_and(|c| c.value == name) {
            return Err(AwsError::already_exists(
                format!("Authorizer {name} is already the default authorizer"),
                name.as_str(),
                self.arn(&format!("authorizer/{name}")),
            ));
        }
        let revision = current.map_or(0, |c| c.mod_revision);
        if !self
            .records
            .replace(DEFAULT_AUTHORIZER, &name, revision)
            .await?
        {
            return Err(AwsError::conflicting_update(
                "The default authorizer changed meanwhile; retry.",
            ));
        }
        Ok(self.authorizer_summary(&name))
    }

    pub(super) async fn describe_default_authorizer(&self) -> ApiResult {
        let name = self
            .records
            .get::<String>(DEFAULT_AUTHORIZER)
            .await?
            .map(|r| r.value)
            .ok_or_else(|| AwsError::not_found("No default authorizer is set"))?;
        let authorizer = self.authorizer(&name).await?;
        Ok(json!({ "authorizerDescription": self.authorizer_description(&authorizer) }))
    }

    /// TestInvokeAuthorizer: runs the authorizer as a connection would, without connecting.
    pub(super) async fn test_invoke_authorizer(
        &self,
        name: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        let body: TestInvokeBody = request.json()?;
        let authorizer = self.authorizer(name).await?;
        let mut credentials = Credentials::default();
        if let Some(http) = body.http_context {
            credentials.headers = http
                .headers
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
            credentials.raw_query = http
                .query_string
                .unwrap_or_default()
                .trim_start_matches('?')
                .to_owned();
            credentials.query = super::sigv4::parse_query(&credentials.raw_query);
        }
        if let (Some(token), Some(key)) = (body.token, &authorizer.token_key_name) {
            credentials.headers.push((key.to_ascii_lowercase(), token));
        }
        if let Some(signature) = body.token_signature {
            credentials
                .headers
                .push((SIGNATURE_HEADER.to_owned(), signature));
        }
        let mqtt = match body.mqtt_context {
            Some(m) => Some(MqttSide {
                client_id: m.client_id.unwrap_or_default(),
                username: m.username,
                password: match m.password {
                    Some(p) => Some(
                        base64::engine::general_purpose::STANDARD
                            .decode(p)
                            .map_err(|_| {
                                AwsError::invalid_request("mqttContext.password must be base64")
                            })?,
                    ),
                    None => None,
                },
            }),
            None => None,
        };
        let server_name = body.tls_context.and_then(|t| t.server_name);
        let (answer, _) = self
            .invoke(
                &authorizer,
                &credentials,
                mqtt.as_ref(),
                server_name.as_deref(),
            )
            .await
            .map_err(|e| match e {
                Refusal::Denied(m) => AwsError::invalid_response(m),
                Refusal::Unavailable(m) => AwsError::unavailable(m),
                Refusal::NoAuthorizer => AwsError::not_found("No authorizer applies"),
            })?;
        let (authenticated, _) = check_verdict(&answer).map_err(AwsError::invalid_response)?;
        let mut result = json!({ "isAuthenticated": authenticated });
        for field in [
            "principalId",
            "policyDocuments",
            "refreshAfterInSeconds",
            "disconnectAfterInSeconds",
        ] {
            if let Some(v) = answer.get(field) {
                result[field] = match (field, v) {
                    ("policyDocuments", Value::Array(items)) => Value::Array(
                        items
                            .iter()
                            .map(|d| match d {
                                Value::String(_) => d.clone(),
                                other => json!(other.to_string()),
                            })
                            .collect(),
                    ),
                    _ => v.clone(),
                };
            }
        }
        Ok(result)
    }

    /// Checks the token's signature and calls the authorizer's function: its answer in AWS's
    /// form, and the policy variables it adds (the claims of a JWT).
    async fn invoke(
        &self,
        authorizer: &AuthorizerRecord,
        credentials: &Credentials,
        mqtt: Option<&MqttSide>,
        server_name: Option<&str>,
    ) -> Result<(Value, Vec<(String, String)>), Refusal> {
        if authorizer.status != "ACTIVE" {
            return Err(Refusal::Denied(format!(
                "authorizer {} is not active",
                authorizer.authorizer_name
            )));
        }
        let token = authorizer
            .token_key_name
            .as_deref()
            .and_then(|key| credentials.token(key));
        if !authorizer.signing_disabled {
            let (Some(token), Some(signature)) = (token, credentials.signature()) else {
                return Err(Refusal::Denied(
                    "a token and its signature are required".into(),
                ));
            };
            let signature = base64::engine::general_purpose::STANDARD
                .decode(signature.trim())
                .map_err(|_| Refusal::Denied("the token signature is not base64".into()))?;
            let verified = authorizer
                .token_signing_public_keys
                .values()
                .filter_map(|pem| SigningKey::parse(pem))
                .any(|key| key.verifies(token.as_bytes(), &signature));
            if !verified {
                self.count_authorization(authorizer, "bad_signature");
                return Err(Refusal::Denied(
                    "the token signature does not verify".into(),
                ));
            }
        }
        if let Some(verifier) = authorizer
            .authorizer_function_arn
            .strip_prefix(JWT_FUNCTION_PREFIX)
        {
            return self.check_jwt(authorizer, verifier, token).await;
        }
        let mut protocols = vec!["tls"];
        let mut protocol_data = json!({ "tls": { "serverName": server_name.unwrap_or_default() } });
        if !credentials.headers.is_empty() || !credentials.raw_query.is_empty() && mqtt.is_none() {
            protocols.push("http");
            let headers: serde_json::Map<String, Value> = credentials
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            let query = if credentials.raw_query.is_empty() {
                String::new()
            } else {
                format!("?{}", credentials.raw_query)
            };
            protocol_data["http"] = json!({ "headers": headers, "queryString": query });
        }
        if let Some(m) = mqtt {
            protocols.push("mqtt");
            let mut side = json!({ "clientId": m.client_id });
            if let Some(u) = &m.username {
                side["username"] = json!(u);
            }
            if let Some(p) = &m.password {
                side["password"] = json!(base64::engine::general_purpose::STANDARD.encode(p));
            }
            protocol_data["mqtt"] = side;
        }
        let mut event = json!({
            "protocols": protocols,
            "protocolData": protocol_data,
            "connectionMetadata": { "id": uuid_v4() },
        });
        if let Some(token) = token {
            event["token"] = json!(token);
            event["signatureVerified"] = json!(!authorizer.signing_disabled);
        }
        let url = self
            .function_url(&authorizer.authorizer_function_arn)
            .ok_or_else(|| {
                Refusal::Denied(format!(
                    "no URL is configured for authorizer function {}",
                    authorizer.authorizer_function_arn
                ))
            })?;
        let started = std::time::Instant::now();
        let answer = crate::http_client::shared()
            .post_json(&url, &event, FUNCTION_TIMEOUT)
            .await;
        self.metrics
            .authorizer_latency
            .with_label_values(&[authorizer.authorizer_name.as_str()])
            .observe(started.elapsed().as_secs_f64());
        let answer = answer.map_err(|e| {
            self.count_authorization(authorizer, "function_error");
            Refusal::Denied(format!("authorizer function: {e}"))
        })?;
        Ok((answer, Vec::new()))
    }

    /// The built-in function: the token is a JWT checked against the verifier's key set; its
    /// holder gets the verifier's policies until the token expires.
    async fn check_jwt(
        &self,
        authorizer: &AuthorizerRecord,
        verifier: &str,
        token: Option<&str>,
    ) -> Result<(Value, Vec<(String, String)>), Refusal> {
        let Some(config) = self.config.jwt_verifiers.get(verifier) else {
            self.count_authorization(authorizer, "function_error");
            return Err(Refusal::Denied(format!(
                "no JWT verifier {verifier} is configured (aws.jwt_verifiers)"
            )));
        };
        let Some(token) = token else {
            return Ok((json!({ "isAuthenticated": false }), Vec::new()));
        };
        // Tokens sent in an `Authorization` header come as `Bearer <jwt>`.
        let token = token.strip_prefix("Bearer ").unwrap_or(token).trim();
        let source = match (&config.jwks_file, &config.jwks_url) {
            (Some(file), _) => jwt::KeySource::File(file.clone()),
            (None, Some(url)) => jwt::KeySource::Url(url.clone()),
            (None, None) => return Err(Refusal::Denied("the JWT verifier has no key set".into())),
        };
        let keys = self
            .key_sets
            .get(&source, jwt::key_id(token).as_deref())
            .await
            .map_err(|e| {
                self.count_authorization(authorizer, "function_error");
                Refusal::Unavailable(e.to_string())
            })?;
        let now = super::epoch_seconds();
        let claims = match jwt::verify(
            token,
            &keys,
            config.issuer.as_deref(),
            config.audience.as_deref(),
            now,
        ) {
            Ok(claims) => claims,
            Err(e) => {
                tracing::debug!(authorizer = %authorizer.authorizer_name, error = %e, "JWT refused");
                return Ok((json!({ "isAuthenticated": false }), Vec::new()));
            }
        };
        let principal_claim = config.principal_claim.as_deref().unwrap_or("sub");
        let principal: String = claims
            .get(principal_claim)
            .and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .unwrap_or_default()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(128)
            .collect();
        let documents = self
            .documents(&config.policies)
            .await
            .map_err(|e| Refusal::Unavailable(e.message))?;
        let mut answer = json!({
            "isAuthenticated": !principal.is_empty(),
            "principalId": principal,
            "policyDocuments": documents.into_iter().map(|(_, d)| d).collect::<Vec<_>>(),
        });
        if let Some(exp) = claims.get("exp").and_then(Value::as_i64) {
            answer["disconnectAfterInSeconds"] = json!((exp - now).clamp(1, 86_400));
        }
        let variables = claims
            .iter()
            .filter_map(|(name, value)| {
                let value = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return None,
                };
                Some((format!("jwt:{name}"), value))
            })
            .collect();
        Ok((answer, variables))
    }

    fn count_authorization(&self, authorizer: &AuthorizerRecord, outcome: &str) {
        self.metrics
            .authorizations
            .with_label_values(&[authorizer.authorizer_name.as_str(), outcome])
            .inc();
    }

    /// Where the function behind `arn` answers: the ARN itself when it is a URL, else the
    /// URL `aws.authorizer_functions` maps it to.
    fn function_url(&self, arn: &str) -> Option<String> {
        if arn.starts_with("http://") || arn.starts_with("https://") {
            return Some(arn.to_owned());
        }
        self.config.authorizer_functions.get(arn).cloned()
    }

    /// Authenticates through the authorizer `credentials` name (or the default one).
    /// Authenticates through the authorizer `credentials` name (or the default one).
    async fn authorize(
        &self,
        credentials: &Credentials,
        mqtt: Option<&MqttSide>,
        server_name: Option<&str>,
    ) -> Result<Verdict, Refusal> {
        let authorizer = self.authorizer_for(credentials).await?;
        self.decide(&authorizer, credentials, mqtt, server_name)
            .await
    }

    /// The authorizer `credentials` name, or the default one.
    async fn authorizer_for(&self, credentials: &Credentials) -> Result<AuthorizerRecord, Refusal> {
        let name = match credentials.authorizer() {
            Some(name) => name.to_owned(),
            None => self
                .records
                .get::<String>(DEFAULT_AUTHORIZER)
                .await
                .map_err(|e| Refusal::Unavailable(e.message))?
                .map(|r| r.value)
                .ok_or(Refusal::NoAuthorizer)?,
        };
        match self.authorizer(&name).await {
            Ok(a) => Ok(a),
            Err(e) if e.code == "ResourceNotFoundException" => {
                Err(Refusal::Denied(format!("authorizer {name} does not exist")))
            }
            Err(e) => Err(Refusal::Unavailable(e.message)),
        }
    }

    /// Runs `authorizer` on what the client presented.
    async fn decide(
        &self,
        authorizer: &AuthorizerRecord,
        credentials: &Credentials,
        mqtt: Option<&MqttSide>,
        server_name: Option<&str>,
    ) -> Result<Verdict, Refusal> {
        let name = &authorizer.authorizer_name;
        let (answer, variables) = self
            .invoke(authorizer, credentials, mqtt, server_name)
            .await?;
        let (authenticated, mut verdict) = check_verdict(&answer).map_err(|e| {
            self.count_authorization(authorizer, "function_error");
            Refusal::Denied(format!("authorizer {name} answered badly: {e}"))
        })?;
        if !authenticated {
            self.count_authorization(authorizer, "denied");
            return Err(Refusal::Denied(format!(
                "authorizer {name} did not authenticate the client"
            )));
        }
        self.count_authorization(authorizer, "allowed");
        verdict.variables = variables;
        Ok(verdict)
    }

    fn authorized_permissions(&self, verdict: &Verdict, client_id: Option<&str>) -> Permissions {
        let mut context = Context::new();
        if let Some(id) = client_id {
            context.set("iot:ClientId", id);
        }
        context.set("iot:Connection.Thing.IsAttached", "false");
        for (name, value) in &verdict.variables {
            context.set(name.clone(), value.clone());
        }
        Permissions::compile(&verdict.policies, &context, &self.arn(""))
    }

    /// Authenticates an HTTP request (HTTPS publish) through an authorizer.
    /// Authenticates an HTTP request (HTTPS publish) through an authorizer. With
    /// `enableCachingForHttp`, the answer is reused on the same connection for the same token
    /// until `refreshAfterInSeconds` has passed.
    pub(super) async fn authorize_http(
        &self,
        info: &ConnectionInfo,
        credentials: Credentials,
    ) -> Result<Arc<Access>, AwsError> {
        let refused = |refusal: Refusal| match refusal {
            Refusal::NoAuthorizer => AwsError::from(super::sigv4::SigV4Error::Missing),
            Refusal::Denied(reason) => {
                tracing::debug!(%reason, "custom authentication refused");
                AwsError::unauthorized("Unauthorized")
            }
            Refusal::Unavailable(m) => AwsError::unavailable(m),
        };
        let authorizer = self.authorizer_for(&credentials).await.map_err(refused)?;
        let fingerprint = authorizer.enable_caching_for_http.then(|| {
            let token = authorizer
                .token_key_name
                .as_deref()
                .and_then(|key| credentials.token(key));
            cache_fingerprint(&authorizer.authorizer_name, token, credentials.signature())
        });
        if let Some(fingerprint) = fingerprint
            && let Some(cached) = info.authorization.lock().as_ref()
            && cached.fingerprint == fingerprint
            && tokio::time::Instant::now() < cached.until
        {
            return Ok(Arc::clone(&cached.access));
        }
        let verdict = self
            .decide(&authorizer, &credentials, None, info.server_name.as_deref())
            .await
            .map_err(refused)?;
        let access = Access::new(
            self.authorized_permissions(&verdict, None),
            verdict.principal_id.clone(),
        );
        if let (Some(fingerprint), Some(refresh)) = (fingerprint, verdict.refresh_after) {
            *info.authorization.lock() = Some(CachedAuthorization {
                fingerprint,
                access: Arc::clone(&access),
                until: tokio::time::Instant::now() + refresh,
            });
        }
        Ok(access)
    }
}

/// What identifies a cached HTTP authorization: a SHA-256 digest of the authorizer, the token
/// and its signature, each length-prefixed so that no two triples run together. A 64-bit
/// hash would let a forged token that collides reuse another's answer.
fn cache_fingerprint(authorizer: &str, token: Option<&str>, signature: Option<&str>) -> [u8; 32] {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [Some(authorizer), token, signature] {
        match part {
            Some(text) => {
                context.update(&[1]);
                context.update(&(text.len() as u64).to_be_bytes());
                context.update(text.as_bytes());
            }
            None => context.update(&[0]),
        }
    }
    let mut fingerprint = [0u8; 32];
    fingerprint.copy_from_slice(context.finish().as_ref());
    fingerprint
}

fn check_authorizer_name(name: &str) -> Result<(), AwsError> {
    check_name("authorizerName", name)?;
    if name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_=,@-".contains(&b))
    {
        Ok(())
    } else {
        Err(AwsError::validation(
            "authorizerName",
            name,
            "Member must satisfy regular expression pattern: [\\w=,@-]+",
        ))
    }
}

/// Admits MQTT clients through a custom authorizer: from the connection's HTTP upgrade
/// (WebSocket) and the CONNECT's username and password; where no authorizer applies, the
/// listener's anonymous admission if it has one.
pub struct AuthorizerGate {
    api: Arc<Api>,
    info: ConnectionInfo,
    credentials: Credentials,
}

impl AuthorizerGate {
    pub fn new(api: Arc<Api>, info: ConnectionInfo, credentials: Credentials) -> Self {
        Self {
            api,
            info,
            credentials,
        }
    }
}

impl Gate for AuthorizerGate {
    fn admit<'a>(&'a self, connect: ConnectCredentials<'a>) -> GateFuture<'a> {
        Box::pin(async move {
            let credentials = self.credentials.with_username(connect.username);
            let mqtt = MqttSide {
                client_id: connect.client_id.to_owned(),
                username: connect.username.map(str::to_owned),
                password: connect.password.map(<[u8]>::to_vec),
            };
            let server_name = self.info.server_name.clone();
            match self
                .api
                .authorize(&credentials, Some(&mqtt), server_name.as_deref())
                .await
            {
                Ok(verdict) => {
                    let permissions = self
                        .api
                        .authorized_permissions(&verdict, Some(connect.client_id));
                    let access = Access::new(permissions, verdict.principal_id.clone());
                    if verdict.disconnect_after.is_some() || verdict.refresh_after.is_some() {
                        tokio::spawn(supervise(
                            Arc::clone(&self.api),
                            Arc::downgrade(&access),
                            credentials,
                            mqtt,
                            server_name,
                            verdict.disconnect_after,
                            verdict.refresh_after,
                        ));
                    }
                    Ok(access)
                }
                // Where no authorizer applies, the listener's anonymous admission, if any.
                Err(Refusal::NoAuthorizer) => match &self.info.anonymous {
                    Some(anonymous) => Ok(anonymous
                        .admit(connect)
                        .await?
                        .unwrap_or_else(|| Access::anonymous(Arc::new(Permissions::allow_all())))),
                    None => Err(reason::NOT_AUTHORIZED),
                },
                Err(Refusal::Denied(why)) => {
                    tracing::debug!(client_id = connect.client_id, reason = %why, "custom authentication refused");
                    Err(reason::NOT_AUTHORIZED)
                }
                Err(Refusal::Unavailable(why)) => {
                    tracing::warn!(reason = %why, "cannot run a custom authorizer");
                    Err(reason::SERVER_UNAVAILABLE)
                }
            }
        })
    }
}

/// Ends an authorized connection when its authorizer said to, and asks the authorizer again
/// every `refresh_after`, replacing the connection's policies or ending it.
async fn supervise(
    api: Arc<Api>,
    access: Weak<Access>,
    credentials: Credentials,
    mqtt: MqttSide,
    server_name: Option<String>,
    disconnect_after: Option<Duration>,
    mut refresh_after: Option<Duration>,
) {
    let started = tokio::time::Instant::now();
    let ends_at = disconnect_after.map(|d| started + d);
    let mut next_refresh = refresh_after.map(|d| started + d);
    loop {
        let wake = match (ends_at, next_refresh) {
            (Some(end), Some(refresh)) => end.min(refresh),
            (Some(end), None) => end,
            (None, Some(refresh)) => refresh,
            (None, None) => return,
        };
        tokio::time::sleep_until(wake).await;
        let Some(live) = access.upgrade() else {
            return;
        };
        if live.is_revoked() {
            return;
        }
        if ends_at.is_some_and(|end| tokio::time::Instant::now() >= end) {
            tracing::info!(client_id = %mqtt.client_id, "authorizer's connection time is up");
            live.revoke();
            return;
        }
        match api
            .authorize(&credentials, Some(&mqtt), server_name.as_deref())
            .await
        {
            Ok(verdict) => {
                live.replace(api.authorized_permissions(&verdict, Some(&mqtt.client_id)));
                refresh_after = verdict.refresh_after.or(refresh_after);
            }
            Err(Refusal::Unavailable(why)) => {
                tracing::warn!(reason = %why, "cannot refresh a custom authorization; keeping it");
            }
            Err(_) => {
                tracing::info!(client_id = %mqtt.client_id, "authorizer no longer authenticates the client");
                live.revoke();
                return;
            }
        }
        next_refresh = refresh_after.map(|d| tokio::time::Instant::now() + d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_checked_as_aws_does() {
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}]}"#;
        let good = json!({
            "isAuthenticated": true,
            "principalId": "device42",
            "policyDocuments": [policy],
            "disconnectAfterInSeconds": 3600,
            "refreshAfterInSeconds": 300,
        });
        let (authenticated, verdict) = check_verdict(&good).unwrap();
        assert!(authenticated);
        assert_eq!(verdict.policies.len(), 1);
        assert_eq!(verdict.disconnect_after, Some(Duration::from_secs(3600)));
        for (field, value) in [
            ("principalId", json!("not valid!")),
            ("policyDocuments", json!(["{not json"])),
            ("policyDocuments", json!(vec![policy; 11])),
            ("disconnectAfterInSeconds", json!(0)),
            ("refreshAfterInSeconds", json!(86_401)),
            ("isAuthenticated", json!("yes")),
        ] {
            let mut bad = good.clone();
            bad[field] = value;
            assert!(check_verdict(&bad).is_err(), "{field}");
        }
    }

    #[test]
    fn username_query_names_the_authorizer_and_carries_the_token() {
        let c = Credentials::default().with_username(Some(
            "device?x-amz-customauthorizer-name=mine&x-amz-customauthorizer-signature=c2ln&token=abc",
        ));
        assert_eq!(c.authorizer(), Some("mine"));
        assert_eq!(c.signature(), Some("c2ln"));
        assert_eq!(c.token("token"), Some("abc"));
        assert!(
            Credentials::default()
                .with_username(Some("plain"))
                .authorizer()
                .is_none()
        );
        // What the upgrade request names wins over the username.
        let upgrade = Credentials::from_http(&[(NAME_HEADER.into(), "http".into())], &[], "");
        assert_eq!(
            upgrade
                .with_username(Some("u?x-amz-customauthorizer-name=mqtt"))
                .authorizer(),
            Some("http")
        );
    }

    #[test]
    fn signing_keys_verify_rsa_and_ec_signatures() {
        use ring::rand::SystemRandom;
        use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let key = rcgen::KeyPair::try_from(pkcs8.as_ref()).unwrap();
        let pem = key.public_key_pem();
        let signing = SigningKey::parse(&pem).unwrap();
        let signature = pair.sign(&rng, b"token").unwrap();
        assert!(signing.verifies(b"token", signature.as_ref()));
        assert!(!signing.verifies(b"other", signature.as_ref()));
        assert!(pair.public_key().as_ref().len() == 65);
        assert!(SigningKey::parse("not a key").is_none());
    }
}
