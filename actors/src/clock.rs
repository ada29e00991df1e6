//! The time expiry checks read (sessions, nonces, playback tokens and grants, the ownership
//! cache), injectable so tests can move past a TTL instead of waiting it out.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use time::OffsetDateTime;

pub trait Clock: Send + Sync {
    /// Wall-clock time, for expiries that are stored or handed out.
    fn now_utc(&self) -> OffsetDateTime;
    /// Monotonic time, for in-memory expiries.
    fn instant(&self) -> Instant;
}

pub type SharedClock = Arc<dyn Clock>;

/// The real clock; what production runs on.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_utc(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// The real clock plus however far [`ManualClock::advance`] has moved it: time still passes,
/// and a test can jump ahead.
#[derive(Debug, Default)]
pub struct ManualClock {
    ahead: Mutex<Duration>,
}

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        if let Ok(mut ahead) = self.ahead.lock() {
            *ahead += by;
        }
    }

    fn ahead(&self) -> Duration {
        self.ahead.lock().map(|ahead| *ahead).unwrap_or_default()
    }
}

impl Clock for ManualClock {
    fn now_utc(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc() + self.ahead()
    }

    fn instant(&self) -> Instant {
        Instant::now() + self.ahead()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_both_times_ahead() {
        let clock = ManualClock::default();
        let (wall, mono) = (OffsetDateTime::now_utc(), Instant::now());
        clock.advance(Duration::from_secs(3600));
        assert!(clock.now_utc() >= wall + Duration::from_secs(3600));
        assert!(clock.instant() >= mono + Duration::from_secs(3600));
    }
}
