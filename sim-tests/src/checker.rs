//! A linearizability checker for registers, in the manner of Knossos and Porcupine: search
//! for an order of the operations that respects real time and the register's semantics.

use std::collections::HashSet;

use halyard_raft::{Revision, RevisionEvents};

pub type Value = Option<Vec<u8>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Write(Vec<u8>),
    Read,
    /// Sets `new` if the register holds `expect`, as a `txn` with a value compare does.
    Cas {
        expect: Value,
        new: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Written,
    Read(Value),
    Cas { succeeded: bool },
}

/// One client operation as observed: when it was invoked and, if the client saw an answer,
/// when and what. A write without an answer may or may not have happened.
#[derive(Debug, Clone)]
pub struct Operation {
    pub client: usize,
    pub call: Call,
    pub invoked: u64,
    pub completed: Option<(u64, Answer)>,
}

#[derive(Debug)]
pub struct Violation {
    pub explanation: String,
}

/// Most operations per key the search accepts (one bit each).
pub const MAX_OPERATIONS: usize = 128;

/// The register after `op`, or `None` if `op` cannot have taken effect in `state`.
fn step(state: &Value, op: &Operation) -> Option<Value> {
    let answer = op.completed.as_ref().map(|(_, a)| a);
    match (&op.call, answer) {
        (Call::Write(v), None | Some(Answer::Written)) => Some(Some(v.clone())),
        (Call::Read, Some(Answer::Read(seen))) if seen == state => Some(state.clone()),
        (Call::Cas { expect, new }, Some(Answer::Cas { succeeded: true }) | None)
            if expect == state =>
        {
            Some(Some(new.clone()))
        }
        (Call::Cas { expect, .. }, Some(Answer::Cas { succeeded: false }) | None)
            if expect != state =>
        {
            Some(state.clone())
        }
        _ => None,
    }
}

/// Whether the history of one register, starting `initial`, is linearizable.
pub fn check_register(initial: Value, history: &[Operation]) -> Result<(), Violation> {
    // Reads without an answer constrain nothing.
    let ops: Vec<&Operation> = history
        .iter()
        .filter(|o| o.completed.is_some() || !matches!(o.call, Call::Read))
        .collect();
    if ops.len() > MAX_OPERATIONS {
        return Err(Violation {
            explanation: format!("{} operations: more than the checker takes", ops.len()),
        });
    }
    let completed_mask: u128 = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| o.completed.is_some())
        .fold(0, |m, (i, _)| m | (1u128 << i));
    let mut seen = HashSet::new();
    if search(&ops, completed_mask, 0, initial, &mut seen) {
        Ok(())
    } else {
        Err(Violation {
            explanation: format!("no linearization of {} operations: {ops:#?}", ops.len()),
        })
    }
}

fn search(
    ops: &[&Operation],
    completed_mask: u128,
    done: u128,
    state: Value,
    seen: &mut HashSet<(u128, Value)>,
) -> bool {
    if done & completed_mask == completed_mask {
        // Every answered operation is placed; unanswered writes may simply not have happened.
        return true;
    }
    if !seen.insert((done, state.clone())) {
        return false;
    }
    // An operation may go next only if no pending answered operation finished before it began.
    let horizon = ops
        .iter()
        .enumerate()
        .filter(|(i, _)| done & (1 << i) == 0)
        .filter_map(|(_, o)| o.completed.as_ref().map(|(t, _)| *t))
        .min()
        .unwrap_or(u64::MAX);
    for (i, op) in ops.iter().enumerate() {
        if done & (1 << i) != 0 || op.invoked > horizon {
            continue;
        }
        if let Some(next) = step(&state, op)
            && search(ops, completed_mask, done | (1 << i), next, seen)
        {
            return true;
        }
    }
    false
}

/// Whether `history` (every revision with events, from the first) is in strictly increasing
/// revision order.
pub fn check_revisions_increase(history: &[RevisionEvents]) -> Result<(), Violation> {
    match history.windows(2).find(|w| w[0].revision >= w[1].revision) {
        Some(w) => Err(Violation {
            explanation: format!(
                "revision {} comes after revision {}",
                w[1].revision, w[0].revision
            ),
        }),
        None => Ok(()),
    }
}

/// Whether a watch stream that started at `start` saw exactly the revisions of `history` from
/// there on, in order, none missing, repeated or altered (it may not have reached the end).
pub fn check_watch_stream(
    history: &[RevisionEvents],
    start: Revision,
    seen: &[RevisionEvents],
) -> Result<(), Violation> {
    let expected: Vec<&RevisionEvents> = history.iter().filter(|r| r.revision >= start).collect();
    if seen.len() > expected.len() {
        return Err(Violation {
            explanation: format!(
                "a watch from revision {start} saw {} revisions; the history has {}",
                seen.len(),
                expected.len()
            ),
        });
    }
    for (n, (got, want)) in seen.iter().zip(expected).enumerate() {
        if got != want {
            return Err(Violation {
                explanation: format!(
                    "event {n} of a watch from revision {start}: saw {got:?}, the history has {want:?}"
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(call: Call, invoked: u64, completed: Option<(u64, Answer)>) -> Operation {
        Operation {
            client: 0,
            call,
            invoked,
            completed,
        }
    }

    fn v(s: &str) -> Value {
        Some(s.as_bytes().to_vec())
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            op(Call::Write(b"1".to_vec()), 0, Some((1, Answer::Written))),
            op(Call::Read, 2, Some((3, Answer::Read(v("1"))))),
        ];
        assert!(check_register(None, &h).is_ok());
    }

    #[test]
    fn stale_read_after_a_completed_write_is_caught() {
        let h = vec![
            op(Call::Write(b"1".to_vec()), 0, Some((1, Answer::Written))),
            op(Call::Write(b"2".to_vec()), 2, Some((3, Answer::Written))),
            op(Call::Read, 4, Some((5, Answer::Read(v("1"))))),
        ];
        assert!(check_register(None, &h).is_err());
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        let h = vec![
            op(Call::Write(b"1".to_vec()), 0, Some((10, Answer::Written))),
            op(Call::Read, 1, Some((2, Answer::Read(None)))),
            op(Call::Read, 3, Some((4, Answer::Read(v("1"))))),
        ];
        assert!(check_register(None, &h).is_ok());
    }

    #[test]
    fn a_write_without_an_answer_may_or_may_not_have_happened() {
        let lost = vec![
            op(Call::Write(b"1".to_vec()), 0, None),
            op(Call::Read, 5, Some((6, Answer::Read(None)))),
        ];
        assert!(check_register(None, &lost).is_ok());
        let applied = vec![
            op(Call::Write(b"1".to_vec()), 0, None),
            op(Call::Read, 5, Some((6, Answer::Read(v("1"))))),
        ];
        assert!(check_register(None, &applied).is_ok());
        let invented = vec![op(Call::Read, 5, Some((6, Answer::Read(v("9")))))];
        assert!(check_register(None, &invented).is_err());
    }

    fn cas(expect: Value, new: &str) -> Call {
        Call::Cas {
            expect,
            new: new.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_counter_through_compare_and_set_is_checked() {
        let good = vec![
            op(
                cas(None, "1"),
                0,
                Some((1, Answer::Cas { succeeded: true })),
            ),
            op(
                cas(None, "1"),
                2,
                Some((3, Answer::Cas { succeeded: false })),
            ),
            op(cas(v("1"), "2"), 4, None),
            op(Call::Read, 5, Some((6, Answer::Read(v("2"))))),
        ];
        assert!(check_register(None, &good).is_ok());
        // Two increments from the same value cannot both succeed.
        let lost_update = vec![
            op(
                cas(None, "1"),
                0,
                Some((1, Answer::Cas { succeeded: true })),
            ),
            op(
                cas(None, "1"),
                2,
                Some((3, Answer::Cas { succeeded: true })),
            ),
        ];
        assert!(check_register(None, &lost_update).is_err());
        // A compare that should have held cannot fail.
        let spurious_failure = vec![op(
            cas(None, "1"),
            0,
            Some((1, Answer::Cas { succeeded: false })),
        )];
        assert!(check_register(None, &spurious_failure).is_err());
    }
}
