//! Delivery bench, all measured in one run on one machine:
//! 1. segment GETs (2 MiB CMAF segments) at 64 connections: StreamGate vs nginx serving the
//!    same files from the same directory — req/s and MB/s ratios (target ≥ 0.9);
//! 2. cached playlist, media-record and search-page GETs through the full middleware stack vs a bare
//!    actix-web handler returning the same bytes — req/s ratio (target ≥ 0.6) and p99 (< 5 ms);
//! 3. search p99 over 100,000 records (in-process, the same index code the API uses).
//!
//! Run with `cargo bench --bench delivery` (needs Debian's `wrk` and `nginx-light`).
//! Under `cargo test` (no `--bench`) it only says so. Rate limits are OFF in the StreamGate
//! server (`rate_limit.enabled = false`): 64 connections from one IP would be refused by the
//! default streaming bucket (1000 / 100 per s) within a second; request metrics, tracing,
//! security headers and the rest of the middleware stay on. Both servers get one worker
//! (StreamGate `server.workers = 1`, nginx `worker_processes 1`); wrk runs 2 threads.
//!
//! Arguments after `--`: `segments`, `small`, `search` run only those parts;
//! `--no-http-middleware` sets `monitor.http_middleware = false` (issue 7's share vs the rest);
//! `profile` starts the servers, prints their URLs on a `profile:` line and waits for stdin to
//! close — for `valgrind --tool=callgrind --collect-atstart=no` and `callgrind_control`, so
//! instructions per request can be counted (deterministic, unlike wall clock on a shared box).

// Bench code: a failed unwrap is a failed bench.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{net::TcpListener, time::Instant};

use common::{media, start_bare, start_nginx, write_hls, Load, WrkOptions, SEGMENT_BYTES};
use streamgate::config::{self, Sources};
use streamgate_actors::{
    metadata::CreateMedia,
    model::{Media, MediaState},
    search::{SearchIndex, SearchQuery},
    Actors,
};

const ROUNDS: usize = 3;
const SECONDS: u32 = 5;
const SEARCH_ITEMS: usize = 100_000;

/// Medians of [`ROUNDS`] alternating runs; every request must succeed.
fn compare(a: &str, b: &str, connections: u32) -> (Load, Load) {
    let plain = WrkOptions::default();
    let (ours, theirs, _) =
        common::paired_rounds((a, plain), (b, plain), connections, ROUNDS, SECONDS).summary();
    assert_eq!(ours.errors + theirs.errors, 0, "every request must succeed");
    (ours, theirs)
}

struct StreamGate {
    base: String,
    actors: Actors,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
    data: tempfile::TempDir,
}

impl Drop for StreamGate {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn start_streamgate(http_middleware: bool) -> StreamGate {
    let data = tempfile::tempdir().unwrap();
    let mut config = config::load(&Sources::default()).unwrap();
    config.monitor.http_middleware = http_middleware;
    config.storage.data_dir = data.path().to_path_buf();
    config.storage.min_free_disk_mb = 1;
    config.server.workers = 1;
    config.rate_limit.enabled = false;
    config.server.log_level = "warn".into();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let running = streamgate::start(config, listener).unwrap();
            tx.send((running.handle.clone(), running.actors.clone()))
                .unwrap();
            running.wait().await.unwrap();
        })
    });
    let (handle, actors) = rx.recv().unwrap();
    StreamGate {
        base: format!("http://{address}"),
        actors,
        handle,
        thread: Some(thread),
        data,
    }
}

fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("delivery: a load bench; run it with `cargo bench --bench delivery`");
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let has = |name: &str| args.iter().any(|arg| arg == name);
    let parts = ["segments", "small", "search"];
    let only: Vec<&str> = parts.iter().copied().filter(|part| has(part)).collect();
    let run = |part: &str| only.is_empty() || only.contains(&part);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let server = start_streamgate(!has("--no-http-middleware"));

    // A ready media item whose HLS files are on disk where the transcoder would put them.
    let record = media(
        "Bench clip".into(),
        vec!["bench".into()],
        "0xbench",
        MediaState::Ready,
    );
    let id = record.id.clone();
    let hls = write_hls(server.data.path(), &id);
    runtime.block_on(async {
        server
            .actors
            .metadata
            .send(CreateMedia {
                media: record,
                gate: None,
            })
            .await
            .unwrap()
            .unwrap();
    });

    streamgate_actors::outbound::install_default_provider();
    let fetched = |url: &str| {
        runtime.block_on(async { reqwest::get(url).await.unwrap().bytes().await.unwrap() })
    };
    let ours = format!("{}/api/v1/media/{id}/hls/720p/seg_001.m4s", server.base);
    assert_eq!(fetched(&ours).len(), SEGMENT_BYTES);
    let small = [
        (
            "playlist",
            format!("/api/v1/media/{id}/hls/master.m3u8"),
            "application/vnd.apple.mpegurl",
        ),
        (
            "media record",
            format!("/api/v1/media/{id}"),
            "application/json",
        ),
        (
            "search page",
            "/api/v1/media?q=bench+clip".to_string(),
            "application/json",
        ),
    ];
    // Searchable now, not after the next group commit: the bare handler serves the bytes of the
    // first fetch.
    server.actors.search.commit().unwrap();
    if has("profile") {
        let mut line = format!("profile: segment={ours}");
        let mut bare_servers = Vec::new();
        for (name, path, content_type) in &small {
            let url = format!("{}{path}", server.base);
            let (bare_url, bare) = start_bare(fetched(&url).to_vec(), content_type);
            let name = name.replace(' ', "_");
            line.push_str(&format!(" {name}={url} bare_{name}={bare_url}"));
            bare_servers.push(bare);
        }
        println!("{line}");
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new()).unwrap();
        for bare in bare_servers {
            drop(bare.stop(false));
        }
        return;
    }

    // 1. Segments vs nginx.
    if run("segments") {
        let (nginx_base, _nginx) = start_nginx(&hls, scratch.path());
        let theirs = format!("{nginx_base}/720p/seg_001.m4s");
        assert_eq!(fetched(&theirs).len(), SEGMENT_BYTES);
        let (sg, nginx) = compare(&ours, &theirs, 64);
        println!(
        "segments (2 MiB, 64 connections), medians of {ROUNDS}x{SECONDS}s: streamgate {:.0} req/s {:.0} MB/s p99 {:.1} ms; nginx {:.0} req/s {:.0} MB/s p99 {:.1} ms; ratio req/s {:.3}, MB/s {:.3} (target >= 0.9)",
        sg.requests_per_s, sg.megabytes_per_s, sg.p99_ms,
        nginx.requests_per_s, nginx.megabytes_per_s, nginx.p99_ms,
        sg.requests_per_s / nginx.requests_per_s,
        sg.megabytes_per_s / nginx.megabytes_per_s,
    );
    }

    // 2. Cached playlist and media record vs a bare handler with the same bytes.
    for (name, path, content_type) in small.into_iter().filter(|_| run("small")) {
        let url = format!("{}{path}", server.base);
        let body = fetched(&url).to_vec();
        let (bare_url, bare) = start_bare(body, content_type);
        let (full, baseline) = compare(&url, &bare_url, 64);
        drop(bare.stop(false));
        println!(
            "{name} (cached, 64 connections): full stack {:.0} req/s p99 {:.2} ms; bare handler {:.0} req/s p99 {:.2} ms; ratio {:.3} (target >= 0.6, p99 < 5 ms)",
            full.requests_per_s, full.p99_ms, baseline.requests_per_s, baseline.p99_ms,
            full.requests_per_s / baseline.requests_per_s,
        );
    }
    let stats = server.actors.caches.stats();
    for (name, stats) in &stats {
        println!(
            "cache {name}: hits {} misses {} size {}",
            stats.hits, stats.misses, stats.size
        );
    }
    drop(server);
    if !run("search") {
        return;
    }

    // 3. Search over 100,000 records.
    let index = SearchIndex::in_memory().unwrap();
    let words = [
        "river", "mountain", "city", "night", "ocean", "forest", "desert", "storm",
    ];
    let started = Instant::now();
    let batch: Vec<Media> = (0..SEARCH_ITEMS)
        .map(|n| {
            let title = format!(
                "{} {} walk number {n}",
                words[n % words.len()],
                words[(n / 8) % words.len()]
            );
            let tags = vec![format!("tag{}", n % 50)];
            media(
                title,
                tags,
                &format!("0xowner{}", n % 100),
                MediaState::Ready,
            )
        })
        .collect();
    for chunk in batch.chunks(10_000) {
        index.upsert(chunk).unwrap();
    }
    index.commit().unwrap();
    println!(
        "search: indexed {} records in {:.1} s",
        index.len(),
        started.elapsed().as_secs_f64()
    );
    let queries: Vec<SearchQuery> = vec![
        SearchQuery {
            q: Some("river".into()),
            limit: 20,
            ..Default::default()
        },
        SearchQuery {
            q: Some("ocean storm".into()),
            limit: 20,
            ..Default::default()
        },
        SearchQuery {
            q: Some("number 4242".into()),
            limit: 20,
            ..Default::default()
        },
        SearchQuery {
            tag: Some("tag7".into()),
            limit: 20,
            ..Default::default()
        },
        SearchQuery {
            owner: Some("0xowner42".into()),
            q: Some("city".into()),
            limit: 20,
            ..Default::default()
        },
        SearchQuery {
            limit: 20,
            ..Default::default()
        },
    ];
    let mut timings = Vec::new();
    let mut by_query: Vec<Vec<f64>> = vec![Vec::new(); queries.len()];
    for round in 0..300 {
        for (kind, query) in queries.iter().enumerate() {
            let mut query = query.clone();
            // Every third request is a later page, as a scrolling client would ask.
            if round % 3 == 2 {
                query.cursor = index.search(&query).unwrap().next_cursor;
            }
            let started = Instant::now();
            let page = index.search(&query).unwrap();
            let elapsed = started.elapsed().as_secs_f64() * 1e3;
            timings.push(elapsed);
            by_query[kind].push(elapsed);
            assert!(!page.items.is_empty());
        }
    }
    for (query, mut times) in queries.iter().zip(by_query) {
        times.sort_by(f64::total_cmp);
        println!(
            "  q={:?} tag={:?} owner={:?}: p50 {:.2} ms, p99 {:.2} ms",
            query.q,
            query.tag,
            query.owner,
            times[times.len() / 2],
            times[(times.len() - 1) * 99 / 100]
        );
    }
    timings.sort_by(f64::total_cmp);
    let at = |q: f64| timings[((timings.len() as f64 - 1.0) * q) as usize];
    println!(
        "search over {SEARCH_ITEMS} records, {} queries (words, tag, owner, no q; first and later pages): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        timings.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}
