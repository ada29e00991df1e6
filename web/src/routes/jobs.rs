//! Transcode jobs: list and get.

use actix_web::{web, HttpResponse};
use streamgate_actors::{
    model::{JobId, JobState},
    transcode::{GetJob, ListJobs},
    Actors,
};

use crate::{
    dto::{parse_cursor, JobDto, JobsQuery, Page},
    error::ApiError,
};

const DEFAULT_PAGE: usize = 20;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/api/v1/jobs").route(web::get().to(list)))
        .service(web::resource("/api/v1/jobs/{job_id}").route(web::get().to(get)));
}

async fn list(
    query: web::Query<JobsQuery>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let state = query.state.as_deref().map(parse_state).transpose()?;
    let after = parse_cursor(query.cursor.as_deref(), JobId::parse)?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, 100);
    let items = actors
        .transcode
        .send(ListJobs {
            state,
            after,
            limit,
        })
        .await??;
    Ok(HttpResponse::Ok().json(Page::of(
        &items,
        limit,
        |job| job.id.to_string(),
        |job| JobDto::from(job),
    )))
}

async fn get(path: web::Path<String>, actors: web::Data<Actors>) -> Result<HttpResponse, ApiError> {
    let job_id = JobId::parse(&path)
        .ok_or_else(|| ApiError::not_found("job_not_found", format!("job {path} not found")))?;
    let job = actors.transcode.send(GetJob { job_id }).await??;
    Ok(HttpResponse::Ok().json(JobDto::from(&job)))
}

fn parse_state(text: &str) -> Result<JobState, ApiError> {
    [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ]
    .into_iter()
    .find(|state| state.as_str() == text)
    .ok_or_else(|| {
        ApiError::bad_request(
            "invalid_state",
            "state must be queued, running, succeeded, failed or cancelled",
        )
    })
}
