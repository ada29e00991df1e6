//! The root span of every request, its request id and its W3C trace context. Our own
//! middleware rather than `tracing_actix_web::TracingLogger`: that one draws a UUID from the OS
//! (a `getrandom` system call) and computes the span's fields (route match, connection info,
//! strings) for every request even when no subscriber wants the span. Here the id comes from a
//! per-thread generator and the fields are computed only when the span is enabled. The span
//! and its fields are the ones `tracing_actix_web::root_span!` declares, plus `trace_id`.

use std::{
    fmt,
    future::{ready, Ready},
    pin::Pin,
    task::{Context, Poll},
};

use actix_web::{
    body::{BodySize, BoxBody, MessageBody},
    dev::{Service, ServiceRequest, ServiceResponse, Transform},
    http::Version,
    web::Bytes,
    Error, HttpMessage,
};
use futures_util::future::LocalBoxFuture;
use streamgate_actors::monitor::traces::{self, TraceContext};
use tracing::{field::Empty, Instrument, Span};
use tracing_actix_web::{DefaultRootSpanBuilder, RootSpanBuilder};

use super::TRACEPARENT_HEADER;

/// The id of one request (a random UUID), in its extensions and in `x-request-id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId(uuid::Uuid);

impl RequestId {
    fn generate() -> Self {
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

/// Opens the root span, gives the request its id and its [`TraceContext`] (a valid incoming
/// `traceparent` is continued, an invalid or missing one replaced by a new trace); handlers
/// find both in the request extensions. The span stays open until the body is sent.
pub struct TracedRootSpan;

impl<S, B> Transform<S, ServiceRequest> for TracedRootSpan
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    S::Future: 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<SpanBody>;
    type Error = Error;
    type Transform = TracedRootSpanService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(TracedRootSpanService { service }))
    }
}

pub struct TracedRootSpanService<S> {
    service: S,
}

impl<S, B> Service<ServiceRequest> for TracedRootSpanService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    S::Future: 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<SpanBody>;
    type Error = Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let request_id = RequestId::generate();
        let trace = TraceContext::continue_or_start(
            req.headers()
                .get(TRACEPARENT_HEADER)
                .and_then(|value| value.to_str().ok()),
        );
        let span = root_span(&req, request_id, &trace);
        {
            let mut extensions = req.extensions_mut();
            extensions.insert(request_id);
            extensions.insert(trace);
        }
        let future = span.in_scope(|| self.service.call(req));
        Box::pin(async move {
            let outcome = future.instrument(span.clone()).await;
            if !span.is_disabled() {
                DefaultRootSpanBuilder::on_request_end(span.clone(), &outcome);
            }
            outcome.map(|response| {
                response.map_body(|_, body| SpanBody {
                    body: body.boxed(),
                    span,
                })
            })
        })
    }
}

/// The span, with the fields of `tracing_actix_web::root_span!`. Field values are computed
/// by the macro only when some subscriber enables the span.
fn root_span(req: &ServiceRequest, request_id: RequestId, trace: &TraceContext) -> Span {
    // With no subscriber installed at all, `tracing`'s `log` compatibility path would still
    // evaluate and format every field of the (disabled) span for a `log` logger, which
    // StreamGate never installs: skip the span entirely.
    if !tracing::dispatcher::has_been_set() {
        return Span::none();
    }
    tracing::info_span!(
        "HTTP request",
        http.method = %req.method().as_str(),
        http.route = %RoutePattern(req),
        http.flavor = %http_flavor(req.version()),
        http.scheme = %req.connection_info().scheme(),
        http.host = %req.connection_info().host(),
        http.client_ip = %req.connection_info().realip_remote_addr().unwrap_or(""),
        http.user_agent = %req
            .headers()
            .get("User-Agent")
            .and_then(|h| h.to_str().ok())
            .unwrap_or(""),
        http.target = %req.uri().path_and_query().map(|p| p.as_str()).unwrap_or(""),
        http.status_code = Empty,
        otel.name = %OtelName(req),
        otel.kind = "server",
        otel.status_code = Empty,
        trace_id = %trace.trace_id,
        request_id = %request_id,
        exception.message = Empty,
        exception.details = Empty,
    )
}

/// The matched route pattern, looked up only if a subscriber formats the field.
struct RoutePattern<'r>(&'r ServiceRequest);

impl fmt::Display for RoutePattern<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.match_pattern() {
            Some(pattern) => f.write_str(&pattern),
            None => f.write_str("default"),
        }
    }
}

/// `METHOD route`, as OpenTelemetry names server spans.
struct OtelName<'r>(&'r ServiceRequest);

impl fmt::Display for OtelName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0.method().as_str(), RoutePattern(self.0))
    }
}

fn http_flavor(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2.0",
        Version::HTTP_3 => "3.0",
        _ => "unknown",
    }
}

/// A response body that keeps the request's span open (and entered while polled) until the
/// last byte is sent, so streaming bodies log inside their request's trace.
pub struct SpanBody {
    body: BoxBody,
    span: Span,
}

impl MessageBody for SpanBody {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = &mut *self;
        let span = &this.span;
        let body = Pin::new(&mut this.body);
        span.in_scope(|| body.poll_next(cx))
    }

    fn try_into_bytes(self) -> Result<Bytes, Self>
    where
        Self: Sized,
    {
        match self.body.try_into_bytes() {
            Ok(bytes) => Ok(bytes),
            Err(body) => Err(Self {
                body,
                span: self.span,
            }),
        }
    }
}
