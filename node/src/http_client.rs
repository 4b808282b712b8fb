//! The node's one HTTP(S) client, for calling out to services that answer JSON: custom
//! authorizer functions run as web services, the key sets of JWT issuers, rules' HTTP actions,
//! and provisioning hooks later. Connections are kept alive and reused per origin, so that a
//! busy authorizer costs one TLS handshake, not one per device.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::{Request, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use thiserror::Error;
use tokio::time::Instant;

/// The largest answer read.
const MAX_ANSWER: usize = 256 * 1024;
/// Where Debian and most distributions keep the trusted CAs for HTTPS.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Idle connections kept per origin; more are closed once their exchange ends.
const MAX_IDLE_PER_ORIGIN: usize = 32;
/// An idle connection older than this is closed rather than reused: servers close theirs
/// after a while, and a request on a connection the server is closing fails.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Error)]
pub enum HttpClientError {
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

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Origin {
    secure: bool,
    host: String,
    port: u16,
}

struct Idle {
    sender: SendRequest<Full<bytes::Bytes>>,
    since: Instant,
}

/// A pool of kept-alive HTTP/1.1 connections by origin.
pub struct HttpClient {
    tls: Arc<rustls::ClientConfig>,
    idle: Mutex<HashMap<Origin, Vec<Idle>>>,
}

/// The node's client: one pool for every caller.
pub fn shared() -> &'static HttpClient {
    static CLIENT: OnceLock<HttpClient> = OnceLock::new();
    CLIENT.get_or_init(|| HttpClient::new(system_tls()))
}

fn system_tls() -> Arc<rustls::ClientConfig> {
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
}

impl HttpClient {
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Self {
        HttpClient {
            tls,
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// POSTs `body` to `url` and returns the JSON it answers, within `timeout`.
    pub async fn post_json(
        &self,
        url: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Value, HttpClientError> {
        match tokio::time::timeout(timeout, self.exchange(url, Some(body))).await {
            Ok(result) => result,
            Err(_) => Err(HttpClientError::Timeout(url.to_owned(), timeout)),
        }
    }

    /// GETs the JSON at `url`, within `timeout`.
    pub async fn get_json(&self, url: &str, timeout: Duration) -> Result<Value, HttpClientError> {
        match tokio::time::timeout(timeout, self.exchange(url, None)).await {
            Ok(result) => result,
            Err(_) => Err(HttpClientError::Timeout(url.to_owned(), timeout)),
        }
    }

    /// Sends `body` as `content_type` with `headers` to `url` by `method` (`POST`, `PUT`),
    /// within `timeout`; the status the server answered, whatever it is (a rule action decides
    /// what to retry), and its body.
    pub async fn send_body(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        content_type: &str,
        body: bytes::Bytes,
        timeout: Duration,
    ) -> Result<(u16, bytes::Bytes), HttpClientError> {
        let send = async {
            let (origin, uri) = origin_of(url)?;
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            let mut builder = Request::builder()
                .method(method)
                .uri(path)
                .header(
                    header::HOST,
                    uri.authority().map_or(origin.host.as_str(), |a| a.as_str()),
                )
                .header(header::CONTENT_TYPE, content_type);
            for (name, value) in headers {
                builder = builder.header(name.as_str(), value.as_str());
            }
            let request = builder
                .body(Full::new(body))
                .map_err(|e| HttpClientError::Url(format!("{url}: {e}")))?;
            self.send(url, &origin, request).await
        };
        match tokio::time::timeout(timeout, send).await {
            Ok(result) => result,
            Err(_) => Err(HttpClientError::Timeout(url.to_owned(), timeout)),
        }
    }

    /// Idle connections held for `url`'s origin.
    pub fn idle_connections(&self, url: &str) -> usize {
        let Ok((origin, _)) = origin_of(url) else {
            return 0;
        };
        self.idle.lock().get(&origin).map_or(0, Vec::len)
    }

    async fn exchange(&self, url: &str, body: Option<&Value>) -> Result<Value, HttpClientError> {
        let (origin, uri) = origin_of(url)?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let builder = match body {
            Some(_) => Request::post(path).header(header::CONTENT_TYPE, "application/json"),
            None => Request::get(path),
        };
        let request = builder
            .header(
                header::HOST,
                uri.authority().map_or(origin.host.as_str(), |a| a.as_str()),
            )
            .header(header::ACCEPT, "application/json")
            .body(Full::new(bytes::Bytes::from(
                body.map(Value::to_string).unwrap_or_default(),
            )))
            .map_err(|e| HttpClientError::Url(format!("{url}: {e}")))?;
        let (status, body) = self.send(url, &origin, request).await?;
        if !(200..300).contains(&status) {
            return Err(HttpClientError::Status(url.to_owned(), status));
        }
        serde_json::from_slice(&body)
            .map_err(|e| HttpClientError::Json(url.to_owned(), e.to_string()))
    }

    /// One exchange on a kept-alive connection to `origin` (or a new one): the status and the
    /// answer's body.
    async fn send(
        &self,
        url: &str,
        origin: &Origin,
        request: Request<Full<bytes::Bytes>>,
    ) -> Result<(u16, bytes::Bytes), HttpClientError> {
        let failed =
            |e: &dyn std::fmt::Display| HttpClientError::Exchange(url.to_owned(), e.to_string());
        let mut sender = match self.take_idle(origin) {
            Some(sender) => sender,
            None => self.connect(url, origin).await?,
        };
        let response = sender.send_request(request).await.map_err(|e| failed(&e))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| failed(&e))?
            .to_bytes();
        // The whole answer was read, so the connection is ready for the next request.
        self.put_idle(origin.clone(), sender);
        Ok((status.as_u16(), body))
    }

    fn take_idle(&self, origin: &Origin) -> Option<SendRequest<Full<bytes::Bytes>>> {
        let mut idle = self.idle.lock();
        let list = idle.get_mut(origin)?;
        while let Some(candidate) = list.pop() {
            if candidate.since.elapsed() < IDLE_TIMEOUT && !candidate.sender.is_closed() {
                return Some(candidate.sender);
            }
        }
        None
    }

    fn put_idle(&self, origin: Origin, sender: SendRequest<Full<bytes::Bytes>>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock();
        let list = idle.entry(origin).or_default();
        list.retain(|i| i.since.elapsed() < IDLE_TIMEOUT && !i.sender.is_closed());
        if list.len() < MAX_IDLE_PER_ORIGIN {
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(
        &self,
        url: &str,
        origin: &Origin,
    ) -> Result<SendRequest<Full<bytes::Bytes>>, HttpClientError> {
        let connect_error =
            |e: &dyn std::fmt::Display| HttpClientError::Connect(url.to_owned(), e.to_string());
        let tcp = tokio::net::TcpStream::connect((origin.host.as_str(), origin.port))
            .await
            .map_err(|e| connect_error(&e))?;
        let _ = tcp.set_nodelay(true);
        if origin.secure {
            let name = ServerName::try_from(origin.host.clone()).map_err(|e| connect_error(&e))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
                .connect(name, tcp)
                .await
                .map_err(|e| connect_error(&e))?;
            handshake(url, TokioIo::new(tls)).await
        } else {
            handshake(url, TokioIo::new(tcp)).await
        }
    }
}

/// Starts HTTP/1.1 on `io`; the connection lives until its sender is dropped or the server
/// closes it.
async fn handshake<I>(url: &str, io: I) -> Result<SendRequest<Full<bytes::Bytes>>, HttpClientError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| HttpClientError::Exchange(url.to_owned(), e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "HTTP client connection ended");
        }
    });
    Ok(sender)
}

fn origin_of(url: &str) -> Result<(Origin, Uri), HttpClientError> {
    let uri: Uri = url
        .parse()
        .map_err(|_| HttpClientError::Url(url.to_owned()))?;
    let secure = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(HttpClientError::Url(url.to_owned())),
    };
    let host = uri
        .host()
        .ok_or_else(|| HttpClientError::Url(url.to_owned()))?
        .trim_matches(|c| c == '[' || c == ']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    Ok((Origin { secure, host, port }, uri))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A JSON server that counts the connections it accepted.
    async fn server() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/answer", listener.local_addr().unwrap());
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    loop {
                        let Ok(n) = socket.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let body = b"{\"ok\":true}";
                            let head = format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                                body.len()
                            );
                            if socket.write_all(head.as_bytes()).await.is_err()
                                || socket.write_all(body).await.is_err()
                            {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (url, accepted)
    }

    #[tokio::test]
    async fn consecutive_calls_reuse_one_connection() {
        let (url, accepted) = server().await;
        let client = HttpClient::new(system_tls());
        for _ in 0..5 {
            let answer = client.get_json(&url, Duration::from_secs(5)).await.unwrap();
            assert_eq!(answer["ok"], true);
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(client.idle_connections(&url), 1);
    }

    #[tokio::test]
    async fn bad_urls_and_refused_connections_are_errors() {
        let client = HttpClient::new(system_tls());
        assert!(matches!(
            client.get_json("ftp://x/", Duration::from_secs(1)).await,
            Err(HttpClientError::Url(_))
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = format!("http://{}/", listener.local_addr().unwrap());
        drop(listener);
        assert!(matches!(
            client.get_json(&closed, Duration::from_secs(5)).await,
            Err(HttpClientError::Connect(..))
        ));
    }
}
