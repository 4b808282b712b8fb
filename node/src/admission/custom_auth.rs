//! Authentication through a custom authorizer. A client presents a token (and its signature,
//! checked against the authorizer's public keys before anything else); the authorizer's
//! function, called over HTTP with AWS's authorizer event, answers with AWS's authorizer
//! response, and the policies it returns become the client's permissions, refreshed and ended
//! when the response says. A function ARN `jwt:{name}` is the built-in JWT verifier of that
//! name instead of an HTTP call.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use serde_json::{Value, json};

use crate::auth::identity::jwt;
use crate::auth::identity::signing_key::SigningKey;
use crate::auth::permissions::Permissions;
use crate::auth::policy::{Context, Policy};
use crate::config::{AwsConfig, JwtVerifierConfig};
use crate::services::arn::Arns;
use crate::services::authorizers::{
    AuthorizerRecord, AuthorizerStatus, Authorizers, JWT_FUNCTION_PREFIX,
};
use crate::services::error::Error;
use crate::services::policies::Policies;

const MAX_POLICY_DOCUMENTS: usize = 10;
/// How long an authorizer function may take, as AWS IoT allows a Lambda authorizer.
const FUNCTION_TIMEOUT: Duration = Duration::from_secs(5);

pub const NAME_HEADER: &str = "x-amz-customauthorizer-name";
pub const SIGNATURE_HEADER: &str = "x-amz-customauthorizer-signature";

/// What a client presented to be authenticated by an authorizer, from HTTP headers and query
/// (HTTPS, WebSocket) or from the query in an MQTT username.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Where the authorizer's name, the signature and the token (by the authorizer's
    /// `tokenKeyName`) are looked up: headers first, then query pairs (the request's, then
    /// those of an MQTT username).
    pub headers: Vec<(String, String)>,
    pub query: Vec<(String, String)>,
    /// The request's query as sent, for the authorizer event.
    pub raw_query: String,
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
    pub fn with_username(&self, username: Option<&str>) -> Self {
        let mut merged = self.clone();
        if let Some((_, raw_query)) = username.and_then(|u| u.split_once('?')) {
            merged
                .query
                .extend(crate::auth::identity::sigv4::parse_query(raw_query));
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
    pub fn authorizer(&self) -> Option<&str> {
        self.lookup(NAME_HEADER)
    }

    pub fn signature(&self) -> Option<&str> {
        self.lookup(SIGNATURE_HEADER)
    }

    pub fn token(&self, key_name: &str) -> Option<&str> {
        self.lookup(key_name)
    }
}

/// The MQTT side of an authorization request.
#[derive(Debug, Clone, Default)]
pub struct MqttSide {
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
}

/// Why an authorizer did not let a client in.
#[derive(Debug)]
pub enum Refusal {
    /// No authorizer applies (none named, no default).
    NoAuthorizer,
    /// The authorizer, its token or its answer says no.
    Denied(String),
    /// The store or the function could not be reached.
    Unavailable(String),
}

/// What an authorizer function answered, checked.
pub struct Verdict {
    pub principal_id: String,
    pub policies: Vec<Policy>,
    pub disconnect_after: Option<Duration>,
    pub refresh_after: Option<Duration>,
    /// Policy variables the function adds besides the connection's own.
    pub variables: Vec<(String, String)>,
}

/// Checks an authorizer function's answer against AWS's response format: whether it
/// authenticates, and what it grants.
pub fn check_verdict(answer: &Value) -> Result<(bool, Verdict), String> {
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

/// What identifies a cached HTTP authorization: a SHA-256 digest of the authorizer, the token
/// and its signature, each length-prefixed so that no two triples run together. A 64-bit
/// hash would let a forged token that collides reuse another's answer.
pub fn cache_fingerprint(
    authorizer: &str,
    token: Option<&str>,
    signature: Option<&str>,
) -> [u8; 32] {
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

#[derive(Clone)]
pub struct AuthorizerMetrics {
    authorizations: IntCounterVec,
    latency: HistogramVec,
}

impl AuthorizerMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let authorizations = IntCounterVec::new(
            Opts::new(
                "halyard_custom_authorizations_total",
                "Custom authorizer decisions by authorizer and outcome (allowed, denied, \
                 bad_signature, function_error)",
            ),
            &["authorizer", "outcome"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "halyard_authorizer_function_duration_seconds",
                "Time an authorizer function took to answer, by authorizer",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["authorizer"],
        )?;
        registry.register(Box::new(authorizations.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(Self {
            authorizations,
            latency,
        })
    }
}

/// Runs custom authorizers.
pub struct CustomAuth {
    authorizers: Authorizers,
    policies: Policies,
    arns: Arns,
    /// Function ARN to URL (`aws.authorizer_functions`).
    functions: BTreeMap<String, String>,
    jwt_verifiers: BTreeMap<String, JwtVerifierConfig>,
    key_sets: jwt::KeySets,
    metrics: AuthorizerMetrics,
}

impl CustomAuth {
    pub fn new(
        authorizers: Authorizers,
        policies: Policies,
        arns: Arns,
        config: &AwsConfig,
        metrics: AuthorizerMetrics,
    ) -> Self {
        Self {
            authorizers,
            policies,
            arns,
            functions: config.authorizer_functions.clone(),
            jwt_verifiers: config.jwt_verifiers.clone(),
            key_sets: jwt::KeySets::default(),
            metrics,
        }
    }

    fn count(&self, authorizer: &AuthorizerRecord, outcome: &str) {
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
        self.functions.get(arn).cloned()
    }

    /// Authenticates through the authorizer `credentials` name (or the default one).
    pub async fn authorize(
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
    pub async fn authorizer_for(
        &self,
        credentials: &Credentials,
    ) -> Result<AuthorizerRecord, Refusal> {
        let name = match credentials.authorizer() {
            Some(name) => name.to_owned(),
            None => self
                .authorizers
                .default_name()
                .await
                .map_err(|e| Refusal::Unavailable(e.to_string()))?
                .ok_or(Refusal::NoAuthorizer)?,
        };
        match self.authorizers.authorizer(&name).await {
            Ok(a) => Ok(a),
            Err(Error::NotFound(_)) => {
                Err(Refusal::Denied(format!("authorizer {name} does not exist")))
            }
            Err(e) => Err(Refusal::Unavailable(e.to_string())),
        }
    }

    /// Runs `authorizer` on what the client presented.
    pub async fn decide(
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
            self.count(authorizer, "function_error");
            Refusal::Denied(format!("authorizer {name} answered badly: {e}"))
        })?;
        if !authenticated {
            self.count(authorizer, "denied");
            return Err(Refusal::Denied(format!(
                "authorizer {name} did not authenticate the client"
            )));
        }
        self.count(authorizer, "allowed");
        verdict.variables = variables;
        Ok(verdict)
    }

    /// The permissions `verdict` grants a client connected as `client_id`.
    pub fn permissions(&self, verdict: &Verdict, client_id: Option<&str>) -> Permissions {
        let mut context = Context::new();
        if let Some(id) = client_id {
            context.set("iot:ClientId", id);
        }
        context.set("iot:Connection.Thing.IsAttached", "false");
        for (name, value) in &verdict.variables {
            context.set(name.clone(), value.clone());
        }
        Permissions::compile(&verdict.policies, &context, self.arns.account())
    }

    /// Checks the token's signature and calls the authorizer's function: its answer in AWS's
    /// form, and the policy variables it adds (the claims of a JWT).
    pub async fn invoke(
        &self,
        authorizer: &AuthorizerRecord,
        credentials: &Credentials,
        mqtt: Option<&MqttSide>,
        server_name: Option<&str>,
    ) -> Result<(Value, Vec<(String, String)>), Refusal> {
        if authorizer.status != AuthorizerStatus::Active {
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
                self.count(authorizer, "bad_signature");
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
        let event = authorizer_event(authorizer, credentials, mqtt, server_name, token);
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
            .latency
            .with_label_values(&[authorizer.authorizer_name.as_str()])
            .observe(started.elapsed().as_secs_f64());
        let answer = answer.map_err(|e| {
            self.count(authorizer, "function_error");
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
        let Some(config) = self.jwt_verifiers.get(verifier) else {
            self.count(authorizer, "function_error");
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
                self.count(authorizer, "function_error");
                Refusal::Unavailable(e.to_string())
            })?;
        let now = crate::clock::epoch_seconds_signed();
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
            .policies
            .documents(&config.policies)
            .await
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
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
}

/// AWS's authorizer event: the token, and what each protocol of the connection carried.
fn authorizer_event(
    authorizer: &AuthorizerRecord,
    credentials: &Credentials,
    mqtt: Option<&MqttSide>,
    server_name: Option<&str>,
    token: Option<&str>,
) -> Value {
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
        "connectionMetadata": { "id": crate::ids::uuid_v4() },
    });
    if let Some(token) = token {
        event["token"] = json!(token);
        event["signatureVerified"] = json!(!authorizer.signing_disabled);
    }
    event
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
    fn fingerprints_tell_tokens_apart() {
        let a = cache_fingerprint("auth", Some("ab"), Some("c"));
        assert_eq!(a, cache_fingerprint("auth", Some("ab"), Some("c")));
        assert_ne!(a, cache_fingerprint("auth", Some("a"), Some("bc")));
        assert_ne!(a, cache_fingerprint("auth", Some("ab"), None));
    }
}
