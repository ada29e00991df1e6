//! A bounded in-memory ring of recent log events, filled by a `tracing` layer, read by
//! `/api/v1/monitor/logs`. Each record names the trace and request ids of the span it was
//! logged in, or else of the request the thread was polling ([`traces::in_request`]), so a
//! request's logs can be found from its `traceparent` or `x-request-id`. [`RequestTagged`]
//! adds the same ids to the stdout lines.

use std::{
    collections::VecDeque,
    fmt::Write as _,
    sync::{Arc, Mutex, OnceLock},
};

use time::OffsetDateTime;
use tracing::{
    field::{Field, Visit},
    span, Event, Level, Subscriber,
};
use tracing_subscriber::{
    fmt::{format::Writer, FmtContext, FormatEvent, FormatFields},
    layer::Context,
    registry::LookupSpan,
    Layer,
};

use super::traces::{self, hex_trace_id, RequestScope};

#[derive(Debug, Clone)]
pub struct LogRecord {
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
        // A span may have many fields: format only the two we keep.
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
        if trace_id.is_none() && request_id.is_none() {
            if let Some(scope) = traces::current_request() {
                trace_id = Some(hex_trace_id(scope.trace.trace_id));
                request_id = Some(scope.request_id.hyphenated().to_string());
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

/// An event format for the stdout layer that adds `trace_id` and `request_id` to the lines
/// logged while a request is polled ([`traces::in_request`]): as two more keys of a JSON line,
/// or as `trace_id=… request_id=…` at the end of a text line. Lines outside a request are the
/// inner format's, untouched. (Tagged text lines are formatted into a buffer first, so they
/// come out without ANSI colours.)
pub struct RequestTagged<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for RequestTagged<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let Some(scope) = traces::current_request() else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&tag_line(line, scope))
    }
}

/// `line` (one formatted event, JSON object or text, usually ending in a newline) with the
/// request's ids added.
fn tag_line(mut line: String, scope: RequestScope) -> String {
    let trace_id = hex_trace_id(scope.trace.trace_id);
    let request_id = scope.request_id.hyphenated();
    let body_end = line.trim_end().len();
    if line.starts_with('{') && line[..body_end].ends_with('}') {
        // Both values are hex digits and dashes: nothing to escape.
        let separator = if line[..body_end - 1].trim_end().ends_with('{') {
            ""
        } else {
            ","
        };
        line.insert_str(
            body_end - 1,
            &format!("{separator}\"trace_id\":\"{trace_id}\",\"request_id\":\"{request_id}\""),
        );
    } else {
        line.insert_str(
            body_end,
            &format!(" trace_id={trace_id} request_id={request_id}"),
        );
    }
    line
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
    use crate::monitor::traces::TraceContext;

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

    fn trace(trace_id: u128) -> TraceContext {
        TraceContext {
            trace_id,
            span_id: 1,
            parent_span_id: None,
            sampled: true,
        }
    }

    #[test]
    fn events_in_a_request_scope_carry_its_ids_and_spans_win() {
        let ring = LogRing::new(8);
        let subscriber = tracing_subscriber::registry().with(ring.layer(Level::INFO));
        let scope = RequestScope {
            trace: trace(0xabc),
            request_id: uuid::Uuid::from_u128(7),
        };
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside");
            traces::in_request(scope, || {
                tracing::info!("inside");
                let job = tracing::info_span!("job", trace_id = "from-span");
                job.in_scope(|| tracing::info!("in a span"));
            });
            tracing::info!("after");
        });
        let records = ring.recent(Level::TRACE, 10);
        let find = |message: &str| {
            records
                .iter()
                .find(|record| record.message == message)
                .unwrap()
                .clone()
        };
        assert_eq!(find("outside").trace_id, None);
        assert_eq!(find("after").request_id, None);
        let inside = find("inside");
        assert_eq!(
            inside.trace_id.as_deref(),
            Some("00000000000000000000000000000abc")
        );
        assert_eq!(
            inside.request_id.as_deref(),
            Some("00000000-0000-0000-0000-000000000007")
        );
        assert_eq!(find("in a span").trace_id.as_deref(), Some("from-span"));
    }

    #[test]
    fn the_stdout_layer_tags_json_lines_logged_in_a_request() {
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .json()
                .map_event_format(RequestTagged)
                .with_writer(move || writer.clone()),
        );
        let scope = RequestScope {
            trace: trace(0xfeed),
            request_id: uuid::Uuid::from_u128(9),
        };
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!("before");
            traces::in_request(scope, || tracing::warn!(status = 503, "inside"));
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let parsed: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0]["fields"]["message"], "before");
        assert!(parsed[0].get("trace_id").is_none());
        assert_eq!(parsed[1]["fields"]["message"], "inside");
        assert_eq!(parsed[1]["fields"]["status"], 503);
        assert_eq!(parsed[1]["trace_id"], "0000000000000000000000000000feed");
        assert_eq!(
            parsed[1]["request_id"],
            "00000000-0000-0000-0000-000000000009"
        );
    }

    #[test]
    fn stdout_lines_in_a_request_get_its_ids() {
        let scope = RequestScope {
            trace: trace(1),
            request_id: uuid::Uuid::from_u128(2),
        };
        let json = tag_line("{\"level\":\"WARN\",\"message\":\"x\"}\n".into(), scope);
        let parsed: serde_json::Value = serde_json::from_str(json.trim_end()).unwrap();
        assert_eq!(parsed["message"], "x");
        assert_eq!(parsed["trace_id"], "00000000000000000000000000000001");
        assert_eq!(parsed["request_id"], "00000000-0000-0000-0000-000000000002");
        assert!(json.ends_with("}\n"));
        let empty: serde_json::Value =
            serde_json::from_str(tag_line("{}".into(), scope).as_str()).unwrap();
        assert_eq!(empty["trace_id"], "00000000000000000000000000000001");
        let text = tag_line(
            "2026-11-22T10:00:00Z  WARN streamgate: slow\n".into(),
            scope,
        );
        assert_eq!(
            text,
            "2026-11-22T10:00:00Z  WARN streamgate: slow trace_id=00000000000000000000000000000001 \
             request_id=00000000-0000-0000-0000-000000000002\n"
        );
    }
}
