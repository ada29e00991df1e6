//! Criterion bench: rendering `/metrics` with 10,000 series (target < 10 ms per render).
//! Run with `cargo bench --bench metrics_render`.

// Bench code: a failed unwrap is a failed bench.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use streamgate_actors::monitor::Metrics;

/// 100 routes × 4 methods × 25 statuses = 10,000 request-counter series, on top of the
/// always-present families.
fn metrics_with_10k_series() -> Metrics {
    let metrics = Metrics::new().unwrap();
    let methods = ["GET", "POST", "PATCH", "DELETE"];
    for route in 0..100 {
        let route = format!("/api/v1/bench/{route}/{{id}}");
        for method in methods {
            for status in 0..25u16 {
                let status = (200 + status * 12).to_string();
                metrics
                    .http_requests
                    .with_label_values(&["metadata", route.as_str(), method, status.as_str()])
                    .inc();
            }
        }
    }
    metrics
}

fn render(c: &mut Criterion) {
    let metrics = metrics_with_10k_series();
    let text = metrics.render().unwrap();
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    assert!(series >= 10_000, "only {series} series");
    eprintln!("rendering {series} series, {} KiB", text.len() / 1024);
    c.bench_function("metrics_render_10k_series", |b| {
        b.iter(|| metrics.render().unwrap())
    });
}

criterion_group!(benches, render);
criterion_main!(benches);
