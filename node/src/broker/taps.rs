//! Taps: consumers that see every message on their filters without being MQTT sessions (the
//! rules engine is one). Taking a message means the tap has it: a publisher is acknowledged only
//! after that. A tap holding more than its capacity makes the MQTT publishers that fill it pause
//! (they stop being read) until its consumer catches up; beyond twice its capacity, which only
//! many publishers at once can reach, a QoS 1/2 message is refused as a whole (the publisher
//! sends it again) and a QoS 0 one is dropped and counted.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use prometheus::IntCounter;
use tokio::sync::mpsc;

use super::Broker;
use super::message::Message;
use super::session::Signal;
use super::trie::{Subscriber, Target};
use crate::mqtt::SubscriptionOptions;
use crate::mqtt::topic;

/// A message as a tap receives it.
#[derive(Debug, Clone)]
pub struct Tapped {
    pub message: Arc<Message>,
    /// The client id of the MQTT client that published it; `None` for the broker's own
    /// messages and HTTPS publishes.
    pub client_id: Option<Arc<str>>,
    /// The certificate id or other principal that client authenticated as.
    pub principal: Option<Arc<str>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(
        "tap {tap}: `{filter}` is not a valid topic filter (nor a shared one: a tap takes every message)"
    )]
    Filter { tap: String, filter: String },
    #[error("tap {tap}: the queue must hold at least one message")]
    Capacity { tap: String },
    #[error("cannot register the metrics of tap {tap}: {source}")]
    Metrics {
        tap: String,
        source: prometheus::Error,
    },
}

/// Beyond this many times its capacity a tap takes nothing: the bound on memory when many
/// publishers overshoot the capacity at once, each before it pauses.
const HARD_LIMIT_FACTOR: usize = 2;

/// The broker's end of a tap.
#[derive(Debug)]
pub struct TapQueue {
    id: u64,
    sender: mpsc::UnboundedSender<Tapped>,
    /// Messages offered and not yet taken by the consumer.
    pending: AtomicUsize,
    capacity: usize,
    /// Messages the consumer has taken: whether a publisher paused on the tap sees progress.
    taken: AtomicU64,
    /// Publishers paused on this tap, woken in the order they paused as the consumer catches up.
    paused: parking_lot::Mutex<VecDeque<Arc<Signal>>>,
    paused_count: AtomicUsize,
    accepted: IntCounter,
    dropped: IntCounter,
}

/// What a tap did with a message offered to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Offered {
    Taken,
    /// Taken, and the tap holds more than its capacity: the publisher should pause.
    Congested,
    /// Not taken: the tap is at its hard limit, or its consumer is gone.
    Dropped,
}

impl TapQueue {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether the tap is at its hard limit: a message offered now would not be taken.
    pub(super) fn is_full(&self) -> bool {
        self.pending.load(Ordering::Acquire) >= self.capacity.saturating_mul(HARD_LIMIT_FACTOR)
    }

    pub(super) fn offer(&self, tapped: Tapped) -> Offered {
        if self.is_full() {
            self.dropped.inc();
            return Offered::Dropped;
        }
        let pending = self.pending.fetch_add(1, Ordering::AcqRel) + 1;
        if self.sender.send(tapped).is_err() {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.dropped.inc();
            return Offered::Dropped;
        }
        self.accepted.inc();
        if pending > self.capacity {
            Offered::Congested
        } else {
            Offered::Taken
        }
    }

    /// How many messages the consumer has taken.
    pub fn progress(&self) -> u64 {
        self.taken.load(Ordering::Acquire)
    }

    /// Whether a publisher paused on the tap may go on: it is within its capacity again, or
    /// nobody consumes it any more.
    pub fn has_space(&self) -> bool {
        self.sender.is_closed() || self.pending.load(Ordering::Acquire) <= self.capacity
    }

    /// Queues `publisher` to be woken when the tap is within its capacity, or wakes it now.
    pub fn wait_for_space(&self, publisher: &Arc<Signal>) {
        let mut paused = self.paused.lock();
        // Looked at under the lock that `took` takes to wake, so that no wake is missed.
        if self.has_space() {
            drop(paused);
            publisher.wake();
        } else if !publisher.waiting_for_tap.swap(true, Ordering::AcqRel) {
            paused.push_back(Arc::clone(publisher));
            self.paused_count.store(paused.len(), Ordering::Release);
        }
    }

    /// The consumer took `n` messages: wakes as many paused publishers, if the tap is within
    /// its capacity.
    fn took(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.taken.fetch_add(n as u64, Ordering::AcqRel);
        let pending = self.pending.fetch_sub(n, Ordering::AcqRel) - n;
        if self.paused_count.load(Ordering::Acquire) == 0 || pending > self.capacity {
            return;
        }
        let mut paused = self.paused.lock();
        for _ in 0..n {
            let Some(publisher) = paused.pop_front() else {
                break;
            };
            publisher.waiting_for_tap.store(false, Ordering::Release);
            publisher.wake();
        }
        self.paused_count.store(paused.len(), Ordering::Release);
    }

    /// Wakes every paused publisher: the consumer is gone.
    fn release_all(&self) {
        let mut paused = self.paused.lock();
        for publisher in paused.drain(..) {
            publisher.waiting_for_tap.store(false, Ordering::Release);
            publisher.wake();
        }
        self.paused_count.store(0, Ordering::Release);
    }
}

impl Target for Arc<TapQueue> {
    fn target_id(&self) -> u64 {
        self.id
    }
}

/// The consumer's end: messages in the order they were ingested. Dropping it removes the tap.
pub struct Tap {
    queue: Arc<TapQueue>,
    filters: Arc<parking_lot::Mutex<Vec<String>>>,
    receiver: mpsc::UnboundedReceiver<Tapped>,
    broker: Broker,
    name: String,
}

/// Changes a tap's filters while its consumer reads on (the rules engine's follow the FROM
/// filters of its rules, so that a message no rule wants costs nothing).
#[derive(Clone)]
pub struct TapFilters {
    queue: Arc<TapQueue>,
    filters: Arc<parking_lot::Mutex<Vec<String>>>,
    broker: Broker,
    name: String,
}

impl TapFilters {
    /// Makes `filters` the tap's filters; none changes if one is invalid.
    pub fn set(&self, filters: &[&str]) -> Result<(), TapError> {
        for filter in filters {
            check_filter(&self.name, filter)?;
        }
        let mut current = self.filters.lock();
        let mut taps = self.broker.inner.taps.write();
        for filter in current.iter() {
            taps.remove(filter, None, self.queue.id);
        }
        for filter in filters {
            taps.insert(filter, None, tap_subscriber(&self.queue));
        }
        *current = filters.iter().map(|f| (*f).to_owned()).collect();
        Ok(())
    }
}

impl Tap {
    /// The next message; `None` once the broker is gone.
    pub async fn recv(&mut self) -> Option<Tapped> {
        let tapped = self.receiver.recv().await?;
        self.queue.took(1);
        Some(tapped)
    }

    /// Up to `limit` messages into `out`, waiting for the first; 0 once the broker is gone.
    pub async fn recv_many(&mut self, out: &mut Vec<Tapped>, limit: usize) -> usize {
        let n = self.receiver.recv_many(out, limit).await;
        self.queue.took(n);
        n
    }

    /// A message if one is waiting.
    pub fn try_recv(&mut self) -> Option<Tapped> {
        let tapped = self.receiver.try_recv().ok()?;
        self.queue.took(1);
        Some(tapped)
    }

    /// A handle that changes the tap's filters.
    pub fn filters(&self) -> TapFilters {
        TapFilters {
            queue: Arc::clone(&self.queue),
            filters: Arc::clone(&self.filters),
            broker: self.broker.clone(),
            name: self.name.clone(),
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let filters = self.filters.lock();
        let mut taps = self.broker.inner.taps.write();
        for filter in filters.iter() {
            taps.remove(filter, None, self.queue.id);
        }
        drop(taps);
        self.receiver.close();
        self.queue.release_all();
    }
}

/// A tap takes any valid filter but a shared one: it sees every message.
fn check_filter(tap: &str, filter: &str) -> Result<(), TapError> {
    let shared = topic::parse_filter(filter).is_ok_and(|f| f.share_group.is_some());
    if shared || topic::validate_filter(filter, usize::from(u16::MAX), usize::MAX).is_err() {
        return Err(TapError::Filter {
            tap: tap.into(),
            filter: filter.to_owned(),
        });
    }
    Ok(())
}

fn tap_subscriber(queue: &Arc<TapQueue>) -> Subscriber<Arc<TapQueue>> {
    Subscriber {
        target: Arc::clone(queue),
        options: SubscriptionOptions::default(),
        subscription_id: None,
    }
}

static NEXT_TAP: AtomicU64 = AtomicU64::new(1);

impl Broker {
    /// Adds a tap named `name` on `filters` whose publishers pause beyond `capacity` messages
    /// not yet taken (see the module's documentation). Its counters are
    /// `halyard_tap_messages_total{tap="name",outcome="accepted|dropped"}`.
    pub fn add_tap(&self, name: &str, filters: &[&str], capacity: usize) -> Result<Tap, TapError> {
        if capacity == 0 {
            return Err(TapError::Capacity { tap: name.into() });
        }
        for filter in filters {
            check_filter(name, filter)?;
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        let counter = |outcome| {
            self.inner
                .metrics
                .tap_messages
                .get_metric_with_label_values(&[name, outcome])
                .map_err(|source| TapError::Metrics {
                    tap: name.into(),
                    source,
                })
        };
        let queue = Arc::new(TapQueue {
            id: NEXT_TAP.fetch_add(1, Ordering::Relaxed),
            sender,
            pending: AtomicUsize::new(0),
            capacity,
            taken: AtomicU64::new(0),
            paused: parking_lot::Mutex::new(VecDeque::new()),
            paused_count: AtomicUsize::new(0),
            accepted: counter("accepted")?,
            dropped: counter("dropped")?,
        });
        let mut taps = self.inner.taps.write();
        for filter in filters {
            taps.insert(filter, None, tap_subscriber(&queue));
        }
        Ok(Tap {
            queue,
            filters: Arc::new(parking_lot::Mutex::new(
                filters.iter().map(|f| (*f).to_owned()).collect(),
            )),
            receiver,
            broker: self.clone(),
            name: name.to_owned(),
        })
    }
}
