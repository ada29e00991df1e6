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
//! A table holds at most `max_clients` buckets: a client new to a full shard first evicts
//! that shard's least recently seen buckets (an eighth of it at once, so the sort is paid
//! rarely), counted in `streamgate_rate_limit_evictions_total`.
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
use prometheus::IntCounter;
use streamgate_actors::monitor::clock::MonotonicNanos;

/// Up to 64 shards: enough that HTTP workers rarely meet on one lock, few enough to sweep
/// quickly.
const MAX_SHARD_BITS: u32 = 6;
/// But room for at least this many clients per shard (a smaller table has fewer shards): the
/// cap evicts per shard, and a roomy shard's oldest are close to the whole table's oldest.
const MIN_SHARD_ROOM: usize = 1024;

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

/// One client's bucket.
pub struct Bucket {
    /// The monotonic clock's nanoseconds at which it is full again, or [`RETIRED`] once the
    /// sweep or the cap has dropped it from its table.
    full_at: AtomicU64,
    /// When the client last asked for a token (granted or not): the cap evicts by it.
    seen: AtomicU64,
}

impl Bucket {
    fn new(now: u64) -> Self {
        Self {
            full_at: AtomicU64::new(now),
            seen: AtomicU64::new(now),
        }
    }
}

/// No arrival time reaches it: the sweep's (and the cap's) mark on a bucket it removed.
const RETIRED: u64 = u64::MAX;

/// The keys already carry a seeded hash: hashing them again would be wasted work.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type Shard = HashMap<Key, Arc<Bucket>, BuildHasherDefault<PassThrough>>;

pub struct BucketTable {
    shards: Box<[Mutex<Shard>]>,
    /// `log2(shards.len())`: a key's shard is its hash's top bits.
    shard_bits: u32,
    /// Buckets a shard holds at most (`max_clients` over the shards).
    shard_room: usize,
    evictions: IntCounter,
    hasher: RandomState,
    /// Nanoseconds per token (GCRA's emission interval).
    interval: u64,
    /// `interval × (capacity - 1)`: how far ahead of now a bucket's arrival time may run
    /// for one more request to pass.
    tolerance: u64,
}

impl BucketTable {
    /// `capacity` tokens at most, `refill_per_second` added per second (both at least 1), for
    /// at most `max_clients` clients (at least 1); `evictions` counts the buckets the cap drops.
    pub fn new(
        capacity: u32,
        refill_per_second: u32,
        max_clients: usize,
        evictions: IntCounter,
    ) -> Self {
        let interval = (1_000_000_000 / u64::from(refill_per_second.max(1))).max(1);
        let max_clients = max_clients.max(1);
        let mut shard_bits = 0;
        while shard_bits < MAX_SHARD_BITS && MIN_SHARD_ROOM << (shard_bits + 1) <= max_clients {
            shard_bits += 1;
        }
        Self {
            shards: (0..1 << shard_bits)
                .map(|_| Mutex::new(Shard::default()))
                .collect(),
            shard_bits,
            shard_room: max_clients >> shard_bits,
            evictions,
            hasher: RandomState::default(),
            interval,
            tolerance: interval.saturating_mul(u64::from(capacity.max(1) - 1)),
        }
    }

    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, Shard> {
        // The top bits: the map inside uses the low ones. No bits (one shard): shard 0.
        let index =
            usize::try_from(hash.checked_shr(64 - self.shard_bits).unwrap_or(0)).unwrap_or(0);
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
        if shard.len() >= self.shard_room {
            let count = (shard.len() + 1 - self.shard_room).max(self.shard_room / 8);
            let evicted = evict_least_recently_seen(&mut shard, count);
            self.evictions.inc_by(evicted as u64);
        }
        let bucket = Arc::new(Bucket::new(now));
        shard.insert(key, Arc::clone(&bucket));
        bucket
    }

    /// Takes one token from `bucket` at `now`; `None` if the sweep retired it.
    fn take(&self, bucket: &Bucket, now: u64) -> Option<Result<(), Duration>> {
        bucket.seen.store(now, Ordering::Relaxed);
        let mut full_at = bucket.full_at.load(Ordering::Relaxed);
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
            match bucket.full_at.compare_exchange_weak(
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
                    let full_at = bucket.full_at.load(Ordering::Relaxed);
                    // A token taken meanwhile (through a cache) makes the swap fail: kept.
                    full_at > now
                        || bucket
                            .full_at
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

/// Drops the `count` least recently seen buckets of `shard` and retires them (caches holding
/// one go back to the table); returns how many it dropped.
fn evict_least_recently_seen(shard: &mut Shard, count: usize) -> usize {
    let mut by_age: Vec<(u64, Key)> = shard
        .iter()
        .map(|(key, bucket)| (bucket.seen.load(Ordering::Relaxed), *key))
        .collect();
    let count = count.min(by_age.len());
    if count == 0 {
        return 0;
    }
    // Partitions around the `count`th oldest: linear, no full sort.
    by_age.select_nth_unstable_by_key(count - 1, |(seen, _)| *seen);
    for (_, key) in by_age.iter().take(count) {
        if let Some(bucket) = shard.remove(key) {
            bucket.full_at.store(RETIRED, Ordering::Relaxed);
        }
    }
    count
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

    /// A table with room for more clients than any test here uses.
    fn table(capacity: u32, refill_per_second: u32) -> BucketTable {
        BucketTable::new(
            capacity,
            refill_per_second,
            1 << 20,
            IntCounter::new("evictions", "evictions").unwrap(),
        )
    }

    #[test]
    fn capacity_at_once_then_the_refill_rate() {
        let table = table(3, 2);
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
        let table = table(2, 10);
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
        let tables = [table(1000, 1), table(2, 10)];
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

    #[test]
    fn a_full_table_evicts_the_least_recently_seen_clients_and_counts_them() {
        let evictions = IntCounter::new("evictions", "evictions").unwrap();
        let table = BucketTable::new(2, 1, 3, evictions.clone());
        let start = MonotonicNanos::now();
        let at = |ms| start + Duration::from_millis(ms);
        // Clients 1, 2 and 3 empty their buckets in turn; 1 comes back (refused) after them.
        for (client, ms) in [(1, 0), (2, 1), (3, 2)] {
            assert_eq!(table.check(ip(client), at(ms)), Ok(()));
            assert_eq!(table.check(ip(client), at(ms)), Ok(()));
        }
        assert!(table.check(ip(1), at(3)).is_err());
        assert_eq!(evictions.get(), 0);
        // A fourth client: the table is full, and 2 is the one seen longest ago.
        assert_eq!(table.check(ip(4), at(4)), Ok(()));
        assert_eq!((table.len(), evictions.get()), (3, 1));
        // 1 and 3 keep their (empty) buckets; 2 starts over with a full one and pushes out 3,
        // seen before 1 and 4.
        assert!(table.check(ip(1), at(5)).is_err());
        assert_eq!(table.check(ip(2), at(6)), Ok(()));
        assert_eq!((table.len(), evictions.get()), (3, 2));
        assert_eq!(table.check(ip(3), at(7)), Ok(()), "3 was evicted");
        assert!(table.check(ip(1), at(8)).is_err(), "1 never was");
        assert_eq!((table.len(), evictions.get()), (3, 3));
    }

    #[test]
    fn a_cache_notices_its_bucket_was_evicted() {
        let evictions = IntCounter::new("evictions", "evictions").unwrap();
        let tables = [BucketTable::new(1, 1, 1, evictions.clone())];
        let mut cache = BucketCache::default();
        let start = MonotonicNanos::now();
        assert_eq!(cache.check(&tables, 0, ip(1), start), Ok(()));
        assert!(cache.check(&tables, 0, ip(1), start).is_err());
        // 2 takes the only room; the cache's copy of 1's bucket is retired, not used.
        assert_eq!(tables[0].check(ip(2), start), Ok(()));
        assert_eq!(cache.check(&tables, 0, ip(1), start), Ok(()));
        assert_eq!((tables[0].len(), evictions.get()), (1, 2));
    }

    #[test]
    fn the_cap_holds_however_the_table_is_sharded() {
        for max_clients in [1, 3, 1023, 2048, 5000, 100_000, 1 << 20] {
            let table = BucketTable::new(1, 1, max_clients, IntCounter::new("e", "e").unwrap());
            assert!(table.shards.len() * table.shard_room <= max_clients);
            assert!(table.shard_room >= MIN_SHARD_ROOM.min(max_clients));
            assert!(table.shards.len() <= 1 << MAX_SHARD_BITS);
            let now = MonotonicNanos::now();
            for n in 0..(max_clients as u32).min(20_000) + 100 {
                let _ = table.check(IpAddr::V4(Ipv4Addr::from(n)), now);
            }
            assert!(table.len() <= max_clients, "{max_clients}: {}", table.len());
        }
    }
}
