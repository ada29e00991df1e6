//! `/health`, `/ready`, `/metrics` and `/api/v1/monitor/health` (per actor: alive, restarts,
//! last heartbeat, ping round trip).

use actix_web::{http::StatusCode, web, HttpResponse};
use serde_json::{json, Map, Value};
use streamgate_actors::{
    monitor::{ActorStatus, CheckActors, CheckHealth, CheckStatus, RenderMetrics},
    Actors,
};

use crate::error::ApiError;

pub(super) async fn health(actors: web::Data<Actors>) -> Result<HttpResponse, ApiError> {
    let report = actors.monitor.send(CheckHealth).await?;
    let status = report.status();
    let mut checks = Map::new();
    for check in &report.checks {
        checks.insert(
            check.name.to_string(),
            json!({ "status": check.status.as_str(), "detail": check.detail }),
        );
    }
    let code = match status {
        CheckStatus::Ok => StatusCode::OK,
        CheckStatus::Degraded => StatusCode::MULTI_STATUS,
        CheckStatus::Down => StatusCode::SERVICE_UNAVAILABLE,
    };
    Ok(HttpResponse::build(code).json(json!({
        "status": status.as_str(),
        "checks": checks,
        "actors": actor_list(&report.actors),
        // The checks are the monitor's last sample (they write a probe blob), not run per request.
        "sampled_at": report.sampled_at.and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339).ok()
        }),
    })))
}

pub(super) async fn ready(actors: web::Data<Actors>) -> HttpResponse {
    // If the monitor itself cannot answer, we are not ready either.
    match actors.monitor.send(CheckActors).await {
        Ok(statuses) if statuses.iter().all(|status| status.alive) => {
            HttpResponse::Ok().json(json!({ "ready": true }))
        }
        Ok(statuses) => HttpResponse::ServiceUnavailable().json(json!({
            "ready": false,
            "actors": actor_list(&statuses),
        })),
        Err(_) => HttpResponse::ServiceUnavailable().json(json!({ "ready": false })),
    }
}

pub(super) async fn metrics(actors: web::Data<Actors>) -> Result<HttpResponse, ApiError> {
    let text = actors.monitor.send(RenderMetrics).await??;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
}

pub(super) async fn monitor_health(actors: web::Data<Actors>) -> Result<HttpResponse, ApiError> {
    let statuses = actors.monitor.send(CheckActors).await?;
    Ok(HttpResponse::Ok().json(json!({ "actors": actor_list(&statuses) })))
}

fn actor_list(statuses: &[ActorStatus]) -> Value {
    Value::Array(
        statuses
            .iter()
            .map(|status| {
                json!({
                    "name": status.name,
                    "alive": status.alive,
                    "restarts": status.restarts,
                    "ping_ms": status.ping_ms,
                    "last_heartbeat": status.last_heartbeat.and_then(|at| {
                        at.format(&time::format_description::well_known::Rfc3339).ok()
                    }),
                    // actix does not expose a mailbox's length; ping_ms is the queueing delay.
                    "mailbox": null,
                })
            })
            .collect(),
    )
}
