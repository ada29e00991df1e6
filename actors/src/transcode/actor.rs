//! TranscodeActor: the durable job queue and its worker pool.
//!
//! Jobs live in the store; the actor keeps an in-memory priority queue of the queued ones whose
//! `run_at` has come, a timer for each that waits for its `run_at`, and at most
//! `transcode.workers` running at once. Workers run off the actor's context (ffmpeg on tokio's
//! blocking pool), so the actor stays responsive while jobs run.
//!
//! Invariant: a job's state changes are persisted before they are acted upon or reported.
//! Invariant: the store decides: a job is started only if the store still says `queued`.
//! Invariant: a job found `running` at start-up (a crash) or after a restart of this actor is
//! re-queued after any ffmpeg still writing into its work directory is killed; its output is
//! rebuilt from scratch, so a rerun never mixes renditions.
//! Invariant: a retry's backoff is stored as the job's `run_at`, so it survives a restart.
//!
//! With records on Postgres (`Leasing`) the queue is the shared `jobs` table instead: the actor
//! claims jobs there under a lease while it has idle workers, renews its leases by heartbeat,
//! and leaves `running` jobs of other (or earlier) processes to lapse and be taken over
//! (`lease.rs`).

mod lease;
mod queries;
mod submit;

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    path::PathBuf,
    time::{Duration, Instant},
};

use actix::{
    Actor, ActorFutureExt, Addr, AsyncContext, AtomicResponse, Context, Handler, SpawnHandle,
    Supervised, WrapFuture,
};
use time::OffsetDateTime;
use tokio::sync::oneshot;

use super::{
    ffmpeg::{self, Cause, KillSwitch, RunFailure},
    worker::{RunReport, Worker},
    JobProgressed, StopWorkers,
};
use crate::{
    audit::{action, outcome, AuditEvent, AuditLog},
    blobs::BlobStore,
    config::TranscodeConfig,
    metadata::{GetMedia, MetadataActor, RecordTranscode},
    model::{Job, JobId, JobKind, JobState, MediaFailure, MediaState},
    monitor::{
        otlp::{AttributeValue, FinishedSpan, SpanKind},
        traces::random_span_id,
        Metrics,
    },
    store::{blocking, JobFilter, SharedRepo},
    supervise::supervised_basics,
};

/// Loads queued and interrupted jobs from the store.
#[derive(Debug, actix::Message)]
#[rtype(result = "()")]
struct RecoverJobs;

/// Starts as many queued jobs as there are idle workers.
#[derive(Debug, actix::Message)]
#[rtype(result = "()")]
struct Pump;

struct RunningJob {
    job: Job,
    kill_switch: KillSwitch,
    /// Set by `CancelJob`: who asked, and who waits for the final state.
    cancel: Option<(String, Vec<oneshot::Sender<Job>>)>,
    /// The lease went to another node: the run is killed and its outcome not stored.
    lost: bool,
}

pub use lease::Leasing;

pub struct TranscodeActor {
    config: TranscodeConfig,
    repo: SharedRepo,
    blobs: BlobStore,
    metadata: Addr<MetadataActor>,
    metrics: Metrics,
    audit: AuditLog,
    work_dir: PathBuf,
    /// Jobs whose time has come: highest priority first, then oldest (ids are time ordered).
    queue: BinaryHeap<(u8, Reverse<JobId>)>,
    /// Jobs waiting for their `run_at`, with the timer that will queue them.
    waiting: HashMap<JobId, SpawnHandle>,
    running: HashMap<JobId, RunningJob>,
    /// Ends all work: set by `StopWorkers`, so nothing new starts during shutdown.
    stopping: bool,
    /// Records on Postgres: jobs are claimed from the shared table under a lease.
    leasing: Option<Leasing>,
    /// When this node last renewed its leases (or started running without any).
    renewed_at: Instant,
    /// With leases: the shared queue's depth at the last claim (the local queue stays empty).
    shared_queued: Option<u64>,
}

/// What the TranscodeActor works with.
#[derive(Clone)]
pub struct TranscodeDeps {
    pub config: TranscodeConfig,
    pub repo: SharedRepo,
    pub blobs: BlobStore,
    pub metadata: Addr<MetadataActor>,
    pub metrics: Metrics,
    pub audit: AuditLog,
    /// Scratch space for running jobs.
    pub work_dir: PathBuf,
    /// Several nodes share the job table (records on Postgres); `None` on sled.
    pub leasing: Option<Leasing>,
}

impl TranscodeActor {
    pub fn new(deps: TranscodeDeps) -> Self {
        let TranscodeDeps {
            config,
            repo,
            blobs,
            metadata,
            metrics,
            audit,
            work_dir,
            leasing,
        } = deps;
        // Absolute, so ffmpeg command lines name it the same way in every run (see kill_strays).
        let work_dir = work_dir.canonicalize().unwrap_or(work_dir);
        Self {
            config,
            repo,
            blobs,
            metadata,
            metrics,
            audit,
            work_dir,
            queue: BinaryHeap::new(),
            waiting: HashMap::new(),
            running: HashMap::new(),
            stopping: false,
            leasing,
            renewed_at: Instant::now(),
            shared_queued: None,
        }
    }

    fn publish_gauges(&self) {
        self.metrics
            .jobs
            .with_label_values(&[JobState::Queued.as_str()])
            .set(
                self.shared_queued
                    .map_or((self.queue.len() + self.waiting.len()) as i64, |queued| {
                        i64::try_from(queued).unwrap_or(i64::MAX)
                    }),
            );
        self.metrics
            .jobs
            .with_label_values(&[JobState::Running.as_str()])
            .set(self.running.len() as i64);
    }

    fn kill_all(&mut self) -> usize {
        for running in self.running.values() {
            running.kill_switch.kill();
        }
        self.running.len()
    }

    /// Puts a queued job in line: now, or by a timer at its `run_at`. With leases the table is
    /// the line: a claim looks now, and the claim timer again later.
    fn enqueue(&mut self, job: &Job, ctx: &mut Context<Self>) {
        if self.leasing.is_some() {
            ctx.notify(Pump);
            return;
        }
        let delay = job
            .run_at
            .map(|at| at - OffsetDateTime::now_utc())
            .filter(|delay| delay.is_positive())
            .and_then(|delay| Duration::try_from(delay).ok());
        let entry = (job.priority, Reverse(job.id.clone()));
        match delay {
            Some(delay) => {
                let job_id = job.id.clone();
                let timer = ctx.run_later(delay, move |actor, ctx| {
                    actor.waiting.remove(&entry.1 .0);
                    actor.queue.push(entry);
                    actor.publish_gauges();
                    ctx.notify(Pump);
                });
                if let Some(previous) = self.waiting.insert(job_id, timer) {
                    ctx.cancel_future(previous);
                }
            }
            None => {
                self.queue.push(entry);
                ctx.notify(Pump);
            }
        }
        self.publish_gauges();
    }

    /// Takes a job out of line (cancel); true if it was waiting there.
    fn dequeue(&mut self, job_id: &JobId, ctx: &mut Context<Self>) -> bool {
        let before = self.queue.len();
        self.queue.retain(|(_, Reverse(id))| id != job_id);
        let timer = self.waiting.remove(job_id);
        let found = timer.is_some() || self.queue.len() != before;
        if let Some(timer) = timer {
            ctx.cancel_future(timer);
        }
        self.publish_gauges();
        found
    }

    /// Starts `job` on a worker; called with the job already persisted as `running`.
    fn launch(&mut self, job: Job, ctx: &mut Context<Self>) {
        let kill_switch = KillSwitch::default();
        self.running.insert(
            job.id.clone(),
            RunningJob {
                job: job.clone(),
                kill_switch: kill_switch.clone(),
                cancel: None,
                lost: false,
            },
        );
        let worker = Worker {
            config: self.config.clone(),
            repo: self.repo.clone(),
            blobs: self.blobs.clone(),
            metadata: self.metadata.clone(),
            work_root: self.work_dir.clone(),
            running: self.running.keys().cloned().collect(),
            progress_to: ctx.address(),
            kill_switch,
        };
        let started = Instant::now();
        let job_id = job.id.clone();
        ctx.spawn(
            worker
                .run(job)
                .into_actor(self)
                .map(move |outcome, actor, ctx| {
                    actor.finish(job_id, outcome, started.elapsed(), ctx);
                }),
        );
    }

    /// Persists a finished run's outcome, retrying transient failures with backoff.
    fn finish(
        &mut self,
        job_id: JobId,
        outcome: Result<RunReport, RunFailure>,
        took: Duration,
        ctx: &mut Context<Self>,
    ) {
        let Some(RunningJob {
            mut job,
            cancel,
            lost,
            ..
        }) = self.running.remove(&job_id)
        else {
            return;
        };
        if lost {
            tracing::warn!(job_id = %job.id, "job taken over by another node; this run's outcome is dropped");
            self.publish_gauges();
            ctx.notify(Pump);
            return;
        }
        let now = OffsetDateTime::now_utc();
        let (cancelled_by, waiters) = match cancel {
            Some((caller, waiters)) => (Some(caller), waiters),
            None => (None, Vec::new()),
        };
        let run_label = match outcome {
            Ok(report) => {
                if let Some(speed) = report.speed {
                    self.metrics.transcode_speed.observe(speed);
                }
                job.state = JobState::Succeeded;
                job.progress = 100;
                job.last_error = None;
                job.error_code = None;
                job.summary = report.summary;
                "succeeded"
            }
            Err(failure) => {
                if let Some(reason) = failure.ffmpeg_reason() {
                    self.metrics
                        .ffmpeg_failures
                        .with_label_values(&[reason])
                        .inc();
                }
                if let Some(caller) = &cancelled_by {
                    job.state = JobState::Cancelled;
                    job.last_error = Some(format!("cancelled by {caller}"));
                    job.error_code = Some("cancelled".into());
                    "cancelled"
                } else if self.stopping && failure.cause == Cause::Killed {
                    // Shutdown interrupted it: leave it queued for the next start.
                    job.state = JobState::Queued;
                    job.last_error = Some("interrupted by shutdown".into());
                    job.error_code = Some("interrupted".into());
                    "interrupted"
                } else if failure.is_permanent() || job.attempts >= self.config.max_attempts {
                    job.state = JobState::Failed;
                    job.last_error = Some(failure.message);
                    job.error_code = Some(failure.code.into());
                    "failed"
                } else {
                    let exponent = job.attempts.saturating_sub(1).min(16);
                    let delay = Duration::from_millis(
                        self.config
                            .retry_base_delay_ms
                            .saturating_mul(1 << exponent),
                    );
                    job.state = JobState::Queued;
                    job.run_at = Some(now + delay);
                    job.last_error = Some(failure.message);
                    job.error_code = Some(failure.code.into());
                    "retrying"
                }
            }
        };
        self.metrics
            .job_duration
            .with_label_values(&[job.kind.as_str(), run_label])
            .observe(took.as_secs_f64());
        // One span per run, in the trace of the request that queued the job.
        if let Some(trace_id) = job
            .trace_id
            .as_deref()
            .and_then(|hex| u128::from_str_radix(hex, 16).ok())
            .filter(|id| *id != 0)
        {
            self.metrics.export_span(|| {
                let end = std::time::SystemTime::now();
                FinishedSpan {
                    trace_id,
                    span_id: random_span_id(),
                    parent_span_id: None,
                    name: format!("job {}", job.kind.as_str()),
                    kind: SpanKind::Internal,
                    start: end.checked_sub(took).unwrap_or(end),
                    end,
                    attributes: vec![
                        (
                            "streamgate.job.id",
                            AttributeValue::Text(job.id.to_string().into()),
                        ),
                        (
                            "streamgate.job.kind",
                            AttributeValue::Text(job.kind.as_str().into()),
                        ),
                        (
                            "streamgate.job.outcome",
                            AttributeValue::Text(run_label.into()),
                        ),
                        (
                            "streamgate.job.attempt",
                            AttributeValue::Int(i64::from(job.attempts)),
                        ),
                    ],
                    error: run_label == "failed",
                }
            });
        }
        if job.state.is_final() {
            job.finished_at = Some(now);
            if job.kind == JobKind::Transcode {
                self.metrics
                    .transcode_jobs
                    .with_label_values(&[job.state.as_str()])
                    .inc();
            }
        }
        job.updated_at = now;
        let repo = self.repo.clone();
        let metadata = self.metadata.clone();
        let audit = self.audit.clone();
        let node = self.leasing.as_ref().map(|leasing| leasing.node.clone());
        ctx.wait(
            async move {
                let stored = job.clone();
                let written = blocking(&repo, move |repo| match node {
                    Some(node) => repo.finish_leased(&node, &stored),
                    None => repo.put_job(&stored).map(|()| true),
                })
                .await;
                match written {
                    Ok(true) => {}
                    Ok(false) => {
                        // Another node took the job over after our lease lapsed: its run counts.
                        tracing::warn!(job_id = %job.id, "lease lost before the outcome was stored; dropped");
                        job.state = JobState::Running;
                        for waiter in waiters {
                            let _ = waiter.send(job.clone());
                        }
                        return job;
                    }
                    Err(error) => {
                        tracing::error!(job_id = %job.id, %error, "could not persist job outcome")
                    }
                }
                settle_media(&metadata, &job).await;
                if let Some(caller) = cancelled_by {
                    let event = AuditEvent::ok(action::JOB_CANCEL, caller, Some(job.id.to_string()));
                    audit.record(cancel_event(event, &job)).await;
                }
                if job.state.is_final() {
                    audit.record(outcome_event(&job)).await;
                }
                tracing::info!(job_id = %job.id, kind = job.kind.as_str(), state = job.state.as_str(), error = job.last_error.as_deref(), "job run ended");
                for waiter in waiters {
                    let _ = waiter.send(job.clone());
                }
                job
            }
            .into_actor(self)
            .map(move |job, actor, ctx| {
                if job.state == JobState::Queued && !actor.stopping {
                    actor.enqueue(&job, ctx);
                }
                actor.publish_gauges();
                ctx.notify(Pump);
            }),
        );
    }
}

/// A transcode that ended without output leaves its media `failed` with the reason, unless an
/// earlier transcode made it `ready`: its output is untouched then (a failure after the old
/// output was deleted has already marked it `failed`, see the worker), so it stays playable.
async fn settle_media(metadata: &Addr<MetadataActor>, job: &Job) {
    if job.kind != JobKind::Transcode
        || !matches!(job.state, JobState::Failed | JobState::Cancelled)
    {
        return;
    }
    let Some(media_id) = job.media_id.clone() else {
        return;
    };
    let ready = matches!(
        metadata.send(GetMedia { media_id: media_id.clone() }).await,
        Ok(Ok(media)) if media.state == MediaState::Ready
    );
    if ready {
        return;
    }
    let failure = match job.state {
        JobState::Cancelled => MediaFailure {
            code: "cancelled".into(),
            message: "transcode cancelled".into(),
        },
        _ => MediaFailure {
            code: job.error_code.clone().unwrap_or_default(),
            message: job.last_error.clone().unwrap_or_default(),
        },
    };
    let _ = metadata
        .send(RecordTranscode {
            media_id,
            outcome: Err(failure),
        })
        .await;
}

/// The audit entry of a job that reached a final state. One per job, so the writes are
/// bounded by the worker pool, not by clients.
pub(super) fn outcome_event(job: &Job) -> AuditEvent {
    let result = match job.state {
        JobState::Succeeded => outcome::OK,
        JobState::Cancelled => outcome::CANCELLED,
        _ => outcome::FAILED,
    };
    let mut detail = format!("{} {}", job.kind.as_str(), job.state.as_str());
    if let Some(media_id) = &job.media_id {
        detail.push_str(&format!(" media {media_id}"));
    }
    if let (JobState::Failed, Some(code)) = (job.state, &job.error_code) {
        detail.push_str(&format!(": {code}"));
    }
    AuditEvent::ok(action::JOB_OUTCOME, "worker", Some(job.id.to_string()))
        .with_outcome(result, detail)
}

fn cancel_event(event: AuditEvent, job: &Job) -> AuditEvent {
    if job.state == JobState::Cancelled {
        event
    } else {
        event.with_outcome(outcome::FAILED, format!("job {}", job.state.as_str()))
    }
}

impl Actor for TranscodeActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.notify(RecoverJobs);
        self.start_leasing(ctx);
    }

    fn stopping(&mut self, _: &mut Self::Context) -> actix::Running {
        self.kill_all();
        actix::Running::Stop
    }
}

impl Supervised for TranscodeActor {
    fn restarting(&mut self, _: &mut Self::Context) {
        // The worker futures and timers died with the old context; kill their processes and
        // start over from the store, where those jobs are still `running` and will be re-queued.
        self.kill_all();
        self.running.clear();
        self.queue.clear();
        self.waiting.clear();
    }
}

supervised_basics!(TranscodeActor);

impl Handler<RecoverJobs> for TranscodeActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, _: RecoverJobs, _: &mut Self::Context) -> Self::Result {
        let repo = self.repo.clone();
        let work_dir = self.work_dir.clone();
        let shared = self.leasing.is_some();
        AtomicResponse::new(Box::pin(
            async move {
                let loaded = blocking(&repo, move |repo| {
                    let strays = ffmpeg::kill_strays(&work_dir);
                    if shared {
                        // Running jobs may be other nodes' (or ours from before a crash): their
                        // leases decide, and claims take over the lapsed ones.
                        return Ok((strays, Vec::new(), Vec::new()));
                    }
                    let mut recovered = Vec::new();
                    for mut job in repo.list_jobs(&JobFilter::all_in(JobState::Running))? {
                        job.state = JobState::Queued;
                        job.last_error = Some("interrupted: the server stopped mid-run".into());
                        job.updated_at = OffsetDateTime::now_utc();
                        repo.put_job(&job)?;
                        recovered.push(job.id);
                    }
                    let queued = repo.list_jobs(&JobFilter::all_in(JobState::Queued))?;
                    Ok((strays, recovered, queued))
                })
                .await;
                match loaded {
                    Ok((strays, recovered, queued)) => {
                        if strays > 0 {
                            tracing::warn!(count = strays, "killed ffmpeg left by an earlier run");
                        }
                        if !recovered.is_empty() {
                            tracing::warn!(
                                count = recovered.len(),
                                "re-queued jobs interrupted while running"
                            );
                        }
                        queued
                    }
                    Err(error) => {
                        tracing::error!(%error, "could not load jobs from the store");
                        Vec::new()
                    }
                }
            }
            .into_actor(self)
            .map(|queued, actor, ctx| {
                for job in queued {
                    actor.enqueue(&job, ctx);
                }
                actor.publish_gauges();
                ctx.notify(Pump);
            }),
        ))
    }
}

impl Handler<Pump> for TranscodeActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, _: Pump, ctx: &mut Self::Context) -> Self::Result {
        if let Some(leasing) = self.leasing.clone() {
            return self.claim(leasing, ctx);
        }
        let idle = self.config.workers.saturating_sub(self.running.len());
        let mut picked = Vec::new();
        while picked.len() < idle && !self.stopping {
            match self.queue.pop() {
                Some((_, Reverse(job_id))) if !self.running.contains_key(&job_id) => {
                    picked.push(job_id)
                }
                Some(_) => {}
                None => break,
            }
        }
        let repo = self.repo.clone();
        AtomicResponse::new(Box::pin(
            async move {
                blocking(&repo, move |repo| {
                    let mut started = Vec::new();
                    for job_id in picked {
                        // The store is the truth: a job may have been cancelled meanwhile.
                        let Some(mut job) = repo.get_job(&job_id)? else {
                            continue;
                        };
                        if job.state != JobState::Queued {
                            continue;
                        }
                        let now = OffsetDateTime::now_utc();
                        job.state = JobState::Running;
                        job.attempts += 1;
                        job.progress = 0;
                        job.started_at = Some(now);
                        job.updated_at = now;
                        repo.put_job(&job)?;
                        started.push(job);
                    }
                    Ok(started)
                })
                .await
            }
            .into_actor(self)
            .map(|started, actor, ctx| {
                match started {
                    Ok(jobs) => {
                        for job in jobs {
                            actor.launch(job, ctx);
                        }
                    }
                    Err(error) => tracing::error!(%error, "could not start queued jobs"),
                }
                actor.publish_gauges();
            }),
        ))
    }
}

impl Handler<JobProgressed> for TranscodeActor {
    type Result = ();

    fn handle(&mut self, msg: JobProgressed, _: &mut Self::Context) {
        if let Some(running) = self.running.get_mut(&msg.job_id) {
            running.job.progress = msg.progress;
        }
    }
}

impl Handler<StopWorkers> for TranscodeActor {
    type Result = usize;

    fn handle(&mut self, _: StopWorkers, _: &mut Self::Context) -> usize {
        self.stopping = true;
        self.kill_all()
    }
}
