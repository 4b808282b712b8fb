//! MQTT 5.0 behaviour of the broker, driven by rumqttc's v5 client and, for
//! flow control, aliases and reason codes, by a raw socket.

use crate::common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use bytes::Bytes;
use common::v5t::{
    DisconnectReasonCode, Filter, LastWill, LastWillProperties, Packet as P5, PubAckReason,
    PublishProperties, QoS, RetainForwardRule, SubscribeProperties, SubscribeReasonCode,
};
use common::*;
use halyard_node::mqtt::{self, Packet, Properties, SubscriptionOptions};

fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn filter(path: &str, qos: QoS, rule: RetainForwardRule, rap: bool, no_local: bool) -> Filter {
    Filter {
        path: path.to_owned(),
        qos,
        nolocal: no_local,
        preserve_retain: rap,
        retain_forward_rule: rule,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_client_id_gets_an_assigned_identifier() {
    let server = TestServer::start().await;
    let (mut c, ack) = v5_connect(v5_options(&server, "")).await;
    assert_eq!(ack.code, common::v5t::ConnectReturnCode::Success);
    assert!(!ack.session_present);
    let props = ack.properties.expect("CONNACK properties");
    let assigned = props
        .assigned_client_identifier
        .expect("Assigned Client Identifier");
    assert!(!assigned.is_empty());
    // The connection works under that identity.
    c.subscribe("assigned/t", QoS::AtLeastOnce).await;
    c.publish("assigned/t", QoS::AtLeastOnce, false, b"me")
        .await;
    assert_eq!(&c.recv().await.payload[..], b"me");

    // Two anonymous clients get different identifiers.
    let (_c2, ack2) = v5_connect(v5_options(&server, "")).await;
    let other = ack2
        .properties
        .and_then(|p| p.assigned_client_identifier)
        .expect("assigned");
    assert_ne!(assigned, other);

    // A client that names itself is not assigned anything.
    let (_c3, ack3) = v5_connect(v5_options(&server, "named")).await;
    assert_eq!(
        ack3.properties.and_then(|p| p.assigned_client_identifier),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_start_discards_the_session() {
    let server = TestServer::start().await;
    let mut options = v5_options(&server, "cs-1");
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(60));
    let (c, ack) = v5_connect(options.clone()).await;
    assert!(!ack.session_present);
    c.disconnect().await;
    server.wait_connections(0).await;

    let mut clean = v5_options(&server, "cs-1");
    clean.set_clean_start(true);
    clean.set_session_expiry_interval(Some(60));
    let (c, ack) = v5_connect(clean).await;
    assert!(!ack.session_present, "clean start never resumes");
    c.disconnect().await;
    server.wait_connections(0).await;

    // The session made by the clean-start connection (expiry 60) is resumable.
    let (_c, ack) = v5_connect(options).await;
    assert!(ack.session_present);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_keep_alive_is_announced() {
    let server = TestServer::start_with(|c| c.mqtt.server_keep_alive = Some(7)).await;
    let (_c, ack) = v5_connect(v5_options(&server, "ska")).await;
    let props = ack.properties.expect("CONNACK properties");
    assert_eq!(props.server_keep_alive, Some(7));

    // Without the setting, an acceptable keep-alive is left as requested...
    let server = TestServer::start_with(|c| c.mqtt.max_keep_alive = 20).await;
    let mut options = v5_options(&server, "ka-ok");
    options.set_keep_alive(Duration::from_secs(10));
    let (_c, ack) = v5_connect(options).await;
    assert_eq!(ack.properties.and_then(|p| p.server_keep_alive), None);

    // ...and one above the maximum is lowered, and the client told so.
    let mut options = v5_options(&server, "ka-long");
    options.set_keep_alive(Duration::from_secs(60));
    let (_c, ack) = v5_connect(options).await;
    assert_eq!(ack.properties.and_then(|p| p.server_keep_alive), Some(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_timeout_sends_disconnect() {
    let server = TestServer::start().await;
    let mut raw = Raw::open(&server).await;
    let ack = raw
        .connect(connect_packet(
            mqtt::ProtocolVersion::V5,
            "sleepy5",
            true,
            1,
        ))
        .await;
    assert_eq!(ack.reason_code, 0);
    let sent = raw.expect_closed().await;
    assert!(
        matches!(&sent[..], [Packet::Disconnect(d)] if d.reason_code == 0x8D),
        "expected DISCONNECT 0x8D, got {sent:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_client_id_gets_session_taken_over() {
    let server = TestServer::start().await;
    let mut first = v5(&server, "twin5").await;
    let (mut second, _) = v5_connect(v5_options(&server, "twin5")).await;
    let err = first.closed().await;
    assert_eq!(
        server_disconnect(&err),
        Some(DisconnectReasonCode::SessionTakenOver),
        "{err:?}"
    );
    second.subscribe("twin5/t", QoS::AtLeastOnce).await;
    second
        .publish("twin5/t", QoS::AtLeastOnce, false, b"hi")
        .await;
    assert_eq!(&second.recv().await.payload[..], b"hi");

    // Raw: the DISCONNECT is the last thing the old connection receives.
    let (mut old, _) = Raw::v5(&server, "twin5-raw", true, Properties::default()).await;
    let (_new, ack) = Raw::v5(&server, "twin5-raw", true, Properties::default()).await;
    assert!(!ack.session_present);
    let sent = old.expect_closed().await;
    assert!(
        matches!(&sent[..], [Packet::Disconnect(d)] if d.reason_code == 0x8E),
        "expected DISCONNECT 0x8E, got {sent:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_qos_is_the_minimum_of_publish_and_subscription() {
    let server = TestServer::start().await;
    let mut subs = Vec::new();
    for sub_qos in 0..=2u8 {
        let mut s = v5(&server, &format!("q5-sub-{sub_qos}")).await;
        let granted = s.subscribe("q5/t", qos(sub_qos)).await;
        assert_eq!(granted, SubscribeReasonCode::Success(qos(sub_qos)));
        subs.push(s);
    }
    let mut publisher = v5(&server, "q5-pub").await;
    for pub_qos in 0..=2u8 {
        publisher
            .publish(
                "q5/t",
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
            assert_eq!(&p.topic[..], b"q5/t");
            assert_eq!(
                p.qos,
                qos(pub_qos.min(sub_qos as u8)),
                "pub {pub_qos} sub {sub_qos}"
            );
        }
        s.expect_no_publish(QUIET).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_without_subscribers_is_acknowledged_with_0x10() {
    let server = TestServer::start().await;
    let (mut raw, _) = Raw::v5(&server, "lonely", true, Properties::default()).await;
    raw.publish(publish_packet(
        "nobody/here",
        mqtt::QoS::AtLeastOnce,
        1,
        b"x",
    ))
    .await;
    match raw.recv().await {
        Packet::PubAck(a) => assert_eq!((a.packet_id, a.reason_code), (1, 0x10)),
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_maximum_bounds_unacknowledged_deliveries() {
    let server = TestServer::start().await;
    let (mut sub, _) = Raw::v5(
        &server,
        "rm-sub",
        true,
        Properties {
            receive_maximum: Some(2),
            ..Properties::default()
        },
    )
    .await;
    sub.subscribe_qos(1, "rm/t", mqtt::QoS::AtLeastOnce).await;

    // Every message is in the broker before the subscriber acks anything.
    let mut publisher = v5(&server, "rm-pub").await;
    for i in 0..5u8 {
        publisher
            .publish("rm/t", QoS::AtLeastOnce, false, &[i])
            .await;
    }

    let a = sub.recv_publish().await;
    let b = sub.recv_publish().await;
    assert_eq!((&a.payload[..], &b.payload[..]), (&[0u8][..], &[1u8][..]));
    sub.expect_idle(QUIET).await;

    sub.puback(a.packet_id).await;
    let c = sub.recv_publish().await;
    assert_eq!(&c.payload[..], &[2u8]);
    sub.expect_idle(QUIET).await;

    sub.puback(b.packet_id).await;
    sub.puback(c.packet_id).await;
    let d = sub.recv_publish().await;
    let e = sub.recv_publish().await;
    assert_eq!((&d.payload[..], &e.payload[..]), (&[3u8][..], &[4u8][..]));
    sub.puback(d.packet_id).await;
    sub.puback(e.packet_id).await;
    sub.expect_idle(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_handling_options() {
    let server = TestServer::start().await;
    let mut publisher = v5(&server, "rh-pub").await;
    publisher
        .publish("rh/t", QoS::AtLeastOnce, true, b"kept")
        .await;

    // 0: on every subscribe.
    let mut s0 = v5(&server, "rh-0").await;
    for _ in 0..2 {
        s0.subscribe_filter(
            filter(
                "rh/t",
                QoS::AtLeastOnce,
                RetainForwardRule::OnEverySubscribe,
                false,
                false,
            ),
            None,
        )
        .await;
        let p = s0.recv().await;
        assert_eq!((&p.payload[..], p.retain), (&b"kept"[..], true));
    }

    // 1: only when the subscription is new.
    let mut s1 = v5(&server, "rh-1").await;
    let f1 = filter(
        "rh/t",
        QoS::AtLeastOnce,
        RetainForwardRule::OnNewSubscribe,
        false,
        false,
    );
    s1.subscribe_filter(f1.clone(), None).await;
    let p = s1.recv().await;
    assert_eq!((&p.payload[..], p.retain), (&b"kept"[..], true));
    s1.subscribe_filter(f1, None).await;
    s1.expect_no_publish(QUIET).await;

    // 2: never.
    let mut s2 = v5(&server, "rh-2").await;
    s2.subscribe_filter(
        filter(
            "rh/+",
            QoS::AtLeastOnce,
            RetainForwardRule::Never,
            false,
            false,
        ),
        None,
    )
    .await;
    s2.expect_no_publish(QUIET).await;
    // It is subscribed all the same.
    publisher
        .publish("rh/t", QoS::AtLeastOnce, false, b"live")
        .await;
    assert_eq!(&s2.recv().await.payload[..], b"live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_as_published() {
    let server = TestServer::start().await;
    let mut rap = v5(&server, "rap-1").await;
    rap.subscribe_filter(
        filter(
            "rap/t",
            QoS::AtLeastOnce,
            RetainForwardRule::OnEverySubscribe,
            true,
            false,
        ),
        None,
    )
    .await;
    let mut plain = v5(&server, "rap-0").await;
    plain.subscribe("rap/t", QoS::AtLeastOnce).await;

    let mut publisher = v5(&server, "rap-pub").await;
    publisher
        .publish("rap/t", QoS::AtLeastOnce, true, b"r")
        .await;
    publisher
        .publish("rap/t", QoS::AtLeastOnce, false, b"n")
        .await;

    let got: Vec<_> = rap.recv_n(2).await.into_iter().map(|p| p.retain).collect();
    assert_eq!(got, vec![true, false], "retain as published");
    let got: Vec<_> = plain
        .recv_n(2)
        .await
        .into_iter()
        .map(|p| p.retain)
        .collect();
    assert_eq!(got, vec![false, false], "retain cleared by default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_delay_interval_postpones_the_will() {
    let server = TestServer::start().await;
    let mut watcher = v5(&server, "wd-watch").await;
    watcher.subscribe("wd/#", QoS::AtLeastOnce).await;

    let mut options = v5_options(&server, "wd-dies");
    options.set_session_expiry_interval(Some(60));
    options.set_last_will(LastWill::new(
        "wd/dies",
        "late",
        QoS::AtLeastOnce,
        false,
        Some(LastWillProperties {
            delay_interval: Some(2),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: vec![],
        }),
    ));
    let (client, _) = v5_connect(options).await;
    drop(client);

    // Not before the delay (2 s) has passed...
    watcher.expect_no_publish(Duration::from_millis(1000)).await;
    // ...but after it.
    let p = watcher.recv().await;
    assert_eq!(
        (&p.topic[..], &p.payload[..]),
        (&b"wd/dies"[..], &b"late"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_cancelled_by_reconnecting_within_the_delay() {
    let server = TestServer::start().await;
    let mut watcher = v5(&server, "wc-watch").await;
    watcher.subscribe("wc/#", QoS::AtLeastOnce).await;

    let mut options = v5_options(&server, "wc-back");
    options.set_session_expiry_interval(Some(60));
    options.set_clean_start(false);
    options.set_last_will(LastWill::new(
        "wc/back",
        "should not appear",
        QoS::AtLeastOnce,
        false,
        Some(LastWillProperties {
            delay_interval: Some(2),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: vec![],
        }),
    ));
    let (client, _) = v5_connect(options.clone()).await;
    drop(client);
    server.wait_connections(1).await;
    let (_client, ack) = v5_connect(options).await;
    assert!(ack.session_present);
    // Well past the delay: still no will.
    watcher.expect_no_publish(Duration::from_millis(2500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_with_will_message_publishes_the_will() {
    let server = TestServer::start().await;
    let mut watcher = v5(&server, "w4-watch").await;
    watcher.subscribe("w4/#", QoS::AtLeastOnce).await;

    let mut raw = Raw::open(&server).await;
    let mut connect = connect_packet(mqtt::ProtocolVersion::V5, "w4-leaves", true, 30);
    connect.will = Some(will(
        "w4/leaves",
        b"bye",
        mqtt::QoS::AtLeastOnce,
        Properties::default(),
    ));
    assert_eq!(raw.connect(connect).await.reason_code, 0);
    raw.disconnect(0x04).await;
    raw.expect_closed().await;

    let p = watcher.recv().await;
    assert_eq!(
        (&p.topic[..], &p.payload[..]),
        (&b"w4/leaves"[..], &b"bye"[..])
    );

    // A normal v5 DISCONNECT (0x00) does not.
    let mut raw = Raw::open(&server).await;
    let mut connect = connect_packet(mqtt::ProtocolVersion::V5, "w0-leaves", true, 30);
    connect.will = Some(will(
        "w4/quiet",
        b"bye",
        mqtt::QoS::AtLeastOnce,
        Properties::default(),
    ));
    assert_eq!(raw.connect(connect).await.reason_code, 0);
    raw.disconnect(0x00).await;
    raw.expect_closed().await;
    server.wait_connections(1).await;
    watcher.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_expiry_interval_is_forwarded_as_remaining_time() {
    let server = TestServer::start().await;
    let mut sub = v5(&server, "me-sub").await;
    sub.subscribe("me/t", QoS::AtLeastOnce).await;
    let mut publisher = v5(&server, "me-pub").await;
    publisher
        .publish_with(
            "me/t",
            QoS::AtLeastOnce,
            false,
            b"expiring",
            Some(PublishProperties {
                message_expiry_interval: Some(60),
                ..PublishProperties::default()
            }),
        )
        .await;
    publisher
        .publish("me/t", QoS::AtLeastOnce, false, b"forever")
        .await;

    let p = sub.recv().await;
    let left = p
        .properties
        .and_then(|p| p.message_expiry_interval)
        .expect("expiry forwarded");
    assert!(left > 0 && left <= 60, "remaining {left}");
    let p = sub.recv().await;
    assert_eq!(p.properties.and_then(|p| p.message_expiry_interval), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_delivers_each_message_once() {
    let server = TestServer::start().await;
    let mut members = Vec::new();
    for i in 0..2 {
        let mut m = v5(&server, &format!("share5-m{i}")).await;
        let granted = m.subscribe("$share/grp/s5/+", QoS::AtLeastOnce).await;
        assert_eq!(granted, SubscribeReasonCode::Success(QoS::AtLeastOnce));
        members.push(m);
    }
    // Another group gets its own copy.
    let mut solo = v5(&server, "share5-solo").await;
    solo.subscribe("$share/other/s5/+", QoS::AtLeastOnce).await;

    let mut publisher = v5(&server, "share5-pub").await;
    const N: usize = 10;
    for i in 0..N {
        publisher
            .publish("s5/x", QoS::AtLeastOnce, false, format!("{i}").as_bytes())
            .await;
    }
    assert_eq!(solo.recv_n(N).await.len(), N);

    let mut seen = BTreeSet::new();
    let mut per_member = [0usize; 2];
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < N {
        assert!(
            tokio::time::Instant::now() < deadline,
            "group got only {seen:?}"
        );
        for (i, m) in members.iter_mut().enumerate() {
            while let Some(p) = m.try_recv(Duration::from_millis(20)).await {
                assert_eq!(&p.topic[..], b"s5/x");
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
async fn inbound_topic_alias_is_resolved() {
    let server = TestServer::start().await;
    let mut sub = v5(&server, "ai-sub").await;
    sub.subscribe("ai/t", QoS::AtLeastOnce).await;

    let (mut raw, ack) = Raw::v5(&server, "ai-pub", true, Properties::default()).await;
    assert!(ack.properties.topic_alias_maximum.unwrap_or(0) >= 1);
    let mut first = publish_packet("ai/t", mqtt::QoS::AtLeastOnce, 1, b"one");
    first.properties.topic_alias = Some(1);
    raw.publish(first).await;
    let mut second = publish_packet("", mqtt::QoS::AtLeastOnce, 2, b"two");
    second.properties.topic_alias = Some(1);
    raw.publish(second).await;
    for id in [1, 2] {
        match raw.recv().await {
            Packet::PubAck(a) => assert_eq!((a.packet_id, a.reason_code), (id, 0)),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }

    for payload in [&b"one"[..], &b"two"[..]] {
        let p = sub.recv().await;
        assert_eq!((&p.topic[..], &p.payload[..]), (&b"ai/t"[..], payload));
        // The subscriber allowed no aliases, so none is sent to it.
        assert_eq!(p.properties.and_then(|p| p.topic_alias), None);
    }

    // An alias above the broker's Topic Alias Maximum ends the connection.
    let max = ack.properties.topic_alias_maximum.unwrap_or(0);
    let mut bad = publish_packet("ai/t", mqtt::QoS::AtMostOnce, 0, b"x");
    bad.properties.topic_alias = Some(max + 1);
    raw.publish(bad).await;
    let sent = raw.expect_closed().await;
    assert!(
        matches!(&sent[..], [Packet::Disconnect(d)] if d.reason_code == 0x94),
        "expected DISCONNECT 0x94, got {sent:?}"
    );

    // So does an alias that was never set.
    let (mut raw, _) = Raw::v5(&server, "ai-pub2", true, Properties::default()).await;
    let mut unknown = publish_packet("", mqtt::QoS::AtMostOnce, 0, b"x");
    unknown.properties.topic_alias = Some(1);
    raw.publish(unknown).await;
    let sent = raw.expect_closed().await;
    assert!(
        matches!(&sent[..], [Packet::Disconnect(d)] if d.reason_code == 0x82),
        "expected DISCONNECT 0x82, got {sent:?}"
    );
    assert_broker_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_topic_aliases_respect_the_client_maximum() {
    let server = TestServer::start().await;
    let (mut sub, _) = Raw::v5(
        &server,
        "ao-sub",
        true,
        Properties {
            topic_alias_maximum: Some(2),
            ..Properties::default()
        },
    )
    .await;
    sub.subscribe_qos(1, "ao/#", mqtt::QoS::AtMostOnce).await;

    let mut publisher = v5(&server, "ao-pub").await;
    let topics = ["ao/a", "ao/a", "ao/b", "ao/c", "ao/a", "ao/b", "ao/c"];
    for (i, t) in topics.iter().enumerate() {
        publisher
            .publish(t, QoS::AtLeastOnce, false, format!("{i}").as_bytes())
            .await;
    }

    let mut aliases: HashMap<u16, std::sync::Arc<str>> = HashMap::new();
    let mut alias_only = 0;
    for (i, want) in topics.iter().enumerate() {
        let p = sub.recv_publish().await;
        assert_eq!(p.payload, format!("{i}").as_bytes());
        let topic = match p.properties.topic_alias {
            Some(alias) => {
                assert!((1..=2).contains(&alias), "alias {alias} over the maximum");
                if p.topic.is_empty() {
                    alias_only += 1;
                    aliases.get(&alias).cloned().expect("alias set before use")
                } else {
                    aliases.insert(alias, p.topic.clone());
                    p.topic
                }
            }
            None => p.topic,
        };
        assert_eq!(&*topic, *want, "message {i}");
    }
    assert!(alias_only > 0, "the broker never used an alias");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_with_topic_aliases_receives_resolved_topics() {
    let server = TestServer::start().await;
    let mut options = v5_options(&server, "ao-rum");
    options.set_topic_alias_max(Some(4));
    let (mut sub, _) = v5_connect(options).await;
    sub.subscribe("aor/#", QoS::AtLeastOnce).await;
    let mut publisher = v5(&server, "ao-rum-pub").await;
    for t in ["aor/1", "aor/1", "aor/2", "aor/1"] {
        publisher
            .publish(t, QoS::AtLeastOnce, false, t.as_bytes())
            .await;
    }
    for t in ["aor/1", "aor/1", "aor/2", "aor/1"] {
        let p = sub.recv().await;
        assert_eq!(&p.payload[..], t.as_bytes());
        if !p.topic.is_empty() {
            assert_eq!(&p.topic[..], t.as_bytes());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_local_suppresses_own_messages() {
    let server = TestServer::start().await;
    let mut me = v5(&server, "nl-me").await;
    me.subscribe_filter(
        filter(
            "nl/t",
            QoS::AtLeastOnce,
            RetainForwardRule::OnEverySubscribe,
            false,
            true,
        ),
        None,
    )
    .await;
    let mut echo = v5(&server, "nl-echo").await;
    echo.subscribe("nl/t", QoS::AtLeastOnce).await;

    me.publish("nl/t", QoS::AtLeastOnce, false, b"mine").await;
    echo.publish("nl/t", QoS::AtLeastOnce, false, b"theirs")
        .await;

    assert_eq!(&me.recv().await.payload[..], b"theirs");
    me.expect_no_publish(QUIET).await;
    // Without No Local a client gets its own messages.
    let got: Vec<_> = echo
        .recv_n(2)
        .await
        .into_iter()
        .map(|p| p.payload.to_vec())
        .collect();
    assert_eq!(got, vec![b"mine".to_vec(), b"theirs".to_vec()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_identifiers_are_delivered() {
    let server = TestServer::start().await;
    let mut sub = v5(&server, "sid-sub").await;
    let props = |id| SubscribeProperties {
        id: Some(id),
        user_properties: vec![],
    };
    sub.subscribe_filter(Filter::new("sid/a", QoS::AtLeastOnce), Some(props(7)))
        .await;
    sub.subscribe_filter(Filter::new("sid/#", QoS::AtLeastOnce), Some(props(300)))
        .await;
    sub.subscribe("sid/none", QoS::AtLeastOnce).await;

    let mut publisher = v5(&server, "sid-pub").await;
    publisher
        .publish("sid/a", QoS::AtLeastOnce, false, b"both")
        .await;
    publisher
        .publish("sid/b", QoS::AtLeastOnce, false, b"one")
        .await;

    let ids = |p: common::v5t::Publish| {
        let mut ids = p
            .properties
            .map(|p| p.subscription_identifiers)
            .unwrap_or_default();
        ids.sort_unstable();
        ids
    };
    let p = sub.recv().await;
    assert_eq!(&p.payload[..], b"both");
    assert_eq!(
        ids(p),
        vec![7, 300],
        "one delivery carrying both identifiers"
    );
    let p = sub.recv().await;
    assert_eq!(ids(p), vec![300]);
    sub.expect_no_publish(QUIET).await;

    // Retained messages sent on subscribe carry the identifier too.
    publisher
        .publish("sidr/t", QoS::AtLeastOnce, true, b"kept")
        .await;
    sub.subscribe_filter(Filter::new("sidr/t", QoS::AtLeastOnce), Some(props(42)))
        .await;
    let p = sub.recv().await;
    assert!(p.retain);
    assert_eq!(ids(p), vec![42]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_properties_are_passed_through() {
    let server = TestServer::start().await;
    let mut sub = v5(&server, "pp-sub").await;
    sub.subscribe("pp/t", QoS::ExactlyOnce).await;
    let mut v4sub = v4(&server, "pp-sub-v4").await;
    v4sub.subscribe("pp/t", rumqttc::QoS::AtLeastOnce).await;

    let sent = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: None,
        topic_alias: None,
        response_topic: Some("pp/reply".to_owned()),
        correlation_data: Some(Bytes::from_static(b"\x00corr\xff")),
        user_properties: vec![
            ("k".to_owned(), "v".to_owned()),
            ("k".to_owned(), "v2".to_owned()),
            ("a".to_owned(), "b".to_owned()),
        ],
        subscription_identifiers: vec![],
        content_type: Some("application/json".to_owned()),
    };
    let mut publisher = v5(&server, "pp-pub").await;
    for q in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        publisher
            .publish_with("pp/t", q, false, br#"{"ok":true}"#, Some(sent.clone()))
            .await;
        let p = sub.recv().await;
        assert_eq!(&p.payload[..], br#"{"ok":true}"#);
        assert_eq!(p.properties.as_ref(), Some(&sent), "qos {q:?}");
        // A 3.1.1 subscriber gets the payload without properties.
        assert_eq!(&v4sub.recv().await.payload[..], br#"{"ok":true}"#);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_payload_with_format_indicator_is_refused() {
    let server = TestServer::start().await;
    let (mut raw, _) = Raw::v5(&server, "pfi", true, Properties::default()).await;
    let mut p = publish_packet("pfi/t", mqtt::QoS::AtLeastOnce, 3, b"\xff\xfe");
    p.properties.payload_format_indicator = Some(1);
    raw.publish(p).await;
    match raw.recv().await {
        Packet::PubAck(a) => assert_eq!((a.packet_id, a.reason_code), (3, 0x99)),
        other => panic!("expected PUBACK 0x99, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_maximum_packet_size_drops_oversized_messages() {
    let server = TestServer::start().await;
    let mut options = v5_options(&server, "mps-sub");
    options.set_max_packet_size(Some(256));
    let (mut sub, _) = v5_connect(options).await;
    sub.subscribe("mps/t", QoS::AtLeastOnce).await;

    let before = server.metric("halyard_messages_dropped_total{reason=\"packet_too_large\"}");
    let mut publisher = v5(&server, "mps-pub").await;
    publisher
        .publish("mps/t", QoS::AtLeastOnce, false, &[b'x'; 1000])
        .await;
    publisher
        .publish("mps/t", QoS::AtLeastOnce, false, b"small")
        .await;

    let p = sub.recv().await;
    assert_eq!(&p.payload[..], b"small", "the large message is skipped");
    assert!(!sub.is_closed());
    let after = server.metric("halyard_messages_dropped_total{reason=\"packet_too_large\"}");
    assert_eq!(after - before, 1.0);

    // Still connected and subscribed.
    publisher
        .publish("mps/t", QoS::AtLeastOnce, false, b"again")
        .await;
    assert_eq!(&sub.recv().await.payload[..], b"again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packet_over_broker_maximum_gets_disconnect_0x95() {
    let server = TestServer::start_with(|c| {
        c.mqtt.max_packet_size = 1024;
        c.mqtt.max_payload_size = 256;
    })
    .await;
    let (mut raw, ack) = Raw::v5(&server, "big", true, Properties::default()).await;
    assert_eq!(ack.properties.maximum_packet_size, Some(1024));
    raw.publish(publish_packet(
        "big/t",
        mqtt::QoS::AtLeastOnce,
        1,
        &[0u8; 2000],
    ))
    .await;
    let sent = raw.expect_closed().await;
    assert!(
        matches!(&sent[..], [Packet::Disconnect(d)] if d.reason_code == 0x95),
        "expected DISCONNECT 0x95, got {sent:?}"
    );
    assert_broker_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_in_publish_topic_is_refused_with_0x90() {
    let server = TestServer::start().await;
    let (mut raw, _) = Raw::v5(&server, "wild-pub5", true, Properties::default()).await;
    raw.publish(publish_packet("a/#", mqtt::QoS::AtLeastOnce, 9, b"x"))
        .await;
    match raw.recv().await {
        Packet::PubAck(a) => {
            assert_eq!((a.packet_id, a.reason_code), (9, 0x90));
            // The connection survives a refused QoS 1 publish.
            raw.send(&Packet::PingReq).await;
            assert_eq!(raw.recv().await, Packet::PingResp);
        }
        Packet::Disconnect(d) => {
            assert_eq!(d.reason_code, 0x90);
            raw.expect_closed().await;
        }
        other => panic!("expected PUBACK or DISCONNECT 0x90, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_filter_gets_0x8f() {
    let server = TestServer::start().await;
    let (mut raw, _) = Raw::v5(&server, "bad-sub5", true, Properties::default()).await;
    let ack = raw
        .subscribe(
            3,
            "a/#/b",
            SubscriptionOptions {
                qos: mqtt::QoS::AtLeastOnce,
                ..SubscriptionOptions::default()
            },
            Properties::default(),
        )
        .await;
    assert_eq!(ack.reason_codes, vec![0x8F]);
    let ack = raw.subscribe_qos(4, "a/+/b", mqtt::QoS::ExactlyOnce).await;
    assert_eq!(ack.reason_codes, vec![0x02]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_v5_clients_server_shutting_down() {
    let server = TestServer::start().await;
    let mut client = v5(&server, "sd-rum").await;
    let (mut raw, _) = Raw::v5(&server, "sd-raw", true, Properties::default()).await;
    let mut old = v4(&server, "sd-v4").await;
    within("graceful shutdown", server.shutdown()).await;

    let err = client.closed().await;
    assert_eq!(
        server_disconnect(&err),
        Some(DisconnectReasonCode::ServerShuttingDown),
        "{err:?}"
    );
    let sent = raw.expect_closed().await;
    assert!(
        matches!(&sent[..], [Packet::Disconnect(d)] if d.reason_code == 0x8B),
        "expected DISCONNECT 0x8B, got {sent:?}"
    );
    old.closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puback_reason_is_success_with_a_subscriber() {
    let server = TestServer::start().await;
    let mut sub = v5(&server, "ack-sub").await;
    sub.subscribe("ack/t", QoS::AtLeastOnce).await;
    let mut publisher = v5(&server, "ack-pub").await;
    publisher
        .client
        .publish("ack/t", QoS::AtLeastOnce, false, Bytes::from_static(b"x"))
        .await
        .expect("queued");
    let reason = publisher
        .wait_for("PUBACK", |p| match p {
            P5::PubAck(a) => Some(a.reason),
            _ => None,
        })
        .await;
    assert_eq!(reason, PubAckReason::Success);
    sub.recv().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_publishing_to_its_own_subscription_is_not_stalled() {
    // A small queue and a small Receive Maximum: the client's own
    // subscription congests while it keeps publishing to it. It reads and
    // acknowledges everything, so the broker must keep going (the burst stays
    // within the hard bound of a connected session's queue, 4 x the limit).
    let server = TestServer::start_with(|c| {
        c.mqtt.max_queued_messages = 4;
        c.mqtt.slow_subscriber_timeout = 60;
    })
    .await;
    let (mut raw, _) = Raw::v5(
        &server,
        "echo",
        true,
        Properties {
            receive_maximum: Some(2),
            ..Properties::default()
        },
    )
    .await;
    raw.subscribe_qos(1, "echo/t", mqtt::QoS::AtLeastOnce).await;
    const N: u16 = 12;
    let mut burst = bytes::BytesMut::new();
    let mut encoder = mqtt::Encoder::new();
    for i in 1..=N {
        let p = publish_packet("echo/t", mqtt::QoS::AtLeastOnce, i, &i.to_be_bytes());
        encoder
            .encode(&Packet::Publish(p), mqtt::ProtocolVersion::V5, &mut burst)
            .expect("encode");
    }
    raw.send_bytes(&burst).await;

    let mut acked = BTreeSet::new();
    let mut received = Vec::new();
    while acked.len() < usize::from(N) || received.len() < usize::from(N) {
        match raw.recv().await {
            Packet::PubAck(a) => assert!(acked.insert(a.packet_id)),
            Packet::Publish(p) => {
                received.push(u16::from_be_bytes([p.payload[0], p.payload[1]]));
                raw.puback(p.packet_id).await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(received, (1..=N).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_publishing_to_each_other_drain_each_other() {
    // Each client's queue congests with the other's messages, so each
    // publisher is paused on the other; acknowledgements must still be read
    // while paused, or both wait for the slow-subscriber timeout.
    let server = TestServer::start_with(|c| {
        c.mqtt.max_queued_messages = 4;
        c.mqtt.slow_subscriber_timeout = 60;
    })
    .await;
    let small_window = Properties {
        receive_maximum: Some(2),
        ..Properties::default()
    };
    let (mut a, _) = Raw::v5(&server, "ping", true, small_window.clone()).await;
    let (mut b, _) = Raw::v5(&server, "pong", true, small_window).await;
    a.subscribe_qos(1, "to/ping", mqtt::QoS::AtLeastOnce).await;
    b.subscribe_qos(1, "to/pong", mqtt::QoS::AtLeastOnce).await;
    const N: u16 = 12;
    let burst = |topic: &str| {
        let mut out = bytes::BytesMut::new();
        let mut encoder = mqtt::Encoder::new();
        for i in 1..=N {
            let p = publish_packet(topic, mqtt::QoS::AtLeastOnce, i, &i.to_be_bytes());
            encoder
                .encode(&Packet::Publish(p), mqtt::ProtocolVersion::V5, &mut out)
                .expect("encode");
        }
        out
    };
    a.send_bytes(&burst("to/pong")).await;
    b.send_bytes(&burst("to/ping")).await;

    async fn drain(raw: &mut Raw) -> (usize, Vec<u16>) {
        let (mut acked, mut received) = (0, Vec::new());
        while acked < usize::from(N) || received.len() < usize::from(N) {
            match raw.recv().await {
                Packet::PubAck(_) => acked += 1,
                Packet::Publish(p) => {
                    received.push(u16::from_be_bytes([p.payload[0], p.payload[1]]));
                    raw.puback(p.packet_id).await;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        (acked, received)
    }
    let (ra, rb) = within("both drained", async {
        tokio::join!(drain(&mut a), drain(&mut b))
    })
    .await;
    let expected: Vec<u16> = (1..=N).collect();
    assert_eq!(ra, (usize::from(N), expected.clone()));
    assert_eq!(rb, (usize::from(N), expected));
    assert_eq!(
        server.metric("halyard_messages_dropped_total{reason=\"queue_full\"}"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery() {
    let server = TestServer::start().await;
    let (mut raw, _) = Raw::v5(&server, "unsub5", true, Properties::default()).await;
    raw.subscribe_qos(1, "unsub/t", mqtt::QoS::AtLeastOnce)
        .await;
    let unsubscribe = |packet_id| {
        Packet::Unsubscribe(mqtt::Unsubscribe {
            packet_id,
            filters: vec!["unsub/t".to_owned()],
            properties: Properties::default(),
        })
    };
    raw.send(&unsubscribe(2)).await;
    match raw.recv().await {
        Packet::UnsubAck(a) => assert_eq!((a.packet_id, a.reason_codes), (2, vec![0x00])),
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    raw.send(&unsubscribe(3)).await;
    match raw.recv().await {
        Packet::UnsubAck(a) => assert_eq!((a.packet_id, a.reason_codes), (3, vec![0x11])),
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    let mut publisher = v5(&server, "unsub-pub").await;
    publisher
        .publish("unsub/t", QoS::AtLeastOnce, false, b"x")
        .await;
    raw.expect_idle(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_carries_its_properties_and_retain_flag() {
    let server = TestServer::start().await;
    let mut watcher = v5(&server, "wp-watch").await;
    watcher.subscribe("wp/#", QoS::AtLeastOnce).await;

    let mut raw = Raw::open(&server).await;
    let mut connect = connect_packet(mqtt::ProtocolVersion::V5, "wp-dies", true, 30);
    let mut w = will(
        "wp/dies",
        b"{\"state\":\"lost\"}",
        mqtt::QoS::AtLeastOnce,
        Properties {
            content_type: Some("application/json".to_owned()),
            payload_format_indicator: Some(1),
            user_properties: vec![("why".to_owned(), "crash".to_owned())],
            message_expiry_interval: Some(100),
            ..Properties::default()
        },
    );
    w.retain = true;
    connect.will = Some(w);
    assert_eq!(raw.connect(connect).await.reason_code, 0);
    drop(raw);

    let p = watcher.recv().await;
    assert_eq!(&p.topic[..], b"wp/dies");
    assert!(!p.retain, "live delivery without Retain As Published");
    let props = p.properties.expect("will properties");
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    assert_eq!(props.payload_format_indicator, Some(1));
    assert_eq!(
        props.user_properties,
        vec![("why".to_owned(), "crash".to_owned())]
    );
    assert!(
        props
            .message_expiry_interval
            .is_some_and(|e| e > 0 && e <= 100)
    );

    // The will was retained.
    let mut late = v5(&server, "wp-late").await;
    late.subscribe("wp/dies", QoS::AtLeastOnce).await;
    let p = late.recv().await;
    assert!(p.retain);
    assert_eq!(&p.payload[..], b"{\"state\":\"lost\"}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_limits_are_announced_and_enforced() {
    let server = TestServer::start_with(|c| {
        c.mqtt.maximum_qos = 1;
        c.mqtt.retain_available = false;
        c.mqtt.max_session_expiry = 10;
        c.mqtt.receive_maximum = 5;
        c.mqtt.topic_alias_maximum = 3;
    })
    .await;
    let (mut raw, ack) = Raw::v5(&server, "limits", true, expiry_props(100)).await;
    let p = &ack.properties;
    assert_eq!(p.maximum_qos, Some(1));
    assert_eq!(p.retain_available, Some(0));
    assert_eq!(
        p.session_expiry_interval,
        Some(10),
        "expiry capped and announced"
    );
    assert_eq!(p.receive_maximum, Some(5));
    assert_eq!(p.topic_alias_maximum, Some(3));

    // QoS 2 subscriptions are granted QoS 1.
    let sub = raw.subscribe_qos(1, "lim/t", mqtt::QoS::ExactlyOnce).await;
    assert_eq!(sub.reason_codes, vec![0x01]);
    // A QoS 2 PUBLISH is refused.
    raw.publish(publish_packet("lim/t", mqtt::QoS::ExactlyOnce, 1, b"x"))
        .await;
    let sent = raw.expect_closed().await;
    assert!(
        matches!(&sent[..], [Packet::Disconnect(d)] if d.reason_code == 0x9B),
        "expected DISCONNECT 0x9B, got {sent:?}"
    );

    // So is a retained one.
    let (mut raw, _) = Raw::v5(&server, "limits2", true, Properties::default()).await;
    let mut p = publish_packet("lim/t", mqtt::QoS::AtLeastOnce, 1, b"x");
    p.retain = true;
    raw.publish(p).await;
    let sent = raw.expect_closed().await;
    assert!(
        matches!(&sent[..], [Packet::Disconnect(d)] if d.reason_code == 0x9A),
        "expected DISCONNECT 0x9A, got {sent:?}"
    );
    assert_broker_serves(&server).await;
}

fn expiry_props(secs: u32) -> Properties {
    Properties {
        session_expiry_interval: Some(secs),
        ..Properties::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_respects_the_client_maximum_packet_size() {
    // A DISCONNECT's Reason String must be left out rather than exceed the
    // client's Maximum Packet Size.
    let server = TestServer::start().await;
    let small = Properties {
        maximum_packet_size: Some(16),
        ..Properties::default()
    };
    let (mut old, _) = Raw::v5(&server, "tiny", true, small.clone()).await;
    let (_new, _) = Raw::v5(&server, "tiny", true, Properties::default()).await;
    let sent = old.expect_closed().await;
    assert!(
        matches!(&sent[..], [Packet::Disconnect(d)] if d.reason_code == 0x8E),
        "expected DISCONNECT 0x8E, got {sent:?}"
    );
    assert!(old.last_size <= 16, "DISCONNECT of {} bytes", old.last_size);

    // The same for a DISCONNECT caused by a malformed packet.
    let (mut raw, _) = Raw::v5(&server, "tiny2", true, small).await;
    raw.send_bytes(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]).await;
    let sent = raw.expect_closed().await;
    assert!(
        matches!(&sent[..], [Packet::Disconnect(d)] if d.reason_code == 0x81),
        "expected DISCONNECT 0x81, got {sent:?}"
    );
    assert!(raw.last_size <= 16, "DISCONNECT of {} bytes", raw.last_size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_depth_and_length_limits_spare_aws_reserved_topics() {
    let server = TestServer::start().await;
    let (mut raw, _) = Raw::v5(&server, "deep", true, Properties::default()).await;
    let deep = "a/b/c/d/e/f/g/h/i"; // 9 levels; the default limit is 8
    let ack = raw.subscribe_qos(1, deep, mqtt::QoS::AtLeastOnce).await;
    assert_eq!(ack.reason_codes, vec![0x8F]);
    raw.publish(publish_packet(deep, mqtt::QoS::AtLeastOnce, 2, b"x"))
        .await;
    match raw.recv().await {
        Packet::PubAck(a) => assert_eq!((a.packet_id, a.reason_code), (2, 0x90)),
        other => panic!("expected PUBACK 0x90, got {other:?}"),
    }
    let long = format!("t/{}", "x".repeat(300));
    raw.publish(publish_packet(&long, mqtt::QoS::AtLeastOnce, 3, b"x"))
        .await;
    match raw.recv().await {
        Packet::PubAck(a) => assert_eq!((a.packet_id, a.reason_code), (3, 0x90)),
        other => panic!("expected PUBACK 0x90, got {other:?}"),
    }

    // `$aws/` topics are exempt.
    let aws = "$aws/things/t1/shadow/name/s1/update/accepted/extra";
    let ack = raw.subscribe_qos(4, aws, mqtt::QoS::AtLeastOnce).await;
    assert_eq!(ack.reason_codes, vec![0x01]);
    raw.publish(publish_packet(aws, mqtt::QoS::AtLeastOnce, 5, b"shadow"))
        .await;
    let mut puback = None;
    let mut delivered = None;
    for _ in 0..2 {
        match raw.recv().await {
            Packet::PubAck(a) => puback = Some((a.packet_id, a.reason_code)),
            Packet::Publish(p) => delivered = Some(p.topic),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(puback, Some((5, 0x00)));
    assert_eq!(delivered.as_deref(), Some(aws));
}
