//! Wall-clock time as AWS IoT counts it in shadows, tokens, signatures and certificates.

use std::time::{SystemTime, UNIX_EPOCH};

/// Whole seconds since the Unix epoch; 0 for a clock set before it.
pub fn epoch_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
