//! The broker: sessions, the subscription trie, retained messages, delivery,
//! wills and takeover. In-memory and synchronous except for the timers of
//! session expiry and delayed wills; connections drive it through
//! [`Connection`], services through the [`Broker`] handle.

mod close;
mod connection;
mod deadlines;
pub mod durable;
mod ingest;
mod lifecycle;
mod message;
mod remote;
mod retained;
mod services;
mod session;
mod taps;
mod trie;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;

pub use close::CloseKind;
pub use connection::Connection;
pub use deadlines::{Deadlines, SWEEP_INTERVAL};
pub use ingest::Ingress;
pub use lifecycle::{Connected, PresenceObserver};
pub use message::{Delivery, Message};
pub use remote::{AckCursor, Claim, ClaimOutcome, GroupKey, Handoff, Remote, StoredOwner};
pub use retained::{Retained, RetainedStore};
pub use services::{InFlight, ServiceRequest, TopicService};
pub use session::{
    Attachment, DeliveryQueue, Enqueued, Inflight, QueueLimits, Session, Signal, StoredSubscription,
};
pub use taps::{Tap, TapError, TapFilters, TapQueue, Tapped};
pub use trie::{SharedMatch, Subscriber, SubscriptionTrie, Target};

pub use durable::{Durable, Ownership};

use crate::config::MqttConfig;
use crate::metrics::BrokerMetrics;
use crate::mqtt::SubscriptionOptions;
use crate::mqtt::topic::{self, ParsedFilter};

/// A cheap, cloneable handle to one broker.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    config: MqttConfig,
    metrics: BrokerMetrics,
    /// Taken only to open and end sessions, never on the publish path.
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    /// Read-locked by every publish; written by SUBSCRIBE and UNSUBSCRIBE.
    trie: RwLock<SubscriptionTrie>,
    retained: RwLock<RetainedStore>,
    next_id: AtomicU64,
    shutting_down: AtomicBool,
    /// Set by a drain: the server reference (possibly empty) given to clients sent away.
    draining: std::sync::OnceLock<Option<String>>,
    deadlines: Deadlines,
    /// Where retained messages and persistent sessions are kept; `None` keeps them in memory.
    durable: Option<Arc<Durable>>,
    /// Registered once at start; read only for `$aws/` topics. Weak: a service holds this
    /// broker to publish its answers, and whoever started it owns it.
    services: RwLock<Vec<Weak<dyn TopicService>>>,
    /// Consumers of every message on their filters, such as the rules engine.
    taps: RwLock<SubscriptionTrie<Arc<TapQueue>>>,
    /// The other nodes of a cluster, set once before sessions are restored. Weak: the
    /// cluster's data plane holds this broker to deliver what other nodes forward.
    remote: std::sync::OnceLock<Weak<dyn Remote>>,
    /// Turns true once the stored sessions are restored.
    restored: tokio::sync::watch::Sender<bool>,
    /// The latest connection each client id made on another node, when (microseconds since
    /// the epoch): a connection here made before it must not take the session back.
    foreign_connections: Mutex<HashMap<Arc<str>, u64>>,
    /// Sessions handed to another node that still linger here (see `linger`), by client id.
    lingering: Mutex<HashMap<Arc<str>, Vec<Arc<Session>>>>,
    /// Sessions with deliveries held for the store's watch (see `Delivery::fence`), and
    /// since when.
    holding: Mutex<HashMap<Arc<str>, HoldingSince>>,
    /// The store revision the watch of queues has passed.
    watched: AtomicU64,
    /// Sessions installed lately that are catching up (see `Session::is_catching_up`), with
    /// when each stops, in that order.
    catching_up: Mutex<std::collections::VecDeque<(Weak<Session>, Instant)>>,
    /// Hears of connections and disconnections; weak for the same reason as `services`.
    presence: RwLock<Option<Weak<dyn PresenceObserver>>>,
}

/// A session holding deliveries for the store's watch, and since when.
type HoldingSince = (Arc<Session>, Instant);

/// What became of a published message.
#[derive(Default)]
pub struct Published {
    /// Sessions the message was offered to.
    pub offered: usize,
    /// A connected session whose queue reached its limit with this message:
    /// the publisher should pause until it drains.
    pub congested: Option<Arc<Session>>,
    /// The store write this message needs before it may be acknowledged; 0 for none.
    pub durable_seq: u64,
    /// The other nodes' receipts this message needs before it may be acknowledged.
    pub handoffs: Vec<Handoff>,
    /// Services that took it as a request.
    pub served: usize,
    /// Not taken at all: the store cannot make it durable now, or a tap is at its hard limit
    /// (see [`Broker::ingest`]).
    pub refused: bool,
    /// A tap that holds more than its capacity with this message: the publisher should pause
    /// until its consumer catches up.
    pub tap_congested: Option<Arc<TapQueue>>,
    /// For a message another node forwarded: the share groups it named (by their index)
    /// that have no member here.
    pub unserved_groups: Vec<usize>,
    /// Whether the session a reply was meant for had a subscription that took it.
    requester_offered: bool,
}

/// The outcome of opening a session for a new connection.
pub struct OpenedSession {
    pub session: Arc<Session>,
    /// Whether an existing session was resumed.
    pub present: bool,
}

/// Foreign connections remembered before old ones are pruned, and how old that is.
const FOREIGN_CONNECTIONS_PRUNE_AT: usize = 4096;
const FOREIGN_CONNECTION_TTL_US: u64 = 60_000_000;

/// How often a session handed to another node looks for its claim to complete.
const LINGER_CHECK: Duration = Duration::from_millis(50);
/// How long it lingers after that.
const LINGER_MARGIN: Duration = Duration::from_millis(500);
/// How long a session taken from another node holds what is routed to it for the store's
/// watch: past the old node's lingering, with room for its last copies to be written.
const CATCH_UP: Duration = Duration::from_secs(2);
/// Held deliveries go after this even if the watch never passed them (it broke off).
const HOLD_LIMIT: Duration = Duration::from_secs(2);

impl Broker {
    pub fn new(
        config: MqttConfig,
        metrics: BrokerMetrics,
        durable: Option<Arc<Durable>>,
    ) -> Broker {
        Broker {
            inner: Arc::new(Inner {
                config,
                metrics,
                sessions: Mutex::new(HashMap::new()),
                trie: RwLock::new(SubscriptionTrie::default()),
                retained: RwLock::new(RetainedStore::default()),
                next_id: AtomicU64::new(1),
                shutting_down: AtomicBool::new(false),
                draining: std::sync::OnceLock::new(),
                deadlines: Deadlines::default(),
                durable,
                services: RwLock::new(Vec::new()),
                taps: RwLock::new(SubscriptionTrie::default()),
                remote: std::sync::OnceLock::new(),
                restored: tokio::sync::watch::Sender::new(false),
                foreign_connections: Mutex::new(HashMap::new()),
                lingering: Mutex::new(HashMap::new()),
                holding: Mutex::new(HashMap::new()),
                watched: AtomicU64::new(0),
                catching_up: Mutex::new(std::collections::VecDeque::new()),
                presence: RwLock::new(None),
            }),
        }
    }

    pub fn config(&self) -> &MqttConfig {
        &self.inner.config
    }

    /// Joins this broker to the other nodes of a cluster: subscriptions are announced to
    /// `remote` from now on (and those held already, at once), and messages handed to it.
    /// Only the first call counts.
    pub fn set_remote(&self, remote: &Arc<dyn Remote>) {
        let trie = self.inner.trie.write();
        if self.inner.remote.set(Arc::downgrade(remote)).is_ok() {
            trie.for_each_filter(|filter, group| remote.subscribed(filter, group));
        }
    }

    fn remote(&self) -> Option<Arc<dyn Remote>> {
        self.inner.remote.get()?.upgrade()
    }

    pub fn metrics(&self) -> &BrokerMetrics {
        &self.inner.metrics
    }

    /// Tells every connection with a session that the server is stopping;
    /// connections still before CONNECT notice when they next wake.
    pub fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
        for session in self.inner.sessions.lock().values() {
            if let Some(a) = &session.state.lock().attached {
                a.waker.wake();
            }
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }

    /// From now on new connections are refused and connections sent away (see
    /// [`Broker::evict`]) with "use another server", and `server_reference` if set.
    pub fn begin_drain(&self, server_reference: Option<String>) {
        let _ = self.inner.draining.set(server_reference);
    }

    /// `Some` (with the server reference to give, if any) while the node drains.
    pub fn draining(&self) -> Option<Option<&str>> {
        self.inner.draining.get().map(Option::as_deref)
    }

    /// Sends up to `n` connected clients away ("use another server"); how many it sent.
    pub fn evict(&self, n: usize) -> usize {
        let mut evicted = 0;
        for session in self.inner.sessions.lock().values() {
            if evicted == n {
                break;
            }
            if session.is_connected() && session.evict() {
                if let Some(a) = &session.state.lock().attached {
                    a.waker.wake();
                }
                evicted += 1;
            }
        }
        evicted
    }

    /// The client ids of the persistent sessions this node holds with no connection: what a
    /// drain hands to other nodes.
    pub fn offline_persistent_sessions(&self) -> Vec<String> {
        self.inner
            .sessions
            .lock()
            .values()
            .filter(|s| s.is_persistent() && !s.is_connected())
            .map(|s| s.client_id.to_string())
            .collect()
    }

    /// The client ids of the persistent sessions this node holds, connected or not.
    pub fn persistent_sessions(&self) -> Vec<String> {
        self.inner
            .sessions
            .lock()
            .values()
            .filter(|s| s.is_persistent())
            .map(|s| s.client_id.to_string())
            .collect()
    }

    /// Persistent sessions this node holds, connected or not.
    pub fn persistent_session_count(&self) -> usize {
        self.inner
            .sessions
            .lock()
            .values()
            .filter(|s| s.is_persistent())
            .count()
    }

    /// Hands the offline persistent sessions of this node to other nodes; how many it offered.
    pub fn hand_over_sessions(&self) -> usize {
        let Some(remote) = self.remote() else {
            return 0;
        };
        remote.hand_over(self.offline_persistent_sessions())
    }

    /// Has `observer` hear of every connection and disconnection on this node.
    pub fn observe_presence(&self, observer: Weak<dyn PresenceObserver>) {
        *self.inner.presence.write() = Some(observer);
    }

    pub(crate) fn presence_observer(&self) -> Option<Arc<dyn PresenceObserver>> {
        self.inner.presence.read().as_ref().and_then(Weak::upgrade)
    }

    pub fn durable(&self) -> Option<&Arc<Durable>> {
        self.inner.durable.as_ref()
    }

    pub fn deadlines(&self) -> &Deadlines {
        &self.inner.deadlines
    }

    /// Wakes connections whose deadline passed, until `shutdown` turns true.
    pub async fn run_deadlines(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.inner.deadlines.sweep(Instant::now()),
                _ = shutdown.changed() => break,
            }
        }
    }

    /// A fresh id for a connection or a session.
    pub fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Number of sessions, connected or not.
    pub fn session_count(&self) -> usize {
        self.inner.sessions.lock().len()
    }

    /// Tells the other nodes that `client_id` connects here at `claimed_at`, and, when the
    /// connection resumes a session this node does not hold or starts a persistent one,
    /// claims its stored session for this node first: the connection waits for the claim,
    /// woken on `waker`, before [`Broker::open_session`]. `None`: nothing to wait for.
    pub fn claim_session(
        &self,
        client_id: &str,
        clean_start: bool,
        expiry_interval: u32,
        claimed_at: u64,
        waker: &Arc<Signal>,
    ) -> Option<Arc<Claim>> {
        let remote = self.remote()?;
        remote.connecting(client_id, clean_start, claimed_at);
        self.inner.durable.as_ref()?;
        let resumes = !clean_start && !self.holds_session(client_id);
        let starts_persistent = clean_start && expiry_interval > 0;
        (resumes || starts_persistent)
            .then(|| remote.claim(client_id, clean_start, claimed_at, waker))
    }

    /// Resumes or creates the session of `client_id` and attaches a
    /// connection to it; a connection attached before is told to leave.
    pub fn open_session(
        &self,
        client_id: &str,
        clean_start: bool,
        attachment: Attachment,
        expiry_interval: u32,
    ) -> OpenedSession {
        let mut sessions = self.inner.sessions.lock();
        if let Some(existing) = sessions.get(client_id).cloned() {
            if !clean_start {
                let replaced = existing.attach(attachment);
                existing.state.lock().expiry_interval = expiry_interval;
                self.set_persistence(&existing, expiry_interval);
                drop(sessions);
                if let Some(old) = replaced {
                    old.waker.wake();
                }
                return OpenedSession {
                    session: existing,
                    present: true,
                };
            }
            sessions.remove(client_id);
            let replaced = existing.state.lock().attached.take();
            if let Some(old) = replaced {
                old.waker.wake();
            }
            self.inner.metrics.sessions.dec();
            self.discard(&existing);
        }
        let session = Arc::new(Session::new(self.next_id(), Arc::from(client_id)));
        *session.ownership.lock() = Ownership::fresh();
        session.attach(attachment);
        session.state.lock().expiry_interval = expiry_interval;
        self.set_persistence(&session, expiry_interval);
        sessions.insert(session.client_id.clone(), Arc::clone(&session));
        self.inner.metrics.sessions.inc();
        OpenedSession {
            session,
            present: false,
        }
    }

    /// Records whether the session outlives its connection; a session that stops being
    /// persistent forgets what it stored.
    fn set_persistence(&self, session: &Arc<Session>, expiry_interval: u32) {
        let Some(durable) = &self.inner.durable else {
            return;
        };
        let persistent = expiry_interval > 0;
        let was = session.is_persistent();
        session.set_persistent(persistent);
        if persistent {
            self.write_record(durable, session, None);
        } else if was {
            self.delete_record(durable, session);
        }
    }

    /// Writes the session's record (subscriptions, expiry) under its ownership; returns the
    /// submission to wait for, 0 when the session is not this node's to write.
    fn write_record(
        &self,
        durable: &Durable,
        session: &Session,
        waker: Option<&Arc<Signal>>,
    ) -> u64 {
        let mut ownership = session.ownership.lock();
        let mut record = self.session_record(session);
        record.owner = ownership.token();
        let (next, seq) = durable.submit_owned(
            &session.client_id,
            *ownership,
            vec![durable.session_put(&record)],
            waker,
        );
        *ownership = next;
        seq
    }

    /// Deletes the session's record and queue under its ownership.
    fn delete_record(&self, durable: &Durable, session: &Session) {
        let mut ownership = session.ownership.lock();
        let (next, _) = durable.submit_owned(
            &session.client_id,
            *ownership,
            Durable::session_delete(&session.client_id),
            None,
        );
        // Written again later, it is owned afresh.
        *ownership = match next {
            Ownership::Recorded(_) => Ownership::fresh(),
            other => other,
        };
    }

    fn session_record(&self, session: &Session) -> durable::SessionRecord {
        let state = session.state.lock();
        durable::SessionRecord {
            client_id: session.client_id.to_string(),
            expiry_interval: state.expiry_interval,
            subscriptions: state
                .subscriptions
                .iter()
                .map(|(filter, s)| {
                    durable::SubscriptionRecord::new(filter, s.options, s.subscription_id)
                })
                .collect(),
            // Set by `Durable::session_put`, which knows the node.
            node: None,
            owner: None,
        }
    }

    /// Stores the session's subscriptions; returns the sequence number to wait for before
    /// acknowledging, 0 when the session is not persistent.
    pub fn persist_subscriptions(&self, session: &Arc<Session>, waker: &Arc<Signal>) -> u64 {
        match &self.inner.durable {
            Some(durable) if session.is_persistent() => {
                self.write_record(durable, session, Some(waker))
            }
            _ => 0,
        }
    }

    /// The subscriber acknowledged a stored message: its copy is no longer needed.
    pub fn delivered(&self, session: &Session, stored: u64) {
        if stored == 0 {
            return;
        }
        if let Some(durable) = &self.inner.durable {
            durable.submit([halyard_raft::Op::delete(session.queue_key(stored))], None);
        }
    }

    /// Sessions and retained messages found in the store when the node starts.
    pub fn restore(&self, retained: Vec<(Message, u64)>, sessions: Vec<durable::RestoredSession>) {
        {
            let mut store = self.inner.retained.write();
            for (message, modified_ms) in retained {
                store.update(&Arc::new(message), modified_ms);
            }
            self.inner.metrics.retained_messages.set(store.len() as i64);
        }
        for restored in sessions {
            tracing::debug!(client_id = %restored.record.client_id, queued = restored.queue.len(), "session restored");
            self.install(restored);
        }
        self.inner.restored.send_replace(true);
    }

    /// Another node accepted a connection of `client_id` made at `claimed_at`.
    pub fn connected_elsewhere(&self, client_id: &str, claimed_at: u64) {
        let mut foreign = self.inner.foreign_connections.lock();
        if foreign.len() >= FOREIGN_CONNECTIONS_PRUNE_AT {
            // A claim is settled within seconds: older stamps decide nothing any more.
            let horizon = crate::clock::epoch_micros().saturating_sub(FOREIGN_CONNECTION_TTL_US);
            foreign.retain(|_, at| *at >= horizon);
        }
        let at = foreign.entry(Arc::from(client_id)).or_default();
        *at = (*at).max(claimed_at);
    }

    /// Whether a connection of `client_id` made at `claimed_at` was followed by one on
    /// another node.
    pub fn superseded(&self, client_id: &str, claimed_at: u64) -> bool {
        self.inner
            .foreign_connections
            .lock()
            .get(client_id)
            .is_some_and(|at| *at > claimed_at)
    }

    /// Returns once the stored sessions are restored (see [`Broker::restore`]).
    pub async fn restored(&self) {
        let mut restored = self.inner.restored.subscribe();
        let _ = restored.wait_for(|done| *done).await;
    }

    /// The store's record of the session of `client_id`, written at `revision`, names another
    /// node or was deleted: if that is later than this node took the session, another node
    /// has claimed it since (this node missed its request, being down or cut off), and this
    /// node's copy goes as on any takeover.
    pub fn disown(&self, client_id: &str, revision: u64) {
        let held = self.inner.sessions.lock().get(client_id).cloned();
        if let Some(session) = held
            && session.is_persistent()
            && session.owned_since() < revision
            && self.relinquish(client_id, None, false)
        {
            tracing::debug!(client_id, revision, "a session claimed elsewhere let go");
        }
    }

    /// Takes a copy another node wrote to the queue of a session held here, because this node
    /// could not take it when it was published: queued as if published here, unless the
    /// session has it already. One the store's watch gave, committed at `revision`, goes
    /// ahead of the deliveries held that came after it was committed.
    pub fn take_stored(&self, client_id: &str, delivery: Delivery, revision: Option<u64>) {
        let Some(session) = self.inner.sessions.lock().get(client_id).cloned() else {
            return;
        };
        if !session.is_persistent() || session.holds_stored(delivery.stored) {
            return;
        }
        // Stored by a node whose view of the session was older than an UNSUBSCRIBE.
        let subscribed = session.state.lock().subscriptions.keys().any(|raw| {
            topic::parse_filter(raw)
                .is_ok_and(|f| topic::matches(f.filter, &delivery.message.topic))
        });
        if !subscribed {
            self.delivered(&session, delivery.stored);
            return;
        }
        let limits = QueueLimits::of(&self.inner.config);
        let enqueued = match (revision, &self.inner.durable) {
            (Some(revision), Some(durable)) => session.enqueue_committed(
                delivery,
                revision,
                |fence| durable.revision_covering(fence),
                limits,
            ),
            _ => session.enqueue(delivery, limits),
        };
        if let Enqueued::Dropped(reason) = enqueued {
            self.inner.metrics.message_dropped(reason);
        }
    }

    /// Notes that `session` holds deliveries for the store's watch.
    pub(super) fn hold(&self, session: &Arc<Session>) {
        self.inner
            .holding
            .lock()
            .entry(Arc::clone(&session.client_id))
            .or_insert_with(|| (Arc::clone(session), Instant::now()));
    }

    /// The store's watch of queues has passed `revision` (`None`: a periodic look, which
    /// also lets go of deliveries held too long): the deliveries held for it go, and the
    /// sessions whose catching up is over stop holding what comes.
    pub fn watched(&self, revision: Option<u64>) {
        if let Some(revision) = revision {
            self.inner.watched.fetch_max(revision, Ordering::AcqRel);
        }
        let Some(durable) = &self.inner.durable else {
            return;
        };
        let watched = self.inner.watched.load(Ordering::Acquire);
        let now = Instant::now();
        {
            let mut catching_up = self.inner.catching_up.lock();
            while let Some((session, _)) = catching_up.front().filter(|(_, until)| *until <= now) {
                if let Some(session) = session.upgrade() {
                    session.set_catching_up(false);
                }
                catching_up.pop_front();
            }
        }
        self.inner.holding.lock().retain(|_, (session, since)| {
            let overdue = now.duration_since(*since) >= HOLD_LIMIT;
            let still_held = session.release_held(|fence| {
                overdue
                    || durable
                        .revision_covering(fence)
                        .is_some_and(|covering| covering <= watched)
            });
            still_held && session.is_alive()
        });
    }

    /// Puts a session read from the store into this node's memory, subscriptions and routes
    /// included, with its expiry timer running until a connection attaches.
    fn install(&self, restored: durable::RestoredSession) -> Arc<Session> {
        let ownership = self.ownership_of(&restored.record);
        let record = restored.record;
        let session = Arc::new(Session::new(
            self.next_id(),
            Arc::from(record.client_id.as_str()),
        ));
        *session.ownership.lock() = ownership;
        session.set_persistent(true);
        session.set_owned_since(restored.revision);
        if self.remote().is_some() {
            session.set_catching_up(true);
            self.inner
                .catching_up
                .lock()
                .push_back((Arc::downgrade(&session), Instant::now() + CATCH_UP));
        }
        {
            let mut state = session.state.lock();
            state.expiry_interval = record.expiry_interval;
            state
                .queue
                .extend(restored.queue.into_iter().map(|(_, d)| d));
        }
        for sub in &record.subscriptions {
            let Some((parsed, options)) = sub.decode() else {
                continue;
            };
            self.subscribe(&session, &sub.filter, parsed, options, sub.subscription_id);
        }
        // Taken back here: what is routed here for it goes to this session from now on, and
        // a copy left lingering would queue it a second time, behind. Its subscriptions go
        // once this session's are in, so that no route is withdrawn in between.
        let copies = self
            .inner
            .lingering
            .lock()
            .get(record.client_id.as_str())
            .cloned()
            .unwrap_or_default();
        for copy in copies {
            copy.set_persistent(false);
            self.discard(&copy);
        }
        self.inner
            .sessions
            .lock()
            .insert(session.client_id.clone(), Arc::clone(&session));
        self.inner.metrics.sessions.inc();
        let generation = session.state.lock().generation;
        self.expire_later(&session, record.expiry_interval, generation);
        session
    }

    /// See [`Remote::route_barrier`]; nothing to wait for on a node alone.
    pub fn route_barrier(&self, waker: &Arc<Signal>) -> Vec<Handoff> {
        self.remote()
            .map(|remote| remote.route_barrier(waker))
            .unwrap_or_default()
    }

    /// Whether this node holds a session for `client_id`, connected or not.
    pub fn holds_session(&self, client_id: &str) -> bool {
        self.inner.sessions.lock().contains_key(client_id)
    }

    /// Whether a connection of `client_id` is live on this node.
    pub fn is_connected(&self, client_id: &str) -> bool {
        self.inner
            .sessions
            .lock()
            .get(client_id)
            .is_some_and(|s| s.is_connected())
    }

    /// Takes over a session another node held, as read from the store after that node let it
    /// go; a session already held here is kept.
    pub fn adopt(&self, restored: durable::RestoredSession) {
        let held = self
            .inner
            .sessions
            .lock()
            .get(restored.record.client_id.as_str())
            .cloned();
        match held {
            // Installed by a claim before the store named this node: the record read since
            // says which ownership the claim recorded.
            Some(session) => {
                let ownership = self.ownership_of(&restored.record);
                let mut current = session.ownership.lock();
                if *current == Ownership::Unowned {
                    *current = ownership;
                }
            }
            None => {
                self.install(restored);
            }
        }
    }

    /// The store now records `ownership` of the session of `client_id`, held here: its
    /// writes are made under it.
    pub fn own(&self, client_id: &str, ownership: Ownership) {
        if let Some(session) = self.inner.sessions.lock().get(client_id) {
            *session.ownership.lock() = ownership;
        }
    }

    /// The ownership a record read from the store gives this node: none while it names
    /// another node (a claim under way takes it).
    fn ownership_of(&self, record: &durable::SessionRecord) -> Ownership {
        let here = self.inner.durable.as_ref().map(|d| d.store().id());
        match record.node {
            Some(node) if Some(node) != here => Ownership::Unowned,
            _ => Ownership::of(record),
        }
    }

    /// Lets go of the session of `client_id` because a connection on another node claimed it:
    /// unless this node's connection to it is the later (`claimed_at` is past `before`), the
    /// connection is told the session was taken over, and the session leaves this node's
    /// memory and routes. Its stored copy is left to the new owner, or deleted with it when
    /// the new connection starts clean (`discard_stored`). Returns whether it let one go.
    pub fn relinquish(&self, client_id: &str, before: Option<u64>, discard_stored: bool) -> bool {
        let mut sessions = self.inner.sessions.lock();
        let Some(session) = sessions.get(client_id).cloned() else {
            return false;
        };
        if before.is_some_and(|stamp| session.state.lock().claimed_at > stamp) {
            return false;
        }
        sessions.remove(client_id);
        self.inner.metrics.sessions.dec();
        drop(sessions);
        tracing::debug!(client_id, discard_stored, "session relinquished");
        let attached = session.state.lock().attached.take();
        if let Some(old) = attached {
            // Its connection sees the session gone and closes with "session taken over".
            old.waker.wake();
        }
        if !discard_stored {
            if session.is_persistent()
                && let Some(remote) = self.remote()
            {
                self.linger(session, remote);
                return true;
            }
            session.set_persistent(false);
        }
        self.discard(&session);
        true
    }

    /// Keeps the subscriptions of a persistent session handed to another node until the
    /// store names that node its owner (or the session is deleted, or held here again): until
    /// then, and for as long as nodes that have not yet heard of its new node's routes route
    /// its messages here, they go to the session's queue in the store, where its new node
    /// takes them from. A claim that never completes leaves the session offline, its
    /// messages queued in the store.
    fn linger(&self, session: Arc<Session>, remote: Arc<dyn Remote>) {
        session.linger();
        self.inner
            .lingering
            .lock()
            .entry(Arc::clone(&session.client_id))
            .or_default()
            .push(Arc::clone(&session));
        let broker = self.clone();
        tokio::spawn(async move {
            // This node's view of the store may be behind the claim that made it the owner:
            // only a record newer than that claim (which read the record at `owned_since`
            // and wrote it only if unchanged since) says another node completed its claim.
            // A session begun here is owned from the revision at which its claim found none.
            let mine = session.owned_since();
            loop {
                tokio::time::sleep(LINGER_CHECK).await;
                if broker.holds_session(&session.client_id) {
                    break;
                }
                match remote.stored_owner(&session.client_id) {
                    StoredOwner::Named {
                        here: false, since, ..
                    } if since > mine => break,
                    StoredOwner::Absent { seen } if seen > mine => break,
                    _ => {}
                }
            }
            // The new node announced its routes before it claimed the session: they reach
            // the other nodes about when the claim does.
            tokio::time::sleep(LINGER_MARGIN).await;
            session.set_persistent(false);
            broker.discard(&session);
            let mut lingering = broker.inner.lingering.lock();
            if let Some(copies) = lingering.get_mut(&session.client_id) {
                copies.retain(|s| !Arc::ptr_eq(s, &session));
                if copies.is_empty() {
                    lingering.remove(&session.client_id);
                }
            }
        });
    }

    /// Whether a session of `client_id` handed to another node lingers here: what is routed
    /// here for it goes to its stored queue.
    pub fn lingers(&self, client_id: &str) -> bool {
        self.inner.lingering.lock().contains_key(client_id)
    }

    fn expire_later(&self, session: &Arc<Session>, expiry: u32, generation: u64) {
        if expiry == u32::MAX {
            return;
        }
        let broker = self.clone();
        let session = Arc::clone(session);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(u64::from(expiry))).await;
            broker.end_session(&session, generation);
        });
    }

    /// Detaches connection `connection_id` from `session`. A session with no
    /// expiry interval ends now; others end when the interval passes
    /// without a new connection. Returns the generation at detach, or
    /// `None` when another connection had already taken the session over.
    pub fn close_session(&self, session: &Arc<Session>, connection_id: u64) -> Option<u64> {
        let generation = session.detach(connection_id)?;
        let expiry = session.state.lock().expiry_interval;
        if expiry == 0 {
            self.end_session(session, generation);
        } else {
            self.expire_later(session, expiry, generation);
        }
        Some(generation)
    }

    /// Ends `session` unless a connection attached to it after the detach
    /// at `generation`. Checked under the sessions lock, which a resuming
    /// connection holds while it attaches, so that a session is never
    /// discarded just after a client was told it was resumed.
    fn end_session(&self, session: &Arc<Session>, generation: u64) {
        let mut sessions = self.inner.sessions.lock();
        let is_current = sessions
            .get(&session.client_id)
            .is_some_and(|s| Arc::ptr_eq(s, session));
        if !is_current || session.state.lock().generation != generation {
            return;
        }
        sessions.remove(&session.client_id);
        self.inner.metrics.sessions.dec();
        drop(sessions);
        self.discard(session);
    }

    /// Removes everything a session holds in the broker.
    fn discard(&self, session: &Arc<Session>) {
        session.mark_dead();
        if let Some(durable) = &self.inner.durable
            && session.is_persistent()
        {
            session.set_persistent(false);
            self.delete_record(durable, session);
        }
        let subscriptions = {
            let mut state = session.state.lock();
            state.queue.clear();
            state.inflight.clear();
            std::mem::take(&mut state.subscriptions)
        };
        if subscriptions.is_empty() {
            return;
        }
        let remote = self.remote();
        let mut trie = self.inner.trie.write();
        for raw in subscriptions.keys() {
            if let Ok(parsed) = topic::parse_filter(raw)
                && trie.remove(parsed.filter, parsed.share_group, session.id)
                && let Some(remote) = &remote
            {
                remote.unsubscribed(parsed.filter, parsed.share_group);
            }
        }
        self.inner.metrics.subscriptions.set(trie.len() as i64);
    }

    /// Adds or replaces a subscription; returns true when it is new.
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        raw_filter: &str,
        parsed: ParsedFilter<'_>,
        options: SubscriptionOptions,
        subscription_id: Option<u32>,
    ) -> bool {
        self.subscribe_all(session, &[(raw_filter, parsed, options)], subscription_id)
            .first()
            .copied()
            .unwrap_or(false)
    }

    /// Adds or replaces the subscriptions of one SUBSCRIBE under a single hold of the trie's
    /// write lock, so that a client subscribing to many filters holds up publishers once, not
    /// once per filter. Whether each is new, in order.
    pub fn subscribe_all(
        &self,
        session: &Arc<Session>,
        filters: &[(&str, ParsedFilter<'_>, SubscriptionOptions)],
        subscription_id: Option<u32>,
    ) -> Vec<bool> {
        let remote = self.remote();
        let is_new: Vec<bool> = {
            let mut trie = self.inner.trie.write();
            let is_new = filters
                .iter()
                .map(|(_, parsed, options)| {
                    let is_new = trie.insert(
                        parsed.filter,
                        parsed.share_group,
                        Subscriber {
                            target: Arc::clone(session),
                            options: *options,
                            subscription_id,
                        },
                    );
                    if is_new && let Some(remote) = &remote {
                        remote.subscribed(parsed.filter, parsed.share_group);
                    }
                    is_new
                })
                .collect();
            self.inner.metrics.subscriptions.set(trie.len() as i64);
            is_new
        };
        let mut state = session.state.lock();
        for (raw_filter, _, options) in filters {
            state.subscriptions.insert(
                (*raw_filter).to_owned(),
                StoredSubscription {
                    options: *options,
                    subscription_id,
                },
            );
        }
        is_new
    }

    /// Removes a subscription; returns whether it existed.
    pub fn unsubscribe(&self, session: &Arc<Session>, raw_filter: &str) -> bool {
        let Ok(parsed) = topic::parse_filter(raw_filter) else {
            return false;
        };
        let remote = self.remote();
        let removed = {
            let mut trie = self.inner.trie.write();
            let removed = trie.remove(parsed.filter, parsed.share_group, session.id);
            if removed && let Some(remote) = &remote {
                remote.unsubscribed(parsed.filter, parsed.share_group);
            }
            self.inner.metrics.subscriptions.set(trie.len() as i64);
            removed
        };
        session.state.lock().subscriptions.remove(raw_filter);
        removed
    }

    /// Retained messages matching `filter`, for a new subscription. Read under a shared lock,
    /// so that publishers are not held up; expired messages found on the way are removed.
    pub fn retained_matching(&self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        let (live, expired) = self.inner.retained.read().matching(filter, now);
        if !expired.is_empty() {
            let mut retained = self.inner.retained.write();
            retained.remove_expired(&expired, now);
            self.inner
                .metrics
                .retained_messages
                .set(retained.len() as i64);
        }
        live
    }

    /// Publishes `will` after `delay_secs` unless the session is resumed
    /// (its generation changes) before then.
    pub fn schedule_will(
        &self,
        will: Message,
        delay_secs: u32,
        session: Arc<Session>,
        generation: u64,
    ) {
        let broker = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(u64::from(delay_secs))).await;
            let resumed = session.is_alive() && session.state.lock().generation != generation;
            if !resumed {
                broker.publish(will, None);
            }
        });
    }
}
