//! Session state: what survives a connection (subscriptions, queued and
//! in-flight messages) and the link to the connection attached to it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use super::durable::Ownership;
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

/// Wakes a connection's task: a delivery was queued, its session was taken
/// over, a subscriber it was paused on drained, or the server is stopping.
/// One per connection, so that its task waits on a single future.
#[derive(Debug, Default)]
pub struct Signal {
    notify: Notify,
    /// Whether the connection is in some session's queue of paused publishers.
    waiting_for_space: AtomicBool,
    /// Whether the connection is in some tap's queue of paused publishers.
    pub(super) waiting_for_tap: AtomicBool,
    /// The connection's next deadline in [`Deadlines`](super::deadlines::Deadlines)
    /// ticks; 0 for none.
    deadline: AtomicU64,
}

impl crate::auth::permissions::Wake for Signal {
    fn wake(&self) {
        self.notify.notify_one();
    }
}

impl Signal {
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    pub fn set_deadline(&self, ticks: u64) {
        self.deadline.store(ticks, Ordering::Relaxed);
    }

    pub fn deadline_passed(&self, now_ticks: u64) -> bool {
        let deadline = self.deadline.load(Ordering::Relaxed);
        deadline != 0 && deadline <= now_ticks
    }

    pub fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }
}

/// The connection currently attached to a session.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub connection_id: u64,
    pub waker: Arc<Signal>,
    /// When its CONNECT came, in microseconds since the epoch: of two connections for one
    /// client id on two nodes, the later one keeps the session.
    pub claimed_at: u64,
}

/// How much a session may hold beyond its in-flight window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    pub messages: usize,
    /// Topic and payload bytes of the queued messages.
    pub bytes: usize,
}

impl QueueLimits {
    /// The limits `config` sets.
    pub fn of(config: &crate::config::MqttConfig) -> Self {
        QueueLimits {
            messages: config.max_queued_messages,
            bytes: config.max_queued_bytes,
        }
    }

    fn reached(self, queue: &DeliveryQueue) -> bool {
        queue.len() >= self.messages || queue.bytes() >= self.bytes
    }

    /// Beyond this even a connected session's QoS 1/2 messages are dropped.
    fn hard_limit_reached(self, queue: &DeliveryQueue) -> bool {
        queue.len() >= self.messages.saturating_mul(HARD_LIMIT_FACTOR)
            || queue.bytes() >= self.bytes.saturating_mul(HARD_LIMIT_FACTOR)
    }
}

/// Messages waiting for a session's window, with the bytes they hold.
#[derive(Debug, Default)]
pub struct DeliveryQueue {
    items: VecDeque<Delivery>,
    bytes: usize,
}

fn weight(delivery: &Delivery) -> usize {
    delivery.message.topic.len() + delivery.message.payload.len()
}

impl DeliveryQueue {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn front(&self) -> Option<&Delivery> {
        self.items.front()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Delivery> {
        self.items.iter()
    }

    pub fn pop_front(&mut self) -> Option<Delivery> {
        let delivery = self.items.pop_front()?;
        self.bytes -= weight(&delivery);
        Some(delivery)
    }

    pub fn push_front(&mut self, delivery: Delivery) {
        self.bytes += weight(&delivery);
        self.items.push_front(delivery);
    }

    pub fn push_back(&mut self, delivery: Delivery) {
        self.bytes += weight(&delivery);
        self.items.push_back(delivery);
    }

    pub fn clear(&mut self) {
        self.items.clear();
        self.bytes = 0;
    }

    /// Lets go, from the front, of the held deliveries whose fence `passed`, up to the first
    /// whose fence has not; whether any was let go, and whether any is still held.
    pub fn release(&mut self, passed: impl Fn(u64) -> bool) -> (bool, bool) {
        let mut released = false;
        for delivery in self.items.iter_mut().filter(|d| d.fence != 0) {
            if !passed(delivery.fence) {
                return (released, true);
            }
            delivery.fence = 0;
            released = true;
        }
        (released, false)
    }

    /// Adds a copy the store committed at `revision` ahead of the first held delivery whose
    /// fence is not known to be committed before it (`covering` gives a fence's revision):
    /// that delivery came when the copy may not have been committed yet.
    pub fn insert_committed(
        &mut self,
        delivery: Delivery,
        revision: u64,
        covering: impl Fn(u64) -> Option<u64>,
    ) {
        let later = self
            .items
            .iter()
            .position(|d| d.fence != 0 && covering(d.fence).is_none_or(|r| r > revision));
        self.bytes += weight(&delivery);
        match later {
            Some(index) => self.items.insert(index, delivery),
            None => self.items.push_back(delivery),
        }
    }
}

impl Extend<Delivery> for DeliveryQueue {
    fn extend<I: IntoIterator<Item = Delivery>>(&mut self, deliveries: I) {
        for delivery in deliveries {
            self.push_back(delivery);
        }
    }
}

#[derive(Debug, Default)]
pub struct SessionState {
    pub attached: Option<Attachment>,
    pub subscriptions: Subscriptions,
    pub queue: DeliveryQueue,
    pub inflight: InflightWindow,
    /// QoS 2 packet ids received and acknowledged with PUBREC, awaiting PUBREL.
    pub incoming_qos2: PacketIds,
    pub next_packet_id: u16,
    /// Seconds the session outlives its connection; 0 ends it with the connection.
    pub expiry_interval: u32,
    /// Bumped on every attach, so that timers armed at a detach can tell
    /// whether the session was resumed since.
    pub generation: u64,
    /// `claimed_at` of the last connection attached.
    pub claimed_at: u64,
    /// Publishers paused until this queue drains, in the order they paused.
    /// Boxed: a session rarely has any, and this struct is paid per connection.
    #[allow(clippy::box_collection)]
    paused_publishers: Option<Box<VecDeque<Arc<Signal>>>>,
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

/// A session's subscriptions by their filter as the client wrote it, sorted by filter. A
/// vector, half the size of an empty hash map, searched by bisection: a client with
/// thousands of subscriptions pays a dozen comparisons per SUBSCRIBE, not thousands.
#[derive(Debug, Default)]
pub struct Subscriptions(Vec<(String, StoredSubscription)>);

impl Subscriptions {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn position(&self, filter: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(f, _)| f.as_str().cmp(filter))
    }

    /// Adds or replaces the subscription to `filter`.
    pub fn insert(&mut self, filter: String, subscription: StoredSubscription) {
        match self.position(&filter) {
            Ok(i) => self.0[i].1 = subscription,
            Err(i) => self.0.insert(i, (filter, subscription)),
        }
    }

    pub fn remove(&mut self, filter: &str) -> Option<StoredSubscription> {
        let i = self.position(filter).ok()?;
        Some(self.0.remove(i).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &StoredSubscription)> {
        self.0.iter().map(|(f, s)| (f.as_str(), s))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(f, _)| f.as_str())
    }
}

/// Outgoing messages awaiting acknowledgement, in the order they were sent.
/// Clients acknowledge mostly in order, so the entry sought is nearly
/// always the first: cheaper than a tree that shifts its nodes on removal.
#[derive(Debug, Default)]
pub struct InflightWindow {
    entries: VecDeque<(u16, Inflight)>,
}

impl InflightWindow {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn position(&self, id: u16) -> Option<usize> {
        self.entries.iter().position(|(k, _)| *k == id)
    }

    pub fn contains_key(&self, id: &u16) -> bool {
        self.position(*id).is_some()
    }

    pub fn get(&self, id: &u16) -> Option<&Inflight> {
        self.position(*id).map(|i| &self.entries[i].1)
    }

    /// Adds `id` at the end, or replaces its state where it stands.
    /// Returns what was in flight under `id` before.
    pub fn insert(&mut self, id: u16, value: Inflight) -> Option<Inflight> {
        match self.position(id) {
            Some(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            None => {
                self.entries.push_back((id, value));
                None
            }
        }
    }

    pub fn remove(&mut self, id: &u16) -> Option<Inflight> {
        let i = self.position(*id)?;
        self.entries.remove(i).map(|(_, v)| v)
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// In the order the messages were sent.
    pub fn iter(&self) -> impl Iterator<Item = (&u16, &Inflight)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

/// A small set of packet ids, bounded by a Receive Maximum: a vector is
/// smaller than a hash set and as fast at these sizes.
#[derive(Debug, Default)]
pub struct PacketIds(Vec<u16>);

impl PacketIds {
    pub fn contains(&self, id: u16) -> bool {
        self.0.contains(&id)
    }

    pub fn insert(&mut self, id: u16) {
        if !self.contains(id) {
            self.0.push(id);
        }
    }

    /// Removes `id`; returns whether it was there.
    pub fn remove(&mut self, id: u16) -> bool {
        match self.0.iter().position(|&x| x == id) {
            Some(i) => {
                self.0.swap_remove(i);
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
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
    /// Where its stored queue's keys begin, made at its first stored message.
    queue_prefix: std::sync::OnceLock<Box<[u8]>>,
    alive: AtomicBool,
    connected: AtomicBool,
    /// Set when a publisher gave up waiting for this session to drain; its
    /// excess is dropped instead of pausing publishers, until it catches up.
    slow: AtomicBool,
    /// Outlives its connection and a restart: its subscriptions and QoS 1/2 messages are stored.
    persistent: AtomicBool,
    /// Messages taken off the queue since the session began.
    drained_total: AtomicU64,
    /// Its connection is to be sent away: the node drains.
    evicted: AtomicBool,
    /// Taken from another node moments ago: what is routed here for it is held for the
    /// store's watch (see `Delivery::fence`), as its old node may still be storing copies
    /// routed there before.
    catching_up: AtomicBool,
    /// Handed to another node, whose routes for it may not have reached every node yet: what
    /// is still routed here for it is only written to its queue in the store, for that node.
    lingering: AtomicBool,
    /// The store revision of its record when this node took it: a record written later that
    /// names another node means that node has claimed it since.
    owned_since: AtomicU64,
    /// The ownership its store writes are made under; held while one is submitted, so that
    /// they reach the writer in the order the ownership changes.
    pub(super) ownership: Mutex<Ownership>,
    /// Requests to services not yet answered (see `services::InFlight`).
    pub(super) service_requests: AtomicU32,
    pub state: Mutex<SessionState>,
    /// The certificate id or other principal its connection authenticated as, for the rules'
    /// `principal()`; `None` for an anonymous one.
    principal: parking_lot::RwLock<Option<Arc<str>>>,
}

/// Wakes up to `n` paused publishers, oldest first.
fn release_paused(state: &mut SessionState, n: usize) {
    let Some(paused) = state.paused_publishers.as_mut() else {
        return;
    };
    for _ in 0..n {
        let Some(publisher) = paused.pop_front() else {
            break;
        };
        publisher.waiting_for_space.store(false, Ordering::Release);
        publisher.wake();
    }
    if paused.is_empty() {
        state.paused_publishers = None;
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
            queue_prefix: std::sync::OnceLock::new(),
            alive: AtomicBool::new(true),
            connected: AtomicBool::new(false),
            slow: AtomicBool::new(false),
            persistent: AtomicBool::new(false),
            drained_total: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            catching_up: AtomicBool::new(false),
            lingering: AtomicBool::new(false),
            owned_since: AtomicU64::new(0),
            ownership: Mutex::new(Ownership::Unowned),
            service_requests: AtomicU32::new(0),
            state: Mutex::new(SessionState::default()),
            principal: parking_lot::RwLock::new(None),
        }
    }

    /// Notes who the connection now attached authenticated as (empty for nobody).
    pub fn set_principal(&self, principal: &str) {
        *self.principal.write() = (!principal.is_empty()).then(|| Arc::from(principal));
    }

    pub fn principal(&self) -> Option<Arc<str>> {
        self.principal.read().clone()
    }

    /// The store key of its queued message numbered `stored`.
    pub fn queue_key(&self, stored: u64) -> Vec<u8> {
        let prefix = self
            .queue_prefix
            .get_or_init(|| crate::store::keys::queue_prefix(&self.client_id).into());
        crate::store::keys::queue_under(prefix, stored)
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    pub fn is_persistent(&self) -> bool {
        self.persistent.load(Ordering::Acquire)
    }

    pub(super) fn set_persistent(&self, persistent: bool) {
        self.persistent.store(persistent, Ordering::Release);
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Whether the stored copy numbered `stored` is queued or in flight here.
    pub fn holds_stored(&self, stored: u64) -> bool {
        let state = self.state.lock();
        state.queue.iter().any(|d| d.stored == stored)
            || state
                .inflight
                .iter()
                .any(|(_, i)| matches!(i, Inflight::Sent(d) if d.stored == stored))
    }

    /// Marks the session's connection to be sent away; false if it already was.
    pub(super) fn evict(&self) -> bool {
        !self.evicted.swap(true, Ordering::AcqRel)
    }

    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    pub fn owned_since(&self) -> u64 {
        self.owned_since.load(Ordering::Acquire)
    }

    pub(super) fn set_owned_since(&self, revision: u64) {
        self.owned_since.store(revision, Ordering::Release);
    }

    /// See `lingering`; its queue is emptied, as the store holds it.
    pub(super) fn linger(&self) {
        self.lingering.store(true, Ordering::Release);
        let mut state = self.state.lock();
        state.queue.clear();
        state.inflight.clear();
    }

    pub fn is_catching_up(&self) -> bool {
        self.catching_up.load(Ordering::Acquire)
    }

    pub(super) fn set_catching_up(&self, catching_up: bool) {
        self.catching_up.store(catching_up, Ordering::Release);
    }

    pub(super) fn is_lingering(&self) -> bool {
        self.lingering.load(Ordering::Acquire)
    }

    pub(super) fn mark_dead(&self) {
        self.alive.store(false, Ordering::Release);
        release_paused(&mut self.state.lock(), usize::MAX);
    }

    /// Marks the session too slow to pause publishers for, releasing those
    /// paused on it.
    pub fn mark_slow(&self) {
        self.slow.store(true, Ordering::Release);
        release_paused(&mut self.state.lock(), usize::MAX);
    }

    /// Messages taken off the queue so far: a paused publisher tells a slow
    /// subscriber from a busy one by whether this moves.
    pub fn progress(&self) -> u64 {
        self.drained_total.load(Ordering::Acquire)
    }

    /// Whether a publisher paused on this session may go on: the queue is
    /// below its limit, or the session can no longer pause anyone.
    pub fn has_space(&self, limits: QueueLimits) -> bool {
        self.has_space_in(&self.state.lock(), limits)
    }

    fn has_space_in(&self, state: &SessionState, limits: QueueLimits) -> bool {
        !self.is_alive()
            || state.attached.is_none()
            || self.slow.load(Ordering::Acquire)
            || !limits.reached(&state.queue)
    }

    /// Queues `publisher` to be woken when this session's queue has room,
    /// or wakes it now if it has. Publishers are woken one per message
    /// taken off the queue, in the order they paused, so that many
    /// publishers feeding one subscriber take turns.
    pub fn wait_for_space(&self, publisher: &Arc<Signal>, limits: QueueLimits) {
        let mut state = self.state.lock();
        if self.has_space_in(&state, limits) {
            publisher.wake();
        } else if !publisher.waiting_for_space.swap(true, Ordering::AcqRel) {
            state
                .paused_publishers
                .get_or_insert_with(Default::default)
                .push_back(Arc::clone(publisher));
        }
    }

    /// Called by the session's connection, under the session lock, after it
    /// took `popped` messages off the queue: wakes as many paused publishers.
    pub(super) fn drained(&self, state: &mut SessionState, popped: usize, limits: QueueLimits) {
        if popped == 0 {
            return;
        }
        self.drained_total
            .fetch_add(popped as u64, Ordering::AcqRel);
        if state.queue.len() < limits.messages.div_ceil(2)
            && state.queue.bytes() < limits.bytes.div_ceil(2)
        {
            self.slow.store(false, Ordering::Release);
        }
        release_paused(state, popped);
    }

    /// Attaches a connection; returns the one it replaces.
    pub(super) fn attach(&self, attachment: Attachment) -> Option<Attachment> {
        let mut state = self.state.lock();
        state.generation += 1;
        state.claimed_at = attachment.claimed_at;
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
                release_paused(&mut state, usize::MAX);
                Some(state.generation)
            }
            _ => None,
        }
    }

    /// Offers a message. Offline sessions keep QoS 1/2 only, up to the
    /// limits. A connected session past them drops QoS 0 and keeps QoS
    /// 1/2, asking the publisher to pause, unless it is marked slow.
    pub fn enqueue(&self, delivery: Delivery, limits: QueueLimits) -> Enqueued {
        self.enqueue_with(delivery, limits, DeliveryQueue::push_back)
    }

    /// As [`Session::enqueue`], for a copy the store committed at `revision` (see
    /// [`DeliveryQueue::insert_committed`]).
    pub fn enqueue_committed(
        &self,
        delivery: Delivery,
        revision: u64,
        covering: impl Fn(u64) -> Option<u64>,
        limits: QueueLimits,
    ) -> Enqueued {
        let enqueued = self.enqueue_with(delivery, limits, |queue, delivery| {
            queue.insert_committed(delivery, revision, covering)
        });
        // Placed ahead of held deliveries, it may be sendable where the front was not.
        if let Some(a) = &self.state.lock().attached {
            a.waker.wake();
        }
        enqueued
    }

    /// Lets go of the deliveries held for a store revision the watch has passed (`passed`
    /// tells of a fence); whether any is still held.
    pub fn release_held(&self, passed: impl Fn(u64) -> bool) -> bool {
        let mut state = self.state.lock();
        let (released, held) = state.queue.release(passed);
        if released && let Some(a) = &state.attached {
            a.waker.wake();
        }
        held
    }

    fn enqueue_with(
        &self,
        delivery: Delivery,
        limits: QueueLimits,
        place: impl FnOnce(&mut DeliveryQueue, Delivery),
    ) -> Enqueued {
        if !self.is_alive() {
            return Enqueued::Gone;
        }
        if self.lingering.load(Ordering::Acquire) {
            return if delivery.qos == QoS::AtMostOnce {
                Enqueued::Dropped(DropReason::OfflineQos0)
            } else {
                Enqueued::Queued
            };
        }
        let mut state = self.state.lock();
        let was_empty = state.queue.is_empty();
        let full = limits.reached(&state.queue);
        if state.attached.is_none() {
            if delivery.qos == QoS::AtMostOnce {
                return Enqueued::Dropped(DropReason::OfflineQos0);
            }
            if full {
                return Enqueued::Dropped(DropReason::QueueFull);
            }
            place(&mut state.queue, delivery);
            return Enqueued::Queued;
        }
        if full
            && (delivery.qos == QoS::AtMostOnce
                || self.slow.load(Ordering::Acquire)
                || limits.hard_limit_reached(&state.queue))
        {
            return Enqueued::Dropped(DropReason::QueueFull);
        }
        place(&mut state.queue, delivery);
        // A non-empty queue already has its connection's attention.
        if was_empty && let Some(a) = &state.attached {
            a.waker.wake();
        }
        if limits.reached(&state.queue) {
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

    #[test]
    fn a_copy_committed_before_held_deliveries_came_goes_ahead_of_them() {
        let numbered = |stored, fence| Delivery {
            stored,
            fence,
            ..delivery(QoS::AtLeastOnce)
        };
        let mut queue = DeliveryQueue::default();
        queue.push_back(numbered(1, 0));
        // Held: this node's writes from submission 10 on came after it, and from 12 on
        // after the next.
        queue.push_back(numbered(2, 10));
        queue.push_back(numbered(3, 12));
        // Submission 10 was written at revision 50; 12 not yet.
        let covering = |fence| (fence <= 10).then_some(50);
        queue.insert_committed(numbered(4, 0), 40, covering);
        queue.insert_committed(numbered(5, 0), 60, covering);
        let order = |queue: &DeliveryQueue| queue.iter().map(|d| d.stored).collect::<Vec<_>>();
        assert_eq!(order(&queue), [1, 4, 2, 5, 3]);

        // The watch passed revision 55: the first held goes, the second is still held.
        let passed = |fence| covering(fence).is_some_and(|r| r <= 55);
        assert_eq!(queue.release(passed), (true, true));
        assert_eq!(
            queue.iter().map(|d| d.fence).collect::<Vec<_>>(),
            [0, 0, 0, 0, 12]
        );
        assert_eq!(queue.release(passed), (false, true));
        assert_eq!(queue.release(|_| true), (true, false));
        assert!(queue.iter().all(|d| d.fence == 0));
        assert_eq!(queue.bytes(), 5 * weight(&numbered(0, 0)));
    }

    #[test]
    fn subscriptions_are_found_replaced_and_removed_by_filter() {
        let with_id = |id| StoredSubscription {
            options: SubscriptionOptions::default(),
            subscription_id: Some(id),
        };
        let mut subscriptions = Subscriptions::default();
        for (n, filter) in ["b/#", "a/+", "c", "a/b"].into_iter().enumerate() {
            subscriptions.insert(filter.to_owned(), with_id(n as u32));
        }
        subscriptions.insert("a/+".to_owned(), with_id(9));
        assert_eq!(subscriptions.len(), 4);
        assert_eq!(
            subscriptions.keys().collect::<Vec<_>>(),
            ["a/+", "a/b", "b/#", "c"]
        );
        assert_eq!(subscriptions.remove("a/+"), Some(with_id(9)));
        assert_eq!(subscriptions.remove("a/+"), None);
        assert_eq!(subscriptions.remove("zzz"), None);
        assert_eq!(
            subscriptions.keys().collect::<Vec<_>>(),
            ["a/b", "b/#", "c"]
        );
    }

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
            stored: 0,
            fence: 0,
        }
    }

    fn limits(messages: usize) -> QueueLimits {
        QueueLimits {
            messages,
            bytes: usize::MAX,
        }
    }

    fn connected_session() -> Session {
        let s = Session::new(1, Arc::from("c"));
        s.attach(Attachment {
            connection_id: 7,
            waker: Arc::new(Signal::default()),
            claimed_at: 1,
        });
        s
    }

    #[test]
    fn offline_sessions_keep_qos1_up_to_the_limit() {
        let s = Session::new(1, Arc::from("c"));
        assert_eq!(
            s.enqueue(delivery(QoS::AtMostOnce), limits(2)),
            Enqueued::Dropped(DropReason::OfflineQos0)
        );
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), limits(2)),
            Enqueued::Queued
        );
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), limits(2)),
            Enqueued::Queued
        );
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), limits(2)),
            Enqueued::Dropped(DropReason::QueueFull)
        );
    }

    #[test]
    fn connected_sessions_push_back_instead_of_dropping_qos1() {
        let s = connected_session();
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), limits(2)),
            Enqueued::Queued
        );
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), limits(2)),
            Enqueued::Congested
        );
        assert!(!s.has_space(limits(2)));
        // Over the limit QoS 1 is still kept, QoS 0 is not.
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), limits(2)),
            Enqueued::Congested
        );
        assert_eq!(
            s.enqueue(delivery(QoS::AtMostOnce), limits(2)),
            Enqueued::Dropped(DropReason::QueueFull)
        );
        // Up to the hard limit.
        for _ in 3..2 * HARD_LIMIT_FACTOR {
            assert_eq!(
                s.enqueue(delivery(QoS::AtLeastOnce), limits(2)),
                Enqueued::Congested
            );
        }
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), limits(2)),
            Enqueued::Dropped(DropReason::QueueFull)
        );
    }

    #[test]
    fn slow_sessions_drop_their_excess_until_they_drain() {
        let s = connected_session();
        s.enqueue(delivery(QoS::AtLeastOnce), limits(2));
        s.enqueue(delivery(QoS::AtLeastOnce), limits(2));
        s.mark_slow();
        assert!(s.has_space(limits(2)));
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), limits(2)),
            Enqueued::Dropped(DropReason::QueueFull)
        );
        let mut state = s.state.lock();
        state.queue.clear();
        s.drained(&mut state, 2, limits(2));
        drop(state);
        s.enqueue(delivery(QoS::AtLeastOnce), limits(2));
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), limits(2)),
            Enqueued::Congested
        );
    }

    #[test]
    fn detaching_releases_paused_publishers() {
        let s = connected_session();
        s.enqueue(delivery(QoS::AtLeastOnce), limits(1));
        assert!(!s.has_space(limits(1)));
        s.detach(7);
        assert!(s.has_space(limits(1)));
    }

    #[test]
    fn queues_are_bounded_by_bytes_too() {
        // Each test delivery is one byte of topic and one of payload.
        let bounded = QueueLimits {
            messages: 100,
            bytes: 4,
        };
        let s = Session::new(1, Arc::from("c"));
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), bounded),
            Enqueued::Queued
        );
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), bounded),
            Enqueued::Queued
        );
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), bounded),
            Enqueued::Dropped(DropReason::QueueFull)
        );
        assert_eq!(s.state.lock().queue.bytes(), 4);
        let mut state = s.state.lock();
        state.queue.pop_front();
        assert_eq!(state.queue.bytes(), 2);
        state.queue.clear();
        assert_eq!(state.queue.bytes(), 0);
    }
}
