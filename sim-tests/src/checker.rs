//! A linearizability checker for registers, in the manner of Knossos and Porcupine: search
//! for an order of the operations that respects real time and the register's semantics.

use std::collections::HashSet;

pub type Value = Option<Vec<u8>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Write(Vec<u8>),
    Read,
}

/// One client operation as observed: when it was invoked and, if the client saw an answer,
/// when and what. A write without an answer may or may not have happened.
#[derive(Debug, Clone)]
pub struct Operation {
    pub client: usize,
    pub call: Call,
    pub invoked: u64,
    pub completed: Option<(u64, Value)>,
}

#[derive(Debug)]
pub struct Violation {
    pub explanation: String,
}

/// Most operations per key the search accepts (one bit each).
pub const MAX_OPERATIONS: usize = 128;

/// Whether the history of one register, starting `initial`, is linearizable.
pub fn check_register(initial: Value, history: &[Operation]) -> Result<(), Violation> {
    // Reads without an answer constrain nothing.
    let ops: Vec<&Operation> = history
        .iter()
        .filter(|o| o.completed.is_some() || matches!(o.call, Call::Write(_)))
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
        let next = match (&op.call, &op.completed) {
            (Call::Write(v), _) => Some(Some(v.clone())),
            (Call::Read, Some((_, seen_value))) if *seen_value == state => Some(state.clone()),
            _ => None,
        };
        if let Some(next) = next
            && search(ops, completed_mask, done | (1 << i), next, seen)
        {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(call: Call, invoked: u64, completed: Option<(u64, Value)>) -> Operation {
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
            op(Call::Write(b"1".to_vec()), 0, Some((1, None))),
            op(Call::Read, 2, Some((3, v("1")))),
        ];
        assert!(check_register(None, &h).is_ok());
    }

    #[test]
    fn stale_read_after_a_completed_write_is_caught() {
        let h = vec![
            op(Call::Write(b"1".to_vec()), 0, Some((1, None))),
            op(Call::Write(b"2".to_vec()), 2, Some((3, None))),
            op(Call::Read, 4, Some((5, v("1")))),
        ];
        assert!(check_register(None, &h).is_err());
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        let h = vec![
            op(Call::Write(b"1".to_vec()), 0, Some((10, None))),
            op(Call::Read, 1, Some((2, None))),
            op(Call::Read, 3, Some((4, v("1")))),
        ];
        assert!(check_register(None, &h).is_ok());
    }

    #[test]
    fn a_write_without_an_answer_may_or_may_not_have_happened() {
        let lost = vec![
            op(Call::Write(b"1".to_vec()), 0, None),
            op(Call::Read, 5, Some((6, None))),
        ];
        assert!(check_register(None, &lost).is_ok());
        let applied = vec![
            op(Call::Write(b"1".to_vec()), 0, None),
            op(Call::Read, 5, Some((6, v("1")))),
        ];
        assert!(check_register(None, &applied).is_ok());
        let invented = vec![op(Call::Read, 5, Some((6, v("9"))))];
        assert!(check_register(None, &invented).is_err());
    }
}
