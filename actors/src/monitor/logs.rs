//! A bounded in-memory ring of recent log events, filled by a `tracing` layer, read by
//! `/api/v1/monitor/logs`. Each record names the trace and request ids of the span it was
//! logged in, so a request's logs can be found from its `traceparent` or `x-request-id`.

use std::{
    collections::VecDeque,
    fmt::Write as _,
    sync::{Arc, Mutex, OnceLock},
};

use serde::Serialize;
use time::OffsetDateTime;
use tracing::{
    field::{Field, Visit},
    span, Event, Level, Subscriber,
};
use tracing_subscriber::{layer::Context, registry::LookupSpan, Layer};

#[derive(Debug, Clone, Serialize)]
pub struct LogRecord {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub level: &'static str,
    pub target: String,
    pub message: String,
    /// Every other field of the event, as `key=value` text.
    pub fields: String,
    pub trace_id: Option<String>,
    pub request_id: Option<String>,
}

/// The ring. Cloning shares it.
#[derive(Clone)]
pub struct LogRing {
    inner: Arc<Mutex<VecDeque<LogRecord>>>,
    capacity: usize,
}

static GLOBAL: OnceLock<LogRing> = OnceLock::new();

impl LogRing {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            inner: Arc::new(Mutex::new(VecDeque::with_capacity(capacity))),
            capacity,
        }
    }

    /// The process-wide ring the installed layer writes to; created with `capacity` by the
    /// first caller (logging is set up once per process).
    pub fn global(capacity: usize) -> Self {
        GLOBAL.get_or_init(|| Self::new(capacity)).clone()
    }

    /// A layer that appends every event at `min_level` or more severe to this ring.
    pub fn layer(&self, min_level: Level) -> LogRingLayer {
        LogRingLayer {
            ring: self.clone(),
            min_level,
        }
    }

    pub fn push(&self, record: LogRecord) {
        if let Ok(mut ring) = self.inner.lock() {
            if ring.len() == self.capacity {
                ring.pop_front();
            }
            ring.push_back(record);
        }
    }

    /// Newest first: at most `limit` records at `min_level` or more severe.
    pub fn recent(&self, min_level: Level, limit: usize) -> Vec<LogRecord> {
        let Ok(ring) = self.inner.lock() else {
            return Vec::new();
        };
        ring.iter()
            .rev()
            .filter(|record| level_from_str(record.level).is_some_and(|l| l <= min_level))
            .take(limit)
            .cloned()
            .collect()
    }
}

/// Parses `error|warn|info|debug|trace` (any case).
pub fn level_from_str(text: &str) -> Option<Level> {
    text.parse().ok()
}

pub struct LogRingLayer {
    ring: LogRing,
    min_level: Level,
}

/// The ids a span carries, kept in its extensions for the events inside it.
#[derive(Default)]
struct SpanIds {
    trace_id: Option<String>,
    request_id: Option<String>,
}

impl Visit for SpanIds {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // A request's root span has ~17 fields: format only the two we keep.
        if matches!(field.name(), "trace_id" | "request_id") {
            self.record_str(field, &format!("{value:?}"));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "trace_id" if !value.is_empty() => self.trace_id = Some(value.to_string()),
            "request_id" => self.request_id = Some(value.to_string()),
            _ => {}
        }
    }
}

#[derive(Default)]
struct EventText {
    message: String,
    fields: String,
}

impl Visit for EventText {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            if !self.fields.is_empty() {
                self.fields.push(' ');
            }
            let _ = write!(self.fields, "{}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            if !self.fields.is_empty() {
                self.fields.push(' ');
            }
            let _ = write!(self.fields, "{}={value}", field.name());
        }
    }
}

impl<S> Layer<S> for LogRingLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let mut ids = SpanIds::default();
        attrs.record(&mut ids);
        if ids.trace_id.is_some() || ids.request_id.is_some() {
            if let Some(span) = ctx.span(id) {
                span.extensions_mut().insert(ids);
            }
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(ids) = extensions.get_mut::<SpanIds>() {
            values.record(ids);
        } else {
            let mut ids = SpanIds::default();
            values.record(&mut ids);
            if ids.trace_id.is_some() || ids.request_id.is_some() {
                extensions.insert(ids);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let metadata = event.metadata();
        if *metadata.level() > self.min_level {
            return;
        }
        let mut text = EventText::default();
        event.record(&mut text);
        let (mut trace_id, mut request_id) = (None, None);
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                if let Some(ids) = span.extensions().get::<SpanIds>() {
                    trace_id = trace_id.or_else(|| ids.trace_id.clone());
                    request_id = request_id.or_else(|| ids.request_id.clone());
                }
            }
        }
        self.ring.push(LogRecord {
            at: OffsetDateTime::now_utc(),
            level: level_name(*metadata.level()),
            target: metadata.target().to_string(),
            message: text.message,
            fields: text.fields,
            trace_id,
            request_id,
        });
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[test]
    fn captures_events_with_span_ids_bounded_and_filtered() {
        let ring = LogRing::new(3);
        let subscriber = tracing_subscriber::registry().with(ring.layer(Level::INFO));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", trace_id = "abc", request_id = "r1");
            let _entered = span.enter();
            tracing::debug!("too verbose");
            tracing::info!(answer = 42, "first");
            tracing::warn!("second");
            tracing::error!("third");
            tracing::info!("fourth");
        });
        let all = ring.recent(Level::TRACE, 10);
        let messages: Vec<&str> = all.iter().map(|r| r.message.as_str()).collect();
        assert_eq!(messages, ["fourth", "third", "second"]);
        assert_eq!(all[0].trace_id.as_deref(), Some("abc"));
        assert_eq!(all[0].request_id.as_deref(), Some("r1"));
        let warnings = ring.recent(Level::WARN, 10);
        assert_eq!(warnings.len(), 2);
        assert_eq!(ring.recent(Level::TRACE, 1).len(), 1);
    }
}
