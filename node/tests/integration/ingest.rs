//! The one ingest path: every message, whoever sent it, reaches the taps before the
//! subscriptions; a tap beyond its capacity pauses the publishers filling it, and at its hard
//! limit refuses what would be acknowledged; and a
//! node reports on `/readyz` whether it can serve.

use crate::common;

use std::time::Duration;

use common::*;
use halyard_node::broker::Message;
use halyard_node::mqtt::{Packet, Properties, QoS};
use rumqttc::QoS as Q4;

fn message(topic: &str, payload: &'static [u8]) -> Message {
    Message {
        topic: topic.into(),
        payload: bytes::Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: None,
        expires_at: None,
        origin: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taps_see_client_and_broker_messages_on_their_filters() {
    let server = TestServer::start().await;
    let broker = server.server().broker().clone();
    let mut tap = broker
        .add_tap("recorder", &["sensors/#", "$aws/events/presence/+/+"], 100)
        .expect("tap");
    assert!(
        broker.wants("sensors/1/temp"),
        "a tap alone makes a topic wanted"
    );

    let mut device = v4(&server, "dev-1").await;
    device
        .publish("sensors/1/temp", Q4::AtLeastOnce, false, b"21")
        .await;
    device
        .publish("other/topic", Q4::AtLeastOnce, false, b"x")
        .await;
    broker.publish(message("sensors/2/temp", b"from-http"), None);

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let tapped = within("tapped message", tap.recv())
            .await
            .expect("tap open");
        seen.push((
            tapped.message.topic.to_string(),
            tapped.client_id.as_deref().map(str::to_owned),
        ));
    }
    // The presence event of dev-1 (built because the tap wants it), its publish with its client
    // id, and the broker's own message without one; never the topic nobody tapped.
    assert!(
        seen.contains(&("$aws/events/presence/connected/dev-1".into(), None)),
        "{seen:?}"
    );
    assert!(
        seen.contains(&("sensors/1/temp".into(), Some("dev-1".into()))),
        "{seen:?}"
    );
    assert!(seen.contains(&("sensors/2/temp".into(), None)), "{seen:?}");
    assert!(tap.try_recv().is_none());
    assert_eq!(
        server.metric("halyard_tap_messages_total{outcome=\"accepted\",tap=\"recorder\"}"),
        3.0
    );

    // A tap with overlapping filters sees a message once.
    let mut overlapping = broker.add_tap("overlap", &["a/#", "a/+"], 10).expect("tap");
    broker.publish(message("a/b", b"1"), None);
    within("overlap message", overlapping.recv())
        .await
        .expect("open");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(overlapping.try_recv().is_none());

    // Dropping the tap removes it.
    drop(tap);
    drop(overlapping);
    assert!(!broker.wants("sensors/1/temp"));
    assert!(broker.add_tap("bad", &["a/#/b"], 10).is_err());
    assert!(broker.add_tap("empty", &["a"], 0).is_err());
    device.disconnect().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tap_beyond_its_capacity_pauses_its_publisher_and_loses_nothing() {
    let server = TestServer::start().await;
    let broker = server.server().broker().clone();
    let mut tap = broker.add_tap("slow", &["load/#"], 2).expect("tap");
    let mut subscriber = v4(&server, "sub").await;
    subscriber.subscribe("load/#", Q4::AtLeastOnce).await;
    let publisher = v4(&server, "pub").await;
    for n in 0..10u8 {
        publisher
            .client
            .publish("load/x", Q4::AtLeastOnce, false, vec![n])
            .await
            .expect("publish queued");
    }
    // The third message goes beyond the tap's capacity: the publisher is read no further until
    // the tap's consumer takes some.
    let first = subscriber.recv_n(3).await;
    assert_eq!(first.len(), 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        subscriber
            .try_recv(Duration::from_millis(200))
            .await
            .is_none(),
        "the paused publisher's fourth message was routed"
    );
    let mut tapped = Vec::new();
    while tapped.len() < 10 {
        let next = within("tapped message", tap.recv())
            .await
            .expect("tap open");
        tapped.push(next.message.payload[0]);
    }
    assert_eq!(tapped, (0..10).collect::<Vec<u8>>(), "in order, none lost");
    let rest = subscriber.recv_n(7).await;
    assert_eq!(rest.len(), 7);
    assert_eq!(
        server.metric("halyard_tap_messages_total{outcome=\"dropped\",tap=\"slow\"}"),
        0.0
    );
    publisher.disconnect().await;
    subscriber.disconnect().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tap_at_its_hard_limit_refuses_acknowledged_messages_and_drops_qos0_ones() {
    let server = TestServer::start().await;
    let broker = server.server().broker().clone();
    let mut tap = broker.add_tap("stuck", &["load/#"], 2).expect("tap");
    // Messages nobody pauses for (HTTPS publishes) fill it to twice its capacity.
    for n in 0..4u8 {
        let published = broker.publish(message("load/x", b"abcd"), None);
        assert!(!published.refused, "message {n} is within the hard limit");
    }
    let refused = broker.publish(message("load/x", b"e"), None);
    assert!(
        refused.refused,
        "an acknowledged message must be in the tap"
    );
    let mut qos0 = message("load/x", b"f");
    qos0.qos = QoS::AtMostOnce;
    assert!(!broker.publish(qos0, None).refused);
    assert_eq!(
        server.metric("halyard_tap_messages_total{outcome=\"dropped\",tap=\"stuck\"}"),
        1.0
    );
    // A v5 publisher hears Quota exceeded; once the tap is taken from, its message goes through.
    let (mut device, _) = Raw::v5(&server, "dev-5", true, Properties::default()).await;
    let mut puback = async |id: u16| {
        device
            .publish(publish_packet("load/x", QoS::AtLeastOnce, id, b"g"))
            .await;
        match device.recv().await {
            Packet::PubAck(a) => (a.packet_id, a.reason_code),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    };
    assert_eq!(puback(1).await, (1, 0x97));
    for _ in 0..4 {
        tap.recv().await.expect("tap open");
    }
    assert_eq!(puback(2).await, (2, 0x10), "taken, and no subscriber");
    let tapped = within("tapped after room", tap.recv())
        .await
        .expect("tap open");
    assert_eq!(&tapped.message.payload[..], b"g");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_status_says_a_serving_node_is_not_draining() {
    let server = TestServer::start().await;
    let (status, body) = server.admin_get("/cluster/drain").await;
    assert_eq!(status, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["draining"], false, "{body}");
    assert!(status["done"].is_null(), "{body}");
    assert_eq!(status["connections"], 0, "{body}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_a_serving_node_and_every_critical_task_is_up() {
    let server = TestServer::start().await;
    let (status, body) = server.admin_get("/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert!(server.server().unready_reasons().is_empty());
    for task in [
        "durable-writer",
        "deadlines",
        "listener:mqtt",
        "listener:admin",
        "listener:http",
        "registry-follower",
    ] {
        assert_eq!(
            server.metric(&format!("halyard_task_up{{task=\"{task}\"}}")),
            1.0,
            "{task}"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_keep_up_refuses_qos1_with_0x97_and_loses_nothing_acknowledged() {
    // One pending write allowed: while the writer is busy with a retained message, the ones
    // behind it fill the backlog and what comes then is refused rather than acknowledged.
    let server = TestServer::start_with(|c| c.mqtt.max_pending_writes = 1).await;
    let (mut raw, _) = Raw::v5(&server, "burst", true, Properties::default()).await;
    const SENT: u16 = 200;
    for n in 1..=SENT {
        let mut publish = publish_packet(&format!("burst/{n}"), QoS::AtLeastOnce, n, b"x");
        publish.retain = true;
        raw.publish(publish).await;
    }
    let (mut accepted, mut refused) = (Vec::new(), 0u32);
    for _ in 0..SENT {
        match raw.recv().await {
            // Success, or success with no subscriber (0x10).
            Packet::PubAck(ack) if matches!(ack.reason_code, 0 | 0x10) => {
                accepted.push(ack.packet_id)
            }
            Packet::PubAck(ack) if ack.reason_code == 0x97 => refused += 1,
            other => panic!("expected a PUBACK, got {other:?}"),
        }
    }
    assert!(!accepted.is_empty(), "the store was never free");
    assert!(refused > 0, "the backlog never filled");
    assert_eq!(
        server.metric("halyard_publishes_refused_total{reason=\"store_backlog\"}"),
        f64::from(refused)
    );
    // Every acknowledged retained message is in the store.
    let durable = server.server().broker().durable().expect("durable").clone();
    let (kept, _) = durable.retained_page(None, 1000).await.expect("read");
    let kept: Vec<String> = kept.iter().map(|(m, _)| m.topic.to_string()).collect();
    for id in &accepted {
        assert!(
            kept.contains(&format!("burst/{id}")),
            "burst/{id} was acknowledged but not kept"
        );
    }
    raw.disconnect(0).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backlog_refuses_a_persistent_sessions_subscriptions_and_keeps_every_granted_one() {
    // One pending write allowed: each SUBSCRIBE of a persistent session writes its record, so
    // a burst of them fills the backlog; what comes then is refused (0x97) and changes
    // nothing, and every subscription that was granted is in the stored record.
    let server = TestServer::start_with(|c| c.mqtt.max_pending_writes = 1).await;
    let properties = Properties {
        session_expiry_interval: Some(600),
        ..Properties::default()
    };
    let (mut raw, _) = Raw::v5(&server, "keeper", true, properties).await;
    const SENT: u16 = 200;
    for n in 1..=SENT {
        raw.send(&Packet::Subscribe(halyard_node::mqtt::Subscribe {
            packet_id: n,
            subscriptions: vec![halyard_node::mqtt::TopicSubscription {
                filter: format!("keep/{n}"),
                options: qos_options(QoS::AtLeastOnce),
            }],
            properties: Properties::default(),
        }))
        .await;
    }
    let (mut granted, mut refused) = (Vec::new(), 0u32);
    for _ in 0..SENT {
        match raw.recv().await {
            Packet::SubAck(ack) if ack.reason_codes == [1] => granted.push(ack.packet_id),
            Packet::SubAck(ack) if ack.reason_codes == [0x97] => refused += 1,
            other => panic!("expected a SUBACK, got {other:?}"),
        }
    }
    assert!(!granted.is_empty(), "the store was never free");
    assert!(refused > 0, "the backlog never filled");
    assert_eq!(
        server.metric("halyard_backlog_refusals_total{packet=\"subscribe\"}"),
        f64::from(refused)
    );
    raw.disconnect(0).await;
    let durable = server.server().broker().durable().expect("durable").clone();
    assert!(
        durable.flush(Duration::from_secs(10)).await,
        "the store never caught up"
    );
    let sessions = durable.load_sessions().await.expect("read");
    let stored: Vec<&str> = sessions
        .iter()
        .find(|s| s.record.client_id == "keeper")
        .expect("the session is stored")
        .record
        .subscriptions
        .iter()
        .map(|s| s.filter.as_str())
        .collect();
    assert_eq!(
        stored.len(),
        granted.len(),
        "refused subscriptions were kept"
    );
    for id in &granted {
        assert!(
            stored.contains(&format!("keep/{id}").as_str()),
            "keep/{id} was granted but not stored"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_with_too_many_waiting_requests_answers_429_and_loses_no_accepted_update() {
    // One request may wait behind the one being served; the burst's others are refused.
    let server = TestServer::start_with(|c| {
        c.shadow.max_queued_requests = 1;
        c.shadow.max_inflight_requests = 100;
    })
    .await;
    let (mut raw, _) = Raw::v311(&server, "burst-device", true, 30).await;
    raw.subscribe_qos(1, "$aws/things/pump/shadow/update/+", QoS::AtMostOnce)
        .await;
    const SENT: usize = 40;
    for n in 0..SENT {
        let body = format!("{{\"state\":{{\"reported\":{{\"n\":{n}}}}},\"clientToken\":\"t{n}\"}}");
        let publish = publish_packet(
            "$aws/things/pump/shadow/update",
            QoS::AtMostOnce,
            0,
            body.as_bytes(),
        );
        raw.publish(publish).await;
    }
    let (mut versions, mut throttled) = (Vec::new(), 0);
    while versions.len() + throttled < SENT {
        let answer = raw.recv_publish().await;
        let body: serde_json::Value = serde_json::from_slice(&answer.payload).expect("JSON answer");
        if answer.topic.ends_with("/accepted") {
            versions.push(body["version"].as_u64().expect("version"));
        } else if answer.topic.ends_with("/rejected") {
            assert_eq!(body["code"], 429, "{body}");
            assert_eq!(body["message"], "Too Many Requests", "{body}");
            assert!(body["clientToken"].as_str().is_some(), "{body}");
            throttled += 1;
        }
    }
    assert!(throttled > 0, "the queue never filled");
    // Every accepted update got the next version: none was lost or applied twice.
    let expected: Vec<u64> = (1..=versions.len() as u64).collect();
    assert_eq!(versions, expected);
    raw.disconnect(0).await;
    server.shutdown().await;
}
