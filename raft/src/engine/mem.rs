//! An in-memory engine for tests and simulation that models a disk: writes become durable
//! only at `sync`, and a simulated crash drops whatever was not synced.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::{BatchOp, Cf, EngineError, KvEngine, Pair, PairSink, WriteBatch};

type Tables = [BTreeMap<Vec<u8>, Vec<u8>>; 3];

#[derive(Default)]
struct Disk {
    visible: Tables,
    durable: Tables,
    unsynced: Vec<WriteBatch>,
    syncs: u64,
    sync_delay: Option<Duration>,
}

#[derive(Clone, Default)]
pub struct MemEngine {
    disk: Arc<Mutex<Disk>>,
}

impl std::fmt::Debug for MemEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemEngine").finish_non_exhaustive()
    }
}

fn apply(tables: &mut Tables, batch: &WriteBatch) {
    for op in &batch.ops {
        match op {
            BatchOp::Put(cf, k, v) => {
                tables[cf.index()].insert(k.clone(), v.clone());
            }
            BatchOp::Delete(cf, k) => {
                tables[cf.index()].remove(k);
            }
            BatchOp::DeleteRange(cf, start, end) => {
                if start >= end {
                    continue;
                }
                let table = &mut tables[cf.index()];
                let doomed: Vec<Vec<u8>> = table
                    .range::<[u8], _>((Bound::Included(&start[..]), Bound::Excluded(&end[..])))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in doomed {
                    table.remove(&k);
                }
            }
        }
    }
}

fn scan_table(
    table: &BTreeMap<Vec<u8>, Vec<u8>>,
    start: &[u8],
    end: Option<&[u8]>,
    limit: usize,
) -> Vec<Pair> {
    let upper = match end {
        Some(end) if end <= start => return Vec::new(),
        Some(end) => Bound::Excluded(end),
        None => Bound::Unbounded,
    };
    table
        .range::<[u8], _>((Bound::Included(start), upper))
        .take(limit)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl MemEngine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Loses every write not yet synced, as a power cut would.
    pub fn crash(&self) {
        let mut disk = self.disk.lock();
        disk.visible = disk.durable.clone();
        disk.unsynced.clear();
    }

    pub fn set_sync_delay(&self, delay: Option<Duration>) {
        self.disk.lock().sync_delay = delay;
    }

    pub fn sync_count(&self) -> u64 {
        self.disk.lock().syncs
    }

    pub fn unsynced_batches(&self) -> usize {
        self.disk.lock().unsynced.len()
    }
}

impl KvEngine for MemEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.disk.lock().visible[cf.index()].get(key).cloned())
    }

    fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Pair>, EngineError> {
        Ok(scan_table(
            &self.disk.lock().visible[cf.index()],
            start,
            end,
            limit,
        ))
    }

    fn last(&self, cf: Cf) -> Result<Option<Pair>, EngineError> {
        Ok(self.disk.lock().visible[cf.index()]
            .last_key_value()
            .map(|(k, v)| (k.clone(), v.clone())))
    }

    fn write(&self, batch: WriteBatch) -> Result<(), EngineError> {
        let mut disk = self.disk.lock();
        apply(&mut disk.visible, &batch);
        disk.unsynced.push(batch);
        Ok(())
    }

    fn sync(&self) -> Result<(), EngineError> {
        let mut disk = self.disk.lock();
        let pending = std::mem::take(&mut disk.unsynced);
        for batch in &pending {
            apply(&mut disk.durable, batch);
        }
        disk.syncs += 1;
        Ok(())
    }

    fn for_each_consistent(&self, cf: Cf, sink: &mut PairSink<'_>) -> Result<(), EngineError> {
        let table = self.disk.lock().visible[cf.index()].clone();
        for (k, v) in &table {
            sink(k, v)?;
        }
        Ok(())
    }

    fn sync_delay(&self) -> Option<Duration> {
        self.disk.lock().sync_delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_synced_writes_and_drops_the_rest() {
        let engine = MemEngine::new();
        let mut batch = WriteBatch::new();
        batch.put(Cf::State, b"a".to_vec(), b"1".to_vec());
        engine.write(batch).unwrap();
        engine.sync().unwrap();
        let mut batch = WriteBatch::new();
        batch.put(Cf::State, b"b".to_vec(), b"2".to_vec());
        batch.delete(Cf::State, b"a".to_vec());
        engine.write(batch).unwrap();
        assert_eq!(engine.get(Cf::State, b"a").unwrap(), None);
        engine.crash();
        assert_eq!(engine.get(Cf::State, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(engine.get(Cf::State, b"b").unwrap(), None);
    }

    #[test]
    fn delete_range_and_scan_bounds() {
        let engine = MemEngine::new();
        let mut batch = WriteBatch::new();
        for k in [b"a1", b"a2", b"b1", b"b2"] {
            batch.put(Cf::Log, k.to_vec(), b"v".to_vec());
        }
        batch.delete_range(Cf::Log, b"a2".to_vec(), b"b2".to_vec());
        engine.write(batch).unwrap();
        let keys: Vec<_> = engine
            .scan(Cf::Log, b"", None, 10)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![b"a1".to_vec(), b"b2".to_vec()]);
        assert_eq!(engine.scan(Cf::Log, b"a", Some(b"b"), 10).unwrap().len(), 1);
        assert_eq!(
            engine.last(Cf::Log).unwrap().map(|(k, _)| k),
            Some(b"b2".to_vec())
        );
    }
}
