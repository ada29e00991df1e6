//! `POST /api/v1/upload`: the one-shot multipart upload (field `file`, optional `title`,
//! `description`, `tags`, `visibility`, `gate`). The body streams through an `UploadSink` into
//! the blob store. A `gate` (JSON, as `PUT …/gate` takes it) is validated by the AuthActor
//! before the file is kept, and stored with the record.

use actix_multipart::{Field, Multipart};
use actix_web::{http::header, web, HttpRequest, HttpResponse};
use futures_util::TryStreamExt;
use streamgate_actors::{
    auth::{Principal, ValidateGate},
    model::{Gate, Visibility},
    upload::{BeginUpload, FinishUpload, UploadSink},
    Actors,
};

use crate::{dto::UploadReceiptDto, error::ApiError, extract::Authenticated};

/// Longest accepted text field (title, description, tags), in bytes.
const MAX_TEXT_FIELD: usize = 8 * 1024;
/// Room for multipart boundaries and text fields on top of the file itself.
const MULTIPART_OVERHEAD: u64 = 64 * 1024;
const INVALID_MULTIPART: &str = "invalid_multipart";
/// How much of a refused body we still read so the client gets to see the refusal.
const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;

/// Needs a session (or the admin token): the session's wallet becomes the media's owner.
pub(super) async fn upload(
    req: HttpRequest,
    authenticated: Result<Authenticated, ApiError>,
    mut multipart: Multipart,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let outcome = match authenticated {
        // A multipart stream that failed must not be polled again: actix-multipart panics.
        Ok(Authenticated(principal)) => receive(&req, &principal, &mut multipart, &actors).await,
        Err(refused) => Err(refused),
    };
    if outcome.as_ref().is_err_and(|error| {
        // 507 (quota, full disk) is as much the client's answer as a 4xx.
        (error.status.is_client_error()
            || error.status == actix_web::http::StatusCode::INSUFFICIENT_STORAGE)
            && error.code != INVALID_MULTIPART
            && error.code != crate::error::BODY_TIMEOUT
    }) {
        // Many HTTP clients (hyper/reqwest among them) report a reset instead of our answer when
        // the server stops reading mid-body; read a bounded remainder so they see the 4xx.
        drain(&mut multipart, DRAIN_LIMIT).await;
    }
    outcome
}

async fn receive(
    req: &HttpRequest,
    principal: &Principal,
    multipart: &mut Multipart,
    actors: &Actors,
) -> Result<HttpResponse, ApiError> {
    // A body larger than the limit plus overhead cannot hold an acceptable file.
    let declared_size = content_length(req).map(|length| length.saturating_sub(MULTIPART_OVERHEAD));
    let mut file: Option<(UploadSink, Option<String>)> = None;
    let mut title = None;
    let mut description = None;
    let mut tags = Vec::new();
    let mut visibility = None;
    let mut gate = None;
    let mut seen = std::collections::HashSet::new();

    while let Some(field) = multipart.try_next().await.map_err(bad_multipart)? {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "file" if file.is_none() => {
                let filename = field
                    .content_disposition()
                    .and_then(|disposition| disposition.get_filename())
                    .map(str::to_string);
                let mut sink = actors
                    .upload
                    .send(BeginUpload {
                        declared_size,
                        body_length: content_length(req),
                        caller: principal.name().to_string(),
                    })
                    .await??;
                if let Err(error) = pump(field, &mut sink).await {
                    let _ = sink.abort().await;
                    return Err(error);
                }
                file = Some((sink, filename));
            }
            "file" => {
                return Err(ApiError::bad_request(
                    "duplicate_file",
                    "send exactly one `file` field",
                ))
            }
            // Each text field once: repeats would let a body carry unbounded text.
            "title" | "description" | "tags" | "visibility" | "gate"
                if !seen.insert(name.clone()) =>
            {
                return Err(ApiError::bad_request(
                    "duplicate_field",
                    format!("form field {name:?} appears more than once"),
                ))
            }
            "title" => title = Some(text(field).await?),
            "description" => description = Some(text(field).await?),
            "tags" => tags = text(field).await?.split(',').map(str::to_string).collect(),
            "visibility" => visibility = Some(parse_visibility(&text(field).await?)?),
            "gate" => gate = Some(text(field).await?),
            other => {
                return Err(ApiError::bad_request(
                    "unknown_field",
                    format!(
                        "unknown form field {other:?}; expected file, title, description, tags, \
                         visibility, gate"
                    ),
                ))
            }
        }
    }
    let (sink, filename) =
        file.ok_or_else(|| ApiError::bad_request("missing_file", "form field `file` is required"))?;
    // Before the file is kept: an upload whose gate is refused leaves nothing behind.
    let gate = match validate_gate(actors, principal, gate.as_deref()).await {
        Ok(gate) => gate,
        Err(error) => {
            let _ = sink.abort().await;
            return Err(error);
        }
    };
    let received = sink.finish(filename).await?;
    let receipt = actors
        .upload
        .send(FinishUpload {
            file: received,
            title,
            description,
            tags,
            owner: principal.wallet().map(str::to_string),
            visibility,
            gate,
            caller: principal.name().to_string(),
            trace_id: crate::extract::trace_id(),
        })
        .await??;
    let location = format!("/api/v1/media/{}", receipt.media_id);
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, location.clone()))
        .json(UploadReceiptDto {
            media_id: receipt.media_id.to_string(),
            upload_id: receipt.upload_id.to_string(),
            size: receipt.size,
            sha256: receipt.sha256,
            media_url: location,
        }))
}

/// `public`, `unlisted` or `private`; anything else is a 400.
pub(super) fn parse_visibility(text: &str) -> Result<Visibility, ApiError> {
    Visibility::parse(text.trim()).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_visibility",
            "visibility must be public, unlisted or private",
        )
    })
}

/// A gate given with an upload (the JSON `PUT …/gate` takes), validated exactly as that route
/// validates it; `None` when none was given (`null` too).
pub(super) async fn validate_gate(
    actors: &Actors,
    principal: &Principal,
    json: Option<&str>,
) -> Result<Option<Gate>, ApiError> {
    let Some(json) = json else { return Ok(None) };
    let body: Option<super::media::GateBody> = serde_json::from_str(json).map_err(|error| {
        ApiError::bad_request("invalid_gate", format!("gate is not a valid gate: {error}"))
    })?;
    let Some(body) = body else { return Ok(None) };
    let gate = actors
        .auth
        .send(ValidateGate {
            gate: body.into_spec(),
            principal: principal.clone(),
        })
        .await??;
    Ok(Some(gate))
}

/// Discards what is left of the body, up to `limit` bytes; past that the connection is closed.
async fn drain(multipart: &mut Multipart, limit: u64) {
    let mut drained = 0u64;
    while let Ok(Some(mut field)) = multipart.try_next().await {
        while let Ok(Some(chunk)) = field.try_next().await {
            drained += chunk.len() as u64;
            if drained > limit {
                return;
            }
        }
    }
}

async fn pump(mut field: Field, sink: &mut UploadSink) -> Result<(), ApiError> {
    while let Some(chunk) = field.try_next().await.map_err(bad_multipart)? {
        sink.write(&chunk).await?;
    }
    Ok(())
}

async fn text(mut field: Field) -> Result<String, ApiError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.try_next().await.map_err(bad_multipart)? {
        if bytes.len() + chunk.len() > MAX_TEXT_FIELD {
            return Err(ApiError::bad_request(
                "field_too_long",
                format!("text fields are limited to {MAX_TEXT_FIELD} bytes"),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes)
        .map_err(|_| ApiError::bad_request("invalid_utf8", "text fields must be UTF-8"))
}

fn content_length(req: &HttpRequest) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn bad_multipart(error: actix_multipart::MultipartError) -> ApiError {
    let malformed = || {
        ApiError::bad_request(
            INVALID_MULTIPART,
            format!("malformed multipart body: {error}"),
        )
    };
    match &error {
        actix_multipart::MultipartError::Payload(payload) => {
            ApiError::unless_body_timeout(payload, malformed)
        }
        _ => malformed(),
    }
}
