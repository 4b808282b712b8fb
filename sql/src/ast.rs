//! A compiled statement: names resolved (functions to their implementation, variables to
//! slots), constants folded.

use crate::functions::Function;
use crate::value::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlVersion {
    V2015_10_08,
    V2016_03_23,
    Beta,
}

impl SqlVersion {
    pub fn parse(text: &str) -> Option<SqlVersion> {
        match text {
            "2015-10-08" => Some(SqlVersion::V2015_10_08),
            "2016-03-23" => Some(SqlVersion::V2016_03_23),
            "beta" => Some(SqlVersion::Beta),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SqlVersion::V2015_10_08 => "2015-10-08",
            SqlVersion::V2016_03_23 => "2016-03-23",
            SqlVersion::Beta => "beta",
        }
    }

    /// Object and array literals, nested SELECTs, VALUE of arrays and the later functions.
    pub fn is_2016(self) -> bool {
        !matches!(self, SqlVersion::V2015_10_08)
    }
}

#[derive(Debug, Clone)]
pub enum Select {
    /// `SELECT VALUE expr`: the expression's value is the output.
    Value(Expr),
    Items(Vec<Item>),
}

#[derive(Debug, Clone)]
pub enum Item {
    /// `*`: every member of the input.
    All,
    Named {
        expr: Expr,
        name: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    And,
    Or,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CastType {
    String,
    Int,
    Decimal,
    Double,
    Bool,
}

#[derive(Debug, Clone)]
pub enum Expr {
    Literal(Value),
    /// A path from the document in scope (the input, or an element in a nested SELECT).
    Path(Vec<String>),
    /// `.name` after an expression that is not a plain path.
    Member(Box<Expr>, String),
    /// The raw input, as a function argument (`encode(*, 'base64')`).
    Input,
    Var(usize),
    Negate(Box<Expr>),
    Not(Box<Expr>),
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    Call(Function, Vec<Expr>),
    Cast(Box<Expr>, CastType),
    Case {
        subject: Box<Expr>,
        arms: Vec<(Expr, Expr)>,
        otherwise: Option<Box<Expr>>,
    },
    Object(Vec<(String, Expr)>),
    Array(Vec<Expr>),
    Nested(Box<Nested>),
}

/// `(SELECT ... FROM array [WHERE ...])`: once per element of the array.
#[derive(Debug, Clone)]
pub struct Nested {
    pub select: Select,
    pub from: Expr,
    pub condition: Option<Expr>,
}
