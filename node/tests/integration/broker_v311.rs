//! MQTT 3.1.1 behaviour of the broker, driven by rumqttc's v4 client and,
//! where byte-level control is needed, by a raw socket.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use halyard_node::mqtt::{Packet, ProtocolVersion};
use rumqttc::{LastWill, QoS, SubscribeReasonCode};

fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_session_never_reports_a_session() {
    let server = TestServer::start().await;
    let (c, ack) = v4_connect(v4_options(&server, "clean-1")).await;
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    assert!(!ack.session_present);
    c.disconnect().await;
    server.wait_connections(0).await;
    let (_c, ack) = v4_connect(v4_options(&server, "clean-1")).await;
    assert!(!ack.session_present);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_is_resumed_with_session_present() {
    let server = TestServer::start().await;
    let mut options = v4_options(&server, "persist-1");
    options.set_clean_session(false);
    let (c, ack) = v4_connect(options.clone()).await;
    assert!(!ack.session_present, "a new session is not present");
    c.disconnect().await;
    server.wait_connections(0).await;

    let (c, ack) = v4_connect(options.clone()).await;
    assert!(ack.session_present, "the stored session is resumed");
    c.disconnect().await;
    server.wait_connections(0).await;

    // A clean connection discards it; the next persistent one starts afresh.
    let (c, ack) = v4_connect(v4_options(&server, "persist-1")).await;
    assert!(!ack.session_present);
    c.disconnect().await;
    server.wait_connections(0).await;
    let (_c, ack) = v4_connect(options).await;
    assert!(!ack.session_present);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_client_id_needs_a_clean_session() {
    let server = TestServer::start().await;

    let mut raw = Raw::open(&server).await;
    let ack = raw
        .connect(connect_packet(ProtocolVersion::V311, "", false, 30))
        .await;
    assert_eq!(ack.reason_code, 0x02, "identifier rejected");
    assert!(!ack.session_present);
    raw.expect_closed().await;

    // With a clean session an empty id is accepted (the broker makes one up).
    let mut raw = Raw::open(&server).await;
    let ack = raw
        .connect(connect_packet(ProtocolVersion::V311, "", true, 30))
        .await;
    assert_eq!(ack.reason_code, 0x00);
    raw.send(&Packet::PingReq).await;
    assert_eq!(raw.recv().await, Packet::PingResp);

    // An over-long client identifier is rejected the same way (AWS: 128 bytes).
    let mut raw = Raw::open(&server).await;
    let long = "x".repeat(129);
    let ack = raw
        .connect(connect_packet(ProtocolVersion::V311, &long, true, 30))
        .await;
    assert_eq!(ack.reason_code, 0x02);
    raw.expect_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_client_id_takes_over() {
    let server = TestServer::start().await;
    let mut first = v4(&server, "twin").await;
    first.subscribe("twin/t", QoS::AtLeastOnce).await;

    let mut second = v4(&server, "twin").await;
    first.closed().await;
    server.wait_connections(1).await;

    second.subscribe("twin/t", QoS::AtLeastOnce).await;
    let mut publisher = v4(&server, "twin-pub").await;
    publisher
        .publish("twin/t", QoS::AtLeastOnce, false, b"to the new one")
        .await;
    assert_eq!(&second.recv().await.payload[..], b"to the new one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_is_enforced() {
    let server = TestServer::start().await;
    let mut watcher = v4(&server, "sleepy-watch").await;
    watcher.subscribe("sleepy/will", QoS::AtLeastOnce).await;
    let mut raw = Raw::open(&server).await;
    let mut connect = connect_packet(ProtocolVersion::V311, "sleepy", true, 1);
    connect.will = Some(will(
        "sleepy/will",
        b"timed out",
        halyard_node::mqtt::QoS::AtLeastOnce,
        Default::default(),
    ));
    assert_eq!(raw.connect(connect).await.reason_code, 0);
    // Silent for 1.5 x keep-alive: the broker closes the connection...
    let sent = raw.expect_closed().await;
    assert!(sent.is_empty(), "3.1.1 gets no DISCONNECT: {sent:?}");
    // ...and publishes the will.
    assert_eq!(&watcher.recv().await.payload[..], b"timed out");

    // A client that pings stays connected past the same interval.
    let (mut raw, _) = Raw::v311(&server, "pinger", true, 1).await;
    for _ in 0..6 {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        raw.send(&Packet::PingReq).await;
        assert_eq!(raw.recv().await, Packet::PingResp);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_qos_is_the_minimum_of_publish_and_subscription() {
    let server = TestServer::start().await;
    let mut subs = Vec::new();
    for sub_qos in 0..=2u8 {
        let mut s = v4(&server, &format!("qos-sub-{sub_qos}")).await;
        let granted = s.subscribe("qos/t", qos(sub_qos)).await;
        assert_eq!(granted, SubscribeReasonCode::Success(qos(sub_qos)));
        subs.push(s);
    }
    let mut publisher = v4(&server, "qos-pub").await;
    for pub_qos in 0..=2u8 {
        publisher
            .publish(
                "qos/t",
                qos(pub_qos),
                false,
                format!("q{pub_qos}").as_bytes(),
            )
            .await;
    }
    for (sub_qos, s) in subs.iter_mut().enumerate() {
        for pub_qos in 0..=2u8 {
            let p = s.recv().await;
            assert_eq!(p.payload, format!("q{pub_qos}").as_bytes());
            assert_eq!(p.topic, "qos/t");
            assert_eq!(
                p.qos,
                qos(pub_qos.min(sub_qos as u8)),
                "pub {pub_qos} sub {sub_qos}"
            );
            assert!(!p.retain);
        }
        s.expect_no_publish(QUIET).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_messages_of_one_publisher_arrive_in_order() {
    let server = TestServer::start().await;
    let mut sub = v4(&server, "order-sub").await;
    sub.subscribe("order/t", QoS::AtLeastOnce).await;
    let publisher = v4(&server, "order-pub").await;
    for i in 0..200u32 {
        publisher
            .client
            .publish("order/t", QoS::AtLeastOnce, false, i.to_be_bytes().to_vec())
            .await
            .expect("queued");
    }
    for i in 0..200u32 {
        let p = sub.recv().await;
        assert_eq!(p.qos, QoS::AtLeastOnce);
        assert_eq!(&p.payload[..], &i.to_be_bytes(), "message {i} out of order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_qos2_flow_towards_the_subscriber() {
    // Byte-level check of the broker's side of the QoS 2 handshake.
    let server = TestServer::start().await;
    let (mut sub, _) = Raw::v311(&server, "q2-raw-sub", true, 30).await;
    sub.subscribe_qos(1, "q2/t", halyard_node::mqtt::QoS::ExactlyOnce)
        .await;
    let mut publisher = v4(&server, "q2-raw-pub").await;
    publisher
        .publish("q2/t", QoS::ExactlyOnce, false, b"exactly")
        .await;
    let p = sub.recv_publish().await;
    assert_eq!(p.qos, halyard_node::mqtt::QoS::ExactlyOnce);
    assert!(!p.dup);
    sub.send(&Packet::PubRec(halyard_node::mqtt::Ack::new(
        p.packet_id,
        0,
    )))
    .await;
    match sub.recv().await {
        Packet::PubRel(a) => assert_eq!(a.packet_id, p.packet_id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    sub.send(&Packet::PubComp(halyard_node::mqtt::Ack::new(
        p.packet_id,
        0,
    )))
    .await;
    sub.expect_idle(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_are_set_replaced_deleted_and_flagged() {
    let server = TestServer::start().await;
    let mut publisher = v4(&server, "ret-pub").await;
    publisher
        .publish("ret/a", QoS::AtLeastOnce, true, b"one")
        .await;

    // Delivered on subscribe, with the retain flag.
    let mut s1 = v4(&server, "ret-s1").await;
    s1.subscribe("ret/a", QoS::AtLeastOnce).await;
    let p = s1.recv().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.retain),
        ("ret/a", &b"one"[..], true)
    );

    // Replaced; the live delivery to an existing subscriber has no retain flag.
    publisher
        .publish("ret/a", QoS::AtLeastOnce, true, b"two")
        .await;
    let p = s1.recv().await;
    assert_eq!((&p.payload[..], p.retain), (&b"two"[..], false));

    // Wildcard subscriptions get every matching retained message.
    publisher
        .publish("ret/b/c", QoS::AtLeastOnce, true, b"bc")
        .await;
    publisher
        .publish("other/x", QoS::AtLeastOnce, true, b"x")
        .await;
    let mut s2 = v4(&server, "ret-s2").await;
    s2.subscribe("ret/#", QoS::AtLeastOnce).await;
    let got: BTreeMap<String, (Vec<u8>, bool)> = s2
        .recv_n(2)
        .await
        .into_iter()
        .map(|p| (p.topic, (p.payload.to_vec(), p.retain)))
        .collect();
    assert_eq!(got["ret/a"], (b"two".to_vec(), true));
    assert_eq!(got["ret/b/c"], (b"bc".to_vec(), true));
    s2.expect_no_publish(QUIET).await;

    let mut s3 = v4(&server, "ret-s3").await;
    s3.subscribe("ret/+", QoS::AtMostOnce).await;
    let p = s3.recv().await;
    assert_eq!(
        (p.topic.as_str(), p.qos, p.retain),
        ("ret/a", QoS::AtMostOnce, true)
    );
    s3.expect_no_publish(QUIET).await;

    // An empty retained payload deletes the topic's retained message.
    publisher
        .publish("ret/a", QoS::AtLeastOnce, true, b"")
        .await;
    let mut s4 = v4(&server, "ret-s4").await;
    s4.subscribe("ret/#", QoS::AtLeastOnce).await;
    let p = s4.recv().await;
    assert_eq!(p.topic, "ret/b/c");
    s4.expect_no_publish(QUIET).await;

    // `#` does not match retained `$` topics.
    publisher
        .publish("$SYS/ret", QoS::AtLeastOnce, true, b"sys")
        .await;
    let mut s6 = v4(&server, "ret-s6").await;
    s6.subscribe("#", QoS::AtLeastOnce).await;
    let got: BTreeSet<String> = s6.recv_n(2).await.into_iter().map(|p| p.topic).collect();
    assert_eq!(
        got,
        BTreeSet::from(["ret/b/c".to_owned(), "other/x".to_owned()])
    );
    s6.expect_no_publish(QUIET).await;
    s6.subscribe("$SYS/#", QoS::AtLeastOnce).await;
    assert_eq!(s6.recv().await.topic, "$SYS/ret");

    // A non-retained publish leaves the stored message alone.
    publisher
        .publish("ret/b/c", QoS::AtLeastOnce, false, b"live")
        .await;
    let mut s5 = v4(&server, "ret-s5").await;
    s5.subscribe("ret/b/c", QoS::AtLeastOnce).await;
    let p = s5.recv().await;
    assert_eq!((&p.payload[..], p.retain), (&b"bc"[..], true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_when_the_socket_drops() {
    let server = TestServer::start().await;
    let mut watcher = v4(&server, "will-watch").await;
    watcher.subscribe("will/#", QoS::AtLeastOnce).await;

    let mut options = v4_options(&server, "will-dies");
    options.set_last_will(LastWill::new("will/dies", "gone", QoS::AtLeastOnce, false));
    let (client, _) = v4_connect(options).await;
    drop(client);

    let p = watcher.recv().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("will/dies", &b"gone"[..])
    );
    assert_eq!(p.qos, QoS::AtLeastOnce);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_not_published_after_disconnect() {
    let server = TestServer::start().await;
    let mut watcher = v4(&server, "will-watch2").await;
    watcher.subscribe("will2/#", QoS::AtLeastOnce).await;

    let mut options = v4_options(&server, "will-leaves");
    options.set_last_will(LastWill::new(
        "will2/leaves",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let (client, _) = v4_connect(options).await;
    client.disconnect().await;
    server.wait_connections(1).await;

    // The next message the watcher sees is this one, not the will.
    let mut publisher = v4(&server, "will-marker").await;
    publisher
        .publish("will2/marker", QoS::AtLeastOnce, false, b"marker")
        .await;
    assert_eq!(watcher.recv().await.topic, "will2/marker");
    watcher.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_match_and_dollar_topics_are_excluded() {
    let server = TestServer::start().await;
    let filters = ["#", "a/+", "a/#", "+/+", "a/+/c", "+/x", "$SYS/#", "$SYS/+"];
    let mut subs = Vec::new();
    for (i, f) in filters.iter().enumerate() {
        let mut s = v4(&server, &format!("wild-{i}")).await;
        let granted = s.subscribe(f, QoS::AtLeastOnce).await;
        assert_eq!(
            granted,
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            "{f}"
        );
        s.subscribe("end", QoS::AtLeastOnce).await;
        subs.push(s);
    }
    let mut publisher = v4(&server, "wild-pub").await;
    for topic in ["a", "a/b", "a/b/c", "/x", "$SYS/x", "b/x"] {
        publisher
            .publish(topic, QoS::AtLeastOnce, false, b"m")
            .await;
    }
    publisher
        .publish("end", QoS::AtLeastOnce, false, b"end")
        .await;

    let expected: [&[&str]; 8] = [
        &["a", "a/b", "a/b/c", "/x", "b/x"],
        &["a/b"],
        &["a", "a/b", "a/b/c"],
        &["a/b", "/x", "b/x"],
        &["a/b/c"],
        &["/x", "b/x"],
        &["$SYS/x"],
        &["$SYS/x"],
    ];
    for ((f, s), want) in filters.iter().zip(subs.iter_mut()).zip(expected) {
        let mut got = Vec::new();
        loop {
            let p = s.recv().await;
            if p.topic == "end" {
                break;
            }
            got.push(p.topic);
        }
        assert_eq!(got, want, "filter {f}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_splits_messages_between_members() {
    let server = TestServer::start().await;
    let mut members = Vec::new();
    for i in 0..2 {
        let mut m = v4(&server, &format!("share-m{i}")).await;
        let granted = m.subscribe("$share/g/share/t", QoS::AtLeastOnce).await;
        assert_eq!(granted, SubscribeReasonCode::Success(QoS::AtLeastOnce));
        members.push(m);
    }
    let mut plain = v4(&server, "share-plain").await;
    plain.subscribe("share/t", QoS::AtLeastOnce).await;

    let mut publisher = v4(&server, "share-pub").await;
    const N: usize = 10;
    for i in 0..N {
        publisher
            .publish(
                "share/t",
                QoS::AtLeastOnce,
                false,
                format!("{i}").as_bytes(),
            )
            .await;
    }
    // The ordinary subscriber gets everything.
    assert_eq!(plain.recv_n(N).await.len(), N);

    // The group gets every message exactly once, spread over both members.
    let mut seen = BTreeSet::new();
    let mut per_member = [0usize; 2];
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < N {
        assert!(
            tokio::time::Instant::now() < deadline,
            "group got only {seen:?}"
        );
        for (i, m) in members.iter_mut().enumerate() {
            while let Some(p) = m.try_recv(std::time::Duration::from_millis(20)).await {
                assert_eq!(p.topic, "share/t", "delivered under the real topic");
                let payload = String::from_utf8(p.payload.to_vec()).expect("utf8");
                assert!(seen.insert(payload.clone()), "{payload} delivered twice");
                per_member[i] += 1;
            }
        }
    }
    for m in &mut members {
        m.expect_no_publish(QUIET).await;
    }
    assert!(per_member.iter().all(|&n| n > 0), "split: {per_member:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_in_publish_topic_closes_the_connection() {
    let server = TestServer::start().await;
    let (mut raw, _) = Raw::v311(&server, "bad-pub", true, 30).await;
    raw.publish(publish_packet(
        "a/+/c",
        halyard_node::mqtt::QoS::AtLeastOnce,
        1,
        b"x",
    ))
    .await;
    let sent = raw.expect_closed().await;
    assert!(sent.is_empty(), "no PUBACK for an invalid topic: {sent:?}");
    assert_broker_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_filter_gets_suback_failure() {
    let server = TestServer::start().await;
    let (mut raw, _) = Raw::v311(&server, "bad-sub", true, 30).await;
    let ack = raw
        .subscribe_qos(7, "a/#/b", halyard_node::mqtt::QoS::AtLeastOnce)
        .await;
    assert_eq!(ack.reason_codes, vec![0x80]);
    // The connection stays usable.
    let ack = raw
        .subscribe_qos(8, "a/+/b", halyard_node::mqtt::QoS::AtLeastOnce)
        .await;
    assert_eq!(ack.reason_codes, vec![0x01]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_subscriptions_get_one_copy_at_the_highest_qos() {
    let server = TestServer::start().await;
    let mut sub = v4(&server, "overlap").await;
    sub.subscribe("ov/#", QoS::AtMostOnce).await;
    sub.subscribe("ov/+", QoS::ExactlyOnce).await;
    sub.subscribe("ov/t", QoS::AtLeastOnce).await;
    let mut publisher = v4(&server, "overlap-pub").await;
    publisher
        .publish("ov/t", QoS::ExactlyOnce, false, b"once")
        .await;
    let p = sub.recv().await;
    assert_eq!((&p.payload[..], p.qos), (&b"once"[..], QoS::ExactlyOnce));
    sub.expect_no_publish(QUIET).await;
}
