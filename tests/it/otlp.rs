//! OTLP/HTTP span export (`monitor.otlp_endpoint`): a request with a `traceparent` reaches the
//! collector as a server span of the same trace, with its route and status.
//!
//! The receiver is a small HTTP server in this file that decodes the real OTLP/HTTP JSON
//! payload (`ExportTraceServiceRequest`): no OpenTelemetry Collector can be installed here
//! (`otelcol` is neither a Debian package nor on PyPI or npm in a runnable form).

use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::server::{make_clip, TestServer};

/// Accepts `POST /v1/traces` and hands each decoded body to the test; anything else is a 404
/// (so a wrong path fails the test instead of passing silently).
async fn otlp_receiver() -> (String, mpsc::UnboundedReceiver<(String, String, Value)>) {
    crate::server::http_receiver(
        |head| {
            if head.starts_with("post /v1/traces ") {
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}"
            } else {
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            }
        },
        |head, body| {
            let request_line = head.lines().next().unwrap_or_default().to_string();
            let content_type = head
                .lines()
                .find_map(|l| l.strip_prefix("content-type:"))
                .unwrap_or_default()
                .trim()
                .to_string();
            let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
            Some((request_line, content_type, json))
        },
    )
    .await
}

/// Every span in an `ExportTraceServiceRequest`, with its resource's `service.name`.
fn spans(body: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for resource in body["resourceSpans"].as_array().into_iter().flatten() {
        let service = resource["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == "service.name")
            .and_then(|a| a["value"]["stringValue"].as_str())
            .unwrap_or_default()
            .to_string();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                out.push((service.clone(), span.clone()));
            }
        }
    }
    out
}

fn attribute<'s>(span: &'s Value, key: &str) -> &'s Value {
    span["attributes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["key"] == key)
        .map_or(&Value::Null, |a| &a["value"])
}

#[tokio::test]
async fn request_spans_reach_the_otlp_collector_with_the_callers_trace_id() {
    let (endpoint, mut batches) = otlp_receiver().await;
    let server = TestServer::start_with(|config| {
        config.monitor.otlp_endpoint = endpoint.clone();
        config.monitor.otlp_service_name = "streamgate-it".into();
        config.monitor.otlp_flush_interval_ms = 50;
    });
    let trace_id = format!("{:032x}", 0x07e1_0000_u128 + u128::from(std::process::id()));
    let parent = "00f067aa0ba902b7";
    let response = server
        .client
        .get(server.url("/api/v1/media/does-not-exist"))
        .header("traceparent", format!("00-{trace_id}-{parent}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let our_span_id = response.headers()["traceparent"].to_str().unwrap()[36..52].to_string();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let span = loop {
        let (request_line, content_type, body) = tokio::time::timeout_at(deadline, batches.recv())
            .await
            .expect("the span is exported in time")
            .expect("the receiver is running");
        assert!(
            request_line.starts_with("post /v1/traces "),
            "OTLP/HTTP path: {request_line}"
        );
        assert_eq!(content_type, "application/json");
        if let Some((service, span)) = spans(&body)
            .into_iter()
            .find(|(_, span)| span["traceId"] == trace_id.as_str())
        {
            assert_eq!(service, "streamgate-it");
            break span;
        }
    };
    assert_eq!(span["spanId"], our_span_id.as_str(), "{span}");
    assert_eq!(span["parentSpanId"], parent);
    assert_eq!(span["kind"], 2, "a server span: {span}");
    assert_eq!(span["name"], "GET /api/v1/media/{media_id}");
    assert_eq!(
        attribute(&span, "http.route")["stringValue"],
        "/api/v1/media/{media_id}"
    );
    assert_eq!(
        attribute(&span, "http.request.method")["stringValue"],
        "GET"
    );
    assert_eq!(
        attribute(&span, "http.response.status_code")["intValue"],
        "404"
    );
    let start: u128 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let end: u128 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(start > 1_600_000_000_000_000_000 && end >= start, "{span}");

    // The exporter counts a batch once the collector has answered: poll for it.
    crate::harness::poll(
        Duration::from_secs(15),
        "exported spans counted",
        async || {
            let text = server.get("/metrics").await.text().await.unwrap();
            let exported = text.lines().find_map(|l| {
                l.strip_prefix("streamgate_otlp_spans_exported_total ")
                    .and_then(|v| v.parse::<f64>().ok())
            });
            match exported {
                Some(count) if count >= 1.0 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

/// The transcode job an upload queues is exported as its own span in the upload's trace.
#[tokio::test]
async fn job_spans_join_the_trace_of_the_request_that_queued_them() {
    let (endpoint, mut batches) = otlp_receiver().await;
    let server = TestServer::start_with(|config| {
        config.auth.admin_token = "otlp-admin".into();
        config.monitor.otlp_endpoint = endpoint.clone();
        config.monitor.otlp_flush_interval_ms = 50;
    });
    let scratch = tempfile::tempdir().unwrap();
    let clip = std::fs::read(make_clip(scratch.path(), "o.mp4", "320x240", 1)).unwrap();
    let trace_id = format!("{:032x}", 0x0b10_0000_u128 + u128::from(std::process::id()));
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(clip).file_name("o.mp4"),
    );
    let response = server
        .client
        .post(server.url("/api/v1/upload"))
        .bearer_auth("otlp-admin")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let (mut upload_seen, mut transcode_job) = (false, None);
    while transcode_job.is_none() || !upload_seen {
        let (_, _, body) = tokio::time::timeout_at(deadline, batches.recv())
            .await
            .expect("the upload and its transcode job are exported in time")
            .expect("the receiver is running");
        for (_, span) in spans(&body) {
            if span["traceId"] != trace_id.as_str() {
                continue;
            }
            if span["name"] == "POST /api/v1/upload" {
                upload_seen = true;
            } else if span["name"] == "job transcode" {
                transcode_job = Some(span);
            }
        }
    }
    let job = transcode_job.unwrap();
    assert_eq!(job["kind"], 1, "an internal span: {job}");
    assert_eq!(
        attribute(&job, "streamgate.job.outcome")["stringValue"],
        "succeeded"
    );
}
