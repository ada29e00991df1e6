//! `GET /api/v1/openapi.json`: the OpenAPI 3 document of every route.
//!
//! The document is generated from [`ROUTES`], one entry per method and path, next to the error
//! codes and auth schemes the routes share. An integration test reads the route registrations in
//! `web/src/routes/` and fails when a route is missing here (or listed here but not served), and
//! validates the document with a real OpenAPI validator.

use crate::middleware::RouteLabel;
use actix_web::{web, HttpResponse};
use serde_json::{json, Map, Value};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    /// A wallet session (`Authorization: Bearer <session>`) or the admin token.
    Session,
    /// The admin token from `auth.admin_token`.
    Admin,
}

/// One operation: a method on a path.
#[derive(Debug, Clone, Copy)]
pub struct RouteDoc {
    pub method: &'static str,
    pub path: &'static str,
    pub tag: &'static str,
    pub summary: &'static str,
    pub access: Access,
    /// The success status and its content type.
    pub success: (u16, &'static str),
    /// Query parameters, all optional.
    pub query: &'static [&'static str],
    /// Whether the operation takes a JSON body.
    pub json_body: bool,
}

const JSON: &str = "application/json";
const HLS: &str = "application/vnd.apple.mpegurl";
const EMPTY: &str = "";

macro_rules! route {
    ($method:literal, $path:literal, $tag:literal, $summary:literal, $access:ident, $status:literal, $content:expr $(, query = [$($query:literal),*])? $(, body = $body:literal)?) => {
        RouteDoc {
            method: $method,
            path: $path,
            tag: $tag,
            summary: $summary,
            access: Access::$access,
            success: ($status, $content),
            query: &[$($($query),*)?],
            json_body: false $(|| $body)?,
        }
    };
}

/// Every route the server registers.
pub const ROUTES: &[RouteDoc] = &[
    route!(
        "get",
        "/health",
        "gateway",
        "Health of store, blobs, ffmpeg, disk and actors (200 ok, 207 degraded, 503 down)",
        Public,
        200,
        JSON
    ),
    route!(
        "get",
        "/ready",
        "gateway",
        "200 when every actor answers",
        Public,
        200,
        JSON
    ),
    route!(
        "get",
        "/metrics",
        "gateway",
        "Prometheus text exposition",
        Public,
        200,
        "text/plain; version=0.0.4"
    ),
    route!(
        "get",
        "/api/v1/openapi.json",
        "gateway",
        "This document",
        Public,
        200,
        JSON
    ),
    route!(
        "options",
        "/api/v1/uploads",
        "uploads",
        "tus capabilities",
        Public,
        204,
        EMPTY
    ),
    route!(
        "post",
        "/api/v1/uploads",
        "uploads",
        "tus creation (with optional first chunk)",
        Session,
        201,
        EMPTY
    ),
    route!(
        "options",
        "/api/v1/uploads/{upload_id}",
        "uploads",
        "tus capabilities",
        Public,
        204,
        EMPTY
    ),
    route!(
        "head",
        "/api/v1/uploads/{upload_id}",
        "uploads",
        "tus offset of an upload",
        Session,
        200,
        EMPTY
    ),
    route!(
        "patch",
        "/api/v1/uploads/{upload_id}",
        "uploads",
        "tus chunk at Upload-Offset",
        Session,
        204,
        EMPTY
    ),
    route!(
        "delete",
        "/api/v1/uploads/{upload_id}",
        "uploads",
        "tus termination",
        Session,
        204,
        EMPTY
    ),
    route!(
        "get",
        "/api/v1/uploads/{upload_id}",
        "uploads",
        "Upload status as JSON",
        Session,
        200,
        JSON
    ),
    route!(
        "post",
        "/api/v1/upload",
        "uploads",
        "One-shot multipart upload (field `file`, optional `title`, `description`, `tags`)",
        Session,
        201,
        JSON
    ),
    route!(
        "get",
        "/api/v1/media",
        "media",
        "List or search media",
        Public,
        200,
        JSON,
        query = ["q", "tag", "owner", "limit", "cursor"]
    ),
    route!(
        "get",
        "/api/v1/media/{media_id}",
        "media",
        "One media record",
        Public,
        200,
        JSON
    ),
    route!(
        "patch",
        "/api/v1/media/{media_id}",
        "media",
        "Edit title, description, tags (owner or admin)",
        Session,
        200,
        JSON,
        body = true
    ),
    route!(
        "delete",
        "/api/v1/media/{media_id}",
        "media",
        "Delete a media item and its blobs (owner or admin)",
        Session,
        204,
        EMPTY
    ),
    route!(
        "get",
        "/api/v1/media/{media_id}/gate",
        "media",
        "The media's token gate",
        Public,
        200,
        JSON
    ),
    route!(
        "put",
        "/api/v1/media/{media_id}/gate",
        "media",
        "Set or clear (null) the token gate (owner or admin)",
        Session,
        200,
        JSON,
        body = true
    ),
    route!(
        "delete",
        "/api/v1/media/{media_id}/gate",
        "media",
        "Clear the token gate (owner or admin)",
        Session,
        200,
        JSON
    ),
    route!(
        "get",
        "/api/v1/media/{media_id}/hls/master.m3u8",
        "streaming",
        "HLS master playlist (gated media: session passing the gate or ?token=)",
        Public,
        200,
        HLS,
        query = ["token"]
    ),
    route!(
        "get",
        "/api/v1/media/{media_id}/hls/{rendition}/index.m3u8",
        "streaming",
        "HLS media playlist",
        Public,
        200,
        HLS,
        query = ["token"]
    ),
    route!(
        "get",
        "/api/v1/media/{media_id}/hls/{rendition}/{segment}",
        "streaming",
        "CMAF segment (Range, ETag)",
        Public,
        200,
        "video/iso.segment",
        query = ["token"]
    ),
    route!(
        "get",
        "/api/v1/media/{media_id}/dash/manifest.mpd",
        "streaming",
        "DASH manifest over the same segments",
        Public,
        200,
        "application/dash+xml",
        query = ["token"]
    ),
    route!(
        "get",
        "/api/v1/media/{media_id}/thumbnail.jpg",
        "streaming",
        "Thumbnail (gated media: session passing the gate or ?token=)",
        Public,
        200,
        "image/jpeg",
        query = ["token"]
    ),
    route!(
        "get",
        "/api/v1/jobs",
        "jobs",
        "List jobs",
        Public,
        200,
        JSON,
        query = ["state", "media_id", "limit", "cursor"]
    ),
    route!(
        "post",
        "/api/v1/jobs",
        "jobs",
        "Submit a job (transcode, thumbnail, cleanup)",
        Admin,
        202,
        JSON,
        body = true
    ),
    route!(
        "get",
        "/api/v1/jobs/stats",
        "jobs",
        "Worker and job statistics",
        Public,
        200,
        JSON
    ),
    route!(
        "get",
        "/api/v1/jobs/{job_id}",
        "jobs",
        "One job with live progress",
        Public,
        200,
        JSON
    ),
    route!(
        "post",
        "/api/v1/jobs/{job_id}/cancel",
        "jobs",
        "Cancel a queued or running job",
        Admin,
        200,
        JSON
    ),
    route!(
        "get",
        "/api/v1/transcode/profiles",
        "jobs",
        "The transcode ladder",
        Public,
        200,
        JSON
    ),
    route!(
        "post",
        "/api/v1/auth/challenge",
        "auth",
        "A SIWE (EIP-4361) message with a single-use nonce",
        Public,
        200,
        JSON,
        body = true
    ),
    route!(
        "post",
        "/api/v1/auth/login",
        "auth",
        "Log in with a signed SIWE message",
        Public,
        200,
        JSON,
        body = true
    ),
    route!(
        "post",
        "/api/v1/auth/verify",
        "auth",
        "Check a session",
        Session,
        200,
        JSON
    ),
    route!(
        "post",
        "/api/v1/auth/refresh",
        "auth",
        "A new session token; the old one is revoked",
        Session,
        200,
        JSON
    ),
    route!(
        "post",
        "/api/v1/auth/logout",
        "auth",
        "Revoke the session",
        Session,
        204,
        EMPTY
    ),
    route!(
        "post",
        "/api/v1/auth/nft/verify",
        "auth",
        "Token ownership via eth_call (budgeted per session)",
        Session,
        200,
        JSON,
        body = true
    ),
    route!(
        "delete",
        "/api/v1/cache",
        "cache",
        "Clear the admin cache",
        Admin,
        200,
        JSON
    ),
    route!(
        "get",
        "/api/v1/cache/stats",
        "cache",
        "Hits, misses, evictions and size of the caches",
        Admin,
        200,
        JSON
    ),
    route!(
        "get",
        "/api/v1/cache/{key}",
        "cache",
        "A cached value (404 cache_miss)",
        Admin,
        200,
        "application/octet-stream"
    ),
    route!(
        "put",
        "/api/v1/cache/{key}",
        "cache",
        "Store a value (body with its Content-Type)",
        Admin,
        204,
        EMPTY,
        query = ["ttl_s"]
    ),
    route!(
        "delete",
        "/api/v1/cache/{key}",
        "cache",
        "Drop a cached value",
        Admin,
        204,
        EMPTY
    ),
    route!(
        "get",
        "/api/v1/audit",
        "audit",
        "The audit log",
        Admin,
        200,
        JSON,
        query = ["action", "actor", "since", "limit", "cursor"]
    ),
    route!(
        "get",
        "/api/v1/monitor/health",
        "monitor",
        "Per-actor liveness and restarts",
        Public,
        200,
        JSON
    ),
    route!(
        "get",
        "/api/v1/monitor/metrics",
        "monitor",
        "JSON metrics summary",
        Public,
        200,
        JSON
    ),
    route!(
        "get",
        "/api/v1/monitor/alerts",
        "monitor",
        "Alert rules, firing alerts and history",
        Public,
        200,
        JSON,
        query = ["limit"]
    ),
    route!(
        "get",
        "/api/v1/monitor/logs",
        "monitor",
        "Recent log events",
        Admin,
        200,
        JSON,
        query = ["level", "limit"]
    ),
    route!(
        "get",
        "/api/v1/monitor/traces",
        "monitor",
        "Request trace statistics",
        Public,
        200,
        JSON,
        query = ["recent"]
    ),
];

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/api/v1/openapi.json")
            .guard(RouteLabel("/api/v1/openapi.json"))
            .route(web::get().to(document_handler)),
    );
}

async fn document_handler() -> HttpResponse {
    HttpResponse::Ok().json(document())
}

/// The OpenAPI 3.0 document for [`ROUTES`].
pub fn document() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let entry = paths
            .entry(route.path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(operations) = entry {
            operations.insert(route.method.to_string(), operation(route));
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "StreamGate",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Upload, transcode to HLS/DASH, stream — optionally gated by NFT ownership."
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "session": {"type": "http", "scheme": "bearer", "description": "A session token from /api/v1/auth/login"},
                "admin": {"type": "http", "scheme": "bearer", "description": "The admin token from auth.admin_token"}
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string", "description": "stable snake_case code"},
                        "message": {"type": "string"}
                    }
                }
            }
        }
    })
}

fn operation(route: &RouteDoc) -> Value {
    let mut parameters: Vec<Value> = path_parameters(route.path)
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    parameters.extend(
        route
            .query
            .iter()
            .map(|name| json!({"name": name, "in": "query", "required": false, "schema": {"type": "string"}})),
    );
    let (status, content_type) = route.success;
    let success = if content_type.is_empty() {
        json!({"description": "success"})
    } else {
        json!({"description": "success", "content": {content_type: {"schema": {}}}})
    };
    let error = json!({
        "description": "an error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    });
    let mut responses = Map::new();
    responses.insert(status.to_string(), success);
    responses.insert("default".to_string(), error);
    let mut operation = json!({
        "tags": [route.tag],
        "summary": route.summary,
        "operationId": operation_id(route),
        "parameters": parameters,
        "responses": responses,
    });
    let security = match route.access {
        Access::Public => None,
        Access::Session => Some(json!([{"session": []}, {"admin": []}])),
        Access::Admin => Some(json!([{"admin": []}])),
    };
    if let (Some(security), Value::Object(object)) = (security, &mut operation) {
        object.insert("security".to_string(), security);
    }
    if route.json_body {
        if let Value::Object(object) = &mut operation {
            object.insert(
                "requestBody".to_string(),
                json!({"required": true, "content": {"application/json": {"schema": {"type": "object"}}}}),
            );
        }
    }
    operation
}

fn path_parameters(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
}

/// `get /api/v1/media/{media_id}` → `get_api_v1_media_media_id`.
fn operation_id(route: &RouteDoc) -> String {
    let mut id = route.method.to_string();
    for part in route.path.split(|c: char| !c.is_ascii_alphanumeric()) {
        if !part.is_empty() {
            id.push('_');
            id.push_str(part);
        }
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_unique_and_parameters_come_from_the_path() {
        let mut ids: Vec<String> = ROUTES.iter().map(operation_id).collect();
        ids.sort();
        let before = ids.len();
        ids.dedup();
        assert_eq!(before, ids.len(), "duplicate operation");
        let doc = document();
        let get = &doc["paths"]["/api/v1/media/{media_id}/hls/{rendition}/{segment}"]["get"];
        let names: Vec<&str> = get["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["media_id", "rendition", "segment", "token"]);
    }
}
