//! `POST /api/v1/admin/backups` (admin): the running server snapshots its records and blobs into
//! `backups/<name>` under its data directory; `streamgate backup` calls it and moves the result.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use streamgate_actors::{backup::TakeBackup, Actors};

use crate::{dto::backup::BackupDto, error::ApiError, extract::Admin};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BackupBody {
    /// Copy S3 blobs too (local blobs are always copied).
    #[serde(default)]
    with_blobs: bool,
}

pub(super) async fn create(
    _: Admin,
    body: web::Json<BackupBody>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let message = TakeBackup {
        with_blobs: body.with_blobs,
    };
    let (name, manifest) = actors.backup.send(message).await??;
    Ok(HttpResponse::Created().json(BackupDto::new(name, &manifest)))
}
