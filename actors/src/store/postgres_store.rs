//! Postgres implementation of the repository traits: one table per relation, the record as its
//! JSON text next to the columns the filters need, ids as their 16 bytes (UUIDv7, so `bytea`
//! order is creation order, as sled's key order is).
//!
//! Where sled compares and swaps, this takes a row lock or updates with a guard in one
//! statement, so the guarantees hold across any number of nodes sharing the database.

use std::{collections::BTreeMap, time::Duration};

use postgres::{GenericClient, NoTls, Row};
use r2d2_postgres::PostgresConnectionManager;
use serde::{de::DeserializeOwned, Serialize};

use super::{
    apply_cancel, listen::Notice, mark_claimed, quota_owner, AuditFilter, AuditRepo, AuthRepo,
    ChangeSink, JobFilter, JobRepo, MediaRepo, NonceUse, PoolState, QuotaRepo, Repo, StoreError,
    TusRepo, WebhookRepo,
};
use crate::model::{
    AuditEntry, CancelRequest, Gate, Job, JobId, JobLease, JobState, Media, MediaId, NonceRecord,
    TusUpload, UploadId,
};
use crate::webhooks::WebhookDelivery;

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

/// Versioned schema steps, applied in order at start; an applied step is never edited, a change
/// is a new step.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE media (id bytea PRIMARY KEY, doc text NOT NULL);
     CREATE TABLE jobs (id bytea PRIMARY KEY, state text NOT NULL, media_id bytea, owner text,
                        doc text NOT NULL);
     CREATE INDEX jobs_by_state ON jobs (state, id);
     CREATE TABLE audit (id bytea PRIMARY KEY, at_ns bigint NOT NULL, action text NOT NULL,
                         actor text NOT NULL, doc text NOT NULL);
     CREATE TABLE auth_nonces (nonce text PRIMARY KEY, expires_at_ns bigint NOT NULL,
                               used boolean NOT NULL, doc text NOT NULL);
     CREATE TABLE auth_revoked_sessions (session_id text PRIMARY KEY,
                                         expires_at_ns bigint NOT NULL);
     CREATE TABLE auth_meta (key text PRIMARY KEY, value bytea NOT NULL);
     CREATE TABLE gates (media_id bytea PRIMARY KEY, doc text NOT NULL);
     CREATE TABLE tus_uploads (id bytea PRIMARY KEY, doc text NOT NULL);
     CREATE TABLE quota_usage (owner text PRIMARY KEY, bytes bigint NOT NULL);",
    ),
    (
        2,
        "CREATE TABLE webhook_deliveries (id bytea PRIMARY KEY, doc text NOT NULL);",
    ),
    (
        3,
        // Job leases: what a claim orders and filters by, and the lease itself, in columns so
        // a heartbeat or a cancel request touches only its own.
        "ALTER TABLE jobs ADD COLUMN priority smallint NOT NULL DEFAULT 0,
                          ADD COLUMN run_at_ns bigint,
                          ADD COLUMN lease_node text,
                          ADD COLUMN lease_until_ns bigint,
                          ADD COLUMN cancel_by text;
     UPDATE jobs SET priority = coalesce((doc::jsonb->>'priority')::smallint, 0),
         run_at_ns = (extract(epoch FROM (doc::jsonb->>'run_at')::timestamptz)
                      * 1000000000)::bigint;
     CREATE INDEX jobs_claimable ON jobs (priority DESC, id)
         WHERE state IN ('queued', 'running');",
    ),
];

/// Serialises concurrent migrations of several nodes starting at once (an arbitrary constant).
const MIGRATION_LOCK: i64 = 0x5354_5247_4154_4531;
const SESSION_SECRET_KEY: &str = "session_secret";
/// Rows fetched per round trip when a caller's filter runs in Rust (`recent_media`).
const SCAN_BATCH: i64 = 256;

/// The repositories on Postgres. Every call goes through [`Pg`] on a thread that may block.
pub struct PostgresStore {
    /// Always `Some` until dropped; see the `Drop` impl.
    inner: Option<Pg>,
    /// Times every repository call (pool wait included), once the monitor hands it over.
    query_timer: std::sync::OnceLock<prometheus::Histogram>,
    /// Set when the store is dropped: the change listener stops.
    closed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

struct Pg {
    pool: Pool,
    /// This node's id in change notices, so its listener skips its own writes.
    node: String,
    /// The connection settings, for the change listener's own connection.
    config: postgres::Config,
}

impl PostgresStore {
    /// Connects a pool of `pool_size` connections to `url` and brings the schema up to date.
    /// Each checkout waits at most `connect_timeout`, so an unreachable database fails a call
    /// (and `/health`) instead of hanging it.
    pub fn connect(
        url: &str,
        pool_size: u32,
        connect_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e: postgres::Error| StoreError::Backend(format!("postgres.url: {e}")))?;
        config.connect_timeout(connect_timeout);
        let pool = r2d2::Pool::builder()
            .max_size(pool_size.max(1))
            .min_idle(Some(1))
            .connection_timeout(connect_timeout)
            .build(PostgresConnectionManager::new(config.clone(), NoTls))
            .map_err(pool_error)?;
        let store = Self {
            inner: Some(Pg {
                pool,
                node: uuid::Uuid::new_v4().simple().to_string(),
                config,
            }),
            query_timer: std::sync::OnceLock::new(),
            closed: std::sync::Arc::default(),
        };
        store.run(Pg::migrate)?;
        Ok(store)
    }

    /// Runs `call` with the store. The sync client drives each query on a runtime of its own,
    /// which tokio forbids on a thread already running async tasks; called from one (start-up,
    /// outside [`super::blocking`]) the call moves to a short-lived thread.
    fn run<T: Send>(
        &self,
        call: impl FnOnce(&Pg) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        let pg = self
            .inner
            .as_ref()
            .ok_or_else(|| StoreError::Backend("the store is closed".into()))?;
        let _timer = self.query_timer.get().map(|timer| timer.start_timer());
        if super::may_block_here() {
            call(pg)
        } else {
            std::thread::scope(|scope| scope.spawn(|| call(pg)).join())
                .map_err(|_| StoreError::Join("a postgres call panicked".into()))?
        }
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        // Closing a connection blocks on the client's runtime too: not on an async thread.
        if let Some(pg) = self.inner.take() {
            if !super::may_block_here() {
                std::thread::spawn(move || drop(pg));
            }
        }
    }
}

impl Pg {
    fn conn(&self) -> Result<r2d2::PooledConnection<PostgresConnectionManager<NoTls>>, StoreError> {
        self.pool.get().map_err(pool_error)
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(backend)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map_err(backend)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS streamgate_migrations (
                 version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .map_err(backend)?;
        let applied: i32 = tx
            .query_one(
                "SELECT coalesce(max(version), 0) FROM streamgate_migrations",
                &[],
            )
            .map_err(backend)?
            .get(0);
        let known = MIGRATIONS.last().map_or(0, |(version, _)| *version);
        if applied > known {
            return Err(StoreError::Backend(format!(
                "the database schema is at version {applied}, newer than this build's {known}"
            )));
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > applied) {
            tx.batch_execute(sql).map_err(backend)?;
            tx.execute(
                "INSERT INTO streamgate_migrations (version) VALUES ($1)",
                &[version],
            )
            .map_err(backend)?;
            tracing::info!(version, "postgres schema migrated");
        }
        tx.commit().map_err(backend)
    }
}

fn backend(error: postgres::Error) -> StoreError {
    StoreError::Backend(error.to_string())
}

fn pool_error(error: r2d2::Error) -> StoreError {
    StoreError::Backend(format!("no postgres connection: {error}"))
}

fn encode<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(e.to_string()))
}

/// Decodes the `doc` column `column` of a row whose key is `key`.
fn decode<T: DeserializeOwned>(key: &[u8], row: &Row, column: usize) -> Result<T, StoreError> {
    let doc: &str = row.try_get(column).map_err(backend)?;
    serde_json::from_str(doc).map_err(|e| StoreError::Corrupt {
        key: hex::encode(key),
        reason: e.to_string(),
    })
}

/// Decodes rows of `(id bytea, doc text)`.
fn decode_rows<T: DeserializeOwned>(rows: &[Row]) -> Result<Vec<T>, StoreError> {
    rows.iter()
        .map(|row| {
            let key: &[u8] = row.try_get(0).map_err(backend)?;
            decode(key, row, 1)
        })
        .collect()
}

fn limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn bytes(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn nanos(at: time::OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

fn from_nanos(key: &str, ns: i64) -> Result<time::OffsetDateTime, StoreError> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)).map_err(|e| {
        StoreError::Corrupt {
            key: key.to_string(),
            reason: e.to_string(),
        }
    })
}

impl Pg {
    fn get_doc<T: DeserializeOwned>(&self, sql: &str, key: &[u8]) -> Result<Option<T>, StoreError> {
        let row = self.conn()?.query_opt(sql, &[&key]).map_err(backend)?;
        row.map(|row| decode(key, &row, 0)).transpose()
    }

    fn execute(
        &self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        self.conn()?.execute(sql, params).map_err(backend)
    }

    /// Runs one write (`INSERT`/`UPDATE`/`DELETE` without `RETURNING`) and, in the same
    /// statement, notifies the other nodes once per affected row; returns the rows affected.
    /// One statement is one transaction: the notice goes out exactly when the write commits.
    fn write_and_notify(
        &self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
        notice: Notice<'_>,
    ) -> Result<u64, StoreError> {
        let payload = notice.payload(&self.node);
        let statement = format!(
            "WITH written AS ({sql} RETURNING 1) \
             SELECT pg_notify('{}', ${}) FROM written",
            super::listen::CHANNEL,
            params.len() + 1
        );
        let mut all = params.to_vec();
        all.push(&payload);
        let rows = self.conn()?.query(&statement, &all).map_err(backend)?;
        Ok(rows.len() as u64)
    }
}

impl WebhookRepo for Pg {
    fn put_deliveries(&self, deliveries: &[WebhookDelivery]) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(backend)?;
        for delivery in deliveries {
            tx.execute(
                "INSERT INTO webhook_deliveries (id, doc) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET doc = EXCLUDED.doc",
                &[&delivery.id.as_bytes().as_slice(), &encode(delivery)?],
            )
            .map_err(backend)?;
        }
        tx.commit().map_err(backend)
    }

    fn delete_delivery(&self, id: &uuid::Uuid) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM webhook_deliveries WHERE id = $1",
            &[&id.as_bytes().as_slice()],
        )?;
        Ok(())
    }

    fn list_deliveries(&self, limit: usize) -> Result<Vec<WebhookDelivery>, StoreError> {
        let rows = self
            .conn()?
            .query(
                "SELECT id, doc FROM webhook_deliveries ORDER BY id LIMIT $1",
                &[&(limit.min(i64::MAX as usize) as i64)],
            )
            .map_err(backend)?;
        rows.iter()
            .map(|row| {
                let id: &[u8] = row.try_get(0).map_err(backend)?;
                decode(id, row, 1)
            })
            .collect()
    }
}

impl MediaRepo for Pg {
    fn get_media(&self, media_id: &MediaId) -> Result<Option<Media>, StoreError> {
        self.get_doc("SELECT doc FROM media WHERE id = $1", media_id.as_bytes())
    }

    fn put_media(&self, media: &Media) -> Result<(), StoreError> {
        self.write_and_notify(
            "INSERT INTO media (id, doc) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET doc = EXCLUDED.doc",
            &[&media.id.as_bytes().as_slice(), &encode(media)?],
            Notice::Media(&media.id),
        )?;
        Ok(())
    }

    fn put_media_with_gate(&self, media: &Media, gate: Option<&Gate>) -> Result<(), StoreError> {
        let Some(gate) = gate else {
            return self.put_media(media);
        };
        let key = media.id.as_bytes().as_slice();
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(backend)?;
        // The gate first, in the same transaction: no reader ever sees the record ungated.
        tx.execute(
            "INSERT INTO gates (media_id, doc) VALUES ($1, $2)
             ON CONFLICT (media_id) DO UPDATE SET doc = EXCLUDED.doc",
            &[&key, &encode(gate)?],
        )
        .map_err(backend)?;
        tx.execute(
            "INSERT INTO media (id, doc) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET doc = EXCLUDED.doc",
            &[&key, &encode(media)?],
        )
        .map_err(backend)?;
        Notice::Gate(&media.id).send(&mut tx, &self.node)?;
        Notice::Media(&media.id).send(&mut tx, &self.node)?;
        tx.commit().map_err(backend)
    }

    fn delete_media(&self, media_id: &MediaId) -> Result<bool, StoreError> {
        let key = media_id.as_bytes().as_slice();
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(backend)?;
        let Some(row) = tx
            .query_opt("DELETE FROM media WHERE id = $1 RETURNING doc", &[&key])
            .map_err(backend)?
        else {
            return Ok(false);
        };
        // An unreadable record frees nothing; the start-up recount corrects the counter.
        if let Ok(record) = decode::<Media>(key, &row, 0) {
            release(&mut tx, quota_owner(record.owner.as_deref()), record.size)?;
        }
        Notice::Media(media_id).send(&mut tx, &self.node)?;
        tx.commit().map_err(backend)?;
        Ok(true)
    }

    fn list_media(&self, after: Option<&MediaId>, limit: usize) -> Result<Vec<Media>, StoreError> {
        let after = after.map(|id| id.as_bytes().as_slice());
        let rows = self
            .conn()?
            .query(
                "SELECT id, doc FROM media WHERE ($1::bytea IS NULL OR id > $1)
                 ORDER BY id LIMIT $2",
                &[&after, &self::limit(limit)],
            )
            .map_err(backend)?;
        decode_rows(&rows)
    }

    fn recent_media(
        &self,
        limit: usize,
        keep: &(dyn Fn(&Media) -> bool + Sync),
    ) -> Result<Vec<Media>, StoreError> {
        let mut conn = self.conn()?;
        let mut found = Vec::new();
        let mut before: Option<Vec<u8>> = None;
        while found.len() < limit {
            let rows = conn
                .query(
                    "SELECT id, doc FROM media WHERE ($1::bytea IS NULL OR id < $1)
                     ORDER BY id DESC LIMIT $2",
                    &[&before, &SCAN_BATCH],
                )
                .map_err(backend)?;
            let Some(last) = rows.last() else { break };
            before = Some(last.try_get::<_, Vec<u8>>(0).map_err(backend)?);
            for media in decode_rows::<Media>(&rows)? {
                if found.len() < limit && keep(&media) {
                    found.push(media);
                }
            }
        }
        Ok(found)
    }
}

/// The columns [`decode_job`] reads.
const JOB_COLUMNS: &str = "id, doc, lease_node, lease_until_ns, cancel_by";

/// A job row: the document, with the lease from its columns (they are the truth for it).
fn decode_job(row: &Row) -> Result<Job, StoreError> {
    let key: &[u8] = row.try_get(0).map_err(backend)?;
    let mut job: Job = decode(key, row, 1)?;
    let node: Option<String> = row.try_get(2).map_err(backend)?;
    job.lease = match node {
        Some(node) => {
            let until: Option<i64> = row.try_get(3).map_err(backend)?;
            Some(JobLease {
                node,
                until: from_nanos(&hex::encode(key), until.unwrap_or(0))?,
                cancel_requested_by: row.try_get(4).map_err(backend)?,
            })
        }
        None => None,
    };
    Ok(job)
}

/// Inserts or replaces a job, its lease columns included.
fn write_job(client: &mut impl GenericClient, job: &Job) -> Result<(), StoreError> {
    let lease = job.lease.as_ref();
    client
        .execute(
            "INSERT INTO jobs (id, state, media_id, owner, doc, priority, run_at_ns, lease_node,
                               lease_until_ns, cancel_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state,
                 media_id = EXCLUDED.media_id, owner = EXCLUDED.owner, doc = EXCLUDED.doc,
                 priority = EXCLUDED.priority, run_at_ns = EXCLUDED.run_at_ns,
                 lease_node = EXCLUDED.lease_node, lease_until_ns = EXCLUDED.lease_until_ns,
                 cancel_by = EXCLUDED.cancel_by",
            &[
                &job.id.as_bytes().as_slice(),
                &job.state.as_str(),
                &job.media_id.as_ref().map(|id| id.as_bytes().as_slice()),
                &job.owner,
                &encode(job)?,
                &i16::from(job.priority),
                &job.run_at.map(nanos),
                &lease.map(|lease| lease.node.as_str()),
                &lease.map(|lease| nanos(lease.until)),
                &lease.and_then(|lease| lease.cancel_requested_by.as_deref()),
            ],
        )
        .map_err(backend)?;
    Ok(())
}

impl JobRepo for Pg {
    fn get_job(&self, job_id: &JobId) -> Result<Option<Job>, StoreError> {
        let row = self
            .conn()?
            .query_opt(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"),
                &[&job_id.as_bytes().as_slice()],
            )
            .map_err(backend)?;
        row.as_ref().map(decode_job).transpose()
    }

    fn put_job(&self, job: &Job) -> Result<(), StoreError> {
        write_job(&mut *self.conn()?, job)
    }

    fn delete_job(&self, job_id: &JobId) -> Result<bool, StoreError> {
        let deleted = self.execute(
            "DELETE FROM jobs WHERE id = $1",
            &[&job_id.as_bytes().as_slice()],
        )?;
        Ok(deleted > 0)
    }

    fn count_jobs(&self, state: JobState) -> Result<u64, StoreError> {
        let row = self
            .conn()?
            .query_one(
                "SELECT count(*) FROM jobs WHERE state = $1",
                &[&state.as_str()],
            )
            .map_err(backend)?;
        let count: i64 = row.try_get(0).map_err(backend)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, StoreError> {
        let rows = self
            .conn()?
            .query(
                &format!(
                    "SELECT {JOB_COLUMNS} FROM jobs
                     WHERE ($1::text IS NULL OR state = $1)
                       AND ($2::bytea IS NULL OR media_id = $2)
                       AND ($3::text IS NULL OR owner = $3)
                       AND ($4::bytea IS NULL OR id > $4)
                     ORDER BY id LIMIT $5"
                ),
                &[
                    &filter.state.map(|state| state.as_str()),
                    &filter.media_id.as_ref().map(|id| id.as_bytes().as_slice()),
                    &filter.owner,
                    &filter.after.as_ref().map(|id| id.as_bytes().as_slice()),
                    &limit(filter.limit),
                ],
            )
            .map_err(backend)?;
        rows.iter().map(decode_job).collect()
    }

    fn claim_job(
        &self,
        node: &str,
        now: time::OffsetDateTime,
        until: time::OffsetDateTime,
    ) -> Result<Option<Job>, StoreError> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(backend)?;
        // SKIP LOCKED: a row another node is claiming right now is passed over, not waited for.
        let row = tx
            .query_opt(
                &format!(
                    "SELECT {JOB_COLUMNS} FROM jobs
                     WHERE (state = 'queued' AND (run_at_ns IS NULL OR run_at_ns <= $1))
                        OR (state = 'running' AND (lease_until_ns IS NULL OR lease_until_ns < $1))
                     ORDER BY priority DESC, id LIMIT 1
                     FOR UPDATE SKIP LOCKED"
                ),
                &[&nanos(now)],
            )
            .map_err(backend)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut job = decode_job(&row)?;
        mark_claimed(&mut job, node, now, until);
        write_job(&mut tx, &job)?;
        tx.commit().map_err(backend)?;
        Ok(Some(job))
    }

    fn renew_leases(
        &self,
        node: &str,
        jobs: &[JobId],
        until: time::OffsetDateTime,
    ) -> Result<Vec<(JobId, Option<String>)>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&[u8]> = jobs.iter().map(|id| id.as_bytes().as_slice()).collect();
        let rows = self
            .conn()?
            .query(
                "UPDATE jobs SET lease_until_ns = $3
                 WHERE id = ANY($2) AND state = 'running' AND lease_node = $1
                 RETURNING id, cancel_by",
                &[&node, &ids, &nanos(until)],
            )
            .map_err(backend)?;
        let mut held = std::collections::HashMap::new();
        for row in &rows {
            let key: Vec<u8> = row.try_get(0).map_err(backend)?;
            let cancel: Option<String> = row.try_get(1).map_err(backend)?;
            held.insert(key, cancel);
        }
        // In the caller's order.
        Ok(jobs
            .iter()
            .filter_map(|id| {
                let cancel = held.remove(id.as_bytes().as_slice())?;
                Some((id.clone(), cancel))
            })
            .collect())
    }

    fn finish_leased(&self, node: &str, job: &Job) -> Result<bool, StoreError> {
        let mut ended = job.clone();
        ended.lease = None;
        let updated = self.execute(
            "UPDATE jobs SET state = $2, doc = $3, priority = $4, run_at_ns = $5,
                 lease_node = NULL, lease_until_ns = NULL, cancel_by = NULL
             WHERE id = $1 AND state = 'running' AND lease_node = $6",
            &[
                &ended.id.as_bytes().as_slice(),
                &ended.state.as_str(),
                &encode(&ended)?,
                &i16::from(ended.priority),
                &ended.run_at.map(nanos),
                &node,
            ],
        )?;
        Ok(updated > 0)
    }

    fn request_cancel(
        &self,
        job_id: &JobId,
        caller: &str,
        now: time::OffsetDateTime,
    ) -> Result<CancelRequest, StoreError> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(backend)?;
        let row = tx
            .query_opt(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 FOR UPDATE"),
                &[&job_id.as_bytes().as_slice()],
            )
            .map_err(backend)?;
        let Some(row) = row else {
            return Ok(CancelRequest::Unknown);
        };
        let answer = apply_cancel(decode_job(&row)?, caller, now);
        match &answer {
            CancelRequest::Cancelled(job) => write_job(&mut tx, job)?,
            CancelRequest::Requested(job) if job.lease.is_some() => {
                tx.execute(
                    "UPDATE jobs SET cancel_by = $2 WHERE id = $1",
                    &[&job_id.as_bytes().as_slice(), &caller],
                )
                .map_err(backend)?;
            }
            _ => {}
        }
        tx.commit().map_err(backend)?;
        Ok(answer)
    }
}

const APPEND_AUDIT: &str = "INSERT INTO audit (id, at_ns, action, actor, doc)
                            VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING";

fn append_audit_to(client: &mut impl GenericClient, entry: &AuditEntry) -> Result<(), StoreError> {
    client
        .execute(
            APPEND_AUDIT,
            &[
                &entry.id.as_bytes().as_slice(),
                &nanos(entry.at),
                &entry.action,
                &entry.actor,
                &encode(entry)?,
            ],
        )
        .map_err(backend)?;
    Ok(())
}

impl AuditRepo for Pg {
    fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        append_audit_to(&mut *self.conn()?, entry)
    }

    fn append_audit_batch(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(backend)?;
        for entry in entries {
            append_audit_to(&mut tx, entry)?;
        }
        tx.commit().map_err(backend)
    }

    fn prune_audit(
        &self,
        older_than: time::OffsetDateTime,
        max_entries: usize,
    ) -> Result<usize, StoreError> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(backend)?;
        let old = tx
            .execute("DELETE FROM audit WHERE at_ns < $1", &[&nanos(older_than)])
            .map_err(backend)?;
        let excess = tx
            .execute(
                "DELETE FROM audit WHERE id IN (SELECT id FROM audit ORDER BY id
                     LIMIT greatest((SELECT count(*) FROM audit) - $1, 0))",
                &[&limit(max_entries)],
            )
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(usize::try_from(old + excess).unwrap_or(usize::MAX))
    }

    fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = self
            .conn()?
            .query(
                "SELECT id, doc FROM audit
                 WHERE ($1::text IS NULL OR action = $1)
                   AND ($2::text IS NULL OR actor = $2)
                   AND ($3::bigint IS NULL OR at_ns >= $3)
                   AND ($4::bytea IS NULL OR id > $4)
                 ORDER BY id LIMIT $5",
                &[
                    &filter.action,
                    &filter.actor,
                    &filter.since.map(nanos),
                    &filter.after.as_ref().map(|id| id.as_bytes().as_slice()),
                    &limit(filter.limit),
                ],
            )
            .map_err(backend)?;
        decode_rows(&rows)
    }
}

impl AuthRepo for Pg {
    fn put_nonce(&self, record: &NonceRecord) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO auth_nonces (nonce, expires_at_ns, used, doc) VALUES ($1, $2, $3, $4)
             ON CONFLICT (nonce) DO UPDATE SET expires_at_ns = EXCLUDED.expires_at_ns,
                 used = EXCLUDED.used, doc = EXCLUDED.doc",
            &[
                &record.nonce,
                &nanos(record.expires_at),
                &record.used,
                &encode(record)?,
            ],
        )?;
        Ok(())
    }

    fn consume_nonce(&self, nonce: &str) -> Result<NonceUse, StoreError> {
        let mut conn = self.conn()?;
        // One guarded update: of any number of racing consumers, on any node, exactly one
        // finds the row still unused.
        if let Some(row) = conn
            .query_opt(
                "UPDATE auth_nonces SET used = true WHERE nonce = $1 AND NOT used RETURNING doc",
                &[&nonce],
            )
            .map_err(backend)?
        {
            let record: NonceRecord = decode(nonce.as_bytes(), &row, 0)?;
            return Ok(NonceUse::Consumed(NonceRecord {
                used: false,
                ..record
            }));
        }
        match conn
            .query_opt("SELECT doc FROM auth_nonces WHERE nonce = $1", &[&nonce])
            .map_err(backend)?
        {
            Some(row) => {
                let record: NonceRecord = decode(nonce.as_bytes(), &row, 0)?;
                Ok(NonceUse::AlreadyUsed(NonceRecord {
                    used: true,
                    ..record
                }))
            }
            None => Ok(NonceUse::Unknown),
        }
    }

    fn sync_nonces(&self) -> Result<(), StoreError> {
        // Every statement above committed before it returned; Postgres made it durable then.
        Ok(())
    }

    fn prune_nonces(&self, now: time::OffsetDateTime) -> Result<usize, StoreError> {
        let removed = self.execute(
            "DELETE FROM auth_nonces WHERE expires_at_ns < $1",
            &[&nanos(now)],
        )?;
        Ok(usize::try_from(removed).unwrap_or(usize::MAX))
    }

    fn put_revoked_session(
        &self,
        session_id: &str,
        expires_at: time::OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.write_and_notify(
            "INSERT INTO auth_revoked_sessions (session_id, expires_at_ns) VALUES ($1, $2)
             ON CONFLICT (session_id) DO UPDATE SET expires_at_ns = EXCLUDED.expires_at_ns",
            &[&session_id, &nanos(expires_at)],
            Notice::Revoked {
                session_id,
                expires_at_ns: nanos(expires_at),
            },
        )?;
        Ok(())
    }

    fn list_revoked_sessions(&self) -> Result<Vec<(String, time::OffsetDateTime)>, StoreError> {
        let rows = self
            .conn()?
            .query(
                "SELECT session_id, expires_at_ns FROM auth_revoked_sessions ORDER BY session_id",
                &[],
            )
            .map_err(backend)?;
        rows.iter()
            .map(|row| {
                let session_id: String = row.try_get(0).map_err(backend)?;
                let expires_at = from_nanos(&session_id, row.try_get(1).map_err(backend)?)?;
                Ok((session_id, expires_at))
            })
            .collect()
    }

    fn prune_revoked_sessions(&self, now: time::OffsetDateTime) -> Result<usize, StoreError> {
        let removed = self.execute(
            "DELETE FROM auth_revoked_sessions WHERE expires_at_ns < $1",
            &[&nanos(now)],
        )?;
        Ok(usize::try_from(removed).unwrap_or(usize::MAX))
    }

    fn get_session_secret(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let row = self
            .conn()?
            .query_opt(
                "SELECT value FROM auth_meta WHERE key = $1",
                &[&SESSION_SECRET_KEY],
            )
            .map_err(backend)?;
        row.map(|row| row.try_get(0).map_err(backend)).transpose()
    }

    fn put_session_secret(&self, secret: &[u8]) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO auth_meta (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            &[&SESSION_SECRET_KEY, &secret],
        )?;
        Ok(())
    }

    fn create_session_secret(&self, secret: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut conn = self.conn()?;
        // The first insert wins; every racer then reads the winner's secret back.
        conn.execute(
            "INSERT INTO auth_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            &[&SESSION_SECRET_KEY, &secret],
        )
        .map_err(backend)?;
        conn.query_one(
            "SELECT value FROM auth_meta WHERE key = $1",
            &[&SESSION_SECRET_KEY],
        )
        .map_err(backend)?
        .try_get(0)
        .map_err(backend)
    }

    fn get_gate(&self, media_id: &MediaId) -> Result<Option<Gate>, StoreError> {
        self.get_doc(
            "SELECT doc FROM gates WHERE media_id = $1",
            media_id.as_bytes(),
        )
    }

    fn put_gate(&self, media_id: &MediaId, gate: &Gate) -> Result<(), StoreError> {
        self.write_and_notify(
            "INSERT INTO gates (media_id, doc) VALUES ($1, $2)
             ON CONFLICT (media_id) DO UPDATE SET doc = EXCLUDED.doc",
            &[&media_id.as_bytes().as_slice(), &encode(gate)?],
            Notice::Gate(media_id),
        )?;
        Ok(())
    }

    fn delete_gate(&self, media_id: &MediaId) -> Result<bool, StoreError> {
        let removed = self.write_and_notify(
            "DELETE FROM gates WHERE media_id = $1",
            &[&media_id.as_bytes().as_slice()],
            Notice::Gate(media_id),
        )?;
        Ok(removed > 0)
    }

    fn list_gates(&self) -> Result<Vec<(MediaId, Gate)>, StoreError> {
        let rows = self
            .conn()?
            .query("SELECT media_id, doc FROM gates ORDER BY media_id", &[])
            .map_err(backend)?;
        rows.iter()
            .map(|row| {
                let key: &[u8] = row.try_get(0).map_err(backend)?;
                let media_id = MediaId::from_bytes(key).ok_or_else(|| StoreError::Corrupt {
                    key: hex::encode(key),
                    reason: "not a media id".into(),
                })?;
                Ok((media_id, decode(key, row, 1)?))
            })
            .collect()
    }
}

impl TusRepo for Pg {
    fn get_tus_upload(&self, upload_id: &UploadId) -> Result<Option<TusUpload>, StoreError> {
        self.get_doc(
            "SELECT doc FROM tus_uploads WHERE id = $1",
            upload_id.as_bytes(),
        )
    }

    fn put_tus_upload(&self, upload: &TusUpload) -> Result<(), StoreError> {
        self.write_and_notify(
            "INSERT INTO tus_uploads (id, doc) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET doc = EXCLUDED.doc",
            &[&upload.id.as_bytes().as_slice(), &encode(upload)?],
            Notice::TusUpload(&upload.id),
        )?;
        Ok(())
    }

    fn delete_tus_upload(&self, upload_id: &UploadId) -> Result<bool, StoreError> {
        let removed = self.write_and_notify(
            "DELETE FROM tus_uploads WHERE id = $1",
            &[&upload_id.as_bytes().as_slice()],
            Notice::TusUpload(upload_id),
        )?;
        Ok(removed > 0)
    }

    fn list_tus_uploads(
        &self,
        after: Option<&UploadId>,
        limit: usize,
    ) -> Result<Vec<TusUpload>, StoreError> {
        let after = after.map(|id| id.as_bytes().as_slice());
        let rows = self
            .conn()?
            .query(
                "SELECT id, doc FROM tus_uploads WHERE ($1::bytea IS NULL OR id > $1)
                 ORDER BY id LIMIT $2",
                &[&after, &self::limit(limit)],
            )
            .map_err(backend)?;
        decode_rows(&rows)
    }
}

/// Takes `amount` off `owner`'s counter (never below zero), dropping a counter that reaches zero.
fn release(client: &mut impl GenericClient, owner: &str, amount: u64) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE quota_usage SET bytes = greatest(bytes - $2, 0) WHERE owner = $1",
            &[&owner, &bytes(amount)],
        )
        .map_err(backend)?;
    client
        .execute(
            "DELETE FROM quota_usage WHERE owner = $1 AND bytes = 0",
            &[&owner],
        )
        .map_err(backend)?;
    Ok(())
}

fn counter(row: Option<Row>) -> Result<u64, StoreError> {
    let Some(row) = row else { return Ok(0) };
    let used: i64 = row.try_get(0).map_err(backend)?;
    Ok(u64::try_from(used).unwrap_or(0))
}

impl QuotaRepo for Pg {
    fn reserve_quota(
        &self,
        owner: &str,
        min: u64,
        max: u64,
        quota: u64,
    ) -> Result<Option<u64>, StoreError> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(backend)?;
        // The row lock makes racing reservations (on any node) wait and then see this one.
        tx.execute(
            "INSERT INTO quota_usage (owner, bytes) VALUES ($1, 0) ON CONFLICT (owner) DO NOTHING",
            &[&owner],
        )
        .map_err(backend)?;
        let used = counter(
            tx.query_opt(
                "SELECT bytes FROM quota_usage WHERE owner = $1 FOR UPDATE",
                &[&owner],
            )
            .map_err(backend)?,
        )?;
        let room = quota.saturating_sub(used);
        if room < min {
            return Ok(None);
        }
        let granted = max.max(min).min(room);
        if granted > 0 {
            tx.execute(
                "UPDATE quota_usage SET bytes = $2 WHERE owner = $1",
                &[&owner, &bytes(used + granted)],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)?;
        }
        Ok(Some(granted))
    }

    fn release_quota(&self, owner: &str, amount: u64) -> Result<(), StoreError> {
        if amount == 0 {
            return Ok(());
        }
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(backend)?;
        release(&mut tx, owner, amount)?;
        tx.commit().map_err(backend)
    }

    fn quota_used(&self, owner: &str) -> Result<u64, StoreError> {
        counter(
            self.conn()?
                .query_opt("SELECT bytes FROM quota_usage WHERE owner = $1", &[&owner])
                .map_err(backend)?,
        )
    }

    fn reset_quota_usage(&self, usage: &BTreeMap<String, u64>) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(backend)?;
        tx.execute("DELETE FROM quota_usage", &[])
            .map_err(backend)?;
        for (owner, used) in usage.iter().filter(|(_, used)| **used > 0) {
            tx.execute(
                "INSERT INTO quota_usage (owner, bytes) VALUES ($1, $2)",
                &[owner, &bytes(*used)],
            )
            .map_err(backend)?;
        }
        tx.commit().map_err(backend)
    }
}

/// Forwards each trait method to [`Pg`] through [`PostgresStore::run`].
macro_rules! forward {
    ($trait:ident { $(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)* }) => {
        impl $trait for PostgresStore {
            $(fn $name(&self, $($arg: $ty),*) -> Result<$ret, StoreError> {
                self.run(|pg| pg.$name($($arg),*))
            })*
        }
    };
}

forward!(MediaRepo {
    fn get_media(media_id: &MediaId) -> Option<Media>;
    fn put_media(media: &Media) -> ();
    fn put_media_with_gate(media: &Media, gate: Option<&Gate>) -> ();
    fn delete_media(media_id: &MediaId) -> bool;
    fn list_media(after: Option<&MediaId>, limit: usize) -> Vec<Media>;
    fn recent_media(limit: usize, keep: &(dyn Fn(&Media) -> bool + Sync)) -> Vec<Media>;
});

forward!(JobRepo {
    fn get_job(job_id: &JobId) -> Option<Job>;
    fn put_job(job: &Job) -> ();
    fn delete_job(job_id: &JobId) -> bool;
    fn count_jobs(state: JobState) -> u64;
    fn list_jobs(filter: &JobFilter) -> Vec<Job>;
    fn claim_job(node: &str, now: time::OffsetDateTime, until: time::OffsetDateTime) -> Option<Job>;
    fn renew_leases(node: &str, jobs: &[JobId], until: time::OffsetDateTime) -> Vec<(JobId, Option<String>)>;
    fn finish_leased(node: &str, job: &Job) -> bool;
    fn request_cancel(job_id: &JobId, caller: &str, now: time::OffsetDateTime) -> CancelRequest;
});

forward!(AuditRepo {
    fn append_audit(entry: &AuditEntry) -> ();
    fn append_audit_batch(entries: &[AuditEntry]) -> ();
    fn prune_audit(older_than: time::OffsetDateTime, max_entries: usize) -> usize;
    fn list_audit(filter: &AuditFilter) -> Vec<AuditEntry>;
});

forward!(AuthRepo {
    fn put_nonce(record: &NonceRecord) -> ();
    fn consume_nonce(nonce: &str) -> NonceUse;
    fn sync_nonces() -> ();
    fn prune_nonces(now: time::OffsetDateTime) -> usize;
    fn put_revoked_session(session_id: &str, expires_at: time::OffsetDateTime) -> ();
    fn list_revoked_sessions() -> Vec<(String, time::OffsetDateTime)>;
    fn prune_revoked_sessions(now: time::OffsetDateTime) -> usize;
    fn get_session_secret() -> Option<Vec<u8>>;
    fn put_session_secret(secret: &[u8]) -> ();
    fn create_session_secret(secret: &[u8]) -> Vec<u8>;
    fn put_gate(media_id: &MediaId, gate: &Gate) -> ();
    fn delete_gate(media_id: &MediaId) -> bool;
    fn get_gate(media_id: &MediaId) -> Option<Gate>;
    fn list_gates() -> Vec<(MediaId, Gate)>;
});

forward!(WebhookRepo {
    fn put_deliveries(deliveries: &[WebhookDelivery]) -> ();
    fn delete_delivery(id: &uuid::Uuid) -> ();
    fn list_deliveries(limit: usize) -> Vec<WebhookDelivery>;
});

forward!(TusRepo {
    fn get_tus_upload(upload_id: &UploadId) -> Option<TusUpload>;
    fn put_tus_upload(upload: &TusUpload) -> ();
    fn delete_tus_upload(upload_id: &UploadId) -> bool;
    fn list_tus_uploads(after: Option<&UploadId>, limit: usize) -> Vec<TusUpload>;
});

forward!(QuotaRepo {
    fn reserve_quota(owner: &str, min: u64, max: u64, quota: u64) -> Option<u64>;
    fn release_quota(owner: &str, amount: u64) -> ();
    fn quota_used(owner: &str) -> u64;
    fn reset_quota_usage(usage: &BTreeMap<String, u64>) -> ();
});

impl Repo for PostgresStore {
    fn check(&self) -> Result<(), StoreError> {
        self.run(|pg| {
            pg.conn()?.simple_query("SELECT 1").map_err(backend)?;
            Ok(())
        })
    }

    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    fn follow_changes(&self, sink: ChangeSink) -> Result<(), StoreError> {
        let pg = self
            .inner
            .as_ref()
            .ok_or_else(|| StoreError::Backend("the store is closed".into()))?;
        let (config, node) = (pg.config.clone(), pg.node.clone());
        let closed = self.closed.clone();
        // Connecting blocks on the client's runtime: off the async threads, as every call.
        self.run(move |_| super::listen::start(config, node, sink, closed))
    }

    fn pool_state(&self) -> Option<PoolState> {
        let pg = self.inner.as_ref()?;
        let state = pg.pool.state();
        Some(PoolState {
            connections: state.connections,
            idle: state.idle_connections,
            max: pg.pool.max_size(),
        })
    }

    fn time_queries(&self, histogram: prometheus::Histogram) {
        let _ = self.query_timer.set(histogram);
    }

    fn copy_to(
        &self,
        _out: &std::path::Path,
        _progress: &mut dyn FnMut(u64),
    ) -> Result<u64, StoreError> {
        // Postgres has its own consistent snapshots; a second copy tool would only be worse.
        Err(StoreError::Backend(
            "records on postgres are backed up with pg_dump; `backup` copies the blobs only \
             with storage.records = \"sled\""
                .into(),
        ))
    }

    fn record_count(&self) -> u64 {
        0
    }
}
