//! Media records: list, get, edit, delete.

use actix_web::{web, HttpResponse};
use streamgate_actors::{
    metadata::{DeleteMedia, GetMedia, ListMedia, UpdateMedia},
    model::MediaId,
    Actors,
};

use super::media_id;
use crate::{
    dto::{parse_cursor, MediaDto, Page, PageQuery, UpdateMediaBody},
    error::ApiError,
    extract::Admin,
};

const DEFAULT_PAGE: usize = 20;
/// How the audit log names a caller holding the admin token.
const ADMIN: &str = "admin";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/api/v1/media").route(web::get().to(list)))
        .service(
            web::resource("/api/v1/media/{media_id}")
                .route(web::get().to(get))
                .route(web::patch().to(update))
                .route(web::delete().to(delete)),
        );
}

async fn list(
    query: web::Query<PageQuery>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let after = parse_cursor(query.cursor.as_deref(), MediaId::parse)?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, 100);
    let items = actors.metadata.send(ListMedia { after, limit }).await??;
    Ok(HttpResponse::Ok().json(Page::of(
        &items,
        limit,
        |media| media.id.to_string(),
        |media| MediaDto::from(media),
    )))
}

async fn get(path: web::Path<String>, actors: web::Data<Actors>) -> Result<HttpResponse, ApiError> {
    let media_id = media_id(&path)?;
    let media = actors.metadata.send(GetMedia { media_id }).await??;
    Ok(HttpResponse::Ok().json(MediaDto::from(&media)))
}

/// Edits need the admin token until wallet sessions land: writes fail closed.
async fn update(
    _admin: Admin,
    path: web::Path<String>,
    body: web::Json<UpdateMediaBody>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let media_id = media_id(&path)?;
    let body = body.into_inner();
    let media = actors
        .metadata
        .send(UpdateMedia {
            media_id,
            title: body.title,
            description: body.description,
            tags: body.tags,
            caller: ADMIN.to_string(),
        })
        .await??;
    Ok(HttpResponse::Ok().json(MediaDto::from(&media)))
}

async fn delete(
    _admin: Admin,
    path: web::Path<String>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let media_id = media_id(&path)?;
    actors
        .metadata
        .send(DeleteMedia {
            media_id,
            caller: ADMIN.to_string(),
        })
        .await??;
    Ok(HttpResponse::NoContent().finish())
}
