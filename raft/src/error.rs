use crate::types::{CommandError, LeaseId, NodeId, Revision};

/// What a store operation can fail with. Nothing here is a panic in disguise: every variant
/// is a state the caller can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("this node is not the leader (leader: {})", leader.map_or("unknown".to_string(), |l| l.to_string()))]
    NotLeader {
        leader: Option<NodeId>,
        leader_addr: Option<String>,
    },
    #[error("the request did not complete within {0} ms")]
    Timeout(u64),
    #[error("revision {requested} was compacted; history starts at {compacted}")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("{what} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("lease {0:x} not found")]
    LeaseNotFound(LeaseId),
    #[error("lease {0:x} already exists")]
    LeaseExists(LeaseId),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("the request may or may not have been applied: {0}")]
    OutcomeUnknown(String),
    #[error("no quorum reachable: {0}")]
    Unavailable(String),
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("the store is shut down")]
    Shutdown,
}

impl From<CommandError> for StoreError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::LeaseNotFound(id) => StoreError::LeaseNotFound(id),
            CommandError::LeaseExists(id) => StoreError::LeaseExists(id),
            CommandError::CompactFuture { .. } => StoreError::InvalidRequest(e.to_string()),
        }
    }
}

impl From<crate::engine::EngineError> for StoreError {
    fn from(e: crate::engine::EngineError) -> Self {
        StoreError::Storage(e.to_string())
    }
}

impl From<openraft::error::ForwardToLeader<crate::types::TypeConfig>> for StoreError {
    fn from(f: openraft::error::ForwardToLeader<crate::types::TypeConfig>) -> Self {
        StoreError::NotLeader {
            leader: f.leader_id,
            leader_addr: f.leader_node.map(|n| n.addr),
        }
    }
}

impl StoreError {
    /// The error as a remote node reports it back over a transport.
    pub fn into_remote(self) -> crate::transport::RemoteError {
        use crate::transport::RemoteError;
        match self {
            StoreError::NotLeader {
                leader,
                leader_addr,
            } => RemoteError::NotLeader {
                leader,
                leader_addr,
            },
            StoreError::LeaseNotFound(id) => RemoteError::LeaseNotFound(id),
            StoreError::Shutdown => RemoteError::Shutdown,
            other => RemoteError::Failed(other.to_string()),
        }
    }
}
