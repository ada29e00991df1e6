//! Transcode overhead: wall time of a transcode job through the real server (HTTP submit →
//! queue → worker → publish → `succeeded` observed over HTTP) against the same ffprobe + ladder +
//! thumbnail ffmpeg commands run directly on the same input, in the same run, alternating.
//! "direct" runs them as the worker does (`run_ffmpeg`: stdio piped, progress parsed) without
//! the server; "plain child" runs them with stderr to /dev/null, for reference.
//!
//! `cargo bench --bench transcode` (optional: `TRANSCODE_BENCH_RUNS=5`, `TRANSCODE_BENCH_SECONDS=20`).
//! Prints per-run times, medians and the ratio server / direct (target ≤ 1.05).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{net::TcpListener, path::Path, process::Command, time::Instant};

use serde_json::Value;
use streamgate::config::{self, Sources};
use streamgate_actors::transcode::ffmpeg;

const TOKEN: &str = "bench-token";

fn env_number(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The worker's commands, run directly: ffprobe, the one-decode ladder, the thumbnail. `piped`
/// runs them the way the worker does (stdio piped, progress parsed, via `run_ffmpeg`), else as
/// a plain child with stderr to /dev/null.
fn direct_run(
    config: &streamgate_actors::config::TranscodeConfig,
    input: &Path,
    out: &Path,
    piped: bool,
) {
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).unwrap();
    let (probe, commands) = common::worker_commands(config, input, out);
    for args in commands {
        if piped {
            let kill_switch = ffmpeg::KillSwitch::default();
            ffmpeg::run_ffmpeg(
                &config.ffmpeg_path,
                &args,
                probe.duration_s,
                &kill_switch,
                |_| {},
            )
            .unwrap();
        } else {
            let status = Command::new(&config.ffmpeg_path)
                .args(&args)
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
        }
    }
}

fn main() {
    // `cargo test --all-targets` runs bench binaries too (without `--bench`): a minute of
    // transcoding does not belong in the test command.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("transcode bench: measured only under `cargo bench --bench transcode`");
        return;
    }
    let runs = env_number("TRANSCODE_BENCH_RUNS", 3).max(1);
    let seconds = env_number("TRANSCODE_BENCH_SECONDS", 10);
    let scratch = tempfile::tempdir().unwrap();
    let clip = scratch.path().join("clip.mp4");
    common::make_clip(&clip, seconds.into());

    let mut config = config::load(&Sources::default()).unwrap();
    config.storage.data_dir = scratch.path().join("data");
    config.storage.min_free_disk_mb = 1;
    config.auth.admin_token = TOKEN.into();
    let transcode = config.transcode.clone();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let running = streamgate::start(config, listener).unwrap();
            started_tx.send(running.handle.clone()).unwrap();
            let _ = running.wait().await;
        })
    });
    let handle = started_rx.recv().unwrap();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // No idle pooling: a direct run outlasts the server's keep-alive, and a reused dead
    // connection would fail the next request.
    streamgate_actors::outbound::install_default_provider();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    println!(
        "transcode bench: {seconds} s 1280x720 H.264/AAC clip, preset {}, {} runs each",
        transcode.x264_preset, runs
    );
    // The upload's own job doubles as the warm-up.
    let media_id = runtime.block_on(common::upload_transcoded(&client, &base, TOKEN, &clip));

    let direct_out = scratch.path().join("direct");
    let (mut server_times, mut worker_times, mut direct_times) = (vec![], vec![], vec![]);
    let mut plain_times = vec![];
    for run in 0..runs {
        let plain = {
            let started = Instant::now();
            direct_run(&transcode, &clip, &direct_out, false);
            started.elapsed().as_secs_f64()
        };
        let direct = || {
            let started = Instant::now();
            direct_run(&transcode, &clip, &direct_out, true);
            started.elapsed().as_secs_f64()
        };
        let served = || {
            runtime.block_on(async {
                let started = Instant::now();
                let job: Value = client
                    .post(format!("{base}/api/v1/jobs"))
                    .bearer_auth(TOKEN)
                    .json(&serde_json::json!({"kind": "transcode", "media_id": media_id}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let url = format!("{base}/api/v1/jobs/{}", job["id"].as_str().unwrap());
                let job = common::job_succeeded(&client, &url, TOKEN).await;
                let wall = started.elapsed().as_secs_f64();
                let parse = |v: &Value| {
                    time::OffsetDateTime::parse(
                        v.as_str().unwrap(),
                        &time::format_description::well_known::Rfc3339,
                    )
                    .unwrap()
                };
                let worker =
                    (parse(&job["finished_at"]) - parse(&job["started_at"])).as_seconds_f64();
                (wall, worker)
            })
        };
        // Alternate the order, so neither side always runs on a warmer machine.
        let (d, (s, w)) = if run % 2 == 0 {
            let d = direct();
            (d, served())
        } else {
            let s = served();
            (direct(), s)
        };
        println!(
            "run {run}: direct {d:.3} s, server {s:.3} s (worker {w:.3} s), ratio {:.3}; plain child {plain:.3} s",
            s / d
        );
        plain_times.push(plain);
        direct_times.push(d);
        server_times.push(s);
        worker_times.push(w);
    }
    let (d, s, w) = (
        common::median(direct_times.clone()),
        common::median(server_times.clone()),
        common::median(worker_times.clone()),
    );
    let plain = common::median(plain_times.clone());
    println!(
        "median: direct {d:.3} s, server {s:.3} s (worker {w:.3} s); ratio server/direct {:.3} (target ≤ 1.05), worker/direct {:.3}; plain child (stderr to /dev/null) {plain:.3} s",
        s / d,
        w / d
    );
    drop(handle.stop(true));
}
