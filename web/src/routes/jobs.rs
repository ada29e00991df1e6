//! Transcode jobs: list and get.

use actix_web::{web, HttpResponse};
use streamgate_actors::{
    model::{JobId, JobState},
    transcode::{GetJob, ListJobs},
    Actors,
};

use crate::{
    dto::{JobDto, JobsQuery, Page},
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
    let after = match query.cursor.as_deref() {
        Some(cursor) => Some(JobId::parse(cursor).ok_or_else(|| {
            ApiError::bad_request("invalid_cursor", "cursor is not one we issued")
        })?),
        None => None,
    };
    let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, 100);
    let items = actors
        .transcode
        .send(ListJobs {
            state,
            after,
            limit,
        })
        .await??;
    let next_cursor = (items.len() == limit)
        .then(|| items.last().map(|job| job.id.to_string()))
        .flatten();
    Ok(HttpResponse::Ok().json(Page {
        items: items.iter().map(JobDto::from).collect(),
        next_cursor,
    }))
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
