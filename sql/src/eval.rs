//! Evaluation of a compiled statement over one message. A value read from the message or
//! from the statement is borrowed, not copied.

use std::borrow::Cow;

use bigdecimal::{BigDecimal, RoundingMode, ToPrimitive};

use crate::ast::{CastType, Expr, Item, Nested, Select, SqlVersion};
use crate::ops;
use crate::value::{Map, Value};

/// MQTT 5 properties of the message, as `get_mqtt_property` and `get_user_properties` see
/// them.
#[derive(Debug, Clone, Default)]
pub struct MqttProperties {
    pub content_type: Option<String>,
    pub payload_format_utf8: Option<bool>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Vec<u8>>,
    pub user_properties: Vec<(String, String)>,
}

/// One message as a rule sees it.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// Its topic; for Basic Ingest, without the `$aws/rules/{rule}/` prefix.
    pub topic: &'a str,
    pub payload: &'a [u8],
    /// The payload as parsed once for every rule ([`Document::parse`]).
    pub document: &'a Document,
    /// `None` when it did not come over MQTT.
    pub client_id: Option<&'a str>,
    /// The certificate id, or the caller's identity for an HTTP publish.
    pub principal: Option<&'a str>,
    /// When the broker received it, in Unix milliseconds.
    pub timestamp_ms: i64,
    pub trace_id: Option<&'a str>,
    pub properties: &'a MqttProperties,
}

/// What the functions that look outside the message read.
pub trait Environment {
    fn account_id(&self) -> &str;
    /// The thing's shadow document (`name` for a named shadow), as GetThingShadow returns it.
    fn thing_shadow(&self, thing: &str, name: Option<&str>) -> Option<Value>;
}

/// An environment with nothing in it: account `000000000000`, no shadows.
pub struct NoEnvironment;

impl Environment for NoEnvironment {
    fn account_id(&self) -> &str {
        "000000000000"
    }

    fn thing_shadow(&self, _: &str, _: Option<&str>) -> Option<Value> {
        None
    }
}

/// A payload, parsed once for every rule that reads it.
#[derive(Debug, Clone)]
pub struct Document {
    /// The JSON value; an empty payload is an empty object; `None` when it is not JSON.
    pub json: Option<Value>,
}

impl Document {
    pub fn parse(payload: &[u8]) -> Document {
        if payload.iter().all(u8::is_ascii_whitespace) {
            return Document {
                json: Some(Value::Object(Map::new())),
            };
        }
        Document {
            json: serde_json::from_slice::<Value>(payload).ok(),
        }
    }
}

pub struct Context<'a> {
    pub message: &'a Message<'a>,
    pub env: &'a dyn Environment,
    pub version: SqlVersion,
    pub vars: &'a [Value],
}

static UNDEFINED: Value = Value::Undefined;

pub fn eval<'a>(expr: &'a Expr, scope: &'a Value, cx: &'a Context<'a>) -> Cow<'a, Value> {
    match expr {
        Expr::Literal(value) => Cow::Borrowed(value),
        Expr::Path(path) => Cow::Borrowed(walk(scope, path)),
        Expr::Member(inner, name) => match eval(inner, scope, cx) {
            Cow::Borrowed(value) => Cow::Borrowed(value.field(name).unwrap_or(&UNDEFINED)),
            Cow::Owned(value) => Cow::Owned(match value {
                Value::Object(mut map) => map.swap_remove(name).unwrap_or_default(),
                _ => Value::Undefined,
            }),
        },
        Expr::Input => Cow::Borrowed(cx.message.document.json.as_ref().unwrap_or(&UNDEFINED)),
        Expr::Var(slot) => Cow::Borrowed(cx.vars.get(*slot).unwrap_or(&UNDEFINED)),
        Expr::Negate(inner) => Cow::Owned(ops::negate(&eval(inner, scope, cx))),
        Expr::Not(inner) => Cow::Owned(ops::not(&eval(inner, scope, cx))),
        Expr::Binary(op, left, right) => {
            let left = eval(left, scope, cx);
            let right = eval(right, scope, cx);
            Cow::Owned(ops::binary(*op, &left, &right))
        }
        Expr::Call(function, args) => {
            let args: Vec<Cow<'a, Value>> = args.iter().map(|a| eval(a, scope, cx)).collect();
            Cow::Owned(function.call(&args, cx))
        }
        Expr::Cast(inner, to) => Cow::Owned(cast(&eval(inner, scope, cx), *to)),
        Expr::Case {
            subject,
            arms,
            otherwise,
        } => {
            let subject = eval(subject, scope, cx);
            if subject.is_undefined() {
                return Cow::Borrowed(&UNDEFINED);
            }
            for (when, then) in arms {
                if ops::binary(crate::ast::BinaryOp::Eq, &subject, &eval(when, scope, cx)).to_bool()
                    == Some(true)
                {
                    return eval(then, scope, cx);
                }
            }
            match otherwise {
                Some(e) => eval(e, scope, cx),
                None => Cow::Borrowed(&UNDEFINED),
            }
        }
        Expr::Object(members) => Cow::Owned(Value::Object(
            members
                .iter()
                .map(|(k, e)| (k.clone(), eval(e, scope, cx).into_owned()))
                .collect(),
        )),
        Expr::Array(items) => Cow::Owned(Value::Array(
            items
                .iter()
                .map(|e| eval(e, scope, cx).into_owned())
                .collect(),
        )),
        Expr::Nested(nested) => Cow::Owned(nested_select(nested, scope, cx)),
    }
}

fn walk<'a>(scope: &'a Value, path: &[String]) -> &'a Value {
    let mut at = scope;
    for name in path {
        match at.field(name) {
            Some(next) => at = next,
            None => return &UNDEFINED,
        }
    }
    at
}

/// WHERE holds only when it is Boolean true (or the string "true").
pub fn holds(condition: Option<&Expr>, scope: &Value, cx: &Context<'_>) -> bool {
    condition.is_none_or(|c| eval(c, scope, cx).to_bool() == Some(true))
}

fn nested_select(nested: &Nested, scope: &Value, cx: &Context<'_>) -> Value {
    let from = eval(&nested.from, scope, cx);
    let Value::Array(elements) = from.as_ref() else {
        return Value::Undefined;
    };
    let mut out = Vec::new();
    for element in elements {
        if !holds(nested.condition.as_ref(), element, cx) {
            continue;
        }
        out.push(select(&nested.select, element, cx));
    }
    Value::Array(out)
}

/// The SELECT list over `scope`: the VALUE, or an object of the items (Undefined ones left
/// out when written).
pub fn select(list: &Select, scope: &Value, cx: &Context<'_>) -> Value {
    match list {
        Select::Value(expr) => eval(expr, scope, cx).into_owned(),
        Select::Items(items) => {
            let mut map = Map::with_capacity(items.len());
            for item in items {
                match item {
                    Item::All => {
                        if let Value::Object(members) = scope {
                            map.extend(members.iter().map(|(k, v)| (k.clone(), v.clone())));
                        }
                    }
                    Item::Named { expr, name } => {
                        let value = eval(expr, scope, cx);
                        if !value.is_undefined() {
                            map.insert(name.clone(), value.into_owned());
                        }
                    }
                }
            }
            Value::Object(map)
        }
    }
}

pub fn cast(value: &Value, to: CastType) -> Value {
    match to {
        CastType::String => value.to_text().map_or(Value::Undefined, Value::String),
        CastType::Int => match value {
            Value::Bool(b) => Value::Int(i128::from(*b)),
            other => other
                .to_number()
                .and_then(|n| {
                    n.to_decimal()
                        .with_scale_round(0, RoundingMode::Floor)
                        .to_i128()
                })
                .map_or(Value::Undefined, Value::int),
        },
        CastType::Decimal | CastType::Double => match value {
            Value::Bool(b) => Value::decimal(BigDecimal::from(i32::from(*b))),
            other => other
                .to_number()
                .map_or(Value::Undefined, |n| Value::decimal(n.to_decimal())),
        },
        CastType::Bool => match value {
            Value::Bool(b) => Value::Bool(*b),
            Value::Int(i) => Value::Bool(*i != 0),
            Value::Decimal(d) => Value::Bool(!bigdecimal::Zero::is_zero(d.as_ref())),
            Value::String(_) => value.to_bool().map_or(Value::Undefined, Value::Bool),
            _ => Value::Undefined,
        },
    }
}
