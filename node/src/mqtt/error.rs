use thiserror::Error;

use super::reason;

/// Why bytes from a peer are not a valid MQTT packet.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("malformed remaining length")]
    MalformedRemainingLength,
    #[error("malformed variable byte integer")]
    MalformedVarInt,
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge { size: usize, max: usize },
    #[error("reserved packet type {0}")]
    InvalidPacketType(u8),
    #[error("invalid fixed header flags for packet type {0}")]
    InvalidFlags(u8),
    #[error("packet ends before its fields do")]
    Truncated,
    #[error("bytes left over after the last field")]
    TrailingBytes,
    #[error("string is not valid UTF-8 or contains U+0000")]
    InvalidUtf8,
    #[error("invalid QoS {0}")]
    InvalidQoS(u8),
    #[error("protocol name is not MQTT")]
    InvalidProtocolName,
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    #[error("invalid CONNECT flags")]
    InvalidConnectFlags,
    #[error("property 0x{0:02x} appears more than once")]
    DuplicateProperty(u8),
    #[error("unknown property 0x{0:02x}")]
    UnknownProperty(u8),
    #[error("property 0x{0:02x} is not allowed in this packet")]
    PropertyNotAllowed(u8),
    #[error("invalid value for property 0x{0:02x}")]
    InvalidPropertyValue(u8),
    #[error("packet identifier must not be zero")]
    ZeroPacketId,
    #[error("SUBSCRIBE or UNSUBSCRIBE without a topic filter")]
    NoTopicFilter,
    #[error("invalid subscription options")]
    InvalidSubscriptionOptions,
    #[error("AUTH is not part of MQTT 3.1.1")]
    AuthInV311,
}

impl DecodeError {
    /// The MQTT 5.0 reason code a server sends in CONNACK or DISCONNECT.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::PacketTooLarge { .. } => reason::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocolVersion(_) => reason::UNSUPPORTED_PROTOCOL_VERSION,
            DecodeError::DuplicateProperty(_)
            | DecodeError::ZeroPacketId
            | DecodeError::NoTopicFilter
            | DecodeError::AuthInV311 => reason::PROTOCOL_ERROR,
            _ => reason::MALFORMED_PACKET,
        }
    }

    /// Low-cardinality label for the packet error metric.
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::PacketTooLarge { .. } => "packet_too_large",
            DecodeError::UnsupportedProtocolVersion(_) => "unsupported_protocol_version",
            DecodeError::InvalidProtocolName => "invalid_protocol_name",
            _ if self.reason_code() == reason::PROTOCOL_ERROR => "protocol_error",
            _ => "malformed_packet",
        }
    }
}
