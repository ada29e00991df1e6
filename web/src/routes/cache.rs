//! The admin cache service (SPEC.md "Cache"): `GET|PUT|DELETE /api/v1/cache/{key}`,
//! `DELETE /api/v1/cache`, `GET /api/v1/cache/stats`. Admin token only; a miss is 404.
//!
//! Values are stored as sent, with their `Content-Type`, in the gateway cache (LRU + TTL;
//! `PUT …?ttl_s=` may shorten an entry's life). `stats` is a reserved key (the stats route).
//! Writes are audited by the cache handle (`cache.put|delete|clear`).

use std::time::Duration;

use actix_web::{http::header, web, HttpRequest, HttpResponse, Resource};
use serde::{Deserialize, Serialize};
use streamgate_actors::{
    cache::{caches::MAX_ADMIN_KEY_BYTES, AdminEntry},
    Actors,
};

use crate::{error::ApiError, extract::Admin};

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
