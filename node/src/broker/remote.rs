//! The broker's view of other nodes: it tells them which filters its sessions hold, and hands
//! them the messages their sessions want. `cluster` implements it; a node alone has none.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use super::session::Signal;
use super::{Delivery, Message};

/// Who the store names the owner of a session, as a node's view of the store has it (which may
/// be behind the store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredOwner {
    /// No record, as of store revision `seen`.
    Absent { seen: u64 },
    /// The record names this node (`here`) or another (or none), which has owned it since
    /// revision `since`.
    Named { here: bool, since: u64 },
}

pub trait Remote: Send + Sync + 'static {
    /// A local session now holds a subscription to `filter`, in `share_group` if shared (one
    /// call per session, filter and group). Called under the trie's write lock, so calls for
    /// one filter arrive in the order they happened: it must not block.
    fn subscribed(&self, filter: &str, share_group: Option<&str>);

    /// A local session no longer holds that subscription. As for `subscribed`.
    fn unsubscribed(&self, filter: &str, share_group: Option<&str>);

    /// What a response must wait for until every linked node has applied the routes this
    /// node announced so far (the route barrier); `waker` is signalled as they do.
    fn route_barrier(&self, waker: &Arc<Signal>) -> Vec<Handoff>;

    /// Hands `message`, routed locally already, to every other node with a subscriber whose
    /// filter matches it, and to one node of each share group it matches that this node did
    /// not serve (`served`). Must not block the publisher. For a QoS 1/2 message, what the
    /// publisher must wait for before acknowledging it: each node's receipt, signalled on
    /// `waker`. Copies for persistent sessions whose node cannot take them now go into `ops`
    /// instead, as queue entries for the store.
    fn forward(
        &self,
        message: &Arc<Message>,
        waker: Option<&Arc<Signal>>,
        served: &[GroupKey<'_>],
        ops: &mut Vec<halyard_raft::Op>,
    ) -> Vec<Handoff>;

    /// A client connects here with `client_id` at `claimed_at` (microseconds since the epoch):
    /// every other node closes its own connection with that client id, if older, and lets
    /// its session go (deleting the stored one too when `clean_start`). Must not block.
    fn connecting(&self, client_id: &str, clean_start: bool, claimed_at: u64);

    /// Whether another node has a subscription matching `topic`: a message published here
    /// would reach someone there.
    fn reaches(&self, topic: &str) -> bool;

    /// Whether another node has a member of share group `key`: a message this node's only
    /// members cannot take now (offline) goes to it instead.
    fn has_share_member(&self, key: GroupKey<'_>) -> bool;

    /// The store's record of the session of `client_id`, as this node last heard.
    fn stored_owner(&self, client_id: &str) -> StoredOwner;

    /// Asks other nodes to claim these sessions (offline, persistent) from this one, which
    /// is leaving: spread over the nodes reachable now, each claims as a connecting client
    /// would. How many it offered: none when no node is reachable.
    fn hand_over(&self, client_ids: Vec<String>) -> usize;

    /// A copy of `delivery` was stored for the lingering session of `client_id`: if a claim
    /// here is taking the session back, it may have read the queue already, and queues this
    /// copy itself once it has installed the session.
    fn stored_lingering(&self, client_id: &str, delivery: Delivery);

    /// Makes this node the owner of the stored session of `client_id` before its connection
    /// (made at `claimed_at`) is accepted: the node that held it lets it go and stores what
    /// it had, then this node takes it from the store (or deletes it, when `clean_start`).
    /// Runs in the background; `waker` is woken when the claim is settled. A claim whose
    /// connection is gone, or that a later connection elsewhere supersedes, is abandoned.
    fn claim(
        &self,
        client_id: &str,
        clean_start: bool,
        claimed_at: u64,
        waker: &Arc<Signal>,
    ) -> Arc<Claim>;
}

/// A session claimed from the store for a connecting client, once settled.
#[derive(Debug, Default)]
pub struct Claim {
    outcome: OnceLock<ClaimOutcome>,
    /// The store held a session, which the claim took.
    stored: AtomicBool,
    /// The store revision at which the claim found no session to take (or deleted it, for a
    /// clean start): a session begun afresh is owned from there.
    fresh_from: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The session (if any was stored) is this node's now.
    Owned,
    /// The store could not be read or written: the connection is refused as unavailable.
    Unavailable,
}

impl Claim {
    pub fn settle(&self, outcome: ClaimOutcome) {
        let _ = self.outcome.set(outcome);
    }

    pub fn outcome(&self) -> Option<ClaimOutcome> {
        self.outcome.get().copied()
    }

    pub fn found_stored(&self) {
        self.stored.store(true, Ordering::Release);
    }

    /// Whether the store held a session that the claim took.
    pub fn had_stored(&self) -> bool {
        self.stored.load(Ordering::Acquire)
    }

    pub fn found_none_at(&self, revision: u64) {
        self.fresh_from.store(revision, Ordering::Release);
    }

    /// See `fresh_from`; 0 when unknown.
    pub fn fresh_from(&self) -> u64 {
        self.fresh_from.load(Ordering::Acquire)
    }
}

/// A share group across nodes: its name and the filter its members share.
pub type GroupKey<'a> = (&'a str, &'a str);

/// How far another node has taken what this node handed it on one stream: every message up
/// to `acked` is in that node's queues (and in the store, for persistent sessions).
#[derive(Debug, Default)]
pub struct AckCursor {
    acked: AtomicU64,
    /// Every message up to here is settled without the node: it stopped answering, and the
    /// copies its persistent sessions were owed are in the store.
    covered: AtomicU64,
    /// The node left the cluster, or has not answered for longer than the cluster's forward
    /// timeout: what is handed to it now is not waited for (its persistent sessions' copies
    /// go to the store instead).
    released: AtomicBool,
}

impl AckCursor {
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// The node acknowledged everything up to `seq`; waiting for it again from now on.
    pub fn advance(&self, seq: u64) {
        self.acked.fetch_max(seq, Ordering::AcqRel);
        self.released.store(false, Ordering::Release);
    }

    pub fn release(&self) {
        self.released.store(true, Ordering::Release);
    }

    /// Everything up to `seq` is settled without the node.
    pub fn cover(&self, seq: u64) {
        self.covered.fetch_max(seq, Ordering::AcqRel);
    }

    pub fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }
}

/// A message handed to another node as the `seq`th on the stream `cursor` follows.
#[derive(Debug, Clone)]
pub struct Handoff {
    pub cursor: Arc<AckCursor>,
    pub seq: u64,
}

impl Handoff {
    /// Whether the publisher need no longer wait for this copy.
    pub fn settled(&self) -> bool {
        self.cursor.acked() >= self.seq || self.cursor.covered.load(Ordering::Acquire) >= self.seq
    }
}
