//! `/api/v1/monitor/metrics`, `/alerts`, `/logs` (admin) and `/traces`, answered through the
//! DTOs of [`crate::dto::monitor`].

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use streamgate_actors::{
    monitor::{logs::level_from_str, GetMonitorSummary, GetTraceStats, ListAlerts, ListLogs},
    Actors,
};

use crate::{
    dto::monitor::{AlertsDto, LogsDto, MonitorSummaryDto, TraceReportDto},
    error::ApiError,
    extract::Admin,
};

pub(super) async fn summary(actors: web::Data<Actors>) -> Result<HttpResponse, ApiError> {
    let summary = actors.monitor.send(GetMonitorSummary).await?;
    Ok(HttpResponse::Ok().json(MonitorSummaryDto::from(&summary)))
}

#[derive(Debug, Deserialize)]
pub(super) struct LimitQuery {
    limit: Option<usize>,
}

pub(super) async fn alerts(
    actors: web::Data<Actors>,
    query: web::Query<LimitQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(50);
    let report = actors.monitor.send(ListAlerts { limit }).await?;
    Ok(HttpResponse::Ok().json(AlertsDto::from(&report)))
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
    let limit = query.limit.unwrap_or(100);
    let records = actors.monitor.send(ListLogs { min_level, limit }).await?;
    Ok(HttpResponse::Ok().json(LogsDto {
        items: records.into_iter().map(Into::into).collect(),
    }))
}

#[derive(Debug, Deserialize)]
pub(super) struct TracesQuery {
    recent: Option<usize>,
}

pub(super) async fn traces(
    actors: web::Data<Actors>,
    query: web::Query<TracesQuery>,
) -> Result<HttpResponse, ApiError> {
    let recent = query.recent.unwrap_or(20);
    let report = actors.monitor.send(GetTraceStats { recent }).await?;
    Ok(HttpResponse::Ok().json(TraceReportDto::from(report)))
}
