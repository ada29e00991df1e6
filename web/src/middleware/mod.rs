//! Middleware: [`BodyStall`] (a limit on silent request bodies), [`RequestSpan`] (the root
//! span `tracing_actix_web::TracingLogger` opens per request), [`Observe`] (request log scope,
//! `x-request-id`, `traceparent`, request metrics and trace stats, per-client rate limits from
//! [`rate_limit`]), security headers, CORS, connection counting, and JSON bodies for the 404/405
//! responses actix produces on its own.
//!
//! Order in the app (outermost first): body stall → CORS → security headers → JSON 404/405 →
//! root span → observe → routes. Observe sits directly on the router; rate-limited requests are
//! observed (their 429s are counted and carry the request id) and still get the security and
//! CORS headers.

pub mod body_stall;
mod buckets;
mod observe;
pub mod rate_limit;
mod span;

pub use body_stall::BodyStall;
pub use observe::Observe;
pub use span::RequestSpan;

use actix_cors::Cors;
use actix_web::{
    body::{BoxBody, MessageBody},
    dev::ServiceResponse,
    http::{
        header::{self, HeaderName, HeaderValue},
        Method, StatusCode,
    },
    middleware::{DefaultHeaders, ErrorHandlerResponse, ErrorHandlers},
};
use prometheus::IntGauge;
use streamgate_actors::{config::HttpConfig, monitor::Metrics};

use crate::error::ApiError;

pub const REQUEST_ID_HEADER: &str = "x-request-id";
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// The `route` label of requests no resource matched.
pub const UNMATCHED_ROUTE: &str = "unmatched";

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
