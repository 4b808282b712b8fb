//! The state transition checked against a plain in-memory model of the same semantics.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::engine::MemEngine;
use crate::types::Txn;

#[derive(Default)]
struct Model {
    keys: BTreeMap<Vec<u8>, KeyValue>,
    revision: Revision,
    history: Vec<RevisionEvents>,
}

impl Model {
    fn holds(&self, c: &Compare) -> bool {
        let kv = self.keys.get(&c.key);
        let ord = match &c.target {
            CompareTarget::Value(v) => match kv {
                None => return false,
                Some(kv) => kv.value.cmp(v),
            },
            CompareTarget::Version(v) => kv.map_or(0, |k| k.version).cmp(v),
            CompareTarget::ModRevision(r) => kv.map_or(0, |k| k.mod_revision).cmp(r),
            CompareTarget::CreateRevision(r) => kv.map_or(0, |k| k.create_revision).cmp(r),
        };
        match c.op {
            CompareOp::Equal => ord.is_eq(),
            CompareOp::NotEqual => ord.is_ne(),
            CompareOp::Greater => ord.is_gt(),
            CompareOp::Less => ord.is_lt(),
        }
    }

    fn apply(&mut self, txn: &Txn) -> TxnResult {
        self.revision += 1;
        let rev = self.revision;
        let succeeded = txn.compares.iter().all(|c| self.holds(c));
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let mut events = Vec::new();
        let mut results = Vec::new();
        for op in ops {
            match op {
                Op::Put { key, value, .. } => {
                    let prev = self.keys.get(key).cloned();
                    let kv = KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                        mod_revision: rev,
                        version: prev.as_ref().map_or(1, |p| p.version + 1),
                        lease: None,
                    };
                    self.keys.insert(key.clone(), kv.clone());
                    events.push(Event {
                        kind: EventKind::Put,
                        kv,
                    });
                    results.push(OpResult::Put { prev });
                }
                Op::Delete { key } => {
                    let deleted = self.delete(key, rev, &mut events);
                    results.push(OpResult::Delete {
                        deleted: u64::from(deleted),
                    });
                }
                Op::DeleteRange { start, end } => {
                    let doomed: Vec<Vec<u8>> = self
                        .keys
                        .keys()
                        .filter(|k| *k >= start && end.as_ref().is_none_or(|e| *k < e))
                        .cloned()
                        .collect();
                    let mut deleted = 0;
                    for k in doomed {
                        deleted += u64::from(self.delete(&k, rev, &mut events));
                    }
                    results.push(OpResult::Delete { deleted });
                }
            }
        }
        if !events.is_empty() {
            self.history.push(RevisionEvents {
                revision: rev,
                events,
            });
        }
        TxnResult {
            succeeded,
            revision: rev,
            results,
        }
    }

    fn delete(&mut self, key: &[u8], rev: Revision, events: &mut Vec<Event>) -> bool {
        match self.keys.remove(key) {
            None => false,
            Some(old) => {
                events.push(Event {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key: key.to_vec(),
                        value: Vec::new(),
                        create_revision: old.create_revision,
                        mod_revision: rev,
                        version: 0,
                        lease: None,
                    },
                });
                true
            }
        }
    }
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![
        b"a".to_vec(),
        b"ab".to_vec(),
        b"b".to_vec(),
        b"c".to_vec(),
    ])
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![b"1".to_vec(), b"2".to_vec(), Vec::new()])
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (key(), value()).prop_map(|(k, v)| Op::put(k, v)),
        1 => key().prop_map(Op::delete),
        1 => (key(), prop::option::of(key())).prop_map(|(s, e)| Op::DeleteRange { start: s, end: e }),
        1 => key().prop_map(Op::delete_prefix),
    ]
}

fn compare() -> impl Strategy<Value = Compare> {
    let op = prop::sample::select(vec![
        CompareOp::Equal,
        CompareOp::NotEqual,
        CompareOp::Greater,
        CompareOp::Less,
    ]);
    let target = prop_oneof![
        value().prop_map(CompareTarget::Value),
        (0u64..4).prop_map(CompareTarget::Version),
        (0u64..12).prop_map(CompareTarget::ModRevision),
        (0u64..12).prop_map(CompareTarget::CreateRevision),
    ];
    (key(), op, target).prop_map(|(key, op, target)| Compare { key, op, target })
}

fn txn() -> impl Strategy<Value = Txn> {
    (
        prop::collection::vec(compare(), 0..3),
        prop::collection::vec(op(), 0..4),
        prop::collection::vec(op(), 0..3),
    )
        .prop_map(|(compares, success, failure)| Txn {
            compares,
            success,
            failure,
        })
}

fn apply_to_engine(engine: &MemEngine, txn: &Txn, revision: Revision) -> TxnResult {
    let applied = apply_command(engine, &Command::Txn(txn.clone()), revision, 0).unwrap();
    engine.write(applied.batch).unwrap();
    match applied.result {
        CommandResult::Txn(r) => r,
        other => panic!("unexpected {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn txns_match_the_model(txns in prop::collection::vec(txn(), 1..24)) {
        let engine = MemEngine::new();
        let mut model = Model::default();
        for (i, txn) in txns.iter().enumerate() {
            let expected = model.apply(txn);
            let got = apply_to_engine(&engine, txn, i as u64 + 1);
            prop_assert_eq!(&got, &expected);
            let stored = range(&engine, b"", None, usize::MAX).unwrap();
            let modelled: Vec<KeyValue> = model.keys.values().cloned().collect();
            prop_assert_eq!(stored, modelled);
        }
        prop_assert_eq!(read_meta(&engine).unwrap().revision, txns.len() as u64);
        let history = history(&engine, 1, model.revision, usize::MAX).unwrap();
        prop_assert_eq!(history, model.history.clone());
    }

    #[test]
    fn range_pages_cover_the_prefix_once(keys in prop::collection::btree_set("[a-c]{1,3}", 0..20), page in 1usize..5) {
        let engine = MemEngine::new();
        let txn = Txn::ops(keys.iter().map(|k| Op::put(k.as_bytes().to_vec(), b"v".to_vec())));
        apply_to_engine(&engine, &txn, 1);
        let mut seen = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let batch = range(&engine, b"a", after.as_deref(), page).unwrap();
            if batch.is_empty() {
                break;
            }
            after = batch.last().map(|kv| kv.key.clone());
            seen.extend(batch.into_iter().map(|kv| String::from_utf8(kv.key).unwrap()));
        }
        let expected: Vec<String> = keys.iter().filter(|k| k.starts_with('a')).cloned().collect();
        prop_assert_eq!(seen, expected);
    }
}

#[test]
fn lease_revoke_deletes_attached_keys_only() {
    let engine = MemEngine::new();
    let grant = apply_command(
        &engine,
        &Command::LeaseGrant {
            id: 7,
            ttl_ms: 1000,
        },
        1,
        0,
    )
    .unwrap();
    engine.write(grant.batch).unwrap();
    let txn = Txn::ops([
        Op::put_with_lease(b"s/1".to_vec(), b"x".to_vec(), 7),
        Op::put(b"s/2".to_vec(), b"y".to_vec()),
    ]);
    let put = apply_command(&engine, &Command::Txn(txn), 2, 0).unwrap();
    engine.write(put.batch).unwrap();
    // Re-putting without the lease detaches the key.
    let txn = Txn::ops([Op::put_with_lease(b"s/3".to_vec(), b"z".to_vec(), 7)]);
    engine
        .write(
            apply_command(&engine, &Command::Txn(txn), 3, 0)
                .unwrap()
                .batch,
        )
        .unwrap();
    let txn = Txn::ops([Op::put(b"s/3".to_vec(), b"z2".to_vec())]);
    engine
        .write(
            apply_command(&engine, &Command::Txn(txn), 4, 0)
                .unwrap()
                .batch,
        )
        .unwrap();
    let revoke = apply_command(
        &engine,
        &Command::LeaseRevoke {
            id: 7,
            expired: true,
        },
        5,
        0,
    )
    .unwrap();
    assert_eq!(
        revoke.result,
        CommandResult::LeaseRevoked {
            revision: 5,
            deleted: 1
        }
    );
    engine.write(revoke.batch).unwrap();
    let left: Vec<_> = range(&engine, b"s/", None, 10)
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(left, vec![b"s/2".to_vec(), b"s/3".to_vec()]);
    assert!(leases(&engine).unwrap().is_empty());
}

#[test]
fn put_with_unknown_lease_rejects_the_whole_txn() {
    let engine = MemEngine::new();
    let txn = Txn::ops([
        Op::put(b"a".to_vec(), b"1".to_vec()),
        Op::put_with_lease(b"b".to_vec(), b"2".to_vec(), 9),
    ]);
    let applied = apply_command(&engine, &Command::Txn(txn), 1, 0).unwrap();
    assert!(matches!(
        applied.result,
        CommandResult::Rejected {
            error: CommandError::LeaseNotFound(9),
            ..
        }
    ));
    assert!(applied.events.is_empty());
    engine.write(applied.batch).unwrap();
    assert!(get(&engine, b"a").unwrap().is_none());
}

#[test]
fn compaction_drops_history_below_the_revision() {
    let engine = MemEngine::new();
    for rev in 1..=5 {
        let txn = Txn::ops([Op::put(b"k".to_vec(), rev.to_string().into_bytes())]);
        engine
            .write(
                apply_command(&engine, &Command::Txn(txn), rev, 0)
                    .unwrap()
                    .batch,
            )
            .unwrap();
    }
    let compact = apply_command(&engine, &Command::Compact { revision: 4 }, 6, 0).unwrap();
    engine.write(compact.batch).unwrap();
    let kept: Vec<_> = history(&engine, 0, 6, 100)
        .unwrap()
        .into_iter()
        .map(|r| r.revision)
        .collect();
    assert_eq!(kept, vec![4, 5]);
    assert_eq!(read_meta(&engine).unwrap().compacted, 4);
    let future = apply_command(&engine, &Command::Compact { revision: 99 }, 7, 4).unwrap();
    assert!(matches!(future.result, CommandResult::Rejected { .. }));
}
