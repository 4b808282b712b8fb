//! The store handle: the KV API over Raft, membership operations and status.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ReadPolicy, ServerState};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::clock::Instant;
use crate::engine::KvEngine;
use crate::error::StoreError;
use crate::log_store::LogStore;
use crate::metrics::RaftMetrics;
use crate::snapshot::SnapshotFile;
use crate::state;
use crate::state_machine::{LeaseClock, Notice, Shared, StateMachine};
use crate::transport::{
    NetworkFactory, RaftRequest, RaftResponse, RaftTransport, RemoteError, TransportError,
};
use crate::types::{
    Command, CommandResult, KeyValue, LeaseId, NodeId, Revision, RevisionEvents, SnapshotMeta, Txn,
    TxnResult, TypeConfig, Vote,
};

pub type Raft = openraft::Raft<TypeConfig, StateMachine>;

/// Revisions of history a watcher replays at a time: one far behind catches up in bounded
/// steps instead of holding its whole gap in memory.
const REPLAY_BATCH: usize = 256;

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub node_id: NodeId,
    /// The address peers use to reach this node.
    pub advertise_addr: String,
    /// Where snapshot files live.
    pub snapshot_dir: PathBuf,
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    pub request_timeout: Duration,
    /// Log entries between snapshots. A snapshot dumps the whole state with its watch
    /// history, so on a busy node it must be rare; the state lives in RocksDB and a restart
    /// replays nothing, so the log kept in between only costs disk.
    pub snapshot_every: u64,
    /// Revisions of watch history kept before compaction drops them.
    pub history_revisions: u64,
    /// How often the leader drops history beyond `history_revisions`. Often: under load the
    /// history grows by thousands of revisions a second, and every snapshot carries it.
    pub compaction_interval: Duration,
    pub max_key_size: usize,
    pub max_value_size: usize,
    pub max_txn_ops: usize,
}

impl StoreConfig {
    pub fn new(node_id: NodeId, advertise_addr: impl Into<String>, snapshot_dir: PathBuf) -> Self {
        Self {
            node_id,
            advertise_addr: advertise_addr.into(),
            snapshot_dir,
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(5),
            snapshot_every: 100_000,
            history_revisions: 10_000,
            compaction_interval: Duration::from_secs(1),
            max_key_size: 4096,
            max_value_size: 1 << 20,
            max_txn_ops: 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read began, on any node (read index).
    #[default]
    Linearizable,
    /// This node's applied state, possibly behind the leader.
    Local,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetResult {
    pub kv: Option<KeyValue>,
    /// The revision of the state the read saw.
    pub revision: Revision,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// More keys match beyond the limit; continue with `start_after` = the last key.
    pub more: bool,
    pub revision: Revision,
}

#[derive(Debug, Clone, Default)]
pub struct RangeRequest {
    pub prefix: Vec<u8>,
    pub start_after: Option<Vec<u8>>,
    pub limit: usize,
}

impl RangeRequest {
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        Self {
            prefix: prefix.into(),
            start_after: None,
            limit: usize::MAX,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberStatus {
    pub id: NodeId,
    pub addr: String,
    pub voter: bool,
    /// Known to the leader only.
    pub match_index: Option<u64>,
    pub lag: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: NodeId,
    pub role: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub revision: Revision,
    pub compacted_revision: Revision,
    pub members: Vec<MemberStatus>,
}

struct Inner {
    id: NodeId,
    config: StoreConfig,
    raft: Raft,
    engine: Arc<dyn KvEngine>,
    shared: Arc<Shared>,
    transport: Arc<dyn RaftTransport>,
    metrics: RaftMetrics,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// A replicated transactional key-value store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// The receiving end of a transport: what remote nodes may ask of this one.
#[derive(Clone)]
pub struct RaftService {
    inner: Arc<Inner>,
}

fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

fn fatal<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Storage(e.to_string())
}

impl Store {
    /// Opens the node's store; it takes part in the cluster once it is a member (see
    /// [`Store::initialize`] and the membership operations).
    pub async fn open(
        config: StoreConfig,
        engine: Arc<dyn KvEngine>,
        transport: Arc<dyn RaftTransport>,
        metrics: RaftMetrics,
    ) -> Result<Self, StoreError> {
        let heartbeat = config.heartbeat_interval.as_millis() as u64;
        let election = config.election_timeout.as_millis() as u64;
        let raft_config = openraft::Config {
            cluster_name: "halyard".into(),
            heartbeat_interval: heartbeat.max(1),
            election_timeout_min: election.max(heartbeat * 3),
            election_timeout_max: election.max(heartbeat * 3) * 2,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.snapshot_every / 10,
            install_snapshot_timeout: 10_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StoreError::InvalidRequest(format!("raft configuration: {e}")))?;
        let shared = Shared::new(metrics.clone());
        let state_machine =
            StateMachine::open(engine.clone(), shared.clone(), config.snapshot_dir.clone())?;
        let log_store = LogStore::new(engine.clone(), metrics.clone());
        let network = NetworkFactory {
            transport: transport.clone(),
        };
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            network,
            log_store,
            state_machine,
        )
        .await
        .map_err(fatal)?;
        let inner = Arc::new(Inner {
            id: config.node_id,
            config,
            raft,
            engine,
            shared,
            transport,
            metrics,
            tasks: Mutex::new(Vec::new()),
        });
        let store = Store { inner };
        store.spawn_background();
        Ok(store)
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub fn service(&self) -> RaftService {
        RaftService {
            inner: self.inner.clone(),
        }
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Forms a new cluster of the given members (the embedded default is this node alone).
    /// Doing it again on an initialized node is not an error.
    pub async fn initialize(&self, members: BTreeMap<NodeId, String>) -> Result<(), StoreError> {
        if self.inner.raft.is_initialized().await.map_err(fatal)? {
            return Ok(());
        }
        let nodes: BTreeMap<NodeId, BasicNode> = members
            .into_iter()
            .map(|(id, addr)| (id, BasicNode { addr }))
            .collect();
        match self.inner.raft.initialize(nodes).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(fatal(e)),
        }
    }

    /// Asks the cluster reachable at one of `via` to add this node, as a voter or as a learner
    /// (which an operator promotes once it has caught up), following leader hints and trying
    /// each address in turn, until it has or `timeout` passes. A node that is already a member
    /// does nothing.
    pub async fn join(
        &self,
        via: &[String],
        as_voter: bool,
        timeout: Duration,
    ) -> Result<(), StoreError> {
        if self.inner.raft.is_initialized().await.map_err(fatal)? {
            return Ok(());
        }
        if via.is_empty() {
            return Err(StoreError::InvalidRequest(
                "no address to join the cluster through".into(),
            ));
        }
        let deadline = Instant::now() + timeout;
        let request = || {
            let (id, addr) = (self.inner.id, self.inner.config.advertise_addr.clone());
            if as_voter {
                RaftRequest::AddMember { id, addr }
            } else {
                RaftRequest::AddLearner { id, addr }
            }
        };
        // A list that names this node too (a Kubernetes headless Service does) moves past it.
        let mut attempt = 0usize;
        let mut target = via[0].clone();
        loop {
            match self.inner.transport.request(0, &target, request()).await {
                Ok(RaftResponse::MemberAdded) => return Ok(()),
                Ok(RaftResponse::Error(RemoteError::NotLeader {
                    leader_addr: Some(addr),
                    ..
                })) => {
                    target = addr;
                    continue;
                }
                Ok(other) => {
                    tracing::info!(via = %target, response = ?other, "join not accepted yet")
                }
                Err(e) => {
                    tracing::info!(via = %target, error = %e, "cannot reach the cluster to join")
                }
            }
            if Instant::now() >= deadline {
                return Err(StoreError::Timeout(timeout.as_millis() as u64));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            attempt += 1;
            target = via[attempt % via.len()].clone();
        }
    }

    /// Waits until this node knows a leader and has applied what that leader committed.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), StoreError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.inner.raft.current_leader().await.is_some() && self.read_barrier().await.is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StoreError::Timeout(timeout.as_millis() as u64));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn revision(&self) -> Revision {
        self.inner.shared.revision()
    }

    pub async fn get(&self, key: &[u8], consistency: Consistency) -> Result<GetResult, StoreError> {
        if consistency == Consistency::Linearizable {
            self.read_barrier().await?;
        }
        let revision = self.revision();
        let kv = state::get(self.inner.engine.as_ref(), key)?;
        Ok(GetResult { kv, revision })
    }

    /// A key as this node has applied it, read at once (no barrier): for readers that cannot
    /// wait and may see a value a few milliseconds old.
    pub fn get_local(&self, key: &[u8]) -> Result<GetResult, StoreError> {
        let revision = self.revision();
        let kv = state::get(self.inner.engine.as_ref(), key)?;
        Ok(GetResult { kv, revision })
    }

    pub async fn range(
        &self,
        request: RangeRequest,
        consistency: Consistency,
    ) -> Result<RangeResult, StoreError> {
        if consistency == Consistency::Linearizable {
            self.read_barrier().await?;
        }
        let revision = self.revision();
        let fetch = request.limit.saturating_add(1);
        let mut kvs = state::range(
            self.inner.engine.as_ref(),
            &request.prefix,
            request.start_after.as_deref(),
            fetch,
        )?;
        let more = kvs.len() > request.limit;
        kvs.truncate(request.limit);
        Ok(RangeResult {
            kvs,
            more,
            revision,
        })
    }

    pub async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        self.check_txn(&txn)?;
        match self.write(Command::Txn(txn)).await? {
            CommandResult::Txn(result) => Ok(result),
            CommandResult::Rejected { error, .. } => Err(error.into()),
            other => Err(StoreError::Storage(format!("unexpected result {other:?}"))),
        }
    }

    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<TxnResult, StoreError> {
        self.txn(Txn::ops([crate::types::Op::put(key, value)]))
            .await
    }

    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<TxnResult, StoreError> {
        self.txn(Txn::ops([crate::types::Op::delete(key)])).await
    }

    fn check_txn(&self, txn: &Txn) -> Result<(), StoreError> {
        let limits = &self.inner.config;
        let ops = txn.compares.len() + txn.success.len() + txn.failure.len();
        if ops > limits.max_txn_ops {
            return Err(StoreError::TooLarge {
                what: "transaction",
                size: ops,
                limit: limits.max_txn_ops,
            });
        }
        let keys =
            txn.compares
                .iter()
                .map(|c| &c.key)
                .chain(txn.success.iter().chain(&txn.failure).map(|op| match op {
                    crate::types::Op::Put { key, .. } | crate::types::Op::Delete { key } => key,
                    crate::types::Op::DeleteRange { start, .. } => start,
                }));
        for key in keys {
            if key.len() > limits.max_key_size {
                return Err(StoreError::TooLarge {
                    what: "key",
                    size: key.len(),
                    limit: limits.max_key_size,
                });
            }
        }
        for op in txn.success.iter().chain(&txn.failure) {
            if let crate::types::Op::Put { value, .. } = op
                && value.len() > limits.max_value_size
            {
                return Err(StoreError::TooLarge {
                    what: "value",
                    size: value.len(),
                    limit: limits.max_value_size,
                });
            }
        }
        Ok(())
    }

    /// Grants a lease; keys put with it are deleted when it expires or is revoked.
    pub async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let ttl_ms = ttl.as_millis().max(1) as u64;
        loop {
            let id = crate::runtime::random_u64() >> 1;
            if id == 0 {
                continue;
            }
            match self.write(Command::LeaseGrant { id, ttl_ms }).await? {
                CommandResult::LeaseGranted { id, .. } => return Ok(id),
                CommandResult::Rejected {
                    error: crate::types::CommandError::LeaseExists(_),
                    ..
                } => {
                    continue;
                }
                CommandResult::Rejected { error, .. } => return Err(error.into()),
                other => return Err(StoreError::Storage(format!("unexpected result {other:?}"))),
            }
        }
    }

    /// Restarts the lease's TTL; returns the TTL.
    pub async fn lease_keep_alive(&self, id: LeaseId) -> Result<Duration, StoreError> {
        let mut last_error = StoreError::NotLeader {
            leader: None,
            leader_addr: None,
        };
        for _ in 0..3 {
            if self.inner.raft.is_leader() {
                return self.inner.keep_alive_local(id).map(Duration::from_millis);
            }
            match self
                .forward_to_leader(RaftRequest::LeaseKeepAlive(id))
                .await
            {
                Ok(RaftResponse::LeaseKeepAlive { ttl_ms }) => {
                    return Ok(Duration::from_millis(ttl_ms));
                }
                Ok(RaftResponse::Error(RemoteError::LeaseNotFound(id))) => {
                    return Err(StoreError::LeaseNotFound(id));
                }
                Ok(other) => last_error = StoreError::Unavailable(format!("{other:?}")),
                Err(e) => last_error = e,
            }
            tokio::time::sleep(self.inner.config.heartbeat_interval).await;
        }
        Err(last_error)
    }

    pub async fn lease_revoke(&self, id: LeaseId) -> Result<u64, StoreError> {
        match self
            .write(Command::LeaseRevoke { id, expired: false })
            .await?
        {
            CommandResult::LeaseRevoked { deleted, .. } => Ok(deleted),
            CommandResult::Rejected { error, .. } => Err(error.into()),
            other => Err(StoreError::Storage(format!("unexpected result {other:?}"))),
        }
    }

    /// Drops watch history below `revision`.
    pub async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        match self.write(Command::Compact { revision }).await? {
            CommandResult::Rejected { error, .. } => Err(error.into()),
            _ => Ok(()),
        }
    }

    /// An ordered stream of the changes under `prefix`, starting at `from_revision`
    /// (`None`: only changes after now).
    pub fn watch(
        &self,
        prefix: impl Into<Vec<u8>>,
        from_revision: Option<Revision>,
    ) -> Result<WatchStream, StoreError> {
        let receiver = self.inner.shared.notices.subscribe();
        let next = from_revision.unwrap_or_else(|| self.revision() + 1);
        let compacted = self.inner.shared.compacted.load(Ordering::Acquire);
        if next < compacted {
            return Err(StoreError::Compacted {
                requested: next,
                compacted,
            });
        }
        self.inner.metrics.watchers.inc();
        Ok(WatchStream {
            inner: self.inner.clone(),
            prefix: prefix.into(),
            next,
            receiver,
            backlog: std::collections::VecDeque::new(),
            replay: true,
        })
    }

    /// Proposes a command, forwarding it to the leader when this node is not.
    async fn write(&self, command: Command) -> Result<CommandResult, StoreError> {
        let timeout = self.inner.config.request_timeout;
        let started = Instant::now();
        match tokio::time::timeout(timeout, self.write_inner(command)).await {
            Ok(result) => {
                let outcome = if result.is_ok() { "ok" } else { "error" };
                if result.is_ok() {
                    self.inner
                        .metrics
                        .proposal_seconds
                        .observe(started.elapsed().as_secs_f64());
                }
                self.inner
                    .metrics
                    .proposals
                    .with_label_values(&[outcome])
                    .inc();
                result
            }
            Err(_) => {
                self.inner
                    .metrics
                    .proposals
                    .with_label_values(&["timeout"])
                    .inc();
                Err(StoreError::Timeout(timeout.as_millis() as u64))
            }
        }
    }

    async fn write_inner(&self, command: Command) -> Result<CommandResult, StoreError> {
        loop {
            match self.inner.raft.client_write(command.clone()).await {
                Ok(response) => return Ok(response.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                    let Some(leader) = forward.leader_id else {
                        // An election is under way; the caller's timeout bounds the wait.
                        tokio::time::sleep(self.inner.config.heartbeat_interval).await;
                        continue;
                    };
                    let addr = forward.leader_node.map(|n| n.addr).unwrap_or_default();
                    self.inner.metrics.forwarded.inc();
                    match self
                        .inner
                        .transport
                        .request(leader, &addr, RaftRequest::Forward(command.clone()))
                        .await
                    {
                        Ok(RaftResponse::Forward(result)) => return Ok(result),
                        // Refused or never sent: trying again cannot apply it twice.
                        Ok(RaftResponse::Error(RemoteError::NotLeader { .. }))
                        | Err(TransportError::Unreachable(..)) => {
                            tokio::time::sleep(self.inner.config.heartbeat_interval).await;
                            continue;
                        }
                        // Sent, but no answer: it may have been applied, so it is not resent.
                        Err(e) => return Err(StoreError::OutcomeUnknown(e.to_string())),
                        Ok(RaftResponse::Error(e)) => {
                            return Err(StoreError::Unavailable(e.to_string()));
                        }
                        Ok(other) => {
                            return Err(StoreError::Unavailable(format!(
                                "unexpected response {other:?}"
                            )));
                        }
                    }
                }
                Err(RaftError::APIError(e)) => {
                    return Err(StoreError::InvalidRequest(e.to_string()));
                }
                Err(RaftError::Fatal(e)) => {
                    return Err(match e {
                        openraft::error::Fatal::Stopped => StoreError::Shutdown,
                        other => StoreError::Storage(other.to_string()),
                    });
                }
            }
        }
    }

    async fn forward_to_leader(&self, request: RaftRequest) -> Result<RaftResponse, StoreError> {
        let metrics = self.inner.raft.metrics().borrow_watched().clone();
        let Some(leader) = metrics.current_leader else {
            return Err(StoreError::NotLeader {
                leader: None,
                leader_addr: None,
            });
        };
        let addr = metrics
            .membership_config
            .get_node(&leader)
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        self.inner
            .transport
            .request(leader, &addr, request)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// Returns once this node's state reflects every write committed before the call.
    pub async fn read_barrier(&self) -> Result<(), StoreError> {
        let timeout = self.inner.config.request_timeout;
        match tokio::time::timeout(timeout, self.read_barrier_inner()).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(timeout.as_millis() as u64)),
        }
    }

    async fn read_barrier_inner(&self) -> Result<(), StoreError> {
        loop {
            if self.inner.raft.is_leader() {
                match self
                    .inner
                    .raft
                    .ensure_linearizable(ReadPolicy::ReadIndex)
                    .await
                {
                    Ok(_) => return Ok(()),
                    Err(RaftError::Fatal(e)) => return Err(fatal(e)),
                    Err(RaftError::APIError(_)) => {}
                }
            } else {
                if let Ok(RaftResponse::ReadIndex(index)) =
                    self.forward_to_leader(RaftRequest::ReadIndex).await
                {
                    let mut progress = self.inner.shared.progress.subscribe();
                    let reached = progress.wait_for(|p| p.applied_index >= index).await;
                    if reached.is_ok() {
                        return Ok(());
                    }
                    return Err(StoreError::Shutdown);
                }
            }
            tokio::time::sleep(self.inner.config.heartbeat_interval).await;
        }
    }

    /// Adds `id` as a learner that receives the log but does not vote. Re-issuing it for a
    /// member with the same address changes nothing.
    pub async fn add_learner(&self, id: NodeId, addr: String) -> Result<(), StoreError> {
        let membership = self.membership();
        if membership.get_node(&id).is_some_and(|n| n.addr == addr) {
            return Ok(());
        }
        self.change(|raft| async move {
            raft.add_learner(id, BasicNode { addr }, true)
                .await
                .map(|_| ())
        })
        .await
    }

    /// Makes a learner a voter.
    pub async fn promote(&self, id: NodeId) -> Result<(), StoreError> {
        let membership = self.membership();
        if membership.voter_ids().any(|v| v == id) {
            return Ok(());
        }
        if membership.get_node(&id).is_none() {
            return Err(StoreError::InvalidRequest(format!(
                "node {id} is not a member; add it as a learner first"
            )));
        }
        self.change(|raft| async move {
            raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map(|_| ())
        })
        .await
    }

    /// Makes a voter a learner: it replicates on, without a vote.
    pub async fn demote(&self, id: NodeId) -> Result<(), StoreError> {
        let membership = self.membership();
        if membership.get_node(&id).is_none() {
            return Err(StoreError::InvalidRequest(format!(
                "node {id} is not a member"
            )));
        }
        if !membership.voter_ids().any(|v| v == id) {
            return Ok(());
        }
        if membership.voter_ids().count() == 1 {
            return Err(StoreError::InvalidRequest(format!(
                "node {id} is the only voter"
            )));
        }
        self.change(|raft| async move {
            raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), true)
                .await
                .map(|_| ())
        })
        .await
    }

    /// Removes `id` from the cluster, voter or learner.
    pub async fn remove(&self, id: NodeId) -> Result<(), StoreError> {
        let membership = self.membership();
        if membership.get_node(&id).is_none() {
            return Ok(());
        }
        // One change either way: a voter leaves with its node entry (no retaining as a
        // learner). A second change would reach a leader that has just removed itself and is
        // no longer allowed to append a membership.
        let change = if membership.voter_ids().any(|v| v == id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.change(|raft| async move { raft.change_membership(change, false).await.map(|_| ()) })
            .await
    }

    /// Asks the leader to hand leadership to `to` and waits until it has.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), StoreError> {
        let membership = self.membership();
        if !membership.voter_ids().any(|v| v == to) {
            return Err(StoreError::InvalidRequest(format!(
                "node {to} is not a voter"
            )));
        }
        let deadline = Instant::now() + self.inner.config.request_timeout;
        loop {
            let leader = self.inner.raft.current_leader().await;
            if leader == Some(to) {
                return Ok(());
            }
            if self.inner.raft.is_leader() {
                self.inner
                    .raft
                    .trigger()
                    .transfer_leader(to)
                    .await
                    .map_err(fatal)?;
            } else if leader.is_some() {
                return Err(self.not_leader(leader));
            }
            if Instant::now() >= deadline {
                return Err(StoreError::Timeout(
                    self.inner.config.request_timeout.as_millis() as u64,
                ));
            }
            tokio::time::sleep(self.inner.config.heartbeat_interval).await;
        }
    }

    fn membership(&self) -> Arc<openraft::type_config::alias::StoredMembershipOf<TypeConfig>> {
        self.inner
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone()
    }

    /// "Not the leader", with the leader's peer address when this node knows it.
    fn not_leader(&self, leader: Option<NodeId>) -> StoreError {
        let leader_addr =
            leader.and_then(|l| self.membership().get_node(&l).map(|n| n.addr.clone()));
        StoreError::NotLeader {
            leader,
            leader_addr,
        }
    }

    async fn change<F, Fut>(&self, op: F) -> Result<(), StoreError>
    where
        F: FnOnce(Raft) -> Fut,
        Fut: std::future::Future<
                Output = Result<(), RaftError<TypeConfig, ClientWriteError<TypeConfig>>>,
            >,
    {
        if !self.inner.raft.is_leader() {
            return Err(self.not_leader(self.inner.raft.current_leader().await));
        }
        // A leader that is not a voter of the newest configuration (it removed itself, or it
        // was elected from the outgoing half of a joint one) leads on only until it hands
        // over, and may not start or finish a change: it hands over to a voter that stays.
        let membership = self.membership();
        let staying = membership.membership().get_joint_config().last().cloned();
        if let Some(staying) = staying
            && !staying.contains(&self.inner.id)
        {
            let successor = staying.first().copied();
            if let Some(to) = successor {
                let _ = self.inner.raft.trigger().transfer_leader(to).await;
            }
            return Err(self.not_leader(successor));
        }
        match op(self.inner.raft.clone()).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(f.into()),
            Err(RaftError::APIError(e)) => Err(StoreError::InvalidRequest(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(fatal(e)),
        }
    }

    pub fn status(&self) -> NodeStatus {
        let metrics = self.inner.raft.metrics().borrow_watched().clone();
        let last_log_index = metrics.last_log_index.unwrap_or(0);
        let replication = metrics.replication.clone().unwrap_or_default();
        let membership = metrics.membership_config.clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let match_index = replication
                    .get(id)
                    .map(|m| m.as_ref().map_or(0, |l| l.index));
                MemberStatus {
                    id: *id,
                    addr: node.addr.clone(),
                    voter: voters.contains(id),
                    match_index,
                    lag: match_index.map(|m| last_log_index.saturating_sub(m)),
                }
            })
            .collect();
        let progress = *self.inner.shared.progress.borrow();
        NodeStatus {
            id: self.inner.id,
            role: role_name(metrics.state).to_string(),
            term: metrics.current_term,
            leader: metrics.current_leader,
            last_log_index,
            committed_index: metrics.cluster_committed.as_ref().map_or(0, |c| c.index),
            applied_index: progress.applied_index,
            revision: progress.revision,
            compacted_revision: self.inner.shared.compacted.load(Ordering::Acquire),
            members,
        }
    }

    pub async fn shutdown(&self) {
        for task in self.inner.tasks.lock().drain(..) {
            task.abort();
        }
        let _ = self.inner.raft.shutdown().await;
        self.inner.transport.close().await;
    }

    fn spawn_background(&self) {
        let mut tasks = self.inner.tasks.lock();
        tasks.push(tokio::spawn(publish_metrics(Arc::downgrade(&self.inner))));
        tasks.push(tokio::spawn(expire_leases(Arc::downgrade(&self.inner))));
        tasks.push(tokio::spawn(compact_history(Arc::downgrade(&self.inner))));
    }
}

impl Inner {
    fn keep_alive_local(&self, id: LeaseId) -> Result<u64, StoreError> {
        let mut leases = self.shared.leases.lock();
        match leases.get_mut(&id) {
            Some(lease) => {
                lease.deadline = Instant::now() + lease.ttl;
                Ok(lease.ttl.as_millis() as u64)
            }
            None => Err(StoreError::LeaseNotFound(id)),
        }
    }

    /// A new leader does not know when leases were last kept alive: like etcd, it gives each
    /// a full TTL from now.
    fn reload_leases(&self) -> Result<(), StoreError> {
        let now = Instant::now();
        let stored = state::leases(self.engine.as_ref())?;
        let mut leases = self.shared.leases.lock();
        leases.clear();
        for lease in stored {
            let ttl = Duration::from_millis(lease.ttl_ms);
            leases.insert(
                lease.id,
                LeaseClock {
                    ttl,
                    deadline: now + ttl,
                },
            );
        }
        Ok(())
    }
}

async fn publish_metrics(inner: std::sync::Weak<Inner>) {
    let Some(strong) = inner.upgrade() else {
        return;
    };
    let mut rx = strong.raft.metrics();
    drop(strong);
    loop {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let m = rx.borrow_and_update().clone();
        let metrics = &inner.metrics;
        metrics.term.set(m.current_term as i64);
        let leader = m.current_leader.unwrap_or(0) as i64;
        if metrics.leader.get() != leader {
            metrics.leader_changes.inc();
        }
        metrics.leader.set(leader);
        for state in [
            ServerState::Leader,
            ServerState::Follower,
            ServerState::Candidate,
            ServerState::Learner,
        ] {
            metrics
                .role
                .with_label_values(&[role_name(state)])
                .set(i64::from(m.state == state));
        }
        let last = m.last_log_index.unwrap_or(0);
        metrics.last_log_index.set(last as i64);
        metrics
            .committed_index
            .set(m.cluster_committed.as_ref().map_or(0, |c| c.index) as i64);
        metrics.member_match_index.reset();
        metrics.member_lag.reset();
        if let Some(replication) = &m.replication {
            for (id, matched) in replication {
                let index = matched.as_ref().map_or(0, |l| l.index);
                let label = id.to_string();
                metrics
                    .member_match_index
                    .with_label_values(&[&label])
                    .set(index as i64);
                metrics
                    .member_lag
                    .with_label_values(&[&label])
                    .set(last.saturating_sub(index) as i64);
            }
        }
        drop(inner);
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn expire_leases(inner: std::sync::Weak<Inner>) {
    let mut was_leader = false;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let leader = inner.raft.is_leader();
        if leader && !was_leader && inner.reload_leases().is_err() {
            continue;
        }
        was_leader = leader;
        if !leader {
            continue;
        }
        let now = Instant::now();
        let expired: Vec<LeaseId> = {
            let leases = inner.shared.leases.lock();
            inner.metrics.leases.set(leases.len() as i64);
            leases
                .iter()
                .filter(|(_, l)| l.deadline <= now)
                .map(|(id, _)| *id)
                .collect()
        };
        for id in expired {
            let command = Command::LeaseRevoke { id, expired: true };
            if let Ok(response) = inner.raft.client_write(command).await {
                inner.shared.leases.lock().remove(&id);
                if matches!(response.data, CommandResult::LeaseRevoked { .. }) {
                    inner.metrics.leases_expired.inc();
                }
            }
        }
    }
}

async fn compact_history(inner: std::sync::Weak<Inner>) {
    let interval = match inner.upgrade() {
        Some(inner) => inner.config.compaction_interval,
        None => return,
    };
    loop {
        tokio::time::sleep(interval).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if !inner.raft.is_leader() {
            continue;
        }
        let revision = inner.shared.revision();
        let target = revision.saturating_sub(inner.config.history_revisions);
        if target > inner.shared.compacted.load(Ordering::Acquire) {
            let _ = inner
                .raft
                .client_write(Command::Compact { revision: target })
                .await;
        }
    }
}

/// A [`RaftService`] that does not keep its store alive.
#[derive(Clone)]
pub struct WeakRaftService {
    inner: std::sync::Weak<Inner>,
}

impl WeakRaftService {
    pub fn upgrade(&self) -> Option<RaftService> {
        self.inner.upgrade().map(|inner| RaftService { inner })
    }
}

impl RaftService {
    /// Transports that live inside the store they serve hold this, so that dropping the
    /// store closes its engine.
    pub fn downgrade(&self) -> WeakRaftService {
        WeakRaftService {
            inner: Arc::downgrade(&self.inner),
        }
    }

    pub async fn handle(&self, request: RaftRequest) -> RaftResponse {
        let raft = &self.inner.raft;
        let failed =
            |e: &dyn std::fmt::Display| RaftResponse::Error(RemoteError::Failed(e.to_string()));
        match request {
            RaftRequest::AppendEntries(rpc) => match raft.append_entries(rpc).await {
                Ok(r) => RaftResponse::AppendEntries(r),
                Err(e) => failed(&e),
            },
            RaftRequest::Vote(rpc) => match raft.vote(rpc).await {
                Ok(r) => RaftResponse::Vote(r),
                Err(e) => failed(&e),
            },
            RaftRequest::PreVote(rpc) => match raft.pre_vote(rpc).await {
                Ok(r) => RaftResponse::Vote(r),
                Err(e) => failed(&e),
            },
            RaftRequest::TransferLeader(rpc) => match raft.handle_transfer_leader(rpc).await {
                Ok(r) => RaftResponse::TransferLeader(r),
                Err(e) => failed(&e),
            },
            RaftRequest::Forward(command) => match raft.client_write(command).await {
                Ok(r) => RaftResponse::Forward(r.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    RaftResponse::Error(StoreError::from(f).into_remote())
                }
                Err(e) => failed(&e),
            },
            RaftRequest::ReadIndex => match raft.get_read_linearizer(ReadPolicy::ReadIndex).await {
                Ok(linearizer) => RaftResponse::ReadIndex(linearizer.read_log_id().index()),
                Err(RaftError::APIError(
                    openraft::error::LinearizableReadError::ForwardToLeader(f),
                )) => RaftResponse::Error(StoreError::from(f).into_remote()),
                Err(e) => failed(&e),
            },
            RaftRequest::AddMember { id, addr } => {
                let store = Store {
                    inner: self.inner.clone(),
                };
                let added = match store.add_learner(id, addr).await {
                    Ok(()) => store.promote(id).await,
                    Err(e) => Err(e),
                };
                match added {
                    Ok(()) => RaftResponse::MemberAdded,
                    Err(e) => RaftResponse::Error(e.into_remote()),
                }
            }
            RaftRequest::AddLearner { id, addr } => {
                let store = Store {
                    inner: self.inner.clone(),
                };
                let added = store.add_learner(id, addr).await;
                match added {
                    Ok(()) => RaftResponse::MemberAdded,
                    Err(e) => RaftResponse::Error(e.into_remote()),
                }
            }
            RaftRequest::LeaseKeepAlive(id) => {
                if !raft.is_leader() {
                    return RaftResponse::Error(RemoteError::NotLeader {
                        leader: raft.current_leader().await,
                        leader_addr: None,
                    });
                }
                match self.inner.keep_alive_local(id) {
                    Ok(ttl_ms) => RaftResponse::LeaseKeepAlive { ttl_ms },
                    Err(_) => RaftResponse::Error(RemoteError::LeaseNotFound(id)),
                }
            }
        }
    }

    /// Where a transport spools an incoming snapshot before installing it.
    pub fn snapshot_spool_path(&self) -> PathBuf {
        let n = crate::runtime::random_u64();
        self.inner
            .config
            .snapshot_dir
            .join(format!("recv-{n:016x}.part"))
    }

    pub async fn install_snapshot(
        &self,
        vote: Vote,
        meta: SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> Result<openraft::raft::SnapshotResponse<TypeConfig>, RemoteError> {
        self.inner
            .raft
            .install_full_snapshot(vote, openraft::Snapshot { meta, snapshot })
            .await
            .map_err(|e| RemoteError::Failed(e.to_string()))
    }
}

/// Changes under a prefix, in revision order, without gaps or repeats.
pub struct WatchStream {
    inner: Arc<Inner>,
    prefix: Vec<u8>,
    next: Revision,
    receiver: broadcast::Receiver<Notice>,
    backlog: std::collections::VecDeque<RevisionEvents>,
    /// Stored history must be read before live notices are trusted.
    replay: bool,
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.inner.metrics.watchers.dec();
    }
}

impl WatchStream {
    fn filter(&self, rev: &RevisionEvents) -> Option<RevisionEvents> {
        let events: Vec<_> = rev
            .events
            .iter()
            .filter(|e| e.kv.key.starts_with(&self.prefix))
            .cloned()
            .collect();
        (!events.is_empty()).then_some(RevisionEvents {
            revision: rev.revision,
            events,
        })
    }

    /// Reads the next batch of history the watcher has not seen.
    fn replay_history(&mut self) -> Result<(), StoreError> {
        let compacted = self.inner.shared.compacted.load(Ordering::Acquire);
        if self.next < compacted {
            return Err(StoreError::Compacted {
                requested: self.next,
                compacted,
            });
        }
        let current = self.inner.shared.revision();
        let batch = state::history(self.inner.engine.as_ref(), self.next, current, REPLAY_BATCH)?;
        let full = batch.len() == REPLAY_BATCH;
        let last = batch.last().map(|rev| rev.revision);
        for rev in batch {
            if let Some(filtered) = self.filter(&rev) {
                self.backlog.push_back(filtered);
            }
        }
        match last {
            // More history than one batch: the rest is read once this batch is consumed.
            Some(last) if full && last < current => self.next = last + 1,
            _ => {
                self.next = self.next.max(current + 1);
                self.replay = false;
            }
        }
        Ok(())
    }

    /// The next revision with changes under the prefix; `None` once the store shuts down.
    pub async fn next(&mut self) -> Option<Result<RevisionEvents, StoreError>> {
        loop {
            if let Some(rev) = self.backlog.pop_front() {
                return Some(Ok(rev));
            }
            if self.replay {
                if let Err(e) = self.replay_history() {
                    return Some(Err(e));
                }
                continue;
            }
            match self.receiver.recv().await {
                Ok(Notice::Applied(rev)) => {
                    if rev.revision < self.next {
                        continue;
                    }
                    self.next = rev.revision + 1;
                    if let Some(filtered) = self.filter(&rev) {
                        return Some(Ok(filtered));
                    }
                }
                Ok(Notice::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.replay = true;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
