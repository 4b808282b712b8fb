//! AWS IoT fleet indexing's query language, parsed into a [`Query`], pure.
//!
//! A query is clauses `field:value` joined by `AND`, `OR` and `NOT` (a space alone means
//! `AND`), grouped by parentheses. A value is a word (`*` matches any run of characters and `?`
//! one, `\` escapes the next character), a quoted phrase taken literally, a range `[a TO b]`
//! (`{` and `}` exclude their bound, `*` leaves it open), or a comparison `>x`, `>=x`, `<x`,
//! `<=x` (after the colon or in its place). `field:*` matches things that have the field; a
//! query of `*` alone matches every thing; a word with no field matches thing names.

use std::ops::Bound;

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    /// Every document.
    All,
    /// The field holds this value (as a string, or as the number or boolean it spells).
    Equals {
        field: String,
        value: Literal,
    },
    /// The field holds a string this pattern matches.
    Pattern {
        field: String,
        pattern: Pattern,
    },
    /// The field holds any value.
    Exists {
        field: String,
    },
    /// The field holds a value within the bounds (numbers by number, strings by string).
    Range {
        field: String,
        lower: Bound<Literal>,
        upper: Bound<Literal>,
    },
    And(Vec<Query>),
    Or(Vec<Query>),
    Not(Box<Query>),
}

/// A value as written, with the number it spells when it spells one and was not quoted.
#[derive(Debug, Clone, PartialEq)]
pub struct Literal {
    pub text: String,
    pub number: Option<f64>,
    pub boolean: Option<bool>,
}

impl Literal {
    fn word(text: String) -> Self {
        let number = parse_number(&text);
        let boolean = match text.as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        };
        Self {
            text,
            number,
            boolean,
        }
    }

    fn quoted(text: String) -> Self {
        Self {
            text,
            number: None,
            boolean: None,
        }
    }
}

/// A decimal number as a query writes one: no `inf`, `nan` or hexadecimal.
fn parse_number(text: &str) -> Option<f64> {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    let plain = digits
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'));
    if !plain || !digits.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return None;
    }
    text.parse::<f64>().ok().filter(|n| n.is_finite())
}

/// A wildcard pattern: literal characters, `?` and `*`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Piece {
    Char(char),
    One,
    Any,
}

impl Pattern {
    /// The literal characters before the first wildcard: every match starts with them.
    pub fn prefix(&self) -> String {
        self.pieces
            .iter()
            .map_while(|p| match p {
                Piece::Char(c) => Some(*c),
                _ => None,
            })
            .collect()
    }

    pub fn matches(&self, text: &str) -> bool {
        let chars: Vec<char> = text.chars().collect();
        // Greedy matching with one backtrack point, linear in practice.
        let (mut p, mut t) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while t < chars.len() {
            match self.pieces.get(p) {
                Some(Piece::Char(c)) if *c == chars[t] => {
                    p += 1;
                    t += 1;
                }
                Some(Piece::One) => {
                    p += 1;
                    t += 1;
                }
                Some(Piece::Any) => {
                    star = Some((p, t));
                    p += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        p = sp + 1;
                        t = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        self.pieces[p..].iter().all(|piece| *piece == Piece::Any)
    }
}

/// Why a query does not parse, and where (the 1-based position of the character).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("Syntax error at position {position}: {problem}")]
pub struct QueryError {
    pub position: usize,
    pub problem: String,
}

/// The longest query AWS accepts.
const MAX_QUERY_CHARS: usize = 1000;
/// How deep parentheses and `NOT`s may nest.
const MAX_DEPTH: usize = 32;

pub fn parse(query: &str) -> Result<Query, QueryError> {
    let chars: Vec<char> = query.chars().collect();
    if chars.len() > MAX_QUERY_CHARS {
        return Err(QueryError {
            position: MAX_QUERY_CHARS + 1,
            problem: format!("the query is longer than {MAX_QUERY_CHARS} characters"),
        });
    }
    let mut parser = Parser {
        chars,
        at: 0,
        depth: 0,
    };
    parser.skip_spaces();
    if parser.at == parser.chars.len() {
        return Err(parser.error("the query is empty"));
    }
    let query = parser.or()?;
    parser.skip_spaces();
    match parser.peek() {
        None => Ok(query),
        Some(')') => Err(parser.error("')' closes no '('")),
        Some(c) => Err(parser.error(&format!("unexpected '{c}'"))),
    }
}

struct Parser {
    chars: Vec<char>,
    at: usize,
    depth: usize,
}

/// Characters that end a word.
fn ends_word(c: char) -> bool {
    c.is_whitespace() || matches!(c, '(' | ')')
}

impl Parser {
    fn error(&self, problem: &str) -> QueryError {
        QueryError {
            position: self.at + 1,
            problem: problem.to_owned(),
        }
    }

    /// The character a `\` at the cursor escapes, past both.
    fn escaped(&mut self) -> Result<char, QueryError> {
        self.at += 1;
        let c = self
            .peek()
            .ok_or_else(|| self.error("'\\' escapes nothing"))?;
        self.at += 1;
        Ok(c)
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.at += 1;
        }
    }

    /// Whether the keyword is next, as a whole word.
    fn keyword(&self, word: &str) -> bool {
        let len = word.chars().count();
        let matches = self.chars[self.at..]
            .iter()
            .take(len)
            .copied()
            .eq(word.chars());
        matches && self.chars.get(self.at + len).is_none_or(|c| ends_word(*c))
    }

    fn take_keyword(&mut self, word: &str) -> bool {
        self.skip_spaces();
        if self.keyword(word) {
            self.at += word.chars().count();
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Query, QueryError> {
        let mut terms = vec![self.and()?];
        while self.take_keyword("OR") {
            terms.push(self.and()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Query::Or(terms)
        })
    }

    fn and(&mut self) -> Result<Query, QueryError> {
        let mut terms = vec![self.not()?];
        loop {
            self.skip_spaces();
            if self.take_keyword("AND") {
                terms.push(self.not()?);
                continue;
            }
            // Juxtaposed clauses are joined by AND; `OR` and `)` end the run.
            match self.peek() {
                None | Some(')') => break,
                Some(_) if self.keyword("OR") => break,
                Some(_) => terms.push(self.not()?),
            }
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Query::And(terms)
        })
    }

    fn nest(&mut self) -> Result<(), QueryError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(&format!("nested deeper than {MAX_DEPTH}")));
        }
        Ok(())
    }

    fn not(&mut self) -> Result<Query, QueryError> {
        if self.take_keyword("NOT") {
            self.nest()?;
            let inner = self.not()?;
            self.depth -= 1;
            return Ok(Query::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Query, QueryError> {
        self.skip_spaces();
        match self.peek() {
            None => Err(self.error("a clause is missing at the end")),
            Some('(') => {
                self.at += 1;
                self.nest()?;
                self.skip_spaces();
                if self.peek() == Some(')') {
                    return Err(self.error("'()' holds no clause"));
                }
                let inner = self.or()?;
                self.skip_spaces();
                if self.peek() != Some(')') {
                    return Err(self.error("'(' is not closed"));
                }
                self.at += 1;
                self.depth -= 1;
                Ok(inner)
            }
            Some(')') => Err(self.error("a clause is missing before ')'")),
            Some(_) if self.keyword("AND") || self.keyword("OR") => Err(self.error(&format!(
                "a clause is missing before {}",
                if self.keyword("AND") { "AND" } else { "OR" }
            ))),
            Some(_) => self.clause(),
        }
    }

    /// `field:value`, `field>value` and the like, or a bare word.
    fn clause(&mut self) -> Result<Query, QueryError> {
        let start = self.at;
        let mut field = String::new();
        loop {
            match self.peek() {
                Some('\\') => {
                    let c = self.escaped()?;
                    field.push(c);
                }
                Some(':' | '<' | '>') => break,
                Some(c) if ends_word(c) || c == '"' => break,
                Some(c) => {
                    field.push(c);
                    self.at += 1;
                }
                None => break,
            }
        }
        match self.peek() {
            Some(':') => {
                if field.is_empty() {
                    return Err(self.error("a field name is missing before ':'"));
                }
                self.at += 1;
                self.value(field)
            }
            Some('<' | '>') if !field.is_empty() => self.value(field),
            _ => {
                // A bare word: the thing name, or everything.
                self.at = start;
                if self.peek() == Some('"') {
                    let text = self.quoted()?;
                    return Ok(Query::Equals {
                        field: "thingName".to_owned(),
                        value: Literal::quoted(text),
                    });
                }
                let word = self.word()?;
                if word.text() == "*" {
                    return Ok(Query::All);
                }
                Ok(word.into_query("thingName".to_owned()))
            }
        }
    }

    fn value(&mut self, field: String) -> Result<Query, QueryError> {
        match self.peek() {
            Some('[' | '{') => self.range(field),
            Some('"') => {
                let text = self.quoted()?;
                Ok(Query::Equals {
                    field,
                    value: Literal::quoted(text),
                })
            }
            Some('<' | '>') => {
                let greater = self.peek() == Some('>');
                self.at += 1;
                let inclusive = self.peek() == Some('=');
                if inclusive {
                    self.at += 1;
                }
                let bound = self.bound_value()?;
                let bound = if inclusive {
                    Bound::Included(bound)
                } else {
                    Bound::Excluded(bound)
                };
                Ok(if greater {
                    Query::Range {
                        field,
                        lower: bound,
                        upper: Bound::Unbounded,
                    }
                } else {
                    Query::Range {
                        field,
                        lower: Bound::Unbounded,
                        upper: bound,
                    }
                })
            }
            None => Err(self.error("a value is missing at the end")),
            Some(c) if ends_word(c) => Err(self.error(&format!("the value of {field} is missing"))),
            Some(_) => {
                let word = self.word()?;
                if word.text() == "*" {
                    return Ok(Query::Exists { field });
                }
                Ok(word.into_query(field))
            }
        }
    }

    /// A comparison's value: a quoted phrase or a word without wildcards.
    fn bound_value(&mut self) -> Result<Literal, QueryError> {
        match self.peek() {
            Some('"') => Ok(Literal::quoted(self.quoted()?)),
            None => Err(self.error("a value is missing at the end")),
            Some(c) if ends_word(c) => Err(self.error("a value is missing after the comparison")),
            Some(_) => {
                let at = self.at;
                let word = self.word()?;
                match word {
                    Word::Plain(text) => Ok(Literal::word(text)),
                    Word::Wild(_) => Err(QueryError {
                        position: at + 1,
                        problem: "a comparison takes no wildcard".to_owned(),
                    }),
                }
            }
        }
    }

    /// `[a TO b]`, with `{`/`}` for exclusive bounds and `*` for an open one.
    fn range(&mut self, field: String) -> Result<Query, QueryError> {
        let lower_inclusive = self.peek() == Some('[');
        self.at += 1;
        self.skip_spaces();
        let lower = self.range_bound()?;
        self.skip_spaces();
        if !self.keyword("TO") {
            return Err(self.error("a range needs TO between its bounds"));
        }
        self.at += 2;
        self.skip_spaces();
        let upper = self.range_bound()?;
        self.skip_spaces();
        let upper_inclusive = match self.peek() {
            Some(']') => true,
            Some('}') => false,
            _ => return Err(self.error("a range ends with ']' or '}'")),
        };
        self.at += 1;
        let bound = |value: Option<Literal>, inclusive: bool| match value {
            None => Bound::Unbounded,
            Some(v) if inclusive => Bound::Included(v),
            Some(v) => Bound::Excluded(v),
        };
        Ok(Query::Range {
            field,
            lower: bound(lower, lower_inclusive),
            upper: bound(upper, upper_inclusive),
        })
    }

    /// One bound of a range; `None` for `*`.
    fn range_bound(&mut self) -> Result<Option<Literal>, QueryError> {
        if self.peek() == Some('"') {
            return Ok(Some(Literal::quoted(self.quoted()?)));
        }
        let mut text = String::new();
        loop {
            match self.peek() {
                None => return Err(self.error("a range is not closed")),
                Some('\\') => {
                    let c = self.escaped()?;
                    text.push(c);
                }
                Some(c) if c.is_whitespace() || matches!(c, ']' | '}') => break,
                Some(c) => {
                    text.push(c);
                    self.at += 1;
                }
            }
        }
        match text.as_str() {
            "" => Err(self.error("a bound of the range is missing")),
            "*" => Ok(None),
            _ => Ok(Some(Literal::word(text))),
        }
    }

    fn quoted(&mut self) -> Result<String, QueryError> {
        let open = self.at;
        self.at += 1;
        let mut text = String::new();
        loop {
            match self.peek() {
                None => {
                    return Err(QueryError {
                        position: open + 1,
                        problem: "'\"' is not closed".to_owned(),
                    });
                }
                Some('"') => {
                    self.at += 1;
                    return Ok(text);
                }
                Some('\\') => {
                    self.at += 1;
                    if let Some(c) = self.peek() {
                        text.push(c);
                        self.at += 1;
                    }
                }
                Some(c) => {
                    text.push(c);
                    self.at += 1;
                }
            }
        }
    }

    fn word(&mut self) -> Result<Word, QueryError> {
        let mut pieces = Vec::new();
        let mut wild = false;
        loop {
            match self.peek() {
                Some('\\') => {
                    let c = self.escaped()?;
                    pieces.push(Piece::Char(c));
                }
                Some('*') => {
                    wild = true;
                    if pieces.last() != Some(&Piece::Any) {
                        pieces.push(Piece::Any);
                    }
                    self.at += 1;
                }
                Some('?') => {
                    wild = true;
                    pieces.push(Piece::One);
                    self.at += 1;
                }
                Some('"') => return Err(self.error("'\"' inside a word; quote the whole value")),
                Some(c) if ends_word(c) => break,
                Some(c) => {
                    pieces.push(Piece::Char(c));
                    self.at += 1;
                }
                None => break,
            }
        }
        Ok(if wild {
            Word::Wild(Pattern { pieces })
        } else {
            Word::Plain(
                pieces
                    .into_iter()
                    .filter_map(|p| match p {
                        Piece::Char(c) => Some(c),
                        _ => None,
                    })
                    .collect(),
            )
        })
    }
}

enum Word {
    Plain(String),
    Wild(Pattern),
}

impl Word {
    fn text(&self) -> String {
        match self {
            Word::Plain(t) => t.clone(),
            Word::Wild(p) if p.pieces == [Piece::Any] => "*".to_owned(),
            Word::Wild(_) => String::new(),
        }
    }

    fn into_query(self, field: String) -> Query {
        match self {
            Word::Plain(text) => Query::Equals {
                field,
                value: Literal::word(text),
            },
            Word::Wild(pattern) => Query::Pattern { field, pattern },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn equals(field: &str, text: &str) -> Query {
        Query::Equals {
            field: field.to_owned(),
            value: Literal::word(text.to_owned()),
        }
    }

    #[test]
    fn clauses_join_by_and_or_not_and_parentheses() {
        let parsed =
            parse("thingName:a AND (attributes.x:1 OR NOT attributes.y:2) thingTypeName:t")
                .unwrap();
        assert_eq!(
            parsed,
            Query::And(vec![
                equals("thingName", "a"),
                Query::Or(vec![
                    equals("attributes.x", "1"),
                    Query::Not(Box::new(equals("attributes.y", "2"))),
                ]),
                equals("thingTypeName", "t"),
            ])
        );
        // AND binds tighter than OR.
        assert_eq!(
            parse("a:1 OR b:2 AND c:3").unwrap(),
            Query::Or(vec![
                equals("a", "1"),
                Query::And(vec![equals("b", "2"), equals("c", "3")])
            ])
        );
    }

    #[test]
    fn values_are_words_phrases_patterns_ranges_and_comparisons() {
        assert_eq!(parse("*").unwrap(), Query::All);
        assert_eq!(
            parse("attributes.model:*").unwrap(),
            Query::Exists {
                field: "attributes.model".to_owned()
            }
        );
        assert_eq!(
            parse(r#"attributes.name:"Big one*""#).unwrap(),
            Query::Equals {
                field: "attributes.name".to_owned(),
                value: Literal::quoted("Big one*".to_owned()),
            }
        );
        let Query::Pattern { pattern, .. } = parse("thingName:me?er-*").unwrap() else {
            panic!("a pattern")
        };
        assert_eq!(pattern.prefix(), "me");
        assert!(
            pattern.matches("meter-1") && pattern.matches("meser-") && !pattern.matches("meter1")
        );
        let Query::Range { lower, upper, .. } = parse("shadow.reported.t:[10 TO 20}").unwrap()
        else {
            panic!("a range")
        };
        assert_eq!(lower, Bound::Included(Literal::word("10".to_owned())));
        assert_eq!(upper, Bound::Excluded(Literal::word("20".to_owned())));
        assert_eq!(
            parse("shadow.reported.t>=5").unwrap(),
            parse("shadow.reported.t:[5 TO *]").unwrap()
        );
        assert_eq!(
            parse("shadow.reported.t:<5").unwrap(),
            parse("shadow.reported.t:{* TO 5}").unwrap()
        );
        assert_eq!(
            parse(r"attributes.path:a\:b\ c").unwrap(),
            equals("attributes.path", "a:b c")
        );
        assert_eq!(parse("meter-1").unwrap(), equals("thingName", "meter-1"));
    }

    #[test]
    fn numbers_and_booleans_are_recognised_in_words_only() {
        assert_eq!(Literal::word("2.5".to_owned()).number, Some(2.5));
        assert_eq!(Literal::word("-3e2".to_owned()).number, Some(-300.0));
        assert_eq!(Literal::word("inf".to_owned()).number, None);
        assert_eq!(Literal::word("1a".to_owned()).number, None);
        assert_eq!(Literal::word("true".to_owned()).boolean, Some(true));
        assert_eq!(Literal::quoted("5".to_owned()).number, None);
    }

    #[test]
    fn patterns_backtrack_over_runs() {
        let Query::Pattern { pattern, .. } = parse("f:*ab*ab").unwrap() else {
            panic!("a pattern")
        };
        assert!(pattern.matches("xxabyyab") && pattern.matches("abab") && !pattern.matches("abba"));
        assert_eq!(pattern.prefix(), "");
    }

    #[test]
    fn errors_name_the_position() {
        for (query, position, problem) in [
            ("", 1, "empty"),
            ("thingName:a AND", 16, "missing at the end"),
            ("(thingName:a", 13, "not closed"),
            ("thingName:a)", 12, "closes no"),
            ("attributes.x:[1 20]", 17, "TO"),
            ("attributes.x:[1 TO 20", 22, "not closed"),
            ("attributes.x:\"open", 14, "not closed"),
            (":a", 1, "field name"),
            ("a:b OR OR c:d", 8, "missing before OR"),
            ("a:>b*", 4, "wildcard"),
            ("()", 2, "no clause"),
        ] {
            let error = parse(query).unwrap_err();
            assert_eq!(error.position, position, "{query}: {error}");
            assert!(error.problem.contains(problem), "{query}: {error}");
        }
        let deep = format!("{}a:b{}", "(".repeat(40), ")".repeat(40));
        assert!(parse(&deep).unwrap_err().problem.contains("nested"));
        assert!(parse(&"a".repeat(1001)).is_err());
    }
}
