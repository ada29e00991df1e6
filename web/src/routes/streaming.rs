//! HLS delivery: master and media playlists, CMAF segments, the thumbnail.
//!
//! Playlists are served only for `ready` media (the metadata actor decides). Segments are the
//! hot path: they are read straight from the blob store's read handle, with `Range`, `ETag` and
//! `If-None-Match` handled by actix-files, and never loaded whole into memory.
//!
//! Invariant: every name taken from the path is validated before it becomes part of a blob key.

use actix_files::NamedFile;
use actix_web::{
    http::header::{self, CacheControl, CacheDirective, ContentType},
    web, HttpRequest, HttpResponse,
};
use streamgate_actors::{
    blobs::{BlobError, BlobStore},
    metadata::GetMedia,
    model::{MediaId, MediaState},
    names::{is_safe_name, is_segment_name},
    Actors,
};

use super::media_id;
use crate::error::ApiError;

const PLAYLIST_MAX_AGE_S: u32 = 10;
const ONE_YEAR_S: u32 = 31_536_000;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/api/v1/media/{media_id}/hls/master.m3u8").route(web::get().to(master)),
    )
    .service(
        web::resource("/api/v1/media/{media_id}/hls/{rendition}/index.m3u8")
            .route(web::get().to(rendition_playlist)),
    )
    .service(
        web::resource("/api/v1/media/{media_id}/hls/{rendition}/{segment}")
            .route(web::get().to(segment)),
    )
    .service(
        web::resource("/api/v1/media/{media_id}/thumbnail.jpg").route(web::get().to(thumbnail)),
    )
    .service(
        web::resource("/api/v1/media/{media_id}/dash/manifest.mpd")
            .route(web::get().to(dash_manifest)),
    );
}

/// The DASH manifest: it points at the same CMAF segments as the HLS playlists
/// (`../hls/{rendition}/{segment}`), so segment delivery is shared.
async fn dash_manifest(
    path: web::Path<String>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let media_id = ready_media(&actors, &path).await?;
    let key = streamgate_actors::transcode::dash::manifest_key(&media_id);
    let mut response = playlist(&actors, &key).await?;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/dash+xml"),
    );
    Ok(response)
}

async fn master(
    path: web::Path<String>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let media_id = ready_media(&actors, &path).await?;
    playlist(&actors, &BlobStore::hls_key(&media_id, "master.m3u8")).await
}

async fn rendition_playlist(
    path: web::Path<(String, String)>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let (media_id, rendition) = path.into_inner();
    let media_id = ready_media(&actors, &media_id).await?;
    if !is_safe_name(&rendition) {
        return Err(not_found_name(&rendition));
    }
    playlist(
        &actors,
        &BlobStore::hls_key(&media_id, &format!("{rendition}/index.m3u8")),
    )
    .await
}

async fn segment(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let (media_id, rendition, segment) = path.into_inner();
    let media_id = super::media_id(&media_id)?;
    if !is_safe_name(&rendition) {
        return Err(not_found_name(&rendition));
    }
    if !is_segment_name(&segment) {
        return Err(not_found_name(&segment));
    }
    let key = BlobStore::hls_key(&media_id, &format!("{rendition}/{segment}"));
    let content_type = if segment.ends_with(".ts") {
        "video/mp2t"
    } else if segment.ends_with(".m4s") {
        "video/iso.segment"
    } else {
        "video/mp4"
    };
    serve_blob(&req, &actors, &key, content_type, immutable()).await
}

async fn thumbnail(
    req: HttpRequest,
    path: web::Path<String>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let media_id = media_id(&path)?;
    let key = format!("{}/thumbnail.jpg", BlobStore::media_prefix(&media_id));
    serve_blob(
        &req,
        &actors,
        &key,
        "image/jpeg",
        CacheControl(vec![CacheDirective::Public, CacheDirective::MaxAge(3600)]),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn immutable() -> CacheControl {
    CacheControl(vec![
        CacheDirective::Public,
        CacheDirective::MaxAge(ONE_YEAR_S),
        CacheDirective::Extension("immutable".into(), None),
    ])
}

fn not_found_name(name: &str) -> ApiError {
    ApiError::not_found(
        "segment_not_found",
        format!("no such rendition or segment: {name:?}"),
    )
}

/// The media id, if that media exists and is ready to play.
async fn ready_media(actors: &Actors, text: &str) -> Result<MediaId, ApiError> {
    let media_id = media_id(text)?;
    let media = actors.metadata.send(GetMedia { media_id }).await??;
    if media.state != MediaState::Ready {
        return Err(ApiError::new(
            actix_web::http::StatusCode::CONFLICT,
            "media_not_ready",
            format!(
                "media {} is {}; playlists exist once it is ready",
                media.id,
                media.state.as_str()
            ),
        ));
    }
    Ok(media.id)
}

/// Maps a missing blob to a 404 with `code`; other blob errors keep their kind.
fn missing_as(code: &'static str) -> impl Fn(BlobError) -> ApiError {
    move |error| match error {
        BlobError::NotFound(_) => ApiError::not_found(code, "no such file"),
        other => ApiError::domain(&other),
    }
}

async fn playlist(actors: &Actors, key: &str) -> Result<HttpResponse, ApiError> {
    let bytes = actors
        .blobs
        .get(key)
        .await
        .map_err(missing_as("playlist_not_found"))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/vnd.apple.mpegurl"))
        .insert_header(CacheControl(vec![
            CacheDirective::Public,
            CacheDirective::MaxAge(PLAYLIST_MAX_AGE_S),
        ]))
        .body(bytes))
}

/// Streams a blob: from disk with ranges and ETags on the local backend, else whole.
async fn serve_blob(
    req: &HttpRequest,
    actors: &Actors,
    key: &str,
    content_type: &str,
    cache: CacheControl,
) -> Result<HttpResponse, ApiError> {
    let mime: mime::Mime = content_type
        .parse()
        .unwrap_or(mime::APPLICATION_OCTET_STREAM);
    if let Some(path) = actors.blobs.local_path(key) {
        let file = NamedFile::open_async(&path)
            .await
            .map_err(|_| ApiError::not_found("segment_not_found", "no such segment"))?;
        let mut response = file
            .set_content_type(mime)
            .disable_content_disposition()
            .use_last_modified(true)
            .into_response(req);
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_str(&cache.to_string())
                .unwrap_or(header::HeaderValue::from_static("no-cache")),
        );
        return Ok(response);
    }
    let bytes = actors.blobs.get(key).await.map_err(|error| match error {
        streamgate_actors::blobs::BlobError::NotFound(_) => {
            ApiError::not_found("segment_not_found", "no such segment")
        }
        other => ApiError::domain(&other),
    })?;
    Ok(HttpResponse::Ok()
        .insert_header(ContentType(mime))
        .insert_header(cache)
        .body(bytes))
}
