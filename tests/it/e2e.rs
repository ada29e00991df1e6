//! The main job end to end: upload a real clip, transcode it with real ffmpeg, play it back —
//! on the local blob store with the one-shot upload, and on a real S3-compatible server (moto)
//! with a tus upload.

use std::time::Duration;

use crate::{
    s3::Moto,
    server::{ffprobe, make_clip, playlist_files, playlist_seconds, TestServer},
    tus::upload_via_tus,
};

const READY_DEADLINE: Duration = Duration::from_secs(180);

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upload {
    OneShot,
    Tus,
}

#[tokio::test]
async fn upload_transcodes_to_a_playable_hls_ladder() {
    let server = TestServer::start();
    upload_transcode_stream(&server, Upload::OneShot).await;
    // Local blobs: the source is on disk, byte-identical.
    let sources = server.blob_files("uploads");
    assert_eq!(sources.len(), 1);
}

#[tokio::test]
async fn tus_upload_on_s3_transcodes_to_a_playable_hls_ladder() {
    let moto = Moto::start().await;
    let server = TestServer::start_with(|config| moto.configure(config));
    let media_id = upload_transcode_stream(&server, Upload::Tus).await;
    // Everything lives in the bucket, nothing in the local blob directory.
    assert!(server.blob_files("").is_empty());
    let sources = moto.keys("uploads/").await;
    assert_eq!(sources.len(), 1, "{sources:?}");
    let outputs = moto.keys(&format!("media/{media_id}/")).await;
    assert!(
        outputs.iter().any(|key| key.ends_with("hls/master.m3u8"))
            && outputs.iter().any(|key| key.ends_with(".m4s")),
        "{outputs:?}"
    );
    let (_, media) = server.get_json(&format!("/api/v1/media/{media_id}")).await;
    assert_eq!(
        media["sha256"].as_str().unwrap(),
        sha256_hex(&moto.object(&sources[0]).await)
    );
}

/// Uploads a real clip, waits for the ladder and plays it back; returns the media id.
pub(crate) async fn upload_transcode_stream(server: &TestServer, via: Upload) -> String {
    let scratch = tempfile::tempdir().unwrap();
    let clip = make_clip(scratch.path(), "clip.mp4", "1280x720", 4);
    let bytes = std::fs::read(&clip).unwrap();
    let expected_sha256 = sha256_hex(&bytes);

    let (media_id, upload_id) = match via {
        Upload::OneShot => {
            let (status, receipt) = server
                .upload(bytes.clone(), "clip.mp4", Some("My first clip"))
                .await;
            assert_eq!(status, 201, "{receipt}");
            assert_eq!(receipt["size"], bytes.len());
            assert_eq!(receipt["sha256"], expected_sha256.as_str());
            (
                receipt["media_id"].as_str().unwrap().to_string(),
                receipt["upload_id"].as_str().unwrap().to_string(),
            )
        }
        Upload::Tus => {
            let status = upload_via_tus(
                &server.alice_client().await,
                &server.base,
                &bytes,
                "clip.mp4",
                "My first clip",
                256 * 1024,
            )
            .await;
            (
                status["media_id"].as_str().unwrap().to_string(),
                status["id"].as_str().unwrap().to_string(),
            )
        }
    };

    let (status, media) = server.get_json(&format!("/api/v1/media/{media_id}")).await;
    assert_eq!(status, 200);
    assert!(
        ["processing", "ready"].contains(&media["state"].as_str().unwrap()),
        "{media}"
    );
    assert_eq!(media["title"], "My first clip");
    assert_eq!(media["size"], bytes.len());
    assert_eq!(media["sha256"], expected_sha256.as_str());

    let media = server
        .wait_for_media(&media_id, READY_DEADLINE, |m| m["state"] != "processing")
        .await;
    assert_eq!(media["state"], "ready", "{media}");
    assert_eq!(media["width"], 1280);
    assert_eq!(media["height"], 720);
    let duration = media["duration_s"].as_f64().unwrap();
    assert!((duration - 4.0).abs() < 0.2, "duration {duration}");
    let renditions: Vec<&str> = media["renditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        renditions,
        ["720p", "480p", "360p"],
        "1080p is above the source and skipped"
    );

    // The master playlist lists every rendition.
    let master_path = format!("/api/v1/media/{media_id}/hls/master.m3u8");
    let response = server.get(&master_path).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.apple.mpegurl"
    );
    let master = response.text().await.unwrap();
    for name in &renditions {
        assert!(master.contains(&format!("{name}/index.m3u8")), "{master}");
    }

    // Each media playlist carries real durations adding up to the clip, and every file it names
    // is served.
    for name in &renditions {
        let playlist = server
            .get(&format!("/api/v1/media/{media_id}/hls/{name}/index.m3u8"))
            .await
            .text()
            .await
            .unwrap();
        let total = playlist_seconds(&playlist);
        assert!(
            (total - duration).abs() < 0.2,
            "{name}: segments add up to {total}s"
        );
        for file in playlist_files(&playlist) {
            let response = server
                .get(&format!("/api/v1/media/{media_id}/hls/{name}/{file}"))
                .await;
            assert_eq!(response.status(), 200, "{name}/{file}");
            assert_eq!(
                response.headers()["cache-control"],
                "public, max-age=31536000, immutable"
            );
            assert!(!response.bytes().await.unwrap().is_empty());
        }
    }

    // Ranges and revalidation on a segment.
    let segment_url = server.url(&format!("/api/v1/media/{media_id}/hls/360p/seg_00000.m4s"));
    let whole = server.client.get(&segment_url).send().await.unwrap();
    let etag = whole.headers()["etag"].clone();
    let whole = whole.bytes().await.unwrap();
    let ranged = server
        .client
        .get(&segment_url)
        .header("range", "bytes=10-109")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), 206);
    assert_eq!(
        ranged.headers()["content-range"],
        format!("bytes 10-109/{}", whole.len()).as_str()
    );
    assert_eq!(ranged.bytes().await.unwrap(), whole.slice(10..110));
    let revalidated = server
        .client
        .get(&segment_url)
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(revalidated.status(), 304);

    // A real player reads the stream through HTTP.
    let probe_url = server.url(&master_path);
    let report = tokio::task::spawn_blocking(move || ffprobe(&probe_url))
        .await
        .unwrap();
    let streams = report["streams"].as_array().unwrap();
    assert!(
        streams
            .iter()
            .any(|s| s["codec_name"] == "h264" && s["height"] == 720),
        "{report}"
    );
    assert!(streams.iter().any(|s| s["codec_name"] == "aac"), "{report}");
    let played: f64 = report["format"]["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((played - duration).abs() < 0.3, "played {played}s");

    // The thumbnail is a JPEG.
    let thumbnail = server
        .get(&format!("/api/v1/media/{media_id}/thumbnail.jpg"))
        .await;
    assert_eq!(thumbnail.status(), 200);
    assert_eq!(thumbnail.headers()["content-type"], "image/jpeg");
    assert_eq!(&thumbnail.bytes().await.unwrap()[..2], &[0xFF, 0xD8]);

    // The job that did it is on record.
    let (status, jobs) = server.alice_get_json("/api/v1/jobs?state=succeeded").await;
    assert_eq!(status, 200);
    let job = &jobs["items"][0];
    assert_eq!(job["media_id"], media_id.as_str());
    assert_eq!(
        (job["progress"].as_u64(), job["attempts"].as_u64()),
        (Some(100), Some(1))
    );

    // The source is stored byte-identical (read back through the blob store in use).
    let source_key = format!("uploads/{upload_id}/source");
    let stored = server.actors.blobs.get(&source_key).await.unwrap();
    assert_eq!(sha256_hex(&stored), expected_sha256);

    // And the platform reports itself healthy, with Prometheus-valid metrics.
    let (status, health) = server.get_json("/health").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "ok");
    for check in ["store", "blobs", "ffmpeg", "disk", "actors"] {
        assert_eq!(health["checks"][check]["status"], "ok", "{check}: {health}");
    }
    let ready = server.get("/ready").await;
    assert_eq!(ready.status(), 200);
    let metrics = server.get("/metrics").await;
    assert!(metrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains(r#"streamgate_uploads_total{outcome="finished"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"streamgate_transcode_jobs_total{outcome="succeeded"} 1"#));
    assert!(
        text.contains(r#"route="/api/v1/media/{media_id}/hls/master.m3u8""#),
        "routes are labelled by pattern"
    );
    promtool_check_metrics(&text);
    media_id
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// `promtool check metrics` must accept the exposition (Debian: apt-get install prometheus).
pub fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (apt-get install --no-install-recommends prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool rejected /metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
