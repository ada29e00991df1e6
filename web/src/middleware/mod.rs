//! Middleware: request metrics and trace stats, W3C trace context and `x-request-id`, security
//! headers, CORS, per-client rate limits ([`rate_limit`]), connection counting, and JSON bodies
//! for the 404/405 responses actix produces on its own.
//!
//! Order in the app (outermost first): tracing root span → CORS → security headers → observe
//! → rate limits → JSON 404/405 → routes. Rate-limited requests are therefore observed (their
//! 429s are counted and carry the request id) and the root span sees every request.

pub mod rate_limit;
mod trace;

pub use trace::{RequestId, SpanBody, TracedRootSpan};

use std::time::Instant;

use actix_cors::Cors;
use actix_web::{
    body::{BodySize, BoxBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    http::{
        header::{self, HeaderName, HeaderValue},
        Method, StatusCode,
    },
    middleware::{ErrorHandlerResponse, ErrorHandlers, Next},
    web, HttpMessage,
};
use streamgate_actors::{
    config::HttpConfig,
    monitor::{traces::RequestRecord, traces::TraceContext, Metrics},
    Actors,
};

use crate::error::ApiError;

pub const REQUEST_ID_HEADER: &str = "x-request-id";
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// Counts every request by service, route pattern (bounded cardinality: never the raw path),
/// method and status, times it, feeds the trace stats, and returns the request id and our
/// `traceparent`.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let metrics = req
        .app_data::<web::Data<Actors>>()
        .map(|actors| actors.metrics.clone());
    let service = rate_limit::service_for(req.path());
    let method = req.method().as_str().to_string();
    // Only what the response and the record need: the header now, the trace id as a string.
    let (request_id, traceparent, trace_id) = {
        let extensions = req.extensions();
        let trace = extensions.get::<TraceContext>();
        (
            extensions.get::<RequestId>().copied(),
            trace.and_then(|t| HeaderValue::from_str(&t.traceparent()).ok()),
            trace.map(|t| t.trace_id.clone()),
        )
    };
    if let Some(metrics) = &metrics {
        metrics.http_in_flight.inc();
    }
    let result = next.call(req).await;
    let (route, status, response_bytes) = match &result {
        Ok(response) => (
            response
                .request()
                .match_pattern()
                .unwrap_or_else(|| "unmatched".to_string()),
            response.status(),
            match response.response().body().size() {
                BodySize::Sized(bytes) => Some(bytes),
                _ => None,
            },
        ),
        Err(error) => (
            "unmatched".to_string(),
            error.as_response_error().status_code(),
            None,
        ),
    };
    if let Some(metrics) = &metrics {
        metrics.http_in_flight.dec();
        metrics.observe_request(RequestRecord {
            service,
            route,
            method,
            status: status.as_u16(),
            duration: started.elapsed(),
            response_bytes,
            trace_id,
        });
    }
    let mut response = result?.map_into_boxed_body();
    let headers = response.headers_mut();
    if let Some(id) = request_id {
        if let Ok(value) = HeaderValue::from_str(id.encode(&mut [0; 36])) {
            headers.insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
        }
    }
    if let Some(value) = traceparent {
        headers.insert(HeaderName::from_static(TRACEPARENT_HEADER), value);
    }
    Ok(response)
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

/// Headers every response carries. The API serves JSON and media, never pages, so the content
/// security policy forbids everything a browser could do with a response rendered as a page.
pub async fn security_headers(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let mut response = next.call(req).await?;
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        if !headers.contains_key(&name) {
            headers.insert(name, value);
        }
    }
    Ok(response)
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
pub struct ConnectionGuard {
    metrics: Metrics,
}

impl ConnectionGuard {
    pub fn open(metrics: &Metrics) -> Self {
        metrics.http_connections.inc();
        metrics.http_connections_active.inc();
        Self {
            metrics: metrics.clone(),
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.metrics.http_connections_active.dec();
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
