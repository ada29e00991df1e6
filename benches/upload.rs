//! A 1 GiB resumable (tus) upload in 8 MiB PATCHes through the real server, against `dd`
//! writing the same bytes to the same disk with `conv=fsync`, in the same run. Every PATCH is
//! acknowledged only after fsync + a flushed sled record, so the fair baseline is a synced write.
//!
//! Run with `cargo bench --bench upload` (release build). Prints each round and the ratio of
//! throughputs, upload / dd (target ≥ 0.8). `UPLOAD_BENCH_MIB` changes the size; under
//! `cargo test` it runs once with 16 MiB as a smoke test.

// Bench code: a failed unwrap is a failed bench.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::Read,
    net::TcpListener,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use streamgate::config::{self, Sources};

const CHUNK: usize = 8 * 1024 * 1024;
const ROUNDS: usize = 2;

const BENCH_ADMIN_TOKEN: &str = "upload-bench-admin";

fn main() {
    // `cargo bench` passes `--bench`; under `cargo test --all-targets` this is a quick smoke run.
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let mib: usize = std::env::var("UPLOAD_BENCH_MIB")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(if measuring { 1024 } else { 16 });
    let size = mib * 1024 * 1024;
    // Everything on the one disk the target directory is on.
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let source = scratch.path().join("source.mp4");
    common::write_source(&source, size);

    let data_dir = scratch.path().join("data");
    let (base, _server) = start_server(&data_dir);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {BENCH_ADMIN_TOKEN}")).unwrap(),
    );
    streamgate_actors::outbound::install_default_provider();
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap();

    let mut dd_best = Duration::MAX;
    let mut upload_best = Duration::MAX;
    for round in 1..=ROUNDS {
        let target = scratch.path().join("dd.out");
        let dd = run_dd(&source, &target);
        std::fs::remove_file(&target).unwrap();
        let upload = runtime.block_on(upload(&client, &base, &source, size));
        println!(
            "round {round}: dd conv=fsync {:.2}s ({:.0} MiB/s), tus upload {:.2}s ({:.0} MiB/s)",
            dd.as_secs_f64(),
            mib as f64 / dd.as_secs_f64(),
            upload.as_secs_f64(),
            mib as f64 / upload.as_secs_f64(),
        );
        dd_best = dd_best.min(dd);
        upload_best = upload_best.min(upload);
        // Keep the disk from filling up between rounds.
        let _ = std::fs::remove_dir_all(data_dir.join("blobs/uploads"));
    }
    if !measuring {
        print!("smoke run, not a measurement (use cargo bench): ");
    }
    println!(
        "best of {ROUNDS}: {mib} MiB in {} MiB PATCHes: upload/dd throughput ratio = {:.2} \
         (dd {:.2}s, upload {:.2}s)",
        CHUNK / (1024 * 1024),
        dd_best.as_secs_f64() / upload_best.as_secs_f64(),
        dd_best.as_secs_f64(),
        upload_best.as_secs_f64()
    );
}

fn run_dd(source: &Path, target: &Path) -> Duration {
    let started = Instant::now();
    let status = Command::new("dd")
        .arg(format!("if={}", source.display()))
        .arg(format!("of={}", target.display()))
        .args(["bs=8M", "conv=fsync", "status=none"])
        .status()
        .expect("dd is installed (coreutils)");
    assert!(status.success());
    started.elapsed()
}

/// Starts the real app on 127.0.0.1:0 in its own actix system thread.
fn start_server(data_dir: &Path) -> (String, std::thread::JoinHandle<()>) {
    let mut config = config::load(&Sources::default()).unwrap();
    config.storage.data_dir = data_dir.to_path_buf();
    config.storage.min_free_disk_mb = 1;
    config.server.log_level = "warn".into();
    // The bytes are not a decodable clip; keep ffmpeg out of the measurement.
    config.transcode.ffprobe_path = "/bin/false".into();
    config.transcode.max_attempts = 1;
    // Uploads need a principal; the admin token is the cheapest one to present.
    config.auth.admin_token = BENCH_ADMIN_TOKEN.into();
    // 128 PATCHes from one address would meet the upload rate limit (100, 10/s); the bench
    // measures the byte path, not the limiter.
    config.rate_limit.enabled = false;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let running = streamgate::start(config, listener).unwrap();
            started_tx.send(()).unwrap();
            running.wait().await.unwrap();
        })
    });
    started_rx.recv().unwrap();
    (base, thread)
}

async fn upload(client: &reqwest::Client, base: &str, source: &Path, size: usize) -> Duration {
    let mut file = std::fs::File::open(source).unwrap();
    let started = Instant::now();
    let created = client
        .post(format!("{base}/api/v1/uploads"))
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", size.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let location = created.headers()["location"].to_str().unwrap().to_string();
    let mut offset = 0;
    while offset < size {
        let length = CHUNK.min(size - offset);
        let mut chunk = vec![0u8; length];
        file.read_exact(&mut chunk).unwrap();
        let response = client
            .patch(format!("{base}{location}"))
            .header("Tus-Resumable", "1.0.0")
            .header("Content-Type", "application/offset+octet-stream")
            .header("Upload-Offset", offset.to_string())
            .body(chunk)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204, "{:?}", response.text().await);
        offset += length;
    }
    started.elapsed()
}
