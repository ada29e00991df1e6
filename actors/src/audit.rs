//! The audit log: an append-only record of who did what, kept in the store.
//!
//! Not an actor: appends are independent and ordered by their time-based ids, so any domain
//! records through a cheap [`AuditLog`] handle. Reading goes through the MonitorActor.
//!
//! Two ways in. [`AuditLog::record`] appends durably (flushed) and is awaited: for what a
//! client is told succeeded. [`AuditLog::record_refusal`] is for events a hostile client can
//! produce at will (bogus logins, failed ownership checks, refused tokens and playback, and
//! challenges, which are not refusals but as cheap to ask for): it never waits and never does
//! I/O on the caller's thread. At most one entry per action and client is written per
//! `audit.refusal_interval_s`; the rest are counted (`streamgate_audit_refusals_total`) and the
//! count goes into the next entry for that client (or a summary entry when the interval ends).
//! Entries to write go through a bounded queue to one writer thread, which appends them in
//! batches (one flush each) and also runs retention.
//!
//! Invariant: an entry is never changed; it is removed only by retention (older than
//! `audit.retention_days`, or the oldest beyond `audit.max_entries`).

use std::{
    collections::HashMap,
    sync::{
        mpsc::{self, RecvTimeoutError, SyncSender, TrySendError},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use prometheus::{IntCounter, IntCounterVec, Opts};
use time::OffsetDateTime;

use crate::{
    config::AuditConfig,
    model::{AuditEntry, AuditId},
    monitor::Metrics,
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
    /// A SIWE challenge was issued; actor is the socket peer, target the address.
    pub const AUTH_CHALLENGE: &str = "auth.challenge";
    /// Security events: a presented admin token or session token was refused.
    pub const ADMIN_TOKEN_REFUSED: &str = "security.admin_token_refused";
    pub const SESSION_REFUSED: &str = "security.session_refused";
    /// A gated playlist, segment or thumbnail was refused; target is the media.
    pub const PLAYBACK_REFUSED: &str = "playback.refused";
    /// A job reached a final state (succeeded, failed, cancelled); target is the job.
    pub const JOB_OUTCOME: &str = "job.outcome";
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
    /// One entry per batch; the detail lists each operation and key.
    pub const CACHE_BATCH: &str = "cache.batch";
    /// An admin warm-up of the metadata and playlist caches.
    pub const CACHE_WARM: &str = "cache.warm";
}

/// Outcome values.
pub mod outcome {
    pub const OK: &str = "ok";
    pub const DENIED: &str = "denied";
    pub const FAILED: &str = "failed";
    pub const CANCELLED: &str = "cancelled";
}

/// The actions that go through [`AuditLog::record_refusal`] (their metric series start at 0).
const SAMPLED_ACTIONS: [&str; 6] = [
    action::AUTH_LOGIN,
    action::NFT_CHECK,
    action::AUTH_CHALLENGE,
    action::ADMIN_TOKEN_REFUSED,
    action::SESSION_REFUSED,
    action::PLAYBACK_REFUSED,
];
/// Refusal entries waiting for the writer; beyond this they are dropped (and counted).
const QUEUE_ENTRIES: usize = 4096;
/// Entries appended with one flush.
const BATCH_ENTRIES: usize = 512;
/// Clients with an open sampling window; a new one beyond this is written without a window
/// (the bounded queue still caps the writes).
const MAX_WINDOWS: usize = 100_000;

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

    fn into_entry(self) -> AuditEntry {
        AuditEntry {
            id: AuditId::new(),
            at: OffsetDateTime::now_utc(),
            action: self.action.to_string(),
            actor: self.actor,
            target: self.target,
            outcome: self.outcome.to_string(),
            detail: self.detail,
        }
    }
}

#[derive(Clone)]
pub struct AuditLog {
    repo: SharedRepo,
    refusals: Arc<Refusals>,
}

/// The sampling windows and the writer's queue.
struct Refusals {
    windows: Mutex<HashMap<(&'static str, String), Window>>,
    queue: SyncSender<AuditEntry>,
    interval: Duration,
    counts: Option<IntCounterVec>,
}

/// One client's current interval for one action.
struct Window {
    started: Instant,
    suppressed: u64,
    /// The outcome the interval's summary entry carries (a challenge is not a refusal).
    outcome: &'static str,
}

impl AuditLog {
    /// The defaults of `config/default.toml`, with metrics nobody scrapes (tests).
    pub fn new(repo: SharedRepo) -> Self {
        let config = AuditConfig {
            retention_days: 90,
            max_entries: 1_000_000,
            prune_interval_s: 600,
            refusal_interval_s: 60,
        };
        let counts = IntCounterVec::new(Opts::new("detached", "-"), &["action", "result"]).ok();
        Self::start(repo, &config, counts, None)
    }

    /// Starts the writer thread (retention included) with the app's metrics.
    pub fn with_metrics(repo: SharedRepo, config: &AuditConfig, metrics: &Metrics) -> Self {
        Self::start(
            repo,
            config,
            Some(metrics.audit_refusals.clone()),
            Some(metrics.audit_pruned.clone()),
        )
    }

    fn start(
        repo: SharedRepo,
        config: &AuditConfig,
        counts: Option<IntCounterVec>,
        pruned: Option<IntCounter>,
    ) -> Self {
        if let Some(counts) = &counts {
            for action in SAMPLED_ACTIONS {
                for result in ["written", "suppressed", "dropped"] {
                    counts.with_label_values(&[action, result]).inc_by(0);
                }
            }
        }
        let (queue, entries) = mpsc::sync_channel(QUEUE_ENTRIES);
        let refusals = Arc::new(Refusals {
            windows: Mutex::new(HashMap::new()),
            queue,
            interval: Duration::from_secs(config.refusal_interval_s.max(1)),
            counts,
        });
        let writer = Writer {
            repo: repo.clone(),
            refusals: Arc::downgrade(&refusals),
            retention: Duration::from_secs(config.retention_days.saturating_mul(86_400)),
            max_entries: usize::try_from(config.max_entries).unwrap_or(usize::MAX),
            prune_every: Duration::from_secs(config.prune_interval_s.max(1)),
            pruned,
        };
        let spawned = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(entries));
        if let Err(error) = spawned {
            tracing::error!(%error, "could not start the audit writer; refusals go unrecorded");
        }
        Self { repo, refusals }
    }

    /// Appends `event` durably; failures are logged, never turned into the caller's failure.
    pub async fn record(&self, event: AuditEvent) {
        let action = event.action;
        let entry = event.into_entry();
        if let Err(error) = blocking(&self.repo, move |repo| repo.append_audit(&entry)).await {
            tracing::error!(%error, action, "could not append to the audit log");
        }
    }

    /// Records a refusal a client can repeat at will (or another event it can cause at will,
    /// such as a challenge), sampled per (action, `client`) and written in the background:
    /// returns at once, without I/O.
    pub fn record_refusal(&self, event: AuditEvent, client: &str) {
        let refusals = &self.refusals;
        let action = event.action;
        let now = Instant::now();
        let admitted = match refusals.windows.lock() {
            // A poisoned map only costs the sampling: write (the queue still bounds it).
            Err(_) => Some(0),
            Ok(mut windows) => match windows.get_mut(&(action, client.to_string())) {
                Some(window) if now.duration_since(window.started) < refusals.interval => {
                    window.suppressed += 1;
                    None
                }
                Some(window) => {
                    let before = window.suppressed;
                    *window = Window {
                        started: now,
                        suppressed: 0,
                        outcome: event.outcome,
                    };
                    Some(before)
                }
                None => {
                    if windows.len() < MAX_WINDOWS {
                        windows.insert(
                            (action, client.to_string()),
                            Window {
                                started: now,
                                suppressed: 0,
                                outcome: event.outcome,
                            },
                        );
                    }
                    Some(0)
                }
            },
        };
        let Some(suppressed_before) = admitted else {
            refusals.count(action, "suppressed");
            return;
        };
        let mut event = event;
        if suppressed_before > 0 {
            let note = format!("{suppressed_before} more suppressed in the interval before");
            event.detail = Some(match event.detail {
                Some(detail) => format!("{detail}; {note}"),
                None => note,
            });
        }
        refusals.enqueue(event.into_entry());
    }

    pub async fn list(&self, filter: AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        blocking(&self.repo, move |repo| repo.list_audit(&filter)).await
    }
}

impl Refusals {
    fn count(&self, action: &str, result: &str) {
        if let Some(counts) = &self.counts {
            counts.with_label_values(&[action, result]).inc();
        }
    }

    fn enqueue(&self, entry: AuditEntry) {
        let action = entry.action.clone();
        match self.queue.try_send(entry) {
            Ok(()) => self.count(&action, "written"),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.count(&action, "dropped")
            }
        }
    }

    /// Ends the windows whose interval is over; those that suppressed something leave a
    /// summary entry (returned), so no refusal goes unmentioned in the log.
    fn expire(&self, now: Instant) -> Vec<AuditEntry> {
        let Ok(mut windows) = self.windows.lock() else {
            return Vec::new();
        };
        let mut summaries = Vec::new();
        windows.retain(|(action, client), window| {
            if now.duration_since(window.started) < self.interval {
                return true;
            }
            if window.suppressed > 0 {
                summaries.push(
                    AuditEvent::ok(action, client.clone(), None)
                        .with_outcome(
                            window.outcome,
                            format!(
                                "{} more suppressed in the interval before",
                                window.suppressed
                            ),
                        )
                        .into_entry(),
                );
            }
            false
        });
        summaries
    }
}

/// The writer thread: appends queued entries in batches and runs retention on its timer.
struct Writer {
    repo: SharedRepo,
    /// Weak: the thread ends once every [`AuditLog`] is gone (and the queue is drained).
    refusals: std::sync::Weak<Refusals>,
    retention: Duration,
    max_entries: usize,
    prune_every: Duration,
    pruned: Option<IntCounter>,
}

impl Writer {
    fn run(self, entries: mpsc::Receiver<AuditEntry>) {
        let tick = Duration::from_secs(1);
        let mut next_prune = Instant::now();
        loop {
            let mut batch = Vec::new();
            match entries.recv_timeout(tick) {
                Ok(entry) => batch.push(entry),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while batch.len() < BATCH_ENTRIES {
                match entries.try_recv() {
                    Ok(entry) => batch.push(entry),
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            if let Some(refusals) = self.refusals.upgrade() {
                batch.extend(refusals.expire(now));
            }
            if !batch.is_empty() {
                if let Err(error) = self.repo.append_audit_batch(&batch) {
                    tracing::error!(%error, entries = batch.len(), "could not append to the audit log");
                }
            }
            if now >= next_prune {
                next_prune = now + self.prune_every;
                self.prune();
            }
        }
    }

    fn prune(&self) {
        let older_than = OffsetDateTime::now_utc() - self.retention;
        match self.repo.prune_audit(older_than, self.max_entries) {
            Ok(0) => {}
            Ok(removed) => {
                if let Some(pruned) = &self.pruned {
                    pruned.inc_by(removed as u64);
                }
                tracing::info!(removed, "audit retention pruned old entries");
            }
            Err(error) => tracing::warn!(%error, "audit retention failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AuditRepo, SledStore};

    fn entry(age: time::Duration) -> AuditEntry {
        let mut entry = AuditEvent::ok(action::AUTH_LOGIN, "ip:127.0.0.1", None).into_entry();
        entry.at = OffsetDateTime::now_utc() - age;
        entry
    }

    #[test]
    fn retention_drops_old_entries_then_the_oldest_beyond_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let old: Vec<AuditEntry> = (0..3).map(|_| entry(time::Duration::days(10))).collect();
        let fresh: Vec<AuditEntry> = (0..5).map(|_| entry(time::Duration::ZERO)).collect();
        store.append_audit_batch(&old).unwrap();
        store.append_audit_batch(&fresh).unwrap();
        let week_ago = OffsetDateTime::now_utc() - time::Duration::days(7);
        assert_eq!(store.prune_audit(week_ago, 100).unwrap(), 3);
        let all = || {
            store
                .list_audit(&AuditFilter {
                    limit: 100,
                    ..AuditFilter::default()
                })
                .unwrap()
        };
        let ids: Vec<AuditId> = all().into_iter().map(|e| e.id).collect();
        assert_eq!(ids, fresh.iter().map(|e| e.id.clone()).collect::<Vec<_>>());
        assert_eq!(
            store.prune_audit(week_ago, 2).unwrap(),
            3,
            "the oldest 3 of 5"
        );
        let ids: Vec<AuditId> = all().into_iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![fresh[3].id.clone(), fresh[4].id.clone()]);
        assert_eq!(store.prune_audit(week_ago, 2).unwrap(), 0);
    }

    #[test]
    fn refusals_are_sampled_per_client_and_written_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let repo: SharedRepo = Arc::new(SledStore::open(dir.path()).unwrap());
        let counts =
            IntCounterVec::new(Opts::new("t_refusals", "t"), &["action", "result"]).unwrap();
        let pruned = IntCounter::new("t_pruned", "t").unwrap();
        let config = AuditConfig {
            retention_days: 1,
            max_entries: 1000,
            prune_interval_s: 3600,
            refusal_interval_s: 3600,
        };
        let audit = AuditLog::start(repo.clone(), &config, Some(counts.clone()), Some(pruned));
        let refused = |client: &str| {
            audit.record_refusal(
                AuditEvent::ok(action::AUTH_LOGIN, client, None)
                    .with_outcome(outcome::DENIED, "signature_mismatch"),
                client,
            )
        };
        for _ in 0..100 {
            refused("ip:10.0.0.1");
        }
        refused("ip:10.0.0.2");
        let count = |result: &str| {
            counts
                .with_label_values(&[action::AUTH_LOGIN, result])
                .get()
        };
        assert_eq!((count("written"), count("suppressed")), (2, 99));
        // Written by the writer thread: poll the store.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = repo
                .list_audit(&AuditFilter {
                    limit: 100,
                    ..AuditFilter::default()
                })
                .unwrap();
            if found.len() == 2 {
                let mut actors: Vec<&str> = found.iter().map(|e| e.actor.as_str()).collect();
                actors.sort_unstable();
                assert_eq!(actors, ["ip:10.0.0.1", "ip:10.0.0.2"]);
                assert!(found.iter().all(|e| e.outcome == outcome::DENIED));
                break;
            }
            assert!(found.len() < 2, "{found:?}");
            assert!(Instant::now() < deadline, "refusals never written");
            std::thread::yield_now();
        }
        // An ended window leaves a summary with what it suppressed.
        let summaries = audit
            .refusals
            .expire(Instant::now() + Duration::from_secs(3601));
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].actor, "ip:10.0.0.1");
        assert_eq!(
            summaries[0].detail.as_deref(),
            Some("99 more suppressed in the interval before")
        );
    }
}
