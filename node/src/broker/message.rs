//! Application messages as the broker routes them.

use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use crate::mqtt::{Properties, QoS};

/// One published message, shared by every subscriber it goes to.
#[derive(Debug)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// v5 properties passed through to subscribers (payload format, content
    /// type, response topic, correlation data, user properties); `None`
    /// when there are none, as for every 3.1.1 message, to keep messages small.
    pub properties: Option<Box<Properties>>,
    pub expires_at: Option<Instant>,
    /// The session that published it, for No Local; 0 for the broker itself.
    pub origin: u64,
}

impl Message {
    /// Seconds left before expiry, rounded up; `None` without an expiry.
    /// `Some(0)` means the message has expired.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            if left.is_zero() {
                0
            } else {
                let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                u32::try_from(secs).unwrap_or(u32::MAX)
            }
        })
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.remaining_expiry(now) == Some(0)
    }
}

/// A message on its way to one session, with that subscription's terms.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// Sequence number of its copy in the store, for a persistent session; 0 when not stored.
    pub stored: u64,
    /// For a session taken from another node moments ago, whose old node may still be
    /// storing copies routed to it before this one: the durable submission from which on
    /// this node's writes were made after this delivery arrived. It is held until the
    /// store's watch has passed the revision of the batch that wrote them, so that every
    /// copy committed before it arrived is queued ahead of it. 0: not held.
    pub fence: u64,
}
