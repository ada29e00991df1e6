//! The metrics registry. The monitor actor owns it; hot paths hold cheap clones of individual
//! metrics and bump them directly, as atomics.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, OnceLock,
};

use prometheus::{
    Counter, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::{
    metric_names,
    otlp::{FinishedSpan, SpanExporter},
    traces::{RequestRecord, TraceStats},
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// By service, route pattern, method and status.
    pub http_requests: IntCounterVec,
    /// By service, route pattern and method.
    pub http_duration: HistogramVec,
    pub http_duration_max: Gauge,
    pub http_in_flight: IntGauge,
    /// By service.
    pub http_response_bytes: IntCounterVec,
    pub http_connections_active: IntGauge,
    pub http_connections: IntCounter,
    pub http_sendfile_bytes: IntCounter,
    /// Requests ended because the client stopped: `wait` is `body` (`server.body_timeout_s`) or
    /// `send` (`server.send_timeout_s`).
    pub http_timeouts: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub rate_limit_tracked_clients: IntGauge,
    pub rate_limit_evictions: IntCounterVec,
    pub actor_up: IntGaugeVec,
    pub actor_restarts: IntCounterVec,
    pub actor_ping: GaugeVec,
    pub actor_heartbeat: GaugeVec,
    pub uploads: IntCounterVec,
    pub upload_bytes: IntCounter,
    pub upload_received_bytes: IntCounter,
    pub upload_checksum_failures: IntCounter,
    pub upload_duration: Histogram,
    pub transcode_jobs: IntCounterVec,
    pub job_duration: HistogramVec,
    pub ffmpeg_failures: IntCounterVec,
    pub transcode_speed: prometheus::Histogram,
    pub jobs: IntGaugeVec,
    /// Login attempts by `outcome`: `ok` or the refusal's error code.
    pub auth_logins: IntCounterVec,
    /// `event`: refresh | logout.
    pub auth_session_events: IntCounterVec,
    pub nft_checks: IntCounterVec,
    pub nft_rpc_duration: HistogramVec,
    /// Pooled record-store connections by `state` (in_use | idle); Postgres only.
    pub store_pool_connections: IntGaugeVec,
    pub store_pool_max_connections: IntGauge,
    /// One repository call on Postgres, pool wait included.
    pub store_query_duration: Histogram,
    /// `change`: set | clear.
    pub gate_changes: IntCounterVec,
    /// Gated playlist or segment requests refused, by `reason` (an error code).
    pub playback_refused: IntCounterVec,
    /// Refused auth events offered to the audit log, by `action` and `result`
    /// (written | suppressed | dropped); see `audit::AuditLog::record_refusal`.
    pub audit_refusals: IntCounterVec,
    /// Audit entries removed by retention.
    pub audit_pruned: IntCounter,
    /// Job and tus records removed by retention, by `record`.
    pub retention_pruned: IntCounterVec,
    /// Filled by the caches (hit/miss per cache); exported at zero until they exist.
    pub cache_requests: IntCounterVec,
    pub cache_evictions: IntCounterVec,
    pub cache_entries: IntGaugeVec,
    pub cache_warmed: IntCounterVec,
    pub process_cpu_seconds: Counter,
    pub process_resident_memory: IntGauge,
    pub process_virtual_memory: IntGauge,
    pub process_start_time: Gauge,
    pub process_open_fds: IntGauge,
    pub host_memory: IntGauge,
    pub host_cpu_cores: IntGauge,
    pub alerts_firing: IntGaugeVec,
    pub alert_transitions: IntCounterVec,
    /// Spans sent to the OTLP collector, dropped on a full queue, lost in a failed POST.
    pub otlp_spans_exported: IntCounter,
    pub otlp_spans_dropped: IntCounter,
    pub otlp_spans_failed: IntCounter,
    /// The OTLP exporter, when `monitor.otlp_endpoint` is set (installed once at start), for
    /// spans that do not come from the HTTP middleware (jobs).
    span_exporter: Arc<OnceLock<SpanExporter>>,
    /// Request counts, errors and durations for `/api/v1/monitor/traces` and the alert rules.
    pub traces: TraceStats,
    /// Longest request (µs, uploads excluded) since the monitor last sampled it.
    window_max_micros: Arc<AtomicU64>,
}

const HTTP_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Registers each listed metric (a clone: the registry and `Metrics` share the values).
macro_rules! register {
    ($registry:ident: $($metric:ident),+ $(,)?) => {
        $($registry.register(Box::new($metric.clone()))?;)+
    };
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
    IntGaugeVec::new(Opts::new(name, help), labels)
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let http_requests = counter_vec(
            metric_names::HTTP_REQUESTS_TOTAL,
            "HTTP requests answered, by service, route pattern, method and status.",
            &["service", "route", "method", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                metric_names::HTTP_REQUEST_DURATION_SECONDS,
                "Time to answer an HTTP request, by service, route pattern and method.",
            )
            .buckets(HTTP_BUCKETS.to_vec()),
            &["service", "route", "method"],
        )?;
        let http_duration_max = Gauge::new(
            metric_names::HTTP_REQUEST_DURATION_MAX_SECONDS,
            "Longest HTTP request (uploads excluded) completed in the last monitor sample window.",
        )?;
        let http_in_flight = IntGauge::new(
            metric_names::HTTP_REQUESTS_IN_FLIGHT,
            "HTTP requests being answered right now.",
        )?;
        let http_response_bytes = counter_vec(
            metric_names::HTTP_RESPONSE_BYTES_TOTAL,
            "Bytes of response bodies of known size sent, by service.",
            &["service"],
        )?;
        let http_connections_active = IntGauge::new(
            metric_names::HTTP_CONNECTIONS_ACTIVE,
            "Open client TCP connections.",
        )?;
        let http_connections = IntCounter::new(
            metric_names::HTTP_CONNECTIONS_TOTAL,
            "Client TCP connections accepted.",
        )?;
        let http_sendfile_bytes = IntCounter::new(
            metric_names::HTTP_SENDFILE_BYTES_TOTAL,
            "Response body bytes the kernel sent straight from a file (sendfile), never copied through a buffer.",
        )?;
        let http_timeouts = counter_vec(
            metric_names::HTTP_TIMEOUTS_TOTAL,
            "Requests ended because the client went silent: wait=body (its body stopped coming), \
             wait=send (it stopped taking the response).",
            &["wait"],
        )?;
        let rate_limited = counter_vec(
            metric_names::RATE_LIMITED_TOTAL,
            "Requests refused with 429 by the per-client rate limits, by service.",
            &["service"],
        )?;
        let rate_limit_tracked_clients = IntGauge::new(
            metric_names::RATE_LIMIT_TRACKED_CLIENTS,
            "Client buckets the rate limiters hold, over every service.",
        )?;
        let rate_limit_evictions = counter_vec(
            metric_names::RATE_LIMIT_EVICTIONS_TOTAL,
            "Client buckets dropped (least recently seen first) because a service's table was at rate_limit.max_tracked_clients, by service.",
            &["service"],
        )?;
        let actor_up = gauge_vec(
            metric_names::ACTOR_UP,
            "1 when the actor answered its last liveness ping, else 0.",
            &["actor"],
        )?;
        let actor_restarts = counter_vec(
            metric_names::ACTOR_RESTARTS_TOTAL,
            "Times the supervisor restarted an actor after a panic or stop.",
            &["actor"],
        )?;
        let actor_ping = GaugeVec::new(
            Opts::new(
                metric_names::ACTOR_PING_SECONDS,
                "Round trip of the last liveness ping; it queues behind the mailbox, so it grows with backlog.",
            ),
            &["actor"],
        )?;
        let actor_heartbeat = GaugeVec::new(
            Opts::new(
                metric_names::ACTOR_LAST_HEARTBEAT_SECONDS,
                "Unix time the actor last answered a liveness ping.",
            ),
            &["actor"],
        )?;
        let uploads = counter_vec(
            metric_names::UPLOADS_TOTAL,
            "Uploads by outcome.",
            &["outcome"],
        )?;
        let upload_bytes = IntCounter::new(
            metric_names::UPLOAD_BYTES_TOTAL,
            "Bytes of uploaded files stored.",
        )?;
        let upload_received_bytes = IntCounter::new(
            metric_names::UPLOAD_RECEIVED_BYTES_TOTAL,
            "Bytes received in resumable-upload PATCHes and made durable.",
        )?;
        let upload_checksum_failures = IntCounter::new(
            metric_names::UPLOAD_CHECKSUM_FAILURES_TOTAL,
            "Resumable-upload chunks discarded because they did not match Upload-Checksum.",
        )?;
        let upload_duration = Histogram::with_opts(
            HistogramOpts::new(
                metric_names::UPLOAD_DURATION_SECONDS,
                "Time from creating a resumable upload to finishing it.",
            )
            .buckets(vec![
                1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
            ]),
        )?;
        let transcode_jobs = counter_vec(
            metric_names::TRANSCODE_JOBS_TOTAL,
            "Transcode jobs ended, by outcome.",
            &["outcome"],
        )?;
        let job_duration = HistogramVec::new(
            HistogramOpts::new(
                metric_names::JOB_DURATION_SECONDS,
                "Wall time of one job run, by kind and outcome (succeeded, failed, retrying, cancelled, interrupted).",
            )
            .buckets(vec![
                0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
            ]),
            &["kind", "outcome"],
        )?;
        let ffmpeg_failures = IntCounterVec::new(
            Opts::new(
                metric_names::FFMPEG_FAILURES_TOTAL,
                "ffmpeg or ffprobe runs that failed, by reason (undecodable input or a failed run).",
            ),
            &["reason"],
        )?;
        let transcode_speed = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                metric_names::TRANSCODE_SPEED_RATIO,
                "Encode speed of finished transcodes: media seconds per wall second (× realtime).",
            )
            .buckets(vec![
                0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0,
            ]),
        )?;
        let jobs = gauge_vec(
            metric_names::JOBS,
            "Jobs by state, as the queue sees them.",
            &["state"],
        )?;
        let auth_logins = IntCounterVec::new(
            Opts::new(
                metric_names::AUTH_LOGINS_TOTAL,
                "SIWE login attempts, by outcome (ok or the refusal's code).",
            ),
            &["outcome"],
        )?;
        let auth_session_events = IntCounterVec::new(
            Opts::new(
                metric_names::AUTH_SESSION_EVENTS_TOTAL,
                "Session refreshes and logouts.",
            ),
            &["event"],
        )?;
        let nft_checks = IntCounterVec::new(
            Opts::new(
                metric_names::NFT_CHECKS_TOTAL,
                "Token ownership checks, by source (cache|rpc) and outcome (ok|error).",
            ),
            &["source", "outcome"],
        )?;
        let nft_rpc_duration = HistogramVec::new(
            HistogramOpts::new(
                metric_names::NFT_RPC_DURATION_SECONDS,
                "Latency of one eth_call for an ownership check, by method.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["method"],
        )?;
        let store_pool_connections = IntGaugeVec::new(
            Opts::new(
                metric_names::STORE_POOL_CONNECTIONS,
                "Postgres connections in the pool, by state (in_use|idle).",
            ),
            &["state"],
        )?;
        let store_pool_max_connections = IntGauge::new(
            metric_names::STORE_POOL_MAX_CONNECTIONS,
            "Most Postgres connections the pool opens (postgres.pool_size).",
        )?;
        let store_query_duration = Histogram::with_opts(
            HistogramOpts::new(
                metric_names::STORE_QUERY_DURATION_SECONDS,
                "Latency of one record-store call on Postgres (pool wait included).",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )?;
        let gate_changes = IntCounterVec::new(
            Opts::new(
                metric_names::GATE_CHANGES_TOTAL,
                "Media gates set or cleared.",
            ),
            &["change"],
        )?;
        let playback_refused = IntCounterVec::new(
            Opts::new(
                metric_names::PLAYBACK_REFUSED_TOTAL,
                "Requests for gated playlists or segments refused, by reason.",
            ),
            &["reason"],
        )?;
        let audit_refusals = counter_vec(
            metric_names::AUDIT_REFUSALS_TOTAL,
            "Refused auth events offered to the audit log, by action and result (written, suppressed within the interval, dropped on a full queue).",
            &["action", "result"],
        )?;
        let audit_pruned = IntCounter::new(
            metric_names::AUDIT_PRUNED_TOTAL,
            "Audit entries removed by retention (age or count).",
        )?;
        let retention_pruned = counter_vec(
            metric_names::RETENTION_PRUNED_TOTAL,
            "Finished records removed by retention, by record (job, tus_upload).",
            &["record"],
        )?;
        let cache_requests = counter_vec(
            metric_names::CACHE_REQUESTS_TOTAL,
            "Cache lookups by cache and result (hit or miss).",
            &["cache", "result"],
        )?;
        let cache_evictions = counter_vec(
            metric_names::CACHE_EVICTIONS_TOTAL,
            "Entries evicted (LRU or TTL) by cache.",
            &["cache"],
        )?;
        let cache_entries = gauge_vec(
            metric_names::CACHE_ENTRIES,
            "Entries held by cache.",
            &["cache"],
        )?;
        let cache_warmed = counter_vec(
            metric_names::CACHE_WARMED_TOTAL,
            "Entries put into a cache ahead of the first request (at start or by admin).",
            &["cache"],
        )?;
        let process_cpu_seconds = Counter::new(
            metric_names::PROCESS_CPU_SECONDS_TOTAL,
            "User and system CPU time the process used.",
        )?;
        let process_resident_memory = IntGauge::new(
            metric_names::PROCESS_RESIDENT_MEMORY_BYTES,
            "Resident memory of the process.",
        )?;
        let process_virtual_memory = IntGauge::new(
            metric_names::PROCESS_VIRTUAL_MEMORY_BYTES,
            "Virtual memory size of the process.",
        )?;
        let process_start_time = Gauge::new(
            metric_names::PROCESS_START_TIME_SECONDS,
            "Unix time the process started.",
        )?;
        let process_open_fds = IntGauge::new(
            metric_names::PROCESS_OPEN_FDS,
            "File descriptors the process holds.",
        )?;
        let host_memory = IntGauge::new(
            metric_names::HOST_MEMORY_BYTES,
            "Memory of the host (MemTotal).",
        )?;
        let host_cpu_cores = IntGauge::new(
            metric_names::HOST_CPU_CORES,
            "CPU cores available to the process.",
        )?;
        let alerts_firing = gauge_vec(
            metric_names::ALERTS_FIRING,
            "1 while the built-in alert rule is firing, else 0.",
            &["alertname", "severity"],
        )?;
        let alert_transitions = counter_vec(
            metric_names::ALERT_TRANSITIONS_TOTAL,
            "Alert state changes by rule and new state (pending, firing, resolved).",
            &["alertname", "state"],
        )?;
        let otlp_spans_exported = IntCounter::new(
            metric_names::OTLP_SPANS_EXPORTED_TOTAL,
            "Spans the OTLP collector accepted.",
        )?;
        let otlp_spans_dropped = IntCounter::new(
            metric_names::OTLP_SPANS_DROPPED_TOTAL,
            "Spans dropped because the OTLP export queue was full.",
        )?;
        let otlp_spans_failed = IntCounter::new(
            metric_names::OTLP_SPANS_FAILED_TOTAL,
            "Spans lost because their OTLP export POST failed.",
        )?;

        // Braces: rustfmt leaves the list as written.
        register! {registry:
            otlp_spans_exported, otlp_spans_dropped, otlp_spans_failed, http_requests,
            http_duration, http_response_bytes, http_duration_max, http_in_flight,
            http_connections_active, http_connections, http_sendfile_bytes, http_timeouts,
            rate_limited, rate_limit_tracked_clients, rate_limit_evictions, actor_up, actor_restarts, actor_ping, actor_heartbeat, uploads,
            upload_bytes, upload_received_bytes, upload_checksum_failures, upload_duration,
            transcode_jobs, job_duration, ffmpeg_failures, transcode_speed, jobs, auth_logins,
            auth_session_events, nft_checks, nft_rpc_duration, store_pool_connections,
            store_pool_max_connections, store_query_duration, gate_changes, playback_refused,
            audit_refusals, audit_pruned, retention_pruned, cache_requests, cache_evictions,
            cache_entries, cache_warmed, process_cpu_seconds, process_resident_memory,
            process_virtual_memory,
            process_start_time, process_open_fds, host_memory, host_cpu_cores, alerts_firing,
            alert_transitions,
        }

        // Export every labelled series from the start, so dashboards and rate() have data
        // before the first event of each kind.
        for outcome in [
            metric_names::upload_outcome::FINISHED,
            metric_names::upload_outcome::REJECTED,
        ] {
            uploads.with_label_values(&[outcome]).inc_by(0);
        }
        for outcome in metric_names::TRANSCODE_OUTCOMES {
            transcode_jobs.with_label_values(&[outcome]).inc_by(0);
        }
        for state in metric_names::JOB_STATES {
            jobs.with_label_values(&[state]).add(0);
        }
        for record in metric_names::RETENTION_RECORDS {
            retention_pruned.with_label_values(&[record]).inc_by(0);
        }
        for cache in metric_names::CACHES {
            for result in ["hit", "miss"] {
                cache_requests.with_label_values(&[cache, result]).inc_by(0);
            }
            cache_evictions.with_label_values(&[cache]).inc_by(0);
            cache_entries.with_label_values(&[cache]).set(0);
            cache_warmed.with_label_values(&[cache]).inc_by(0);
        }
        for state in ["in_use", "idle"] {
            store_pool_connections.with_label_values(&[state]).set(0);
        }
        for service in metric_names::SERVICES {
            rate_limited.with_label_values(&[service]).inc_by(0);
            rate_limit_evictions.with_label_values(&[service]).inc_by(0);
            http_response_bytes.with_label_values(&[service]).inc_by(0);
        }

        Ok(Self {
            registry,
            http_requests,
            http_duration,
            http_duration_max,
            http_in_flight,
            http_response_bytes,
            http_connections_active,
            http_connections,
            http_sendfile_bytes,
            http_timeouts,
            rate_limited,
            rate_limit_tracked_clients,
            rate_limit_evictions,
            actor_up,
            actor_restarts,
            actor_ping,
            actor_heartbeat,
            uploads,
            upload_bytes,
            upload_received_bytes,
            upload_checksum_failures,
            upload_duration,
            transcode_jobs,
            job_duration,
            ffmpeg_failures,
            transcode_speed,
            jobs,
            auth_logins,
            auth_session_events,
            nft_checks,
            nft_rpc_duration,
            store_pool_connections,
            store_pool_max_connections,
            store_query_duration,
            gate_changes,
            playback_refused,
            audit_refusals,
            audit_pruned,
            retention_pruned,
            cache_requests,
            cache_evictions,
            cache_entries,
            cache_warmed,
            process_cpu_seconds,
            process_resident_memory,
            process_virtual_memory,
            process_start_time,
            process_open_fds,
            host_memory,
            host_cpu_cores,
            alerts_firing,
            alert_transitions,
            otlp_spans_exported,
            otlp_spans_dropped,
            otlp_spans_failed,
            span_exporter: Arc::default(),
            traces: TraceStats::new(256),
            window_max_micros: Arc::new(AtomicU64::new(0)),
        })
    }

    /// A request started: one more in flight.
    pub fn request_started(&self) {
        self.http_in_flight.inc();
    }

    /// A request dropped unanswered (the client went away).
    pub fn request_dropped(&self) {
        self.http_in_flight.dec();
    }

    /// Counts an answered request everywhere it belongs: the Prometheus families, the trace
    /// stats and the latency window the alert rules read.
    pub fn request_answered(&self, request: &RequestRecord<'_>) {
        self.http_in_flight.dec();
        let status = request.status.to_string();
        self.http_requests
            .with_label_values(&[request.service, request.route, request.method, &status])
            .inc();
        self.http_duration
            .with_label_values(&[request.service, request.route, request.method])
            .observe(request.duration.as_secs_f64());
        if let Some(bytes) = request.response_bytes {
            self.http_response_bytes
                .with_label_values(&[request.service])
                .inc_by(bytes);
        }
        // An upload lasts as long as the client takes to send it: not a latency signal.
        if request.service != "upload" {
            let micros = u64::try_from(request.duration.as_micros()).unwrap_or(u64::MAX);
            self.window_max_micros.fetch_max(micros, Ordering::Relaxed);
        }
        self.traces.record(request);
    }

    /// Makes [`Self::export_span`] send to `exporter` (a second call is ignored).
    pub fn install_span_exporter(&self, exporter: SpanExporter) {
        let _ = self.span_exporter.set(exporter);
    }

    /// Queues a span for OTLP export; does nothing when export is off.
    pub fn export_span(&self, span: impl FnOnce() -> FinishedSpan) {
        if let Some(exporter) = self.span_exporter.get() {
            exporter.export(span());
        }
    }

    /// Takes the longest request since the last call, in seconds, and resets the window.
    pub fn take_window_max_seconds(&self) -> f64 {
        self.window_max_micros.swap(0, Ordering::Relaxed) as f64 / 1e6
    }

    /// The Prometheus text exposition format, version 0.0.4.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        TextEncoder::new().encode_to_string(&self.registry.gather())
    }
}
