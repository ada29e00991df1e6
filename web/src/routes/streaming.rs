//! HLS delivery: master and media playlists, CMAF segments, the thumbnail.
//!
//! Playlists are served only for `ready` media. The record comes from the metadata cache (the
//! MetadataActor answers a miss and fills it) and the playlist bytes from the streaming cache
//! (filled from the blob read handle), so a cached playlist never waits on an actor. Public
//! playlists carry a strong `ETag` (304 on `If-None-Match`) and a short `max-age`.
//! Segments are the hot path: local files are mapped and sent in chunks sized by the shared
//! [`SendBudget`]; other backends are streamed from `object_store`. Both answer single
//! `Range`s (206/416), `ETag` and `If-None-Match` here, never loading a file whole into memory.
//! A `Range` with several ranges is answered with the first one (as actix-files does).
//!
//! Invariant: every name taken from the path is validated before it becomes part of a blob key.
//!
//! Gated media (see `PUT /api/v1/media/{id}/gate`): a playlist is served only to a session
//! whose wallet passes the gate (the AuthActor decides, and its decision is remembered per
//! session and media in the `PlaybackGuard`'s grants, so a repeat GET needs no message), or
//! with a playback token it minted; every URI inside a served playlist carries that token
//! (`?token=`), so stock HLS players fetch segments without custom headers. The tokenised
//! playlist bytes are cached by (media, file, token), looked up only after the gate table and
//! the token or grant were checked for this request. Segments of gated media need a valid
//! token for that media, whose session is still live and whose gate is still the media's
//! (checked in the `PlaybackGuard`, in memory); ungated segments never touch an actor (one
//! read of the gate table)
//! and stay `public, immutable`. Gated responses are `private, no-store`.
//! The thumbnail of gated media is gated the same way as its playlists.
//! Invariant: fails closed — an unreadable gate table, a failed RPC or a bad token refuse.

use std::{sync::Arc, time::SystemTime};

use actix_web::{
    http::{
        header::{self, HeaderValue},
        StatusCode,
    },
    web, HttpMessage, HttpRequest, HttpResponse,
};
use bytes::Bytes;
use serde::Deserialize;
use streamgate_actors::{
    audit::{action, outcome, AuditEvent},
    auth::{tokens::PlaybackTokenError, AuthorizeSessionPlayback, SessionDigest},
    blob_names::{is_safe_name, is_segment_name},
    blobs::{Access as BlobAccess, BlobError, BlobStore, ByteRange, MappedBlob},
    cache::{CachedMedia, Playlist},
    metadata::{caption_key, GetMedia, MetadataError},
    model::{Media, MediaId, MediaState, Visibility},
    Actors,
};

use super::{media::gate_table_error, media_id};
use crate::{
    error::ApiError,
    extract::{bearer_str, caller},
    send_budget::SendBudget,
    serve::{FileBody, SendsFiles, SentByFront},
};

// Cache-Control values, spelled out once: no directive list is built or formatted per response.
const PLAYLIST_CACHE: HeaderValue = HeaderValue::from_static("public, max-age=10");
/// A playlist that still grows: a cache may keep it a second, and revalidates by ETag.
const GROWING_PLAYLIST_CACHE: HeaderValue = HeaderValue::from_static("public, max-age=1");
const UNLISTED_GROWING_PLAYLIST_CACHE: HeaderValue = HeaderValue::from_static("private, max-age=1");
const SEGMENT_CACHE: HeaderValue = HeaderValue::from_static("public, max-age=31536000, immutable");
const THUMBNAIL_CACHE: HeaderValue = HeaderValue::from_static("public, max-age=3600");
const PRIVATE_NO_STORE: HeaderValue = HeaderValue::from_static("private, no-store");
// Unlisted media: browsers may keep them, shared caches (CDNs) may not.
const UNLISTED_PLAYLIST_CACHE: HeaderValue = HeaderValue::from_static("private, max-age=10");
const UNLISTED_SEGMENT_CACHE: HeaderValue =
    HeaderValue::from_static("private, max-age=31536000, immutable");
const UNLISTED_THUMBNAIL_CACHE: HeaderValue = HeaderValue::from_static("private, max-age=3600");
// Captions can be replaced, so they are never immutable.
const CAPTION_CACHE: HeaderValue = HeaderValue::from_static("public, max-age=60");
const UNLISTED_CAPTION_CACHE: HeaderValue = HeaderValue::from_static("private, max-age=60");

/// `?token=`: the playback token of a gated media item.
#[derive(Deserialize)]
pub(super) struct PlaybackQuery {
    token: Option<String>,
}

/// How a playlist or segment may be served.
enum Access {
    /// Anyone may play it; `shared`: shared caches may keep it too (public, not unlisted).
    Public { shared: bool },
    /// Gated or private, and this token (for this media) goes into every URI we hand out, under
    /// the version directory `version` (the media's access epoch): URLs no public cache saw.
    Gated { token: Arc<str>, version: u64 },
}

/// A private media item refused to this caller: the answer a missing one gets.
fn hidden(media_id: &MediaId) -> ApiError {
    ApiError::domain(&MetadataError::NotFound(media_id.clone()))
}

/// Whether a media is private, per the guard's table (fails closed).
fn is_private(actors: &Actors, media_id: &MediaId) -> Result<(Visibility, bool), ApiError> {
    let (visibility, _) = actors
        .playback
        .visibility(media_id)
        .map_err(|_| gate_table_error())?;
    Ok((visibility, visibility == Visibility::Private))
}

/// The version directory of restricted media's URLs, e.g. `v18f3a…`.
fn version_dir(version: u64) -> String {
    format!("v{version:x}")
}

/// Whether `text` names the media's current version; anything else is not found.
fn check_version(actors: &Actors, media_id: &MediaId, text: &str) -> Result<(), ApiError> {
    let current = actors
        .playback
        .access_epoch(media_id)
        .map_err(|_| gate_table_error())?;
    if current == 0 || text != version_dir(current) {
        return Err(not_found_name(text));
    }
    Ok(())
}

pub(super) async fn master(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<PlaybackQuery>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let cached = ready_media(&actors, &path).await?;
    let media = &cached.media;
    let access = playlist_access(&req, &actors, media, query.token.as_deref()).await?;
    let growth = ensure_playable(media)?;
    let captions = (!media.captions.is_empty()).then_some(media);
    playlist(
        &req,
        &actors,
        &media.id,
        "master.m3u8",
        &access,
        captions,
        growth,
    )
    .await
}

/// Ready media with caption track `lang`, and the viewer's access to it: captions follow the
/// media's gate and visibility.
async fn caption_access(
    req: &HttpRequest,
    actors: &Actors,
    media_id: &str,
    lang: &str,
    query: &PlaybackQuery,
) -> Result<(Arc<CachedMedia>, Access), ApiError> {
    let cached = ready_media(actors, media_id).await?;
    let media = &cached.media;
    let access = playlist_access(req, actors, media, query.token.as_deref()).await?;
    ensure_ready(media)?;
    if !media.captions.iter().any(|track| track == lang) {
        return Err(ApiError::domain(&MetadataError::CaptionNotFound(
            media.id.clone(),
            lang.to_string(),
        )));
    }
    Ok((cached, access))
}

/// A caption track's WebVTT file.
pub(super) async fn caption(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<PlaybackQuery>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let (media_id, lang) = path.into_inner();
    let (cached, access) = caption_access(&req, &actors, &media_id, &lang, &query).await?;
    let media = &cached.media;
    let cache = match access {
        Access::Public { shared: true } => CAPTION_CACHE,
        Access::Public { shared: false } => UNLISTED_CAPTION_CACHE,
        Access::Gated { .. } => PRIVATE_NO_STORE,
    };
    let key = caption_key(&media.id, &lang);
    serve_blob(&req, &actors, &key, "text/vtt", cache).await
}

/// The HLS subtitle playlist of a caption track: the whole WebVTT file as one segment.
pub(super) async fn caption_playlist(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<PlaybackQuery>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let (media_id, lang) = path.into_inner();
    let (cached, access) = caption_access(&req, &actors, &media_id, &lang, &query).await?;
    let media = &cached.media;
    let (cache, token) = match &access {
        Access::Public { shared: true } => (PLAYLIST_CACHE, None),
        Access::Public { shared: false } => (UNLISTED_PLAYLIST_CACHE, None),
        Access::Gated { token, .. } => (PRIVATE_NO_STORE, Some(&**token)),
    };
    let duration = media.duration_s.unwrap_or(1.0).max(0.001);
    let body = format!(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{}\n#EXT-X-MEDIA-SEQUENCE:0\n\
         #EXT-X-PLAYLIST-TYPE:VOD\n#EXTINF:{duration:.3},\n{}\n#EXT-X-ENDLIST\n",
        duration.ceil() as u64,
        caption_url(&media.id, &lang, token)
    );
    Ok(HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/vnd.apple.mpegurl"),
        ))
        .insert_header((header::CACHE_CONTROL, cache))
        .body(body))
}

/// The absolute path of a caption file, with the viewer's token for restricted media. It ends
/// in `.vtt`: players (ffmpeg among them) pick segment types by extension.
fn caption_url(media_id: &MediaId, lang: &str, token: Option<&str>) -> String {
    match token {
        Some(token) => {
            format!("/api/v1/media/{media_id}/captions/{lang}/captions.vtt?token={token}")
        }
        None => format!("/api/v1/media/{media_id}/captions/{lang}/captions.vtt"),
    }
}

/// Adds a SUBTITLES group with the media's caption tracks to a master playlist, and names it
/// on every variant. Absolute URIs: they are not under the (possibly versioned) HLS directory.
fn with_captions(master: &str, media: &Media, token: Option<&str>) -> String {
    let mut out = String::with_capacity(master.len() + 256 * media.captions.len());
    let mut added = false;
    for line in master.lines() {
        if line.starts_with("#EXT-X-STREAM-INF:") {
            if !added {
                for lang in &media.captions {
                    let playlist = match token {
                        Some(token) => format!(
                            "/api/v1/media/{}/captions/{lang}/index.m3u8?token={token}",
                            media.id
                        ),
                        None => format!("/api/v1/media/{}/captions/{lang}/index.m3u8", media.id),
                    };
                    out.push_str(&format!(
                        "#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID=\"subs\",NAME=\"{lang}\",\
                         LANGUAGE=\"{lang}\",AUTOSELECT=YES,DEFAULT=NO,URI=\"{playlist}\"\n"
                    ));
                }
                added = true;
            }
            out.push_str(line);
            out.push_str(",SUBTITLES=\"subs\"\n");
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Adds a text AdaptationSet per caption track to a DASH manifest.
fn mpd_with_captions(mpd: &str, media: &Media, token: Option<&str>) -> String {
    let Some(end) = mpd.rfind("</Period>") else {
        return mpd.to_string();
    };
    let mut sets = String::new();
    for lang in &media.captions {
        sets.push_str(&format!(
            "<AdaptationSet contentType=\"text\" mimeType=\"text/vtt\" lang=\"{lang}\">\
             <Representation id=\"caption-{lang}\" bandwidth=\"256\"><BaseURL>{}</BaseURL>\
             </Representation></AdaptationSet>",
            caption_url(&media.id, lang, token)
        ));
    }
    format!("{}{sets}{}", &mpd[..end], &mpd[end..])
}

/// The DASH manifest: it points at the same CMAF segments as the HLS playlists
/// (`../hls/{rendition}/{segment}`), so segment delivery — and its gate check — is shared.
pub(super) async fn dash_manifest(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<PlaybackQuery>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let cached = ready_media(&actors, &path).await?;
    let media = &cached.media;
    let access = playlist_access(&req, &actors, media, query.token.as_deref()).await?;
    ensure_ready(media)?;
    let key = streamgate_actors::transcode::dash::manifest_key(&media.id);
    let bytes = actors
        .blobs
        .get(&key)
        .await
        .map_err(missing_as("manifest_not_found"))?;
    let mut response = HttpResponse::Ok();
    response.insert_header((header::CONTENT_TYPE, "application/dash+xml"));
    match access {
        Access::Public { shared } => {
            let body = match media.captions.is_empty() {
                true => bytes,
                false => Bytes::from(mpd_with_captions(
                    &String::from_utf8_lossy(&bytes),
                    media,
                    None,
                )),
            };
            Ok(response
                .insert_header((
                    header::CACHE_CONTROL,
                    if shared {
                        PLAYLIST_CACHE
                    } else {
                        UNLISTED_PLAYLIST_CACHE
                    },
                ))
                .body(body))
        }
        Access::Gated { token, version } => {
            let text = String::from_utf8_lossy(&bytes)
                .replace("\"../hls/", &format!("\"../hls/{}/", version_dir(version)));
            let text = mpd_with_token(&text, &token);
            Ok(response
                .insert_header((header::CACHE_CONTROL, PRIVATE_NO_STORE))
                .body(mpd_with_captions(&text, media, Some(&token))))
        }
    }
}

/// Adds `token=` to every segment reference of a DASH manifest (`sourceURL`, `media`).
fn mpd_with_token(mpd: &str, token: &str) -> String {
    let mut out = mpd.to_string();
    for attribute in ["sourceURL=\"", "media=\""] {
        let mut rewritten = String::with_capacity(out.len() + 64);
        let mut rest = out.as_str();
        while let Some(start) = rest.find(attribute) {
            let value_start = start + attribute.len();
            let Some(length) = rest[value_start..].find('"') else {
                break;
            };
            let value = &rest[value_start..value_start + length];
            let separator = if value.contains('?') { "&amp;" } else { "?" };
            rewritten.push_str(&rest[..value_start + length]);
            rewritten.push_str(&format!("{separator}token={token}"));
            rest = &rest[value_start + length..];
        }
        rewritten.push_str(rest);
        out = rewritten;
    }
    out
}

pub(super) async fn rendition_playlist(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<PlaybackQuery>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let (media_id, rendition) = path.into_inner();
    serve_rendition_playlist(
        &req,
        &actors,
        &media_id,
        None,
        &rendition,
        query.token.as_deref(),
    )
    .await
}

/// A rendition playlist of restricted media under its version directory.
pub(super) async fn versioned_rendition_playlist(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    query: web::Query<PlaybackQuery>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let (media_id, version, rendition) = path.into_inner();
    let token = query.token.as_deref();
    serve_rendition_playlist(&req, &actors, &media_id, Some(&version), &rendition, token).await
}

async fn serve_rendition_playlist(
    req: &HttpRequest,
    actors: &Actors,
    media_id: &str,
    version: Option<&str>,
    rendition: &str,
    token: Option<&str>,
) -> Result<HttpResponse, ApiError> {
    let cached = ready_media(actors, media_id).await?;
    let media = &cached.media;
    if !is_safe_name(rendition) {
        return Err(not_found_name(rendition));
    }
    let access = playlist_access(req, actors, media, token).await?;
    let growth = ensure_playable(media)?;
    if let Some(version) = version {
        check_version(actors, &media.id, version)?;
    }
    let file = format!("{rendition}/index.m3u8");
    playlist(req, actors, &media.id, &file, &access, None, growth).await
}

pub(super) async fn segment(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    query: web::Query<PlaybackQuery>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let (media_id, rendition, segment) = path.into_inner();
    serve_segment(
        &req,
        &actors,
        &media_id,
        None,
        &rendition,
        &segment,
        query.token.as_deref(),
    )
    .await
}

/// A segment of restricted media under its version directory.
pub(super) async fn versioned_segment(
    req: HttpRequest,
    path: web::Path<(String, String, String, String)>,
    query: web::Query<PlaybackQuery>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let (media_id, version, rendition, segment) = path.into_inner();
    let token = query.token.as_deref();
    serve_segment(
        &req,
        &actors,
        &media_id,
        Some(&version),
        &rendition,
        &segment,
        token,
    )
    .await
}

async fn serve_segment(
    req: &HttpRequest,
    actors: &Actors,
    media_id: &str,
    version: Option<&str>,
    rendition: &str,
    segment: &str,
    token: Option<&str>,
) -> Result<HttpResponse, ApiError> {
    let media_id = super::media_id(media_id)?;
    if !is_safe_name(rendition) {
        return Err(not_found_name(rendition));
    }
    if !is_segment_name(segment) {
        return Err(not_found_name(segment));
    }
    let gated = actors
        .playback
        .is_gated(&media_id)
        .map_err(|_| gate_table_error())?;
    let (visibility, private) = is_private(actors, &media_id)?;
    let cache = if gated || private {
        if let Err(refused) = check_playback_token(actors, &media_id, token) {
            if private {
                return Err(ApiError::not_found("segment_not_found", "no such segment"));
            }
            return Err(refuse(req, actors, &media_id, refused));
        }
        PRIVATE_NO_STORE
    } else if visibility == Visibility::Unlisted {
        UNLISTED_SEGMENT_CACHE
    } else {
        SEGMENT_CACHE
    };
    if let Some(version) = version {
        check_version(actors, &media_id, version)?;
    }
    let key = format!("{}/{rendition}/{segment}", BlobStore::hls_prefix(&media_id));
    let content_type = if segment.ends_with(".ts") {
        "video/mp2t"
    } else if segment.ends_with(".m4s") {
        "video/iso.segment"
    } else {
        "video/mp4"
    };
    serve_blob(req, actors, &key, content_type, cache).await
}

/// Public for ungated media. Gated media's thumbnail passes the same gate as its playlists: a
/// session the AuthActor lets through, or a playback token for this media.
pub(super) async fn thumbnail(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<PlaybackQuery>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let media_id = media_id(&path)?;
    let gated = actors
        .playback
        .is_gated(&media_id)
        .map_err(|_| gate_table_error())?;
    let (visibility, private) = is_private(&actors, &media_id)?;
    let cache = if gated || private {
        let allowed = async {
            let cached = ready_media(&actors, &path).await?;
            playlist_access(&req, &actors, &cached.media, query.token.as_deref()).await?;
            ensure_ready(&cached.media)
        }
        .await;
        match allowed {
            Ok(()) => PRIVATE_NO_STORE,
            // What a thumbnail that does not exist gets.
            Err(_) if private => {
                return Err(ApiError::not_found("segment_not_found", "no such segment"))
            }
            Err(refused) => return Err(refused),
        }
    } else if visibility == Visibility::Unlisted {
        UNLISTED_THUMBNAIL_CACHE
    } else {
        THUMBNAIL_CACHE
    };
    let key = format!("{}/thumbnail.jpg", BlobStore::media_prefix(&media_id));
    serve_blob(&req, &actors, &key, "image/jpeg", cache).await
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Counts a refused gated request by its code, audits it (sampled per peer: viewers retry
/// segments at will), and passes the error on.
fn refuse(req: &HttpRequest, actors: &Actors, media_id: &MediaId, error: ApiError) -> ApiError {
    actors
        .metrics
        .playback_refused
        .with_label_values(&[error.code])
        .inc();
    let peer = caller(req);
    let event = AuditEvent::ok(
        action::PLAYBACK_REFUSED,
        peer.clone(),
        Some(media_id.to_string()),
    )
    .with_outcome(outcome::DENIED, error.code);
    actors.audit.record_refusal(event, &peer);
    error
}

fn check_playback_token(
    actors: &Actors,
    media_id: &MediaId,
    token: Option<&str>,
) -> Result<(), ApiError> {
    let Some(token) = token else {
        return Err(ApiError::new(
            actix_web::http::StatusCode::UNAUTHORIZED,
            "playback_token_required",
            "this media is gated: use the URLs of a playlist served to your session",
        ));
    };
    match actors.playback.check_token(media_id, token) {
        Ok(_) => Ok(()),
        Err(PlaybackTokenError::Expired) => Err(ApiError::new(
            actix_web::http::StatusCode::UNAUTHORIZED,
            "playback_token_expired",
            "the playback token has expired: fetch the playlist again",
        )),
        Err(PlaybackTokenError::SessionRevoked) => Err(ApiError::new(
            actix_web::http::StatusCode::UNAUTHORIZED,
            "playback_session_revoked",
            "the session this playback token was issued to has ended: sign in again",
        )),
        Err(PlaybackTokenError::GateChanged) => Err(ApiError::new(
            actix_web::http::StatusCode::UNAUTHORIZED,
            "playback_gate_changed",
            "the media's gate changed since this playback token was issued: fetch the playlist again",
        )),
        Err(PlaybackTokenError::Invalid) => Err(ApiError::new(
            actix_web::http::StatusCode::FORBIDDEN,
            "playback_token_invalid",
            "the playback token is not valid for this media",
        )),
    }
}

/// Public for ungated media. For gated media: a bearer session (or admin token) the AuthActor
/// lets through mints a fresh token; else a valid `?token=` for this media is reused.
async fn playlist_access(
    req: &HttpRequest,
    actors: &Actors,
    media: &Media,
    query_token: Option<&str>,
) -> Result<Access, ApiError> {
    // Whether it is gated is all `web` needs; the AuthActor reads the gate itself.
    let gated = actors
        .playback
        .is_gated(&media.id)
        .map_err(|_| gate_table_error())?;
    let (visibility, private) = is_private(actors, &media.id)?;
    if !gated && !private {
        return Ok(Access::Public {
            shared: visibility == Visibility::Public,
        });
    }
    let version = actors
        .playback
        .access_epoch(&media.id)
        .map_err(|_| gate_table_error())?;
    let decided = async {
        if let Some(bearer) = bearer_str(req) {
            // The gate was just read above: a remembered grant only stands in for the decision.
            let session = SessionDigest::of(bearer);
            if let Some(token) = actors.playback.granted(&session, &media.id) {
                return Ok(Access::Gated { token, version });
            }
            let grant = actors
                .auth
                .send(AuthorizeSessionPlayback {
                    token: bearer.to_string(),
                    media_id: media.id.clone(),
                    owner: media.owner.clone(),
                })
                .await??;
            // Read again: the decision waited for the AuthActor, which may have applied a gate
            // change meanwhile (another node's, say), and the URLs must name the version the
            // token was minted under, or a player following them finds nothing.
            let version = actors
                .playback
                .access_epoch(&media.id)
                .map_err(|_| gate_table_error())?;
            return Ok(Access::Gated {
                token: grant.token,
                version,
            });
        }
        if query_token.is_none() {
            return Err(ApiError::new(
                actix_web::http::StatusCode::UNAUTHORIZED,
                "session_required",
                "this media is gated: send Authorization: Bearer <session token>",
            ));
        }
        check_playback_token(actors, &media.id, query_token)?;
        Ok(Access::Gated {
            token: Arc::from(query_token.unwrap_or_default()),
            version,
        })
    }
    .await;
    match decided {
        Err(_) if private => Err(hidden(&media.id)),
        decided => decided.map_err(|error| refuse(req, actors, &media.id, error)),
    }
}

/// Appends `token` to every URI of a playlist: plain URI lines and `URI="…"` attributes
/// (`#EXT-X-MAP`, `#EXT-X-MEDIA`, …). Relative URIs keep resolving against the playlist.
fn with_token(playlist: &str, token: &str, prefix: &str) -> String {
    let add = |uri: &str| {
        let separator = if uri.contains('?') { '&' } else { '?' };
        format!("{prefix}{uri}{separator}token={token}")
    };
    let mut out = String::with_capacity(playlist.len() + 64);
    for line in playlist.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            out.push_str(line);
        } else if trimmed.starts_with('#') {
            let mut rest = line;
            while let Some(start) = rest.find("URI=\"") {
                let (before, after) = rest.split_at(start + 5);
                out.push_str(before);
                match after.find('"') {
                    Some(end) => {
                        out.push_str(&add(&after[..end]));
                        rest = &after[end..];
                    }
                    None => {
                        rest = after;
                        break;
                    }
                }
            }
            out.push_str(rest);
        } else {
            out.push_str(&add(trimmed));
        }
        out.push('\n');
    }
    out
}

fn not_found_name(name: &str) -> ApiError {
    ApiError::not_found(
        "segment_not_found",
        format!("no such rendition or segment: {name:?}"),
    )
}

/// The media, if it exists and plays (private media: if it exists). Callers check readiness
/// (or, for HLS playlists, playability) again after access.
async fn ready_media(actors: &Actors, text: &str) -> Result<Arc<CachedMedia>, ApiError> {
    let media_id = media_id(text)?;
    let cached = match actors.caches.metadata.get(&media_id) {
        Some(cached) => cached,
        None => Arc::new(CachedMedia::new(
            actors.metadata.send(GetMedia { media_id }).await??,
        )),
    };
    // Private media: who asks is checked first, so a stranger learns nothing of its state.
    if cached.media.visibility != Visibility::Private {
        ensure_playable(&cached.media)?;
    }
    Ok(cached)
}

/// Whether a media's HLS playlists are final or still growing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Growth {
    Final,
    Growing,
}

/// A ready media, or one whose ladder is being published while its job runs (HLS only).
fn ensure_playable(media: &Media) -> Result<Growth, ApiError> {
    match media.state {
        MediaState::Ready => Ok(Growth::Final),
        MediaState::Processing if media.playable_at.is_some() => Ok(Growth::Growing),
        _ => Err(not_ready(media)),
    }
}

fn ensure_ready(media: &Media) -> Result<(), ApiError> {
    if media.state != MediaState::Ready {
        return Err(not_ready(media));
    }
    Ok(())
}

fn not_ready(media: &Media) -> ApiError {
    ApiError::new(
        actix_web::http::StatusCode::CONFLICT,
        "media_not_ready",
        format!(
            "media {} is {}; playlists exist once it is playable",
            media.id,
            media.state.as_str()
        ),
    )
}

/// Maps a missing blob to a 404 with `code`; other blob errors keep their kind.
fn missing_as(code: &'static str) -> impl Fn(BlobError) -> ApiError {
    move |error| match error {
        BlobError::NotFound(_) => ApiError::not_found(code, "no such file"),
        other => ApiError::domain(&other),
    }
}

async fn playlist(
    req: &HttpRequest,
    actors: &Actors,
    media_id: &MediaId,
    file: &str,
    access: &Access,
    captions: Option<&Media>,
    growth: Growth,
) -> Result<HttpResponse, ApiError> {
    let content_type = (
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.apple.mpegurl"),
    );
    match access {
        Access::Public { shared } => {
            let Playlist { bytes, etag } = match growth {
                Growth::Final => actors.caches.playlist(&actors.blobs, media_id, file).await,
                // A growing playlist changes every few seconds: read, never cached here.
                Growth::Growing => actors
                    .blobs
                    .get(&BlobStore::hls_key(media_id, file))
                    .await
                    .map(Playlist::new),
            }
            .map_err(missing_as("playlist_not_found"))?;
            let cache = match (growth, shared) {
                (Growth::Growing, true) => (header::CACHE_CONTROL, GROWING_PLAYLIST_CACHE),
                (Growth::Growing, false) => {
                    (header::CACHE_CONTROL, UNLISTED_GROWING_PLAYLIST_CACHE)
                }
                (Growth::Final, true) => (header::CACHE_CONTROL, PLAYLIST_CACHE),
                (Growth::Final, false) => (header::CACHE_CONTROL, UNLISTED_PLAYLIST_CACHE),
            };
            // Caption changes update the record: its time versions the amended playlist.
            let (bytes, etag) = match captions {
                None => (bytes, etag),
                Some(media) => (
                    Bytes::from(with_captions(&String::from_utf8_lossy(&bytes), media, None)),
                    Arc::from(format!(
                        "{}-c{:x}\"",
                        etag.trim_end_matches('"'),
                        media.updated_at.unix_timestamp_nanos()
                    )),
                ),
            };
            if none_match(req, &etag) {
                return Ok(HttpResponse::NotModified()
                    .insert_header((header::ETAG, &*etag))
                    .insert_header(cache)
                    .finish());
            }
            Ok(HttpResponse::Ok()
                .insert_header(content_type)
                .insert_header((header::ETAG, &*etag))
                .insert_header(cache)
                .body(bytes))
        }
        // Tokens differ per viewer: no ETag, nothing kept by anyone in between.
        Access::Gated { token, version } => {
            // Only the master names other playlists; the rest resolve under its directory.
            let prefix = if file == "master.m3u8" {
                format!("{}/", version_dir(*version))
            } else {
                String::new()
            };
            let rewrite = |bytes: &[u8], token: &str| {
                Bytes::from(with_token(&String::from_utf8_lossy(bytes), token, &prefix))
            };
            let bytes = match growth {
                Growth::Final => {
                    actors
                        .caches
                        .tokenised_playlist(&actors.blobs, media_id, file, token, rewrite)
                        .await
                }
                Growth::Growing => actors
                    .blobs
                    .get(&BlobStore::hls_key(media_id, file))
                    .await
                    .map(|bytes| rewrite(&bytes, token)),
            }
            .map_err(missing_as("playlist_not_found"))?;
            let bytes = match captions {
                None => bytes,
                Some(media) => Bytes::from(with_captions(
                    &String::from_utf8_lossy(&bytes),
                    media,
                    Some(token),
                )),
            };
            Ok(HttpResponse::Ok()
                .insert_header(content_type)
                .insert_header((header::CACHE_CONTROL, PRIVATE_NO_STORE))
                .body(bytes))
        }
    }
}

/// Whether `If-None-Match` names `etag` (weak comparison, as RFC 9110 asks for GET) or `*`.
fn none_match(req: &HttpRequest, etag: &str) -> bool {
    fn strip(tag: &str) -> &str {
        tag.trim().trim_start_matches("W/")
    }
    let ours = strip(etag);
    req.headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|tag| tag.trim() == "*" || strip(tag) == ours)
}

/// Serves a blob: mapped from disk on the local backend, else streamed through `object_store`
/// (S3) — both with single `Range`s, `ETag` and `If-None-Match`.
async fn serve_blob(
    req: &HttpRequest,
    actors: &Actors,
    key: &str,
    content_type: &'static str,
    cache: HeaderValue,
) -> Result<HttpResponse, ApiError> {
    // A request the front took is answered with sendfile and needs no mapping.
    let access = if req.extensions().contains::<SendsFiles>() {
        BlobAccess::File
    } else {
        BlobAccess::Mapped
    };
    match actors.blobs.map_local(key, access).await {
        Some(Ok(blob)) => Ok(serve_mapped(req, blob, content_type, cache)),
        Some(Err(BlobError::NotFound(_))) => {
            Err(ApiError::not_found("segment_not_found", "no such segment"))
        }
        Some(Err(other)) => Err(ApiError::domain(&other)),
        None => serve_from_store(req, actors, key, content_type, cache).await,
    }
}

/// The response for a mapped local blob, with actix-files' semantics (what this path used
/// before): `If-Match`/`If-Unmodified-Since` → 412, `If-None-Match` (weak) or, without it,
/// `If-Modified-Since` → 304, the first of the `Range`s → 206, an unsatisfiable one → 416
/// with `Content-Range: bytes */{len}`; `ETag`, `Last-Modified`, `Accept-Ranges` throughout.
fn serve_mapped(
    req: &HttpRequest,
    blob: MappedBlob,
    content_type: &'static str,
    cache: HeaderValue,
) -> HttpResponse {
    let size = blob.len();
    let last_modified = blob.modified.map(header::HttpDate::from);
    let etag = blob.etag.as_deref();
    let unix_secs = |time: SystemTime| {
        time.duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .map(|since| since.as_secs())
    };
    let modified_secs = blob.modified.and_then(unix_secs);
    let precondition_failed = !if_match(req, etag)
        || match (modified_secs, req.get_header::<header::IfUnmodifiedSince>()) {
            (Some(modified), Some(header::IfUnmodifiedSince(since))) => {
                unix_secs(since.into()).is_some_and(|since| modified > since)
            }
            _ => false,
        };
    let not_modified = if req.headers().contains_key(header::IF_NONE_MATCH) {
        etag.is_some_and(|etag| none_match(req, etag))
    } else {
        match (modified_secs, req.get_header::<header::IfModifiedSince>()) {
            (Some(modified), Some(header::IfModifiedSince(since))) => {
                unix_secs(since.into()).is_some_and(|since| modified <= since)
            }
            _ => false,
        }
    };

    let mut response = HttpResponse::Ok();
    response.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(content_type)));
    if let Some(last_modified) = last_modified {
        response.insert_header((header::LAST_MODIFIED, last_modified));
    }
    if let Some(etag) = etag {
        response.insert_header((header::ETAG, etag));
    }
    response.insert_header((header::ACCEPT_RANGES, HeaderValue::from_static("bytes")));
    response.insert_header((header::CACHE_CONTROL, cache));

    let (mut start, mut end) = (0u64, size);
    if let Some(range) = req.headers().get(header::RANGE) {
        let Ok(range) = range.to_str() else {
            return response.status(StatusCode::BAD_REQUEST).finish();
        };
        match actix_files::HttpRange::parse(range, size)
            .ok()
            .and_then(|ranges| ranges.first().copied())
        {
            Some(range) => {
                // A player asking for a range must get the bytes as stored (actix-web#2815).
                if req.headers().contains_key(header::ACCEPT_ENCODING) {
                    response.insert_header((
                        header::CONTENT_ENCODING,
                        HeaderValue::from_static("identity"),
                    ));
                }
                response.insert_header((
                    header::CONTENT_RANGE,
                    format!(
                        "bytes {}-{}/{size}",
                        range.start,
                        range.start + range.length - 1
                    ),
                ));
                // Within the blob: `HttpRange::parse` clamps to `size`.
                start = range.start.min(size);
                end = range.start.saturating_add(range.length).min(size);
                if !(precondition_failed || not_modified) && end - start != size {
                    response.status(StatusCode::PARTIAL_CONTENT);
                }
            }
            None => {
                response.insert_header((header::CONTENT_RANGE, format!("bytes */{size}")));
                return response.status(StatusCode::RANGE_NOT_SATISFIABLE).finish();
            }
        }
    }
    if precondition_failed {
        return response.status(StatusCode::PRECONDITION_FAILED).finish();
    }
    if not_modified {
        return response.status(StatusCode::NOT_MODIFIED).finish();
    }
    match (blob.bytes, blob.file) {
        (Some(bytes), _) => {
            let range = usize::try_from(start)
                .unwrap_or(usize::MAX)
                .min(bytes.len())
                ..usize::try_from(end).unwrap_or(usize::MAX).min(bytes.len());
            let body = bytes.slice(range);
            match req.app_data::<web::Data<SendBudget>>() {
                Some(budget) => response.body(budget.body(body)),
                // Only an app built without `configure_send_budget`: the whole mapping at once.
                None => response.body(body),
            }
        }
        (None, Some(file)) => {
            let len = end - start;
            response.extensions_mut().insert(FileBody {
                file,
                offset: start,
                len,
            });
            response.body(SentByFront::new(len))
        }
        (None, None) => response.finish(),
    }
}

/// Whether `If-Match` is absent, `*`, or names `etag` (strong comparison, RFC 9110 §13.1.1).
fn if_match(req: &HttpRequest, etag: Option<&str>) -> bool {
    let mut values = req.headers().get_all(header::IF_MATCH).peekable();
    if values.peek().is_none() {
        return true;
    }
    values
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || (!tag.starts_with("W/") && Some(tag) == etag))
}

/// The non-local path: ranged, conditional reads through `object_store`, streamed.
async fn serve_from_store(
    req: &HttpRequest,
    actors: &Actors,
    key: &str,
    content_type: &'static str,
    cache: HeaderValue,
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
            return Ok(HttpResponse::NotModified()
                .insert_header((header::CACHE_CONTROL, cache))
                .finish())
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
        .insert_header((header::CONTENT_TYPE, HeaderValue::from_static(content_type)))
        .insert_header((header::ACCEPT_RANGES, HeaderValue::from_static("bytes")))
        .insert_header((header::CACHE_CONTROL, cache));
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

    #[test]
    fn every_segment_of_a_manifest_gets_the_token() {
        let mpd = r#"<Initialization sourceURL="../hls/240p/init_0.mp4"/><SegmentURL media="../hls/240p/seg_00001.m4s"/>"#;
        assert_eq!(
            mpd_with_token(mpd, "T"),
            r#"<Initialization sourceURL="../hls/240p/init_0.mp4?token=T"/><SegmentURL media="../hls/240p/seg_00001.m4s?token=T"/>"#
        );
    }

    #[test]
    fn every_uri_in_a_playlist_gets_the_token() {
        let playlist = "#EXTM3U\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:6.0,\nseg_000.m4s\n\n360p/index.m3u8?x=1\n";
        let rewritten = with_token(playlist, "T", "");
        assert_eq!(
            rewritten,
            "#EXTM3U\n#EXT-X-MAP:URI=\"init.mp4?token=T\"\n#EXTINF:6.0,\nseg_000.m4s?token=T\n\n360p/index.m3u8?x=1&token=T\n"
        );
    }
}
