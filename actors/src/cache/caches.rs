//! The domain's caches (SPEC.md: gateway, streaming, metadata) and the read handle `web` holds.
//!
//! - `streaming`: untokenised playlist bytes + ETag by (media, file).
//! - `tokenised`: gated playlists with a playback token written into every URI, by (media,
//!   file, token). The token is part of the key, so one viewer's URLs never reach another;
//!   `web` looks an entry up only with a token it has just checked (a valid `?token=`, or the
//!   grant the AuthActor made for the caller's session).
//! - `metadata`: media records by id, filled by the MetadataActor's reads. Each entry also
//!   memoises the bytes a reader renders from it (the JSON `web` sends), so a hit is served
//!   without building and serialising the DTO again; the memo goes with the entry.
//! - `search`: rendered search pages (the JSON `web` sends) by [`SearchPageKey`]: the index
//!   generation the page was searched at and the normalised query.
//! - `gateway`: the general-purpose admin cache behind `/api/v1/cache`.
//! - `upload`: stored tus upload records, so HEAD and PATCH skip the store read; the
//!   UploadActor replaces or drops an entry after each store write.
//!
//! Invariant: entries of a media item are dropped by the actor that changes it (MetadataActor:
//! update, delete, transcode recorded; AuthActor: gate set or cleared) after the store has the
//! change and before it replies. Readers fill only through the epoch guard of [`TtlLru`].
//!
//! Invariant: a search page is never served after a change that alters it. Index changes become
//! searchable only at a commit, which bumps [`crate::search::SearchIndex::generation`] after
//! the reader reloads; the page key holds the generation read before searching, so pages of
//! older generations are unreachable (the LRU and TTL drop them). The gate table, rendered into
//! pages as `gated`, is not in the index: a gate change empties the search cache (epoch bump),
//! and readers fill through the epoch guard.
//!
//! The admin cache is not an actor, like [`AuditLog`]: its operations are independent, each is
//! one short lock, and every write is audited here.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::{CacheMetrics, CacheStats, TtlLru};
use crate::{
    audit::{action, AuditEvent, AuditLog},
    blobs::{BlobError, BlobStore},
    config::CacheConfig,
    model::{Media, MediaId, TusUpload, UploadId},
    monitor::Metrics,
    search::SearchQuery,
};

/// A search page's cache key: the index generation read before searching and the query in
/// normal form ([`SearchQuery::normalised`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SearchPageKey {
    generation: u64,
    query: SearchQuery,
}

impl SearchPageKey {
    pub fn new(generation: u64, query: &SearchQuery) -> Self {
        Self {
            generation,
            query: query.normalised(),
        }
    }
}

/// A playlist as stored (no playback tokens) and its strong ETag.
#[derive(Clone, Debug)]
pub struct Playlist {
    pub bytes: Bytes,
    pub etag: Arc<str>,
}

impl Playlist {
    pub fn new(bytes: Bytes) -> Self {
        let digest = Sha256::digest(&bytes);
        let etag = format!("\"{}\"", hex::encode(&digest[..12]));
        Self {
            bytes,
            etag: etag.into(),
        }
    }
}

/// A media record in the metadata cache and, once a reader has made it, its rendering.
#[derive(Debug)]
pub struct CachedMedia {
    pub media: Media,
    rendered: OnceLock<Rendered>,
}

/// Bytes rendered from a cached record, and the gate state they were rendered with.
#[derive(Debug)]
struct Rendered {
    gated: bool,
    bytes: Bytes,
}

impl CachedMedia {
    pub fn new(media: Media) -> Self {
        Self {
            media,
            rendered: OnceLock::new(),
        }
    }

    /// The record rendered for gate state `gated`: made by `render` once per entry, then
    /// shared. The gate table changes independently of the record (the AuthActor drops the
    /// entry, but a reader may fill a fresh one from the old table state just before), so a
    /// memo made for the other gate state is not used.
    pub fn rendered<E>(
        &self,
        gated: bool,
        render: impl FnOnce(&Media) -> Result<Bytes, E>,
    ) -> Result<Bytes, E> {
        if let Some(made) = self.rendered.get() {
            return if made.gated == gated {
                Ok(made.bytes.clone())
            } else {
                render(&self.media)
            };
        }
        let bytes = render(&self.media)?;
        // A racing reader may have set it first; both rendered the same record.
        let _ = self.rendered.set(Rendered {
            gated,
            bytes: bytes.clone(),
        });
        Ok(bytes)
    }
}

/// A value in the admin cache, with the content type it was stored with.
#[derive(Clone, Debug)]
pub struct AdminEntry {
    pub value: Bytes,
    pub content_type: Arc<str>,
}

/// One operation of [`Caches::admin_batch`].
#[derive(Clone, Debug)]
pub enum AdminOp {
    Get {
        key: String,
    },
    Set {
        key: String,
        entry: AdminEntry,
        ttl: Duration,
    },
    Delete {
        key: String,
    },
}

impl AdminOp {
    pub fn key(&self) -> &str {
        match self {
            Self::Get { key } | Self::Set { key, .. } | Self::Delete { key } => key,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Get { .. } => "get",
            Self::Set { .. } => "set",
            Self::Delete { .. } => "delete",
        }
    }
}

/// What one operation of a batch found or did.
#[derive(Clone, Debug)]
pub enum AdminOpResult {
    Hit(AdminEntry),
    Miss,
    Stored,
    Deleted,
    /// A delete of a key that held nothing.
    Absent,
}

/// Longest admin cache key, in bytes.
pub const MAX_ADMIN_KEY_BYTES: usize = 256;

/// A tokenised playlist's key: media, file (relative to `hls/`), playback token.
pub type TokenisedKey = (MediaId, String, Arc<str>);

/// Cheap-to-clone handle on every cache.
#[derive(Clone)]
pub struct Caches {
    pub gateway: Arc<TtlLru<String, AdminEntry>>,
    pub streaming: Arc<TtlLru<(MediaId, String), Playlist>>,
    pub tokenised: Arc<TtlLru<TokenisedKey, Bytes>>,
    pub metadata: Arc<TtlLru<MediaId, Arc<CachedMedia>>>,
    pub search: Arc<TtlLru<SearchPageKey, Bytes>>,
    /// Stored tus upload records, for HEAD and PATCH (the UploadActor keeps it current).
    pub upload: Arc<TtlLru<UploadId, TusUpload>>,
    audit: AuditLog,
}

impl Caches {
    pub fn new(config: &CacheConfig, metrics: &Metrics, audit: AuditLog) -> Self {
        Self::with_metrics(config, |name| CacheMetrics::of(metrics, name), audit)
    }

    pub fn with_metrics(
        config: &CacheConfig,
        metrics: impl Fn(&str) -> CacheMetrics,
        audit: AuditLog,
    ) -> Self {
        let secs = Duration::from_secs;
        Self {
            gateway: Arc::new(TtlLru::new(
                config.gateway_entries,
                secs(config.gateway_ttl_s),
                metrics("gateway"),
            )),
            streaming: Arc::new(TtlLru::new(
                config.streaming_entries,
                secs(config.streaming_ttl_s),
                metrics("streaming"),
            )),
            tokenised: Arc::new(TtlLru::new(
                config.tokenised_entries,
                secs(config.tokenised_ttl_s),
                metrics(crate::monitor::metric_names::TOKENISED_PLAYLISTS_CACHE),
            )),
            metadata: Arc::new(TtlLru::new(
                config.metadata_entries,
                secs(config.metadata_ttl_s),
                metrics("metadata"),
            )),
            search: Arc::new(TtlLru::new(
                config.search_entries,
                secs(config.search_ttl_s),
                metrics("search"),
            )),
            upload: Arc::new(TtlLru::new(
                config.upload_entries,
                secs(config.upload_ttl_s),
                metrics("upload"),
            )),
            audit,
        }
    }

    /// Drops everything cached about `media_id`: its record and its playlists, tokenised too.
    pub fn invalidate_media(&self, media_id: &MediaId) {
        self.metadata.remove(media_id);
        self.streaming.remove_where(|(id, _)| id == media_id);
        self.tokenised.remove_where(|(id, _, _)| id == media_id);
    }

    /// A gate on `media_id` was set or cleared: its entries go, and so does every search page,
    /// since pages show each item's `gated` (which pages hold the item is not tracked).
    pub fn invalidate_gate(&self, media_id: &MediaId) {
        self.invalidate_media(media_id);
        self.search.clear();
    }

    /// A playlist of `media_id` (`file` relative to its `hls/` folder), from the cache or the
    /// blob store. Reads only: the files are written by the transcoder, and the MetadataActor
    /// invalidates when it records a transcode.
    pub async fn playlist(
        &self,
        blobs: &BlobStore,
        media_id: &MediaId,
        file: &str,
    ) -> Result<Playlist, BlobError> {
        let key = (media_id.clone(), file.to_string());
        if let Some(playlist) = self.streaming.get(&key) {
            return Ok(playlist);
        }
        let epoch = self.streaming.epoch();
        let playlist = Playlist::new(blobs.get(&BlobStore::hls_key(media_id, file)).await?);
        self.streaming
            .insert_if_unchanged(key, playlist.clone(), epoch);
        Ok(playlist)
    }

    /// A playlist of `media_id` with `token` written into its URIs by `rewrite`, from the cache
    /// or made from [`Self::playlist`]. The caller has checked `token` for this media (or for
    /// the caller's session) just before: the cache never decides access.
    pub async fn tokenised_playlist(
        &self,
        blobs: &BlobStore,
        media_id: &MediaId,
        file: &str,
        token: &Arc<str>,
        rewrite: impl FnOnce(&[u8], &str) -> Bytes,
    ) -> Result<Bytes, BlobError> {
        let key = (media_id.clone(), file.to_string(), Arc::clone(token));
        if let Some(bytes) = self.tokenised.get(&key) {
            return Ok(bytes);
        }
        // Before the untokenised read: an invalidation from here on keeps this fill out.
        let epoch = self.tokenised.epoch();
        let playlist = self.playlist(blobs, media_id, file).await?;
        let bytes = rewrite(&playlist.bytes, token);
        self.tokenised
            .insert_if_unchanged(key, bytes.clone(), epoch);
        Ok(bytes)
    }

    /// Loads the HLS playlists of a ready `media` (master and each rendition's) into the
    /// streaming cache ahead of the first request; returns how many went in. A missing file is
    /// skipped: the request for it will answer 404 as it would have.
    pub async fn warm_playlists(&self, blobs: &BlobStore, media: &Media) -> usize {
        let files = std::iter::once("master.m3u8".to_string()).chain(
            media
                .renditions
                .iter()
                .map(|rendition| format!("{}/index.m3u8", rendition.name)),
        );
        let mut warmed = 0;
        for file in files {
            // Before the read, like every fill: an invalidation meanwhile keeps it out.
            let epoch = self.streaming.epoch();
            match blobs.get(&BlobStore::hls_key(&media.id, &file)).await {
                Ok(bytes) => {
                    let key = (media.id.clone(), file);
                    if self.streaming.warm(key, Playlist::new(bytes), epoch) {
                        warmed += 1;
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, media_id = %media.id, file, "playlist not warmed")
                }
            }
        }
        warmed
    }

    /// Drops expired entries of every cache (run on a timer).
    pub fn purge_expired(&self) -> usize {
        self.gateway.purge_expired()
            + self.streaming.purge_expired()
            + self.tokenised.purge_expired()
            + self.metadata.purge_expired()
            + self.search.purge_expired()
            + self.upload.purge_expired()
    }

    pub fn stats(&self) -> Vec<(&'static str, CacheStats)> {
        vec![
            ("gateway", self.gateway.stats()),
            ("streaming", self.streaming.stats()),
            (
                crate::monitor::metric_names::TOKENISED_PLAYLISTS_CACHE,
                self.tokenised.stats(),
            ),
            ("metadata", self.metadata.stats()),
            ("search", self.search.stats()),
            ("upload", self.upload.stats()),
        ]
    }

    // -----------------------------------------------------------------------------------------
    // The admin cache: every write is audited with who did it.

    pub fn admin_get(&self, key: &str) -> Option<AdminEntry> {
        self.gateway.get(&key.to_string())
    }

    /// Stores `entry` under `key` for `ttl` (at most the gateway cache's TTL).
    pub async fn admin_put(&self, key: String, entry: AdminEntry, ttl: Duration, actor: &str) {
        let target = Some(key.clone());
        self.gateway.insert_with_ttl(key, entry, ttl);
        self.audit
            .record(AuditEvent::ok(action::CACHE_PUT, actor, target))
            .await;
    }

    /// Returns whether `key` held a value.
    pub async fn admin_delete(&self, key: &str, actor: &str) -> bool {
        let removed = self.gateway.remove(&key.to_string());
        let event = AuditEvent::ok(action::CACHE_DELETE, actor, Some(key.to_string()));
        let event = if removed {
            event
        } else {
            event.with_outcome(crate::audit::outcome::OK, "no such key")
        };
        self.audit.record(event).await;
        removed
    }

    /// Runs `ops` in order, each with its own result, and audits the batch as one entry that
    /// lists every operation and key (one flushed write however many operations).
    pub async fn admin_batch(&self, ops: Vec<AdminOp>, actor: &str) -> Vec<AdminOpResult> {
        let listed: Vec<String> = ops
            .iter()
            .map(|op| format!("{} {}", op.name(), op.key()))
            .collect();
        let results = ops
            .into_iter()
            .map(|op| match op {
                AdminOp::Get { key } => match self.gateway.get(&key) {
                    Some(entry) => AdminOpResult::Hit(entry),
                    None => AdminOpResult::Miss,
                },
                AdminOp::Set { key, entry, ttl } => {
                    self.gateway.insert_with_ttl(key, entry, ttl);
                    AdminOpResult::Stored
                }
                AdminOp::Delete { key } => match self.gateway.remove(&key) {
                    true => AdminOpResult::Deleted,
                    false => AdminOpResult::Absent,
                },
            })
            .collect();
        let detail = format!("{} ops: {}", listed.len(), listed.join("; "));
        self.audit
            .record(
                AuditEvent::ok(action::CACHE_BATCH, actor, None)
                    .with_outcome(crate::audit::outcome::OK, detail),
            )
            .await;
        results
    }

    /// Empties the admin cache; returns how many entries it held.
    pub async fn admin_clear(&self, actor: &str) -> usize {
        let removed = self.gateway.clear();
        self.audit
            .record(
                AuditEvent::ok(action::CACHE_CLEAR, actor, None)
                    .with_outcome(crate::audit::outcome::OK, format!("{removed} entries")),
            )
            .await;
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cache::CacheMetrics, store::SledStore};

    fn caches(dir: &std::path::Path) -> Caches {
        let config = CacheConfig {
            gateway_entries: 10,
            gateway_ttl_s: 60,
            streaming_entries: 10,
            streaming_ttl_s: 60,
            metadata_entries: 10,
            metadata_ttl_s: 60,
            search_entries: 10,
            search_ttl_s: 60,
            tokenised_entries: 10,
            tokenised_ttl_s: 60,
            purge_interval_s: 60,
            warm_recent: 0,
            upload_entries: 10,
            upload_ttl_s: 60,
        };
        let repo: crate::store::SharedRepo = Arc::new(SledStore::open(&dir.join("db")).unwrap());
        Caches::with_metrics(&config, |_| CacheMetrics::detached(), AuditLog::new(repo))
    }

    #[tokio::test]
    async fn tokenised_playlists_are_cached_per_token_and_dropped_with_their_media() {
        let dir = tempfile::tempdir().unwrap();
        let caches = caches(dir.path());
        let blobs = BlobStore::local(dir.path().join("blobs")).unwrap();
        let (media, other) = (MediaId::new(), MediaId::new());
        for id in [&media, &other] {
            let key = BlobStore::hls_key(id, "master.m3u8");
            blobs.put(&key, Bytes::from_static(b"v1")).await.unwrap();
        }
        let rewrite = |bytes: &[u8], token: &str| {
            Bytes::from(format!("{}?{token}", String::from_utf8_lossy(bytes)))
        };
        let (first, second): (Arc<str>, Arc<str>) = (Arc::from("t1"), Arc::from("t2"));
        let get = |id: &MediaId, token: &Arc<str>| {
            let (caches, blobs, id, token) = (&caches, &blobs, id.clone(), token.clone());
            async move {
                caches
                    .tokenised_playlist(blobs, &id, "master.m3u8", &token, rewrite)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(get(&media, &first).await, "v1?t1");
        assert_eq!(get(&media, &second).await, "v1?t2", "one entry per token");
        assert_eq!(get(&media, &first).await, "v1?t1");
        assert_eq!(get(&other, &first).await, "v1?t1");
        let stats = caches.tokenised.stats();
        assert_eq!((stats.hits, stats.misses, stats.size), (1, 3, 3));

        // The media changes: its tokenised copies go with its other entries.
        let key = BlobStore::hls_key(&media, "master.m3u8");
        blobs.put(&key, Bytes::from_static(b"v2")).await.unwrap();
        caches.invalidate_media(&media);
        assert_eq!(
            caches.tokenised.stats().size,
            1,
            "the other media's entry stays"
        );
        assert_eq!(get(&media, &first).await, "v2?t1");
    }
}
