//! Snapshot files: the state column family as of one applied log id, written record by
//! record so that neither side holds it whole in memory while it is built or moved.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::codec::{decode, layout};
use crate::engine::{Cf, EngineError, KvEngine, Pair};
use crate::types::{LogId, StoredMembership};

const MAGIC: &[u8; 8] = b"HLYSNAP1";
const END: u32 = u32::MAX;

/// A snapshot on disk, as handed to openraft and to the transport.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    pub path: PathBuf,
    pub size: u64,
}

/// What a dump found about the state it captured.
pub struct DumpSummary {
    pub applied: Option<LogId>,
    pub membership: StoredMembership,
    pub size: u64,
}

fn write_record(out: &mut impl Write, key: &[u8], value: &[u8]) -> io::Result<()> {
    let too_long = || io::Error::other("snapshot record longer than 4 GiB");
    out.write_all(
        &u32::try_from(key.len())
            .map_err(|_| too_long())?
            .to_le_bytes(),
    )?;
    out.write_all(key)?;
    out.write_all(
        &u32::try_from(value.len())
            .map_err(|_| too_long())?
            .to_le_bytes(),
    )?;
    out.write_all(value)
}

/// Writes the state column family to `path` from one consistent view and fsyncs it.
pub fn dump(engine: &dyn KvEngine, path: &Path) -> Result<DumpSummary, EngineError> {
    let file = File::create(path)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(MAGIC)?;
    let mut applied = None;
    let mut membership = StoredMembership::default();
    engine.for_each_consistent(Cf::State, &mut |key, value| {
        if key == layout::APPLIED {
            applied = decode(key, value)?;
        } else if key == layout::MEMBERSHIP {
            membership = decode(key, value)?;
        }
        write_record(&mut out, key, value)?;
        Ok(())
    })?;
    out.write_all(&END.to_le_bytes())?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    let size = file.metadata()?.len();
    Ok(DumpSummary {
        applied,
        membership,
        size,
    })
}

/// Reads the records of a snapshot file in order, failing on truncation or a bad header.
pub struct SnapshotReader {
    input: BufReader<File>,
    done: bool,
}

impl SnapshotReader {
    pub fn open(path: &Path) -> Result<Self, EngineError> {
        let mut input = BufReader::with_capacity(1 << 20, File::open(path)?);
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(EngineError::Corrupt {
                key: path.display().to_string(),
                reason: "not a Halyard snapshot".into(),
            });
        }
        Ok(Self { input, done: false })
    }

    fn read_len(&mut self) -> io::Result<u32> {
        let mut len = [0u8; 4];
        self.input.read_exact(&mut len)?;
        Ok(u32::from_le_bytes(len))
    }

    pub fn next_record(&mut self) -> Result<Option<Pair>, EngineError> {
        if self.done {
            return Ok(None);
        }
        let key_len = self.read_len()?;
        if key_len == END {
            self.done = true;
            return Ok(None);
        }
        let mut key = vec![0u8; key_len as usize];
        self.input.read_exact(&mut key)?;
        let value_len = self.read_len()?;
        let mut value = vec![0u8; value_len as usize];
        self.input.read_exact(&mut value)?;
        Ok(Some((key, value)))
    }
}
