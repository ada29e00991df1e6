//! Criterion benches for the LRU + TTL cache (`TtlLru`) behind playlists, records and the admin
//! cache: a hit, a miss, and an insert into a full cache (which evicts). Run with
//! `cargo bench --bench cache`.

// Bench code: a failed unwrap is a failed bench.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{hint::black_box, sync::Arc, time::Duration};

use criterion::{criterion_group, criterion_main, Criterion};
use streamgate_actors::cache::{CacheMetrics, TtlLru};

const ENTRIES: usize = 10_000;

fn full_cache() -> TtlLru<String, Arc<Vec<u8>>> {
    let cache = TtlLru::new(ENTRIES, Duration::from_secs(3600), CacheMetrics::detached());
    let value = Arc::new(vec![0u8; 512]);
    for n in 0..ENTRIES {
        cache.insert(format!("media/{n}/hls/master.m3u8"), value.clone());
    }
    cache
}

fn cache(c: &mut Criterion) {
    let cache = full_cache();
    let hit = "media/4242/hls/master.m3u8".to_string();
    let miss = "media/absent/hls/master.m3u8".to_string();
    assert!(cache.get(&hit).is_some());
    c.bench_function("cache/get_hit", |b| b.iter(|| cache.get(black_box(&hit))));
    c.bench_function("cache/get_miss", |b| b.iter(|| cache.get(black_box(&miss))));
    let value = Arc::new(vec![0u8; 512]);
    let mut n = ENTRIES;
    c.bench_function("cache/insert_evicting", |b| {
        b.iter(|| {
            n += 1;
            cache.insert(format!("media/{n}/hls/master.m3u8"), value.clone());
        })
    });
}

criterion_group!(benches, cache);
criterion_main!(benches);
