//! The monotonic clock as plain nanoseconds, for the per-request path: the HTTP middleware's
//! start and end readings, the rate-limit buckets and the trace stats.
//!
//! `std::time::Instant` reads the same clock (`CLOCK_MONOTONIC`), but every duration between
//! two of them goes through `Timespec` arithmetic with checked carries (~40 instructions per
//! subtraction, and a request took two); here a reading is one `u64` and a duration one
//! subtraction.

use std::{ops::Add, time::Duration};

/// One reading of `CLOCK_MONOTONIC`, in nanoseconds since an unspecified start (boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MonotonicNanos(u64);

impl MonotonicNanos {
    pub fn now() -> Self {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid, writable `timespec`; CLOCK_MONOTONIC always exists on
        // Linux, and on the impossible failure `now` stays zero (a clock at its start).
        #[allow(unsafe_code)]
        let _ = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        // Both fields are non-negative for this clock; u64 nanoseconds last 584 years.
        Self(
            (now.tv_sec as u64)
                .wrapping_mul(1_000_000_000)
                .wrapping_add(now.tv_nsec as u64),
        )
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn reads_the_same_clock_as_instant() {
        let (std_start, start) = (Instant::now(), MonotonicNanos::now());
        std::hint::black_box((0..10_000u64).sum::<u64>());
        let (end, std_end) = (MonotonicNanos::now(), Instant::now());
        assert!(end >= start);
        assert!(end.duration_since(start) <= std_end.duration_since(std_start));
        assert_eq!(start.duration_since(end), Duration::ZERO);
        assert_eq!(
            (start + Duration::from_millis(3)).nanos_since(start),
            3_000_000
        );
    }
}
