//! Taps: consumers that see every message on their filters without being MQTT sessions (the
//! rules engine is one). A tap has a bounded queue; a message it has no room for is dropped
//! and counted, so that a slow consumer never holds up a publisher.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::IntCounter;
use tokio::sync::mpsc;

use super::Broker;
use super::message::Message;
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

/// The broker's end of a tap.
#[derive(Debug)]
pub struct TapQueue {
    id: u64,
    sender: mpsc::Sender<Tapped>,
    accepted: IntCounter,
    dropped: IntCounter,
}

impl TapQueue {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub(super) fn offer(&self, tapped: Tapped) {
        match self.sender.try_send(tapped) {
            Ok(()) => self.accepted.inc(),
            // Full, or the consumer is gone: either way the message is not taken.
            Err(_) => self.dropped.inc(),
        }
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
    receiver: mpsc::Receiver<Tapped>,
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
        self.receiver.recv().await
    }

    /// A message if one is waiting.
    pub fn try_recv(&mut self) -> Option<Tapped> {
        self.receiver.try_recv().ok()
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
    /// Adds a tap named `name` on `filters` holding at most `capacity` messages not yet taken.
    /// Its counters are `halyard_tap_messages_total{tap="name",outcome="accepted|dropped"}`.
    pub fn add_tap(&self, name: &str, filters: &[&str], capacity: usize) -> Result<Tap, TapError> {
        if capacity == 0 {
            return Err(TapError::Capacity { tap: name.into() });
        }
        for filter in filters {
            check_filter(name, filter)?;
        }
        let (sender, receiver) = mpsc::channel(capacity);
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
