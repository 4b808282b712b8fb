//! Substitution templates (`${expression}` inside an action's topic, URL, key or header
//! value), evaluated against the message as it arrived: a statement's aliases are not
//! visible in them.

use crate::ast::SqlVersion;
use crate::error::ParseError;
use crate::eval::{Environment, Message};
use crate::{Output, Statement};

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Expression(Box<Statement>),
}

/// A compiled template.
#[derive(Debug, Clone)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    pub fn compile(text: &str, version: SqlVersion) -> Result<Template, ParseError> {
        let mut parts = Vec::new();
        let mut rest = text;
        let mut consumed = 0;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let inner = &rest[start + 2..];
            // The expression ends at the brace that closes it; braces inside it (object
            // literals) and inside quotes do not count.
            let mut depth = 0usize;
            let mut quote: Option<char> = None;
            let mut end = None;
            for (i, c) in inner.char_indices() {
                match (quote, c) {
                    (Some(q), c) if c == q => quote = None,
                    (Some(_), _) => {}
                    (None, '\'' | '"') => quote = Some(c),
                    (None, '{') => depth += 1,
                    (None, '}') if depth == 0 => {
                        end = Some(i);
                        break;
                    }
                    (None, '}') => depth -= 1,
                    _ => {}
                }
            }
            let Some(end) = end else {
                return Err(ParseError::at(
                    text,
                    consumed + start,
                    "unterminated substitution template '${'",
                ));
            };
            let expression = &inner[..end];
            let statement = Statement::compile(&format!("SELECT VALUE {expression}"), version)
                .map_err(|e| ParseError {
                    line: e.line,
                    column: (e.column + consumed + start + 2).saturating_sub(13),
                    message: format!("in substitution template: {}", e.message),
                })?;
            parts.push(Part::Expression(Box::new(statement)));
            let advance = start + 2 + end + 1;
            consumed += advance;
            rest = &rest[advance..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template { parts })
    }

    /// Whether it has no expression: its text is the same for every message.
    pub fn is_constant(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// The text for `message`: strings as they are, other values as JSON, Undefined as
    /// nothing.
    pub fn render(&self, message: &Message<'_>, env: &dyn Environment) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Expression(statement) => match statement.evaluate(message, env) {
                    Some(Output::Json(crate::Value::String(s))) => out.push_str(&s),
                    Some(Output::Json(crate::Value::Undefined)) | None => {}
                    Some(Output::Json(value)) => out.push_str(&value.to_json()),
                    Some(Output::Raw(bytes)) => out.push_str(&String::from_utf8_lossy(&bytes)),
                },
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{Document, MqttProperties, NoEnvironment};

    #[test]
    fn expressions_are_replaced_by_their_values() {
        let document = Document::parse(br#"{"device":"d1","n":3,"o":{"a":1}}"#);
        let properties = MqttProperties::default();
        let message = Message {
            topic: "sensors/d1/data",
            payload: b"",
            document: &document,
            client_id: Some("c"),
            principal: None,
            timestamp_ms: 0,
            trace_id: None,
            properties: &properties,
        };
        let render = |t: &str| {
            Template::compile(t, SqlVersion::V2016_03_23)
                .unwrap()
                .render(&message, &NoEnvironment)
        };
        assert_eq!(render("out/${topic(2)}/${n}"), "out/d1/3");
        assert_eq!(render("${device}-${missing}-${o}"), r#"d1--{"a":1}"#);
        assert_eq!(render("${{'k': 1}.k}"), "1");
        assert_eq!(render("plain"), "plain");
        assert!(
            Template::compile("plain", SqlVersion::V2016_03_23)
                .unwrap()
                .is_constant()
        );
        let err = Template::compile("a/${topic(2", SqlVersion::V2016_03_23).unwrap_err();
        assert!(err.message.contains("unterminated"), "{err}");
        let err = Template::compile("a/${nosuch()}", SqlVersion::V2016_03_23).unwrap_err();
        assert!(err.message.contains("unknown function"), "{err}");
    }
}
