//! `GET /api/v1/audit`: the append-only audit log, for admins.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use streamgate_actors::{model::AuditId, store::AuditFilter, Actors};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use crate::{
    dto::{audit::AuditEntryDto, parse_cursor, Page},
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
    let entries = actors.audit.list(filter).await?;
    Ok(HttpResponse::Ok().json(Page::of(
        &entries,
        limit,
        |entry| entry.id.to_string(),
        |entry| AuditEntryDto::from(entry),
    )))
}
