//! Jobs: submit, list, get, cancel, stats, and the transcode profiles.
//!
//! Submitting and cancelling need the admin token (they start or stop work on anyone's media).
//! Reading needs a session: a wallet sees the jobs of its own media, the admin every job; a job
//! of someone else's media is a 404, so its existence does not leak.

use actix_web::{http::header, web, HttpResponse};
use serde::{Deserialize, Serialize};
use streamgate_actors::{
    metadata::GetMedia,
    model::{Job, JobId, JobKind, JobState, MediaId},
    transcode::{
        CancelJob, GetJob, GetJobStats, JobStats, ListJobs, ListProfiles, ScheduleJob,
        TranscodeProfiles,
    },
    Actors,
};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use crate::{
    dto::{parse_cursor, JobDto, JobsQuery, MediaDto, Page},
    error::ApiError,
    extract::{Admin, Authenticated},
};

const DEFAULT_PAGE: usize = 20;
const DEFAULT_PRIORITY: u8 = 5;
/// How the audit log names a caller holding the admin token.
const ADMIN: &str = "admin";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SubmitJobBody {
    kind: String,
    media_id: Option<String>,
    profiles: Option<Vec<String>>,
    /// 0 (lowest) to 9 (highest); 5 when absent.
    priority: Option<i64>,
    /// RFC 3339; the job waits until then.
    run_at: Option<String>,
}

pub(super) async fn submit(
    _: Admin,
    body: web::Json<SubmitJobBody>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let kind = JobKind::parse(&body.kind).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_kind",
            "kind must be transcode, thumbnail or cleanup",
        )
    })?;
    let media_id = body
        .media_id
        .as_deref()
        .map(|text| {
            MediaId::parse(text).ok_or_else(|| {
                ApiError::bad_request("unknown_media", format!("media {text} not found"))
            })
        })
        .transpose()?;
    let priority = match body.priority {
        None => DEFAULT_PRIORITY,
        Some(value) => u8::try_from(value)
            .ok()
            .filter(|priority| *priority <= 9)
            .ok_or_else(|| ApiError::bad_request("invalid_priority", "priority must be 0..9"))?,
    };
    let run_at = body
        .run_at
        .as_deref()
        .map(|text| {
            OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
                ApiError::bad_request("invalid_run_at", "run_at must be an RFC 3339 time")
            })
        })
        .transpose()?;
    let job = actors
        .transcode
        .send(ScheduleJob {
            kind,
            media_id,
            profiles: body.profiles.unwrap_or_default(),
            priority,
            run_at,
            caller: ADMIN.to_string(),
            trace_id: crate::extract::trace_id(),
            owner_cap: false,
        })
        .await??;
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/api/v1/jobs/{}", job.id)))
        .json(JobDto::from(&job)))
}

pub(super) async fn list(
    Authenticated(principal): Authenticated,
    query: web::Query<JobsQuery>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let state = query.state.as_deref().map(parse_state).transpose()?;
    let media_id = query
        .media_id
        .as_deref()
        .map(|text| {
            MediaId::parse(text).ok_or_else(|| {
                ApiError::bad_request("invalid_media_id", "media_id must be a media id")
            })
        })
        .transpose()?;
    let after = parse_cursor(query.cursor.as_deref(), JobId::parse)?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, 100);
    let items = actors
        .transcode
        .send(ListJobs {
            state,
            media_id,
            owner: principal.wallet().map(str::to_string),
            after,
            limit,
        })
        .await??;
    let mut page = Page::of(
        &items,
        limit,
        |job| job.id.to_string(),
        |job| JobDto::from(job),
    );
    for (dto, job) in page.items.iter_mut().zip(&items) {
        dto.media_playable = media_playable(&actors, job).await;
    }
    Ok(HttpResponse::Ok().json(page))
}

/// Whether a transcode job's media plays already: from the record cache, else its actor.
async fn media_playable(actors: &Actors, job: &Job) -> Option<bool> {
    let media_id = job
        .media_id
        .clone()
        .filter(|_| job.kind == JobKind::Transcode)?;
    let media = match actors.caches.metadata.get(&media_id) {
        Some(cached) => cached.media.clone(),
        None => actors
            .metadata
            .send(GetMedia { media_id })
            .await
            .ok()?
            .ok()?,
    };
    Some(MediaDto::from(&media).playable)
}

pub(super) async fn get(
    Authenticated(principal): Authenticated,
    path: web::Path<String>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let job_id = job_id(&path)?;
    let job = actors.transcode.send(GetJob { job_id }).await??;
    if let Some(wallet) = principal.wallet() {
        if job.owner.as_deref() != Some(wallet) {
            return Err(ApiError::not_found(
                "job_not_found",
                format!("job {} not found", job.id),
            ));
        }
    }
    let mut dto = JobDto::from(&job);
    dto.media_playable = media_playable(&actors, &job).await;
    Ok(HttpResponse::Ok().json(dto))
}

pub(super) async fn cancel(
    _: Admin,
    path: web::Path<String>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let job_id = job_id(&path)?;
    let job = actors
        .transcode
        .send(CancelJob {
            job_id,
            caller: ADMIN.to_string(),
        })
        .await??;
    Ok(HttpResponse::Ok().json(JobDto::from(&job)))
}

#[derive(Serialize)]
struct WorkersDto {
    total: usize,
    busy: usize,
    idle: usize,
}

#[derive(Serialize)]
struct JobStatsDto {
    workers: WorkersDto,
    queued: usize,
    scheduled: usize,
    processed: u64,
    succeeded: u64,
    failed: u64,
    cancelled: u64,
    mean_duration_s: Option<f64>,
}

impl From<JobStats> for JobStatsDto {
    fn from(stats: JobStats) -> Self {
        Self {
            workers: WorkersDto {
                total: stats.workers,
                busy: stats.busy,
                idle: stats.idle,
            },
            queued: stats.queued,
            scheduled: stats.scheduled,
            processed: stats.processed,
            succeeded: stats.succeeded,
            failed: stats.failed,
            cancelled: stats.cancelled,
            mean_duration_s: stats.mean_duration_s,
        }
    }
}

pub(super) async fn stats(
    _: Authenticated,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let stats = actors.transcode.send(GetJobStats).await??;
    Ok(HttpResponse::Ok().json(JobStatsDto::from(stats)))
}

#[derive(Serialize)]
struct ProfileDto {
    name: String,
    height: u32,
    video_bitrate_kbps: u32,
    audio_bitrate_kbps: u32,
    video_codec: &'static str,
    audio_codec: &'static str,
}

#[derive(Serialize)]
struct ProfilesDto {
    profiles: Vec<ProfileDto>,
    segment_seconds: u32,
    container: &'static str,
    x264_preset: String,
}

pub(super) async fn profiles(actors: web::Data<Actors>) -> Result<HttpResponse, ApiError> {
    let TranscodeProfiles {
        ladder,
        segment_seconds,
        audio_bitrate_kbps,
        x264_preset,
    } = actors.transcode.send(ListProfiles).await?;
    Ok(HttpResponse::Ok().json(ProfilesDto {
        profiles: ladder
            .into_iter()
            .map(|rung| ProfileDto {
                name: rung.name,
                height: rung.height,
                video_bitrate_kbps: rung.video_bitrate_kbps,
                audio_bitrate_kbps,
                video_codec: "h264",
                audio_codec: "aac",
            })
            .collect(),
        segment_seconds,
        container: "cmaf",
        x264_preset,
    }))
}

fn job_id(text: &str) -> Result<JobId, ApiError> {
    JobId::parse(text)
        .ok_or_else(|| ApiError::not_found("job_not_found", format!("job {text} not found")))
}

fn parse_state(text: &str) -> Result<JobState, ApiError> {
    JobState::parse(text).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_state",
            "state must be queued, running, succeeded, failed or cancelled",
        )
    })
}
