//! What operators run: the subcommands of the real binary (backup, restore, reindex,
//! retranscode, rotate-secret, check) against real data directories and servers, and retention
//! of finished jobs.

use std::{
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use serde_json::{json, Value};
use streamgate_actors::config::Rung;

use crate::{
    chain::{dead_rpc_url, Anvil, CHAIN_ID},
    server::{ffprobe, make_clip, TestServer},
};

const READY: Duration = Duration::from_secs(180);
const ADMIN: &str = "ops-admin-token";

/// Runs the `streamgate` binary with `args` (off the async runtime: it blocks).
async fn streamgate(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_streamgate"))
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn path(dir: &Path) -> &str {
    dir.to_str().unwrap()
}

fn on(dir: &Path) -> impl FnOnce(&mut streamgate::Config) + '_ {
    move |config| {
        config.storage.data_dir = dir.to_path_buf();
        config.auth.admin_token = ADMIN.into();
    }
}

/// Uploads a short real clip and waits until it is ready; answers its id.
async fn ready_clip(server: &TestServer, scratch: &Path, name: &str) -> String {
    let clip = make_clip(scratch, name, "640x360", 2);
    let (status, body) = server
        .upload(std::fs::read(clip).unwrap(), name, Some(name))
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["media_id"].as_str().unwrap().to_string();
    server
        .wait_for_media(&id, READY, |m| m["state"] == "ready")
        .await;
    // The media turns ready just before its job is recorded as succeeded.
    let jobs = format!("/api/v1/jobs?media_id={id}");
    crate::harness::poll(READY, "the job to succeed", async || {
        let (_, jobs) = server.get_json_as(ADMIN, &jobs).await;
        jobs["items"][0]["state"] == "succeeded"
    })
    .await;
    id
}

/// (id, state) of every media record, in order.
async fn media_list(server: &TestServer) -> Vec<(String, String)> {
    let (status, page) = server.get_json("/api/v1/media?limit=100").await;
    assert_eq!(status, 200, "{page}");
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_string(),
                m["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn assert_plays(server: &TestServer, id: &str) {
    let url = server.url(&format!("/api/v1/media/{id}/hls/master.m3u8"));
    let probe = tokio::task::spawn_blocking(move || ffprobe(&url))
        .await
        .unwrap();
    let streams = probe["streams"].as_array().unwrap();
    assert!(
        streams.iter().any(|s| s["codec_type"] == "video"),
        "{probe}"
    );
}

#[tokio::test]
async fn backup_of_a_stopped_server_restores_into_an_empty_dir_only_and_every_media_plays() {
    let scratch = tempfile::tempdir().unwrap();
    let original = scratch.path().join("original");
    let backup = scratch.path().join("backup");
    let restored = scratch.path().join("restored");
    let listed = {
        let server = TestServer::start_with(on(&original));
        ready_clip(&server, scratch.path(), "one.mp4").await;
        ready_clip(&server, scratch.path(), "two.mp4").await;
        // Pages come from the search index, which catches up within a group commit.
        crate::harness::poll(READY, "both listed as ready", async || {
            let listed = media_list(&server).await;
            listed
                .iter()
                .all(|(_, state)| state == "ready")
                .then_some(listed)
        })
        .await
    };
    assert_eq!(listed.len(), 2);

    let made = streamgate(&[
        "backup",
        "--data-dir",
        path(&original),
        "--out",
        path(&backup),
    ])
    .await;
    assert_eq!(made.status.code(), Some(0), "{}", text(&made));
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(backup.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["blobs_included"], true, "{manifest}");
    assert!(manifest["blob_files"].as_u64().unwrap() > 2, "{manifest}");

    // The same target again, and a data dir that is not empty, are refused untouched.
    let again = streamgate(&[
        "backup",
        "--data-dir",
        path(&original),
        "--out",
        path(&backup),
    ])
    .await;
    assert_eq!(again.status.code(), Some(3), "{}", text(&again));
    let refused = streamgate(&[
        "restore",
        "--data-dir",
        path(&original),
        "--from",
        path(&backup),
    ])
    .await;
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));

    let done = streamgate(&[
        "restore",
        "--data-dir",
        path(&restored),
        "--from",
        path(&backup),
    ])
    .await;
    assert_eq!(done.status.code(), Some(0), "{}", text(&done));
    std::fs::remove_dir_all(&original).unwrap();
    let server = TestServer::start_with(on(&restored));
    assert_eq!(media_list(&server).await, listed);
    for (id, _) in &listed {
        assert_plays(&server, id).await;
    }
}

#[tokio::test]
async fn backup_of_a_running_server_mid_upload_and_transcode_restores_and_everything_finishes() {
    let scratch = tempfile::tempdir().unwrap();
    let original = scratch.path().join("original");
    let backup = scratch.path().join("backup");
    let restored = scratch.path().join("restored");
    let server = TestServer::start_with(on(&original));
    let first = ready_clip(&server, scratch.path(), "first.mp4").await;
    let alice = server.alice_client().await;

    // A resumable upload half sent.
    let clip = std::fs::read(make_clip(scratch.path(), "resumed.mp4", "640x360", 2)).unwrap();
    let half = clip.len() / 2;
    let created = alice
        .post(server.url("/api/v1/uploads"))
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", clip.len().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let location = created.headers()["location"].to_str().unwrap().to_string();
    let patched = alice
        .patch(server.url(&location))
        .header("Tus-Resumable", "1.0.0")
        .header("Content-Type", "application/offset+octet-stream")
        .header("Upload-Offset", "0")
        .body(clip[..half].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 204);

    // A transcode under way when the snapshot is taken.
    let second = make_clip(scratch.path(), "second.mp4", "640x360", 4);
    let (status, body) = server
        .upload(std::fs::read(second).unwrap(), "second.mp4", Some("second"))
        .await;
    assert_eq!(status, 201, "{body}");
    let second = body["media_id"].as_str().unwrap().to_string();
    let made = streamgate(&[
        "backup",
        "--data-dir",
        path(&original),
        "--out",
        path(&backup),
        "--url",
        &server.base,
        "--admin-token",
        ADMIN,
    ])
    .await;
    assert_eq!(made.status.code(), Some(0), "{}", text(&made));
    assert!(
        String::from_utf8_lossy(&made.stderr).contains("is running"),
        "{}",
        text(&made)
    );
    // The search index commits in the background: wait until the new upload is listed.
    let listed = crate::harness::poll(READY, "the upload to be listed", async || {
        let listed = media_list(&server).await;
        listed.iter().any(|(id, _)| *id == second).then_some(listed)
    })
    .await;
    drop(server);

    let done = streamgate(&[
        "restore",
        "--data-dir",
        path(&restored),
        "--from",
        path(&backup),
    ])
    .await;
    assert_eq!(done.status.code(), Some(0), "{}", text(&done));
    let server = TestServer::start_with(on(&restored));
    let ids = |list: Vec<(String, String)>| list.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
    assert_eq!(ids(media_list(&server).await), ids(listed));
    assert_plays(&server, &first).await;
    // The interrupted transcode runs again after the restore.
    server
        .wait_for_media(&second, READY, |m| m["state"] == "ready")
        .await;
    assert_plays(&server, &second).await;

    // The half upload resumes where the snapshot left it (sessions survive: same secret).
    let head = alice
        .head(server.url(&location))
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    let offset: usize = head.headers()["upload-offset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(offset, half, "the acknowledged bytes were backed up");
    let finished = alice
        .patch(server.url(&location))
        .header("Tus-Resumable", "1.0.0")
        .header("Content-Type", "application/offset+octet-stream")
        .header("Upload-Offset", offset.to_string())
        .body(clip[offset..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(finished.status(), 204);
    server
        .wait_for_media(&media_of_upload(&server, &location).await, READY, |m| {
            m["state"] == "ready"
        })
        .await;
}

async fn media_of_upload(server: &TestServer, location: &str) -> String {
    let status: Value = server.alice_get_json(location).await.1;
    status["media_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no media id in {status}"))
        .to_string()
}

#[tokio::test]
async fn reindex_rebuilds_a_deleted_search_index() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("data");
    {
        let server = TestServer::start_with(on(&dir));
        let clip = make_clip(scratch.path(), "clip.mp4", "640x360", 1);
        let (status, body) = server
            .upload(
                std::fs::read(clip).unwrap(),
                "clip.mp4",
                Some("Zanzibar sunrise"),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    // The index's merge threads may outlive the server by a moment.
    crate::harness::poll(Duration::from_secs(10), "the index removed", async || {
        std::fs::remove_dir_all(dir.join("search")).is_ok()
    })
    .await;
    let done = streamgate(&["reindex", "--data-dir", path(&dir)]).await;
    assert_eq!(done.status.code(), Some(0), "{}", text(&done));
    assert!(
        String::from_utf8_lossy(&done.stdout).contains(": 1 media records"),
        "{}",
        text(&done)
    );
    assert!(dir.join("search/meta.json").exists());
    let server = TestServer::start_with(on(&dir));
    let (status, page) = server.get_json("/api/v1/media?q=zanzibar").await;
    assert_eq!(status, 200);
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
}

fn ladder(rungs: &[(&str, u32)]) -> Vec<Rung> {
    rungs
        .iter()
        .map(|(name, height)| Rung {
            name: name.to_string(),
            height: *height,
            video_bitrate_kbps: 400,
        })
        .collect()
}

fn rendition_names(media: &Value) -> Vec<String> {
    media["renditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn retranscode_after_a_ladder_change_publishes_the_new_ladder() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("data");
    let id = {
        let server = TestServer::start_with(|c| {
            on(&dir)(c);
            c.transcode.ladder = ladder(&[("240p", 240)]);
        });
        let id = ready_clip(&server, scratch.path(), "clip.mp4").await;
        let (_, media) = server.get_json(&format!("/api/v1/media/{id}")).await;
        assert_eq!(rendition_names(&media), ["240p"]);
        id
    };
    let server = TestServer::start_with(|c| {
        on(&dir)(c);
        c.transcode.ladder = ladder(&[("360p", 360), ("240p", 240)]);
    });
    let done = streamgate(&[
        "retranscode",
        "--all",
        "--url",
        &server.base,
        "--admin-token",
        ADMIN,
    ])
    .await;
    assert_eq!(done.status.code(), Some(0), "{}", text(&done));
    assert!(
        String::from_utf8_lossy(&done.stdout).contains("queued 1 transcode jobs"),
        "{}",
        text(&done)
    );
    let media = server
        .wait_for_media(&id, READY, |m| {
            m["state"] == "ready" && rendition_names(m) == ["360p", "240p"]
        })
        .await;
    assert_eq!(media["height"], 360);
    assert_plays(&server, &id).await;

    // Neither --all nor --media: a usage error.
    let usage = streamgate(&["retranscode", "--admin-token", ADMIN]).await;
    assert_eq!(usage.status.code(), Some(2), "{}", text(&usage));
}

#[tokio::test]
async fn rotate_secret_warns_first_then_kills_old_sessions() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("data");
    let token = {
        let server = TestServer::start_with(on(&dir));
        server.session().await.to_string()
    };
    let warned = streamgate(&["rotate-secret", "--data-dir", path(&dir)]).await;
    assert_eq!(warned.status.code(), Some(3), "{}", text(&warned));
    assert!(String::from_utf8_lossy(&warned.stderr).contains("warning"));
    {
        let server = TestServer::start_with(on(&dir));
        let (status, _) = server.get_json_as(&token, "/api/v1/jobs").await;
        assert_eq!(status, 200, "without --yes nothing changed");
    }
    let rotated = streamgate(&["rotate-secret", "--yes", "--data-dir", path(&dir)]).await;
    assert_eq!(rotated.status.code(), Some(0), "{}", text(&rotated));
    let server = TestServer::start_with(on(&dir));
    let (status, body) = server.get_json_as(&token, "/api/v1/jobs").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "session_invalid", "{body}");
}

#[tokio::test]
async fn check_reports_what_it_reaches_with_exit_codes_scripts_can_trust() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("data");
    let chain = Anvil::start().await;
    let rpc = |url: &str| format!("auth.rpc=[{{ chain_id = {CHAIN_ID}, url = \"{url}\" }}]");
    // A nearly full test disk is not what this test is about.
    let min_free = "storage.min_free_disk_mb=1";
    let good = streamgate(&[
        "check",
        "--data-dir",
        path(&dir),
        "--set",
        min_free,
        "--set",
        &rpc(&chain.url),
    ])
    .await;
    assert_eq!(good.status.code(), Some(0), "{}", text(&good));
    let report = String::from_utf8_lossy(&good.stdout);
    for line in [
        "ok   data dir",
        "ok   ffmpeg",
        "ok   ffprobe",
        "ok   rpc chain 31337",
    ] {
        assert!(report.contains(line), "{line}: {report}");
    }

    let dead = dead_rpc_url();
    let bad = streamgate(&[
        "check",
        "--data-dir",
        path(&dir),
        "--set",
        min_free,
        "--set",
        &rpc(&dead),
        "--set",
        "auth.rpc_timeout_ms=2000",
    ])
    .await;
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(
        String::from_utf8_lossy(&bad.stdout).contains("FAIL rpc chain 31337"),
        "{}",
        text(&bad)
    );

    let invalid = streamgate(&["check", "--set", "nope.key=1"]).await;
    assert_eq!(invalid.status.code(), Some(2), "{}", text(&invalid));
    let help = streamgate(&["backup", "--help"]).await;
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--with-blobs"));
}

#[tokio::test]
async fn retention_prunes_finished_jobs_by_age_on_the_injected_clock() {
    let scratch = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(|c| {
        c.auth.admin_token = ADMIN.into();
        c.transcode.job_prune_interval_s = 1;
    });
    let id = ready_clip(&server, scratch.path(), "clip.mp4").await;
    let jobs_of = format!("/api/v1/jobs?media_id={id}");
    let (_, jobs) = server.get_json_as(ADMIN, &jobs_of).await;
    assert_eq!(jobs["items"].as_array().unwrap().len(), 1, "{jobs}");
    server.clock.advance(Duration::from_secs(31 * 86_400));
    crate::harness::poll(
        Duration::from_secs(15),
        "the old job to be pruned",
        async || {
            let (_, jobs) = server.get_json_as(ADMIN, &jobs_of).await;
            jobs["items"].as_array().unwrap().is_empty()
        },
    )
    .await;
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"streamgate_retention_pruned_total{record="job"} 1"#),
        "{metrics}"
    );
    let (status, media) = server.get_json(&format!("/api/v1/media/{id}")).await;
    assert_eq!((status, &media["state"]), (200, &json!("ready")));
}
