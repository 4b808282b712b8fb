//! A cluster of simulated hosts, each running the production store on a [`MemEngine`] that
//! outlives the host, so that killing a host and dropping its unsynced writes is a power cut.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use halyard_raft::{KvEngine, MemEngine, NodeId, RaftMetrics, Store, StoreConfig};
use madsim::runtime::{Handle, NodeHandle};
use parking_lot::Mutex;

use crate::transport::{RAFT_PORT, SimTransport};

pub fn node_ip(id: NodeId) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, id as u8))
}

pub fn node_addr(id: NodeId) -> String {
    format!("{}:{RAFT_PORT}", node_ip(id))
}

struct Host {
    handle: NodeHandle,
    engine: MemEngine,
}

pub struct SimCluster {
    hosts: BTreeMap<NodeId, Host>,
    /// The store each live host opened last; replaced on restart.
    stores: Arc<Mutex<BTreeMap<NodeId, Store>>>,
    pub ids: Vec<NodeId>,
}

impl SimCluster {
    /// Starts `voters + spares` hosts; host 1 forms a cluster of the first `voters`, and the
    /// spares wait, running but not members, until they are added.
    pub async fn start(voters: u64, spares: u64, snapshot_dir: PathBuf) -> Self {
        let handle = Handle::current();
        let stores = Arc::new(Mutex::new(BTreeMap::new()));
        let ids: Vec<NodeId> = (1..=voters + spares).collect();
        let members: BTreeMap<NodeId, String> =
            (1..=voters).map(|id| (id, node_addr(id))).collect();
        let mut hosts = BTreeMap::new();
        for id in &ids {
            let id = *id;
            let engine = MemEngine::new();
            let stores = Arc::clone(&stores);
            let members = members.clone();
            let dir = snapshot_dir.join(format!("node-{id}"));
            let host_engine = engine.clone();
            let node = handle
                .create_node()
                .name(format!("node-{id}"))
                .ip(node_ip(id))
                .init(move || {
                    let engine = host_engine.clone();
                    let stores = Arc::clone(&stores);
                    let members = members.clone();
                    let dir = dir.clone();
                    async move {
                        let transport = match SimTransport::bind().await {
                            Ok(t) => t,
                            Err(e) => panic!("node {id} cannot bind its Raft port: {e}"),
                        };
                        let mut config = StoreConfig::new(id, node_addr(id), dir);
                        config.heartbeat_interval = Duration::from_millis(50);
                        config.election_timeout = Duration::from_millis(300);
                        config.snapshot_every = 50;
                        config.request_timeout = Duration::from_secs(3);
                        let store = match Store::open(
                            config,
                            Arc::new(engine) as Arc<dyn KvEngine>,
                            transport.clone(),
                            RaftMetrics::unregistered(),
                        )
                        .await
                        {
                            Ok(s) => s,
                            Err(e) => panic!("node {id} cannot open its store: {e}"),
                        };
                        transport.serve(store.service());
                        if id == 1 {
                            let _ = store.initialize(members).await;
                        }
                        stores.lock().insert(id, store);
                        std::future::pending::<()>().await;
                    }
                })
                .build();
            hosts.insert(
                id,
                Host {
                    handle: node,
                    engine,
                },
            );
        }
        let cluster = Self { hosts, stores, ids };
        cluster.wait_for_leader(Duration::from_secs(30)).await;
        cluster
    }

    pub fn store(&self, id: NodeId) -> Option<Store> {
        self.stores.lock().get(&id).cloned()
    }

    /// The host's current life: a handle taken before a restart spawns onto the dead one.
    pub fn node(&self, id: NodeId) -> Option<NodeHandle> {
        let host = self.hosts.get(&id)?;
        Handle::current().get_node(host.handle.id())
    }

    /// Kills the host and drops whatever its disk had not synced.
    pub fn crash(&self, id: NodeId) {
        let Some(host) = self.hosts.get(&id) else {
            return;
        };
        self.stores.lock().remove(&id);
        Handle::current().kill(host.handle.id());
        host.engine.crash();
    }

    pub fn restart(&self, id: NodeId) {
        if let Some(host) = self.hosts.get(&id) {
            self.stores.lock().remove(&id);
            host.engine.crash();
            Handle::current().restart(host.handle.id());
        }
    }

    /// Jumps the host's clock forward, as a paused or suspended machine's clock does.
    pub fn clock_jump(&self, id: NodeId, by: Duration) {
        if let Some(host) = self.hosts.get(&id) {
            halyard_raft::clock::jump(host.handle.id(), by);
        }
    }

    /// Drops `loss` of all packets and delays each by up to `latency`, until
    /// [`SimCluster::steady_network`].
    pub fn lossy_network(&self, loss: f64, latency: Duration) {
        madsim::net::NetSim::current().update_config(|c| {
            c.packet_loss_rate = loss;
            c.send_latency = Duration::from_millis(1)..latency.max(Duration::from_millis(2));
        });
    }

    pub fn steady_network(&self) {
        madsim::net::NetSim::current().update_config(|c| *c = madsim::net::Config::default());
    }

    pub fn set_slow_disk(&self, id: NodeId, delay: Option<Duration>) {
        if let Some(host) = self.hosts.get(&id) {
            host.engine.set_sync_delay(delay);
        }
    }

    /// Cuts every link between the two groups.
    pub fn partition(&self, side: &[NodeId], others: &[NodeId]) {
        let net = madsim::net::NetSim::current();
        for a in side {
            for b in others {
                if let (Some(x), Some(y)) = (self.hosts.get(a), self.hosts.get(b)) {
                    net.clog_link(x.handle.id(), y.handle.id());
                    net.clog_link(y.handle.id(), x.handle.id());
                }
            }
        }
    }

    pub fn heal(&self) {
        let net = madsim::net::NetSim::current();
        for a in self.hosts.values() {
            for b in self.hosts.values() {
                if a.handle.id() != b.handle.id() {
                    net.unclog_link(a.handle.id(), b.handle.id());
                }
            }
        }
    }

    pub async fn leader(&self) -> Option<NodeId> {
        let stores: Vec<Store> = self.stores.lock().values().cloned().collect();
        stores
            .into_iter()
            .find(|s| s.raft().is_leader())
            .map(|s| s.id())
    }

    pub async fn wait_for_leader(&self, limit: Duration) -> NodeId {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(l) = self.leader().await {
                return l;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no leader within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The voters and the learners, as the leader sees them.
    pub async fn membership(&self) -> Option<(Vec<NodeId>, Vec<NodeId>)> {
        let leader = self.store(self.leader().await?)?;
        let members = leader.status().members;
        let voters = members.iter().filter(|m| m.voter).map(|m| m.id).collect();
        let learners = members.iter().filter(|m| !m.voter).map(|m| m.id).collect();
        Some((voters, learners))
    }

    /// Waits until every member has applied the same index, at least all that is committed;
    /// returns the members.
    pub async fn converge(&self, limit: Duration) -> Vec<NodeId> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some((voters, learners)) = self.membership().await {
                let members: Vec<NodeId> = voters.into_iter().chain(learners).collect();
                let stores: Vec<Store> = members.iter().filter_map(|id| self.store(*id)).collect();
                let applied: Vec<u64> = stores.iter().map(|s| s.status().applied_index).collect();
                let committed = stores
                    .iter()
                    .map(|s| s.status().committed_index)
                    .max()
                    .unwrap_or(0);
                if stores.len() == members.len()
                    && applied.windows(2).all(|w| w[0] == w[1])
                    && applied.first().is_some_and(|a| *a >= committed)
                {
                    return members;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "members {members:?} did not converge: applied {applied:?}"
                );
            } else {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no leader to converge on"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
