//! The root span of every request and its request id, for [`super::observe`]. Our own rather
//! than `tracing_actix_web::TracingLogger`: that one draws a UUID from the OS (a `getrandom`
//! system call) and computes the span's fields (route match, connection info, strings) for
//! every request even when no subscriber wants the span. Here the id comes from a per-thread
//! generator and the fields are computed only when the span is enabled. The span carries the
//! method, path, status, `trace_id` and `request_id`; the route, client and user agent are in
//! the request metrics and the OTLP span, so log spans don't pay to format them again.

use std::{
    fmt,
    pin::Pin,
    task::{Context, Poll},
};

use actix_web::{
    body::{BodySize, MessageBody},
    dev::ServiceRequest,
    web::Bytes,
};
use pin_project_lite::pin_project;
use streamgate_actors::monitor::traces::{self, TraceContext};
use tracing::{field::Empty, Span};

/// The id of one request (a random UUID), in its extensions and in `x-request-id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId(uuid::Uuid);

impl RequestId {
    pub(super) fn generate() -> Self {
        Self(traces::fast_uuid_v4())
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

/// The span, with the fields of `tracing_actix_web::root_span!`. Field values are computed
/// by the macro only when some subscriber enables the span.
pub(super) fn root_span(req: &ServiceRequest, request_id: RequestId, trace: &TraceContext) -> Span {
    // With no subscriber installed at all, `tracing`'s `log` compatibility path would still
    // evaluate and format every field of the (disabled) span for a `log` logger, which
    // StreamGate never installs: skip the span entirely.
    if !tracing::dispatcher::has_been_set() {
        return Span::none();
    }
    // Few and cheap fields on purpose: an enabled span's fields are formatted into a string
    // per request by the fmt layer, and `connection_info()` (scheme, host, client IP) or the
    // route match would parse headers and run the router a second time for every request.
    tracing::info_span!(
        "HTTP request",
        http.method = %req.method().as_str(),
        http.target = %req.path(),
        http.status_code = Empty,
        trace_id = %HexTraceId(trace.trace_id),
        request_id = %request_id,
        exception.message = Empty,
        exception.details = Empty,
    )
}

/// A trace id as 32 hex digits, formatted only if a subscriber records the field.
struct HexTraceId(u128);

impl fmt::Display for HexTraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

pin_project! {
    /// A response body that keeps the request's span open (and entered while polled) until
    /// the last byte is sent, so streaming bodies log inside their request's trace.
    pub struct SpanBody<B> {
        #[pin]
        body: B,
        span: Span,
    }
}

impl<B> SpanBody<B> {
    pub(super) fn new(body: B, span: Span) -> Self {
        Self { body, span }
    }
}

impl<B: MessageBody> MessageBody for SpanBody<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.project();
        let body = this.body;
        if this.span.is_disabled() {
            return body.poll_next(cx);
        }
        this.span.in_scope(|| body.poll_next(cx))
    }

    fn try_into_bytes(self) -> Result<Bytes, Self>
    where
        Self: Sized,
    {
        let Self { body, span } = self;
        body.try_into_bytes().map_err(|body| Self { body, span })
    }
}
