//! The replicated commands, their results and the openraft type configuration.

use serde::{Deserialize, Serialize};

use crate::runtime::HalyardRuntime;

pub type NodeId = u64;
pub type LeaseId = u64;
pub type Revision = u64;

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        AsyncRuntime = HalyardRuntime,
);

pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type SnapshotResponse = openraft::raft::SnapshotResponse<TypeConfig>;

/// A key with its bookkeeping, as stored and as returned to readers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    /// Puts since the key was (re)created; 1 after the first put.
    pub version: u64,
    pub lease: Option<LeaseId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Value(Vec<u8>),
    /// 0 when the key does not exist.
    Version(u64),
    /// 0 when the key does not exist.
    ModRevision(Revision),
    /// 0 when the key does not exist.
    CreateRevision(Revision),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: Vec<u8>,
    pub op: CompareOp,
    pub target: CompareTarget,
}

impl Compare {
    pub fn exists(key: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            op: CompareOp::Greater,
            target: CompareTarget::Version(0),
        }
    }

    pub fn absent(key: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            op: CompareOp::Equal,
            target: CompareTarget::Version(0),
        }
    }

    pub fn value_equals(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            op: CompareOp::Equal,
            target: CompareTarget::Value(value.into()),
        }
    }

    pub fn mod_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: Revision) -> Self {
        Self {
            key: key.into(),
            op,
            target: CompareTarget::ModRevision(revision),
        }
    }

    pub fn version(key: impl Into<Vec<u8>>, op: CompareOp, version: u64) -> Self {
        Self {
            key: key.into(),
            op,
            target: CompareTarget::Version(version),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Deletes every key in `[start, end)`; no `end` means up to the last key.
    DeleteRange {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
    },
}

impl Op {
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }

    pub fn put_with_lease(
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: LeaseId,
    ) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: Some(lease),
        }
    }

    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        Op::Delete { key: key.into() }
    }

    pub fn delete_prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let start = prefix.into();
        let end = crate::engine::prefix_end(&start);
        Op::DeleteRange { start, end }
    }
}

/// Compare-and-swap over several keys, applied atomically at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.compares.extend(compares);
        self
    }

    pub fn and_then(mut self, ops: impl IntoIterator<Item = Op>) -> Self {
        self.success.extend(ops);
        self
    }

    pub fn or_else(mut self, ops: impl IntoIterator<Item = Op>) -> Self {
        self.failure.extend(ops);
        self
    }

    /// Unconditional writes.
    pub fn ops(ops: impl IntoIterator<Item = Op>) -> Self {
        Self::new().and_then(ops)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    Put { prev: Option<KeyValue> },
    Delete { deleted: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResult {
    pub succeeded: bool,
    /// The revision this transaction produced.
    pub revision: Revision,
    pub results: Vec<OpResult>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    /// For a delete, the key with an empty value and the deleting revision as `mod_revision`.
    pub kv: KeyValue,
}

/// What the log carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Txn(Txn),
    LeaseGrant {
        id: LeaseId,
        ttl_ms: u64,
    },
    /// `expired` marks a revoke the leader proposed because the lease ran out.
    LeaseRevoke {
        id: LeaseId,
        expired: bool,
    },
    /// Drops watch history below `revision`.
    Compact {
        revision: Revision,
    },
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Txn(t) => write!(
                f,
                "txn({} compares, {} success ops, {} failure ops)",
                t.compares.len(),
                t.success.len(),
                t.failure.len()
            ),
            Command::LeaseGrant { id, ttl_ms } => write!(f, "lease-grant({id:x}, {ttl_ms} ms)"),
            Command::LeaseRevoke { id, expired } => {
                write!(f, "lease-revoke({id:x}, expired: {expired})")
            }
            Command::Compact { revision } => write!(f, "compact({revision})"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandError {
    LeaseNotFound(LeaseId),
    LeaseExists(LeaseId),
    CompactFuture {
        requested: Revision,
        current: Revision,
    },
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandError::LeaseNotFound(id) => write!(f, "lease {id:x} not found"),
            CommandError::LeaseExists(id) => write!(f, "lease {id:x} already exists"),
            CommandError::CompactFuture { requested, current } => {
                write!(
                    f,
                    "cannot compact to revision {requested}: current revision is {current}"
                )
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    Txn(TxnResult),
    LeaseGranted {
        id: LeaseId,
        ttl_ms: u64,
        revision: Revision,
    },
    LeaseRevoked {
        revision: Revision,
        deleted: u64,
    },
    Compacted {
        revision: Revision,
    },
    Rejected {
        error: CommandError,
        revision: Revision,
    },
    /// Blank and membership entries.
    None {
        revision: Revision,
    },
}

impl CommandResult {
    pub fn revision(&self) -> Revision {
        match self {
            CommandResult::Txn(t) => t.revision,
            CommandResult::LeaseGranted { revision, .. }
            | CommandResult::LeaseRevoked { revision, .. }
            | CommandResult::Compacted { revision }
            | CommandResult::Rejected { revision, .. }
            | CommandResult::None { revision } => *revision,
        }
    }
}

/// The state of one applied revision, as watchers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionEvents {
    pub revision: Revision,
    pub events: Vec<Event>,
}
