//! A media plays while its ladder is still being encoded: EVENT playlists that list only
//! published segments, VOD once the job is done, and cancel and a new run mid-encode leave
//! playlists whose every segment is there and keeps its content, and so does `kill -9`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::server::{ffprobe, make_clip, TestServer};

const ADMIN: &str = "progressive-admin";
const DEADLINE: Duration = Duration::from_secs(240);
const CLIP_SECONDS: u32 = 20;

/// Two-second segments and a deliberately slow preset: the encode runs for many seconds after
/// its first segments close.
fn slow_server() -> TestServer {
    TestServer::start_with(|config| {
        config.auth.admin_token = ADMIN.into();
        config.transcode.segment_seconds = 2;
        config.transcode.x264_preset = "veryslow".into();
    })
}

async fn upload_clip(server: &TestServer, name: &str) -> String {
    let scratch = tempfile::tempdir().unwrap();
    let clip = make_clip(scratch.path(), name, "640x360", CLIP_SECONDS);
    let (status, body) = server
        .upload(std::fs::read(clip).unwrap(), name, Some(name))
        .await;
    assert_eq!(status, 201, "{body}");
    body["media_id"].as_str().unwrap().to_string()
}

async fn get_text(server: &TestServer, path: &str) -> (u16, String, reqwest::header::HeaderMap) {
    let response = server.get(path).await;
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (status, response.text().await.unwrap(), headers)
}

async fn get_bytes(server: &TestServer, path: &str) -> Vec<u8> {
    let response = server.get(path).await;
    assert_eq!(response.status(), 200, "{path}");
    response.bytes().await.unwrap().to_vec()
}

/// The files a media playlist names (init first), checked to be served in full.
async fn assert_every_listed_file_is_served(server: &TestServer, media_id: &str, rung: &str) {
    let base = format!("/api/v1/media/{media_id}/hls/{rung}");
    let (status, playlist, _) = get_text(server, &format!("{base}/index.m3u8")).await;
    assert_eq!(status, 200, "{playlist}");
    let mut files = vec!["init.mp4".to_string()];
    files.extend(
        playlist
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(String::from),
    );
    assert!(files.len() > 1, "{playlist}");
    for file in files {
        let bytes = get_bytes(server, &format!("{base}/{file}")).await;
        assert!(!bytes.is_empty(), "{file} is empty");
    }
}

async fn job_of(server: &TestServer, media_id: &str) -> Value {
    let (status, jobs) = server
        .get_json_as(ADMIN, &format!("/api/v1/jobs?media_id={media_id}"))
        .await;
    assert_eq!(status, 200, "{jobs}");
    jobs["items"][0].clone()
}

fn segment_names(playlist: &str) -> Vec<&str> {
    playlist
        .lines()
        .filter(|line| line.ends_with(".m4s"))
        .collect()
}

#[tokio::test]
async fn an_upload_plays_while_it_encodes_and_ends_as_a_vod() {
    let server = slow_server();
    let id = upload_clip(&server, "growing.mp4").await;
    let media = server
        .wait_for_media(&id, DEADLINE, |m| m["playable"] == true)
        .await;
    assert_eq!(media["state"], "processing", "{media}");
    assert!(media["playable_at"].is_string(), "{media}");
    assert_eq!(
        media["hls_url"],
        format!("/api/v1/media/{id}/hls/master.m3u8")
    );
    let job = job_of(&server, &id).await;
    assert_eq!(job["state"], "running");
    assert_eq!(job["media_playable"], true, "{job}");

    // The master names only rungs with segments; each is a growing EVENT playlist.
    let (status, master, headers) =
        get_text(&server, &format!("/api/v1/media/{id}/hls/master.m3u8")).await;
    assert_eq!(status, 200, "{master}");
    assert_eq!(headers["cache-control"], "public, max-age=1");
    assert!(headers.contains_key("etag"));
    let rungs: Vec<String> = master
        .lines()
        .filter(|line| line.ends_with("/index.m3u8"))
        .map(|line| line.trim_end_matches("/index.m3u8").to_string())
        .collect();
    assert!(!rungs.is_empty(), "{master}");
    let playlist_path = format!("/api/v1/media/{id}/hls/{}/index.m3u8", rungs[0]);
    let (_, growing, _) = get_text(&server, &playlist_path).await;
    assert!(growing.contains("#EXT-X-PLAYLIST-TYPE:EVENT"), "{growing}");
    assert!(!growing.contains("#EXT-X-ENDLIST"), "{growing}");
    assert!(growing.contains("#EXT-X-TARGETDURATION:2"), "{growing}");
    assert!(growing.contains("#EXT-X-INDEPENDENT-SEGMENTS"), "{growing}");
    for rung in &rungs {
        assert_every_listed_file_is_served(&server, &id, rung).await;
    }
    let first_segment = format!("/api/v1/media/{id}/hls/{}/seg_00000.m4s", rungs[0]);
    let early = get_bytes(&server, &first_segment).await;
    // ffprobe reads the growing stream too.
    let report = ffprobe(&server.url(&format!("/api/v1/media/{id}/hls/master.m3u8")));
    assert!(
        report["streams"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["codec_type"] == "video")),
        "{report}"
    );

    let done = server
        .wait_for_media(&id, DEADLINE, |m| m["state"] == "ready")
        .await;
    assert_eq!(done["playable"], true);
    assert_eq!(done["playable_at"], media["playable_at"]);
    let (_, vod, headers) = get_text(&server, &playlist_path).await;
    assert!(vod.contains("#EXT-X-PLAYLIST-TYPE:VOD"), "{vod}");
    assert!(vod.trim_end().ends_with("#EXT-X-ENDLIST"), "{vod}");
    assert_eq!(headers["cache-control"], "public, max-age=10");
    // The growing list was a prefix of the final one, and no segment changed under its URL.
    let (before, after) = (segment_names(&growing), segment_names(&vod));
    assert_eq!(&after[..before.len()], &before[..], "{growing}\n{vod}");
    assert_eq!(after.len(), (CLIP_SECONDS / 2) as usize, "{vod}");
    assert_eq!(get_bytes(&server, &first_segment).await, early);
    let report = ffprobe(&server.url(&format!("/api/v1/media/{id}/hls/master.m3u8")));
    let duration: f64 = report["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or_default();
    assert!((duration - f64::from(CLIP_SECONDS)).abs() < 0.5, "{report}");
}

#[tokio::test]
async fn cancel_and_a_new_run_mid_encode_leave_valid_playlists_with_unchanged_segments() {
    let server = slow_server();
    let id = upload_clip(&server, "cancelled.mp4").await;
    server
        .wait_for_media(&id, DEADLINE, |m| m["playable"] == true)
        .await;
    let job = job_of(&server, &id).await;
    let rung_path = |rung: &str| format!("/api/v1/media/{id}/hls/{rung}/index.m3u8");
    let (_, growing, _) = get_text(&server, &rung_path("360p")).await;
    let first_segment = format!("/api/v1/media/{id}/hls/360p/seg_00000.m4s");
    let early = get_bytes(&server, &first_segment).await;

    let response = crate::server::bearer_client(ADMIN)
        .post(server.url(&format!(
            "/api/v1/jobs/{}/cancel",
            job["id"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let failed = server
        .wait_for_media(&id, DEADLINE, |m| m["state"] == "failed")
        .await;
    assert_eq!(failed["failure_code"], "cancelled", "{failed}");
    // Not served while failed; what is stored lists only segments that are there.
    let (status, _, _) = get_text(&server, &rung_path("360p")).await;
    assert_eq!(status, 409);
    let stored = server.data_dir.join(format!("blobs/media/{id}/hls/360p"));
    let listed = std::fs::read_to_string(stored.join("index.m3u8")).unwrap();
    for segment in segment_names(&listed) {
        assert!(
            stored.join(segment).is_file(),
            "{segment} listed, not stored"
        );
    }

    // A new run continues the published sequence instead of rewriting it.
    let response = crate::server::bearer_client(ADMIN)
        .post(server.url("/api/v1/jobs"))
        .json(&json!({"kind": "transcode", "media_id": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let running = server
        .wait_for_media(&id, DEADLINE, |m| m["state"] != "failed")
        .await;
    assert_eq!(running["playable"], true, "{running}");
    let ready = server
        .wait_for_media(&id, DEADLINE, |m| m["state"] == "ready")
        .await;
    assert!(ready["failure_code"].is_null(), "{ready}");
    let (_, vod, _) = get_text(&server, &rung_path("360p")).await;
    let (before, after) = (segment_names(&growing), segment_names(&vod));
    assert_eq!(&after[..before.len()], &before[..], "{growing}\n{vod}");
    assert!(vod.trim_end().ends_with("#EXT-X-ENDLIST"), "{vod}");
    assert_eq!(get_bytes(&server, &first_segment).await, early);
    assert_every_listed_file_is_served(&server, &id, "360p").await;
}

#[tokio::test]
async fn kill_9_mid_encode_leaves_valid_playlists_and_a_restart_finishes_the_sequence() {
    use crate::shutdown::{ffmpeg_children, is_alive, Binary, ADMIN_TOKEN};
    let data = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let clip = std::fs::read(make_clip(
        scratch.path(),
        "killed.mp4",
        "640x360",
        CLIP_SECONDS,
    ))
    .unwrap();
    let client = crate::server::client_builder().build().unwrap();
    let slow = [
        "transcode.x264_preset=\"veryslow\"",
        "transcode.segment_seconds=2",
    ];
    let mut server = Binary::start_with(data.path(), &slow);
    server.wait_ready(&client).await;
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(clip).file_name("killed.mp4"),
    );
    let response = client
        .post(server.url("/api/v1/upload"))
        .bearer_auth(ADMIN_TOKEN)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let receipt: Value = response.json().await.unwrap();
    let id = receipt["media_id"].as_str().unwrap().to_string();
    let record = server.url(&format!("/api/v1/media/{id}"));
    crate::harness::poll(DEADLINE, "the media to play", async || {
        let media = crate::server::fetch_json(&client, &record).await;
        media["playable"] == true
    })
    .await;
    let playlist = format!("/api/v1/media/{id}/hls/360p/index.m3u8");
    let segment = format!("/api/v1/media/{id}/hls/360p/seg_00000.m4s");
    let growing = crate::server::fetch_text(&client, server.url(&playlist)).await;
    let early = client.get(server.url(&segment)).send().await.unwrap();
    let early = early.bytes().await.unwrap();

    // kill -9: nothing gets to clean up. Its orphaned ffmpeg is stopped by hand.
    let ffmpeg = ffmpeg_children(server.process.pid());
    server.process.signal("KILL");
    server
        .process
        .exited(Duration::from_secs(30), "the server to die")
        .await;
    for pid in ffmpeg.iter().filter(|pid| is_alive(**pid)) {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
    let stored = data.path().join(format!("blobs/media/{id}/hls/360p"));
    let listed = std::fs::read_to_string(stored.join("index.m3u8")).unwrap();
    assert!(!segment_names(&listed).is_empty(), "{listed}");
    for name in segment_names(&listed) {
        assert!(stored.join(name).is_file(), "{name} listed, not stored");
    }

    // The restart runs the job again; the sequence continues and ends as a VOD.
    let server = Binary::start_with(data.path(), &slow[1..]);
    server.wait_ready(&client).await;
    crate::harness::poll(DEADLINE, "the media to be ready", async || {
        let media =
            crate::server::fetch_json(&client, server.url(&format!("/api/v1/media/{id}"))).await;
        media["state"] == "ready"
    })
    .await;
    let vod = crate::server::fetch_text(&client, server.url(&playlist)).await;
    let (before, after) = (segment_names(&growing), segment_names(&vod));
    assert_eq!(&after[..before.len()], &before[..], "{growing}\n{vod}");
    assert!(vod.trim_end().ends_with("#EXT-X-ENDLIST"), "{vod}");
    let late = client.get(server.url(&segment)).send().await.unwrap();
    assert_eq!(late.bytes().await.unwrap(), early);
    for name in after {
        let url = server.url(&format!("/api/v1/media/{id}/hls/360p/{name}"));
        assert_eq!(
            client.get(url).send().await.unwrap().status(),
            200,
            "{name}"
        );
    }
}
