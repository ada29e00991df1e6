//! Token buckets keyed by client address, for [`super::rate_limit`]: one table per service,
//! checked on every request.
//!
//! Each bucket is one atomic integer, the GCRA "theoretical arrival time" (as in `governor`,
//! whose `Quota` semantics this keeps: `capacity` requests at once, then one per
//! `1 s / refill`). The table is split into shards, each a `Mutex<HashMap>` from the client to
//! its shared bucket; the caller passes the clock reading it already has.
//! Keys are exact addresses (a collision can never make a flooder drain a polite client's
//! bucket); the hash is keyed per process (clients choose their addresses, and could
//! otherwise pile into one shard).
//!
//! Each HTTP worker keeps a [`BucketCache`]: the buckets of the clients it saw last, so a
//! request from a known client takes its token with one compare-and-swap, without hashing,
//! locking or a map lookup. A bucket the sweep drops is marked retired first; a cache
//! holding it sees the mark and goes back to the table, so every client keeps one bucket per
//! service however many workers and connections it uses.

use std::{
    collections::HashMap,
    hash::{BuildHasher, BuildHasherDefault, Hash, Hasher},
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
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

/// One client's bucket: the monotonic clock's nanoseconds at which it is full again, or
/// [`RETIRED`] once the sweep has dropped it from its table.
pub struct Bucket(AtomicU64);

/// No arrival time reaches it: the sweep's mark on a bucket it removed.
const RETIRED: u64 = u64::MAX;

type Shard = HashMap<Key, Arc<Bucket>, BuildHasherDefault<PassThrough>>;

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

    /// `client`'s bucket, a full one if the table has none.
    fn bucket(&self, client: IpAddr, now: u64) -> Arc<Bucket> {
        let hash = self.hasher.hash_one(client);
        let key = Key { hash, client };
        let mut shard = self.shard(hash);
        // `get` first: `entry` would make room for an insert on every lookup.
        if let Some(bucket) = shard.get(&key) {
            return Arc::clone(bucket);
        }
        let bucket = Arc::new(Bucket(AtomicU64::new(now)));
        shard.insert(key, Arc::clone(&bucket));
        bucket
    }

    /// Takes one token from `bucket` at `now`; `None` if the sweep retired it.
    fn take(&self, bucket: &Bucket, now: u64) -> Option<Result<(), Duration>> {
        let mut full_at = bucket.0.load(Ordering::Relaxed);
        loop {
            if full_at == RETIRED {
                return None;
            }
            let earliest = full_at.saturating_sub(self.tolerance);
            if now < earliest {
                return Some(Err(Duration::from_nanos(earliest - now)));
            }
            let next = full_at
                .max(now)
                .saturating_add(self.interval)
                .min(RETIRED - 1);
            match bucket.0.compare_exchange_weak(
                full_at,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Ok(())),
                Err(current) => full_at = current,
            }
        }
    }

    /// `client`'s bucket from the table, and a token from it.
    fn bucket_and_take(&self, client: IpAddr, now: u64) -> (Arc<Bucket>, Result<(), Duration>) {
        loop {
            let bucket = self.bucket(client, now);
            // Retired between the lookup and the take: the table has dropped it by now.
            if let Some(taken) = self.take(&bucket, now) {
                return (bucket, taken);
            }
        }
    }

    /// Takes one token from `client`'s bucket at `now`; `Err` holds how long until the next.
    pub fn check(&self, client: IpAddr, now: MonotonicNanos) -> Result<(), Duration> {
        self.bucket_and_take(client, now.as_nanos()).1
    }

    /// Drops the buckets that are full again at `now` (a new one would start full anyway),
    /// releases their memory, and returns how many remain.
    pub fn sweep(&self, now: MonotonicNanos) -> usize {
        let now = now.as_nanos();
        self.shards
            .iter()
            .map(|shard| {
                let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
                shard.retain(|_, bucket| {
                    let full_at = bucket.0.load(Ordering::Relaxed);
                    // A token taken meanwhile (through a cache) makes the swap fail: kept.
                    full_at > now
                        || bucket
                            .0
                            .compare_exchange(
                                full_at,
                                RETIRED,
                                Ordering::Relaxed,
                                Ordering::Relaxed,
                            )
                            .is_err()
                });
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

/// Slots of a [`BucketCache`].
const CACHE_SLOTS: usize = 64;

/// One HTTP worker's buckets of the (service, client) pairs it saw last, direct-mapped: a
/// slot per pair, overwritten by the next pair that maps to it. Clients choose their
/// addresses, but a pair they push out only costs the next request a table lookup.
pub struct BucketCache {
    slots: Box<[Option<Cached>]>,
}

struct Cached {
    table: usize,
    client: IpAddr,
    bucket: Arc<Bucket>,
}

impl Default for BucketCache {
    fn default() -> Self {
        Self {
            slots: (0..CACHE_SLOTS).map(|_| None).collect(),
        }
    }
}

impl BucketCache {
    fn slot(table: usize, client: IpAddr) -> usize {
        let address = match client {
            IpAddr::V4(v4) => u64::from(u32::from(v4)),
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                (bits >> 64) as u64 ^ bits as u64
            }
        };
        let mixed = (address ^ (table as u64) << 40).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (mixed >> (64 - CACHE_SLOTS.trailing_zeros())) as usize
    }

    /// Takes one token from `client`'s bucket in `tables[table]` at `now`, through the cache.
    pub fn check(
        &mut self,
        tables: &[BucketTable],
        table: usize,
        client: IpAddr,
        now: MonotonicNanos,
    ) -> Result<(), Duration> {
        let Some(buckets) = tables.get(table) else {
            return Ok(());
        };
        let now = now.as_nanos();
        let Some(slot) = self.slots.get_mut(Self::slot(table, client)) else {
            return buckets.check(client, MonotonicNanos::from_nanos(now));
        };
        if let Some(cached) = slot {
            if cached.table == table && cached.client == client {
                if let Some(taken) = buckets.take(&cached.bucket, now) {
                    return taken;
                }
            }
        }
        let (bucket, taken) = buckets.bucket_and_take(client, now);
        *slot = Some(Cached {
            table,
            client,
            bucket,
        });
        taken
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

    #[test]
    fn a_cache_shares_the_table_buckets_and_notices_swept_ones() {
        let tables = [BucketTable::new(1000, 1), BucketTable::new(2, 10)];
        let (mut first, mut second) = (BucketCache::default(), BucketCache::default());
        let start = MonotonicNanos::now();
        // Two workers' caches and the table draw from one bucket per client and table.
        assert_eq!(first.check(&tables, 1, ip(1), start), Ok(()));
        assert_eq!(second.check(&tables, 1, ip(1), start), Ok(()));
        assert!(first.check(&tables, 1, ip(1), start).is_err());
        assert!(tables[1].check(ip(1), start).is_err());
        // The other table's bucket for the same client is its own.
        assert_eq!(first.check(&tables, 0, ip(1), start), Ok(()));
        // Full again at 200 ms: swept out of the table; the caches' copies are retired and
        // the next check starts a fresh full bucket in the table.
        let later = start + Duration::from_millis(200);
        assert_eq!(tables[1].sweep(later), 0);
        assert_eq!(first.check(&tables, 1, ip(1), later), Ok(()));
        assert_eq!(tables[1].len(), 1);
        assert_eq!(second.check(&tables, 1, ip(1), later), Ok(()));
        assert!(first.check(&tables, 1, ip(1), later).is_err());
        assert_eq!(
            tables[1].len(),
            1,
            "one bucket per client however it is reached"
        );
        // A bucket in use is kept by the sweep.
        assert_eq!(tables[1].sweep(later), 1);
        // No such table: nothing to limit.
        assert_eq!(first.check(&tables, 7, ip(1), later), Ok(()));
    }
}
