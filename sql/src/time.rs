//! `parse_time` and `time_to_epoch`: AWS's functions take Joda-Time patterns (`yyyy-MM-dd
//! HH:mm:ss.SSS Z`), translated here into the strftime conversions that do the work.

/// The strftime format of a Joda-Time pattern; `None` for a pattern letter with no
/// equivalent (era, century, half-day hours 0-11 and 1-24).
pub fn strtime_format(pattern: &str) -> Option<String> {
    let mut out = String::with_capacity(pattern.len() * 2);
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            // `''` is a quote; `'...'` is literal text, in which `''` is a quote.
            if chars.get(i + 1) == Some(&'\'') {
                out.push('\'');
                i += 2;
                continue;
            }
            i += 1;
            while i < chars.len() {
                if chars[i] == '\'' {
                    if chars.get(i + 1) == Some(&'\'') {
                        out.push('\'');
                        i += 2;
                        continue;
                    }
                    break;
                }
                push_literal(&mut out, chars[i]);
                i += 1;
            }
            i += 1;
            continue;
        }
        if !c.is_ascii_alphabetic() {
            push_literal(&mut out, c);
            i += 1;
            continue;
        }
        let mut run = 1;
        while chars.get(i + run) == Some(&c) {
            run += 1;
        }
        i += run;
        let conversion = match (c, run) {
            ('y' | 'Y' | 'u', 2) => "%y".to_owned(),
            ('y' | 'Y' | 'u', _) => "%Y".to_owned(),
            ('x', 2) => "%g".to_owned(),
            ('x', _) => "%G".to_owned(),
            ('M', 1) => "%-m".to_owned(),
            ('M', 2) => "%m".to_owned(),
            ('M', 3) => "%b".to_owned(),
            ('M', _) => "%B".to_owned(),
            ('d', 1) => "%-d".to_owned(),
            ('d', _) => "%d".to_owned(),
            ('D', 3) => "%j".to_owned(),
            ('D', _) => "%-j".to_owned(),
            ('H', 1) => "%-H".to_owned(),
            ('H', _) => "%H".to_owned(),
            ('h', 1) => "%-I".to_owned(),
            ('h', _) => "%I".to_owned(),
            ('m', 1) => "%-M".to_owned(),
            ('m', _) => "%M".to_owned(),
            ('s', 1) => "%-S".to_owned(),
            ('s', _) => "%S".to_owned(),
            ('S', n) => format!("%{}f", n.min(9)),
            ('a', _) => "%p".to_owned(),
            ('E', 1..=3) => "%a".to_owned(),
            ('E', _) => "%A".to_owned(),
            ('e', _) => "%u".to_owned(),
            ('w', 1) => "%-V".to_owned(),
            ('w', _) => "%V".to_owned(),
            ('Z', 1) => "%z".to_owned(),
            ('Z', 2) => "%:z".to_owned(),
            ('Z', _) => "%Q".to_owned(),
            ('z', _) => "%Z".to_owned(),
            _ => return None,
        };
        out.push_str(&conversion);
    }
    Some(out)
}

fn push_literal(out: &mut String, c: char) {
    if c == '%' {
        out.push_str("%%");
    } else {
        out.push(c);
    }
}

/// `millis` since the epoch written by the Joda-Time `pattern` in `zone` (an IANA name or
/// an offset; UTC when absent).
pub fn format(pattern: &str, millis: i64, zone: Option<&str>) -> Option<String> {
    let format = strtime_format(pattern)?;
    let zone = match zone {
        None => jiff::tz::TimeZone::UTC,
        Some(name) => time_zone(name)?,
    };
    let zoned = jiff::Timestamp::from_millisecond(millis)
        .ok()?
        .to_zoned(zone);
    jiff::fmt::strtime::format(format.as_str(), &zoned).ok()
}

/// The milliseconds since the epoch of `text` read by the Joda-Time `pattern`; a time without
/// an offset or zone is UTC, and a date without a time is its midnight.
pub fn parse(text: &str, pattern: &str) -> Option<i64> {
    let format = strtime_format(pattern)?;
    let mut parsed = jiff::fmt::strtime::parse(format.as_str(), text).ok()?;
    if parsed.hour().is_none() {
        parsed.set_hour(Some(0)).ok()?;
    }
    if parsed.minute().is_none() {
        parsed.set_minute(Some(0)).ok()?;
    }
    let timestamp = match parsed.to_timestamp() {
        Ok(timestamp) => timestamp,
        Err(_) => parsed
            .to_datetime()
            .ok()?
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()?
            .timestamp(),
    };
    Some(timestamp.as_millisecond())
}

fn time_zone(name: &str) -> Option<jiff::tz::TimeZone> {
    if name.eq_ignore_ascii_case("utc") || name.eq_ignore_ascii_case("z") {
        return Some(jiff::tz::TimeZone::UTC);
    }
    if let Ok(zone) = jiff::tz::TimeZone::get(name) {
        return Some(zone);
    }
    // An offset: +05:30, -0800.
    let parsed = jiff::fmt::strtime::parse("%:z", name)
        .or_else(|_| jiff::fmt::strtime::parse("%z", name))
        .ok()?;
    Some(jiff::tz::TimeZone::fixed(parsed.offset()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joda_patterns_become_strtime_formats() {
        assert_eq!(
            strtime_format("yyyy-MM-dd'T'HH:mm:ss.SSSZ").as_deref(),
            Some("%Y-%m-%dT%H:%M:%S.%3f%z")
        );
        assert_eq!(
            strtime_format("d MMM yy, h a").as_deref(),
            Some("%-d %b %y, %-I %p")
        );
        assert_eq!(
            strtime_format("'it''s' 100%").as_deref(),
            Some("it's 100%%")
        );
        assert_eq!(strtime_format("G yyyy"), None);
    }

    #[test]
    fn times_are_written_and_read_as_aws_documents() {
        // AWS's examples: parse_time("yyyy-MM-dd HH:mm:ss z", 1520000000000) and with a zone.
        assert_eq!(
            format("yyyy-MM-dd HH:mm:ss z", 1_520_000_000_000, None).as_deref(),
            Some("2018-03-02 14:13:20 UTC")
        );
        assert_eq!(
            format(
                "yyyy-MM-dd HH:mm:ss z",
                1_520_000_000_000,
                Some("America/Belize")
            )
            .as_deref(),
            Some("2018-03-02 08:13:20 CST")
        );
        assert_eq!(
            format(
                "yyyy.MM.dd 'at' HH:mm:ss.SSS",
                1_520_000_000_123,
                Some("+05:30")
            )
            .as_deref(),
            Some("2018.03.02 at 19:43:20.123")
        );
        assert_eq!(format("yyyy", 0, Some("Nowhere/City")), None);
        // time_to_epoch("2020-3-3 12:12:12 +0800", "yyyy-M-d HH:mm:ss Z").
        assert_eq!(
            parse("2020-3-3 12:12:12 +0800", "yyyy-M-d HH:mm:ss Z"),
            Some(1_583_208_732_000)
        );
        assert_eq!(
            parse("2018-03-02 14:13:20", "yyyy-MM-dd HH:mm:ss"),
            Some(1_520_000_000_000)
        );
        assert_eq!(parse("2018-03-02", "yyyy-MM-dd"), Some(1_519_948_800_000));
        assert_eq!(parse("not a date", "yyyy-MM-dd"), None);
    }
}
