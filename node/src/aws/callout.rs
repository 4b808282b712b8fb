//! Calls out to a service over HTTP or HTTPS for a JSON answer: custom authorizer functions
//! run as web services, and the key sets of JWT issuers.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::{Request, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use thiserror::Error;

/// The largest answer read from a function.
const MAX_ANSWER: usize = 256 * 1024;
/// Where Debian and most distributions keep the trusted CAs for HTTPS.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug, Error)]
pub enum CalloutError {
    #[error("invalid URL {0}")]
    Url(String),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    #[error("HTTP exchange with {0} failed: {1}")]
    Exchange(String, String),
    #[error("{0} answered HTTP {1}")]
    Status(String, u16),
    #[error("{0} did not answer with JSON: {1}")]
    Json(String, String),
    #[error("{0} did not answer within {1:?}")]
    Timeout(String, Duration),
}

fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        if let Ok(certificates) = CertificateDer::pem_file_iter(SYSTEM_CA_BUNDLE) {
            for certificate in certificates.flatten() {
                let _ = roots.add(certificate);
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .unwrap_or_else(|_| {
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            });
        Arc::new(config)
    }))
}

/// POSTs `body` to `url` and returns the JSON it answers, within `timeout`.
pub async fn post_json(url: &str, body: &Value, timeout: Duration) -> Result<Value, CalloutError> {
    match tokio::time::timeout(timeout, exchange(url, Some(body))).await {
        Ok(result) => result,
        Err(_) => Err(CalloutError::Timeout(url.to_owned(), timeout)),
    }
}

/// GETs the JSON at `url`, within `timeout`.
pub async fn get_json(url: &str, timeout: Duration) -> Result<Value, CalloutError> {
    match tokio::time::timeout(timeout, exchange(url, None)).await {
        Ok(result) => result,
        Err(_) => Err(CalloutError::Timeout(url.to_owned(), timeout)),
    }
}

async fn exchange(url: &str, body: Option<&Value>) -> Result<Value, CalloutError> {
    let uri: Uri = url.parse().map_err(|_| CalloutError::Url(url.to_owned()))?;
    let secure = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(CalloutError::Url(url.to_owned())),
    };
    let host = uri
        .host()
        .ok_or_else(|| CalloutError::Url(url.to_owned()))?
        .trim_matches(|c| c == '[' || c == ']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let connect_error =
        |e: &dyn std::fmt::Display| CalloutError::Connect(url.to_owned(), e.to_string());
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| connect_error(&e))?;
    let _ = tcp.set_nodelay(true);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let builder = match body {
        Some(_) => Request::post(path).header(header::CONTENT_TYPE, "application/json"),
        None => Request::get(path),
    };
    let request = builder
        .header(
            header::HOST,
            uri.authority().map_or(host.as_str(), |a| a.as_str()),
        )
        .header(header::ACCEPT, "application/json")
        .body(Full::new(bytes::Bytes::from(
            body.map(Value::to_string).unwrap_or_default(),
        )))
        .map_err(|e| CalloutError::Url(format!("{url}: {e}")))?;
    if secure {
        let name = ServerName::try_from(host.clone()).map_err(|e| connect_error(&e))?;
        let tls = tokio_rustls::TlsConnector::from(tls_config())
            .connect(name, tcp)
            .await
            .map_err(|e| connect_error(&e))?;
        send(url, TokioIo::new(tls), request).await
    } else {
        send(url, TokioIo::new(tcp), request).await
    }
}

async fn send<I>(
    url: &str,
    io: I,
    request: Request<Full<bytes::Bytes>>,
) -> Result<Value, CalloutError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let failed = |e: &dyn std::fmt::Display| CalloutError::Exchange(url.to_owned(), e.to_string());
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| failed(&e))?;
    let driver = tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(|e| failed(&e));
    let result = match response {
        Ok(response) => {
            let status = response.status();
            let collected = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| failed(&e));
            match collected {
                Err(e) => Err(e),
                Ok(_) if !status.is_success() => {
                    Err(CalloutError::Status(url.to_owned(), status.as_u16()))
                }
                Ok(body) => serde_json::from_slice(&body.to_bytes())
                    .map_err(|e| CalloutError::Json(url.to_owned(), e.to_string())),
            }
        }
        Err(e) => Err(e),
    };
    driver.abort();
    result
}
