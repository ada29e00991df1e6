//! Optional export of finished spans to an OpenTelemetry collector over OTLP/HTTP with the JSON
//! encoding (`POST {monitor.otlp_endpoint}/v1/traces`), through `opentelemetry-otlp`'s
//! exporter. The request path only `try_send`s into a bounded queue; a task of ours batches it
//! rather than the SDK's batch processor, because the queue's drops and each batch's outcome
//! are metrics (`streamgate_otlp_spans_*`) the SDK processor does not report. With
//! `otlp_endpoint = ""` no exporter exists and the request path does not touch any of it.

use std::{
    borrow::Cow,
    time::{Duration, SystemTime},
};

use opentelemetry::{
    trace::{self as otel, SpanContext, SpanId, TraceFlags, TraceId, TraceState},
    InstrumentationScope, KeyValue,
};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{
    trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks},
    Resource,
};
use prometheus::IntCounter;
use tokio::sync::mpsc;

use super::Metrics;
use crate::{config::MonitorConfig, outbound::Outbound};

/// The span kinds we export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal,
    Server,
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
    pub fn start(config: &MonitorConfig, metrics: &Metrics, outbound: &Outbound) -> Option<Self> {
        let endpoint = config.otlp_endpoint.trim_end_matches('/');
        if endpoint.is_empty() {
            return None;
        }
        let (queue, received) = mpsc::channel(config.otlp_queue_capacity.max(1));
        let timeout = Duration::from_millis(config.otlp_timeout_ms);
        let client = match outbound.client(timeout) {
            Ok(client) => client,
            Err(error) => {
                tracing::warn!(%error, "cannot build the OTLP client; spans are not exported");
                return None;
            }
        };
        let url = format!("{endpoint}/v1/traces");
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(url.clone())
            .with_timeout(timeout)
            .build();
        let mut exporter = match exporter {
            Ok(exporter) => exporter,
            Err(error) => {
                tracing::warn!(%url, %error, "cannot build the OTLP exporter; spans are not exported");
                return None;
            }
        };
        exporter.set_resource(
            &Resource::builder_empty()
                .with_service_name(config.otlp_service_name.clone())
                .build(),
        );
        tracing::info!(%url, "exporting spans over OTLP/HTTP");
        let batcher = Batcher {
            exporter,
            scope: InstrumentationScope::builder("streamgate")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            batch_size: config.otlp_batch_size.max(1),
            flush_interval: Duration::from_millis(config.otlp_flush_interval_ms.max(1)),
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
    exporter: opentelemetry_otlp::SpanExporter,
    scope: InstrumentationScope,
    batch_size: usize,
    flush_interval: Duration,
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
        let spans = batch
            .drain(..)
            .map(|span| span_data(span, &self.scope))
            .collect();
        match self.exporter.export(spans).await {
            Ok(()) => self.exported.inc_by(count),
            Err(error) => {
                self.failed.inc_by(count);
                tracing::warn!(%error, spans = count, "OTLP export failed; spans dropped");
            }
        }
    }
}

/// One of our spans as the OpenTelemetry SDK's exporters take it.
fn span_data(span: FinishedSpan, scope: &InstrumentationScope) -> SpanData {
    SpanData {
        span_context: SpanContext::new(
            TraceId::from(span.trace_id),
            SpanId::from(span.span_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: span.parent_span_id.map_or(SpanId::INVALID, SpanId::from),
        parent_span_is_remote: span.parent_span_id.is_some(),
        span_kind: match span.kind {
            SpanKind::Internal => otel::SpanKind::Internal,
            SpanKind::Server => otel::SpanKind::Server,
        },
        name: span.name.into(),
        start_time: span.start,
        end_time: span.end,
        attributes: span
            .attributes
            .into_iter()
            .map(|(key, value)| match value {
                AttributeValue::Text(text) => KeyValue::new(key, text.into_owned()),
                AttributeValue::Int(number) => KeyValue::new(key, number),
            })
            .collect(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: if span.error {
            otel::Status::error("")
        } else {
            otel::Status::Unset
        },
        instrumentation_scope: scope.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_spans_keep_their_ids_kind_attributes_and_status() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let span = span_data(
            FinishedSpan {
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
            },
            &InstrumentationScope::builder("streamgate").build(),
        );
        let context = &span.span_context;
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(span.parent_span_id.to_string(), "0000000000000001");
        assert_eq!(span.span_kind, otel::SpanKind::Server);
        assert_eq!(
            span.end_time.duration_since(span.start_time).ok(),
            Some(Duration::from_millis(3))
        );
        assert_eq!(
            span.attributes[1],
            KeyValue::new("http.response.status_code", 503)
        );
        assert!(matches!(span.status, otel::Status::Error { .. }));
    }
}
