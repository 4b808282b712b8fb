//! Broker state that must outlive the process: retained messages, persistent sessions and the
//! QoS 1/2 messages queued for them. Changes are batched into store transactions by one
//! writer; a connection that must not acknowledge before its change is durable holds the
//! acknowledgement until [`Durable::committed`] reaches the sequence number it was given.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use halyard_raft::{Compare, CompareOp, Consistency, Op, RangeRequest, Store, StoreError, Txn};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::message::{Delivery, Message};
use super::session::Signal;
use crate::mqtt::{
    Encoder, Packet, Properties, ProtocolVersion, PublishRef, QoS, SubscriptionOptions,
    decode_packet,
};

use crate::store::keys;

/// Ops per store transaction; more wait for the next one.
const BATCH_OPS: usize = 512;

/// Message numbers reserved in the store at a time (one small write per this many queued
/// messages): a node starting again numbers from past what its previous life reserved.
const NUMBER_BLOCK: u64 = 1 << 20;

/// Attempts at beginning a life when another process with this node's id writes the same key.
const LIFE_ATTEMPTS: usize = 5;
/// How old a queue entry is before the writer takes it, unless a full batch is waiting: a
/// connected subscriber's acknowledgement usually comes within it and takes the entry back, so
/// that neither is written (see [`Durable::submit`]). Other writes are not held back for their
/// own sake, only behind an earlier entry that is.
const WRITE_DELAY: Duration = Duration::from_millis(1);
/// Recent batches whose commit revisions are kept (see [`Durable::revision_covering`]).
const COMMITS_KEPT: usize = 1024;

fn unix_ms(at: Instant) -> u64 {
    let left = at.saturating_duration_since(Instant::now());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (now + left).as_millis() as u64
}

fn instant_from_unix_ms(ms: u64) -> Instant {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Instant::now() + Duration::from_millis(ms).saturating_sub(now)
}

/// A message as stored: its expiry, then the message as a v5 PUBLISH packet, which already
/// knows how to carry every property.
pub fn encode_message(
    message: &Message,
    qos: QoS,
    retain: bool,
    subscription_ids: &[u32],
) -> Vec<u8> {
    let mut out = BytesMut::new();
    let expiry = message.expires_at.map_or(0, unix_ms);
    out.extend_from_slice(&expiry.to_be_bytes());
    let publish = PublishRef {
        dup: false,
        qos,
        retain,
        topic: &message.topic,
        packet_id: if qos == QoS::AtMostOnce { 0 } else { 1 },
        payload: &message.payload,
        properties: message.properties.as_deref(),
        message_expiry_interval: None,
        subscription_identifiers: subscription_ids,
        topic_alias: None,
    };
    if let Err(e) = Encoder::new().publish(&publish, ProtocolVersion::V5, usize::MAX, &mut out) {
        tracing::warn!(error = %e, topic = %message.topic, "cannot encode a message for the store");
    }
    out.to_vec()
}

/// A retained message as stored: when it was set (milliseconds since the epoch), then the
/// message as [`encode_message`] writes it.
pub fn encode_retained(message: &Message, modified_ms: u64) -> Vec<u8> {
    let mut out = modified_ms.to_be_bytes().to_vec();
    out.extend_from_slice(&encode_message(message, message.qos, true, &[]));
    out
}

/// A stored retained message and when it was set. Records written before retained messages
/// carried that time start with the message itself, whose expiry field is followed by a
/// PUBLISH header (0x3_), where the time (below 2^56 ms) starts with a zero byte; they read as
/// set at time 0.
pub fn decode_retained(bytes: &[u8]) -> Option<(Message, u64)> {
    if bytes.get(8).is_some_and(|b| b >> 4 == 3) {
        return decode_message(bytes).map(|(m, ..)| (m, 0));
    }
    let modified_ms = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    decode_message(bytes.get(8..)?).map(|(m, ..)| (m, modified_ms))
}

/// A stored message back as a message and the terms it was queued with.
pub fn decode_message(bytes: &[u8]) -> Option<(Message, QoS, bool, Vec<u32>)> {
    let expiry = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    let mut buf = BytesMut::from(bytes.get(8..)?);
    let Ok(Some(Packet::Publish(mut p))) = decode_packet(&mut buf, ProtocolVersion::V5, usize::MAX)
    else {
        return None;
    };
    let subscription_ids = std::mem::take(&mut p.properties.subscription_identifiers);
    let has_properties = p.properties != Properties::default();
    let message = Message {
        topic: p.topic,
        payload: p.payload,
        qos: p.qos,
        retain: p.retain,
        properties: has_properties.then(|| Box::new(p.properties)),
        expires_at: (expiry != 0).then(|| instant_from_unix_ms(expiry)),
        origin: 0,
    };
    Some((message, p.qos, p.retain, subscription_ids))
}

/// One stored subscription: the filter and its options.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SubscriptionRecord {
    pub filter: String,
    pub options: u8,
    pub subscription_id: Option<u32>,
}

impl SubscriptionRecord {
    pub fn new(filter: &str, options: SubscriptionOptions, subscription_id: Option<u32>) -> Self {
        Self {
            filter: filter.to_owned(),
            options: options.to_byte(),
            subscription_id,
        }
    }

    /// The filter (split from its share group) and options; `None` if either is unreadable.
    pub fn decode(&self) -> Option<(crate::mqtt::topic::ParsedFilter<'_>, SubscriptionOptions)> {
        Some((
            crate::mqtt::topic::parse_filter(&self.filter).ok()?,
            SubscriptionOptions::from_byte(self.options)?,
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionRecord {
    pub client_id: String,
    pub expiry_interval: u32,
    pub subscriptions: Vec<SubscriptionRecord>,
    /// The node the session was last written by, which alone restores it; `None` in records
    /// written before nodes were recorded, which every node restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
    /// The ownership it was written under (see [`Ownership`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<u64>,
}

/// Bits of a queued message's sequence number that name the node that queued it, so that two
/// nodes never write the same queue key.
const NODE_BITS: u32 = 16;

/// A queued message's sequence number: this node's `count`, then its id, so that numbers
/// from different nodes never collide and still sort roughly by when they were given.
fn queue_seq(count: u64, node: u64) -> u64 {
    (count << NODE_BITS) | (node & ((1 << NODE_BITS) - 1))
}

/// The first of `guards` (in submission order) on each key: a later submission's condition on
/// the same key holds if the earlier one's does, this node having written the key in between.
fn first_on_each_key(guards: &[(u64, Compare)]) -> impl Iterator<Item = &(u64, Compare)> {
    guards
        .iter()
        .enumerate()
        .filter(|(i, (_, guard))| !guards[..*i].iter().any(|(_, g)| g.key == guard.key))
        .map(|(_, entry)| entry)
}

/// A number the node keeps in the store as decimal text.
fn parse_number(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The node that wrote a queue entry numbered `seq` (in the low bits of a node id alike).
pub fn queue_writer(seq: u64) -> u64 {
    seq & ((1 << NODE_BITS) - 1)
}

/// Whether the node `me` restores a session last written by `writer`.
fn restores(writer: Option<u64>, me: u64) -> bool {
    writer.is_none_or(|node| node == me)
}

/// A persistent session as found in the store at startup.
pub struct RestoredSession {
    pub record: SessionRecord,
    pub queue: Vec<(u64, Delivery)>,
    /// The store revision its record was last written at, as read.
    pub revision: u64,
}

#[derive(Default)]
struct Pending {
    /// Ops not yet taken by the writer, with the submission each belongs to; `None` for a
    /// queue entry whose message was acknowledged before it was written (see `submit`).
    ops: VecDeque<(u64, Option<Op>)>,
    /// Ops taken from the front of `ops` so far: `ops[i]` is op number `taken + i`.
    taken: u64,
    /// The queue entries that ops still in `ops` put, by key, with their op numbers.
    queued: HashMap<Vec<u8>, u64, foldhash::fast::RandomState>,
    /// Ops still in `ops`, by submission.
    live: HashMap<u64, usize, foldhash::fast::RandomState>,
    /// The condition each guarded submission is written under (see `submit_guarded`).
    guards: HashMap<u64, Compare, foldhash::fast::RandomState>,
    /// The waker of each submission that has one, by submission.
    wakers: std::collections::BTreeMap<u64, Arc<Signal>>,
    /// When each submission that queues a message was made, in order (and some before, left
    /// until passed).
    submitted_at: VecDeque<(u64, Instant)>,
}

/// What the writer takes at once: whole submissions, in order.
struct Batch {
    /// Each op with its submission.
    ops: Vec<(u64, Op)>,
    guards: Vec<(u64, Compare)>,
    /// Every submission up to this one is done once the batch is.
    last_seq: u64,
    wakers: Vec<Arc<Signal>>,
}

/// Which ownership of a persistent session its writes are made under. The store keeps the
/// current one at `mqtt/owner/{hex client}`, beside the record: a write made under another
/// (by a node cut off while another node claimed the session, or let go of it since) is
/// refused, so that a stale owner never overwrites or deletes the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Not this node's, or not yet (a claim under way): nothing of it is written.
    Unowned,
    /// Begun here, with no owner recorded: its first write records this token, if no other
    /// node's was recorded meanwhile.
    Fresh(u64),
    /// Recorded in the store with this token.
    Recorded(u64),
}

impl Ownership {
    /// The ownership of a session as its record names it; a record written before owners
    /// were recorded is owned afresh.
    pub fn of(record: &SessionRecord) -> Self {
        match record.owner {
            Some(token) => Ownership::Recorded(token),
            None => Ownership::fresh(),
        }
    }

    pub fn fresh() -> Self {
        Ownership::Fresh(rand::random())
    }

    pub fn token(self) -> Option<u64> {
        match self {
            Ownership::Unowned => None,
            Ownership::Fresh(token) | Ownership::Recorded(token) => Some(token),
        }
    }
}

fn is_queue_entry(op: &Op) -> bool {
    matches!(op, Op::Put { key, .. } if key.starts_with(keys::QUEUE.as_bytes()))
}

impl Pending {
    /// When submission `seq` was made; those before it are forgotten.
    fn submitted_at(&mut self, seq: u64) -> Option<Instant> {
        while self.submitted_at.front().is_some_and(|(s, _)| *s < seq) {
            self.submitted_at.pop_front();
        }
        self.submitted_at
            .front()
            .filter(|(s, _)| *s == seq)
            .map(|(_, at)| *at)
    }

    /// Adds `op` of submission `seq`, or, if it deletes a queue entry not yet written,
    /// takes that entry back instead so that neither is written.
    fn push(&mut self, seq: u64, op: Op) -> Pushed {
        match &op {
            Op::Delete { key } => {
                if let Some(number) = self.queued.remove(key)
                    && let Some(index) = number.checked_sub(self.taken)
                    && let Some((put_seq, slot)) = self.ops.get_mut(index as usize)
                {
                    *slot = None;
                    let put_seq = *put_seq;
                    let left = self.live.get_mut(&put_seq).map(|n| {
                        *n -= 1;
                        *n
                    });
                    if left == Some(0) {
                        self.live.remove(&put_seq);
                        return Pushed::Undid(Some(put_seq));
                    }
                    return Pushed::Undid(None);
                }
            }
            Op::Put { key, .. } if is_queue_entry(&op) => {
                let number = self.taken + self.ops.len() as u64;
                self.queued.insert(key.clone(), number);
            }
            _ => {}
        }
        self.ops.push_back((seq, Some(op)));
        *self.live.entry(seq).or_default() += 1;
        Pushed::Queued
    }

    /// Takes the op at the front.
    fn pop(&mut self) -> Option<(u64, Option<Op>)> {
        let (seq, op) = self.ops.pop_front()?;
        let number = self.taken;
        self.taken += 1;
        if let Some(Op::Put { key, .. }) = &op
            && self.queued.get(key) == Some(&number)
        {
            self.queued.remove(key);
        }
        if op.is_some()
            && let Some(n) = self.live.get_mut(&seq)
        {
            *n -= 1;
            if *n == 0 {
                self.live.remove(&seq);
            }
        }
        Some((seq, op))
    }
}

/// What became of a batch handed to the store.
enum Written {
    /// Committed at this revision.
    At(u64),
    /// Nothing of it was left to write, or the store shut down.
    Nothing,
    /// Refused: a later life of this node has begun.
    LifeEnded,
}

/// What became of an op handed to [`Pending::push`].
#[derive(Debug, PartialEq, Eq)]
enum Pushed {
    Queued,
    /// It took back a queue entry not yet written; and that entry's submission, if that left
    /// it nothing to write.
    Undid(Option<u64>),
}

pub struct Durable {
    store: Store,
    pending: Mutex<Pending>,
    work: Notify,
    submitted: AtomicU64,
    committed: AtomicU64,
    committed_notify: Notify,
    next_message: AtomicU64,
    /// Message numbers below this are covered by a reservation submitted to the store.
    numbers_reserved: AtomicU64,
    reserving: Mutex<()>,
    /// This process's life as the store records it (see [`Durable::begin_life`]); every
    /// write is refused once another life of this node has begun.
    life: AtomicU64,
    stopping: std::sync::atomic::AtomicBool,
    /// Ops submitted and not yet taken by the writer: they pile up while the store has no
    /// quorum, which is what [`Durable::backlog`] tells publishers.
    backlog: std::sync::atomic::AtomicUsize,
    /// Submissions not yet committed whose every op was taken back (see `submit`).
    settled_early: Mutex<std::collections::BTreeSet<u64>>,
    /// The last submission and store revision of each recent batch written, oldest first.
    commits: Mutex<VecDeque<(u64, u64)>>,
    written: prometheus::IntCounter,
    taken_back: prometheus::IntCounter,
    refused: prometheus::IntCounter,
}

impl Durable {
    /// Registers its metrics in `registry`.
    pub fn new(
        store: Store,
        registry: &prometheus::Registry,
    ) -> Result<Arc<Self>, prometheus::Error> {
        let queue_entries = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "halyard_queue_entries_total",
                "Messages queued for persistent sessions, by what became of their store entry: \
                 written, or taken back because the subscriber acknowledged the message first",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(queue_entries.clone()))?;
        let refused = prometheus::IntCounter::new(
            "halyard_session_writes_refused_total",
            "Writes of persistent sessions left out because the store records another \
             ownership of the session: another node claimed it while this one was cut off, or \
             since this one let it go",
        )?;
        registry.register(Box::new(refused.clone()))?;
        Ok(Arc::new(Self {
            store,
            pending: Mutex::new(Pending::default()),
            work: Notify::new(),
            submitted: AtomicU64::new(0),
            committed: AtomicU64::new(0),
            committed_notify: Notify::new(),
            next_message: AtomicU64::new(1),
            numbers_reserved: AtomicU64::new(0),
            reserving: Mutex::new(()),
            life: AtomicU64::new(0),
            stopping: std::sync::atomic::AtomicBool::new(false),
            backlog: std::sync::atomic::AtomicUsize::new(0),
            settled_early: Mutex::new(std::collections::BTreeSet::new()),
            commits: Mutex::new(VecDeque::with_capacity(COMMITS_KEPT)),
            written: queue_entries.with_label_values(&["written"]),
            taken_back: queue_entries.with_label_values(&["taken_back"]),
            refused,
        }))
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Queues `ops` for the store; returns the sequence number that [`Durable::committed`]
    /// reaches once they are durable. `waker` is woken then.
    ///
    /// A delete of a queue entry whose put is still waiting here takes the put back: the
    /// subscriber acknowledged the message before it was written, and neither is written.
    /// Under load, while the writer waits on the previous batch, messages to connected
    /// persistent sessions often go this way and cost the store nothing; one still
    /// unacknowledged when its batch is taken is durable before its publisher is
    /// acknowledged, as any other.
    pub fn submit(&self, ops: impl IntoIterator<Item = Op>, waker: Option<&Arc<Signal>>) -> u64 {
        self.submit_with(None, ops, waker)
    }

    /// As [`Durable::submit`], for ops written only if `guard` holds when they are: when it
    /// does not, they are dropped (and counted), and the submission is done all the same.
    pub fn submit_guarded(
        &self,
        guard: Compare,
        ops: impl IntoIterator<Item = Op>,
        waker: Option<&Arc<Signal>>,
    ) -> u64 {
        self.submit_with(Some(guard), ops, waker)
    }

    /// Submits writes of the session of `client_id` made under `ownership` (see
    /// [`Ownership`]); returns the ownership its later writes are made under, and the
    /// submission's number (0 when nothing was submitted: the session is not this node's).
    pub fn submit_owned(
        &self,
        client_id: &str,
        ownership: Ownership,
        ops: Vec<Op>,
        waker: Option<&Arc<Signal>>,
    ) -> (Ownership, u64) {
        let owner_key = keys::session_owner(client_id);
        match ownership {
            Ownership::Unowned => (ownership, 0),
            Ownership::Recorded(token) => {
                let guard = Compare::value_equals(owner_key, token.to_string());
                (ownership, self.submit_guarded(guard, ops, waker))
            }
            Ownership::Fresh(token) => {
                let guard = Compare::version(owner_key.clone(), CompareOp::Equal, 0);
                let record = keys::session(client_id);
                let records = ops
                    .iter()
                    .any(|op| matches!(op, Op::Put { key, .. } if *key == record));
                if !records {
                    return (ownership, self.submit_guarded(guard, ops, waker));
                }
                let mut ops = ops;
                ops.push(Op::put(owner_key, token.to_string()));
                (
                    Ownership::Recorded(token),
                    self.submit_guarded(guard, ops, waker),
                )
            }
        }
    }

    fn submit_with(
        &self,
        guard: Option<Compare>,
        ops: impl IntoIterator<Item = Op>,
        waker: Option<&Arc<Signal>>,
    ) -> u64 {
        let mut pending = self.pending.lock();
        let seq = self.submitted.fetch_add(1, Ordering::AcqRel) + 1;
        if let Some(guard) = guard {
            pending.guards.insert(seq, guard);
        }
        let mut settled = Vec::new();
        let mut queues_a_message = false;
        for op in ops {
            let entry = is_queue_entry(&op);
            match pending.push(seq, op) {
                Pushed::Queued => {
                    queues_a_message |= entry;
                    self.backlog.fetch_add(1, Ordering::AcqRel);
                }
                Pushed::Undid(left_empty) => {
                    self.backlog.fetch_sub(1, Ordering::AcqRel);
                    self.taken_back.inc();
                    settled.extend(left_empty);
                }
            }
        }
        if queues_a_message {
            pending.submitted_at.push_back((seq, Instant::now()));
        }
        // A submission whose every op was taken back needs no write: its publisher may be
        // acknowledged now, the message being with every subscriber it was stored for.
        let mut wake = Vec::new();
        if !settled.is_empty() {
            self.settled_early.lock().extend(settled.iter().copied());
            wake.extend(settled.iter().filter_map(|s| pending.wakers.remove(s)));
        }
        if let Some(waker) = waker {
            pending.wakers.insert(seq, Arc::clone(waker));
        }
        drop(pending);
        for waker in wake {
            waker.wake();
        }
        self.work.notify_one();
        seq
    }

    /// Whether the write of submission `seq` is done: committed, or taken back whole.
    pub fn is_durable(&self, seq: u64) -> bool {
        self.committed() >= seq || self.settled_early.lock().contains(&seq)
    }

    /// The sequence number of the last write submitted.
    pub fn submitted(&self) -> u64 {
        self.submitted.load(Ordering::Acquire)
    }

    /// A store revision past every write committed before submission `submission` was
    /// made: that of the first batch written that covers it (one evicted from the record
    /// is bounded by the oldest kept). `None` until such a batch is committed.
    pub fn revision_covering(&self, submission: u64) -> Option<u64> {
        let commits = self.commits.lock();
        let first = commits.partition_point(|(last_seq, _)| *last_seq < submission);
        commits.get(first).map(|(_, revision)| *revision)
    }

    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// Ops waiting for the store.
    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Acquire)
    }

    /// Records a new life of this node in the store and numbers messages from past every
    /// number its earlier lives reserved. Called before the writer runs.
    ///
    /// A write of the previous life can still be on its way to the store (a proposal that
    /// reached the leader late, a request a slow link delayed): each of the writer's
    /// transactions holds only while the life it was made in is the recorded one, so such
    /// a write is refused, and the numbers read here cover everything written before.
    pub async fn begin_life(&self) -> Result<(), StoreError> {
        let node = self.store.id();
        let key = keys::node_life(node);
        let mut attempts = 0;
        let life = loop {
            let got = self.store.get(&key, Consistency::Linearizable).await?;
            let (previous, revision) = got.kv.map_or((0, 0), |kv| {
                (parse_number(&kv.value).unwrap_or(0), kv.mod_revision)
            });
            let life = previous + 1;
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([Op::put(key.clone(), life.to_string())]);
            if self.store.txn(txn).await?.succeeded {
                break life;
            }
            attempts += 1;
            if attempts >= LIFE_ATTEMPTS {
                return Err(StoreError::InvalidRequest(format!(
                    "node {node}: another process keeps starting with this node id"
                )));
            }
        };
        self.life.store(life, Ordering::Release);
        let reserved = self
            .store
            .get(&keys::node_numbers(node), Consistency::Linearizable)
            .await?
            .kv
            .and_then(|kv| parse_number(&kv.value))
            .unwrap_or(0);
        self.next_message
            .fetch_max(reserved.max(1), Ordering::AcqRel);
        tracing::debug!(node, life, numbers_from = reserved, "began a life");
        Ok(())
    }

    /// A fresh sequence number for a queued message's key, unique among every number this
    /// node ever gave (across restarts too).
    pub fn next_message_seq(&self) -> u64 {
        let count = self.next_message.fetch_add(1, Ordering::Relaxed);
        if count >= self.numbers_reserved.load(Ordering::Acquire) {
            self.reserve_numbers(count);
        }
        queue_seq(count, self.store.id())
    }

    /// Submits a reservation covering `count` before any write that uses it can be submitted:
    /// the writer takes submissions in order, so a number is never durable before the
    /// reservation covering it.
    fn reserve_numbers(&self, count: u64) {
        let _reserving = self.reserving.lock();
        if count < self.numbers_reserved.load(Ordering::Acquire) {
            return;
        }
        let up_to = count + NUMBER_BLOCK;
        self.submit(
            [Op::put(
                keys::node_numbers(self.store.id()),
                up_to.to_string(),
            )],
            None,
        );
        self.numbers_reserved.store(up_to, Ordering::Release);
    }

    /// Writes queued changes until [`Durable::stop`] and nothing is left.
    pub async fn run(self: Arc<Self>) {
        loop {
            let notified = self.work.notified();
            if let Some(wait) = self.write_delay() {
                tokio::time::sleep(wait).await;
            }
            let batch = self.take_batch();
            let Some(Batch {
                ops,
                guards,
                last_seq,
                wakers,
            }) = batch
            else {
                if self.stopping.load(Ordering::Acquire) {
                    return;
                }
                notified.await;
                continue;
            };
            // Empty when every queue entry it had was acknowledged before it was written.
            if !ops.is_empty() {
                match self.write(ops, guards).await {
                    Written::At(revision) => {
                        let mut commits = self.commits.lock();
                        if commits.len() == COMMITS_KEPT {
                            commits.pop_front();
                        }
                        commits.push_back((last_seq, revision));
                    }
                    Written::Nothing => {}
                    Written::LifeEnded => {
                        // Nothing it holds can be acknowledged any more: the writer ends,
                        // which marks the node unhealthy.
                        tracing::error!(
                            node = self.store.id(),
                            "this node id began a new life elsewhere; the store refuses this process's writes"
                        );
                        return;
                    }
                }
            }
            self.committed.fetch_max(last_seq, Ordering::AcqRel);
            {
                let mut early = self.settled_early.lock();
                *early = early.split_off(&(last_seq + 1));
            }
            self.committed_notify.notify_waiters();
            for waker in wakers {
                waker.wake();
            }
        }
    }

    /// Whether the writer takes ops whatever their age: it is stopping, or a full batch waits.
    fn in_a_hurry(&self) -> bool {
        self.stopping.load(Ordering::Acquire) || self.backlog() >= BATCH_OPS
    }

    /// How much longer the oldest op still to be written is to wait (see [`WRITE_DELAY`]).
    fn write_delay(&self) -> Option<Duration> {
        let mut pending = self.pending.lock();
        if self.in_a_hurry() {
            return None;
        }
        let seq = pending.ops.iter().find(|(_, op)| op.is_some())?.0;
        let due = pending.submitted_at(seq)? + WRITE_DELAY;
        Some(due.saturating_duration_since(Instant::now())).filter(|wait| !wait.is_zero())
    }

    /// Ops of whole submissions, up to [`BATCH_OPS`] unless one submission is larger; `None`
    /// when nothing is pending. Submissions without ops complete with the batch.
    fn take_batch(&self) -> Option<Batch> {
        let mut pending = self.pending.lock();
        let submitted = self.submitted.load(Ordering::Acquire);
        if pending.ops.is_empty() {
            if submitted > self.committed() {
                self.committed.fetch_max(submitted, Ordering::AcqRel);
                let wakers: Vec<_> = std::mem::take(&mut pending.wakers).into_values().collect();
                drop(pending);
                self.committed_notify.notify_waiters();
                for w in wakers {
                    w.wake();
                }
            }
            return None;
        }
        let mut ops = Vec::new();
        let mut last_seq = 0;
        let young = Instant::now().checked_sub(WRITE_DELAY);
        let hurry = self.in_a_hurry();
        while let Some((seq, op)) = pending.ops.front() {
            let (seq, taken_back) = (*seq, op.is_none());
            if ops.len() >= BATCH_OPS && seq != last_seq {
                break;
            }
            if !hurry
                && !taken_back
                && seq != last_seq
                && young.is_some_and(|young| pending.submitted_at(seq).is_some_and(|at| at > young))
            {
                break;
            }
            if let Some((_, Some(op))) = pending.pop() {
                if is_queue_entry(&op) {
                    self.written.inc();
                }
                ops.push((seq, op));
            }
            last_seq = seq;
        }
        self.backlog.fetch_sub(ops.len(), Ordering::AcqRel);
        // Submissions after the last op taken but without ops of their own are covered too.
        if pending.ops.is_empty() {
            last_seq = submitted;
        } else if let Some((next, _)) = pending.ops.front() {
            last_seq = last_seq.max(next - 1);
        }
        let later = pending.wakers.split_off(&(last_seq + 1));
        let wakers: Vec<_> = std::mem::replace(&mut pending.wakers, later)
            .into_values()
            .collect();
        let mut guards = Vec::new();
        pending.guards.retain(|seq, guard| {
            if *seq <= last_seq {
                guards.push((*seq, guard.clone()));
                false
            } else {
                true
            }
        });
        guards.sort_unstable_by_key(|(seq, _)| *seq);
        Some(Batch {
            ops,
            guards,
            last_seq,
            wakers,
        })
    }

    /// Retries until the store takes the batch: acknowledging without it would be a lie.
    /// The submissions whose guard does not hold are left out.
    async fn write(&self, mut ops: Vec<(u64, Op)>, mut guards: Vec<(u64, Compare)>) -> Written {
        let life = self.life.load(Ordering::Acquire);
        let life_guard = (life != 0)
            .then(|| Compare::value_equals(keys::node_life(self.store.id()), life.to_string()));
        let mut backoff = Duration::from_millis(50);
        loop {
            let compares = life_guard
                .iter()
                .chain(first_on_each_key(&guards).map(|(_, guard)| guard))
                .cloned();
            let txn = Txn::new()
                .when(compares)
                .and_then(ops.iter().map(|(_, op)| op.clone()));
            match self.store.txn(txn).await {
                Ok(response) if response.succeeded => return Written::At(response.revision),
                Ok(_) => match self.refused(life_guard.as_ref(), &guards).await {
                    Ok(Some(refused)) => {
                        self.refused.inc_by(refused.len() as u64);
                        tracing::debug!(
                            submissions = refused.len(),
                            "leaving out writes of sessions this node no longer owns"
                        );
                        ops.retain(|(seq, _)| !refused.contains(seq));
                        guards.retain(|(seq, _)| !refused.contains(seq));
                        if ops.is_empty() {
                            return Written::Nothing;
                        }
                    }
                    Ok(None) => return Written::LifeEnded,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot check refused writes; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                },
                Err(StoreError::Shutdown) => return Written::Nothing,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot persist broker state; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Which of `guards`' submissions the store refuses now, tested one at a time; `None`
    /// when it refuses this life's writes altogether.
    async fn refused(
        &self,
        life_guard: Option<&Compare>,
        guards: &[(u64, Compare)],
    ) -> Result<Option<Vec<u64>>, StoreError> {
        let holds = |guard: &Compare| {
            let test = Txn::new().when([guard.clone()]);
            async move { self.store.txn(test).await.map(|r| r.succeeded) }
        };
        if let Some(guard) = life_guard
            && !holds(guard).await?
        {
            return Ok(None);
        }
        let mut refused = Vec::new();
        // The others wait for the next attempt.
        for (seq, guard) in first_on_each_key(guards) {
            if !holds(guard).await? {
                refused.push(*seq);
            }
        }
        Ok(Some(refused))
    }

    /// Waits until everything submitted so far is durable, or `timeout` passes.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let target = self.submitted.load(Ordering::Acquire);
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.committed_notify.notified();
            if self.committed() >= target {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.work.notify_one();
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        }
    }

    /// Lets the writer finish once nothing is pending.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.work.notify_one();
    }

    /// Retained messages stored before this start.
    pub async fn load_retained(&self) -> Result<Vec<(Message, u64)>, StoreError> {
        let range = self
            .store
            .range(
                RangeRequest::prefix(keys::RETAINED),
                Consistency::Linearizable,
            )
            .await?;
        Ok(range
            .kvs
            .iter()
            .filter_map(|kv| decode_retained(&kv.value))
            .collect())
    }

    /// The retained message of `topic` as the cluster has it, with when it was set; `None`
    /// when there is none or it has expired.
    pub async fn retained(&self, topic: &str) -> Result<Option<(Message, u64)>, StoreError> {
        let found = self
            .store
            .get(&keys::retained(topic), Consistency::Linearizable)
            .await?;
        let now = Instant::now();
        Ok(found
            .kv
            .and_then(|kv| decode_retained(&kv.value))
            .filter(|(m, _)| !m.is_expired(now)))
    }

    /// Up to `limit` unexpired retained messages as the cluster has them, in topic order after
    /// the topic `after`; and whether more follow.
    pub async fn retained_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(Message, u64)>, bool), StoreError> {
        let mut page = Vec::with_capacity(limit);
        let mut start_after = after.map(keys::retained);
        let now = Instant::now();
        // Expired messages are skipped, so a page may take more than one read.
        loop {
            let range = self
                .store
                .range(
                    RangeRequest {
                        prefix: keys::RETAINED.as_bytes().to_vec(),
                        start_after: start_after.take(),
                        limit: limit - page.len(),
                    },
                    Consistency::Linearizable,
                )
                .await?;
            start_after = range.kvs.last().map(|kv| kv.key.clone());
            page.extend(
                range
                    .kvs
                    .iter()
                    .filter_map(|kv| decode_retained(&kv.value))
                    .filter(|(m, _)| !m.is_expired(now)),
            );
            if !range.more || page.len() >= limit || start_after.is_none() {
                return Ok((page, range.more));
            }
        }
    }

    /// Persistent sessions stored before this start, with their queued messages in order.
    pub async fn load_sessions(&self) -> Result<Vec<RestoredSession>, StoreError> {
        let sessions = self
            .store
            .range(
                RangeRequest::prefix(keys::SESSION),
                Consistency::Linearizable,
            )
            .await?;
        let mut restored = Vec::new();
        for kv in sessions.kvs {
            let Ok(record) = serde_json::from_slice::<SessionRecord>(&kv.value) else {
                tracing::warn!(key = %String::from_utf8_lossy(&kv.key), "skipping unreadable session record");
                continue;
            };
            // Another node holds it: restored here too, it would queue every message twice.
            if restores(record.node, self.store.id()) {
                let queue = self.load_queue(&record.client_id).await?;
                restored.push(RestoredSession {
                    record,
                    queue,
                    revision: kv.mod_revision,
                });
            }
        }
        Ok(restored)
    }

    /// The stored session of `client_id` with its queue, and the revision its record was
    /// last written at: the fencing token of [`Durable::take_ownership`].
    pub async fn load_session(
        &self,
        client_id: &str,
    ) -> Result<Option<(RestoredSession, u64)>, StoreError> {
        Ok(self.read_session(client_id).await?.0)
    }

    /// As [`Durable::load_session`], with the store revision the read saw.
    pub async fn read_session(
        &self,
        client_id: &str,
    ) -> Result<(Option<(RestoredSession, u64)>, u64), StoreError> {
        let got = self
            .store
            .get(&keys::session(client_id), Consistency::Linearizable)
            .await?;
        let Some(kv) = got.kv else {
            return Ok((None, got.revision));
        };
        let Ok(record) = serde_json::from_slice::<SessionRecord>(&kv.value) else {
            tracing::warn!(client_id, "an unreadable session record is taken as none");
            return Ok((None, got.revision));
        };
        let queue = self.load_queue(client_id).await?;
        let revision = kv.mod_revision;
        Ok((
            Some((
                RestoredSession {
                    record,
                    queue,
                    revision,
                },
                revision,
            )),
            got.revision,
        ))
    }

    /// Names this node the owner of `record`'s session, unless it was written since
    /// `revision` (another node claimed it meanwhile); whether it did.
    /// The ownership it records is returned: the session's later writes are made under it.
    pub async fn take_ownership(
        &self,
        record: &SessionRecord,
        revision: u64,
    ) -> Result<Option<Ownership>, StoreError> {
        let key = keys::session(&record.client_id);
        let token: u64 = rand::random();
        let record = SessionRecord {
            owner: Some(token),
            ..record.clone()
        };
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, revision)])
            .and_then([
                self.session_put(&record),
                Op::put(keys::session_owner(&record.client_id), token.to_string()),
            ]);
        let succeeded = self.store.txn(txn).await?.succeeded;
        Ok(succeeded.then_some(Ownership::Recorded(token)))
    }

    /// The messages queued for `client_id`, in the order the store took them (several nodes
    /// may have written the queue, each numbering its entries its own way: a publisher's
    /// messages are in the order it sent them when it waited for each one's acknowledgement,
    /// which waits for the write).
    async fn load_queue(&self, client_id: &str) -> Result<Vec<(u64, Delivery)>, StoreError> {
        let prefix = keys::queue_prefix(client_id);
        let queued = self
            .store
            .range(
                RangeRequest::prefix(prefix.clone()),
                Consistency::Linearizable,
            )
            .await?;
        let mut queue = Vec::new();
        for item in queued.kvs {
            let seq = keys::queue_seq(&item.key, &prefix);
            let (Some(seq), Some((message, qos, retain, subscription_ids))) =
                (seq, decode_message(&item.value))
            else {
                continue;
            };
            queue.push((
                item.mod_revision,
                seq,
                Delivery {
                    message: Arc::new(message),
                    qos,
                    retain,
                    subscription_ids,
                    stored: seq,
                    fence: 0,
                },
            ));
        }
        queue.sort_by_key(|(revision, seq, _)| (*revision, *seq));
        Ok(queue
            .into_iter()
            .map(|(_, seq, delivery)| (seq, delivery))
            .collect())
    }

    pub fn session_put(&self, record: &SessionRecord) -> Op {
        let record = SessionRecord {
            node: Some(self.store.id()),
            ..record.clone()
        };
        let value = serde_json::to_vec(&record).unwrap_or_default();
        Op::put(keys::session(&record.client_id), value)
    }

    /// Ops that forget a session, its ownership and everything queued for it.
    pub fn session_delete(client_id: &str) -> Vec<Op> {
        vec![
            Op::delete(keys::session(client_id)),
            Op::delete(keys::session_owner(client_id)),
            Op::delete_prefix(keys::queue_prefix(client_id)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_entry_acknowledged_before_it_is_written_is_never_written() {
        let mut pending = Pending::default();
        let entry = |n| keys::queue("c", n);
        assert_eq!(pending.push(1, Op::put(entry(1), "m1")), Pushed::Queued);
        assert_eq!(
            pending.push(1, Op::put(keys::session("c"), "record")),
            Pushed::Queued
        );
        assert_eq!(pending.push(2, Op::put(entry(2), "m2")), Pushed::Queued);
        assert_eq!(pending.push(3, Op::put(entry(3), "m3")), Pushed::Queued);
        // The first message is acknowledged while its entry waits: both go, but its
        // submission still writes the record; the third's has nothing left to write.
        assert_eq!(pending.push(4, Op::delete(entry(1))), Pushed::Undid(None));
        assert_eq!(
            pending.push(4, Op::delete(entry(3))),
            Pushed::Undid(Some(3))
        );
        // The second is taken by the writer first, so its delete is written after it.
        let mut written = Vec::new();
        while let Some((_, op)) = pending.pop() {
            written.extend(op);
        }
        assert_eq!(pending.push(5, Op::delete(entry(2))), Pushed::Queued);
        // A record that is put and deleted is written both ways: it may have been there.
        assert_eq!(
            pending.push(6, Op::put(keys::session("d"), "record")),
            Pushed::Queued
        );
        assert_eq!(
            pending.push(6, Op::delete(keys::session("d"))),
            Pushed::Queued
        );
        while let Some((_, op)) = pending.pop() {
            written.extend(op);
        }
        assert_eq!(
            written,
            [
                Op::put(keys::session("c"), "record"),
                Op::put(entry(2), "m2"),
                Op::delete(entry(2)),
                Op::put(keys::session("d"), "record"),
                Op::delete(keys::session("d")),
            ]
        );
        assert!(pending.queued.is_empty() && pending.live.is_empty());
    }

    #[test]
    fn queue_numbers_of_two_nodes_never_collide_and_sort_by_count_first() {
        assert_ne!(queue_seq(7, 1), queue_seq(7, 2));
        assert!(queue_seq(7, 2) < queue_seq(8, 1));
        assert_eq!(queue_seq(7, 3) >> NODE_BITS, 7);
    }

    #[test]
    fn a_node_restores_its_own_sessions_and_those_written_before_nodes_were_recorded() {
        assert!(restores(Some(2), 2));
        assert!(!restores(Some(1), 2));
        assert!(restores(None, 2));
        let old: SessionRecord =
            serde_json::from_str(r#"{"client_id":"c","expiry_interval":60,"subscriptions":[]}"#)
                .unwrap();
        assert_eq!(old.node, None);
    }

    #[test]
    fn stored_messages_round_trip_with_properties() {
        let properties = Properties {
            content_type: Some("text/plain".into()),
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        };
        let message = Message {
            topic: Arc::from("a/b"),
            payload: bytes::Bytes::from_static(b"hello"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Some(Box::new(properties.clone())),
            expires_at: Some(Instant::now() + Duration::from_secs(60)),
            origin: 7,
        };
        let bytes = encode_message(&message, QoS::AtLeastOnce, true, &[3, 4]);
        let (back, qos, retain, ids) = decode_message(&bytes).unwrap();
        assert_eq!(&*back.topic, "a/b");
        assert_eq!(back.payload, message.payload);
        assert_eq!(qos, QoS::AtLeastOnce);
        assert!(retain);
        assert_eq!(ids, vec![3, 4]);
        assert_eq!(back.properties.as_deref(), Some(&properties));
        let left = back.remaining_expiry(Instant::now()).unwrap();
        assert!((58..=61).contains(&left), "{left}");
    }

    #[test]
    fn retained_records_keep_their_time_and_old_ones_still_read() {
        let message = Message {
            topic: Arc::from("a/b"),
            payload: bytes::Bytes::from_static(b"on"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: None,
            expires_at: None,
            origin: 0,
        };
        let (back, modified) =
            decode_retained(&encode_retained(&message, 1_700_000_000_123)).unwrap();
        assert_eq!((&*back.topic, modified), ("a/b", 1_700_000_000_123));
        let old = encode_message(&message, QoS::AtLeastOnce, true, &[]);
        let (back, modified) = decode_retained(&old).unwrap();
        assert_eq!((&*back.payload, modified), (&b"on"[..], 0));
    }

    async fn single_node_store(dir: &std::path::Path) -> Store {
        let network = halyard_raft::local::LocalNetwork::new();
        let store = Store::open(
            halyard_raft::StoreConfig::new(1, "local", dir.join("snapshots")),
            Arc::new(halyard_raft::MemEngine::new()),
            network.transport(1),
            halyard_raft::RaftMetrics::unregistered(),
        )
        .await
        .unwrap();
        network.register(1, store.service());
        store
            .initialize(std::collections::BTreeMap::from([(1, "local".to_string())]))
            .await
            .unwrap();
        store.wait_ready(Duration::from_secs(10)).await.unwrap();
        store
    }

    /// The values queued for `client_id` in the store.
    async fn queued(store: &Store, client_id: &str) -> Vec<Vec<u8>> {
        store
            .range(
                RangeRequest::prefix(keys::queue_prefix(client_id)),
                Consistency::Linearizable,
            )
            .await
            .unwrap()
            .kvs
            .into_iter()
            .map(|kv| kv.value)
            .collect()
    }

    async fn started(store: &Store) -> (Arc<Durable>, tokio::task::JoinHandle<()>) {
        let durable = Durable::new(store.clone(), &prometheus::Registry::new()).unwrap();
        durable.begin_life().await.unwrap();
        let writer = tokio::spawn(Arc::clone(&durable).run());
        (durable, writer)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_life_numbers_past_the_old_one_whose_later_writes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = single_node_store(dir.path()).await;
        let (old, old_writer) = started(&store).await;
        let first = old.next_message_seq();
        old.submit([Op::put(keys::queue("c", first), "m1")], None);
        assert!(old.flush(Duration::from_secs(5)).await);

        // The same node starts again while the old process still runs (or its last write is
        // still on its way to the store).
        let (new, _new_writer) = started(&store).await;
        let numbered = new.next_message_seq();
        assert!(
            numbered >> NODE_BITS > first >> NODE_BITS,
            "{numbered:#x} after {first:#x}"
        );
        let late = old.next_message_seq();
        old.submit([Op::put(keys::queue("c", late), "m2")], None);
        assert!(!old.flush(Duration::from_secs(2)).await);
        assert!(
            tokio::time::timeout(Duration::from_secs(5), old_writer)
                .await
                .is_ok(),
            "the refused writer ends"
        );
        assert_eq!(queued(&store, "c").await, vec![b"m1".to_vec()]);

        new.submit([Op::put(keys::queue("c", numbered), "m3")], None);
        assert!(new.flush(Duration::from_secs(5)).await);
        store.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_submission_is_covered_by_the_revision_that_wrote_it_and_not_by_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = single_node_store(dir.path()).await;
        let (durable, _writer) = started(&store).await;
        let first = durable.submit([Op::put(keys::queue("c", 1), "m1")], None);
        assert!(durable.flush(Duration::from_secs(5)).await);
        // Written by another node meanwhile.
        let foreign = store
            .txn(Txn::new().and_then([Op::put(keys::queue("c", 2), "m2")]))
            .await
            .unwrap()
            .revision;
        let next = durable.submitted() + 1;
        assert_eq!(durable.revision_covering(next), None, "not written yet");
        durable.submit([Op::put(keys::queue("c", 3), "m3")], None);
        assert!(durable.flush(Duration::from_secs(5)).await);
        let covering = durable.revision_covering(next).unwrap();
        assert!(covering > foreign, "{covering} after {foreign}");
        assert!(durable.revision_covering(first).unwrap() < foreign);
        store.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_claimed_elsewhere_is_neither_overwritten_nor_deleted_by_its_old_owner() {
        let dir = tempfile::tempdir().unwrap();
        let store = single_node_store(dir.path()).await;
        let (durable, _writer) = started(&store).await;
        let record = |node: u64, filter: &str| SessionRecord {
            client_id: "c".into(),
            expiry_interval: 60,
            subscriptions: vec![SubscriptionRecord::new(
                filter,
                SubscriptionOptions::default(),
                None,
            )],
            node: Some(node),
            owner: None,
        };
        let read_record = || async {
            let kv = store
                .get(&keys::session("c"), Consistency::Linearizable)
                .await
                .unwrap()
                .kv
                .unwrap();
            serde_json::from_slice::<SessionRecord>(&kv.value).unwrap()
        };

        // Begun here: the first write records the ownership, later ones are made under it.
        let (ownership, _) = durable.submit_owned(
            "c",
            Ownership::Fresh(7),
            vec![durable.session_put(&record(1, "a"))],
            None,
        );
        assert_eq!(ownership, Ownership::Recorded(7));
        durable.submit_owned(
            "c",
            ownership,
            vec![durable.session_put(&record(1, "b"))],
            None,
        );
        durable.submit([Op::put(keys::queue("c", 1), "m1")], None);
        assert!(durable.flush(Duration::from_secs(5)).await);
        assert_eq!(read_record().await.subscriptions[0].filter, "b");

        // Another node claims it while this one is cut off.
        let claimed = serde_json::to_vec(&record(2, "z")).unwrap();
        store
            .txn(Txn::new().and_then([
                Op::put(keys::session("c"), claimed),
                Op::put(keys::session_owner("c"), "99"),
            ]))
            .await
            .unwrap();

        // What this node still writes for it is left out; other writes of the same batch
        // are made.
        durable.submit_owned(
            "c",
            ownership,
            vec![durable.session_put(&record(1, "stale"))],
            None,
        );
        durable.submit([Op::put(keys::queue("c", 2), "m2")], None);
        durable.submit_owned("c", ownership, Durable::session_delete("c"), None);
        // A fresh start here cannot take it either.
        durable.submit_owned(
            "c",
            Ownership::Fresh(8),
            vec![durable.session_put(&record(1, "fresh"))],
            None,
        );
        assert!(durable.flush(Duration::from_secs(5)).await);
        let now = read_record().await;
        assert_eq!(
            (now.node, now.subscriptions[0].filter.as_str()),
            (Some(2), "z")
        );
        assert_eq!(queued(&store, "c").await.len(), 2);
        assert_eq!(durable.refused.get(), 3);
        store.shutdown().await;
    }
}
