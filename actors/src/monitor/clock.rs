//! A monotonic reading as plain nanoseconds since the process's first reading, on top of
//! `std::time::Instant`: the rate-limit buckets keep readings in atomics, which an `Instant`
//! cannot be stored in.

use std::{
    ops::Add,
    sync::OnceLock,
    time::{Duration, Instant},
};

/// One reading of the monotonic clock. Only comparable with readings of the same process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MonotonicNanos(u64);

impl MonotonicNanos {
    pub fn now() -> Self {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        let origin = *ORIGIN.get_or_init(Instant::now);
        Self(u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    pub fn from_nanos(nanos: u64) -> Self {
        Self(nanos)
    }

    pub fn as_nanos(self) -> u64 {
        self.0
    }

    /// Nanoseconds from `earlier` to `self`, zero if `earlier` is later.
    pub fn nanos_since(self, earlier: Self) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// [`Self::nanos_since`] as a `Duration`.
    pub fn duration_since(self, earlier: Self) -> Duration {
        Duration::from_nanos(self.nanos_since(earlier))
    }
}

impl Add<Duration> for MonotonicNanos {
    type Output = Self;

    fn add(self, duration: Duration) -> Self {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(nanos))
    }
}
