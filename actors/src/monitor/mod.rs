//! MonitorActor: owns the metrics registry; on a timer it samples process CPU and memory and
//! actor liveness, and evaluates the alert rules (`alerts.rs`); it runs the health checks behind
//! `/health` and `/ready`, renders `/metrics`, and answers the `/api/v1/monitor/*` queries.

pub mod alerts;
mod ffmpeg_check;
pub mod logs;
pub mod metric_names;
pub mod metrics;
pub mod otlp;
pub mod process;
pub mod trace_stats;
pub mod traces;

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    time::{Duration, Instant},
};

use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, MessageResult, Recipient,
    ResponseActFuture, Supervised, WrapFuture,
};
pub use metrics::Metrics;
use time::OffsetDateTime;

use self::{
    alerts::{AlertEngine, AlertEvent, AlertLevel, AlertState, RuleStatus, Signal, Signals},
    logs::{LogRecord, LogRing},
    traces::TraceReport,
};

use crate::{
    blobs::{BlobError, BlobStore},
    config::MonitorConfig,
    error::{DomainError, ErrorKind},
    store::{blocking, SharedRepo},
    supervise::{supervised_basics, Ping},
};

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("could not render metrics: {0}")]
    Render(String),
}

impl DomainError for MonitorError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Render(_) => ErrorKind::Internal,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            Self::Render(_) => "metrics_unavailable",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Messages

/// Renders every metric in the Prometheus text format.
#[derive(Debug, Message)]
#[rtype(result = "Result<String, MonitorError>")]
pub struct RenderMetrics;

/// The JSON summary of `/api/v1/monitor/metrics`.
#[derive(Debug, Message)]
#[rtype(result = "MonitorSummary")]
pub struct GetMonitorSummary;

/// Rules, firing alerts and the recent transitions.
#[derive(Debug, Message)]
#[rtype(result = "AlertsReport")]
pub struct ListAlerts {
    pub limit: usize,
}

/// Recent log events at `min_level` or more severe, newest first.
#[derive(Debug, Message)]
#[rtype(result = "Vec<LogRecord>")]
pub struct ListLogs {
    pub min_level: tracing::Level,
    pub limit: usize,
}

/// Request counts, errors and durations.
#[derive(Debug, Message)]
#[rtype(result = "TraceReport")]
pub struct GetTraceStats {
    pub recent: usize,
}

/// The health checks as last sampled (on the sample timer): answering it writes nothing.
#[derive(Debug, Message)]
#[rtype(result = "HealthReport")]
pub struct CheckHealth;

/// Pings every actor now.
#[derive(Debug, Message)]
#[rtype(result = "Vec<ActorStatus>")]
pub struct CheckActors;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CheckStatus {
    Ok,
    Degraded,
    Down,
}

impl CheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Degraded => "degraded",
            Self::Down => "down",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CheckResult {
    pub name: &'static str,
    pub status: CheckStatus,
    pub detail: String,
}

#[derive(Debug, Clone)]
pub struct HealthReport {
    pub checks: Vec<CheckResult>,
    pub actors: Vec<ActorStatus>,
    /// When the store, blob and disk checks were sampled; `None` when they ran for this
    /// request (no sample had answered yet).
    pub sampled_at: Option<OffsetDateTime>,
}

impl HealthReport {
    /// The worst status of any check.
    pub fn status(&self) -> CheckStatus {
        self.checks
            .iter()
            .map(|check| check.status)
            .max()
            .unwrap_or(CheckStatus::Ok)
    }
}

#[derive(Debug, Clone)]
pub struct ActorStatus {
    pub name: &'static str,
    pub alive: bool,
    pub restarts: u64,
    /// Round trip of the ping. It waits behind every queued message, so it is the honest
    /// measure of mailbox backlog: actix does not expose a mailbox's length.
    pub ping_ms: Option<f64>,
    pub last_heartbeat: Option<OffsetDateTime>,
}

#[derive(Debug, Clone)]
pub struct AlertsReport {
    pub firing: Vec<RuleStatus>,
    pub rules: Vec<RuleStatus>,
    pub recent: Vec<AlertEvent>,
}

#[derive(Debug, Clone, Default)]
pub struct MonitorSummary {
    pub uptime_s: f64,
    pub requests_total: u64,
    pub requests_5xx: u64,
    pub requests_4xx: u64,
    pub requests_in_flight: i64,
    pub connections_active: i64,
    pub window_s: f64,
    pub window_error_rate: f64,
    pub window_client_error_rate: f64,
    pub latency_avg_ms: f64,
    pub latency_max_ms: f64,
    pub window_latency_max_s: f64,
    pub cpu_usage_ratio: Option<f64>,
    pub cpu_seconds: f64,
    pub resident_memory_bytes: u64,
    pub memory_usage_ratio: Option<f64>,
    pub open_fds: Option<u64>,
    pub uploads_finished: u64,
    pub uploads_rejected: u64,
    pub upload_bytes: u64,
    pub transcodes_succeeded: u64,
    pub transcodes_failed: u64,
    pub jobs_queued: i64,
    pub jobs_running: i64,
    pub rate_limited_total: u64,
    pub alerts_firing: usize,
    pub actors: Vec<ActorStatus>,
    /// Every rate-limit service with its answers since start (zero counts until it has some).
    pub services: Vec<(&'static str, traces::ServiceCounts)>,
}

/// Cumulative counts at one sample, for rates over the alert window.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    at: Instant,
    requests: u64,
    errors: u64,
    client_errors: u64,
    rate_limited: u64,
}

/// The figures the last sample measured.
#[derive(Debug, Clone, Copy, Default)]
struct LastSample {
    cpu_usage_ratio: Option<f64>,
    cpu_seconds: f64,
    resident_bytes: u64,
    memory_usage_ratio: Option<f64>,
    open_fds: Option<u64>,
    window_error_rate: f64,
    window_client_error_rate: f64,
    window_latency_max_s: f64,
}

// ---------------------------------------------------------------------------------------------
// Actor

/// What the monitor needs to run its checks; built once by `crate::start`.
#[derive(Clone)]
pub struct MonitorDeps {
    pub metrics: Metrics,
    pub repo: SharedRepo,
    pub blobs: BlobStore,
    pub data_dir: PathBuf,
    pub min_free_disk_bytes: u64,
    pub ffmpeg_path: String,
    pub actors: Vec<(&'static str, Recipient<Ping>)>,
    /// Posts alert webhooks (built by `outbound`, with `webhook_timeout_ms`).
    pub webhook: reqwest::Client,
    pub config: MonitorConfig,
}

pub struct MonitorActor {
    deps: MonitorDeps,
    /// Result of the last `ffmpeg -version` run; run again when [`ffmpeg_check::Checked`]
    /// says it is due.
    ffmpeg: Result<String, String>,
    ffmpeg_checked: ffmpeg_check::Checked,
    /// The store, blob and disk checks of the last sample: `/health` reports these, so a flood
    /// of anonymous requests never writes to the blob store.
    storage_checks: Option<(OffsetDateTime, Vec<CheckResult>)>,
    /// A sample's storage checks are still running: the next tick starts none, so a slow disk
    /// neither piles up probes nor lets an old answer overwrite a newer one.
    storage_checking: bool,
    engine: AlertEngine,
    /// Last ping answers, for the actors-down signal and heartbeats.
    actors: Vec<ActorStatus>,
    heartbeats: HashMap<&'static str, OffsetDateTime>,
    snapshots: VecDeque<Snapshot>,
    previous_cpu: Option<(Instant, f64)>,
    last: LastSample,
    host_memory: Option<u64>,
    cores: u64,
    started: Instant,
    logs: LogRing,
    webhook: reqwest::Client,
}

impl MonitorActor {
    pub fn new(deps: MonitorDeps) -> Self {
        let engine = AlertEngine::new(deps.config.alert_rules.clone(), deps.config.alert_history);
        let logs = LogRing::global(deps.config.log_ring_capacity);
        let webhook = deps.webhook.clone();
        let host_memory = process::host_memory_bytes();
        let cores = process::cpu_cores();
        deps.metrics
            .host_memory
            .set(host_memory.map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX)));
        deps.metrics
            .host_cpu_cores
            .set(i64::try_from(cores).unwrap_or(1));
        for rule in &deps.config.alert_rules {
            deps.metrics
                .alerts_firing
                .with_label_values(&[rule.name.as_str(), rule.level.as_str()])
                .set(0);
        }
        Self {
            deps,
            ffmpeg: Err("not checked yet".to_string()),
            ffmpeg_checked: ffmpeg_check::Checked::default(),
            storage_checks: None,
            storage_checking: false,
            engine,
            actors: Vec::new(),
            heartbeats: HashMap::new(),
            snapshots: VecDeque::new(),
            previous_cpu: None,
            last: LastSample::default(),
            host_memory,
            cores,
            started: Instant::now(),
            logs,
            webhook,
        }
    }

    fn schedule(&mut self, ctx: &mut Context<Self>) {
        let interval = Duration::from_millis(self.deps.config.sample_interval_ms);
        ctx.run_interval(interval, |actor, ctx| actor.sample(ctx));
        self.sample(ctx);
    }

    /// Measures everything, evaluates the alert rules on it, and starts the liveness pings
    /// and the ffmpeg check (their answers feed the next evaluation).
    fn sample(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let mut signals = Signals::default();
        self.sample_process(now, &mut signals);
        self.sample_requests(now, &mut signals);
        if !self.actors.is_empty() {
            let down = self.actors.iter().filter(|a| !a.alive).count();
            signals.set(Signal::ActorsDown, down as f64);
        }
        for event in self
            .engine
            .evaluate(&signals, now, OffsetDateTime::now_utc())
        {
            self.dispatch(event);
        }

        let deps = self.deps.clone();
        let ffmpeg_path = self.deps.ffmpeg_path.clone();
        if !self.storage_checking {
            self.storage_checking = true;
            let deps = self.deps.clone();
            ctx.spawn(
                async move { storage_checks(&deps).await }
                    .into_actor(self)
                    .map(|checks, actor, _| {
                        actor.storage_checking = false;
                        actor.storage_checks = Some((OffsetDateTime::now_utc(), checks));
                    }),
            );
        }
        let check_ffmpeg_now = self
            .ffmpeg_checked
            .due(now, ffmpeg_check::identity(&ffmpeg_path));
        ctx.spawn(
            async move {
                let statuses = ping_all(&deps).await;
                let ffmpeg = match check_ffmpeg_now {
                    true => Some(ffmpeg_check::run(&ffmpeg_path).await),
                    false => None,
                };
                (statuses, ffmpeg)
            }
            .into_actor(self)
            .map(|(statuses, ffmpeg), actor, _| {
                if let Some(ffmpeg) = ffmpeg {
                    actor.ffmpeg = ffmpeg;
                }
                actor.actors = actor.note_pings(statuses);
            }),
        );
    }

    fn sample_process(&mut self, now: Instant, signals: &mut Signals) {
        process::release_free_memory();
        let metrics = &self.deps.metrics;
        let sample = match process::sample() {
            Ok(sample) => sample,
            Err(error) => {
                tracing::debug!(%error, "cannot sample process figures");
                return;
            }
        };
        let counted = metrics.process_cpu_seconds.get();
        if sample.cpu_seconds > counted {
            metrics
                .process_cpu_seconds
                .inc_by(sample.cpu_seconds - counted);
        }
        let to_i64 = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        metrics
            .process_resident_memory
            .set(to_i64(sample.resident_bytes));
        metrics
            .process_virtual_memory
            .set(to_i64(sample.virtual_bytes));
        if let Some(start) = sample.start_time_seconds {
            metrics.process_start_time.set(start);
        }
        if let Some(fds) = sample.open_fds {
            metrics.process_open_fds.set(to_i64(fds));
        }
        if let Some(pool) = self.deps.repo.pool_state() {
            let (used, idle) = (pool.connections.saturating_sub(pool.idle), pool.idle);
            let pooled = &metrics.store_pool_connections;
            pooled.with_label_values(&["in_use"]).set(i64::from(used));
            pooled.with_label_values(&["idle"]).set(i64::from(idle));
            metrics.store_pool_max_connections.set(i64::from(pool.max));
        }
        let cpu_ratio = self.previous_cpu.and_then(|(at, cpu)| {
            let wall = now.duration_since(at).as_secs_f64();
            (wall > 0.0).then(|| (sample.cpu_seconds - cpu).max(0.0) / wall / self.cores as f64)
        });
        self.previous_cpu = Some((now, sample.cpu_seconds));
        let memory_ratio = self
            .host_memory
            .filter(|total| *total > 0)
            .map(|total| sample.resident_bytes as f64 / total as f64);
        if let Some(ratio) = cpu_ratio {
            signals.set(Signal::CpuUsageRatio, ratio);
        }
        if let Some(ratio) = memory_ratio {
            signals.set(Signal::MemoryUsageRatio, ratio);
        }
        self.last.cpu_usage_ratio = cpu_ratio;
        self.last.cpu_seconds = sample.cpu_seconds;
        self.last.resident_bytes = sample.resident_bytes;
        self.last.memory_usage_ratio = memory_ratio;
        self.last.open_fds = sample.open_fds;
    }

    fn sample_requests(&mut self, now: Instant, signals: &mut Signals) {
        let metrics = &self.deps.metrics;
        let latency_max = metrics.take_window_max_seconds();
        metrics.http_duration_max.set(latency_max);
        signals.set(Signal::HttpLatencyMaxSeconds, latency_max);
        self.last.window_latency_max_s = latency_max;

        let (requests, errors) = metrics.traces.totals();
        let rate_limited = metric_names::SERVICES
            .iter()
            .map(|service| metrics.rate_limited.with_label_values(&[service]).get())
            .sum();
        let current = Snapshot {
            at: now,
            requests,
            errors,
            client_errors: metrics.traces.client_errors(),
            rate_limited,
        };
        let window = Duration::from_secs_f64(self.deps.config.alert_window_s);
        // Keep the newest snapshot at or before the window's start as the baseline.
        while self.snapshots.len() >= 2
            && self
                .snapshots
                .get(1)
                .is_some_and(|next| now.duration_since(next.at) >= window)
        {
            self.snapshots.pop_front();
        }
        let baseline = self.snapshots.front().copied().unwrap_or(current);
        self.snapshots.push_back(current);
        let served = current.requests.saturating_sub(baseline.requests);
        let share = |count: u64| {
            if served == 0 {
                0.0
            } else {
                count as f64 / served as f64
            }
        };
        let error_rate = share(current.errors.saturating_sub(baseline.errors));
        let client_error_rate = share(current.client_errors.saturating_sub(baseline.client_errors));
        let span = now.duration_since(baseline.at).as_secs_f64();
        let limited_per_second = if span > 0.0 {
            current.rate_limited.saturating_sub(baseline.rate_limited) as f64 / span
        } else {
            0.0
        };
        signals.set(Signal::HttpErrorRate, error_rate);
        signals.set(Signal::HttpClientErrorRate, client_error_rate);
        signals.set(Signal::RateLimitedPerSecond, limited_per_second);
        self.last.window_error_rate = error_rate;
        self.last.window_client_error_rate = client_error_rate;
    }

    /// The handlers: a log line at the alert's level, the firing gauge, and the webhooks.
    fn dispatch(&self, event: AlertEvent) {
        let metrics = &self.deps.metrics;
        metrics
            .alert_transitions
            .with_label_values(&[event.rule.as_str(), event.state.as_str()])
            .inc();
        metrics
            .alerts_firing
            .with_label_values(&[event.rule.as_str(), event.level.as_str()])
            .set(i64::from(event.state == AlertState::Firing));
        let (rule, state, value, threshold) = (
            event.rule.as_str(),
            event.state.as_str(),
            event.value,
            event.threshold,
        );
        match (event.state, event.level) {
            (AlertState::Firing, AlertLevel::Critical) => {
                tracing::error!(alert = rule, state, value, threshold, summary = %event.summary, "alert")
            }
            (AlertState::Firing, AlertLevel::Warning) => {
                tracing::warn!(alert = rule, state, value, threshold, summary = %event.summary, "alert")
            }
            _ => {
                tracing::info!(alert = rule, state, value, threshold, summary = %event.summary, "alert")
            }
        }
        if event.state == AlertState::Pending || self.deps.config.alert_webhooks.is_empty() {
            return;
        }
        let payload = alerts::alertmanager_payload(&event, &self.deps.config.external_url);
        let urls = self.deps.config.alert_webhooks.clone();
        let client = self.webhook.clone();
        actix::spawn(async move {
            for url in urls {
                match client.post(&url).json(&payload).send().await {
                    Ok(response) if response.status().is_success() => {}
                    Ok(response) => {
                        tracing::warn!(%url, status = %response.status(), "alert webhook refused")
                    }
                    Err(error) => tracing::warn!(%url, %error, "alert webhook failed"),
                }
            }
        });
    }

    /// Records heartbeats and liveness gauges from fresh ping answers.
    fn note_pings(&mut self, mut statuses: Vec<ActorStatus>) -> Vec<ActorStatus> {
        let now = OffsetDateTime::now_utc();
        let metrics = &self.deps.metrics;
        for status in &mut statuses {
            metrics
                .actor_up
                .with_label_values(&[status.name])
                .set(i64::from(status.alive));
            if status.alive {
                self.heartbeats.insert(status.name, now);
                metrics
                    .actor_heartbeat
                    .with_label_values(&[status.name])
                    .set(now.unix_timestamp_nanos() as f64 / 1e9);
            }
            if let Some(ms) = status.ping_ms {
                metrics
                    .actor_ping
                    .with_label_values(&[status.name])
                    .set(ms / 1000.0);
            }
            status.last_heartbeat = self.heartbeats.get(status.name).copied();
        }
        statuses
    }

    fn summary(&self) -> MonitorSummary {
        let metrics = &self.deps.metrics;
        let traces = metrics.traces.report(0);
        let upload = |outcome: &str| metrics.uploads.with_label_values(&[outcome]).get();
        let transcodes = |outcome: &str| metrics.transcode_jobs.with_label_values(&[outcome]).get();
        let jobs = |state: &str| metrics.jobs.with_label_values(&[state]).get();
        let rules = self.engine.rules();
        MonitorSummary {
            uptime_s: self.started.elapsed().as_secs_f64(),
            requests_total: traces.count,
            requests_5xx: traces.errors,
            requests_4xx: metrics.traces.client_errors(),
            requests_in_flight: metrics.http_in_flight.get(),
            connections_active: metrics.http_connections_active.get(),
            window_s: self.deps.config.alert_window_s,
            window_error_rate: self.last.window_error_rate,
            window_client_error_rate: self.last.window_client_error_rate,
            latency_avg_ms: traces.duration_ms.avg,
            latency_max_ms: traces.duration_ms.max,
            window_latency_max_s: self.last.window_latency_max_s,
            cpu_usage_ratio: self.last.cpu_usage_ratio,
            cpu_seconds: self.last.cpu_seconds,
            resident_memory_bytes: self.last.resident_bytes,
            memory_usage_ratio: self.last.memory_usage_ratio,
            open_fds: self.last.open_fds,
            uploads_finished: upload(metric_names::upload_outcome::FINISHED),
            uploads_rejected: upload(metric_names::upload_outcome::REJECTED),
            upload_bytes: metrics.upload_bytes.get(),
            transcodes_succeeded: transcodes("succeeded"),
            transcodes_failed: transcodes("failed"),
            jobs_queued: jobs("queued"),
            jobs_running: jobs("running"),
            rate_limited_total: metric_names::SERVICES
                .iter()
                .map(|service| metrics.rate_limited.with_label_values(&[service]).get())
                .sum(),
            alerts_firing: rules
                .iter()
                .filter(|r| r.state == AlertState::Firing)
                .count(),
            actors: self.actors.clone(),
            services: {
                let seen = metrics.traces.services();
                metric_names::SERVICES
                    .iter()
                    .map(|service| {
                        let counts = seen.iter().find(|(s, _)| s == service);
                        (*service, counts.map(|(_, c)| *c).unwrap_or_default())
                    })
                    .collect()
            },
        }
    }
}

impl Actor for MonitorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.schedule(ctx);
    }
}

impl Supervised for MonitorActor {
    fn restarting(&mut self, _: &mut Self::Context) {
        // Alert state and history survive a restart: a panic must not silently resolve alerts.
        self.ffmpeg = Err("not checked yet".to_string());
        self.ffmpeg_checked = ffmpeg_check::Checked::default();
        // A restart drops the running check with the old context.
        self.storage_checking = false;
        self.snapshots.clear();
        self.previous_cpu = None;
    }
}

supervised_basics!(MonitorActor);

impl Handler<GetMonitorSummary> for MonitorActor {
    type Result = MessageResult<GetMonitorSummary>;

    fn handle(&mut self, _: GetMonitorSummary, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.summary())
    }
}

impl Handler<ListAlerts> for MonitorActor {
    type Result = MessageResult<ListAlerts>;

    fn handle(&mut self, msg: ListAlerts, _: &mut Self::Context) -> Self::Result {
        let rules = self.engine.rules();
        MessageResult(AlertsReport {
            firing: rules
                .iter()
                .filter(|r| r.state == AlertState::Firing)
                .cloned()
                .collect(),
            rules,
            recent: self.engine.history(msg.limit.clamp(1, 1000)),
        })
    }
}

impl Handler<ListLogs> for MonitorActor {
    type Result = MessageResult<ListLogs>;

    fn handle(&mut self, msg: ListLogs, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.logs.recent(msg.min_level, msg.limit.clamp(1, 1000)))
    }
}

impl Handler<GetTraceStats> for MonitorActor {
    type Result = MessageResult<GetTraceStats>;

    fn handle(&mut self, msg: GetTraceStats, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.deps.metrics.traces.report(msg.recent.min(256)))
    }
}

impl Handler<RenderMetrics> for MonitorActor {
    type Result = Result<String, MonitorError>;

    fn handle(&mut self, _: RenderMetrics, _: &mut Self::Context) -> Self::Result {
        self.deps
            .metrics
            .render()
            .map_err(|e| MonitorError::Render(e.to_string()))
    }
}

impl Handler<CheckActors> for MonitorActor {
    type Result = ResponseActFuture<Self, Vec<ActorStatus>>;

    fn handle(&mut self, _: CheckActors, _: &mut Self::Context) -> Self::Result {
        let deps = self.deps.clone();
        Box::pin(
            async move { ping_all(&deps).await }
                .into_actor(self)
                .map(|statuses, actor, _| actor.note_pings(statuses)),
        )
    }
}

impl Handler<CheckHealth> for MonitorActor {
    type Result = ResponseActFuture<Self, HealthReport>;

    fn handle(&mut self, _: CheckHealth, _: &mut Self::Context) -> Self::Result {
        let ffmpeg = match &self.ffmpeg {
            Ok(version) => ok("ffmpeg", version.clone()),
            Err(reason) => CheckResult {
                name: "ffmpeg",
                // Without ffmpeg uploads still land; they just wait for a transcoder.
                status: CheckStatus::Degraded,
                detail: reason.clone(),
            },
        };
        let sampled = self.storage_checks.clone();
        let sampled_actors = (!self.actors.is_empty()).then(|| self.actors.clone());
        let deps = self.deps.clone();
        Box::pin(
            async move {
                // Only before the first sample has answered is anything checked on demand.
                let (sampled_at, storage) = match sampled {
                    Some((at, checks)) => (Some(at), checks),
                    None => (None, storage_checks(&deps).await),
                };
                let actors = match sampled_actors {
                    Some(actors) => actors,
                    None => ping_all(&deps).await,
                };
                let dead: Vec<&str> = actors.iter().filter(|a| !a.alive).map(|a| a.name).collect();
                let actors_check = if dead.is_empty() {
                    ok("actors", format!("{} actors answering", actors.len()))
                } else {
                    CheckResult {
                        name: "actors",
                        status: CheckStatus::Degraded,
                        detail: format!("not answering: {}", dead.join(", ")),
                    }
                };
                let mut checks = storage;
                checks.insert(2, ffmpeg);
                checks.push(actors_check);
                HealthReport {
                    checks,
                    actors,
                    sampled_at,
                }
            }
            .into_actor(self),
        )
    }
}

/// The store, blob and disk checks, in that order. The blob check writes a probe blob, which
/// is why only the sample timer runs them.
async fn storage_checks(deps: &MonitorDeps) -> Vec<CheckResult> {
    let timeout = Duration::from_millis(deps.config.ping_timeout_ms);
    let (store, blobs) = futures_util::join!(
        check_store(&deps.repo, timeout),
        check_blobs(&deps.blobs, timeout)
    );
    let disk = check_disk(&deps.data_dir, deps.min_free_disk_bytes);
    vec![store, blobs, disk]
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn ok(name: &'static str, detail: String) -> CheckResult {
    CheckResult {
        name,
        status: CheckStatus::Ok,
        detail,
    }
}

fn down(name: &'static str, detail: String) -> CheckResult {
    CheckResult {
        name,
        status: CheckStatus::Down,
        detail,
    }
}

async fn ping_all(deps: &MonitorDeps) -> Vec<ActorStatus> {
    let timeout = Duration::from_millis(deps.config.ping_timeout_ms);
    let pings = deps.actors.iter().map(|(name, recipient)| {
        let restarts = deps
            .metrics
            .actor_restarts
            .with_label_values(&[*name])
            .get();
        async move {
            let started = std::time::Instant::now();
            let answered = matches!(
                tokio::time::timeout(timeout, recipient.send(Ping)).await,
                Ok(Ok(()))
            );
            ActorStatus {
                name,
                alive: answered,
                restarts,
                ping_ms: answered.then(|| started.elapsed().as_secs_f64() * 1000.0),
                last_heartbeat: None,
            }
        }
    });
    futures_util::future::join_all(pings).await
}

// `/health` is public: a failing check's detail (file paths, backend messages) goes to the
// log, and the report says only what failed.
async fn check_store(repo: &SharedRepo, timeout: Duration) -> CheckResult {
    // The check keeps its name on either backend; the detail says which one answered (or not).
    let backend = repo.backend_name();
    match tokio::time::timeout(timeout, blocking(repo, |repo| repo.check())).await {
        Ok(Ok(())) => ok("store", format!("{backend} answers")),
        Ok(Err(error)) => {
            tracing::warn!(%error, "health: record store check failed");
            down("store", format!("{backend} unreachable"))
        }
        Err(_) => down("store", format!("{backend}: no answer within {timeout:?}")),
    }
}

async fn check_blobs(blobs: &BlobStore, timeout: Duration) -> CheckResult {
    match tokio::time::timeout(timeout, blobs.check()).await {
        Ok(Ok(())) => ok("blobs", "blob store writable".to_string()),
        Ok(Err(BlobError::Full(error))) => {
            tracing::warn!(%error, "health: blob store disk full");
            down("blobs", "blob store disk full".to_string())
        }
        Ok(Err(error)) => {
            tracing::warn!(%error, "health: blob store check failed");
            down("blobs", "blob store not writable".to_string())
        }
        Err(_) => down("blobs", format!("no answer within {timeout:?}")),
    }
}

fn check_disk(data_dir: &std::path::Path, min_free_bytes: u64) -> CheckResult {
    match rustix::fs::statvfs(data_dir) {
        Ok(stats) => {
            let free = stats.f_bavail.saturating_mul(stats.f_frsize);
            if free >= min_free_bytes {
                ok(
                    "disk",
                    format!(
                        "{} MiB free (minimum {} MiB)",
                        free >> 20,
                        min_free_bytes >> 20
                    ),
                )
            } else {
                // Uploads are refused (507 insufficient_storage) until space is freed.
                CheckResult {
                    name: "disk",
                    status: CheckStatus::Degraded,
                    detail: format!(
                        "full: {} MiB free, below the minimum of {} MiB; uploads are refused",
                        free >> 20,
                        min_free_bytes >> 20
                    ),
                }
            }
        }
        Err(error) => {
            tracing::warn!(%error, "health: cannot stat the data directory");
            down(
                "disk",
                "cannot read the data directory's free space".to_string(),
            )
        }
    }
}
