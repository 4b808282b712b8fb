//! The operator's planner driving real broker nodes. A simulated StatefulSet makes and removes
//! pods by ordinal (node id = ordinal + 1, a pod's volume kept across its restarts and deleted
//! when the StatefulSet shrinks past it); the operator, on a host of its own, observes the pods
//! and the nodes, asks `halyard_operator::plan::plan` for the one next step and takes it on the
//! nodes, as the real controller does through their admin API. The operator is killed at
//! random and started again: it keeps nothing, so it resumes from what it observes.
//!
//! The cluster forms from node 1 with the others joining as learners, is scaled 3 -> 5, rolled
//! to a new version one node at a time, and scaled 5 -> 3, while publishers and persistent
//! subscribers come and go across the nodes. Checked: no QoS 1 message acknowledged to its
//! publisher is lost, no persistent session is lost, the voters running never fall below a
//! quorum, and no pod is replaced or removed before its drain has ended.
//!
//! Certificate rotation is not part of this run: nodes here talk over the simulator's network,
//! not QUIC with TLS; the node's reloading and the three-phase rotation are tested with real
//! QUIC (`node/tests/integration/cluster_quic.rs`) and against the operator's controller.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use halyard_node::config::{Config, JoinRole};
use halyard_node::server::Server;
use halyard_operator::plan::{self, Action, Desired, Observed, Ordinal, Pod, node_id, ordinal_of};
use halyard_raft::{MemEngine, NodeId};
use madsim::rand::{Rng, thread_rng};
use madsim::runtime::{Handle, NodeHandle};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::cluster::{node_addr, node_ip};
use crate::cluster_broker_scenario::{
    MQTT_PORT, Planes, Recorder, SUBSCRIBERS, client_host, elapsed_ms, missing, publish,
    start_node, subscribe,
};

/// Ordinals 0..MAX_PODS can exist.
const MAX_PODS: u32 = 5;
/// How often the operator reconciles.
const ROUND: Duration = Duration::from_millis(300);
/// Messages a publisher sends on one connection before it picks a node again.
const BATCH: u32 = 10;
/// How long one phase (a scale, the roll) may take before the run fails.
const PHASE_LIMIT: Duration = Duration::from_secs(240);

/// A pod's host: its volume outlives its restarts; a StatefulSet shrunk past it deletes it.
struct PodHost {
    handle: NodeHandle,
    volume: Arc<Mutex<MemEngine>>,
}

/// The StatefulSet (its replicas and template version) and its pods.
struct StatefulSet {
    replicas: Mutex<u32>,
    template: Arc<Mutex<String>>,
    /// The version each running pod was started at, and when.
    pods: Arc<Mutex<BTreeMap<Ordinal, (String, Instant)>>>,
    hosts: Mutex<BTreeMap<Ordinal, PodHost>>,
    servers: Arc<Mutex<BTreeMap<NodeId, Arc<Server>>>>,
    planes: Planes,
    /// Whether the store has formed: from then on no node forms one (the operator's status).
    formed: Arc<AtomicBool>,
    dir: std::path::PathBuf,
}

/// What the scenario asks for, and what the operator reports.
#[derive(Default)]
struct Spec {
    nodes: Mutex<u32>,
    version: Mutex<String>,
    /// Bumped with each change, so that a decision is known to answer the spec as it is.
    generation: Mutex<u64>,
    /// The operator's last decision, and the generation it answered.
    last: Mutex<Option<(u64, Action)>>,
    /// Steps that broke the planner's promises, seen when taken.
    violations: Mutex<Vec<String>>,
}

impl StatefulSet {
    fn new(dir: std::path::PathBuf, version: &str) -> Arc<Self> {
        Arc::new(Self {
            replicas: Mutex::new(0),
            template: Arc::new(Mutex::new(version.to_owned())),
            pods: Arc::default(),
            hosts: Mutex::default(),
            servers: Arc::default(),
            planes: Arc::default(),
            formed: Arc::default(),
            dir,
        })
    }

    /// Sets the replicas; pods above them are removed with their volumes at once, and the
    /// controller loop starts those missing below.
    fn scale(&self, replicas: u32) {
        let before = std::mem::replace(&mut *self.replicas.lock(), replicas);
        for ordinal in replicas..before {
            self.stop(ordinal);
            if let Some(host) = self.hosts.lock().get(&ordinal) {
                *host.volume.lock() = MemEngine::new();
            }
        }
    }

    /// The StatefulSet controller: a pod of `0..replicas` that is missing (never started, or
    /// deleted by the operator) is started again, a moment after.
    async fn control(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let replicas = *self.replicas.lock();
            let missing: Vec<Ordinal> = (0..replicas)
                .filter(|o| !self.pods.lock().contains_key(o))
                .collect();
            for ordinal in missing {
                self.start(ordinal);
            }
        }
    }

    /// Starts pod `ordinal` at the template's version: a new host, or its host again.
    fn start(&self, ordinal: Ordinal) {
        let version = self.template.lock().clone();
        self.pods.lock().insert(ordinal, (version, Instant::now()));
        let mut hosts = self.hosts.lock();
        if let Some(host) = hosts.get(&ordinal) {
            Handle::current().restart(host.handle.id());
            return;
        }
        let id = node_id(ordinal);
        let volume = Arc::new(Mutex::new(MemEngine::new()));
        let handle = {
            let volume = Arc::clone(&volume);
            let servers = Arc::clone(&self.servers);
            let planes = Arc::clone(&self.planes);
            let formed = Arc::clone(&self.formed);
            let data_dir = self.dir.join(format!("pod-{ordinal}"));
            Handle::current()
                .create_node()
                .name(format!("pod-{ordinal}"))
                .ip(node_ip(id))
                .init(move || {
                    let engine = volume.lock().clone();
                    let config = pod_config(id, data_dir.clone(), formed.load(Ordering::SeqCst));
                    let peers: Vec<NodeId> =
                        (1..=u64::from(MAX_PODS)).filter(|p| *p != id).collect();
                    let servers = Arc::clone(&servers);
                    let planes = Arc::clone(&planes);
                    async move {
                        let server = Arc::new(start_node(id, config, engine, peers, planes).await);
                        servers.lock().insert(id, Arc::clone(&server));
                        std::future::pending::<()>().await;
                        drop(server);
                    }
                })
                .build()
        };
        hosts.insert(ordinal, PodHost { handle, volume });
    }

    /// Stops pod `ordinal` (deleted by the operator, or by the StatefulSet shrinking).
    fn stop(&self, ordinal: Ordinal) {
        self.servers.lock().remove(&node_id(ordinal));
        self.planes.lock().remove(&node_id(ordinal));
        self.pods.lock().remove(&ordinal);
        if let Some(host) = self.hosts.lock().get(&ordinal) {
            Handle::current().kill(host.handle.id());
        }
    }

    fn server(&self, id: NodeId) -> Option<Arc<Server>> {
        self.servers.lock().get(&id).cloned()
    }

    /// The host of node `id` in its current life (a handle kept from an earlier life spawns
    /// nothing once the host has restarted).
    fn host(&self, id: NodeId) -> Option<NodeHandle> {
        let host_id =
            ordinal_of(id).and_then(|o| self.hosts.lock().get(&o).map(|h| h.handle.id()))?;
        Handle::current().get_node(host_id)
    }
}

/// The node configuration the operator's ConfigMap gives a pod: node 1 forms the store until
/// it has formed; every other node, and node 1 on an empty volume afterwards, joins through
/// the other pods as a learner.
fn pod_config(id: NodeId, data_dir: std::path::PathBuf, formed: bool) -> Config {
    let mut config = Config {
        data_dir,
        mqtt_listen: Some(SocketAddr::from(([0, 0, 0, 0], MQTT_PORT))),
        ..Default::default()
    };
    config.cluster.node_id = id;
    config.cluster.advertise_addr = Some(node_addr(id));
    if !formed {
        config.cluster.initial_members = Some(format!("1={}", node_addr(1)));
    }
    config.cluster.join = Some(
        (1..=u64::from(MAX_PODS))
            .filter(|p| *p != id)
            .map(node_addr)
            .collect::<Vec<_>>()
            .join(","),
    );
    config.cluster.join_as = JoinRole::Learner;
    config.cluster.heartbeat_ms = 50;
    config.cluster.election_timeout_ms = 300;
    config.cluster.forward_timeout_ms = 2000;
    config.cluster.drain_rate = 50;
    config
}

pub async fn run() -> String {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("no scratch directory: {e}"),
    };
    let sts = StatefulSet::new(dir.path().to_owned(), "1");
    let spec = Arc::new(Spec::default());
    *spec.nodes.lock() = 3;
    *spec.version.lock() = "1".to_owned();
    let controller = tokio::spawn(Arc::clone(&sts).control());
    let operator = start_operator(Arc::clone(&sts), Arc::clone(&spec));
    let recorder = Arc::new(Recorder::default());
    let _ = recorder.planes.set(Arc::clone(&sts.planes));
    phase_done(&spec, "forming").await;

    let ids: Vec<NodeId> = (1..=u64::from(MAX_PODS)).collect();
    let mut clients = Vec::new();
    for (n, name) in SUBSCRIBERS.iter().enumerate() {
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        clients.push(client_host(name, 10 + n as u8).spawn(subscribe(
            name.to_string(),
            "t/#",
            (1..=3).collect(),
            Arc::clone(&recorder),
            ready_tx,
        )));
        if ready.await.is_err() {
            panic!("{name} never subscribed");
        }
    }
    let quorum = tokio::spawn(watch_quorum(Arc::clone(&sts), Arc::clone(&spec)));
    let killer = tokio::spawn(kill_the_operator(operator, Arc::clone(&recorder)));
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (1..=2u32)
        .map(|p| {
            let (ids, recorder, stop) = (ids.clone(), Arc::clone(&recorder), Arc::clone(&stop));
            client_host(&format!("publisher-{p}"), p as u8).spawn(async move {
                // Batches until the last phase is done, so that messages flow through all.
                let mut next = 0;
                while !stop.load(Ordering::SeqCst) {
                    publish(p, next..next + BATCH, ids.clone(), Arc::clone(&recorder)).await;
                    next += BATCH;
                }
            })
        })
        .collect();

    for (step, change) in [
        ("scale 3 -> 5", Change::Nodes(5)),
        ("roll to version 2", Change::Version("2")),
        ("scale 5 -> 3", Change::Nodes(3)),
    ] {
        recorder.fault(step);
        match change {
            Change::Nodes(n) => *spec.nodes.lock() = n,
            Change::Version(v) => {
                *spec.version.lock() = v.to_owned();
                *sts.template.lock() = v.to_owned();
            }
        }
        *spec.generation.lock() += 1;
        phase_done(&spec, step).await;
    }
    stop.store(true, Ordering::SeqCst);
    for publisher in publishers {
        if let Err(e) = publisher.await {
            panic!("a publisher failed: {e}");
        }
    }
    killer.abort();
    controller.abort();
    quorum.abort();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing = missing(&recorder);
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acknowledged messages never arrived: {missing:?}\nsteps: {:?}\nvisits: {:?}",
            recorder.faults.lock(),
            recorder.visits.lock()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for client in clients {
        client.abort();
    }
    let lost = recorder.sessions_lost.lock().clone();
    assert!(lost.is_empty(), "persistent sessions were lost: {lost:?}");
    let violations = spec.violations.lock().clone();
    assert!(
        violations.is_empty(),
        "the operator broke its promises: {violations:?}\nsteps: {:?}",
        recorder.faults.lock()
    );
    let versions: Vec<String> = sts.pods.lock().values().map(|(v, _)| v.clone()).collect();
    assert_eq!(versions, ["2", "2", "2"], "every pod at the new version");
    let steps = recorder.faults.lock().clone();
    format!("steps: {steps:?}\nacked: {:?}", recorder.acked.lock())
}

enum Change {
    Nodes(u32),
    Version(&'static str),
}

/// Waits until the operator says the cluster is as the spec asks.
async fn phase_done(spec: &Spec, phase: &str) {
    let deadline = Instant::now() + PHASE_LIMIT;
    let generation = *spec.generation.lock();
    while *spec.last.lock() != Some((generation, Action::Done)) {
        assert!(
            Instant::now() < deadline,
            "{phase} did not finish: the operator's last step was {:?}",
            spec.last.lock()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The operator's host: its life is the reconcile loop, begun again on each restart.
fn start_operator(sts: Arc<StatefulSet>, spec: Arc<Spec>) -> NodeHandle {
    Handle::current()
        .create_node()
        .name("operator")
        .ip(std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 3, 1)))
        .init(move || {
            let sts = Arc::clone(&sts);
            let spec = Arc::clone(&spec);
            async move {
                loop {
                    reconcile(&sts, &spec).await;
                    tokio::time::sleep(ROUND).await;
                }
            }
        })
        .build()
}

/// Kills the operator now and then, mid-step or between steps, and starts it again.
async fn kill_the_operator(operator: NodeHandle, recorder: Arc<Recorder>) {
    loop {
        let (up, down) = {
            let mut rng = thread_rng();
            (
                Duration::from_millis(rng.gen_range(500..4000)),
                Duration::from_millis(rng.gen_range(100..2000)),
            )
        };
        tokio::time::sleep(up).await;
        recorder.fault("operator killed");
        Handle::current().kill(operator.id());
        tokio::time::sleep(down).await;
        Handle::current().restart(operator.id());
    }
}

/// The voters of the store that run must stay a quorum of them, whatever step is under way.
async fn watch_quorum(sts: Arc<StatefulSet>, spec: Arc<Spec>) {
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let servers = sts.servers.lock().clone();
        let Some(status) = servers
            .values()
            .map(|s| s.store().status())
            .find(|s| s.leader == Some(s.id))
        else {
            continue;
        };
        let voters: Vec<NodeId> = status
            .members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.id)
            .collect();
        let running = voters.iter().filter(|v| servers.contains_key(v)).count();
        if running <= voters.len() / 2 {
            spec.violations.lock().push(format!(
                "{} ms: {running} of the voters {voters:?} run",
                elapsed_ms()
            ));
        }
    }
}

/// One round: observe, plan, take the step.
async fn reconcile(sts: &StatefulSet, spec: &Spec) {
    let observed = observe(sts).await;
    if observed.leader.is_some() {
        sts.formed.store(true, Ordering::SeqCst);
    }
    let generation = *spec.generation.lock();
    let desired = Desired {
        nodes: *spec.nodes.lock(),
        voters: 3,
        version: spec.version.lock().clone(),
        template: String::new(),
        min_pod_age: Duration::from_secs(2),
        max_lag: 100,
        paused: false,
    };
    let action = plan::plan(&observed, &desired);
    tracing::debug!(?action, replicas = observed.replicas, leader = ?observed.leader, "operator");
    take(sts, spec, &observed, &action).await;
    *spec.last.lock() = Some((generation, action));
}

async fn observe(sts: &StatefulSet) -> Observed {
    let replicas = *sts.replicas.lock();
    let pods = sts.pods.lock().clone();
    let mut observed = Observed {
        replicas,
        ..Observed::default()
    };
    for (ordinal, (version, started)) in pods {
        let server = sts.server(node_id(ordinal));
        let drain = server.as_ref().map(|s| s.drain_status());
        observed.pods.insert(
            ordinal,
            Pod {
                version,
                template: String::new(),
                running: server.is_some(),
                ready: server
                    .as_ref()
                    .is_some_and(|s| s.unready_reasons().is_empty()),
                age: started.elapsed(),
                draining: drain.is_some_and(|d| d.draining),
                drained: drain.is_some_and(|d| d.done.is_some()),
            },
        );
    }
    let servers = sts.servers.lock().clone();
    if let Some(status) = servers
        .values()
        .map(|s| s.store().status())
        .find(|s| s.leader == Some(s.id))
    {
        observed.leader = status.leader;
        if let Some(leader) = status.leader {
            observed.members = plan::members_from_leader(
                leader,
                status.members.iter().map(|m| (m.id, m.voter, m.lag)),
            );
        }
    }
    observed
}

/// Runs `op` on the leader's host, as the admin API would run it there.
async fn on_leader<F, Fut>(sts: &StatefulSet, observed: &Observed, op: F)
where
    F: FnOnce(Arc<Server>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let Some(leader) = observed.leader else {
        return;
    };
    let (Some(server), Some(host)) = (sts.server(leader), sts.host(leader)) else {
        return;
    };
    let _ = host.spawn(op(server)).await;
}

async fn take(sts: &StatefulSet, spec: &Spec, observed: &Observed, action: &Action) {
    match action {
        Action::Wait(_) | Action::Done => {}
        Action::Scale(to) => {
            for ordinal in *to..observed.replicas {
                if !observed.pods.get(&ordinal).is_some_and(|p| p.drained) {
                    spec.violations
                        .lock()
                        .push(format!("pod {ordinal} removed before its drain ended"));
                }
            }
            sts.scale(*to);
        }
        Action::Promote(id) => {
            let id = *id;
            on_leader(sts, observed, move |s| async move {
                let _ = s.store().promote(id).await;
            })
            .await;
        }
        Action::Demote(id) => {
            let id = *id;
            on_leader(sts, observed, move |s| async move {
                let _ = s.store().demote(id).await;
            })
            .await;
        }
        Action::RemoveMember(id) => {
            let id = *id;
            on_leader(sts, observed, move |s| async move {
                let _ = s.store().remove(id).await;
            })
            .await;
        }
        Action::TransferLeadership { from } => {
            let from = *from;
            let to = plan::successor(observed, from);
            if let Some(to) = to {
                on_leader(sts, observed, move |s| async move {
                    let _ = s.store().transfer_leader(to).await;
                })
                .await;
            }
        }
        Action::Drain(ordinal) => {
            let id = node_id(*ordinal);
            if let (Some(server), Some(host)) = (sts.server(id), sts.host(id)) {
                // Begun, as the admin endpoint begins it, and left to run on the node.
                drop(host.spawn(async move {
                    server.drain().await;
                }));
            }
        }
        Action::Replace(ordinal) => {
            if !observed.pods.get(ordinal).is_some_and(|p| p.drained) {
                spec.violations
                    .lock()
                    .push(format!("pod {ordinal} replaced before its drain ended"));
            }
            // Deleted; the StatefulSet starts it again at the template's version.
            sts.stop(*ordinal);
        }
    }
}
