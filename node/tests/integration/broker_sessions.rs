//! Sessions that outlive their connection: resumption, offline queues and
//! their bounds, expiry of sessions and messages, and redelivery.

use crate::common;

use std::time::Duration;

use common::v5t::{PublishProperties, QoS as Q5};
use common::*;
use halyard_node::mqtt::{Ack, Disconnect, Packet, Properties, QoS};
use rumqttc::QoS as Q4;

const DROPPED_QUEUE_FULL: &str = "halyard_messages_dropped_total{reason=\"queue_full\"}";
const DROPPED_EXPIRED: &str = "halyard_messages_dropped_total{reason=\"expired\"}";
const DROPPED_OFFLINE_QOS0: &str = "halyard_messages_dropped_total{reason=\"offline_qos0\"}";

fn persistent_v4(server: &TestServer, id: &str) -> rumqttc::MqttOptions {
    let mut o = v4_options(server, id);
    o.set_clean_session(false);
    o
}

fn persistent_v5(server: &TestServer, id: &str, expiry: u32) -> rumqttc::v5::MqttOptions {
    let mut o = v5_options(server, id);
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(expiry));
    o
}

fn expiry_props(secs: u32) -> Properties {
    Properties {
        session_expiry_interval: Some(secs),
        ..Properties::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_persistent_session_keeps_subscriptions_and_queues_qos1_and_qos2() {
    let server = TestServer::start().await;
    let (mut sub, ack) = v4_connect(persistent_v4(&server, "ps4")).await;
    assert!(!ack.session_present);
    sub.subscribe("ps4/t", Q4::ExactlyOnce).await;
    sub.disconnect().await;
    server.wait_connections(0).await;

    let offline_qos0_before = server.metric(DROPPED_OFFLINE_QOS0);
    let mut publisher = v4(&server, "ps4-pub").await;
    publisher
        .publish("ps4/t", Q4::AtMostOnce, false, b"q0")
        .await;
    publisher
        .publish("ps4/t", Q4::AtLeastOnce, false, b"q1")
        .await;
    publisher
        .publish("ps4/t", Q4::ExactlyOnce, false, b"q2")
        .await;
    assert_eq!(
        server.metric(DROPPED_OFFLINE_QOS0) - offline_qos0_before,
        1.0
    );

    let (mut sub, ack) = v4_connect(persistent_v4(&server, "ps4")).await;
    assert!(ack.session_present);
    let got: Vec<_> = sub
        .recv_n(2)
        .await
        .into_iter()
        .map(|p| (p.payload.to_vec(), p.qos))
        .collect();
    assert_eq!(
        got,
        vec![
            (b"q1".to_vec(), Q4::AtLeastOnce),
            (b"q2".to_vec(), Q4::ExactlyOnce)
        ],
        "QoS 1 and 2 were queued, QoS 0 was not"
    );
    sub.expect_no_publish(QUIET).await;

    // The subscription survived without being renewed.
    publisher
        .publish("ps4/t", Q4::AtLeastOnce, false, b"live")
        .await;
    assert_eq!(&sub.recv().await.payload[..], b"live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_with_expiry_is_resumed_and_queues_messages() {
    let server = TestServer::start().await;
    let (mut sub, ack) = v5_connect(persistent_v5(&server, "ps5", 60)).await;
    assert!(!ack.session_present);
    sub.subscribe("ps5/t", Q5::ExactlyOnce).await;
    sub.disconnect().await;
    server.wait_connections(0).await;

    let mut publisher = v5(&server, "ps5-pub").await;
    publisher
        .publish("ps5/t", Q5::AtMostOnce, false, b"q0")
        .await;
    publisher
        .publish("ps5/t", Q5::AtLeastOnce, false, b"q1")
        .await;
    publisher
        .publish("ps5/t", Q5::ExactlyOnce, false, b"q2")
        .await;

    let (mut sub, ack) = v5_connect(persistent_v5(&server, "ps5", 60)).await;
    assert!(ack.session_present, "clean_start=0 with expiry > 0 resumes");
    let got: Vec<_> = sub
        .recv_n(2)
        .await
        .into_iter()
        .map(|p| (p.payload.to_vec(), p.qos))
        .collect();
    assert_eq!(
        got,
        vec![
            (b"q1".to_vec(), Q5::AtLeastOnce),
            (b"q2".to_vec(), Q5::ExactlyOnce)
        ]
    );
    sub.expect_no_publish(QUIET).await;
    publisher
        .publish("ps5/t", Q5::AtLeastOnce, false, b"live")
        .await;
    assert_eq!(&sub.recv().await.payload[..], b"live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_without_expiry_ends_with_the_connection() {
    let server = TestServer::start().await;
    // clean_start=0 but no Session Expiry Interval: nothing outlives the connection.
    let mut options = v5_options(&server, "ps5-zero");
    options.set_clean_start(false);
    let (mut sub, _) = v5_connect(options.clone()).await;
    sub.subscribe("psz/t", Q5::AtLeastOnce).await;
    sub.disconnect().await;
    server.wait_sessions(0).await;
    let (_sub, ack) = v5_connect(options).await;
    assert!(!ack.session_present);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_queue_is_bounded_and_drops_are_counted() {
    let server = TestServer::start_with(|c| c.mqtt.max_queued_messages = 5).await;
    let (mut sub, _) = v4_connect(persistent_v4(&server, "bounded")).await;
    sub.subscribe("bounded/t", Q4::AtLeastOnce).await;
    sub.disconnect().await;
    server.wait_connections(0).await;

    let before = server.metric(DROPPED_QUEUE_FULL);
    let mut publisher = v4(&server, "bounded-pub").await;
    for i in 0..8u8 {
        publisher
            .publish("bounded/t", Q4::AtLeastOnce, false, &[i])
            .await;
    }
    assert_eq!(server.metric(DROPPED_QUEUE_FULL) - before, 3.0);
    // The admin listener serves the same counter.
    let scraped = server.scrape().await;
    assert_eq!(
        parse_metric(&scraped, DROPPED_QUEUE_FULL),
        Some(before + 3.0),
        "{scraped}"
    );

    let (mut sub, ack) = v4_connect(persistent_v4(&server, "bounded")).await;
    assert!(ack.session_present);
    let got: Vec<u8> = sub.recv_n(5).await.iter().map(|p| p.payload[0]).collect();
    assert_eq!(got, vec![0, 1, 2, 3, 4], "the oldest messages are kept");
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_expires_after_its_interval() {
    let server = TestServer::start().await;
    let (mut sub, _) = v5_connect(persistent_v5(&server, "short-lived", 1)).await;
    sub.subscribe("sl/t", Q5::AtLeastOnce).await;
    sub.disconnect().await;
    server.wait_connections(0).await;
    // Gone once the interval has passed.
    server.wait_sessions(0).await;

    let mut publisher = v5(&server, "sl-pub").await;
    publisher
        .publish("sl/t", Q5::AtLeastOnce, false, b"nobody")
        .await;
    let (mut sub, ack) = v5_connect(persistent_v5(&server, "short-lived", 1)).await;
    assert!(!ack.session_present, "the expired session is not resumed");
    sub.expect_no_publish(QUIET).await;
    // Its subscription went with it.
    publisher
        .publish("sl/t", Q5::AtLeastOnce, false, b"still nobody")
        .await;
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_disconnect_can_end_the_session_at_once() {
    let server = TestServer::start().await;
    let (mut raw, _) = Raw::v5(&server, "bye-now", false, expiry_props(3600)).await;
    raw.subscribe_qos(1, "bye/t", QoS::AtLeastOnce).await;
    raw.send(&Packet::Disconnect(Disconnect {
        reason_code: 0,
        properties: expiry_props(0),
    }))
    .await;
    raw.expect_closed().await;
    server.wait_sessions(0).await;
    let (_raw, ack) = Raw::v5(&server, "bye-now", false, expiry_props(3600)).await;
    assert!(!ack.session_present);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_messages_are_not_delivered_and_others_carry_the_remaining_interval() {
    let server = TestServer::start().await;
    let (mut sub, _) = v5_connect(persistent_v5(&server, "mx-sub", 60)).await;
    sub.subscribe("mx/#", Q5::AtLeastOnce).await;
    sub.disconnect().await;
    server.wait_connections(0).await;

    let expired_before = server.metric(DROPPED_EXPIRED);
    let mut publisher = v5(&server, "mx-pub").await;
    let expiring = |secs| {
        Some(PublishProperties {
            message_expiry_interval: Some(secs),
            ..PublishProperties::default()
        })
    };
    publisher
        .publish_with("mx/short", Q5::AtLeastOnce, false, b"short", expiring(1))
        .await;
    publisher
        .publish_with("mx/long", Q5::AtLeastOnce, false, b"long", expiring(100))
        .await;
    publisher
        .publish_with("mx/retained", Q5::AtLeastOnce, true, b"ret", expiring(1))
        .await;
    publisher
        .publish("mx/forever", Q5::AtLeastOnce, false, b"forever")
        .await;
    publisher.client.disconnect().await.expect("disconnect");

    // Let the 1-second messages expire while the subscriber is away.
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let (mut sub, ack) = v5_connect(persistent_v5(&server, "mx-sub", 60)).await;
    assert!(ack.session_present);
    let p = sub.recv().await;
    assert_eq!(&p.payload[..], b"long");
    let left = p
        .properties
        .and_then(|p| p.message_expiry_interval)
        .expect("remaining expiry");
    // At least two seconds were spent in the queue.
    assert!(left > 0 && left <= 98, "remaining {left} of 100");
    let p = sub.recv().await;
    assert_eq!(&p.payload[..], b"forever");
    assert_eq!(p.properties.and_then(|p| p.message_expiry_interval), None);
    sub.expect_no_publish(QUIET).await;
    assert!(server.metric(DROPPED_EXPIRED) - expired_before >= 2.0);

    // An expired retained message is not sent to new subscribers either.
    let mut late = v5(&server, "mx-late").await;
    late.subscribe("mx/retained", Q5::AtLeastOnce).await;
    late.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_qos1_is_redelivered_with_dup_on_resume() {
    let server = TestServer::start().await;
    let mut publisher = v5(&server, "dup-pub").await;

    for (id, v5) in [("dup-v5", true), ("dup-v311", false)] {
        let topic = format!("{id}/t");
        let server_ref = &server;
        let connect = move || async move {
            if v5 {
                Raw::v5(server_ref, id, false, expiry_props(60)).await
            } else {
                Raw::v311(server_ref, id, false, 30).await
            }
        };
        let (mut sub, _) = connect().await;
        sub.subscribe_qos(1, &topic, QoS::AtLeastOnce).await;
        publisher
            .publish(&topic, Q5::AtLeastOnce, false, b"m1")
            .await;
        publisher
            .publish(&topic, Q5::AtLeastOnce, false, b"m2")
            .await;
        let first = sub.recv_publish().await;
        let second = sub.recv_publish().await;
        assert!(!first.dup && !second.dup);
        // Acknowledge only the second, then drop the connection.
        sub.puback(second.packet_id).await;
        sub.send(&Packet::PingReq).await;
        assert_eq!(sub.recv().await, Packet::PingResp);
        drop(sub);
        server.wait_connections(1).await;

        let (mut sub, ack) = connect().await;
        assert!(ack.session_present);
        let again = sub.recv_publish().await;
        assert!(again.dup, "redelivery carries DUP ({id})");
        assert_eq!(again.packet_id, first.packet_id, "same packet id ({id})");
        assert_eq!(&again.payload[..], b"m1");
        assert_eq!(again.qos, QoS::AtLeastOnce);
        sub.puback(again.packet_id).await;
        sub.expect_idle(QUIET).await;
        drop(sub);
        server.wait_connections(1).await;

        // Once acknowledged it is not sent again.
        let (mut sub, ack) = connect().await;
        assert!(ack.session_present);
        sub.expect_idle(QUIET).await;
        drop(sub);
        server.wait_connections(1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_handshake_resumes_where_it_stopped() {
    let server = TestServer::start().await;
    let (mut sub, _) = Raw::v5(&server, "q2-resume", false, expiry_props(60)).await;
    sub.subscribe_qos(1, "q2r/t", QoS::ExactlyOnce).await;
    let mut publisher = v5(&server, "q2r-pub").await;
    publisher
        .publish("q2r/t", Q5::ExactlyOnce, false, b"a")
        .await;
    publisher
        .publish("q2r/t", Q5::ExactlyOnce, false, b"b")
        .await;

    let a = sub.recv_publish().await;
    let b = sub.recv_publish().await;
    // "a" got as far as PUBREL; "b" was never acknowledged.
    sub.send(&Packet::PubRec(Ack::new(a.packet_id, 0))).await;
    match sub.recv().await {
        Packet::PubRel(r) => assert_eq!(r.packet_id, a.packet_id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    drop(sub);
    server.wait_connections(1).await;

    let (mut sub, ack) = Raw::v5(&server, "q2-resume", false, expiry_props(60)).await;
    assert!(ack.session_present);
    let mut pubrel = None;
    let mut republished = None;
    for _ in 0..2 {
        match sub.recv().await {
            Packet::PubRel(r) => pubrel = Some(r.packet_id),
            Packet::Publish(p) => republished = Some(p),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(pubrel, Some(a.packet_id), "PUBREL is sent again");
    let p = republished.expect("unacknowledged QoS 2 PUBLISH is sent again");
    assert!(p.dup);
    assert_eq!((p.packet_id, &p.payload[..]), (b.packet_id, &b"b"[..]));

    sub.send(&Packet::PubComp(Ack::new(a.packet_id, 0))).await;
    sub.send(&Packet::PubRec(Ack::new(b.packet_id, 0))).await;
    match sub.recv().await {
        Packet::PubRel(r) => assert_eq!(r.packet_id, b.packet_id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    sub.send(&Packet::PubComp(Ack::new(b.packet_id, 0))).await;
    sub.expect_idle(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_session_discards_what_a_persistent_one_queued() {
    let server = TestServer::start().await;
    let (mut sub, _) = v4_connect(persistent_v4(&server, "discard")).await;
    sub.subscribe("discard/t", Q4::AtLeastOnce).await;
    sub.disconnect().await;
    server.wait_connections(0).await;
    let mut publisher = v4(&server, "discard-pub").await;
    publisher
        .publish("discard/t", Q4::AtLeastOnce, false, b"queued")
        .await;

    let (mut sub, ack) = v4_connect(v4_options(&server, "discard")).await;
    assert!(!ack.session_present);
    sub.expect_no_publish(QUIET).await;
    publisher
        .publish("discard/t", Q4::AtLeastOnce, false, b"again")
        .await;
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_persistent_session_expires_after_the_configured_time() {
    let server = TestServer::start_with(|c| c.mqtt.persistent_session_expiry = 1).await;
    let (sub, _) = v4_connect(persistent_v4(&server, "ps4-exp")).await;
    sub.disconnect().await;
    server.wait_connections(0).await;
    server.wait_sessions(0).await;
    let (_sub, ack) = v4_connect(persistent_v4(&server, "ps4-exp")).await;
    assert!(!ack.session_present);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_queue_written_by_several_nodes_is_read_back_in_the_order_it_was_written() {
    // Each node numbers the queue entries it writes with its own counter, so the copies two
    // nodes stored for one session do not sort by number in the order they were published:
    // a session read from the store (taken over by another node) gets them in write order.
    let server = TestServer::start().await;
    let (mut keeper, _) = v4_connect(persistent_v4(&server, "keeper")).await;
    keeper.subscribe("q/#", Q4::AtLeastOnce).await;
    keeper.disconnect().await;
    let durable = server.server().broker().durable().expect("durable").clone();
    assert!(durable.flush(Duration::from_secs(10)).await);
    let numbered = |count: u64, node: u64| (count << 16) | node;
    for (seq, payload) in [
        (numbered(500, 2), &b"first"[..]),
        (numbered(100, 3), &b"second"[..]),
        (numbered(300, 4), &b"third"[..]),
    ] {
        let message = halyard_node::broker::Message {
            topic: "q/1".into(),
            payload: bytes::Bytes::copy_from_slice(payload),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: None,
            expires_at: None,
            origin: 0,
        };
        durable
            .store()
            .put(
                halyard_node::store::keys::queue("keeper", seq),
                halyard_node::broker::durable::encode_message(
                    &message,
                    QoS::AtLeastOnce,
                    false,
                    &[],
                ),
            )
            .await
            .expect("write");
    }
    let (stored, _) = durable
        .load_session("keeper")
        .await
        .expect("read")
        .expect("the session is stored");
    let order: Vec<&[u8]> = stored
        .queue
        .iter()
        .map(|(_, d)| &d.message.payload[..])
        .collect();
    assert_eq!(order, [&b"first"[..], b"second", b"third"]);
    server.shutdown().await;
}
