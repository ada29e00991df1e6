//! Token buckets keyed by client address, for [`super::rate_limit`]: one table per service,
//! checked on every request.
//!
//! Each bucket is one integer, the GCRA "theoretical arrival time" (as in `governor`, whose
//! `Quota` semantics this keeps: `capacity` requests at once, then one per `1 s / refill`).
//! The table is split into shards, each a `Mutex<HashMap>`: a check takes one uncontended lock
//! and one lookup, where `governor`'s keyed limiter went through `dashmap`, a compare-and-swap
//! loop and a read of its own clock; the caller passes the clock reading it already has.
//! Keys are exact addresses (a collision can never make a flooder drain a polite client's
//! bucket); the hash is keyed per process (clients choose their addresses, and could
//! otherwise pile into one shard).

use std::{
    collections::HashMap,
    hash::{BuildHasher, BuildHasherDefault, Hash, Hasher},
    net::IpAddr,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use foldhash::fast::RandomState;
use streamgate_actors::monitor::{clock::MonotonicNanos, family::PassThrough};

/// 64 shards: enough that HTTP workers rarely meet on one lock, few enough to sweep quickly.
const SHARD_BITS: u32 = 6;

/// A client address with its keyed hash, computed once for the shard and the map.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key {
    hash: u64,
    client: IpAddr,
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// The monotonic clock's nanoseconds at which each client's bucket is full again.
type Shard = HashMap<Key, u64, BuildHasherDefault<PassThrough>>;

pub struct BucketTable {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// Nanoseconds per token (GCRA's emission interval).
    interval: u64,
    /// `interval × (capacity - 1)`: how far ahead of now a bucket's arrival time may run
    /// for one more request to pass.
    tolerance: u64,
}

impl BucketTable {
    /// `capacity` tokens at most, `refill_per_second` added per second (both at least 1).
    pub fn new(capacity: u32, refill_per_second: u32) -> Self {
        let interval = (1_000_000_000 / u64::from(refill_per_second.max(1))).max(1);
        Self {
            shards: (0..1 << SHARD_BITS)
                .map(|_| Mutex::new(Shard::default()))
                .collect(),
            hasher: RandomState::default(),
            interval,
            tolerance: interval.saturating_mul(u64::from(capacity.max(1) - 1)),
        }
    }

    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, Shard> {
        // The top bits: the map inside uses the low ones.
        let index = usize::try_from(hash >> (64 - SHARD_BITS)).unwrap_or(0);
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one token from `client`'s bucket at `now`; `Err` holds how long until the next.
    pub fn check(&self, client: IpAddr, now: MonotonicNanos) -> Result<(), Duration> {
        let now = now.as_nanos();
        let hash = self.hasher.hash_one(client);
        let key = Key { hash, client };
        let mut shard = self.shard(hash);
        // `get_mut` first: `entry` would make room for an insert on every check.
        match shard.get_mut(&key) {
            Some(full_at) => {
                let earliest = full_at.saturating_sub(self.tolerance);
                if now < earliest {
                    return Err(Duration::from_nanos(earliest - now));
                }
                *full_at = (*full_at).max(now).saturating_add(self.interval);
            }
            // A new client's bucket is full: the first request always passes.
            None => {
                shard.insert(key, now.saturating_add(self.interval));
            }
        }
        Ok(())
    }

    /// Drops the buckets that are full again at `now` (a new one would start full anyway),
    /// releases their memory, and returns how many remain.
    pub fn sweep(&self, now: MonotonicNanos) -> usize {
        let now = now.as_nanos();
        self.shards
            .iter()
            .map(|shard| {
                let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
                shard.retain(|_, full_at| *full_at > now);
                shard.shrink_to_fit();
                shard.len()
            })
            .sum()
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    #[test]
    fn capacity_at_once_then_the_refill_rate() {
        let table = BucketTable::new(3, 2);
        let start = MonotonicNanos::now();
        for _ in 0..3 {
            assert_eq!(table.check(ip(1), start), Ok(()));
        }
        let wait = table.check(ip(1), start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500), "one token per 1/2 s");
        // Another client has its own full bucket.
        assert_eq!(table.check(ip(2), start), Ok(()));
        assert!(table
            .check(ip(1), start + Duration::from_millis(499))
            .is_err());
        assert_eq!(
            table.check(ip(1), start + Duration::from_millis(500)),
            Ok(())
        );
        assert!(table
            .check(ip(1), start + Duration::from_millis(500))
            .is_err());
        // Quiet for long: full again, but never above capacity.
        let later = start + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(table.check(ip(1), later), Ok(()));
        }
        assert!(table.check(ip(1), later).is_err());
    }

    #[test]
    fn a_flood_from_many_addresses_is_swept_away_once_refilled() {
        let table = BucketTable::new(2, 10);
        let start = MonotonicNanos::now();
        for n in 0..10_000u32 {
            let client = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n));
            assert_eq!(table.check(client, start), Ok(()));
        }
        assert_eq!(table.check(ip(1), start), Ok(()));
        assert_eq!(table.check(ip(1), start), Ok(()));
        assert_eq!(table.len(), 10_001);
        // At 150 ms the one-request clients are full again; the busy one is not.
        assert_eq!(table.sweep(start + Duration::from_millis(150)), 1);
        assert_eq!(table.len(), 1);
        assert_eq!(table.sweep(start + Duration::from_millis(200)), 0);
    }
}
