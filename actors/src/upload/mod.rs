//! UploadActor: turns received bytes into a stored source file, a media record and a queued
//! transcode job — in one shot (this file) or resumably over tus 1.0.0 ([`tus`]).
//!
//! The bytes themselves do not pass through the mailbox: `BeginUpload` hands the caller an
//! [`UploadSink`] that sniffs the container, enforces the size limit, hashes and streams into the
//! blob store; `FinishUpload` then makes the decisions (record, job) inside the actor.
//!
//! Invariant: a 201 for an upload means the source blob, the media record and its transcode job
//! are all durable.

pub mod quota;
pub mod tus;

use actix::{Actor, Addr, Context, Handler, Message, ResponseFuture, Supervised};
use prometheus::{Histogram, IntCounter, IntCounterVec};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::{
    audit::{action, outcome, AuditEvent, AuditLog},
    auth::Principal,
    blobs::{BlobError, BlobStore, BlobWriter},
    config::UploadConfig,
    error::{DomainError, ErrorKind},
    metadata::{normalize_tags, CreateMedia, DeleteMedia, MetadataActor, MetadataError},
    model::{Gate, JobKind, Media, MediaId, MediaState, UploadId, Visibility},
    monitor::{metric_names::upload_outcome, Metrics},
    sniff::{sniff_container, Container, SNIFF_BYTES},
    store::StoreError,
    supervise::supervised_basics,
    transcode::{SubmitJob, TranscodeActor, TranscodeError},
};

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("upload exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("not a video container (checked the file's first bytes)")]
    NotAVideo,
    #[error("upload is empty")]
    Empty,
    #[error(transparent)]
    Blobs(#[from] BlobError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Transcode(#[from] TranscodeError),
    #[error("{0} actor unavailable")]
    Mailbox(&'static str),
    #[error("upload {0} not found")]
    NotFound(UploadId),
    #[error("upload {0} expired")]
    Expired(UploadId),
    #[error("upload {0} is complete")]
    Finished(UploadId),
    #[error("upload {0} belongs to someone else")]
    NotOwner(UploadId),
    #[error("Upload-Offset does not match the upload's offset {expected}")]
    OffsetMismatch { expected: u64 },
    #[error("another request is writing to this upload; retry in a few seconds")]
    Locked,
    #[error("the chunk does not match its Upload-Checksum; it was discarded")]
    ChecksumMismatch,
    #[error("the upload quota of {quota} bytes would be exceeded")]
    QuotaExceeded { quota: u64 },
    #[error("{0}")]
    InvalidLength(String),
    #[error("the request body ended early")]
    Interrupted,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("partial upload I/O failed: {0}")]
    Disk(String),
    /// The disk is full, or its free space is below `storage.min_free_disk_mb`.
    #[error("the server's disk is full: {0}")]
    DiskFull(String),
}

impl DomainError for UploadError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::TooLarge { .. } => ErrorKind::TooLarge,
            Self::NotAVideo => ErrorKind::UnsupportedMedia,
            Self::Empty => ErrorKind::Invalid,
            Self::DiskFull(_) | Self::Blobs(BlobError::Full(_)) => ErrorKind::InsufficientStorage,
            Self::Blobs(_) | Self::Mailbox(_) | Self::Store(_) | Self::Disk(_) => {
                ErrorKind::Unavailable
            }
            Self::Metadata(inner) => inner.kind(),
            Self::Transcode(inner) => inner.kind(),
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Expired(_) => ErrorKind::Gone,
            Self::Finished(_) | Self::OffsetMismatch { .. } => ErrorKind::Conflict,
            Self::Locked => ErrorKind::Locked,
            Self::NotOwner(_) => ErrorKind::Forbidden,
            Self::ChecksumMismatch => ErrorKind::ChecksumMismatch,
            Self::QuotaExceeded { .. } => ErrorKind::QuotaExceeded,
            Self::InvalidLength(_) | Self::Interrupted => ErrorKind::Invalid,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "upload_too_large",
            Self::NotAVideo => "unsupported_container",
            Self::Empty => "upload_empty",
            Self::DiskFull(_) | Self::Blobs(BlobError::Full(_)) => "insufficient_storage",
            Self::Blobs(_) => "blobs_unavailable",
            Self::Mailbox(_) => "actor_unavailable",
            Self::Metadata(inner) => inner.code(),
            Self::Transcode(inner) => inner.code(),
            Self::NotFound(_) => "upload_not_found",
            Self::Expired(_) => "upload_expired",
            Self::Finished(_) => "upload_finished",
            Self::NotOwner(_) => "not_upload_owner",
            Self::OffsetMismatch { .. } => "offset_mismatch",
            Self::Locked => "upload_locked",
            Self::ChecksumMismatch => "checksum_mismatch",
            Self::QuotaExceeded { .. } => "quota_exceeded",
            Self::InvalidLength(_) => "invalid_length",
            Self::Interrupted => "body_interrupted",
            Self::Store(_) => "store_unavailable",
            Self::Disk(_) => "disk_unavailable",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Messages

/// Opens a sink for one upload. `declared_size` (e.g. from `Content-Length`) lets an oversized
/// upload be refused before a byte is stored.
#[derive(Debug, Message)]
#[rtype(result = "Result<UploadSink, UploadError>")]
pub struct BeginUpload {
    pub declared_size: Option<u64>,
    /// The whole request body's length (`Content-Length`), which bounds the file's size: it is
    /// reserved against the caller's quota up front, so an upload that cannot fit is refused
    /// before a byte is stored. Without it the quota is reserved as the bytes arrive.
    pub body_length: Option<u64>,
    /// Who is uploading, for the audit log.
    pub caller: String,
}

/// Turns a finished sink into a media record and queues its transcode job.
#[derive(Debug, Message)]
#[rtype(result = "Result<UploadReceipt, UploadError>")]
pub struct FinishUpload {
    pub file: ReceivedFile,
    pub title: Option<String>,
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub owner: Option<String>,
    /// `None`: `upload.default_visibility`.
    pub visibility: Option<Visibility>,
    /// A gate validated by the AuthActor (`ValidateGate`), stored with the record.
    pub gate: Option<Gate>,
    pub caller: String,
    /// W3C trace id of the upload request, handed on to the transcode job.
    pub trace_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct UploadReceipt {
    pub media_id: MediaId,
    pub upload_id: UploadId,
    pub size: u64,
    pub sha256: String,
}

// ---------------------------------------------------------------------------------------------
// Actor

pub struct UploadActor {
    config: UploadConfig,
    blobs: BlobStore,
    metadata: Addr<MetadataActor>,
    transcode: Addr<TranscodeActor>,
    uploads: IntCounterVec,
    upload_bytes: IntCounter,
    upload_received_bytes: IntCounter,
    upload_checksum_failures: IntCounter,
    upload_duration: Histogram,
    /// Finished tus records dropped by the sweep.
    tus_pruned: IntCounter,
    audit: AuditLog,
    tus: tus::TusDeps,
}

/// What the UploadActor works with.
#[derive(Clone)]
pub struct UploadDeps {
    pub config: UploadConfig,
    pub blobs: BlobStore,
    pub metadata: Addr<MetadataActor>,
    pub transcode: Addr<TranscodeActor>,
    pub metrics: Metrics,
    pub audit: AuditLog,
    pub tus: tus::TusDeps,
}

impl UploadActor {
    pub fn new(deps: UploadDeps) -> Self {
        let UploadDeps {
            config,
            blobs,
            metadata,
            transcode,
            metrics,
            audit,
            tus,
        } = deps;
        Self {
            config,
            blobs,
            metadata,
            transcode,
            uploads: metrics.uploads.clone(),
            upload_bytes: metrics.upload_bytes.clone(),
            upload_received_bytes: metrics.upload_received_bytes.clone(),
            upload_checksum_failures: metrics.upload_checksum_failures.clone(),
            upload_duration: metrics.upload_duration.clone(),
            tus_pruned: metrics.retention_pruned.with_label_values(&["tus_upload"]),
            audit,
            tus,
        }
    }

    fn finisher(&self) -> tus::Finisher {
        tus::Finisher {
            deps: self.tus.clone(),
            blobs: self.blobs.clone(),
            metadata: self.metadata.clone(),
            transcode: self.transcode.clone(),
            finished: self.uploads.with_label_values(&[upload_outcome::FINISHED]),
            stored_bytes: self.upload_bytes.clone(),
            duration: self.upload_duration.clone(),
            audit: self.audit.clone(),
        }
    }
}

impl Actor for UploadActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.start_resumable(ctx);
    }
}

impl Supervised for UploadActor {}

supervised_basics!(UploadActor);

impl Handler<BeginUpload> for UploadActor {
    type Result = ResponseFuture<Result<UploadSink, UploadError>>;

    fn handle(&mut self, msg: BeginUpload, _: &mut Self::Context) -> Self::Result {
        let (limit, quota) = (self.config.max_size_bytes, self.config.quota_bytes);
        let blobs = self.blobs.clone();
        let rejected = self.uploads.with_label_values(&[upload_outcome::REJECTED]);
        let audit = self.audit.clone();
        let deps = self.tus.clone();
        Box::pin(async move {
            let mut reservation = quota::Reservation::new(deps.repo.clone(), &msg.caller, quota);
            let rejection = Rejection {
                counter: rejected,
                audit,
                caller: msg.caller,
            };
            let checked = async {
                if msg.declared_size.is_some_and(|size| size > limit) {
                    return Err(UploadError::TooLarge { limit });
                }
                // Only the local backend fills the data directory's disk.
                if blobs.is_local() {
                    quota::ensure_free_space(&deps.partial_dir, deps.min_free_disk_bytes)?;
                }
                if let Some(length) = msg.body_length {
                    reservation.cover(length, 0).await?;
                }
                Ok(())
            };
            if let Err(error) = checked.await {
                rejection.record(&error).await;
                return Err(error);
            }
            let upload_id = UploadId::new();
            let key = BlobStore::source_key(&upload_id);
            let writer = blobs.writer(&key).await?;
            Ok(UploadSink {
                upload_id,
                key,
                writer,
                hasher: Sha256::new(),
                size: 0,
                limit,
                head: Vec::with_capacity(SNIFF_BYTES),
                container: None,
                rejection,
                reservation,
            })
        })
    }
}

impl Handler<FinishUpload> for UploadActor {
    type Result = ResponseFuture<Result<UploadReceipt, UploadError>>;

    fn handle(&mut self, msg: FinishUpload, _: &mut Self::Context) -> Self::Result {
        let metadata = self.metadata.clone();
        let transcode = self.transcode.clone();
        let blobs = self.blobs.clone();
        let finished = self.uploads.with_label_values(&[upload_outcome::FINISHED]);
        let upload_bytes = self.upload_bytes.clone();
        let audit = self.audit.clone();
        let (repo, quota) = (self.tus.repo.clone(), self.config.quota_bytes);
        let default_visibility = self.config.default_visibility;
        Box::pin(async move {
            let file = msg.file;
            let mut media = media_record(
                MediaId::new(),
                &file,
                msg.title,
                msg.description,
                msg.tags,
                msg.owner,
            );
            media.visibility = msg.visibility.unwrap_or(default_visibility);
            let created = metadata
                .send(CreateMedia {
                    media,
                    gate: msg.gate,
                })
                .await
                .map_err(|_| UploadError::Mailbox("metadata"));
            let media = match created {
                Ok(Ok(media)) => media,
                failed => {
                    // Nothing refers to the source blob yet; drop it rather than orphan it, and
                    // give its bytes back to the quota.
                    blobs.delete(&file.key).await?;
                    quota::release(&repo, &msg.caller, file.size, quota).await?;
                    return Err(match failed {
                        Ok(Err(error)) => error.into(),
                        Err(error) => error,
                        Ok(Ok(_)) => UploadError::Mailbox("metadata"),
                    });
                }
            };
            let submitted = transcode
                .send(SubmitJob {
                    kind: JobKind::Transcode,
                    media_id: media.id.clone(),
                    priority: 5,
                    caller: msg.caller.clone(),
                    trace_id: msg.trace_id.clone(),
                    owner_cap: true,
                })
                .await
                .map_err(|_| UploadError::Mailbox("transcode"))?;
            if let Err(error) = submitted {
                // Not acknowledged, so nothing of it may stay: a record without a job would
                // stay `processing` for ever.
                let deleted = metadata
                    .send(DeleteMedia {
                        media_id: media.id.clone(),
                        principal: Principal::Admin,
                    })
                    .await;
                if !matches!(deleted, Ok(Ok(()))) {
                    tracing::warn!(media_id = %media.id, "refused upload's record left behind");
                }
                return Err(error.into());
            }
            finished.inc();
            upload_bytes.inc_by(file.size);
            audit
                .record(AuditEvent::ok(
                    action::UPLOAD_FINISH,
                    msg.caller,
                    Some(media.id.to_string()),
                ))
                .await;
            Ok(UploadReceipt {
                media_id: media.id,
                upload_id: file.upload_id,
                size: file.size,
                sha256: file.sha256,
            })
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The sink

/// Receives one upload's bytes: sniffs the container from the first bytes, enforces the size
/// limit, hashes with SHA-256 and streams into the blob store. Dropping it without `finish`
/// leaves nothing behind.
pub struct UploadSink {
    upload_id: UploadId,
    key: String,
    writer: BlobWriter,
    hasher: Sha256,
    size: u64,
    limit: u64,
    /// The first bytes, held back until the container is known.
    head: Vec<u8>,
    container: Option<&'static str>,
    rejection: Rejection,
    /// The caller's quota held for this upload; given back if the sink is dropped unfinished.
    reservation: quota::Reservation,
}

/// Counts and audits a refused upload.
struct Rejection {
    counter: IntCounter,
    audit: AuditLog,
    caller: String,
}

impl Rejection {
    async fn record(&self, error: &UploadError) {
        self.counter.inc();
        let event = AuditEvent::ok(action::UPLOAD_REJECT, self.caller.clone(), None)
            .with_outcome(outcome::DENIED, error.code());
        self.audit.record(event).await;
    }
}

impl std::fmt::Debug for UploadSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadSink")
            .field("upload_id", &self.upload_id)
            .field("size", &self.size)
            .finish()
    }
}

/// A completely stored upload.
#[derive(Debug, Clone)]
pub struct ReceivedFile {
    pub upload_id: UploadId,
    pub key: String,
    pub filename: Option<String>,
    pub container: &'static str,
    pub size: u64,
    pub sha256: String,
}

impl UploadSink {
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), UploadError> {
        self.size += chunk.len() as u64;
        if self.size > self.limit {
            let error = UploadError::TooLarge { limit: self.limit };
            self.rejection.record(&error).await;
            return Err(error);
        }
        if let Err(error) = self
            .reservation
            .cover(self.size, quota::RESERVE_AHEAD)
            .await
        {
            self.rejection.record(&error).await;
            return Err(error);
        }
        self.hasher.update(chunk);
        if self.container.is_some() {
            return Ok(self.writer.write(chunk).await?);
        }
        self.head.extend_from_slice(chunk);
        if self.head.len() >= SNIFF_BYTES {
            self.sniff().await?;
            let head = std::mem::take(&mut self.head);
            self.writer.write(&head).await?;
        }
        Ok(())
    }

    async fn sniff(&mut self) -> Result<(), UploadError> {
        match sniff_container(&self.head) {
            Some(container) => {
                self.container = Some(container.as_str());
                Ok(())
            }
            None => {
                self.rejection.record(&UploadError::NotAVideo).await;
                Err(UploadError::NotAVideo)
            }
        }
    }

    /// Completes the blob; only now does it become visible under its key.
    pub async fn finish(mut self, filename: Option<String>) -> Result<ReceivedFile, UploadError> {
        if self.size == 0 {
            self.rejection.record(&UploadError::Empty).await;
            self.writer.abort().await?;
            return Err(UploadError::Empty);
        }
        if self.container.is_none() {
            if let Err(error) = self.sniff().await {
                self.writer.abort().await?;
                return Err(error);
            }
            let head = std::mem::take(&mut self.head);
            self.writer.write(&head).await?;
        }
        self.writer.finish().await?;
        // The stored file holds exactly its size; FinishUpload gives that back if no record
        // takes it.
        self.reservation.trim(self.size).await?;
        self.reservation.keep();
        Ok(ReceivedFile {
            upload_id: self.upload_id,
            key: self.key,
            filename: filename.map(|name| sanitize_filename(&name)),
            container: self.container.unwrap_or("unknown"),
            size: self.size,
            sha256: hex::encode(self.hasher.finalize()),
        })
    }

    /// Discards everything received so far.
    pub async fn abort(self) -> Result<(), UploadError> {
        Ok(self.writer.abort().await?)
    }
}

/// The record of a freshly uploaded file; the title falls back to the file name.
fn media_record(
    id: MediaId,
    file: &ReceivedFile,
    title: Option<String>,
    description: Option<String>,
    tags: Vec<String>,
    owner: Option<String>,
) -> Media {
    let now = OffsetDateTime::now_utc();
    let title = title
        .filter(|title| !title.trim().is_empty())
        .or_else(|| file.filename.as_deref().map(title_from_filename))
        .unwrap_or_else(|| "Untitled".to_string());
    Media {
        id,
        title,
        description: description.unwrap_or_default(),
        tags: normalize_tags(tags),
        owner,
        visibility: Visibility::Public,
        visibility_epoch: 0,
        captions: Vec::new(),
        state: MediaState::Processing,
        failure: None,
        failure_code: None,
        container: Container::parse(file.container).map(|c| c.as_str().to_string()),
        upload_id: file.upload_id.clone(),
        filename: file.filename.as_deref().map(sanitize_filename),
        size: file.size,
        sha256: file.sha256.clone(),
        source_key: file.key.clone(),
        duration_s: None,
        width: None,
        height: None,
        video_codec: None,
        renditions: Vec::new(),
        playable_at: None,
        created_at: now,
        updated_at: now,
    }
}

/// Keeps the last path component and drops control characters.
fn sanitize_filename(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    base.chars().filter(|c| !c.is_control()).take(255).collect()
}

fn title_from_filename(name: &str) -> String {
    let base = sanitize_filename(name);
    let stem = base
        .rsplit_once('.')
        .map_or(base.as_str(), |(stem, _)| stem);
    let stem = stem.trim();
    if stem.is_empty() {
        "Untitled".to_string()
    } else {
        stem.chars()
            .take(crate::metadata::MAX_TITLE_CHARS)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_come_from_file_names_without_paths() {
        assert_eq!(title_from_filename("../../etc/My Clip.mp4"), "My Clip");
        assert_eq!(title_from_filename("C:\\videos\\a.b.mkv"), "a.b");
        assert_eq!(title_from_filename(".mp4"), "Untitled");
        assert_eq!(sanitize_filename("x\u{0}y/z\n.mp4"), "z.mp4");
    }
}
