//! The route table: one entry per method and pattern. Registration ([`configure`]), the
//! rate-limit service of a path ([`service_for`]) and the OpenAPI document
//! ([`crate::openapi`]) are all read from [`ROUTES`].

use std::sync::LazyLock;

use actix_web::{dev::ResourceDef, http::Method, middleware::from_fn, web, Resource};
use serde_json::{json, Value};

use super::{
    audit, auth, backups, cache, health, jobs, media, monitor, streaming, tus, uploads, webhooks,
};
use crate::{middleware::rate_limit::ServiceId, openapi};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    /// Public unless the media is token-gated: then a session passing the gate, the admin
    /// token or a playback `?token=`.
    Gated,
    /// A wallet session (`Authorization: Bearer <session>`) or the admin token.
    Session,
    /// The admin token from `auth.admin_token`.
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
}

impl Verb {
    pub fn method(self) -> Method {
        match self {
            Self::Get => Method::GET,
            Self::Head => Method::HEAD,
            Self::Post => Method::POST,
            Self::Put => Method::PUT,
            Self::Patch => Method::PATCH,
            Self::Delete => Method::DELETE,
            Self::Options => Method::OPTIONS,
        }
    }

    /// The lower-case name OpenAPI keys operations by.
    pub fn name(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Head => "head",
            Self::Post => "post",
            Self::Put => "put",
            Self::Patch => "patch",
            Self::Delete => "delete",
            Self::Options => "options",
        }
    }
}

/// Where a parameter goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum In {
    Query,
    Header,
}

/// A query parameter (optional) or header (required) and its JSON schema.
#[derive(Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub place: In,
    pub schema: fn() -> Value,
}

/// One operation: a method on a pattern, its handler and what the document says of it.
#[derive(Clone, Copy)]
pub struct Route {
    pub verb: Verb,
    /// The full pattern, as `HttpRequest::match_pattern()` reports it.
    pub pattern: &'static str,
    /// Adds the handler's route to its resource.
    pub register: fn(Resource) -> Resource,
    /// Resource-wide settings (payload limits) the handler needs.
    pub setup: fn(Resource) -> Resource,
    /// The bucket the route draws from and its metrics' `service` label.
    pub service: ServiceId,
    pub access: Access,
    pub tag: &'static str,
    pub summary: &'static str,
    /// The success status and its content type (`""`: no body).
    pub success: (u16, &'static str),
    pub query: &'static [Param],
    /// The request body's schema, for operations that take one, and its content type.
    pub body: Option<fn() -> Value>,
    pub body_type: &'static str,
}

impl Route {
    const PLAIN: Self = Self {
        verb: Verb::Get,
        pattern: "",
        register: |resource| resource,
        setup: |resource| resource,
        service: ServiceId::GATEWAY,
        access: Access::Public,
        tag: "",
        summary: "",
        success: (200, JSON),
        query: &[],
        body: None,
        body_type: JSON,
    };
}

const JSON: &str = "application/json";
const HLS: &str = "application/vnd.apple.mpegurl";
const EMPTY: &str = "";

macro_rules! route {
    ($verb:ident $pattern:literal => $handler:path, $service:ident, $access:ident, $tag:literal,
     $summary:literal, $status:literal $content:expr $(, $field:ident = $value:expr)* $(,)?) => {
        Route {
            verb: Verb::$verb,
            pattern: $pattern,
            register: |resource| {
                let resource = resource.route(web::method(Verb::$verb.method()).to($handler));
                // HEAD is GET without the body (RFC 9110 §9.3.2): players and caches probe
                // segments and playlists with it. An explicit HEAD route registers first.
                match Verb::$verb {
                    Verb::Get => resource.route(web::method(Method::HEAD).to($handler)),
                    _ => resource,
                }
            },
            service: ServiceId::$service,
            access: Access::$access,
            tag: $tag,
            summary: $summary,
            success: ($status, $content),
            $($field: $value,)*
            ..Route::PLAIN
        }
    };
}

const fn query(name: &'static str, schema: fn() -> Value) -> Param {
    Param {
        name,
        place: In::Query,
        schema,
    }
}

const fn header(name: &'static str, schema: fn() -> Value) -> Param {
    Param {
        name,
        place: In::Header,
        schema,
    }
}

fn text() -> Value {
    json!({"type": "string"})
}

/// A count the server clamps to its own bound (`usize` on the wire).
fn count() -> Value {
    json!({"type": "integer", "minimum": 0, "maximum": u64::MAX})
}

const UUID: &str = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
/// One case only: mixed case must be an EIP-55 checksum, which no pattern can say.
const ADDRESS: &str = "^0x([0-9a-f]{40}|[0-9A-F]{40})$";

fn address() -> Value {
    json!({"type": "string", "pattern": ADDRESS,
        "description": "also accepted: mixed case that is the address's EIP-55 checksum"})
}

fn uuid() -> Value {
    json!({"type": "string", "pattern": UUID})
}

fn time() -> Value {
    json!({"type": "string", "format": "date-time"})
}

fn chain_id() -> Value {
    json!({"type": "integer", "minimum": 0, "maximum": u64::MAX})
}

fn token_id() -> Value {
    json!({"oneOf": [{"type": "integer", "minimum": 0, "maximum": u64::MAX}, {"type": "string"}]})
}

fn standard() -> Value {
    json!({"type": "string", "enum": ["erc721", "erc1155"]})
}

fn tus_version() -> Value {
    json!({"type": "string", "enum": ["1.0.0"]})
}

fn bytes() -> Value {
    json!({"type": "string", "format": "binary"})
}

const TOKEN: &[Param] = &[query("token", text)];
const PAGE: [Param; 2] = [query("limit", count), query("cursor", uuid)];

/// `schema`, where the body may also say `null` (an optional field).
fn or_null(mut schema: Value) -> Value {
    if let Value::Object(object) = &mut schema {
        object.insert("nullable".to_string(), Value::Bool(true));
    }
    schema
}

fn update_body() -> Value {
    json!({"type": "object", "additionalProperties": false, "properties": {
        "title": or_null(text()),
        "description": or_null(text()),
        "tags": or_null(json!({"type": "array", "items": {"type": "string"}})),
        "visibility": or_null(visibility()),
    }})
}

fn visibility() -> Value {
    json!({"type": "string", "enum": ["public", "unlisted", "private"]})
}

fn upload_body() -> Value {
    json!({"type": "object", "required": ["file"], "properties": {
        "file": bytes(),
        "title": text(),
        "description": text(),
        "tags": text(),
        "visibility": visibility(),
        "gate": {"type": "string", "description": "a gate as JSON, as PUT …/gate takes it"},
    }})
}

fn gate_body() -> Value {
    json!({"type": "object", "nullable": true, "additionalProperties": false,
        "required": ["chain_id", "contract", "standard"], "properties": {
        "chain_id": chain_id(),
        "contract": address(),
        "standard": standard(),
        "token_id": or_null(token_id()),
        "min_balance": or_null(json!({"type": "integer", "minimum": 1, "maximum": u64::MAX})),
    }})
}

/// Transcode and thumbnail jobs work on one media item; cleanup on none.
fn backup_body() -> Value {
    json!({"type": "object", "additionalProperties": false,
        "properties": {"with_blobs": {"type": "boolean"}}})
}

fn job_body() -> Value {
    let job = |kinds: &[&str], media_id: Value, required: &[&str]| {
        json!({"type": "object", "additionalProperties": false, "required": required,
            "properties": {
            "kind": {"type": "string", "enum": kinds},
            "media_id": media_id,
            "profiles": or_null(json!({"type": "array", "items": {"type": "string"}})),
            "priority": or_null(json!({"type": "integer", "minimum": 0, "maximum": 9})),
            "run_at": or_null(time()),
        }})
    };
    json!({"oneOf": [
        job(&["transcode", "thumbnail"], uuid(), &["kind", "media_id"]),
        job(&["cleanup"], or_null(uuid()), &["kind"]),
    ]})
}

fn challenge_body() -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["address", "chain_id"],
        "properties": {"address": address(), "chain_id": chain_id()}})
}

fn login_body() -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["message", "signature"],
        "properties": {"message": text(), "signature": text()}})
}

fn nft_body() -> Value {
    json!({"type": "object", "additionalProperties": false,
        "required": ["address", "chain_id", "contract", "standard"], "properties": {
        "address": address(),
        "chain_id": chain_id(),
        "contract": address(),
        "standard": standard(),
        "token_id": or_null(token_id()),
    }})
}

fn batch_body() -> Value {
    let key = text;
    let op = |name: &str, extra: Value, required: &[&str]| {
        let mut properties = json!({"op": {"type": "string", "enum": [name]}, "key": key()});
        if let (Value::Object(properties), Value::Object(extra)) = (&mut properties, extra) {
            properties.extend(extra);
        }
        json!({"type": "object", "additionalProperties": false, "required": required,
            "properties": properties})
    };
    json!({"type": "object", "additionalProperties": false, "required": ["ops"], "properties": {
        "ops": {"type": "array", "maxItems": cache::MAX_BATCH_OPS, "items": {"oneOf": [
            op("get", json!({}), &["op", "key"]),
            op("set", json!({
                "value": text(),
                "content_type": or_null(text()),
                "ttl_s": or_null(count()),
            }), &["op", "key", "value"]),
            op("delete", json!({}), &["op", "key"]),
        ]}},
    }})
}

fn warm_body() -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["media_ids"],
        "properties": {"media_ids": {"type": "array", "maxItems": cache::MAX_WARM_IDS,
            "items": uuid()}}})
}

/// Every route, in registration order: actix tries resources in order, so a static pattern
/// (`/jobs/stats`) comes before the dynamic one that would also match it (`/jobs/{job_id}`).
pub const ROUTES: &[Route] = &[
    route!(Get "/health" => health::health, GATEWAY, Public, "gateway",
        "Health of store, blobs, ffmpeg, disk and actors (200 ok, 207 degraded, 503 down)", 200 JSON),
    route!(Get "/ready" => health::ready, GATEWAY, Public, "gateway",
        "200 when every actor answers", 200 JSON),
    route!(Get "/metrics" => health::metrics, MONITOR, Public, "gateway",
        "Prometheus text exposition", 200 "text/plain; version=0.0.4"),
    route!(Get "/api/v1/monitor/health" => health::monitor_health, MONITOR, Public, "monitor",
        "Per-actor liveness and restarts", 200 JSON),
    route!(Post "/api/v1/upload" => uploads::upload, UPLOAD, Session, "uploads",
        "One-shot multipart upload (field `file`, optional `title`, `description`, `tags`, \
        `visibility`, `gate`)",
        201 JSON, body = Some(upload_body), body_type = "multipart/form-data"),
    route!(Options "/api/v1/uploads" => tus::options, UPLOAD, Public, "uploads",
        "tus capabilities", 204 EMPTY),
    route!(Post "/api/v1/uploads" => tus::create, UPLOAD, Session, "uploads",
    "tus creation (with optional first chunk)", 201 EMPTY,
    query = &[header("Tus-Resumable", tus_version), header("Upload-Length", || {
        json!({"type": "integer", "minimum": 1, "maximum": u64::MAX})
    })]),
    route!(Options "/api/v1/uploads/{upload_id}" => tus::options, UPLOAD, Public, "uploads",
        "tus capabilities", 204 EMPTY),
    route!(Head "/api/v1/uploads/{upload_id}" => tus::head, UPLOAD, Session, "uploads",
        "tus offset of an upload", 200 EMPTY, query = &[header("Tus-Resumable", tus_version)]),
    route!(Patch "/api/v1/uploads/{upload_id}" => tus::patch, UPLOAD, Session, "uploads",
        "tus chunk at Upload-Offset", 204 EMPTY, body = Some(bytes),
        body_type = "application/offset+octet-stream",
        query = &[header("Tus-Resumable", tus_version), header("Upload-Offset", count)]),
    route!(Delete "/api/v1/uploads/{upload_id}" => tus::terminate, UPLOAD, Session, "uploads",
        "tus termination", 204 EMPTY, query = &[header("Tus-Resumable", tus_version)]),
    route!(Get "/api/v1/uploads/{upload_id}" => tus::status, UPLOAD, Session, "uploads",
        "Upload status as JSON", 200 JSON),
    route!(Get "/api/v1/media" => media::list, METADATA, Public, "media",
    "List or search media", 200 JSON, query = &[
        query("q", || json!({"type": "string", "maxLength": 500})), query("tag", text),
        query("owner", text), PAGE[0], query("cursor", text)]),
    route!(Get "/api/v1/media/{media_id}" => media::get, METADATA, Public, "media",
        "One media record", 200 JSON),
    route!(Patch "/api/v1/media/{media_id}" => media::update, METADATA, Session, "media",
        "Edit title, description, tags, visibility (owner or admin)", 200 JSON,
        body = Some(update_body)),
    route!(Delete "/api/v1/media/{media_id}" => media::delete, METADATA, Session, "media",
        "Delete a media item and its blobs (owner or admin)", 204 EMPTY),
    route!(Get "/api/v1/media/{media_id}/gate" => media::get_gate, METADATA, Public, "media",
        "The media's token gate", 200 JSON),
    route!(Put "/api/v1/media/{media_id}/gate" => media::put_gate, METADATA, Session, "media",
        "Set or clear (null) the token gate (owner or admin)", 200 JSON, body = Some(gate_body)),
    route!(Delete "/api/v1/media/{media_id}/gate" => media::clear_gate, METADATA, Session,
        "media", "Clear the token gate (owner or admin)", 200 JSON),
    route!(Get "/api/v1/media/{media_id}/hls/master.m3u8" => streaming::master, STREAMING, Gated,
        "streaming", "HLS master playlist", 200 HLS, query = TOKEN),
    route!(Get "/api/v1/media/{media_id}/hls/{rendition}/index.m3u8" =>
        streaming::rendition_playlist, STREAMING, Gated, "streaming", "HLS media playlist",
        200 HLS, query = TOKEN),
    route!(Get "/api/v1/media/{media_id}/hls/{rendition}/{segment}" => streaming::segment,
        STREAMING, Gated, "streaming", "CMAF segment (Range, ETag)", 200 "video/iso.segment",
        query = TOKEN),
    route!(Get "/api/v1/media/{media_id}/hls/{version}/{rendition}/index.m3u8" =>
        streaming::versioned_rendition_playlist, STREAMING, Gated, "streaming",
        "HLS media playlist of gated or private media, under its current version", 200 HLS,
        query = TOKEN),
    route!(Get "/api/v1/media/{media_id}/hls/{version}/{rendition}/{segment}" =>
        streaming::versioned_segment, STREAMING, Gated, "streaming",
        "CMAF segment of gated or private media, under its current version", 200
        "video/iso.segment", query = TOKEN),
    route!(Get "/api/v1/media/{media_id}/thumbnail.jpg" => streaming::thumbnail, STREAMING,
        Gated, "streaming", "Thumbnail", 200 "image/jpeg", query = TOKEN),
    route!(Get "/api/v1/media/{media_id}/dash/manifest.mpd" => streaming::dash_manifest,
        STREAMING, Gated, "streaming", "DASH manifest over the same segments", 200
        "application/dash+xml", query = TOKEN),
    route!(Put "/api/v1/media/{media_id}/captions/{lang}" => media::put_caption, METADATA, Session,
        "media", "Add or replace a WebVTT caption track (owner or admin; BCP 47 tag, 512 KiB)",
        200 JSON, body = Some(text), body_type = "text/vtt"),
    route!(Get "/api/v1/media/{media_id}/captions/{lang}" => streaming::caption, STREAMING, Gated,
        "streaming", "A caption track (WebVTT)", 200 "text/vtt", query = TOKEN),
    route!(Delete "/api/v1/media/{media_id}/captions/{lang}" => media::delete_caption, METADATA,
        Session, "media", "Remove a caption track (owner or admin)", 200 JSON),
    route!(Get "/api/v1/media/{media_id}/captions/{lang}/captions.vtt" => streaming::caption,
        STREAMING, Gated, "streaming", "A caption track (WebVTT), as HLS and DASH name it", 200
        "text/vtt", query = TOKEN),
    route!(Get "/api/v1/media/{media_id}/captions/{lang}/index.m3u8" => streaming::caption_playlist,
        STREAMING, Gated, "streaming", "HLS subtitle playlist of a caption track", 200 HLS,
        query = TOKEN),
    route!(Get "/api/v1/jobs" => jobs::list, WORKER, Session, "jobs", "List jobs", 200 JSON,
    query = &[
        query("state", || json!({"type": "string",
            "enum": ["queued", "running", "succeeded", "failed", "cancelled"]})),
        query("media_id", uuid), PAGE[0], PAGE[1]]),
    route!(Post "/api/v1/jobs" => jobs::submit, WORKER, Admin, "jobs",
        "Submit a job (transcode, thumbnail, cleanup)", 202 JSON, body = Some(job_body)),
    route!(Get "/api/v1/jobs/stats" => jobs::stats, WORKER, Session, "jobs",
        "Worker and job statistics", 200 JSON),
    route!(Get "/api/v1/jobs/{job_id}" => jobs::get, WORKER, Session, "jobs",
        "One job with live progress", 200 JSON),
    route!(Post "/api/v1/jobs/{job_id}/cancel" => jobs::cancel, WORKER, Admin, "jobs",
        "Cancel a queued or running job", 200 JSON),
    route!(Get "/api/v1/transcode/profiles" => jobs::profiles, TRANSCODER, Public, "jobs",
        "The transcode ladder", 200 JSON),
    route!(Get "/api/v1/audit" => audit::list, MONITOR, Admin, "audit", "The audit log",
    200 JSON, query = &[
        query("action", text), query("actor", text), query("since", time), PAGE[0], PAGE[1]]),
    route!(Get "/api/v1/webhooks/deliveries" => webhooks::deliveries, MONITOR, Admin, "webhooks",
        "Lifecycle webhook deliveries, newest first", 200 JSON, query = &[query("limit", count)]),
    route!(Get "/api/v1/openapi.json" => openapi::document_handler, GATEWAY, Public, "gateway",
        "This document", 200 JSON),
    route!(Post "/api/v1/auth/challenge" => auth::challenge, AUTH, Public, "auth",
        "A SIWE (EIP-4361) message with a single-use nonce", 200 JSON, body = Some(challenge_body)),
    route!(Post "/api/v1/auth/login" => auth::login, AUTH, Public, "auth",
        "Log in with a signed SIWE message", 200 JSON, body = Some(login_body)),
    route!(Post "/api/v1/auth/verify" => auth::verify, AUTH, Session, "auth", "Check a session",
        200 JSON),
    route!(Post "/api/v1/auth/refresh" => auth::refresh, AUTH, Session, "auth",
        "A new session token; the old one is revoked", 200 JSON),
    route!(Post "/api/v1/auth/logout" => auth::logout, AUTH, Session, "auth",
        "Revoke the session", 204 EMPTY),
    route!(Post "/api/v1/auth/nft/verify" => auth::nft_verify, AUTH, Session, "auth",
        "Token ownership via eth_call (budgeted per session)", 200 JSON, body = Some(nft_body)),
    route!(Get "/api/v1/monitor/metrics" => monitor::summary, MONITOR, Public, "monitor",
        "JSON metrics summary", 200 JSON),
    route!(Get "/api/v1/monitor/alerts" => monitor::alerts, MONITOR, Public, "monitor",
    "Alert rules, firing alerts and history", 200 JSON, query = &[query("limit", count)]),
    route!(Get "/api/v1/monitor/logs" => monitor::logs, MONITOR, Admin, "monitor",
    "Recent log events", 200 JSON, query = &[
        query("level", || json!({"type": "string",
            "enum": ["error", "warn", "info", "debug", "trace"]})), query("limit", count)]),
    route!(Get "/api/v1/monitor/traces" => monitor::traces, MONITOR, Public, "monitor",
    "Request trace statistics", 200 JSON, query = &[query("recent", count)]),
    route!(Delete "/api/v1/cache" => cache::clear, CACHE, Admin, "cache",
        "Clear the admin cache", 200 JSON),
    route!(Get "/api/v1/cache/stats" => cache::stats, CACHE, Admin, "cache",
        "Hits, misses, evictions and size of the caches", 200 JSON),
    route!(Post "/api/v1/cache/batch" => cache::batch, CACHE, Admin, "cache",
        "Many get, set and delete operations in one request (at most 100 ops, 1 MiB), one \
        result each", 200 JSON, setup = cache::batch_limit, body = Some(batch_body)),
    route!(Post "/api/v1/cache/warm" => cache::warm, CACHE, Admin, "cache",
        "Load media records (and ready media's playlists) into the caches", 200 JSON,
        body = Some(warm_body)),
    route!(Get "/api/v1/cache/{key}" => cache::get, CACHE, Admin, "cache",
        "A cached value (404 cache_miss)", 200 "application/octet-stream"),
    route!(Put "/api/v1/cache/{key}" => cache::put, CACHE, Admin, "cache",
        "Store a value (body with its Content-Type)", 204 EMPTY, setup = cache::value_limit,
        query = &[query("ttl_s", count)]),
    route!(Delete "/api/v1/cache/{key}" => cache::delete, CACHE, Admin, "cache",
        "Drop a cached value", 204 EMPTY),
    route!(Post "/api/v1/admin/backups" => backups::create, MONITOR, Admin, "admin",
        "Snapshot records and blobs under the data dir (streamgate backup)", 201 JSON,
        body = Some(backup_body)),
];

/// Scopes some routes are registered under instead of as full patterns.
/// - The tus scope carries the protocol middleware ([`tus::tus_headers`]).
/// - The media item scope: actix runs a regex with captures for each dynamic resource it tries,
///   so a segment GET paid for five of them; under the scope the id is captured once and the
///   rest of the path mostly meets static patterns.
const TUS_SCOPE: &str = "/api/v1/uploads";
pub const MEDIA_ITEM_SCOPE: &str = "/api/v1/media/{media_id}";

fn scope_of(pattern: &str) -> Option<&'static str> {
    [TUS_SCOPE, MEDIA_ITEM_SCOPE].into_iter().find(|scope| {
        pattern
            .strip_prefix(scope)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// Each pattern once, in table order.
fn patterns() -> impl Iterator<Item = &'static str> {
    ROUTES
        .iter()
        .enumerate()
        .filter(|(at, route)| !ROUTES[..*at].iter().any(|r| r.pattern == route.pattern))
        .map(|(_, route)| route.pattern)
}

/// The resource for `pattern` with every route of the table at it, registered as `path`;
/// explicit `HEAD` routes first, so they answer before a `GET` route's implied one.
fn resource(pattern: &'static str, path: &str) -> Resource {
    let at_pattern = || ROUTES.iter().filter(|route| route.pattern == pattern);
    at_pattern()
        .filter(|route| route.verb == Verb::Head)
        .chain(at_pattern().filter(|route| route.verb != Verb::Head))
        .fold(routed(web::resource(path), pattern), |resource, route| {
            (route.register)((route.setup)(resource))
        })
}

/// The full pattern of the resource that took a request, kept in the resource's app data.
#[derive(Debug, Clone, Copy)]
struct RoutePattern(&'static str);

/// `resource`, which answers at the full `pattern`, tagged for [`route_pattern`].
pub fn routed(resource: Resource, pattern: &'static str) -> Resource {
    resource.app_data(RoutePattern(pattern))
}

/// The full pattern of the resource that answered `req`, `None` when none did. What
/// `HttpRequest::match_pattern` says, without matching the path against every resource again.
pub fn route_pattern(req: &actix_web::HttpRequest) -> Option<&'static str> {
    req.app_data::<RoutePattern>().map(|pattern| pattern.0)
}

/// Registers every route of [`ROUTES`]; a scope goes where its first route stands.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let mut scopes_done = Vec::new();
    for pattern in patterns() {
        let Some(scope) = scope_of(pattern) else {
            cfg.service(resource(pattern, pattern));
            continue;
        };
        if scopes_done.contains(&scope) {
            continue;
        }
        scopes_done.push(scope);
        let members = patterns()
            .filter(|member| scope_of(member) == Some(scope))
            .fold(web::scope(scope), |registered, member| {
                registered.service(resource(member, &member[scope.len()..]))
            });
        if scope == TUS_SCOPE {
            cfg.service(members.wrap(from_fn(tus::tus_headers)));
        } else {
            cfg.service(members);
        }
    }
}

/// A pattern's matcher and what any path it matches must have: the static text before its
/// first placeholder and after its last, and its number of `/` (a placeholder matches no `/`).
/// Those are compared first, so of the media item's many patterns one regex runs, not five.
struct Matcher {
    def: ResourceDef,
    prefix: &'static str,
    suffix: &'static str,
    slashes: usize,
    pattern: &'static str,
}

impl Matcher {
    fn may_match(&self, path: &str, slashes: usize) -> bool {
        slashes == self.slashes && path.starts_with(self.prefix) && path.ends_with(self.suffix)
    }
}

static MATCHERS: LazyLock<Vec<Matcher>> = LazyLock::new(|| {
    patterns()
        .map(|pattern| Matcher {
            def: ResourceDef::new(pattern),
            prefix: pattern.split('{').next().unwrap_or(pattern),
            suffix: pattern.rsplit('}').next().unwrap_or(pattern),
            slashes: pattern.matches('/').count(),
            pattern,
        })
        .collect()
});

/// The pattern the router would pick for `path` (percent-decoded as the router sees it).
pub fn pattern_of(path: &str) -> Option<&'static str> {
    let slashes = path.matches('/').count();
    MATCHERS
        .iter()
        .find(|matcher| matcher.may_match(path, slashes) && matcher.def.is_match(path))
        .map(|matcher| matcher.pattern)
}

/// The routes at `path`, any method.
pub fn routes_at(path: &str) -> impl Iterator<Item = &'static Route> {
    let pattern = pattern_of(path);
    ROUTES
        .iter()
        .filter(move |route| Some(route.pattern) == pattern)
}

/// The service of `path`: its route's, `gateway` for a path no route takes (a 404 costs the
/// gateway bucket; it reaches no handler).
pub fn service_for(path: &str) -> ServiceId {
    routes_at(path)
        .next()
        .map_or(ServiceId::GATEWAY, |route| route.service)
}

/// Whether some route answers `method` at `path`.
pub fn declares(method: &Method, path: &str) -> bool {
    routes_at(path).any(|route| route.verb.method() == *method)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pattern, placeholders filled, is matched by itself: no earlier pattern shadows it,
    /// so the rate-limit lookup and the router agree.
    #[test]
    fn every_pattern_is_found_by_its_own_path() {
        for pattern in patterns() {
            let path = pattern.replace('{', "x").replace('}', "");
            assert_eq!(pattern_of(&path), Some(pattern), "{path}");
        }
        assert_eq!(pattern_of("/api/v1/jobs/stats"), Some("/api/v1/jobs/stats"));
        assert_eq!(pattern_of("/api/v1/nothing"), None);
    }

    /// The cheap comparisons only rule out what the pattern's regex would refuse too.
    #[test]
    fn the_prefilter_agrees_with_the_regexes() {
        let by_regex = |path: &str| {
            MATCHERS
                .iter()
                .find(|matcher| matcher.def.is_match(path))
                .map(|matcher| matcher.pattern)
        };
        let fills = ["x", "a.b", "%2F", "index.m3u8", "gate", "x y"];
        for pattern in patterns() {
            for fill in fills {
                let path = pattern
                    .split('{')
                    .map(|part| {
                        part.split_once('}')
                            .map_or(part.to_string(), |(_, rest)| format!("{fill}{rest}"))
                    })
                    .collect::<String>();
                for variant in [
                    path.clone(),
                    format!("{path}/"),
                    format!("{path}/x"),
                    path.replace("/", "//"),
                ] {
                    assert_eq!(pattern_of(&variant), by_regex(&variant), "{variant}");
                }
            }
        }
    }

    #[test]
    fn operations_are_unique_and_scopes_hold_their_patterns() {
        for (at, route) in ROUTES.iter().enumerate() {
            assert!(
                !ROUTES[..at]
                    .iter()
                    .any(|r| r.pattern == route.pattern && r.verb == route.verb),
                "{:?} {} twice",
                route.verb,
                route.pattern
            );
        }
        assert_eq!(scope_of("/api/v1/uploads"), Some(TUS_SCOPE));
        assert_eq!(scope_of("/api/v1/upload"), None);
        assert_eq!(
            scope_of("/api/v1/media/{media_id}/gate"),
            Some(MEDIA_ITEM_SCOPE)
        );
        assert_eq!(scope_of("/api/v1/media"), None);
    }
}
