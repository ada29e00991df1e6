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
    blobs::{BlobError, BlobStore, ByteRange},
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
    );
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

/// Streams a blob: from disk through actix-files on the local backend, else through
/// `object_store` (S3) — both with single `Range`s, `ETag` and `If-None-Match`.
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
    serve_from_store(req, actors, key, mime, cache).await
}

/// The non-local path: ranged, conditional reads through `object_store`, streamed.
async fn serve_from_store(
    req: &HttpRequest,
    actors: &Actors,
    key: &str,
    mime: mime::Mime,
    cache: CacheControl,
) -> Result<HttpResponse, ApiError> {
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok())
        .and_then(parse_range);
    let if_none_match = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let read = match actors.blobs.read(key, range.clone(), if_none_match).await {
        Ok(read) => read,
        Err(BlobError::NotFound(_)) => {
            return Err(ApiError::not_found("segment_not_found", "no such segment"))
        }
        Err(BlobError::NotModified(_)) => {
            return Ok(HttpResponse::NotModified().insert_header(cache).finish())
        }
        Err(BlobError::RangeNotSatisfiable(_)) => {
            return Err(ApiError::new(
                actix_web::http::StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                "the requested range is outside the file",
            ))
        }
        Err(other) => return Err(ApiError::domain(&other)),
    };
    let mut response = if range.is_some() {
        let mut partial = HttpResponse::PartialContent();
        partial.insert_header((
            header::CONTENT_RANGE,
            format!(
                "bytes {}-{}/{}",
                read.range.start,
                read.range.end.saturating_sub(1),
                read.size
            ),
        ));
        partial
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header(ContentType(mime))
        .insert_header(cache)
        .insert_header((header::ACCEPT_RANGES, "bytes"));
    if let Some(etag) = &read.etag {
        let quoted = if etag.starts_with('"') || etag.starts_with("W/") {
            etag.clone()
        } else {
            format!("\"{etag}\"")
        };
        response.insert_header((header::ETAG, quoted));
    }
    let length = read.range.end - read.range.start;
    Ok(response.body(actix_web::body::SizedStream::new(length, read.stream)))
}

/// One `bytes=` range; anything else (several ranges, other units) is served whole.
fn parse_range(value: &str) -> Option<ByteRange> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = (start.trim(), end.trim());
    match (start.is_empty(), end.is_empty()) {
        (true, false) => Some(ByteRange::Suffix(end.parse().ok()?)),
        (false, true) => Some(ByteRange::From(start.parse().ok()?)),
        (false, false) => {
            let (start, end): (u64, u64) = (start.parse().ok()?, end.parse().ok()?);
            (end >= start).then(|| ByteRange::Bounded(start..end.saturating_add(1)))
        }
        (true, true) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_like_rfc_9110() {
        assert_eq!(
            parse_range("bytes=10-109"),
            Some(ByteRange::Bounded(10..110))
        );
        assert_eq!(parse_range("bytes=5-"), Some(ByteRange::From(5)));
        assert_eq!(parse_range("bytes=-20"), Some(ByteRange::Suffix(20)));
        assert_eq!(parse_range("bytes=9-3"), None);
        assert_eq!(parse_range("bytes=0-1,5-6"), None);
        assert_eq!(parse_range("items=0-1"), None);
    }
}
