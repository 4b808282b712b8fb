//! Topic names and topic filters: validation and matching.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic name contains a wildcard")]
    WildcardInName,
    #[error("'#' must be the last level of a filter, alone")]
    MisplacedMultiLevelWildcard,
    #[error("'+' must occupy a whole level")]
    MisplacedSingleLevelWildcard,
    #[error("topic has {levels} levels, more than the limit of {max}")]
    TooManyLevels { levels: usize, max: usize },
    #[error("topic is {len} bytes, more than the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("invalid shared subscription: {0}")]
    InvalidShare(&'static str),
}

/// Validates a topic name from a PUBLISH.
pub fn validate_name(topic: &str, max_len: usize, max_levels: usize) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    check_size(topic, max_len, max_levels)
}

/// Validates a topic filter from a SUBSCRIBE or UNSUBSCRIBE (without `$share/`).
pub fn validate_filter(filter: &str, max_len: usize, max_levels: usize) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::MisplacedMultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::MisplacedSingleLevelWildcard);
        }
    }
    check_size(filter, max_len, max_levels)
}

fn check_size(topic: &str, max_len: usize, max_levels: usize) -> Result<(), TopicError> {
    if topic.len() > max_len {
        return Err(TopicError::TooLong {
            len: topic.len(),
            max: max_len,
        });
    }
    let levels = topic.split('/').count();
    if levels > max_levels {
        return Err(TopicError::TooManyLevels {
            levels,
            max: max_levels,
        });
    }
    Ok(())
}

/// A subscription filter split into its share group (if any) and its topic filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedFilter<'a> {
    pub share_group: Option<&'a str>,
    pub filter: &'a str,
}

/// Splits `$share/{group}/{filter}`; any other filter is returned whole.
pub fn parse_filter(raw: &str) -> Result<ParsedFilter<'_>, TopicError> {
    let Some(rest) = raw.strip_prefix("$share/") else {
        if raw == "$share" {
            return Err(TopicError::InvalidShare("missing share name"));
        }
        return Ok(ParsedFilter {
            share_group: None,
            filter: raw,
        });
    };
    let Some((group, filter)) = rest.split_once('/') else {
        return Err(TopicError::InvalidShare("missing topic filter"));
    };
    if group.is_empty() || group.contains(['+', '#']) {
        return Err(TopicError::InvalidShare(
            "share name must be non-empty without wildcards",
        ));
    }
    if filter.is_empty() {
        return Err(TopicError::InvalidShare("missing topic filter"));
    }
    Ok(ParsedFilter {
        share_group: Some(group),
        filter,
    })
}

/// Whether `filter` matches `topic`; wildcards in the first level do not
/// match topics that start with `$`.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_validated() {
        for ok in [
            "a", "a/b", "#", "+", "a/+/b", "a/#", "+/+", "/", "a//b", "$SYS/#",
        ] {
            assert!(validate_filter(ok, 1024, 64).is_ok(), "{ok}");
        }
        for bad in ["", "a/#/b", "a#", "a/b+", "#/", "++"] {
            assert!(validate_filter(bad, 1024, 64).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_reject_wildcards_and_limits() {
        assert!(validate_name("a/b", 1024, 64).is_ok());
        assert_eq!(
            validate_name("a/+", 1024, 64),
            Err(TopicError::WildcardInName)
        );
        assert_eq!(validate_name("", 1024, 64), Err(TopicError::Empty));
        assert!(matches!(
            validate_name("a/b/c", 1024, 2),
            Err(TopicError::TooManyLevels { levels: 3, max: 2 })
        ));
    }

    #[test]
    fn matching_follows_the_spec() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(matches("+/+", "/x"));
        assert!(!matches("a/b", "a"));
    }

    #[test]
    fn shared_filters_are_parsed() {
        let p = parse_filter("$share/g/a/+").unwrap();
        assert_eq!(p.share_group, Some("g"));
        assert_eq!(p.filter, "a/+");
        assert!(parse_filter("$share/g").is_err());
        assert!(parse_filter("$share//a").is_err());
        assert!(parse_filter("$share/g+/a").is_err());
        assert_eq!(parse_filter("a/b").unwrap().share_group, None);
    }
}
