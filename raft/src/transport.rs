//! How Raft nodes reach each other. The store speaks in [`RaftRequest`]s; a transport moves
//! them (in-process for tests, QUIC between real nodes) to the target's [`RaftService`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetworkV2};
use serde::{Deserialize, Serialize};

use crate::snapshot::SnapshotFile;
use crate::types::{Command, CommandResult, LeaseId, NodeId, SnapshotMeta, TypeConfig, Vote};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RaftRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    TransferLeader(TransferLeaderRequest<TypeConfig>),
    /// A client command sent to the leader by a follower.
    Forward(Command),
    /// Asks the leader for a read index: the commit index once its leadership is confirmed.
    ReadIndex,
    LeaseKeepAlive(LeaseId),
    /// A node asks to join the cluster as a voter.
    AddMember {
        id: NodeId,
        addr: String,
    },
    /// A node asks to join the cluster as a learner, to be promoted later by an operator.
    AddLearner {
        id: NodeId,
        addr: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RaftResponse {
    AppendEntries(AppendEntriesResponse<TypeConfig>),
    Vote(VoteResponse<TypeConfig>),
    TransferLeader(TransferLeaderResponse<TypeConfig>),
    Forward(CommandResult),
    ReadIndex(u64),
    LeaseKeepAlive { ttl_ms: u64 },
    MemberAdded,
    Error(RemoteError),
}

/// An error the remote node returned, in a form that crosses the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RemoteError {
    #[error("node is not the leader")]
    NotLeader {
        leader: Option<NodeId>,
        leader_addr: Option<String>,
    },
    #[error("lease {0:x} not found")]
    LeaseNotFound(LeaseId),
    #[error("remote node is shutting down")]
    Shutdown,
    #[error("remote node failed: {0}")]
    Failed(String),
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("node {0} is unreachable: {1}")]
    Unreachable(NodeId, String),
    #[error("connection to node {0} failed: {1}")]
    Network(NodeId, String),
    #[error("request to node {0} timed out")]
    Timeout(NodeId),
}

/// Moves requests and snapshots between nodes. Target 0 is whoever answers at `addr`, for a
/// node that does not know the cluster's ids yet.
pub trait RaftTransport: Send + Sync + 'static {
    fn request(
        &self,
        target: NodeId,
        addr: &str,
        request: RaftRequest,
    ) -> BoxFuture<'_, Result<RaftResponse, TransportError>>;

    /// Streams the snapshot file to `target`, which installs it once complete.
    fn send_snapshot(
        &self,
        target: NodeId,
        addr: &str,
        vote: Vote,
        meta: SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> BoxFuture<'_, Result<SnapshotResponse<TypeConfig>, TransportError>>;

    /// Releases the transport's sockets once the store has stopped.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// The openraft side: one client per peer, all going through the store's transport.
pub struct NetworkFactory {
    pub(crate) transport: Arc<dyn RaftTransport>,
}

pub struct PeerClient {
    target: NodeId,
    addr: String,
    transport: Arc<dyn RaftTransport>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
            transport: self.transport.clone(),
        }
    }
}

fn rpc_error(e: TransportError) -> RPCError<TypeConfig> {
    match &e {
        TransportError::Unreachable(..) => RPCError::Unreachable(Unreachable::new(&e)),
        TransportError::Network(..) | TransportError::Timeout(_) => {
            RPCError::Network(NetworkError::new(&e))
        }
    }
}

fn unexpected(target: NodeId, response: RaftResponse) -> RPCError<TypeConfig> {
    let e = TransportError::Network(target, format!("unexpected response {response:?}"));
    RPCError::Network(NetworkError::new(&e))
}

impl PeerClient {
    async fn call(&self, request: RaftRequest) -> Result<RaftResponse, RPCError<TypeConfig>> {
        self.transport
            .request(self.target, &self.addr, request)
            .await
            .map_err(rpc_error)
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(RaftRequest::AppendEntries(rpc)).await? {
            RaftResponse::AppendEntries(r) => Ok(r),
            other => Err(unexpected(self.target, other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(RaftRequest::Vote(rpc)).await? {
            RaftResponse::Vote(r) => Ok(r),
            other => Err(unexpected(self.target, other)),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(RaftRequest::PreVote(rpc)).await? {
            RaftResponse::Vote(r) => Ok(r),
            other => Err(unexpected(self.target, other)),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(RaftRequest::TransferLeader(req)).await? {
            RaftResponse::TransferLeader(r) => Ok(r),
            other => Err(unexpected(self.target, other)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotFile>,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let send = self.transport.send_snapshot(
            self.target,
            &self.addr,
            vote,
            snapshot.meta,
            snapshot.snapshot,
        );
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            result = send => result.map_err(|e| match &e {
                TransportError::Unreachable(..) => StreamingError::Unreachable(Unreachable::new(&e)),
                _ => StreamingError::Network(NetworkError::new(&e)),
            }),
        }
    }
}
