//! Shared setup for the broker's integration tests: an in-process server on
//! ephemeral ports, rumqttc clients (MQTT 3.1.1 and 5.0) whose event loops
//! run in the background, and a raw-socket client built on the crate's own
//! codec for byte-exact tests.
//!
//! Every wait is bounded by [`WAIT`]; nothing asserts on elapsed time.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use halyard_node::config::Config;
use halyard_node::mqtt::{
    Ack, ConnAck, Connect, Disconnect, Encoder, Packet, Properties, ProtocolVersion, Publish, QoS,
    SubAck, Subscribe, SubscriptionOptions, TopicSubscription, Will, decode_packet,
};
use halyard_node::server::Server;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Upper bound for anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a test watches for something that must not happen.
pub const QUIET: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------
// Server

/// A broker running in this process, with its data directory.
pub struct TestServer {
    server: Option<Server>,
    addr: SocketAddr,
    admin: SocketAddr,
    _dir: TempDir,
}

/// A node's configuration with its data in `data_dir` and every listener on a free loopback
/// port.
pub fn local_config(data_dir: &std::path::Path) -> Config {
    let loopback = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    Config {
        data_dir: data_dir.to_path_buf(),
        mqtt_listen: loopback,
        admin_listen: loopback,
        http_listen: loopback,
        mqtts_listen: loopback,
        tls_listen: loopback,
        ws_listen: loopback,
        ..Config::default()
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// Starts a broker whose configuration `tweak` has adjusted.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = local_config(dir.path());
        tweak(&mut config);
        config.validate().expect("valid test config");
        let server = Server::start(config).await.expect("server starts");
        TestServer {
            addr: server.mqtt_addr().expect("the MQTT listener is on"),
            admin: server.admin_addr().expect("the admin listener is on"),
            server: Some(server),
            _dir: dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("server running")
    }

    /// Stops the server gracefully.
    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    /// Current value of the sample `name` (with its labels, exactly as
    /// rendered, e.g. `halyard_messages_dropped_total{reason="queue_full"}`)
    /// in the node's Prometheus text; 0 when absent.
    pub fn metric(&self, name: &str) -> f64 {
        let text = halyard_node::metrics::render(self.server().registry());
        parse_metric(&text, name).unwrap_or(0.0)
    }

    /// Waits until the broker has exactly `n` open connections, i.e. every
    /// other connection has been fully torn down (session detached, will
    /// handled).
    pub async fn wait_connections(&self, n: i64) {
        let metrics = self.server().broker().metrics().clone();
        wait_until("connection count", || metrics.connections.get() == n).await;
    }

    /// The Prometheus text served by the admin listener's `/metrics`.
    pub async fn scrape(&self) -> String {
        let (status, body) = self.admin_get("/metrics").await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// GET `path` on the admin listener: the status and the body.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let mut stream = within("admin connect", TcpStream::connect(self.admin))
            .await
            .expect("admin connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: halyard\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("request");
        let mut response = Vec::new();
        within("admin response", stream.read_to_end(&mut response))
            .await
            .expect("response");
        let text = String::from_utf8(response).expect("utf-8 response");
        let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        (status, body.to_owned())
    }

    pub async fn wait_sessions(&self, n: usize) {
        let broker = self.server().broker().clone();
        wait_until("session count", || broker.session_count() == n).await;
    }
}

pub fn parse_metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Polls `cond` until it holds; panics after [`WAIT`].
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `fut` with the [`WAIT`] bound.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

// ---------------------------------------------------------------------------
// rumqttc clients

/// A rumqttc client whose event loop runs in a background task, forwarding
/// incoming packets until the first error (it never reconnects). Dropping
/// it drops the socket without DISCONNECT.
pub struct Client<C, P, E> {
    pub client: C,
    rx: mpsc::UnboundedReceiver<Result<P, E>>,
    backlog: VecDeque<P>,
    closed: Option<E>,
    task: JoinHandle<()>,
}

impl<C, P, E> Drop for Client<C, P, E> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<C, P: std::fmt::Debug, E: std::fmt::Debug> Client<C, P, E> {
    /// Waits (bounded) for the first packet `pick` accepts; other packets
    /// stay queued, in order, for later calls.
    pub async fn wait_for<T>(&mut self, what: &str, mut pick: impl FnMut(&P) -> Option<T>) -> T {
        if let Some(i) = self.backlog.iter().position(|p| pick(p).is_some()) {
            let p = self.backlog.remove(i).expect("index in range");
            return pick(&p).expect("picked");
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if self.closed.is_some() {
                panic!(
                    "connection closed while waiting for {what}: {:?}",
                    self.closed
                );
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => panic!(
                    "timed out waiting for {what}; unmatched packets: {:?}",
                    self.backlog
                ),
                Ok(None) => panic!("event loop ended while waiting for {what}"),
                Ok(Some(Err(e))) => self.closed = Some(e),
                Ok(Some(Ok(p))) => match pick(&p) {
                    Some(t) => return t,
                    None => self.backlog.push_back(p),
                },
            }
        }
    }

    /// Like [`Client::wait_for`], but gives up (returning `None`) after `limit`.
    pub async fn try_wait_for<T>(
        &mut self,
        limit: Duration,
        mut pick: impl FnMut(&P) -> Option<T>,
    ) -> Option<T> {
        if let Some(i) = self.backlog.iter().position(|p| pick(p).is_some()) {
            let p = self.backlog.remove(i).expect("index in range");
            return pick(&p);
        }
        let deadline = tokio::time::Instant::now() + limit;
        while self.closed.is_none() {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) | Ok(None) => return None,
                Ok(Some(Err(e))) => self.closed = Some(e),
                Ok(Some(Ok(p))) => match pick(&p) {
                    Some(t) => return Some(t),
                    None => self.backlog.push_back(p),
                },
            }
        }
        None
    }

    /// Asserts that no packet `pick` accepts arrives within `quiet`.
    pub async fn expect_none<T: std::fmt::Debug>(
        &mut self,
        quiet: Duration,
        mut pick: impl FnMut(&P) -> Option<T>,
    ) {
        if let Some(p) = self.backlog.iter().find_map(&mut pick) {
            panic!("unexpected packet: {p:?}");
        }
        let deadline = tokio::time::Instant::now() + quiet;
        while self.closed.is_none() {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) | Ok(None) => return,
                Ok(Some(Err(e))) => self.closed = Some(e),
                Ok(Some(Ok(p))) => {
                    if let Some(t) = pick(&p) {
                        panic!("unexpected packet: {t:?}");
                    }
                    self.backlog.push_back(p);
                }
            }
        }
    }

    /// Waits (bounded) until the connection ends; returns the error the
    /// event loop reported.
    pub async fn closed(&mut self) -> E {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(e) = self.closed.take() {
                return e;
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => panic!("connection still open"),
                Ok(None) => panic!("event loop ended without an error"),
                Ok(Some(Err(e))) => return e,
                Ok(Some(Ok(p))) => self.backlog.push_back(p),
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }
}

pub type V4 = Client<rumqttc::AsyncClient, rumqttc::Packet, rumqttc::ConnectionError>;
pub type V5 = Client<rumqttc::v5::AsyncClient, rumqttc::v5::Incoming, rumqttc::v5::ConnectionError>;

pub fn v4_options(server: &TestServer, client_id: &str) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(client_id, "127.0.0.1", server.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1024 * 1024, 1024 * 1024);
    o
}

pub fn v5_options(server: &TestServer, client_id: &str) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(client_id, "127.0.0.1", server.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_connection_timeout(5);
    o
}

/// A v4 client with its CONNACK.
pub async fn v4_connect(options: rumqttc::MqttOptions) -> (V4, rumqttc::ConnAck) {
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(p)) => {
                    if tx.send(Ok(p)).is_err() {
                        return;
                    }
                }
                Ok(rumqttc::Event::Outgoing(_)) => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    });
    let mut c = Client {
        client,
        rx,
        backlog: VecDeque::new(),
        closed: None,
        task,
    };
    let connack = c
        .wait_for("CONNACK", |p| match p {
            rumqttc::Packet::ConnAck(a) => Some(a.clone()),
            _ => None,
        })
        .await;
    (c, connack)
}

/// A clean-session v4 client.
pub async fn v4(server: &TestServer, client_id: &str) -> V4 {
    v4_connect(v4_options(server, client_id)).await.0
}

/// A v5 client with its CONNACK.
pub async fn v5_connect(
    options: rumqttc::v5::MqttOptions,
) -> (V5, rumqttc::v5::mqttbytes::v5::ConnAck) {
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::v5::Event::Incoming(p)) => {
                    if tx.send(Ok(p)).is_err() {
                        return;
                    }
                }
                Ok(rumqttc::v5::Event::Outgoing(_)) => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    });
    let mut c = Client {
        client,
        rx,
        backlog: VecDeque::new(),
        closed: None,
        task,
    };
    let connack = c
        .wait_for("CONNACK", |p| match p {
            rumqttc::v5::Incoming::ConnAck(a) => Some(a.clone()),
            _ => None,
        })
        .await;
    (c, connack)
}

/// A clean-start v5 client.
pub async fn v5(server: &TestServer, client_id: &str) -> V5 {
    v5_connect(v5_options(server, client_id)).await.0
}

impl V4 {
    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::QoS,
    ) -> rumqttc::SubscribeReasonCode {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("subscribe queued");
        let codes = self
            .wait_for("SUBACK", |p| match p {
                rumqttc::Packet::SubAck(a) => Some(a.return_codes.clone()),
                _ => None,
            })
            .await;
        codes[0]
    }

    /// Publishes and, for QoS 1/2, waits for the broker's acknowledgement.
    pub async fn publish(&mut self, topic: &str, qos: rumqttc::QoS, retain: bool, payload: &[u8]) {
        self.client
            .publish(topic, qos, retain, payload.to_vec())
            .await
            .expect("publish queued");
        match qos {
            rumqttc::QoS::AtMostOnce => {}
            rumqttc::QoS::AtLeastOnce => {
                self.wait_for("PUBACK", |p| {
                    matches!(p, rumqttc::Packet::PubAck(_)).then_some(())
                })
                .await
            }
            rumqttc::QoS::ExactlyOnce => {
                self.wait_for("PUBCOMP", |p| {
                    matches!(p, rumqttc::Packet::PubComp(_)).then_some(())
                })
                .await
            }
        }
    }

    pub async fn recv(&mut self) -> rumqttc::Publish {
        self.wait_for("PUBLISH", |p| match p {
            rumqttc::Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    /// A publish if one arrives within `limit`.
    pub async fn try_recv(&mut self, limit: Duration) -> Option<rumqttc::Publish> {
        self.try_wait_for(limit, |p| match p {
            rumqttc::Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    /// Receives `n` publishes.
    pub async fn recv_n(&mut self, n: usize) -> Vec<rumqttc::Publish> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.recv().await);
        }
        out
    }

    pub async fn expect_no_publish(&mut self, quiet: Duration) {
        self.expect_none(quiet, |p| match p {
            rumqttc::Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    /// Sends DISCONNECT and waits until the broker has closed the connection.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("disconnect queued");
        self.closed().await;
    }
}

pub mod v5t {
    //! Short names for rumqttc's MQTT 5.0 packet types.
    pub use rumqttc::v5::mqttbytes::QoS;
    pub use rumqttc::v5::mqttbytes::v5::*;
}

impl V5 {
    pub async fn subscribe_filter(
        &mut self,
        filter: v5t::Filter,
        properties: Option<v5t::SubscribeProperties>,
    ) -> v5t::SubscribeReasonCode {
        match properties {
            Some(p) => {
                self.client
                    .subscribe_many_with_properties([filter], p)
                    .await
            }
            None => self.client.subscribe_many([filter]).await,
        }
        .expect("subscribe queued");
        let codes = self
            .wait_for("SUBACK", |p| match p {
                v5t::Packet::SubAck(a) => Some(a.return_codes.clone()),
                _ => None,
            })
            .await;
        codes[0]
    }

    pub async fn subscribe(&mut self, filter: &str, qos: v5t::QoS) -> v5t::SubscribeReasonCode {
        self.subscribe_filter(v5t::Filter::new(filter, qos), None)
            .await
    }

    /// Publishes and, for QoS 1/2, waits for the broker's acknowledgement.
    pub async fn publish_with(
        &mut self,
        topic: &str,
        qos: v5t::QoS,
        retain: bool,
        payload: &[u8],
        properties: Option<v5t::PublishProperties>,
    ) {
        let payload = Bytes::copy_from_slice(payload);
        match properties {
            Some(p) => {
                self.client
                    .publish_with_properties(topic, qos, retain, payload, p)
                    .await
            }
            None => self.client.publish(topic, qos, retain, payload).await,
        }
        .expect("publish queued");
        match qos {
            v5t::QoS::AtMostOnce => {}
            v5t::QoS::AtLeastOnce => {
                self.wait_for("PUBACK", |p| {
                    matches!(p, v5t::Packet::PubAck(_)).then_some(())
                })
                .await
            }
            v5t::QoS::ExactlyOnce => {
                self.wait_for("PUBCOMP", |p| {
                    matches!(p, v5t::Packet::PubComp(_)).then_some(())
                })
                .await
            }
        }
    }

    pub async fn publish(&mut self, topic: &str, qos: v5t::QoS, retain: bool, payload: &[u8]) {
        self.publish_with(topic, qos, retain, payload, None).await
    }

    pub async fn recv(&mut self) -> v5t::Publish {
        self.wait_for("PUBLISH", |p| match p {
            v5t::Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    /// A publish if one arrives within `limit`.
    pub async fn try_recv(&mut self, limit: Duration) -> Option<v5t::Publish> {
        self.try_wait_for(limit, |p| match p {
            v5t::Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    pub async fn recv_n(&mut self, n: usize) -> Vec<v5t::Publish> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.recv().await);
        }
        out
    }

    pub async fn expect_no_publish(&mut self, quiet: Duration) {
        self.expect_none(quiet, |p| match p {
            v5t::Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    /// Sends DISCONNECT (normal) and waits until the broker closed the connection.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("disconnect queued");
        self.closed().await;
    }
}

/// The reason code of a DISCONNECT the broker sent, if that is how the
/// v5 connection ended.
pub fn server_disconnect(e: &rumqttc::v5::ConnectionError) -> Option<v5t::DisconnectReasonCode> {
    match e {
        rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::ServerDisconnect {
            reason_code,
            ..
        }) => Some(*reason_code),
        _ => None,
    }
}

/// Checks that the broker still routes messages: a fresh subscriber gets
/// a fresh publisher's message.
pub async fn assert_broker_serves(server: &TestServer) {
    let mut sub = v4(server, "health-sub").await;
    sub.subscribe("health/check", rumqttc::QoS::AtLeastOnce)
        .await;
    let mut publisher = v4(server, "health-pub").await;
    publisher
        .publish("health/check", rumqttc::QoS::AtLeastOnce, false, b"ok")
        .await;
    let p = sub.recv().await;
    assert_eq!(p.topic, "health/check");
    assert_eq!(&p.payload[..], b"ok");
}

// ---------------------------------------------------------------------------
// Raw socket client

/// A TCP connection that speaks packets through the crate's own codec, or
/// raw bytes, with no client-side validation or automatic acks.
pub struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    pub version: ProtocolVersion,
    encoder: Encoder,
    /// Size in bytes of the last packet read.
    pub last_size: usize,
}

/// What a raw read produced.
#[derive(Debug)]
pub enum Read {
    Packet(Box<Packet>),
    /// The peer closed the connection (EOF or reset).
    Closed,
    /// Nothing within the time allowed.
    Idle,
}

impl Raw {
    pub async fn open(server: &TestServer) -> Raw {
        Raw::open_addr(server.addr()).await
    }

    pub async fn open_addr(addr: SocketAddr) -> Raw {
        let stream = within("TCP connect", TcpStream::connect(addr))
            .await
            .expect("TCP connect");
        stream.set_nodelay(true).expect("nodelay");
        Raw {
            stream,
            buf: BytesMut::new(),
            version: ProtocolVersion::V311,
            encoder: Encoder::new(),
            last_size: 0,
        }
    }

    pub async fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        self.encoder
            .encode(packet, self.version, &mut out)
            .expect("encodable packet");
        self.send_bytes(&out).await;
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write to broker");
    }

    /// Reads one packet, waiting at most `limit`.
    pub async fn read(&mut self, limit: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let buffered = self.buf.len();
            match decode_packet(&mut self.buf, self.version, usize::MAX) {
                Ok(Some(p)) => {
                    self.last_size = buffered - self.buf.len();
                    return Read::Packet(Box::new(p));
                }
                Ok(None) => {}
                Err(e) => panic!("broker sent an undecodable packet: {e}"),
            }
            self.buf.reserve(4096);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Read::Idle,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    assert!(self.buf.is_empty(), "connection closed mid-packet");
                    return Read::Closed;
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next packet; panics on close or timeout.
    pub async fn recv(&mut self) -> Packet {
        match self.read(WAIT).await {
            Read::Packet(p) => *p,
            other => panic!("expected a packet, got {other:?}"),
        }
    }

    /// The next PUBLISH; other packets (PINGRESP, acks) are skipped.
    pub async fn recv_publish(&mut self) -> Publish {
        loop {
            match self.recv().await {
                Packet::Publish(p) => return p,
                Packet::PingResp | Packet::PubAck(_) | Packet::PubComp(_) | Packet::PubRec(_) => {}
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
    }

    /// Asserts that nothing arrives within `quiet` and the connection stays open.
    pub async fn expect_idle(&mut self, quiet: Duration) {
        match self.read(quiet).await {
            Read::Idle => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }

    /// Waits (bounded) until the broker closes the connection; returns the
    /// packets it sent before.
    pub async fn expect_closed(&mut self) -> Vec<Packet> {
        let mut packets = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read(left).await {
                Read::Packet(p) => packets.push(*p),
                Read::Closed => return packets,
                Read::Idle => panic!("connection still open; received {packets:?}"),
            }
        }
    }

    /// Sends CONNECT and returns the CONNACK.
    pub async fn connect(&mut self, connect: Connect) -> ConnAck {
        self.version = connect.protocol;
        self.send(&Packet::Connect(Box::new(connect))).await;
        match self.recv().await {
            Packet::ConnAck(a) => a,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// A connected MQTT 3.1.1 client.
    pub async fn v311(
        server: &TestServer,
        client_id: &str,
        clean: bool,
        keep_alive: u16,
    ) -> (Raw, ConnAck) {
        let mut raw = Raw::open(server).await;
        let ack = raw
            .connect(connect_packet(
                ProtocolVersion::V311,
                client_id,
                clean,
                keep_alive,
            ))
            .await;
        assert_eq!(ack.reason_code, 0, "CONNACK refused: {ack:?}");
        (raw, ack)
    }

    /// A connected MQTT 5.0 client with CONNECT properties `properties`.
    pub async fn v5(
        server: &TestServer,
        client_id: &str,
        clean: bool,
        properties: Properties,
    ) -> (Raw, ConnAck) {
        let mut raw = Raw::open(server).await;
        let mut c = connect_packet(ProtocolVersion::V5, client_id, clean, 30);
        c.properties = properties;
        let ack = raw.connect(c).await;
        assert_eq!(ack.reason_code, 0, "CONNACK refused: {ack:?}");
        (raw, ack)
    }

    pub async fn subscribe(
        &mut self,
        packet_id: u16,
        filter: &str,
        options: SubscriptionOptions,
        properties: Properties,
    ) -> SubAck {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id,
            subscriptions: vec![TopicSubscription {
                filter: filter.to_owned(),
                options,
            }],
            properties,
        }))
        .await;
        loop {
            match self.recv().await {
                Packet::SubAck(a) => {
                    assert_eq!(a.packet_id, packet_id);
                    return a;
                }
                Packet::PingResp => {}
                other => panic!("expected SUBACK, got {other:?}"),
            }
        }
    }

    pub async fn subscribe_qos(&mut self, packet_id: u16, filter: &str, qos: QoS) -> SubAck {
        self.subscribe(packet_id, filter, qos_options(qos), Properties::default())
            .await
    }

    pub async fn publish(&mut self, publish: Publish) {
        self.send(&Packet::Publish(publish)).await;
    }

    pub async fn puback(&mut self, packet_id: u16) {
        self.send(&Packet::PubAck(Ack::new(packet_id, 0))).await;
    }

    pub async fn disconnect(&mut self, reason_code: u8) {
        self.send(&Packet::Disconnect(Disconnect {
            reason_code,
            properties: Properties::default(),
        }))
        .await;
    }
}

pub fn qos_options(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    }
}

pub fn connect_packet(
    protocol: ProtocolVersion,
    client_id: &str,
    clean: bool,
    keep_alive: u16,
) -> Connect {
    Connect {
        protocol,
        clean_start: clean,
        keep_alive,
        client_id: client_id.to_owned(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

pub fn will(topic: &str, payload: &[u8], qos: QoS, properties: Properties) -> Will {
    Will {
        topic: topic.to_owned(),
        payload: Bytes::copy_from_slice(payload),
        qos,
        retain: false,
        properties,
    }
}

pub fn publish_packet(topic: &str, qos: QoS, packet_id: u16, payload: &[u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        payload: Bytes::copy_from_slice(payload),
        properties: Properties::default(),
    }
}

/// A UDP port free on loopback now, for a node's QUIC peer listener.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("bind a UDP socket")
        .local_addr()
        .expect("its address")
        .port()
}
