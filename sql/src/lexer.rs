//! Tokens of a statement, each with the byte offset it starts at (for error positions).

use crate::error::ParseError;

#[derive(Debug, Clone, PartialEq)]
pub enum Token {
    /// A name: keyword, field or function; keywords are told apart by the parser, in any case.
    Ident(String),
    /// `@name`.
    Var(String),
    /// A quoted string, either quote.
    Str(String),
    /// Digits with an optional fraction and exponent, as written.
    Number(String),
    Comma,
    Dot,
    Colon,
    LParen,
    RParen,
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    Star,
    Plus,
    Minus,
    Slash,
    Percent,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    End,
}

impl Token {
    pub fn describe(&self) -> String {
        match self {
            Token::Ident(s) => format!("'{s}'"),
            Token::Var(s) => format!("'@{s}'"),
            Token::Str(s) => format!("'{s}'"),
            Token::Number(s) => format!("'{s}'"),
            Token::End => "end of statement".to_owned(),
            other => format!("'{}'", other.symbol()),
        }
    }

    fn symbol(&self) -> &'static str {
        match self {
            Token::Comma => ",",
            Token::Dot => ".",
            Token::Colon => ":",
            Token::LParen => "(",
            Token::RParen => ")",
            Token::LBracket => "[",
            Token::RBracket => "]",
            Token::LBrace => "{",
            Token::RBrace => "}",
            Token::Star => "*",
            Token::Plus => "+",
            Token::Minus => "-",
            Token::Slash => "/",
            Token::Percent => "%",
            Token::Eq => "=",
            Token::NotEq => "<>",
            Token::Lt => "<",
            Token::LtEq => "<=",
            Token::Gt => ">",
            Token::GtEq => ">=",
            _ => "",
        }
    }
}

pub fn tokenize(text: &str) -> Result<Vec<(Token, usize)>, ParseError> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let single = match c {
            b',' => Some(Token::Comma),
            b':' => Some(Token::Colon),
            b'(' => Some(Token::LParen),
            b')' => Some(Token::RParen),
            b'[' => Some(Token::LBracket),
            b']' => Some(Token::RBracket),
            b'{' => Some(Token::LBrace),
            b'}' => Some(Token::RBrace),
            b'*' => Some(Token::Star),
            b'+' => Some(Token::Plus),
            b'-' => Some(Token::Minus),
            b'/' => Some(Token::Slash),
            b'%' => Some(Token::Percent),
            b'=' => Some(Token::Eq),
            _ => None,
        };
        if let Some(token) = single {
            out.push((token, start));
            i += 1;
            continue;
        }
        match c {
            b'<' => {
                let (token, len) = match bytes.get(i + 1) {
                    Some(b'=') => (Token::LtEq, 2),
                    Some(b'>') => (Token::NotEq, 2),
                    _ => (Token::Lt, 1),
                };
                out.push((token, start));
                i += len;
            }
            b'>' => {
                let (token, len) = match bytes.get(i + 1) {
                    Some(b'=') => (Token::GtEq, 2),
                    _ => (Token::Gt, 1),
                };
                out.push((token, start));
                i += len;
            }
            b'!' if bytes.get(i + 1) == Some(&b'=') => {
                out.push((Token::NotEq, start));
                i += 2;
            }
            b'\'' | b'"' => {
                let (s, next) = string(text, i)?;
                out.push((Token::Str(s), start));
                i = next;
            }
            b'.' if bytes.get(i + 1).is_some_and(u8::is_ascii_digit)
                && !matches!(out.last(), Some((Token::Ident(_) | Token::RParen, _))) =>
            {
                let next = number_end(bytes, i);
                out.push((Token::Number(format!("0{}", &text[i..next])), start));
                i = next;
            }
            b'.' => {
                out.push((Token::Dot, start));
                i += 1;
            }
            b'0'..=b'9' => {
                let next = number_end(bytes, i);
                out.push((Token::Number(text[i..next].to_owned()), start));
                i = next;
            }
            b'@' => {
                let next = ident_end(bytes, i + 1);
                if next == i + 1 {
                    return Err(ParseError::at(
                        text,
                        start,
                        "a variable name must follow '@'",
                    ));
                }
                out.push((Token::Var(text[i + 1..next].to_owned()), start));
                i = next;
            }
            b'`' => {
                // A quoted name: any characters up to the closing backquote.
                let Some(len) = text[i + 1..].find('`') else {
                    return Err(ParseError::at(text, start, "unterminated quoted name"));
                };
                out.push((Token::Ident(text[i + 1..i + 1 + len].to_owned()), start));
                i += len + 2;
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b'$' => {
                let next = ident_end(bytes, i);
                out.push((Token::Ident(text[i..next].to_owned()), start));
                i = next;
            }
            _ => {
                let shown = text[i..].chars().next().unwrap_or('?');
                return Err(ParseError::at(
                    text,
                    start,
                    &format!("unexpected character '{shown}'"),
                ));
            }
        }
    }
    out.push((Token::End, text.len()));
    Ok(out)
}

fn ident_end(bytes: &[u8], mut i: usize) -> usize {
    while bytes
        .get(i)
        .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'$')
    {
        i += 1;
    }
    i
}

fn number_end(bytes: &[u8], mut i: usize) -> usize {
    while bytes.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    if bytes.get(i) == Some(&b'.') && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
        i += 1;
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(bytes.get(j), Some(b'-' | b'+')) {
            j += 1;
        }
        if bytes.get(j).is_some_and(u8::is_ascii_digit) {
            i = j;
            while bytes.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
        }
    }
    i
}

/// A quoted string starting at `start`; a doubled quote, or a backslash before it, is a quote.
fn string(text: &str, start: usize) -> Result<(String, usize), ParseError> {
    let quote = text.as_bytes()[start] as char;
    let mut out = String::new();
    let mut chars = text[start + 1..].char_indices();
    while let Some((offset, c)) = chars.next() {
        let at = start + 1 + offset;
        if c == quote {
            if text[at + 1..].starts_with(quote) {
                out.push(quote);
                chars.next();
                continue;
            }
            return Ok((out, at + 1));
        }
        // A backslash escapes the quote only; elsewhere it stays, as regular expressions
        // need it.
        if c == '\\' && text[at + 1..].starts_with(quote) {
            out.push(quote);
            chars.next();
            continue;
        }
        out.push(c);
    }
    Err(ParseError::at(text, start, "unterminated string"))
}
