//! Packet decoder: bytes from a peer to [`Packet`]s.

use bytes::{Bytes, BytesMut};

use super::wire::Reader;
use super::*;

/// Takes one whole packet off the front of `buf`.
///
/// Returns `Ok(None)` while the packet is incomplete. A packet whose declared
/// size exceeds `max_packet_size` is refused from its header alone, before
/// anything is buffered for it. `version` selects the 3.1.1 or 5.0 layout of
/// every packet but CONNECT, which declares its own.
pub fn decode_packet(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some((header_len, remaining)) = fixed_header(buf)? else {
        return Ok(None);
    };
    let total = header_len + remaining;
    if total > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size: total,
            max: max_packet_size,
        });
    }
    if buf.len() < total {
        return Ok(None);
    }
    let first = buf[0];
    let mut frame = buf.split_to(total).freeze();
    let body = frame.split_off(header_len);
    decode_body(first >> 4, first & 0x0F, body, version).map(Some)
}

/// Parses the fixed header: its length and the remaining length it declares.
fn fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut remaining: usize = 0;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((2 + i, remaining)));
        }
    }
    Err(DecodeError::MalformedRemainingLength)
}

fn decode_body(
    kind: u8,
    flags: u8,
    body: Bytes,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    let mut r = Reader::new(body);
    let expect_flags = |expected: u8| {
        if flags == expected {
            Ok(())
        } else {
            Err(DecodeError::InvalidFlags(kind))
        }
    };
    let v5 = version.is_v5();
    let packet = match kind {
        1 => {
            expect_flags(0)?;
            Packet::Connect(Box::new(connect(&mut r)?))
        }
        2 => {
            expect_flags(0)?;
            Packet::ConnAck(connack(&mut r, v5)?)
        }
        3 => Packet::Publish(publish(&mut r, flags, v5)?),
        4 => {
            expect_flags(0)?;
            Packet::PubAck(ack(&mut r, v5)?)
        }
        5 => {
            expect_flags(0)?;
            Packet::PubRec(ack(&mut r, v5)?)
        }
        6 => {
            expect_flags(0b0010)?;
            Packet::PubRel(ack(&mut r, v5)?)
        }
        7 => {
            expect_flags(0)?;
            Packet::PubComp(ack(&mut r, v5)?)
        }
        8 => {
            expect_flags(0b0010)?;
            Packet::Subscribe(subscribe(&mut r, v5)?)
        }
        9 => {
            expect_flags(0)?;
            Packet::SubAck(suback(&mut r, v5)?)
        }
        10 => {
            expect_flags(0b0010)?;
            Packet::Unsubscribe(unsubscribe(&mut r, v5)?)
        }
        11 => {
            expect_flags(0)?;
            Packet::UnsubAck(unsuback(&mut r, v5)?)
        }
        12 => {
            expect_flags(0)?;
            Packet::PingReq
        }
        13 => {
            expect_flags(0)?;
            Packet::PingResp
        }
        14 => {
            expect_flags(0)?;
            let (reason_code, properties) =
                reason_and_properties(&mut r, v5, PropertyContext::Disconnect)?;
            Packet::Disconnect(Disconnect {
                reason_code,
                properties,
            })
        }
        15 => {
            if !v5 {
                return Err(DecodeError::AuthInV311);
            }
            expect_flags(0)?;
            let (reason_code, properties) =
                reason_and_properties(&mut r, v5, PropertyContext::Auth)?;
            Packet::Auth(Auth {
                reason_code,
                properties,
            })
        }
        other => return Err(DecodeError::InvalidPacketType(other)),
    };
    if !r.is_empty() {
        return Err(DecodeError::TrailingBytes);
    }
    Ok(packet)
}

fn packet_id(r: &mut Reader) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::ZeroPacketId),
        id => Ok(id),
    }
}

fn read_properties(
    r: &mut Reader,
    v5: bool,
    ctx: PropertyContext,
) -> Result<Properties, DecodeError> {
    if v5 {
        Properties::decode(r, ctx)
    } else {
        Ok(Properties::default())
    }
}

fn connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    let protocol = match (&name[..], level) {
        (b"MQTT", 4) => ProtocolVersion::V311,
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQTT", other) | (b"MQIsdp", other) => {
            return Err(DecodeError::UnsupportedProtocolVersion(other));
        }
        _ => return Err(DecodeError::InvalidProtocolName),
    };
    let v5 = protocol.is_v5();
    let flags = r.u8()?;
    let reserved = flags & 0x01 != 0;
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos_bits = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    if reserved || (!will_flag && (will_qos_bits != 0 || will_retain)) {
        return Err(DecodeError::InvalidConnectFlags);
    }
    if !v5 && has_password && !has_username {
        return Err(DecodeError::InvalidConnectFlags);
    }
    let will_qos = QoS::from_u8(will_qos_bits).ok_or(DecodeError::InvalidQoS(will_qos_bits))?;
    let keep_alive = r.u16()?;
    let properties = read_properties(r, v5, PropertyContext::Connect)?;
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = read_properties(r, v5, PropertyContext::Will)?;
        let topic = r.string()?;
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string()?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary()?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn connack(r: &mut Reader, v5: bool) -> Result<ConnAck, DecodeError> {
    let ack_flags = r.u8()?;
    if ack_flags & 0xFE != 0 {
        return Err(DecodeError::InvalidFlags(2));
    }
    let reason_code = r.u8()?;
    let properties = read_properties(r, v5, PropertyContext::ConnAck)?;
    Ok(ConnAck {
        session_present: ack_flags & 0x01 != 0,
        reason_code,
        properties,
    })
}

fn publish(r: &mut Reader, flags: u8, v5: bool) -> Result<Publish, DecodeError> {
    let dup = flags & 0x08 != 0;
    let qos_bits = (flags >> 1) & 0x03;
    let qos = QoS::from_u8(qos_bits).ok_or(DecodeError::InvalidQoS(qos_bits))?;
    let retain = flags & 0x01 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::InvalidFlags(3));
    }
    let topic = r.shared_string()?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        packet_id(r)?
    };
    let properties = read_properties(r, v5, PropertyContext::Publish)?;
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        payload: r.rest(),
        properties,
    })
}

fn ack(r: &mut Reader, v5: bool) -> Result<Ack, DecodeError> {
    let packet_id = packet_id(r)?;
    let (reason_code, properties) = reason_and_properties(r, v5, PropertyContext::Ack)?;
    Ok(Ack {
        packet_id,
        reason_code,
        properties,
    })
}

/// The v5 tail shared by acks, DISCONNECT and AUTH: both parts may be omitted.
fn reason_and_properties(
    r: &mut Reader,
    v5: bool,
    ctx: PropertyContext,
) -> Result<(u8, Properties), DecodeError> {
    if !v5 || r.is_empty() {
        return Ok((reason::SUCCESS, Properties::default()));
    }
    let code = r.u8()?;
    let props = if r.is_empty() {
        Properties::default()
    } else {
        Properties::decode(r, ctx)?
    };
    Ok((code, props))
}

fn subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = read_properties(r, v5, PropertyContext::Subscribe)?;
    let mut subscriptions = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        let byte = r.u8()?;
        let reserved = if v5 { byte & 0xC0 } else { byte & 0xFC };
        if reserved != 0 {
            return Err(DecodeError::InvalidSubscriptionOptions);
        }
        let qos = QoS::from_u8(byte & 0x03).ok_or(DecodeError::InvalidQoS(byte & 0x03))?;
        let retain_handling = match (byte >> 4) & 0x03 {
            0 => RetainHandling::SendOnSubscribe,
            1 => RetainHandling::SendIfNewSubscription,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::InvalidSubscriptionOptions),
        };
        subscriptions.push(TopicSubscription {
            filter,
            options: SubscriptionOptions {
                qos,
                no_local: byte & 0x04 != 0,
                retain_as_published: byte & 0x08 != 0,
                retain_handling,
            },
        });
    }
    if subscriptions.is_empty() {
        return Err(DecodeError::NoTopicFilter);
    }
    Ok(Subscribe {
        packet_id,
        subscriptions,
        properties,
    })
}

fn suback(r: &mut Reader, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = read_properties(r, v5, PropertyContext::SubAck)?;
    let reason_codes = r.rest().to_vec();
    Ok(SubAck {
        packet_id,
        reason_codes,
        properties,
    })
}

fn unsubscribe(r: &mut Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = read_properties(r, v5, PropertyContext::Unsubscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string()?);
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilter);
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn unsuback(r: &mut Reader, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = read_properties(r, v5, PropertyContext::UnsubAck)?;
    let reason_codes = if v5 { r.rest().to_vec() } else { Vec::new() };
    Ok(UnsubAck {
        packet_id,
        reason_codes,
        properties,
    })
}
