//! Several broker nodes as one broker, under faults. Three to five nodes run the production
//! server on the simulator's network (Raft between them, the data plane on [`SimLinks`]).
//! Publishers reconnect to a random node each time; persistent subscribers and the members of
//! a share group move between nodes as they come and go. The nemesis kills and restarts
//! nodes, cuts one off (the leader, or another), makes the network lossy and slow, slows a
//! disk, and drains a node before restarting it, as a rolling upgrade does.
//!
//! Checked: no QoS 1 message acknowledged to its publisher is lost for a persistent session;
//! each message for the share group reaches at least one member, and one sent once reaches at
//! most one; no two nodes keep a live connection of one client while they can reach each
//! other; once the faults heal, every node holds exactly the routes each other announces, and
//! once its links have drained as well, each publisher's messages arrive in order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use halyard_node::broker::Remote;
use halyard_node::cluster::links::PeerLinks;
use halyard_node::cluster::{DataPlane, Inbound};
use halyard_node::config::Config;
use halyard_node::mqtt::Packet;
use halyard_node::server::{BrokerLink, PeerServer, RemoteTask, Server};
use halyard_raft::{KvEngine, MemEngine, NodeId, RaftTransport};
use madsim::rand::{Rng, thread_rng};
use madsim::runtime::{Handle, NodeHandle};
use parking_lot::Mutex;

use crate::cluster::{node_addr, node_ip};
use crate::links::SimLinks;
use crate::mqtt_client::MqttClient;
use crate::transport::SimTransport;

pub(crate) const MQTT_PORT: u16 = 1883;
/// Publishers 1 and 2 write to the persistent subscribers, 3 and 4 to the share group.
const PUBLISHERS: u32 = 4;
pub(crate) const MESSAGES: u32 = 30;
/// Sent after the faults have healed, to check order.
const CALM_MESSAGES: u32 = 10;
pub(crate) const SUBSCRIBERS: [&str; 2] = ["durable-1", "durable-2"];
const MEMBERS: [&str; 3] = ["worker-1", "worker-2", "worker-3"];
const GROUP_FILTER: &str = "$share/workers/s/#";
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(8);
const FORWARD_TIMEOUT_MS: u64 = 2000;

/// A message as a client saw it: who published it, and its number.
pub(crate) type Id = (u32, u32);

#[derive(Default)]
pub(crate) struct Recorder {
    /// Messages whose PUBACK their publisher got.
    pub(crate) acked: Mutex<BTreeSet<Id>>,
    /// When each was acknowledged, and through which node.
    acked_at: Mutex<HashMap<Id, (u128, NodeId)>>,
    /// How often each message was sent (more than once after a lost connection).
    sends: Mutex<HashMap<Id, u32>>,
    /// When each was last sent.
    sent_at: Mutex<HashMap<Id, u128>>,
    /// Arrivals at each persistent subscriber, in order.
    pub(crate) received: Mutex<BTreeMap<String, Vec<Id>>>,
    /// Which members each group message reached.
    dispatched: Mutex<BTreeMap<Id, BTreeSet<String>>>,
    /// Where and when each group message reached a member.
    arrivals: Mutex<BTreeMap<Id, Vec<String>>>,
    /// Clients that came back to a node that had no session for them.
    pub(crate) sessions_lost: Mutex<Vec<String>>,
    /// Two nodes holding one client's live connection while linked to each other.
    doubles: Mutex<Vec<String>>,
    pub(crate) faults: Mutex<Vec<String>>,
    /// When each subscriber connected where, and left.
    pub(crate) visits: Mutex<Vec<String>>,
    /// The nodes' data planes, to see their forward timeouts.
    pub(crate) planes: std::sync::OnceLock<Planes>,
    /// Messages whose node, between their send and its acknowledgement, stopped waiting for
    /// a peer (forward timeout) and dispatched its share groups again from the store.
    redispatched: Mutex<BTreeSet<Id>>,
    /// When a node was killed, drained or restarted: one that had taken a group message
    /// and went before acknowledging it gets it again and serves the group again.
    node_losses: Mutex<Vec<u128>>,
}

impl Recorder {
    /// The forward timeouts of node `id` so far (0 while it is down).
    fn forward_timeouts(&self, id: NodeId) -> u64 {
        self.planes
            .get()
            .and_then(|planes| planes.lock().get(&id).map(|p| p.forward_timeouts()))
            .unwrap_or(0)
    }
}

/// Whether a link fault (a partition) is in effect, during which a node cut off may keep a
/// connection that another node has taken over.
#[derive(Default)]
struct Weather {
    calm: AtomicBool,
    partitioned: AtomicBool,
    /// Counts changes of who is up or linked, so that a sample spanning one is ignored.
    changes: AtomicU32,
}

/// Each running node's data plane.
pub(crate) type Planes = Arc<Mutex<BTreeMap<NodeId, Arc<DataPlane>>>>;

struct Host {
    handle: NodeHandle,
    engine: MemEngine,
}

/// The broker nodes.
pub(crate) struct Brokers {
    hosts: BTreeMap<NodeId, Host>,
    pub(crate) servers: Arc<Mutex<BTreeMap<NodeId, Arc<Server>>>>,
    planes: Planes,
    pub(crate) ids: Vec<NodeId>,
}

pub async fn run() -> String {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("no scratch directory: {e}"),
    };
    let nodes = thread_rng().gen_range(3..=5u64);
    let brokers = Arc::new(Brokers::start(nodes, dir.path()));
    brokers.wait_until_serving(Duration::from_secs(60)).await;
    let recorder = Arc::new(Recorder::default());
    let _ = recorder.planes.set(Arc::clone(&brokers.planes));
    let weather = Arc::new(Weather::default());
    let ids = brokers.ids.clone();

    let mut clients = Vec::new();
    for (n, name) in SUBSCRIBERS.iter().enumerate() {
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        clients.push(client_host(name, 10 + n as u8).spawn(subscribe(
            name.to_string(),
            "t/#",
            ids.clone(),
            Arc::clone(&recorder),
            ready_tx,
        )));
        if ready.await.is_err() {
            panic!("{name} never subscribed");
        }
    }
    for (n, name) in MEMBERS.iter().enumerate() {
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        clients.push(client_host(name, 20 + n as u8).spawn(subscribe(
            name.to_string(),
            GROUP_FILTER,
            ids.clone(),
            Arc::clone(&recorder),
            ready_tx,
        )));
        if ready.await.is_err() {
            panic!("{name} never subscribed");
        }
    }
    let watcher = tokio::spawn(watch_connections(
        Arc::clone(&brokers),
        Arc::clone(&recorder),
        Arc::clone(&weather),
    ));
    let nemesis = tokio::spawn(nemesis(
        Arc::clone(&brokers),
        Arc::clone(&recorder),
        Arc::clone(&weather),
    ));
    publish_all("publisher", 0, 0..MESSAGES, &ids, &recorder).await;
    weather.calm.store(true, Ordering::Relaxed);
    if let Err(e) = nemesis.await {
        panic!("the nemesis failed: {e}");
    }
    for host in brokers.hosts.values() {
        host.engine.set_sync_delay(None);
    }
    brokers.wait_until_serving(Duration::from_secs(60)).await;
    routes_converge(&brokers, Duration::from_secs(30)).await;
    links_drain(&brokers, Duration::from_secs(30)).await;

    // With the faults healed, each publisher's messages arrive in order.
    let calm = MESSAGES..MESSAGES + CALM_MESSAGES;
    publish_all("calm-publisher", 40, calm, &ids, &recorder).await;
    everything_arrives(&brokers, &recorder, Duration::from_secs(60)).await;
    for client in clients {
        client.abort();
    }
    watcher.abort();

    let sessions_lost = recorder.sessions_lost.lock().clone();
    assert!(
        sessions_lost.is_empty(),
        "persistent sessions were lost: {sessions_lost:?}"
    );
    let doubles = recorder.doubles.lock().clone();
    assert!(
        doubles.is_empty(),
        "one client had live connections on two linked nodes: {doubles:?}"
    );
    let sends = recorder.sends.lock().clone();
    for (id, members) in recorder.dispatched.lock().iter() {
        // A dispatch its node did not acknowledge within the forward timeout is made again
        // (its publisher waits that long for it), and so is one its node did not acknowledge
        // before it went away: it may reach a second member.
        let redispatched = {
            let sent = recorder.sent_at.lock().get(id).copied();
            let acked = recorder.acked_at.lock().get(id).map(|(at, _)| *at);
            let node_lost = |s: u128, a: u128| {
                recorder
                    .node_losses
                    .lock()
                    .iter()
                    .any(|t| (s..=a).contains(t))
            };
            matches!((sent, acked), (Some(s), Some(a)) if a - s >= u128::from(FORWARD_TIMEOUT_MS) || node_lost(s, a))
                || recorder.redispatched.lock().contains(id)
        };
        assert!(
            members.len() <= 1 || sends.get(id).copied().unwrap_or(0) > 1 || redispatched,
            "message {id:?}, published once (acked {:?}), reached {members:?} of the share group: {:?}\nfaults: {:?}",
            recorder.acked_at.lock().get(id),
            recorder.arrivals.lock().get(id),
            recorder.faults.lock()
        );
    }
    let received = recorder.received.lock().clone();
    for (subscriber, arrivals) in &received {
        for publisher in 1..=2 {
            let calm: Vec<u32> = first_arrivals(arrivals, publisher)
                .into_iter()
                .filter(|seq| *seq >= MESSAGES)
                .collect();
            assert!(
                calm.windows(2).all(|w| w[0] < w[1]),
                "{subscriber} got publisher {publisher}'s messages out of order: {calm:?}"
            );
        }
    }
    let faults = recorder.faults.lock().clone();
    let acked = recorder.acked.lock().clone();
    format!("nodes: {nodes}\nfaults: {faults:?}\nacked: {acked:?}\nreceived: {received:?}")
}

impl Recorder {
    pub(crate) fn fault(&self, what: impl Into<String>) {
        let what = what.into();
        let at = elapsed_ms();
        if ["kill", "drain", "restart"]
            .iter()
            .any(|w| what.starts_with(w))
        {
            self.node_losses.lock().push(at);
        }
        self.faults.lock().push(format!("{at} ms: {what}"));
    }
}

/// Virtual time since the simulation began.
pub(crate) fn elapsed_ms() -> u128 {
    madsim::time::TimeHandle::current().elapsed().as_millis()
}

pub(crate) fn first_arrivals(arrivals: &[Id], publisher: u32) -> Vec<u32> {
    let mut seen = BTreeSet::new();
    arrivals
        .iter()
        .filter(|(p, seq)| *p == publisher && seen.insert(*seq))
        .map(|(_, seq)| *seq)
        .collect()
}

/// Waits until every acknowledged message reached every persistent subscriber and at least
/// one member of the share group.
async fn everything_arrives(brokers: &Brokers, recorder: &Recorder, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let missing = missing(recorder);
        if missing.is_empty() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            let queued = brokers.queued().await;
            panic!(
                "acknowledged messages never arrived: {missing:?}\nfaults: {:?}\nvisits: {:?}\nstill queued in the store: {queued:?}",
                recorder.faults.lock(),
                recorder.visits.lock()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) fn missing(recorder: &Recorder) -> Vec<String> {
    let acked = recorder.acked.lock().clone();
    let received = recorder.received.lock();
    let dispatched = recorder.dispatched.lock();
    let mut missing = Vec::new();
    for (publisher, seq) in acked {
        if publisher <= 2 {
            for subscriber in SUBSCRIBERS {
                let got = received
                    .get(subscriber)
                    .is_some_and(|a| a.contains(&(publisher, seq)));
                if !got {
                    let at = recorder.acked_at.lock().get(&(publisher, seq)).copied();
                    missing.push(format!("{subscriber} lacks {publisher}:{seq} acked {at:?}"));
                }
            }
        } else if !dispatched.contains_key(&(publisher, seq)) {
            let at = recorder.acked_at.lock().get(&(publisher, seq)).copied();
            missing.push(format!("no member got {publisher}:{seq} acked {at:?}"));
        }
    }
    missing
}

/// Waits until every node holds, for every other, exactly the routes that one announces.
async fn routes_converge(brokers: &Brokers, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let planes = brokers.planes.lock().clone();
        let mut differences = Vec::new();
        for (holder, plane) in &planes {
            for (announcer, theirs) in &planes {
                if holder == announcer {
                    continue;
                }
                let held = plane.routes_of(*announcer).unwrap_or_default();
                let announced = theirs.announced_routes();
                if held != announced {
                    differences.push(format!(
                        "node {holder} holds {held:?} for node {announcer}, which announces {announced:?}"
                    ));
                }
            }
        }
        if differences.is_empty() && planes.len() == brokers.ids.len() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "routes did not converge after the faults healed: {differences:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every node is linked to every other and each has acknowledged all that was
/// forwarded to it: a link the partitions stalled has recovered, and nothing published from
/// now on waits behind what they held up.
async fn links_drain(brokers: &Brokers, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let planes = brokers.planes.lock().clone();
        let backlogs: Vec<_> = planes
            .iter()
            .map(|(id, plane)| (*id, plane.unacknowledged()))
            .collect();
        let drained = planes.len() == brokers.ids.len()
            && backlogs.iter().all(|(_, peers)| {
                peers.len() + 1 == brokers.ids.len() && peers.values().all(|n| *n == 0)
            });
        if drained {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "links did not drain after the faults healed: {backlogs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn mqtt_addr(node: NodeId) -> SocketAddr {
    SocketAddr::new(node_ip(node), MQTT_PORT)
}

pub(crate) fn client_host(name: &str, n: u8) -> NodeHandle {
    Handle::current()
        .create_node()
        .name(name)
        .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 2, n)))
        .build()
}

fn random_node(ids: &[NodeId]) -> NodeId {
    ids[thread_rng().gen_range(0..ids.len())]
}

impl Brokers {
    pub(crate) fn start(nodes: u64, dir: &std::path::Path) -> Self {
        let ids: Vec<NodeId> = (1..=nodes).collect();
        let members = ids
            .iter()
            .map(|id| format!("{id}={}", node_addr(*id)))
            .collect::<Vec<_>>()
            .join(",");
        let servers = Arc::new(Mutex::new(BTreeMap::new()));
        let planes = Arc::new(Mutex::new(BTreeMap::new()));
        let mut hosts = BTreeMap::new();
        for id in ids.clone() {
            let engine = MemEngine::new();
            let host_engine = engine.clone();
            let peers: Vec<NodeId> = ids.iter().copied().filter(|p| *p != id).collect();
            let data_dir = dir.join(format!("node-{id}"));
            let members = members.clone();
            let servers = Arc::clone(&servers);
            let planes = Arc::clone(&planes);
            let handle = Handle::current()
                .create_node()
                .name(format!("broker-{id}"))
                .ip(node_ip(id))
                .init(move || {
                    let engine = host_engine.clone();
                    let peers = peers.clone();
                    let mut config = Config {
                        data_dir: data_dir.clone(),
                        mqtt_listen: Some(SocketAddr::from(([0, 0, 0, 0], MQTT_PORT))),
                        ..Default::default()
                    };
                    config.cluster.node_id = id;
                    config.cluster.advertise_addr = Some(node_addr(id));
                    config.cluster.initial_members = Some(members.clone());
                    config.cluster.heartbeat_ms = 50;
                    config.cluster.election_timeout_ms = 300;
                    config.cluster.forward_timeout_ms = FORWARD_TIMEOUT_MS;
                    config.cluster.drain_rate = 50;
                    let servers = Arc::clone(&servers);
                    let planes = Arc::clone(&planes);
                    async move {
                        let server = start_node(id, config, engine, peers, planes).await;
                        let server = Arc::new(server);
                        servers.lock().insert(id, Arc::clone(&server));
                        std::future::pending::<()>().await;
                        drop(server);
                    }
                })
                .build();
            hosts.insert(id, Host { handle, engine });
        }
        Self {
            hosts,
            servers,
            planes,
            ids,
        }
    }

    /// Waits until every node has started and the store has a leader.
    pub(crate) async fn wait_until_serving(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let servers = self.servers.lock().clone();
            let led = servers.values().any(|s| s.store().raft().is_leader());
            if servers.len() == self.ids.len() && led {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the nodes did not all start within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The messages queued in the store, by client id: what a failed run left behind.
    async fn queued(&self) -> BTreeMap<String, Vec<String>> {
        let server = self.servers.lock().values().next().cloned();
        let Some(server) = server else {
            return BTreeMap::new();
        };
        let Ok(all) = server
            .store()
            .range(
                halyard_raft::RangeRequest::prefix("mqtt/queue/"),
                halyard_raft::Consistency::Linearizable,
            )
            .await
        else {
            return BTreeMap::new();
        };
        let mut queued: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for kv in all.kvs {
            let key = String::from_utf8_lossy(&kv.key).to_string();
            let payload = halyard_node::broker::durable::decode_message(&kv.value)
                .map(|(m, ..)| String::from_utf8_lossy(&m.payload).to_string())
                .unwrap_or_default();
            let client = key.split('/').nth(2).unwrap_or_default().to_owned();
            queued.entry(client).or_default().push(payload);
        }
        queued
    }

    pub(crate) fn kill(&self, id: NodeId) {
        self.forget(id);
        if let Some(host) = self.hosts.get(&id) {
            Handle::current().kill(host.handle.id());
            host.engine.crash();
        }
    }

    /// Starts the node's next life; a live one is killed first (its sockets closed with it).
    pub(crate) fn restart(&self, id: NodeId) {
        self.forget(id);
        if let Some(host) = self.hosts.get(&id) {
            Handle::current().kill(host.handle.id());
            host.engine.crash();
            Handle::current().restart(host.handle.id());
        }
    }

    fn forget(&self, id: NodeId) {
        self.servers.lock().remove(&id);
        self.planes.lock().remove(&id);
    }

    pub(crate) fn partition(&self, side: &[NodeId]) {
        let net = madsim::net::NetSim::current();
        for a in side {
            for b in self.ids.iter().filter(|b| !side.contains(b)) {
                if let (Some(x), Some(y)) = (self.hosts.get(a), self.hosts.get(b)) {
                    net.clog_link(x.handle.id(), y.handle.id());
                    net.clog_link(y.handle.id(), x.handle.id());
                }
            }
        }
    }

    pub(crate) fn heal(&self) {
        let net = madsim::net::NetSim::current();
        for a in self.hosts.values() {
            for b in self.hosts.values() {
                if a.handle.id() != b.handle.id() {
                    net.unclog_link(a.handle.id(), b.handle.id());
                }
            }
        }
    }

    pub(crate) fn leader(&self) -> Option<NodeId> {
        self.servers
            .lock()
            .iter()
            .find(|(_, s)| s.store().raft().is_leader())
            .map(|(id, _)| *id)
    }
}

/// One life of a broker node: the production server with the store's Raft and the data
/// plane on the simulator's network.
pub(crate) async fn start_node(
    id: NodeId,
    config: Config,
    engine: MemEngine,
    peers: Vec<NodeId>,
    planes: Planes,
) -> Server {
    let transport = match SimTransport::bind().await {
        Ok(t) => t,
        Err(e) => panic!("node {id} cannot bind its Raft port: {e}"),
    };
    let links = SimLinks::new(id, peers);
    let inbound = Inbound::default();
    if let Err(e) = links.serve(Arc::clone(&inbound)).await {
        panic!("node {id} cannot bind its data plane ports: {e}");
    }
    let serve: PeerServer = {
        let transport = Arc::clone(&transport);
        Box::new(move |store, _, _, _| {
            transport.serve(store.service());
            Ok(Vec::new())
        })
    };
    let forward_timeout = Duration::from_millis(config.cluster.forward_timeout_ms);
    let link: BrokerLink = Box::new(move |broker, store, registry, shutdown| {
        let (plane, task) = DataPlane::start(
            broker,
            store,
            links as Arc<dyn PeerLinks>,
            forward_timeout,
            registry,
            shutdown,
        )?;
        let _ = inbound.set(Arc::clone(&plane));
        planes.lock().insert(id, Arc::clone(&plane));
        Ok(Some((
            plane as Arc<dyn Remote>,
            Box::pin(task) as RemoteTask,
        )))
    });
    match Server::start_with(
        config,
        Arc::new(engine) as Arc<dyn KvEngine>,
        transport as Arc<dyn RaftTransport>,
        serve,
        link,
    )
    .await
    {
        Ok(server) => server,
        Err(e) => panic!("node {id} cannot start: {e}"),
    }
}

/// Samples which nodes hold a live connection of each client; two at once, while they can
/// reach each other and nothing changed around the sample, is a violation.
async fn watch_connections(brokers: Arc<Brokers>, recorder: Arc<Recorder>, weather: Arc<Weather>) {
    let clients: Vec<&str> = SUBSCRIBERS.iter().chain(MEMBERS.iter()).copied().collect();
    let mut suspects: BTreeSet<String> = BTreeSet::new();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = weather.changes.load(Ordering::Relaxed);
        if weather.partitioned.load(Ordering::Relaxed) {
            suspects.clear();
            continue;
        }
        let servers = brokers.servers.lock().clone();
        let mut now = BTreeSet::new();
        for client in &clients {
            let holders: Vec<NodeId> = servers
                .iter()
                .filter(|(_, s)| s.broker().is_connected(client))
                .map(|(id, _)| *id)
                .collect();
            if holders.len() > 1 {
                now.insert(format!("{client} on nodes {holders:?}"));
            }
        }
        if weather.changes.load(Ordering::Relaxed) != before {
            suspects.clear();
            continue;
        }
        // A takeover closes the old connection before the new one is acknowledged; seen
        // twice in a row, 100 ms apart, it is no takeover in progress.
        for double in now.intersection(&suspects) {
            recorder.doubles.lock().push(double.clone());
        }
        suspects = now;
    }
}

async fn nemesis(brokers: Arc<Brokers>, recorder: Arc<Recorder>, weather: Arc<Weather>) {
    let changed = || {
        weather.changes.fetch_add(1, Ordering::Relaxed);
    };
    while !weather.calm.load(Ordering::Relaxed) {
        let (pause, fault, hold, victim) = {
            let mut rng = thread_rng();
            (
                Duration::from_millis(rng.gen_range(300..1500)),
                rng.gen_range(0..6),
                Duration::from_millis(rng.gen_range(500..3000)),
                random_node(&brokers.ids),
            )
        };
        tokio::time::sleep(pause).await;
        match fault {
            0 => {
                recorder.fault(format!("kill {victim}"));
                changed();
                brokers.kill(victim);
                tokio::time::sleep(hold).await;
                recorder.fault(format!("restart {victim}"));
                brokers.restart(victim);
                changed();
                brokers.wait_until_serving(Duration::from_secs(60)).await;
            }
            1 | 2 => {
                let cut = if fault == 1 {
                    brokers.leader().unwrap_or(victim)
                } else {
                    victim
                };
                recorder.fault(format!("partition {cut}"));
                weather.partitioned.store(true, Ordering::Relaxed);
                changed();
                brokers.partition(&[cut]);
                tokio::time::sleep(hold).await;
                recorder.fault("heal");
                brokers.heal();
                changed();
                // A node cut off keeps its connections until their keep-alive runs out.
                tokio::time::sleep(Duration::from_secs(1)).await;
                weather.partitioned.store(false, Ordering::Relaxed);
            }
            3 => {
                recorder.fault("lossy network");
                madsim::net::NetSim::current().update_config(|c| {
                    c.packet_loss_rate = 0.05;
                    c.send_latency = Duration::from_millis(1)..Duration::from_millis(30);
                });
                tokio::time::sleep(hold).await;
                madsim::net::NetSim::current()
                    .update_config(|c| *c = madsim::net::Config::default());
            }
            4 => {
                recorder.fault(format!("slow disk {victim}"));
                if let Some(host) = brokers.hosts.get(&victim) {
                    host.engine.set_sync_delay(Some(Duration::from_millis(20)));
                    tokio::time::sleep(hold).await;
                    host.engine.set_sync_delay(None);
                }
            }
            _ => {
                recorder.fault(format!("drain {victim}"));
                let server = brokers.servers.lock().get(&victim).cloned();
                if let Some(server) = server {
                    changed();
                    let _ = server.drain().await;
                    drop(server);
                    recorder.fault(format!("restart {victim}"));
                    brokers.restart(victim);
                    changed();
                    brokers.wait_until_serving(Duration::from_secs(60)).await;
                }
            }
        }
    }
}

/// Runs every publisher, each on a host of its own (`{name}-{p}`, address `first_host + p`),
/// until it has published `seqs`.
async fn publish_all(
    name: &str,
    first_host: u8,
    seqs: std::ops::Range<u32>,
    ids: &[NodeId],
    recorder: &Arc<Recorder>,
) {
    let publishers: Vec<_> = (1..=PUBLISHERS)
        .map(|p| {
            client_host(&format!("{name}-{p}"), first_host + p as u8).spawn(publish(
                p,
                seqs.clone(),
                ids.to_vec(),
                Arc::clone(recorder),
            ))
        })
        .collect();
    for publisher in publishers {
        if let Err(e) = publisher.await {
            panic!("a publisher failed: {e}");
        }
    }
}

/// Publishes messages `seqs` one after the other, each until acknowledged, on a node picked
/// at random for each connection, resending (as a duplicate) after a lost connection.
pub(crate) async fn publish(
    publisher: u32,
    seqs: std::ops::Range<u32>,
    ids: Vec<NodeId>,
    recorder: Arc<Recorder>,
) {
    let topic = if publisher <= 2 {
        format!("t/{publisher}")
    } else {
        format!("s/{publisher}")
    };
    let id = format!("publisher-{publisher}");
    let mut client: Option<(MqttClient, NodeId)> = None;
    let mut resend = false;
    let mut seq = seqs.start;
    while seq < seqs.end {
        let Some((connected, on)) = client.as_mut() else {
            let node = random_node(&ids);
            match tokio::time::timeout(
                ATTEMPT_TIMEOUT,
                MqttClient::connect(mqtt_addr(node), &id, true),
            )
            .await
            {
                Ok(Ok((c, _))) => client = Some((c, node)),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            continue;
        };
        let payload = Bytes::from(format!("{publisher}:{seq}"));
        let timeouts = recorder.forward_timeouts(*on);
        *recorder.sends.lock().entry((publisher, seq)).or_default() += 1;
        recorder
            .sent_at
            .lock()
            .insert((publisher, seq), elapsed_ms());
        let answer = tokio::time::timeout(
            PUBLISH_TIMEOUT,
            connected.publish((seq % 60_000) as u16 + 1, &topic, payload, resend),
        )
        .await;
        if let Ok(Ok(())) = answer {
            if recorder.forward_timeouts(*on) != timeouts {
                recorder.redispatched.lock().insert((publisher, seq));
            }
            recorder.acked.lock().insert((publisher, seq));
            recorder
                .acked_at
                .lock()
                .insert((publisher, seq), (elapsed_ms(), *on));
            seq += 1;
            resend = false;
            let pause = thread_rng().gen_range(20..200);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        } else {
            client = None;
            resend = true;
        }
    }
}

/// Takes every message on `filter` with a persistent session, acknowledging each; comes and
/// goes, each time to a node picked at random. `ready` is told once the subscription holds.
pub(crate) async fn subscribe(
    name: String,
    filter: &'static str,
    ids: Vec<NodeId>,
    recorder: Arc<Recorder>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    loop {
        let node = random_node(&ids);
        let connected = tokio::time::timeout(
            ATTEMPT_TIMEOUT,
            MqttClient::connect(mqtt_addr(node), &name, false),
        )
        .await;
        let Ok(Ok((mut client, session_present))) = connected else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        recorder.visits.lock().push(format!(
            "{} ms: {name} on {node}{}",
            elapsed_ms(),
            if session_present { "" } else { " (no session)" }
        ));
        if ready.is_some() {
            match tokio::time::timeout(ATTEMPT_TIMEOUT, client.subscribe(1, filter)).await {
                Ok(Ok(())) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                }
                _ => continue,
            }
        } else if !session_present {
            recorder.sessions_lost.lock().push(name.clone());
        }
        let (online, offline) = {
            let mut rng = thread_rng();
            (
                Duration::from_millis(rng.gen_range(300..3000)),
                Duration::from_millis(rng.gen_range(50..800)),
            )
        };
        let leave_at = tokio::time::Instant::now() + online;
        let mut pinged = false;
        loop {
            if tokio::time::Instant::now() >= leave_at {
                recorder
                    .visits
                    .lock()
                    .push(format!("{} ms: {name} leaves {node}", elapsed_ms()));
                drop(client);
                tokio::time::sleep(offline).await;
                break;
            }
            let packet = match tokio::time::timeout(ATTEMPT_TIMEOUT, client.recv()).await {
                Ok(Ok(packet)) => packet,
                Ok(Err(_)) => {
                    recorder
                        .visits
                        .lock()
                        .push(format!("{} ms: {name} lost {node}", elapsed_ms()));
                    break;
                }
                Err(_) if pinged => {
                    recorder
                        .visits
                        .lock()
                        .push(format!("{} ms: {name} gave up on {node}", elapsed_ms()));
                    break;
                }
                Err(_) => {
                    pinged = true;
                    if client.send(&Packet::PingReq).await.is_err() {
                        break;
                    }
                    continue;
                }
            };
            pinged = false;
            if let Packet::Publish(message) = packet {
                if let Some(id) = parse(&message.payload) {
                    if filter == GROUP_FILTER {
                        recorder
                            .arrivals
                            .lock()
                            .entry(id)
                            .or_default()
                            .push(format!(
                                "{} ms: {name} on {node}{}",
                                elapsed_ms(),
                                if message.dup { " (dup)" } else { "" }
                            ));
                        recorder
                            .dispatched
                            .lock()
                            .entry(id)
                            .or_default()
                            .insert(name.clone());
                    } else {
                        recorder
                            .received
                            .lock()
                            .entry(name.clone())
                            .or_default()
                            .push(id);
                    }
                }
                if client.puback(message.packet_id).await.is_err() {
                    break;
                }
            }
        }
    }
}

fn parse(payload: &[u8]) -> Option<Id> {
    let text = std::str::from_utf8(payload).ok()?;
    let (publisher, seq) = text.split_once(':')?;
    Some((publisher.parse().ok()?, seq.parse().ok()?))
}
