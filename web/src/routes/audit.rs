//! `GET /api/v1/audit`: the append-only audit log, for admins.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use streamgate_actors::{
    model::{AuditEntry, AuditId},
    monitor::ListAudit,
    store::AuditFilter,
    Actors,
};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use crate::{
    dto::{parse_cursor, Page},
    error::ApiError,
    extract::Admin,
};

const DEFAULT_PAGE: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    action: Option<String>,
    actor: Option<String>,
    /// RFC 3339 time; only entries at or after it.
    since: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

#[derive(Serialize)]
struct AuditEntryDto {
    id: String,
    at: String,
    action: String,
    actor: String,
    target: Option<String>,
    outcome: String,
    detail: Option<String>,
}

impl From<&AuditEntry> for AuditEntryDto {
    fn from(entry: &AuditEntry) -> Self {
        Self {
            id: entry.id.to_string(),
            at: entry.at.format(&Rfc3339).unwrap_or_default(),
            action: entry.action.clone(),
            actor: entry.actor.clone(),
            target: entry.target.clone(),
            outcome: entry.outcome.clone(),
            detail: entry.detail.clone(),
        }
    }
}

pub(super) async fn list(
    _admin: Admin,
    query: web::Query<AuditQuery>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let since = query
        .since
        .as_deref()
        .map(|text| {
            OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
                ApiError::bad_request("invalid_since", "since must be an RFC 3339 time")
            })
        })
        .transpose()?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, 1000);
    let filter = AuditFilter {
        action: query.action,
        actor: query.actor,
        since,
        after: parse_cursor(query.cursor.as_deref(), AuditId::parse)?,
        limit,
    };
    let entries = actors.monitor.send(ListAudit { filter }).await??;
    Ok(HttpResponse::Ok().json(Page::of(
        &entries,
        limit,
        |entry| entry.id.to_string(),
        |entry| AuditEntryDto::from(entry),
    )))
}
