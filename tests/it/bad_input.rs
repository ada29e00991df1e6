//! Bad input gets a clear JSON 4xx and leaves nothing behind.

use std::time::Duration;

use serde_json::Value;

use crate::server::{make_clip, TestServer};

fn assert_error(status: u16, body: &Value, expected_status: u16, expected_code: &str) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["code"], expected_code, "{body}");
    assert!(
        !body["message"].as_str().unwrap_or_default().is_empty(),
        "{body}"
    );
}

/// Sends `request` and checks [`assert_error`] on its answer; returns the answer's headers.
async fn assert_error_reply(
    request: reqwest::RequestBuilder,
    expected_status: u16,
    expected_code: &str,
) -> reqwest::header::HeaderMap {
    let response = request.send().await.unwrap();
    let headers = response.headers().clone();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap();
    assert_error(status, &body, expected_status, expected_code);
    headers
}

/// Nothing stored: no source blobs (not even staging files), no records.
async fn assert_nothing_stored(server: &TestServer) {
    assert!(
        server.blob_files("uploads").is_empty(),
        "{:?}",
        server.blob_files("uploads")
    );
    let (_, page) = server.get_json("/api/v1/media").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 0, "{page}");
}

/// A one-shot upload whose body goes silent mid-file (the client neither sends nor closes) is
/// answered 408 `body_timeout` after `server.body_timeout_s`, and nothing of it is kept.
#[tokio::test]
async fn an_upload_whose_body_goes_silent_is_answered_408_and_keeps_nothing() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start_with(|config| config.server.body_timeout_s = 1);
    let session = server.session().await.to_string();
    let address = server.base.trim_start_matches("http://").to_string();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let part = "--cut\r\ncontent-disposition: form-data; name=\"file\"; filename=\"a.mp4\"\r\n\
                content-type: video/mp4\r\n\r\n";
    let head = format!(
        "POST /api/v1/upload HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {session}\r\n\
         content-type: multipart/form-data; boundary=cut\r\ncontent-length: 10000000\r\n\r\n{part}"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket
        .write_all(&crate::tus::fake_video(200_000))
        .await
        .unwrap();
    let answer = tokio::time::timeout(
        Duration::from_secs(30),
        crate::server::read_request(&mut socket),
    )
    .await
    .expect("the server answered a silent body on its own")
    .expect("an answer before the connection closed");
    let (head, body) = answer;
    assert!(head.starts_with("http/1.1 408"), "{head}");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["code"], "body_timeout", "{body}");
    assert_nothing_stored(&server).await;
    let counted = r#"streamgate_http_timeouts_total{wait="body"}"#;
    assert_eq!(crate::auth_abuse::metric(&server, counted).await, 1.0);
}

#[tokio::test]
async fn a_file_that_is_not_a_video_is_refused() {
    let server = TestServer::start();
    let (status, body) = server
        .upload(
            b"%PDF-1.7 this is a document, named like a video".repeat(20),
            "movie.mp4",
            None,
        )
        .await;
    assert_error(status, &body, 415, "unsupported_container");
    let (status, body) = server.upload(b"tiny".to_vec(), "tiny.mp4", None).await;
    assert_error(status, &body, 415, "unsupported_container");
    let (status, body) = server.upload(Vec::new(), "empty.mp4", None).await;
    assert_error(status, &body, 400, "upload_empty");
    assert_nothing_stored(&server).await;
}

#[tokio::test]
async fn an_upload_over_the_size_limit_is_refused() {
    let server = TestServer::start_with(|config| config.upload.max_size_bytes = 200_000);
    let scratch = tempfile::tempdir().unwrap();
    let clip = std::fs::read(make_clip(scratch.path(), "big.mp4", "640x360", 3)).unwrap();
    assert!(clip.len() > 200_000, "the clip must exceed the limit");

    // With a Content-Length, refused before anything is stored.
    let (status, body) = server.upload(clip.clone(), "big.mp4", None).await;
    assert_error(status, &body, 413, "upload_too_large");

    // Chunked, with no length up front: refused once the limit is crossed.
    let boundary = "streamgate-test-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.mp4\"\r\nContent-Type: video/mp4\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&clip);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(16 * 1024).map(|c| Ok(c.to_vec())).collect();
    let request = server
        .client
        .post(server.url("/api/v1/upload"))
        .bearer_auth(server.session().await)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )));
    assert_error_reply(request, 413, "upload_too_large").await;

    assert_nothing_stored(&server).await;
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"streamgate_uploads_total{outcome="rejected"} 2"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn malformed_upload_requests_get_400() {
    let server = TestServer::start();
    let form = reqwest::multipart::Form::new().text("title", "no file here");
    let request = server
        .client
        .post(server.url("/api/v1/upload"))
        .bearer_auth(server.session().await)
        .multipart(form);
    assert_error_reply(request, 400, "missing_file").await;

    let response = server
        .client
        .post(server.url("/api/v1/upload"))
        .bearer_auth(server.session().await)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert!((400..500).contains(&status), "not multipart: {status}");
    assert_nothing_stored(&server).await;
}

#[tokio::test]
async fn unknown_media_and_traversal_are_404() {
    let server = TestServer::start();
    let unknown = "01a201b6-5525-7120-9745-a4f5dcf83f70";
    let (status, body) = server.get_json(&format!("/api/v1/media/{unknown}")).await;
    assert_error(status, &body, 404, "media_not_found");
    let (status, body) = server.get_json("/api/v1/media/not-a-uuid").await;
    assert_error(status, &body, 404, "media_not_found");
    let (status, body) = server
        .get_json(&format!("/api/v1/media/{unknown}/hls/master.m3u8"))
        .await;
    assert_error(status, &body, 404, "media_not_found");
    let (status, body) = server
        .alice_get_json("/api/v1/jobs/01a201b6-5525-7120-9745-a4f5dcf83f70")
        .await;
    assert_error(status, &body, 404, "job_not_found");

    // A real file outside the media's prefix that traversal would reach.
    std::fs::write(server.data_dir.join("blobs").join("secret.m4s"), b"secret").unwrap();
    for path in [
        format!("/api/v1/media/{unknown}/hls/360p/..%2F..%2F..%2Fsecret.m4s"),
        format!("/api/v1/media/{unknown}/hls/..%2F..%2F..%2F/secret.m4s"),
        format!("/api/v1/media/{unknown}/hls/360p/.hidden.m4s"),
        format!("/api/v1/media/{unknown}/hls/360p/index.m3u8%00.m4s"),
        "/api/v1/media/..%2F..%2F/hls/360p/secret.m4s".to_string(),
    ] {
        let response = server.get(&path).await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body["code"].is_string(), "{path}: {body}");
    }
}

/// Sends `request`: a 405 with our JSON error body and the request id every answer carries.
async fn assert_method_not_allowed(request: reqwest::RequestBuilder) {
    let headers = assert_error_reply(request, 405, "method_not_allowed").await;
    assert!(headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods_get_json_errors() {
    let server = TestServer::start();
    let (status, body) = server.get_json("/no/such/path").await;
    assert_error(status, &body, 404, "not_found");
    assert_method_not_allowed(server.client.put(server.url("/health"))).await;
    assert_method_not_allowed(server.client.get(server.url("/api/v1/upload"))).await;
    // Under the per-media scope too: an unknown sub-path and a wrong method.
    let media_path = "/api/v1/media/01a202e5-0b80-7248-a7c3-e8739e6ef980";
    let (status, body) = server.get_json(&format!("{media_path}/no/such")).await;
    assert_error(status, &body, 404, "not_found");
    let master = server.url(&format!("{media_path}/hls/master.m3u8"));
    assert_method_not_allowed(server.client.post(master)).await;
    let (status, body) = server.get_json("/api/v1/media?limit=abc").await;
    assert_error(status, &body, 400, "invalid_query");
    let (status, body) = server.alice_get_json("/api/v1/jobs?state=sleeping").await;
    assert_error(status, &body, 400, "invalid_state");
}

#[tokio::test]
async fn edits_fail_closed_without_a_session_or_the_admin_token() {
    let server = TestServer::start_with(|config| config.auth.admin_token = "s3cret".into());
    let unknown = "01a201b6-5525-7120-9745-a4f5dcf83f70";
    let url = server.url(&format!("/api/v1/media/{unknown}"));
    assert_error_reply(server.client.delete(&url), 401, "session_required").await;
    let wrong_token = server.client.delete(&url).bearer_auth("wrong");
    assert_error_reply(wrong_token, 401, "session_invalid").await;
    // An identity header a client can set to anything is not identity.
    let response = server
        .client
        .delete(&url)
        .header("x-wallet-address", crate::chain::ALICE.address)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let admin = server.client.delete(&url).bearer_auth("s3cret");
    assert_error_reply(admin, 404, "media_not_found").await;
}

#[tokio::test]
async fn a_corrupt_video_ends_failed_with_a_reason() {
    let server = TestServer::start();
    // Right magic bytes, garbage after them.
    let mut corrupt = vec![0, 0, 0, 0x20];
    corrupt.extend_from_slice(b"ftypisom");
    corrupt.extend((0..64 * 1024).map(|i| (i * 7 % 251) as u8));
    let (status, receipt) = server.upload(corrupt, "broken.mp4", None).await;
    assert_eq!(status, 201, "{receipt}");
    let media_id = receipt["media_id"].as_str().unwrap();
    let media = server
        .wait_for_media(media_id, Duration::from_secs(60), |m| {
            m["state"] != "processing"
        })
        .await;
    assert_eq!(media["state"], "failed", "{media}");
    assert_eq!(media["failure_code"], "undecodable", "{media}");
    assert!(
        media["failure"]
            .as_str()
            .unwrap()
            .contains("not a video this server can decode"),
        "{media}"
    );
    let (_, jobs) = server.alice_get_json("/api/v1/jobs?state=failed").await;
    assert_eq!(
        jobs["items"][0]["attempts"], 1,
        "undecodable input is not retried: {jobs}"
    );
    assert!(
        server.blob_files("media").is_empty(),
        "no renditions for a failed transcode"
    );
}
