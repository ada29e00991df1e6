//! streamgate-actors: StreamGate's domain. It knows nothing of HTTP.
//!
//! Code map:
//! - [`model`] — ids, media records, jobs.
//! - [`store`] — repository traits and their sled implementation (the only sled user).
//! - [`blobs`] — the blob store over `object_store` (local files by default).
//! - [`supervise`] — starts actors so a panic restarts them, counting restarts.
//! - [`upload`], [`transcode`], [`metadata`], [`auth`], [`monitor`] — one actor per domain.
//! - [`error`] — [`ErrorKind`] and the [`DomainError`] trait every actor error implements.
//!
//! [`start`] opens the store and blobs and starts every actor, supervised, on the current arbiter.

pub mod audit;
pub mod auth;
pub mod backup;
pub mod blob_names;
pub mod blobs;
pub mod cache;
pub mod clock;
pub mod coherence;
pub mod config;
pub mod error;
pub mod metadata;
pub mod model;
pub mod monitor;
pub mod outbound;
pub mod retention;
pub mod search;
pub mod sniff;
pub mod store;
pub mod supervise;
pub mod transcode;
pub mod upload;
pub mod webhooks;

use std::{sync::Arc, time::Duration};

use actix::{Addr, Recipient};

pub use error::{DomainError, ErrorKind};

use crate::{
    audit::AuditLog,
    auth::{AuthActor, AuthDeps, Keys, NftChecker, NftMetrics, PlaybackGrants, PlaybackGuard},
    blobs::BlobStore,
    cache::{CacheMetrics, Caches},
    clock::SharedClock,
    config::{ActorsConfig, BlobBackend, RecordBackend},
    metadata::{MetadataActor, MetadataDeps},
    monitor::{Metrics, MonitorActor, MonitorDeps},
    search::SearchIndex,
    store::{PostgresStore, SharedRepo, SledStore},
    supervise::Ping,
    transcode::{Leasing, TranscodeActor, TranscodeDeps},
    upload::{UploadActor, UploadDeps},
    webhooks::{WebhookActor, WebhookDeps},
};

/// Addresses of the running actors plus the read-only handles the hot paths use directly.
#[derive(Clone)]
pub struct Actors {
    pub upload: Addr<UploadActor>,
    pub transcode: Addr<TranscodeActor>,
    pub metadata: Addr<MetadataActor>,
    pub auth: Addr<AuthActor>,
    pub monitor: Addr<MonitorActor>,
    /// Takes backups of the running server (`streamgate backup` against it).
    pub backup: Addr<backup::BackupActor>,
    pub webhooks: Addr<WebhookActor>,
    /// Read handle for segment delivery; writes go through the actors.
    pub blobs: BlobStore,
    /// Hot-path metrics (request counters) are bumped directly, as atomics.
    pub metrics: Metrics,
    /// Appends to the audit log (rate-limit violations are recorded from the middleware).
    pub audit: AuditLog,
    /// Read handle for gated delivery: which media are gated, and the playback-token check.
    pub playback: PlaybackGuard,
    /// Read handle on the caches (playlists, media records, the admin cache); the actors that
    /// change a media item invalidate its entries.
    pub caches: Caches,
    /// Read handle on the search index; the MetadataActor keeps it current.
    pub search: SearchIndex,
    /// Builds outbound HTTP clients (OTLP export is started by the binary).
    pub outbound: outbound::Outbound,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot prepare {path}: {reason}")]
    DataDir { path: String, reason: String },
    #[error("cannot open the record store: {0}")]
    Store(#[from] store::StoreError),
    #[error("cannot open the blob store: {0}")]
    Blobs(#[from] blobs::BlobError),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot start wallet auth: {0}")]
    Auth(#[from] auth::AuthError),
    #[error("cannot open the search index: {0}")]
    Search(#[from] search::SearchError),
    #[error("cannot set up outbound HTTP: {0}")]
    Outbound(#[from] outbound::OutboundError),
}

/// Opens storage under `storage.data_dir` and starts every actor, supervised. Must run inside an
/// actix system.
pub fn start(config: ActorsConfig) -> Result<Actors, StartError> {
    start_with_clock(config, Arc::new(clock::SystemClock))
}

/// [`start`] with the clock auth expiries are measured against (tests move it ahead).
pub fn start_with_clock(config: ActorsConfig, clock: SharedClock) -> Result<Actors, StartError> {
    config.validate().map_err(StartError::Config)?;
    let outbound = outbound::Outbound::new(&config.tls)?;
    let data_dir = &config.storage.data_dir;
    let work_dir = data_dir.join("work");
    let partial_dir = config::partial_dir(data_dir, &config.upload.partial_dir);
    if config.upload.partial_dir.as_os_str().is_empty()
        && config.storage.records == RecordBackend::Postgres
    {
        tracing::warn!(
            "records on postgres with upload.partial_dir unset: a resumable upload continues \
             only on the node that took its first bytes unless every node shares one partial_dir"
        );
    }
    for dir in [data_dir, &work_dir, &partial_dir] {
        std::fs::create_dir_all(dir).map_err(|e| StartError::DataDir {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    let repo: SharedRepo = match config.storage.records {
        RecordBackend::Sled => Arc::new(SledStore::open_with_cache(
            &data_dir.join("db"),
            config.storage.record_cache_mb.max(1) * 1024 * 1024,
        )?),
        RecordBackend::Postgres => Arc::new(PostgresStore::connect(
            &config.postgres.url,
            config.postgres.pool_size,
            Duration::from_millis(config.postgres.connect_timeout_ms.max(1)),
        )?),
    };
    // Before anything is loaded from the store: other nodes' changes from here on are heard.
    let feed = coherence::listen(&repo)?;
    let blobs = match config.storage.blobs {
        BlobBackend::Local => BlobStore::local(data_dir.join("blobs"))?,
        BlobBackend::S3 => BlobStore::s3(&config.s3, outbound.extra_ca_pem())?,
    };
    let metrics = Metrics::new()?;
    repo.time_queries(metrics.store_query_duration.clone());
    let audit = AuditLog::with_metrics(repo.clone(), &config.audit, &metrics);
    let restarts = |name: &str| metrics.actor_restarts.with_label_values(&[name]);

    let caches = Caches::new(&config.cache, &metrics, audit.clone());
    // Before any actor runs: the index is rebuilt or reconciled with the store here.
    let (search, report) = SearchIndex::open(&data_dir.join("search"), &repo)?;
    tracing::info!(
        rebuilt = report.rebuilt,
        indexed = report.indexed,
        dropped = report.dropped,
        "search index ready"
    );
    // Loaded before the server starts, so gated media are never served as public.
    let keys = Keys::load_or_create(&config.auth.session_secret, &repo)?;
    let grants = PlaybackGrants::new(
        config.auth.playback_grant_entries,
        CacheMetrics::of(&metrics, monitor::metric_names::PLAYBACK_GRANTS_CACHE),
        clock.clone(),
    );
    let playback = PlaybackGuard::new(
        keys.clone(),
        repo.list_gates()?.into_iter().collect(),
        grants,
    );
    // Likewise non-public media: they are never served as public after a restart.
    let mut after: Option<model::MediaId> = None;
    loop {
        let page = repo.list_media(after.as_ref(), 1000)?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        for media in &page {
            if media.visibility != model::Visibility::Public {
                playback.set_visibility(&media.id, media.visibility, media.visibility_epoch);
            }
        }
    }
    let webhooks = supervise::start("webhooks", restarts("webhooks"), {
        let deps = WebhookDeps {
            hooks: config.webhooks.clone(),
            client: outbound.client(webhooks::REQUEST_TIMEOUT)?,
            repo: repo.clone(),
            clock: clock.clone(),
        };
        move |_| WebhookActor::new(deps.clone())
    });
    let metadata = supervise::start("metadata", restarts("metadata"), {
        let deps = MetadataDeps {
            repo: repo.clone(),
            blobs: blobs.clone(),
            audit: audit.clone(),
            caches: caches.clone(),
            search: search.clone(),
            playback: playback.clone(),
            webhooks: webhooks.clone(),
            cache_purge_interval: Duration::from_secs(config.cache.purge_interval_s),
        };
        move |_| MetadataActor::new(deps)
    });
    let transcode = supervise::start("transcode", restarts("transcode"), {
        let deps = TranscodeDeps {
            config: config.transcode.clone(),
            repo: repo.clone(),
            blobs: blobs.clone(),
            metadata: metadata.clone(),
            metrics: metrics.clone(),
            audit: audit.clone(),
            work_dir,
            leasing: (config.storage.records == RecordBackend::Postgres).then(|| Leasing {
                node: Leasing::node_name(),
                lease: Duration::from_secs(config.transcode.lease_s),
                claim_every: Duration::from_millis(config.transcode.claim_interval_ms),
            }),
        };
        move |_| TranscodeActor::new(deps.clone())
    });
    if config.upload.quota_bytes > 0 {
        // Before any upload runs: drops reservations a crash left behind.
        upload::quota::recount(repo.as_ref(), &partial_dir).map_err(|error| {
            StartError::DataDir {
                path: partial_dir.display().to_string(),
                reason: format!("cannot count upload quotas: {error}"),
            }
        })?;
    }
    let tus = upload::tus::TusDeps {
        repo: repo.clone(),
        partial_dir: partial_dir.clone(),
        shared: upload::tus::TusShared::default(),
        records: caches.upload.clone(),
        min_free_disk_bytes: config.storage.min_free_disk_mb.saturating_mul(1024 * 1024),
    };
    let upload = supervise::start("upload", restarts("upload"), {
        let deps = UploadDeps {
            config: config.upload.clone(),
            blobs: blobs.clone(),
            metadata: metadata.clone(),
            transcode: transcode.clone(),
            metrics: metrics.clone(),
            audit: audit.clone(),
            tus,
        };
        move |_| UploadActor::new(deps.clone())
    });
    if config.cache.warm_recent > 0 {
        // In the background: the server listens at once, and early requests fill as usual.
        let warming = metadata.send(metadata::WarmCaches {
            media_ids: Vec::new(),
            recent: config.cache.warm_recent,
            gates: Some(playback.clone()),
            requested_by: None,
        });
        actix::spawn(async move {
            match warming.await {
                Ok(Ok(report)) => tracing::info!(
                    records = report.records,
                    playlists = report.playlists,
                    "caches warmed"
                ),
                Ok(Err(error)) => tracing::warn!(%error, "cache warming failed"),
                Err(error) => tracing::warn!(%error, "cache warming not run"),
            }
        });
    }
    let nft = NftChecker::new(
        config
            .auth
            .rpc
            .iter()
            .map(|rpc| (rpc.chain_id, rpc.url.clone()))
            .collect(),
        Duration::from_millis(config.auth.nft_cache_ttl_ms),
        config.auth.nft_cache_entries,
        outbound.client(Duration::from_millis(config.auth.rpc_timeout_ms))?,
        NftMetrics {
            checks: metrics.nft_checks.clone(),
            rpc_duration: metrics.nft_rpc_duration.clone(),
        },
        clock.clone(),
    )?;
    let retention_clock = clock.clone();
    let auth = supervise::start("auth", restarts("auth"), {
        let deps = AuthDeps {
            config: config.auth.clone(),
            repo: repo.clone(),
            keys,
            playback: playback.clone(),
            caches: caches.clone(),
            nft,
            metadata: metadata.clone(),
            audit: audit.clone(),
            metrics: metrics.clone(),
            revoked: repo.list_revoked_sessions()?.into_iter().collect(),
            clock,
        };
        move |_| AuthActor::new(deps)
    });
    // Changes heard while the node loaded are applied now, after the loads.
    feed.deliver(caches.clone(), metadata.clone(), auth.clone())?;
    if config.transcode.job_retention_days > 0 {
        retention::start(
            repo.clone(),
            retention_clock,
            Duration::from_secs(config.transcode.job_retention_days.saturating_mul(86_400)),
            Duration::from_secs(config.transcode.job_prune_interval_s),
            metrics.retention_pruned.with_label_values(&["job"]),
        );
    }
    let backup = supervise::start("backup", restarts("backup"), {
        let deps = backup::BackupDeps {
            repo: repo.clone(),
            blobs: blobs.clone(),
            backend: config.storage.blobs,
            s3_bucket: config.s3.bucket.clone(),
            s3_endpoint: config.s3.endpoint.clone(),
            data_dir: data_dir.clone(),
            partial_dir: partial_dir.clone(),
        };
        move |_| backup::BackupActor::new(deps)
    });
    let pinged: Vec<(&'static str, Recipient<Ping>)> = vec![
        ("upload", upload.clone().recipient()),
        ("transcode", transcode.clone().recipient()),
        ("metadata", metadata.clone().recipient()),
        ("auth", auth.clone().recipient()),
        ("webhooks", webhooks.clone().recipient()),
    ];
    let monitor = supervise::start("monitor", restarts("monitor"), {
        let deps = MonitorDeps {
            metrics: metrics.clone(),
            repo,
            blobs: blobs.clone(),
            data_dir: data_dir.clone(),
            min_free_disk_bytes: config.storage.min_free_disk_mb.saturating_mul(1024 * 1024),
            ffmpeg_path: config.transcode.ffmpeg_path.clone(),
            actors: pinged,
            webhook: outbound.client(Duration::from_millis(config.monitor.webhook_timeout_ms))?,
            config: config.monitor.clone(),
        };
        move |_| MonitorActor::new(deps)
    });
    for name in [
        "upload",
        "transcode",
        "metadata",
        "auth",
        "monitor",
        "backup",
        "webhooks",
    ] {
        // Export every series from the start, so rate() works before the first restart.
        restarts(name).inc_by(0);
    }
    Ok(Actors {
        upload,
        transcode,
        metadata,
        auth,
        monitor,
        backup,
        webhooks,
        blobs,
        metrics,
        audit,
        playback,
        caches,
        search,
        outbound,
    })
}
