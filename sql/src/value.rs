//! AWS IoT SQL's values: Int and Decimal of 34 digits, Boolean, String, Array, Object, Null
//! and Undefined, with the implicit conversions the operators and functions apply.

use std::fmt::Write as _;
use std::str::FromStr;

use bigdecimal::{BigDecimal, RoundingMode, Signed, ToPrimitive, Zero};
use indexmap::IndexMap;

/// Digits an Int or a Decimal keeps.
pub const PRECISION: u64 = 34;
/// The largest Int magnitude: 34 nines.
const INT_LIMIT: i128 = 9_999_999_999_999_999_999_999_999_999_999_999;

pub type Map = IndexMap<String, Value>;

#[derive(Debug, Clone, Default)]
pub enum Value {
    /// A path that leads nowhere, a failed conversion, a function given the wrong types. Left
    /// out of objects; alone it serialises as `""`.
    #[default]
    Undefined,
    Null,
    Bool(bool),
    Int(i128),
    Decimal(Box<BigDecimal>),
    String(String),
    Array(Vec<Value>),
    Object(Map),
}

impl PartialEq for Value {
    /// Structural equality (objects ignore key order), as `=` sees it for equal types.
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Undefined, Value::Undefined) | (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::String(a), Value::String(b)) => a == b,
            (Value::Array(a), Value::Array(b)) => a == b,
            (Value::Object(a), Value::Object(b)) => {
                a.len() == b.len() && a.iter().all(|(k, v)| b.get(k) == Some(v))
            }
            (a, b) => match (a.as_number(), b.as_number()) {
                (Some(x), Some(y)) => x == y,
                _ => false,
            },
        }
    }
}

/// A number of either kind, for arithmetic and comparison.
#[derive(Debug, Clone)]
pub enum Number {
    Int(i128),
    Decimal(BigDecimal),
}

impl PartialEq for Number {
    fn eq(&self, other: &Number) -> bool {
        match (self, other) {
            (Number::Int(a), Number::Int(b)) => a == b,
            (a, b) => a.to_decimal() == b.to_decimal(),
        }
    }
}

impl Number {
    pub fn to_decimal(&self) -> BigDecimal {
        match self {
            Number::Int(i) => BigDecimal::from(*i),
            Number::Decimal(d) => d.clone(),
        }
    }

    pub fn into_value(self) -> Value {
        match self {
            Number::Int(i) => Value::int(i),
            Number::Decimal(d) => Value::decimal(d),
        }
    }

    pub fn to_f64(&self) -> Option<f64> {
        match self {
            Number::Int(i) => Some(*i as f64),
            Number::Decimal(d) => d.to_f64(),
        }
    }
}

impl Value {
    /// An Int, or a Decimal beyond 34 digits.
    pub fn int(i: i128) -> Value {
        if (-INT_LIMIT..=INT_LIMIT).contains(&i) {
            Value::Int(i)
        } else {
            Value::decimal(BigDecimal::from(i))
        }
    }

    /// A Decimal rounded to 34 significant digits; Undefined beyond AWS's range (magnitudes
    /// from 1E-999 to 9.99E999), which also keeps a hostile exponent from costing anything.
    pub fn decimal(d: BigDecimal) -> Value {
        let d = d.with_precision_round(
            std::num::NonZeroU64::new(PRECISION).unwrap_or(std::num::NonZeroU64::MIN),
            RoundingMode::HalfEven,
        );
        if !d.is_zero() {
            let (digits, scale) = d.as_bigint_and_exponent();
            let length = digits.abs().to_string().len() as i64;
            let exponent = length - 1 - scale;
            if !(-999..=999).contains(&exponent) {
                return Value::Undefined;
            }
        }
        Value::Decimal(Box::new(d))
    }

    pub fn from_f64(f: f64) -> Value {
        if !f.is_finite() {
            return Value::Undefined;
        }
        match BigDecimal::from_str(&format!("{f:e}")) {
            Ok(d) => Value::decimal(d),
            Err(_) => Value::Undefined,
        }
    }

    pub fn string(s: impl Into<String>) -> Value {
        Value::String(s.into())
    }

    pub fn is_undefined(&self) -> bool {
        matches!(self, Value::Undefined)
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Undefined => "Undefined",
            Value::Null => "Null",
            Value::Bool(_) => "Boolean",
            Value::Int(_) => "Int",
            Value::Decimal(_) => "Decimal",
            Value::String(_) => "String",
            Value::Array(_) => "Array",
            Value::Object(_) => "Object",
        }
    }

    /// The value as a number without conversion: Int or Decimal only.
    pub fn as_number(&self) -> Option<Number> {
        match self {
            Value::Int(i) => Some(Number::Int(*i)),
            Value::Decimal(d) => Some(Number::Decimal((**d).clone())),
            _ => None,
        }
    }

    /// The value as a number, converting a numeric string (as a Decimal); a Boolean never.
    pub fn to_number(&self) -> Option<Number> {
        match self {
            Value::Int(_) | Value::Decimal(_) => self.as_number(),
            Value::String(s) => numeric_string(s).map(Number::Decimal),
            _ => None,
        }
    }

    /// The value converted to Int: a Decimal rounds to the nearest, a string is read as a
    /// Decimal and truncated.
    pub fn to_int(&self) -> Option<i128> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Decimal(d) => d.with_scale_round(0, RoundingMode::HalfUp).to_i128(),
            Value::String(s) => numeric_string(s)?
                .with_scale_round(0, RoundingMode::Down)
                .to_i128(),
            _ => None,
        }
    }

    /// The value converted to Boolean: only a Boolean, or "true"/"false" in any case.
    pub fn to_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
            _ => None,
        }
    }

    /// The value converted to String: arrays and objects become JSON, Null and Undefined
    /// nothing.
    pub fn to_text(&self) -> Option<String> {
        match self {
            Value::Undefined | Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_json()),
        }
    }

    /// The value as JSON text; Undefined members are left out, Undefined alone is `""`.
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        self.write_json(&mut out);
        out
    }

    pub fn write_json(&self, out: &mut String) {
        match self {
            Value::Undefined => out.push_str("\"\""),
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Decimal(d) => write_decimal(d, out),
            Value::String(s) => write_json_string(s, out),
            Value::Array(items) => {
                out.push('[');
                let mut first = true;
                for item in items.iter().filter(|v| !v.is_undefined()) {
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    item.write_json(out);
                }
                out.push(']');
            }
            Value::Object(map) => {
                out.push('{');
                let mut first = true;
                for (k, v) in map.iter().filter(|(_, v)| !v.is_undefined()) {
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    write_json_string(k, out);
                    out.push(':');
                    v.write_json(out);
                }
                out.push('}');
            }
        }
    }

    /// A member of an object, Undefined when there is none.
    pub fn field(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Object(map) => map.get(name),
            _ => None,
        }
    }

    /// Whole-number Decimals as Ints, all the way down (SQL version 2016-03-23's output).
    pub fn normalize_integral(&mut self) {
        match self {
            Value::Decimal(d) if d.is_integer() => {
                if let Some(i) = d.to_i128().filter(|i| (-INT_LIMIT..=INT_LIMIT).contains(i)) {
                    *self = Value::Int(i);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(Value::normalize_integral),
            Value::Object(map) => map.values_mut().for_each(Value::normalize_integral),
            _ => {}
        }
    }
}

/// A string that reads as a number (`^-?\d+(\.\d+)?([eE]-?\d+)?$`), as a Decimal.
pub fn numeric_string(s: &str) -> Option<BigDecimal> {
    let bytes = s.as_bytes();
    let mut i = usize::from(bytes.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while bytes.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i > start
    };
    if !digits(&mut i) {
        return None;
    }
    if bytes.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return None;
        }
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        if bytes.get(i) == Some(&b'-') {
            i += 1;
        }
        if !digits(&mut i) {
            return None;
        }
    }
    if i != bytes.len() {
        return None;
    }
    match Value::decimal(BigDecimal::from_str(s).ok()?) {
        Value::Decimal(d) => Some(*d),
        _ => None,
    }
}

fn write_decimal(d: &BigDecimal, out: &mut String) {
    if d.is_zero() {
        out.push('0');
        return;
    }
    let normalized = d.normalized();
    let (_, scale) = normalized.as_bigint_and_exponent();
    // Plain digits for ordinary magnitudes, an exponent (valid JSON) beyond; a whole Decimal
    // keeps a fraction digit, so it reads back as one.
    if (-40..=40).contains(&scale) {
        let _ = write!(out, "{}", normalized.to_plain_string());
        if scale <= 0 {
            out.push_str(".0");
        }
    } else {
        let _ = write!(out, "{}", normalized.to_scientific_notation());
    }
}

fn write_json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl<'de> serde::Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> serde::de::Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(i128::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(i128::from(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from_f64(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::with_capacity(access.size_hint().unwrap_or(0));
        while let Some((k, v)) = access.next_entry::<String, Value>()? {
            map.insert(k, v);
        }
        Ok(Value::Object(map))
    }
}

impl From<&serde_json::Value> for Value {
    fn from(json: &serde_json::Value) -> Value {
        match json {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => Value::Int(i128::from(i)),
                (_, Some(u), _) => Value::Int(i128::from(u)),
                (_, _, Some(f)) => Value::from_f64(f),
                _ => Value::Undefined,
            },
            serde_json::Value::String(s) => Value::String(s.clone()),
            serde_json::Value::Array(items) => {
                Value::Array(items.iter().map(Value::from).collect())
            }
            serde_json::Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), Value::from(v)))
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_strings_are_those_aws_converts() {
        for yes in ["1", "-1", "1.5", "10e3", "1.5E-2", "0"] {
            assert!(numeric_string(yes).is_some(), "{yes}");
        }
        for no in ["", "-", "1.", ".5", "+1", "1e", "0x10", " 1", "1 ", "NaN"] {
            assert!(numeric_string(no).is_none(), "{no}");
        }
    }

    #[test]
    fn undefined_members_are_left_out_and_undefined_alone_is_an_empty_string() {
        let mut map = Map::new();
        map.insert("a".into(), Value::Int(1));
        map.insert("b".into(), Value::Undefined);
        map.insert(
            "c".into(),
            Value::Array(vec![Value::Undefined, Value::Null]),
        );
        assert_eq!(Value::Object(map).to_json(), r#"{"a":1,"c":[null]}"#);
        assert_eq!(Value::Undefined.to_json(), r#""""#);
    }

    #[test]
    fn decimals_keep_34_digits_and_print_plainly() {
        let d = BigDecimal::from_str("1.23456789012345678901234567890123456789").unwrap();
        assert_eq!(
            Value::decimal(d).to_json(),
            "1.234567890123456789012345678901235"
        );
        assert_eq!(Value::from_f64(72.5).to_json(), "72.5");
        assert_eq!(Value::from_f64(0.1).to_json(), "0.1");
    }
}
