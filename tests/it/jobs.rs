//! The job system with real ffmpeg on generated clips: every state transition (queued → running →
//! succeeded | failed | cancelled, and back to queued for a retry or after a crash), scheduled
//! jobs, profiles, the DASH manifest, cancel, retry with backoff, cleanup, stats, metrics, audit,
//! and recovery after `kill -9` of the real binary.

use std::{path::Path, time::Duration};

use serde_json::{json, Value};
use streamgate_actors::config::Rung;
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use crate::{
    harness::{poll, poll_every},
    server::{fetch_json, fetch_text, ffprobe, files_under, make_clip, TestServer},
    shutdown::{ffmpeg_children, is_alive, Binary},
};

const TOKEN: &str = "jobs-admin-token";
const DEADLINE: Duration = Duration::from_secs(120);

/// Two small rungs, so 320x240 clips get a real two-rung ladder in a fraction of a second.
fn small_ladder() -> Vec<Rung> {
    [("240p", 240, 400), ("180p", 180, 250)]
        .map(|(name, height, kbps)| Rung {
            name: name.into(),
            height,
            video_bitrate_kbps: kbps,
        })
        .to_vec()
}

fn start(tweak: impl FnOnce(&mut streamgate::Config)) -> TestServer {
    TestServer::start_with(|config| {
        config.auth.admin_token = TOKEN.into();
        config.transcode.ladder = small_ladder();
        config.transcode.segment_seconds = 1;
        tweak(config);
    })
}

async fn post(server: &TestServer, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = server.client.post(server.url(path)).bearer_auth(TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn wait_for_job(server: &TestServer, job_id: &str, done: impl Fn(&Value) -> bool) -> Value {
    // Under the worker bucket's refill (10/s), so a slow job on a busy machine cannot run this
    // client's bucket dry.
    let path = format!("/api/v1/jobs/{job_id}");
    poll_every(
        Duration::from_millis(150),
        DEADLINE,
        "the job",
        async || {
            let (status, job) = server.get_json_as(TOKEN, &path).await;
            assert_eq!(status, 200, "{job}");
            if done(&job) {
                Ok(job)
            } else {
                Err(job.to_string())
            }
        },
    )
    .await
}

/// Uploads a 320x240 clip and waits until it is ready; returns (media id, upload receipt).
async fn ready_clip(server: &TestServer, seconds: u32) -> (String, Value) {
    let scratch = tempfile::tempdir().unwrap();
    let clip = std::fs::read(make_clip(scratch.path(), "c.mp4", "320x240", seconds)).unwrap();
    let (status, receipt) = server.upload(clip, "c.mp4", None).await;
    assert_eq!(status, 201, "{receipt}");
    let media_id = receipt["media_id"].as_str().unwrap().to_string();
    let media = server
        .wait_for_media(&media_id, DEADLINE, |m| m["state"] != "processing")
        .await;
    assert_eq!(media["state"], "ready", "{media}");
    // The media turns ready a moment before its job is recorded as succeeded.
    let job_id = jobs_of(server, &media_id).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for_job(server, &job_id, |j| j["state"] == "succeeded").await;
    (media_id, receipt)
}

async fn jobs_of(server: &TestServer, media_id: &str) -> Vec<Value> {
    let (status, page) = server
        .get_json_as(TOKEN, &format!("/api/v1/jobs?media_id={media_id}"))
        .await;
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().unwrap().clone()
}

fn at(value: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(value.as_str().unwrap(), &Rfc3339).unwrap()
}

/// Asserts that `/metrics` contains each of `lines` (a series and its value).
async fn assert_metrics_contain(server: &TestServer, lines: &[&str]) {
    let text = server.get_text("/metrics").await;
    for line in lines {
        assert!(text.contains(line), "{line} missing: {text}");
    }
}

/// The `name` of each item of a JSON array (profiles, renditions).
fn item_names(items: &Value) -> Vec<&str> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["name"].as_str().unwrap())
        .collect()
}

/// Rendition names in a master playlist, in order (duplicates kept).
fn master_renditions(master: &str) -> Vec<String> {
    master
        .lines()
        .filter_map(|line| line.strip_suffix("/index.m3u8"))
        .map(String::from)
        .collect()
}

/// Asserts the served ladder is whole: each rendition once in the master, every segment a
/// playlist names is served, and no file on disk is left over from another run.
async fn assert_whole_ladder(client: &reqwest::Client, base: &str, data: &Path, media_id: &str) {
    let url = |path: &str| format!("{base}/api/v1/media/{media_id}/{path}");
    let master = client.get(url("hls/master.m3u8")).send().await.unwrap();
    assert_eq!(master.status(), 200);
    let master = master.text().await.unwrap();
    let renditions = master_renditions(&master);
    let mut unique = renditions.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        renditions.len(),
        "a rendition listed twice: {master}"
    );
    assert!(!renditions.is_empty(), "{master}");
    let hls_dir = data.join("blobs/media").join(media_id).join("hls");
    for name in &renditions {
        let playlist = fetch_text(client, url(&format!("hls/{name}/index.m3u8"))).await;
        let mut referenced: Vec<String> = playlist
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(String::from)
            .collect();
        if let Some(init) = playlist
            .lines()
            .find_map(|line| line.strip_prefix("#EXT-X-MAP:URI=\""))
        {
            referenced.push(init.trim_end_matches('"').to_string());
        }
        for file in &referenced {
            let response = client
                .get(url(&format!("hls/{name}/{file}")))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{name}/{file}");
        }
        referenced.push("index.m3u8".into());
        referenced.sort();
        let mut on_disk: Vec<String> = std::fs::read_dir(hls_dir.join(name))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        assert_eq!(on_disk, referenced, "files of {name} not from this run");
    }
    let mut dirs: Vec<String> = std::fs::read_dir(&hls_dir)
        .unwrap()
        .map(|entry| entry.unwrap())
        // Deleting blobs may leave empty directories; only files could be served.
        .filter(|entry| entry.path().is_dir() && !files_under(&entry.path()).is_empty())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    unique.sort();
    assert_eq!(
        dirs, unique,
        "a rendition on disk that the master does not list"
    );
}

/// Pids of ffmpeg processes working for `job_id` (their command line names its work dir).
fn ffmpeg_of_job(job_id: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.starts_with("ffmpeg") && cmdline.contains(&format!("/work/{job_id}/")) {
            found.push(pid);
        }
    }
    found
}

#[tokio::test]
async fn transcode_with_profiles_serves_hls_and_dash_from_one_set_of_segments() {
    let server = start(|_| {});
    let (media_id, _) = ready_clip(&server, 2).await;

    // The upload's job went queued → running → succeeded, with its timestamps.
    let jobs = jobs_of(&server, &media_id).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let first = &jobs[0];
    assert_eq!(
        (
            &first["kind"],
            &first["state"],
            &first["attempts"],
            &first["progress"]
        ),
        (
            &json!("transcode"),
            &json!("succeeded"),
            &json!(1),
            &json!(100)
        ),
        "{first}"
    );
    assert!(
        at(&first["started_at"]) <= at(&first["finished_at"]),
        "{first}"
    );
    assert_whole_ladder(&server.client, &server.base, &server.data_dir, &media_id).await;

    // DASH: the manifest is served for ready media and names only the HLS segments.
    let mpd_path = format!("/api/v1/media/{media_id}/dash/manifest.mpd");
    let response = server.get(&mpd_path).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/dash+xml");
    let mpd = response.text().await.unwrap();
    let segment_urls: Vec<&str> = mpd
        .split("media=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert!(!segment_urls.is_empty(), "{mpd}");
    for relative in &segment_urls {
        let hls = relative
            .strip_prefix("../hls/")
            .expect("shares the HLS segments");
        let response = server
            .get(&format!("/api/v1/media/{media_id}/hls/{hls}"))
            .await;
        assert_eq!(response.status(), 200, "{relative}");
    }
    let report = ffprobe(&server.url(&mpd_path));
    let streams = report["streams"].as_array().unwrap();
    assert!(
        streams
            .iter()
            .any(|s| s["codec_name"] == "h264" && s["height"] == 240),
        "{report}"
    );
    assert!(streams.iter().any(|s| s["codec_name"] == "aac"), "{report}");
    let duration: f64 = report["format"]["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((duration - 2.0).abs() < 0.3, "duration {duration}");

    // A second transcode with a subset of the ladder replaces the output with just that rung.
    let (status, job) = post(
        &server,
        "/api/v1/jobs",
        Some(
            json!({"kind": "transcode", "media_id": media_id, "profiles": ["180p"], "priority": 9}),
        ),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(
        (&job["state"], &job["priority"]),
        (&json!("queued"), &json!(9))
    );
    let job = wait_for_job(&server, job["id"].as_str().unwrap(), |j| {
        j["state"] != "queued" && j["state"] != "running"
    })
    .await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["profiles"], json!(["180p"]));
    let (_, media) = server.get_json(&format!("/api/v1/media/{media_id}")).await;
    assert_eq!(media["renditions"][0]["name"], "180p", "{media}");
    assert_eq!(media["renditions"].as_array().unwrap().len(), 1, "{media}");
    assert_whole_ladder(&server.client, &server.base, &server.data_dir, &media_id).await;
    let mpd = server.get(&mpd_path).await.text().await.unwrap();
    assert!(
        mpd.contains("../hls/180p/") && !mpd.contains("240p"),
        "{mpd}"
    );

    // Stats, profiles and metrics see both runs.
    let (status, stats) = server.get_json_as(TOKEN, "/api/v1/jobs/stats").await;
    assert_eq!(status, 200);
    assert_eq!(stats["workers"], json!({"total": 1, "busy": 0, "idle": 1}));
    assert_eq!(
        (&stats["processed"], &stats["failed"]),
        (&json!(2), &json!(0))
    );
    assert!(stats["mean_duration_s"].as_f64().unwrap() > 0.0, "{stats}");
    let (_, profiles) = server.get_json("/api/v1/transcode/profiles").await;
    let names = item_names(&profiles["profiles"]);
    assert_eq!(names, ["240p", "180p"]);
    assert_metrics_contain(
        &server,
        &[
            r#"streamgate_job_duration_seconds_count{kind="transcode",outcome="succeeded"} 2"#,
            "streamgate_transcode_speed_ratio_count 2",
            r#"streamgate_jobs{state="queued"} 0"#,
        ],
    )
    .await;
}

#[tokio::test]
async fn submissions_are_validated_and_need_the_admin_token() {
    let server = start(|_| {});
    let (media_id, _) = ready_clip(&server, 1).await;
    let response = server
        .client
        .post(server.url("/api/v1/jobs"))
        .json(&json!({"kind": "cleanup"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let unknown = "01a201b6-5525-7120-9745-a4f5dcf83f70";
    for (body, code) in [
        (json!({"kind": "sleep"}), "invalid_kind"),
        (json!({"kind": "transcode"}), "invalid_job"),
        (
            json!({"kind": "cleanup", "media_id": media_id}),
            "invalid_job",
        ),
        (
            json!({"kind": "transcode", "media_id": media_id, "priority": 10}),
            "invalid_priority",
        ),
        (
            json!({"kind": "transcode", "media_id": media_id, "profiles": ["4k"]}),
            "invalid_job",
        ),
        (
            json!({"kind": "thumbnail", "media_id": media_id, "profiles": ["180p"]}),
            "invalid_job",
        ),
        (
            json!({"kind": "transcode", "media_id": unknown}),
            "unknown_media",
        ),
        (
            json!({"kind": "transcode", "media_id": "nope"}),
            "unknown_media",
        ),
        (
            json!({"kind": "cleanup", "run_at": "tomorrow"}),
            "invalid_run_at",
        ),
        (json!({"kind": "cleanup", "colour": "red"}), "invalid_json"),
    ] {
        let (status, error) = post(&server, "/api/v1/jobs", Some(body.clone())).await;
        assert_eq!(
            (status, error["code"].as_str()),
            (400, Some(code)),
            "{body} → {error}"
        );
    }
    let (status, error) = server
        .get_json_as(TOKEN, "/api/v1/jobs?media_id=nope")
        .await;
    assert_eq!(
        (status, error["code"].as_str()),
        (400, Some("invalid_media_id"))
    );
    assert!(
        jobs_of(&server, &media_id).await.len() == 1,
        "nothing was queued"
    );
}

#[tokio::test]
async fn scheduled_jobs_wait_for_run_at_and_queued_jobs_cancel() {
    let server = start(|_| {});
    let (media_id, _) = ready_clip(&server, 1).await;

    // A thumbnail job two seconds out: queued, counted as scheduled, started no earlier.
    let run_at = OffsetDateTime::now_utc() + Duration::from_secs(2);
    let (status, job) = post(
        &server,
        "/api/v1/jobs",
        Some(json!({"kind": "thumbnail", "media_id": media_id, "run_at": run_at.format(&Rfc3339).unwrap()})),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let thumbnail_job = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["started_at"], Value::Null);
    let (_, stats) = server.get_json_as(TOKEN, "/api/v1/jobs/stats").await;
    assert_eq!(stats["scheduled"], 1, "{stats}");
    let thumbnail = server
        .data_dir
        .join(format!("blobs/media/{media_id}/thumbnail.jpg"));
    std::fs::remove_file(&thumbnail).unwrap();
    let job = wait_for_job(&server, &thumbnail_job, |j| j["state"] == "succeeded").await;
    assert!(at(&job["started_at"]) >= run_at, "{job}");
    assert!(thumbnail.exists(), "the thumbnail job wrote it again");

    // A job an hour out, then a second for the same media: one active job per media.
    let later = (OffsetDateTime::now_utc() + Duration::from_secs(3600))
        .format(&Rfc3339)
        .unwrap();
    let (status, job) = post(
        &server,
        "/api/v1/jobs",
        Some(json!({"kind": "transcode", "media_id": media_id, "run_at": later})),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let queued_job = job["id"].as_str().unwrap().to_string();
    let (status, error) = post(
        &server,
        "/api/v1/jobs",
        Some(json!({"kind": "thumbnail", "media_id": media_id})),
    )
    .await;
    assert_eq!(
        (status, error["code"].as_str()),
        (409, Some("job_already_active"))
    );

    // queued → cancelled; cancelling anything final is a conflict.
    let (status, job) = post(&server, &format!("/api/v1/jobs/{queued_job}/cancel"), None).await;
    assert_eq!(
        (status, job["state"].as_str()),
        (200, Some("cancelled")),
        "{job}"
    );
    assert_eq!(job["attempts"], 0, "it never ran");
    for finished in [&queued_job, &thumbnail_job] {
        let (status, error) = post(&server, &format!("/api/v1/jobs/{finished}/cancel"), None).await;
        assert_eq!(
            (status, error["code"].as_str()),
            (409, Some("job_finished")),
            "{error}"
        );
    }
    let (status, _) = post(
        &server,
        "/api/v1/jobs/01a201b6-5525-7120-9745-a4f5dcf83f70/cancel",
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (_, stats) = server.get_json_as(TOKEN, "/api/v1/jobs/stats").await;
    assert_eq!(
        (&stats["scheduled"], &stats["cancelled"]),
        (&json!(0), &json!(1)),
        "{stats}"
    );
    let (_, media) = server.get_json(&format!("/api/v1/media/{media_id}")).await;
    assert_eq!(
        media["state"], "ready",
        "cancelling a job that never ran keeps ready media"
    );

    // Filters and cursor pagination.
    let (_, cancelled) = server
        .get_json_as(TOKEN, "/api/v1/jobs?state=cancelled")
        .await;
    assert_eq!(cancelled["items"].as_array().unwrap().len(), 1);
    let (_, page) = server
        .get_json_as(TOKEN, &format!("/api/v1/jobs?media_id={media_id}&limit=2"))
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = server
        .get_json_as(
            TOKEN,
            &format!("/api/v1/jobs?media_id={media_id}&limit=2&cursor={cursor}"),
        )
        .await;
    assert_eq!(rest["items"][0]["id"], queued_job.as_str(), "{rest}");

    // Audit: submissions and cancels, with refused cancels as failed.
    let audit: Value = server
        .client
        .get(server.url("/api/v1/audit?action=job.cancel"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let outcomes: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["ok", "failed", "failed"], "{audit}");
    assert_eq!(audit["items"][0]["target"], queued_job.as_str());
}

#[tokio::test]
async fn cancelling_a_running_transcode_kills_ffmpeg_and_leaves_nothing() {
    // A slow preset and a larger clip, so the transcode is surely running when cancelled.
    let server = start(|config| {
        config.transcode.x264_preset = "veryslow".into();
        config.transcode.ladder.insert(
            0,
            Rung {
                name: "480p".into(),
                height: 480,
                video_bitrate_kbps: 1400,
            },
        );
    });
    let scratch = tempfile::tempdir().unwrap();
    let clip = std::fs::read(make_clip(scratch.path(), "c.mp4", "640x480", 8)).unwrap();
    let (status, receipt) = server.upload(clip, "c.mp4", None).await;
    assert_eq!(status, 201, "{receipt}");
    let media_id = receipt["media_id"].as_str().unwrap().to_string();
    let job_id = jobs_of(&server, &media_id).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Progress shows while it runs.
    let running = wait_for_job(&server, &job_id, |j| {
        j["state"] == "running" && j["progress"].as_u64().unwrap() > 0
    })
    .await;
    assert!(running["progress"].as_u64().unwrap() < 100, "{running}");
    let ffmpeg = ffmpeg_of_job(&job_id);
    assert!(!ffmpeg.is_empty(), "ffmpeg runs for the job");

    let (status, job) = post(&server, &format!("/api/v1/jobs/{job_id}/cancel"), None).await;
    assert_eq!(
        (status, job["state"].as_str()),
        (200, Some("cancelled")),
        "{job}"
    );
    assert!(job["finished_at"].is_string(), "{job}");
    // The reply comes after the worker ended: ffmpeg is gone (reaped, no zombie) and so is
    // the partial output.
    for pid in ffmpeg {
        assert!(!is_alive(pid), "ffmpeg {pid} outlived the cancel");
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "ffmpeg {pid} not reaped"
        );
    }
    assert!(
        !server.data_dir.join("work").join(&job_id).exists(),
        "work dir removed"
    );
    assert!(server.blob_files("media").is_empty(), "nothing published");
    let (_, media) = server.get_json(&format!("/api/v1/media/{media_id}")).await;
    assert_eq!(
        (media["state"].as_str(), media["failure"].as_str()),
        (Some("failed"), Some("transcode cancelled")),
        "{media}"
    );
    assert_metrics_contain(
        &server,
        &[r#"streamgate_job_duration_seconds_count{kind="transcode",outcome="cancelled"} 1"#],
    )
    .await;
}

#[tokio::test]
async fn a_transient_failure_retries_with_backoff_and_keeps_the_reason() {
    let base_delay_ms = 1000;
    let server = start(|config| {
        config.transcode.max_attempts = 3;
        config.transcode.retry_base_delay_ms = base_delay_ms;
    });
    let (media_id, receipt) = ready_clip(&server, 1).await;
    let source = server
        .data_dir
        .join("blobs/uploads")
        .join(receipt["upload_id"].as_str().unwrap())
        .join("source");
    let hidden = source.with_file_name("elsewhere");
    // The source goes missing: a storage failure, which a retry may get past.
    std::fs::rename(&source, &hidden).unwrap();
    let (status, job) = post(
        &server,
        "/api/v1/jobs",
        Some(json!({"kind": "transcode", "media_id": media_id})),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let job_id = job["id"].as_str().unwrap().to_string();

    // running → queued with a backoff that doubles: 1×, then 2× the base delay.
    for attempt in 1..=2u64 {
        let job = wait_for_job(&server, &job_id, |j| {
            j["state"] == "queued" && j["attempts"] == attempt
        })
        .await;
        // The client learns the kind of failure, not the server's paths.
        assert_eq!(job["error_code"], "temporarily_unavailable", "{job}");
        assert!(!job["last_error"].as_str().unwrap().contains('/'), "{job}");
        let backoff = at(&job["run_at"]) - at(&job["updated_at"]);
        assert_eq!(
            backoff.whole_milliseconds(),
            i128::from(base_delay_ms << (attempt - 1)),
            "{job}"
        );
    }
    // The source is back before the third attempt: it succeeds, the reason is cleared.
    std::fs::rename(&hidden, &source).unwrap();
    let job = wait_for_job(&server, &job_id, |j| j["state"] == "succeeded").await;
    assert_eq!(
        (&job["attempts"], &job["last_error"]),
        (&json!(3), &Value::Null),
        "{job}"
    );

    // Gone for good: three attempts, then failed with the reason kept; the media's earlier
    // output was never touched, so it stays ready and whole.
    std::fs::rename(&source, &hidden).unwrap();
    let (_, job) = post(
        &server,
        "/api/v1/jobs",
        Some(json!({"kind": "transcode", "media_id": media_id})),
    )
    .await;
    let job = wait_for_job(&server, job["id"].as_str().unwrap(), |j| {
        j["state"] == "failed"
    })
    .await;
    assert_eq!(job["attempts"], 3, "{job}");
    assert_eq!(job["error_code"], "temporarily_unavailable", "{job}");
    let (_, media) = server.get_json(&format!("/api/v1/media/{media_id}")).await;
    assert_eq!(media["state"], "ready", "{media}");
    assert_whole_ladder(&server.client, &server.base, &server.data_dir, &media_id).await;
    assert_metrics_contain(
        &server,
        &[
            r#"streamgate_job_duration_seconds_count{kind="transcode",outcome="retrying"} 4"#,
            r#"streamgate_job_duration_seconds_count{kind="transcode",outcome="failed"} 1"#,
        ],
    )
    .await;

    // Undecodable input fails at once and counts as an ffmpeg failure.
    let mut corrupt = vec![0, 0, 0, 0x20];
    corrupt.extend_from_slice(b"ftypisom");
    corrupt.extend((0..16 * 1024).map(|i| (i * 7 % 251) as u8));
    let (status, receipt) = server.upload(corrupt, "broken.mp4", None).await;
    assert_eq!(status, 201);
    let broken = receipt["media_id"].as_str().unwrap();
    let job = &jobs_of(&server, broken).await[0];
    let job = wait_for_job(&server, job["id"].as_str().unwrap(), |j| {
        j["state"] == "failed"
    })
    .await;
    assert_eq!(job["attempts"], 1, "{job}");
    assert_eq!(job["error_code"], "undecodable", "{job}");
    assert_metrics_contain(
        &server,
        &[r#"streamgate_ffmpeg_failures_total{reason="undecodable"} 1"#],
    )
    .await;
}

#[tokio::test]
async fn cleanup_removes_orphans_and_stale_work_dirs_but_keeps_live_media() {
    let server = start(|config| config.transcode.cleanup_min_age_s = 0);
    let (media_id, _) = ready_clip(&server, 1).await;
    let live_files = server.blob_files(&format!("media/{media_id}"));
    assert!(!live_files.is_empty());

    let blobs = server.data_dir.join("blobs");
    let orphan_media = blobs.join("media/01a201b6-5525-7120-9745-a4f5dcf83f70/hls/240p");
    let orphan_source = blobs.join("uploads/01a201b6-5525-7120-9745-a4f5dcf83f71");
    let partial = blobs.join("uploads/01a201b6-5525-7120-9745-a4f5dcf83f72");
    let stale_work = server
        .data_dir
        .join("work/01a201b6-5525-7120-9745-a4f5dcf83f73/out");
    for dir in [&orphan_media, &orphan_source, &partial, &stale_work] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(orphan_media.join("seg_00000.m4s"), b"x").unwrap();
    std::fs::write(orphan_source.join("source"), b"x").unwrap();
    std::fs::write(partial.join("source#1"), b"x").unwrap();
    std::fs::write(stale_work.join("seg_00000.m4s"), b"x").unwrap();

    let (status, job) = post(&server, "/api/v1/jobs", Some(json!({"kind": "cleanup"}))).await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["media_id"], Value::Null);
    let job = wait_for_job(&server, job["id"].as_str().unwrap(), |j| {
        j["state"] == "succeeded" || j["state"] == "failed"
    })
    .await;
    assert_eq!(
        job["summary"],
        "removed 2 orphaned blobs, 1 abandoned partial writes, 1 stale work directories",
        "{job}"
    );
    assert!(files_under(&orphan_media).is_empty());
    assert!(files_under(&orphan_source).is_empty());
    assert!(files_under(&partial).is_empty());
    assert!(!stale_work.exists());
    assert_eq!(
        server.blob_files(&format!("media/{media_id}")).len(),
        live_files.len()
    );
    assert_whole_ladder(&server.client, &server.base, &server.data_dir, &media_id).await;
}

#[tokio::test]
async fn kill_9_mid_transcode_then_restart_finishes_the_job_with_a_whole_ladder() {
    let data = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let clip = std::fs::read(make_clip(scratch.path(), "c.mp4", "640x480", 12)).unwrap();
    // The admin reads every job.
    let client = crate::server::bearer_client(crate::shutdown::ADMIN_TOKEN);

    let mut server = Binary::start(data.path(), "veryslow");
    server.wait_ready(&client).await;
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(clip).file_name("c.mp4"),
    );
    let response = client
        .post(format!("{}/api/v1/upload", server.base))
        .bearer_auth(crate::shutdown::ADMIN_TOKEN)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let receipt: Value = response.json().await.unwrap();
    let media_id = receipt["media_id"].as_str().unwrap().to_string();
    let jobs_url = format!("{}/api/v1/jobs?media_id={media_id}", server.base);
    let job_id = client
        .get(&jobs_url)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Kill it while ffmpeg has written part of the ladder.
    let server_pid = server.process.pid();
    let job_url = server.url(&format!("/api/v1/jobs/{job_id}"));
    let out = data.path().join("work").join(&job_id).join("out");
    poll(
        Duration::from_secs(60),
        "partial output to appear",
        async || {
            let job = fetch_json(&client, &job_url).await;
            job["progress"].as_u64().unwrap_or(0) > 0 && !files_under(&out).is_empty()
        },
    )
    .await;
    let strays = ffmpeg_children(server_pid);
    assert!(!strays.is_empty());
    // SIGKILL to the server alone: its ffmpeg children are left as strays.
    server.process.kill();

    // Restart: the stray ffmpeg is killed, the job re-queued and finished.
    let server = Binary::start(data.path(), "ultrafast");
    server.wait_ready(&client).await;
    let job_url = server.url(&format!("/api/v1/jobs/{job_id}"));
    let job = poll(DEADLINE, "the recovered job to end", async || {
        let job = fetch_json(&client, &job_url).await;
        (job["state"] == "succeeded" || job["state"] == "failed").then_some(job)
    })
    .await;
    assert_eq!(
        (&job["state"], &job["attempts"]),
        (&json!("succeeded"), &json!(2)),
        "{job}"
    );
    for pid in strays {
        assert!(
            !is_alive(pid),
            "ffmpeg {pid} of the killed server still runs"
        );
    }
    let media: Value = client
        .get(format!("{}/api/v1/media/{media_id}", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(media["state"], "ready", "{media}");
    let names = item_names(&media["renditions"]);
    assert_eq!(names, ["480p", "360p"]);
    assert_whole_ladder(&client, &server.base, data.path(), &media_id).await;
    assert!(
        files_under(&data.path().join("work")).is_empty(),
        "no work left behind"
    );
}

#[tokio::test]
async fn a_rerun_takes_ready_media_out_of_service_before_replacing_its_output() {
    let server = start(|_| {});
    let (media_id, _) = ready_clip(&server, 1).await;
    let master = format!("/api/v1/media/{media_id}/hls/master.m3u8");
    // Served, and now cached.
    assert_eq!(server.get(&master).await.status(), 200);
    assert_eq!(server.get(&master).await.status(), 200);

    // What the worker sends before it deletes the old output.
    server
        .actors
        .metadata
        .send(streamgate_actors::metadata::MarkRepublishing {
            media_id: streamgate_actors::model::MediaId::parse(&media_id).unwrap(),
        })
        .await
        .unwrap()
        .unwrap();
    let response = server.get(&master).await;
    assert_eq!(
        response.status(),
        409,
        "no cached playlist outlives the change"
    );
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        "media_not_ready"
    );
    let (_, media) = server.get_json(&format!("/api/v1/media/{media_id}")).await;
    assert_eq!(media["state"], "processing", "{media}");

    // The rerun publishes and the media is served again.
    let (status, job) = post(
        &server,
        "/api/v1/jobs",
        Some(json!({"kind": "transcode", "media_id": media_id})),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let job = wait_for_job(&server, job["id"].as_str().unwrap(), |j| {
        j["state"] != "queued" && j["state"] != "running"
    })
    .await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(server.get(&master).await.status(), 200);
    assert_whole_ladder(&server.client, &server.base, &server.data_dir, &media_id).await;
}
