//! Optional export of finished spans to an OpenTelemetry collector over OTLP/HTTP with the JSON
//! encoding (`POST {monitor.otlp_endpoint}/v1/traces`). Hand-written rather than the
//! `opentelemetry-otlp` stack: StreamGate's spans are few and flat (one per request), their
//! ids already live in [`super::traces::TraceContext`], and this keeps the request path to one
//! `try_send` into a bounded queue. A background task batches the queue and posts it; when the
//! queue is full (collector slow or down) spans are dropped and counted, never waited for.
//! With `otlp_endpoint = ""` no exporter exists and the request path does not touch any of it.

use std::{
    borrow::Cow,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prometheus::IntCounter;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{
    traces::{hex_span_id, hex_trace_id},
    Metrics,
};
use crate::config::MonitorConfig;

/// OTLP `SpanKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal = 1,
    Server = 2,
}

#[derive(Debug, Clone)]
pub enum AttributeValue {
    Text(Cow<'static, str>),
    Int(i64),
}

/// One finished span, as the exporter queues it.
#[derive(Debug, Clone)]
pub struct FinishedSpan {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_span_id: Option<u64>,
    pub name: String,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, AttributeValue)>,
    /// OTLP status ERROR (a 5xx answer, a failed job); otherwise the status is left unset.
    pub error: bool,
}

/// The sending half: cheap to clone, never blocks.
#[derive(Clone)]
pub struct SpanExporter {
    queue: mpsc::Sender<FinishedSpan>,
    dropped: IntCounter,
}

impl SpanExporter {
    /// `None` when `otlp_endpoint` is empty. Otherwise spawns the batching task on the
    /// current actix system (call it from inside one).
    pub fn start(config: &MonitorConfig, metrics: &Metrics) -> Option<Self> {
        let endpoint = config.otlp_endpoint.trim_end_matches('/');
        if endpoint.is_empty() {
            return None;
        }
        let (queue, received) = mpsc::channel(config.otlp_queue_capacity.max(1));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.otlp_timeout_ms))
            .build()
            .unwrap_or_default();
        let url = format!("{endpoint}/v1/traces");
        tracing::info!(%url, "exporting spans over OTLP/HTTP");
        let batcher = Batcher {
            url,
            service_name: config.otlp_service_name.clone(),
            batch_size: config.otlp_batch_size.max(1),
            flush_interval: Duration::from_millis(config.otlp_flush_interval_ms.max(1)),
            client,
            exported: metrics.otlp_spans_exported.clone(),
            failed: metrics.otlp_spans_failed.clone(),
        };
        actix::spawn(batcher.run(received));
        Some(Self {
            queue,
            dropped: metrics.otlp_spans_dropped.clone(),
        })
    }

    /// Queues a span; drops it (and counts the drop) when the queue is full.
    pub fn export(&self, span: FinishedSpan) {
        if self.queue.try_send(span).is_err() {
            self.dropped.inc();
        }
    }
}

struct Batcher {
    url: String,
    service_name: String,
    batch_size: usize,
    flush_interval: Duration,
    client: reqwest::Client,
    exported: IntCounter,
    failed: IntCounter,
}

impl Batcher {
    /// Sends a batch when it is full or `flush_interval` after its first span, whichever
    /// comes first; ends (after a last flush) when every sender is gone.
    async fn run(self, mut received: mpsc::Receiver<FinishedSpan>) {
        let mut batch = Vec::with_capacity(self.batch_size);
        loop {
            let Some(first) = received.recv().await else {
                return;
            };
            batch.push(first);
            let deadline = tokio::time::Instant::now() + self.flush_interval;
            while batch.len() < self.batch_size {
                match tokio::time::timeout_at(deadline, received.recv()).await {
                    Ok(Some(span)) => batch.push(span),
                    Ok(None) | Err(_) => break,
                }
            }
            self.send(&mut batch).await;
        }
    }

    async fn send(&self, batch: &mut Vec<FinishedSpan>) {
        let count = batch.len() as u64;
        let body = encode(&self.service_name, batch.drain(..));
        let outcome = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .and_then(reqwest::Response::error_for_status);
        match outcome {
            Ok(_) => self.exported.inc_by(count),
            Err(error) => {
                self.failed.inc_by(count);
                tracing::warn!(%error, spans = count, "OTLP export failed; spans dropped");
            }
        }
    }
}

fn unix_nanos(at: SystemTime) -> String {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos())
        .to_string()
}

/// An `ExportTraceServiceRequest` in OTLP's JSON mapping: ids as hex, 64-bit integers as
/// decimal strings, enums as numbers.
pub fn encode(service_name: &str, spans: impl Iterator<Item = FinishedSpan>) -> Value {
    let spans: Vec<Value> = spans
        .map(|span| {
            let attributes: Vec<Value> = span
                .attributes
                .iter()
                .map(|(key, value)| {
                    let value = match value {
                        AttributeValue::Text(text) => json!({ "stringValue": text }),
                        AttributeValue::Int(number) => json!({ "intValue": number.to_string() }),
                    };
                    json!({ "key": key, "value": value })
                })
                .collect();
            let mut encoded = json!({
                "traceId": hex_trace_id(span.trace_id),
                "spanId": hex_span_id(span.span_id),
                "name": span.name,
                "kind": span.kind as u8,
                "startTimeUnixNano": unix_nanos(span.start),
                "endTimeUnixNano": unix_nanos(span.end),
                "attributes": attributes,
                "status": if span.error { json!({ "code": 2 }) } else { json!({}) },
            });
            if let (Some(parent), Some(fields)) = (span.parent_span_id, encoded.as_object_mut()) {
                fields.insert("parentSpanId".into(), Value::from(hex_span_id(parent)));
            }
            encoded
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": {
                "attributes": [
                    { "key": "service.name", "value": { "stringValue": service_name } }
                ]
            },
            "scopeSpans": [{
                "scope": { "name": "streamgate", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans
            }]
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_otlp_json_mapping() {
        let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let body = encode(
            "streamgate",
            std::iter::once(FinishedSpan {
                trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
                span_id: 0x00f0_67aa_0ba9_02b7,
                parent_span_id: Some(1),
                name: "GET /health".into(),
                kind: SpanKind::Server,
                start,
                end: start + Duration::from_millis(3),
                attributes: vec![
                    ("http.route", AttributeValue::Text("/health".into())),
                    ("http.response.status_code", AttributeValue::Int(503)),
                ],
                error: true,
            }),
        );
        let span = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span["spanId"], "00f067aa0ba902b7");
        assert_eq!(span["parentSpanId"], "0000000000000001");
        assert_eq!(span["kind"], 2);
        assert_eq!(span["startTimeUnixNano"], "1700000000000000000");
        assert_eq!(span["endTimeUnixNano"], "1700000000003000000");
        assert_eq!(span["status"]["code"], 2);
        assert_eq!(span["attributes"][1]["value"]["intValue"], "503");
        assert_eq!(
            body["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "streamgate"
        );
    }
}
