//! The functions, resolved by name when a statement is compiled. Wrong types or a wrong
//! number of arguments give Undefined, as AWS's do; nothing raises.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;

use base64::Engine as _;
use bigdecimal::{BigDecimal, RoundingMode, Signed, ToPrimitive, Zero};
use regex::Regex;

use crate::ast::SqlVersion;
use crate::eval::Context;
use crate::value::{Number, Value};

type Imp = fn(&[Cow<'_, Value>], &Context<'_>) -> Value;

/// A function as a compiled statement calls it.
#[derive(Clone, Copy)]
pub struct Function {
    name: &'static str,
    imp: Imp,
    /// Its result depends on its arguments only, so a call on constants is folded.
    pure: bool,
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl Function {
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn is_pure(&self) -> bool {
        self.pure
    }

    pub fn call(&self, args: &[Cow<'_, Value>], cx: &Context<'_>) -> Value {
        (self.imp)(args, cx)
    }
}

/// What a name needs: the SQL version it appeared in, whether calls may be folded.
struct Entry {
    name: &'static str,
    imp: Imp,
    since_2016: bool,
    pure: bool,
}

const fn pure(name: &'static str, imp: Imp) -> Entry {
    Entry {
        name,
        imp,
        since_2016: false,
        pure: true,
    }
}

const fn pure_2016(name: &'static str, imp: Imp) -> Entry {
    Entry {
        name,
        imp,
        since_2016: true,
        pure: true,
    }
}

const fn contextual(name: &'static str, imp: Imp, since_2016: bool) -> Entry {
    Entry {
        name,
        imp,
        since_2016,
        pure: false,
    }
}

const FUNCTIONS: &[Entry] = &[
    // Math.
    pure("abs", abs),
    pure("ceil", ceil),
    pure("floor", floor),
    pure("round", round),
    pure("mod", remainder),
    pure("remainder", remainder),
    pure("trunc", trunc),
    contextual("rand", rand, false),
    pure("sign", sign),
    pure("sqrt", |a, _| float1(a, f64::sqrt)),
    pure("exp", |a, _| float1(a, f64::exp)),
    pure("ln", |a, _| float1(a, f64::ln)),
    pure("log", |a, _| float1(a, f64::log10)),
    pure("sin", |a, _| float1(a, f64::sin)),
    pure("cos", |a, _| float1(a, f64::cos)),
    pure("tan", |a, _| float1(a, f64::tan)),
    pure("asin", |a, _| float1(a, f64::asin)),
    pure("acos", |a, _| float1(a, f64::acos)),
    pure("atan", |a, _| float1(a, f64::atan)),
    pure("sinh", |a, _| float1(a, f64::sinh)),
    pure("cosh", |a, _| float1(a, f64::cosh)),
    pure("tanh", |a, _| float1(a, f64::tanh)),
    pure("atan2", |a, _| float2(a, f64::atan2)),
    pure("power", |a, _| float2(a, f64::powf)),
    pure("nanvl", nanvl),
    pure("bitand", |a, _| bits(a, |x, y| x & y)),
    pure("bitor", |a, _| bits(a, |x, y| x | y)),
    pure("bitxor", |a, _| bits(a, |x, y| x ^ y)),
    pure("bitnot", bitnot),
    // Strings.
    pure("concat", concat),
    pure("startswith", |a, _| {
        text2(a, |s, t| Value::Bool(s.starts_with(t)))
    }),
    pure("endswith", |a, _| {
        text2(a, |s, t| Value::Bool(s.ends_with(t)))
    }),
    pure_2016("indexof", |a, _| {
        text2(a, |s, t| {
            Value::int(s.find(t).map_or(-1, |at| s[..at].chars().count() as i128))
        })
    }),
    pure_2016("length", |a, _| {
        text1(a, |s| Value::int(s.chars().count() as i128))
    }),
    pure_2016("numbytes", |a, _| text1(a, |s| Value::int(s.len() as i128))),
    pure("lower", |a, _| {
        text1(a, |s| Value::String(s.to_lowercase()))
    }),
    pure("upper", |a, _| {
        text1(a, |s| Value::String(s.to_uppercase()))
    }),
    pure("trim", |a, _| text1(a, |s| Value::string(s.trim()))),
    pure("ltrim", |a, _| text1(a, |s| Value::string(s.trim_start()))),
    pure("rtrim", |a, _| text1(a, |s| Value::string(s.trim_end()))),
    pure("lpad", |a, _| pad(a, true)),
    pure("rpad", |a, _| pad(a, false)),
    pure("replace", replace),
    pure("substring", substring),
    pure("regexp_matches", regexp_matches),
    pure("regexp_replace", regexp_replace),
    pure("regexp_substr", regexp_substr),
    pure("chr", chr),
    // Types.
    pure("isnull", |a, _| {
        Value::Bool(matches!(arg(a, 0), Value::Null))
    }),
    pure_2016("isundefined", |a, _| Value::Bool(arg(a, 0).is_undefined())),
    pure("get", get),
    // Encoding and hashes.
    pure_2016("encode", encode),
    pure_2016("decode", decode),
    pure("md2", |a, _| hash::<md2::Md2>(a)),
    pure("md5", |a, _| hash::<md5::Md5>(a)),
    pure("sha1", |a, _| hash::<sha1::Sha1>(a)),
    pure("sha224", |a, _| hash::<sha2::Sha224>(a)),
    pure("sha256", |a, _| hash::<sha2::Sha256>(a)),
    pure("sha384", |a, _| hash::<sha2::Sha384>(a)),
    pure("sha512", |a, _| hash::<sha2::Sha512>(a)),
    // The message and the account.
    contextual("topic", topic, false),
    contextual("clientid", clientid, false),
    contextual("principal", principal, false),
    contextual(
        "timestamp",
        |_, cx| Value::int(i128::from(cx.message.timestamp_ms)),
        false,
    ),
    contextual("newuuid", |_, _| Value::String(new_uuid()), false),
    contextual(
        "accountid",
        |_, cx| Value::string(cx.env.account_id()),
        false,
    ),
    contextual("traceid", traceid, false),
    contextual(
        "sql_version",
        |_, cx| Value::string(cx.version.as_str()),
        false,
    ),
    // Time, with Joda-Time patterns.
    pure_2016("parse_time", parse_time),
    pure_2016("time_to_epoch", |a, _| {
        text2(a, |text, pattern| {
            crate::time::parse(text, pattern)
                .map_or(Value::Undefined, |ms| Value::int(i128::from(ms)))
        })
    }),
    contextual("get_thing_shadow", get_thing_shadow, true),
    contextual("get_mqtt_property", get_mqtt_property, false),
    contextual("get_user_properties", get_user_properties, false),
];

/// The function called `name` (in any case) in statements of `version`.
pub fn lookup(name: &str, version: SqlVersion) -> Option<Function> {
    let lower = name.to_ascii_lowercase();
    FUNCTIONS
        .iter()
        .find(|f| f.name == lower && (version.is_2016() || !f.since_2016))
        .map(|f| Function {
            name: f.name,
            imp: f.imp,
            pure: f.pure,
        })
}

/// The `encode` of the raw input (`encode(*, 'base64')`), chosen when the statement is
/// compiled.
pub fn encode_input() -> Function {
    Function {
        name: "encode",
        imp: |a, cx| match arg(a, 0).to_text().as_deref() {
            Some("base64") => {
                Value::String(base64::engine::general_purpose::STANDARD.encode(cx.message.payload))
            }
            _ => Value::Undefined,
        },
        pure: false,
    }
}

fn arg<'v>(args: &'v [Cow<'_, Value>], i: usize) -> &'v Value {
    args.get(i).map_or(&Value::Undefined, |v| v.as_ref())
}

/// A scalar as text: strings as they are, numbers and Booleans written out.
fn scalar_text(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Int(_) | Value::Decimal(_) | Value::Bool(_) => Some(Cow::Owned(value.to_json())),
        _ => None,
    }
}

fn text1(args: &[Cow<'_, Value>], f: impl Fn(&str) -> Value) -> Value {
    if args.len() != 1 {
        return Value::Undefined;
    }
    scalar_text(arg(args, 0)).map_or(Value::Undefined, |s| f(&s))
}

fn text2(args: &[Cow<'_, Value>], f: impl Fn(&str, &str) -> Value) -> Value {
    if args.len() != 2 {
        return Value::Undefined;
    }
    match (scalar_text(arg(args, 0)), scalar_text(arg(args, 1))) {
        (Some(a), Some(b)) => f(&a, &b),
        _ => Value::Undefined,
    }
}

fn number1(args: &[Cow<'_, Value>]) -> Option<Number> {
    if args.len() != 1 {
        return None;
    }
    arg(args, 0).to_number()
}

/// `parse_time(pattern, millis[, zone])`: the time written by a Joda-Time pattern.
fn parse_time(args: &[Cow<'_, Value>], _: &Context<'_>) -> Value {
    if !(2..=3).contains(&args.len()) {
        return Value::Undefined;
    }
    let Value::String(pattern) = arg(args, 0) else {
        return Value::Undefined;
    };
    let millis = match arg(args, 1).to_number() {
        Some(Number::Int(i)) => i64::try_from(i).ok(),
        Some(Number::Decimal(d)) => d.with_scale_round(0, RoundingMode::Down).to_i64(),
        None => None,
    };
    let zone = match arg(args, 2) {
        Value::Undefined if args.len() == 2 => None,
        Value::String(zone) => Some(zone.as_str()),
        _ => return Value::Undefined,
    };
    millis
        .and_then(|ms| crate::time::format(pattern, ms, zone))
        .map_or(Value::Undefined, Value::String)
}

fn abs(args: &[Cow<'_, Value>], _: &Context<'_>) -> Value {
    match number1(args) {
        Some(Number::Int(i)) => Value::int(i.abs()),
        Some(Number::Decimal(d)) => Value::decimal(d.abs()),
        None => Value::Undefined,
    }
}

fn to_int_with(args: &[Cow<'_, Value>], mode: RoundingMode) -> Value {
    match number1(args) {
        Some(Number::Int(i)) => Value::int(i),
        Some(Number::Decimal(d)) => d
            .with_scale_round(0, mode)
            .to_i128()
            .map_or(Value::Undefined, Value::int),
        None => Value::Undefined,
    }
}

fn ceil(args: &[Cow<'_, Value>], _: &Context<'_>) -> Value {
    to_int_with(args, RoundingMode::Ceiling)
}

fn floor(args: &[Cow<'_, Value>], _: &Context<'_>) -> Value {
    to_int_with(args, RoundingMode::Floor)
}

/// To the nearest Int, halves toward positive infinity (`round(-1.5)` is -1).
fn round(args: &[Cow<'_, Value>], _: &Context<'_>) -> Value {
    match number1(args) {
        Some(Number::Int(i)) => Value::int(i),
        Some(Number::Decimal(d)) => (d + BigDecimal::new(5.into(), 1))
            .with_scale_round(0, RoundingMode::Floor)
            .to_i128()
            .map_or(Value::Undefined, Value::int),
        None => Value::Undefined,
    }
}

fn remainder(args: &[Cow<'_, Value>], _: &Context<'_>) -> Value {
    if args.len() != 2 {
        return Value::Undefined;
    }
    crate::ops::binary(crate::ast::BinaryOp::Rem, arg(args, 0), arg(args, 1))
}

/// Cut to `n` decimal places (0 to 34), trailing zeros dropped.
fn trunc(args: &[Cow<'_, Value>], _: &Context<'_>) -> Value {
    if args.len() != 2 {
        return Value::Undefined;
    }
    let (Some(x), Some(places)) = (arg(args, 0).to_number(), arg(args, 1).to_int()) else {
        return Value::Undefined;
    };
    let places = places.clamp(0, 34) as i64;
    match x {
        Number::Int(i) => Value::int(i),
        Number::Decimal(d) => {
            let cut = d.with_scale_round(places, RoundingMode::Down).normalized();
            if cut.is_integer() {
                cut.to_i128()
                    .map_or_else(|| Value::decimal(cut), Value::int)
            } else {
                Value::decimal(cut)
            }
        }
    }
}

fn rand(args: &[Cow<'_, Value>], _: &Context<'_>) -> Value {
    if !args.is_empty() {
        return Value::Undefined;
    }
    Value::from_f64(rand::random::<f64>())
}

fn sign(args: &[Cow<'_, Value>], _: &Context<'_>) -> Value {
    match number1(args) {
        Some(Number::Int(i)) => Value::Int(i.signum()),
        Some(Number::Decimal(d)) => Value::Int(if d.is_zero() {
            0
        } else if d.is_negative() {
            -1
        } else {
            1
        }),
        None => Value::Undefined,
    }
}

fn float1(args: &[Cow<'_, Value>], f: fn(f64) -> f64) -> Value {
    number1(args)
        .and_then(|n| n.to_f64())
        .map_or(Value::Undefined, |x| Value::from_f64(f(x)))
}

fn float2(args: &[Cow<'_, Value>], f: fn(f64, f64) -> f64) -> Value {
    if args.len() != 2 {
        return Value::Undefined;
    }
    let x = arg(args, 0).to_number().and_then(|n| n.to_f64());
    let y = arg(args, 1).to_number().and_then(|n| n.to_f64());
    match (x, y) {
        (Some(x), Some(y)) => Value::from_f64(f(x, y)),
        _ => Value::Undefined,
    }
}

/// The first argument, or the second when the first is not a number.
fn nanvl(args: &[Cow<'_, Value>], _: &Context<'_>) -> Value {
    if args.len() != 2 {
        return Value::Undefined;
    }
    let first = arg(args, 0);
    if first.to_number().is_some() {
        first.clone()
    } else {
        arg(args, 1).clone()
    }
}

fn bits(args: &[Cow<'_, Value>], f: fn(i128, i128) -> i128) -> Value {
    if args.len() != 2 {
        return Value::Undefined;
    }
    match (arg(args, 0), arg(args, 1)) {
        (Value::Int(a), Value::Int(b)) => Value::int(f(*a, *b)),
        _ => Value::Undefined,
    }
}

fn bitnot(args: &[Cow<'_, Value>], _: &Context<'_>) -> Value {
    match (args.len(), arg(args, 0)) {
        (1, Value::Int(i)) => Value::int(!i),
        _ => Value::Undefined,
    }
}

/// Strings joined; an Array among the arguments makes the result an Array of them all.
fn concat(args: &[Cow<'_, Value>], _: &Context<'_>) -> Value {
    if args.is_empty()
        || args
            .iter()
            .any(|a| matches!(a.as_ref(), Value::Undefined | Value::Null))
    {
        return Value::Undefined;
    }
    if args.iter().any(|a| matches!(a.as_ref(), Value::Array(_))) {
        let mut items = Vec::new();
        for a in args {
            match a.as_ref() {
                Value::Array(inner) => items.extend(inner.iter().cloned()),
                other => items.push(other.clone()),
            }
        }
        return Value::Array(items);
    }
    let mut out = String::new();
    for a in args {
        match a.to_text() {
            Some(text) => out.push_str(&text),
            None => return Value::Undefined,
        }
    }
    Value::String(out)
}

/// `n` spaces (0 to 1000) added before or after.
fn pad(args: &[Cow<'_, Value>], left: bool) -> Value {
    if args.len() != 2 {
        return Value::Undefined;
    }
    let (Some(s), Some(n)) = (scalar_text(arg(args, 0)), arg(args, 1).to_int()) else {
        return Value::Undefined;
    };
    let spaces = " ".repeat(n.clamp(0, 1000) as usize);
    Value::String(if left {
        spaces + &s
    } else {
        s.into_owned() + &spaces
    })
}

fn replace(args: &[Cow<'_, Value>], _: &Context<'_>) -> Value {
    if args.len() != 3 {
        return Value::Undefined;
    }
    match (
        scalar_text(arg(args, 0)),
        scalar_text(arg(args, 1)),
        scalar_text(arg(args, 2)),
    ) {
        (Some(s), Some(from), Some(to)) => Value::String(s.replace(from.as_ref(), &to)),
        _ => Value::Undefined,
    }
}

/// Characters `start..end`, 0-based; indices are rounded down and clamped, and an empty
/// string comes of `start >= end`.
fn substring(args: &[Cow<'_, Value>], _: &Context<'_>) -> Value {
    if !(2..=3).contains(&args.len()) {
        return Value::Undefined;
    }
    let Some(s) = scalar_text(arg(args, 0)) else {
        return Value::Undefined;
    };
    let index = |v: &Value| -> Option<i128> {
        v.to_number().and_then(|n| match n {
            Number::Int(i) => Some(i),
            Number::Decimal(d) => d.with_scale_round(0, RoundingMode::Floor).to_i128(),
        })
    };
    let chars: Vec<char> = s.chars().collect();
    let len = chars.len() as i128;
    let Some(start) = index(arg(args, 1)) else {
        return Value::Undefined;
    };
    let end = match args.get(2) {
        Some(end) => match index(end) {
            Some(end) => end,
            None => return Value::Undefined,
        },
        None => len,
    };
    let (start, end) = (start.clamp(0, len) as usize, end.clamp(0, len) as usize);
    if start >= end {
        return Value::string("");
    }
    Value::String(chars[start..end].iter().collect())
}

thread_local! {
    static PATTERNS: RefCell<HashMap<String, Option<Regex>>> = RefCell::new(HashMap::new());
}

/// A compiled pattern, kept per thread: rules call the same few patterns on every message.
fn with_pattern<T>(pattern: &str, f: impl FnOnce(&Regex) -> T) -> Option<T> {
    PATTERNS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if !cache.contains_key(pattern) {
            if cache.len() >= 256 {
                cache.clear();
            }
            cache.insert(pattern.to_owned(), Regex::new(pattern).ok());
        }
        cache.get(pattern).and_then(Option::as_ref).map(f)
    })
}

fn regexp_matches(args: &[Cow<'_, Value>], _: &Context<'_>) -> Value {
    text2(args, |s, pattern| {
        with_pattern(pattern, |re| Value::Bool(re.is_match(s))).unwrap_or(Value::Undefined)
    })
}

fn regexp_substr(args: &[Cow<'_, Value>], _: &Context<'_>) -> Value {
    text2(args, |s, pattern| {
        with_pattern(pattern, |re| {
            Value::string(re.find(s).map_or("", |m| m.as_str()))
        })
        .unwrap_or(Value::Undefined)
    })
}

fn regexp_replace(args: &[Cow<'_, Value>], _: &Context<'_>) -> Value {
    if args.len() != 3 {
        return Value::Undefined;
    }
    let (Some(s), Some(pattern), Some(replacement)) = (
        scalar_text(arg(args, 0)),
        scalar_text(arg(args, 1)),
        scalar_text(arg(args, 2)),
    ) else {
        return Value::Undefined;
    };
    let replacement = java_replacement(&replacement);
    with_pattern(&pattern, |re| {
        Value::String(re.replace_all(&s, replacement.as_str()).into_owned())
    })
    .unwrap_or(Value::Undefined)
}

/// Java's `$1` group references in Rust's spelling (`${1}`), so that `$1a` is group 1 then
/// `a`.
fn java_replacement(replacement: &str) -> String {
    let mut out = String::with_capacity(replacement.len());
    let mut chars = replacement.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('$') => out.push_str("$$"),
                Some(other) => out.push(other),
                None => out.push('\\'),
            },
            '$' if chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push_str("${");
                while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                    out.push(d);
                    chars.next();
                }
                out.push('}');
            }
            '$' => out.push_str("$$"),
            other => out.push(other),
        }
    }
    out
}

fn chr(args: &[Cow<'_, Value>], _: &Context<'_>) -> Value {
    if args.len() != 1 {
        return Value::Undefined;
    }
    arg(args, 0)
        .to_int()
        .and_then(|code| u32::try_from(code).ok())
        .and_then(char::from_u32)
        .map_or(Value::Undefined, |c| Value::String(c.to_string()))
}

/// An element of an array or a string by 0-based index, or a member of an object by name.
fn get(args: &[Cow<'_, Value>], _: &Context<'_>) -> Value {
    if args.len() != 2 {
        return Value::Undefined;
    }
    match (arg(args, 0), arg(args, 1)) {
        (Value::Array(items), index) => index
            .to_int()
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| items.get(i))
            .cloned()
            .unwrap_or(Value::Undefined),
        (Value::String(s), index) => index
            .to_int()
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| s.chars().nth(i))
            .map_or(Value::Undefined, |c| Value::String(c.to_string())),
        (Value::Object(map), key) => key
            .to_text()
            .and_then(|k| map.get(&k).cloned())
            .unwrap_or(Value::Undefined),
        _ => Value::Undefined,
    }
}

fn encode(args: &[Cow<'_, Value>], _: &Context<'_>) -> Value {
    if args.len() != 2 || arg(args, 1).to_text().as_deref() != Some("base64") {
        return Value::Undefined;
    }
    arg(args, 0).to_text().map_or(Value::Undefined, |text| {
        Value::String(base64::engine::general_purpose::STANDARD.encode(text.as_bytes()))
    })
}

/// Base64 decoded: a JSON value if it is one, else the text; Null if it does not decode.
fn decode(args: &[Cow<'_, Value>], _: &Context<'_>) -> Value {
    if args.len() != 2 || arg(args, 1).to_text().as_deref() != Some("base64") {
        return Value::Undefined;
    }
    let Some(text) = arg(args, 0).to_text() else {
        return Value::Undefined;
    };
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(text.trim()) else {
        return Value::Null;
    };
    if let Ok(value @ (Value::Object(_) | Value::Array(_))) =
        serde_json::from_slice::<Value>(&bytes)
    {
        return value;
    }
    match String::from_utf8(bytes) {
        Ok(s) => Value::String(s),
        Err(_) => Value::Null,
    }
}

fn hash<D: sha2::Digest>(args: &[Cow<'_, Value>]) -> Value {
    if args.len() != 1 {
        return Value::Undefined;
    }
    let Some(text) = arg(args, 0).to_text() else {
        return Value::Undefined;
    };
    let digest = D::digest(text.as_bytes());
    Value::String(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// The topic, or its `n`th level (1-based).
fn topic(args: &[Cow<'_, Value>], cx: &Context<'_>) -> Value {
    let topic = cx.message.topic;
    match args.len() {
        0 => Value::string(topic),
        1 => arg(args, 0)
            .to_int()
            .filter(|n| *n >= 1)
            .and_then(|n| topic.split('/').nth((n - 1) as usize))
            .map_or(Value::Undefined, Value::string),
        _ => Value::Undefined,
    }
}

fn clientid(_: &[Cow<'_, Value>], cx: &Context<'_>) -> Value {
    Value::string(cx.message.client_id.unwrap_or("n/a"))
}

fn principal(_: &[Cow<'_, Value>], cx: &Context<'_>) -> Value {
    cx.message.principal.map_or(Value::Undefined, Value::string)
}

fn traceid(_: &[Cow<'_, Value>], cx: &Context<'_>) -> Value {
    Value::String(cx.message.trace_id.map_or_else(new_uuid, str::to_owned))
}

/// `get_thing_shadow(thing, [shadow name,] roleArn)`: the shadow document as the store
/// holds it.
fn get_thing_shadow(args: &[Cow<'_, Value>], cx: &Context<'_>) -> Value {
    let (thing, name) = match args.len() {
        2 => (arg(args, 0).to_text(), None),
        3 => (arg(args, 0).to_text(), arg(args, 1).to_text()),
        _ => return Value::Undefined,
    };
    let Some(thing) = thing else {
        return Value::Undefined;
    };
    cx.env
        .thing_shadow(&thing, name.as_deref())
        .unwrap_or(Value::Undefined)
}

fn get_mqtt_property(args: &[Cow<'_, Value>], cx: &Context<'_>) -> Value {
    if args.len() != 1 {
        return Value::Undefined;
    }
    let Some(name) = arg(args, 0).to_text() else {
        return Value::Undefined;
    };
    let properties = &cx.message.properties;
    match name.to_ascii_lowercase().as_str() {
        "content_type" => properties
            .content_type
            .as_deref()
            .map_or(Value::Undefined, Value::string),
        "format_indicator" => match properties.payload_format_utf8 {
            Some(true) => Value::string("UTF8_DATA"),
            Some(false) => Value::string("UNSPECIFIED_BYTES"),
            None => Value::Undefined,
        },
        "response_topic" => properties
            .response_topic
            .as_deref()
            .map_or(Value::Undefined, Value::string),
        "correlation_data" => properties
            .correlation_data
            .as_deref()
            .map_or(Value::Undefined, |d| {
                Value::String(base64::engine::general_purpose::STANDARD.encode(d))
            }),
        _ => Value::Undefined,
    }
}

/// Every user property as `{name: value}` objects, or the values of one name.
fn get_user_properties(args: &[Cow<'_, Value>], cx: &Context<'_>) -> Value {
    let properties = &cx.message.properties.user_properties;
    match args.len() {
        0 => Value::Array(
            properties
                .iter()
                .map(|(k, v)| {
                    let mut map = crate::value::Map::new();
                    map.insert(k.clone(), Value::String(v.clone()));
                    Value::Object(map)
                })
                .collect(),
        ),
        1 => {
            let Some(key) = arg(args, 0).to_text() else {
                return Value::Undefined;
            };
            let values: Vec<Value> = properties
                .iter()
                .filter(|(k, _)| *k == key)
                .map(|(_, v)| Value::String(v.clone()))
                .collect();
            if values.is_empty() {
                Value::Undefined
            } else {
                Value::Array(values)
            }
        }
        _ => Value::Undefined,
    }
}

/// A random (version 4) UUID.
pub fn new_uuid() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}
