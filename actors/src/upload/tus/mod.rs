//! Resumable uploads (tus 1.0.0): creation, PATCHes with optional chunk checksums, termination,
//! expiry, and crash-safe finishing.
//!
//! The bytes of an unfinished upload live in a partial file under `data_dir/partials`, outside
//! the blob store, so nothing half-received can be served or transcoded. As with the one-shot
//! upload, bytes never pass through the mailbox: `BeginTusPatch` hands the handler a [`TusSink`]
//! (it holds the upload's lock), the handler pumps the body into it and sends the sink back in
//! `CommitTusPatch`, which keeps the bytes or cuts them off before the reply.
//!
//! Invariant: while an upload is `receiving`, the partial file's length is its offset (as in
//! tusd's filestore). A PATCH is acknowledged once its bytes are written to the file, with no
//! store write, so a `kill -9` at any moment loses no acknowledged byte: written bytes sit in the
//! kernel's page cache, not in the process. Bytes that must not count (a PATCH refused or failed,
//! one that does not match its `Upload-Checksum` or was cut off while carrying one) are
//! truncated away before the reply; a checksummed PATCH stores its start (`unverified_from`,
//! flushed) before writing, so a crash in its middle cuts the file back to that start.
//! Durability trade-off: the file is fsynced once, when the upload is complete and before it is
//! finished. A power loss (not a crash) can leave the file shorter than what was acknowledged;
//! HEAD then reports the real length and the client resumes from there, as tus clients do.
//! `upload.sync_every_patch` fsyncs every PATCH before its reply, for operators who need
//! acknowledged bytes to survive power loss too.
//! Expiry: every write renews an upload, so it expires `expiry_s` after the later of the stored
//! `expires_at` and the partial file's mtime.
//! Invariant: at most one PATCH (or termination, or finishing) works on an upload at a time;
//! the lock is released when the sink is dropped, even if the client vanished mid-body. A PATCH
//! whose body has been silent for `TAKE_OVER_AFTER` (5 s) is asked to stop by its owner's next
//! request, which then takes the lock; a PATCH still receiving is never interrupted.
//! Invariant: a finished upload creates its media record and queues its job exactly once: the
//! `finishing` state is persisted first, and a restart that finds it checks what exists.

use std::{
    collections::HashMap,
    io::{IoSlice, Read, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use actix::{AsyncContext, Context, Handler, Message, ResponseFuture};
use bytes::Bytes;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::{
    media_record,
    quota::{ensure_free_space, release, Reservation, RESERVE_AHEAD},
    UploadActor, UploadError,
};
use crate::{
    audit::{action, AuditEvent},
    blobs::BlobStore,
    metadata::{normalize_tags, validate_text, CreateMedia, GetMedia, MetadataError},
    model::{JobKind, MediaId, TusMetadata, TusState, TusUpload, UploadId},
    monitor::metric_names::upload_outcome,
    sniff::{sniff_container, SNIFF_BYTES},
    store::{blocking, SharedRepo},
    transcode::{CheckOwnerCapacity, ListJobs, SubmitJob},
};

mod finish;
mod recovery;
mod sink;

pub(in crate::upload) use finish::Finisher;
pub(crate) use sink::partial_path;
use sink::{io_error, run_blocking, ChunkHasher};
pub use sink::{ChecksumAlgorithm, ChunkChecksum, TusDeps, TusShared, TusSink};

/// The protocol version we speak.
pub const TUS_VERSION: &str = "1.0.0";
/// The extensions we implement, for `Tus-Extension`.
pub const TUS_EXTENSIONS: &str =
    "creation,creation-with-upload,creation-defer-length,termination,checksum,expiration";
/// For `Tus-Checksum-Algorithm`.
pub const TUS_CHECKSUM_ALGORITHMS: &str = "sha1,sha256";

/// Received bytes are hashed and written in batches of this size, off the async threads.
const WRITE_BUFFER: usize = 1024 * 1024;
/// Page size when the actor walks the upload records.
const LIST_PAGE: usize = 500;

// ---------------------------------------------------------------------------------------------
// Messages

/// Creates an upload. `length` is `None` when the client defers it.
#[derive(Debug, Message)]
#[rtype(result = "Result<TusUpload, UploadError>")]
pub struct CreateTusUpload {
    pub length: Option<u64>,
    pub metadata: TusMetadata,
    pub raw_metadata: Option<String>,
    /// The quota key.
    pub owner: String,
    pub caller: String,
}

/// The stored state of an upload; an unfinished upload past its expiry is `Expired`.
#[derive(Debug, Message)]
#[rtype(result = "Result<TusUpload, UploadError>")]
pub struct GetTusUpload {
    pub upload_id: UploadId,
    /// Who asks (`Principal::name`): only the creator or an admin may see or touch an upload.
    pub requester: String,
}

/// Locks an upload for one PATCH and opens a sink at `offset`.
#[derive(Debug, Message)]
#[rtype(result = "Result<TusSink, UploadError>")]
pub struct BeginTusPatch {
    pub upload_id: UploadId,
    pub requester: String,
    /// The client's `Upload-Offset`; must equal the stored offset.
    pub offset: u64,
    /// `Upload-Length`, which a PATCH may carry once for a deferred-length upload.
    pub length: Option<u64>,
    /// `Content-Length`, when known: a body that cannot fit is refused before it is read.
    pub content_length: Option<u64>,
    pub checksum: Option<ChunkChecksum>,
}

/// Ends a PATCH: keeps the chunk (durably) or discards it, then releases the lock. The reply is
/// the upload as stored afterwards.
#[derive(Message)]
#[rtype(result = "Result<TusUpload, UploadError>")]
pub struct CommitTusPatch {
    pub sink: TusSink,
    pub ending: PatchEnding,
    pub caller: String,
}

/// How the body of a PATCH ended.
#[derive(Debug)]
pub enum PatchEnding {
    /// The whole body arrived.
    Complete,
    /// The client went away mid-body: what arrived is kept, unless a checksum was promised.
    Interrupted,
    /// The sink refused a chunk (size, container): the whole chunk is discarded.
    Refused(UploadError),
}

/// What clients may send (for `Tus-Max-Size`).
#[derive(Debug, Message)]
#[rtype(result = "UploadLimits")]
pub struct GetUploadLimits;

#[derive(Debug, Clone, Copy, actix::MessageResponse)]
pub struct UploadLimits {
    pub max_size_bytes: u64,
}

/// Deletes an unfinished upload and its bytes.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), UploadError>")]
pub struct TerminateTusUpload {
    pub upload_id: UploadId,
    pub requester: String,
    pub caller: String,
}

/// Deletes unfinished uploads past their expiry, and finished records past their retention
/// (sent on a timer); answers how many unfinished uploads expired.
#[derive(Debug, Message)]
#[rtype(result = "Result<usize, UploadError>")]
pub struct SweepExpiredUploads;

/// Cuts unverified PATCHes off partial files and finishes uploads a crash left complete or
/// `finishing`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct RecoverTusUploads;

// ---------------------------------------------------------------------------------------------
// Handlers

impl UploadActor {
    fn expiry_window(&self) -> Duration {
        Duration::from_secs(self.config.expiry_s)
    }

    fn expiry(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc() + self.expiry_window()
    }

    /// Starts the expiry sweep and the start-up recovery.
    pub(super) fn start_resumable(&mut self, ctx: &mut Context<Self>) {
        ctx.notify(RecoverTusUploads);
        let interval = Duration::from_secs(self.config.cleanup_interval_s);
        ctx.run_interval(interval, |_, ctx| ctx.notify(SweepExpiredUploads));
    }
}

/// Every upload record (the table is small: one record per upload, kept after finishing).
async fn all_uploads(repo: &SharedRepo) -> Result<Vec<TusUpload>, UploadError> {
    let mut found = Vec::new();
    let mut after: Option<UploadId> = None;
    loop {
        let cursor = after.clone();
        let page = blocking(repo, move |repo| {
            repo.list_tus_uploads(cursor.as_ref(), LIST_PAGE)
        })
        .await?;
        let done = page.len() < LIST_PAGE;
        after = page.last().map(|upload| upload.id.clone());
        found.extend(page);
        if done {
            return Ok(found);
        }
    }
}

/// Fills in what the partial file says about a `receiving` upload: its offset (the file's
/// length, short of an unverified PATCH) and its expiry (every write renews it). A missing file
/// holds no bytes.
async fn observe(
    partial_dir: &Path,
    mut upload: TusUpload,
    expiry: Duration,
) -> Result<TusUpload, UploadError> {
    if upload.state != TusState::Receiving {
        return Ok(upload);
    }
    let path = partial_path(partial_dir, &upload.id);
    let found = run_blocking(move || match std::fs::metadata(path) {
        Ok(meta) => Ok(Some((meta.len(), meta.modified()?))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    })
    .await?;
    let length = found.map_or(0, |(length, _)| length);
    upload.offset = upload
        .unverified_from
        .map_or(length, |start| length.min(start));
    if let Some((_, modified)) = found {
        let renewed = OffsetDateTime::from(modified) + expiry;
        upload.expires_at = upload.expires_at.max(renewed);
    }
    Ok(upload)
}

async fn load(
    deps: &TusDeps,
    upload_id: &UploadId,
    expiry: Duration,
) -> Result<TusUpload, UploadError> {
    // HEAD and every PATCH start here: the stored record comes from the upload cache when it
    // can, filled through its epoch guard.
    let upload = match deps.records.get(upload_id) {
        Some(upload) => upload,
        None => {
            let epoch = deps.records.epoch();
            let id = upload_id.clone();
            let upload = blocking(&deps.repo, move |repo| repo.get_tus_upload(&id))
                .await?
                .ok_or_else(|| UploadError::NotFound(upload_id.clone()))?;
            deps.records
                .insert_if_unchanged(upload.id.clone(), upload.clone(), epoch);
            upload
        }
    };
    let upload = observe(&deps.partial_dir, upload, expiry).await?;
    if upload.state == TusState::Receiving && upload.expires_at <= OffsetDateTime::now_utc() {
        return Err(UploadError::Expired(upload.id));
    }
    Ok(upload)
}

/// [`load`], for the upload's creator or an admin only.
async fn load_owned(
    deps: &TusDeps,
    upload_id: &UploadId,
    requester: &str,
    expiry: Duration,
) -> Result<TusUpload, UploadError> {
    let upload = load(deps, upload_id, expiry).await?;
    if upload.owner != requester && requester != crate::auth::ADMIN {
        return Err(UploadError::NotOwner(upload.id));
    }
    Ok(upload)
}

/// The media owner for an upload's owner name: a wallet owns its media, an admin owns none.
fn owner_wallet(owner: &str) -> Option<String> {
    (owner != crate::auth::ADMIN).then(|| owner.to_string())
}

/// Stores `upload`, then makes it the upload cache's copy (the epoch bump of the removal keeps
/// a racing fill of the older record out).
async fn save(deps: &TusDeps, upload: &TusUpload) -> Result<(), UploadError> {
    let stored = upload.clone();
    blocking(&deps.repo, move |repo| repo.put_tus_upload(&stored)).await?;
    deps.records.remove(&upload.id);
    deps.records.insert(upload.id.clone(), upload.clone());
    Ok(())
}

impl Handler<CreateTusUpload> for UploadActor {
    type Result = ResponseFuture<Result<TusUpload, UploadError>>;

    fn handle(&mut self, msg: CreateTusUpload, _: &mut Self::Context) -> Self::Result {
        let deps = self.tus.clone();
        let (max_size, quota) = (self.config.max_size_bytes, self.config.quota_bytes);
        let expires_at = self.expiry();
        let sync_every_patch = self.config.sync_every_patch;
        let default_visibility = self.config.default_visibility;
        let created = self.uploads.with_label_values(&[upload_outcome::CREATED]);
        let audit = self.audit.clone();
        let transcode = self.transcode.clone();
        Box::pin(async move {
            if let Some(owner) = owner_wallet(&msg.owner) {
                transcode
                    .send(CheckOwnerCapacity { owner })
                    .await
                    .map_err(|_| UploadError::Mailbox("transcode"))??;
            }
            match msg.length {
                Some(0) => return Err(UploadError::Empty),
                Some(length) if length > max_size => {
                    return Err(UploadError::TooLarge { limit: max_size })
                }
                _ => {}
            }
            // The default is fixed now: a later config change does not alter a started upload.
            let metadata = TusMetadata {
                tags: normalize_tags(msg.metadata.tags),
                visibility: Some(msg.metadata.visibility.unwrap_or(default_visibility)),
                ..msg.metadata
            };
            // Checked now, so a finished upload cannot fail on its metadata.
            let title = metadata.title.clone().unwrap_or_else(|| "Untitled".into());
            validate_text(
                &title,
                metadata.description.as_deref().unwrap_or_default(),
                &metadata.tags,
            )
            .map_err(UploadError::Metadata)?;
            ensure_free_space(&deps.partial_dir, deps.min_free_disk_bytes)?;
            // A known length is reserved whole now; a deferred one as its PATCHes arrive.
            let mut reservation = Reservation::new(deps.repo.clone(), &msg.owner, quota);
            if let Some(length) = msg.length {
                reservation.cover(length, 0).await?;
            }
            let upload = TusUpload {
                id: UploadId::new(),
                owner: msg.owner,
                length: msg.length,
                offset: 0,
                metadata,
                raw_metadata: msg.raw_metadata,
                state: TusState::Receiving,
                container: None,
                media_id: None,
                sha256: None,
                created_at: OffsetDateTime::now_utc(),
                expires_at,
                unverified_from: None,
            };
            let (dir, path) = (
                deps.partial_dir.clone(),
                partial_path(&deps.partial_dir, &upload.id),
            );
            run_blocking(move || {
                std::fs::File::create(path)?;
                // Otherwise a power loss can take the file, and the PATCHes synced into it, away.
                if sync_every_patch {
                    std::fs::File::open(dir)?.sync_all()?;
                }
                Ok(())
            })
            .await?;
            save(&deps, &upload).await?;
            reservation.keep();
            created.inc();
            audit
                .record(AuditEvent::ok(
                    action::UPLOAD_CREATE,
                    msg.caller,
                    Some(upload.id.to_string()),
                ))
                .await;
            Ok(upload)
        })
    }
}

impl Handler<GetUploadLimits> for UploadActor {
    type Result = UploadLimits;

    fn handle(&mut self, _: GetUploadLimits, _: &mut Self::Context) -> UploadLimits {
        UploadLimits {
            max_size_bytes: self.config.max_size_bytes,
        }
    }
}

impl Handler<GetTusUpload> for UploadActor {
    type Result = ResponseFuture<Result<TusUpload, UploadError>>;

    fn handle(&mut self, msg: GetTusUpload, _: &mut Self::Context) -> Self::Result {
        let (deps, expiry) = (self.tus.clone(), self.expiry_window());
        Box::pin(async move { load_owned(&deps, &msg.upload_id, &msg.requester, expiry).await })
    }
}

impl Handler<BeginTusPatch> for UploadActor {
    type Result = ResponseFuture<Result<TusSink, UploadError>>;

    fn handle(&mut self, msg: BeginTusPatch, _: &mut Self::Context) -> Self::Result {
        let deps = self.tus.clone();
        let (max_size, quota) = (self.config.max_size_bytes, self.config.quota_bytes);
        let expiry = self.expiry_window();
        // Taken before the first await, so two racing PATCHes cannot both pass.
        let lock = deps.lock(&msg.upload_id);
        Box::pin(async move {
            let lock = match lock {
                Err(UploadError::Locked) => take_over(&deps, &msg, expiry).await?,
                lock => lock?,
            };
            if deps.repo.backend_name() == "postgres" {
                // Another node may have written the record (a length, `finished`) a moment ago,
                // faster than its change notice: under the lock, read the store itself.
                deps.records.remove(&msg.upload_id);
            }
            let mut upload = load_owned(&deps, &msg.upload_id, &msg.requester, expiry).await?;
            if upload.state != TusState::Receiving {
                return Err(UploadError::Finished(upload.id));
            }
            ensure_free_space(&deps.partial_dir, deps.min_free_disk_bytes)?;
            let path = partial_path(&deps.partial_dir, &upload.id);
            let (cut_to, sniffed) = (upload.unverified_from, upload.container.is_some());
            let (file, offset, head) = run_blocking(move || {
                let mut file = std::fs::OpenOptions::new()
                    .read(true)
                    .append(true)
                    .create(true)
                    .open(path)?;
                cut_back(&file, cut_to)?;
                let offset = file.metadata()?.len();
                let mut head = Vec::new();
                if !sniffed {
                    (&mut file)
                        .take(SNIFF_BYTES as u64)
                        .read_to_end(&mut head)?;
                }
                Ok((file, offset, (!sniffed).then_some(head)))
            })
            .await?;
            upload.offset = offset;
            if upload.unverified_from.take().is_some() {
                save(&deps, &upload).await?;
            }
            if msg.offset != upload.offset {
                return Err(UploadError::OffsetMismatch {
                    expected: upload.offset,
                });
            }
            let length_was_deferred = upload.length.is_none();
            match (upload.length, msg.length) {
                (Some(known), Some(sent)) if known != sent => {
                    return Err(UploadError::InvalidLength(format!(
                        "Upload-Length is already {known}"
                    )))
                }
                (None, Some(sent)) if sent < upload.offset => {
                    return Err(UploadError::InvalidLength(format!(
                        "Upload-Length {sent} is below the offset {}",
                        upload.offset
                    )))
                }
                (None, Some(sent)) if sent > max_size => {
                    return Err(UploadError::TooLarge { limit: max_size })
                }
                (None, Some(sent)) => upload.length = Some(sent),
                _ => {}
            }

            let (room, limit) = match upload.length {
                Some(length) => (length - upload.offset, length),
                None => (max_size - upload.offset, max_size),
            };
            if msg.content_length.is_some_and(|length| length > room) {
                return Err(UploadError::TooLarge { limit });
            }
            // Quota: a deferred upload holds its offset; a length declared now is reserved whole
            // before the record learns it, and a PATCH while it stays deferred reserves its body
            // (`Content-Length` at once, else as the bytes arrive).
            let mut declared = Reservation::new(deps.repo.clone(), &upload.owner, quota);
            let mut this_patch = None;
            match upload.length {
                Some(length) if length_was_deferred => {
                    declared.cover(length - upload.offset, 0).await?;
                }
                None if quota > 0 => {
                    let mut reservation = Reservation::new(deps.repo.clone(), &upload.owner, quota);
                    if let Some(length) = msg.content_length {
                        reservation.cover(length, 0).await?;
                    }
                    this_patch = Some(reservation);
                }
                _ => {}
            }
            if msg.checksum.is_some() {
                upload.unverified_from = Some(upload.offset);
            }
            if (length_was_deferred && upload.length.is_some()) || upload.unverified_from.is_some()
            {
                save(&deps, &upload).await?;
            }
            declared.keep();
            let whole = deps.shared.take_hash(&upload.id, upload.offset);
            // From here the PATCH counts as receiving, so its silence can be measured.
            lock.holder.received();
            Ok(TusSink {
                start: upload.offset,
                upload,
                received: 0,
                room,
                limit,
                reservation: this_patch,
                file: Arc::new(file),
                pending: Vec::new(),
                pending_bytes: 0,
                flushed: 0,
                chunk: msg
                    .checksum
                    .map(|checksum| (checksum.clone(), ChunkHasher::new(checksum.algorithm))),
                whole,
                hashing: None,
                in_flight: None,
                head,
                sniffed: false,
                lock: Arc::new(lock),
            })
        })
    }
}

/// A PATCH whose body has sent nothing for this long is taken over by its owner's next request.
/// Such a PATCH is almost always from a client whose network went away without closing the
/// connection (a phone that changed networks); without this its upload stays locked (423)
/// until the body timeout, longer than common tus clients keep retrying.
pub(super) const TAKE_OVER_AFTER: Duration = Duration::from_secs(5);
/// How long a request taking an upload over waits for the silent PATCH to commit and let go.
const TAKE_OVER_WAIT: Duration = Duration::from_secs(10);

/// The lock of an upload held by a silent PATCH in this process, once that PATCH has kept what
/// arrived and let go; `Locked` for anything else (a live PATCH, finishing, another node).
async fn take_over(
    deps: &TusDeps,
    msg: &BeginTusPatch,
    expiry: Duration,
) -> Result<sink::UploadLock, UploadError> {
    let holder = deps
        .shared
        .silent_holder(&msg.upload_id, TAKE_OVER_AFTER)
        .ok_or(UploadError::Locked)?;
    // Only the owner may end the PATCH; anyone else learns nothing from the attempt.
    load_owned(deps, &msg.upload_id, &msg.requester, expiry).await?;
    holder.ask_to_release();
    let deadline = tokio::time::Instant::now() + TAKE_OVER_WAIT;
    loop {
        let freed = deps.shared.freed.notified();
        match deps.lock(&msg.upload_id) {
            Err(UploadError::Locked) => {}
            lock => return lock,
        }
        if tokio::time::timeout_at(deadline, freed).await.is_err() {
            return Err(UploadError::Locked);
        }
    }
}

impl Handler<CommitTusPatch> for UploadActor {
    type Result = ResponseFuture<Result<TusUpload, UploadError>>;

    fn handle(&mut self, msg: CommitTusPatch, _: &mut Self::Context) -> Self::Result {
        let deps = self.tus.clone();
        let finisher = self.finisher();
        let expires_at = self.expiry();
        let sync_every_patch = self.config.sync_every_patch;
        let checksum_failures = self.upload_checksum_failures.clone();
        let received_bytes = self.upload_received_bytes.clone();
        Box::pin(async move {
            let mut sink = msg.sink;
            let refusal = match msg.ending {
                PatchEnding::Refused(error) => Some(error),
                PatchEnding::Interrupted if sink.chunk.is_some() => Some(UploadError::Interrupted),
                PatchEnding::Interrupted => None,
                PatchEnding::Complete => match sink.chunk.take() {
                    Some((expected, hasher)) if !hasher.matches(&expected.digest) => {
                        checksum_failures.inc();
                        Some(UploadError::ChecksumMismatch)
                    }
                    _ => None,
                },
            };
            let offset = sink.start + sink.received;
            let complete = sink.upload.length == Some(offset);
            let refusal = refusal.or_else(|| {
                // A file shorter than the sniff window is judged once it is complete.
                (complete && sink.head.is_some())
                    .then(|| sink.sniff().err())
                    .flatten()
            });
            let unverified = sink.upload.unverified_from.is_some();
            if let Some(error) = refusal {
                sink.discard().await?;
                if let Some(mut reservation) = sink.reservation.take() {
                    reservation.trim(0).await?;
                }
                // Bytes the hash already saw are gone; finishing will hash the file instead.
                deps.shared.forget_hash(&sink.upload.id);
                if unverified {
                    let mut upload = sink.upload.clone();
                    upload.unverified_from = None;
                    if sink.sniffed {
                        // Sniffed from the bytes just discarded.
                        upload.container = None;
                    }
                    save(&deps, &upload).await?;
                }
                return Err(error);
            }
            sink.write_out().await?;
            if let Some(mut reservation) = sink.reservation.take() {
                reservation.trim(sink.received).await?;
                reservation.keep();
            }
            // A complete upload is made durable before it is finished and acknowledged.
            if complete || sync_every_patch {
                sink.sync(sync_every_patch).await?;
            }
            let mut upload = sink.upload.clone();
            upload.offset = offset;
            upload.expires_at = expires_at;
            upload.unverified_from = None;
            // The offset itself lives in the file's length; the record changes only when it
            // learns something the file cannot tell.
            if unverified || sink.sniffed {
                save(&deps, &upload).await?;
            }
            received_bytes.inc_by(sink.received);
            let whole = sink.whole.take();
            if !complete {
                if let Some(hasher) = whole {
                    deps.shared.keep_hash(&upload.id, offset, hasher);
                }
                return Ok(upload);
            }
            // Still holding the sink (and so the lock) while finishing.
            let whole = match whole {
                Some(hashed) => hashed.resolve().await,
                None => None,
            };
            let finished = finisher.finish(upload, whole, msg.caller).await;
            drop(sink);
            finished
        })
    }
}

impl Handler<TerminateTusUpload> for UploadActor {
    type Result = ResponseFuture<Result<(), UploadError>>;

    fn handle(&mut self, msg: TerminateTusUpload, _: &mut Self::Context) -> Self::Result {
        let deps = self.tus.clone();
        let terminated = self
            .uploads
            .with_label_values(&[upload_outcome::TERMINATED]);
        let audit = self.audit.clone();
        let (expiry, quota) = (self.expiry_window(), self.config.quota_bytes);
        let lock = deps.lock(&msg.upload_id);
        Box::pin(async move {
            let _lock = lock?;
            let upload = load_owned(&deps, &msg.upload_id, &msg.requester, expiry).await?;
            if upload.state != TusState::Receiving {
                return Err(UploadError::Finished(upload.id));
            }
            remove_upload(&deps, &upload.id).await?;
            release(&deps.repo, &upload.owner, held_bytes(&upload), quota).await?;
            terminated.inc();
            audit
                .record(AuditEvent::ok(
                    action::UPLOAD_TERMINATE,
                    msg.caller,
                    Some(upload.id.to_string()),
                ))
                .await;
            Ok(())
        })
    }
}

/// Cuts off, durably, what an unverified PATCH left past `start` (a crash in its middle).
fn cut_back(file: &std::fs::File, start: Option<u64>) -> std::io::Result<()> {
    if let Some(start) = start {
        if file.metadata()?.len() > start {
            file.set_len(start)?;
            file.sync_all()?;
        }
    }
    Ok(())
}

/// What an unfinished upload holds against its owner's quota: its length, or its offset while
/// the length is deferred.
fn held_bytes(upload: &TusUpload) -> u64 {
    upload.length.unwrap_or(upload.offset)
}

/// Deletes an upload's bytes, then its record.
async fn remove_upload(deps: &TusDeps, upload_id: &UploadId) -> Result<(), UploadError> {
    let path = partial_path(&deps.partial_dir, upload_id);
    run_blocking(move || match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    })
    .await?;
    deps.shared.forget_hash(upload_id);
    let id = upload_id.clone();
    blocking(&deps.repo, move |repo| repo.delete_tus_upload(&id)).await?;
    deps.records.remove(upload_id);
    let (dir, id) = (deps.partial_dir.clone(), upload_id.clone());
    run_blocking(move || sink::remove_lock_file(&dir, &id)).await?;
    Ok(())
}
