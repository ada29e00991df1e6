//! Retention of finished job records: a job that reached a final state (succeeded, failed,
//! cancelled) more than `transcode.job_retention_days` ago is deleted, unless its media is still
//! uploading or processing (the job history explains what is going on with it). Final states
//! never change again, so deleting one races with no writer. Audit entries and tus records have
//! their own retention (`audit.rs`, `upload/tus/recovery.rs`).

use std::time::Duration;

use prometheus::IntCounter;
use time::OffsetDateTime;

use crate::{
    clock::SharedClock,
    model::{Job, JobState, MediaState},
    store::{blocking, JobFilter, Repo, SharedRepo, StoreError},
};

/// Jobs read per store scan, so a large history is never held in memory at once.
const PAGE: usize = 1000;

fn is_final(state: JobState) -> bool {
    matches!(
        state,
        JobState::Succeeded | JobState::Failed | JobState::Cancelled
    )
}

/// Deletes final jobs that finished before `cutoff` and whose media is not in progress;
/// answers how many went.
pub fn prune_jobs(repo: &dyn Repo, cutoff: OffsetDateTime) -> Result<usize, StoreError> {
    let mut after = None;
    let mut pruned = 0;
    loop {
        let page = repo.list_jobs(&JobFilter {
            after: after.clone(),
            limit: PAGE,
            ..JobFilter::default()
        })?;
        let Some(last) = page.last() else {
            return Ok(pruned);
        };
        after = Some(last.id.clone());
        for job in &page {
            if expired(job, cutoff) && !referenced(repo, job)? && repo.delete_job(&job.id)? {
                pruned += 1;
            }
        }
    }
}

fn expired(job: &Job, cutoff: OffsetDateTime) -> bool {
    is_final(job.state) && job.finished_at.unwrap_or(job.updated_at) < cutoff
}

fn referenced(repo: &dyn Repo, job: &Job) -> Result<bool, StoreError> {
    let Some(media_id) = &job.media_id else {
        return Ok(false);
    };
    Ok(repo
        .get_media(media_id)?
        .is_some_and(|media| matches!(media.state, MediaState::Uploading | MediaState::Processing)))
}

/// Runs [`prune_jobs`] every `every`, with the cutoff `retention` before the clock's now.
/// Must run inside an actix system.
pub fn start(
    repo: SharedRepo,
    clock: SharedClock,
    retention: Duration,
    every: Duration,
    pruned: IntCounter,
) {
    actix::spawn(async move {
        let mut ticks = tokio::time::interval(every.max(Duration::from_secs(1)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let cutoff = clock.now_utc() - retention;
            match blocking(&repo, move |repo| prune_jobs(repo, cutoff)).await {
                Ok(0) => {}
                Ok(removed) => {
                    pruned.inc_by(removed as u64);
                    tracing::info!(removed, "job retention pruned finished jobs");
                }
                Err(error) => tracing::warn!(%error, "job retention failed; retrying later"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{JobId, JobKind, Media},
        store::{JobRepo, MediaRepo, SledStore},
    };

    fn media(state: MediaState) -> Media {
        Media {
            state,
            ..crate::store::tests::media()
        }
    }

    fn job(media: &Media, state: JobState, finished: OffsetDateTime) -> Job {
        Job {
            id: JobId::new(),
            kind: JobKind::Transcode,
            media_id: Some(media.id.clone()),
            profiles: vec![],
            state,
            priority: 5,
            attempts: 1,
            last_error: None,
            error_code: None,
            owner: None,
            progress: 100,
            summary: None,
            run_at: None,
            started_at: None,
            finished_at: is_final(state).then_some(finished),
            trace_id: None,
            created_at: finished,
            updated_at: finished,
            lease: None,
        }
    }

    #[test]
    fn prunes_old_final_jobs_and_keeps_recent_active_and_referenced_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let now = OffsetDateTime::now_utc();
        let old = now - Duration::from_secs(40 * 86_400);
        let ready = media(MediaState::Ready);
        let processing = media(MediaState::Processing);
        store.put_media(&ready).unwrap();
        store.put_media(&processing).unwrap();
        let gone = [
            job(&ready, JobState::Succeeded, old),
            job(&ready, JobState::Failed, old),
            job(&media(MediaState::Ready), JobState::Cancelled, old),
        ];
        let kept = [
            job(&ready, JobState::Succeeded, now),
            job(&ready, JobState::Running, old),
            job(&ready, JobState::Queued, old),
            job(&processing, JobState::Failed, old),
        ];
        for job in gone.iter().chain(&kept) {
            store.put_job(job).unwrap();
        }
        let cutoff = now - Duration::from_secs(30 * 86_400);
        assert_eq!(prune_jobs(&store, cutoff).unwrap(), gone.len());
        for job in &gone {
            assert!(store.get_job(&job.id).unwrap().is_none(), "{job:?}");
        }
        for job in &kept {
            assert!(store.get_job(&job.id).unwrap().is_some(), "{job:?}");
        }
        assert_eq!(prune_jobs(&store, cutoff).unwrap(), 0);
    }
}
