//! A W3C `traceparent` on the request that queues work follows it: the transcode job's log
//! lines carry the same trace id.

use std::time::Duration;

use serde_json::Value;

use crate::server::{make_clip, TestServer};

#[tokio::test]
async fn the_upload_trace_id_reaches_the_transcode_job_logs() {
    let server = TestServer::start_with(|config| config.auth.admin_token = "trace-admin".into());
    let scratch = tempfile::tempdir().unwrap();
    let clip = std::fs::read(make_clip(scratch.path(), "t.mp4", "320x240", 1)).unwrap();
    // A trace id no other test uses.
    let trace_id = format!("{:032x}", 0x5eed_0000_u128 + u128::from(std::process::id()));
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");

    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(clip).file_name("t.mp4"),
    );
    let response = server
        .client
        .post(server.url("/api/v1/upload"))
        .bearer_auth("trace-admin")
        .header("traceparent", &traceparent)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let echoed = response.headers()["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        echoed.contains(&trace_id),
        "the trace is continued: {echoed}"
    );
    let receipt: Value = response.json().await.unwrap();
    let media_id = receipt["media_id"].as_str().unwrap();
    let media = server
        .wait_for_media(media_id, Duration::from_secs(120), |m| {
            m["state"] != "processing"
        })
        .await;
    assert_eq!(media["state"], "ready", "{media}");

    let logs: Value = server
        .client
        .get(server.url("/api/v1/monitor/logs?limit=2000"))
        .bearer_auth("trace-admin")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job_lines: Vec<&Value> = logs["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["trace_id"] == trace_id.as_str())
        .filter(|entry| {
            entry["message"]
                .as_str()
                .unwrap_or_default()
                .starts_with("job run")
        })
        .collect();
    let messages: Vec<&str> = job_lines
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(messages.contains(&"job run started"), "{logs}");
    assert!(messages.contains(&"job run succeeded"), "{messages:?}");
}
