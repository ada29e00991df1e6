//! MetadataActor: the media records. Creates them for finished uploads, records what the
//! transcoder produced, answers reads, validates edits, and deletes a media item with its blobs.
//!
//! Invariant: every read-modify-write of a record runs as an atomic response, so two writes to
//! one record never interleave; plain reads run concurrently.
//! Invariant: a write is in the store first, then the media's cache entries are dropped and the
//! change is staged in the search index, all before the reply: a client that got the reply reads
//! the change from `GET /api/v1/media/{id}` and the playlists at once, and from search within
//! one group commit (`search::COMMIT_INTERVAL`). A failed index write is logged; the next
//! start-up reconciles the index with the store.

use std::{sync::Arc, time::Duration};

use actix::{
    Actor, Addr, AsyncContext, AtomicResponse, Context, Handler, Message, ResponseFuture,
    Supervised, WrapFuture,
};
use time::OffsetDateTime;

use crate::{
    audit::{action, AuditEvent, AuditLog},
    auth::{PlaybackGuard, Principal},
    blobs::{BlobError, BlobStore},
    cache::Caches,
    error::{DomainError, ErrorKind},
    model::{Gate, Media, MediaFailure, MediaId, MediaState, Probe, Rendition, Visibility},
    search::SearchIndex,
    store::{blocking, SharedRepo, StoreError},
    supervise::supervised_basics,
    webhooks::{Publish, WebhookActor},
};

pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_DESCRIPTION_CHARS: usize = 5000;
pub const MAX_TAGS: usize = 20;
pub const MAX_TAG_CHARS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("media {0} not found")]
    NotFound(MediaId),
    #[error("{0}")]
    Invalid(String),
    #[error("only the media's owner (or an admin) may change it")]
    NotOwner,
    #[error("{0}")]
    InvalidCaption(String),
    #[error("no {1:?} caption on media {0}")]
    CaptionNotFound(MediaId, String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Blobs(#[from] BlobError),
}

impl DomainError for MetadataError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound(_) | Self::CaptionNotFound(..) => ErrorKind::NotFound,
            Self::Invalid(_) | Self::InvalidCaption(_) => ErrorKind::Invalid,
            Self::NotOwner => ErrorKind::Forbidden,
            Self::Store(_) | Self::Blobs(_) => ErrorKind::Unavailable,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "media_not_found",
            Self::Invalid(_) => "invalid_media",
            Self::InvalidCaption(_) => "invalid_caption",
            Self::CaptionNotFound(..) => "caption_not_found",
            Self::NotOwner => "not_media_owner",
            Self::Store(_) => "store_unavailable",
            Self::Blobs(_) => "blobs_unavailable",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Messages

#[derive(Debug, Message)]
#[rtype(result = "Result<Media, MetadataError>")]
pub struct CreateMedia {
    pub media: Media,
    /// A validated gate given with the upload: in force before the record is readable, and
    /// stored in the same transaction, so the media is never ungated for a moment.
    pub gate: Option<Gate>,
}

#[derive(Debug, Message)]
#[rtype(result = "Result<Media, MetadataError>")]
pub struct GetMedia {
    pub media_id: MediaId,
}

#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<Media>, MetadataError>")]
pub struct ListMedia {
    pub after: Option<MediaId>,
    pub limit: usize,
}

/// An edit by the creator; `None` leaves a field as it is.
#[derive(Debug, Message)]
#[rtype(result = "Result<Media, MetadataError>")]
pub struct UpdateMedia {
    pub media_id: MediaId,
    pub title: Option<String>,
    pub description: Option<String>,
    pub tags: Option<Vec<String>>,
    pub visibility: Option<Visibility>,
    /// Must own the media, or be an admin.
    pub principal: Principal,
}

#[derive(Debug, Message)]
#[rtype(result = "Result<(), MetadataError>")]
pub struct DeleteMedia {
    pub media_id: MediaId,
    /// Must own the media, or be an admin.
    pub principal: Principal,
}

/// Adds or replaces the WebVTT caption track `lang` (owner or admin).
#[derive(Debug, Message)]
#[rtype(result = "Result<Media, MetadataError>")]
pub struct PutCaption {
    pub media_id: MediaId,
    pub lang: String,
    pub vtt: bytes::Bytes,
    pub principal: Principal,
}

/// Removes the caption track `lang` (owner or admin).
#[derive(Debug, Message)]
#[rtype(result = "Result<Media, MetadataError>")]
pub struct DeleteCaption {
    pub media_id: MediaId,
    pub lang: String,
    pub principal: Principal,
}

/// Largest caption file accepted.
pub const MAX_CAPTION_BYTES: usize = 512 * 1024;

/// A BCP 47 tag as far as a caption needs: a 2–3 letter language, then up to five subtags of
/// 1–8 letters or digits (`en`, `pt-BR`, `zh-Hant-TW`).
pub fn is_caption_lang(lang: &str) -> bool {
    let mut parts = lang.split('-');
    let primary = parts.next().unwrap_or_default();
    let subtags: Vec<&str> = parts.collect();
    (2..=3).contains(&primary.len())
        && primary.chars().all(|c| c.is_ascii_alphabetic())
        && subtags.len() <= 5
        && subtags.iter().all(|tag| {
            (1..=8).contains(&tag.len()) && tag.chars().all(|c| c.is_ascii_alphanumeric())
        })
}

/// UTF-8, within the size cap, and the `WEBVTT` signature line (after an optional BOM).
pub fn validate_caption(lang: &str, vtt: &[u8]) -> Result<(), MetadataError> {
    let invalid = |message: String| Err(MetadataError::InvalidCaption(message));
    if !is_caption_lang(lang) {
        return invalid(format!(
            "{lang:?} is not a BCP 47 language tag (e.g. en, pt-BR)"
        ));
    }
    if vtt.len() > MAX_CAPTION_BYTES {
        return invalid(format!("captions are limited to {MAX_CAPTION_BYTES} bytes"));
    }
    let Ok(text) = std::str::from_utf8(vtt) else {
        return invalid("captions must be UTF-8".into());
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let signed = text
        .strip_prefix("WEBVTT")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\n', '\r']));
    if !signed {
        return invalid("a WebVTT file starts with the line WEBVTT".into());
    }
    Ok(())
}

/// Blob key of a caption track.
pub fn caption_key(media_id: &MediaId, lang: &str) -> String {
    format!("{}/captions/{lang}.vtt", BlobStore::media_prefix(media_id))
}

/// A rerun is about to replace a ready media's output: until `RecordTranscode` it is
/// `processing`, so no playlist (cached or not) points at a half-replaced ladder. A failed
/// media being run again is `processing` again too.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), MetadataError>")]
pub struct MarkRepublishing {
    pub media_id: MediaId,
}

/// A change made elsewhere (a gate set or cleared) that lifecycle webhooks announce as
/// `media.updated`, with the record as it is now.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct AnnounceUpdate {
    pub media_id: MediaId,
}

/// The first segments of every rung are out: the media plays while its job still runs.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), MetadataError>")]
pub struct MarkPlayable {
    pub media_id: MediaId,
}

/// What a transcode run produced, or why it failed for good.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), MetadataError>")]
pub struct RecordTranscode {
    pub media_id: MediaId,
    pub outcome: Result<(Probe, Vec<Rendition>), MediaFailure>,
}

/// Fills the metadata and playlist caches ahead of the first requests: the records of
/// `media_ids` and of the `recent` newest ready, ungated media, and the HLS playlists of each
/// ready one. Fills go through the epoch guard like any read's, so a change racing the warm-up
/// keeps the old copy out.
#[derive(Message)]
#[rtype(result = "Result<WarmReport, MetadataError>")]
pub struct WarmCaches {
    pub media_ids: Vec<MediaId>,
    pub recent: usize,
    /// Which media are gated (their records are public, but they are not warmed unasked).
    pub gates: Option<PlaybackGuard>,
    /// Who asked, for the audit log (`None`: the warm-up at start).
    pub requested_by: Option<String>,
}

/// What a warm-up put into the caches.
#[derive(Debug, Clone, Default)]
pub struct WarmReport {
    pub records: usize,
    pub playlists: usize,
    /// Asked-for ids with no record.
    pub missing: Vec<MediaId>,
}

// ---------------------------------------------------------------------------------------------
// Actor

/// What the MetadataActor works with.
#[derive(Clone)]
pub struct MetadataDeps {
    pub repo: SharedRepo,
    pub blobs: BlobStore,
    pub audit: AuditLog,
    pub caches: Caches,
    pub search: SearchIndex,
    /// Which media are gated or not public; this actor keeps visibility current in it.
    pub playback: PlaybackGuard,
    /// Lifecycle events go here, stored before the change is acknowledged.
    pub webhooks: Addr<WebhookActor>,
    /// How often expired cache entries are swept.
    pub cache_purge_interval: Duration,
}

pub struct MetadataActor {
    repo: SharedRepo,
    blobs: BlobStore,
    audit: AuditLog,
    /// The read side (records, playlists) that `web` holds too; this actor invalidates it.
    caches: Caches,
    search: SearchIndex,
    playback: PlaybackGuard,
    webhooks: Addr<WebhookActor>,
    cache_purge_interval: Duration,
}

impl MetadataActor {
    pub fn new(deps: MetadataDeps) -> Self {
        Self {
            repo: deps.repo,
            blobs: deps.blobs,
            audit: deps.audit,
            caches: deps.caches,
            search: deps.search,
            playback: deps.playback,
            webhooks: deps.webhooks,
            cache_purge_interval: deps.cache_purge_interval,
        }
    }
}

impl Actor for MetadataActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let caches = self.caches.clone();
        ctx.run_interval(self.cache_purge_interval, move |_, _| {
            caches.purge_expired();
        });
    }
}

/// Another node changed a media record (`Some`), or changes may have been missed (`None`: the
/// change feed reconnected): brings this node's caches, search index and visibility table in
/// line with the store.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ChangedElsewhere {
    pub media_id: Option<MediaId>,
}

impl Handler<ChangedElsewhere> for MetadataActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: ChangedElsewhere, _: &mut Self::Context) -> Self::Result {
        let repo = self.repo.clone();
        let (caches, search) = (self.caches.clone(), self.search.clone());
        let playback = self.playback.clone();
        // Atomic: two changes to one record are applied in the order they were heard.
        AtomicResponse::new(Box::pin(
            async move {
                let Some(media_id) = msg.media_id else {
                    return resync(&repo, &caches, &search, &playback).await;
                };
                let id = media_id.clone();
                let stored = match blocking(&repo, move |repo| repo.get_media(&id)).await {
                    Ok(stored) => stored,
                    Err(error) => {
                        // Unreadable now: drop what we hold, so readers go to the store.
                        tracing::warn!(%error, %media_id, "remote change not applied");
                        caches.invalidate_media(&media_id);
                        return;
                    }
                };
                let was = playback.visibility(&media_id).ok().map(|(v, _)| v);
                match stored {
                    Some(media) => {
                        playback.set_visibility(
                            &media.id,
                            media.visibility,
                            media.visibility_epoch,
                        );
                        publish_change(&caches, &search, &media).await;
                        if was != Some(media.visibility) {
                            publish_at_once(&caches, &search).await;
                        }
                    }
                    None => {
                        caches.invalidate_media(&media_id);
                        if let Err(error) = search.remove_async(media_id.clone()).await {
                            tracing::error!(%error, %media_id, "search index not updated");
                        }
                        // The visibility entry stays: the deleting node removes the blobs only
                        // after the record, and until then restricted segments still need a token.
                    }
                }
            }
            .into_actor(self),
        ))
    }
}

/// Reloads everything this node copies from media records: changes may have been missed.
async fn resync(
    repo: &SharedRepo,
    caches: &Caches,
    search: &SearchIndex,
    playback: &PlaybackGuard,
) {
    caches.metadata.clear();
    caches.streaming.clear();
    caches.tokenised.clear();
    let (repo, index, guard) = (repo.clone(), search.clone(), playback.clone());
    let reloaded = tokio::task::spawn_blocking(move || -> Result<(), String> {
        index.reconcile(&repo).map_err(|e| e.to_string())?;
        let mut after: Option<MediaId> = None;
        loop {
            let page = repo
                .list_media(after.as_ref(), 1000)
                .map_err(|e| e.to_string())?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            for media in &page {
                guard.set_visibility(&media.id, media.visibility, media.visibility_epoch);
            }
        }
        index.commit().map_err(|e| e.to_string())
    })
    .await;
    match reloaded {
        Ok(Ok(())) => tracing::info!("media state reloaded after a change-feed gap"),
        Ok(Err(error)) => tracing::error!(%error, "media state not reloaded"),
        Err(error) => tracing::error!(%error, "media state reload not run"),
    }
    caches.search.clear();
}

/// Drops the media's cache entries and brings the index in line with the stored record.
async fn publish_change(caches: &Caches, search: &SearchIndex, media: &Media) {
    caches.invalidate_media(&media.id);
    if let Err(error) = search.upsert_async(media.clone()).await {
        tracing::error!(%error, media_id = %media.id, "search index not updated");
    }
}

/// A visibility change or a deletion is in the list and search at once: the index commits now
/// (not with the next group commit) and cached pages go. Otherwise a group commit falling between
/// a record's upsert and its removal (a refused upload's record) lists it until the next one.
async fn publish_at_once(caches: &Caches, search: &SearchIndex) {
    let index = search.clone();
    match tokio::task::spawn_blocking(move || index.commit()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::error!(%error, "search index not committed"),
        Err(error) => tracing::error!(%error, "search index commit not run"),
    }
    caches.search.clear();
}

/// Queues a lifecycle event; answered once it is stored. A failure is logged, not the
/// client's: the change itself is already stored.
async fn publish_event(webhooks: &Addr<WebhookActor>, event_type: &'static str, media: &Media) {
    let published = webhooks
        .send(Publish {
            event_type,
            media: media.clone(),
        })
        .await;
    match published {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::error!(%error, event_type, media_id = %media.id, "webhook event not queued")
        }
        Err(error) => {
            tracing::error!(%error, event_type, media_id = %media.id, "webhook actor unavailable")
        }
    }
}

fn now_nanos() -> u64 {
    OffsetDateTime::now_utc().unix_timestamp_nanos().max(1) as u64
}

impl Supervised for MetadataActor {}

supervised_basics!(MetadataActor);

impl Handler<CreateMedia> for MetadataActor {
    type Result = AtomicResponse<Self, Result<Media, MetadataError>>;

    fn handle(&mut self, msg: CreateMedia, _: &mut Self::Context) -> Self::Result {
        let repo = self.repo.clone();
        let (caches, search) = (self.caches.clone(), self.search.clone());
        let playback = self.playback.clone();
        let webhooks = self.webhooks.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let mut media = msg.media;
                validate_text(&media.title, &media.description, &media.tags)?;
                if media.visibility != Visibility::Public && media.visibility_epoch == 0 {
                    media.visibility_epoch = now_nanos();
                }
                // Restrictions first: no reader finds the record without them. A failed write
                // leaves them on an id nothing refers to, which is harmless (fail closed).
                playback.set_visibility(&media.id, media.visibility, media.visibility_epoch);
                if let Some(gate) = &msg.gate {
                    playback.set(media.id.clone(), Some(gate.clone()));
                }
                let stored = media.clone();
                let gate = msg.gate.clone();
                blocking(&repo, move |repo| {
                    repo.put_media_with_gate(&stored, gate.as_ref())
                })
                .await?;
                if msg.gate.is_some() {
                    caches.invalidate_gate(&media.id);
                }
                publish_change(&caches, &search, &media).await;
                publish_event(&webhooks, "upload.finished", &media).await;
                Ok(media)
            }
            .into_actor(self),
        ))
    }
}

impl Handler<GetMedia> for MetadataActor {
    type Result = ResponseFuture<Result<Media, MetadataError>>;

    fn handle(&mut self, msg: GetMedia, _: &mut Self::Context) -> Self::Result {
        let repo = self.repo.clone();
        let cache = self.caches.metadata.clone();
        Box::pin(async move {
            if let Some(cached) = cache.get(&msg.media_id) {
                return Ok(cached.media.clone());
            }
            // Taken before the read: a change that lands meanwhile keeps this copy out.
            let epoch = cache.epoch();
            let media = load(&repo, msg.media_id).await?;
            cache.insert_if_unchanged(
                media.id.clone(),
                Arc::new(crate::cache::CachedMedia::new(media.clone())),
                epoch,
            );
            Ok(media)
        })
    }
}

impl Handler<WarmCaches> for MetadataActor {
    type Result = ResponseFuture<Result<WarmReport, MetadataError>>;

    fn handle(&mut self, msg: WarmCaches, _: &mut Self::Context) -> Self::Result {
        let (repo, blobs, caches) = (self.repo.clone(), self.blobs.clone(), self.caches.clone());
        let audit = self.audit.clone();
        Box::pin(async move {
            let mut report = WarmReport::default();
            let mut found = Vec::new();
            if msg.recent > 0 {
                let epoch = caches.metadata.epoch();
                let gates = msg.gates;
                let recent = blocking(&repo, move |repo| {
                    repo.recent_media(msg.recent, &|media: &Media| {
                        media.state == MediaState::Ready
                            && gates
                                .as_ref()
                                .is_none_or(|gates| matches!(gates.is_gated(&media.id), Ok(false)))
                    })
                })
                .await?;
                found.extend(recent.into_iter().map(|media| (media, epoch)));
            }
            for media_id in msg.media_ids {
                let epoch = caches.metadata.epoch();
                match load(&repo, media_id.clone()).await {
                    Ok(media) => found.push((media, epoch)),
                    Err(MetadataError::NotFound(_)) => report.missing.push(media_id),
                    Err(error) => return Err(error),
                }
            }
            for (media, epoch) in found {
                if media.state == MediaState::Ready {
                    report.playlists += caches.warm_playlists(&blobs, &media).await;
                }
                let media_id = media.id.clone();
                let cached = Arc::new(crate::cache::CachedMedia::new(media));
                if caches.metadata.warm(media_id, cached, epoch) {
                    report.records += 1;
                }
            }
            if let Some(actor) = msg.requested_by {
                let detail = format!(
                    "{} records, {} playlists, {} missing",
                    report.records,
                    report.playlists,
                    report.missing.len()
                );
                let event = AuditEvent::ok(action::CACHE_WARM, actor, None)
                    .with_outcome(crate::audit::outcome::OK, detail);
                audit.record(event).await;
            }
            Ok(report)
        })
    }
}

impl Handler<ListMedia> for MetadataActor {
    type Result = ResponseFuture<Result<Vec<Media>, MetadataError>>;

    fn handle(&mut self, msg: ListMedia, _: &mut Self::Context) -> Self::Result {
        let repo = self.repo.clone();
        Box::pin(async move {
            let limit = msg.limit.clamp(1, 100);
            Ok(blocking(&repo, move |repo| {
                repo.list_media(msg.after.as_ref(), limit)
            })
            .await?)
        })
    }
}

impl Handler<UpdateMedia> for MetadataActor {
    type Result = AtomicResponse<Self, Result<Media, MetadataError>>;

    fn handle(&mut self, msg: UpdateMedia, _: &mut Self::Context) -> Self::Result {
        let repo = self.repo.clone();
        let audit = self.audit.clone();
        let (caches, search) = (self.caches.clone(), self.search.clone());
        let playback = self.playback.clone();
        let webhooks = self.webhooks.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let mut media = load(&repo, msg.media_id).await?;
                ensure_manager(&media, &msg.principal)?;
                let before = media.visibility;
                if let Some(visibility) = msg.visibility.filter(|v| *v != before) {
                    media.visibility = visibility;
                    media.visibility_epoch = now_nanos();
                }
                let changed_visibility = media.visibility != before;
                if let Some(title) = msg.title {
                    media.title = title.trim().to_string();
                }
                if let Some(description) = msg.description {
                    media.description = description;
                }
                if let Some(tags) = msg.tags {
                    media.tags = normalize_tags(tags);
                }
                validate_text(&media.title, &media.description, &media.tags)?;
                media.updated_at = OffsetDateTime::now_utc();
                // Tightening takes effect before the write, loosening after it: a racing read
                // never sees the media less restricted than both the old and the new record.
                let tightens = media.visibility != Visibility::Public && changed_visibility;
                if tightens {
                    playback.set_visibility(&media.id, media.visibility, media.visibility_epoch);
                }
                let stored = media.clone();
                blocking(&repo, move |repo| repo.put_media(&stored)).await?;
                if changed_visibility && !tightens {
                    playback.set_visibility(&media.id, media.visibility, media.visibility_epoch);
                }
                publish_change(&caches, &search, &media).await;
                if changed_visibility {
                    publish_at_once(&caches, &search).await;
                }
                publish_event(&webhooks, "media.updated", &media).await;
                audit
                    .record(AuditEvent::ok(
                        action::MEDIA_UPDATE,
                        msg.principal.name(),
                        Some(media.id.to_string()),
                    ))
                    .await;
                Ok(media)
            }
            .into_actor(self),
        ))
    }
}

impl Handler<DeleteMedia> for MetadataActor {
    type Result = AtomicResponse<Self, Result<(), MetadataError>>;

    fn handle(&mut self, msg: DeleteMedia, _: &mut Self::Context) -> Self::Result {
        let repo = self.repo.clone();
        let blobs = self.blobs.clone();
        let audit = self.audit.clone();
        let (caches, search) = (self.caches.clone(), self.search.clone());
        let playback = self.playback.clone();
        let webhooks = self.webhooks.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let media = load(&repo, msg.media_id).await?;
                ensure_manager(&media, &msg.principal)?;
                // Record first: once it is gone nothing serves the blobs, so a crash in between
                // leaves only orphans for the cleanup job, never a record pointing at nothing.
                let media_id = media.id.clone();
                blocking(&repo, move |repo| repo.delete_media(&media_id)).await?;
                caches.invalidate_media(&media.id);
                if let Err(error) = search.remove_async(media.id.clone()).await {
                    tracing::error!(%error, media_id = %media.id, "search index not updated");
                }
                publish_at_once(&caches, &search).await;
                // The record is gone and the answer is "deleted" either way: blobs a failure leaves
                // behind are orphans, which the cleanup job removes, so a retry (a 404 now) is
                // not what the client needs. A record made without a source has no key to delete.
                let rendered = BlobStore::media_prefix(&media.id);
                if let Err(error) = blobs.delete_prefix(&rendered).await {
                    tracing::warn!(%error, media_id = %media.id, "rendered blobs left for cleanup");
                }
                if !media.source_key.is_empty() {
                    if let Err(error) = blobs.delete(&media.source_key).await {
                        tracing::warn!(%error, media_id = %media.id, "source blob left for cleanup");
                    }
                }
                // Only now: segments are answered from blobs alone, so the entry guards them
                // until they are gone.
                playback.set_visibility(&media.id, Visibility::Public, 0);
                publish_event(&webhooks, "media.deleted", &media).await;
                audit
                    .record(AuditEvent::ok(
                        action::MEDIA_DELETE,
                        msg.principal.name(),
                        Some(media.id.to_string()),
                    ))
                    .await;
                Ok(())
            }
            .into_actor(self),
        ))
    }
}

impl Handler<PutCaption> for MetadataActor {
    type Result = AtomicResponse<Self, Result<Media, MetadataError>>;

    fn handle(&mut self, msg: PutCaption, _: &mut Self::Context) -> Self::Result {
        let (repo, blobs) = (self.repo.clone(), self.blobs.clone());
        let (caches, search) = (self.caches.clone(), self.search.clone());
        let webhooks = self.webhooks.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let mut media = load(&repo, msg.media_id).await?;
                ensure_manager(&media, &msg.principal)?;
                validate_caption(&msg.lang, &msg.vtt)?;
                // The file first: a record never names a track that is not there.
                blobs
                    .put(&caption_key(&media.id, &msg.lang), msg.vtt)
                    .await?;
                if !media.captions.contains(&msg.lang) {
                    media.captions.push(msg.lang);
                    media.captions.sort();
                }
                media.updated_at = OffsetDateTime::now_utc();
                let stored = media.clone();
                blocking(&repo, move |repo| repo.put_media(&stored)).await?;
                publish_change(&caches, &search, &media).await;
                publish_event(&webhooks, "media.updated", &media).await;
                Ok(media)
            }
            .into_actor(self),
        ))
    }
}

impl Handler<DeleteCaption> for MetadataActor {
    type Result = AtomicResponse<Self, Result<Media, MetadataError>>;

    fn handle(&mut self, msg: DeleteCaption, _: &mut Self::Context) -> Self::Result {
        let (repo, blobs) = (self.repo.clone(), self.blobs.clone());
        let (caches, search) = (self.caches.clone(), self.search.clone());
        let webhooks = self.webhooks.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let mut media = load(&repo, msg.media_id).await?;
                ensure_manager(&media, &msg.principal)?;
                if !media.captions.contains(&msg.lang) {
                    return Err(MetadataError::CaptionNotFound(media.id, msg.lang));
                }
                // The record first: once it no longer names the track nothing serves it.
                media.captions.retain(|lang| *lang != msg.lang);
                media.updated_at = OffsetDateTime::now_utc();
                let stored = media.clone();
                blocking(&repo, move |repo| repo.put_media(&stored)).await?;
                publish_change(&caches, &search, &media).await;
                if let Err(error) = blobs.delete(&caption_key(&media.id, &msg.lang)).await {
                    tracing::warn!(%error, media_id = %media.id, "caption blob left for cleanup");
                }
                publish_event(&webhooks, "media.updated", &media).await;
                Ok(media)
            }
            .into_actor(self),
        ))
    }
}

impl Handler<MarkRepublishing> for MetadataActor {
    type Result = AtomicResponse<Self, Result<(), MetadataError>>;

    fn handle(&mut self, msg: MarkRepublishing, _: &mut Self::Context) -> Self::Result {
        let repo = self.repo.clone();
        let (caches, search) = (self.caches.clone(), self.search.clone());
        AtomicResponse::new(Box::pin(
            async move {
                let mut media = load(&repo, msg.media_id).await?;
                if !matches!(media.state, MediaState::Ready | MediaState::Failed) {
                    return Ok(());
                }
                // A ready media's ladder is replaced whole: it does not play until it is done.
                // A failed one run again continues what it published (see `progressive`).
                if media.state == MediaState::Ready {
                    media.playable_at = None;
                }
                media.state = MediaState::Processing;
                media.failure = None;
                media.failure_code = None;
                media.updated_at = OffsetDateTime::now_utc();
                let stored = media.clone();
                blocking(&repo, move |repo| repo.put_media(&stored)).await?;
                publish_change(&caches, &search, &media).await;
                Ok(())
            }
            .into_actor(self),
        ))
    }
}

impl Handler<AnnounceUpdate> for MetadataActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: AnnounceUpdate, _: &mut Self::Context) -> Self::Result {
        let (repo, webhooks) = (self.repo.clone(), self.webhooks.clone());
        Box::pin(async move {
            match load(&repo, msg.media_id).await {
                Ok(media) => publish_event(&webhooks, "media.updated", &media).await,
                Err(error) => tracing::warn!(%error, "cannot announce a media update"),
            }
        })
    }
}

impl Handler<MarkPlayable> for MetadataActor {
    type Result = AtomicResponse<Self, Result<(), MetadataError>>;

    fn handle(&mut self, msg: MarkPlayable, _: &mut Self::Context) -> Self::Result {
        let repo = self.repo.clone();
        let (caches, search) = (self.caches.clone(), self.search.clone());
        let webhooks = self.webhooks.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let mut media = load(&repo, msg.media_id).await?;
                if media.playable_at.is_some() {
                    return Ok(());
                }
                let now = OffsetDateTime::now_utc();
                media.playable_at = Some(now);
                media.updated_at = now;
                let stored = media.clone();
                blocking(&repo, move |repo| repo.put_media(&stored)).await?;
                publish_change(&caches, &search, &media).await;
                publish_event(&webhooks, "media.playable", &media).await;
                Ok(())
            }
            .into_actor(self),
        ))
    }
}

impl Handler<RecordTranscode> for MetadataActor {
    type Result = AtomicResponse<Self, Result<(), MetadataError>>;

    fn handle(&mut self, msg: RecordTranscode, _: &mut Self::Context) -> Self::Result {
        let repo = self.repo.clone();
        let (caches, search) = (self.caches.clone(), self.search.clone());
        let webhooks = self.webhooks.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let mut media = load(&repo, msg.media_id).await?;
                match msg.outcome {
                    Ok((probe, renditions)) => {
                        media.state = MediaState::Ready;
                        media.failure = None;
                        media.failure_code = None;
                        media.duration_s = Some(probe.duration_s);
                        media.width = Some(probe.width);
                        media.height = Some(probe.height);
                        media.video_codec = Some(probe.video_codec);
                        media.renditions = renditions;
                    }
                    Err(failure) => {
                        media.state = MediaState::Failed;
                        media.failure = Some(failure.message);
                        media.failure_code = Some(failure.code);
                    }
                }
                media.updated_at = OffsetDateTime::now_utc();
                let stored = media.clone();
                blocking(&repo, move |repo| repo.put_media(&stored)).await?;
                // A rerun rewrote the playlists: cached copies of the old ones must go.
                publish_change(&caches, &search, &media).await;
                let event = match media.state {
                    MediaState::Ready => "media.ready",
                    _ => "media.failed",
                };
                publish_event(&webhooks, event, &media).await;
                Ok(())
            }
            .into_actor(self),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

async fn load(repo: &SharedRepo, media_id: MediaId) -> Result<Media, MetadataError> {
    let id = media_id.clone();
    blocking(repo, move |repo| repo.get_media(&id))
        .await?
        .ok_or(MetadataError::NotFound(media_id))
}

/// Only the owner or an admin may change a media item; to anyone else a private one does not
/// exist.
fn ensure_manager(media: &Media, principal: &Principal) -> Result<(), MetadataError> {
    if principal.may_manage(media.owner.as_deref()) {
        Ok(())
    } else if media.visibility == Visibility::Private {
        Err(MetadataError::NotFound(media.id.clone()))
    } else {
        Err(MetadataError::NotOwner)
    }
}

/// Lower-cases, trims and de-duplicates tags, keeping their order.
pub fn normalize_tags(tags: Vec<String>) -> Vec<String> {
    let mut normalized: Vec<String> = Vec::with_capacity(tags.len());
    for tag in tags {
        let tag = tag.trim().to_lowercase();
        if !tag.is_empty() && !normalized.contains(&tag) {
            normalized.push(tag);
        }
    }
    normalized
}

pub(crate) fn validate_text(
    title: &str,
    description: &str,
    tags: &[String],
) -> Result<(), MetadataError> {
    let invalid = |message: String| Err(MetadataError::Invalid(message));
    if title.trim().is_empty() {
        return invalid("title must not be empty".into());
    }
    if title.chars().count() > MAX_TITLE_CHARS {
        return invalid(format!("title is longer than {MAX_TITLE_CHARS} characters"));
    }
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return invalid(format!(
            "description is longer than {MAX_DESCRIPTION_CHARS} characters"
        ));
    }
    if tags.len() > MAX_TAGS {
        return invalid(format!("at most {MAX_TAGS} tags"));
    }
    for tag in tags {
        let well_formed = tag.chars().count() <= MAX_TAG_CHARS
            && tag
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '_');
        if !well_formed {
            return invalid(format!(
                "tag {tag:?}: at most {MAX_TAG_CHARS} letters, digits, '-' or '_'"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_need_a_language_tag_utf8_and_the_webvtt_line() {
        for lang in ["en", "pt-BR", "zh-Hant-TW", "gsw"] {
            assert!(is_caption_lang(lang), "{lang}");
        }
        for lang in ["e", "english", "en_US", "en-", "../x", "en-toolongsubtag"] {
            assert!(!is_caption_lang(lang), "{lang}");
        }
        assert!(validate_caption("en", b"WEBVTT\n\n00:00.000 --> 00:01.000\nHi\n").is_ok());
        assert!(validate_caption("en", "\u{feff}WEBVTT - title\n".as_bytes()).is_ok());
        assert!(validate_caption("en", b"WEBVTTX\n").is_err());
        assert!(validate_caption("en", b"1\n00:00:00,000 --> 00:00:01,000\n").is_err());
        assert!(validate_caption("en", b"WEBVTT\n\xff\n").is_err());
        let big = [b"WEBVTT\n".as_slice(), &vec![b'a'; MAX_CAPTION_BYTES]].concat();
        assert!(validate_caption("en", &big).is_err());
    }

    #[test]
    fn tags_are_normalized_and_validated() {
        let tags = normalize_tags(vec![
            " Rust ".into(),
            "rust".into(),
            "".into(),
            "Video".into(),
        ]);
        assert_eq!(tags, vec!["rust".to_string(), "video".to_string()]);
        assert!(validate_text("t", "", &tags).is_ok());
        assert!(validate_text("t", "", &["no spaces".to_string()]).is_err());
        assert!(validate_text(" ", "", &[]).is_err());
        assert!(validate_text(&"x".repeat(MAX_TITLE_CHARS + 1), "", &[]).is_err());
    }
}
