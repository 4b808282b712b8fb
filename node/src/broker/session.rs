//! Session state: what survives a connection (subscriptions, queued and
//! in-flight messages) and the link to the connection attached to it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

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
    /// Queued, and the connected session's queue is at its limit: the
    /// publisher should pause until it drains.
    Congested,
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
    /// Set when a publisher gave up waiting for this session to drain; its
    /// excess is dropped instead of pausing publishers, until it catches up.
    slow: AtomicBool,
    /// Wakes publishers paused on this session when its queue drains.
    space: Notify,
    /// Publishers paused on this session right now.
    waiting: AtomicUsize,
    /// Messages taken off the queue since the session began.
    drained_total: AtomicU64,
    pub state: Mutex<SessionState>,
}

/// Counts a paused publisher for as long as it waits, however its wait ends.
struct WaitingGuard<'a>(&'a AtomicUsize);

impl<'a> WaitingGuard<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        WaitingGuard(counter)
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Beyond this many times the queue limit even a connected session's
/// QoS 1/2 messages are dropped: the bound on memory when many publishers
/// overshoot the limit at once.
const HARD_LIMIT_FACTOR: usize = 4;

impl Session {
    pub fn new(id: u64, client_id: Arc<str>) -> Session {
        Session {
            id,
            client_id,
            alive: AtomicBool::new(true),
            connected: AtomicBool::new(false),
            slow: AtomicBool::new(false),
            space: Notify::new(),
            waiting: AtomicUsize::new(0),
            drained_total: AtomicU64::new(0),
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
        self.space.notify_waiters();
    }

    /// Marks the session too slow to pause publishers for, releasing those
    /// paused on it.
    pub fn mark_slow(&self) {
        self.slow.store(true, Ordering::Release);
        self.space.notify_waiters();
    }

    /// Messages taken off the queue so far: a paused publisher tells a slow
    /// subscriber from a busy one by whether this moves.
    pub fn progress(&self) -> u64 {
        self.drained_total.load(Ordering::Acquire)
    }

    /// Whether a publisher paused on this session may go on: the queue is
    /// below its limit, or the session can no longer pause anyone.
    pub fn has_space(&self, max_queued: usize) -> bool {
        !self.is_alive()
            || !self.is_connected()
            || self.slow.load(Ordering::Acquire)
            || self.state.lock().queue.len() < max_queued
    }

    /// Resolves once [`Session::has_space`] holds. Paused publishers are
    /// woken one per message taken off the queue, in the order they paused,
    /// so that many publishers feeding one subscriber take turns.
    pub async fn space_available(&self, max_queued: usize) {
        let _waiting = WaitingGuard::new(&self.waiting);
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.has_space(max_queued) {
                return;
            }
            notified.await;
        }
    }

    /// Called by the session's connection after it took `popped` messages
    /// off the queue: wakes as many paused publishers.
    pub(super) fn drained(&self, popped: usize, queue_len: usize, max_queued: usize) {
        if popped == 0 {
            return;
        }
        self.drained_total
            .fetch_add(popped as u64, Ordering::AcqRel);
        if queue_len < max_queued.div_ceil(2) {
            self.slow.store(false, Ordering::Release);
        }
        let waiting = self.waiting.load(Ordering::Acquire);
        for _ in 0..popped.min(waiting) {
            self.space.notify_one();
        }
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
                self.space.notify_waiters();
                Some(state.generation)
            }
            _ => None,
        }
    }

    /// Offers a message. Offline sessions keep QoS 1/2 only, up to the
    /// limit. A connected session past the limit drops QoS 0 and keeps QoS
    /// 1/2, asking the publisher to pause, unless it is marked slow.
    pub fn enqueue(&self, delivery: Delivery, max_queued: usize) -> Enqueued {
        if !self.is_alive() {
            return Enqueued::Gone;
        }
        let mut state = self.state.lock();
        let len = state.queue.len();
        if state.attached.is_none() {
            if delivery.qos == QoS::AtMostOnce {
                return Enqueued::Dropped(DropReason::OfflineQos0);
            }
            if len >= max_queued {
                return Enqueued::Dropped(DropReason::QueueFull);
            }
            state.queue.push_back(delivery);
            return Enqueued::Queued;
        }
        if len >= max_queued
            && (delivery.qos == QoS::AtMostOnce
                || self.slow.load(Ordering::Acquire)
                || len >= max_queued.saturating_mul(HARD_LIMIT_FACTOR))
        {
            return Enqueued::Dropped(DropReason::QueueFull);
        }
        state.queue.push_back(delivery);
        if let Some(a) = &state.attached {
            a.waker.notify_one();
        }
        if len + 1 >= max_queued {
            Enqueued::Congested
        } else {
            Enqueued::Queued
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Message;
    use bytes::Bytes;

    fn delivery(qos: QoS) -> Delivery {
        Delivery {
            message: Arc::new(Message {
                topic: Arc::from("t"),
                payload: Bytes::from_static(b"x"),
                qos,
                retain: false,
                properties: Default::default(),
                expires_at: None,
                origin: 0,
            }),
            qos,
            retain: false,
            subscription_ids: Vec::new(),
        }
    }

    fn connected_session() -> Session {
        let s = Session::new(1, Arc::from("c"));
        s.attach(Attachment {
            connection_id: 7,
            waker: Arc::new(Notify::new()),
        });
        s
    }

    #[test]
    fn offline_sessions_keep_qos1_up_to_the_limit() {
        let s = Session::new(1, Arc::from("c"));
        assert_eq!(
            s.enqueue(delivery(QoS::AtMostOnce), 2),
            Enqueued::Dropped(DropReason::OfflineQos0)
        );
        assert_eq!(s.enqueue(delivery(QoS::AtLeastOnce), 2), Enqueued::Queued);
        assert_eq!(s.enqueue(delivery(QoS::AtLeastOnce), 2), Enqueued::Queued);
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), 2),
            Enqueued::Dropped(DropReason::QueueFull)
        );
    }

    #[test]
    fn connected_sessions_push_back_instead_of_dropping_qos1() {
        let s = connected_session();
        assert_eq!(s.enqueue(delivery(QoS::AtLeastOnce), 2), Enqueued::Queued);
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), 2),
            Enqueued::Congested
        );
        assert!(!s.has_space(2));
        // Over the limit QoS 1 is still kept, QoS 0 is not.
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), 2),
            Enqueued::Congested
        );
        assert_eq!(
            s.enqueue(delivery(QoS::AtMostOnce), 2),
            Enqueued::Dropped(DropReason::QueueFull)
        );
        // Up to the hard limit.
        for _ in 3..2 * HARD_LIMIT_FACTOR {
            assert_eq!(
                s.enqueue(delivery(QoS::AtLeastOnce), 2),
                Enqueued::Congested
            );
        }
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), 2),
            Enqueued::Dropped(DropReason::QueueFull)
        );
    }

    #[test]
    fn slow_sessions_drop_their_excess_until_they_drain() {
        let s = connected_session();
        s.enqueue(delivery(QoS::AtLeastOnce), 2);
        s.enqueue(delivery(QoS::AtLeastOnce), 2);
        s.mark_slow();
        assert!(s.has_space(2));
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), 2),
            Enqueued::Dropped(DropReason::QueueFull)
        );
        s.state.lock().queue.clear();
        s.drained(2, 0, 2);
        s.enqueue(delivery(QoS::AtLeastOnce), 2);
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), 2),
            Enqueued::Congested
        );
    }

    #[test]
    fn detaching_releases_paused_publishers() {
        let s = connected_session();
        s.enqueue(delivery(QoS::AtLeastOnce), 1);
        assert!(!s.has_space(1));
        s.detach(7);
        assert!(s.has_space(1));
    }
}
