//! The transcode domain: a durable job queue and its ffmpeg worker pool.
//!
//! - `actor` — `TranscodeActor`: the queue (priority, `run_at`, retries with backoff),
//!   bounded concurrency, recovery at start-up; `actor/submit.rs` submit and cancel,
//!   `actor/queries.rs` get, list, stats, profiles.
//! - `worker` — one job run off the actor's context: transcode, thumbnail or cleanup.
//! - [`ffmpeg`] — ffprobe, the one-decode ladder command, progress, `KillSwitch`, strays.
//! - [`dash`] — the DASH manifest over the ladder's CMAF segments.
//! - [`cleanup`] — the cleanup job's sweep.
//!
//! This file holds the messages and the error type.

mod actor;
pub mod cleanup;
pub mod dash;
pub mod ffmpeg;
mod progressive;
mod worker;

use actix::Message;
use time::OffsetDateTime;

pub use self::actor::{Leasing, TranscodeActor, TranscodeDeps};
use crate::{
    config::Rung,
    error::{DomainError, ErrorKind},
    model::{Job, JobId, JobKind, JobState, MediaId},
    store::StoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    #[error("job {0} not found")]
    NotFound(JobId),
    #[error("{0}")]
    Invalid(String),
    #[error("media {0} not found")]
    UnknownMedia(MediaId),
    #[error("job {0} for this media is still queued or running")]
    Busy(JobId),
    #[error("job {job_id} already {}", state.as_str())]
    Finished { job_id: JobId, state: JobState },
    #[error("the transcode service restarted while the request waited")]
    Interrupted,
    #[error(
        "this wallet already has {limit} transcode jobs queued or running; wait for them to finish"
    )]
    OwnerBusy { limit: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DomainError for TranscodeError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Invalid(_) | Self::UnknownMedia(_) => ErrorKind::Invalid,
            Self::Busy(_) | Self::Finished { .. } => ErrorKind::Conflict,
            Self::OwnerBusy { .. } => ErrorKind::TooManyRequests,
            Self::Interrupted | Self::Store(_) => ErrorKind::Unavailable,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "job_not_found",
            Self::Invalid(_) => "invalid_job",
            Self::UnknownMedia(_) => "unknown_media",
            Self::Busy(_) => "job_already_active",
            Self::Finished { .. } => "job_finished",
            Self::Interrupted => "transcode_restarting",
            Self::OwnerBusy { .. } => "too_many_active_jobs",
            Self::Store(_) => "store_unavailable",
        }
    }
}

/// Queues a job for one media item at once (what a finished upload does); the reply comes once
/// the job is durable.
#[derive(Debug, Message)]
#[rtype(result = "Result<Job, TranscodeError>")]
pub struct SubmitJob {
    pub kind: JobKind,
    pub media_id: MediaId,
    pub priority: u8,
    /// Who submitted it, for the audit log.
    pub caller: String,
    /// W3C trace id of the request behind it.
    pub trace_id: Option<String>,
    /// Refuse it when the media's owner already has `transcode.max_active_jobs_per_owner`
    /// jobs queued or running (an upload; not an admin's job or a finishing tus upload, which
    /// was accepted before).
    pub owner_cap: bool,
}

/// Queues a job with every option of the jobs API; the reply comes once the job is durable.
#[derive(Debug, Message)]
#[rtype(result = "Result<Job, TranscodeError>")]
pub struct ScheduleJob {
    pub kind: JobKind,
    /// Required for `transcode` and `thumbnail`, refused for `cleanup`.
    pub media_id: Option<MediaId>,
    /// Ladder rung names (transcode only); empty means the whole ladder.
    pub profiles: Vec<String>,
    /// 0 (lowest) to 9 (highest).
    pub priority: u8,
    /// Not before this time; `None` means now.
    pub run_at: Option<OffsetDateTime>,
    pub caller: String,
    /// W3C trace id of the request behind it.
    pub trace_id: Option<String>,
    /// See [`SubmitJob::owner_cap`].
    pub owner_cap: bool,
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
    pub media_id: Option<MediaId>,
    /// Only jobs of media this wallet owns; `None` for every job (the admin).
    pub owner: Option<String>,
    pub after: Option<JobId>,
    pub limit: usize,
}

/// Cancels a queued or running job. A running job's ffmpeg is killed and its partial output
/// removed before the reply, which carries the job in its final state.
#[derive(Debug, Message)]
#[rtype(result = "Result<Job, TranscodeError>")]
pub struct CancelJob {
    pub job_id: JobId,
    pub caller: String,
}

/// Refuses with `OwnerBusy` when `owner` already has the most jobs queued or running that
/// `transcode.max_active_jobs_per_owner` allows: asked before a resumable upload starts, so a
/// wallet at its cap is told before it sends any bytes.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), TranscodeError>")]
pub struct CheckOwnerCapacity {
    pub owner: String,
}

/// Worker pool and job counts.
#[derive(Debug, Message)]
#[rtype(result = "Result<JobStats, TranscodeError>")]
pub struct GetJobStats;

#[derive(Debug, Clone, PartialEq)]
pub struct JobStats {
    pub workers: usize,
    pub busy: usize,
    pub idle: usize,
    /// Waiting for a worker now.
    pub queued: usize,
    /// Waiting for their `run_at` (scheduled jobs and retries in backoff).
    pub scheduled: usize,
    /// Jobs that ran to an end: succeeded + failed.
    pub processed: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    /// Mean wall time of the last attempt of succeeded jobs.
    pub mean_duration_s: Option<f64>,
}

/// The configured ladder and encoder settings.
#[derive(Debug, Message)]
#[rtype(result = "TranscodeProfiles")]
pub struct ListProfiles;

#[derive(Debug, Clone)]
pub struct TranscodeProfiles {
    pub ladder: Vec<Rung>,
    pub segment_seconds: u32,
    pub audio_bitrate_kbps: u32,
    pub x264_preset: String,
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
