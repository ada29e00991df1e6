//! Load bench: requests/s through the full stack with monitoring (request metrics, trace
//! stats), tracing (request log scope, request id, traceparent) and rate limiting on, against the same
//! build with them off (`monitor.http_middleware = false`, `rate_limit.enabled = false`), in
//! the same run. Target: on/off ≥ 0.97. Load comes from Debian's `wrk`.
//!
//! "Off" keeps what is hardening rather than monitoring: the security headers (always on) and
//! CORS (on when `http.cors_allowed_origins` is set; empty by default, so off in both). OTLP
//! export is off in both (`monitor.otlp_endpoint = ""`, the default).
//!
//! Run with `cargo bench --bench overhead`. Under `cargo test` (no `--bench`) it only says so.
//! The "on" server keeps rate limiting active but with buckets too big for wrk to empty, so
//! every request pays the bucket check without being refused. Reads write no audit entries;
//! audit cost shows only on refusals and writes, which are not in this loop.
//!
//! `--bench --callgrind on|off` runs one server under `valgrind --tool=callgrind` instead:
//! warm-up, counters zeroed (`callgrind_control -z`), 10 s of wrk, dump (`-d`); it prints the
//! request count to divide the dump's instruction totals by (see BENCHMARKS.md).

// Bench code: a failed unwrap is a failed bench.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{net::TcpListener, process::Command, time::Duration};

use streamgate::config::{self, Config, Sources};

const ROUNDS: usize = 5;
const SECONDS: u32 = 5;
const PATH: &str = "/api/v1/media?limit=10";

struct Server {
    base: String,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn start(tweak: impl FnOnce(&mut Config)) -> Server {
    let data = tempfile::tempdir().unwrap();
    let mut config = config::load(&Sources::default()).unwrap();
    config.storage.data_dir = data.path().to_path_buf();
    config.storage.min_free_disk_mb = 1;
    config.server.workers = 1;
    tweak(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let running = streamgate::start(config, listener).unwrap();
            tx.send(running.handle.clone()).unwrap();
            running.wait().await.unwrap();
        })
    });
    Server {
        base: format!("http://{address}"),
        handle: rx.recv().unwrap(),
        thread: Some(thread),
        _data: data,
    }
}

fn wrk(url: &str, seconds: u32) -> f64 {
    let output = Command::new("wrk")
        .args(["-t1", "-c16", &format!("-d{seconds}s"), url])
        .output()
        .expect("wrk is installed (apt-get install wrk)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "wrk failed: {text}");
    assert!(
        !text.contains("Non-2xx"),
        "every request must succeed (no 429s in the loop): {text}"
    );
    text.lines()
        .find_map(|line| line.trim().strip_prefix("Requests/sec:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk output: {text}"))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn start_on() -> Server {
    start(|config| {
        for bucket in config.rate_limit.services.values_mut() {
            bucket.capacity = u32::MAX;
            bucket.refill_per_second = u32::MAX;
        }
    })
}

fn start_off() -> Server {
    start(|config| {
        config.monitor.http_middleware = false;
        config.rate_limit.enabled = false;
    })
}

/// Requests wrk completed (`N requests in ...`).
fn wrk_requests(url: &str, seconds: u32) -> u64 {
    let output = Command::new("wrk")
        .args(["-t1", "-c4", &format!("-d{seconds}s"), url])
        .output()
        .expect("wrk is installed (apt-get install wrk)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "wrk failed: {text}");
    assert!(
        !text.contains("Non-2xx"),
        "every request must succeed: {text}"
    );
    text.lines()
        .find_map(|line| line.trim().split_once(" requests in "))
        .and_then(|(count, _)| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk output: {text}"))
}

fn callgrind_control(flag: &str) {
    let status = Command::new("callgrind_control")
        .args([flag, &std::process::id().to_string()])
        .output()
        .expect("callgrind_control (valgrind) is installed");
    assert!(status.status.success(), "callgrind_control {flag} failed");
}

/// Under `valgrind --tool=callgrind`: one server only (`on` or `off`), warmed, counters zeroed,
/// loaded for a while, then dumped; prints the request count to divide the dump's totals by.
fn callgrind_run(which: &str) {
    let server = if which == "on" {
        start_on()
    } else {
        start_off()
    };
    let url = format!("{}{PATH}", server.base);
    wrk_requests(&url, 2);
    callgrind_control("-z");
    let requests = wrk_requests(&url, CALLGRIND_SECONDS);
    callgrind_control("-d");
    println!("callgrind {which}: {requests} requests in the dump");
}

const CALLGRIND_SECONDS: u32 = 10;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|arg| arg == "--bench") {
        println!("overhead: a load bench; run it with `cargo bench --bench overhead`");
        return;
    }
    if let Some(position) = args.iter().position(|arg| arg == "--callgrind") {
        callgrind_run(args.get(position + 1).map_or("on", String::as_str));
        return;
    }
    let on = start_on();
    let off = start_off();
    let (on_url, off_url) = (format!("{}{PATH}", on.base), format!("{}{PATH}", off.base));
    // Warm both (allocations, sled caches) before measuring.
    wrk(&on_url, 1);
    wrk(&off_url, 1);
    std::thread::sleep(Duration::from_millis(200));
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Alternate which goes first so drift on a shared machine hits both alike.
        if round % 2 == 0 {
            without.push(wrk(&off_url, SECONDS));
            with.push(wrk(&on_url, SECONDS));
        } else {
            with.push(wrk(&on_url, SECONDS));
            without.push(wrk(&off_url, SECONDS));
        }
        println!(
            "round {}: on {:.0} req/s, off {:.0} req/s",
            round + 1,
            with[round],
            without[round]
        );
    }
    let (with, without) = (median(with), median(without));
    println!(
        "overhead: GET {PATH}, medians of {ROUNDS}×{SECONDS}s: on {with:.0} req/s, off {without:.0} req/s, ratio {:.3} (target >= 0.97)",
        with / without
    );
}
