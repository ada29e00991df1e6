//! Every metric name StreamGate exports. Dashboards and alert rules use only these.

pub const HTTP_REQUESTS_TOTAL: &str = "streamgate_http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "streamgate_http_request_duration_seconds";
pub const HTTP_REQUEST_DURATION_MAX_SECONDS: &str = "streamgate_http_request_duration_max_seconds";
pub const HTTP_REQUESTS_IN_FLIGHT: &str = "streamgate_http_requests_in_flight";
pub const HTTP_RESPONSE_BYTES_TOTAL: &str = "streamgate_http_response_bytes_total";
pub const HTTP_CONNECTIONS_ACTIVE: &str = "streamgate_http_connections_active";
pub const HTTP_CONNECTIONS_TOTAL: &str = "streamgate_http_connections_total";
pub const HTTP_SENDFILE_BYTES_TOTAL: &str = "streamgate_http_sendfile_bytes_total";
pub const HTTP_TIMEOUTS_TOTAL: &str = "streamgate_http_timeouts_total";
pub const OTLP_SPANS_EXPORTED_TOTAL: &str = "streamgate_otlp_spans_exported_total";
pub const OTLP_SPANS_DROPPED_TOTAL: &str = "streamgate_otlp_spans_dropped_total";
pub const OTLP_SPANS_FAILED_TOTAL: &str = "streamgate_otlp_spans_failed_total";
pub const RATE_LIMITED_TOTAL: &str = "streamgate_rate_limited_total";
pub const RATE_LIMIT_TRACKED_CLIENTS: &str = "streamgate_rate_limit_tracked_clients";
pub const RATE_LIMIT_EVICTIONS_TOTAL: &str = "streamgate_rate_limit_evictions_total";
pub const ACTOR_UP: &str = "streamgate_actor_up";
pub const ACTOR_RESTARTS_TOTAL: &str = "streamgate_actor_restarts_total";
pub const ACTOR_PING_SECONDS: &str = "streamgate_actor_ping_seconds";
pub const ACTOR_LAST_HEARTBEAT_SECONDS: &str = "streamgate_actor_last_heartbeat_timestamp_seconds";
pub const UPLOADS_TOTAL: &str = "streamgate_uploads_total";
pub const UPLOAD_BYTES_TOTAL: &str = "streamgate_upload_bytes_total";
pub const UPLOAD_RECEIVED_BYTES_TOTAL: &str = "streamgate_upload_received_bytes_total";
pub const UPLOAD_DURATION_SECONDS: &str = "streamgate_upload_duration_seconds";
pub const UPLOAD_CHECKSUM_FAILURES_TOTAL: &str = "streamgate_upload_checksum_failures_total";
pub const TRANSCODE_JOBS_TOTAL: &str = "streamgate_transcode_jobs_total";
pub const JOB_DURATION_SECONDS: &str = "streamgate_job_duration_seconds";
pub const FFMPEG_FAILURES_TOTAL: &str = "streamgate_ffmpeg_failures_total";
pub const TRANSCODE_SPEED_RATIO: &str = "streamgate_transcode_speed_ratio";
pub const JOBS: &str = "streamgate_jobs";
pub const AUTH_LOGINS_TOTAL: &str = "streamgate_auth_logins_total";
pub const AUTH_SESSION_EVENTS_TOTAL: &str = "streamgate_auth_session_events_total";
pub const NFT_CHECKS_TOTAL: &str = "streamgate_nft_checks_total";
pub const NFT_RPC_DURATION_SECONDS: &str = "streamgate_nft_rpc_duration_seconds";
pub const STORE_POOL_CONNECTIONS: &str = "streamgate_store_pool_connections";
pub const STORE_POOL_MAX_CONNECTIONS: &str = "streamgate_store_pool_max_connections";
pub const STORE_QUERY_DURATION_SECONDS: &str = "streamgate_store_query_duration_seconds";
pub const GATE_CHANGES_TOTAL: &str = "streamgate_gate_changes_total";
pub const PLAYBACK_REFUSED_TOTAL: &str = "streamgate_playback_refused_total";
pub const AUDIT_REFUSALS_TOTAL: &str = "streamgate_audit_refusals_total";
pub const AUDIT_PRUNED_TOTAL: &str = "streamgate_audit_pruned_total";
pub const RETENTION_PRUNED_TOTAL: &str = "streamgate_retention_pruned_total";
pub const CACHE_REQUESTS_TOTAL: &str = "streamgate_cache_requests_total";
pub const CACHE_EVICTIONS_TOTAL: &str = "streamgate_cache_evictions_total";
pub const CACHE_ENTRIES: &str = "streamgate_cache_entries";
pub const CACHE_WARMED_TOTAL: &str = "streamgate_cache_warmed_total";
pub const PROCESS_CPU_SECONDS_TOTAL: &str = "streamgate_process_cpu_seconds_total";
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "streamgate_process_resident_memory_bytes";
pub const PROCESS_VIRTUAL_MEMORY_BYTES: &str = "streamgate_process_virtual_memory_bytes";
pub const PROCESS_START_TIME_SECONDS: &str = "streamgate_process_start_time_seconds";
pub const PROCESS_OPEN_FDS: &str = "streamgate_process_open_fds";
pub const HOST_MEMORY_BYTES: &str = "streamgate_host_memory_bytes";
pub const HOST_CPU_CORES: &str = "streamgate_host_cpu_cores";
pub const ALERTS_FIRING: &str = "streamgate_alerts_firing";
pub const ALERT_TRANSITIONS_TOTAL: &str = "streamgate_alert_transitions_total";

/// Label values for [`UPLOADS_TOTAL`]'s `outcome`.
pub mod upload_outcome {
    pub const FINISHED: &str = "finished";
    pub const REJECTED: &str = "rejected";
    /// A resumable upload was created.
    pub const CREATED: &str = "created";
    /// A resumable upload was deleted by its client.
    pub const TERMINATED: &str = "terminated";
    /// An unfinished resumable upload was deleted by the expiry sweep.
    pub const EXPIRED: &str = "expired";
}

/// Label values for [`TRANSCODE_JOBS_TOTAL`]'s `outcome` (final job states).
pub const TRANSCODE_OUTCOMES: [&str; 3] = ["succeeded", "failed", "cancelled"];

/// Label values for [`RETENTION_PRUNED_TOTAL`]'s `record`.
pub const RETENTION_RECORDS: [&str; 2] = ["job", "tus_upload"];

/// Label values for [`JOBS`]'s `state`.
pub const JOB_STATES: [&str; 5] = ["queued", "running", "succeeded", "failed", "cancelled"];

/// Label `cache` of the remembered playback grants (session, media) → playback token
/// (`auth::grants`): hits are gated playlist GETs answered without an AuthActor message.
pub const PLAYBACK_GRANTS_CACHE: &str = "playback_grants";
/// Label `cache` of gated playlists with a viewer's token written in.
pub const TOKENISED_PLAYLISTS_CACHE: &str = "tokenised_playlists";

/// The caches of SPEC.md and ours, exported from the start so dashboards have series before
/// the cache work fills them (label `cache` of the `CACHE_*` metrics).
pub const CACHES: [&str; 7] = [
    "gateway",
    "upload",
    "streaming",
    "metadata",
    "search",
    PLAYBACK_GRANTS_CACHE,
    TOKENISED_PLAYLISTS_CACHE,
];

/// The rate-limited services (label `service`); the route → service table is in
/// `streamgate_web::middleware::rate_limit`.
pub const SERVICES: [&str; 9] = [
    "gateway",
    "upload",
    "streaming",
    "metadata",
    "cache",
    "auth",
    "worker",
    "transcoder",
    "monitor",
];
