//! The Raft log on the engine, with group commit: appends are written at once and become
//! durable together at the next fsync, which one flusher task issues for every append
//! queued behind it.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use tokio::sync::{mpsc, oneshot};

use crate::codec::{decode, encode};
use crate::engine::{Cf, EngineError, KvEngine, WriteBatch};
use crate::metrics::RaftMetrics;
use crate::types::{Entry, LogId, TypeConfig, Vote};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"purged";

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn read_meta<T: serde::de::DeserializeOwned>(
    engine: &dyn KvEngine,
    key: &[u8],
) -> Result<Option<T>, EngineError> {
    match engine.get(Cf::Meta, key)? {
        Some(bytes) => decode(key, &bytes),
        None => Ok(None),
    }
}

enum FlushRequest {
    Append(IOFlushed<TypeConfig>),
    Wait(oneshot::Sender<Result<(), io::Error>>),
}

#[derive(Clone)]
pub struct LogStore {
    engine: Arc<dyn KvEngine>,
    flusher: mpsc::UnboundedSender<FlushRequest>,
}

#[derive(Clone)]
pub struct LogReader {
    engine: Arc<dyn KvEngine>,
}

impl LogStore {
    pub fn new(engine: Arc<dyn KvEngine>, metrics: RaftMetrics) -> Self {
        let (flusher, requests) = mpsc::unbounded_channel();
        tokio::spawn(run_flusher(engine.clone(), requests, metrics));
        Self { engine, flusher }
    }

    /// Waits until every write made so far is durable, sharing the fsync of concurrent appends.
    async fn flushed(&self) -> Result<(), io::Error> {
        let (tx, rx) = oneshot::channel();
        self.flusher
            .send(FlushRequest::Wait(tx))
            .map_err(|_| io::Error::other("log flusher stopped"))?;
        rx.await
            .map_err(|_| io::Error::other("log flusher stopped"))?
    }
}

async fn run_flusher(
    engine: Arc<dyn KvEngine>,
    mut requests: mpsc::UnboundedReceiver<FlushRequest>,
    metrics: RaftMetrics,
) {
    let mut group = Vec::new();
    while let Some(first) = requests.recv().await {
        group.push(first);
        while let Ok(more) = requests.try_recv() {
            group.push(more);
        }
        if let Some(delay) = engine.sync_delay() {
            tokio::time::sleep(delay).await;
            while let Ok(more) = requests.try_recv() {
                group.push(more);
            }
        }
        let result = sync(&engine).await;
        metrics.fsyncs.inc();
        metrics.fsync_group.observe(group.len() as f64);
        for request in group.drain(..) {
            let outcome = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::other(e.to_string())),
            };
            match request {
                FlushRequest::Append(callback) => callback.io_completed(outcome),
                FlushRequest::Wait(tx) => {
                    let _ = tx.send(outcome);
                }
            }
        }
    }
}

async fn sync(engine: &Arc<dyn KvEngine>) -> Result<(), EngineError> {
    #[cfg(not(madsim))]
    {
        let engine = engine.clone();
        match tokio::task::spawn_blocking(move || engine.sync()).await {
            Ok(result) => result,
            Err(e) => Err(EngineError::Backend(format!("fsync task failed: {e}"))),
        }
    }
    #[cfg(madsim)]
    {
        engine.sync()
    }
}

fn entries_in(
    engine: &dyn KvEngine,
    range: impl RangeBounds<u64>,
) -> Result<Vec<Entry>, EngineError> {
    let start = match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(i) => Some(i.saturating_add(1)),
        Bound::Excluded(i) => Some(*i),
        Bound::Unbounded => None,
    };
    let end_key = end.map(index_key);
    engine
        .scan(
            Cf::Log,
            &index_key(start),
            end_key.as_ref().map(|k| &k[..]),
            usize::MAX,
        )?
        .into_iter()
        .map(|(k, v)| decode(&k, &v))
        .collect()
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(entries_in(self.engine.as_ref(), range)?)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(read_meta(self.engine.as_ref(), VOTE)?)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        self.get_log_reader().await.try_get_log_entries(range).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_log_reader().await.read_vote().await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let purged: Option<LogId> = read_meta(self.engine.as_ref(), PURGED)?;
        let last = match self.engine.last(Cf::Log).map_err(io::Error::from)? {
            Some((k, v)) => {
                let entry: Entry = decode(&k, &v)?;
                Some(entry.log_id)
            }
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            engine: self.engine.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let mut batch = WriteBatch::new();
        batch.put(Cf::Meta, VOTE, encode(&Some(*vote))?);
        self.engine.write(batch)?;
        self.flushed().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let mut batch = WriteBatch::new();
        batch.put(Cf::Meta, COMMITTED, encode(&committed)?);
        self.engine.write(batch)?;
        self.flushed().await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(read_meta::<LogId>(self.engine.as_ref(), COMMITTED)?)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::new();
        for entry in entries {
            batch.put(
                Cf::Log,
                index_key(entry.log_id.index).to_vec(),
                encode(&entry)?,
            );
        }
        self.engine.write(batch)?;
        self.flusher
            .send(FlushRequest::Append(callback))
            .map_err(|_| io::Error::other("log flusher stopped"))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        let mut batch = WriteBatch::new();
        batch.delete_range(
            Cf::Log,
            index_key(from).to_vec(),
            index_key(u64::MAX).to_vec(),
        );
        batch.delete(Cf::Log, index_key(u64::MAX).to_vec());
        self.engine.write(batch)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let mut batch = WriteBatch::new();
        batch.put(Cf::Meta, PURGED, encode(&Some(log_id))?);
        batch.delete_range(
            Cf::Log,
            index_key(0).to_vec(),
            index_key(log_id.index + 1).to_vec(),
        );
        self.engine.write(batch)?;
        Ok(())
    }
}
