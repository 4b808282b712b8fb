//! `/authorizer`, `/authorizers` and `/default-authorizer`: custom authorizers, and running
//! one without connecting (TestInvokeAuthorizer).

use std::collections::BTreeMap;

use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiResult, ControlPlane};
use crate::admission::custom_auth::{
    Credentials, MqttSide, Refusal, SIGNATURE_HEADER, check_verdict,
};
use crate::api::error::AwsError;
use crate::api::request::{ApiRequest, with_token};
use crate::auth::identity::sigv4;
use crate::services::authorizers::{
    AuthorizerRecord, AuthorizerStatus, AuthorizerUpdate, NewAuthorizer,
};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AuthorizerBody {
    authorizer_function_arn: Option<String>,
    token_key_name: Option<String>,
    token_signing_public_keys: Option<BTreeMap<String, String>>,
    status: Option<String>,
    /// Tags are not kept; they are accepted at creation and ignored.
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

impl ControlPlane {
    fn authorizer_summary(&self, name: &str) -> Value {
        json!({
            "authorizerName": name,
            "authorizerArn": self.authorizers.arn(name),
        })
    }

    fn authorizer_description(&self, a: &AuthorizerRecord) -> Value {
        let mut description = json!({
            "authorizerName": a.authorizer_name,
            "authorizerArn": self.authorizers.arn(&a.authorizer_name),
            "authorizerFunctionArn": a.authorizer_function_arn,
            "tokenSigningPublicKeys": a.token_signing_public_keys,
            "status": a.status.as_str(),
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

    pub(super) async fn create_authorizer(&self, name: &str, request: &ApiRequest) -> ApiResult {
        let body: AuthorizerBody = request.json()?;
        let status = match body.status.as_deref() {
            None => AuthorizerStatus::Active,
            Some(s) => AuthorizerStatus::parse(s)?,
        };
        self.authorizers
            .create(
                name,
                NewAuthorizer {
                    function_arn: body.authorizer_function_arn.unwrap_or_default(),
                    token_key_name: body.token_key_name,
                    token_signing_public_keys: body.token_signing_public_keys.unwrap_or_default(),
                    status,
                    signing_disabled: body.signing_disabled.unwrap_or(false),
                    enable_caching_for_http: body.enable_caching_for_http.unwrap_or(false),
                },
            )
            .await?;
        Ok(self.authorizer_summary(name))
    }

    pub(super) async fn describe_authorizer(&self, name: &str) -> ApiResult {
        let authorizer = self.authorizers.authorizer(name).await?;
        Ok(json!({ "authorizerDescription": self.authorizer_description(&authorizer) }))
    }

    pub(super) async fn list_authorizers(&self, request: &ApiRequest) -> ApiResult {
        let status = request
            .query("status")
            .map(AuthorizerStatus::parse)
            .transpose()?;
        let page = request.marker_page()?;
        let (authorizers, next) = self.authorizers.list(status, &page).await?;
        let mut summaries: Vec<Value> = authorizers
            .iter()
            .map(|a| self.authorizer_summary(&a.authorizer_name))
            .collect();
        if request.query("isAscendingOrder") == Some("false") {
            summaries.reverse();
        }
        Ok(with_token(
            json!({ "authorizers": summaries }),
            "nextMarker",
            next,
        ))
    }

    pub(super) async fn update_authorizer(&self, name: &str, request: &ApiRequest) -> ApiResult {
        let body: AuthorizerBody = request.json()?;
        if body.tags.is_some() || body.signing_disabled.is_some() {
            return Err(AwsError::invalid_request(
                "tags and signingDisabled cannot be changed by UpdateAuthorizer",
            ));
        }
        let status = body
            .status
            .as_deref()
            .map(AuthorizerStatus::parse)
            .transpose()?;
        self.authorizers
            .update(
                name,
                AuthorizerUpdate {
                    function_arn: body.authorizer_function_arn,
                    token_key_name: body.token_key_name,
                    token_signing_public_keys: body.token_signing_public_keys,
                    status,
                    enable_caching_for_http: body.enable_caching_for_http,
                },
            )
            .await?;
        Ok(self.authorizer_summary(name))
    }

    pub(super) async fn delete_authorizer(&self, name: &str) -> ApiResult {
        self.authorizers.delete(name).await?;
        Ok(json!({}))
    }

    pub(super) async fn set_default_authorizer(&self, request: &ApiRequest) -> ApiResult {
        let body: DefaultAuthorizerBody = request.json()?;
        let name = body
            .authorizer_name
            .ok_or_else(|| AwsError::invalid_request("authorizerName is required"))?;
        self.authorizers.set_default(&name).await?;
        Ok(self.authorizer_summary(&name))
    }

    pub(super) async fn describe_default_authorizer(&self) -> ApiResult {
        let authorizer = self.authorizers.default_authorizer().await?;
        Ok(json!({ "authorizerDescription": self.authorizer_description(&authorizer) }))
    }

    /// TestInvokeAuthorizer: runs the authorizer as a connection would, without connecting.
    pub(super) async fn test_invoke_authorizer(
        &self,
        name: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        let body: TestInvokeBody = request.json()?;
        let authorizer = self.authorizers.authorizer(name).await?;
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
            credentials.query = sigv4::parse_query(&credentials.raw_query);
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
                password: m
                    .password
                    .map(|p| {
                        base64::engine::general_purpose::STANDARD
                            .decode(p)
                            .map_err(|_| {
                                AwsError::invalid_request("mqttContext.password must be base64")
                            })
                    })
                    .transpose()?,
            }),
            None => None,
        };
        let server_name = body.tls_context.and_then(|t| t.server_name);
        let (answer, _) = self
            .custom
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
                    // AWS answers each document as a JSON string.
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
}
