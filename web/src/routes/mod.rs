//! Route modules, one per area of the API.

pub mod app;
pub mod audit;
pub mod auth;
pub mod backups;
pub mod cache;
pub mod health;
pub mod jobs;
pub mod media;
pub mod monitor;
pub mod streaming;
pub mod table;
pub mod tus;
pub mod uploads;
pub mod webhooks;

pub use table::{configure, MEDIA_ITEM_SCOPE};

use streamgate_actors::model::MediaId;

use crate::error::ApiError;

/// Parses a media id from the path; a malformed id is as unknown as a missing one.
pub(crate) fn media_id(text: &str) -> Result<MediaId, ApiError> {
    MediaId::parse(text)
        .ok_or_else(|| ApiError::not_found("media_not_found", format!("media {text} not found")))
}
