//! `/api/v1/monitor/metrics`, `/alerts`, `/logs` (admin) and `/traces`. The request's trace
//! travels with each message (`Traced`), so the monitor's logs for it name the trace.

use crate::middleware::RouteLabel;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use streamgate_actors::{
    monitor::{
        logs::level_from_str,
        traces::{TraceContext, Traced},
        GetMonitorSummary, GetTraceStats, ListAlerts, ListLogs,
    },
    Actors,
};

use crate::{error::ApiError, extract::Admin};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/api/v1/monitor/metrics")
            .app_data(RouteLabel("/api/v1/monitor/metrics"))
            .route(web::get().to(summary)),
    )
    .service(
        web::resource("/api/v1/monitor/alerts")
            .app_data(RouteLabel("/api/v1/monitor/alerts"))
            .route(web::get().to(alerts)),
    )
    .service(
        web::resource("/api/v1/monitor/logs")
            .app_data(RouteLabel("/api/v1/monitor/logs"))
            .route(web::get().to(logs)),
    )
    .service(
        web::resource("/api/v1/monitor/traces")
            .app_data(RouteLabel("/api/v1/monitor/traces"))
            .route(web::get().to(traces)),
    );
}

fn trace_of(req: &HttpRequest) -> Option<TraceContext> {
    req.extensions()
        .get::<crate::middleware::RequestContext>()
        .map(|context| context.trace)
}

async fn summary(req: HttpRequest, actors: web::Data<Actors>) -> Result<HttpResponse, ApiError> {
    let trace = trace_of(&req);
    let summary = actors
        .monitor
        .send(Traced::new(trace.as_ref(), GetMonitorSummary))
        .await?;
    Ok(HttpResponse::Ok().json(summary))
}

#[derive(Debug, Deserialize)]
struct LimitQuery {
    limit: Option<usize>,
}

async fn alerts(
    req: HttpRequest,
    actors: web::Data<Actors>,
    query: web::Query<LimitQuery>,
) -> Result<HttpResponse, ApiError> {
    let trace = trace_of(&req);
    let limit = query.limit.unwrap_or(50);
    let report = actors
        .monitor
        .send(Traced::new(trace.as_ref(), ListAlerts { limit }))
        .await?;
    Ok(HttpResponse::Ok().json(report))
}

#[derive(Debug, Deserialize)]
struct LogsQuery {
    level: Option<String>,
    limit: Option<usize>,
}

async fn logs(
    _: Admin,
    req: HttpRequest,
    actors: web::Data<Actors>,
    query: web::Query<LogsQuery>,
) -> Result<HttpResponse, ApiError> {
    let min_level = match query.level.as_deref() {
        None => tracing::Level::TRACE,
        Some(text) => level_from_str(text).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_level",
                "level must be error, warn, info, debug or trace",
            )
        })?,
    };
    let trace = trace_of(&req);
    let limit = query.limit.unwrap_or(100);
    let records = actors
        .monitor
        .send(Traced::new(trace.as_ref(), ListLogs { min_level, limit }))
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "items": records })))
}

#[derive(Debug, Deserialize)]
struct TracesQuery {
    recent: Option<usize>,
}

async fn traces(
    req: HttpRequest,
    actors: web::Data<Actors>,
    query: web::Query<TracesQuery>,
) -> Result<HttpResponse, ApiError> {
    let trace = trace_of(&req);
    let recent = query.recent.unwrap_or(20);
    let report = actors
        .monitor
        .send(Traced::new(trace.as_ref(), GetTraceStats { recent }))
        .await?;
    Ok(HttpResponse::Ok().json(report))
}
