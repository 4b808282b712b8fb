//! Wall-clock time as AWS IoT counts it in shadows, tokens, signatures and certificates.

use std::time::{SystemTime, UNIX_EPOCH};

/// Whole seconds since the Unix epoch; 0 for a clock set before it.
pub fn epoch_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// [`epoch_seconds`] as the signed seconds that certificates, tokens and signatures compare.
pub fn epoch_seconds_signed() -> i64 {
    i64::try_from(epoch_seconds()).unwrap_or(i64::MAX)
}

/// Milliseconds since the Unix epoch, as AWS IoT stamps events and retained messages; 0 for a
/// clock set before it.
pub fn epoch_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// Microseconds since the Unix epoch: which of two connections for one client id, on two
/// nodes, came later.
pub fn epoch_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// Seconds since the Unix epoch with a millisecond fraction, as AWS's control plane stamps
/// creation and modification dates.
pub fn epoch_seconds_fraction() -> f64 {
    // Exact for any date before the year 287,000: f64 holds whole milliseconds to 2^53.
    epoch_millis() as f64 / 1000.0
}
