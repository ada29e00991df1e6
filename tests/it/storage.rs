//! Storage abuse against the real server: a full disk, the upload quota under concurrent
//! uploads on both upload paths, oversized metadata, pruning of tus records, and what `/health`
//! and error bodies give away.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::{
    harness::poll,
    server::{files_under, status_and_json, TestServer},
    tus::{fake_video, upload_via_tus},
};

const TUS: &str = "1.0.0";
const OCTETS: &str = "application/offset+octet-stream";

fn tus(client: &reqwest::Client, method: Method, url: String) -> reqwest::RequestBuilder {
    client.request(method, url).header("Tus-Resumable", TUS)
}

/// PATCHes `length` bytes of fake video at offset 0 of the tus upload at `url`.
async fn patch_from_start(
    client: &reqwest::Client,
    url: String,
    length: usize,
) -> reqwest::Response {
    tus(client, Method::PATCH, url)
        .header("Content-Type", OCTETS)
        .header("Upload-Offset", "0")
        .body(fake_video(length))
        .send()
        .await
        .unwrap()
}

async fn tus_create(
    server: &TestServer,
    client: &reqwest::Client,
    length: u64,
) -> reqwest::Response {
    tus(client, Method::POST, server.url("/api/v1/uploads"))
        .header("Upload-Length", length.to_string())
        .send()
        .await
        .unwrap()
}

/// The disk is "full" because `storage.min_free_disk_mb` is set far above the free space of the
/// test's disk: the same check a nearly full disk trips (a real ENOSPC from a write maps to the
/// same answer; `a_write_to_a_full_disk_is_insufficient_storage` provokes one on /dev/full).
#[tokio::test]
async fn a_full_disk_refuses_both_upload_paths_with_507_and_health_says_full() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_path_buf();
    // An upload begun while there is room, to be continued once the disk is "full".
    let location = {
        let dir = data_dir.clone();
        let server = TestServer::start_with(move |config| config.storage.data_dir = dir);
        let alice = server.alice_client().await;
        let created = tus_create(&server, &alice, 200_000).await;
        assert_eq!(created.status(), 201);
        created.headers()["location"].to_str().unwrap().to_string()
    };
    let dir = data_dir.clone();
    let server = TestServer::start_with(move |config| {
        config.storage.data_dir = dir;
        config.storage.min_free_disk_mb = 1 << 40;
    });
    let alice = server.alice_client().await;

    let (status, body) = server.upload(fake_video(100_000), "clip.mp4", None).await;
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["code"], "insufficient_storage");
    assert!(
        body["message"].as_str().unwrap().contains("disk is full"),
        "{body}"
    );

    let (status, body) = status_and_json(tus_create(&server, &alice, 1000).await).await;
    assert_eq!(
        (status, &body["code"]),
        (507, &Value::from("insufficient_storage"))
    );

    let patched = patch_from_start(&alice, server.url(&location), 10_000).await;
    let (status, body) = status_and_json(patched).await;
    assert_eq!(
        (status, &body["code"]),
        (507, &Value::from("insufficient_storage"))
    );
    // Nothing of the refused PATCH was kept.
    let head = tus(&alice, Method::HEAD, server.url(&location))
        .send()
        .await
        .unwrap();
    assert_eq!(head.headers()["upload-offset"], "0");

    let (status, health) = server.get_json("/health").await;
    assert_eq!(status, 207, "{health}");
    assert_eq!(health["checks"]["disk"]["status"], "degraded", "{health}");
    let detail = health["checks"]["disk"]["detail"].as_str().unwrap();
    assert!(detail.starts_with("full"), "{health}");
}

/// Concurrent uploads of one owner race for the last of the quota: exactly the ones that fit are
/// accepted, on the one-shot and the tus path alike (they share the owner's counter); deleting
/// media and terminating an upload give their bytes back.
#[tokio::test]
async fn the_quota_holds_under_concurrent_uploads_on_both_paths_and_deleting_frees_it() {
    const QUOTA: u64 = 1_000_000;
    const FILE: usize = 300_000;
    let server = TestServer::start_with(|config| config.upload.quota_bytes = QUOTA);
    let alice = server.alice_client().await;

    // Four one-shot uploads of 300,000 bytes at once: three fit in 1,000,000, one does not.
    let uploads =
        (0..4).map(|n| server.upload(fake_video(FILE), "clip.mp4", Some(["a", "b", "c", "d"][n])));
    let results = futures_util::future::join_all(uploads).await;
    let accepted: Vec<&Value> = results
        .iter()
        .filter(|(status, _)| *status == 201)
        .map(|(_, body)| body)
        .collect();
    let refused: Vec<&Value> = results
        .iter()
        .filter(|(status, _)| *status == 507)
        .map(|(_, body)| body)
        .collect();
    assert_eq!((accepted.len(), refused.len()), (3, 1), "{results:?}");
    assert_eq!(refused[0]["code"], "quota_exceeded");

    // 900,000 held: three tus creations of 50,000 race for the last 100,000; two get it.
    let creations = (0..3).map(|_| tus_create(&server, &alice, 50_000));
    let created = futures_util::future::join_all(creations).await;
    let statuses: Vec<u16> = created.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 507).count(),
        1,
        "{statuses:?}"
    );
    let (status, body) = server.upload(fake_video(1000), "clip.mp4", None).await;
    assert_eq!(
        (status, &body["code"]),
        (507, &Value::from("quota_exceeded"))
    );

    // Terminating an unfinished tus upload gives its 50,000 back, to the next one only.
    let location = created
        .iter()
        .find(|r| r.status() == 201)
        .map(|r| r.headers()["location"].to_str().unwrap().to_string())
        .unwrap();
    let terminated = tus(&alice, Method::DELETE, server.url(&location))
        .send()
        .await
        .unwrap();
    assert_eq!(terminated.status(), 204);
    assert_eq!(tus_create(&server, &alice, 50_000).await.status(), 201);
    assert_eq!(tus_create(&server, &alice, 1).await.status(), 507);

    // Near the quota: deleting a media item frees its 300,000 bytes for the next upload.
    let (status, _) = server.upload(fake_video(250_000), "clip.mp4", None).await;
    assert_eq!(status, 507);
    let media_id = accepted[0]["media_id"].as_str().unwrap();
    let deleted = alice
        .delete(server.url(&format!("/api/v1/media/{media_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let (status, body) = server.upload(fake_video(250_000), "clip.mp4", None).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn oversized_upload_metadata_and_repeated_form_fields_are_refused() {
    let server = TestServer::start();
    let alice = server.alice_client().await;
    let metadata = |bytes: usize| format!("title {}", "A".repeat(bytes - "title ".len()));
    let create = |raw: String| {
        tus(&alice, Method::POST, server.url("/api/v1/uploads"))
            .header("Upload-Length", "1000")
            .header("Upload-Metadata", raw)
            .send()
    };
    let (status, body) = status_and_json(create(metadata(4097)).await.unwrap()).await;
    assert_eq!(
        (status, &body["code"]),
        (400, &Value::from("metadata_too_large"))
    );
    // At the cap it is fine (the title itself is then checked like any title).
    let at_cap = format!("filename {}", "QUFB".repeat((4096 - "filename ".len()) / 4));
    assert_eq!(create(at_cap).await.unwrap().status(), 201);

    let form = reqwest::multipart::Form::new()
        .text("title", "one")
        .text("title", "two")
        .part(
            "file",
            reqwest::multipart::Part::bytes(fake_video(10_000)).file_name("clip.mp4"),
        );
    let response = alice
        .post(server.url("/api/v1/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(response).await;
    assert_eq!(
        (status, &body["code"]),
        (400, &Value::from("duplicate_field"))
    );
}

/// Finished tus records go after `upload.finished_retention_s` on the sweep timer; the media
/// they made stays.
#[tokio::test]
async fn finished_tus_records_are_pruned_after_their_retention() {
    let server = TestServer::start_with(|config| {
        config.upload.finished_retention_s = 1;
        config.upload.expiry_s = 2;
        config.upload.cleanup_interval_s = 1;
    });
    let alice = server.alice_client().await;
    let finished = upload_via_tus(
        &alice,
        &server.base,
        &fake_video(50_000),
        "a.mp4",
        "a",
        20_000,
    )
    .await;
    let (id, media_id) = (
        finished["id"].as_str().unwrap().to_string(),
        finished["media_id"].as_str().unwrap().to_string(),
    );
    let url = server.url(&format!("/api/v1/uploads/{id}"));
    poll(
        Duration::from_secs(15),
        "the finished record to be pruned",
        || async { alice.get(&url).send().await.unwrap().status() == 404 },
    )
    .await;
    let (status, media) = server.get_json(&format!("/api/v1/media/{media_id}")).await;
    assert_eq!(status, 200, "{media}");
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"streamgate_retention_pruned_total{record="tus_upload"} 1"#),
        "{metrics}"
    );
}

/// A blob write that fails (the uploads folder replaced by a file, so every write under it fails
/// with ENOTDIR, even as root) and a broken health probe: the client sees neither the data
/// directory's path nor the backend's message, and `/health` turns bad on its own sampling.
#[tokio::test]
async fn blob_failures_reach_clients_without_server_paths() {
    let server = TestServer::start();
    let alice = server.alice_client().await;
    let blobs = server.data_dir.join("blobs");
    let uploads = blobs.join("uploads");
    let _ = std::fs::remove_dir_all(&uploads);
    std::fs::write(&uploads, b"in the way").unwrap();
    let data_dir = server.data_dir.to_string_lossy().to_string();
    let leaks =
        |body: &str| body.contains(&data_dir) || body.contains("blobs/") || body.contains("/tmp");

    let response = alice
        .post(server.url("/api/v1/upload"))
        .multipart(reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(fake_video(100_000)).file_name("clip.mp4"),
        ))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_server_error(), "{response:?}");
    let body = response.text().await.unwrap();
    assert!(
        body.contains("blobs_unavailable") && !leaks(&body),
        "{body}"
    );

    // tus keeps its bytes outside the blob store until the last PATCH adopts them.
    let created = tus_create(&server, &alice, 10_000).await;
    let location = created.headers()["location"].to_str().unwrap().to_string();
    let patched = patch_from_start(&alice, server.url(&location), 10_000).await;
    assert!(patched.status().is_server_error(), "{patched:?}");
    let body = patched.text().await.unwrap();
    assert!(!leaks(&body), "{body}");

    let probe = blobs.join(".health");
    let _ = std::fs::remove_dir_all(&probe);
    std::fs::write(&probe, b"in the way").unwrap();
    poll(
        Duration::from_secs(10),
        "/health to report the blob store down",
        || async { server.get("/health").await.status() == 503 },
    )
    .await;
    let body = server.get("/health").await.text().await.unwrap();
    assert!(!leaks(&body), "{body}");
    assert!(body.contains("blob store not writable"), "{body}");
}

/// `/health` answers from the monitor's last sample: a burst of anonymous requests does not
/// write a single probe blob (the probe folder's mtime changes with every probe written).
#[tokio::test]
async fn health_requests_do_not_write_to_the_blob_store() {
    let server = TestServer::start_with(|config| config.monitor.sample_interval_ms = 3_600_000);
    let probe_dir = server.data_dir.join("blobs").join(".health");
    poll(Duration::from_secs(10), "the first sample", || async {
        server.get_json("/health").await.1["sampled_at"].is_string()
    })
    .await;
    let (_, first) = server.get_json("/health").await;
    let written = std::fs::metadata(&probe_dir).unwrap().modified().unwrap();
    let entries = files_under(&probe_dir).len();
    for _ in 0..50 {
        let (_, health) = server.get_json("/health").await;
        assert_eq!(health["checks"]["blobs"]["status"], "ok", "{health}");
        assert_eq!(health["sampled_at"], first["sampled_at"]);
    }
    assert_eq!(
        std::fs::metadata(&probe_dir).unwrap().modified().unwrap(),
        written
    );
    assert_eq!(files_under(&probe_dir).len(), entries);
}
