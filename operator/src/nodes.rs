//! The nodes' admin API as the operator uses it: what a node reports of the store and of its
//! drain, and the membership operations. Behind a trait, so that the controller's tests answer
//! for the nodes.

use std::future::Future;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

/// A node's admin API: its base URL and the token its cluster operations require.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub base: String,
    pub token: String,
}

/// `GET /cluster/status`: the node's view of the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct StoreStatus {
    pub id: u64,
    pub role: String,
    pub term: u64,
    pub leader: Option<u64>,
    #[serde(default)]
    pub members: Vec<MemberReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MemberReport {
    pub id: u64,
    pub voter: bool,
    /// Known to the leader only.
    pub lag: Option<u64>,
}

/// `GET /cluster/drain`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct DrainReport {
    pub draining: bool,
    pub done: Option<serde_json::Value>,
    pub connections: u64,
}

/// `GET /cluster/tls`: what the node has loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct TlsReport {
    pub peer: Option<PeerTlsReport>,
    /// The certificate the node's TLS listeners present (absent from older nodes).
    #[serde(default)]
    pub server: Option<ServerTlsReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerTlsReport {
    pub certificate_sha256: String,
    pub not_after: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerTlsReport {
    pub certificate_sha256: String,
    pub not_after: i64,
    pub trusted_ca_sha256: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("{url} answered {status}: {body}")]
    Refused {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url} answered what is not its status: {message}")]
    Malformed { url: String, message: String },
}

pub trait NodeAdmin: Send + Sync + 'static {
    fn store_status(
        &self,
        node: &Endpoint,
    ) -> impl Future<Output = Result<StoreStatus, AdminError>> + Send;
    fn drain_status(
        &self,
        node: &Endpoint,
    ) -> impl Future<Output = Result<DrainReport, AdminError>> + Send;
    fn start_drain(&self, node: &Endpoint) -> impl Future<Output = Result<(), AdminError>> + Send;
    fn tls(&self, node: &Endpoint) -> impl Future<Output = Result<TlsReport, AdminError>> + Send;
    fn promote(
        &self,
        leader: &Endpoint,
        id: u64,
    ) -> impl Future<Output = Result<(), AdminError>> + Send;
    fn demote(
        &self,
        leader: &Endpoint,
        id: u64,
    ) -> impl Future<Output = Result<(), AdminError>> + Send;
    fn remove_member(
        &self,
        leader: &Endpoint,
        id: u64,
    ) -> impl Future<Output = Result<(), AdminError>> + Send;
    fn transfer_leader(
        &self,
        leader: &Endpoint,
        to: u64,
    ) -> impl Future<Output = Result<(), AdminError>> + Send;
}

/// Each call is short: a node that does not answer in time is taken as down for this round.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The admin API over HTTP.
#[derive(Clone)]
pub struct HttpAdmin {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpAdmin {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CALL_TIMEOUT));
        HttpAdmin {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

impl HttpAdmin {
    async fn call(
        &self,
        node: &Endpoint,
        method: hyper::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Bytes, AdminError> {
        let url = format!("{}{path}", node.base);
        let unreachable = |message: String| AdminError::Unreachable {
            url: url.clone(),
            message,
        };
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", format!("Bearer {}", node.token));
        let payload = match body {
            Some(json) => {
                request = request.header("content-type", "application/json");
                Bytes::from(json.to_string())
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(payload))
            .map_err(|e| unreachable(e.to_string()))?;
        let response = tokio::time::timeout(CALL_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| unreachable("no answer in time".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let body = tokio::time::timeout(CALL_TIMEOUT, response.into_body().collect())
            .await
            .map_err(|_| unreachable("no answer in time".into()))?
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(AdminError::Refused {
                url,
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        Ok(body)
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        node: &Endpoint,
        path: &str,
    ) -> Result<T, AdminError> {
        let body = self.call(node, hyper::Method::GET, path, None).await?;
        serde_json::from_slice(&body).map_err(|e| AdminError::Malformed {
            url: format!("{}{path}", node.base),
            message: e.to_string(),
        })
    }

    async fn post(
        &self,
        node: &Endpoint,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(), AdminError> {
        self.call(node, hyper::Method::POST, path, body)
            .await
            .map(|_| ())
    }
}

impl NodeAdmin for HttpAdmin {
    async fn store_status(&self, node: &Endpoint) -> Result<StoreStatus, AdminError> {
        self.get(node, "/cluster/status").await
    }

    async fn drain_status(&self, node: &Endpoint) -> Result<DrainReport, AdminError> {
        self.get(node, "/cluster/drain").await
    }

    async fn start_drain(&self, node: &Endpoint) -> Result<(), AdminError> {
        self.post(node, "/cluster/drain", None).await
    }

    async fn tls(&self, node: &Endpoint) -> Result<TlsReport, AdminError> {
        self.get(node, "/cluster/tls").await
    }

    async fn promote(&self, leader: &Endpoint, id: u64) -> Result<(), AdminError> {
        self.post(leader, &format!("/cluster/members/{id}/promote"), None)
            .await
    }

    async fn demote(&self, leader: &Endpoint, id: u64) -> Result<(), AdminError> {
        self.post(leader, &format!("/cluster/members/{id}/demote"), None)
            .await
    }

    async fn remove_member(&self, leader: &Endpoint, id: u64) -> Result<(), AdminError> {
        self.call(
            leader,
            hyper::Method::DELETE,
            &format!("/cluster/members/{id}"),
            None,
        )
        .await
        .map(|_| ())
    }

    async fn transfer_leader(&self, leader: &Endpoint, to: u64) -> Result<(), AdminError> {
        self.post(
            leader,
            "/cluster/leader",
            Some(serde_json::json!({ "id": to })),
        )
        .await
    }
}
