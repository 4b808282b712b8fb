//! The key-value state: how a command changes it and how it is read. Pure over the engine,
//! so every replica that applies the same log reaches the same bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode, layout};
use crate::engine::{Cf, EngineError, KvEngine, WriteBatch, prefix_end};
use crate::types::{
    Command, CommandError, CommandResult, Compare, CompareOp, CompareTarget, Event, EventKind,
    KeyValue, LeaseId, LogId, Op, OpResult, Revision, RevisionEvents, StoredMembership, TxnResult,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub id: LeaseId,
    pub ttl_ms: u64,
}

/// Counters kept beside the data, written in the same batch as every change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateMeta {
    pub applied: Option<LogId>,
    pub membership: StoredMembership,
    pub revision: Revision,
    pub compacted: Revision,
}

pub fn read_meta(engine: &dyn KvEngine) -> Result<StateMeta, EngineError> {
    let mut meta = StateMeta::default();
    if let Some(v) = engine.get(Cf::State, layout::APPLIED)? {
        meta.applied = decode(layout::APPLIED, &v)?;
    }
    if let Some(v) = engine.get(Cf::State, layout::MEMBERSHIP)? {
        meta.membership = decode(layout::MEMBERSHIP, &v)?;
    }
    if let Some(v) = engine.get(Cf::State, layout::REVISION)? {
        meta.revision = decode(layout::REVISION, &v)?;
    }
    if let Some(v) = engine.get(Cf::State, layout::COMPACTED)? {
        meta.compacted = decode(layout::COMPACTED, &v)?;
    }
    Ok(meta)
}

pub fn get(engine: &dyn KvEngine, key: &[u8]) -> Result<Option<KeyValue>, EngineError> {
    let stored = layout::key(key);
    match engine.get(Cf::State, &stored)? {
        Some(bytes) => Ok(Some(decode(&stored, &bytes)?)),
        None => Ok(None),
    }
}

/// Keys starting with `prefix` and sorting after `start_after`, at most `limit`.
pub fn range(
    engine: &dyn KvEngine,
    prefix: &[u8],
    start_after: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<KeyValue>, EngineError> {
    let lower = match start_after {
        Some(after) if after >= prefix => {
            let mut k = layout::key(after);
            k.push(0);
            k
        }
        _ => layout::key(prefix),
    };
    let upper = prefix_end(&layout::key(prefix)).unwrap_or_else(|| vec![layout::KEY + 1]);
    engine
        .scan(Cf::State, &lower, Some(&upper), limit)?
        .into_iter()
        .map(|(k, v)| decode(&k, &v))
        .collect()
}

/// Stored events of revisions `from..=to`.
pub fn history(
    engine: &dyn KvEngine,
    from: Revision,
    to: Revision,
    limit: usize,
) -> Result<Vec<RevisionEvents>, EngineError> {
    if from > to {
        return Ok(Vec::new());
    }
    let start = layout::event(from);
    let end = layout::event(to.saturating_add(1));
    let mut out = Vec::new();
    for (k, v) in engine.scan(Cf::State, &start, Some(&end), limit)? {
        let revision = layout::revision_of_event(&k).ok_or_else(|| EngineError::Corrupt {
            key: format!("{k:?}"),
            reason: "event key without a revision".into(),
        })?;
        out.push(RevisionEvents {
            revision,
            events: decode(&k, &v)?,
        });
    }
    Ok(out)
}

pub fn leases(engine: &dyn KvEngine) -> Result<Vec<LeaseRecord>, EngineError> {
    let start = [layout::LEASE];
    let end = [layout::LEASE + 1];
    engine
        .scan(Cf::State, &start, Some(&end), usize::MAX)?
        .into_iter()
        .map(|(k, v)| decode(&k, &v))
        .collect()
}

/// A command's effect, ready to be written in one batch.
pub struct Applied {
    pub batch: WriteBatch,
    pub result: CommandResult,
    pub events: Vec<Event>,
}

/// Reads through the writes of the command being applied, so that later ops see earlier ones.
struct Overlay<'a> {
    engine: &'a dyn KvEngine,
    keys: BTreeMap<Vec<u8>, Option<KeyValue>>,
    leases: BTreeMap<LeaseId, Option<LeaseRecord>>,
    attached: BTreeMap<(LeaseId, Vec<u8>), bool>,
}

impl<'a> Overlay<'a> {
    fn new(engine: &'a dyn KvEngine) -> Self {
        Self {
            engine,
            keys: BTreeMap::new(),
            leases: BTreeMap::new(),
            attached: BTreeMap::new(),
        }
    }

    fn key(&self, key: &[u8]) -> Result<Option<KeyValue>, EngineError> {
        match self.keys.get(key) {
            Some(v) => Ok(v.clone()),
            None => get(self.engine, key),
        }
    }

    fn lease(&self, id: LeaseId) -> Result<Option<LeaseRecord>, EngineError> {
        if let Some(v) = self.leases.get(&id) {
            return Ok(*v);
        }
        let k = layout::lease(id);
        match self.engine.get(Cf::State, &k)? {
            Some(bytes) => Ok(Some(decode(&k, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Keys in `[start, end)` as they stand after the writes so far.
    fn keys_in(&self, start: &[u8], end: Option<&[u8]>) -> Result<Vec<Vec<u8>>, EngineError> {
        let lower = layout::key(start);
        let upper = match end {
            Some(end) => layout::key(end),
            None => vec![layout::KEY + 1],
        };
        let mut found: BTreeMap<Vec<u8>, bool> = BTreeMap::new();
        for (k, _) in self
            .engine
            .scan(Cf::State, &lower, Some(&upper), usize::MAX)?
        {
            found.insert(k[1..].to_vec(), true);
        }
        for (k, v) in &self.keys {
            let inside = k.as_slice() >= start && end.is_none_or(|end| k.as_slice() < end);
            if inside {
                found.insert(k.clone(), v.is_some());
            }
        }
        Ok(found
            .into_iter()
            .filter(|(_, live)| *live)
            .map(|(k, _)| k)
            .collect())
    }

    fn attached_keys(&self, id: LeaseId) -> Result<Vec<Vec<u8>>, EngineError> {
        let prefix = layout::attached_prefix(id);
        let end = prefix_end(&prefix).unwrap_or_else(|| vec![layout::ATTACHED + 1]);
        let mut found: BTreeMap<Vec<u8>, bool> = BTreeMap::new();
        for (k, _) in self
            .engine
            .scan(Cf::State, &prefix, Some(&end), usize::MAX)?
        {
            found.insert(k[prefix.len()..].to_vec(), true);
        }
        for ((lease, key), live) in &self.attached {
            if *lease == id {
                found.insert(key.clone(), *live);
            }
        }
        Ok(found
            .into_iter()
            .filter(|(_, live)| *live)
            .map(|(k, _)| k)
            .collect())
    }

    fn into_batch(self, batch: &mut WriteBatch) -> Result<(), EngineError> {
        for (k, v) in self.keys {
            match v {
                Some(kv) => batch.put(Cf::State, layout::key(&k), encode(&kv)?),
                None => batch.delete(Cf::State, layout::key(&k)),
            }
        }
        for (id, lease) in self.leases {
            match lease {
                Some(record) => batch.put(Cf::State, layout::lease(id), encode(&record)?),
                None => batch.delete(Cf::State, layout::lease(id)),
            }
        }
        for ((id, key), live) in self.attached {
            if live {
                batch.put(Cf::State, layout::attached(id, &key), Vec::new());
            } else {
                batch.delete(Cf::State, layout::attached(id, &key));
            }
        }
        Ok(())
    }
}

fn compare_holds(current: Option<&KeyValue>, compare: &Compare) -> bool {
    use std::cmp::Ordering;
    let ordering = match (&compare.target, current) {
        (CompareTarget::Value(_), None) => return false,
        (CompareTarget::Value(v), Some(kv)) => kv.value.as_slice().cmp(v.as_slice()),
        (CompareTarget::Version(v), kv) => kv.map_or(0, |kv| kv.version).cmp(v),
        (CompareTarget::ModRevision(r), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(r),
        (CompareTarget::CreateRevision(r), kv) => kv.map_or(0, |kv| kv.create_revision).cmp(r),
    };
    match compare.op {
        CompareOp::Equal => ordering == Ordering::Equal,
        CompareOp::NotEqual => ordering != Ordering::Equal,
        CompareOp::Greater => ordering == Ordering::Greater,
        CompareOp::Less => ordering == Ordering::Less,
    }
}

fn delete_key(
    overlay: &mut Overlay<'_>,
    key: &[u8],
    revision: Revision,
    events: &mut Vec<Event>,
) -> Result<bool, EngineError> {
    let Some(old) = overlay.key(key)? else {
        return Ok(false);
    };
    if let Some(lease) = old.lease {
        overlay.attached.insert((lease, key.to_vec()), false);
    }
    overlay.keys.insert(key.to_vec(), None);
    events.push(Event {
        kind: EventKind::Delete,
        kv: KeyValue {
            key: key.to_vec(),
            value: Vec::new(),
            create_revision: old.create_revision,
            mod_revision: revision,
            version: 0,
            lease: None,
        },
    });
    Ok(true)
}

fn apply_op(
    overlay: &mut Overlay<'_>,
    op: &Op,
    revision: Revision,
    events: &mut Vec<Event>,
) -> Result<Result<OpResult, CommandError>, EngineError> {
    match op {
        Op::Put { key, value, lease } => {
            if let Some(id) = lease
                && overlay.lease(*id)?.is_none()
            {
                return Ok(Err(CommandError::LeaseNotFound(*id)));
            }
            let prev = overlay.key(key)?;
            if let Some(old_lease) = prev.as_ref().and_then(|p| p.lease)
                && Some(old_lease) != *lease
            {
                overlay.attached.insert((old_lease, key.clone()), false);
            }
            if let Some(id) = lease {
                overlay.attached.insert((*id, key.clone()), true);
            }
            let kv = KeyValue {
                key: key.clone(),
                value: value.clone(),
                create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
                mod_revision: revision,
                version: prev.as_ref().map_or(1, |p| p.version + 1),
                lease: *lease,
            };
            overlay.keys.insert(key.clone(), Some(kv.clone()));
            events.push(Event {
                kind: EventKind::Put,
                kv,
            });
            Ok(Ok(OpResult::Put { prev }))
        }
        Op::Delete { key } => {
            let deleted = u64::from(delete_key(overlay, key, revision, events)?);
            Ok(Ok(OpResult::Delete { deleted }))
        }
        Op::DeleteRange { start, end } => {
            let mut deleted = 0;
            for key in overlay.keys_in(start, end.as_deref())? {
                deleted += u64::from(delete_key(overlay, &key, revision, events)?);
            }
            Ok(Ok(OpResult::Delete { deleted }))
        }
    }
}

/// The effect of applying `command` as revision `revision` (the previous one plus one).
pub fn apply_command(
    engine: &dyn KvEngine,
    command: &Command,
    revision: Revision,
    current_compacted: Revision,
) -> Result<Applied, EngineError> {
    let mut overlay = Overlay::new(engine);
    let mut events = Vec::new();
    let mut batch = WriteBatch::new();
    let result = match command {
        Command::Txn(txn) => {
            let mut succeeded = true;
            for compare in &txn.compares {
                let current = overlay.key(&compare.key)?;
                if !compare_holds(current.as_ref(), compare) {
                    succeeded = false;
                    break;
                }
            }
            let ops = if succeeded {
                &txn.success
            } else {
                &txn.failure
            };
            let mut results = Vec::with_capacity(ops.len());
            let mut rejected = None;
            for op in ops {
                match apply_op(&mut overlay, op, revision, &mut events)? {
                    Ok(r) => results.push(r),
                    Err(e) => {
                        rejected = Some(e);
                        break;
                    }
                }
            }
            match rejected {
                Some(error) => {
                    // All or nothing: a rejected op discards the whole transaction.
                    overlay = Overlay::new(engine);
                    events.clear();
                    CommandResult::Rejected { error, revision }
                }
                None => CommandResult::Txn(TxnResult {
                    succeeded,
                    revision,
                    results,
                }),
            }
        }
        Command::LeaseGrant { id, ttl_ms } => match overlay.lease(*id)? {
            Some(_) => CommandResult::Rejected {
                error: CommandError::LeaseExists(*id),
                revision,
            },
            None => {
                overlay.leases.insert(
                    *id,
                    Some(LeaseRecord {
                        id: *id,
                        ttl_ms: *ttl_ms,
                    }),
                );
                CommandResult::LeaseGranted {
                    id: *id,
                    ttl_ms: *ttl_ms,
                    revision,
                }
            }
        },
        Command::LeaseRevoke { id, .. } => match overlay.lease(*id)? {
            None => CommandResult::Rejected {
                error: CommandError::LeaseNotFound(*id),
                revision,
            },
            Some(_) => {
                let mut deleted = 0;
                for key in overlay.attached_keys(*id)? {
                    deleted += u64::from(delete_key(&mut overlay, &key, revision, &mut events)?);
                }
                overlay.leases.insert(*id, None);
                CommandResult::LeaseRevoked { revision, deleted }
            }
        },
        Command::Compact { revision: target } => {
            if *target > revision {
                CommandResult::Rejected {
                    error: CommandError::CompactFuture {
                        requested: *target,
                        current: revision,
                    },
                    revision,
                }
            } else {
                if *target > current_compacted {
                    batch.delete_range(Cf::State, layout::event(0), layout::event(*target));
                    batch.put(Cf::State, layout::COMPACTED, encode(target)?);
                }
                CommandResult::Compacted { revision }
            }
        }
    };
    overlay.into_batch(&mut batch)?;
    if !events.is_empty() {
        batch.put(Cf::State, layout::event(revision), encode(&events)?);
    }
    batch.put(Cf::State, layout::REVISION, encode(&revision)?);
    Ok(Applied {
        batch,
        result,
        events,
    })
}

/// Writes the applied log id (and membership when it changed) into `batch`.
pub fn record_applied(
    batch: &mut WriteBatch,
    applied: &LogId,
    membership: Option<&StoredMembership>,
) -> Result<(), EngineError> {
    batch.put(Cf::State, layout::APPLIED, encode(&Some(*applied))?);
    if let Some(m) = membership {
        batch.put(Cf::State, layout::MEMBERSHIP, encode(m)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
