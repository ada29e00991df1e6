//! TranscodeActor: the durable job queue and its worker pool.
//!
//! Jobs live in the store; the actor keeps an in-memory priority queue of the queued ones and at
//! most `transcode.workers` running at once. ffmpeg runs on tokio's blocking pool, so the actor
//! stays responsive while jobs run.
//!
//! Invariant: a job's state changes are persisted before they are acted upon or reported.
//! Invariant: a job found `running` at start-up (a crash) or after a restart of this actor is
//! re-queued; its output prefix is rewritten from scratch, so a rerun never mixes renditions.

pub mod ffmpeg;

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    path::PathBuf,
    time::{Duration, Instant},
};

use actix::{
    Actor, ActorFutureExt, Addr, AsyncContext, AtomicResponse, Context, Handler, Message,
    ResponseFuture, Supervised, WrapFuture,
};
use time::OffsetDateTime;

use self::ffmpeg::{KillSwitch, RunFailure};
use crate::{
    audit::{action, AuditEvent, AuditLog},
    blobs::BlobStore,
    config::TranscodeConfig,
    error::{DomainError, ErrorKind},
    metadata::{GetMedia, MetadataActor, RecordTranscode},
    model::{Job, JobId, JobKind, JobState, Media, MediaId, Probe, Rendition},
    monitor::Metrics,
    store::{blocking, SharedRepo, StoreError},
    supervise::supervised_basics,
};

#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    #[error("job {0} not found")]
    NotFound(JobId),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DomainError for TranscodeError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Invalid(_) => ErrorKind::Invalid,
            Self::Store(_) => ErrorKind::Unavailable,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "job_not_found",
            Self::Invalid(_) => "invalid_job",
            Self::Store(_) => "store_unavailable",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Messages

/// Queues a job; the reply comes once the job is durable.
#[derive(Debug, Message)]
#[rtype(result = "Result<Job, TranscodeError>")]
pub struct SubmitJob {
    pub kind: JobKind,
    pub media_id: MediaId,
    pub priority: u8,
    /// Who submitted it, for the audit log.
    pub caller: String,
}

#[derive(Debug, Message)]
#[rtype(result = "Result<Job, TranscodeError>")]
pub struct GetJob {
    pub job_id: JobId,
}

#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<Job>, TranscodeError>")]
pub struct ListJobs {
    pub state: Option<JobState>,
    pub after: Option<JobId>,
    pub limit: usize,
}

/// Kills every running ffmpeg; sent at shutdown so no process outlives the server.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct StopWorkers;

/// A worker's progress report (0–100).
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct JobProgressed {
    job_id: JobId,
    progress: u8,
}

/// Loads queued and interrupted jobs from the store.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct RecoverJobs;

/// Starts as many queued jobs as there are idle workers.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Pump;

// ---------------------------------------------------------------------------------------------
// Actor

struct RunningJob {
    job: Job,
    kill_switch: KillSwitch,
}

pub struct TranscodeActor {
    config: TranscodeConfig,
    repo: SharedRepo,
    blobs: BlobStore,
    metadata: Addr<MetadataActor>,
    metrics: Metrics,
    audit: AuditLog,
    work_dir: PathBuf,
    /// Highest priority first, then oldest (ids are time ordered).
    queue: BinaryHeap<(u8, Reverse<JobId>)>,
    running: HashMap<JobId, RunningJob>,
    /// Ends all work: set by `StopWorkers`, so nothing new starts during shutdown.
    stopping: bool,
}

impl TranscodeActor {
    pub fn new(
        config: TranscodeConfig,
        repo: SharedRepo,
        blobs: BlobStore,
        metadata: Addr<MetadataActor>,
        metrics: Metrics,
        audit: AuditLog,
        work_dir: PathBuf,
    ) -> Self {
        Self {
            config,
            repo,
            blobs,
            metadata,
            metrics,
            audit,
            work_dir,
            queue: BinaryHeap::new(),
            running: HashMap::new(),
            stopping: false,
        }
    }

    fn publish_gauges(&self) {
        self.metrics
            .jobs
            .with_label_values(&[JobState::Queued.as_str()])
            .set(self.queue.len() as i64);
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

    /// Starts `job` on a worker; called with the job already persisted as `running`.
    fn launch(&mut self, job: Job, ctx: &mut Context<Self>) {
        let kill_switch = KillSwitch::default();
        self.running.insert(
            job.id.clone(),
            RunningJob {
                job: job.clone(),
                kill_switch: kill_switch.clone(),
            },
        );
        let worker = Worker {
            config: self.config.clone(),
            blobs: self.blobs.clone(),
            metadata: self.metadata.clone(),
            work_dir: self.work_dir.join(job.id.to_string()),
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
        outcome: Result<(), RunFailure>,
        took: Duration,
        ctx: &mut Context<Self>,
    ) {
        let Some(RunningJob { mut job, .. }) = self.running.remove(&job_id) else {
            return;
        };
        let label = match &outcome {
            Ok(()) => "succeeded",
            Err(_) => "failed",
        };
        self.metrics
            .transcode_duration
            .with_label_values(&[label])
            .observe(took.as_secs_f64());
        let mut retry_after = None;
        match outcome {
            Ok(()) => {
                job.state = JobState::Succeeded;
                job.progress = 100;
                job.last_error = None;
            }
            Err(failure) if self.stopping => {
                // Shutdown interrupted it: leave it queued for the next start.
                job.state = JobState::Queued;
                job.last_error = Some(failure.reason);
            }
            Err(failure) => {
                job.last_error = Some(failure.reason.clone());
                if failure.permanent || job.attempts >= self.config.max_attempts {
                    job.state = JobState::Failed;
                } else {
                    job.state = JobState::Queued;
                    let exponent = job.attempts.saturating_sub(1).min(10);
                    retry_after = Some(Duration::from_millis(
                        self.config
                            .retry_base_delay_ms
                            .saturating_mul(1 << exponent),
                    ));
                }
            }
        }
        if job.state.is_final() {
            self.metrics
                .transcode_jobs
                .with_label_values(&[job.state.as_str()])
                .inc();
        }
        job.updated_at = OffsetDateTime::now_utc();
        let repo = self.repo.clone();
        let metadata = self.metadata.clone();
        let stopping = self.stopping;
        ctx.wait(
            async move {
                let stored = job.clone();
                if let Err(error) = blocking(&repo, move |repo| repo.put_job(&stored)).await {
                    tracing::error!(job_id = %job.id, %error, "could not persist job outcome");
                }
                if job.state == JobState::Failed {
                    let reason = job.last_error.clone().unwrap_or_default();
                    let _ = metadata
                        .send(RecordTranscode {
                            media_id: job.media_id.clone(),
                            outcome: Err(reason),
                        })
                        .await;
                }
                tracing::info!(job_id = %job.id, state = job.state.as_str(), error = job.last_error.as_deref(), "job ended");
                job
            }
            .into_actor(self)
            .map(move |job, actor, ctx| {
                if job.state == JobState::Queued && !stopping {
                    match retry_after {
                        Some(delay) => {
                            ctx.run_later(delay, move |actor, ctx| {
                                actor.queue.push((job.priority, Reverse(job.id)));
                                ctx.notify(Pump);
                            });
                        }
                        None => actor.queue.push((job.priority, Reverse(job.id))),
                    }
                }
                actor.publish_gauges();
                ctx.notify(Pump);
            }),
        );
    }
}

impl Actor for TranscodeActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.notify(RecoverJobs);
    }

    fn stopping(&mut self, _: &mut Self::Context) -> actix::Running {
        self.kill_all();
        actix::Running::Stop
    }
}

impl Supervised for TranscodeActor {
    fn restarting(&mut self, _: &mut Self::Context) {
        // The worker futures died with the old context; kill their processes and start over
        // from the store, where those jobs are still `running` and will be re-queued.
        self.kill_all();
        self.running.clear();
        self.queue.clear();
    }
}

supervised_basics!(TranscodeActor);

impl Handler<RecoverJobs> for TranscodeActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, _: RecoverJobs, _: &mut Self::Context) -> Self::Result {
        let repo = self.repo.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let loaded = blocking(&repo, |repo| {
                    let mut recovered = Vec::new();
                    for mut job in repo.list_jobs(Some(JobState::Running), None, usize::MAX)? {
                        job.state = JobState::Queued;
                        job.updated_at = OffsetDateTime::now_utc();
                        repo.put_job(&job)?;
                        recovered.push(job.id);
                    }
                    let queued = repo.list_jobs(Some(JobState::Queued), None, usize::MAX)?;
                    Ok((recovered, queued))
                })
                .await;
                match loaded {
                    Ok((recovered, queued)) => {
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
                    actor.queue.push((job.priority, Reverse(job.id)));
                }
                actor.publish_gauges();
                ctx.notify(Pump);
            }),
        ))
    }
}

impl Handler<Pump> for TranscodeActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, _: Pump, _: &mut Self::Context) -> Self::Result {
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
                        job.state = JobState::Running;
                        job.attempts += 1;
                        job.progress = 0;
                        job.updated_at = OffsetDateTime::now_utc();
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

impl Handler<SubmitJob> for TranscodeActor {
    type Result = AtomicResponse<Self, Result<Job, TranscodeError>>;

    fn handle(&mut self, msg: SubmitJob, _: &mut Self::Context) -> Self::Result {
        let repo = self.repo.clone();
        let audit = self.audit.clone();
        AtomicResponse::new(Box::pin(
            async move {
                if msg.priority > 9 {
                    return Err(TranscodeError::Invalid("priority must be 0..9".into()));
                }
                let now = OffsetDateTime::now_utc();
                let job = Job {
                    id: JobId::new(),
                    kind: msg.kind,
                    media_id: msg.media_id,
                    state: JobState::Queued,
                    priority: msg.priority,
                    attempts: 0,
                    last_error: None,
                    progress: 0,
                    created_at: now,
                    updated_at: now,
                };
                let stored = job.clone();
                blocking(&repo, move |repo| repo.put_job(&stored)).await?;
                audit
                    .record(AuditEvent::ok(
                        action::JOB_SUBMIT,
                        msg.caller,
                        Some(job.id.to_string()),
                    ))
                    .await;
                Ok(job)
            }
            .into_actor(self)
            .map(|submitted, actor, ctx| {
                if let Ok(job) = &submitted {
                    tracing::info!(job_id = %job.id, media_id = %job.media_id, "job queued");
                    actor.queue.push((job.priority, Reverse(job.id.clone())));
                    actor.publish_gauges();
                    ctx.notify(Pump);
                }
                submitted
            }),
        ))
    }
}

impl Handler<GetJob> for TranscodeActor {
    type Result = ResponseFuture<Result<Job, TranscodeError>>;

    fn handle(&mut self, msg: GetJob, _: &mut Self::Context) -> Self::Result {
        // A running job's live progress is only in memory; persisting every tick would be waste.
        let live = self
            .running
            .get(&msg.job_id)
            .map(|running| running.job.clone());
        let repo = self.repo.clone();
        Box::pin(async move {
            if let Some(job) = live {
                return Ok(job);
            }
            let job_id = msg.job_id.clone();
            blocking(&repo, move |repo| repo.get_job(&job_id))
                .await?
                .ok_or(TranscodeError::NotFound(msg.job_id))
        })
    }
}

impl Handler<ListJobs> for TranscodeActor {
    type Result = ResponseFuture<Result<Vec<Job>, TranscodeError>>;

    fn handle(&mut self, msg: ListJobs, _: &mut Self::Context) -> Self::Result {
        let repo = self.repo.clone();
        let live: HashMap<JobId, u8> = self
            .running
            .iter()
            .map(|(id, running)| (id.clone(), running.job.progress))
            .collect();
        Box::pin(async move {
            let limit = msg.limit.clamp(1, 100);
            let mut jobs = blocking(&repo, move |repo| {
                repo.list_jobs(msg.state, msg.after.as_ref(), limit)
            })
            .await?;
            for job in &mut jobs {
                if let Some(progress) = live.get(&job.id) {
                    job.progress = *progress;
                }
            }
            Ok(jobs)
        })
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

// ---------------------------------------------------------------------------------------------
// The worker: one job run, off the actor's context.

struct Worker {
    config: TranscodeConfig,
    blobs: BlobStore,
    metadata: Addr<MetadataActor>,
    work_dir: PathBuf,
    progress_to: Addr<TranscodeActor>,
    kill_switch: KillSwitch,
}

impl Worker {
    async fn run(self, job: Job) -> Result<(), RunFailure> {
        let result = self.run_inner(&job).await;
        let _ = tokio::fs::remove_dir_all(&self.work_dir).await;
        result
    }

    async fn run_inner(&self, job: &Job) -> Result<(), RunFailure> {
        let media = self
            .metadata
            .send(GetMedia {
                media_id: job.media_id.clone(),
            })
            .await
            .map_err(|e| RunFailure::transient(format!("metadata actor unavailable: {e}")))?
            .map_err(|e| match e.kind() {
                ErrorKind::NotFound => {
                    RunFailure::permanent(format!("media {} no longer exists", job.media_id))
                }
                _ => RunFailure::transient(e.to_string()),
            })?;
        let _ = tokio::fs::remove_dir_all(&self.work_dir).await;
        let out_dir = self.work_dir.join("out");
        tokio::fs::create_dir_all(&out_dir)
            .await
            .map_err(|e| RunFailure::transient(format!("cannot create work dir: {e}")))?;
        let input = self.source_path(&media).await?;

        let (probe, renditions) = self.encode(job, &input, &out_dir).await?;

        // Replace any output of an earlier, interrupted attempt, then publish the new one.
        let prefix = BlobStore::media_prefix(&media.id);
        self.blobs
            .delete_prefix(&prefix)
            .await
            .map_err(|e| RunFailure::transient(e.to_string()))?;
        let files =
            ffmpeg::files_under(&out_dir).map_err(|e| RunFailure::transient(e.to_string()))?;
        for relative in files {
            let name = relative.to_string_lossy().replace('\\', "/");
            let key = if name == "thumbnail.jpg" {
                format!("{prefix}/thumbnail.jpg")
            } else {
                BlobStore::hls_key(&media.id, &name)
            };
            self.blobs
                .put_file(&key, &out_dir.join(&relative))
                .await
                .map_err(|e| RunFailure::transient(e.to_string()))?;
        }
        self.metadata
            .send(RecordTranscode {
                media_id: media.id.clone(),
                outcome: Ok((probe, renditions)),
            })
            .await
            .map_err(|e| RunFailure::transient(format!("metadata actor unavailable: {e}")))?
            .map_err(|e| RunFailure::transient(e.to_string()))?;
        Ok(())
    }

    /// The source as a local file: the blob itself on the local backend, else a download.
    async fn source_path(&self, media: &Media) -> Result<PathBuf, RunFailure> {
        if let Some(path) = self.blobs.local_path(&media.source_key) {
            return Ok(path);
        }
        let path = self.work_dir.join("source");
        let bytes = self
            .blobs
            .get(&media.source_key)
            .await
            .map_err(|e| RunFailure::transient(e.to_string()))?;
        tokio::fs::write(&path, bytes)
            .await
            .map_err(|e| RunFailure::transient(e.to_string()))?;
        Ok(path)
    }

    async fn encode(
        &self,
        job: &Job,
        input: &std::path::Path,
        out_dir: &std::path::Path,
    ) -> Result<(Probe, Vec<Rendition>), RunFailure> {
        let config = self.config.clone();
        let input = input.to_path_buf();
        let out_dir = out_dir.to_path_buf();
        let kill_switch = self.kill_switch.clone();
        let progress_to = self.progress_to.clone();
        let job_id = job.id.clone();
        tokio::task::spawn_blocking(move || {
            let probe = ffmpeg::probe(&config.ffprobe_path, &input)?;
            let rungs = ffmpeg::plan_ladder(&config.ladder, probe.height);
            let args = ffmpeg::hls_arguments(&config, &input, &out_dir, &probe, &rungs);
            let mut last = None;
            ffmpeg::run_ffmpeg(
                &config.ffmpeg_path,
                &args,
                probe.duration_s,
                &kill_switch,
                |progress| {
                    if last != Some(progress) {
                        last = Some(progress);
                        progress_to.do_send(JobProgressed {
                            job_id: job_id.clone(),
                            progress,
                        });
                    }
                },
            )?;
            let thumbnail =
                ffmpeg::thumbnail_arguments(&input, &out_dir.join("thumbnail.jpg"), &probe);
            ffmpeg::run_ffmpeg(
                &config.ffmpeg_path,
                &thumbnail,
                probe.duration_s,
                &kill_switch,
                |_| {},
            )?;
            let renditions = ffmpeg::renditions(&probe, &rungs);
            Ok((probe, renditions))
        })
        .await
        .map_err(|e| RunFailure::transient(format!("worker thread failed: {e}")))?
    }
}
