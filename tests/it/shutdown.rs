//! The real binary: SIGTERM during a transcode drains, kills ffmpeg (no orphan), and a restart
//! on the same data directory finishes the interrupted job.

use std::{path::Path, process::Command, time::Duration};

// Re-exported for the modules that still reach it here.
use crate::harness::poll;
use crate::{
    harness::{free_port, ChildProcess},
    server::make_clip,
};

/// Uploads need a principal; the admin token is one (sessions are tested in `auth`).
pub(crate) const ADMIN_TOKEN: &str = "shutdown-admin-token";

/// The real binary on a free port.
pub(crate) struct Binary {
    pub(crate) process: ChildProcess,
    pub(crate) base: String,
}

impl Binary {
    pub(crate) fn start(data_dir: &Path, preset: &str) -> Self {
        Self::start_with(data_dir, &[&format!("transcode.x264_preset=\"{preset}\"")])
    }

    /// Starts the binary with `auth.admin_token` = [`ADMIN_TOKEN`] and the `--set` overrides.
    pub(crate) fn start_with(data_dir: &Path, settings: &[&str]) -> Self {
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_streamgate"));
        command
            .arg("--bind")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--set", &format!("auth.admin_token=\"{ADMIN_TOKEN}\"")]);
        for setting in settings {
            command.args(["--set", setting]);
        }
        Self {
            process: ChildProcess::spawn(&mut command, "cargo builds it with the tests"),
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) async fn wait_ready(&self, client: &reqwest::Client) {
        poll(Duration::from_secs(30), "server ready", async || {
            matches!(client.get(self.url("/ready")).send().await, Ok(r) if r.status() == 200)
        })
        .await;
    }
}

/// Pids of `ffmpeg` processes whose parent is `parent`.
pub(crate) fn ffmpeg_children(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Format: pid (comm) state ppid ...
        let Some((comm_part, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = comm_part
            .split_once('(')
            .map(|(_, c)| c)
            .unwrap_or_default();
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if comm == "ffmpeg" && ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}

pub(crate) fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test]
async fn sigterm_kills_ffmpeg_and_a_restart_finishes_the_job() {
    let data = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let clip = std::fs::read(make_clip(scratch.path(), "long.mp4", "1280x720", 20)).unwrap();
    let client = crate::server::client_builder().build().unwrap();

    // A slow preset, so the transcode is surely still running when the signal arrives.
    let mut server = Binary::start(data.path(), "veryslow");
    server.wait_ready(&client).await;
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(clip).file_name("long.mp4"),
    );
    let response = client
        .post(format!("{}/api/v1/upload", server.base))
        .bearer_auth(ADMIN_TOKEN)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let receipt: serde_json::Value = response.json().await.unwrap();
    let media_id = receipt["media_id"].as_str().unwrap().to_string();

    let server_pid = server.process.pid();
    poll(Duration::from_secs(30), "ffmpeg to start", async || {
        !ffmpeg_children(server_pid).is_empty()
    })
    .await;
    let ffmpeg = ffmpeg_children(server_pid);

    server.process.signal("TERM");
    let exit = server
        .process
        .exited(Duration::from_secs(30), "the server to stop on SIGTERM")
        .await;
    assert!(exit.success(), "clean exit on SIGTERM: {exit:?}");
    poll(Duration::from_secs(10), "ffmpeg to be gone", async || {
        ffmpeg.iter().all(|pid| !is_alive(*pid))
    })
    .await;

    // Restart on the same data: the interrupted job runs again and the media becomes ready.
    let server = Binary::start(data.path(), "ultrafast");
    server.wait_ready(&client).await;
    let media_url = server.url(&format!("/api/v1/media/{media_id}"));
    let state = poll(
        Duration::from_secs(180),
        "media to be ready after restart",
        async || {
            let media = crate::server::fetch_json(&client, &media_url).await;
            let state = media["state"].as_str().unwrap_or_default().to_string();
            (state == "ready" || state == "failed").then_some(state)
        },
    )
    .await;
    assert_eq!(state, "ready");
    let master = client
        .get(format!(
            "{}/api/v1/media/{media_id}/hls/master.m3u8",
            server.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(master.status(), 200);
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_upload_finish() {
    let data = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let clip = std::fs::read(make_clip(scratch.path(), "short.mp4", "320x240", 1)).unwrap();
    let client = crate::server::client_builder().build().unwrap();
    let mut server = Binary::start(data.path(), "ultrafast");
    server.wait_ready(&client).await;

    // A multipart body we feed by hand, so the request is provably in flight at the signal.
    let boundary = "drain-boundary";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"short.mp4\"\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let (feed, body) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let request = client
        .post(format!("{}/api/v1/upload", server.base))
        .bearer_auth(ADMIN_TOKEN)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(reqwest::Body::wrap_stream(tokio_stream_from(body)))
        .send();
    let in_flight = tokio::spawn(request);
    let half = clip.len() / 2;
    feed.send(Ok(head.into_bytes())).await.unwrap();
    feed.send(Ok(clip[..half].to_vec())).await.unwrap();
    // In flight for certain: the server counts it (plus the /metrics request asking).
    let metrics_url = server.url("/metrics");
    poll(
        Duration::from_secs(10),
        "the upload to be in flight",
        async || {
            let text = crate::server::fetch_text(&client, &metrics_url).await;
            text.lines()
                .any(|line| line == "streamgate_http_requests_in_flight 2")
        },
    )
    .await;

    server.process.signal("TERM");
    feed.send(Ok(clip[half..].to_vec())).await.unwrap();
    feed.send(Ok(tail.into_bytes())).await.unwrap();
    drop(feed);

    let response = in_flight.await.unwrap().unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(
        status, 201,
        "the in-flight upload completes during the drain: {body}"
    );
    let exit = server
        .process
        .exited(Duration::from_secs(40), "the server to stop after draining")
        .await;
    assert!(exit.success(), "{exit:?}");
}

/// A `Stream` over an mpsc receiver, for hand-fed request bodies.
fn tokio_stream_from<T>(
    mut receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}
