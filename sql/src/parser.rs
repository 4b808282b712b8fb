//! Recursive descent over the tokens, names resolved as they are met: functions to their
//! implementation, variables to slots.

use bigdecimal::BigDecimal;
use std::str::FromStr;

use crate::ast::{BinaryOp, CastType, Expr, Item, Nested, Select, SqlVersion};
use crate::error::ParseError;
use crate::functions;
use crate::lexer::{Token, tokenize};
use crate::value::Value;

/// A statement as parsed, before folding.
pub struct Parsed {
    pub variables: Vec<(String, Expr)>,
    pub select: Select,
    pub from: Option<String>,
    pub condition: Option<Expr>,
}

pub fn parse(text: &str, version: SqlVersion) -> Result<Parsed, ParseError> {
    let tokens = tokenize(text)?;
    let mut parser = Parser {
        text,
        tokens,
        at: 0,
        version,
        variables: Vec::new(),
    };
    let parsed = parser.statement()?;
    if !matches!(parser.peek(), Token::End) {
        return Err(parser.unexpected("end of statement"));
    }
    Ok(parsed)
}

struct Parser<'a> {
    text: &'a str,
    tokens: Vec<(Token, usize)>,
    at: usize,
    version: SqlVersion,
    variables: Vec<String>,
}

const RESERVED: [&str; 16] = [
    "SELECT", "FROM", "WHERE", "AS", "AND", "OR", "NOT", "CASE", "WHEN", "THEN", "ELSE", "END",
    "TRUE", "FALSE", "NULL", "SET",
];

impl Parser<'_> {
    fn peek(&self) -> &Token {
        self.tokens.get(self.at).map_or(&Token::End, |(t, _)| t)
    }

    fn peek_at(&self, ahead: usize) -> &Token {
        self.tokens
            .get(self.at + ahead)
            .map_or(&Token::End, |(t, _)| t)
    }

    fn offset(&self) -> usize {
        self.tokens
            .get(self.at)
            .map_or(self.text.len(), |(_, o)| *o)
    }

    fn advance(&mut self) -> Token {
        let token = self.peek().clone();
        if self.at < self.tokens.len() {
            self.at += 1;
        }
        token
    }

    fn error(&self, message: &str) -> ParseError {
        ParseError::at(self.text, self.offset(), message)
    }

    fn unexpected(&self, expected: &str) -> ParseError {
        self.error(&format!(
            "unexpected {}, expecting {expected}",
            self.peek().describe()
        ))
    }

    fn is_keyword(&self, keyword: &str) -> bool {
        matches!(self.peek(), Token::Ident(s) if s.eq_ignore_ascii_case(keyword))
    }

    fn eat_keyword(&mut self, keyword: &str) -> bool {
        let found = self.is_keyword(keyword);
        if found {
            self.at += 1;
        }
        found
    }

    fn expect_keyword(&mut self, keyword: &str) -> Result<(), ParseError> {
        if self.eat_keyword(keyword) {
            Ok(())
        } else {
            Err(self.unexpected(keyword))
        }
    }

    fn eat(&mut self, token: &Token) -> bool {
        let found = self.peek() == token;
        if found {
            self.at += 1;
        }
        found
    }

    fn expect(&mut self, token: &Token) -> Result<(), ParseError> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(self.unexpected(&token.describe()))
        }
    }

    fn needs_2016(&self, what: &str) -> Result<(), ParseError> {
        if self.version.is_2016() {
            Ok(())
        } else {
            Err(self.error(&format!("{what} needs awsIotSqlVersion 2016-03-23")))
        }
    }

    fn statement(&mut self) -> Result<Parsed, ParseError> {
        let mut variables = Vec::new();
        if self.eat_keyword("SET") {
            loop {
                let Token::Var(name) = self.peek().clone() else {
                    return Err(self.unexpected("a variable ('@name')"));
                };
                if name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(self.error(&format!(
                        "variable '@{name}': names are 1 to 64 letters, digits or '_'"
                    )));
                }
                if self.variables.contains(&name) {
                    return Err(self.error(&format!("variable '@{name}' is set twice")));
                }
                self.advance();
                self.expect(&Token::Eq)?;
                let expr = self.expr()?;
                self.variables.push(name.clone());
                variables.push((name, expr));
                if !self.eat(&Token::Comma) {
                    break;
                }
            }
        }
        self.expect_keyword("SELECT")?;
        let select = self.select_list()?;
        let from = if self.eat_keyword("FROM") {
            let at = self.offset();
            match self.advance() {
                Token::Str(filter) => {
                    check_filter(&filter).map_err(|m| ParseError::at(self.text, at, &m))?;
                    Some(filter)
                }
                _ => {
                    self.at -= 1;
                    return Err(self.unexpected("a quoted topic filter"));
                }
            }
        } else {
            None
        };
        let condition = if self.eat_keyword("WHERE") {
            Some(self.expr()?)
        } else {
            None
        };
        Ok(Parsed {
            variables,
            select,
            from,
            condition,
        })
    }

    fn select_list(&mut self) -> Result<Select, ParseError> {
        if self.eat_keyword("VALUE") {
            return Ok(Select::Value(self.expr()?));
        }
        let mut items = Vec::new();
        loop {
            if self.eat(&Token::Star) {
                items.push(Item::All);
            } else {
                let expr = self.expr()?;
                let name = if self.eat_keyword("AS") {
                    match self.advance() {
                        Token::Ident(name) | Token::Str(name) => name,
                        _ => {
                            self.at -= 1;
                            return Err(self.unexpected("a name after AS"));
                        }
                    }
                } else {
                    default_name(&expr, items.len() + 1)
                };
                items.push(Item::Named { expr, name });
            }
            if !self.eat(&Token::Comma) {
                break;
            }
        }
        Ok(Select::Items(items))
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        self.or()
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.and()?;
        while self.eat_keyword("OR") {
            let right = self.and()?;
            left = Expr::Binary(BinaryOp::Or, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.not()?;
        while self.eat_keyword("AND") {
            let right = self.not()?;
            left = Expr::Binary(BinaryOp::And, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr, ParseError> {
        if self.eat_keyword("NOT") {
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, ParseError> {
        let left = self.additive()?;
        let op = match self.peek() {
            Token::Eq => BinaryOp::Eq,
            Token::NotEq => BinaryOp::NotEq,
            Token::Lt => BinaryOp::Lt,
            Token::LtEq => BinaryOp::LtEq,
            Token::Gt => BinaryOp::Gt,
            Token::GtEq => BinaryOp::GtEq,
            _ => return Ok(left),
        };
        self.advance();
        let right = self.additive()?;
        Ok(Expr::Binary(op, Box::new(left), Box::new(right)))
    }

    fn additive(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.multiplicative()?;
        loop {
            let op = match self.peek() {
                Token::Plus => BinaryOp::Add,
                Token::Minus => BinaryOp::Sub,
                _ => return Ok(left),
            };
            self.advance();
            let right = self.multiplicative()?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
    }

    fn multiplicative(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Token::Star => BinaryOp::Mul,
                Token::Slash => BinaryOp::Div,
                Token::Percent => BinaryOp::Rem,
                _ => return Ok(left),
            };
            self.advance();
            let right = self.unary()?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        if self.eat(&Token::Minus) {
            return Ok(Expr::Negate(Box::new(self.unary()?)));
        }
        if self.eat(&Token::Plus) {
            return self.unary();
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Result<Expr, ParseError> {
        let mut expr = self.primary()?;
        while self.eat(&Token::Dot) {
            let name = match self.advance() {
                Token::Ident(name) => name,
                _ => {
                    self.at -= 1;
                    return Err(self.unexpected("a field name after '.'"));
                }
            };
            expr = match expr {
                Expr::Path(mut path) => {
                    path.push(name);
                    Expr::Path(path)
                }
                other => Expr::Member(Box::new(other), name),
            };
        }
        Ok(expr)
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let at = self.offset();
        match self.advance() {
            Token::Number(text) => number(&text)
                .ok_or_else(|| ParseError::at(self.text, at, &format!("'{text}' is not a number"))),
            Token::Str(s) => Ok(Expr::Literal(Value::String(s))),
            Token::Var(name) => match self.variables.iter().position(|v| *v == name) {
                Some(slot) => Ok(Expr::Var(slot)),
                None => Err(ParseError::at(
                    self.text,
                    at,
                    &format!("variable '@{name}' is not set"),
                )),
            },
            Token::LParen => {
                if self.is_keyword("SELECT") {
                    self.needs_2016("a nested SELECT")?;
                    self.advance();
                    let nested = self.nested()?;
                    self.expect(&Token::RParen)?;
                    return Ok(Expr::Nested(Box::new(nested)));
                }
                let inner = self.expr()?;
                self.expect(&Token::RParen)?;
                Ok(inner)
            }
            Token::LBrace => {
                self.at -= 1;
                self.needs_2016("an object literal")?;
                self.advance();
                self.object()
            }
            Token::LBracket => {
                self.at -= 1;
                self.needs_2016("an array literal")?;
                self.advance();
                let mut items = Vec::new();
                if !self.eat(&Token::RBracket) {
                    loop {
                        items.push(self.expr()?);
                        if self.eat(&Token::RBracket) {
                            break;
                        }
                        self.expect(&Token::Comma)?;
                    }
                }
                Ok(Expr::Array(items))
            }
            Token::Ident(name) => self.named(name, at),
            _ => {
                self.at -= 1;
                Err(self.unexpected("an expression"))
            }
        }
    }

    fn named(&mut self, name: String, at: usize) -> Result<Expr, ParseError> {
        let upper = name.to_ascii_uppercase();
        match upper.as_str() {
            "TRUE" => return Ok(Expr::Literal(Value::Bool(true))),
            "FALSE" => return Ok(Expr::Literal(Value::Bool(false))),
            "NULL" => return Ok(Expr::Literal(Value::Null)),
            "CASE" => return self.case(),
            _ => {}
        }
        if self.peek() == &Token::LParen {
            self.advance();
            if upper == "CAST" {
                return self.cast();
            }
            let function = functions::lookup(&name, self.version).ok_or_else(|| {
                ParseError::at(
                    self.text,
                    at,
                    &format!(
                        "unknown function '{name}' (awsIotSqlVersion {})",
                        self.version.as_str()
                    ),
                )
            })?;
            let mut args = Vec::new();
            if !self.eat(&Token::RParen) {
                loop {
                    if self.peek() == &Token::Star
                        && matches!(self.peek_at(1), Token::Comma | Token::RParen)
                    {
                        self.advance();
                        args.push(Expr::Input);
                    } else {
                        args.push(self.expr()?);
                    }
                    if self.eat(&Token::RParen) {
                        break;
                    }
                    self.expect(&Token::Comma)?;
                }
            }
            return Ok(Expr::Call(function, args));
        }
        if RESERVED.contains(&upper.as_str()) {
            return Err(ParseError::at(
                self.text,
                at,
                &format!("unexpected keyword '{name}', expecting an expression"),
            ));
        }
        Ok(Expr::Path(vec![name]))
    }

    fn cast(&mut self) -> Result<Expr, ParseError> {
        let value = self.expr()?;
        self.expect_keyword("AS")?;
        let at = self.offset();
        let Token::Ident(name) = self.advance() else {
            self.at -= 1;
            return Err(self.unexpected("a type name"));
        };
        let to = match name.to_ascii_lowercase().as_str() {
            "string" | "nvarchar" | "text" | "ntext" | "varchar" => CastType::String,
            "int" | "integer" => CastType::Int,
            "double" => CastType::Double,
            "decimal" if self.version.is_2016() => CastType::Decimal,
            "bool" | "boolean" if self.version.is_2016() => CastType::Bool,
            _ => {
                return Err(ParseError::at(
                    self.text,
                    at,
                    &format!("cannot cast to '{name}'"),
                ));
            }
        };
        self.expect(&Token::RParen)?;
        Ok(Expr::Cast(Box::new(value), to))
    }

    fn case(&mut self) -> Result<Expr, ParseError> {
        let subject = self.expr()?;
        let mut arms = Vec::new();
        while self.eat_keyword("WHEN") {
            let when = self.expr()?;
            self.expect_keyword("THEN")?;
            arms.push((when, self.expr()?));
        }
        if arms.is_empty() {
            return Err(self.unexpected("WHEN"));
        }
        let otherwise = if self.eat_keyword("ELSE") {
            Some(Box::new(self.expr()?))
        } else {
            None
        };
        self.expect_keyword("END")?;
        Ok(Expr::Case {
            subject: Box::new(subject),
            arms,
            otherwise,
        })
    }

    fn object(&mut self) -> Result<Expr, ParseError> {
        let mut members = Vec::new();
        if self.eat(&Token::RBrace) {
            return Ok(Expr::Object(members));
        }
        loop {
            let key = match self.advance() {
                Token::Str(key) | Token::Ident(key) => key,
                _ => {
                    self.at -= 1;
                    return Err(self.unexpected("a member name"));
                }
            };
            self.expect(&Token::Colon)?;
            members.push((key, self.expr()?));
            if self.eat(&Token::RBrace) {
                return Ok(Expr::Object(members));
            }
            self.expect(&Token::Comma)?;
        }
    }

    fn nested(&mut self) -> Result<Nested, ParseError> {
        let select = self.select_list()?;
        self.expect_keyword("FROM")?;
        let from = self.expr()?;
        let condition = if self.eat_keyword("WHERE") {
            Some(self.expr()?)
        } else {
            None
        };
        Ok(Nested {
            select,
            from,
            condition,
        })
    }
}

/// The output name of an item without an alias: the last segment of a path, the name of a
/// function, else its position.
fn default_name(expr: &Expr, position: usize) -> String {
    match expr {
        Expr::Path(path) => path.last().cloned().unwrap_or_default(),
        Expr::Member(_, name) => name.clone(),
        Expr::Call(function, _) => function.name().to_owned(),
        _ => format!("_{position}"),
    }
}

fn number(text: &str) -> Option<Expr> {
    if text.bytes().all(|b| b.is_ascii_digit())
        && let Ok(i) = text.parse::<i128>()
    {
        return Some(Expr::Literal(Value::int(i)));
    }
    BigDecimal::from_str(text)
        .ok()
        .map(|d| Expr::Literal(Value::decimal(d)))
}

/// A FROM filter: MQTT topic filter rules (`#` last and alone in its level, `+` alone).
fn check_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("the topic filter in FROM is empty".to_owned());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!(
                "topic filter '{filter}': '#' must be a whole level, and the last"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!(
                "topic filter '{filter}': '+' must be a whole level"
            ));
        }
    }
    Ok(())
}
