//! Raft-replicated transactional key-value store: Halyard's single source of durable state.
//!
//! Every node keeps the Raft log and the applied key-value state in one [`KvEngine`]
//! (RocksDB in production). Writes are transactions proposed through Raft; each applied
//! transaction advances a cluster-wide revision, and every key remembers the revisions that
//! created and last modified it. Watches replay stored history and then follow the apply
//! loop; leases delete their keys when they lapse.

pub mod clock;
mod codec;
pub mod engine;
mod error;
pub mod local;
mod log_store;
pub mod metrics;
mod runtime;
mod snapshot;
mod state;
mod state_machine;
mod store;
pub mod transport;
mod types;

#[cfg(not(madsim))]
pub use engine::RocksEngine;
pub use engine::{Cf, KvEngine, MemEngine, WriteBatch};
pub use error::StoreError;
pub use metrics::RaftMetrics;
pub use runtime::HalyardRuntime;
pub use snapshot::SnapshotFile;
pub use state_machine::Progress;
pub use store::{
    Consistency, GetResult, MemberStatus, NodeStatus, Raft, RaftService, RangeRequest, RangeResult,
    Store, StoreConfig, WatchStream, WeakRaftService,
};
pub use transport::{RaftRequest, RaftResponse, RaftTransport, RemoteError, TransportError};
pub use types::{
    Command, CommandError, CommandResult, Compare, CompareOp, CompareTarget, Event, EventKind,
    KeyValue, LeaseId, NodeId, Op, OpResult, Revision, RevisionEvents, SnapshotMeta,
    SnapshotResponse, Txn, TxnResult, TypeConfig, Vote,
};
