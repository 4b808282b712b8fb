//! Packet encoder: [`Packet`]s to bytes for a peer.

use std::cell::RefCell;

use bytes::{BufMut, BytesMut};
use thiserror::Error;

use super::properties::{PropertyValue, id};
use super::wire::{MAX_VARINT, put_binary, put_string, put_varint, varint_len};
use super::*;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    #[error("packet of {size} bytes exceeds the peer's maximum packet size of {max} bytes")]
    ExceedsMaximumPacketSize { size: usize, max: usize },
    #[error("a string or binary field is longer than 65535 bytes")]
    FieldTooLong,
}

/// A PUBLISH as the broker sends it: borrowed from the shared message, with
/// the per-subscriber parts (packet id, flags, alias, subscription ids) beside it.
#[derive(Debug, Clone, Copy)]
pub struct PublishRef<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty when `topic_alias` names a topic the peer already knows.
    pub topic: &'a str,
    pub packet_id: u16,
    pub payload: &'a [u8],
    /// The message's own v5 properties; expiry, subscription ids and alias
    /// in it are replaced by the fields below.
    pub properties: Option<&'a Properties>,
    pub message_expiry_interval: Option<u32>,
    pub subscription_identifiers: &'a [u32],
    pub topic_alias: Option<u16>,
}

/// The four acknowledgements of the QoS flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    PubAck,
    PubRec,
    PubRel,
    PubComp,
}

/// Encodes packets. The variable header is written to a scratch buffer
/// first, so that it is measured before the fixed header is written and
/// payloads are copied once; the scratch buffer is per thread, not per
/// connection, so that idle connections do not each keep one.
#[derive(Debug, Default)]
pub struct Encoder {}

thread_local! {
    static SCRATCH: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

fn with_scratch<R>(f: impl FnOnce(&mut BytesMut) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => {
            scratch.clear();
            f(&mut scratch)
        }
        // Not reentered today; a fresh buffer keeps it correct if it ever is.
        Err(_) => f(&mut BytesMut::new()),
    })
}

impl Encoder {
    pub fn new() -> Self {
        Encoder::default()
    }

    /// Appends `packet` to `out`.
    pub fn encode(
        &mut self,
        packet: &Packet,
        version: ProtocolVersion,
        out: &mut BytesMut,
    ) -> Result<usize, EncodeError> {
        if let Packet::Publish(p) = packet {
            return self.publish(
                &PublishRef {
                    dup: p.dup,
                    qos: p.qos,
                    retain: p.retain,
                    topic: &p.topic,
                    packet_id: p.packet_id,
                    payload: &p.payload,
                    properties: Some(&p.properties),
                    message_expiry_interval: p.properties.message_expiry_interval,
                    subscription_identifiers: &p.properties.subscription_identifiers,
                    topic_alias: p.properties.topic_alias,
                },
                version,
                usize::MAX,
                out,
            );
        }
        with_scratch(|scratch| encode_control(scratch, packet, version, out))
    }

    /// Appends an acknowledgement without properties: the form every QoS
    /// 1/2 message costs, written without building a [`Packet`].
    pub fn ack(
        &mut self,
        kind: AckKind,
        packet_id: u16,
        reason_code: u8,
        version: ProtocolVersion,
        out: &mut BytesMut,
    ) {
        let first = match kind {
            AckKind::PubAck => 0x40,
            AckKind::PubRec => 0x50,
            AckKind::PubRel => 0x62,
            AckKind::PubComp => 0x70,
        };
        let with_code = version.is_v5() && reason_code != reason::SUCCESS;
        out.reserve(5);
        out.put_u8(first);
        out.put_u8(if with_code { 3 } else { 2 });
        out.put_u16(packet_id);
        if with_code {
            out.put_u8(reason_code);
        }
    }

    /// Appends a PUBLISH to `out` unless it would exceed `max_size`, the
    /// peer's Maximum Packet Size; returns the bytes written.
    pub fn publish(
        &mut self,
        p: &PublishRef<'_>,
        version: ProtocolVersion,
        max_size: usize,
        out: &mut BytesMut,
    ) -> Result<usize, EncodeError> {
        with_scratch(|s| encode_publish(s, p, version, max_size, out))
    }
}

fn encode_publish(
    s: &mut BytesMut,
    p: &PublishRef<'_>,
    version: ProtocolVersion,
    max_size: usize,
    out: &mut BytesMut,
) -> Result<usize, EncodeError> {
    put_str(s, p.topic)?;
    if p.qos != QoS::AtMostOnce {
        s.put_u16(p.packet_id);
    }
    if version.is_v5() {
        write_publish_properties(s, p)?;
    }
    let len = s.len() + p.payload.len();
    let total = 1 + varint_len(len as u32) + len;
    if len > MAX_VARINT as usize || total > max_size {
        return Err(EncodeError::ExceedsMaximumPacketSize {
            size: total,
            max: max_size.min(MAX_VARINT as usize),
        });
    }
    let first = 0x30 | u8::from(p.dup) << 3 | p.qos.as_u8() << 1 | u8::from(p.retain);
    out.reserve(total);
    out.put_u8(first);
    put_varint(out, len as u32);
    out.extend_from_slice(s);
    out.extend_from_slice(p.payload);
    Ok(total)
}

fn encode_control(
    scratch: &mut BytesMut,
    packet: &Packet,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<usize, EncodeError> {
    let v5 = version.is_v5();
    let s = &mut *scratch;
    let first = match packet {
        Packet::Connect(c) => {
            write_connect(s, c)?;
            0x10
        }
        Packet::ConnAck(c) => {
            s.put_u8(u8::from(c.session_present));
            if v5 {
                s.put_u8(c.reason_code);
                write_properties(s, &c.properties)?;
            } else {
                s.put_u8(reason::connack_v311(c.reason_code));
            }
            0x20
        }
        // Sent above through `Encoder::publish`.
        Packet::Publish(_) => 0x30,
        Packet::PubAck(a) => {
            write_ack(s, a, v5)?;
            0x40
        }
        Packet::PubRec(a) => {
            write_ack(s, a, v5)?;
            0x50
        }
        Packet::PubRel(a) => {
            write_ack(s, a, v5)?;
            0x62
        }
        Packet::PubComp(a) => {
            write_ack(s, a, v5)?;
            0x70
        }
        Packet::Subscribe(sub) => {
            s.put_u16(sub.packet_id);
            if v5 {
                write_properties(s, &sub.properties)?;
            }
            for t in &sub.subscriptions {
                put_str(s, &t.filter)?;
                let byte = if v5 {
                    t.options.to_byte()
                } else {
                    t.options.qos.as_u8()
                };
                s.put_u8(byte);
            }
            0x82
        }
        Packet::SubAck(a) => {
            s.put_u16(a.packet_id);
            if v5 {
                write_properties(s, &a.properties)?;
            }
            s.put_slice(&a.reason_codes);
            0x90
        }
        Packet::Unsubscribe(u) => {
            s.put_u16(u.packet_id);
            if v5 {
                write_properties(s, &u.properties)?;
            }
            for f in &u.filters {
                put_str(s, f)?;
            }
            0xA2
        }
        Packet::UnsubAck(a) => {
            s.put_u16(a.packet_id);
            if v5 {
                write_properties(s, &a.properties)?;
                s.put_slice(&a.reason_codes);
            }
            0xB0
        }
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(d) => {
            if v5 {
                write_reason_tail(s, d.reason_code, &d.properties)?;
            }
            0xE0
        }
        Packet::Auth(a) => {
            write_reason_tail(s, a.reason_code, &a.properties)?;
            0xF0
        }
    };
    let len = scratch.len();
    let total = 1 + varint_len(len as u32) + len;
    if len > MAX_VARINT as usize {
        return Err(EncodeError::ExceedsMaximumPacketSize {
            size: total,
            max: MAX_VARINT as usize,
        });
    }
    out.reserve(total);
    out.put_u8(first);
    put_varint(out, len as u32);
    out.extend_from_slice(scratch);
    Ok(total)
}

fn put_str(buf: &mut BytesMut, text: &str) -> Result<(), EncodeError> {
    if text.len() > usize::from(u16::MAX) {
        return Err(EncodeError::FieldTooLong);
    }
    put_string(buf, text);
    Ok(())
}

fn put_bin(buf: &mut BytesMut, data: &[u8]) -> Result<(), EncodeError> {
    if data.len() > usize::from(u16::MAX) {
        return Err(EncodeError::FieldTooLong);
    }
    put_binary(buf, data);
    Ok(())
}

fn write_property_list<'a>(
    buf: &mut BytesMut,
    each: impl Fn(&mut dyn FnMut(PropertyValue<'a>)),
) -> Result<(), EncodeError> {
    let mut len = 0usize;
    let mut too_long = false;
    each(&mut |p| {
        len += p.encoded_len();
        too_long |= p.longest_field() > usize::from(u16::MAX);
    });
    if too_long {
        return Err(EncodeError::FieldTooLong);
    }
    put_varint(buf, len as u32);
    each(&mut |p| p.write(buf));
    Ok(())
}

fn write_properties<'a>(buf: &mut BytesMut, props: &'a Properties) -> Result<(), EncodeError> {
    write_property_list(buf, |f: &mut dyn FnMut(PropertyValue<'a>)| {
        props.for_each(f)
    })
}

fn write_publish_properties<'a>(buf: &mut BytesMut, p: &PublishRef<'a>) -> Result<(), EncodeError> {
    write_property_list(buf, |f: &mut dyn FnMut(PropertyValue<'a>)| {
        if let Some(props) = p.properties {
            props.for_each(|prop| match prop {
                PropertyValue::U32(id::MESSAGE_EXPIRY_INTERVAL, _)
                | PropertyValue::VarInt(id::SUBSCRIPTION_IDENTIFIER, _)
                | PropertyValue::U16(id::TOPIC_ALIAS, _) => {}
                other => f(other),
            });
        }
        if let Some(v) = p.message_expiry_interval {
            f(PropertyValue::U32(id::MESSAGE_EXPIRY_INTERVAL, v));
        }
        for v in p.subscription_identifiers {
            f(PropertyValue::VarInt(id::SUBSCRIPTION_IDENTIFIER, *v));
        }
        if let Some(v) = p.topic_alias {
            f(PropertyValue::U16(id::TOPIC_ALIAS, v));
        }
    })
}

fn write_ack(buf: &mut BytesMut, a: &Ack, v5: bool) -> Result<(), EncodeError> {
    buf.put_u16(a.packet_id);
    if v5 && (a.reason_code != reason::SUCCESS || !a.properties.is_empty()) {
        buf.put_u8(a.reason_code);
        if !a.properties.is_empty() {
            write_properties(buf, &a.properties)?;
        }
    }
    Ok(())
}

fn write_reason_tail(buf: &mut BytesMut, code: u8, props: &Properties) -> Result<(), EncodeError> {
    if code != reason::SUCCESS || !props.is_empty() {
        buf.put_u8(code);
        if !props.is_empty() {
            write_properties(buf, props)?;
        }
    }
    Ok(())
}

fn write_connect(s: &mut BytesMut, c: &Connect) -> Result<(), EncodeError> {
    let v5 = c.protocol.is_v5();
    put_str(s, "MQTT")?;
    s.put_u8(if v5 { 5 } else { 4 });
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | w.qos.as_u8() << 3 | u8::from(w.retain) << 5;
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    s.put_u8(flags);
    s.put_u16(c.keep_alive);
    if v5 {
        write_properties(s, &c.properties)?;
    }
    put_str(s, &c.client_id)?;
    if let Some(w) = &c.will {
        if v5 {
            write_properties(s, &w.properties)?;
        }
        put_str(s, &w.topic)?;
        put_bin(s, &w.payload)?;
    }
    if let Some(u) = &c.username {
        put_str(s, u)?;
    }
    if let Some(p) = &c.password {
        put_bin(s, p)?;
    }
    Ok(())
}
