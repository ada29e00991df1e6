//! Request tracing: W3C trace context (`traceparent`), the request a thread is polling, and
//! the per-request record the HTTP middleware hands to [`super::Metrics`]. A trace reaches an
//! actor one way: as the `trace_id` of the message that starts traced work (an upload, a job).

pub use super::trace_stats::{DurationStats, ServiceCounts, TraceReport, TraceStats, TraceSummary};

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

impl TraceContext {
    /// Continues the caller's trace when `traceparent` is valid (version 00, non-zero ids),
    /// otherwise starts a new one. Either way a fresh span id is ours.
    pub fn continue_or_start(traceparent: Option<&[u8]>) -> Self {
        let span_id = random_span_id();
        match traceparent.and_then(parse_traceparent) {
            Some((trace_id, parent, sampled)) => Self {
                trace_id,
                span_id,
                parent_span_id: Some(parent),
                sampled,
            },
            None => Self {
                // A v4 UUID has fixed version bits, so it is never zero.
                trace_id: uuid::Uuid::new_v4().as_u128(),
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

    /// The `traceparent` header naming our span, for responses and outgoing calls.
    pub fn traceparent(&self) -> String {
        let flags = if self.sampled { "01" } else { "00" };
        format!("00-{:032x}-{:016x}-{flags}", self.trace_id, self.span_id)
    }
}

/// 32 lowercase hex digits.
pub fn hex_trace_id(trace_id: u128) -> String {
    format!("{trace_id:032x}")
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

/// Length of a version 00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;

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

/// A random, non-zero span id.
pub fn random_span_id() -> u64 {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id;
        }
    }
}

/// The request a thread is working on while the request's future is polled: its trace for
/// handlers to hand on to actors and jobs, and its ids for the log lines written meanwhile.
/// The log layers tag events with it ([`super::logs`]), and handlers read it to hand the trace
/// on without taking the request as an argument.
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

/// One answered HTTP request, as the middleware saw it.
#[derive(Debug, Clone, Copy)]
pub struct RequestRecord<'a> {
    pub service: &'static str,
    /// The matched route pattern, or `"unmatched"`.
    pub route: &'a str,
    pub method: &'a str,
    pub status: u16,
    pub duration: std::time::Duration,
    pub response_bytes: Option<u64>,
    pub trace_id: Option<u128>,
}

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
}
