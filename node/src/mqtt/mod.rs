//! MQTT 3.1.1 and 5.0 wire format: packet types, a decoder and an encoder.
//!
//! Pure code over `bytes`, no I/O: the gateway feeds it bytes, the session
//! state machine feeds it packets. Every malformed input becomes a
//! [`DecodeError`] that maps to the reason code the protocol prescribes.

mod decode;
mod encode;
mod error;
mod packet;
mod properties;
pub mod reason;
pub mod topic;
mod wire;

pub use decode::decode_packet;
pub use encode::{AckKind, EncodeError, Encoder, PublishRef};
pub use error::DecodeError;
pub use packet::*;
pub use properties::{Properties, PropertyContext};

/// The protocol level a connection speaks, fixed by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    V311,
    V5,
}

impl ProtocolVersion {
    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }
}

/// Quality of service of a message or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(value: u8) -> Option<QoS> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }

    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// Label value for metrics.
    pub fn label(self) -> &'static str {
        match self {
            QoS::AtMostOnce => "0",
            QoS::AtLeastOnce => "1",
            QoS::ExactlyOnce => "2",
        }
    }
}

#[cfg(test)]
mod tests;
