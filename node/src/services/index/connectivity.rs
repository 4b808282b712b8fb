//! Things' connectivity, recorded in the store by the node their client is connected to
//! (`connectivity/{thing}`), so that every node's index and GetThingConnectivityData see it.
//!
//! Only clients whose id names a thing are recorded, and only while connectivity indexing is
//! on. The changes a node hears of are gathered and written in batches; a record is written
//! only over the one read (compared by revision), and never over a later connection's:
//! a client that moved to another node is not marked disconnected by the node it left.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use halyard_raft::{Op, Revision, Store, Txn};
use parking_lot::Mutex;

use super::FleetIndex;
use super::documents::Connectivity;
use crate::broker::{Connected, PresenceObserver};
use crate::metrics::IndexMetrics;
use crate::services::records::unchanged_since;
use crate::store::keys;

/// Records written in one transaction (two operations each).
const BATCH: usize = 256;
/// Why a node's connections ended when it stopped without saying so.
const LOST: &str = "CONNECTION_LOST";

pub struct ConnectivityRecorder {
    store: Store,
    index: FleetIndex,
    node: u64,
    /// When this node started: its connection numbers start again at each start.
    life: u64,
    pending: Mutex<HashMap<String, Connectivity>>,
    wake: tokio::sync::Notify,
    metrics: IndexMetrics,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl PresenceObserver for ConnectivityRecorder {
    fn connected(&self, c: &Connected<'_>) {
        self.note(Connectivity {
            connected: true,
            timestamp: c.at_ms,
            disconnect_reason: None,
            client_id: c.client_id.to_owned(),
            keep_alive_duration: Some(u64::from(c.keep_alive_seconds)),
            clean_session: Some(c.clean_start),
            session_expiry: Some(u64::from(c.session_expiry_seconds)),
            node: self.node,
            life: self.life,
            connection: c.connection,
        });
    }

    fn disconnected(&self, client_id: &str, connection: u64, at_ms: u64, reason: &'static str) {
        self.note(Connectivity {
            connected: false,
            timestamp: at_ms,
            disconnect_reason: Some(reason.to_owned()),
            client_id: client_id.to_owned(),
            keep_alive_duration: None,
            clean_session: None,
            session_expiry: None,
            node: self.node,
            life: self.life,
            connection,
        });
    }
}

/// Whether `ours` may replace `stored`. Only one connection of a client id is live in the
/// cluster, the latest: a connection replaces any record but that of a later connection on
/// another node, and a disconnection ends only its own connection (or follows an earlier
/// disconnection), so a client that moved to another node is not marked disconnected by the
/// node it left, whichever of the two writes first.
fn replaces(ours: &Connectivity, stored: Option<&Connectivity>) -> bool {
    let Some(stored) = stored else {
        return true;
    };
    if ours.connected {
        !(stored.connected && stored.node != ours.node && stored.timestamp > ours.timestamp)
    } else if stored.connected {
        stored.node == ours.node && stored.life == ours.life && stored.connection == ours.connection
    } else {
        stored.timestamp <= ours.timestamp
    }
}

impl ConnectivityRecorder {
    pub fn new(store: Store, index: FleetIndex) -> Arc<Self> {
        let node = store.id();
        let metrics = index.inner.metrics.clone();
        let shutdown = index.inner.shutdown.clone();
        Arc::new(Self {
            store,
            index,
            node,
            life: crate::clock::epoch_millis(),
            pending: Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
            metrics,
            shutdown,
        })
    }

    fn note(&self, connectivity: Connectivity) {
        if !self.index.indexes_connectivity() || !self.index.has_thing(&connectivity.client_id) {
            return;
        }
        self.pending
            .lock()
            .insert(connectivity.client_id.clone(), connectivity);
        self.wake.notify_one();
    }

    /// Writes what it hears of until the node stops; first, marks the things this node had
    /// connected before it restarted as disconnected.
    pub async fn run(self: Arc<Self>) {
        let mut shutdown = self.shutdown.clone();
        self.lost_at_restart().await;
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
            let pending: Vec<Connectivity> = self.pending.lock().drain().map(|(_, c)| c).collect();
            for chunk in pending.chunks(BATCH) {
                self.write(chunk).await;
            }
        }
    }

    /// The records naming this node as connected in a previous life.
    async fn lost_at_restart(&self) {
        let mut lost = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let Ok(found) = self
                .store
                .range(
                    halyard_raft::RangeRequest {
                        prefix: keys::CONNECTIVITY.as_bytes().to_vec(),
                        start_after: after.take(),
                        limit: 1000,
                    },
                    halyard_raft::Consistency::Local,
                )
                .await
            else {
                return;
            };
            for kv in &found.kvs {
                if let Ok(c) = serde_json::from_slice::<Connectivity>(&kv.value)
                    && c.connected
                    && c.node == self.node
                    && c.life != self.life
                {
                    lost.push(Connectivity {
                        connected: false,
                        timestamp: crate::clock::epoch_millis(),
                        disconnect_reason: Some(LOST.to_owned()),
                        keep_alive_duration: None,
                        clean_session: None,
                        session_expiry: None,
                        ..c
                    });
                }
            }
            after = found.kvs.last().map(|kv| kv.key.clone());
            if !found.more || after.is_none() {
                break;
            }
        }
        for chunk in lost.chunks(BATCH) {
            self.write(chunk).await;
        }
    }

    /// The stored record of a thing and the revision it was written at (0: none).
    fn stored(&self, thing: &str) -> (Option<Connectivity>, Revision) {
        match self
            .store
            .get_local(keys::connectivity(thing).as_bytes())
            .ok()
            .and_then(|got| got.kv)
        {
            Some(kv) => (serde_json::from_slice(&kv.value).ok(), kv.mod_revision),
            None => (None, 0),
        }
    }

    /// Writes the records that may replace the stored ones, all in one transaction; if
    /// another write came first, one by one from the latest state.
    async fn write(&self, records: &[Connectivity]) {
        let mut compares = Vec::new();
        let mut puts = Vec::new();
        let mut kept = Vec::new();
        for record in records {
            let key = keys::connectivity(&record.client_id);
            let (stored, revision) = self.stored(&record.client_id);
            if !replaces(record, stored.as_ref()) {
                self.outcome("superseded", 1);
                continue;
            }
            let Ok(value) = serde_json::to_vec(record) else {
                continue;
            };
            compares.push(unchanged_since(&key, revision));
            puts.push(Op::put(key.into_bytes(), value));
            kept.push(record);
        }
        if kept.is_empty() {
            return;
        }
        match self
            .store
            .txn(Txn::new().when(compares).and_then(puts))
            .await
        {
            Ok(result) if result.succeeded => self.outcome("written", kept.len()),
            Ok(_) => {
                for record in kept {
                    self.write_one(record).await;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "connectivity records not written");
                self.outcome("failed", kept.len());
            }
        }
    }

    async fn write_one(&self, record: &Connectivity) {
        let key = keys::connectivity(&record.client_id);
        for _ in 0..4 {
            if self.store.read_barrier().await.is_err() {
                break;
            }
            let (stored, revision) = self.stored(&record.client_id);
            if !replaces(record, stored.as_ref()) {
                self.outcome("superseded", 1);
                return;
            }
            let Ok(value) = serde_json::to_vec(record) else {
                return;
            };
            let txn = Txn::new()
                .when([unchanged_since(&key, revision)])
                .and_then([Op::put(key.clone().into_bytes(), value)]);
            match self.store.txn(txn).await {
                Ok(result) if result.succeeded => {
                    self.outcome("written", 1);
                    return;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(_) => break,
            }
        }
        self.outcome("failed", 1);
    }

    fn outcome(&self, outcome: &str, count: usize) {
        self.metrics
            .connectivity_writes
            .with_label_values(&[outcome])
            .inc_by(count as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(connected: bool, timestamp: u64, node: u64, connection: u64) -> Connectivity {
        Connectivity {
            life: 1,
            connected,
            timestamp,
            disconnect_reason: None,
            client_id: "m1".into(),
            keep_alive_duration: None,
            clean_session: None,
            session_expiry: None,
            node,
            connection,
        }
    }

    #[test]
    fn a_node_left_behind_does_not_undo_a_later_connection() {
        // Moved from node 1 to node 2; node 1 ends its connection after node 2's began.
        let on_2 = record(true, 10, 2, 7);
        assert!(!replaces(&record(false, 20, 1, 3), Some(&on_2)));
        // Or node 1 writes first, with a later timestamp: node 2's connection still wins.
        assert!(replaces(&on_2, Some(&record(false, 20, 1, 3))));
        // A disconnection ends its own connection, not a later one on the same node.
        assert!(replaces(&record(false, 20, 2, 7), Some(&on_2)));
        assert!(!replaces(&record(false, 20, 2, 6), Some(&on_2)));
        // Nor the same number of connection in a previous life of the node.
        let before_restart = Connectivity {
            life: 0,
            ..record(false, 20, 2, 7)
        };
        assert!(!replaces(&before_restart, Some(&on_2)));
        // A connection does not replace a later one on another node.
        assert!(!replaces(&record(true, 5, 1, 3), Some(&on_2)));
        assert!(replaces(&record(true, 5, 1, 3), None));
    }
}
