//! The audit log: an append-only record of who did what, kept in the store.
//!
//! Not an actor: appends are independent and ordered by their time-based ids, so any domain
//! records through a cheap [`AuditLog`] handle. Reading goes through the MonitorActor.
//!
//! Invariant: an entry, once appended and acknowledged, is never changed or removed.

use time::OffsetDateTime;

use crate::{
    model::{AuditEntry, AuditId},
    store::{blocking, AuditFilter, SharedRepo, StoreError},
};

/// Stable action names, so the audit API can be filtered reliably.
pub mod action {
    pub const UPLOAD_CREATE: &str = "upload.create";
    pub const UPLOAD_FINISH: &str = "upload.finish";
    pub const UPLOAD_TERMINATE: &str = "upload.terminate";
    pub const UPLOAD_REJECT: &str = "upload.reject";
    pub const MEDIA_UPDATE: &str = "media.update";
    pub const MEDIA_DELETE: &str = "media.delete";
    pub const JOB_SUBMIT: &str = "job.submit";
    pub const JOB_CANCEL: &str = "job.cancel";
    pub const AUTH_LOGIN: &str = "auth.login";
    pub const AUTH_REFRESH: &str = "auth.refresh";
    pub const AUTH_LOGOUT: &str = "auth.logout";
    pub const NFT_CHECK: &str = "auth.nft_check";
    pub const MEDIA_GATE: &str = "media.gate";
    /// A client went over a rate limit; target is the service.
    pub const RATE_LIMIT_EXCEEDED: &str = "rate_limit.exceeded";
    /// Admin cache operations (`/api/v1/cache`); target is the key.
    pub const CACHE_PUT: &str = "cache.put";
    pub const CACHE_DELETE: &str = "cache.delete";
    pub const CACHE_CLEAR: &str = "cache.clear";
}

/// Outcome values.
pub mod outcome {
    pub const OK: &str = "ok";
    pub const DENIED: &str = "denied";
    pub const FAILED: &str = "failed";
}

/// What to record; [`AuditLog::record`] adds the id and time.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub action: &'static str,
    pub actor: String,
    pub target: Option<String>,
    pub outcome: &'static str,
    pub detail: Option<String>,
}

impl AuditEvent {
    pub fn ok(action: &'static str, actor: impl Into<String>, target: Option<String>) -> Self {
        Self {
            action,
            actor: actor.into(),
            target,
            outcome: outcome::OK,
            detail: None,
        }
    }

    pub fn with_outcome(mut self, outcome: &'static str, detail: impl Into<String>) -> Self {
        self.outcome = outcome;
        self.detail = Some(detail.into());
        self
    }
}

#[derive(Clone)]
pub struct AuditLog {
    repo: SharedRepo,
}

impl AuditLog {
    pub fn new(repo: SharedRepo) -> Self {
        Self { repo }
    }

    /// Appends `event` durably; failures are logged, never turned into the caller's failure.
    pub async fn record(&self, event: AuditEvent) {
        let entry = AuditEntry {
            id: AuditId::new(),
            at: OffsetDateTime::now_utc(),
            action: event.action.to_string(),
            actor: event.actor,
            target: event.target,
            outcome: event.outcome.to_string(),
            detail: event.detail,
        };
        if let Err(error) = blocking(&self.repo, move |repo| repo.append_audit(&entry)).await {
            tracing::error!(%error, action = event.action, "could not append to the audit log");
        }
    }

    pub async fn list(&self, filter: AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        blocking(&self.repo, move |repo| repo.list_audit(&filter)).await
    }
}
