//! Read-only questions: one job, a page of jobs, stats, the profiles. Answered concurrently; a
//! running job's live progress comes from memory.

use std::collections::HashMap;

use actix::{Handler, ResponseFuture};

use super::TranscodeActor;
use crate::{
    model::{Job, JobId, JobState},
    store::{blocking, JobFilter},
    transcode::{
        CheckOwnerCapacity, GetJob, GetJobStats, JobStats, ListJobs, ListProfiles, TranscodeError,
        TranscodeProfiles,
    },
};

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
            let filter = JobFilter {
                state: msg.state,
                media_id: msg.media_id,
                owner: msg.owner,
                after: msg.after,
                limit: msg.limit.clamp(1, 100),
            };
            let mut jobs = blocking(&repo, move |repo| repo.list_jobs(&filter)).await?;
            for job in &mut jobs {
                if let Some(progress) = live.get(&job.id) {
                    job.progress = *progress;
                }
            }
            Ok(jobs)
        })
    }
}

impl Handler<CheckOwnerCapacity> for TranscodeActor {
    type Result = ResponseFuture<Result<(), TranscodeError>>;

    fn handle(&mut self, msg: CheckOwnerCapacity, _: &mut Self::Context) -> Self::Result {
        let limit = self.config.max_active_jobs_per_owner;
        let repo = self.repo.clone();
        Box::pin(async move {
            let filter = JobFilter {
                owner: Some(msg.owner),
                limit: usize::MAX,
                ..JobFilter::default()
            };
            let jobs = blocking(&repo, move |repo| repo.list_jobs(&filter)).await?;
            let active = jobs.iter().filter(|job| !job.state.is_final()).count();
            if active >= limit {
                return Err(TranscodeError::OwnerBusy { limit });
            }
            Ok(())
        })
    }
}

impl Handler<GetJobStats> for TranscodeActor {
    type Result = ResponseFuture<Result<JobStats, TranscodeError>>;

    fn handle(&mut self, _: GetJobStats, _: &mut Self::Context) -> Self::Result {
        let workers = self.config.workers;
        let busy = self.running.len();
        let (mut queued, mut scheduled) = (self.queue.len(), self.waiting.len());
        // With leases the queue is the shared table, not this node's memory.
        let shared = self.leasing.is_some();
        let repo = self.repo.clone();
        Box::pin(async move {
            let jobs = blocking(&repo, |repo| {
                repo.list_jobs(&JobFilter {
                    limit: usize::MAX,
                    ..JobFilter::default()
                })
            })
            .await?;
            let count = |state: JobState| jobs.iter().filter(|j| j.state == state).count() as u64;
            let durations: Vec<f64> = jobs
                .iter()
                .filter(|job| job.state == JobState::Succeeded)
                .filter_map(|job| Some((job.finished_at? - job.started_at?).as_seconds_f64()))
                .collect();
            let (succeeded, failed) = (count(JobState::Succeeded), count(JobState::Failed));
            if shared {
                let now = time::OffsetDateTime::now_utc();
                let waiting = jobs.iter().filter(|j| j.state == JobState::Queued);
                scheduled = waiting
                    .clone()
                    .filter(|j| j.run_at.is_some_and(|at| at > now))
                    .count();
                queued = waiting.count() - scheduled;
            }
            Ok(JobStats {
                workers,
                busy,
                idle: workers.saturating_sub(busy),
                queued,
                scheduled,
                processed: succeeded + failed,
                succeeded,
                failed,
                cancelled: count(JobState::Cancelled),
                mean_duration_s: (!durations.is_empty())
                    .then(|| durations.iter().sum::<f64>() / durations.len() as f64),
            })
        })
    }
}

impl Handler<ListProfiles> for TranscodeActor {
    type Result = actix::MessageResult<ListProfiles>;

    fn handle(&mut self, _: ListProfiles, _: &mut Self::Context) -> Self::Result {
        actix::MessageResult(TranscodeProfiles {
            ladder: self.config.ladder.clone(),
            segment_seconds: self.config.segment_seconds,
            audio_bitrate_kbps: self.config.audio_bitrate_kbps,
            x264_preset: self.config.x264_preset.clone(),
        })
    }
}
