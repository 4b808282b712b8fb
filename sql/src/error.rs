//! Why a statement is refused: AWS answers `SqlParseException` with the message.

/// A statement that does not parse or compile, with where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Line {line}:{column} {message}")]
pub struct ParseError {
    /// 1-based line of the problem.
    pub line: usize,
    /// 0-based column (in characters), as AWS's messages count it.
    pub column: usize,
    pub message: String,
}

impl ParseError {
    /// A problem at byte `offset` of `text`.
    pub fn at(text: &str, offset: usize, message: &str) -> ParseError {
        let before = &text[..offset.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before
            .rsplit_once('\n')
            .map_or(before, |(_, tail)| tail)
            .chars()
            .count();
        ParseError {
            line,
            column,
            message: message.to_owned(),
        }
    }
}
