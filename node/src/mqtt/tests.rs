//! Codec tests: round trips of generated packets, malformed input, bounds.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

const MAX: usize = 1 << 20;

fn encode(packet: &Packet, version: ProtocolVersion) -> BytesMut {
    let mut out = BytesMut::new();
    Encoder::new()
        .encode(packet, version, &mut out)
        .expect("generated packets encode");
    out
}

fn decode_all(bytes: &[u8], version: ProtocolVersion) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    decode_packet(&mut buf, version, MAX)
}

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9/ _\\-\u{e9}\u{4e2d}]{0,24}"
}

fn topic_name() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,4}"
}

fn binary() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..32).prop_map(Bytes::from)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn user_properties() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec((text(), text()), 0..3)
}

/// Properties valid in `ctx`, or none at all for MQTT 3.1.1.
fn properties(ctx: PropertyContext, v5: bool) -> BoxedStrategy<Properties> {
    if !v5 {
        return Just(Properties::default()).boxed();
    }
    let common = (user_properties(), proptest::option::of(text()));
    match ctx {
        PropertyContext::Publish | PropertyContext::Will => (
            common,
            proptest::option::of(0u8..=1),
            proptest::option::of(any::<u32>()),
            proptest::option::of(text()),
            proptest::option::of(topic_name()),
            proptest::option::of(binary()),
            proptest::collection::vec(1u32..=268_435_455, 0..3),
            proptest::option::of(1u16..=u16::MAX),
            proptest::option::of(any::<u32>()),
        )
            .prop_map(
                move |((user, _), pfi, expiry, ct, rt, cd, sub_ids, alias, delay)| {
                    let publish = ctx == PropertyContext::Publish;
                    Properties {
                        user_properties: user,
                        payload_format_indicator: pfi,
                        message_expiry_interval: expiry,
                        content_type: ct,
                        response_topic: rt,
                        correlation_data: cd,
                        subscription_identifiers: if publish { sub_ids } else { Vec::new() },
                        topic_alias: if publish { alias } else { None },
                        will_delay_interval: if publish { None } else { delay },
                        ..Properties::default()
                    }
                },
            )
            .boxed(),
        PropertyContext::Connect => (
            user_properties(),
            proptest::option::of(any::<u32>()),
            proptest::option::of(1u16..=u16::MAX),
            proptest::option::of(any::<u16>()),
            proptest::option::of(1u32..=u32::MAX),
            proptest::option::of(0u8..=1),
            proptest::option::of(text()),
            proptest::option::of(binary()),
        )
            .prop_map(|(user, sei, rm, tam, mps, rpi, am, ad)| Properties {
                user_properties: user,
                session_expiry_interval: sei,
                receive_maximum: rm,
                topic_alias_maximum: tam,
                maximum_packet_size: mps,
                request_problem_information: rpi,
                authentication_method: am,
                authentication_data: ad,
                ..Properties::default()
            })
            .boxed(),
        PropertyContext::ConnAck => (
            common,
            proptest::option::of(text()),
            proptest::option::of(any::<u16>()),
            proptest::option::of(0u8..=1),
            proptest::option::of(1u16..=u16::MAX),
            proptest::option::of(0u8..=1),
            proptest::option::of(text()),
        )
            .prop_map(|((user, rs), aci, ska, mq, rm, ra, ri)| Properties {
                user_properties: user,
                reason_string: rs,
                assigned_client_identifier: aci,
                server_keep_alive: ska,
                maximum_qos: mq,
                receive_maximum: rm,
                retain_available: ra,
                response_information: ri,
                shared_subscription_available: Some(1),
                ..Properties::default()
            })
            .boxed(),
        PropertyContext::Subscribe => (user_properties(), proptest::option::of(1u32..=268_435_455))
            .prop_map(|(user, id)| Properties {
                user_properties: user,
                subscription_identifiers: id.into_iter().collect(),
                ..Properties::default()
            })
            .boxed(),
        PropertyContext::Unsubscribe => user_properties()
            .prop_map(|user| Properties {
                user_properties: user,
                ..Properties::default()
            })
            .boxed(),
        PropertyContext::Disconnect => (common, proptest::option::of(any::<u32>()))
            .prop_map(|((user, rs), sei)| Properties {
                user_properties: user,
                reason_string: rs,
                session_expiry_interval: sei,
                ..Properties::default()
            })
            .boxed(),
        PropertyContext::Auth => (
            common,
            proptest::option::of(text()),
            proptest::option::of(binary()),
        )
            .prop_map(|((user, rs), am, ad)| Properties {
                user_properties: user,
                reason_string: rs,
                authentication_method: am,
                authentication_data: ad,
                ..Properties::default()
            })
            .boxed(),
        PropertyContext::Ack | PropertyContext::SubAck | PropertyContext::UnsubAck => common
            .prop_map(|(user, rs)| Properties {
                user_properties: user,
                reason_string: rs,
                ..Properties::default()
            })
            .boxed(),
    }
}

fn ack(v5: bool) -> BoxedStrategy<Ack> {
    let code = if v5 {
        prop_oneof![Just(0u8), Just(0x10), Just(0x80), Just(0x92)].boxed()
    } else {
        Just(0u8).boxed()
    };
    (packet_id(), code, properties(PropertyContext::Ack, v5))
        .prop_map(|(packet_id, reason_code, properties)| Ack {
            packet_id,
            reason_code,
            properties,
        })
        .boxed()
}

fn connect(v5: bool) -> BoxedStrategy<Packet> {
    let protocol = if v5 {
        ProtocolVersion::V5
    } else {
        ProtocolVersion::V311
    };
    let will = (
        topic_name(),
        binary(),
        qos(),
        any::<bool>(),
        properties(PropertyContext::Will, v5),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        });
    (
        any::<bool>(),
        any::<u16>(),
        "[a-zA-Z0-9]{0,23}",
        proptest::option::of(will),
        proptest::option::of(text()),
        proptest::option::of(binary()),
        properties(PropertyContext::Connect, v5),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                // 3.1.1 allows a password only with a user name.
                let username = if !v5 && password.is_some() {
                    username.or_else(|| Some("user".to_owned()))
                } else {
                    username
                };
                Packet::Connect(Box::new(Connect {
                    protocol,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
        .boxed()
}

fn packet(v5: bool) -> BoxedStrategy<Packet> {
    let publish = (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        packet_id(),
        proptest::collection::vec(any::<u8>(), 0..300),
        properties(PropertyContext::Publish, v5),
    )
        .prop_map(|(qos, dup, retain, topic, id, payload, properties)| {
            let at_most_once = qos == QoS::AtMostOnce;
            Packet::Publish(Publish {
                dup: dup && !at_most_once,
                qos,
                retain,
                topic: topic.into(),
                packet_id: if at_most_once { 0 } else { id },
                payload: Bytes::from(payload),
                properties,
            })
        });
    let options =
        (qos(), any::<bool>(), any::<bool>(), 0u8..3).prop_map(move |(qos, nl, rap, rh)| {
            if v5 {
                SubscriptionOptions {
                    qos,
                    no_local: nl,
                    retain_as_published: rap,
                    retain_handling: match rh {
                        0 => RetainHandling::SendOnSubscribe,
                        1 => RetainHandling::SendIfNewSubscription,
                        _ => RetainHandling::DoNotSend,
                    },
                }
            } else {
                SubscriptionOptions {
                    qos,
                    ..Default::default()
                }
            }
        });
    let subscribe = (
        packet_id(),
        proptest::collection::vec((topic_name(), options), 1..4),
        properties(PropertyContext::Subscribe, v5),
    )
        .prop_map(|(packet_id, subs, properties)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                subscriptions: subs
                    .into_iter()
                    .map(|(filter, options)| TopicSubscription { filter, options })
                    .collect(),
                properties,
            })
        });
    let suback = (
        packet_id(),
        proptest::collection::vec(prop_oneof![Just(0u8), Just(1), Just(2), Just(0x80)], 1..4),
        properties(PropertyContext::SubAck, v5),
    )
        .prop_map(|(packet_id, reason_codes, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                reason_codes,
                properties,
            })
        });
    let unsubscribe = (
        packet_id(),
        proptest::collection::vec(topic_name(), 1..4),
        properties(PropertyContext::Unsubscribe, v5),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties,
            })
        });
    let unsuback = (
        packet_id(),
        proptest::collection::vec(prop_oneof![Just(0u8), Just(0x11)], 1..4),
        properties(PropertyContext::UnsubAck, v5),
    )
        .prop_map(move |(packet_id, codes, properties)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                reason_codes: if v5 { codes } else { Vec::new() },
                properties,
            })
        });
    let connack_code = if v5 {
        prop_oneof![Just(0u8), Just(0x85), Just(0x87)].boxed()
    } else {
        Just(0u8).boxed()
    };
    let connack = (
        any::<bool>(),
        connack_code,
        properties(PropertyContext::ConnAck, v5),
    )
        .prop_map(|(session_present, reason_code, properties)| {
            Packet::ConnAck(ConnAck {
                session_present,
                reason_code,
                properties,
            })
        });
    let disconnect_code = if v5 {
        prop_oneof![Just(0u8), Just(0x04), Just(0x8E)].boxed()
    } else {
        Just(0u8).boxed()
    };
    let disconnect = (disconnect_code, properties(PropertyContext::Disconnect, v5)).prop_map(
        |(reason_code, properties)| {
            Packet::Disconnect(Disconnect {
                reason_code,
                properties,
            })
        },
    );
    let mut choices = vec![
        connect(v5),
        connack.boxed(),
        publish.boxed(),
        ack(v5).prop_map(Packet::PubAck).boxed(),
        ack(v5).prop_map(Packet::PubRec).boxed(),
        ack(v5).prop_map(Packet::PubRel).boxed(),
        ack(v5).prop_map(Packet::PubComp).boxed(),
        subscribe.boxed(),
        suback.boxed(),
        unsubscribe.boxed(),
        unsuback.boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        disconnect.boxed(),
    ];
    if v5 {
        choices.push(
            (
                prop_oneof![Just(0u8), Just(0x18)],
                properties(PropertyContext::Auth, true),
            )
                .prop_map(|(reason_code, properties)| {
                    Packet::Auth(Auth {
                        reason_code,
                        properties,
                    })
                })
                .boxed(),
        );
    }
    proptest::strategy::Union::new(choices).boxed()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn v5_packets_round_trip(packet in packet(true)) {
        let bytes = encode(&packet, ProtocolVersion::V5);
        prop_assert_eq!(decode_all(&bytes, ProtocolVersion::V5), Ok(Some(packet)));
    }

    #[test]
    fn v311_packets_round_trip(packet in packet(false)) {
        let bytes = encode(&packet, ProtocolVersion::V311);
        prop_assert_eq!(decode_all(&bytes, ProtocolVersion::V311), Ok(Some(packet)));
    }

    #[test]
    fn every_prefix_is_incomplete(packet in packet(true)) {
        let bytes = encode(&packet, ProtocolVersion::V5);
        for cut in 0..bytes.len() {
            prop_assert_eq!(decode_all(&bytes[..cut], ProtocolVersion::V5), Ok(None));
        }
    }

    #[test]
    fn packets_decode_back_to_back(a in packet(true), b in packet(true)) {
        let mut buf = encode(&a, ProtocolVersion::V5);
        buf.extend_from_slice(&encode(&b, ProtocolVersion::V5));
        prop_assert_eq!(decode_packet(&mut buf, ProtocolVersion::V5, MAX), Ok(Some(a)));
        prop_assert_eq!(decode_packet(&mut buf, ProtocolVersion::V5, MAX), Ok(Some(b)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            let mut buf = BytesMut::from(&bytes[..]);
            // Decode until the input is used up or refused.
            while let Ok(Some(_)) = decode_packet(&mut buf, version, 1024) {}
        }
    }

    #[test]
    fn corrupted_packets_never_panic(packet in packet(true), index in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = encode(&packet, ProtocolVersion::V5).to_vec();
        let i = index.index(bytes.len());
        bytes[i] = byte;
        let _ = decode_all(&bytes, ProtocolVersion::V5);
    }
}

#[test]
fn five_byte_remaining_length_is_malformed() {
    let err = decode_all(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], ProtocolVersion::V5).unwrap_err();
    assert_eq!(err, DecodeError::MalformedRemainingLength);
    assert_eq!(err.reason_code(), reason::MALFORMED_PACKET);
}

#[test]
fn oversized_packet_is_refused_from_its_header() {
    // Declares 2 MB but carries nothing: refused before any buffering.
    let err = decode_all(&[0x30, 0x80, 0x80, 0x80, 0x01], ProtocolVersion::V5).unwrap_err();
    assert!(matches!(err, DecodeError::PacketTooLarge { .. }));
    assert_eq!(err.reason_code(), reason::PACKET_TOO_LARGE);
}

#[test]
fn connect_errors_map_to_reason_codes() {
    // Protocol name "MQTX".
    let bad_name = [
        0x10, 0x0A, 0x00, 0x04, b'M', b'Q', b'T', b'X', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x00,
    ];
    assert_eq!(
        decode_all(&bad_name, ProtocolVersion::V311),
        Err(DecodeError::InvalidProtocolName)
    );
    // Level 7.
    let bad_level = [
        0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x07, 0x02, 0x00, 0x3C, 0x00, 0x00,
    ];
    let err = decode_all(&bad_level[..14], ProtocolVersion::V311).unwrap_err();
    assert_eq!(err, DecodeError::UnsupportedProtocolVersion(7));
    assert_eq!(err.reason_code(), reason::UNSUPPORTED_PROTOCOL_VERSION);
    // Reserved flag bit set.
    let reserved = [
        0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x03, 0x00, 0x3C, 0x00, 0x00,
    ];
    assert_eq!(
        decode_all(&reserved[..14], ProtocolVersion::V311),
        Err(DecodeError::InvalidConnectFlags)
    );
}

#[test]
fn invalid_utf8_and_nul_in_strings_are_malformed() {
    // PUBLISH QoS 0, topic 0xFF 0xFE.
    let bad = [0x30, 0x04, 0x00, 0x02, 0xFF, 0xFE];
    assert_eq!(
        decode_all(&bad, ProtocolVersion::V311),
        Err(DecodeError::InvalidUtf8)
    );
    let nul = [0x30, 0x04, 0x00, 0x02, b'a', 0x00];
    assert_eq!(
        decode_all(&nul, ProtocolVersion::V311),
        Err(DecodeError::InvalidUtf8)
    );
}

#[test]
fn fixed_header_flags_are_checked() {
    // SUBSCRIBE with flags 0000 instead of 0010.
    let sub = [0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00];
    assert_eq!(
        decode_all(&sub, ProtocolVersion::V311),
        Err(DecodeError::InvalidFlags(8))
    );
    // PUBLISH QoS 3.
    let qos3 = [0x36, 0x03, 0x00, 0x01, b'a'];
    assert_eq!(
        decode_all(&qos3, ProtocolVersion::V311),
        Err(DecodeError::InvalidQoS(3))
    );
    // Reserved packet type 0.
    assert_eq!(
        decode_all(&[0x00, 0x00], ProtocolVersion::V5),
        Err(DecodeError::InvalidPacketType(0))
    );
    // AUTH in 3.1.1.
    assert_eq!(
        decode_all(&[0xF0, 0x00], ProtocolVersion::V311),
        Err(DecodeError::AuthInV311)
    );
}

#[test]
fn property_rules_are_enforced() {
    // v5 PUBLISH QoS 0 "a" with Topic Alias twice.
    let dup = [
        0x30, 0x0A, 0x00, 0x01, b'a', 0x06, 0x23, 0x00, 0x01, 0x23, 0x00, 0x02,
    ];
    assert_eq!(
        decode_all(&dup[..12], ProtocolVersion::V5),
        Err(DecodeError::DuplicateProperty(0x23))
    );
    // Session Expiry Interval is not allowed in PUBLISH.
    let not_allowed = [
        0x30, 0x09, 0x00, 0x01, b'a', 0x05, 0x11, 0x00, 0x00, 0x00, 0x01,
    ];
    assert_eq!(
        decode_all(&not_allowed, ProtocolVersion::V5),
        Err(DecodeError::PropertyNotAllowed(0x11))
    );
    // Unknown property 0x7F.
    let unknown = [0x30, 0x05, 0x00, 0x01, b'a', 0x01, 0x7F];
    assert_eq!(
        decode_all(&unknown, ProtocolVersion::V5),
        Err(DecodeError::UnknownProperty(0x7F))
    );
    // Topic Alias 0.
    let zero_alias = [0x30, 0x07, 0x00, 0x01, b'a', 0x03, 0x23, 0x00, 0x00];
    assert_eq!(
        decode_all(&zero_alias, ProtocolVersion::V5),
        Err(DecodeError::InvalidPropertyValue(0x23))
    );
}

#[test]
fn empty_subscribe_and_zero_packet_id_are_protocol_errors() {
    let empty = [0x82, 0x02, 0x00, 0x01];
    let err = decode_all(&empty, ProtocolVersion::V311).unwrap_err();
    assert_eq!(err, DecodeError::NoTopicFilter);
    assert_eq!(err.reason_code(), reason::PROTOCOL_ERROR);
    let zero = [0x40, 0x02, 0x00, 0x00];
    assert_eq!(
        decode_all(&zero, ProtocolVersion::V311),
        Err(DecodeError::ZeroPacketId)
    );
}

#[test]
fn publish_over_peer_maximum_is_not_written() {
    let mut out = BytesMut::new();
    let payload = [0u8; 100];
    let publish = PublishRef {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "a/b",
        packet_id: 0,
        payload: &payload,
        properties: None,
        message_expiry_interval: None,
        subscription_identifiers: &[],
        topic_alias: None,
    };
    let err = Encoder::new()
        .publish(&publish, ProtocolVersion::V5, 50, &mut out)
        .unwrap_err();
    assert!(matches!(
        err,
        EncodeError::ExceedsMaximumPacketSize { max: 50, .. }
    ));
    assert!(out.is_empty());
}

#[test]
fn v311_connack_uses_return_codes() {
    let packet = Packet::ConnAck(ConnAck {
        session_present: false,
        reason_code: reason::CLIENT_IDENTIFIER_NOT_VALID,
        properties: Properties::default(),
    });
    assert_eq!(
        &encode(&packet, ProtocolVersion::V311)[..],
        &[0x20, 0x02, 0x00, 0x02]
    );
}

#[test]
fn fast_acks_match_the_general_encoder() {
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        for (kind, code) in [
            (AckKind::PubAck, 0u8),
            (AckKind::PubAck, 0x10),
            (AckKind::PubRec, 0x90),
            (AckKind::PubRel, 0),
            (AckKind::PubComp, 0x92),
        ] {
            let ack = Ack::new(513, code);
            let packet = match kind {
                AckKind::PubAck => Packet::PubAck(ack),
                AckKind::PubRec => Packet::PubRec(ack),
                AckKind::PubRel => Packet::PubRel(ack),
                AckKind::PubComp => Packet::PubComp(ack),
            };
            let mut fast = BytesMut::new();
            Encoder::new().ack(kind, 513, code, version, &mut fast);
            let expected = if version.is_v5() || code == 0 {
                encode(&packet, version)
            } else {
                // 3.1.1 acknowledgements carry no reason code.
                encode(
                    &match packet {
                        Packet::PubAck(_) => Packet::PubAck(Ack::new(513, 0)),
                        Packet::PubRec(_) => Packet::PubRec(Ack::new(513, 0)),
                        Packet::PubRel(_) => Packet::PubRel(Ack::new(513, 0)),
                        _ => Packet::PubComp(Ack::new(513, 0)),
                    },
                    version,
                )
            };
            assert_eq!(fast, expected, "{kind:?} {code:#x} {version:?}");
        }
    }
}
