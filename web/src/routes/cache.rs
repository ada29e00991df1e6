//! The admin cache service (SPEC.md "Cache"): `GET|PUT|DELETE /api/v1/cache/{key}`,
//! `DELETE /api/v1/cache`, `GET /api/v1/cache/stats`, `POST /api/v1/cache/batch` (many ops in
//! one request) and `POST /api/v1/cache/warm`. Admin token only; a miss is 404.
//!
//! Values are stored as sent, with their `Content-Type`, in the gateway cache (LRU + TTL;
//! `PUT …?ttl_s=` may shorten an entry's life). `stats`, `batch` and `warm` are reserved keys
//! (their routes).
//! Writes are audited by the cache handle (`cache.put|delete|clear|batch`).

use std::time::Duration;

use actix_web::{http::header, web, HttpRequest, HttpResponse, Resource};
use serde::{Deserialize, Serialize};
use streamgate_actors::{
    cache::{caches::MAX_ADMIN_KEY_BYTES, AdminEntry, AdminOp, AdminOpResult},
    metadata::WarmCaches,
    model::MediaId,
    Actors,
};

use crate::{
    dto::cache::{BatchBody, BatchDto, BatchOpBody, BatchResultDto, WarmBody, WarmDto},
    error::ApiError,
    extract::Admin,
};

/// Longest key, in characters (what the OpenAPI document can say).
pub const MAX_ADMIN_KEY_CHARS: usize = MAX_ADMIN_KEY_BYTES;
/// Largest value accepted by `PUT`.
const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Who the audit log names for admin-token calls.
const ADMIN: &str = "admin";

/// The `{key}` resource reads whole values up to [`MAX_VALUE_BYTES`].
pub(super) fn value_limit(resource: Resource) -> Resource {
    resource.app_data(web::PayloadConfig::new(MAX_VALUE_BYTES))
}

#[derive(Serialize)]
struct CacheStatsDto {
    hits: u64,
    misses: u64,
    evictions: u64,
    size: usize,
    capacity: usize,
    ttl_s: u64,
}

#[derive(Serialize)]
struct StatsDto {
    /// The admin (gateway) cache's numbers at the top level, every cache under `caches`.
    #[serde(flatten)]
    admin: CacheStatsDto,
    caches: std::collections::BTreeMap<&'static str, CacheStatsDto>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PutQuery {
    ttl_s: Option<u64>,
}

fn valid_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty()
        || key.chars().count() > MAX_ADMIN_KEY_CHARS
        || key.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(
            "invalid_cache_key",
            format!("a key is 1 to {MAX_ADMIN_KEY_CHARS} characters without control characters"),
        ));
    }
    Ok(())
}

fn miss(key: &str) -> ApiError {
    ApiError::not_found("cache_miss", format!("no cache entry for {key:?}"))
}

pub(super) async fn get(
    _: Admin,
    key: web::Path<String>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    valid_key(&key)?;
    let entry = actors.caches.admin_get(&key).ok_or_else(|| miss(&key))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, &*entry.content_type))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(entry.value))
}

pub(super) async fn put(
    _: Admin,
    req: HttpRequest,
    key: web::Path<String>,
    query: web::Query<PutQuery>,
    body: web::Bytes,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    valid_key(&key)?;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("application/octet-stream");
    let ttl = query.ttl_s.map_or(Duration::MAX, Duration::from_secs);
    actors
        .caches
        .admin_put(
            key.into_inner(),
            AdminEntry {
                value: body,
                content_type: content_type.into(),
            },
            ttl,
            ADMIN,
        )
        .await;
    Ok(HttpResponse::NoContent().finish())
}

pub(super) async fn delete(
    _: Admin,
    key: web::Path<String>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    valid_key(&key)?;
    if actors.caches.admin_delete(&key, ADMIN).await {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(miss(&key))
    }
}

pub(super) async fn clear(_: Admin, actors: web::Data<Actors>) -> Result<HttpResponse, ApiError> {
    let cleared = actors.caches.admin_clear(ADMIN).await;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "cleared": cleared })))
}

pub(super) async fn stats(_: Admin, actors: web::Data<Actors>) -> Result<HttpResponse, ApiError> {
    let dto = |stats: streamgate_actors::cache::CacheStats| CacheStatsDto {
        hits: stats.hits,
        misses: stats.misses,
        evictions: stats.evictions,
        size: stats.size,
        capacity: stats.capacity,
        ttl_s: stats.ttl.as_secs(),
    };
    Ok(HttpResponse::Ok().json(StatsDto {
        admin: dto(actors.caches.gateway.stats()),
        caches: actors
            .caches
            .stats()
            .into_iter()
            .map(|(name, stats)| (name, dto(stats)))
            .collect(),
    }))
}

/// Most operations in one batch.
pub const MAX_BATCH_OPS: usize = 100;
/// Largest batch body, in bytes (values included).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Most media ids one warm-up names.
pub const MAX_WARM_IDS: usize = 1000;

/// The batch resource reads bodies up to [`MAX_BATCH_BYTES`]; a larger one is 413.
pub(super) fn batch_limit(resource: Resource) -> Resource {
    resource.app_data(
        web::JsonConfig::default()
            .limit(MAX_BATCH_BYTES)
            .error_handler(|error, _| {
                use actix_web::error::JsonPayloadError;
                match error {
                    JsonPayloadError::Overflow { .. }
                    | JsonPayloadError::OverflowKnownLength { .. } => ApiError::new(
                        actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
                        "batch_too_large",
                        format!("a batch body is at most {MAX_BATCH_BYTES} bytes"),
                    ),
                    other => ApiError::from_json(&other),
                }
                .into()
            }),
    )
}

/// `POST /api/v1/cache/batch`: get, set and delete in one request, each op with its own
/// result; audited as one entry listing the keys.
pub(super) async fn batch(
    _: Admin,
    body: web::Json<BatchBody>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let ops = body.into_inner().ops;
    if ops.len() > MAX_BATCH_OPS {
        return Err(ApiError::bad_request(
            "too_many_batch_ops",
            format!("a batch has at most {MAX_BATCH_OPS} operations"),
        ));
    }
    // Ops with a bad key are answered in place; the rest run in order.
    let mut results: Vec<Option<BatchResultDto>> = Vec::with_capacity(ops.len());
    let mut valid = Vec::with_capacity(ops.len());
    for op in ops {
        let op = match op {
            BatchOpBody::Get { key } => AdminOp::Get { key },
            BatchOpBody::Set {
                key,
                value,
                content_type,
                ttl_s,
            } => AdminOp::Set {
                key,
                entry: AdminEntry {
                    value: value.into(),
                    content_type: content_type
                        .as_deref()
                        .unwrap_or("text/plain; charset=utf-8")
                        .into(),
                },
                ttl: ttl_s.map_or(Duration::MAX, Duration::from_secs),
            },
            BatchOpBody::Delete { key } => AdminOp::Delete { key },
        };
        // A stored content type is sent back as a header: it must be a valid one.
        let checked = valid_key(op.key()).and_then(|()| match &op {
            AdminOp::Set { entry, .. }
                if header::HeaderValue::from_str(&entry.content_type).is_err() =>
            {
                Err(ApiError::bad_request(
                    "invalid_content_type",
                    "content_type must be a valid header value",
                ))
            }
            _ => Ok(()),
        });
        match checked {
            Ok(()) => {
                results.push(None);
                valid.push(op);
            }
            Err(error) => results.push(Some(op_result(&op, error.status.as_u16(), error.code))),
        }
    }
    let names: Vec<(&'static str, String)> = valid
        .iter()
        .map(|op| (op.name(), op.key().to_string()))
        .collect();
    let done = actors.caches.admin_batch(valid, ADMIN).await;
    let mut done = names.into_iter().zip(done);
    let results = results
        .into_iter()
        .filter_map(|result| result.or_else(|| done.next().map(ran)))
        .collect();
    Ok(HttpResponse::Ok().json(BatchDto { results }))
}

fn op_result(op: &AdminOp, status: u16, code: &'static str) -> BatchResultDto {
    BatchResultDto {
        op: op.name(),
        key: op.key().to_string(),
        status,
        code: Some(code),
        value: None,
        value_base64: None,
        content_type: None,
    }
}

fn ran(((op, key), result): ((&'static str, String), AdminOpResult)) -> BatchResultDto {
    let mut dto = BatchResultDto {
        op,
        key,
        status: 204,
        code: None,
        value: None,
        value_base64: None,
        content_type: None,
    };
    match result {
        AdminOpResult::Hit(entry) => {
            dto.status = 200;
            dto.content_type = Some(entry.content_type.to_string());
            match std::str::from_utf8(&entry.value) {
                Ok(text) => dto.value = Some(text.to_string()),
                Err(_) => {
                    use base64::Engine;
                    let encoded = base64::engine::general_purpose::STANDARD.encode(&entry.value);
                    dto.value_base64 = Some(encoded);
                }
            }
        }
        AdminOpResult::Miss | AdminOpResult::Absent => {
            dto.status = 404;
            dto.code = Some("cache_miss");
        }
        AdminOpResult::Stored | AdminOpResult::Deleted => {}
    }
    dto
}

/// `POST /api/v1/cache/warm`: loads the given media's records (and, when ready, playlists)
/// into the caches now.
pub(super) async fn warm(
    _: Admin,
    body: web::Json<WarmBody>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let ids = body.into_inner().media_ids;
    if ids.len() > MAX_WARM_IDS {
        return Err(ApiError::bad_request(
            "too_many_media_ids",
            format!("a warm-up names at most {MAX_WARM_IDS} media"),
        ));
    }
    let media_ids = ids
        .iter()
        .map(|id| {
            MediaId::parse(id).ok_or_else(|| {
                ApiError::bad_request("invalid_media_id", format!("{id:?} is not a media id"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let report = actors
        .metadata
        .send(WarmCaches {
            media_ids,
            recent: 0,
            gates: None,
            requested_by: Some(ADMIN.to_string()),
        })
        .await??;
    Ok(HttpResponse::Ok().json(WarmDto {
        records: report.records,
        playlists: report.playlists,
        missing: report.missing.iter().map(ToString::to_string).collect(),
    }))
}
