//! Latency histograms, delivery accounting and broker process readings.

use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency histogram in microseconds, 1 µs to 60 s at 3 significant digits.
#[allow(clippy::expect_used)] // constant bounds, valid by construction
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub samples: u64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            samples: h.len(),
        }
    }
}

/// Per-publisher sequence tracking at one subscriber. Brokers keep each
/// publisher's order, so a number below the next expected one is a duplicate.
#[derive(Debug, Default)]
pub struct SequenceTracker {
    next: Vec<u64>,
    pub unique: u64,
    pub duplicates: u64,
    pub gaps: u64,
}

impl SequenceTracker {
    pub fn new(publishers: usize) -> Self {
        SequenceTracker {
            next: vec![0; publishers],
            ..Default::default()
        }
    }

    pub fn record(&mut self, publisher: u32, seq: u64) {
        let Some(next) = self.next.get_mut(publisher as usize) else {
            return;
        };
        if seq < *next {
            self.duplicates += 1;
            return;
        }
        if seq > *next {
            self.gaps += seq - *next;
        }
        *next = seq + 1;
        self.unique += 1;
    }
}

/// Resident memory and CPU time of a process, from /proc.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct ProcessSample {
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
    pub cpu_seconds: f64,
}

pub fn sample_process(pid: u32) -> Option<ProcessSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|v| v * 1024)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may contain spaces, start after ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(ProcessSample {
        rss_bytes: kib("VmRSS:")?,
        peak_rss_bytes: kib("VmHWM:")?,
        cpu_seconds: (utime + stime) as f64 / clock_ticks_per_second(),
    })
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Raises this process's open-file limit to its hard limit, so that
/// thousands of connections fit; brokers started from here inherit it.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return 0;
        }
    }
    limit.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_counts_duplicates_and_gaps() {
        let mut t = SequenceTracker::new(2);
        for seq in [0, 1, 1, 3, 4] {
            t.record(0, seq);
        }
        t.record(1, 0);
        t.record(9, 0);
        assert_eq!((t.unique, t.duplicates, t.gaps), (5, 1, 1));
    }

    #[test]
    fn own_process_can_be_sampled() {
        let s = sample_process(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0 && s.peak_rss_bytes >= s.rss_bytes);
    }

    #[test]
    fn histogram_quantiles_are_in_ms() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            h.record(us).unwrap();
        }
        let l = Latency::from_histogram(&h);
        assert!((l.p50_ms - 0.5).abs() < 0.01, "{l:?}");
        assert_eq!(l.samples, 1000);
    }
}
