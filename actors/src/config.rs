//! The configuration sections the domain owns. Defaults live in `config/default.toml` (the root
//! crate's base layer), not here, so there is exactly one place that documents them.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use serde::Deserialize;

use crate::monitor::alerts::AlertRule;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    pub min_free_disk_mb: u64,
    /// Memory for sled's cache of record pages, in MiB (sled's own default is 1 GiB).
    pub record_cache_mb: u64,
    /// Where blobs live: `local` (under `data_dir/blobs`) or `s3` (the `[s3]` section).
    pub blobs: BlobBackend,
    /// Where records live: `sled` (under `data_dir/db`) or `postgres` (the `[postgres]` section).
    pub records: RecordBackend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordBackend {
    Sled,
    Postgres,
}

/// The Postgres database records live in when `storage.records = "postgres"`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    pub url: String,
    pub pool_size: u32,
    pub connect_timeout_ms: u64,
}

impl std::fmt::Debug for PostgresConfig {
    // The URL may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("pool_size", &self.pool_size)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobBackend {
    Local,
    S3,
}

/// An S3-compatible object store (AWS, MinIO, Ceph, moto, …).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    pub allow_http: bool,
}

impl std::fmt::Debug for S3Config {
    // Keeps the secret out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadConfig {
    pub max_size_bytes: u64,
    /// Bytes one owner may hold in uploads and media (both upload paths); 0 means no quota.
    pub quota_bytes: u64,
    /// Seconds an unfinished resumable upload lives after its last PATCH.
    pub expiry_s: u64,
    /// Seconds between sweeps that delete expired uploads.
    pub cleanup_interval_s: u64,
    /// Seconds a finished resumable upload's record is kept (for HEAD/GET) before a sweep drops it.
    pub finished_retention_s: u64,
    /// fsync every tus PATCH before acknowledging it (durable against power loss), instead of
    /// once when the upload completes (acknowledged bytes then survive `kill -9` only).
    pub sync_every_patch: bool,
    /// Visibility of media whose upload does not say (`public`, `unlisted`, `private`).
    pub default_visibility: crate::model::Visibility,
    /// Where partial resumable uploads live; empty means `data_dir/partials`. Nodes sharing one
    /// Postgres point it at one shared directory, so any node can take any PATCH.
    pub partial_dir: std::path::PathBuf,
}

/// Where partial resumable uploads live: `upload.partial_dir`, or `data_dir/partials`.
pub fn partial_dir(data_dir: &std::path::Path, configured: &std::path::Path) -> std::path::PathBuf {
    if configured.as_os_str().is_empty() {
        data_dir.join("partials")
    } else {
        configured.to_path_buf()
    }
}

/// One `[[webhooks]]` entry: where lifecycle events go, signed with `secret`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    pub secret: String,
    /// Event types from [`crate::webhooks::EVENTS`].
    pub events: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rung {
    pub name: String,
    pub height: u32,
    pub video_bitrate_kbps: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranscodeConfig {
    pub ffmpeg_path: String,
    pub ffprobe_path: String,
    pub workers: usize,
    pub max_attempts: u32,
    pub retry_base_delay_ms: u64,
    pub segment_seconds: u32,
    pub x264_preset: String,
    pub audio_bitrate_kbps: u32,
    pub cleanup_min_age_s: u64,
    /// ffprobe is killed after this long (a hostile file can make probing crawl).
    pub probe_timeout_s: u64,
    /// Sources over any of these limits fail their job with a code that names the limit.
    pub max_duration_s: f64,
    pub max_frame_pixels: u64,
    pub max_streams: usize,
    pub max_frame_rate: f64,
    /// Jobs one wallet may have queued or running at once; its uploads past it get 429.
    pub max_active_jobs_per_owner: usize,
    /// Finished jobs are deleted this many days after they finished (0: kept forever).
    pub job_retention_days: u64,
    /// Seconds between job retention runs.
    pub job_prune_interval_s: u64,
    /// Records on Postgres: seconds a node's claim on a running job lasts unless renewed.
    pub lease_s: u64,
    /// Records on Postgres: how often a node with an idle worker looks for claimable jobs.
    pub claim_interval_ms: u64,
    pub ladder: Vec<Rung>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub admin_token: String,
    pub domain: String,
    pub uri: String,
    pub allowed_chain_ids: Vec<u64>,
    pub nonce_ttl_s: u64,
    pub clock_skew_s: u64,
    pub session_ttl_s: u64,
    pub session_secret: String,
    pub playback_token_ttl_s: u64,
    /// How long a minted playback token is handed out again to the same session (capped at
    /// half the token's lifetime); see `auth::grants`.
    pub playback_grant_reuse_s: u64,
    /// At most this many remembered (session, media) playback grants.
    pub playback_grant_entries: usize,
    pub nft_cache_ttl_ms: u64,
    pub nft_cache_entries: usize,
    pub rpc_timeout_ms: u64,
    pub rpc: Vec<ChainRpc>,
    /// Uncached ownership look-ups one session may make through `POST /api/v1/auth/nft/verify`
    /// per minute; over it: 429 `nft_rpc_budget_exceeded` with `Retry-After`.
    pub nft_verify_rpc_per_minute: u32,
}

/// The audit log's retention and how refused (possibly hostile) events are sampled.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Entries older than this are pruned.
    pub retention_days: u64,
    /// At most this many entries are kept (the oldest go first).
    pub max_entries: u64,
    /// Seconds between retention runs.
    pub prune_interval_s: u64,
    /// At most one entry per refused action and client within this many seconds; the rest
    /// are counted (`streamgate_audit_refusals_total`) and summed up in the next entry.
    pub refusal_interval_s: u64,
}

/// The JSON-RPC endpoint used for ownership checks on one chain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainRpc {
    pub chain_id: u64,
    pub url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    pub sample_interval_ms: u64,
    pub ping_timeout_ms: u64,
    /// Request metrics, trace stats and tracing (request log scope, request ids, `traceparent`) on
    /// HTTP. Security headers and CORS are hardening and stay on either way.
    pub http_middleware: bool,
    pub alert_window_s: f64,
    pub alert_history: usize,
    pub alert_webhooks: Vec<String>,
    pub webhook_timeout_ms: u64,
    pub external_url: String,
    pub log_ring_capacity: usize,
    pub log_ring_level: String,
    pub alert_rules: Vec<AlertRule>,
    /// OTLP/HTTP collector base URL (`…/v1/traces` is appended); empty: no span export.
    pub otlp_endpoint: String,
    pub otlp_service_name: String,
    pub otlp_queue_capacity: usize,
    pub otlp_batch_size: usize,
    pub otlp_flush_interval_ms: u64,
    pub otlp_timeout_ms: u64,
}

/// One token bucket: `capacity` requests at once, refilled by `refill_per_second`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    pub capacity: u32,
    pub refill_per_second: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Peers whose `X-Forwarded-For` is believed (reverse proxies in front of us).
    pub trusted_proxies: Vec<IpAddr>,
    pub cleanup_interval_s: u64,
    pub audit_interval_s: u64,
    /// IPv6 clients share a bucket per prefix of this many bits (0..=128).
    pub ipv6_prefix_len: u8,
    /// Client buckets one service's table holds at most; the least recently seen go first.
    pub max_tracked_clients: usize,
    pub services: BTreeMap<String, BucketConfig>,
}

impl RateLimitConfig {
    pub fn validate(&self) -> Result<(), String> {
        for service in crate::monitor::metric_names::SERVICES {
            match self.services.get(service) {
                None => return Err(format!("rate_limit.services.{service} is missing")),
                Some(bucket) if bucket.capacity == 0 || bucket.refill_per_second == 0 => {
                    return Err(format!(
                        "rate_limit.services.{service}: capacity and refill_per_second must be at least 1"
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some(unknown) = self
            .services
            .keys()
            .find(|name| !crate::monitor::metric_names::SERVICES.contains(&name.as_str()))
        {
            return Err(format!("rate_limit.services.{unknown}: no such service"));
        }
        if self.cleanup_interval_s == 0 {
            return Err("rate_limit.cleanup_interval_s must be at least 1".into());
        }
        if self.ipv6_prefix_len > 128 {
            return Err("rate_limit.ipv6_prefix_len must be 0..=128".into());
        }
        if self.max_tracked_clients == 0 {
            return Err("rate_limit.max_tracked_clients must be at least 1".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Origins allowed to call the API from a browser; empty sends no CORS headers, `"*"` any.
    pub cors_allowed_origins: Vec<String>,
    pub cors_max_age_s: usize,
}

/// LRU + TTL caches (SPEC.md): entries held at most, and seconds an entry lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    pub gateway_entries: usize,
    pub gateway_ttl_s: u64,
    pub streaming_entries: usize,
    pub streaming_ttl_s: u64,
    pub metadata_entries: usize,
    pub metadata_ttl_s: u64,
    pub search_entries: usize,
    pub search_ttl_s: u64,
    pub tokenised_entries: usize,
    pub tokenised_ttl_s: u64,
    pub purge_interval_s: u64,
    pub warm_recent: usize,
    pub upload_entries: usize,
    pub upload_ttl_s: u64,
}

impl CacheConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (key, value) in [
            ("gateway_entries", self.gateway_entries as u64),
            ("streaming_entries", self.streaming_entries as u64),
            ("metadata_entries", self.metadata_entries as u64),
            ("search_entries", self.search_entries as u64),
            ("tokenised_entries", self.tokenised_entries as u64),
            ("upload_entries", self.upload_entries as u64),
            ("purge_interval_s", self.purge_interval_s),
        ] {
            if value == 0 {
                return Err(format!("cache.{key} must be at least 1"));
            }
        }
        Ok(())
    }
}

/// Trust for outbound TLS (RPC, webhooks, OTLP, S3); see `outbound.rs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of extra CA certificates, trusted besides the system's roots; empty: none.
    pub extra_ca_file: String,
}

/// Everything [`crate::start`] needs.
#[derive(Debug, Clone)]
pub struct ActorsConfig {
    pub webhooks: Vec<WebhookConfig>,
    pub storage: StorageConfig,
    pub s3: S3Config,
    pub postgres: PostgresConfig,
    pub upload: UploadConfig,
    pub transcode: TranscodeConfig,
    pub auth: AuthConfig,
    pub monitor: MonitorConfig,
    pub cache: CacheConfig,
    pub audit: AuditConfig,
    pub tls: TlsConfig,
}

impl ActorsConfig {
    /// Checks what serde cannot: ranges and relations between keys.
    pub fn validate(&self) -> Result<(), String> {
        for hook in &self.webhooks {
            if !(hook.url.starts_with("http://") || hook.url.starts_with("https://")) {
                return Err(format!("webhooks: url {:?} must be http(s)://", hook.url));
            }
            if hook.secret.len() < 16 {
                return Err(format!(
                    "webhooks: the secret of {:?} needs 16+ characters",
                    hook.url
                ));
            }
            if let Some(unknown) = hook
                .events
                .iter()
                .find(|event| !crate::webhooks::EVENTS.contains(&event.as_str()))
            {
                return Err(format!("webhooks: unknown event {unknown:?}"));
            }
        }
        if self.transcode.workers == 0 {
            return Err("transcode.workers must be at least 1".into());
        }
        if self.transcode.lease_s == 0 || self.transcode.claim_interval_ms == 0 {
            return Err(
                "transcode.lease_s and transcode.claim_interval_ms must be at least 1".into(),
            );
        }
        if self.transcode.ladder.is_empty() {
            return Err("transcode.ladder must have at least one rung".into());
        }
        for rung in &self.transcode.ladder {
            if rung.height < 144 || rung.height % 2 != 0 {
                return Err(format!(
                    "transcode.ladder rung {:?}: height must be even and at least 144",
                    rung.name
                ));
            }
            if !crate::blob_names::is_safe_name(&rung.name) {
                return Err(format!(
                    "transcode.ladder rung {:?}: name must match [A-Za-z0-9_-]{{1,32}}",
                    rung.name
                ));
            }
        }
        if self.transcode.segment_seconds == 0 {
            return Err("transcode.segment_seconds must be at least 1".into());
        }
        if self.upload.max_size_bytes == 0 {
            return Err("upload.max_size_bytes must be at least 1".into());
        }
        self.validate_auth()?;
        let audit = &self.audit;
        for (key, value) in [
            ("retention_days", audit.retention_days),
            ("max_entries", audit.max_entries),
            ("prune_interval_s", audit.prune_interval_s),
            ("refusal_interval_s", audit.refusal_interval_s),
        ] {
            if value == 0 {
                return Err(format!("audit.{key} must be at least 1"));
            }
        }
        if self.upload.expiry_s == 0 || self.upload.cleanup_interval_s == 0 {
            return Err("upload.expiry_s and upload.cleanup_interval_s must be at least 1".into());
        }
        if self.storage.blobs == BlobBackend::S3 && self.s3.bucket.is_empty() {
            return Err("storage.blobs = \"s3\" needs s3.bucket".into());
        }
        if self.storage.records == RecordBackend::Postgres
            && (self.postgres.url.is_empty() || self.postgres.pool_size == 0)
        {
            return Err(
                "storage.records = \"postgres\" needs postgres.url and pool_size >= 1".into(),
            );
        }
        self.cache.validate()?;
        if self.monitor.sample_interval_ms < 100 {
            return Err("monitor.sample_interval_ms must be at least 100".into());
        }
        if crate::monitor::logs::level_from_str(&self.monitor.log_ring_level).is_none() {
            return Err("monitor.log_ring_level must be error, warn, info, debug or trace".into());
        }
        if self.monitor.alert_window_s <= 0.0 {
            return Err("monitor.alert_window_s must be positive".into());
        }
        for rule in &self.monitor.alert_rules {
            if rule.name.is_empty() || !rule.threshold.is_finite() || rule.for_s < 0.0 {
                return Err(format!(
                    "monitor.alert_rules {:?}: needs a name, a finite threshold and for_s >= 0",
                    rule.name
                ));
            }
        }
        for url in &self.monitor.alert_webhooks {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return Err(format!(
                    "monitor.alert_webhooks: {url:?} is not an http(s) URL"
                ));
            }
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), String> {
        let auth = &self.auth;
        if auth.domain.is_empty() || auth.domain.contains('/') {
            return Err("auth.domain must be a host[:port], e.g. video.example.com".into());
        }
        if !(auth.uri.starts_with("http://") || auth.uri.starts_with("https://")) {
            return Err("auth.uri must be an http(s) URL, e.g. https://video.example.com".into());
        }
        if auth.allowed_chain_ids.is_empty() {
            return Err("auth.allowed_chain_ids must name at least one chain".into());
        }
        for (key, value) in [
            ("nonce_ttl_s", auth.nonce_ttl_s),
            ("session_ttl_s", auth.session_ttl_s),
            ("playback_token_ttl_s", auth.playback_token_ttl_s),
            ("playback_grant_entries", auth.playback_grant_entries as u64),
            ("rpc_timeout_ms", auth.rpc_timeout_ms),
            (
                "nft_verify_rpc_per_minute",
                u64::from(auth.nft_verify_rpc_per_minute),
            ),
        ] {
            if value == 0 {
                return Err(format!("auth.{key} must be at least 1"));
            }
        }
        if !auth.session_secret.is_empty() && auth.session_secret.len() < 32 {
            return Err(
                "auth.session_secret must be empty (generated) or at least 32 bytes".into(),
            );
        }
        for rpc in &auth.rpc {
            if !rpc.url.starts_with("http://") && !rpc.url.starts_with("https://") {
                return Err(format!(
                    "auth.rpc chain {}: url must be http:// or https://",
                    rpc.chain_id
                ));
            }
        }
        Ok(())
    }
}
