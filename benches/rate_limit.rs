//! Criterion benches for the per-client rate limiter (`RateLimits::check`, run on every
//! request when limits are on): one client within its bucket, one client refused, and 10,000
//! clients in turn. Only the limiter's public API. Run with `cargo bench --bench rate_limit`.

// Bench code: a failed unwrap is a failed bench.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    hint::black_box,
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use criterion::{criterion_group, criterion_main, Criterion};
use streamgate::config::{self, Sources};
use streamgate_actors::{audit::AuditLog, monitor::Metrics, store::SledStore};
use streamgate_web::middleware::rate_limit::{RateLimits, ServiceId};

fn limits(overrides: &[&str], store: Arc<SledStore>) -> RateLimits {
    let config = config::load(&Sources {
        overrides: overrides.iter().map(|o| o.to_string()).collect(),
        ..Sources::default()
    })
    .unwrap();
    RateLimits::new(
        &config.rate_limit,
        Metrics::new().unwrap(),
        AuditLog::new(store),
    )
}

fn rate_limit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

    // A bucket no bench run can empty: every check is an allowed one.
    let roomy = limits(
        &["rate_limit.services.streaming={ capacity = 4000000000, refill_per_second = 4000000000 }"],
        store.clone(),
    );
    let check =
        |limits: &RateLimits, service: ServiceId, client: IpAddr| limits.check(service, client);
    assert!(check(&roomy, ServiceId::STREAMING, client).is_ok());
    c.bench_function("rate_limit/check_allowed", |b| {
        b.iter(|| check(&roomy, black_box(ServiceId::STREAMING), black_box(client)))
    });

    let tight = limits(
        &["rate_limit.services.auth={ capacity = 1, refill_per_second = 1 }"],
        store.clone(),
    );
    let _ = check(&tight, ServiceId::AUTH, client);
    assert!(check(&tight, ServiceId::AUTH, client).is_err());
    c.bench_function("rate_limit/check_refused", |b| {
        b.iter(|| check(&tight, black_box(ServiceId::AUTH), black_box(client)))
    });

    // Many clients: every check finds its own bucket in the store.
    let clients: Vec<IpAddr> = (0..10_000u32)
        .map(|n| IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + n)))
        .collect();
    let mut turn = 0;
    c.bench_function("rate_limit/check_10k_clients", |b| {
        b.iter(|| {
            turn = (turn + 1) % clients.len();
            check(&roomy, black_box(ServiceId::STREAMING), clients[turn])
        })
    });
}

criterion_group!(benches, rate_limit);
criterion_main!(benches);
