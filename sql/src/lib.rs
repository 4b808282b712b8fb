//! AWS IoT SQL, the language of topic rules: a statement is compiled once (parsed, names
//! resolved, constants folded) and evaluated over each message it matches.
//!
//! ```text
//! [SET @v = expr, ...] SELECT [VALUE] item, ... [FROM 'topic/filter'] [WHERE condition]
//! ```

mod ast;
mod error;
mod eval;
mod functions;
mod lexer;
mod ops;
mod parser;
mod template;
mod time;
mod value;

pub use ast::SqlVersion;
pub use error::ParseError;
pub use eval::{Document, Environment, Message, MqttProperties, NoEnvironment};
pub use template::Template;
pub use value::{Map, Value};

use ast::{Expr, Item, Select};
use eval::Context;

/// A compiled statement.
#[derive(Debug, Clone)]
pub struct Statement {
    version: SqlVersion,
    variables: Vec<Expr>,
    select: Select,
    from: Option<String>,
    condition: Option<Expr>,
}

/// What a statement makes of a message its WHERE accepts.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A JSON value (an object, or any value for `SELECT VALUE`).
    Json(Value),
    /// The payload itself: `SELECT *` of a message that is not JSON.
    Raw(Vec<u8>),
}

impl Output {
    /// The bytes an action sends.
    pub fn to_payload(&self) -> Vec<u8> {
        match self {
            Output::Json(value) => value.to_json().into_bytes(),
            Output::Raw(bytes) => bytes.clone(),
        }
    }
}

/// Statement versions when `awsIotSqlVersion` is not given: AWS documents 2015-10-08.
pub const DEFAULT_VERSION: SqlVersion = SqlVersion::V2015_10_08;

impl Statement {
    pub fn compile(sql: &str, version: SqlVersion) -> Result<Statement, ParseError> {
        let parsed = parser::parse(sql, version)?;
        let fold = |e: Expr| fold(e, version);
        Ok(Statement {
            version,
            variables: parsed.variables.into_iter().map(|(_, e)| fold(e)).collect(),
            select: fold_select(parsed.select, version),
            from: parsed.from,
            condition: parsed.condition.map(fold),
        })
    }

    pub fn version(&self) -> SqlVersion {
        self.version
    }

    /// The FROM topic filter; `None` for a rule reached only through Basic Ingest.
    pub fn topic_filter(&self) -> Option<&str> {
        self.from.as_deref()
    }

    /// The output for `message`, or `None` when its WHERE does not hold.
    pub fn evaluate(&self, message: &Message<'_>, env: &dyn Environment) -> Option<Output> {
        let mut vars = Vec::with_capacity(self.variables.len());
        let scope = message.document.json.as_ref();
        let undefined = Value::Undefined;
        let scope_value = scope.unwrap_or(&undefined);
        for expr in &self.variables {
            let value = {
                let cx = Context {
                    message,
                    env,
                    version: self.version,
                    vars: &vars,
                };
                eval::eval(expr, scope_value, &cx).into_owned()
            };
            vars.push(value);
        }
        let cx = Context {
            message,
            env,
            version: self.version,
            vars: &vars,
        };
        if !eval::holds(self.condition.as_ref(), scope_value, &cx) {
            return None;
        }
        if scope.is_none() && self.selects_only_all() {
            return Some(Output::Raw(message.payload.to_vec()));
        }
        let mut value = eval::select(&self.select, scope_value, &cx);
        if self.version.is_2016() {
            value.normalize_integral();
        }
        Some(Output::Json(value))
    }

    fn selects_only_all(&self) -> bool {
        matches!(&self.select, Select::Items(items) if items.iter().all(|i| matches!(i, Item::All)))
    }
}

fn fold_select(select: Select, version: SqlVersion) -> Select {
    match select {
        Select::Value(e) => Select::Value(fold(e, version)),
        Select::Items(items) => Select::Items(
            items
                .into_iter()
                .map(|item| match item {
                    Item::All => Item::All,
                    Item::Named { expr, name } => Item::Named {
                        expr: fold(expr, version),
                        name,
                    },
                })
                .collect(),
        ),
    }
}

/// Folds what does not depend on the message into literals, and gives `encode(*, ...)` the
/// raw payload.
fn fold(expr: Expr, version: SqlVersion) -> Expr {
    let f = |e: Expr| fold(e, version);
    let boxed = |e: Box<Expr>| Box::new(fold(*e, version));
    let folded = match expr {
        Expr::Call(function, args) => {
            if function.name() == "encode" && matches!(args.first(), Some(Expr::Input)) {
                let rest = args.into_iter().skip(1).map(f).collect();
                return Expr::Call(functions::encode_input(), rest);
            }
            Expr::Call(function, args.into_iter().map(f).collect())
        }
        Expr::Member(inner, name) => Expr::Member(boxed(inner), name),
        Expr::Negate(inner) => Expr::Negate(boxed(inner)),
        Expr::Not(inner) => Expr::Not(boxed(inner)),
        Expr::Binary(op, l, r) => Expr::Binary(op, boxed(l), boxed(r)),
        Expr::Cast(inner, to) => Expr::Cast(boxed(inner), to),
        Expr::Case {
            subject,
            arms,
            otherwise,
        } => Expr::Case {
            subject: boxed(subject),
            arms: arms.into_iter().map(|(w, t)| (f(w), f(t))).collect(),
            otherwise: otherwise.map(boxed),
        },
        Expr::Object(members) => {
            Expr::Object(members.into_iter().map(|(k, e)| (k, f(e))).collect())
        }
        Expr::Array(items) => Expr::Array(items.into_iter().map(f).collect()),
        Expr::Nested(nested) => {
            let ast::Nested {
                select,
                from,
                condition,
            } = *nested;
            Expr::Nested(Box::new(ast::Nested {
                select: fold_select(select, version),
                from: f(from),
                condition: condition.map(f),
            }))
        }
        other => other,
    };
    if is_constant(&folded) {
        let document = Document { json: None };
        let properties = MqttProperties::default();
        let message = Message {
            topic: "",
            payload: &[],
            document: &document,
            client_id: None,
            principal: None,
            timestamp_ms: 0,
            trace_id: None,
            properties: &properties,
        };
        let cx = Context {
            message: &message,
            env: &NoEnvironment,
            version,
            vars: &[],
        };
        let value = eval::eval(&folded, &Value::Undefined, &cx).into_owned();
        return Expr::Literal(value);
    }
    folded
}

/// An expression whose value is the same for every message: literals, and pure operations
/// on them.
fn is_constant(expr: &Expr) -> bool {
    match expr {
        Expr::Literal(_) => false,
        Expr::Negate(e) | Expr::Not(e) | Expr::Cast(e, _) => literal(e),
        Expr::Binary(_, l, r) => literal(l) && literal(r),
        Expr::Call(function, args) => function.is_pure() && args.iter().all(literal),
        Expr::Object(members) => members.iter().all(|(_, e)| literal(e)),
        Expr::Array(items) => items.iter().all(literal),
        _ => false,
    }
}

fn literal(expr: &Expr) -> bool {
    matches!(expr, Expr::Literal(_))
}
