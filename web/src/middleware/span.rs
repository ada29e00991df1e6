//! The request's root span, built by `tracing_actix_web::TracingLogger`: it carries the request
//! id (tracing-actix-web's `RequestId`), the W3C trace id, the method, and once answered the
//! route pattern and status (at debug level: the request's log lines carry its ids anyway).
//! The trace context it continues or starts is left in the request's extensions for
//! [`super::Observe`] (headers, metrics, OTLP span).

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    Error, HttpMessage,
};
use streamgate_actors::monitor::traces::{RequestScope, TraceContext};
use tracing::{field::Empty, Span};
use tracing_actix_web::{RequestId, RootSpanBuilder};

use super::{TRACEPARENT_HEADER, UNMATCHED_ROUTE};

/// The request's trace as the root span started it, in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct RequestTrace {
    pub scope: RequestScope,
    /// The caller sent a `traceparent`, so it gets ours back (continued, or a fresh trace when
    /// theirs was invalid); callers that sent none get none.
    pub echo_traceparent: bool,
}

impl RequestTrace {
    /// Continues the caller's trace (if its `traceparent` is valid) under `request_id`.
    pub fn start(req: &ServiceRequest, request_id: uuid::Uuid) -> Self {
        let traceparent = req.headers().get(TRACEPARENT_HEADER);
        Self {
            scope: RequestScope {
                trace: TraceContext::continue_or_start(traceparent.map(|value| value.as_bytes())),
                request_id,
            },
            echo_traceparent: traceparent.is_some(),
        }
    }
}

/// The [`RootSpanBuilder`] of StreamGate's requests.
pub struct RequestSpan;

impl RootSpanBuilder for RequestSpan {
    fn on_request_start(req: &ServiceRequest) -> Span {
        let request_id = req
            .extensions()
            .get::<RequestId>()
            .map_or_else(uuid::Uuid::new_v4, |id| **id);
        let trace = RequestTrace::start(req, request_id);
        req.extensions_mut().insert(trace);
        // Debug level: log lines already carry the request's ids (`RequestTagged`), so the span
        // is built only when debug logging asks for it, not on every request.
        tracing::debug_span!(
            "http_request",
            method = %req.method(),
            route = Empty,
            status = Empty,
            request_id = %request_id,
            trace_id = %trace.scope.trace.trace_id_hex(),
        )
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        let (route, status) = match outcome {
            Ok(response) => (
                crate::routes::table::route_pattern(response.request()),
                response.response().status(),
            ),
            Err(error) => (None, error.as_response_error().status_code()),
        };
        span.record("route", route.unwrap_or(UNMATCHED_ROUTE));
        span.record("status", status.as_u16());
    }
}
