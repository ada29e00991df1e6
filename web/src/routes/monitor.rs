//! `/api/v1/monitor/metrics`, `/alerts`, `/logs` (admin) and `/traces`. The request's trace
//! travels with each message (`Traced`), so the monitor's logs for it name the trace.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use streamgate_actors::{
    monitor::{
        logs::level_from_str, traces::Traced, GetMonitorSummary, GetTraceStats, ListAlerts,
        ListLogs,
    },
    Actors,
};

use crate::{error::ApiError, extract::Admin};

pub(super) async fn summary(actors: web::Data<Actors>) -> Result<HttpResponse, ApiError> {
    let trace = crate::extract::current_trace();
    let summary = actors
        .monitor
        .send(Traced::new(trace.as_ref(), GetMonitorSummary))
        .await?;
    Ok(HttpResponse::Ok().json(summary))
}

#[derive(Debug, Deserialize)]
pub(super) struct LimitQuery {
    limit: Option<usize>,
}

pub(super) async fn alerts(
    actors: web::Data<Actors>,
    query: web::Query<LimitQuery>,
) -> Result<HttpResponse, ApiError> {
    let trace = crate::extract::current_trace();
    let limit = query.limit.unwrap_or(50);
    let report = actors
        .monitor
        .send(Traced::new(trace.as_ref(), ListAlerts { limit }))
        .await?;
    Ok(HttpResponse::Ok().json(report))
}

#[derive(Debug, Deserialize)]
pub(super) struct LogsQuery {
    level: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn logs(
    _: Admin,
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
    let trace = crate::extract::current_trace();
    let limit = query.limit.unwrap_or(100);
    let records = actors
        .monitor
        .send(Traced::new(trace.as_ref(), ListLogs { min_level, limit }))
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "items": records })))
}

#[derive(Debug, Deserialize)]
pub(super) struct TracesQuery {
    recent: Option<usize>,
}

pub(super) async fn traces(
    actors: web::Data<Actors>,
    query: web::Query<TracesQuery>,
) -> Result<HttpResponse, ApiError> {
    let trace = crate::extract::current_trace();
    let recent = query.recent.unwrap_or(20);
    let report = actors
        .monitor
        .send(Traced::new(trace.as_ref(), GetTraceStats { recent }))
        .await?;
    Ok(HttpResponse::Ok().json(report))
}
