//! One keyed limiter per service for [`super::rate_limit`]: governor's GCRA (`capacity`
//! requests at once, then one per `1 s / refill`) over a store keyed by client address.
//!
//! The store is ours, a bounded LRU map, because governor's own stores cannot evict one key:
//! over `max_tracked_clients` their only remedy is to clear them, which would hand every busy
//! client (a flood too) a full bucket again. Here the least recently seen client goes, counted
//! in `streamgate_rate_limit_evictions_total`; [`ServiceLimiter::sweep`] (governor's
//! `retain_recent`, on a timer) drops clients whose bucket has refilled anyway.

use std::{
    net::IpAddr,
    num::{NonZeroU32, NonZeroUsize},
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use foldhash::fast::RandomState;
use governor::{
    clock::{Clock, DefaultClock},
    nanos::Nanos,
    state::{keyed::ShrinkableKeyedStateStore, StateStore},
    Quota, RateLimiter,
};
use lru::LruCache;
use prometheus::IntCounter;

/// Client → GCRA theoretical arrival time. The hash is seeded per process: clients choose
/// their addresses.
pub struct ClientStore {
    clients: Mutex<LruCache<IpAddr, Nanos, RandomState>>,
    evictions: IntCounter,
}

impl ClientStore {
    fn new(max_clients: usize, evictions: IntCounter) -> Self {
        let room = NonZeroUsize::new(max_clients).unwrap_or(NonZeroUsize::MIN);
        Self {
            clients: Mutex::new(LruCache::with_hasher(room, RandomState::default())),
            evictions,
        }
    }

    fn lock(&self) -> MutexGuard<'_, LruCache<IpAddr, Nanos, RandomState>> {
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl StateStore for ClientStore {
    type Key = IpAddr;

    fn measure_and_replace<T, F, E>(&self, key: &IpAddr, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut clients = self.lock();
        if let Some(arrival) = clients.get_mut(key) {
            let (outcome, next) = f(Some(*arrival))?;
            *arrival = next;
            return Ok(outcome);
        }
        let (outcome, next) = f(None)?;
        if clients.push(*key, next).is_some() {
            self.evictions.inc();
        }
        Ok(outcome)
    }
}

impl ShrinkableKeyedStateStore<IpAddr> for ClientStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let mut clients = self.lock();
        let refilled: Vec<IpAddr> = clients
            .iter()
            .filter(|(_, arrival)| **arrival <= drop_below)
            .map(|(client, _)| *client)
            .collect();
        for client in refilled {
            clients.pop(&client);
        }
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// One service's limiter and the clock it reads, to turn a refusal into a wait.
pub struct ServiceLimiter {
    limiter: RateLimiter<IpAddr, ClientStore, DefaultClock>,
    clock: DefaultClock,
}

impl ServiceLimiter {
    pub fn new(
        capacity: u32,
        refill_per_second: u32,
        max_clients: usize,
        evictions: IntCounter,
    ) -> Self {
        let positive = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(positive(refill_per_second)).allow_burst(positive(capacity));
        let clock = DefaultClock::default();
        Self {
            limiter: RateLimiter::new(
                quota,
                ClientStore::new(max_clients, evictions),
                clock.clone(),
            ),
            clock,
        }
    }

    /// Takes one token from `client`'s bucket; `Err` holds how long until the next one.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        self.limiter
            .check_key(&client)
            .map_err(|refused| refused.wait_time_from(self.clock.now()))
    }

    /// Drops clients whose buckets have refilled (they would start full anyway); returns how
    /// many remain.
    pub fn sweep(&self) -> usize {
        self.limiter.retain_recent();
        self.limiter.len()
    }

    pub fn len(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([198, 51, 100, n])
    }

    fn limiter(capacity: u32, refill: u32, room: usize) -> (ServiceLimiter, IntCounter) {
        let evictions = IntCounter::new("evictions", "test").unwrap();
        let limiter = ServiceLimiter::new(capacity, refill, room, evictions.clone());
        (limiter, evictions)
    }

    #[test]
    fn capacity_at_once_then_a_wait_of_about_one_refill() {
        let (limiter, _) = limiter(3, 1, 10);
        for _ in 0..3 {
            assert!(limiter.check(ip(1)).is_ok());
        }
        let wait = limiter.check(ip(1)).unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
        assert!(
            limiter.check(ip(2)).is_ok(),
            "another client has its own bucket"
        );
    }

    #[test]
    fn a_full_store_evicts_the_least_recently_seen_client_and_counts_it() {
        let (limiter, evictions) = limiter(1, 1, 2);
        assert!(limiter.check(ip(1)).is_ok());
        assert!(limiter.check(ip(2)).is_ok());
        // ip(1) asks again (refused) and is now the most recently seen.
        assert!(limiter.check(ip(1)).is_err());
        assert!(limiter.check(ip(3)).is_ok());
        assert_eq!(evictions.get(), 1);
        assert_eq!(limiter.len(), 2);
        assert!(
            limiter.check(ip(1)).is_err(),
            "the busy client kept its bucket"
        );
        assert!(limiter.check(ip(2)).is_ok(), "the evicted one starts full");
        assert_eq!(evictions.get(), 2);
    }

    #[test]
    fn the_sweep_drops_only_refilled_buckets() {
        let (slow, _) = limiter(2, 1, 10);
        let (fast, _) = limiter(1_000_000, 1_000_000, 10);
        assert!(fast.check(ip(1)).is_ok());
        assert!(slow.check(ip(1)).is_ok());
        // One token of a million a second: refilled within microseconds.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while fast.sweep() != 0 {
            assert!(std::time::Instant::now() < deadline, "never refilled");
        }
        assert_eq!(slow.sweep(), 1, "a bucket still refilling stays");
    }
}
