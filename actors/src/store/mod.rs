//! Records: the narrow repository traits the actors use, and their sled (default) and Postgres
//! (`storage.records = "postgres"`) implementations.
//!
//! Invariant: this module is the only code in the workspace that touches sled or Postgres.
//! Invariant: a `put_*`/`delete_*` returns only after sled has flushed it to disk, so anything an
//! actor acknowledges to a client survives `kill -9`.
//!
//! The traits are synchronous; callers run them through [`blocking`] so sled's disk I/O never
//! stalls an async worker thread (nor a Postgres round trip).

mod listen;
mod migrate;
mod postgres_store;
mod sled_store;
#[cfg(any(test, feature = "test-postgres"))]
pub mod test_postgres;
#[cfg(test)]
pub(crate) mod tests;

use std::{collections::BTreeMap, sync::Arc};

pub use migrate::{copy_sled_to_postgres, Copied, MigrateError};
pub use postgres_store::PostgresStore;
pub(crate) use sled_store::wait_for_file_lock;
pub use sled_store::{sled_in_use, SledStore};

use crate::model::{
    AuditEntry, AuditId, CancelRequest, Gate, Job, JobId, JobState, Media, MediaId, NonceRecord,
    TusUpload, UploadId,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O failed: {0}")]
    Backend(String),
    #[error("stored record {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("blocking task failed: {0}")]
    Join(String),
}

impl crate::error::DomainError for StoreError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Unavailable
    }
    fn code(&self) -> &'static str {
        "store_unavailable"
    }
}

pub trait MediaRepo: Send + Sync {
    fn get_media(&self, media_id: &MediaId) -> Result<Option<Media>, StoreError>;
    fn put_media(&self, media: &Media) -> Result<(), StoreError>;
    /// Stores the record and, when given, its gate in one transaction: a gate given with the
    /// upload is never missing from a stored record.
    fn put_media_with_gate(&self, media: &Media, gate: Option<&Gate>) -> Result<(), StoreError>;
    /// Removes the record and, in the same transaction, takes its size off its owner's quota
    /// counter (when there is one).
    fn delete_media(&self, media_id: &MediaId) -> Result<bool, StoreError>;
    /// Media in id (= creation) order, starting after `after`.
    fn list_media(&self, after: Option<&MediaId>, limit: usize) -> Result<Vec<Media>, StoreError>;
    /// The newest media first (ids are time-ordered): at most `limit` that `keep` accepts.
    fn recent_media(
        &self,
        limit: usize,
        keep: &(dyn Fn(&Media) -> bool + Sync),
    ) -> Result<Vec<Media>, StoreError>;
}

/// Which jobs to list; every field narrows the result.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub media_id: Option<MediaId>,
    /// Jobs of media this wallet owns.
    pub owner: Option<String>,
    pub after: Option<JobId>,
    pub limit: usize,
}

impl JobFilter {
    /// Every job in `state`.
    pub fn all_in(state: JobState) -> Self {
        Self {
            state: Some(state),
            limit: usize::MAX,
            ..Self::default()
        }
    }
}

pub trait JobRepo: Send + Sync {
    fn get_job(&self, job_id: &JobId) -> Result<Option<Job>, StoreError>;
    fn put_job(&self, job: &Job) -> Result<(), StoreError>;
    /// Jobs in id (= submission) order.
    fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, StoreError>;
    /// Removes a job record (retention); true if it existed.
    fn delete_job(&self, job_id: &JobId) -> Result<bool, StoreError>;
    /// How many jobs are in `state`: with leases, the shared queue's depth.
    fn count_jobs(&self, state: JobState) -> Result<u64, StoreError> {
        Ok(self.list_jobs(&JobFilter::all_in(state))?.len() as u64)
    }
    /// Claims the job `node` should run next and marks it `running` under a lease for `node`
    /// until `until` (one more attempt, started now): the highest priority, then the oldest,
    /// of the queued jobs whose `run_at` has come and the running jobs whose lease lapsed
    /// before `now` (or that have none). Of concurrent claimers at most one gets a given job.
    fn claim_job(
        &self,
        node: &str,
        now: time::OffsetDateTime,
        until: time::OffsetDateTime,
    ) -> Result<Option<Job>, StoreError>;
    /// Extends `node`'s leases on `jobs` to `until`. Answers the jobs `node` still holds, each
    /// with who asked to cancel it, if anyone; a job left out was taken over or ended.
    fn renew_leases(
        &self,
        node: &str,
        jobs: &[JobId],
        until: time::OffsetDateTime,
    ) -> Result<Vec<(JobId, Option<String>)>, StoreError>;
    /// Stores the end of `node`'s run of `job` (its lease dropped) only if `node` still holds
    /// the lease; false, and nothing written, if another node took the job over.
    fn finish_leased(&self, node: &str, job: &Job) -> Result<bool, StoreError>;
    /// Cancels a queued job at once (at `now`), or puts `caller`'s request on a running job's
    /// lease for the node running it, in one atomic step.
    fn request_cancel(
        &self,
        job_id: &JobId,
        caller: &str,
        now: time::OffsetDateTime,
    ) -> Result<CancelRequest, StoreError>;
}

/// Whether `job` may be claimed at `now` (see [`JobRepo::claim_job`]).
pub(crate) fn claimable(job: &Job, now: time::OffsetDateTime) -> bool {
    match job.state {
        JobState::Queued => job.run_at.is_none_or(|at| at <= now),
        JobState::Running => job.lease.as_ref().is_none_or(|lease| lease.until < now),
        _ => false,
    }
}

/// Marks a claimed job running under `node`'s lease: the one change every backend makes.
pub(crate) fn mark_claimed(
    job: &mut Job,
    node: &str,
    now: time::OffsetDateTime,
    until: time::OffsetDateTime,
) {
    if job.state == JobState::Running {
        job.last_error = Some("interrupted: its node stopped renewing the lease".into());
    }
    job.state = JobState::Running;
    job.attempts += 1;
    job.progress = 0;
    job.started_at = Some(now);
    job.updated_at = now;
    // A cancel asked of a node that died is still owed: the new holder honours it at once.
    let cancel_requested_by = job.lease.take().and_then(|lease| lease.cancel_requested_by);
    job.lease = Some(crate::model::JobLease {
        node: node.to_string(),
        until,
        cancel_requested_by,
    });
}

/// What a cancel request does to a job as stored: the one decision every backend makes.
pub(crate) fn apply_cancel(mut job: Job, caller: &str, now: time::OffsetDateTime) -> CancelRequest {
    match job.state {
        JobState::Queued => {
            job.state = JobState::Cancelled;
            job.finished_at = Some(now);
            job.updated_at = now;
            job.lease = None;
            CancelRequest::Cancelled(job)
        }
        JobState::Running => {
            if let Some(lease) = &mut job.lease {
                lease.cancel_requested_by = Some(caller.to_string());
            }
            CancelRequest::Requested(job)
        }
        _ => CancelRequest::Final(job),
    }
}

/// Which audit entries to list; every field narrows the result.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub actor: Option<String>,
    pub since: Option<time::OffsetDateTime>,
    pub after: Option<AuditId>,
    pub limit: usize,
}

pub trait AuditRepo: Send + Sync {
    /// Appends an entry; entries are never changed, and removed only by [`Self::prune_audit`].
    fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;
    /// Appends several entries with one flush.
    fn append_audit_batch(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        entries
            .iter()
            .try_for_each(|entry| self.append_audit(entry))
    }
    /// Retention: drops entries older than `older_than`, then the oldest beyond `max_entries`;
    /// returns how many went.
    fn prune_audit(
        &self,
        older_than: time::OffsetDateTime,
        max_entries: usize,
    ) -> Result<usize, StoreError>;
    /// Entries in time order.
    fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError>;
}

/// What [`AuthRepo::consume_nonce`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NonceUse {
    /// We never issued it (or it expired and was pruned).
    Unknown,
    /// An earlier login consumed it.
    AlreadyUsed(NonceRecord),
    /// This call consumed it; the record as it was issued.
    Consumed(NonceRecord),
}

/// Wallet-auth state: login nonces, revoked sessions, the session secret, media gates.
pub trait AuthRepo: Send + Sync {
    fn put_nonce(&self, record: &NonceRecord) -> Result<(), StoreError>;
    /// Marks a nonce used, atomically: of many concurrent calls exactly one gets `Consumed`.
    /// Durable only after [`AuthRepo::sync_nonces`].
    fn consume_nonce(&self, nonce: &str) -> Result<NonceUse, StoreError>;
    /// Makes issued and consumed nonces durable; a login calls it before handing out a session.
    fn sync_nonces(&self) -> Result<(), StoreError>;
    /// Drops nonces that expired before `now`; returns how many.
    fn prune_nonces(&self, now: time::OffsetDateTime) -> Result<usize, StoreError>;
    /// Remembers a revoked session until `expires_at` (after which it is invalid anyway).
    fn put_revoked_session(
        &self,
        session_id: &str,
        expires_at: time::OffsetDateTime,
    ) -> Result<(), StoreError>;
    fn list_revoked_sessions(&self) -> Result<Vec<(String, time::OffsetDateTime)>, StoreError>;
    fn prune_revoked_sessions(&self, now: time::OffsetDateTime) -> Result<usize, StoreError>;
    /// The generated session secret, if one was stored.
    fn get_session_secret(&self) -> Result<Option<Vec<u8>>, StoreError>;
    fn put_session_secret(&self, secret: &[u8]) -> Result<(), StoreError>;
    /// Stores `secret` unless a secret is stored already, and returns the stored one: nodes
    /// starting together against an empty store all end up with the same secret.
    fn create_session_secret(&self, secret: &[u8]) -> Result<Vec<u8>, StoreError>;
    fn put_gate(&self, media_id: &MediaId, gate: &Gate) -> Result<(), StoreError>;
    fn delete_gate(&self, media_id: &MediaId) -> Result<bool, StoreError>;
    fn get_gate(&self, media_id: &MediaId) -> Result<Option<Gate>, StoreError>;
    fn list_gates(&self) -> Result<Vec<(MediaId, Gate)>, StoreError>;
}

/// Resumable (tus) uploads: one record per upload, rewritten on every acknowledged PATCH.
pub trait TusRepo: Send + Sync {
    fn get_tus_upload(&self, upload_id: &UploadId) -> Result<Option<TusUpload>, StoreError>;
    fn put_tus_upload(&self, upload: &TusUpload) -> Result<(), StoreError>;
    fn delete_tus_upload(&self, upload_id: &UploadId) -> Result<bool, StoreError>;
    /// Uploads in id (= creation) order, starting after `after`.
    fn list_tus_uploads(
        &self,
        after: Option<&UploadId>,
        limit: usize,
    ) -> Result<Vec<TusUpload>, StoreError>;
}

/// The upload quota: one counter per owner of the bytes they hold (reserved while an upload
/// arrives, then their media's source files). Every change is one atomic update of the owner's
/// counter, so concurrent uploads cannot together overshoot a quota; nothing here scans records
/// except [`QuotaRepo::reset_quota_usage`] at start-up.
pub trait QuotaRepo: Send + Sync {
    /// Adds between `min` and `max` bytes to `owner`'s counter, as many as keep it at or below
    /// `quota`; `None` (and no change) when not even `min` fits.
    fn reserve_quota(
        &self,
        owner: &str,
        min: u64,
        max: u64,
        quota: u64,
    ) -> Result<Option<u64>, StoreError>;
    /// Takes `bytes` off `owner`'s counter (never below zero).
    fn release_quota(&self, owner: &str, bytes: u64) -> Result<(), StoreError>;
    fn quota_used(&self, owner: &str) -> Result<u64, StoreError>;
    /// Replaces every counter: the start-up repair of reservations a crash left behind.
    fn reset_quota_usage(&self, usage: &BTreeMap<String, u64>) -> Result<(), StoreError>;
}

/// The quota counter's key for a media owner: a wallet, or the admin for owner-less media (the
/// name an admin's uploads are counted under).
pub fn quota_owner(owner: Option<&str>) -> &str {
    owner.unwrap_or(crate::auth::ADMIN)
}

/// Webhook deliveries: the durable queue and the delivery log.
pub trait WebhookRepo: Send + Sync {
    /// Stores (or replaces) the deliveries, flushed before it returns.
    fn put_deliveries(
        &self,
        deliveries: &[crate::webhooks::WebhookDelivery],
    ) -> Result<(), StoreError>;
    fn delete_delivery(&self, id: &uuid::Uuid) -> Result<(), StoreError>;
    /// The oldest `limit` deliveries, in creation order.
    fn list_deliveries(
        &self,
        limit: usize,
    ) -> Result<Vec<crate::webhooks::WebhookDelivery>, StoreError>;
}

/// A change another node made to state this node keeps copies of (caches, search index, gate
/// table, revocations), as heard on the store's change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A media record was written or deleted.
    Media(MediaId),
    /// A gate was set or cleared.
    Gate(MediaId),
    /// A session was revoked (logout, refresh).
    Revoked {
        session_id: String,
        expires_at: time::OffsetDateTime,
    },
    /// A tus upload record was written or deleted.
    TusUpload(UploadId),
    /// The feed was interrupted (the database restarted): changes may have been missed, so
    /// every copy must be dropped or reloaded.
    Resync,
}

/// Receives [`Change`]s on the feed's own thread: it must hand them on, not block.
pub type ChangeSink = Arc<dyn Fn(Change) + Send + Sync>;

/// Everything the actors need from the record store.
pub trait Repo:
    MediaRepo + JobRepo + AuditRepo + AuthRepo + TusRepo + QuotaRepo + WebhookRepo
{
    /// A cheap read that proves the store answers (for `/health`).
    fn check(&self) -> Result<(), StoreError>;
    /// Copies every record into a new store at `out` (which must not exist), record by record
    /// while writers go on: each record is whole, relations between records are as recovery at
    /// start-up expects them after a crash. Calls `progress` with the records copied so far.
    fn copy_to(
        &self,
        out: &std::path::Path,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, StoreError>;
    /// Every record in the store (an estimate for progress bars).
    fn record_count(&self) -> u64;
    /// Which backend this is (`sled` or `postgres`), for `/health`.
    fn backend_name(&self) -> &'static str;
    /// Follows the changes other nodes make, calling `sink` for each, for the life of the
    /// process. A single-node store (sled) has no other writers: nothing to follow.
    fn follow_changes(&self, sink: ChangeSink) -> Result<(), StoreError> {
        let _ = sink;
        Ok(())
    }
    /// Connection pool use, for `/metrics`: `None` for a store without a pool.
    fn pool_state(&self) -> Option<PoolState> {
        None
    }
    /// Observes how long each repository call takes into `histogram` (stores with a network
    /// round trip; sled's calls are in-process).
    fn time_queries(&self, histogram: prometheus::Histogram) {
        let _ = histogram;
    }
}

/// How many pooled connections exist and are idle, and the configured maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolState {
    pub connections: u32,
    pub idle: u32,
    pub max: u32,
}

pub type SharedRepo = Arc<dyn Repo>;

/// Runs a repository call on tokio's blocking pool.
pub async fn blocking<T, F>(repo: &SharedRepo, call: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Repo) -> Result<T, StoreError> + Send + 'static,
{
    let repo = Arc::clone(repo);
    tokio::task::spawn_blocking(move || {
        ON_BLOCKING_POOL.set(true);
        let result = call(repo.as_ref());
        ON_BLOCKING_POOL.set(false);
        result
    })
    .await
    .map_err(|join_error| StoreError::Join(join_error.to_string()))?
}

thread_local! {
    /// Set while [`blocking`] runs a call: the thread is tokio's, yet free to block.
    static ON_BLOCKING_POOL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a blocking client may run here: on a plain thread or inside [`blocking`], not on a
/// thread that drives async tasks.
fn may_block_here() -> bool {
    ON_BLOCKING_POOL.get() || tokio::runtime::Handle::try_current().is_err()
}
