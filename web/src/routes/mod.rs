//! Route modules, one per area of the API.

pub mod audit;
pub mod auth;
pub mod cache;
pub mod health;
pub mod jobs;
pub mod media;
pub mod monitor;
pub mod streaming;
pub mod tus;
pub mod uploads;

use actix_web::web;
use streamgate_actors::model::MediaId;

use crate::error::ApiError;

/// The scope every per-media route lives under ([`media::configure_item`],
/// [`streaming::configure_item`]). One scope instead of full patterns: actix tries resources in
/// order and runs a regex with captures for each dynamic one it tries, so a segment GET used
/// to pay for five of them; under the scope the id is captured once and the rest of the path
/// mostly meets static patterns.
pub const MEDIA_ITEM_SCOPE: &str = "/api/v1/media/{media_id}";

/// Registers the per-media routes under [`MEDIA_ITEM_SCOPE`].
pub fn configure_media_item(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope(MEDIA_ITEM_SCOPE)
            .configure(media::configure_item)
            .configure(streaming::configure_item),
    );
}

/// Parses a media id from the path; a malformed id is as unknown as a missing one.
pub(crate) fn media_id(text: &str) -> Result<MediaId, ApiError> {
    MediaId::parse(text)
        .ok_or_else(|| ApiError::not_found("media_not_found", format!("media {text} not found")))
}
