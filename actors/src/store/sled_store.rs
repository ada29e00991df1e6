//! sled implementation of the repository traits: one tree per relation, JSON values keyed by
//! the 16 id bytes (UUIDv7, so key order is creation order).

use std::{collections::BTreeMap, path::Path, time::Duration};

use serde::{de::DeserializeOwned, Serialize};

use super::{
    apply_cancel, claimable, mark_claimed, quota_owner, AuditFilter, AuditRepo, AuthRepo,
    JobFilter, JobRepo, MediaRepo, NonceUse, QuotaRepo, Repo, StoreError, TusRepo, WebhookRepo,
};
use crate::model::{
    AuditEntry, CancelRequest, Gate, Job, JobId, JobState, Media, MediaId, NonceRecord, TusUpload,
    UploadId,
};

const MEDIA_TREE: &str = "media";
const JOBS_TREE: &str = "jobs";
const AUDIT_TREE: &str = "audit";
const NONCES_TREE: &str = "auth_nonces";
const REVOKED_TREE: &str = "auth_revoked_sessions";
const AUTH_META_TREE: &str = "auth_meta";
const GATES_TREE: &str = "gates";
const TUS_TREE: &str = "tus_uploads";
/// Owner name → bytes held against the upload quota (big-endian u64).
const QUOTA_TREE: &str = "quota_usage";
const WEBHOOKS_TREE: &str = "webhook_deliveries";
const SESSION_SECRET_KEY: &[u8] = b"session_secret";

pub struct SledStore {
    db: sled::Db,
    media: sled::Tree,
    jobs: sled::Tree,
    audit: sled::Tree,
    nonces: sled::Tree,
    revoked: sled::Tree,
    auth_meta: sled::Tree,
    gates: sled::Tree,
    tus: sled::Tree,
    quota: sled::Tree,
    webhooks: sled::Tree,
}

/// How long [`SledStore::open`] waits for an earlier holder of the store's lock to let go.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// sled's page cache when the caller names none (tests, benches): the configuration's default.
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

impl SledStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Whether a process (a running server) holds the lock of the store at `path`.
    pub fn in_use(path: &Path) -> bool {
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path.join("db"))
        else {
            return false;
        };
        match file.try_lock() {
            Ok(()) => {
                let _ = file.unlock();
                false
            }
            Err(_) => true,
        }
    }

    /// Opens the store with sled's page cache bounded to about `cache_bytes`.
    pub fn open_with_cache(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        wait_for_lock(path);
        // Every write flushes before it is acknowledged, so sled's background flusher adds no
        // durability; without it fewer threads outlive the store holding the directory lock.
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .flush_every_ms(None)
            .open()
            .map_err(backend)?;
        let media = db.open_tree(MEDIA_TREE).map_err(backend)?;
        let jobs = db.open_tree(JOBS_TREE).map_err(backend)?;
        let audit = db.open_tree(AUDIT_TREE).map_err(backend)?;
        let nonces = db.open_tree(NONCES_TREE).map_err(backend)?;
        let revoked = db.open_tree(REVOKED_TREE).map_err(backend)?;
        let auth_meta = db.open_tree(AUTH_META_TREE).map_err(backend)?;
        let gates = db.open_tree(GATES_TREE).map_err(backend)?;
        let tus = db.open_tree(TUS_TREE).map_err(backend)?;
        let quota = db.open_tree(QUOTA_TREE).map_err(backend)?;
        let webhooks = db.open_tree(WEBHOOKS_TREE).map_err(backend)?;
        Ok(Self {
            db,
            media,
            jobs,
            audit,
            nonces,
            revoked,
            auth_meta,
            gates,
            tus,
            quota,
            webhooks,
        })
    }

    fn put<T: Serialize>(
        &self,
        tree: &sled::Tree,
        key: &[u8],
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Backend(e.to_string()))?;
        tree.insert(key, bytes).map_err(backend)?;
        // sled only fsyncs on its own every 500 ms; callers acknowledge after this returns.
        self.db.flush().map_err(backend)?;
        Ok(())
    }

    fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>, StoreError> {
        match tree.get(key).map_err(backend)? {
            Some(bytes) => decode(key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn scan<T: DeserializeOwned>(
        tree: &sled::Tree,
        after: Option<&[u8]>,
        mut keep: impl FnMut(&T) -> bool,
        limit: usize,
    ) -> Result<Vec<T>, StoreError> {
        let range = match after {
            Some(after) => tree
                .range::<&[u8], _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => tree.iter(),
        };
        let mut found = Vec::new();
        for entry in range {
            if found.len() >= limit {
                break;
            }
            let (key, bytes) = entry.map_err(backend)?;
            let value: T = decode(&key, &bytes)?;
            if keep(&value) {
                found.push(value);
            }
        }
        Ok(found)
    }
}

fn backend(error: sled::Error) -> StoreError {
    StoreError::Backend(error.to_string())
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: hex::encode(key),
        reason: e.to_string(),
    })
}

impl MediaRepo for SledStore {
    fn get_media(&self, media_id: &MediaId) -> Result<Option<Media>, StoreError> {
        Self::get(&self.media, media_id.as_bytes())
    }

    fn put_media(&self, media: &Media) -> Result<(), StoreError> {
        self.put(&self.media, media.id.as_bytes(), media)
    }

    fn put_media_with_gate(&self, media: &Media, gate: Option<&Gate>) -> Result<(), StoreError> {
        use sled::{transaction::ConflictableTransactionResult, Transactional};
        let Some(gate) = gate else {
            return self.put_media(media);
        };
        let key = media.id.as_bytes();
        let record = serde_json::to_vec(media).map_err(|e| StoreError::Backend(e.to_string()))?;
        let gate = serde_json::to_vec(gate).map_err(|e| StoreError::Backend(e.to_string()))?;
        (&self.media, &self.gates)
            .transaction(|(media, gates)| -> ConflictableTransactionResult<(), ()> {
                gates.insert(key.as_slice(), gate.as_slice())?;
                media.insert(key.as_slice(), record.as_slice())?;
                Ok(())
            })
            .map_err(|error| StoreError::Backend(format!("{error:?}")))?;
        self.db.flush().map_err(backend)?;
        Ok(())
    }

    fn delete_media(&self, media_id: &MediaId) -> Result<bool, StoreError> {
        use sled::{
            transaction::{ConflictableTransactionResult, TransactionError},
            Transactional,
        };
        let key = media_id.as_bytes();
        let existed = (&self.media, &self.quota)
            .transaction(
                |(media, quota)| -> ConflictableTransactionResult<bool, ()> {
                    let Some(bytes) = media.remove(key.as_slice())? else {
                        return Ok(false);
                    };
                    // An unreadable record frees nothing; the start-up recount corrects the counter.
                    if let Ok(record) = serde_json::from_slice::<Media>(&bytes) {
                        let owner = quota_owner(record.owner.as_deref());
                        if let Some(current) = quota.get(owner.as_bytes())? {
                            let left = counter(Some(&current)).saturating_sub(record.size);
                            if left == 0 {
                                quota.remove(owner.as_bytes())?;
                            } else {
                                quota.insert(owner.as_bytes(), left.to_be_bytes().as_slice())?;
                            }
                        }
                    }
                    Ok(true)
                },
            )
            .map_err(|error: TransactionError<()>| match error {
                TransactionError::Storage(error) => backend(error),
                TransactionError::Abort(()) => StoreError::Backend("transaction aborted".into()),
            })?;
        self.db.flush().map_err(backend)?;
        Ok(existed)
    }

    fn list_media(&self, after: Option<&MediaId>, limit: usize) -> Result<Vec<Media>, StoreError> {
        Self::scan(
            &self.media,
            after.map(|id| id.as_bytes().as_slice()),
            |_: &Media| true,
            limit,
        )
    }

    fn recent_media(
        &self,
        limit: usize,
        keep: &(dyn Fn(&Media) -> bool + Sync),
    ) -> Result<Vec<Media>, StoreError> {
        let mut found = Vec::new();
        for entry in self.media.iter().rev() {
            if found.len() >= limit {
                break;
            }
            let (key, bytes) = entry.map_err(backend)?;
            let media: Media = decode(&key, &bytes)?;
            if keep(&media) {
                found.push(media);
            }
        }
        Ok(found)
    }
}

impl SledStore {
    /// Rewrites one job by compare-and-swap: `change` gets the stored job and returns the new
    /// one (or `None` to leave it) and an answer; it runs again if another writer came first.
    /// `None` if there is no such job.
    fn swap_job<R>(
        &self,
        job_id: &JobId,
        mut change: impl FnMut(Job) -> (Option<Job>, R),
    ) -> Result<Option<R>, StoreError> {
        let key = job_id.as_bytes();
        loop {
            let Some(current) = self.jobs.get(key).map_err(backend)? else {
                return Ok(None);
            };
            let (next, answer) = change(decode(key, &current)?);
            let Some(next) = next else {
                return Ok(Some(answer));
            };
            let bytes =
                serde_json::to_vec(&next).map_err(|e| StoreError::Backend(e.to_string()))?;
            let swapped = self
                .jobs
                .compare_and_swap(key, Some(current), Some(bytes))
                .map_err(backend)?;
            if swapped.is_ok() {
                self.db.flush().map_err(backend)?;
                return Ok(Some(answer));
            }
        }
    }
}

impl JobRepo for SledStore {
    fn get_job(&self, job_id: &JobId) -> Result<Option<Job>, StoreError> {
        Self::get(&self.jobs, job_id.as_bytes())
    }

    fn put_job(&self, job: &Job) -> Result<(), StoreError> {
        self.put(&self.jobs, job.id.as_bytes(), job)
    }

    fn delete_job(&self, job_id: &JobId) -> Result<bool, StoreError> {
        let existed = self.jobs.remove(job_id.as_bytes()).map_err(backend)?;
        self.db.flush().map_err(backend)?;
        Ok(existed.is_some())
    }

    fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, StoreError> {
        Self::scan(
            &self.jobs,
            filter.after.as_ref().map(|id| id.as_bytes().as_slice()),
            |job: &Job| {
                filter.state.is_none_or(|wanted| job.state == wanted)
                    && filter
                        .media_id
                        .as_ref()
                        .is_none_or(|wanted| job.media_id.as_ref() == Some(wanted))
                    && filter
                        .owner
                        .as_ref()
                        .is_none_or(|wanted| job.owner.as_ref() == Some(wanted))
            },
            filter.limit,
        )
    }

    fn claim_job(
        &self,
        node: &str,
        now: time::OffsetDateTime,
        until: time::OffsetDateTime,
    ) -> Result<Option<Job>, StoreError> {
        // One node on sled: a scan is enough; the swap still keeps concurrent claimers apart.
        loop {
            let mut candidates = Self::scan(
                &self.jobs,
                None,
                |job: &Job| claimable(job, now),
                usize::MAX,
            )?;
            candidates.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
            if candidates.is_empty() {
                return Ok(None);
            }
            for candidate in candidates {
                let claimed = self.swap_job(&candidate.id, |mut job| {
                    if !claimable(&job, now) {
                        return (None, None);
                    }
                    mark_claimed(&mut job, node, now, until);
                    (Some(job.clone()), Some(job))
                })?;
                if let Some(Some(job)) = claimed {
                    return Ok(Some(job));
                }
            }
        }
    }

    fn renew_leases(
        &self,
        node: &str,
        jobs: &[JobId],
        until: time::OffsetDateTime,
    ) -> Result<Vec<(JobId, Option<String>)>, StoreError> {
        let mut held = Vec::new();
        for job_id in jobs {
            let renewed = self.swap_job(job_id, |mut job| {
                let Some(lease) = job
                    .lease
                    .as_mut()
                    .filter(|lease| job.state == JobState::Running && lease.node == node)
                else {
                    return (None, None);
                };
                lease.until = until;
                let cancel = lease.cancel_requested_by.clone();
                (Some(job), Some(cancel))
            })?;
            if let Some(Some(cancel)) = renewed {
                held.push((job_id.clone(), cancel));
            }
        }
        Ok(held)
    }

    fn finish_leased(&self, node: &str, job: &Job) -> Result<bool, StoreError> {
        let stored = self.swap_job(&job.id, |current| {
            let holds = current.state == JobState::Running
                && current
                    .lease
                    .as_ref()
                    .is_some_and(|lease| lease.node == node);
            if holds {
                let mut ended = job.clone();
                ended.lease = None;
                (Some(ended), true)
            } else {
                (None, false)
            }
        })?;
        Ok(stored == Some(true))
    }

    fn request_cancel(
        &self,
        job_id: &JobId,
        caller: &str,
        now: time::OffsetDateTime,
    ) -> Result<CancelRequest, StoreError> {
        let answer = self.swap_job(job_id, |job| {
            let before = job.clone();
            let answer = apply_cancel(job, caller, now);
            let next = match &answer {
                CancelRequest::Cancelled(job) | CancelRequest::Requested(job) if *job != before => {
                    Some(job.clone())
                }
                _ => None,
            };
            (next, answer)
        })?;
        Ok(answer.unwrap_or(CancelRequest::Unknown))
    }
}

impl AuditRepo for SledStore {
    fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.put(&self.audit, entry.id.as_bytes(), entry)
    }

    fn append_audit_batch(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes =
                serde_json::to_vec(entry).map_err(|e| StoreError::Backend(e.to_string()))?;
            batch.insert(entry.id.as_bytes().as_slice(), bytes);
        }
        self.audit.apply_batch(batch).map_err(backend)?;
        self.db.flush().map_err(backend)?;
        Ok(())
    }

    fn prune_audit(
        &self,
        older_than: time::OffsetDateTime,
        max_entries: usize,
    ) -> Result<usize, StoreError> {
        // Keys are time-ordered ids: the old entries are a prefix of the tree.
        let mut doomed = sled::Batch::default();
        let mut removed = 0;
        let mut kept = 0;
        for entry in self.audit.iter() {
            let (key, bytes) = entry.map_err(backend)?;
            // An unreadable entry in the old prefix goes with it.
            if kept == 0 && decode::<AuditEntry>(&key, &bytes).map_or(true, |e| e.at < older_than) {
                doomed.remove(key);
                removed += 1;
            } else {
                kept += 1;
            }
        }
        if kept > max_entries {
            let excess = kept - max_entries;
            for entry in self.audit.iter().skip(removed).take(excess) {
                let (key, _) = entry.map_err(backend)?;
                doomed.remove(key);
            }
            removed += excess;
        }
        if removed > 0 {
            self.audit.apply_batch(doomed).map_err(backend)?;
            self.db.flush().map_err(backend)?;
        }
        Ok(removed)
    }

    fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        Self::scan(
            &self.audit,
            filter.after.as_ref().map(|id| id.as_bytes().as_slice()),
            |entry: &AuditEntry| {
                filter
                    .action
                    .as_ref()
                    .is_none_or(|action| &entry.action == action)
                    && filter
                        .actor
                        .as_ref()
                        .is_none_or(|actor| &entry.actor == actor)
                    && filter.since.is_none_or(|since| entry.at >= since)
            },
            filter.limit,
        )
    }
}

impl SledStore {
    /// Removes every entry of `tree` whose decoded expiry is before `now`.
    fn prune_expired<T: DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        now: time::OffsetDateTime,
        expiry: impl Fn(&T) -> time::OffsetDateTime,
    ) -> Result<usize, StoreError> {
        let mut removed = 0;
        for entry in tree.iter() {
            let (key, bytes) = entry.map_err(backend)?;
            let value: T = decode(&key, &bytes)?;
            if expiry(&value) < now {
                tree.remove(&key).map_err(backend)?;
                removed += 1;
            }
        }
        if removed > 0 {
            self.db.flush().map_err(backend)?;
        }
        Ok(removed)
    }
}

/// A revoked session, stored under its id until it would have expired anyway.
#[derive(serde::Serialize, serde::Deserialize)]
struct Revoked {
    #[serde(with = "time::serde::rfc3339")]
    expires_at: time::OffsetDateTime,
}

impl AuthRepo for SledStore {
    fn put_nonce(&self, record: &NonceRecord) -> Result<(), StoreError> {
        // Not flushed: a challenge lost to a crash costs the wallet a new one, and a flood of
        // challenges must not become a flood of fsyncs.
        let bytes = serde_json::to_vec(record).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.nonces
            .insert(record.nonce.as_bytes(), bytes)
            .map_err(backend)?;
        Ok(())
    }

    fn consume_nonce(&self, nonce: &str) -> Result<NonceUse, StoreError> {
        loop {
            let Some(current) = self.nonces.get(nonce.as_bytes()).map_err(backend)? else {
                return Ok(NonceUse::Unknown);
            };
            let record: NonceRecord = decode(nonce.as_bytes(), &current)?;
            if record.used {
                return Ok(NonceUse::AlreadyUsed(record));
            }
            let used = NonceRecord {
                used: true,
                ..record.clone()
            };
            let bytes =
                serde_json::to_vec(&used).map_err(|e| StoreError::Backend(e.to_string()))?;
            // Compare-and-swap: of two racing consumers only one replaces the unused record.
            let swapped = self
                .nonces
                .compare_and_swap(nonce.as_bytes(), Some(current), Some(bytes))
                .map_err(backend)?;
            if swapped.is_ok() {
                return Ok(NonceUse::Consumed(record));
            }
        }
    }

    fn sync_nonces(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(backend)?;
        Ok(())
    }

    fn prune_nonces(&self, now: time::OffsetDateTime) -> Result<usize, StoreError> {
        self.prune_expired(&self.nonces, now, |record: &NonceRecord| record.expires_at)
    }

    fn put_revoked_session(
        &self,
        session_id: &str,
        expires_at: time::OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.put(
            &self.revoked,
            session_id.as_bytes(),
            &Revoked { expires_at },
        )
    }

    fn list_revoked_sessions(&self) -> Result<Vec<(String, time::OffsetDateTime)>, StoreError> {
        let mut found = Vec::new();
        for entry in self.revoked.iter() {
            let (key, bytes) = entry.map_err(backend)?;
            let revoked: Revoked = decode(&key, &bytes)?;
            found.push((
                String::from_utf8_lossy(&key).into_owned(),
                revoked.expires_at,
            ));
        }
        Ok(found)
    }

    fn prune_revoked_sessions(&self, now: time::OffsetDateTime) -> Result<usize, StoreError> {
        self.prune_expired(&self.revoked, now, |revoked: &Revoked| revoked.expires_at)
    }

    fn get_session_secret(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .auth_meta
            .get(SESSION_SECRET_KEY)
            .map_err(backend)?
            .map(|bytes| bytes.to_vec()))
    }

    fn put_session_secret(&self, secret: &[u8]) -> Result<(), StoreError> {
        self.auth_meta
            .insert(SESSION_SECRET_KEY, secret)
            .map_err(backend)?;
        self.db.flush().map_err(backend)?;
        Ok(())
    }

    fn create_session_secret(&self, secret: &[u8]) -> Result<Vec<u8>, StoreError> {
        let stored = match self
            .auth_meta
            .compare_and_swap(SESSION_SECRET_KEY, None::<&[u8]>, Some(secret))
            .map_err(backend)?
        {
            Ok(()) => secret.to_vec(),
            Err(sled::CompareAndSwapError { current, .. }) => {
                current.map(|bytes| bytes.to_vec()).unwrap_or_default()
            }
        };
        self.db.flush().map_err(backend)?;
        Ok(stored)
    }

    fn get_gate(&self, media_id: &MediaId) -> Result<Option<Gate>, StoreError> {
        Self::get(&self.gates, media_id.as_bytes())
    }

    fn put_gate(&self, media_id: &MediaId, gate: &Gate) -> Result<(), StoreError> {
        self.put(&self.gates, media_id.as_bytes(), gate)
    }

    fn delete_gate(&self, media_id: &MediaId) -> Result<bool, StoreError> {
        let existed = self
            .gates
            .remove(media_id.as_bytes())
            .map_err(backend)?
            .is_some();
        self.db.flush().map_err(backend)?;
        Ok(existed)
    }

    fn list_gates(&self) -> Result<Vec<(MediaId, Gate)>, StoreError> {
        let mut found = Vec::new();
        for entry in self.gates.iter() {
            let (key, bytes) = entry.map_err(backend)?;
            let media_id = MediaId::from_bytes(&key).ok_or_else(|| StoreError::Corrupt {
                key: hex::encode(&key),
                reason: "not a media id".into(),
            })?;
            found.push((media_id, decode(&key, &bytes)?));
        }
        Ok(found)
    }
}

impl TusRepo for SledStore {
    fn get_tus_upload(&self, upload_id: &UploadId) -> Result<Option<TusUpload>, StoreError> {
        Self::get(&self.tus, upload_id.as_bytes())
    }

    fn put_tus_upload(&self, upload: &TusUpload) -> Result<(), StoreError> {
        self.put(&self.tus, upload.id.as_bytes(), upload)
    }

    fn delete_tus_upload(&self, upload_id: &UploadId) -> Result<bool, StoreError> {
        let existed = self
            .tus
            .remove(upload_id.as_bytes())
            .map_err(backend)?
            .is_some();
        self.db.flush().map_err(backend)?;
        Ok(existed)
    }

    fn list_tus_uploads(
        &self,
        after: Option<&UploadId>,
        limit: usize,
    ) -> Result<Vec<TusUpload>, StoreError> {
        Self::scan(
            &self.tus,
            after.map(|id| id.as_bytes().as_slice()),
            |_: &TusUpload| true,
            limit,
        )
    }
}

fn counter(bytes: Option<&[u8]>) -> u64 {
    bytes
        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        .map_or(0, u64::from_be_bytes)
}

impl QuotaRepo for SledStore {
    fn reserve_quota(
        &self,
        owner: &str,
        min: u64,
        max: u64,
        quota: u64,
    ) -> Result<Option<u64>, StoreError> {
        loop {
            let current = self.quota.get(owner.as_bytes()).map_err(backend)?;
            let used = counter(current.as_deref());
            let room = quota.saturating_sub(used);
            if room < min {
                return Ok(None);
            }
            let granted = max.max(min).min(room);
            if granted == 0 {
                return Ok(Some(0));
            }
            let next = (used + granted).to_be_bytes();
            // Compare-and-swap: a racing reservation makes this one re-read and re-check.
            let swapped = self
                .quota
                .compare_and_swap(owner.as_bytes(), current, Some(next.as_slice()))
                .map_err(backend)?;
            if swapped.is_ok() {
                self.db.flush().map_err(backend)?;
                return Ok(Some(granted));
            }
        }
    }

    fn release_quota(&self, owner: &str, bytes: u64) -> Result<(), StoreError> {
        if bytes == 0 {
            return Ok(());
        }
        loop {
            let Some(current) = self.quota.get(owner.as_bytes()).map_err(backend)? else {
                return Ok(());
            };
            let left = counter(Some(&current)).saturating_sub(bytes);
            let next = (left > 0).then(|| left.to_be_bytes().to_vec());
            let swapped = self
                .quota
                .compare_and_swap(owner.as_bytes(), Some(current), next)
                .map_err(backend)?;
            if swapped.is_ok() {
                self.db.flush().map_err(backend)?;
                return Ok(());
            }
        }
    }

    fn quota_used(&self, owner: &str) -> Result<u64, StoreError> {
        Ok(counter(
            self.quota
                .get(owner.as_bytes())
                .map_err(backend)?
                .as_deref(),
        ))
    }

    fn reset_quota_usage(&self, usage: &BTreeMap<String, u64>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for entry in self.quota.iter() {
            let (key, _) = entry.map_err(backend)?;
            batch.remove(key);
        }
        for (owner, bytes) in usage.iter().filter(|(_, bytes)| **bytes > 0) {
            batch.insert(owner.as_bytes(), bytes.to_be_bytes().as_slice());
        }
        self.quota.apply_batch(batch).map_err(backend)?;
        self.db.flush().map_err(backend)?;
        Ok(())
    }
}

impl SledStore {
    /// Every login nonce, used or not (the migration copies them).
    pub(crate) fn all_nonces(&self) -> Result<Vec<NonceRecord>, StoreError> {
        Self::scan(&self.nonces, None, |_: &NonceRecord| true, usize::MAX)
    }

    /// Every quota counter (the migration copies them).
    pub(crate) fn all_quota_counters(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut found = BTreeMap::new();
        for entry in self.quota.iter() {
            let (key, bytes) = entry.map_err(backend)?;
            found.insert(
                String::from_utf8_lossy(&key).into_owned(),
                counter(Some(&bytes)),
            );
        }
        Ok(found)
    }
}

impl WebhookRepo for SledStore {
    fn put_deliveries(
        &self,
        deliveries: &[crate::webhooks::WebhookDelivery],
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for delivery in deliveries {
            let bytes =
                serde_json::to_vec(delivery).map_err(|e| StoreError::Backend(e.to_string()))?;
            batch.insert(delivery.id.as_bytes().as_slice(), bytes);
        }
        self.webhooks.apply_batch(batch).map_err(backend)?;
        self.db.flush().map_err(backend)?;
        Ok(())
    }

    fn delete_delivery(&self, id: &uuid::Uuid) -> Result<(), StoreError> {
        self.webhooks.remove(id.as_bytes()).map_err(backend)?;
        Ok(())
    }

    fn list_deliveries(
        &self,
        limit: usize,
    ) -> Result<Vec<crate::webhooks::WebhookDelivery>, StoreError> {
        let mut found = Vec::new();
        for entry in self.webhooks.iter().take(limit) {
            let (key, bytes) = entry.map_err(backend)?;
            found.push(decode(&key, &bytes)?);
        }
        Ok(found)
    }
}

/// Whether a live process (a running server) holds the sled store under `path`.
pub fn sled_in_use(path: &Path) -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path.join("db"))
        .is_ok_and(|file| {
            let free = file.try_lock().is_ok();
            if free {
                let _ = file.unlock();
            }
            !free
        })
}

impl Repo for SledStore {
    fn check(&self) -> Result<(), StoreError> {
        self.media.first().map_err(backend)?;
        Ok(())
    }

    fn copy_to(&self, out: &Path, progress: &mut dyn FnMut(u64)) -> Result<u64, StoreError> {
        const BATCH: u64 = 1000;
        if out.exists() {
            return Err(StoreError::Backend(format!(
                "{} exists already",
                out.display()
            )));
        }
        let target = sled::Config::new()
            .path(out)
            .flush_every_ms(None)
            .open()
            .map_err(backend)?;
        let mut copied = 0;
        for name in self.db.tree_names() {
            let from = self.db.open_tree(&name).map_err(backend)?;
            let to = target.open_tree(&name).map_err(backend)?;
            let mut batch = sled::Batch::default();
            for entry in from.iter() {
                let (key, value) = entry.map_err(backend)?;
                batch.insert(key, value);
                copied += 1;
                if copied % BATCH == 0 {
                    to.apply_batch(std::mem::take(&mut batch))
                        .map_err(backend)?;
                    progress(copied);
                }
            }
            to.apply_batch(batch).map_err(backend)?;
        }
        target.flush().map_err(backend)?;
        progress(copied);
        Ok(copied)
    }

    fn record_count(&self) -> u64 {
        self.db
            .tree_names()
            .iter()
            .filter_map(|name| self.db.open_tree(name).ok())
            .map(|tree| tree.len() as u64)
            .sum()
    }

    fn backend_name(&self) -> &'static str {
        "sled"
    }
}

/// Waits, up to [`LOCK_WAIT`], until nothing holds the lock sled takes on `path/db`. A store
/// that was just dropped can keep it a moment longer (sled's own threads let go last), and so
/// can a previous process that is still exiting; sled itself only tries once. The wait blocks
/// in the kernel on the lock, on its own thread, so it ends the moment the lock is released;
/// after the deadline `open` goes ahead and reports sled's lock error. A store that does not
/// exist yet has no lock to wait for.
fn wait_for_lock(path: &Path) {
    wait_for_file_lock(&path.join("db"), "the record store's lock");
}

/// Waits, up to [`LOCK_WAIT`], until nothing holds the (`flock`) lock on `lock_file`; the
/// search index's writer lock is taken the same way and outlives its index the same way.
pub(crate) fn wait_for_file_lock(lock_file: &Path, what: &str) {
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(lock_file)
    else {
        return;
    };
    if file.try_lock().is_ok() {
        let _ = file.unlock();
        return;
    }
    tracing::info!(path = %lock_file.display(), "waiting for {what}");
    let (released, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if file.lock().is_ok() {
            let _ = file.unlock();
        }
        let _ = released.send(());
    });
    let _ = wait.recv_timeout(LOCK_WAIT);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::media;
    use time::OffsetDateTime;

    #[test]
    fn media_round_trips_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let stored = media();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.put_media(&stored).unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.get_media(&stored.id).unwrap(), Some(stored.clone()));
        assert!(store.delete_media(&stored.id).unwrap());
        assert_eq!(store.get_media(&stored.id).unwrap(), None);
    }

    #[test]
    fn records_outgrowing_a_small_cache_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut all = Vec::new();
        {
            let store = SledStore::open_with_cache(dir.path(), 1024 * 1024).unwrap();
            for n in 0..1500 {
                let mut item = media();
                item.description = format!("{n} {}", "x".repeat(2000));
                store.put_media(&item).unwrap();
                all.push(item);
            }
            // Three times the cache: early records were evicted and come back from disk.
            for item in &all {
                assert_eq!(store.get_media(&item.id).unwrap().as_ref(), Some(item));
            }
        }
        let store = SledStore::open_with_cache(dir.path(), 1024 * 1024).unwrap();
        let listed = store.list_media(None, 2000).unwrap();
        assert_eq!(listed, all);
    }

    #[test]
    fn open_waits_for_a_store_that_is_still_held_to_be_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let held = SledStore::open(dir.path()).unwrap();
        let record = media();
        held.put_media(&record).unwrap();
        let path = dir.path().to_path_buf();
        let (opening_tx, opening) = std::sync::mpsc::channel();
        let second = std::thread::spawn(move || {
            opening_tx.send(()).unwrap();
            SledStore::open(&path)
        });
        opening.recv().unwrap();
        drop(held);
        let second = second.join().unwrap().unwrap();
        assert_eq!(second.get_media(&record.id).unwrap(), Some(record));
    }

    #[test]
    fn a_nonce_is_consumed_once_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let record = NonceRecord {
            nonce: "abcdefgh12345678".into(),
            address: "0x0000000000000000000000000000000000000001".into(),
            chain_id: 1,
            issued_at: now,
            expires_at: now + time::Duration::minutes(5),
            used: false,
        };
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.put_nonce(&record).unwrap();
            store
                .put_revoked_session("s1", now + time::Duration::hours(1))
                .unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            store.consume_nonce(&record.nonce).unwrap(),
            NonceUse::Consumed(record.clone())
        );
        assert!(matches!(
            store.consume_nonce(&record.nonce).unwrap(),
            NonceUse::AlreadyUsed(_)
        ));
        assert_eq!(
            store.consume_nonce("never-issued").unwrap(),
            NonceUse::Unknown
        );
        assert_eq!(store.list_revoked_sessions().unwrap().len(), 1);
        assert_eq!(
            store
                .prune_nonces(now + time::Duration::minutes(6))
                .unwrap(),
            1
        );
        assert_eq!(
            store.consume_nonce(&record.nonce).unwrap(),
            NonceUse::Unknown
        );
    }
}
