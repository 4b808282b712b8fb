//! Connection deadlines (CONNECT timeout, keep-alive, slow subscribers),
//! checked by one task for the whole broker: a timer per connection would
//! cost every idle connection a timer entry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::session::Signal;

/// How often deadlines are checked; a deadline fires up to this late.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

pub struct Deadlines {
    epoch: Instant,
    connections: Mutex<HashMap<u64, Arc<Signal>, foldhash::fast::RandomState>>,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            epoch: Instant::now(),
            connections: Mutex::new(HashMap::default()),
        }
    }
}

impl Deadlines {
    pub fn register(&self, connection_id: u64, signal: &Arc<Signal>) {
        self.connections
            .lock()
            .insert(connection_id, Arc::clone(signal));
    }

    pub fn unregister(&self, connection_id: u64) {
        self.connections.lock().remove(&connection_id);
    }

    /// Milliseconds since the broker started, rounded up so that a sweep
    /// never wakes a connection before its deadline; never 0, which means none.
    pub fn ticks(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch);
        let ms = since.as_millis() + u128::from(!since.subsec_nanos().is_multiple_of(1_000_000));
        u64::try_from(ms).unwrap_or(u64::MAX).max(1)
    }

    /// Wakes every connection whose deadline has passed.
    pub fn sweep(&self, now: Instant) {
        let now = self.ticks(now);
        for signal in self.connections.lock().values() {
            if signal.deadline_passed(now) {
                signal.wake();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.connections.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_round_up_and_never_mean_none() {
        let d = Deadlines::default();
        assert_eq!(d.ticks(d.epoch), 1);
        assert_eq!(d.ticks(d.epoch + Duration::from_micros(1500)), 2);
        assert_eq!(d.ticks(d.epoch + Duration::from_millis(7)), 7);
    }

    #[test]
    fn sweep_wakes_only_expired_connections() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let d = Deadlines::default();
            let due = Arc::new(Signal::default());
            let later = Arc::new(Signal::default());
            let none = Arc::new(Signal::default());
            d.register(1, &due);
            d.register(2, &later);
            d.register(3, &none);
            due.set_deadline(d.ticks(d.epoch + Duration::from_millis(10)));
            later.set_deadline(d.ticks(d.epoch + Duration::from_secs(10)));
            d.sweep(d.epoch + Duration::from_millis(20));
            let woke = |s: &Arc<Signal>| {
                let n = s.notified();
                tokio::pin!(n);
                n.as_mut().enable()
            };
            assert!(woke(&due));
            assert!(!woke(&later));
            assert!(!woke(&none));
            d.unregister(1);
            assert_eq!(d.len(), 2);
        });
    }
}
