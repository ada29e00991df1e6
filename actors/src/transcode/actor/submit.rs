//! Submitting and cancelling jobs.
//!
//! Invariant: a submission is validated, checked against the media's active jobs and stored in
//! one atomic step, so two submissions never both pass the one-active-job check.
//! Invariant: a cancel takes a queued job out of line before it touches the store, so no `Pump`
//! can start it meanwhile; a running job is answered only once its worker has ended.

use actix::{ActorFutureExt, AtomicResponse, Handler, ResponseActFuture, WrapFuture};
use time::OffsetDateTime;
use tokio::sync::oneshot;

use super::{lease::cancel_through_store, outcome_event, settle_media, TranscodeActor};
use crate::{
    audit::{action, outcome, AuditEvent},
    metadata::GetMedia,
    model::{CancelRequest, Job, JobId, JobKind, JobState},
    store::{blocking, JobFilter},
    transcode::{CancelJob, ScheduleJob, SubmitJob, TranscodeError},
};

impl Handler<SubmitJob> for TranscodeActor {
    type Result = AtomicResponse<Self, Result<Job, TranscodeError>>;

    fn handle(&mut self, msg: SubmitJob, ctx: &mut Self::Context) -> Self::Result {
        <Self as Handler<ScheduleJob>>::handle(
            self,
            ScheduleJob {
                kind: msg.kind,
                media_id: Some(msg.media_id),
                profiles: Vec::new(),
                priority: msg.priority,
                run_at: None,
                caller: msg.caller,
                trace_id: msg.trace_id,
                owner_cap: msg.owner_cap,
            },
            ctx,
        )
    }
}

impl TranscodeActor {
    /// Checks what can be checked without I/O.
    fn validate(&self, msg: &ScheduleJob) -> Result<(), TranscodeError> {
        let invalid = |text: &str| Err(TranscodeError::Invalid(text.to_string()));
        if msg.priority > 9 {
            return invalid("priority must be 0..9");
        }
        match (msg.kind.needs_media(), &msg.media_id) {
            (true, None) => return invalid("media_id is required for this kind of job"),
            (false, Some(_)) => return invalid("a cleanup job takes no media_id"),
            _ => {}
        }
        if !msg.profiles.is_empty() && msg.kind != JobKind::Transcode {
            return invalid("profiles apply to transcode jobs only");
        }
        for (index, name) in msg.profiles.iter().enumerate() {
            if !self.config.ladder.iter().any(|rung| &rung.name == name) {
                return Err(TranscodeError::Invalid(format!(
                    "unknown profile {name:?}; see GET /api/v1/transcode/profiles"
                )));
            }
            if msg.profiles[..index].contains(name) {
                return Err(TranscodeError::Invalid(format!(
                    "profile {name:?} is listed twice"
                )));
            }
        }
        Ok(())
    }
}

impl Handler<ScheduleJob> for TranscodeActor {
    // Atomic: the "one active job per media" check and the insert must not interleave.
    type Result = AtomicResponse<Self, Result<Job, TranscodeError>>;

    fn handle(&mut self, msg: ScheduleJob, _: &mut Self::Context) -> Self::Result {
        let checked = self.validate(&msg);
        let repo = self.repo.clone();
        let audit = self.audit.clone();
        let metadata = self.metadata.clone();
        let owner_cap = msg
            .owner_cap
            .then_some(self.config.max_active_jobs_per_owner);
        AtomicResponse::new(Box::pin(
            async move {
                checked?;
                let mut owner = None;
                if let Some(media_id) = &msg.media_id {
                    match metadata
                        .send(GetMedia {
                            media_id: media_id.clone(),
                        })
                        .await
                    {
                        Ok(Ok(media)) => owner = media.owner,
                        Ok(Err(_)) => return Err(TranscodeError::UnknownMedia(media_id.clone())),
                        Err(_) => return Err(TranscodeError::Interrupted),
                    }
                }
                let now = OffsetDateTime::now_utc();
                let job = Job {
                    id: JobId::new(),
                    kind: msg.kind,
                    media_id: msg.media_id,
                    profiles: msg.profiles,
                    state: JobState::Queued,
                    priority: msg.priority,
                    attempts: 0,
                    last_error: None,
                    error_code: None,
                    owner,
                    progress: 0,
                    summary: None,
                    run_at: msg.run_at,
                    started_at: None,
                    finished_at: None,
                    trace_id: msg.trace_id.clone(),
                    created_at: now,
                    updated_at: now,
                    lease: None,
                };
                let stored = job.clone();
                blocking(&repo, move |repo| {
                    if stored.media_id.is_none() {
                        return repo.put_job(&stored).map(Ok);
                    }
                    let active: Vec<Job> = repo
                        .list_jobs(&JobFilter {
                            limit: usize::MAX,
                            ..JobFilter::default()
                        })?
                        .into_iter()
                        .filter(|other| !other.state.is_final())
                        .collect();
                    if let Some(busy) = active
                        .iter()
                        .find(|other| other.media_id == stored.media_id)
                    {
                        return Ok(Err(TranscodeError::Busy(busy.id.clone())));
                    }
                    if let (Some(limit), Some(owner)) = (owner_cap, &stored.owner) {
                        let owned = active
                            .iter()
                            .filter(|other| other.owner.as_ref() == Some(owner))
                            .count();
                        if owned >= limit {
                            return Ok(Err(TranscodeError::OwnerBusy { limit }));
                        }
                    }
                    repo.put_job(&stored).map(Ok)
                })
                .await??;
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
                    tracing::info!(job_id = %job.id, kind = job.kind.as_str(), "job queued");
                    actor.enqueue(job, ctx);
                }
                submitted
            }),
        ))
    }
}

impl Handler<CancelJob> for TranscodeActor {
    type Result = ResponseActFuture<Self, Result<Job, TranscodeError>>;

    fn handle(&mut self, msg: CancelJob, ctx: &mut Self::Context) -> Self::Result {
        if let Some(running) = self.running.get_mut(&msg.job_id) {
            // The worker's end (`finish`) persists `cancelled` and answers us.
            let (reply_to, reply) = oneshot::channel();
            running
                .cancel
                .get_or_insert_with(|| (msg.caller.clone(), Vec::new()))
                .1
                .push(reply_to);
            running.kill_switch.kill();
            let job_id = msg.job_id;
            return Box::pin(
                async move {
                    let job = reply.await.map_err(|_| TranscodeError::Interrupted)?;
                    match job.state {
                        JobState::Cancelled => Ok(job),
                        state => Err(TranscodeError::Finished { job_id, state }),
                    }
                }
                .into_actor(self),
            );
        }
        if let Some(leasing) = &self.leasing {
            return self.cancel_shared(msg, leasing.lease);
        }
        // Out of line first, so no `Pump` can start it while the store is being updated.
        self.dequeue(&msg.job_id, ctx);
        let repo = self.repo.clone();
        let metadata = self.metadata.clone();
        let audit = self.audit.clone();
        let job_id = msg.job_id.clone();
        Box::pin(
            async move {
                let cancelled = blocking(&repo, move |repo| {
                    let Some(mut job) = repo.get_job(&job_id)? else {
                        return Ok(Err(TranscodeError::NotFound(job_id)));
                    };
                    if job.state.is_final() {
                        return Ok(Err(TranscodeError::Finished {
                            job_id,
                            state: job.state,
                        }));
                    }
                    let now = OffsetDateTime::now_utc();
                    job.state = JobState::Cancelled;
                    job.finished_at = Some(now);
                    job.updated_at = now;
                    repo.put_job(&job)?;
                    Ok(Ok(job))
                })
                .await?;
                let event =
                    AuditEvent::ok(action::JOB_CANCEL, msg.caller, Some(msg.job_id.to_string()));
                match &cancelled {
                    Ok(job) => {
                        settle_media(&metadata, job).await;
                        audit.record(event).await;
                        audit.record(outcome_event(job)).await;
                    }
                    Err(TranscodeError::Finished { state, .. }) => {
                        let detail = format!("job {}", state.as_str());
                        audit
                            .record(event.with_outcome(outcome::FAILED, detail))
                            .await;
                    }
                    Err(_) => {}
                }
                cancelled
            }
            .into_actor(self)
            .map(|cancelled, actor, _| {
                actor.publish_gauges();
                cancelled
            }),
        )
    }
}

impl TranscodeActor {
    /// `CancelJob` of a job this node does not run, with leases: through the store, reaching
    /// whichever node runs it.
    fn cancel_shared(
        &mut self,
        msg: CancelJob,
        lease: std::time::Duration,
    ) -> ResponseActFuture<Self, Result<Job, TranscodeError>> {
        let repo = self.repo.clone();
        let metadata = self.metadata.clone();
        let audit = self.audit.clone();
        // The holder sees the request within a heartbeat; a dead holder's lease lapses first.
        let wait = lease * 2 + std::time::Duration::from_secs(10);
        Box::pin(
            async move {
                let (answer, asked) =
                    cancel_through_store(repo, msg.job_id.clone(), msg.caller.clone(), wait)
                        .await?;
                let event =
                    AuditEvent::ok(action::JOB_CANCEL, msg.caller, Some(msg.job_id.to_string()));
                match answer {
                    CancelRequest::Unknown => Err(TranscodeError::NotFound(msg.job_id)),
                    CancelRequest::Cancelled(job) => {
                        settle_media(&metadata, &job).await;
                        audit.record(event).await;
                        audit.record(outcome_event(&job)).await;
                        Ok(job)
                    }
                    // The node that ran it recorded the cancel and its outcome.
                    CancelRequest::Final(job) if asked && job.state == JobState::Cancelled => {
                        Ok(job)
                    }
                    CancelRequest::Final(job) | CancelRequest::Requested(job) => {
                        let detail = format!("job {}", job.state.as_str());
                        audit
                            .record(event.with_outcome(outcome::FAILED, detail))
                            .await;
                        Err(TranscodeError::Finished {
                            job_id: job.id,
                            state: job.state,
                        })
                    }
                }
            }
            .into_actor(self)
            .map(|cancelled, actor, _| {
                actor.publish_gauges();
                cancelled
            }),
        )
    }
}
