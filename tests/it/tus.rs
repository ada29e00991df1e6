//! tus 1.0.0 resumable uploads against the real server: the protocol's statuses and headers,
//! racing PATCHes, quota and expiry, an independent client (tuspy) resuming in a second process,
//! and `kill -9` of the real binary in the middle of a PATCH.

use std::{path::Path, process::Command, time::Duration};

use base64::Engine;
use reqwest::{header::HeaderMap, Method, Response};
use serde_json::Value;
use sha2::Digest;

use crate::server::{make_clip, python_venv, TestServer};

const TUS: &str = "1.0.0";
const OCTETS: &str = "application/offset+octet-stream";

/// Bytes that sniff as MP4 (an `ftyp` box) followed by a deterministic pattern.
pub fn fake_video(length: usize) -> Vec<u8> {
    let mut bytes = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2".to_vec();
    let mut state: u32 = 0x9E37_79B9;
    while bytes.len() < length {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(length);
    bytes
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn header(response: &Response, name: &str) -> String {
    header_of(response.headers(), name)
}

fn header_of(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|value| value.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// GET `url` as JSON with `client` (which carries a session).
async fn get_json_as(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// A raw tus client on reqwest, for the statuses a stock client never provokes.
struct Raw<'a> {
    client: &'a reqwest::Client,
    base: &'a str,
}

impl Raw<'_> {
    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .header("Tus-Resumable", TUS)
    }

    async fn create(&self, length: u64, metadata: &str) -> String {
        let response = self
            .request(Method::POST, "/api/v1/uploads")
            .header("Upload-Length", length.to_string())
            .header("Upload-Metadata", metadata)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{:?}", response.text().await);
        header(&response, "location")
    }

    async fn patch(&self, location: &str, offset: u64, body: Vec<u8>) -> Response {
        self.request(Method::PATCH, location)
            .header("Content-Type", OCTETS)
            .header("Upload-Offset", offset.to_string())
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// A PATCH of `length` bytes that holds the upload's lock, having sent at most `sent` from
    /// the start of the upload (the test feeds or ends the rest through the sender).
    ///
    /// The probes that look for the lock take it themselves for a moment (the offset is checked
    /// under it), so the PATCH can arrive in that moment and be refused 423; it then waits for
    /// the rest of its body before it answers, which the probes cannot tell from a PATCH still
    /// on its way. So an attempt the probes do not see holding is abandoned and made again, from
    /// the offset it left, with more patience each time.
    async fn hold(
        &self,
        location: &str,
        sent: &[u8],
        length: u64,
    ) -> (BodySender, PendingResponse) {
        let mut patience = Duration::from_secs(2);
        for _ in 0..5 {
            let offset = self.offset_once_free(location).await;
            let from = (offset as usize).min(sent.len());
            let attempt = self.try_hold(location, offset, &sent[from..], length, patience);
            if let Some(held) = attempt.await {
                return held;
            }
            patience *= 2;
        }
        panic!("a PATCH never held the lock in five attempts");
    }

    /// One attempt of [`Raw::hold`]: `None`, with the PATCH ended, if no probe saw it hold the
    /// lock within `patience`. Until one does, the rest of `sent` trickles in from a task of its
    /// own, however slow the probes are, so no body timeout ends the PATCH first.
    async fn try_hold(
        &self,
        location: &str,
        offset: u64,
        sent: &[u8],
        length: u64,
        patience: Duration,
    ) -> Option<(BodySender, PendingResponse)> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let (sender, pending) = held_patch(
            self.client,
            format!("{}{location}", self.base),
            offset,
            length,
        );
        let (first, rest) = sent.split_at(sent.len() / 2);
        sender.send(Ok(first.to_vec())).await.unwrap();
        let feeding = std::sync::Arc::new(AtomicBool::new(true));
        let feeder = tokio::spawn({
            let (sender, feeding, rest) = (sender.clone(), feeding.clone(), rest.to_vec());
            async move {
                let mut ticks = tokio::time::interval(Duration::from_millis(100));
                for piece in rest.chunks(64) {
                    ticks.tick().await;
                    if !feeding.load(Ordering::Relaxed)
                        || sender.send(Ok(piece.to_vec())).await.is_err()
                    {
                        break;
                    }
                }
            }
        });
        let started = tokio::time::Instant::now();
        let mut ticks = tokio::time::interval(Duration::from_millis(100));
        let held = loop {
            ticks.tick().await;
            // A wrong offset, so a probe never takes the upload for good: 409 until the PATCH
            // holds the lock, 423 after.
            if self.patch(location, offset + 1, vec![0; 10]).await.status() == 423 {
                break true;
            }
            if started.elapsed() > patience {
                break false;
            }
        };
        feeding.store(false, Ordering::Relaxed);
        feeder.await.unwrap();
        if held {
            return Some((sender, pending));
        }
        let _ = sender.send(Err(std::io::Error::other("abandoned"))).await;
        drop(sender);
        let _ = pending.await.unwrap();
        None
    }

    /// Once nothing holds the upload's lock, sends the rest of `bytes` from its offset and
    /// checks the upload finished; returns the offset it resumed at.
    async fn resume_once_free(&self, location: &str, bytes: &[u8]) -> u64 {
        let resumed_at = self.offset_once_free(location).await;
        let rest = bytes[resumed_at as usize..].to_vec();
        assert_eq!(self.patch(location, resumed_at, rest).await.status(), 204);
        let (_, json) = get_json_as(self.client, &format!("{}{location}", self.base)).await;
        assert_eq!(json["state"], "finished", "{json}");
        resumed_at
    }

    /// The upload's offset once nothing holds its lock any more.
    async fn offset_once_free(&self, location: &str) -> u64 {
        let offset = std::sync::Arc::new(std::sync::Mutex::new(0u64));
        crate::harness::poll(Duration::from_secs(20), "the lock to be released", || {
            let offset = offset.clone();
            async move {
                let (status, now) = self.offset(location).await;
                assert_eq!(status, 200);
                // A zero-byte PATCH at the right offset proves the lock is free.
                let probe = self.patch(location, now, Vec::new()).await.status();
                *offset.lock().unwrap() = now;
                probe == 204
            }
        })
        .await;
        let now = *offset.lock().unwrap();
        now
    }

    async fn offset(&self, location: &str) -> (u16, u64) {
        let response = self.request(Method::HEAD, location).send().await.unwrap();
        let offset = header(&response, "upload-offset").parse().unwrap_or(0);
        (response.status().as_u16(), offset)
    }
}

/// Uploads `bytes` through tus in `chunk`-sized PATCHes; returns the finished upload's status.
pub async fn upload_via_tus(
    client: &reqwest::Client,
    base: &str,
    bytes: &[u8],
    filename: &str,
    title: &str,
    chunk: usize,
) -> Value {
    let raw = Raw { client, base };
    let metadata = format!(
        "filename {},title {}",
        b64(filename.as_bytes()),
        b64(title.as_bytes())
    );
    let location = raw.create(bytes.len() as u64, &metadata).await;
    let mut offset = 0;
    for piece in bytes.chunks(chunk) {
        let response = raw.patch(&location, offset, piece.to_vec()).await;
        assert_eq!(response.status(), 204, "{:?}", response.text().await);
        offset = header(&response, "upload-offset").parse().unwrap();
    }
    let status: Value = crate::server::fetch_json(client, format!("{base}{location}")).await;
    assert_eq!(status["state"], "finished", "{status}");
    status
}

/// A server taking uploads of up to 1,000,000 bytes, and ALICE's client for it.
struct Tus {
    server: TestServer,
    alice: reqwest::Client,
}

impl Tus {
    async fn start() -> Self {
        let server = TestServer::start_with(|config| config.upload.max_size_bytes = 1_000_000);
        let alice = server.alice_client().await;
        Self { server, alice }
    }

    fn raw(&self) -> Raw<'_> {
        Raw {
            client: &self.alice,
            base: &self.server.base,
        }
    }

    /// Asserts the upload metrics hold `lines` and the audit log `count` entries per action.
    async fn assert_counted(&self, lines: &[&str], audited: &[(&str, usize)]) {
        let metrics = self.server.get("/metrics").await.text().await.unwrap();
        for line in lines {
            assert!(metrics.contains(line), "{line} missing:\n{metrics}");
        }
        for (action, count) in audited {
            let entries = self
                .server
                .actors
                .audit
                .list(streamgate_actors::store::AuditFilter {
                    action: Some((*action).into()),
                    limit: 100,
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(entries.len(), *count, "{action}");
        }
    }
}

#[tokio::test]
async fn tus_options_advertise_the_protocol_and_cors() {
    let tus = Tus::start().await;
    let server = &tus.server;
    // Capabilities, with CORS for browsers.
    let options = server
        .client
        .request(Method::OPTIONS, server.url("/api/v1/uploads"))
        .header("Origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(options.status(), 204);
    assert_eq!(header(&options, "tus-version"), TUS);
    assert_eq!(header(&options, "tus-resumable"), TUS);
    assert_eq!(header(&options, "tus-max-size"), "1000000");
    assert_eq!(header(&options, "tus-checksum-algorithm"), "sha1,sha256");
    for extension in [
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "termination",
        "checksum",
        "expiration",
    ] {
        assert!(header(&options, "tus-extension")
            .split(',')
            .any(|e| e == extension));
    }
    assert_eq!(header(&options, "access-control-allow-origin"), "*");
    assert!(header(&options, "access-control-expose-headers").contains("Upload-Offset"));
}

#[tokio::test]
async fn tus_creation_needs_the_protocol_version_a_size_within_the_limit_and_bytes() {
    let tus = Tus::start().await;
    let (server, alice, raw) = (&tus.server, &tus.alice, tus.raw());
    // Tus-Resumable is required; the answer names the version we speak.
    let response = alice
        .post(server.url("/api/v1/uploads"))
        .header("Upload-Length", "10")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 412);
    assert_eq!(header(&response, "tus-version"), TUS);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "unsupported_tus_version");

    // Too large at creation.
    let response = raw
        .request(Method::POST, "/api/v1/uploads")
        .header("Upload-Length", "1000001")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "upload_too_large");

    // Empty uploads are not videos.
    let response = raw
        .request(Method::POST, "/api/v1/uploads")
        .header("Upload-Length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn tus_head_reports_offset_length_metadata_and_expiry_uncached() {
    let tus = Tus::start().await;
    let raw = tus.raw();
    let video = fake_video(300_000);
    let location = raw
        .create(video.len() as u64, &format!("filename {}", b64(b"a.mp4")))
        .await;
    assert!(location.starts_with("/api/v1/uploads/"), "{location}");

    // HEAD: offset, length, metadata echoed, expiry, never cached.
    let head = raw.request(Method::HEAD, &location).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "upload-offset"), "0");
    assert_eq!(header(&head, "upload-length"), "300000");
    assert_eq!(
        header(&head, "upload-metadata"),
        format!("filename {}", b64(b"a.mp4"))
    );
    assert_eq!(header(&head, "cache-control"), "no-store");
    assert!(header(&head, "upload-expires").ends_with(" GMT"));
}

#[tokio::test]
async fn tus_patch_refuses_wrong_types_offsets_checksums_and_excess_bytes() {
    let tus = Tus::start().await;
    let (server, alice, raw) = (&tus.server, &tus.alice, tus.raw());
    let video = fake_video(300_000);
    let location = raw
        .create(video.len() as u64, &format!("filename {}", b64(b"a.mp4")))
        .await;
    // Wrong content type, wrong offset.
    let response = raw
        .request(Method::PATCH, &location)
        .header("Content-Type", "application/octet-stream")
        .header("Upload-Offset", "0")
        .body(video[..100].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let response = raw.patch(&location, 5, video[..100].to_vec()).await;
    assert_eq!(response.status(), 409);
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        "offset_mismatch"
    );

    // A good chunk with a sha256 checksum, then a bad one with sha1: 460, offset unchanged.
    let first = &video[..100_000];
    let response = raw
        .request(Method::PATCH, &location)
        .header("Content-Type", OCTETS)
        .header("Upload-Offset", "0")
        .header(
            "Upload-Checksum",
            format!("sha256 {}", b64(&sha2::Sha256::digest(first))),
        )
        .body(first.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(header(&response, "upload-offset"), "100000");
    assert!(header(&response, "upload-expires").ends_with(" GMT"));
    let response = raw
        .request(Method::PATCH, &location)
        .header("Content-Type", OCTETS)
        .header("Upload-Offset", "100000")
        .header("Upload-Checksum", format!("sha1 {}", b64(&[0u8; 20])))
        .body(video[100_000..200_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 460);
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        "checksum_mismatch"
    );
    assert_eq!(raw.offset(&location).await, (200, 100_000));
    let response = raw
        .request(Method::PATCH, &location)
        .header("Content-Type", OCTETS)
        .header("Upload-Offset", "100000")
        .header("Upload-Checksum", "md5 AAAA")
        .body(video[100_000..200_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // Bytes beyond Upload-Length are refused and discarded.
    let mut too_much = video[100_000..].to_vec();
    too_much.extend_from_slice(b"extra");
    let response = raw.patch(&location, 100_000, too_much).await;
    assert_eq!(response.status(), 413);
    assert_eq!(raw.offset(&location).await, (200, 100_000));

    // The JSON status while receiving; the partial is not a media record.
    let (status, json) = get_json_as(alice, &server.url(&location)).await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            json["offset"].as_u64(),
            json["length"].as_u64(),
            json["state"].as_str()
        ),
        (Some(100_000), Some(300_000), Some("receiving"))
    );
    assert!(json.get("media_id").is_none());
    let (_, media) = server.get_json("/api/v1/media").await;
    assert_eq!(media["items"].as_array().unwrap().len(), 0, "{media}");
    tus.assert_counted(
        &[
            r#"streamgate_uploads_total{outcome="created"} 1"#,
            "streamgate_upload_checksum_failures_total 1",
        ],
        &[("upload.create", 1)],
    )
    .await;
}

#[tokio::test]
async fn tus_termination_removes_the_upload_and_its_bytes() {
    let tus = Tus::start().await;
    let (server, raw) = (&tus.server, tus.raw());
    let video = fake_video(300_000);
    let location = raw
        .create(video.len() as u64, &format!("filename {}", b64(b"a.mp4")))
        .await;
    let response = raw.patch(&location, 0, video[..100_000].to_vec()).await;
    assert_eq!(response.status(), 204);
    // Termination: gone afterwards, bytes too.
    let response = raw.request(Method::DELETE, &location).send().await.unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(raw.offset(&location).await.0, 404);
    assert!(crate::server::files_under(&server.data_dir.join("partials")).is_empty());
    tus.assert_counted(
        &[
            r#"streamgate_uploads_total{outcome="created"} 1"#,
            r#"streamgate_uploads_total{outcome="terminated"} 1"#,
        ],
        &[("upload.create", 1), ("upload.terminate", 1)],
    )
    .await;
}

#[tokio::test]
async fn tus_refuses_bytes_that_are_not_a_video_and_keeps_none() {
    let tus = Tus::start().await;
    let raw = tus.raw();
    // Not a video: refused once the first bytes are in, and nothing is kept.
    let location = raw.create(1000, "").await;
    let response = raw.patch(&location, 0, vec![b'x'; 1000]).await;
    assert_eq!(response.status(), 415);
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        "unsupported_container"
    );
    assert_eq!(raw.offset(&location).await, (200, 0));
}

#[tokio::test]
async fn a_deferred_length_upload_finishes_into_one_media_record_and_one_job() {
    let tus = Tus::start().await;
    let (server, alice, raw) = (&tus.server, &tus.alice, tus.raw());
    let video = fake_video(300_000);
    // Deferred length with creation-with-upload, the length arriving with the last PATCH.
    let response = raw
        .request(Method::POST, "/api/v1/uploads")
        .header("Upload-Defer-Length", "1")
        .header("Upload-Metadata", format!("title {}", b64(b"Deferred")))
        .header("Content-Type", OCTETS)
        .body(video[..150_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(header(&response, "upload-offset"), "150000");
    let location = header(&response, "location");
    let head = raw.request(Method::HEAD, &location).send().await.unwrap();
    assert_eq!(header(&head, "upload-defer-length"), "1");
    let response = raw
        .request(Method::PATCH, &location)
        .header("Content-Type", OCTETS)
        .header("Upload-Offset", "150000")
        .header("Upload-Length", "300000")
        .body(video[150_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(header(&response, "upload-offset"), "300000");
    assert!(
        header(&response, "upload-expires").is_empty(),
        "finished uploads do not expire"
    );

    // Finished: a media record with the metadata and the whole file's hash, one job.
    let (_, json) = get_json_as(alice, &server.url(&location)).await;
    assert_eq!(json["state"], "finished", "{json}");
    let media_id = json["media_id"].as_str().unwrap().to_string();
    let (status, media) = server.get_json(&format!("/api/v1/media/{media_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(media["title"], "Deferred");
    assert_eq!(media["sha256"], sha256_hex(&video).as_str());
    assert_eq!(media["size"], 300_000);
    let (_, jobs) = server.alice_get_json("/api/v1/jobs?limit=100").await;
    let for_media = jobs["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|job| job["media_id"] == media_id.as_str())
        .count();
    assert_eq!(for_media, 1);
    let stored = std::fs::read(server.data_dir.join(format!(
        "blobs/uploads/{}/source",
        location.rsplit('/').next().unwrap()
    )))
    .unwrap();
    assert_eq!(sha256_hex(&stored), sha256_hex(&video));
    // A finished upload takes no more bytes and cannot be terminated.
    assert_eq!(raw.patch(&location, 300_000, vec![1]).await.status(), 409);
    assert_eq!(
        raw.request(Method::DELETE, &location)
            .send()
            .await
            .unwrap()
            .status(),
        409
    );
    tus.assert_counted(
        &[
            r#"streamgate_uploads_total{outcome="created"} 1"#,
            r#"streamgate_uploads_total{outcome="finished"} 1"#,
            "streamgate_upload_duration_seconds_count 1",
        ],
        &[("upload.create", 1), ("upload.finish", 1)],
    )
    .await;
}

#[tokio::test]
async fn unknown_upload_ids_are_404_with_json() {
    let tus = Tus::start().await;
    let (server, alice) = (&tus.server, &tus.alice);
    // Unknown ids are 404 with our JSON.
    let (status, body) = get_json_as(alice, &server.url("/api/v1/uploads/not-an-id")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("upload_not_found"))
    );
}

pub(crate) type BodySender = tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>;
pub(crate) type PendingResponse = tokio::task::JoinHandle<Result<Response, reqwest::Error>>;

/// Opens a PATCH whose body the test feeds by hand; dropping the sender ends it abruptly.
fn held_patch(
    client: &reqwest::Client,
    url: String,
    offset: u64,
    length: u64,
) -> (BodySender, PendingResponse) {
    held_patch_with(client, url, offset, length, None)
}

/// [`held_patch`] with an optional `Upload-Checksum` header.
pub(crate) fn held_patch_with(
    client: &reqwest::Client,
    url: String,
    offset: u64,
    length: u64,
    checksum: Option<String>,
) -> (BodySender, PendingResponse) {
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let body = reqwest::Body::wrap_stream(tokio_stream_from(receiver));
    let mut request = client
        .patch(url)
        .header("Tus-Resumable", TUS)
        .header("Content-Type", OCTETS)
        .header("Upload-Offset", offset.to_string())
        .header("Content-Length", length.to_string());
    if let Some(checksum) = checksum {
        request = request.header("Upload-Checksum", checksum);
    }
    (sender, tokio::spawn(request.body(body).send()))
}

pub(crate) fn sha256_header(bytes: &[u8]) -> String {
    format!("sha256 {}", b64(&sha2::Sha256::digest(bytes)))
}

fn tokio_stream_from(
    mut receiver: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

#[tokio::test]
async fn racing_patches_one_proceeds_and_a_vanished_client_releases_the_lock() {
    let server = TestServer::start();
    let alice = server.alice_client().await;
    let raw = Raw {
        client: &alice,
        base: &server.base,
    };
    let video = fake_video(400_000);
    let location = raw.create(video.len() as u64, "").await;
    let other = raw.create(video.len() as u64, "").await;

    // The first PATCH holds the upload while its body trickles in.
    let (sender, first) = raw.hold(&location, &video[..50_000], 200_000).await;
    let response = raw.patch(&location, 0, video[..100].to_vec()).await;
    assert_eq!(response.status(), 423);
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        "upload_locked"
    );
    // Another upload is not held up.
    assert_eq!(
        raw.patch(&other, 0, video[..100_000].to_vec())
            .await
            .status(),
        204
    );

    // The client vanishes mid-body: the lock is released and what arrived is kept.
    sender
        .send(Err(std::io::Error::other("client gone")))
        .await
        .unwrap();
    drop(sender);
    let _ = first.await.unwrap();
    let resumed_at = raw.resume_once_free(&location, &video).await;
    assert!(
        resumed_at <= 50_000,
        "only bytes that arrived count: {resumed_at}"
    );
    let stored = std::fs::read(server.data_dir.join(format!(
        "blobs/uploads/{}/source",
        location.rsplit('/').next().unwrap()
    )))
    .unwrap();
    assert_eq!(sha256_hex(&stored), sha256_hex(&video));
}

/// ALICE's PATCH sends 50,000 bytes and goes silent with its connection open (a phone that lost
/// its network); the same client then resumes on a new connection once the upload is free.
/// Returns the server, the offset it resumed at (checked: what arrived, nothing more), the
/// silent PATCH's response and its still open body.
async fn resume_after_a_silent_patch(
    body_timeout_s: u64,
) -> (TestServer, u64, PendingResponse, BodySender) {
    let server = TestServer::start_with(|config| config.server.body_timeout_s = body_timeout_s);
    let alice = server.alice_client().await;
    let raw = Raw {
        client: &alice,
        base: &server.base,
    };
    let video = fake_video(300_000);
    let location = raw.create(video.len() as u64, "").await;
    let (silent, first) = raw.hold(&location, &video[..50_000], 200_000).await;
    let resumed_at = raw.resume_once_free(&location, &video).await;
    assert!(
        resumed_at > 0 && resumed_at <= 50_000,
        "what arrived is kept, nothing more: {resumed_at}"
    );
    (server, resumed_at, first, silent)
}

const BODY_TIMEOUTS: &str = r#"streamgate_http_timeouts_total{wait="body"}"#;

/// A client silent mid-PATCH: after `server.body_timeout_s` (here shorter than the takeover's
/// 5 s) the PATCH ends, keeps what arrived and frees the upload, instead of holding it until
/// the server restarts.
#[tokio::test]
async fn a_client_silent_mid_patch_frees_its_upload_after_the_body_timeout() {
    let (server, _, _, silent) = resume_after_a_silent_patch(3).await;
    assert_eq!(crate::auth_abuse::metric(&server, BODY_TIMEOUTS).await, 1.0);
    drop(silent);
}

/// A client back on a new connection does not wait for the body timeout: once the old PATCH
/// has sent nothing for 5 s, the owner's request takes the upload over and the old PATCH ends
/// with what it kept. A PATCH still sending is never taken over (`racing_patches_one_proceeds_…`).
#[tokio::test]
async fn a_client_back_on_a_new_connection_takes_its_silent_upload_over() {
    let (server, resumed_at, first, silent) = resume_after_a_silent_patch(600).await;
    let ended = first.await.unwrap().unwrap();
    assert_eq!(ended.status(), 204);
    assert_eq!(header(&ended, "upload-offset"), resumed_at.to_string());
    assert_eq!(crate::auth_abuse::metric(&server, BODY_TIMEOUTS).await, 0.0);
    drop(silent);
}

#[tokio::test]
async fn quota_is_per_owner_and_expired_uploads_are_swept() {
    let server = TestServer::start_with(|config| {
        config.upload.quota_bytes = 500_000;
        config.upload.expiry_s = 2;
        config.upload.cleanup_interval_s = 1;
    });
    let alice = server.alice_client().await;
    let raw = Raw {
        client: &alice,
        base: &server.base,
    };
    let location = raw.create(300_000, "").await;
    let response = raw
        .request(Method::POST, "/api/v1/uploads")
        .header("Upload-Length", "200001")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 507);
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        "quota_exceeded"
    );

    // Deferred length: bytes past the quota are refused with 507 too.
    let response = raw
        .request(Method::POST, "/api/v1/uploads")
        .header("Upload-Defer-Length", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let deferred = header(&response, "location");
    let response = raw.patch(&deferred, 0, fake_video(200_001)).await;
    assert_eq!(response.status(), 507);

    // Some bytes, then silence: the sweep deletes the upload and its partial file.
    assert_eq!(
        raw.patch(&location, 0, fake_video(1000)).await.status(),
        204
    );
    // One partial file each (beside each one's lock file).
    let parts = crate::server::files_under(&server.data_dir.join("partials"))
        .into_iter()
        .filter(|file| file.extension().is_some_and(|ext| ext == "part"))
        .count();
    assert_eq!(parts, 2);
    crate::harness::poll(Duration::from_secs(15), "the upload to expire", || async {
        raw.offset(&location).await.0 == 404
    })
    .await;
    crate::harness::poll(Duration::from_secs(5), "partial files to go", || async {
        crate::server::files_under(&server.data_dir.join("partials")).is_empty()
    })
    .await;
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"streamgate_uploads_total{outcome="expired"} 2"#),
        "{metrics}"
    );
    // The quota is free again.
    raw.create(500_000, "").await;
}

/// Runs the tuspy script; returns its last line (the upload URL) and the whole output.
fn tuspy(
    endpoint: &str,
    token: &str,
    file: &Path,
    store: &Path,
    stop_at: Option<u64>,
) -> (String, String) {
    let python = python_venv().join("bin/python");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/tools/tus_upload.py");
    let mut command = Command::new(&python);
    command
        .arg(&script)
        .arg(endpoint)
        .arg(file)
        .arg(store)
        .args(["--chunk", "65536", "--token", token]);
    if let Some(stop_at) = stop_at {
        command.args(["--stop-at", &stop_at.to_string()]);
    }
    let output = command.output().unwrap_or_else(|error| {
        panic!(
            "cannot run {} ({error}): `bash .ci/test` installs tuspy into target/py",
            python.display()
        )
    });
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "tuspy failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let url = stdout.lines().last().unwrap_or_default().trim().to_string();
    (url, stdout)
}

#[tokio::test]
async fn tuspy_resumes_an_interrupted_upload_from_a_second_process() {
    let server = TestServer::start();
    let alice = server.alice_client().await;
    let scratch = tempfile::tempdir().unwrap();
    let clip = make_clip(scratch.path(), "clip.mp4", "640x360", 3);
    let bytes = std::fs::read(&clip).unwrap();
    assert!(bytes.len() > 4 * 65536, "the clip spans several chunks");
    let store = scratch.path().join("tus-urls.json");
    let endpoint = server.url("/api/v1/uploads");
    let token = server.session().await.to_string();

    // The first client uploads three chunks and exits.
    let (clip_, store_, endpoint_, token_) =
        (clip.clone(), store.clone(), endpoint.clone(), token.clone());
    let (first_url, first) = tokio::task::spawn_blocking(move || {
        tuspy(&endpoint_, &token_, &clip_, &store_, Some(3 * 65536))
    })
    .await
    .unwrap();
    assert!(first.contains("resumed_from=0 offset=196608"), "{first}");
    let (_, status) = get_json_as(&alice, &server.url(&url_path(&first_url))).await;
    assert_eq!(
        (status["offset"].as_u64(), status["state"].as_str()),
        (Some(196_608), Some("receiving"))
    );

    // A second process finds the stored URL and finishes from the server's offset.
    let (clip_, store_, endpoint_, token_) =
        (clip.clone(), store.clone(), endpoint.clone(), token.clone());
    let (second_url, second) =
        tokio::task::spawn_blocking(move || tuspy(&endpoint_, &token_, &clip_, &store_, None))
            .await
            .unwrap();
    assert_eq!(second_url, first_url, "the same upload was resumed");
    assert!(second.contains("resumed_from=196608"), "{second}");

    let (_, status) = get_json_as(&alice, &server.url(&url_path(&first_url))).await;
    assert_eq!(status["state"], "finished", "{status}");
    assert_eq!(status["offset"], bytes.len());
    let media_id = status["media_id"].as_str().unwrap();
    let (_, media) = server.get_json(&format!("/api/v1/media/{media_id}")).await;
    assert_eq!(media["title"], "Interop clip");
    assert_eq!(media["tags"], serde_json::json!(["tus", "interop"]));
    assert_eq!(media["sha256"], sha256_hex(&bytes).as_str());
    let upload_id = first_url.rsplit('/').next().unwrap();
    let stored = std::fs::read(
        server
            .data_dir
            .join(format!("blobs/uploads/{upload_id}/source")),
    )
    .unwrap();
    assert_eq!(sha256_hex(&stored), sha256_hex(&bytes));
    let media = server
        .wait_for_media(media_id, Duration::from_secs(180), |m| {
            m["state"] != "processing"
        })
        .await;
    assert_eq!(media["state"], "ready", "{media}");
}

fn url_path(url: &str) -> String {
    let without_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    format!("/{}", without_scheme.split_once('/').unwrap().1)
}

#[tokio::test]
async fn kill_9_mid_patch_loses_nothing_acknowledged_and_the_upload_resumes() {
    let data = tempfile::tempdir().unwrap();
    let client = crate::server::bearer_client(crate::shutdown::ADMIN_TOKEN);
    let video = fake_video(6 * 1024 * 1024);
    // PATCHes of one MiB, and held PATCHes of two with one and a half sent: past the server's
    // write batch, so some unacknowledged bytes are in the file when it dies.
    let chunk = 1024 * 1024;
    let (held, sent) = (2 * chunk, 3 * chunk / 2);

    let mut server = start_binary(data.path());
    server.wait_ready(&client).await;
    let raw = Raw {
        client: &client,
        base: &server.base,
    };
    // `plain` has two acknowledged PATCHes, then one half-way through its body; `checked` has
    // one acknowledged checksummed PATCH, then a checksummed one half-way through.
    let plain = raw.create(video.len() as u64, "").await;
    for start in [0, chunk] {
        let response = raw
            .patch(&plain, start as u64, video[start..start + chunk].to_vec())
            .await;
        assert_eq!(response.status(), 204);
    }
    let checked = raw.create(video.len() as u64, "").await;
    let response = raw
        .request(Method::PATCH, &checked)
        .header("Content-Type", OCTETS)
        .header("Upload-Offset", "0")
        .header("Upload-Checksum", sha256_header(&video[..chunk]))
        .body(video[..chunk].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);

    let partial_of = |location: &str| {
        data.path().join(format!(
            "partials/{}.part",
            location.rsplit('/').next().unwrap()
        ))
    };
    let (plain_sender, plain_pending) =
        held_patch(&client, server.url(&plain), 2 * chunk as u64, held as u64);
    plain_sender
        .send(Ok(video[2 * chunk..2 * chunk + sent].to_vec()))
        .await
        .unwrap();
    let (checked_sender, checked_pending) = held_patch_with(
        &client,
        server.url(&checked),
        chunk as u64,
        held as u64,
        Some(sha256_header(&video[chunk..chunk + held])),
    );
    checked_sender
        .send(Ok(video[chunk..chunk + sent].to_vec()))
        .await
        .unwrap();
    for (location, acknowledged) in [(&plain, 2 * chunk), (&checked, chunk)] {
        let partial = partial_of(location);
        crate::harness::poll(
            Duration::from_secs(10),
            "unacknowledged bytes to reach the file",
            || async {
                std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0) > acknowledged as u64
            },
        )
        .await;
    }
    server.process.kill();
    drop((plain_sender, checked_sender));
    assert!(plain_pending.await.unwrap().is_err(), "never acknowledged");
    assert!(
        checked_pending.await.unwrap().is_err(),
        "never acknowledged"
    );

    let server = start_binary(data.path());
    server.wait_ready(&client).await;
    let raw = Raw {
        client: &client,
        base: &server.base,
    };
    // Written bytes survive the kill: the offset is at least what was acknowledged, and what
    // it covers is exactly the client's bytes.
    let (status, offset) = raw.offset(&plain).await;
    assert_eq!(status, 200);
    assert!(
        (2 * chunk as u64..=(2 * chunk + sent) as u64).contains(&offset),
        "offset {offset} covers the acknowledged bytes and at most what was sent"
    );
    let kept = std::fs::read(partial_of(&plain)).unwrap();
    assert_eq!(kept.len() as u64, offset, "the file's length is the offset");
    assert_eq!(sha256_hex(&kept), sha256_hex(&video[..kept.len()]));
    // An unverified checksummed PATCH is cut back to its start.
    assert_eq!(raw.offset(&checked).await, (200, chunk as u64));
    assert_eq!(
        std::fs::metadata(partial_of(&checked)).unwrap().len(),
        chunk as u64,
        "unverified bytes are cut off at start-up"
    );

    for (location, offset) in [(&plain, offset as usize), (&checked, chunk)] {
        let mut offset = offset;
        while offset < video.len() {
            let end = (offset + chunk).min(video.len());
            let response = raw
                .patch(location, offset as u64, video[offset..end].to_vec())
                .await;
            assert_eq!(response.status(), 204);
            offset = end;
        }
        let status: Value = crate::server::fetch_json(&client, server.url(location)).await;
        assert_eq!(status["state"], "finished", "{status}");
        let stored = std::fs::read(data.path().join(format!(
            "blobs/uploads/{}/source",
            location.rsplit('/').next().unwrap()
        )))
        .unwrap();
        assert_eq!(sha256_hex(&stored), sha256_hex(&video));
        // The whole-file hash survives the restart (rehashed from the file).
        let media_path = format!("/api/v1/media/{}", status["media_id"].as_str().unwrap());
        let media: Value = crate::server::fetch_json(&client, server.url(&media_path)).await;
        assert_eq!(media["sha256"], sha256_hex(&video), "{media}");
        assert!(!partial_of(location).exists());
    }
}

/// The real binary; the uploaded bytes are not a real clip, so no transcode is wanted.
fn start_binary(data_dir: &Path) -> crate::shutdown::Binary {
    crate::shutdown::Binary::start_with(data_dir, &["transcode.ffprobe_path=\"/bin/false\""])
}

#[tokio::test]
async fn tus_writes_need_a_session_and_only_the_creator_continues() {
    let server = TestServer::start();
    let anonymous = Raw {
        client: &server.client,
        base: &server.base,
    };
    let response = anonymous
        .request(Method::POST, "/api/v1/uploads")
        .header("Upload-Length", "1000")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        "session_required"
    );

    let alice = server.alice_client().await;
    let location = Raw {
        client: &alice,
        base: &server.base,
    }
    .create(1000, "")
    .await;
    let bob_token = server.login(&crate::chain::BOB).await;
    let bob = crate::server::bearer_client(&bob_token);
    let bob_raw = Raw {
        client: &bob,
        base: &server.base,
    };
    let response = bob_raw.patch(&location, 0, fake_video(1000)).await;
    assert_eq!(response.status(), 403);
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        "not_upload_owner"
    );
    let (status, _) = bob_raw.offset(&location).await;
    assert_eq!(status, 403, "HEAD is the creator's too");
    let response = bob_raw
        .request(Method::DELETE, &location)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let (status, offset) = Raw {
        client: &alice,
        base: &server.base,
    }
    .offset(&location)
    .await;
    assert_eq!((status, offset), (200, 0), "nothing of Bob's was taken");
}

#[tokio::test]
async fn sync_every_patch_keeps_the_protocol_and_the_bytes() {
    let server = TestServer::start_with(|config| config.upload.sync_every_patch = true);
    let alice = server.alice_client().await;
    let video = fake_video(2_500_000);
    let status = upload_via_tus(
        &alice,
        &server.base,
        &video,
        "clip.mp4",
        "Synced",
        1_000_000,
    )
    .await;
    let media: Value = crate::server::fetch_json(
        &alice,
        format!(
            "{}/api/v1/media/{}",
            server.base,
            status["media_id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(media["sha256"], sha256_hex(&video), "{media}");
    assert_eq!(media["size"], video.len() as u64, "{media}");
}
