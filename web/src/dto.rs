//! The JSON shapes clients see. Model types are never serialised straight to clients.

pub mod audit;
pub mod backup;
pub mod cache;
pub mod monitor;
pub mod webhooks;

use serde::{Deserialize, Serialize};
use streamgate_actors::model::{Job, Media, Rendition};
use time::OffsetDateTime;

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[derive(Serialize)]
pub struct RenditionDto {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub video_bitrate_kbps: u32,
}

impl From<&Rendition> for RenditionDto {
    fn from(rendition: &Rendition) -> Self {
        Self {
            name: rendition.name.clone(),
            width: rendition.width,
            height: rendition.height,
            video_bitrate_kbps: rendition.video_bitrate_kbps,
        }
    }
}

#[derive(Serialize)]
pub struct MediaDto {
    pub id: String,
    pub title: String,
    pub description: String,
    pub tags: Vec<String>,
    pub owner: Option<String>,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// The stable code of `failure`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_code: Option<String>,
    pub filename: Option<String>,
    pub duration_s: Option<f64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub video_codec: Option<String>,
    pub size: u64,
    pub sha256: String,
    pub renditions: Vec<RenditionDto>,
    /// Plays already: `ready`, or `processing` with every rung's first segments out.
    pub playable: bool,
    /// When it first played while its job still ran (absent when it was published at the end).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub playable_at: Option<String>,
    /// Where to play it, once `playable`.
    pub hls_url: Option<String>,
    pub thumbnail_url: Option<String>,
    /// Playback needs a session whose wallet passes the gate (`GET …/gate` for its terms).
    pub gated: bool,
    /// `public`, `unlisted` (not listed, plays by link) or `private` (owner and admins only).
    pub visibility: &'static str,
    /// Languages with a caption track (`…/captions/{lang}`).
    pub captions: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&Media> for MediaDto {
    fn from(media: &Media) -> Self {
        let ready = media.state == streamgate_actors::model::MediaState::Ready;
        let playable = ready
            || (media.state == streamgate_actors::model::MediaState::Processing
                && media.playable_at.is_some());
        Self {
            id: media.id.to_string(),
            title: media.title.clone(),
            description: media.description.clone(),
            tags: media.tags.clone(),
            owner: media.owner.clone(),
            state: media.state.as_str(),
            failure: media.failure.clone(),
            failure_code: media.failure_code.clone(),
            filename: media.filename.clone(),
            duration_s: media.duration_s,
            width: media.width,
            height: media.height,
            video_codec: media.video_codec.clone(),
            size: media.size,
            sha256: media.sha256.clone(),
            renditions: media.renditions.iter().map(RenditionDto::from).collect(),
            playable,
            playable_at: media.playable_at.map(rfc3339),
            hls_url: playable.then(|| format!("/api/v1/media/{}/hls/master.m3u8", media.id)),
            thumbnail_url: ready.then(|| format!("/api/v1/media/{}/thumbnail.jpg", media.id)),
            gated: false,
            visibility: media.visibility.as_str(),
            captions: media.captions.clone(),
            created_at: rfc3339(media.created_at),
            updated_at: rfc3339(media.updated_at),
        }
    }
}

#[derive(Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// A page of `items`; a full page (`limit` items) gets a cursor from its last item.
    pub fn of<M>(
        models: &[M],
        limit: usize,
        id_of: impl Fn(&M) -> String,
        to_dto: impl Fn(&M) -> T,
    ) -> Self {
        let next_cursor = (models.len() == limit)
            .then(|| models.last().map(&id_of))
            .flatten();
        Self {
            items: models.iter().map(to_dto).collect(),
            next_cursor,
        }
    }
}

/// Parses a `cursor` query value with the id type's parser.
pub fn parse_cursor<I>(
    cursor: Option<&str>,
    parse: impl Fn(&str) -> Option<I>,
) -> Result<Option<I>, crate::error::ApiError> {
    cursor
        .map(|text| {
            parse(text).ok_or_else(|| {
                crate::error::ApiError::bad_request("invalid_cursor", "cursor is not one we issued")
            })
        })
        .transpose()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    pub state: Option<String>,
    pub media_id: Option<String>,
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateMediaBody {
    pub title: Option<String>,
    pub description: Option<String>,
    pub tags: Option<Vec<String>>,
    pub visibility: Option<streamgate_actors::model::Visibility>,
}

#[derive(Serialize)]
pub struct UploadReceiptDto {
    pub media_id: String,
    pub upload_id: String,
    pub size: u64,
    pub sha256: String,
    pub media_url: String,
}

#[derive(Serialize)]
pub struct JobDto {
    pub id: String,
    pub kind: &'static str,
    pub media_id: Option<String>,
    /// Ladder rungs asked for; empty means the whole ladder.
    pub profiles: Vec<String>,
    pub state: &'static str,
    pub priority: u8,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// The stable code of `last_error`.
    pub error_code: Option<String>,
    pub progress: u8,
    /// Records on Postgres: the node holding the job's lease (while it runs there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// For a transcode job: whether its media plays already (it can while the job runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_playable: Option<bool>,
    pub summary: Option<String>,
    pub run_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&Job> for JobDto {
    fn from(job: &Job) -> Self {
        Self {
            id: job.id.to_string(),
            kind: job.kind.as_str(),
            media_id: job.media_id.as_ref().map(ToString::to_string),
            profiles: job.profiles.clone(),
            state: job.state.as_str(),
            priority: job.priority,
            attempts: job.attempts,
            last_error: job.last_error.clone(),
            error_code: job.error_code.clone(),
            progress: job.progress,
            node: job.lease.as_ref().map(|lease| lease.node.clone()),
            media_playable: None,
            summary: job.summary.clone(),
            run_at: job.run_at.map(rfc3339),
            started_at: job.started_at.map(rfc3339),
            finished_at: job.finished_at.map(rfc3339),
            created_at: rfc3339(job.created_at),
            updated_at: rfc3339(job.updated_at),
        }
    }
}
