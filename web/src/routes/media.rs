//! Media records: search/list, get, edit, delete, and the token gate.
//!
//! `GET /api/v1/media?q=&tag=&owner=&limit=&cursor=` reads the search page cache (a miss, the
//! search index's handle) and `GET /api/v1/media/{id}` the metadata cache (a miss asks the MetadataActor, which fills it);
//! writes go to the actors, which invalidate both before they reply.
//!
//! Edits, deletes and gates need a session (or the admin token); only the owner's session may
//! change a media item (the MetadataActor / AuthActor decide, 403 otherwise).

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use streamgate_actors::{
    auth::{Authenticate, GateSpec, SetGate},
    cache::{CachedMedia, SearchPageKey},
    metadata::{
        DeleteCaption, DeleteMedia, GetMedia, MetadataError, PutCaption, UpdateMedia,
        MAX_CAPTION_BYTES,
    },
    model::{Gate, Media, TokenStandard, Visibility},
    search::SearchQuery,
    Actors,
};

use super::{auth::TokenIdInput, media_id};
use crate::{
    dto::{MediaDto, Page, UpdateMediaBody},
    error::ApiError,
    extract::Authenticated,
};

const DEFAULT_PAGE: usize = 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GateBody {
    chain_id: u64,
    contract: String,
    standard: TokenStandard,
    token_id: Option<TokenIdInput>,
    /// Defaults to 1.
    min_balance: Option<u64>,
}

impl GateBody {
    pub(super) fn into_spec(self) -> GateSpec {
        GateSpec {
            chain_id: self.chain_id,
            contract: self.contract,
            standard: self.standard,
            token_id: self.token_id.map(TokenIdInput::into_text),
            min_balance: self.min_balance.unwrap_or(1),
        }
    }
}

/// Private media exist only for their owner and admins: anyone else (no bearer, another
/// wallet, a refused token) gets the 404 of a media item that does not exist.
pub(crate) async fn hide_private(
    req: &HttpRequest,
    actors: &Actors,
    media: &Media,
) -> Result<(), ApiError> {
    if media.visibility != Visibility::Private {
        return Ok(());
    }
    let hidden = || ApiError::domain(&MetadataError::NotFound(media.id.clone()));
    let Some(token) = crate::extract::bearer_token(req) else {
        return Err(hidden());
    };
    match actors.auth.send(Authenticate { token }).await? {
        Ok(principal) if principal.may_manage(media.owner.as_deref()) => Ok(()),
        _ => Err(hidden()),
    }
}

#[derive(Serialize)]
pub struct GateDto {
    pub chain_id: u64,
    pub contract: String,
    pub standard: &'static str,
    pub token_id: Option<String>,
    pub min_balance: u64,
    pub set_by: String,
    pub set_at: String,
}

impl From<&Gate> for GateDto {
    fn from(gate: &Gate) -> Self {
        Self {
            chain_id: gate.chain_id,
            contract: gate.contract.clone(),
            standard: gate.standard.as_str(),
            token_id: gate.token_id.clone(),
            min_balance: gate.min_balance,
            set_by: gate.set_by.clone(),
            set_at: super::auth::rfc3339(gate.set_at),
        }
    }
}

#[derive(Serialize)]
struct GateStateDto {
    gated: bool,
    gate: Option<GateDto>,
}

fn gate_state(gate: Option<&Gate>) -> GateStateDto {
    GateStateDto {
        gated: gate.is_some(),
        gate: gate.map(GateDto::from),
    }
}

pub(super) async fn get_gate(
    req: HttpRequest,
    path: web::Path<String>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let media_id = media_id(&path)?;
    let media = actors.metadata.send(GetMedia { media_id }).await??;
    hide_private(&req, &actors, &media).await?;
    let gate = actors
        .playback
        .gate(&media.id)
        .map_err(|_| gate_table_error())?;
    Ok(HttpResponse::Ok().json(gate_state(gate.as_ref())))
}

/// `PUT` with a gate body sets it; `PUT` with `null` clears it, like `DELETE`.
pub(super) async fn put_gate(
    Authenticated(principal): Authenticated,
    path: web::Path<String>,
    body: web::Json<Option<GateBody>>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let media_id = media_id(&path)?;
    let gate = body.into_inner().map(GateBody::into_spec);
    let gate = actors
        .auth
        .send(SetGate {
            media_id,
            gate,
            principal,
        })
        .await??;
    Ok(HttpResponse::Ok().json(gate_state(gate.as_ref())))
}

pub(super) async fn clear_gate(
    Authenticated(principal): Authenticated,
    path: web::Path<String>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let media_id = media_id(&path)?;
    let gate = actors
        .auth
        .send(SetGate {
            media_id,
            gate: None,
            principal,
        })
        .await??;
    Ok(HttpResponse::Ok().json(gate_state(gate.as_ref())))
}

pub(crate) fn gate_table_error() -> ApiError {
    ApiError::new(
        actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
        "gate_table_unavailable",
        "access rules cannot be read right now; retry shortly",
    )
}

/// `?q=&tag=&owner=&limit=&cursor=`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SearchParams {
    q: Option<String>,
    tag: Option<String>,
    owner: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// Longest `q` accepted (a title is at most 200 characters; a query needs no more).
const MAX_QUERY_CHARS: usize = 500;

/// Pages are served from the search page cache, keyed by the index generation read *before*
/// searching and the normalised query, so a commit makes older pages unreachable; a miss
/// searches, renders once and fills through the epoch guard (a gate change empties the cache).
pub(super) async fn list(
    query: web::Query<SearchParams>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    if query
        .q
        .as_deref()
        .is_some_and(|q| q.chars().count() > MAX_QUERY_CHARS)
    {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("q is longer than {MAX_QUERY_CHARS} characters"),
        ));
    }
    let query = SearchQuery {
        q: query.q,
        tag: query.tag,
        owner: query.owner,
        cursor: query.cursor,
        limit: query.limit.unwrap_or(DEFAULT_PAGE),
    };
    let key = SearchPageKey::new(actors.search.generation(), &query);
    if let Some(body) = actors.caches.search.get(&key) {
        return Ok(json_bytes(body));
    }
    let epoch = actors.caches.search.epoch();
    let page = actors
        .search
        .search_async(query)
        .await
        .map_err(|error| ApiError::domain(&error))?;
    let mut gates_read = true;
    let items = page
        .items
        .iter()
        .map(|media| {
            let mut dto = MediaDto::from(media);
            // An unreadable gate table reports gated (fail closed), and the page is not kept.
            dto.gated = actors.playback.is_gated(&media.id).unwrap_or_else(|_| {
                gates_read = false;
                true
            });
            dto
        })
        .collect();
    let body = serde_json::to_vec(&Page {
        items,
        next_cursor: page.next_cursor,
    })
    .map(Bytes::from)
    .map_err(|error| {
        ApiError::new(
            actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            error.to_string(),
        )
    })?;
    if gates_read {
        actors
            .caches
            .search
            .insert_if_unchanged(key, body.clone(), epoch);
    }
    Ok(json_bytes(body))
}

fn json_bytes(body: Bytes) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((
            actix_web::http::header::CONTENT_TYPE,
            actix_web::http::header::HeaderValue::from_static("application/json"),
        ))
        .body(body)
}

/// A cache hit is served from the JSON memoised on the cache entry (rendered once per entry
/// and gate state); a miss asks the MetadataActor, which fills the cache, and renders once.
pub(super) async fn get(
    req: HttpRequest,
    path: web::Path<String>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let media_id = media_id(&path)?;
    let cached = match actors.caches.metadata.get(&media_id) {
        Some(cached) => cached,
        None => std::sync::Arc::new(CachedMedia::new(
            actors
                .metadata
                .send(GetMedia {
                    media_id: media_id.clone(),
                })
                .await??,
        )),
    };
    hide_private(&req, &actors, &cached.media).await?;
    let gated = actors
        .playback
        .is_gated(&media_id)
        .map_err(|_| gate_table_error())?;
    let render = |media: &Media| -> Result<Bytes, ApiError> {
        let mut dto = MediaDto::from(media);
        dto.gated = gated;
        serde_json::to_vec(&dto).map(Bytes::from).map_err(|error| {
            ApiError::new(
                actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                error.to_string(),
            )
        })
    };
    let body = cached.rendered(gated, render)?;
    Ok(json_bytes(body))
}

pub(super) async fn update(
    Authenticated(principal): Authenticated,
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
            visibility: body.visibility,
            principal,
        })
        .await??;
    Ok(HttpResponse::Ok().json(MediaDto::from(&media)))
}

pub(super) async fn delete(
    Authenticated(principal): Authenticated,
    path: web::Path<String>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let media_id = media_id(&path)?;
    actors
        .metadata
        .send(DeleteMedia {
            media_id,
            principal,
        })
        .await??;
    Ok(HttpResponse::NoContent().finish())
}

/// `PUT …/captions/{lang}`: the body is the WebVTT file (the MetadataActor validates it).
pub(super) async fn put_caption(
    Authenticated(principal): Authenticated,
    path: web::Path<(String, String)>,
    mut payload: web::Payload,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    use futures_util::StreamExt;
    let (media_id, lang) = path.into_inner();
    let media_id = super::media_id(&media_id)?;
    let mut vtt = bytes::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|error| {
            ApiError::unless_body_timeout(&error, || {
                ApiError::bad_request(
                    "invalid_body",
                    format!("the body could not be read: {error}"),
                )
            })
        })?;
        if vtt.len() + chunk.len() > MAX_CAPTION_BYTES {
            return Err(ApiError::new(
                actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
                "caption_too_large",
                format!("captions are limited to {MAX_CAPTION_BYTES} bytes"),
            ));
        }
        vtt.extend_from_slice(&chunk);
    }
    let media = actors
        .metadata
        .send(PutCaption {
            media_id,
            lang,
            vtt: vtt.freeze(),
            principal,
        })
        .await??;
    Ok(HttpResponse::Ok().json(MediaDto::from(&media)))
}

pub(super) async fn delete_caption(
    Authenticated(principal): Authenticated,
    path: web::Path<(String, String)>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let (media_id, lang) = path.into_inner();
    let media_id = super::media_id(&media_id)?;
    let media = actors
        .metadata
        .send(DeleteCaption {
            media_id,
            lang,
            principal,
        })
        .await??;
    Ok(HttpResponse::Ok().json(MediaDto::from(&media)))
}
