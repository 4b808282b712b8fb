//! Maintenance windows: a job with windows rolls out only inside them. A window starts at the
//! minutes its cron expression names (AWS's six fields, UTC: `cron(minutes hours
//! day-of-month month day-of-week year)`, with `*`, `?`, lists, ranges, steps and month and
//! weekday names) and lasts `durationInMinutes`.

use super::error::JobsError;
use super::model::MaintenanceWindow;

/// One field: the values it allows, as a bit per value from its minimum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field {
    bits: u128,
    min: u32,
}

impl Field {
    fn allows(self, value: u32) -> bool {
        value >= self.min && (self.bits >> (value - self.min)) & 1 == 1
    }
}

/// A parsed `cron(...)` expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: Field,
    hours: Field,
    days: Field,
    months: Field,
    weekdays: Field,
    years: Field,
    /// `?` in day-of-month or day-of-week: only the other one constrains the day.
    any_day_of_month: bool,
    any_day_of_week: bool,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

fn value(text: &str, min: u32, max: u32, names: &[&str]) -> Option<u32> {
    if let Some(at) = names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
        return Some(min + at as u32);
    }
    text.parse().ok().filter(|v| (min..=max).contains(v))
}

fn field(text: &str, min: u32, max: u32, names: &[&str]) -> Option<(Field, bool)> {
    if text == "?" {
        return Some((
            Field {
                bits: u128::MAX,
                min,
            },
            true,
        ));
    }
    let mut bits = 0u128;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (range, step.parse::<u32>().ok().filter(|s| *s > 0)?),
            None => (part, 1),
        };
        let (from, to) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a, min, max, names)?, value(b, min, max, names)?)
        } else {
            let v = value(range, min, max, names)?;
            (v, if part.contains('/') { max } else { v })
        };
        if from > to {
            return None;
        }
        let mut v = from;
        while v <= to {
            bits |= 1 << (v - min);
            match v.checked_add(step) {
                Some(next) => v = next,
                None => break,
            }
        }
    }
    Some((Field { bits, min }, false))
}

impl Cron {
    pub fn parse(expression: &str) -> Option<Cron> {
        let inner = expression.trim().strip_prefix("cron(")?.strip_suffix(')')?;
        let parts: Vec<&str> = inner.split_whitespace().collect();
        let [minutes, hours, days, months, weekdays, years] = parts.as_slice() else {
            return None;
        };
        let (minutes, _) = field(minutes, 0, 59, &[])?;
        let (hours, _) = field(hours, 0, 23, &[])?;
        let (days, any_day_of_month) = field(days, 1, 31, &[])?;
        let (months, _) = field(months, 1, 12, &MONTHS)?;
        let (weekdays, any_day_of_week) = field(weekdays, 1, 7, &WEEKDAYS)?;
        // Years from 1970 to 2097 fit the 128 bits.
        let (years, _) = field(years, 1970, 2097, &[])?;
        // AWS requires `?` in one of the two day fields.
        if any_day_of_month == any_day_of_week {
            return None;
        }
        Some(Cron {
            minutes,
            hours,
            days,
            months,
            weekdays,
            years,
            any_day_of_month,
            any_day_of_week,
        })
    }

    /// Whether the minute starting at `minute` (minutes since the epoch, UTC) is one the
    /// expression names.
    pub fn matches(&self, minute: u64) -> bool {
        let days = (minute / 1440) as i64;
        let in_day = minute % 1440;
        let (year, month, day) = civil_from_days(days);
        // 1970-01-01 was a Thursday; AWS counts Sunday as 1.
        let weekday = ((days + 4).rem_euclid(7) + 1) as u32;
        let Ok(year) = u32::try_from(year) else {
            return false;
        };
        self.minutes.allows((in_day % 60) as u32)
            && self.hours.allows((in_day / 60) as u32)
            && self.months.allows(month)
            && self.years.allows(year)
            && (self.any_day_of_month || self.days.allows(day))
            && (self.any_day_of_week || self.weekdays.allows(weekday))
    }
}

/// The date of a day since 1970-01-01: (year, month 1-12, day 1-31).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Checks the windows of a scheduling configuration.
pub fn check_windows(windows: &[MaintenanceWindow]) -> Result<(), JobsError> {
    for window in windows {
        if Cron::parse(&window.start_time).is_none() {
            return Err(JobsError::invalid(format!(
                "maintenanceWindows startTime '{}' is not a cron expression of six fields, \
                 cron(minutes hours day-of-month month day-of-week year), with ? in one of \
                 the day fields",
                window.start_time
            )));
        }
        if !(1..=1430).contains(&window.duration_in_minutes) {
            return Err(JobsError::invalid(
                "maintenanceWindows durationInMinutes must be between 1 and 1430",
            ));
        }
    }
    Ok(())
}

/// Whether `now_ms` falls inside one of `windows` (true when there are none).
pub fn inside(windows: &[MaintenanceWindow], now_ms: u64) -> bool {
    if windows.is_empty() {
        return true;
    }
    let now = now_ms / 60_000;
    windows.iter().any(|window| {
        let Some(cron) = Cron::parse(&window.start_time) else {
            return false;
        };
        // A window that began in the last `durationInMinutes` minutes is still open.
        let back = window.duration_in_minutes.min(1430);
        (0..back).any(|ago| now >= ago && cron.matches(now - ago))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minute(y: i64, mo: u32, d: u32, h: u64, mi: u64) -> u64 {
        let days =
            super::super::model::parse_schedule_time("t", &format!("{y:04}-{mo:02}-{d:02}T00:00"))
                .unwrap()
                / 60_000;
        days + h * 60 + mi
    }

    #[test]
    fn dates_and_weekdays_are_right() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_431), (2025, 12, 9));
        // 2026-12-06 is a Sunday.
        let sunday_noon = minute(2026, 12, 6, 12, 0);
        let cron = Cron::parse("cron(0 12 ? * SUN *)").unwrap();
        assert!(cron.matches(sunday_noon));
        assert!(!cron.matches(sunday_noon + 1));
        assert!(!cron.matches(sunday_noon + 1440));
    }

    #[test]
    fn windows_are_open_for_their_duration() {
        let windows = vec![MaintenanceWindow {
            start_time: "cron(30 2 1,15 * ? *)".into(),
            duration_in_minutes: 60,
        }];
        let start = minute(2027, 3, 15, 2, 30) * 60_000;
        assert!(inside(&windows, start));
        assert!(inside(&windows, start + 59 * 60_000));
        assert!(!inside(&windows, start + 60 * 60_000));
        assert!(!inside(&windows, start - 60_000));
        assert!(!inside(&windows, minute(2027, 3, 16, 2, 30) * 60_000));
        assert!(inside(&[], 0));
    }

    #[test]
    fn expressions_are_checked() {
        for good in [
            "cron(0 0 ? * MON-FRI *)",
            "cron(*/15 8-17 ? * 2-6 2027)",
            "cron(0 12 1 JAN,JUL ? *)",
        ] {
            assert!(Cron::parse(good).is_some(), "{good}");
        }
        for bad in [
            "0 0 * * ? *",
            "cron(0 0 * * * *)",
            "cron(0 0 ? * *)",
            "cron(60 0 ? * * *)",
            "cron(0 0 L * ? *)",
            "cron(0 0 ? * 2#1 *)",
        ] {
            assert!(Cron::parse(bad).is_none(), "{bad}");
        }
        assert!(Cron::parse("cron(5/4294967295 * ? * * *)").is_some());
        assert!(
            Cron::parse("cron(0 0 1 1 ? 3000)").is_none(),
            "a year past 2097"
        );
    }
}
