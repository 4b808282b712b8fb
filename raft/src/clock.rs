//! The monotonic clock the store reads for elections, heartbeats and lease deadlines.
//!
//! In production it is the process's monotonic clock. In the simulation every host has its
//! own clock that can jump forward on its own, as a host's does when its VM is paused or
//! suspended, so that the protocol is tested with clocks that disagree.

#[cfg(not(madsim))]
pub type Instant = std::time::Instant;

#[cfg(madsim)]
pub use skewed::{Instant, jump};

#[cfg(madsim)]
mod skewed {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::ops::{Add, AddAssign, Sub, SubAssign};
    use std::time::Duration;

    use tokio::madsim::task::NodeId;

    thread_local! {
        // A simulation runs on one thread, and each run on a thread of its own, so the skews
        // of one run never leak into the next.
        static SKEWS: RefCell<HashMap<NodeId, Duration>> = RefCell::new(HashMap::new());
    }

    fn skew() -> Duration {
        let node = tokio::madsim::plugin::node();
        SKEWS.with(|s| s.borrow().get(&node).copied().unwrap_or_default())
    }

    /// Moves the clock of simulated host `node` forward by `by`; the jump persists across
    /// restarts of the host, like a real machine's clock.
    pub fn jump(node: NodeId, by: Duration) {
        SKEWS.with(|s| *s.borrow_mut().entry(node).or_default() += by);
    }

    /// A reading of the current host's clock.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct Instant(std::time::Instant);

    impl Instant {
        pub fn now() -> Self {
            Self(std::time::Instant::now() + skew())
        }

        pub fn elapsed(&self) -> Duration {
            Self::now().0.saturating_duration_since(self.0)
        }

        pub fn saturating_duration_since(&self, earlier: Self) -> Duration {
            self.0.saturating_duration_since(earlier.0)
        }

        /// The simulator's instant at which this host's clock reads `self`.
        pub(crate) fn to_simulator(self) -> std::time::Instant {
            self.0 - skew()
        }
    }

    impl Add<Duration> for Instant {
        type Output = Self;
        fn add(self, d: Duration) -> Self {
            Self(self.0 + d)
        }
    }

    impl AddAssign<Duration> for Instant {
        fn add_assign(&mut self, d: Duration) {
            self.0 += d;
        }
    }

    impl Sub<Duration> for Instant {
        type Output = Self;
        fn sub(self, d: Duration) -> Self {
            Self(self.0 - d)
        }
    }

    impl SubAssign<Duration> for Instant {
        fn sub_assign(&mut self, d: Duration) {
            self.0 -= d;
        }
    }

    impl Sub<Instant> for Instant {
        type Output = Duration;
        fn sub(self, other: Self) -> Duration {
            self.0.saturating_duration_since(other.0)
        }
    }

    impl openraft::Instant for Instant {
        fn now() -> Self {
            Instant::now()
        }
    }
}
