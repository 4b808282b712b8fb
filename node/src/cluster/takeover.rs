//! One session, one node: a client id is served by one connection in the whole cluster, and a
//! persistent session by the one node that owns it in the store.
//!
//! Every CONNECT is announced to every peer (`Connecting`, stamped with the time it came):
//! a peer holding an older connection or session for that client id lets it go (its
//! connection is closed with "session taken over"), so two racing CONNECTs on two nodes end
//! with the later one. A connection that resumes a session this node does not hold, or starts
//! a persistent one, first claims it: the stored record names its owner, which is asked to let
//! it go (`Release`) and answers once every write it made for it is durable (`Released`); the
//! claimant then names itself owner by a transaction conditional on the record's revision (the
//! fencing token: of two claimants reading the same revision only one writes; the other reads
//! again and claims from the winner), and takes the session, subscriptions and queue, from the
//! store. An owner that does not answer within the forward timeout is taken as dead: its
//! session is taken from the store as it was last written. A node that drains asks its peers
//! to claim its offline sessions the same way (`Adopt`), so that their routes and queues live
//! on after it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use halyard_raft::{Compare, CompareOp, NodeId};
use parking_lot::Mutex;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};
use tokio::sync::oneshot;

use super::control::{Control, LocalRoutes};
use crate::broker::{Broker, Claim, ClaimOutcome, Delivery, Durable, Signal};
use crate::store::keys;

/// Reads of a contended session record before a claim gives up.
const CLAIM_ATTEMPTS: usize = 5;
/// Pause between reads of a store that has no leader for the moment.
const STORE_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// Claims waiting for `Released` from a peer, by peer and client id.
type Waiting = HashMap<(NodeId, String), Vec<oneshot::Sender<()>>>;

/// This node's side of session takeover: the claims it makes, and its answers to its peers'.
pub(super) struct Takeovers {
    node: NodeId,
    broker: Broker,
    forward_timeout: Duration,
    /// The control streams to the peers, shared with the routes.
    control: Arc<Mutex<LocalRoutes>>,
    waiting: Mutex<Waiting>,
    /// Claims under way here, by client id: when the connection was made, and whether a
    /// later connection elsewhere superseded it.
    claiming: Mutex<HashMap<String, (u64, Arc<AtomicBool>)>>,
    /// Copies stored for a session that the store names this node's while a claim here reads
    /// it: the claim takes them, as the store's watch does not give a node its own writes.
    kept_for_claims: Mutex<HashMap<String, Vec<Delivery>>>,
    claims: IntCounterVec,
    claim_seconds: Histogram,
    released: IntCounterVec,
    /// For the background work a `&self` method starts.
    this: Weak<Takeovers>,
}

impl Takeovers {
    pub(super) fn new(
        node: NodeId,
        broker: Broker,
        forward_timeout: Duration,
        control: Arc<Mutex<LocalRoutes>>,
        registry: &Registry,
    ) -> Result<Arc<Self>, prometheus::Error> {
        let claims = IntCounterVec::new(
            Opts::new(
                "halyard_cluster_session_claims_total",
                "Sessions claimed from the store for a connecting client, by how the claim \
                 ended: taken from another node, taken from a silent one, found here or \
                 nowhere, unavailable",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(claims.clone()))?;
        let claim_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "halyard_cluster_session_claim_seconds",
                "Time from a CONNECT to its session being this node's, for connections that \
                 claim one",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        registry.register(Box::new(claim_seconds.clone()))?;
        let released = IntCounterVec::new(
            Opts::new(
                "halyard_cluster_sessions_released_total",
                "Sessions this node let go because a connection on another node claimed them, \
                 by why: a later connection, or a claim of the stored session",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(released.clone()))?;
        Ok(Arc::new_cyclic(|this| Self {
            node,
            broker,
            forward_timeout,
            control,
            waiting: Mutex::new(HashMap::new()),
            claiming: Mutex::new(HashMap::new()),
            kept_for_claims: Mutex::new(HashMap::new()),
            claims,
            claim_seconds,
            released,
            this: this.clone(),
        }))
    }

    fn send_control(&self, to: NodeId, control: Control) -> bool {
        self.control.lock().send(to, control)
    }

    /// Handles a takeover message from peer `from`.
    pub(super) fn handle(&self, from: NodeId, control: Control) {
        match control {
            Control::Connecting {
                client_id,
                clean_start,
                claimed_at,
            } => {
                if let Some((stamp, superseded)) = self.claiming.lock().get(&client_id)
                    && *stamp < claimed_at
                {
                    superseded.store(true, Ordering::Release);
                }
                self.broker.connected_elsewhere(&client_id, claimed_at);
                if self
                    .broker
                    .relinquish(&client_id, Some(claimed_at), clean_start)
                {
                    self.released.with_label_values(&["later_connection"]).inc();
                }
            }
            Control::Release {
                client_id,
                clean_start,
                claimed_at,
            } => {
                // A later connection here, attached or still claiming, keeps the session;
                // the claimant has been told of it (`Connecting`, earlier on this stream)
                // and gives up.
                let later_here = self
                    .claiming
                    .lock()
                    .get(&client_id)
                    .is_some_and(|(stamp, _)| *stamp > claimed_at);
                if !later_here
                    && self
                        .broker
                        .relinquish(&client_id, Some(claimed_at), clean_start)
                {
                    self.released.with_label_values(&["claim"]).inc();
                }
                let Some(plane) = self.this.upgrade() else {
                    return;
                };
                tokio::spawn(async move {
                    // Whatever this node wrote for the session is durable before the claimant
                    // reads it.
                    if let Some(durable) = plane.broker.durable()
                        && !durable.flush(plane.forward_timeout).await
                    {
                        tracing::warn!(
                            client_id,
                            "a claimed session's writes are not durable yet; released anyway"
                        );
                    }
                    plane.send_control(from, Control::Released { client_id });
                });
            }
            Control::Released { client_id } => {
                let waiting = self.waiting.lock().remove(&(from, client_id));
                for waiter in waiting.into_iter().flatten() {
                    let _ = waiter.send(());
                }
            }
            Control::Adopt { client_id } => {
                if self.broker.holds_session(&client_id) {
                    return;
                }
                let Some(plane) = self.this.upgrade() else {
                    return;
                };
                tokio::spawn(async move {
                    let (outcome, how) = plane
                        .take_session(
                            &client_id,
                            false,
                            crate::clock::epoch_micros(),
                            &|| true,
                            None,
                        )
                        .await;
                    plane.claims.with_label_values(&[how]).inc();
                    if outcome == ClaimOutcome::Unavailable {
                        tracing::warn!(client_id, "cannot adopt a session from a leaving node");
                    }
                });
            }
            Control::Add(_) | Control::AddAll(_) | Control::Remove(_) | Control::Digest(_) => {}
        }
    }

    /// Starts claiming the session of `client_id` for a connection on this node.
    pub(super) fn start_claim(
        &self,
        client_id: &str,
        clean_start: bool,
        claimed_at: u64,
        waker: &Arc<Signal>,
    ) -> Arc<Claim> {
        let claim = Arc::new(Claim::default());
        let Some(plane) = self.this.upgrade() else {
            claim.settle(ClaimOutcome::Unavailable);
            return claim;
        };
        let superseded = Arc::new(AtomicBool::new(false));
        self.claiming
            .lock()
            .insert(client_id.to_owned(), (claimed_at, Arc::clone(&superseded)));
        let (client_id, waker, settled) =
            (client_id.to_owned(), Arc::clone(waker), Arc::clone(&claim));
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            // The connection holds the claim while it waits for it.
            let wanted = || Arc::strong_count(&settled) > 1 && !superseded.load(Ordering::Acquire);
            let (outcome, how) = plane
                .take_session(
                    &client_id,
                    clean_start,
                    claimed_at,
                    &wanted,
                    Some(settled.as_ref()),
                )
                .await;
            {
                let mut claiming = plane.claiming.lock();
                if claiming
                    .get(&client_id)
                    .is_some_and(|(stamp, _)| *stamp == claimed_at)
                {
                    claiming.remove(&client_id);
                    plane.kept_for_claims.lock().remove(&client_id);
                }
            }
            if outcome == ClaimOutcome::Owned {
                // The routes of the subscriptions it took are applied by every linked peer
                // before CONNACK, as they are before a SUBACK.
                plane.route_barrier().await;
            }
            plane.claims.with_label_values(&[how]).inc();
            plane.claim_seconds.observe(started.elapsed().as_secs_f64());
            settled.settle(outcome);
            waker.wake();
        });
        claim
    }

    /// Whether any claim is under way here.
    pub(super) fn claims_under_way(&self) -> bool {
        !self.claiming.lock().is_empty()
    }

    /// Whether a claim of the session of `client_id` is under way here.
    pub(super) fn is_claiming(&self, client_id: &str) -> bool {
        self.claiming.lock().contains_key(client_id)
    }

    /// Keeps a copy stored for the session of `client_id` for the claim under way here, which
    /// takes it once the session is installed.
    pub(super) fn keep_for_claim(&self, client_id: &str, delivery: Delivery) {
        let claiming = self.claiming.lock();
        if claiming.contains_key(client_id) {
            self.kept_for_claims
                .lock()
                .entry(client_id.to_owned())
                .or_default()
                .push(delivery);
        }
    }

    /// Queues in the session of `client_id`, installed here, the copies kept for its claim.
    fn take_kept(&self, client_id: &str) {
        let kept = self.kept_for_claims.lock().remove(client_id);
        for delivery in kept.into_iter().flatten() {
            self.broker.take_stored(client_id, delivery, None);
        }
    }

    /// Returns once every linked peer has applied the route changes this node made so far,
    /// or its control stream ended (a peer that applies nothing for the forward timeout
    /// is resynchronised).
    async fn route_barrier(&self) {
        let signal = Arc::new(Signal::default());
        let handoffs = self.control.lock().barrier(&signal);
        loop {
            let notified = signal.notified();
            if handoffs.iter().all(|h| h.settled()) {
                return;
            }
            notified.await;
        }
    }

    /// Holds the session of `client_id` that the store names this node the owner of, when no
    /// claim here is under way for it: a claim whose answer was lost, or that completed after
    /// a later connection elsewhere superseded it, leaves the store naming this node.
    /// Another node claims it from this one in turn.
    pub(super) fn hold_named(&self, client_id: String) {
        if self.broker.holds_session(&client_id) || self.claiming.lock().contains_key(&client_id) {
            return;
        }
        let Some(durable) = self.broker.durable().cloned() else {
            return;
        };
        let broker = self.broker.clone();
        let node = self.node;
        tokio::spawn(async move {
            if let Ok(Some((stored, _))) = durable.load_session(&client_id).await
                && stored.record.node == Some(node)
            {
                tracing::debug!(client_id, "holding a session the store names this node's");
                broker.adopt(stored);
            }
        });
    }

    /// Makes the stored session of `client_id` this node's; how it went, for the metrics.
    /// A store without a leader (one was just lost) is waited for, up to twice the forward
    /// timeout.
    async fn take_session(
        &self,
        client_id: &str,
        clean_start: bool,
        claimed_at: u64,
        wanted: &(dyn Fn() -> bool + Sync),
        claim: Option<&Claim>,
    ) -> (ClaimOutcome, &'static str) {
        let Some(durable) = self.broker.durable().cloned() else {
            return (ClaimOutcome::Owned, "local");
        };
        let deadline = tokio::time::Instant::now() + self.forward_timeout * 2;
        let mut how = "local";
        let mut asked: Option<NodeId> = None;
        let mut contended = 0;
        let mut flushed_here = false;
        while contended < CLAIM_ATTEMPTS {
            if !wanted() {
                return (ClaimOutcome::Unavailable, "abandoned");
            }
            let (stored, read_at) = match durable.read_session(client_id).await {
                Ok(read) => read,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(client_id, error = %e, "cannot read a claimed session yet");
                    tokio::time::sleep(STORE_RETRY).await;
                    continue;
                }
                Err(_) => return (ClaimOutcome::Unavailable, "unavailable"),
            };
            let Some((session, revision)) = stored else {
                if let Some(claim) = claim {
                    claim.found_none_at(read_at);
                }
                return (ClaimOutcome::Owned, how);
            };
            tracing::debug!(client_id, owner = ?session.record.node, revision, "claiming a stored session");
            if let Some(owner) = session.record.node
                && owner != self.node
                && asked != Some(owner)
            {
                // Read again once the owner's writes for it are durable.
                asked = Some(owner);
                how = if self
                    .release_from(owner, client_id, clean_start, claimed_at)
                    .await
                {
                    "peer"
                } else {
                    "silent_peer"
                };
                continue;
            }
            if clean_start {
                if let Some(claim) = claim {
                    claim.found_none_at(read_at);
                }
                // Unless another claim wrote it since the read.
                durable.submit_guarded(
                    Compare::mod_revision(keys::session(client_id), CompareOp::Equal, revision),
                    Durable::session_delete(client_id),
                    None,
                );
                return (ClaimOutcome::Owned, how);
            }
            if self.broker.holds_session(client_id) {
                // Held here by an earlier connection of the client: if it is taken from here
                // before this connection attaches, this one must not start it afresh.
                if let Some(claim) = claim {
                    claim.found_stored();
                }
                return (ClaimOutcome::Owned, how);
            }
            if session.record.node == Some(self.node) && !flushed_here {
                // This node let the session go and lingered it: the copies it queued for it
                // meanwhile are read with the rest, before any message routed to it anew.
                flushed_here = true;
                durable.flush(self.forward_timeout).await;
                continue;
            }
            // Installed, with its routes announced, before the store names this node its
            // owner: a node that sees the new owner has heard of its routes already, or hears
            // very soon.
            if !wanted() {
                return (ClaimOutcome::Unavailable, "abandoned");
            }
            let record = session.record.clone();
            if let Some(claim) = claim {
                claim.found_stored();
            }
            self.broker.adopt(session);
            self.take_kept(client_id);
            match durable.take_ownership(&record, revision).await {
                Ok(Some(ownership)) => {
                    tracing::debug!(client_id, "claimed a stored session");
                    self.broker.own(client_id, ownership);
                    self.take_kept(client_id);
                    // The read may come back late (the store is slow under faults), when
                    // another node has claimed the session since: only what still names this
                    // node is held or taken.
                    if let Ok(Some((again, _))) = durable.load_session(client_id).await
                        && again.record.node == Some(self.node)
                    {
                        if self.broker.holds_session(client_id) {
                            // Copies other nodes stored for it since the read above, while it
                            // had no node to take them (see `directory.rs`), are taken too.
                            for (_, delivery) in again.queue {
                                self.broker.take_stored(client_id, delivery, None);
                            }
                        } else {
                            // Let go before the store named this node (a later connection
                            // on another node superseded this one): the store names it now,
                            // so it holds the session until another node claims it from it.
                            tracing::debug!(client_id, "held again: let go while claimed");
                            self.broker.adopt(again);
                        }
                    }
                    return (ClaimOutcome::Owned, how);
                }
                // Claimed since the read: by another connection of this client here (an
                // earlier one, whose claim went first), and then the session is held here
                // already and this connection takes it over locally; or by another node, and
                // it is claimed from that node in turn.
                Ok(None) => {
                    if let Ok(Some((again, _))) = durable.load_session(client_id).await
                        && again.record.node == Some(self.node)
                        && self.broker.holds_session(client_id)
                    {
                        return (ClaimOutcome::Owned, how);
                    }
                    self.broker.relinquish(client_id, None, false);
                    asked = None;
                    contended += 1;
                }
                Err(e) => {
                    // The claim may have been applied although its answer was lost: the
                    // store says whether this node owns the session now.
                    if let Ok(Some((again, _))) = durable.load_session(client_id).await
                        && again.record.node == Some(self.node)
                    {
                        tracing::debug!(client_id, error = %e, "claimed a stored session, its answer lost");
                        self.broker.adopt(again);
                        return (ClaimOutcome::Owned, how);
                    }
                    self.broker.relinquish(client_id, None, false);
                    if tokio::time::Instant::now() >= deadline {
                        return (ClaimOutcome::Unavailable, "unavailable");
                    }
                    tracing::debug!(client_id, error = %e, "cannot claim a session yet");
                    tokio::time::sleep(STORE_RETRY).await;
                }
            }
        }
        (ClaimOutcome::Unavailable, "unavailable")
    }

    /// Asks `owner` to let the session of `client_id` go; true once it answered, false when
    /// it is not linked or did not answer within the forward timeout.
    async fn release_from(
        &self,
        owner: NodeId,
        client_id: &str,
        clean_start: bool,
        claimed_at: u64,
    ) -> bool {
        let (tx, rx) = oneshot::channel();
        let key = (owner, client_id.to_owned());
        self.waiting.lock().entry(key.clone()).or_default().push(tx);
        let sent = self.send_control(
            owner,
            Control::Release {
                client_id: client_id.to_owned(),
                clean_start,
                claimed_at,
            },
        );
        let answered = sent
            && tokio::time::timeout(self.forward_timeout, rx)
                .await
                .is_ok_and(|r| r.is_ok());
        if !answered {
            self.waiting.lock().remove(&key);
        }
        answered
    }
}
