//! The storage engine under the Raft log and the state machine.
//!
//! All column families share one write-ahead log, so a `sync` makes every earlier write
//! durable, whatever its column family. The log store relies on that: state-machine writes
//! are never synced on their own, they ride on the next log fsync.

mod mem;
#[cfg(not(madsim))]
mod rocks;

pub use mem::MemEngine;
#[cfg(not(madsim))]
pub use rocks::RocksEngine;

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cf {
    /// Raft log entries keyed by big-endian index.
    Log,
    /// Vote, committed index, purge point, current snapshot.
    Meta,
    /// The replicated key-value state and its bookkeeping.
    State,
}

impl Cf {
    pub const ALL: [Cf; 3] = [Cf::Log, Cf::Meta, Cf::State];

    pub fn name(self) -> &'static str {
        match self {
            Cf::Log => "log",
            Cf::Meta => "meta",
            Cf::State => "state",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Cf::Log => 0,
            Cf::Meta => 1,
            Cf::State => 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    Put(Cf, Vec<u8>, Vec<u8>),
    Delete(Cf, Vec<u8>),
    /// Deletes `[start, end)`.
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
}

/// Writes applied atomically: all or none survive a crash.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    pub(crate) ops: Vec<BatchOp>,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Put(cf, key.into(), value.into()));
    }

    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Delete(cf, key.into()));
    }

    pub fn delete_range(&mut self, cf: Cf, start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) {
        self.ops
            .push(BatchOp::DeleteRange(cf, start.into(), end.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("storage engine: {0}")]
    Backend(String),
    #[error("storage engine I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("stored record under {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
}

impl From<EngineError> for std::io::Error {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Io(io) => io,
            other => std::io::Error::other(other.to_string()),
        }
    }
}

pub type Pair = (Vec<u8>, Vec<u8>);

/// Receives the pairs of a consistent scan, one at a time.
pub type PairSink<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), EngineError> + 'a;

/// An ordered key-value store with column families and explicit durability.
pub trait KvEngine: Send + Sync + 'static {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError>;

    /// Pairs with `start <= key < end` (no upper bound when `end` is `None`), in key order,
    /// at most `limit` of them.
    fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Pair>, EngineError>;

    /// The last pair of the column family in key order.
    fn last(&self, cf: Cf) -> Result<Option<Pair>, EngineError>;

    /// Applies the batch atomically. Durable only after the next [`KvEngine::sync`].
    fn write(&self, batch: WriteBatch) -> Result<(), EngineError>;

    /// Makes every write made before the call durable.
    fn sync(&self) -> Result<(), EngineError>;

    /// Feeds every pair of `cf` as of one instant to `sink`, in key order, while writes go on.
    fn for_each_consistent(&self, cf: Cf, sink: &mut PairSink<'_>) -> Result<(), EngineError>;

    /// Extra latency of every sync; the simulation uses it for slow disks.
    fn sync_delay(&self) -> Option<Duration> {
        None
    }
}

/// The smallest key greater than every key starting with `prefix`, or `None` when the
/// prefix is all `0xff` (the range is then unbounded).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[0x61, 0xff]), Some(vec![0x62]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }
}
