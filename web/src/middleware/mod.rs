//! Middleware: [`Observe`] (request log scope, `x-request-id`, W3C trace context, request metrics and
//! trace stats, per-client rate limits from [`rate_limit`]), security headers, CORS,
//! connection counting, and JSON bodies for the 404/405 responses actix produces on its own.
//!
//! Order in the app (outermost first): CORS → security headers → JSON 404/405 → observe →
//! routes. Observe sits directly on the router (see [`observe`] for why); rate-limited requests
//! are observed (their 429s are counted and carry the request id) and still get the security
//! and CORS headers.

mod buckets;
mod observe;
pub mod rate_limit;
mod trace;

pub use observe::Observe;
pub use trace::RequestId;

use std::{
    cell::Cell,
    sync::{Mutex, PoisonError},
};

use actix_cors::Cors;
use actix_web::{
    body::{BoxBody, MessageBody},
    dev::ServiceResponse,
    guard::{Guard, GuardContext},
    http::{
        header::{self, HeaderName, HeaderValue},
        Method, StatusCode,
    },
    middleware::{DefaultHeaders, ErrorHandlerResponse, ErrorHandlers},
    HttpRequest,
};
use prometheus::IntGauge;
use streamgate_actors::{config::HttpConfig, monitor::Metrics};

use crate::error::ApiError;

pub const REQUEST_ID_HEADER: &str = "x-request-id";
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The `route` label of a resource: its full pattern, as `match_pattern()` would build it.
/// Registered as the resource's guard (`web::resource(P).guard(RouteLabel(P))`): actix checks
/// a resource's guards while it routes a request to it, and this one always passes and leaves
/// its label in the thread's [`ROUTED`] slot, where [`observe`] picks it up right after the
/// router (or the first poll, for a scope whose middleware routes lazily) ran. Looking the
/// label up afterwards in the request's app data walked its data containers, a hash probe and
/// a downcast on every request (0.3 % of a small request's CPU time).
#[derive(Debug, Clone, Copy)]
pub struct RouteLabel(pub &'static str);

thread_local! {
    /// The label of the resource the router last picked on this thread; read and cleared by
    /// [`routed`].
    static ROUTED: Cell<Option<&'static str>> = const { Cell::new(None) };
}

impl Guard for RouteLabel {
    fn check(&self, _: &GuardContext<'_>) -> bool {
        ROUTED.set(Some(self.0));
        true
    }
}

/// Runs `route` (the router's call or a poll of its future) and returns what it returned with
/// the label of the resource it routed to, if it routed. Routing is synchronous and a thread
/// runs one request's code at a time, so the label read here is this request's.
pub(crate) fn routed<R>(route: impl FnOnce() -> R) -> (R, Option<&'static str>) {
    ROUTED.set(None);
    let routed = route();
    (routed, ROUTED.take())
}

/// The route label of a request no [`RouteLabel`] claimed: its pattern (interned once per
/// pattern), or `"unmatched"` when no resource matched.
pub(crate) fn fallback_route_label(req: &HttpRequest) -> &'static str {
    match req.match_pattern() {
        Some(pattern) => intern_pattern(pattern),
        None => "unmatched",
    }
}

/// Route patterns come from the app's own registrations, so the table is as small as the
/// route list; the cap only guards against a bug that would make patterns up.
fn intern_pattern(pattern: String) -> &'static str {
    static PATTERNS: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut patterns = PATTERNS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = patterns.iter().find(|known| **known == pattern) {
        return known;
    }
    if patterns.len() >= 1024 {
        return "unmatched";
    }
    let leaked: &'static str = Box::leak(pattern.into_boxed_str());
    patterns.push(leaked);
    leaked
}

/// Headers every response carries (built once: no validation per response).
const SECURITY_HEADERS: [(HeaderName, HeaderValue); 4] = [
    (
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    ),
    (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    (
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    ),
    (
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    ),
];

/// Headers every response carries (unless the handler set its own). The API serves JSON and
/// media, never pages, so the content security policy forbids everything a browser could do
/// with a response rendered as a page. actix's `DefaultHeaders` rather than a `from_fn`
/// middleware: that one boxes the inner service's future on every request.
pub fn security_headers() -> DefaultHeaders {
    SECURITY_HEADERS
        .into_iter()
        .fold(DefaultHeaders::new(), |headers, header| headers.add(header))
}

/// CORS from `[http]`: `"*"` allows any origin, otherwise only the listed ones. Callers should
/// wrap it in `Condition` with [`cors_enabled`]: with no origins configured, no CORS headers.
pub fn cors(config: &HttpConfig) -> Cors {
    let mut cors = Cors::default()
        .allowed_methods([
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::RANGE,
            header::IF_NONE_MATCH,
            HeaderName::from_static(TRACEPARENT_HEADER),
            HeaderName::from_static("tus-resumable"),
            HeaderName::from_static("upload-length"),
            HeaderName::from_static("upload-offset"),
            HeaderName::from_static("upload-metadata"),
            HeaderName::from_static("upload-checksum"),
            HeaderName::from_static("upload-concat"),
            HeaderName::from_static("upload-defer-length"),
        ])
        .expose_headers([
            header::LOCATION,
            header::RETRY_AFTER,
            header::ETAG,
            header::CONTENT_RANGE,
            HeaderName::from_static(REQUEST_ID_HEADER),
            HeaderName::from_static(TRACEPARENT_HEADER),
            HeaderName::from_static("upload-offset"),
            HeaderName::from_static("upload-length"),
            HeaderName::from_static("upload-expires"),
            HeaderName::from_static("tus-resumable"),
        ])
        .max_age(config.cors_max_age_s);
    if config.cors_allowed_origins.iter().any(|o| o == "*") {
        cors = cors.allow_any_origin();
    } else {
        for origin in &config.cors_allowed_origins {
            cors = cors.allowed_origin(origin);
        }
    }
    cors
}

pub fn cors_enabled(config: &HttpConfig) -> bool {
    !config.cors_allowed_origins.is_empty()
}

/// Lives in a connection's extensions: counts the connection open until actix drops them.
/// It keeps only the one gauge it needs (one pointer), not a clone of [`Metrics`]: 10,000 idle
/// connections each held a ~50-handle copy of it (issue 8).
pub struct ConnectionGuard {
    active: IntGauge,
}

impl ConnectionGuard {
    pub fn open(metrics: &Metrics) -> Self {
        metrics.http_connections.inc();
        metrics.http_connections_active.inc();
        Self {
            active: metrics.http_connections_active.clone(),
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.active.dec();
    }
}

/// Gives actix's own 404 and 405 responses (unknown path, wrong method) our JSON error body.
pub fn json_errors<B: MessageBody + 'static>() -> ErrorHandlers<B> {
    ErrorHandlers::new()
        .handler(StatusCode::NOT_FOUND, |res| {
            replace_body(res, "not_found", "no such resource")
        })
        .handler(StatusCode::METHOD_NOT_ALLOWED, |res| {
            replace_body(
                res,
                "method_not_allowed",
                "method not allowed on this resource",
            )
        })
}

fn replace_body<B: MessageBody + 'static>(
    res: ServiceResponse<B>,
    code: &'static str,
    message: &'static str,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let (req, mut response) = res.into_parts();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let response = response.set_body(BoxBody::new(ApiError::body(code, message)));
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, response).map_into_right_body(),
    ))
}
