//! The broker's data plane across nodes: every node tells its peers which filters its
//! sessions hold (routes), and hands each message to the peers whose routes match it, once
//! per peer. Both travel on streams of the link to each peer (`links.rs`): between real nodes
//! the QUIC connection the store already keeps to it.
//!
//! Routes. A node is the only writer of its own routes: the first local subscription to a
//! filter adds it, the last removes it. To each peer it sends a stream that opens with a
//! snapshot of all of them (with the node's incarnation, drawn at start) and continues with
//! each change in order. The peer replaces what it held for that node with every snapshot, and
//! drops it when the stream ends: a peer that restarts, is cut off or falls behind (its queue
//! of changes overflows) is resynchronised by a new stream, never patched up. The same stream
//! (the control stream, `control.rs`) carries the messages of session takeover, in order with
//! the routes, to `takeover.rs`.
//!
//! Retained messages. Every node keeps its retained index equal to the store's by following
//! its watch, so a subscriber on any node gets what was retained on any other.
//!
//! Messages. A message that arrived at this node is routed locally, then offered to every peer
//! with a matching route, on one of `LANES` streams chosen by its topic: order per topic and
//! publisher is kept, and one busy topic does not hold up the others. Each lane numbers its
//! messages and keeps them until the peer acknowledges them: the peer acknowledges a message
//! once it is in the queues of that peer's sessions and, for persistent ones, in the store,
//! and the publisher's PUBACK/PUBREC waits for every peer it went to. A stream that breaks is
//! resumed on a new one from the first unacknowledged message; the peer skips what it already
//! took. A peer that acknowledges nothing for the forward timeout stops holding publishers up
//! (what is in flight to it is best effort, as MQTT allows for a node that dies), and one that
//! leaves the cluster is forgotten. Messages written while a lane's previous write was under
//! way go out together in its next.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use halyard_raft::{NodeId, Store};
use parking_lot::{Mutex, RwLock};
use prometheus::{GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

use super::control::{Control, ControlAcks, Listener, LocalRoutes, route_key};
use super::directory::{Directory, StoredSession};
use super::frame::{Frame, FrameReader, Kind, encode_frame, write_frame};
use super::lane::{Coverage, Lane, Pushed, ShareGroups, Strand};
use super::links::{PeerLinks, PeerRecv, PeerSend, Priority};
use super::routes::RouteTable;
use super::takeover::Takeovers;
use crate::broker::durable::{decode_message, decode_retained, encode_message, queue_writer};
use crate::broker::{
    Broker, Claim, GroupKey, Handoff, Message, QueueLimits, Remote, Session, Signal, StoredOwner,
};
use crate::mqtt::QoS;
use crate::store::keys;

/// Streams per peer that messages are spread over by topic.
const LANES: usize = 8;
/// Messages written to a lane's stream in one go, at most.
const BATCH: usize = 256;
/// Bytes of filters per frame of a route snapshot: a peer applies a frame under its route
/// table's write lock, so a large snapshot goes in many short steps.
const SNAPSHOT_FRAME: usize = 256 * 1024;
/// Route changes a peer's stream holds before the peer is resynchronised instead.
const DELTA_CAPACITY: usize = 65_536;
/// How often the cluster's members are read to find peers that came or went.
const MEMBERS_EVERY: Duration = Duration::from_secs(1);
const RETRY: Duration = Duration::from_millis(200);
/// How often each peer is told what this node's routes amount to, to check its copy.
const DIGEST_EVERY: Duration = Duration::from_secs(10);
/// How often deliveries held for the store's watch are looked at when it is quiet.
const HELD_CHECK: Duration = Duration::from_millis(250);

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct RouteSnapshot {
    node: NodeId,
    incarnation: u64,
    filters: Vec<String>,
}

/// The first frame of a lane: who sends it, and the number of its first message.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct LaneHello {
    node: NodeId,
    incarnation: u64,
    lane: u32,
    first_seq: u64,
}

#[derive(Clone)]
struct Metrics {
    forwarded: IntCounterVec,
    forwarded_bytes: IntCounterVec,
    dropped: IntCounterVec,
    received: IntCounterVec,
    resyncs: IntCounterVec,
    digests: IntCounterVec,
    timeouts: IntCounterVec,
    unacked: IntGaugeVec,
    rtt: GaugeVec,
    remote_routes: IntGauge,
    local_routes: IntGauge,
    stored_for: IntCounterVec,
    stored_sessions: IntGauge,
}

impl Metrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &["peer"])?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let per_peer = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["peer"])?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let rtt = GaugeVec::new(
            Opts::new(
                "halyard_cluster_peer_rtt_seconds",
                "Round trip to a peer node as QUIC estimates it, by peer",
            ),
            &["peer"],
        )?;
        registry.register(Box::new(rtt.clone()))?;
        let digests = IntCounterVec::new(
            Opts::new(
                "halyard_cluster_route_digests_total",
                "Digests of a peer node's routes checked against this node's copy, by peer and \
                 outcome (match; mismatch, which resynchronises)",
            ),
            &["peer", "outcome"],
        )?;
        registry.register(Box::new(digests.clone()))?;
        Ok(Self {
            digests,
            forwarded: counter(
                "halyard_cluster_forwarded_total",
                "Messages written to a peer node (again after a broken stream), by peer",
            )?,
            forwarded_bytes: counter(
                "halyard_cluster_forwarded_bytes_total",
                "Bytes of messages written to a peer node, by peer",
            )?,
            timeouts: counter(
                "halyard_cluster_forward_timeouts_total",
                "Times a peer node acknowledged nothing for the forward timeout and its \
                 publishers were acknowledged without it, by peer",
            )?,
            unacked: per_peer(
                "halyard_cluster_forward_unacked",
                "Messages handed to a peer node and not yet acknowledged by it, by peer",
            )?,
            rtt,
            dropped: counter(
                "halyard_cluster_forward_dropped_total",
                "Messages for a peer node dropped because its lane was full (QoS 0 first), by peer",
            )?,
            received: counter(
                "halyard_cluster_received_total",
                "Messages a peer node forwarded to this one, by peer",
            )?,
            resyncs: counter(
                "halyard_cluster_route_resyncs_total",
                "Route snapshots sent to a peer node (its first, and each after a gap), by peer",
            )?,
            remote_routes: gauge(
                "halyard_cluster_remote_routes",
                "Filters held by the sessions of other nodes, as this node knows them",
            )?,
            local_routes: gauge(
                "halyard_cluster_local_routes",
                "Filters held by this node's sessions, as announced to its peers",
            )?,
            stored_for: counter(
                "halyard_cluster_stored_for_peer_total",
                "Copies of messages written to the store for the persistent sessions of a \
                 node that could not take them (down, cut off or not answering), by that node",
            )?,
            stored_sessions: gauge(
                "halyard_cluster_stored_sessions",
                "Persistent sessions of the whole cluster, as this node follows them",
            )?,
        })
    }
}

/// One peer's lanes.
struct Peer {
    lanes: Vec<Arc<Lane>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What a peer's lane delivered here, to skip it when the lane resends it on a new stream.
#[derive(Clone, Copy)]
struct Delivered {
    incarnation: u64,
    seq: u64,
}

/// The data plane of one node.
pub struct DataPlane {
    node: NodeId,
    incarnation: u64,
    broker: Broker,
    links: Arc<dyn PeerLinks>,
    local: Arc<Mutex<LocalRoutes>>,
    remote: RwLock<RouteTable>,
    /// Read by every forwarded message; written when members come or go.
    peers: RwLock<HashMap<NodeId, Peer>>,
    /// By sending node and lane.
    delivered: Mutex<HashMap<(NodeId, u32), Delivered>>,
    forward_timeout: Duration,
    hasher: foldhash::fast::FixedState,
    metrics: Metrics,
    takeover: Arc<Takeovers>,
    /// Every persistent session of the cluster, for the copies owed to those whose node
    /// cannot take them.
    directory: RwLock<Directory>,
    /// See `forward_timeouts`.
    strands: std::sync::atomic::AtomicU64,
}

impl DataPlane {
    /// Joins `broker` to the other members of `store`'s cluster over `links`, until
    /// `shutdown` turns true. A peer that acknowledges nothing for `forward_timeout` stops
    /// holding up the acknowledgements of what was published for it.
    pub fn start(
        broker: &Broker,
        store: &Store,
        links: Arc<dyn PeerLinks>,
        forward_timeout: Duration,
        registry: &Registry,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(Arc<Self>, impl Future<Output = ()> + Send + 'static), prometheus::Error> {
        let metrics = Metrics::new(registry)?;
        let local = Arc::new(Mutex::new(LocalRoutes::default()));
        let takeover = Takeovers::new(
            store.id(),
            broker.clone(),
            forward_timeout,
            Arc::clone(&local),
            registry,
        )?;
        let plane = Arc::new(Self {
            node: store.id(),
            incarnation: rand::random(),
            broker: broker.clone(),
            links,
            local,
            remote: RwLock::new(RouteTable::default()),
            peers: RwLock::new(HashMap::new()),
            delivered: Mutex::new(HashMap::new()),
            forward_timeout,
            hasher: foldhash::fast::FixedState::with_seed(0x68616c7961726421),
            metrics,
            takeover,
            directory: RwLock::new(Directory::default()),
            strands: std::sync::atomic::AtomicU64::new(0),
        });
        let as_remote: Arc<dyn Remote> = Arc::clone(&plane) as Arc<dyn Remote>;
        broker.set_remote(&as_remote);
        // Watched from before the broker loads the retained messages, so that nothing set
        // between the load and the first event is missed.
        let retained = store.watch(keys::RETAINED.as_bytes().to_vec(), None);
        // Likewise for the copies other nodes store for this node's sessions: those written
        // after the sessions are read are taken from the watch.
        let queues = store.watch(keys::QUEUE.as_bytes().to_vec(), None);
        let members = Arc::clone(&plane).follow_members(store.clone(), shutdown.clone());
        let follow =
            Arc::clone(&plane).follow_retained(store.clone(), retained.ok(), shutdown.clone());
        let sessions = Arc::clone(&plane).follow_sessions(store.clone(), shutdown.clone());
        let digests = Arc::clone(&plane).send_digests(shutdown.clone());
        let stored = Arc::clone(&plane).follow_queues(store.clone(), queues.ok(), shutdown);
        Ok((plane, async move {
            tokio::join!(members, follow, sessions, stored, digests);
        }))
    }

    /// Tells every linked peer, now and then, what this node's routes amount to, in order
    /// with the changes: a peer whose copy differs (a change it missed or misapplied) ends
    /// the stream, and the next one starts from a snapshot.
    async fn send_digests(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(DIGEST_EVERY) => {}
                _ = shutdown.changed() => return,
            }
            let mut local = self.local.lock();
            let digest = local.digest;
            local.broadcast(&Control::Digest(digest));
        }
    }

    /// Links to every member of the cluster but this node, and unlinks those that left.
    async fn follow_members(self: Arc<Self>, store: Store, mut shutdown: watch::Receiver<bool>) {
        loop {
            let members: HashMap<NodeId, String> = store
                .status()
                .members
                .into_iter()
                .filter(|m| m.id != self.node)
                .map(|m| (m.id, m.addr))
                .collect();
            {
                let mut peers = self.peers.write();
                let left: Vec<NodeId> = peers
                    .keys()
                    .filter(|id| !members.contains_key(id))
                    .copied()
                    .collect();
                for id in left {
                    if let Some(peer) = peers.remove(&id) {
                        // Gone from the cluster: what it was owed is stored for its sessions.
                        for lane in &peer.lanes {
                            self.store_strand(id, Arc::clone(lane), lane.strand());
                        }
                    }
                }
                for (id, addr) in members {
                    peers
                        .entry(id)
                        .or_insert_with(|| Arc::clone(&self).link(id, addr));
                }
            }
            let known: Vec<NodeId> = self.peers.read().keys().copied().collect();
            {
                let mut remote = self.remote.write();
                let gone: Vec<NodeId> = remote.nodes().filter(|id| !known.contains(id)).collect();
                for id in gone {
                    remote.drop_node(id);
                }
                self.metrics.remote_routes.set(remote.len() as i64);
            }
            self.watch_peers();
            tokio::select! {
                _ = tokio::time::sleep(MEMBERS_EVERY) => {}
                _ = shutdown.changed() => {
                    self.peers.write().clear();
                    return;
                }
            }
        }
    }

    /// Releases the publishers waiting for peers that stopped answering, and reports each
    /// peer's backlog and round trip.
    fn watch_peers(&self) {
        let now = tokio::time::Instant::now();
        let peers = self.peers.read();
        for (id, peer) in peers.iter() {
            let label = id.to_string();
            let mut unacked = 0;
            for lane in &peer.lanes {
                if let Some(strand) = lane.strand_overdue(now, self.forward_timeout) {
                    self.metrics.timeouts.with_label_values(&[&label]).inc();
                    self.strands
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(
                        peer = id,
                        "a peer node acknowledged nothing within the forward timeout; \
                         storing what its persistent sessions are owed instead"
                    );
                    self.store_strand(*id, Arc::clone(lane), strand);
                }
                unacked += lane.depth();
            }
            self.metrics
                .unacked
                .with_label_values(&[&label])
                .set(unacked as i64);
            if let Some(rtt) = self.links.rtt(*id) {
                self.metrics
                    .rtt
                    .with_label_values(&[&label])
                    .set(rtt.as_secs_f64());
            }
        }
    }

    /// Keeps the broker's retained index equal to the store's, which every node writes: a
    /// subscriber on any node gets the retained messages set on every node.
    async fn follow_retained(
        self: Arc<Self>,
        store: Store,
        mut changes: Option<halyard_raft::WatchStream>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let mut stream = match changes.take() {
                Some(stream) => stream,
                None => {
                    // Behind the compaction point, or a fresh start: read everything again.
                    let watched = store.watch(keys::RETAINED.as_bytes().to_vec(), None);
                    if let Some(durable) = self.broker.durable()
                        && let Ok(all) = durable.load_retained().await
                    {
                        for (message, modified_ms) in all {
                            let topic = Arc::clone(&message.topic);
                            self.broker
                                .apply_stored_retained(&topic, Some((message, modified_ms)));
                        }
                    }
                    match watched {
                        Ok(stream) => stream,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot watch retained messages; retrying");
                            tokio::time::sleep(RETRY).await;
                            continue;
                        }
                    }
                }
            };
            loop {
                tokio::select! {
                    next = stream.next() => match next {
                        Some(Ok(revision)) => {
                            for event in revision.events {
                                self.apply_retained_event(event);
                            }
                        }
                        Some(Err(_)) | None => break,
                    },
                    _ = shutdown.changed() => return,
                }
            }
        }
    }

    fn apply_retained_event(&self, event: halyard_raft::Event) {
        let Some(topic) = event
            .kv
            .key
            .strip_prefix(keys::RETAINED.as_bytes())
            .and_then(|t| std::str::from_utf8(t).ok())
        else {
            return;
        };
        match event.kind {
            halyard_raft::EventKind::Put => match decode_retained(&event.kv.value) {
                Some(stored) => self.broker.apply_stored_retained(topic, Some(stored)),
                None => tracing::warn!(topic, "a stored retained message is unreadable"),
            },
            halyard_raft::EventKind::Delete => self.broker.apply_stored_retained(topic, None),
        }
    }

    /// Keeps the directory of the cluster's persistent sessions equal to the store's.
    async fn follow_sessions(self: Arc<Self>, store: Store, mut shutdown: watch::Receiver<bool>) {
        loop {
            let watched = store.watch(keys::SESSION.as_bytes().to_vec(), None);
            let loaded = store
                .range(
                    halyard_raft::RangeRequest::prefix(keys::SESSION),
                    halyard_raft::Consistency::Linearizable,
                )
                .await;
            let (Ok(mut stream), Ok(all)) = (watched, loaded) else {
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => continue,
                    _ = shutdown.changed() => return,
                }
            };
            {
                let mut directory = self.directory.write();
                directory.clear(all.revision);
                for kv in all.kvs {
                    directory.apply(&kv.key, Some(&kv.value), kv.mod_revision);
                }
                self.metrics.stored_sessions.set(directory.len() as i64);
            }
            self.disown_claimed_elsewhere();
            loop {
                tokio::select! {
                    next = stream.next() => match next {
                        Some(Ok(revision)) => {
                            let mut disowned = Vec::new();
                            let mut named = Vec::new();
                            {
                                let mut directory = self.directory.write();
                                for event in revision.events {
                                    let value = (event.kind == halyard_raft::EventKind::Put)
                                        .then_some(event.kv.value.as_slice());
                                    let written = event.kv.mod_revision.max(revision.revision);
                                    let Some(client_id) =
                                        directory.apply(&event.kv.key, value, written)
                                    else {
                                        continue;
                                    };
                                    if directory.owner(&client_id).is_none_or(|o| o != Some(self.node)) {
                                        disowned.push((client_id, written));
                                    } else if value.is_some() {
                                        named.push(client_id);
                                    }
                                }
                                self.metrics.stored_sessions.set(directory.len() as i64);
                            }
                            for (client_id, written) in disowned {
                                self.broker.disown(&client_id, written);
                            }
                            for client_id in named {
                                self.takeover.hold_named(client_id);
                            }
                        }
                        // Behind the compaction point: read everything again.
                        Some(Err(_)) | None => break,
                    },
                    _ = shutdown.changed() => return,
                }
            }
        }
    }

    /// Takes the copies other nodes store for the sessions this node holds (see
    /// `directory.rs`), once the stored sessions are restored.
    async fn follow_queues(
        self: Arc<Self>,
        store: Store,
        mut changes: Option<halyard_raft::WatchStream>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        tokio::select! {
            _ = self.broker.restored() => {}
            _ = shutdown.changed() => return,
        }
        self.disown_claimed_elsewhere();
        let mut held = tokio::time::interval(HELD_CHECK);
        loop {
            let mut stream = match changes.take() {
                Some(stream) => stream,
                None => {
                    let watched = store.watch(keys::QUEUE.as_bytes().to_vec(), None);
                    match watched {
                        // A gap in the watch: what was stored meanwhile is read instead.
                        Ok(stream) => {
                            self.reread_queues().await;
                            stream
                        }
                        Err(_) => {
                            tokio::select! {
                                _ = tokio::time::sleep(RETRY) => continue,
                                _ = shutdown.changed() => return,
                            }
                        }
                    }
                }
            };
            loop {
                tokio::select! {
                    next = stream.next() => match next {
                        Some(Ok(revision)) => {
                            for event in revision.events {
                                if event.kind == halyard_raft::EventKind::Put {
                                    self.take_stored(&event.kv);
                                }
                            }
                            self.broker.watched(Some(revision.revision));
                        }
                        Some(Err(_)) | None => break,
                    },
                    _ = held.tick() => self.broker.watched(None),
                    _ = shutdown.changed() => return,
                }
            }
        }
    }

    /// Lets go of the sessions held here that the store says another node claimed since this
    /// one took them (it restored them from a read older than the claim). Done once both the
    /// sessions are restored and the directory is read, whichever comes last.
    fn disown_claimed_elsewhere(&self) {
        let foreign = self.directory.read().not_owned_by(self.node);
        tracing::debug!(
            sessions = foreign.len(),
            "looking for sessions claimed elsewhere"
        );
        for (client_id, revision) in foreign {
            self.broker.disown(&client_id, revision);
        }
    }

    /// A queue entry written to the store: taken if another node wrote it for a session
    /// held here.
    fn take_stored(&self, kv: &halyard_raft::KeyValue) {
        let Some((client_id, seq)) = parse_queue_key(&kv.key) else {
            return;
        };
        if queue_writer(seq) == queue_writer(self.node) || !self.broker.holds_session(&client_id) {
            return;
        }
        let Some((message, qos, retain, subscription_ids)) = decode_message(&kv.value) else {
            tracing::warn!(client_id, "a stored copy is unreadable");
            return;
        };
        tracing::debug!(client_id, seq, "taking a copy another node stored");
        self.broker.take_stored(
            &client_id,
            crate::broker::Delivery {
                message: Arc::new(message),
                qos,
                retain,
                subscription_ids,
                stored: seq,
                fence: 0,
            },
            Some(kv.mod_revision),
        );
    }

    /// Reads the stored queue of every persistent session held here, for copies other nodes
    /// wrote while the watch was behind.
    async fn reread_queues(&self) {
        let Some(durable) = self.broker.durable().cloned() else {
            return;
        };
        for client_id in self.broker.persistent_sessions() {
            if let Ok(Some((stored, _))) = durable.load_session(&client_id).await {
                for (_, delivery) in stored.queue {
                    if queue_writer(delivery.stored) != queue_writer(self.node) {
                        self.broker.take_stored(&client_id, delivery, None);
                    }
                }
            }
        }
    }

    /// Adds to `ops` a queue entry for each stored session a message is owed that
    /// `stranded` says its owner cannot take it for now (one member of each share group
    /// `wanted` lets through). The copies for sessions this node owns are returned too: it
    /// takes them once they are stored, as the store's watch does not give a node its own.
    fn owed_copies(
        &self,
        message: &Arc<Message>,
        stranded: impl Fn(&StoredSession) -> bool,
        wanted: impl Fn(&str, &str) -> bool,
        ops: &mut Vec<halyard_raft::Op>,
    ) -> Vec<(String, crate::broker::Delivery)> {
        let mut own = Vec::new();
        let Some(durable) = self.broker.durable() else {
            return own;
        };
        let directory = self.directory.read();
        for owed in directory.owed(&message.topic, stranded, wanted) {
            let qos = message.qos.min(owed.options.qos);
            if qos == QoS::AtMostOnce {
                continue;
            }
            let retain = owed.options.retain_as_published && message.retain;
            let ids: Vec<u32> = owed.subscription_id.into_iter().collect();
            let seq = durable.next_message_seq();
            tracing::debug!(client_id = owed.client_id, owner = ?owed.owner, topic = %message.topic, seq, "storing a copy for a session whose node cannot take it");
            ops.push(halyard_raft::Op::put(
                keys::queue(owed.client_id, seq),
                encode_message(message, qos, retain, &ids),
            ));
            if owed.owner == Some(self.node) {
                own.push((
                    owed.client_id.to_owned(),
                    crate::broker::Delivery {
                        message: Arc::clone(message),
                        qos,
                        retain,
                        subscription_ids: ids,
                        stored: seq,
                        fence: 0,
                    },
                ));
            } else if let Some(owner) = owed.owner {
                self.metrics
                    .stored_for
                    .with_label_values(&[&owner.to_string()])
                    .inc();
            }
        }
        own
    }

    /// Stores the copies that the persistent sessions of `peer` are owed by the messages of
    /// `strand`, and those of sessions that changed owner since each was routed (it went to
    /// `peer` for them, perhaps), then lets their publishers go.
    fn store_strand(&self, peer: NodeId, lane: Arc<Lane>, strand: Strand) {
        let mut ops = Vec::new();
        let mut own = Vec::new();
        for (message, groups, coverage) in &strand.messages {
            own.extend(self.owed_copies(
                message,
                |s| {
                    s.owner
                        .is_some_and(|o| o == peer || !coverage.reached(o, s.owned_since))
                },
                |group, filter| groups.iter().any(|(g, f)| g == group && f == filter),
                &mut ops,
            ));
        }
        let Some(durable) = self.broker.durable().cloned() else {
            lane.cover(strand);
            return;
        };
        if ops.is_empty() {
            lane.cover(strand);
            return;
        }
        let signal = Arc::new(Signal::default());
        let seq = durable.submit(ops, Some(&signal));
        let broker = self.broker.clone();
        tokio::spawn(async move {
            loop {
                let notified = signal.notified();
                if durable.is_durable(seq) {
                    break;
                }
                notified.await;
            }
            for (client_id, delivery) in own {
                broker.take_stored(&client_id, delivery, None);
            }
            lane.cover(strand);
        });
    }

    /// Starts the route stream and the lanes to peer `id` at `addr`.
    fn link(self: Arc<Self>, id: NodeId, addr: String) -> Peer {
        let mut lanes = Vec::with_capacity(LANES);
        let mut tasks = Vec::with_capacity(LANES + 1);
        tasks.push(tokio::spawn(
            Arc::clone(&self).announce_routes(id, addr.clone()),
        ));
        for index in 0..LANES {
            let lane = Arc::new(Lane::default());
            lanes.push(Arc::clone(&lane));
            tasks.push(tokio::spawn(Arc::clone(&self).run_lane(
                id,
                addr.clone(),
                index as u32,
                lane,
            )));
        }
        Peer { lanes, tasks }
    }

    /// A stream to peer `id`, once one opens.
    async fn open(&self, id: NodeId, addr: &str, priority: Priority) -> (PeerSend, PeerRecv) {
        loop {
            match self.links.open(id, addr, priority).await {
                Ok(stream) => return stream,
                Err(e) => {
                    tracing::debug!(peer = id, error = %e, "cannot reach a peer; retrying");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    /// Keeps peer `id` told of this node's routes: a snapshot, then every change, again
    /// from a snapshot whenever the stream breaks or the peer falls behind.
    async fn announce_routes(self: Arc<Self>, id: NodeId, addr: String) {
        let peer = id.to_string();
        // Until its stored sessions are in, this node's routes are short of theirs: a peer
        // that knows none stores what they are owed (see `directory.rs`) instead of
        // forwarding nothing for them.
        self.broker.restored().await;
        loop {
            let (mut stream, applied) = self.open(id, &addr, Priority::Control).await;
            let (tx, mut changes) = mpsc::channel(DELTA_CAPACITY);
            let acks = Arc::new(ControlAcks::default());
            let snapshot = {
                let mut local = self.local.lock();
                local.listeners.insert(
                    id,
                    Listener {
                        changes: tx,
                        acks: Arc::clone(&acks),
                    },
                );
                RouteSnapshot {
                    node: self.node,
                    incarnation: self.incarnation,
                    filters: local.counts.keys().cloned().collect(),
                }
            };
            self.metrics.resyncs.with_label_values(&[&peer]).inc();
            let sent = send_routes(&mut stream, snapshot, &mut changes);
            // The peer writes back how many control messages it has applied. Its end
            // closing, the link dying, or a peer that applies nothing for the forward timeout
            // (a route barrier would hold SUBACKs for it) ends the stream: a control message
            // written after that would be lost, and the next stream opens with a snapshot.
            let read = follow_acks(applied, &acks, self.forward_timeout);
            tokio::select! {
                _ = sent => {}
                _ = read => {}
            }
            acks.end();
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Carries the messages of one lane to peer `id`, on one stream while it lasts, and takes
    /// the peer's acknowledgements of them.
    async fn run_lane(self: Arc<Self>, id: NodeId, addr: String, index: u32, lane: Arc<Lane>) {
        let peer = id.to_string();
        let forwarded = self.metrics.forwarded.with_label_values(&[&peer]);
        let forwarded_bytes = self.metrics.forwarded_bytes.with_label_values(&[&peer]);
        // Zero from the peer's first lane on, so that a rate over them is defined before
        // the first drop or timeout.
        self.metrics.dropped.with_label_values(&[&peer]);
        self.metrics.timeouts.with_label_values(&[&peer]);
        loop {
            let (mut send, recv) = self.open(id, &addr, Priority::Messages).await;
            let hello = LaneHello {
                node: self.node,
                incarnation: self.incarnation,
                lane: index,
                first_seq: lane.restart(),
            };
            let Ok(hello) = postcard::to_stdvec(&hello) else {
                return;
            };
            if write_frame(&mut send, Kind::Messages, hello).await.is_err() {
                tokio::time::sleep(RETRY).await;
                continue;
            }
            let write = async {
                let mut buffer = Vec::new();
                loop {
                    let batch = lane.unsent(BATCH);
                    if batch.is_empty() {
                        lane.ready().await;
                        continue;
                    }
                    buffer.clear();
                    let framed = batch.iter().all(|(message, groups, coverage)| {
                        let body = encode_message(message, message.qos, message.retain, &[]);
                        if let Some(coverage) = coverage {
                            return postcard::to_stdvec(&(&**coverage, groups, body)).is_ok_and(
                                |routed| encode_frame(Kind::Routed, routed, &mut buffer).is_ok(),
                            );
                        }
                        if groups.is_empty() {
                            return encode_frame(Kind::Forward, body, &mut buffer).is_ok();
                        }
                        postcard::to_stdvec(&(groups, body)).is_ok_and(|shared| {
                            encode_frame(Kind::ForwardShared, shared, &mut buffer).is_ok()
                        })
                    });
                    if !framed
                        || send.write_all(&buffer).await.is_err()
                        || send.flush().await.is_err()
                    {
                        return;
                    }
                    forwarded.inc_by(batch.len() as u64);
                    forwarded_bytes.inc_by(buffer.len() as u64);
                }
            };
            let acks = async {
                let mut reader = FrameReader::new(recv);
                loop {
                    while let Some(frame) = reader.next_buffered().ok()? {
                        if frame.kind != Kind::Ack as i32 {
                            return None;
                        }
                        lane.acknowledged(postcard::from_bytes::<u64>(&frame.body).ok()?);
                    }
                    if !reader.fill().await.ok()? {
                        return None::<()>;
                    }
                }
            };
            tokio::select! {
                _ = write => {}
                _ = acks => {}
            }
        }
    }

    /// Takes a stream a peer opened, whose first frame was `first`: its routes (and takeover),
    /// or a lane of messages for this node's sessions.
    pub async fn accept(self: Arc<Self>, first: Frame, send: PeerSend, recv: PeerRecv) {
        match Kind::try_from(first.kind) {
            Ok(Kind::Routes) => {
                let Ok(snapshot) = postcard::from_bytes::<RouteSnapshot>(&first.body) else {
                    return;
                };
                self.follow_routes(snapshot, send, recv).await;
            }
            Ok(Kind::Messages) => self.accept_lane(first, send, recv).await,
            _ => tracing::debug!(kind = first.kind, "unexpected peer stream"),
        }
    }

    /// Applies a peer's route changes, telling it how many control messages it applied after
    /// the snapshot (its route barrier waits for that).
    async fn follow_routes(&self, snapshot: RouteSnapshot, mut acks: PeerSend, stream: PeerRecv) {
        let node = snapshot.node;
        tracing::debug!(
            peer = node,
            incarnation = snapshot.incarnation,
            routes = snapshot.filters.len(),
            "route snapshot"
        );
        let generation = {
            let mut remote = self.remote.write();
            let generation = remote.replace(node, snapshot.filters);
            self.metrics.remote_routes.set(remote.len() as i64);
            generation
        };
        let mut reader = FrameReader::new(stream);
        let mut applied: u64 = 0;
        let mut told = 0;
        loop {
            let frame = match reader.next_buffered() {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    if applied > told {
                        let Ok(body) = postcard::to_stdvec(&applied) else {
                            break;
                        };
                        if write_frame(&mut acks, Kind::Ack, body).await.is_err() {
                            break;
                        }
                        told = applied;
                    }
                    match reader.fill().await {
                        Ok(true) => continue,
                        _ => break,
                    }
                }
                Err(_) => break,
            };
            let Ok(control) = postcard::from_bytes::<Control>(&frame.body) else {
                break;
            };
            // The snapshot's own frames are not counted: the barrier waits for changes.
            if !matches!(control, Control::AddAll(_)) {
                applied += 1;
            }
            match control {
                Control::Add(key) => {
                    let mut remote = self.remote.write();
                    remote.add(node, generation, &key);
                    self.metrics.remote_routes.set(remote.len() as i64);
                }
                Control::AddAll(keys) => {
                    let mut remote = self.remote.write();
                    for key in &keys {
                        remote.add(node, generation, key);
                    }
                    self.metrics.remote_routes.set(remote.len() as i64);
                }
                Control::Remove(key) => {
                    let mut remote = self.remote.write();
                    remote.remove(node, generation, &key);
                    self.metrics.remote_routes.set(remote.len() as i64);
                }
                Control::Digest(theirs) => {
                    let ours = self.remote.read().digest(node, generation);
                    let matched = ours == Some(theirs);
                    let outcome = if matched { "match" } else { "mismatch" };
                    self.metrics
                        .digests
                        .with_label_values(&[&node.to_string(), outcome])
                        .inc();
                    if !matched {
                        tracing::warn!(
                            peer = node,
                            ?ours,
                            ?theirs,
                            "this node's copy of a peer's routes differs from them; resynchronising"
                        );
                        break;
                    }
                }
                other => self.takeover.handle(node, other),
            }
        }
        let mut remote = self.remote.write();
        remote.end(node, generation);
        self.metrics.remote_routes.set(remote.len() as i64);
    }

    /// Takes a lane a peer opened: delivers its messages to this node's sessions, skipping
    /// those a previous stream of the lane delivered, and acknowledges each once it is queued
    /// (and stored, for persistent sessions). Acknowledgements are cumulative, one for all
    /// that a read brought in.
    async fn accept_lane(self: Arc<Self>, first: Frame, mut send: PeerSend, recv: PeerRecv) {
        let Ok(hello) = postcard::from_bytes::<LaneHello>(&first.body) else {
            return;
        };
        // A peer may still route by what this node announced in its previous life: nothing
        // is taken (and acknowledged) before the sessions it stored are back.
        self.broker.restored().await;
        let received = self
            .metrics
            .received
            .with_label_values(&[&hello.node.to_string()]);
        let key = (hello.node, hello.lane);
        let before = hello.first_seq.saturating_sub(1);
        let mut delivered = match self.delivered.lock().get(&key) {
            Some(d) if d.incarnation == hello.incarnation => d.seq.max(before),
            _ => before,
        };
        let durable = self.broker.durable().cloned();
        let signal = Arc::new(Signal::default());
        // Lane numbers waiting for store writes, with the two writes each waits for: its
        // queue entries here, and the copies it stored for other nodes' sessions (the first
        // may be settled before it is committed, `Durable::is_durable`; the second may not).
        let mut pending: VecDeque<(u64, u64, u64)> = VecDeque::new();
        // Delivered by an earlier stream: its writes are not signalled on this one, so they
        // are looked at again now and then until acknowledged.
        let taken_earlier = delivered;
        if delivered > before {
            // Taken by an earlier stream, perhaps not yet stored: acknowledged once every
            // write submitted so far is.
            pending.push_back((delivered, durable.as_ref().map_or(0, |d| d.submitted()), 0));
        }
        let mut acked = before;
        let mut next_seq = hello.first_seq;
        let mut reader = FrameReader::new(recv);
        loop {
            loop {
                let frame = match reader.next_buffered() {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(peer = hello.node, error = %e, "a lane broke");
                        return;
                    }
                };
                let seq = next_seq;
                next_seq += 1;
                if seq <= delivered {
                    continue;
                }
                delivered = seq;
                // Unreadable: an empty message, refused below.
                let (coverage, groups, body) = if frame.kind == Kind::Routed as i32 {
                    let (coverage, groups, body) =
                        postcard::from_bytes::<(Coverage, ShareGroups, Vec<u8>)>(&frame.body)
                            .unwrap_or_default();
                    (Some(coverage), groups, body)
                } else if frame.kind == Kind::ForwardShared as i32 {
                    let (groups, body) =
                        postcard::from_bytes::<(ShareGroups, Vec<u8>)>(&frame.body)
                            .unwrap_or_default();
                    (None, groups, body)
                } else {
                    (None, Vec::new(), frame.body)
                };
                let Some((mut message, qos, retain, _)) = decode_message(&body) else {
                    tracing::warn!("a peer forwarded an unreadable message; dropped");
                    continue;
                };
                message.qos = qos;
                message.retain = retain;
                received.inc();
                let message = Arc::new(message);
                let published = self.broker.deliver_forwarded(&message, &signal, &groups);
                // A share group sent here that no member here serves any more (it moved
                // away meanwhile): stored for a persistent member, whose node takes it.
                let stored = self.store_unserved_groups(
                    &message,
                    published.unserved_groups.iter().map(|&i| &groups[i]),
                    &signal,
                );
                let uncovered = coverage.map_or(0, |coverage| {
                    self.store_uncovered(&message, &coverage, &signal)
                });
                pending.push_back((seq, published.durable_seq, stored.max(uncovered)));
                if let Some(session) = published.congested {
                    // A subscriber here is full: the lane waits for it as a publisher on this
                    // node would, so that the publishers' acknowledgements wait too.
                    self.wait_for_subscriber(&session, &signal).await;
                }
            }
            let mut settled = None;
            while let Some(&(seq, queued, copies)) = pending.front()
                && durable
                    .as_ref()
                    .is_none_or(|d| d.is_durable(queued) && d.is_durable(copies))
            {
                settled = Some(seq);
                pending.pop_front();
            }
            if let Some(seq) = settled
                && seq > acked
            {
                let Ok(body) = postcard::to_stdvec(&seq) else {
                    return;
                };
                if write_frame(&mut send, Kind::Ack, body).await.is_err() {
                    return;
                }
                acked = seq;
            }
            self.delivered.lock().insert(
                key,
                Delivered {
                    incarnation: hello.incarnation,
                    seq: delivered,
                },
            );
            tokio::select! {
                more = reader.fill() => match more {
                    Ok(true) => {}
                    _ => return,
                },
                _ = signal.notified(), if !pending.is_empty() => {}
                _ = tokio::time::sleep(RETRY), if acked < taken_earlier => {}
            }
        }
    }

    /// Stores a copy of `message` for a persistent member of each of `unserved`; the store
    /// write it needs (0 for none).
    fn store_unserved_groups<'a>(
        &self,
        message: &Arc<Message>,
        unserved: impl Iterator<Item = &'a (String, String)>,
        signal: &Arc<Signal>,
    ) -> u64 {
        let unserved: Vec<&(String, String)> = unserved.collect();
        if unserved.is_empty() {
            return 0;
        }
        let Some(durable) = self.broker.durable() else {
            return 0;
        };
        let mut ops = Vec::new();
        self.owed_copies(
            message,
            |_| false,
            |group, filter| unserved.iter().any(|(g, f)| g == group && f == filter),
            &mut ops,
        );
        if ops.is_empty() {
            return 0;
        }
        durable.submit(ops, Some(signal))
    }

    /// Stores a copy of `message` for each persistent session it is owed that its sender's
    /// routing did not reach (`coverage`): the session's node got no copy from the sender, or
    /// took the session after the sender routed it. The sender routed it by a view older than
    /// this node's: it was cut off, or the routes of the session's new node had not reached
    /// it. The store write it needs (0 for none).
    fn store_uncovered(
        &self,
        message: &Arc<Message>,
        coverage: &Coverage,
        signal: &Arc<Signal>,
    ) -> u64 {
        let Some(durable) = self.broker.durable() else {
            return 0;
        };
        let mut ops = Vec::new();
        let kept = self.owed_copies(
            message,
            |s| {
                let Some(owner) = s.owner else {
                    return false;
                };
                // A session handed away from here stores what reaches it itself.
                if self.broker.lingers(&s.client_id) {
                    return false;
                }
                if owner == self.node {
                    // The sender counted on this node, which the store names the owner but
                    // which holds the session no more (another node is claiming it) or not
                    // yet (it is being restored here).
                    return !self.broker.holds_session(&s.client_id);
                }
                !coverage.reached(owner, s.owned_since)
            },
            |_, _| false,
            &mut ops,
        );
        for (client_id, delivery) in kept {
            self.takeover.keep_for_claim(&client_id, delivery);
        }
        if ops.is_empty() {
            return 0;
        }
        tracing::debug!(topic = %message.topic, copies = ops.len(), ?coverage, "storing copies its sender's routing did not reach");
        durable.submit(ops, Some(signal))
    }

    /// Waits until `session` has room again, or until it makes no progress for the slow
    /// subscriber timeout, when it is marked slow and its excess dropped instead.
    async fn wait_for_subscriber(&self, session: &Arc<Session>, signal: &Arc<Signal>) {
        let limits = QueueLimits::of(self.broker.config());
        let timeout = Duration::from_secs(u64::from(self.broker.config().slow_subscriber_timeout));
        let mut progress = session.progress();
        let mut until = tokio::time::Instant::now() + timeout;
        loop {
            let notified = signal.notified();
            if session.has_space(limits) || !session.is_alive() {
                return;
            }
            session.wait_for_space(signal, limits);
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if tokio::time::timeout(left, notified).await.is_err() {
                let now_progress = session.progress();
                if now_progress == progress {
                    tracing::debug!(client_id = %session.client_id, "slow subscriber of a peer's messages");
                    session.mark_slow();
                    return;
                }
                progress = now_progress;
                until = tokio::time::Instant::now() + timeout;
            }
        }
    }

    /// How often a peer stopped answering for the forward timeout while messages waited for
    /// it (their share groups were dispatched again, from the store).
    pub fn forward_timeouts(&self) -> u64 {
        self.strands.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The messages forwarded to each peer linked now that it has not acknowledged yet.
    pub fn unacknowledged(&self) -> std::collections::BTreeMap<NodeId, usize> {
        self.peers
            .read()
            .iter()
            .map(|(id, peer)| (*id, peer.lanes.iter().map(|lane| lane.depth()).sum()))
            .collect()
    }

    /// The routes this node announces: its sessions' filters (`$share/{group}/{filter}` for a
    /// share group's).
    pub fn announced_routes(&self) -> std::collections::BTreeSet<String> {
        self.local.lock().counts.keys().cloned().collect()
    }

    /// The routes peer `node` announced, as this node holds them; `None` while it holds none.
    pub fn routes_of(&self, node: NodeId) -> Option<std::collections::BTreeSet<String>> {
        self.remote.read().routes_of(node)
    }

    fn lane_of(&self, topic: &str) -> usize {
        (self.hasher.hash_one(topic) as usize) % LANES
    }
}

/// The client id and number of a queue entry's key.
fn parse_queue_key(key: &[u8]) -> Option<(String, u64)> {
    let rest = std::str::from_utf8(key.strip_prefix(keys::QUEUE.as_bytes())?).ok()?;
    let (client, seq) = rest.split_once('/')?;
    Some((keys::unhex(client)?, u64::from_str_radix(seq, 16).ok()?))
}

/// Writes `snapshot` (as many filters as fit `SNAPSHOT_FRAME` bytes, then the rest in frames
/// of that size), then each change as it comes, until the stream fails or `changes` ends
/// (this node dropped the queue: the peer fell behind).
async fn send_routes(
    stream: &mut PeerSend,
    mut snapshot: RouteSnapshot,
    changes: &mut mpsc::Receiver<Control>,
) -> Option<()> {
    let mut rest = std::mem::take(&mut snapshot.filters).into_iter().peekable();
    snapshot.filters = next_chunk(&mut rest);
    let body = postcard::to_stdvec(&snapshot).ok()?;
    write_frame(stream, Kind::Routes, body).await.ok()?;
    while rest.peek().is_some() {
        let body = postcard::to_stdvec(&Control::AddAll(next_chunk(&mut rest))).ok()?;
        write_frame(stream, Kind::Control, body).await.ok()?;
    }
    loop {
        let body = postcard::to_stdvec(&changes.recv().await?).ok()?;
        write_frame(stream, Kind::Control, body).await.ok()?;
    }
}

/// Reads a peer's counts of the control messages it applied, until the stream ends or the
/// peer stays behind for `timeout`.
async fn follow_acks(applied: PeerRecv, acks: &ControlAcks, timeout: Duration) {
    let mut reader = FrameReader::new(applied);
    loop {
        let frame = match reader.next_buffered() {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                let filled = if acks.behind() {
                    match tokio::time::timeout(timeout, reader.fill()).await {
                        Ok(filled) => filled,
                        Err(_) => {
                            tracing::debug!("a peer applies no route changes; resynchronising");
                            return;
                        }
                    }
                } else {
                    reader.fill().await
                };
                match filled {
                    Ok(true) => continue,
                    _ => return,
                }
            }
            Err(_) => return,
        };
        if frame.kind != Kind::Ack as i32 {
            return;
        }
        let Ok(count) = postcard::from_bytes::<u64>(&frame.body) else {
            return;
        };
        acks.applied(count);
    }
}

/// Filters from `rest` up to about `SNAPSHOT_FRAME` bytes (at least one).
fn next_chunk(rest: &mut std::iter::Peekable<impl Iterator<Item = String>>) -> Vec<String> {
    let mut chunk = Vec::new();
    let mut bytes = 0;
    while let Some(filter) = rest.next_if(|f| chunk.is_empty() || bytes + f.len() <= SNAPSHOT_FRAME)
    {
        bytes += filter.len() + 2;
        chunk.push(filter);
    }
    chunk
}

impl DataPlane {
    /// Sends `control` to peer `node` on this node's control stream to it; false if it is not
    /// linked now.
    fn send_control(&self, node: NodeId, control: Control) -> bool {
        self.local.lock().send(node, control)
    }

    fn broadcast_control(&self, control: &Control) {
        self.local.lock().broadcast(control);
    }
}

impl Remote for DataPlane {
    fn subscribed(&self, filter: &str, share_group: Option<&str>) {
        let mut local = self.local.lock();
        local.subscribed(&route_key(filter, share_group));
        self.metrics.local_routes.set(local.counts.len() as i64);
    }

    fn unsubscribed(&self, filter: &str, share_group: Option<&str>) {
        let mut local = self.local.lock();
        local.unsubscribed(&route_key(filter, share_group));
        self.metrics.local_routes.set(local.counts.len() as i64);
    }

    fn route_barrier(&self, waker: &Arc<Signal>) -> Vec<Handoff> {
        self.local.lock().barrier(waker)
    }

    fn reaches(&self, topic: &str) -> bool {
        let mut direct = Vec::new();
        let mut shared = Vec::new();
        let routes = self.remote.read();
        routes.matches(topic, &mut direct, &mut shared);
        !direct.is_empty() || !shared.is_empty()
    }

    fn forward(
        &self,
        message: &Arc<Message>,
        waker: Option<&Arc<Signal>>,
        served: &[GroupKey<'_>],
        ops: &mut Vec<halyard_raft::Op>,
    ) -> Vec<Handoff> {
        // Each node once, with the share groups it is to serve.
        let mut destinations: Vec<(NodeId, ShareGroups)> = Vec::new();
        // Other nodes that own stored sessions, and the store revision the directory had
        // reached when it named them.
        let mut owners: Vec<NodeId> = Vec::new();
        let mut seen = 0;
        {
            let remote = self.remote.read();
            let mut direct = Vec::new();
            let mut shared = Vec::new();
            remote.matches(&message.topic, &mut direct, &mut shared);
            destinations.extend(direct.into_iter().map(|node| (node, Vec::new())));
            for pick in shared {
                if served.contains(&(pick.group, pick.filter)) {
                    continue;
                }
                let group = (pick.group.to_owned(), pick.filter.to_owned());
                let node = pick.node;
                match destinations.iter_mut().find(|(n, _)| *n == node) {
                    Some((_, groups)) => groups.push(group),
                    None => destinations.push((node, vec![group])),
                }
            }
        }
        // Sessions the store names this node's while a claim here reads them are reached by
        // no route yet.
        let mut claiming_here = false;
        if message.qos != QoS::AtMostOnce {
            let directory = self.directory.read();
            seen = directory.seen();
            let mut named_here = false;
            for owner in directory.owners().flatten() {
                if owner == self.node {
                    named_here = true;
                } else {
                    owners.push(owner);
                }
            }
            claiming_here = named_here && self.takeover.claims_under_way();
        }
        let mut handoffs = Vec::new();
        if destinations.is_empty() && owners.is_empty() && !claiming_here {
            return handoffs;
        }
        let lane = self.lane_of(&message.topic);
        // Destinations that do not answer now: their persistent sessions' copies are stored.
        let mut stranded: Vec<NodeId> = Vec::new();
        let mut sent: Vec<NodeId> = Vec::with_capacity(destinations.len());
        {
            let peers = self.peers.read();
            sent.extend(
                destinations
                    .iter()
                    .map(|(node, _)| *node)
                    .filter(|node| peers.contains_key(node)),
            );
            // The stored sessions of every other owner the routes do not reach get their
            // copies stored below, so the message covers every node for what this node knew.
            let coverage = (message.qos != QoS::AtMostOnce).then(|| {
                let mut nodes = Vec::with_capacity(1 + sent.len() + owners.len());
                nodes.push(self.node);
                for node in sent.iter().chain(&owners) {
                    if !nodes.contains(node) {
                        nodes.push(*node);
                    }
                }
                Arc::new(Coverage { nodes, seen })
            });
            for (node, groups) in &destinations {
                let Some(peer) = peers.get(node) else {
                    continue;
                };
                match peer.lanes[lane].push(message, groups.clone(), coverage.as_ref(), waker) {
                    Ok(Pushed::Waited(handoff)) => handoffs.push(handoff),
                    Ok(Pushed::Unwaited) => {}
                    Ok(Pushed::Stranded) => stranded.push(*node),
                    Err(_) => self
                        .metrics
                        .dropped
                        .with_label_values(&[&node.to_string()])
                        .inc(),
                }
            }
        }
        if message.qos != QoS::AtMostOnce
            && (!owners.is_empty() || !stranded.is_empty() || claiming_here)
        {
            // A stored session is owed a copy when its node gets none from the routes: it
            // knows no routes of that node (it is dead, cut off or restarting), or not yet
            // the route of that session (its claim or subscription is newer than the routes
            // heard), or the node does not answer. A share group is owed one only if no node
            // that answers serves it.
            let live_groups: Vec<&(String, String)> = destinations
                .iter()
                .filter(|(node, _)| !stranded.contains(node))
                .flat_map(|(_, groups)| groups)
                .collect();
            let kept = self.owed_copies(
                message,
                |s| {
                    s.owner.is_some_and(|o| {
                        if o == self.node {
                            return claiming_here && self.takeover.is_claiming(&s.client_id);
                        }
                        !sent.contains(&o) || stranded.contains(&o)
                    })
                },
                |group, filter| {
                    !served.contains(&(group, filter))
                        && !live_groups.iter().any(|(g, f)| g == group && f == filter)
                },
                ops,
            );
            for (client_id, delivery) in kept {
                self.takeover.keep_for_claim(&client_id, delivery);
            }
        }
        handoffs
    }

    fn stored_lingering(&self, client_id: &str, delivery: crate::broker::Delivery) {
        self.takeover.keep_for_claim(client_id, delivery);
    }

    fn hand_over(&self, client_ids: Vec<String>) -> usize {
        let peers: Vec<NodeId> = self
            .peers
            .read()
            .keys()
            .copied()
            .filter(|id| self.links.rtt(*id).is_some())
            .collect();
        if peers.is_empty() {
            return 0;
        }
        let mut offered = 0;
        for (n, client_id) in client_ids.into_iter().enumerate() {
            if self.send_control(peers[n % peers.len()], Control::Adopt { client_id }) {
                offered += 1;
            }
        }
        offered
    }

    fn stored_owner(&self, client_id: &str) -> StoredOwner {
        let directory = self.directory.read();
        match directory.record(client_id) {
            Some((owner, since)) => StoredOwner::Named {
                here: owner == Some(self.node),
                since,
            },
            None => StoredOwner::Absent {
                seen: directory.seen(),
            },
        }
    }

    fn has_share_member(&self, key: GroupKey<'_>) -> bool {
        let (group, filter) = key;
        self.remote.read().has_share_group(filter, group)
    }

    fn connecting(&self, client_id: &str, clean_start: bool, claimed_at: u64) {
        self.broadcast_control(&Control::Connecting {
            client_id: client_id.to_owned(),
            clean_start,
            claimed_at,
        });
    }

    fn claim(
        &self,
        client_id: &str,
        clean_start: bool,
        claimed_at: u64,
        waker: &Arc<Signal>,
    ) -> Arc<Claim> {
        self.takeover
            .start_claim(client_id, clean_start, claimed_at, waker)
    }
}
