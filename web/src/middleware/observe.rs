//! The one middleware for monitoring and rate limits: per request it takes the request's id
//! and W3C trace context from the root span (`super::span`), checks the client's token bucket,
//! and when the answer is ready counts it (metrics, trace stats, OTLP span) and sets
//! `x-request-id` (and `traceparent` when the caller sent one). It wraps actix's router directly, so the route
//! label is the pattern of the resource that answered (`routes::table::route_pattern`). Handlers
//! find the request's trace in the thread's [`RequestScope`] while the request is polled.
//! Turned off (no metrics, no rate limits) it only forwards.

use std::{
    future::{ready, Future, Ready},
    pin::Pin,
    rc::Rc,
    task::{Context, Poll},
    time::{Instant, SystemTime},
};

use actix_web::{
    body::{BodySize, BoxBody, MessageBody},
    dev::{Service, ServiceRequest, ServiceResponse, Transform},
    http::header::{HeaderName, HeaderValue},
    Error, HttpMessage,
};
use futures_util::future::LocalBoxFuture;
use streamgate_actors::monitor::{
    otlp::{AttributeValue, FinishedSpan, SpanExporter, SpanKind},
    traces::{self, RequestRecord, RequestScope},
    Metrics,
};

use super::{
    rate_limit::{self, RateLimits, ServiceId},
    span::RequestTrace,
    REQUEST_ID_HEADER, TRACEPARENT_HEADER, UNMATCHED_ROUTE,
};

/// The middleware. `metrics: None` turns monitoring and tracing off (no log scope, ids, headers
/// or counts), `limits: None` turns rate limits off. `spans: Some` exports each request's span
/// over OTLP (needs monitoring on).
#[derive(Clone)]
pub struct Observe {
    metrics: Option<Metrics>,
    limits: Option<RateLimits>,
    spans: Option<SpanExporter>,
}

impl Observe {
    pub fn new(metrics: Option<Metrics>, limits: Option<RateLimits>) -> Self {
        Self {
            metrics,
            limits,
            spans: None,
        }
    }

    pub fn exporting_spans(mut self, spans: Option<SpanExporter>) -> Self {
        self.spans = spans;
        self
    }
}

impl<S> Transform<S, ServiceRequest> for Observe
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = Error> + 'static,
    S::Future: Unpin,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = Error;
    type Transform = ObserveService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(ObserveService {
            service,
            state: Rc::new(WorkerState {
                metrics: self.metrics.clone(),
                limits: self.limits.clone(),
                spans: self.spans.clone(),
            }),
        }))
    }
}

/// One per HTTP worker (actix builds the app once per worker thread).
pub struct WorkerState {
    metrics: Option<Metrics>,
    limits: Option<RateLimits>,
    spans: Option<SpanExporter>,
}

pub struct ObserveService<S> {
    service: S,
    state: Rc<WorkerState>,
}

/// What the answer needs from the start of the request, when monitoring is on.
struct Observed {
    state: Rc<WorkerState>,
    started: Instant,
    /// The request's trace and id, the thread's current request while it is polled.
    scope: RequestScope,
    /// The caller sent a `traceparent`, so it gets ours back (continued, or a fresh trace when
    /// theirs was invalid); callers that sent none get none.
    echo_traceparent: bool,
    service: ServiceId,
    method: &'static str,
}

impl<S> Service<ServiceRequest> for ObserveService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = Error> + 'static,
    S::Future: Unpin,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = Error;
    type Future = ObserveFuture<S::Future>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let state = &self.state;
        if state.metrics.is_none() && state.limits.is_none() {
            return ObserveFuture {
                inner: Inner::Call(self.service.call(req)),
                observed: None,
            };
        }
        let service = rate_limit::service_of(&req);
        let client_ip = state
            .limits
            .as_ref()
            .and_then(|limits| rate_limit::client_ip(&req, limits.trusted_proxies()));
        let observed = state.metrics.as_ref().map(|metrics| {
            metrics.request_started();
            // The root span (`span::RequestSpan`) started the trace; without it, a fresh one.
            let trace = req.extensions().get::<RequestTrace>().copied();
            let trace = trace.unwrap_or_else(|| RequestTrace::start(&req, uuid::Uuid::new_v4()));
            Observed {
                state: Rc::clone(state),
                started: Instant::now(),
                scope: trace.scope,
                echo_traceparent: trace.echo_traceparent,
                service,
                method: method_label(req.method().as_str()),
            }
        });
        let refusal = match (&state.limits, client_ip) {
            (Some(limits), Some(client)) => {
                limits.check(service, client).err().map(|wait| {
                    // In the request's scope: the refusal's log line names the request's trace.
                    let scope = observed.as_ref().map(|observed| observed.scope);
                    scoped(scope, || limits.refuse(&req, service, client, wait))
                })
            }
            _ => None,
        };
        let inner = match refusal {
            Some(response) => Inner::Refused(Box::pin(rate_limit::answer_refused(req, response))),
            None => Inner::Call(self.service.call(req)),
        };
        ObserveFuture { inner, observed }
    }
}

enum Inner<F> {
    /// The router's future.
    Call(F),
    /// The 429, once the refused request's small body is read (see
    /// `rate_limit::answer_refused`).
    Refused(LocalBoxFuture<'static, ServiceResponse<BoxBody>>),
    Done,
}

/// Polls the inner service in the request's scope, then counts and labels the answer.
pub struct ObserveFuture<F> {
    inner: Inner<F>,
    observed: Option<Observed>,
}

impl<F> Drop for ObserveFuture<F> {
    fn drop(&mut self) {
        // Dropped unanswered (the client went away): still leaves the in-flight gauge.
        if let Some(metrics) = self.observed.take().and_then(|o| o.state.metrics.clone()) {
            metrics.request_dropped();
        }
    }
}

impl<F> Future for ObserveFuture<F>
where
    F: Future<Output = Result<ServiceResponse<BoxBody>, Error>> + Unpin,
{
    type Output = Result<ServiceResponse<BoxBody>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let scope = this.observed.as_ref().map(|observed| observed.scope);
        let polled = match &mut this.inner {
            Inner::Call(call) => scoped(scope, || Pin::new(call).poll(cx)),
            Inner::Refused(refused) => refused.as_mut().poll(cx).map(Ok),
            Inner::Done => Poll::Ready(Err(actix_web::error::ErrorInternalServerError(
                "request polled after it was answered",
            ))),
        };
        let Poll::Ready(mut outcome) = polled else {
            return Poll::Pending;
        };
        this.inner = Inner::Done;
        if let Some(observed) = this.observed.take() {
            finish(observed, &mut outcome);
        }
        Poll::Ready(outcome)
    }
}

/// Runs `work` in the request's log scope, if monitoring gave it one.
fn scoped<R>(scope: Option<RequestScope>, work: impl FnOnce() -> R) -> R {
    match scope {
        Some(scope) => traces::in_request(scope, work),
        None => work(),
    }
}

/// Counts the answer and gives it the request id (and our `traceparent` if the caller sent one).
fn finish<B: MessageBody>(observed: Observed, result: &mut Result<ServiceResponse<B>, Error>) {
    let duration = observed.started.elapsed();
    // The router needs the request to itself while it routes, so the pattern is read from
    // the answer; an error answer has no request and counts as unmatched.
    let (pattern, status, response_bytes) = match &*result {
        Ok(response) => (
            crate::routes::table::route_pattern(response.request()),
            response.status(),
            match response.response().body().size() {
                BodySize::Sized(bytes) => Some(bytes),
                _ => None,
            },
        ),
        Err(error) => (None, error.as_response_error().status_code(), None),
    };
    let route = pattern.unwrap_or(UNMATCHED_ROUTE);
    let method = observed.method;
    let trace = observed.scope.trace;
    let request_id = observed.scope.request_id.hyphenated().to_string();
    if let Some(metrics) = &observed.state.metrics {
        metrics.request_answered(&RequestRecord {
            service: observed.service.label(),
            route,
            method,
            status: status.as_u16(),
            duration,
            response_bytes,
            trace_id: Some(trace.trace_id),
        });
    }
    if let Some(spans) = &observed.state.spans {
        let end = SystemTime::now();
        spans.export(FinishedSpan {
            trace_id: trace.trace_id,
            span_id: trace.span_id,
            parent_span_id: trace.parent_span_id,
            name: format!("{method} {route}"),
            kind: SpanKind::Server,
            start: end.checked_sub(duration).unwrap_or(end),
            end,
            attributes: vec![
                ("http.request.method", AttributeValue::Text(method.into())),
                ("http.route", AttributeValue::Text(route.to_string().into())),
                (
                    "http.response.status_code",
                    AttributeValue::Int(i64::from(status.as_u16())),
                ),
                (
                    "streamgate.service",
                    AttributeValue::Text(observed.service.label().into()),
                ),
                (
                    "streamgate.request_id",
                    AttributeValue::Text(request_id.clone().into()),
                ),
            ],
            error: status.is_server_error(),
        });
    }
    if let Ok(response) = result {
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            headers.insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
        }
        if observed.echo_traceparent {
            if let Ok(value) = HeaderValue::from_str(&trace.traceparent()) {
                headers.insert(HeaderName::from_static(TRACEPARENT_HEADER), value);
            }
        }
    }
}

/// The `method` label. Methods outside the standard set share one label: clients choose
/// them, and a label value per invented method would let them grow the series without bound.
fn method_label(method: &str) -> &'static str {
    const STANDARD: [&str; 9] = [
        "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "CONNECT", "TRACE",
    ];
    STANDARD
        .into_iter()
        .find(|standard| *standard == method)
        .unwrap_or("other")
}
