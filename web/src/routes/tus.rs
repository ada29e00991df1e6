//! tus 1.0.0 resumable uploads at `/api/v1/uploads` (core, creation, creation-with-upload,
//! creation-defer-length, termination, checksum, expiration), plus `GET /api/v1/uploads/{id}`
//! for a JSON status.
//!
//! Handlers parse tus headers, `send` to the UploadActor and map the reply to tus headers. A
//! PATCH body is pumped into the `TusSink` the actor hands out and never held whole in memory.
//! Errors keep our JSON body; the statuses are the ones tus prescribes (409, 412, 415, 460, …).

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::{
        header::{self, HeaderMap, HeaderName, HeaderValue},
        Method, StatusCode,
    },
    middleware::Next,
    web, HttpRequest, HttpResponse,
};
use base64::Engine;
use futures_util::StreamExt;
use serde::Serialize;
use streamgate_actors::{
    auth::Principal,
    model::{TusMetadata, TusState, TusUpload, UploadId},
    upload::tus::{
        BeginTusPatch, ChecksumAlgorithm, ChunkChecksum, CommitTusPatch, CreateTusUpload,
        GetTusUpload, GetUploadLimits, PatchEnding, TerminateTusUpload, TusSink,
        TUS_CHECKSUM_ALGORITHMS, TUS_EXTENSIONS, TUS_VERSION,
    },
    Actors,
};

use crate::{error::ApiError, extract::Authenticated};

const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";
/// Longest accepted `Upload-Metadata`: it is stored with the upload and echoed on every HEAD.
pub const MAX_METADATA_BYTES: usize = 4 * 1024;
/// How much of a refused PATCH body we still read, so the client sees the answer, not a reset.
const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;
/// Headers a browser client must be allowed to read (CORS).
const EXPOSED_HEADERS: &str = "Location, Upload-Offset, Upload-Length, Upload-Defer-Length, \
    Upload-Metadata, Upload-Expires, Tus-Version, Tus-Resumable, Tus-Max-Size, Tus-Extension, \
    Tus-Checksum-Algorithm, X-Request-Id";
const ALLOWED_HEADERS: &str = "Authorization, Content-Type, Upload-Offset, Upload-Length, \
    Upload-Defer-Length, Upload-Metadata, Upload-Checksum, Tus-Resumable, X-HTTP-Method-Override, \
    X-Requested-With";
const ALLOWED_METHODS: &str = "POST, HEAD, PATCH, DELETE, OPTIONS, GET";

/// Protocol checks and headers every tus response carries: `Tus-Resumable` is required on
/// requests (412 otherwise) and sent on responses; `X-HTTP-Method-Override` is honoured for
/// clients behind proxies that only pass GET and POST; CORS headers let browsers use the API.
pub(super) async fn tus_headers(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if let Some(method) = req
        .headers()
        .get("x-http-method-override")
        .and_then(|value| Method::from_bytes(value.as_bytes()).ok())
    {
        req.head_mut().method = method;
    }
    // Methods no tus route takes skip the checks: the router answers them 405 with `Allow`.
    let is_protocol = !matches!(*req.method(), Method::OPTIONS | Method::GET)
        && super::table::declares(req.method(), req.match_info().as_str());
    let resumable = req
        .headers()
        .get("tus-resumable")
        .map(|value| value.as_bytes() == TUS_VERSION.as_bytes());
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut response = if is_protocol && resumable != Some(true) {
        let error = ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "unsupported_tus_version",
            format!("send Tus-Resumable: {TUS_VERSION}"),
        );
        let response = actix_web::ResponseError::error_response(&error);
        req.into_response(response).map_into_boxed_body()
    } else {
        next.call(req).await?.map_into_boxed_body()
    };
    let headers = response.headers_mut();
    insert(headers, "tus-resumable", TUS_VERSION);
    if response.status() == StatusCode::PRECONDITION_FAILED {
        insert(response.headers_mut(), "tus-version", TUS_VERSION);
    }
    let headers = response.headers_mut();
    if origin.is_some() {
        insert(headers, "access-control-allow-origin", "*");
        insert(headers, "access-control-expose-headers", EXPOSED_HEADERS);
    }
    Ok(response)
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

pub(super) async fn options(actors: web::Data<Actors>) -> Result<HttpResponse, ApiError> {
    let limits = actors.upload.send(GetUploadLimits).await?;
    Ok(HttpResponse::NoContent()
        .insert_header(("Tus-Version", TUS_VERSION))
        .insert_header(("Tus-Extension", TUS_EXTENSIONS))
        .insert_header(("Tus-Max-Size", limits.max_size_bytes.to_string()))
        .insert_header(("Tus-Checksum-Algorithm", TUS_CHECKSUM_ALGORITHMS))
        .insert_header(("Access-Control-Allow-Methods", ALLOWED_METHODS))
        .insert_header(("Access-Control-Allow-Headers", ALLOWED_HEADERS))
        .insert_header(("Access-Control-Max-Age", "86400"))
        .finish())
}

pub(super) async fn create(
    Authenticated(principal): Authenticated,
    req: HttpRequest,
    mut payload: web::Payload,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let length = number_header(&req, "upload-length")?;
    let deferred = req
        .headers()
        .get("upload-defer-length")
        .map(|value| value.as_bytes() == b"1");
    match (length, deferred) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_length",
                "send Upload-Length or Upload-Defer-Length: 1, not both",
            ))
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "invalid_length",
                "Upload-Length (or Upload-Defer-Length: 1) is required",
            ))
        }
        (None, Some(false)) => {
            return Err(ApiError::bad_request(
                "invalid_length",
                "Upload-Defer-Length must be 1",
            ))
        }
        _ => {}
    }
    let raw_metadata = text_header(&req, "upload-metadata")?;
    if raw_metadata
        .as_ref()
        .is_some_and(|raw| raw.len() > MAX_METADATA_BYTES)
    {
        return Err(ApiError::bad_request(
            "metadata_too_large",
            format!("Upload-Metadata is limited to {MAX_METADATA_BYTES} bytes"),
        ));
    }
    let (mut metadata, gate) = match &raw_metadata {
        Some(raw) => parse_metadata(raw)?,
        None => (TusMetadata::default(), None),
    };
    metadata.gate = super::uploads::validate_gate(&actors, &principal, gate.as_deref()).await?;
    // Parsed before creating anything, so a malformed first chunk creates no upload.
    let checksum = checksum_header(&req)?;
    let with_upload = has_body(&req);
    if with_upload {
        offset_content_type(&req)?;
    }
    let created = actors
        .upload
        .send(CreateTusUpload {
            length,
            metadata,
            raw_metadata,
            // The creator owns the upload (and later the media): the quota key and the only
            // caller, besides admins, who may continue or end it.
            owner: principal.name().to_string(),
            caller: principal.name().to_string(),
        })
        .await;
    let upload = match created {
        Ok(Ok(upload)) => upload,
        refused => {
            // A refused first chunk (quota, full disk) is read so the client sees the answer.
            if with_upload {
                drain(&mut payload).await;
            }
            return Err(match refused {
                Ok(Err(error)) => error.into(),
                Err(error) => error.into(),
                Ok(Ok(_)) => ApiError::mailbox(actix::MailboxError::Closed),
            });
        }
    };
    let location = format!("/api/v1/uploads/{}", upload.id);
    let upload = if with_upload {
        let begin = BeginTusPatch {
            upload_id: upload.id.clone(),
            requester: principal.name().to_string(),
            offset: 0,
            length: None,
            content_length: number_header(&req, "content-length")?,
            checksum,
        };
        receive(principal.name(), &mut payload, &actors, begin).await?
    } else {
        upload
    };
    let mut response = HttpResponse::Created();
    response
        .insert_header((header::LOCATION, location))
        .insert_header(("Upload-Offset", upload.offset.to_string()));
    expires_header(&mut response, &upload);
    Ok(response.finish())
}

/// The upload at `path`, as its creator (or the admin) may see it.
async fn lookup(principal: &Principal, path: &str, actors: &Actors) -> Result<TusUpload, ApiError> {
    Ok(actors
        .upload
        .send(GetTusUpload {
            upload_id: upload_id(path)?,
            requester: principal.name().to_string(),
        })
        .await??)
}

pub(super) async fn head(
    Authenticated(principal): Authenticated,
    path: web::Path<String>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let upload = lookup(&principal, &path, &actors).await?;
    let mut response = HttpResponse::Ok();
    response
        .insert_header(("Upload-Offset", upload.offset.to_string()))
        .insert_header((header::CACHE_CONTROL, "no-store"));
    match upload.length {
        Some(length) => response.insert_header(("Upload-Length", length.to_string())),
        None => response.insert_header(("Upload-Defer-Length", "1")),
    };
    if let Some(raw) = &upload.raw_metadata {
        response.insert_header(("Upload-Metadata", raw.as_str()));
    }
    expires_header(&mut response, &upload);
    Ok(response.finish())
}

pub(super) async fn patch(
    Authenticated(principal): Authenticated,
    req: HttpRequest,
    path: web::Path<String>,
    mut payload: web::Payload,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let outcome = async {
        offset_content_type(&req)?;
        let offset = number_header(&req, "upload-offset")?
            .ok_or_else(|| ApiError::bad_request("invalid_offset", "Upload-Offset is required"))?;
        Ok(BeginTusPatch {
            upload_id: upload_id(&path)?,
            requester: principal.name().to_string(),
            offset,
            length: number_header(&req, "upload-length")?,
            content_length: number_header(&req, "content-length")?,
            checksum: checksum_header(&req)?,
        })
    }
    .await;
    let begin = match outcome {
        Ok(begin) => begin,
        Err(error) => {
            drain(&mut payload).await;
            return Err(error);
        }
    };
    let upload = receive(principal.name(), &mut payload, &actors, begin).await?;
    let mut response = HttpResponse::NoContent();
    response.insert_header(("Upload-Offset", upload.offset.to_string()));
    expires_header(&mut response, &upload);
    Ok(response.finish())
}

/// Locks the upload, pumps the body into its sink and commits what arrived.
async fn receive(
    caller: &str,
    payload: &mut web::Payload,
    actors: &Actors,
    begin: BeginTusPatch,
) -> Result<TusUpload, ApiError> {
    let mut sink = match actors.upload.send(begin).await {
        Ok(Ok(sink)) => sink,
        refused => {
            drain(payload).await;
            return Err(match refused {
                Ok(Err(error)) => error.into(),
                Err(error) => error.into(),
                Ok(Ok(_)) => ApiError::mailbox(actix::MailboxError::Closed),
            });
        }
    };
    let ending = pump(payload, &mut sink).await;
    let refused = matches!(ending, PatchEnding::Refused(_));
    let committed = actors
        .upload
        .send(CommitTusPatch {
            sink,
            ending,
            caller: caller.to_string(),
        })
        .await;
    if refused {
        drain(payload).await;
    }
    Ok(committed??)
}

async fn pump(payload: &mut web::Payload, sink: &mut TusSink) -> PatchEnding {
    loop {
        let next = tokio::select! {
            next = payload.next() => next,
            // The owner's next request took the upload over: this body went silent.
            () = sink.release_requested() => return PatchEnding::Interrupted,
        };
        let Some(chunk) = next else {
            return PatchEnding::Complete;
        };
        let Ok(chunk) = chunk else {
            return PatchEnding::Interrupted;
        };
        if let Err(error) = sink.write(chunk).await {
            return PatchEnding::Refused(error);
        }
    }
}

/// Reads and drops up to [`DRAIN_LIMIT`] more bytes of a refused body.
async fn drain(payload: &mut web::Payload) {
    let mut drained = 0u64;
    while let Some(Ok(chunk)) = payload.next().await {
        drained += chunk.len() as u64;
        if drained > DRAIN_LIMIT {
            return;
        }
    }
}

pub(super) async fn terminate(
    Authenticated(principal): Authenticated,
    path: web::Path<String>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let upload_id = upload_id(&path)?;
    actors
        .upload
        .send(TerminateTusUpload {
            upload_id,
            requester: principal.name().to_string(),
            caller: principal.name().to_string(),
        })
        .await??;
    Ok(HttpResponse::NoContent().finish())
}

/// `GET /api/v1/uploads/{id}`: the upload's state as JSON.
#[derive(Debug, Serialize)]
pub struct TusUploadDto {
    pub id: String,
    pub offset: u64,
    pub length: Option<u64>,
    /// `receiving`, `finishing` or `finished`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

pub(super) async fn status(
    Authenticated(principal): Authenticated,
    path: web::Path<String>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let upload = lookup(&principal, &path, &actors).await?;
    let receiving = upload.state == TusState::Receiving;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(TusUploadDto {
            id: upload.id.to_string(),
            offset: upload.offset,
            length: upload.length,
            state: upload.state.as_str(),
            media_id: upload
                .media_id
                .filter(|_| upload.state == TusState::Finished)
                .map(|id| id.to_string()),
            expires_at: receiving
                .then(|| {
                    upload
                        .expires_at
                        .format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .flatten(),
        }))
}

// ---------------------------------------------------------------------------------------------
// Header parsing

fn upload_id(text: &str) -> Result<UploadId, ApiError> {
    UploadId::parse(text)
        .ok_or_else(|| ApiError::not_found("upload_not_found", format!("upload {text} not found")))
}

fn text_header(req: &HttpRequest, name: &str) -> Result<Option<String>, ApiError> {
    req.headers()
        .get(name)
        .map(|value| {
            value.to_str().map(str::to_string).map_err(|_| {
                ApiError::bad_request("invalid_header", format!("{name} must be ASCII"))
            })
        })
        .transpose()
}

fn number_header(req: &HttpRequest, name: &str) -> Result<Option<u64>, ApiError> {
    text_header(req, name)?
        .map(|text| {
            text.trim().parse::<u64>().map_err(|_| {
                ApiError::bad_request(
                    "invalid_header",
                    format!("{name} must be a non-negative integer"),
                )
            })
        })
        .transpose()
}

fn has_body(req: &HttpRequest) -> bool {
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    let length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok())
        .unwrap_or(0);
    chunked || length > 0
}

fn offset_content_type(req: &HttpRequest) -> Result<(), ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if content_type
        .split(';')
        .next()
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(OFFSET_OCTET_STREAM))
    {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_content_type",
            format!("PATCH bodies must be Content-Type: {OFFSET_OCTET_STREAM}"),
        ))
    }
}

/// `Upload-Checksum: <algorithm> <base64 digest>`.
fn checksum_header(req: &HttpRequest) -> Result<Option<ChunkChecksum>, ApiError> {
    let Some(text) = text_header(req, "upload-checksum")? else {
        return Ok(None);
    };
    let invalid = |message: String| ApiError::bad_request("invalid_checksum", message);
    let (name, encoded) = text
        .trim()
        .split_once(' ')
        .ok_or_else(|| invalid("Upload-Checksum must be `<algorithm> <base64 digest>`".into()))?;
    let algorithm = ChecksumAlgorithm::parse(name).ok_or_else(|| {
        invalid(format!(
            "checksum algorithm {name:?} is not supported; use one of {TUS_CHECKSUM_ALGORITHMS}"
        ))
    })?;
    let digest = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| invalid("the Upload-Checksum digest is not base64".into()))?;
    Ok(Some(ChunkChecksum { algorithm, digest }))
}

/// `Upload-Metadata: key base64value,key2 base64value2`; the keys we use become the media
/// record, the others are kept only in the raw header. The `gate` (JSON) comes back apart:
/// the AuthActor validates it before it goes into the metadata.
pub fn parse_metadata(raw: &str) -> Result<(TusMetadata, Option<String>), ApiError> {
    let invalid = |message: String| ApiError::bad_request("invalid_metadata", message);
    let mut metadata = TusMetadata::default();
    let mut gate = None;
    for pair in raw
        .split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
    {
        let (key, encoded) = pair.split_once(' ').unwrap_or((pair, ""));
        let value = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| invalid(format!("Upload-Metadata {key:?} is not base64")))?;
        let text = || {
            String::from_utf8(value.clone())
                .map_err(|_| invalid(format!("Upload-Metadata {key:?} must be UTF-8")))
        };
        match key {
            "filename" => metadata.filename = Some(text()?),
            "title" => metadata.title = Some(text()?),
            "description" => metadata.description = Some(text()?),
            "tags" => metadata.tags = text()?.split(',').map(str::to_string).collect(),
            "visibility" => metadata.visibility = Some(super::uploads::parse_visibility(&text()?)?),
            "gate" => gate = Some(text()?),
            _ => {}
        }
    }
    Ok((metadata, gate))
}

fn expires_header(response: &mut actix_web::HttpResponseBuilder, upload: &TusUpload) {
    if upload.state == TusState::Receiving {
        let at = std::time::SystemTime::from(upload.expires_at);
        response.insert_header(("Upload-Expires", header::HttpDate::from(at).to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_decodes_known_keys_and_rejects_bad_base64() {
        let (metadata, gate) =
            parse_metadata("filename Y2xpcC5tcDQ=,title TXkgY2xpcA==,tags YSxi,is_confidential")
                .unwrap();
        assert_eq!(gate, None);
        assert_eq!(metadata.filename.as_deref(), Some("clip.mp4"));
        assert_eq!(metadata.title.as_deref(), Some("My clip"));
        assert_eq!(metadata.tags, vec!["a".to_string(), "b".to_string()]);
        assert!(parse_metadata("title !!!").is_err());
    }
}
