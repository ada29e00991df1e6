//! `streamgate migrate --to postgres`: copies a single-node (sled) install's records, webhook
//! deliveries included, into Postgres (the binary then copies the blobs, see `src/ops.rs`). Every write is an upsert of the same record, so a re-run copies the same state
//! again; it refuses while a server holds the sled store.

use std::{path::Path, time::Duration};

use super::{
    sled_in_use, AuditFilter, AuditRepo, AuthRepo, JobFilter, JobRepo, MediaRepo, PostgresStore,
    QuotaRepo, SledStore, StoreError, TusRepo, WebhookRepo,
};

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("a running server holds {0}; stop it before migrating")]
    InUse(String),
    #[error("no sled record store at {0}")]
    NoSource(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How many records of one relation were copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub relation: &'static str,
    pub records: usize,
}

/// Records per read from sled and per progress report.
const PAGE: usize = 500;

/// Copies every record under `data_dir/db` into the database at `url`, creating its schema.
/// `progress` hears each relation's running count.
pub fn copy_sled_to_postgres(
    data_dir: &Path,
    url: &str,
    progress: &mut dyn FnMut(&'static str, usize),
) -> Result<Vec<Copied>, MigrateError> {
    let source = data_dir.join("db");
    if !source.join("db").exists() {
        return Err(MigrateError::NoSource(source.display().to_string()));
    }
    if sled_in_use(&source) {
        return Err(MigrateError::InUse(data_dir.display().to_string()));
    }
    let sled = SledStore::open(&source)?;
    let pg = PostgresStore::connect(url, 2, Duration::from_secs(10))?;
    let mut report = Vec::new();
    let mut count = |relation: &'static str, records: usize| {
        progress(relation, records);
        records
    };

    let (mut copied, mut after) = (0, None);
    loop {
        let page = sled.list_media(after.as_ref(), PAGE)?;
        for media in &page {
            pg.put_media(media)?;
        }
        copied = count("media", copied + page.len());
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some(last.id.clone()),
            _ => break,
        }
    }
    report.push(Copied {
        relation: "media",
        records: copied,
    });

    let (mut copied, mut after) = (0, None);
    loop {
        let page = sled.list_jobs(&JobFilter {
            after: after.clone(),
            limit: PAGE,
            ..JobFilter::default()
        })?;
        for job in &page {
            pg.put_job(job)?;
        }
        copied = count("jobs", copied + page.len());
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some(last.id.clone()),
            _ => break,
        }
    }
    report.push(Copied {
        relation: "jobs",
        records: copied,
    });

    let (mut copied, mut after) = (0, None);
    loop {
        let page = sled.list_audit(&AuditFilter {
            after: after.clone(),
            limit: PAGE,
            ..AuditFilter::default()
        })?;
        pg.append_audit_batch(&page)?;
        copied = count("audit", copied + page.len());
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some(last.id.clone()),
            _ => break,
        }
    }
    report.push(Copied {
        relation: "audit",
        records: copied,
    });

    let (mut copied, mut after) = (0, None);
    loop {
        let page = sled.list_tus_uploads(after.as_ref(), PAGE)?;
        for upload in &page {
            pg.put_tus_upload(upload)?;
        }
        copied = count("tus_uploads", copied + page.len());
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some(last.id.clone()),
            _ => break,
        }
    }
    report.push(Copied {
        relation: "tus_uploads",
        records: copied,
    });

    let gates = sled.list_gates()?;
    for (media_id, gate) in &gates {
        pg.put_gate(media_id, gate)?;
    }
    report.push(Copied {
        relation: "gates",
        records: count("gates", gates.len()),
    });

    let nonces = sled.all_nonces()?;
    for nonce in &nonces {
        pg.put_nonce(nonce)?;
    }
    report.push(Copied {
        relation: "auth_nonces",
        records: count("auth_nonces", nonces.len()),
    });

    let revoked = sled.list_revoked_sessions()?;
    for (session_id, expires_at) in &revoked {
        pg.put_revoked_session(session_id, *expires_at)?;
    }
    report.push(Copied {
        relation: "auth_revoked_sessions",
        records: count("auth_revoked_sessions", revoked.len()),
    });

    let secret = sled.get_session_secret()?;
    if let Some(secret) = &secret {
        pg.put_session_secret(secret)?;
    }
    report.push(Copied {
        relation: "session_secret",
        records: count("session_secret", usize::from(secret.is_some())),
    });

    // The pending queue is small (delivered ones are deleted); upserts by id make a re-run safe.
    let deliveries = sled.list_deliveries(usize::MAX)?;
    pg.put_deliveries(&deliveries)?;
    report.push(Copied {
        relation: "webhook_deliveries",
        records: count("webhook_deliveries", deliveries.len()),
    });

    let counters = sled.all_quota_counters()?;
    pg.reset_quota_usage(&counters)?;
    report.push(Copied {
        relation: "quota_usage",
        records: count("quota_usage", counters.len()),
    });
    Ok(report)
}
