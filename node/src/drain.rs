//! An orderly leave: the node stops being ready, refuses new connections and sends its
//! clients to other nodes at a steady rate ("use another server", with the configured server
//! reference), hands its offline persistent sessions to its peers (each claims one as a
//! connecting client would, so this node's writes for it are durable first), and gives up the
//! store's leadership. Called by `POST /cluster/drain` and on SIGTERM in a
//! cluster; the node is then stopped (or kept, drained) by whoever asked.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use halyard_raft::Store;
use prometheus::{IntGauge, Registry};
use tokio::time::Instant;

use crate::broker::Broker;
use crate::supervisor::Health;

/// How often the eviction runs, each round sending away its share of the rate.
const ROUND: Duration = Duration::from_millis(100);
/// How long a drain waits for the store's leadership to move.
const LEADERSHIP_WAIT: Duration = Duration::from_secs(2);
/// Log entries behind the leader within which a voter may take the leadership over.
const CAUGHT_UP: u64 = 1000;

pub struct Drain {
    broker: Broker,
    store: Store,
    health: Arc<Health>,
    rate: u32,
    server_reference: Option<String>,
    /// How long a drain waits for peers to claim the sessions it handed over.
    handover_wait: Duration,
    started: AtomicBool,
    /// What the drain did, once it is done.
    outcome: std::sync::OnceLock<Drained>,
    in_progress: IntGauge,
}

/// What a drain did.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Drained {
    pub clients_sent_away: usize,
    pub sessions_handed_over: usize,
    pub sessions_left: usize,
}

/// See [`Drain::status`].
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainStatus {
    pub draining: bool,
    /// What the drain did, once it is done: the node may then be stopped.
    pub done: Option<Drained>,
    /// Clients connected now.
    pub connections: usize,
}

impl Drain {
    pub fn new(
        broker: Broker,
        store: Store,
        health: Arc<Health>,
        rate: u32,
        server_reference: Option<String>,
        handover_wait: Duration,
        registry: &Registry,
    ) -> Result<Arc<Self>, prometheus::Error> {
        let in_progress = IntGauge::new(
            "halyard_drain_in_progress",
            "1 while this node drains (leaves the cluster)",
        )?;
        registry.register(Box::new(in_progress.clone()))?;
        Ok(Arc::new(Self {
            broker,
            store,
            health,
            rate,
            server_reference,
            handover_wait,
            started: AtomicBool::new(false),
            outcome: std::sync::OnceLock::new(),
            in_progress,
        }))
    }

    /// Whether a drain has begun.
    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Where the drain is, for whoever waits on it before stopping the node (the operator).
    pub fn status(&self) -> DrainStatus {
        DrainStatus {
            draining: self.is_started(),
            done: self.outcome.get().copied(),
            connections: usize::try_from(self.broker.metrics().connections.get()).unwrap_or(0),
        }
    }

    /// Drains the node; a second call while one runs or after returns at once.
    pub async fn run(&self) -> Drained {
        if self.started.swap(true, Ordering::AcqRel) {
            return Drained::default();
        }
        self.in_progress.set(1);
        self.health.begin_drain();
        self.broker.begin_drain(self.server_reference.clone());
        tracing::info!(rate = self.rate, "draining: sending clients to other nodes");

        let mut drained = Drained::default();
        let per_round = (self.rate as usize / 10).max(1);
        // Bounded by the time the rate needs for every connection, and then some.
        let connections = usize::try_from(self.broker.metrics().connections.get()).unwrap_or(0);
        let deadline =
            Instant::now() + Duration::from_secs((connections / self.rate as usize) as u64 + 5);
        while Instant::now() < deadline {
            let sent = self.broker.evict(per_round);
            drained.clients_sent_away += sent;
            if sent < per_round {
                // Every connected client has been told; those before CONNECT are refused.
                break;
            }
            tokio::time::sleep(ROUND).await;
        }
        // Each peer that claims a session asks for it, and this node makes its writes for it
        // durable before letting it go.
        drained.sessions_handed_over = self.broker.hand_over_sessions();
        let deadline = Instant::now() + self.handover_wait;
        while drained.sessions_handed_over > 0
            && self.broker.persistent_session_count() > 0
            && Instant::now() < deadline
        {
            tokio::time::sleep(ROUND).await;
        }
        drained.sessions_left = self.broker.persistent_session_count();

        self.give_up_leadership().await;
        let _ = self.outcome.set(drained);
        self.in_progress.set(0);
        tracing::info!(
            clients = drained.clients_sent_away,
            handed_over = drained.sessions_handed_over,
            left = drained.sessions_left,
            "drained"
        );
        drained
    }

    /// Hands the store's leadership to another voter if this node holds it.
    async fn give_up_leadership(&self) {
        let status = self.store.status();
        if status.leader != Some(status.id) {
            return;
        }
        // A voter that is caught up, as far as this leader knows; none when the others are
        // gone (the last node of a cluster being stopped).
        let Some(successor) = status
            .members
            .iter()
            .filter(|m| m.voter && m.id != status.id && m.lag.is_some_and(|lag| lag < CAUGHT_UP))
            .min_by_key(|m| m.lag)
            .map(|m| m.id)
        else {
            return;
        };
        match tokio::time::timeout(LEADERSHIP_WAIT, self.store.transfer_leader(successor)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, successor, "cannot hand the store's leadership over")
            }
            Err(_) => tracing::warn!(successor, "handing the store's leadership over timed out"),
        }
    }
}
