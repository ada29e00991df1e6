//! Request tracing: W3C trace context (`traceparent`), the per-request record the HTTP
//! middleware hands to [`super::Metrics::observe_request`], the trace statistics behind
//! `/api/v1/monitor/traces`, and [`Traced`], the envelope that carries a trace into an actor.

use std::sync::{Arc, Mutex, PoisonError};

use super::clock::MonotonicNanos;

use serde::Serialize;
use time::OffsetDateTime;

/// A W3C trace context: the trace a request belongs to and the span we opened for it. Ids are
/// integers, formatted as hex only when a header, a log line or a report needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// Never zero.
    pub trace_id: u128,
    /// Our span for this request; never zero.
    pub span_id: u64,
    /// The caller's span, when it sent a valid `traceparent`.
    pub parent_span_id: Option<u64>,
    pub sampled: bool,
}

/// Length of a version 00 `traceparent`.
pub const TRACEPARENT_LEN: usize = 55;

/// Two lowercase hex digits per byte value: one table load per byte instead of two nibble
/// lookups and shifts.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [DIGITS[byte >> 4], DIGITS[byte & 0xf]];
        byte += 1;
    }
    pairs
};

/// Writes `bytes` as lowercase hex digits, two per byte, into the start of `out` (ids in
/// headers, written on every request).
#[inline]
pub fn write_hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*byte)]);
    }
}

impl TraceContext {
    /// Continues the caller's trace when `traceparent` is valid (version 00, non-zero ids),
    /// otherwise starts a new one. Either way a fresh span id is ours.
    pub fn continue_or_start(traceparent: Option<&[u8]>) -> Self {
        let [high, low, span_id] = random_words();
        match traceparent.and_then(parse_traceparent) {
            Some((trace_id, parent, sampled)) => Self {
                trace_id,
                span_id,
                parent_span_id: Some(parent),
                sampled,
            },
            None => Self {
                trace_id: u128::from(high) << 64 | u128::from(low),
                span_id,
                parent_span_id: None,
                sampled: true,
            },
        }
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex_trace_id(self.trace_id)
    }

    /// The `traceparent` header naming our span (ASCII), written into `buffer` without
    /// allocating.
    pub fn encode_traceparent<'b>(&self, buffer: &'b mut [u8; TRACEPARENT_LEN]) -> &'b [u8] {
        buffer[..3].copy_from_slice(b"00-");
        write_hex(&mut buffer[3..35], &self.trace_id.to_be_bytes());
        buffer[35] = b'-';
        write_hex(&mut buffer[36..52], &self.span_id.to_be_bytes());
        buffer[52..].copy_from_slice(if self.sampled { b"-01" } else { b"-00" });
        buffer
    }

    /// The `traceparent` header naming our span, for responses and outgoing calls.
    pub fn traceparent(&self) -> String {
        String::from_utf8_lossy(self.encode_traceparent(&mut [0; TRACEPARENT_LEN])).into_owned()
    }
}

/// 32 lowercase hex digits.
pub fn hex_trace_id(trace_id: u128) -> String {
    format!("{trace_id:032x}")
}

/// 16 lowercase hex digits.
pub fn hex_span_id(span_id: u64) -> String {
    format!("{span_id:016x}")
}

/// Lowercase hex digits only (the spec forbids upper case) into an integer.
fn parse_hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |value, digit| {
        let nibble = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            _ => return None,
        };
        Some(value << 4 | u128::from(nibble))
    })
}

/// `version-traceid-parentid-flags`; only version 00 is understood, and future versions are
/// read by their first four fields as the spec asks.
fn parse_traceparent(value: &[u8]) -> Option<(u128, u64, bool)> {
    let value = value.trim_ascii();
    if value.len() < TRACEPARENT_LEN || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let version = parse_hex(&value[..2])?;
    if version == 0xff || (version == 0 && value.len() != TRACEPARENT_LEN) {
        return None;
    }
    // A future version may append fields, each after a dash.
    if value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-' {
        return None;
    }
    let trace_id = parse_hex(&value[3..35])?;
    let parent = u64::try_from(parse_hex(&value[36..52])?).ok()?;
    let flags = parse_hex(&value[53..55])?;
    if trace_id == 0 || parent == 0 {
        return None;
    }
    Some((trace_id, parent, flags & 1 == 1))
}

/// Random ids need to be unique, not secret: a per-thread xorshift generator seeded once from
/// the OS keeps the hot path free of a getrandom call per request. Never returns zero.
pub fn next_random() -> u64 {
    let [word] = random_words();
    word
}

/// `N` draws from the per-thread generator, for one thread-local access.
fn random_words<const N: usize>() -> [u64; N] {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(uuid::Uuid::new_v4().as_u64_pair().0 | 1);
    }
    STATE.with(|state| {
        let mut x = state.get();
        let words = std::array::from_fn(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        });
        state.set(x);
        words
    })
}

fn random_u128() -> u128 {
    let [high, low] = random_words();
    u128::from(high) << 64 | u128::from(low)
}

/// A version 4 UUID from the per-thread generator: request ids, one per request.
pub fn fast_uuid_v4() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(random_u128().to_be_bytes()).into_uuid()
}

/// The request a thread is working on while the request's future is polled: its trace for
/// handlers to hand on to actors and jobs, and its ids for the log lines written meanwhile.
/// The log layers tag events with it ([`super::logs`]) instead of every request opening an
/// enabled `tracing` span: a span costs a registry slot, its fields formatted into a string
/// and enter/exit bookkeeping on every poll, for every request, although only the few requests
/// that log anything need their ids. And handlers read it instead of a request extension
/// (an allocation and a map insert per request). This costs two thread-local writes per poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestScope {
    pub trace: TraceContext,
    pub request_id: uuid::Uuid,
}

thread_local! {
    static CURRENT_REQUEST: std::cell::Cell<Option<RequestScope>> =
        const { std::cell::Cell::new(None) };
}

/// Runs `work` with `scope` as the thread's current request; the previous one (if any) comes
/// back afterwards, also when `work` panics.
pub fn in_request<R>(scope: RequestScope, work: impl FnOnce() -> R) -> R {
    struct Restore(Option<RequestScope>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT_REQUEST.with(|current| current.set(self.0));
        }
    }
    let _restore = Restore(CURRENT_REQUEST.with(|current| current.replace(Some(scope))));
    work()
}

/// The request this thread is polling, if any (see [`in_request`]).
pub fn current_request() -> Option<RequestScope> {
    CURRENT_REQUEST.with(std::cell::Cell::get)
}

/// One answered HTTP request, as the middleware saw it. Labels are `'static`: the middleware
/// resolves them from fixed tables, so recording a request copies no strings.
#[derive(Debug, Clone, Copy)]
pub struct RequestRecord {
    pub service: &'static str,
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
    pub duration_nanos: u64,
    /// When the answer was ready (the report turns it into wall-clock time).
    pub finished: MonotonicNanos,
    pub response_bytes: Option<u64>,
    pub trace_id: Option<u128>,
}

impl RequestRecord {
    pub fn status_code(&self) -> &'static str {
        status_label(self.status)
    }
}

/// The status as a label: three ASCII digits, no allocation.
pub fn status_label(status: u16) -> &'static str {
    STATUS_LABELS
        .get(usize::from(status.saturating_sub(100)))
        .copied()
        .unwrap_or("other")
}

static STATUS_LABELS: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
    (100u16..600)
        .map(|code| &*Box::leak(code.to_string().into_boxed_str()))
        .collect()
});

/// A finished request, for the recent list of `/api/v1/monitor/traces`.
#[derive(Debug, Clone, Serialize)]
pub struct TraceSummary {
    pub trace_id: Option<String>,
    pub service: &'static str,
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
    pub duration_ms: f64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// What `/api/v1/monitor/traces` reports.
#[derive(Debug, Clone, Serialize)]
pub struct TraceReport {
    pub count: u64,
    /// Requests answered with a 5xx status.
    pub errors: u64,
    pub error_rate: f64,
    pub duration_ms: DurationStats,
    pub recent: Vec<TraceSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DurationStats {
    /// Over every request since start.
    pub avg: f64,
    pub max: f64,
    /// Over the recent requests.
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// Counters and the recent ring behind one mutex: a request takes one uncontended lock and
/// writes plain integers, instead of five atomic updates plus the lock for the ring.
#[derive(Clone)]
pub struct TraceStats {
    inner: Arc<Mutex<TraceState>>,
}

struct TraceState {
    count: u64,
    errors: u64,
    client_errors: u64,
    duration_micros: u64,
    max_micros: u64,
    /// Kept compact (no strings, no wall clock): formatted when a report asks. A ring:
    /// `recent[next]` is the oldest once it is full.
    recent: Vec<RecentRequest>,
    capacity: usize,
    next: usize,
}

/// What the recent list reports of a request.
#[derive(Clone, Copy)]
struct RecentRequest {
    service: &'static str,
    route: &'static str,
    method: &'static str,
    status: u16,
    duration_micros: u64,
    finished: MonotonicNanos,
    /// Zero for none (trace ids never are): half the size of an `Option<u128>`.
    trace_id: u128,
}

impl TraceState {
    /// Oldest first.
    fn recent(&self) -> impl Iterator<Item = &RecentRequest> {
        let (newer, older) = self.recent.split_at(self.next);
        older.iter().chain(newer)
    }
}

impl TraceStats {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            inner: Arc::new(Mutex::new(TraceState {
                count: 0,
                errors: 0,
                client_errors: 0,
                duration_micros: 0,
                max_micros: 0,
                recent: Vec::with_capacity(capacity),
                capacity,
                next: 0,
            })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, TraceState> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn record(&self, request: &RequestRecord) {
        let micros = request.duration_nanos / 1000;
        let mut state = self.state();
        state.count += 1;
        if request.status >= 500 {
            state.errors += 1;
        } else if request.status >= 400 {
            state.client_errors += 1;
        }
        state.duration_micros = state.duration_micros.saturating_add(micros);
        state.max_micros = state.max_micros.max(micros);
        let recent = RecentRequest {
            service: request.service,
            route: request.route,
            method: request.method,
            status: request.status,
            duration_micros: micros,
            finished: request.finished,
            trace_id: request.trace_id.unwrap_or(0),
        };
        if state.recent.len() < state.capacity {
            state.recent.push(recent);
        } else {
            let next = state.next;
            if let Some(oldest) = state.recent.get_mut(next) {
                *oldest = recent;
            }
            state.next = if next + 1 == state.capacity {
                0
            } else {
                next + 1
            };
        }
    }

    /// (requests, 5xx errors) since start.
    pub fn totals(&self) -> (u64, u64) {
        let state = self.state();
        (state.count, state.errors)
    }

    /// Requests answered with a 4xx status since start.
    pub fn client_errors(&self) -> u64 {
        self.state().client_errors
    }

    pub fn report(&self, recent_limit: usize) -> TraceReport {
        let (now, wall_now) = (MonotonicNanos::now(), OffsetDateTime::now_utc());
        let state = self.state();
        let (count, errors) = (state.count, state.errors);
        let total_ms = state.duration_micros as f64 / 1000.0;
        let max_ms = state.max_micros as f64 / 1000.0;
        let recent: Vec<TraceSummary> = state
            .recent()
            .map(|request| TraceSummary {
                trace_id: (request.trace_id != 0).then(|| hex_trace_id(request.trace_id)),
                service: request.service,
                route: request.route,
                method: request.method,
                status: request.status,
                duration_ms: request.duration_micros as f64 / 1000.0,
                at: wall_now - now.duration_since(request.finished),
            })
            .collect();
        drop(state);
        let mut durations: Vec<f64> = recent.iter().map(|t| t.duration_ms).collect();
        durations.sort_by(f64::total_cmp);
        let quantile = |q: f64| -> f64 {
            if durations.is_empty() {
                return 0.0;
            }
            let rank = ((durations.len() as f64 - 1.0) * q).round() as usize;
            durations[rank.min(durations.len() - 1)]
        };
        TraceReport {
            count,
            errors,
            error_rate: if count == 0 {
                0.0
            } else {
                errors as f64 / count as f64
            },
            duration_ms: DurationStats {
                avg: if count == 0 {
                    0.0
                } else {
                    total_ms / count as f64
                },
                max: max_ms,
                p50: quantile(0.5),
                p95: quantile(0.95),
                p99: quantile(0.99),
            },
            recent: recent.into_iter().rev().take(recent_limit).collect(),
        }
    }
}

/// A message carrying the trace of the request that caused it. The receiving actor handles
/// the inner message inside a span with the trace id, so its logs name the trace.
/// Implemented per actor with [`traced_handlers!`](crate::monitor::traced_handlers).
#[derive(Debug)]
pub struct Traced<M> {
    pub trace_id: String,
    pub message: M,
}

impl<M: actix::Message> actix::Message for Traced<M> {
    type Result = M::Result;
}

impl<M> Traced<M> {
    pub fn new(trace: Option<&TraceContext>, message: M) -> Self {
        Self {
            trace_id: trace.map(TraceContext::trace_id_hex).unwrap_or_default(),
            message,
        }
    }
}

/// Implements `Handler<Traced<M>>` for an actor and each listed message by delegating to
/// `Handler<M>` inside a `actor_message` span that carries the trace id.
macro_rules! traced_handlers {
    ($actor:ty: $($message:ty),+ $(,)?) => {$(
        impl actix::Handler<$crate::monitor::traces::Traced<$message>> for $actor {
            type Result = <$actor as actix::Handler<$message>>::Result;
            fn handle(
                &mut self,
                traced: $crate::monitor::traces::Traced<$message>,
                ctx: &mut Self::Context,
            ) -> Self::Result {
                let span = tracing::info_span!(
                    "actor_message",
                    actor = stringify!($actor),
                    message = stringify!($message),
                    trace_id = %traced.trace_id,
                );
                let _entered = span.enter();
                <$actor as actix::Handler<$message>>::handle(self, traced.message, ctx)
            }
        }
    )+};
}
pub(crate) use traced_handlers;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_traceparent_is_continued_and_invalid_is_replaced() {
        let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let trace = TraceContext::continue_or_start(Some(caller.as_bytes()));
        assert_eq!(trace.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace.parent_span_id, Some(0x00f0_67aa_0ba9_02b7));
        assert_ne!(trace.span_id, 0x00f0_67aa_0ba9_02b7);
        assert_eq!(trace.traceparent().len(), TRACEPARENT_LEN);
        assert!(trace
            .traceparent()
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(trace.traceparent().ends_with("-01"));

        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            let trace = TraceContext::continue_or_start(Some(bad.as_bytes()));
            assert_ne!(
                trace.trace_id_hex(),
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "{bad}"
            );
            assert_ne!(trace.trace_id, 0);
            assert_eq!(trace.parent_span_id, None, "{bad}");
        }
        // A future version with extra fields is read by its first four.
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more";
        let trace = TraceContext::continue_or_start(Some(future.as_bytes()));
        assert_eq!(trace.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(!trace.sampled);
    }

    #[test]
    fn stats_count_errors_and_durations() {
        let stats = TraceStats::new(4);
        for (status, ms) in [(200, 10), (503, 30), (200, 20), (404, 40), (500, 50)] {
            stats.record(&RequestRecord {
                service: "gateway",
                route: "/health",
                method: "GET",
                status,
                duration_nanos: ms * 1_000_000,
                finished: MonotonicNanos::now(),
                response_bytes: None,
                trace_id: None,
            });
        }
        let report = stats.report(10);
        assert_eq!((report.count, report.errors), (5, 2));
        assert!((report.error_rate - 0.4).abs() < 1e-9);
        assert!((report.duration_ms.avg - 30.0).abs() < 1e-6);
        assert!((report.duration_ms.max - 50.0).abs() < 1e-6);
        assert_eq!(report.recent.len(), 4, "the ring keeps its capacity");
        assert_eq!(report.recent[0].status, 500, "newest first");
    }
}
