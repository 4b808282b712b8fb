//! MQTT 5.0 reason codes and the MQTT 3.1.1 CONNACK return codes.

pub const SUCCESS: u8 = 0x00;
pub const GRANTED_QOS_1: u8 = 0x01;
pub const GRANTED_QOS_2: u8 = 0x02;
pub const DISCONNECT_WITH_WILL: u8 = 0x04;
pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
pub const CONTINUE_AUTHENTICATION: u8 = 0x18;
pub const UNSPECIFIED_ERROR: u8 = 0x80;
pub const MALFORMED_PACKET: u8 = 0x81;
pub const PROTOCOL_ERROR: u8 = 0x82;
pub const IMPLEMENTATION_SPECIFIC_ERROR: u8 = 0x83;
pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
pub const CLIENT_IDENTIFIER_NOT_VALID: u8 = 0x85;
pub const BAD_USER_NAME_OR_PASSWORD: u8 = 0x86;
pub const NOT_AUTHORIZED: u8 = 0x87;
pub const SERVER_UNAVAILABLE: u8 = 0x88;
pub const SERVER_BUSY: u8 = 0x89;
pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
pub const SESSION_TAKEN_OVER: u8 = 0x8E;
pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
pub const TOPIC_NAME_INVALID: u8 = 0x90;
pub const PACKET_IDENTIFIER_IN_USE: u8 = 0x91;
pub const PACKET_IDENTIFIER_NOT_FOUND: u8 = 0x92;
pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
pub const PACKET_TOO_LARGE: u8 = 0x95;
pub const QUOTA_EXCEEDED: u8 = 0x97;
pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
pub const RETAIN_NOT_SUPPORTED: u8 = 0x9A;
pub const QOS_NOT_SUPPORTED: u8 = 0x9B;
pub const USE_ANOTHER_SERVER: u8 = 0x9C;
pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0x9E;
pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: u8 = 0xA1;
pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0xA2;

/// MQTT 3.1.1 CONNACK return codes.
pub mod v311 {
    pub const ACCEPTED: u8 = 0x00;
    pub const UNACCEPTABLE_PROTOCOL_VERSION: u8 = 0x01;
    pub const IDENTIFIER_REJECTED: u8 = 0x02;
    pub const SERVER_UNAVAILABLE: u8 = 0x03;
    pub const BAD_USER_NAME_OR_PASSWORD: u8 = 0x04;
    pub const NOT_AUTHORIZED: u8 = 0x05;
    /// SUBACK return code for a refused filter.
    pub const SUBACK_FAILURE: u8 = 0x80;
}

/// Maps a v5 CONNACK reason code to the closest 3.1.1 return code.
pub fn connack_v311(v5_code: u8) -> u8 {
    match v5_code {
        SUCCESS => v311::ACCEPTED,
        UNSUPPORTED_PROTOCOL_VERSION => v311::UNACCEPTABLE_PROTOCOL_VERSION,
        CLIENT_IDENTIFIER_NOT_VALID => v311::IDENTIFIER_REJECTED,
        BAD_USER_NAME_OR_PASSWORD | BAD_AUTHENTICATION_METHOD => v311::BAD_USER_NAME_OR_PASSWORD,
        NOT_AUTHORIZED => v311::NOT_AUTHORIZED,
        _ => v311::SERVER_UNAVAILABLE,
    }
}

/// A short human-readable text for a reason code, sent as the v5 Reason String.
pub fn describe(code: u8) -> &'static str {
    match code {
        SUCCESS => "success",
        UNSPECIFIED_ERROR => "unspecified error",
        MALFORMED_PACKET => "malformed packet",
        PROTOCOL_ERROR => "protocol error",
        IMPLEMENTATION_SPECIFIC_ERROR => "implementation specific error",
        UNSUPPORTED_PROTOCOL_VERSION => "unsupported protocol version",
        CLIENT_IDENTIFIER_NOT_VALID => "client identifier not valid",
        BAD_USER_NAME_OR_PASSWORD => "bad user name or password",
        NOT_AUTHORIZED => "not authorized",
        SERVER_UNAVAILABLE => "server unavailable",
        SERVER_BUSY => "server busy",
        SERVER_SHUTTING_DOWN => "server shutting down",
        USE_ANOTHER_SERVER => "use another server: this node is leaving the cluster",
        BAD_AUTHENTICATION_METHOD => "authentication method not supported",
        KEEP_ALIVE_TIMEOUT => "keep alive timeout",
        SESSION_TAKEN_OVER => "session taken over by another connection",
        TOPIC_FILTER_INVALID => "topic filter invalid",
        TOPIC_NAME_INVALID => "topic name invalid",
        PACKET_IDENTIFIER_IN_USE => "packet identifier in use",
        PACKET_IDENTIFIER_NOT_FOUND => "packet identifier not found",
        RECEIVE_MAXIMUM_EXCEEDED => "receive maximum exceeded",
        TOPIC_ALIAS_INVALID => "topic alias invalid",
        PACKET_TOO_LARGE => "packet too large",
        QUOTA_EXCEEDED => "quota exceeded",
        PAYLOAD_FORMAT_INVALID => "payload format invalid",
        RETAIN_NOT_SUPPORTED => "retain not supported",
        QOS_NOT_SUPPORTED => "QoS not supported",
        SHARED_SUBSCRIPTIONS_NOT_SUPPORTED => "shared subscriptions not supported",
        SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED => "subscription identifiers not supported",
        WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED => "wildcard subscriptions not supported",
        _ => "error",
    }
}
