//! A request's id, for [`super::observe`].
//!
//! No `tracing` span per request (neither `tracing_actix_web::TracingLogger`'s nor our own):
//! an enabled span costs a registry slot, its fields formatted and enter/exit work on every
//! poll, for every request, and was a third of the monitoring overhead in the load bench.
//! Instead the request's ids are the thread's current
//! [`RequestScope`](streamgate_actors::monitor::traces::RequestScope) while its future is
//! polled, and the log layers read them only when something is logged. A response body is
//! polled outside that scope (a logging body would log without ids; ours don't log). The
//! method, route, status, client and duration are in the request metrics, the trace stats and
//! the OTLP span.

use std::fmt;

use streamgate_actors::monitor::traces;

/// The id of one request (a random UUID), in its extensions and in `x-request-id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId(uuid::Uuid);

impl RequestId {
    pub(super) fn generate() -> Self {
        Self(traces::fast_uuid_v4())
    }

    pub fn uuid(&self) -> uuid::Uuid {
        self.0
    }

    /// The hyphenated form, without allocating.
    pub fn encode<'b>(&self, buffer: &'b mut [u8; 36]) -> &'b str {
        self.0.hyphenated().encode_lower(buffer)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}
