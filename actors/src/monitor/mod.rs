//! MonitorActor: owns the metrics registry, samples actor liveness on a timer, runs the health
//! checks behind `/health` and `/ready`, and renders the Prometheus text for `/metrics`.

pub mod metrics;
pub mod names;

use std::{path::PathBuf, time::Duration};

use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, Recipient, ResponseActFuture,
    ResponseFuture, Supervised, WrapFuture,
};
pub use metrics::Metrics;

use crate::{
    audit::AuditLog,
    blobs::BlobStore,
    config::MonitorConfig,
    error::{DomainError, ErrorKind},
    model::AuditEntry,
    store::{blocking, SharedRepo},
    store::{AuditFilter, StoreError},
    supervise::{supervised_basics, Ping},
};

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("could not render metrics: {0}")]
    Render(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DomainError for MonitorError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Render(_) => ErrorKind::Internal,
            Self::Store(_) => ErrorKind::Unavailable,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            Self::Render(_) => "metrics_unavailable",
            Self::Store(_) => "store_unavailable",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Messages

/// Renders every metric in the Prometheus text format.
#[derive(Debug, Message)]
#[rtype(result = "Result<String, MonitorError>")]
pub struct RenderMetrics;

/// Reads the audit log.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<AuditEntry>, MonitorError>")]
pub struct ListAudit {
    pub filter: AuditFilter,
}

/// Runs every health check now.
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
    pub ping_ms: Option<f64>,
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
    pub audit: AuditLog,
    pub config: MonitorConfig,
}

pub struct MonitorActor {
    deps: MonitorDeps,
    /// Result of the last `ffmpeg -version` run; re-checked on the sample timer.
    ffmpeg: Result<String, String>,
}

impl MonitorActor {
    pub fn new(deps: MonitorDeps) -> Self {
        Self {
            deps,
            ffmpeg: Err("not checked yet".to_string()),
        }
    }

    fn schedule(&self, ctx: &mut Context<Self>) {
        let interval = Duration::from_millis(self.deps.config.sample_interval_ms);
        ctx.run_interval(interval, |actor, ctx| actor.sample(ctx));
        self.sample(ctx);
    }

    /// Refreshes the actor liveness gauges and the ffmpeg check.
    fn sample(&self, ctx: &mut Context<Self>) {
        let deps = self.deps.clone();
        let ffmpeg_path = self.deps.ffmpeg_path.clone();
        ctx.spawn(
            async move {
                let statuses = ping_all(&deps).await;
                for status in &statuses {
                    deps.metrics
                        .actor_up
                        .with_label_values(&[status.name])
                        .set(i64::from(status.alive));
                }
                check_ffmpeg(&ffmpeg_path).await
            }
            .into_actor(self)
            .map(|ffmpeg, actor, _| actor.ffmpeg = ffmpeg),
        );
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
        self.ffmpeg = Err("not checked yet".to_string());
    }
}

supervised_basics!(MonitorActor);

impl Handler<RenderMetrics> for MonitorActor {
    type Result = Result<String, MonitorError>;

    fn handle(&mut self, _: RenderMetrics, _: &mut Self::Context) -> Self::Result {
        self.deps
            .metrics
            .render()
            .map_err(|e| MonitorError::Render(e.to_string()))
    }
}

impl Handler<ListAudit> for MonitorActor {
    type Result = ResponseFuture<Result<Vec<AuditEntry>, MonitorError>>;

    fn handle(&mut self, msg: ListAudit, _: &mut Self::Context) -> Self::Result {
        let audit = self.deps.audit.clone();
        Box::pin(async move {
            let mut filter = msg.filter;
            filter.limit = filter.limit.clamp(1, 1000);
            Ok(audit.list(filter).await?)
        })
    }
}

impl Handler<CheckActors> for MonitorActor {
    type Result = ResponseFuture<Vec<ActorStatus>>;

    fn handle(&mut self, _: CheckActors, _: &mut Self::Context) -> Self::Result {
        let deps = self.deps.clone();
        Box::pin(async move { ping_all(&deps).await })
    }
}

impl Handler<CheckHealth> for MonitorActor {
    type Result = ResponseActFuture<Self, HealthReport>;

    fn handle(&mut self, _: CheckHealth, _: &mut Self::Context) -> Self::Result {
        let deps = self.deps.clone();
        let ffmpeg = match &self.ffmpeg {
            Ok(version) => ok("ffmpeg", version.clone()),
            Err(reason) => CheckResult {
                name: "ffmpeg",
                // Without ffmpeg uploads still land; they just wait for a transcoder.
                status: CheckStatus::Degraded,
                detail: reason.clone(),
            },
        };
        Box::pin(
            async move {
                let timeout = Duration::from_millis(deps.config.ping_timeout_ms);
                let (store, blobs, actors) = futures_util::join!(
                    check_store(&deps.repo, timeout),
                    check_blobs(&deps.blobs, timeout),
                    ping_all(&deps)
                );
                let disk = check_disk(&deps.data_dir, deps.min_free_disk_bytes);
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
                HealthReport {
                    checks: vec![store, blobs, ffmpeg, disk, actors_check],
                    actors,
                }
            }
            .into_actor(self),
        )
    }
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
            }
        }
    });
    futures_util::future::join_all(pings).await
}

async fn check_store(repo: &SharedRepo, timeout: Duration) -> CheckResult {
    match tokio::time::timeout(timeout, blocking(repo, |repo| repo.check())).await {
        Ok(Ok(())) => ok("store", "sled answers".to_string()),
        Ok(Err(error)) => down("store", error.to_string()),
        Err(_) => down("store", format!("no answer within {timeout:?}")),
    }
}

async fn check_blobs(blobs: &BlobStore, timeout: Duration) -> CheckResult {
    match tokio::time::timeout(timeout, blobs.check()).await {
        Ok(Ok(())) => ok("blobs", "blob store writable".to_string()),
        Ok(Err(error)) => down("blobs", error.to_string()),
        Err(_) => down("blobs", format!("no answer within {timeout:?}")),
    }
}

fn check_disk(data_dir: &std::path::Path, min_free_bytes: u64) -> CheckResult {
    match rustix::fs::statvfs(data_dir) {
        Ok(stats) => {
            let free = stats.f_bavail.saturating_mul(stats.f_frsize);
            let detail = format!(
                "{} MiB free (minimum {} MiB)",
                free >> 20,
                min_free_bytes >> 20
            );
            if free >= min_free_bytes {
                ok("disk", detail)
            } else {
                CheckResult {
                    name: "disk",
                    status: CheckStatus::Degraded,
                    detail,
                }
            }
        }
        Err(error) => down("disk", format!("statvfs {}: {error}", data_dir.display())),
    }
}

async fn check_ffmpeg(ffmpeg_path: &str) -> Result<String, String> {
    let output = tokio::process::Command::new(ffmpeg_path)
        .arg("-version")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run {ffmpeg_path}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{ffmpeg_path} -version exited with {}",
            output.status
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text.lines().next().unwrap_or("ffmpeg").to_string())
}
