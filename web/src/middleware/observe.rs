//! The one middleware for monitoring, tracing and rate limits: per request it gives the
//! request its id, W3C trace context and log scope (see [`super::trace`]), checks the client's token bucket,
//! and when the answer is ready counts it (metrics, trace stats) and sets `x-request-id` (and
//! `traceparent` when the caller sent one). One hand-written service instead of a chain of
//! `from_fn` middlewares, and the innermost layer: it wraps actix's router directly, whose
//! future is already boxed and whose body is `BoxBody`, so it adds no box, no body wrapper
//! and no `EitherBody` for its own 429s. Handlers find the request's trace in the thread's
//! [`RequestScope`] (no request extension), labels are resolved once per worker (see
//! [`WorkerState::series`]), ids stay integers until a header needs their text. Turned off
//! (no metrics, no rate limits) it only forwards.

use std::{
    cell::RefCell,
    collections::HashMap,
    future::{ready, Future, Ready},
    hash::{BuildHasherDefault, Hasher},
    pin::Pin,
    rc::Rc,
    task::{Context, Poll},
    time::SystemTime,
};

use actix_web::{
    body::{BodySize, BoxBody, MessageBody},
    dev::{Service, ServiceRequest, ServiceResponse, Transform},
    http::{
        header::{HeaderName, HeaderValue},
        Method,
    },
    Error,
};
use futures_util::future::LocalBoxFuture;
use streamgate_actors::monitor::{
    clock::MonotonicNanos,
    otlp::{AttributeValue, FinishedSpan, SpanExporter, SpanKind},
    traces::{self, RequestRecord, RequestScope, TraceContext, TRACEPARENT_LEN},
    HttpRecorder, HttpSeries, Metrics,
};

use super::{
    buckets::BucketCache,
    fallback_route_label,
    rate_limit::{self, RateLimits, ServiceId},
    routed,
    trace::{RequestId, REQUEST_ID_LEN},
    REQUEST_ID_HEADER, TRACEPARENT_HEADER,
};

/// The middleware. `metrics: None` turns monitoring and tracing off (no log scope, ids, headers or
/// counts), `limits: None` turns rate limits off.
/// `spans: Some` exports each request's span over OTLP (needs monitoring on).
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

/// Observe wraps actix's router: its future is boxed (so `Unpin`) and its body is `BoxBody`.
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
                recorder: self.metrics.as_ref().map(Metrics::http_recorder),
                limits: self.limits.clone(),
                spans: self.spans.clone(),
                series: RefCell::default(),
                buckets: RefCell::default(),
            }),
        }))
    }
}

/// One per HTTP worker (actix builds the app once per worker thread): no sharing, no locks.
pub struct WorkerState {
    /// The worker's own copies of the request metrics; `None` with monitoring off.
    recorder: Option<HttpRecorder>,
    limits: Option<RateLimits>,
    spans: Option<SpanExporter>,
    /// The metric series each (service, route, method, status) bumps, keyed by the labels'
    /// addresses: every label is a `'static` string from a fixed table, so the key is four
    /// integers and the map stays as small as the app's routes × methods × statuses.
    series: RefCell<WorkerSeries>,
    buckets: RefCell<BucketCache>,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct SeriesKey {
    service: usize,
    route: usize,
    method: usize,
    status: u16,
}

/// Multiply-rotate over whole words (FxHash's mix). The keys are our own label addresses,
/// never client input, so a keyed hash would buy nothing.
#[derive(Default)]
struct WordHasher(u64);

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u64(u64::from(*byte));
        }
    }
    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, word: usize) {
        self.write_u64(word as u64);
    }
    fn write_u16(&mut self, word: u16) {
        self.write_u64(u64::from(word));
    }
}

/// Slots of [`WorkerSeries::recent`].
const RECENT_SERIES: usize = 64;

/// A worker's series: every one it has used, an index by labels, and in front of the index a
/// direct-mapped cache (a slot per key, no probing) that answers most requests with a
/// multiply and one comparison instead of hashing four words and probing the map.
pub struct WorkerSeries {
    all: Vec<HttpSeries>,
    by_key: HashMap<SeriesKey, usize, BuildHasherDefault<WordHasher>>,
    recent: [Option<(SeriesKey, usize)>; RECENT_SERIES],
}

impl Default for WorkerSeries {
    fn default() -> Self {
        Self {
            all: Vec::new(),
            by_key: HashMap::default(),
            recent: [None; RECENT_SERIES],
        }
    }
}

impl WorkerSeries {
    fn slot(key: &SeriesKey) -> usize {
        let mixed = (key.route ^ key.method.rotate_left(17) ^ key.service.rotate_left(31)) as u64
            ^ u64::from(key.status) << 48;
        (mixed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - RECENT_SERIES.trailing_zeros()))
            as usize
    }

    /// The series for `key`, made with `make` the first time.
    fn get(&mut self, key: SeriesKey, make: impl FnOnce() -> HttpSeries) -> Option<&HttpSeries> {
        let slot = Self::slot(&key);
        let index = match self.recent.get(slot).copied().flatten() {
            Some((cached, index)) if cached == key => index,
            _ => {
                let index = match self.by_key.get(&key) {
                    Some(index) => *index,
                    None => {
                        self.all.push(make());
                        self.by_key.insert(key, self.all.len() - 1);
                        self.all.len() - 1
                    }
                };
                if let Some(recent) = self.recent.get_mut(slot) {
                    *recent = Some((key, index));
                }
                index
            }
        };
        self.all.get(index)
    }
}

impl WorkerState {
    fn observe(&self, recorder: &HttpRecorder, record: &RequestRecord) {
        let key = SeriesKey {
            service: record.service.as_ptr() as usize,
            route: record.route.as_ptr() as usize,
            method: record.method.as_ptr() as usize,
            status: record.status,
        };
        let mut series = self.series.borrow_mut();
        let series = series.get(key, || {
            recorder.series(record.service, record.route, record.method, record.status)
        });
        if let Some(series) = series {
            recorder.request_answered(series, record);
        }
    }
}

pub struct ObserveService<S> {
    service: S,
    state: Rc<WorkerState>,
}

/// What the answer needs from the start of the request, when monitoring is on.
struct Observed {
    state: Rc<WorkerState>,
    started: MonotonicNanos,
    /// The request's trace and id, the thread's current request while it is polled.
    scope: RequestScope,
    /// The caller sent a `traceparent`, so it gets ours back (continued, or a fresh trace when
    /// theirs was invalid). Not a standard response header: callers that sent none get none,
    /// which saves its encoding, allocation and insert on most requests.
    echo_traceparent: bool,
    service: ServiceId,
    method: &'static str,
    /// The label of the resource the router picked ([`super::RouteLabel`]), once it picked one.
    route: Option<&'static str>,
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
        if state.recorder.is_none() && state.limits.is_none() {
            return ObserveFuture {
                call: Some(self.service.call(req)),
                refused: None,
                observed: None,
            };
        }
        let service = rate_limit::service_of(&req);
        // One clock read for the bucket check and the request's duration.
        let started = MonotonicNanos::now();
        let client_ip = state
            .limits
            .as_ref()
            .and_then(|limits| rate_limit::client_ip(&req, limits.trusted_proxies()));
        let mut observed = state.recorder.as_ref().map(|recorder| {
            recorder.request_started();
            // A `&str` key would be parsed into a name on every call.
            let traceparent = req.headers().get(&TRACEPARENT_NAME);
            Observed {
                state: Rc::clone(state),
                started,
                scope: RequestScope {
                    trace: TraceContext::continue_or_start(traceparent.map(HeaderValue::as_bytes)),
                    request_id: traces::fast_uuid_v4(),
                },
                echo_traceparent: traceparent.is_some(),
                service,
                method: method_label(req.method()),
                route: None,
            }
        });
        let refusal = match (&state.limits, client_ip) {
            (Some(limits), Some(client)) => {
                let taken =
                    limits.check_cached(&mut state.buckets.borrow_mut(), service, client, started);
                taken.err().map(|wait| {
                    // In the request's scope: the refusal's log line names the request's trace.
                    let scope = observed.as_ref().map(|observed| observed.scope);
                    scoped(scope, || limits.refuse(&req, service, client, wait))
                })
            }
            _ => None,
        };
        match refusal {
            Some(response) => ObserveFuture {
                call: None,
                refused: Some(Box::pin(rate_limit::answer_refused(req, response))),
                observed,
            },
            // Outside the scope: the router only picks the handler here, which runs (and
            // logs) when the future is polled, in the scope.
            None => {
                let (call, route) = routed(|| self.service.call(req));
                if let Some(observed) = observed.as_mut() {
                    observed.route = route;
                }
                ObserveFuture {
                    call: Some(call),
                    refused: None,
                    observed,
                }
            }
        }
    }
}

/// Polls the inner service in the request's scope, then counts and labels the answer.
pub struct ObserveFuture<F> {
    /// The router's future (boxed by actix, 16 bytes); `None` once answered or when refused.
    call: Option<F>,
    /// The 429, once the refused request's small body is read (see
    /// `rate_limit::answer_refused`). Boxed: rare, and the future is moved a few times on
    /// every request.
    refused: Option<LocalBoxFuture<'static, ServiceResponse<BoxBody>>>,
    observed: Option<Observed>,
}

impl<F> Drop for ObserveFuture<F> {
    fn drop(&mut self) {
        // Dropped unanswered (the client went away): still leaves the in-flight gauge.
        if let Some(observed) = self.observed.take() {
            if let Some(recorder) = &observed.state.recorder {
                recorder.request_dropped();
            }
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
        let mut outcome = match this.call.as_mut() {
            Some(call) => match scoped(this.observed.as_ref().map(|o| o.scope), || {
                match this.observed.as_mut() {
                    // Not routed yet: a scope's middleware routes when first polled.
                    Some(observed) if observed.route.is_none() => {
                        let (polled, route) = routed(|| Pin::new(call).poll(cx));
                        observed.route = route;
                        polled
                    }
                    _ => Pin::new(call).poll(cx),
                }
            }) {
                Poll::Ready(outcome) => {
                    this.call = None;
                    outcome
                }
                Poll::Pending => return Poll::Pending,
            },
            None => match this.refused.as_mut() {
                Some(refused) => match refused.as_mut().poll(cx) {
                    Poll::Ready(response) => {
                        this.refused = None;
                        Ok(response)
                    }
                    Poll::Pending => return Poll::Pending,
                },
                None => Err(actix_web::error::ErrorInternalServerError(
                    "request polled after it was answered",
                )),
            },
        };
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

// Built at compile time: `from_static` at run time validates the name on every call. A
// static: the response head keeps a `&'static` to it.
static REQUEST_ID_NAME: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);
const TRACEPARENT_NAME: HeaderName = HeaderName::from_static(TRACEPARENT_HEADER);

/// Counts the answer and gives it the request id (and our `traceparent` if the caller sent one).
fn finish<B: MessageBody>(observed: Observed, result: &mut Result<ServiceResponse<B>, Error>) {
    let finished = MonotonicNanos::now();
    let duration_nanos = finished.nanos_since(observed.started);
    let (route, status, response_bytes) = match &*result {
        Ok(response) => (
            match observed.route {
                Some(label) => {
                    debug_assert_eq!(
                        response.request().match_pattern().as_deref(),
                        Some(label),
                        "RouteLabel differs from the resource's pattern"
                    );
                    label
                }
                None => fallback_route_label(response.request()),
            },
            response.status(),
            match response.response().body().size() {
                BodySize::Sized(bytes) => Some(bytes),
                _ => None,
            },
        ),
        Err(error) => (
            observed.route.unwrap_or("unmatched"),
            error.as_response_error().status_code(),
            None,
        ),
    };
    if let Some(recorder) = &observed.state.recorder {
        observed.state.observe(
            recorder,
            &RequestRecord {
                service: observed.service.label(),
                route,
                method: observed.method,
                status: status.as_u16(),
                duration_nanos,
                finished,
                response_bytes,
                trace_id: Some(observed.scope.trace.trace_id),
            },
        );
    }
    if let Some(spans) = &observed.state.spans {
        let end = SystemTime::now();
        let duration = std::time::Duration::from_nanos(duration_nanos);
        let trace = observed.scope.trace;
        spans.export(FinishedSpan {
            trace_id: trace.trace_id,
            span_id: trace.span_id,
            parent_span_id: trace.parent_span_id,
            name: format!("{} {route}", observed.method),
            kind: SpanKind::Server,
            start: end.checked_sub(duration).unwrap_or(end),
            end,
            attributes: vec![
                (
                    "http.request.method",
                    AttributeValue::Text(observed.method.into()),
                ),
                ("http.route", AttributeValue::Text(route.into())),
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
                    AttributeValue::Text(
                        RequestId::from_uuid(observed.scope.request_id)
                            .to_string()
                            .into(),
                    ),
                ),
            ],
            error: status.is_server_error(),
        });
    }
    if let Ok(response) = result {
        let mut text = [0; REQUEST_ID_LEN];
        RequestId::from_uuid(observed.scope.request_id).encode(&mut text);
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_bytes(&text) {
            headers.insert(REQUEST_ID_NAME.clone(), value);
        }
        if observed.echo_traceparent {
            let mut buffer = [0; TRACEPARENT_LEN];
            // `append`, not `insert`: the header is ours alone (no handler sets it), and for a
            // name the map lacks `append` places the value once, where `insert` moves it
            // through two copies and hands back an empty `Removed`.
            debug_assert!(!headers.contains_key(&TRACEPARENT_NAME));
            headers.append(
                TRACEPARENT_NAME,
                generated_header_value(bytes::Bytes::copy_from_slice(
                    observed.scope.trace.encode_traceparent(&mut buffer),
                )),
            );
        }
    }
}

/// A header value from text we wrote ourselves: hex digits and dashes only, so the byte-by-byte
/// validation of `HeaderValue::from_bytes` (a few hundred instructions per header) is skipped
/// (the `traceparent` echoed to callers that sent one).
#[allow(unsafe_code)]
fn generated_header_value(ascii: bytes::Bytes) -> HeaderValue {
    debug_assert!(ascii
        .iter()
        .all(|byte| byte.is_ascii_hexdigit() || *byte == b'-'));
    // SAFETY: the only caller passes `TraceContext::encode_traceparent` (`00-<hex>-<hex>-0x`):
    // ASCII hex and dashes, which is
    // valid UTF-8 and a valid header value (debug builds check both, http's included).
    unsafe { HeaderValue::from_maybe_shared_unchecked(ascii) }
}

/// The `method` label. Methods outside the standard set share one label: clients choose
/// them, and a label value per invented method would let them grow the series without bound.
fn method_label(method: &Method) -> &'static str {
    const STANDARD: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::PATCH, "PATCH"),
        (Method::DELETE, "DELETE"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    STANDARD
        .iter()
        .find(|(standard, _)| standard == method)
        .map_or("other", |(_, label)| label)
}
