//! MQTT 5.0 properties: one struct for every packet, validated per packet type.

use bytes::{BufMut, Bytes, BytesMut};

use super::DecodeError;
use super::wire::{MAX_VARINT, Reader, put_binary, put_string, put_varint, varint_len};

/// Where a property block appears; each property is allowed in some of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyContext {
    Connect,
    Will,
    ConnAck,
    Publish,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

pub mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// Every MQTT 5.0 property; absent ones are `None` or empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub user_properties: Vec<(String, String)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

fn allowed(prop: u8, ctx: PropertyContext) -> bool {
    use PropertyContext as C;
    use id::*;
    match prop {
        PAYLOAD_FORMAT_INDICATOR
        | MESSAGE_EXPIRY_INTERVAL
        | CONTENT_TYPE
        | RESPONSE_TOPIC
        | CORRELATION_DATA => matches!(ctx, C::Publish | C::Will),
        SUBSCRIPTION_IDENTIFIER => matches!(ctx, C::Publish | C::Subscribe),
        SESSION_EXPIRY_INTERVAL => matches!(ctx, C::Connect | C::ConnAck | C::Disconnect),
        ASSIGNED_CLIENT_IDENTIFIER
        | SERVER_KEEP_ALIVE
        | RESPONSE_INFORMATION
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => ctx == C::ConnAck,
        AUTHENTICATION_METHOD | AUTHENTICATION_DATA => {
            matches!(ctx, C::Connect | C::ConnAck | C::Auth)
        }
        REQUEST_PROBLEM_INFORMATION | REQUEST_RESPONSE_INFORMATION => ctx == C::Connect,
        WILL_DELAY_INTERVAL => ctx == C::Will,
        SERVER_REFERENCE => matches!(ctx, C::ConnAck | C::Disconnect),
        REASON_STRING => !matches!(
            ctx,
            C::Connect | C::Will | C::Publish | C::Subscribe | C::Unsubscribe
        ),
        RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | MAXIMUM_PACKET_SIZE => {
            matches!(ctx, C::Connect | C::ConnAck)
        }
        TOPIC_ALIAS => ctx == C::Publish,
        USER_PROPERTY => true,
        _ => false,
    }
}

fn set_once<T>(slot: &mut Option<T>, prop: u8, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty(prop));
    }
    *slot = Some(value);
    Ok(())
}

fn flag(prop: u8, value: u8) -> Result<u8, DecodeError> {
    if value > 1 {
        return Err(DecodeError::InvalidPropertyValue(prop));
    }
    Ok(value)
}

fn non_zero_u16(prop: u8, value: u16) -> Result<u16, DecodeError> {
    if value == 0 {
        return Err(DecodeError::InvalidPropertyValue(prop));
    }
    Ok(value)
}

impl Properties {
    /// Reads a property block (its length prefix included).
    pub(crate) fn decode(
        reader: &mut Reader,
        ctx: PropertyContext,
    ) -> Result<Properties, DecodeError> {
        let len = reader.varint()? as usize;
        let mut block = reader.sub(len)?;
        let mut props = Properties::default();
        while !block.is_empty() {
            let prop = block.u8()?;
            if !allowed(prop, ctx) {
                return Err(
                    if prop > id::SHARED_SUBSCRIPTION_AVAILABLE || !is_known(prop) {
                        DecodeError::UnknownProperty(prop)
                    } else {
                        DecodeError::PropertyNotAllowed(prop)
                    },
                );
            }
            props.read_one(prop, &mut block, ctx)?;
        }
        Ok(props)
    }

    fn read_one(
        &mut self,
        prop: u8,
        r: &mut Reader,
        ctx: PropertyContext,
    ) -> Result<(), DecodeError> {
        use id::*;
        match prop {
            PAYLOAD_FORMAT_INDICATOR => {
                let v = flag(prop, r.u8()?)?;
                set_once(&mut self.payload_format_indicator, prop, v)
            }
            MESSAGE_EXPIRY_INTERVAL => set_once(&mut self.message_expiry_interval, prop, r.u32()?),
            CONTENT_TYPE => set_once(&mut self.content_type, prop, r.string()?),
            RESPONSE_TOPIC => set_once(&mut self.response_topic, prop, r.string()?),
            CORRELATION_DATA => set_once(&mut self.correlation_data, prop, r.binary()?),
            SUBSCRIPTION_IDENTIFIER => {
                let v = r.varint()?;
                if v == 0 {
                    return Err(DecodeError::InvalidPropertyValue(prop));
                }
                if ctx == PropertyContext::Subscribe && !self.subscription_identifiers.is_empty() {
                    return Err(DecodeError::DuplicateProperty(prop));
                }
                self.subscription_identifiers.push(v);
                Ok(())
            }
            SESSION_EXPIRY_INTERVAL => set_once(&mut self.session_expiry_interval, prop, r.u32()?),
            ASSIGNED_CLIENT_IDENTIFIER => {
                set_once(&mut self.assigned_client_identifier, prop, r.string()?)
            }
            SERVER_KEEP_ALIVE => set_once(&mut self.server_keep_alive, prop, r.u16()?),
            AUTHENTICATION_METHOD => set_once(&mut self.authentication_method, prop, r.string()?),
            AUTHENTICATION_DATA => set_once(&mut self.authentication_data, prop, r.binary()?),
            REQUEST_PROBLEM_INFORMATION => {
                let v = flag(prop, r.u8()?)?;
                set_once(&mut self.request_problem_information, prop, v)
            }
            WILL_DELAY_INTERVAL => set_once(&mut self.will_delay_interval, prop, r.u32()?),
            REQUEST_RESPONSE_INFORMATION => {
                let v = flag(prop, r.u8()?)?;
                set_once(&mut self.request_response_information, prop, v)
            }
            RESPONSE_INFORMATION => set_once(&mut self.response_information, prop, r.string()?),
            SERVER_REFERENCE => set_once(&mut self.server_reference, prop, r.string()?),
            REASON_STRING => set_once(&mut self.reason_string, prop, r.string()?),
            RECEIVE_MAXIMUM => {
                let v = non_zero_u16(prop, r.u16()?)?;
                set_once(&mut self.receive_maximum, prop, v)
            }
            TOPIC_ALIAS_MAXIMUM => set_once(&mut self.topic_alias_maximum, prop, r.u16()?),
            TOPIC_ALIAS => {
                let v = non_zero_u16(prop, r.u16()?)?;
                set_once(&mut self.topic_alias, prop, v)
            }
            MAXIMUM_QOS => {
                let v = flag(prop, r.u8()?)?;
                set_once(&mut self.maximum_qos, prop, v)
            }
            RETAIN_AVAILABLE => {
                let v = flag(prop, r.u8()?)?;
                set_once(&mut self.retain_available, prop, v)
            }
            USER_PROPERTY => {
                let key = r.string()?;
                let value = r.string()?;
                self.user_properties.push((key, value));
                Ok(())
            }
            MAXIMUM_PACKET_SIZE => {
                let v = r.u32()?;
                if v == 0 {
                    return Err(DecodeError::InvalidPropertyValue(prop));
                }
                set_once(&mut self.maximum_packet_size, prop, v)
            }
            WILDCARD_SUBSCRIPTION_AVAILABLE => {
                let v = flag(prop, r.u8()?)?;
                set_once(&mut self.wildcard_subscription_available, prop, v)
            }
            SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                let v = flag(prop, r.u8()?)?;
                set_once(&mut self.subscription_identifier_available, prop, v)
            }
            SHARED_SUBSCRIPTION_AVAILABLE => {
                let v = flag(prop, r.u8()?)?;
                set_once(&mut self.shared_subscription_available, prop, v)
            }
            other => Err(DecodeError::UnknownProperty(other)),
        }
    }

    /// Visits every present property in wire order; both the length and the
    /// bytes of a property block come from this one walk.
    pub(crate) fn for_each<'a>(&'a self, mut f: impl FnMut(PropertyValue<'a>)) {
        use PropertyValue as P;
        use id::*;
        if let Some(v) = self.payload_format_indicator {
            f(P::Byte(PAYLOAD_FORMAT_INDICATOR, v));
        }
        if let Some(v) = self.message_expiry_interval {
            f(P::U32(MESSAGE_EXPIRY_INTERVAL, v));
        }
        if let Some(v) = &self.content_type {
            f(P::Str(CONTENT_TYPE, v));
        }
        if let Some(v) = &self.response_topic {
            f(P::Str(RESPONSE_TOPIC, v));
        }
        if let Some(v) = &self.correlation_data {
            f(P::Bin(CORRELATION_DATA, v));
        }
        for v in &self.subscription_identifiers {
            f(P::VarInt(SUBSCRIPTION_IDENTIFIER, *v));
        }
        if let Some(v) = self.session_expiry_interval {
            f(P::U32(SESSION_EXPIRY_INTERVAL, v));
        }
        if let Some(v) = &self.assigned_client_identifier {
            f(P::Str(ASSIGNED_CLIENT_IDENTIFIER, v));
        }
        if let Some(v) = self.server_keep_alive {
            f(P::U16(SERVER_KEEP_ALIVE, v));
        }
        if let Some(v) = &self.authentication_method {
            f(P::Str(AUTHENTICATION_METHOD, v));
        }
        if let Some(v) = &self.authentication_data {
            f(P::Bin(AUTHENTICATION_DATA, v));
        }
        if let Some(v) = self.request_problem_information {
            f(P::Byte(REQUEST_PROBLEM_INFORMATION, v));
        }
        if let Some(v) = self.will_delay_interval {
            f(P::U32(WILL_DELAY_INTERVAL, v));
        }
        if let Some(v) = self.request_response_information {
            f(P::Byte(REQUEST_RESPONSE_INFORMATION, v));
        }
        if let Some(v) = &self.response_information {
            f(P::Str(RESPONSE_INFORMATION, v));
        }
        if let Some(v) = &self.server_reference {
            f(P::Str(SERVER_REFERENCE, v));
        }
        if let Some(v) = &self.reason_string {
            f(P::Str(REASON_STRING, v));
        }
        if let Some(v) = self.receive_maximum {
            f(P::U16(RECEIVE_MAXIMUM, v));
        }
        if let Some(v) = self.topic_alias_maximum {
            f(P::U16(TOPIC_ALIAS_MAXIMUM, v));
        }
        if let Some(v) = self.topic_alias {
            f(P::U16(TOPIC_ALIAS, v));
        }
        if let Some(v) = self.maximum_qos {
            f(P::Byte(MAXIMUM_QOS, v));
        }
        if let Some(v) = self.retain_available {
            f(P::Byte(RETAIN_AVAILABLE, v));
        }
        for (k, v) in &self.user_properties {
            f(P::Pair(USER_PROPERTY, k, v));
        }
        if let Some(v) = self.maximum_packet_size {
            f(P::U32(MAXIMUM_PACKET_SIZE, v));
        }
        if let Some(v) = self.wildcard_subscription_available {
            f(P::Byte(WILDCARD_SUBSCRIPTION_AVAILABLE, v));
        }
        if let Some(v) = self.subscription_identifier_available {
            f(P::Byte(SUBSCRIPTION_IDENTIFIER_AVAILABLE, v));
        }
        if let Some(v) = self.shared_subscription_available {
            f(P::Byte(SHARED_SUBSCRIPTION_AVAILABLE, v));
        }
    }

    pub fn is_empty(&self) -> bool {
        let mut empty = true;
        self.for_each(|_| empty = false);
        empty
    }
}

fn is_known(prop: u8) -> bool {
    use id::*;
    matches!(
        prop,
        PAYLOAD_FORMAT_INDICATOR
            | MESSAGE_EXPIRY_INTERVAL
            | CONTENT_TYPE
            | RESPONSE_TOPIC
            | CORRELATION_DATA
            | SUBSCRIPTION_IDENTIFIER
            | SESSION_EXPIRY_INTERVAL
            | ASSIGNED_CLIENT_IDENTIFIER
            | SERVER_KEEP_ALIVE
            | AUTHENTICATION_METHOD
            | AUTHENTICATION_DATA
            | REQUEST_PROBLEM_INFORMATION
            | WILL_DELAY_INTERVAL
            | REQUEST_RESPONSE_INFORMATION
            | RESPONSE_INFORMATION
            | SERVER_REFERENCE
            | REASON_STRING
            | RECEIVE_MAXIMUM
            | TOPIC_ALIAS_MAXIMUM
            | TOPIC_ALIAS
            | MAXIMUM_QOS
            | RETAIN_AVAILABLE
            | USER_PROPERTY
            | MAXIMUM_PACKET_SIZE
            | WILDCARD_SUBSCRIPTION_AVAILABLE
            | SUBSCRIPTION_IDENTIFIER_AVAILABLE
            | SHARED_SUBSCRIPTION_AVAILABLE
    )
}

/// One property as it goes on the wire.
pub(crate) enum PropertyValue<'a> {
    Byte(u8, u8),
    U16(u8, u16),
    U32(u8, u32),
    VarInt(u8, u32),
    Str(u8, &'a str),
    Bin(u8, &'a [u8]),
    Pair(u8, &'a str, &'a str),
}

impl PropertyValue<'_> {
    pub(crate) fn encoded_len(&self) -> usize {
        1 + match self {
            PropertyValue::Byte(..) => 1,
            PropertyValue::U16(..) => 2,
            PropertyValue::U32(..) => 4,
            PropertyValue::VarInt(_, v) => varint_len(*v),
            PropertyValue::Str(_, s) => 2 + s.len(),
            PropertyValue::Bin(_, b) => 2 + b.len(),
            PropertyValue::Pair(_, k, v) => 4 + k.len() + v.len(),
        }
    }

    pub(crate) fn write(&self, buf: &mut BytesMut) {
        match self {
            PropertyValue::Byte(id, v) => {
                buf.put_u8(*id);
                buf.put_u8(*v);
            }
            PropertyValue::U16(id, v) => {
                buf.put_u8(*id);
                buf.put_u16(*v);
            }
            PropertyValue::U32(id, v) => {
                buf.put_u8(*id);
                buf.put_u32(*v);
            }
            PropertyValue::VarInt(id, v) => {
                buf.put_u8(*id);
                put_varint(buf, (*v).min(MAX_VARINT));
            }
            PropertyValue::Str(id, s) => {
                buf.put_u8(*id);
                put_string(buf, s);
            }
            PropertyValue::Bin(id, b) => {
                buf.put_u8(*id);
                put_binary(buf, b);
            }
            PropertyValue::Pair(id, k, v) => {
                buf.put_u8(*id);
                put_string(buf, k);
                put_string(buf, v);
            }
        }
    }

    /// The longest string or binary field in this property, for u16 bounds.
    pub(crate) fn longest_field(&self) -> usize {
        match self {
            PropertyValue::Str(_, s) => s.len(),
            PropertyValue::Bin(_, b) => b.len(),
            PropertyValue::Pair(_, k, v) => k.len().max(v.len()),
            _ => 0,
        }
    }
}
