//! AWS IoT lifecycle events: `$aws/events/presence/connected|disconnected/{clientId}` and
//! `$aws/events/subscriptions/subscribed|unsubscribed/{clientId}`, published by the broker
//! itself with AWS's JSON, for applications that follow their fleet's connectivity.

use std::net::IpAddr;

use serde_json::json;

use super::Broker;
use super::close::CloseKind;

/// What the events of one connection carry; kept only while it is connected.
pub struct Presence {
    pub client_id: String,
    pub session_identifier: String,
    pub principal: String,
    pub ip: Option<IpAddr>,
    /// Orders the events of one client id: each connection gets a higher one.
    pub version: u64,
    pub keep_alive_seconds: u16,
    pub clean_start: bool,
    pub session_expiry_seconds: u32,
    /// Whether lifecycle events are published (`mqtt.lifecycle_events`); the observer hears
    /// of the connection either way.
    pub publish_events: bool,
}

/// A connection as a [`PresenceObserver`] hears of it.
pub struct Connected<'a> {
    pub client_id: &'a str,
    /// This node's number for the connection.
    pub connection: u64,
    pub at_ms: u64,
    pub keep_alive_seconds: u16,
    pub clean_start: bool,
    pub session_expiry_seconds: u32,
}

/// Hears of every client's connection and disconnection on this node (the fleet index
/// records things' connectivity from it). Called on the connection's task: it must not block.
pub trait PresenceObserver: Send + Sync {
    fn connected(&self, connected: &Connected<'_>);
    fn disconnected(&self, client_id: &str, connection: u64, at_ms: u64, reason: &'static str);
}

fn timestamp_ms() -> u64 {
    crate::clock::epoch_millis()
}

/// AWS's name for why a connection ended, and whether the client ended it.
fn disconnect_reason(kind: Option<CloseKind>) -> (&'static str, bool) {
    match kind {
        Some(CloseKind::Normal | CloseKind::NormalWithWill) => {
            ("CLIENT_INITIATED_DISCONNECT", true)
        }
        Some(CloseKind::ProtocolError) => ("CLIENT_ERROR", false),
        Some(CloseKind::KeepAliveTimeout) => ("MQTT_KEEP_ALIVE_TIMEOUT", false),
        Some(CloseKind::TakenOver) => ("DUPLICATE_CLIENTID", false),
        Some(CloseKind::ServerShutdown) => ("SERVER_INITIATED_DISCONNECT", false),
        Some(CloseKind::NotAuthorized) => ("FORBIDDEN_ACCESS", false),
        Some(CloseKind::ServerBusy) => ("THROTTLED", false),
        Some(CloseKind::PeerClosed | CloseKind::Refused) | None => ("CONNECTION_LOST", false),
    }
}

/// Publishes the event built by `payload` on `topic`, if anyone takes it: most fleets
/// follow no lifecycle events, and building each one's JSON would cost every connection.
fn publish(broker: &Broker, topic: String, payload: impl FnOnce() -> serde_json::Value) {
    if broker.wants(&topic) {
        broker.publish_event(topic, payload().to_string());
    }
}

impl Presence {
    pub fn connected(&self, broker: &Broker) {
        if let Some(observer) = broker.presence_observer() {
            observer.connected(&Connected {
                client_id: &self.client_id,
                connection: self.version,
                at_ms: timestamp_ms(),
                keep_alive_seconds: self.keep_alive_seconds,
                clean_start: self.clean_start,
                session_expiry_seconds: self.session_expiry_seconds,
            });
        }
        if !self.publish_events {
            return;
        }
        publish(
            broker,
            format!("$aws/events/presence/connected/{}", self.client_id),
            || {
                let mut event = json!({
                    "clientId": self.client_id,
                    "timestamp": timestamp_ms(),
                    "eventType": "connected",
                    "sessionIdentifier": self.session_identifier,
                    "principalIdentifier": self.principal,
                    "versionNumber": self.version,
                });
                if let Some(ip) = self.ip {
                    event["ipAddress"] = json!(ip.to_string());
                }
                event
            },
        );
    }

    pub fn disconnected(&self, broker: &Broker, kind: Option<CloseKind>) {
        if let Some(observer) = broker.presence_observer() {
            observer.disconnected(
                &self.client_id,
                self.version,
                timestamp_ms(),
                disconnect_reason(kind).0,
            );
        }
        if !self.publish_events {
            return;
        }
        publish(
            broker,
            format!("$aws/events/presence/disconnected/{}", self.client_id),
            || {
                let (reason, client_initiated) = disconnect_reason(kind);
                json!({
                    "clientId": self.client_id,
                    "timestamp": timestamp_ms(),
                    "eventType": "disconnected",
                    "sessionIdentifier": self.session_identifier,
                    "principalIdentifier": self.principal,
                    "clientInitiatedDisconnect": client_initiated,
                    "disconnectReason": reason,
                    "versionNumber": self.version,
                })
            },
        );
    }

    /// `subscribed` or `unsubscribed`, for the filters that took effect.
    pub fn subscriptions(&self, broker: &Broker, event_type: &str, topics: &[&str]) {
        if topics.is_empty() || !self.publish_events {
            return;
        }
        publish(
            broker,
            format!("$aws/events/subscriptions/{event_type}/{}", self.client_id),
            || {
                json!({
                    "clientId": self.client_id,
                    "timestamp": timestamp_ms(),
                    "eventType": event_type,
                    "sessionIdentifier": self.session_identifier,
                    "principalIdentifier": self.principal,
                    "topics": topics,
                })
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_kinds_map_to_aws_reasons() {
        assert_eq!(
            disconnect_reason(Some(CloseKind::Normal)),
            ("CLIENT_INITIATED_DISCONNECT", true)
        );
        assert_eq!(
            disconnect_reason(Some(CloseKind::TakenOver)).0,
            "DUPLICATE_CLIENTID"
        );
        assert_eq!(
            disconnect_reason(Some(CloseKind::KeepAliveTimeout)).0,
            "MQTT_KEEP_ALIVE_TIMEOUT"
        );
        assert_eq!(
            disconnect_reason(Some(CloseKind::NotAuthorized)).0,
            "FORBIDDEN_ACCESS"
        );
    }
}
