//! The operators, by AWS IoT SQL's tables: what each does with each pair of types, Undefined
//! where the tables say so.

use std::cmp::Ordering;

use bigdecimal::{BigDecimal, Zero};

use crate::ast::BinaryOp;
use crate::value::{Number, Value};

pub fn binary(op: BinaryOp, left: &Value, right: &Value) -> Value {
    match op {
        BinaryOp::And => logical(left, right, |a, b| a && b),
        BinaryOp::Or => logical(left, right, |a, b| a || b),
        BinaryOp::Eq => equal(left, right),
        BinaryOp::NotEq => not_equal(left, right),
        BinaryOp::Lt => compare(left, right, Ordering::is_lt),
        BinaryOp::LtEq => compare(left, right, Ordering::is_le),
        BinaryOp::Gt => compare(left, right, Ordering::is_gt),
        BinaryOp::GtEq => compare(left, right, Ordering::is_ge),
        BinaryOp::Add => add(left, right),
        BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Rem => {
            arithmetic(op, left, right)
        }
    }
}

fn logical(left: &Value, right: &Value, f: fn(bool, bool) -> bool) -> Value {
    match (left.to_bool(), right.to_bool()) {
        (Some(a), Some(b)) => Value::Bool(f(a, b)),
        _ => Value::Undefined,
    }
}

pub fn not(value: &Value) -> Value {
    value
        .to_bool()
        .map_or(Value::Undefined, |b| Value::Bool(!b))
}

fn equal(left: &Value, right: &Value) -> Value {
    if left.is_undefined() || right.is_undefined() {
        return Value::Undefined;
    }
    Value::Bool(left == right)
}

fn not_equal(left: &Value, right: &Value) -> Value {
    if left.is_undefined() || right.is_undefined() {
        return Value::Undefined;
    }
    Value::Bool(left != right)
}

fn compare(left: &Value, right: &Value, holds: fn(Ordering) -> bool) -> Value {
    if let (Value::Int(a), Value::Int(b)) = (left, right) {
        return Value::Bool(holds(a.cmp(b)));
    }
    match (left.to_number(), right.to_number()) {
        (Some(a), Some(b)) => Value::Bool(holds(a.to_decimal().cmp(&b.to_decimal()))),
        _ => Value::Undefined,
    }
}

fn add(left: &Value, right: &Value) -> Value {
    if let (Value::Int(a), Value::Int(b)) = (left, right) {
        return a.checked_add(*b).map_or_else(
            || Value::decimal(BigDecimal::from(*a) + BigDecimal::from(*b)),
            Value::int,
        );
    }
    if matches!(left, Value::String(_)) || matches!(right, Value::String(_)) {
        return match (left.to_text(), right.to_text()) {
            (Some(a), Some(b)) => Value::String(a + &b),
            _ => Value::Undefined,
        };
    }
    match (left.as_number(), right.as_number()) {
        (Some(a), Some(b)) => Value::decimal(a.to_decimal() + b.to_decimal()),
        _ => Value::Undefined,
    }
}

fn arithmetic(op: BinaryOp, left: &Value, right: &Value) -> Value {
    if let (Value::Int(a), Value::Int(b)) = (left, right) {
        let exact = match op {
            BinaryOp::Sub => a.checked_sub(*b),
            BinaryOp::Mul => a.checked_mul(*b),
            BinaryOp::Div if *b == 0 => return Value::Undefined,
            BinaryOp::Div => a.checked_div(*b),
            BinaryOp::Rem if *b == 0 => return Value::Undefined,
            BinaryOp::Rem => a.checked_rem(*b),
            _ => None,
        };
        if let Some(i) = exact {
            return Value::int(i);
        }
    }
    let (Some(a), Some(b)) = (left.to_number(), right.to_number()) else {
        return Value::Undefined;
    };
    decimal_arithmetic(op, &a, &b)
}

fn decimal_arithmetic(op: BinaryOp, a: &Number, b: &Number) -> Value {
    let (a, b) = (a.to_decimal(), b.to_decimal());
    match op {
        BinaryOp::Sub => Value::decimal(a - b),
        BinaryOp::Mul => Value::decimal(a * b),
        BinaryOp::Div if b.is_zero() => Value::Undefined,
        BinaryOp::Div => Value::decimal(a / b),
        BinaryOp::Rem if b.is_zero() => Value::Undefined,
        BinaryOp::Rem => Value::decimal(a % b),
        _ => Value::Undefined,
    }
}

pub fn negate(value: &Value) -> Value {
    match value {
        Value::Int(i) => Value::int(-i),
        other => match other.to_number() {
            Some(n) => Value::decimal(-n.to_decimal()),
            None => Value::Undefined,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn dec(s: &str) -> Value {
        Value::decimal(BigDecimal::from_str(s).unwrap())
    }

    #[test]
    fn the_operator_tables() {
        let s = |t: &str| Value::string(t);
        let cases: Vec<(BinaryOp, Value, Value, Value)> = vec![
            (BinaryOp::Add, Value::Int(1), Value::Int(2), Value::Int(3)),
            (BinaryOp::Add, Value::Int(1), dec("2.5"), dec("3.5")),
            (BinaryOp::Add, s("a"), Value::Int(1), s("a1")),
            (
                BinaryOp::Add,
                Value::Bool(true),
                Value::Int(1),
                Value::Undefined,
            ),
            (BinaryOp::Add, s("a"), Value::Null, Value::Undefined),
            (BinaryOp::Div, Value::Int(7), Value::Int(2), Value::Int(3)),
            (
                BinaryOp::Div,
                Value::Int(7),
                Value::Int(0),
                Value::Undefined,
            ),
            (BinaryOp::Div, dec("7.0"), Value::Int(2), dec("3.5")),
            (BinaryOp::Sub, s("5"), Value::Int(2), dec("3")),
            (BinaryOp::Mul, s("x"), Value::Int(2), Value::Undefined),
            (BinaryOp::Rem, Value::Int(-7), Value::Int(2), Value::Int(-1)),
            (BinaryOp::Eq, Value::Int(2), dec("2.0"), Value::Bool(true)),
            (BinaryOp::Eq, s("2"), Value::Int(2), Value::Bool(false)),
            (
                BinaryOp::Eq,
                Value::Undefined,
                Value::Int(2),
                Value::Undefined,
            ),
            (BinaryOp::NotEq, s("2"), Value::Int(2), Value::Bool(true)),
            (
                BinaryOp::NotEq,
                Value::Null,
                Value::Null,
                Value::Bool(false),
            ),
            (BinaryOp::Lt, Value::Int(1), s("1.5"), Value::Bool(true)),
            (BinaryOp::Lt, s("a"), s("b"), Value::Undefined),
            (BinaryOp::GtEq, dec("1.5"), Value::Int(1), Value::Bool(true)),
            (
                BinaryOp::And,
                Value::Bool(true),
                s("TRUE"),
                Value::Bool(true),
            ),
            (
                BinaryOp::And,
                Value::Bool(true),
                Value::Int(1),
                Value::Undefined,
            ),
            (
                BinaryOp::Or,
                Value::Bool(false),
                s("false"),
                Value::Bool(false),
            ),
        ];
        for (op, a, b, want) in cases {
            let got = binary(op, &a, &b);
            assert!(
                got == want && got.type_name() == want.type_name(),
                "{a:?} {op:?} {b:?} = {got:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn objects_are_equal_whatever_their_key_order_arrays_only_in_order() {
        let object = |pairs: &[(&str, i128)]| {
            Value::Object(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), Value::Int(*v)))
                    .collect(),
            )
        };
        assert_eq!(
            binary(
                BinaryOp::Eq,
                &object(&[("a", 1), ("b", 2)]),
                &object(&[("b", 2), ("a", 1)])
            ),
            Value::Bool(true)
        );
        let array = |items: &[i128]| Value::Array(items.iter().map(|i| Value::Int(*i)).collect());
        assert_eq!(
            binary(BinaryOp::Eq, &array(&[1, 2]), &array(&[2, 1])),
            Value::Bool(false)
        );
    }
}
