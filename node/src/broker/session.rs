//! Session state: what survives a connection (subscriptions, queued and
//! in-flight messages) and the link to the connection attached to it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::message::Delivery;
use crate::metrics::DropReason;
use crate::mqtt::{QoS, SubscriptionOptions};

/// A subscription as the session remembers it, for resumption and unsubscribe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSubscription {
    pub options: SubscriptionOptions,
    pub subscription_id: Option<u32>,
}

/// An outgoing QoS 1/2 message the client has not finished acknowledging.
#[derive(Debug, Clone)]
pub enum Inflight {
    /// Sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Sent(Delivery),
    /// PUBREL sent, waiting for PUBCOMP.
    Released,
}

/// The connection currently attached to a session.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub connection_id: u64,
    pub waker: Arc<Notify>,
}

#[derive(Debug, Default)]
pub struct SessionState {
    pub attached: Option<Attachment>,
    pub subscriptions: HashMap<String, StoredSubscription>,
    pub queue: VecDeque<Delivery>,
    pub inflight: BTreeMap<u16, Inflight>,
    /// QoS 2 packet ids received and acknowledged with PUBREC, awaiting PUBREL.
    pub incoming_qos2: HashSet<u16>,
    pub next_packet_id: u16,
    /// Seconds the session outlives its connection; 0 ends it with the connection.
    pub expiry_interval: u32,
    /// Bumped on every attach, so that timers armed at a detach can tell
    /// whether the session was resumed since.
    pub generation: u64,
}

impl SessionState {
    /// A packet id not used by any in-flight message.
    pub fn allocate_packet_id(&mut self) -> Option<u16> {
        for _ in 0..=u16::MAX {
            self.next_packet_id = self.next_packet_id.wrapping_add(1);
            if self.next_packet_id == 0 {
                self.next_packet_id = 1;
            }
            if !self.inflight.contains_key(&self.next_packet_id) {
                return Some(self.next_packet_id);
            }
        }
        None
    }
}

/// What became of a message offered to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    Dropped(DropReason),
    /// The session was discarded; the subscription is stale.
    Gone,
}

#[derive(Debug)]
pub struct Session {
    /// Unique for the broker's lifetime; a new session for a reused client id gets a new one.
    pub id: u64,
    pub client_id: Arc<str>,
    alive: AtomicBool,
    connected: AtomicBool,
    pub state: Mutex<SessionState>,
}

impl Session {
    pub fn new(id: u64, client_id: Arc<str>) -> Session {
        Session {
            id,
            client_id,
            alive: AtomicBool::new(true),
            connected: AtomicBool::new(false),
            state: Mutex::new(SessionState::default()),
        }
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub(super) fn mark_dead(&self) {
        self.alive.store(false, Ordering::Release);
    }

    /// Attaches a connection; returns the one it replaces.
    pub(super) fn attach(&self, attachment: Attachment) -> Option<Attachment> {
        let mut state = self.state.lock();
        state.generation += 1;
        self.connected.store(true, Ordering::Release);
        state.attached.replace(attachment)
    }

    /// Detaches `connection_id` if it is still the attached one; returns the
    /// generation at detach, or `None` if another connection took over.
    pub(super) fn detach(&self, connection_id: u64) -> Option<u64> {
        let mut state = self.state.lock();
        match &state.attached {
            Some(a) if a.connection_id == connection_id => {
                state.attached = None;
                self.connected.store(false, Ordering::Release);
                Some(state.generation)
            }
            _ => None,
        }
    }

    /// Offers a message. Offline sessions keep QoS 1/2 only; every session's
    /// queue is bounded.
    pub fn enqueue(&self, delivery: Delivery, max_queued: usize) -> Enqueued {
        if !self.is_alive() {
            return Enqueued::Gone;
        }
        let mut state = self.state.lock();
        if state.attached.is_none() && delivery.qos == QoS::AtMostOnce {
            return Enqueued::Dropped(DropReason::OfflineQos0);
        }
        if state.queue.len() >= max_queued {
            return Enqueued::Dropped(DropReason::QueueFull);
        }
        state.queue.push_back(delivery);
        if let Some(a) = &state.attached {
            a.waker.notify_one();
        }
        Enqueued::Queued
    }
}
