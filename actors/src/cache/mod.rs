//! Caches: a bounded LRU map whose entries also expire (TTL), with hit/miss/eviction counters
//! exported as `streamgate_cache_*{cache}` and kept for `/api/v1/cache/stats`.
//!
//! [`TtlLru`] is safe to share between threads (one short mutex section per call). The domain's
//! caches and the read handle `web` gets are in [`caches`].
//!
//! Invariant: a value loaded before an invalidation never lands in the cache after it. Loaders
//! take an [`TtlLru::epoch`] before reading the source and fill with
//! [`TtlLru::insert_if_unchanged`]; every removal bumps the epoch under the same lock.

pub mod caches;

use std::{
    hash::Hash,
    num::NonZeroUsize,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use lru::LruCache;
use prometheus::{IntCounter, IntGauge};

pub use caches::{
    AdminEntry, AdminOp, AdminOpResult, CachedMedia, Caches, Playlist, SearchPageKey,
};

/// The Prometheus series of one cache (label `cache`).
#[derive(Clone)]
pub struct CacheMetrics {
    pub hits: IntCounter,
    pub misses: IntCounter,
    pub evictions: IntCounter,
    pub entries: IntGauge,
    /// Entries put in ahead of the first request ([`TtlLru::warm`]).
    pub warmed: IntCounter,
}

impl CacheMetrics {
    /// The series of cache `name` in the app's registry.
    pub fn of(metrics: &crate::monitor::Metrics, name: &str) -> Self {
        Self {
            hits: metrics.cache_requests.with_label_values(&[name, "hit"]),
            misses: metrics.cache_requests.with_label_values(&[name, "miss"]),
            evictions: metrics.cache_evictions.with_label_values(&[name]),
            entries: metrics.cache_entries.with_label_values(&[name]),
            warmed: metrics.cache_warmed.with_label_values(&[name]),
        }
    }

    /// Series registered nowhere (unit tests, benches).
    pub fn detached() -> Self {
        // Constant, valid metric names: building them cannot fail.
        let counter = |name: &str| {
            IntCounter::new(name, name).unwrap_or_else(|_| unreachable!("valid metric name"))
        };
        Self {
            hits: counter("hits"),
            misses: counter("misses"),
            evictions: counter("evictions"),
            entries: IntGauge::new("entries", "entries")
                .unwrap_or_else(|_| unreachable!("valid metric name")),
            warmed: counter("warmed"),
        }
    }
}

/// What `/api/v1/cache/stats` reports for one cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub size: usize,
    pub capacity: usize,
    pub ttl: Duration,
}

struct Entry<V> {
    value: V,
    expires_at: Instant,
}

struct Inner<K: Hash + Eq, V> {
    lru: LruCache<K, Entry<V>>,
    epoch: u64,
}

/// An LRU cache of at most `capacity` entries, each living at most its TTL.
pub struct TtlLru<K: Hash + Eq, V> {
    ttl: Duration,
    inner: Mutex<Inner<K, V>>,
    metrics: CacheMetrics,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

impl<K: Hash + Eq, V: Clone> TtlLru<K, V> {
    /// `capacity` 0 is treated as 1 (config validation refuses 0).
    pub fn new(capacity: usize, ttl: Duration, metrics: CacheMetrics) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        metrics.entries.set(0);
        Self {
            ttl,
            inner: Mutex::new(Inner {
                lru: LruCache::new(capacity),
                epoch: 0,
            }),
            metrics,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<K, V>> {
        // A panic while holding the lock leaves a consistent LruCache (no partial updates).
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The live value under `key`, marking it most recently used; an expired one is dropped.
    pub fn get(&self, key: &K) -> Option<V> {
        let now = Instant::now();
        let mut inner = self.lock();
        let found = match inner.lru.get(key) {
            Some(entry) if entry.expires_at > now => Some(entry.value.clone()),
            Some(_) => {
                inner.lru.pop(key);
                self.evicted(1);
                None
            }
            None => None,
        };
        self.metrics.entries.set(inner.lru.len() as i64);
        drop(inner);
        match &found {
            Some(_) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                self.metrics.hits.inc();
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                self.metrics.misses.inc();
            }
        }
        found
    }

    /// The current invalidation epoch; pass it to [`Self::insert_if_unchanged`].
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Stores `value` with the cache's TTL.
    pub fn insert(&self, key: K, value: V) {
        self.insert_with_ttl(key, value, self.ttl);
    }

    /// Stores `value` to expire after `ttl` (capped at the cache's own TTL).
    pub fn insert_with_ttl(&self, key: K, value: V, ttl: Duration) {
        let mut inner = self.lock();
        self.put_locked(&mut inner, key, value, ttl.min(self.ttl));
    }

    /// Stores `value` only if nothing was invalidated since `epoch` was read, so a load that
    /// raced with a change cannot bring the old value back. Returns whether it was stored.
    pub fn insert_if_unchanged(&self, key: K, value: V, epoch: u64) -> bool {
        let mut inner = self.lock();
        if inner.epoch != epoch {
            return false;
        }
        self.put_locked(&mut inner, key, value, self.ttl);
        true
    }

    /// [`Self::insert_if_unchanged`] for a value loaded ahead of any request: counted as
    /// warmed, not as a miss.
    pub fn warm(&self, key: K, value: V, epoch: u64) -> bool {
        let stored = self.insert_if_unchanged(key, value, epoch);
        if stored {
            self.metrics.warmed.inc();
        }
        stored
    }

    fn put_locked(&self, inner: &mut Inner<K, V>, key: K, value: V, ttl: Duration) {
        let entry = Entry {
            value,
            expires_at: Instant::now() + ttl,
        };
        let replacing = inner.lru.contains(&key);
        // Unless the key was present, what `push` hands back is the evicted LRU entry.
        if inner.lru.push(key, entry).is_some() && !replacing {
            self.evicted(1);
        }
        self.metrics.entries.set(inner.lru.len() as i64);
    }

    /// Removes `key`; returns whether it held a value.
    pub fn remove(&self, key: &K) -> bool {
        let mut inner = self.lock();
        inner.epoch += 1;
        let removed = inner.lru.pop(key).is_some();
        self.metrics.entries.set(inner.lru.len() as i64);
        removed
    }

    /// Removes every entry whose key matches; returns how many.
    pub fn remove_where(&self, mut matches: impl FnMut(&K) -> bool) -> usize {
        let mut inner = self.lock();
        inner.epoch += 1;
        let before = inner.lru.len();
        inner.lru.retain(|key, _| !matches(key));
        let removed = before - inner.lru.len();
        self.metrics.entries.set(inner.lru.len() as i64);
        removed
    }

    /// Empties the cache; returns how many entries it held.
    pub fn clear(&self) -> usize {
        let mut inner = self.lock();
        inner.epoch += 1;
        let removed = inner.lru.len();
        inner.lru.clear();
        self.metrics.entries.set(0);
        removed
    }

    /// Drops expired entries (counted as evictions); returns how many.
    pub fn purge_expired(&self) -> usize {
        let now = Instant::now();
        let mut inner = self.lock();
        let before = inner.lru.len();
        inner.lru.retain(|_, entry| entry.expires_at > now);
        let purged = before - inner.lru.len();
        self.evicted(purged as u64);
        self.metrics.entries.set(inner.lru.len() as i64);
        purged
    }

    fn evicted(&self, count: u64) {
        if count > 0 {
            self.evictions.fetch_add(count, Ordering::Relaxed);
            self.metrics.evictions.inc_by(count);
        }
    }

    pub fn stats(&self) -> CacheStats {
        let inner = self.lock();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            size: inner.lru.len(),
            capacity: inner.lru.cap().get(),
            ttl: self.ttl,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(capacity: usize, ttl: Duration) -> TtlLru<String, u32> {
        TtlLru::new(capacity, ttl, CacheMetrics::detached())
    }

    #[test]
    fn expired_entries_are_misses_and_count_as_evictions() {
        let cache = cache(10, Duration::from_millis(30));
        cache.insert("a".into(), 1);
        assert_eq!(cache.get(&"a".into()), Some(1));
        let deadline = Instant::now() + Duration::from_millis(30);
        while Instant::now() <= deadline {
            std::hint::spin_loop();
        }
        assert_eq!(cache.get(&"a".into()), None);
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.evictions), (1, 1, 1));
        assert_eq!(stats.size, 0);
    }

    #[test]
    fn purge_drops_only_expired_entries() {
        let cache = cache(10, Duration::from_secs(60));
        cache.insert_with_ttl("short".into(), 1, Duration::ZERO);
        cache.insert("long".into(), 2);
        assert_eq!(cache.purge_expired(), 1);
        assert_eq!(cache.get(&"long".into()), Some(2));
        assert_eq!(cache.stats().evictions, 1);
        assert_eq!(cache.stats().size, 1);
    }

    #[test]
    fn the_least_recently_used_entry_is_evicted_at_capacity() {
        let cache = cache(2, Duration::from_secs(60));
        cache.insert("a".into(), 1);
        cache.insert("b".into(), 2);
        assert_eq!(cache.get(&"a".into()), Some(1)); // b is now the least recently used
        cache.insert("c".into(), 3);
        assert_eq!(cache.get(&"b".into()), None);
        assert_eq!(cache.get(&"a".into()), Some(1));
        assert_eq!(cache.get(&"c".into()), Some(3));
        // Replacing a present key at capacity evicts nothing.
        cache.insert("c".into(), 4);
        assert_eq!(cache.get(&"c".into()), Some(4));
        let stats = cache.stats();
        assert_eq!(stats.evictions, 1, "{stats:?}");
        assert_eq!((stats.hits, stats.misses, stats.size), (4, 1, 2));
    }

    #[test]
    fn counters_reach_the_exported_series() {
        let metrics = CacheMetrics::detached();
        let cache: TtlLru<u8, u8> = TtlLru::new(1, Duration::from_secs(60), metrics.clone());
        cache.insert(1, 1);
        cache.insert(2, 2);
        assert_eq!(cache.get(&1), None);
        assert_eq!(cache.get(&2), Some(2));
        assert_eq!(metrics.hits.get(), 1);
        assert_eq!(metrics.misses.get(), 1);
        assert_eq!(metrics.evictions.get(), 1);
        assert_eq!(metrics.entries.get(), 1);
        assert!(cache.remove(&2));
        assert_eq!(metrics.entries.get(), 0);
    }

    #[test]
    fn a_fill_that_raced_an_invalidation_is_dropped() {
        let cache = cache(10, Duration::from_secs(60));
        let epoch = cache.epoch();
        cache.remove(&"a".into()); // a change lands while the loader reads the old value
        assert!(!cache.insert_if_unchanged("a".into(), 1, epoch));
        assert_eq!(cache.get(&"a".into()), None);
        let epoch = cache.epoch();
        assert!(cache.insert_if_unchanged("a".into(), 2, epoch));
        assert_eq!(cache.get(&"a".into()), Some(2));
        assert_eq!(cache.remove_where(|key| key == "a"), 1);
        assert_eq!(cache.clear(), 0);
    }
}
