//! Invalid input over raw sockets: each bad connection is closed (with the
//! reason code the protocol prescribes, where it has one) while the broker
//! keeps serving everyone else.

use crate::common;

use bytes::{BufMut, BytesMut};
use common::*;
use halyard_node::mqtt::{Packet, Properties, ProtocolVersion, QoS};

/// A client connected before the bad one, to show it is unaffected.
struct Bystander {
    sub: V4,
}

impl Bystander {
    async fn new(server: &TestServer) -> Bystander {
        let mut sub = v4(server, "bystander").await;
        sub.subscribe("bystander/t", rumqttc::QoS::AtLeastOnce)
            .await;
        Bystander { sub }
    }

    /// The existing connection still receives, and new clients still connect.
    async fn still_served(mut self, server: &TestServer) {
        let mut publisher = v4(server, "bystander-pub").await;
        publisher
            .publish(
                "bystander/t",
                rumqttc::QoS::AtLeastOnce,
                false,
                b"still here",
            )
            .await;
        assert_eq!(&self.sub.recv().await.payload[..], b"still here");
        assert!(!self.sub.is_closed());
        assert_broker_serves(server).await;
    }
}

async fn start() -> TestServer {
    // A short CONNECT timeout, so that a stalled handshake ends quickly.
    TestServer::start_with(|c| c.mqtt.connect_timeout = 1).await
}

/// CONNECT bytes with an arbitrary protocol name and level.
fn raw_connect(name: &[u8], level: u8) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_u16(name.len() as u16);
    body.put_slice(name);
    body.put_u8(level);
    body.put_u8(0x02); // clean session
    body.put_u16(30);
    if level == 5 {
        body.put_u8(0); // no properties
    }
    body.put_u16(1);
    body.put_slice(b"x");
    let mut out = vec![0x10, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

fn assert_disconnect(sent: &[Packet], code: u8) {
    assert!(
        matches!(sent, [Packet::Disconnect(d)] if d.reason_code == code),
        "expected DISCONNECT 0x{code:02x}, got {sent:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_close_only_that_connection() {
    let server = start().await;
    let by = Bystander::new(&server).await;

    // A reserved packet type instead of CONNECT.
    let mut raw = Raw::open(&server).await;
    raw.send_bytes(&[0x00, 0x04, 0xDE, 0xAD, 0xBE, 0xEF]).await;
    assert_eq!(raw.expect_closed().await, vec![]);

    // Something that is not MQTT at all (it parses as an incomplete packet
    // and then stalls until the CONNECT timeout).
    let mut raw = Raw::open(&server).await;
    raw.send_bytes(b"GET / HTTP/1.1\r\nHost: halyard\r\n\r\n")
        .await;
    assert_eq!(raw.expect_closed().await, vec![]);

    // Garbage after a valid CONNECT: v5 is told it was malformed.
    let (mut raw, _) = Raw::v5(&server, "garbage5", true, Properties::default()).await;
    raw.send_bytes(&[0x00, 0x00]).await;
    assert_disconnect(&raw.expect_closed().await, 0x81);

    let (mut raw, _) = Raw::v311(&server, "garbage4", true, 30).await;
    raw.send_bytes(&[0xF0, 0x00]).await; // AUTH does not exist in 3.1.1
    assert_eq!(raw.expect_closed().await, vec![]);

    by.still_served(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_byte_remaining_length_is_malformed() {
    let server = start().await;
    let by = Bystander::new(&server).await;
    const BAD: [u8; 6] = [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F];

    let mut raw = Raw::open(&server).await;
    raw.send_bytes(&BAD).await;
    assert_eq!(raw.expect_closed().await, vec![]);

    let (mut raw, _) = Raw::v311(&server, "len4", true, 30).await;
    raw.send_bytes(&BAD).await;
    assert_eq!(raw.expect_closed().await, vec![]);

    let (mut raw, _) = Raw::v5(&server, "len5", true, Properties::default()).await;
    raw.send_bytes(&BAD).await;
    assert_disconnect(&raw.expect_closed().await, 0x81);

    by.still_served(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_before_connect_is_refused() {
    let server = start().await;
    let by = Bystander::new(&server).await;
    let mut raw = Raw::open(&server).await;
    raw.publish(publish_packet("early/t", QoS::AtLeastOnce, 1, b"too early"))
        .await;
    assert_eq!(raw.expect_closed().await, vec![], "no PUBACK, no CONNACK");
    by.still_served(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_protocol_name_is_refused() {
    let server = start().await;
    let by = Bystander::new(&server).await;
    for name in [&b"MQTX"[..], b"mqtt", b""] {
        let mut raw = Raw::open(&server).await;
        raw.send_bytes(&raw_connect(name, 4)).await;
        let sent = raw.expect_closed().await;
        assert!(
            sent.iter()
                .all(|p| !matches!(p, Packet::ConnAck(a) if a.reason_code == 0)),
            "{name:?} accepted: {sent:?}"
        );
    }
    by.still_served(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_protocol_level_gets_connack_0x01() {
    let server = start().await;
    let by = Bystander::new(&server).await;
    for (name, level) in [(&b"MQTT"[..], 3), (b"MQIsdp", 3), (b"MQTT", 2)] {
        let mut raw = Raw::open(&server).await;
        raw.send_bytes(&raw_connect(name, level)).await;
        match raw.recv().await {
            Packet::ConnAck(a) => {
                assert_eq!(a.reason_code, 0x01, "level {level}");
                assert!(!a.session_present);
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
        assert_eq!(raw.expect_closed().await, vec![]);
    }

    // A level above 5 is answered in the 5.0 format with 0x84.
    let mut raw = Raw::open(&server).await;
    raw.version = ProtocolVersion::V5;
    raw.send_bytes(&raw_connect(b"MQTT", 6)).await;
    match raw.recv().await {
        Packet::ConnAck(a) => assert_eq!(a.reason_code, 0x84),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    assert_eq!(raw.expect_closed().await, vec![]);

    by.still_served(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_topic_closes_the_connection() {
    let server = start().await;
    let by = Bystander::new(&server).await;
    // PUBLISH QoS 0, topic [0xC3, 0x28] (an invalid two-byte sequence).
    let bad_v4 = [0x30, 0x05, 0x00, 0x02, 0xC3, 0x28, b'x'];
    let (mut raw, _) = Raw::v311(&server, "utf4", true, 30).await;
    raw.send_bytes(&bad_v4).await;
    assert_eq!(raw.expect_closed().await, vec![]);

    // The same in 5.0 (with an empty property block) gets DISCONNECT 0x81.
    let bad_v5 = [0x30, 0x06, 0x00, 0x02, 0xC3, 0x28, 0x00, b'x'];
    let (mut raw, _) = Raw::v5(&server, "utf5", true, Properties::default()).await;
    raw.send_bytes(&bad_v5).await;
    assert_disconnect(&raw.expect_closed().await, 0x81);

    // U+0000 is not allowed in a topic either.
    let nul = [0x30, 0x05, 0x00, 0x02, b'a', 0x00, b'x'];
    let (mut raw, _) = Raw::v311(&server, "nul4", true, 30).await;
    raw.send_bytes(&nul).await;
    assert_eq!(raw.expect_closed().await, vec![]);

    // Nor in a SUBSCRIBE filter.
    let bad_sub = [0x82, 0x07, 0x00, 0x01, 0x00, 0x02, 0xC3, 0x28, 0x01];
    let (mut raw, _) = Raw::v311(&server, "utf-sub", true, 30).await;
    raw.send_bytes(&bad_sub).await;
    assert_eq!(raw.expect_closed().await, vec![]);

    by.still_served(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_after_connect() {
    let server = start().await;
    let by = Bystander::new(&server).await;

    // A second CONNECT.
    let (mut raw, _) = Raw::v5(&server, "twice", true, Properties::default()).await;
    raw.send(&Packet::Connect(Box::new(connect_packet(
        ProtocolVersion::V5,
        "twice",
        true,
        30,
    ))))
    .await;
    assert_disconnect(&raw.expect_closed().await, 0x82);

    // A QoS 1 PUBLISH with packet identifier 0.
    let (mut raw, _) = Raw::v5(&server, "pid0", true, Properties::default()).await;
    raw.send_bytes(&[0x32, 0x08, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x00, 0x00])
        .await;
    assert_disconnect(&raw.expect_closed().await, 0x82);

    // PUBLISH with QoS 3.
    let (mut raw, _) = Raw::v311(&server, "qos3", true, 30).await;
    raw.send_bytes(&[0x36, 0x06, 0x00, 0x01, b'a', 0x00, 0x01, b'x'])
        .await;
    assert_eq!(raw.expect_closed().await, vec![]);

    by.still_served(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_closed_after_the_connect_timeout() {
    let server = start().await;
    let by = Bystander::new(&server).await;
    let mut raw = Raw::open(&server).await;
    assert_eq!(raw.expect_closed().await, vec![]);
    // A partial CONNECT does not keep the connection open either.
    let mut raw = Raw::open(&server).await;
    raw.send_bytes(&raw_connect(b"MQTT", 4)[..5]).await;
    assert_eq!(raw.expect_closed().await, vec![]);
    by.still_served(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_when_a_protocol_error_closes_the_connection() {
    let server = start().await;
    let mut watcher = v4(&server, "pe-watch").await;
    watcher
        .subscribe("pe/will", rumqttc::QoS::AtLeastOnce)
        .await;
    for (version, id) in [
        (ProtocolVersion::V311, "pe-4"),
        (ProtocolVersion::V5, "pe-5"),
    ] {
        let mut raw = Raw::open(&server).await;
        let mut connect = connect_packet(version, id, true, 30);
        connect.will = Some(will(
            "pe/will",
            id.as_bytes(),
            QoS::AtLeastOnce,
            Properties::default(),
        ));
        assert_eq!(raw.connect(connect).await.reason_code, 0);
        raw.send_bytes(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]).await;
        raw.expect_closed().await;
        assert_eq!(&watcher.recv().await.payload[..], id.as_bytes());
    }
}
