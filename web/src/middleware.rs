//! Middleware: request metrics, the `x-request-id` response header, and JSON bodies for the
//! 404/405 responses actix produces on its own.

use std::time::Instant;

use actix_web::{
    body::{BoxBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    http::{
        header::{self, HeaderValue},
        StatusCode,
    },
    middleware::{ErrorHandlerResponse, ErrorHandlers, Next},
    web, HttpMessage,
};
use streamgate_actors::Actors;
use tracing_actix_web::RequestId;

use crate::error::ApiError;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Counts every request by route pattern (bounded cardinality: never the raw path), method and
/// status, times it, and echoes the request id.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let metrics = req
        .app_data::<web::Data<Actors>>()
        .map(|actors| actors.metrics.clone());
    let method = req.method().as_str().to_string();
    let request_id = req.extensions().get::<RequestId>().map(|id| id.to_string());
    if let Some(metrics) = &metrics {
        metrics.http_in_flight.inc();
    }
    let result = next.call(req).await;
    let (route, status) = match &result {
        Ok(response) => (
            response
                .request()
                .match_pattern()
                .unwrap_or_else(|| "unmatched".to_string()),
            response.status(),
        ),
        Err(error) => (
            "unmatched".to_string(),
            error.as_response_error().status_code(),
        ),
    };
    if let Some(metrics) = &metrics {
        metrics.http_in_flight.dec();
        metrics
            .http_requests
            .with_label_values(&[route.as_str(), method.as_str(), status.as_str()])
            .inc();
        metrics
            .http_duration
            .with_label_values(&[route.as_str(), method.as_str()])
            .observe(started.elapsed().as_secs_f64());
    }
    let mut response = result?.map_into_boxed_body();
    if let Some(value) = request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        response
            .headers_mut()
            .insert(header::HeaderName::from_static(REQUEST_ID_HEADER), value);
    }
    Ok(response)
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
