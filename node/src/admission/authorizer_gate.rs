//! Admission through a custom authorizer: MQTT clients (from the connection's HTTP upgrade and
//! the CONNECT's username and password), supervised for as long as the authorizer's answer
//! says, and HTTP requests (HTTPS publish), whose answer a connection may reuse.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::DeviceAdmission;
use super::custom_auth::{Credentials, MqttSide, Refusal, cache_fingerprint};
use crate::auth::permissions::{Access, Permissions};
use crate::gateway::http::{CachedAuthorization, ConnectionInfo};
use crate::gateway::{ConnectCredentials, Gate, GateFuture};
use crate::mqtt::reason;

impl DeviceAdmission {
    /// Authenticates an HTTP request (HTTPS publish) through an authorizer. With
    /// `enableCachingForHttp`, the answer is reused on the same connection for the same token
    /// until `refreshAfterInSeconds` has passed.
    pub async fn authorize_http(
        &self,
        info: &ConnectionInfo,
        credentials: Credentials,
    ) -> Result<Arc<Access>, Refusal> {
        let authorizer = self.custom.authorizer_for(&credentials).await?;
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
            .custom
            .decide(&authorizer, &credentials, None, info.server_name.as_deref())
            .await?;
        let access = Access::new(
            self.custom.permissions(&verdict, None),
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

/// Admits MQTT clients through a custom authorizer; where no authorizer applies, the
/// listener's anonymous admission if it has one.
pub(super) struct AuthorizerGate {
    admission: Arc<DeviceAdmission>,
    info: ConnectionInfo,
    credentials: Credentials,
}

impl AuthorizerGate {
    pub(super) fn new(
        admission: Arc<DeviceAdmission>,
        info: ConnectionInfo,
        credentials: Credentials,
    ) -> Self {
        Self {
            admission,
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
            let custom = &self.admission.custom;
            match custom
                .authorize(&credentials, Some(&mqtt), server_name.as_deref())
                .await
            {
                Ok(verdict) => {
                    let permissions = custom.permissions(&verdict, Some(connect.client_id));
                    let access = Access::new(permissions, verdict.principal_id.clone());
                    if verdict.disconnect_after.is_some() || verdict.refresh_after.is_some() {
                        tokio::spawn(supervise(
                            Arc::clone(&self.admission),
                            Arc::downgrade(&access),
                            Supervised {
                                credentials,
                                mqtt,
                                server_name,
                            },
                            verdict.disconnect_after,
                            verdict.refresh_after,
                        ));
                    }
                    Ok(access)
                }
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

/// What an authorized connection presented, to ask its authorizer again.
struct Supervised {
    credentials: Credentials,
    mqtt: MqttSide,
    server_name: Option<String>,
}

/// Ends an authorized connection when its authorizer said to, and asks the authorizer again
/// every `refresh_after`, replacing the connection's policies or ending it.
async fn supervise(
    admission: Arc<DeviceAdmission>,
    access: Weak<Access>,
    presented: Supervised,
    disconnect_after: Option<Duration>,
    mut refresh_after: Option<Duration>,
) {
    let custom = &admission.custom;
    let client_id = &presented.mqtt.client_id;
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
            tracing::info!(client_id = %client_id, "authorizer's connection time is up");
            live.revoke();
            return;
        }
        match custom
            .authorize(
                &presented.credentials,
                Some(&presented.mqtt),
                presented.server_name.as_deref(),
            )
            .await
        {
            Ok(verdict) => {
                live.replace(custom.permissions(&verdict, Some(client_id)));
                refresh_after = verdict.refresh_after.or(refresh_after);
            }
            Err(Refusal::Unavailable(why)) => {
                tracing::warn!(reason = %why, "cannot refresh a custom authorization; keeping it");
            }
            Err(_) => {
                tracing::info!(client_id = %client_id, "authorizer no longer authenticates the client");
                live.revoke();
                return;
            }
        }
        next_refresh = refresh_after.map(|d| tokio::time::Instant::now() + d);
    }
}
