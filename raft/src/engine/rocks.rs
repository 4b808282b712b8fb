//! RocksDB: one database, a column family per [`Cf`], one shared write-ahead log.

use std::path::Path;

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType, Direction, IteratorMode, Options,
    ReadOptions, WriteOptions,
};

use super::{BatchOp, Cf, EngineError, KvEngine, Pair, PairSink, WriteBatch};

pub struct RocksEngine {
    db: DB,
}

impl std::fmt::Debug for RocksEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksEngine")
            .field("path", &self.db.path())
            .finish()
    }
}

fn backend(e: rocksdb::Error) -> EngineError {
    EngineError::Backend(e.into_string())
}

impl RocksEngine {
    pub fn open(path: &Path) -> Result<Self, EngineError> {
        std::fs::create_dir_all(path)?;
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        // Durability comes from explicit WAL syncs; RocksDB's own background flushes only
        // bound memory.
        options.set_manual_wal_flush(false);
        options.set_compression_type(DBCompressionType::Lz4);
        options.increase_parallelism(2);
        let families = Cf::ALL.iter().map(|cf| {
            let mut cf_options = Options::default();
            cf_options.set_compression_type(DBCompressionType::Lz4);
            ColumnFamilyDescriptor::new(cf.name(), cf_options)
        });
        let db = DB::open_cf_descriptors(&options, path, families).map_err(backend)?;
        Ok(Self { db })
    }

    fn handle(&self, cf: Cf) -> Result<&ColumnFamily, EngineError> {
        self.db
            .cf_handle(cf.name())
            .ok_or_else(|| EngineError::Backend(format!("column family {} is missing", cf.name())))
    }
}

impl KvEngine for RocksEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.db.get_cf(self.handle(cf)?, key).map_err(backend)
    }

    fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Pair>, EngineError> {
        let mut read = ReadOptions::default();
        if let Some(end) = end {
            if end <= start {
                return Ok(Vec::new());
            }
            read.set_iterate_upper_bound(end.to_vec());
        }
        let iter = self.db.iterator_cf_opt(
            self.handle(cf)?,
            read,
            IteratorMode::From(start, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter.take(limit) {
            let (k, v) = item.map_err(backend)?;
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    fn last(&self, cf: Cf) -> Result<Option<Pair>, EngineError> {
        let mut iter = self.db.iterator_cf(self.handle(cf)?, IteratorMode::End);
        match iter.next() {
            Some(item) => {
                let (k, v) = item.map_err(backend)?;
                Ok(Some((k.into_vec(), v.into_vec())))
            }
            None => Ok(None),
        }
    }

    fn write(&self, batch: WriteBatch) -> Result<(), EngineError> {
        let mut native = rocksdb::WriteBatch::default();
        for op in &batch.ops {
            match op {
                BatchOp::Put(cf, k, v) => native.put_cf(self.handle(*cf)?, k, v),
                BatchOp::Delete(cf, k) => native.delete_cf(self.handle(*cf)?, k),
                BatchOp::DeleteRange(cf, start, end) => {
                    native.delete_range_cf(self.handle(*cf)?, start, end)
                }
            }
        }
        let mut options = WriteOptions::default();
        options.set_sync(false);
        self.db.write_opt(native, &options).map_err(backend)
    }

    fn sync(&self) -> Result<(), EngineError> {
        self.db.flush_wal(true).map_err(backend)
    }

    fn for_each_consistent(&self, cf: Cf, sink: &mut PairSink<'_>) -> Result<(), EngineError> {
        let view = self.db.snapshot();
        for item in view.iterator_cf(self.handle(cf)?, IteratorMode::Start) {
            let (k, v) = item.map_err(backend)?;
            sink(&k, &v)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_survive_reopen_and_ranges_delete() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = RocksEngine::open(dir.path()).unwrap();
            let mut batch = WriteBatch::new();
            for k in [b"k1", b"k2", b"k3"] {
                batch.put(Cf::State, k.to_vec(), b"v".to_vec());
            }
            batch.put(Cf::Log, 7u64.to_be_bytes().to_vec(), b"entry".to_vec());
            batch.delete_range(Cf::State, b"k2".to_vec(), b"k3".to_vec());
            engine.write(batch).unwrap();
            engine.sync().unwrap();
        }
        let engine = RocksEngine::open(dir.path()).unwrap();
        let keys: Vec<_> = engine
            .scan(Cf::State, b"", None, 10)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![b"k1".to_vec(), b"k3".to_vec()]);
        assert_eq!(
            engine.last(Cf::Log).unwrap().map(|(_, v)| v),
            Some(b"entry".to_vec())
        );
        assert!(engine.get(Cf::Meta, b"x").unwrap().is_none());
        let mut seen = 0;
        engine
            .for_each_consistent(Cf::State, &mut |_, _| {
                seen += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, 2);
    }
}
