//! Playback grants: the AuthActor's decisions "this session may play this gated media, with
//! this playback token", kept so a gated playlist GET is answered in `web` without a message.
//!
//! Keyed by (SHA-256 of the bearer session token, media id): the table never holds a usable
//! session token. A grant is filled by the AuthActor (`AuthorizeSessionPlayback`) and lives
//! until the earliest of: the session's expiry, the expiry of the cached ownership answer the
//! decision used, and a reuse window of the playback token (at most half its lifetime, so a
//! token handed out from here still has half its life left). Bounded by an LRU capacity and
//! swept on the AuthActor's prune timer.
//!
//! Invariant: a grant is only a memo of a decision the AuthActor made; `web` reads it only after
//! its own gate-table check (nothing gated is reachable without the check that gates it), and a
//! miss goes to the actor, which decides afresh.
//! Invariant: a session revocation (logout, refresh) and a gate change (set, changed or cleared)
//! purge the affected grants before they are acknowledged, and every purge bumps an epoch that
//! a fill read before deciding: a decision that raced a purge is never stored.
//! Invariant: a grant never outlives the ownership answer it was decided with (nor the session).
//! Invariant: fails closed: a poisoned lock reads as a miss, stores nothing, and a purge on a
//! poisoned lock empties the whole table.

use std::{
    num::NonZeroUsize,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Instant,
};

use lru::LruCache;
use sha2::{Digest, Sha256};

use crate::{
    cache::{CacheMetrics, CacheStats},
    clock::SharedClock,
    model::MediaId,
};

/// SHA-256 of a bearer session token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionDigest([u8; 32]);

impl SessionDigest {
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }
}

/// One remembered decision.
#[derive(Debug, Clone)]
struct Grant {
    token: Arc<str>,
    /// The session it was decided for, so a revocation finds it.
    session_id: String,
    valid_until: Instant,
}

struct Table {
    lru: LruCache<(SessionDigest, MediaId), Grant>,
    epoch: u64,
}

/// What the AuthActor stores after a decision.
#[derive(Debug, Clone)]
pub struct GrantFill {
    pub session: SessionDigest,
    pub media_id: MediaId,
    pub session_id: String,
    pub token: Arc<str>,
    pub valid_until: Instant,
}

/// Cheap to clone; clones share the table. `web` reads, the AuthActor fills and purges.
#[derive(Clone)]
pub struct PlaybackGrants {
    table: Arc<Mutex<Table>>,
    metrics: CacheMetrics,
    clock: SharedClock,
}

impl PlaybackGrants {
    /// `capacity` 0 is treated as 1 (config validation refuses 0).
    pub fn new(capacity: usize, metrics: CacheMetrics, clock: SharedClock) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        metrics.entries.set(0);
        Self {
            table: Arc::new(Mutex::new(Table {
                lru: LruCache::new(capacity),
                epoch: 0,
            })),
            metrics,
            clock,
        }
    }

    /// The clock grants (and the playback tokens checked beside them) expire by.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// The playback token granted to `session` for `media_id`, while the grant is valid.
    /// A poisoned table is a miss: the AuthActor decides.
    pub fn get(&self, session: &SessionDigest, media_id: &MediaId) -> Option<Arc<str>> {
        let found = self.table.lock().ok().and_then(|mut table| {
            let key = (*session, media_id.clone());
            match table.lru.get(&key) {
                Some(grant) if grant.valid_until > self.clock.instant() => {
                    Some(grant.token.clone())
                }
                Some(_) => {
                    table.lru.pop(&key);
                    self.metrics.evictions.inc();
                    self.metrics.entries.set(table.lru.len() as i64);
                    None
                }
                None => None,
            }
        });
        match found {
            Some(_) => self.metrics.hits.inc(),
            None => self.metrics.misses.inc(),
        }
        found
    }

    /// Read before a decision starts; [`Self::insert_if_unchanged`] stores the decision only if
    /// no purge happened since. `None` (poisoned table): store nothing.
    pub(crate) fn epoch(&self) -> Option<u64> {
        self.table.lock().ok().map(|table| table.epoch)
    }

    /// Stores a decision made since `epoch` was read, unless a purge happened meanwhile or the
    /// grant is already over. Returns whether it was stored.
    pub(crate) fn insert_if_unchanged(&self, fill: GrantFill, epoch: u64) -> bool {
        let Ok(mut table) = self.table.lock() else {
            return false;
        };
        if table.epoch != epoch || fill.valid_until <= self.clock.instant() {
            return false;
        }
        let key = (fill.session, fill.media_id);
        let replacing = table.lru.contains(&key);
        let grant = Grant {
            token: fill.token,
            session_id: fill.session_id,
            valid_until: fill.valid_until,
        };
        if table.lru.push(key, grant).is_some() && !replacing {
            self.metrics.evictions.inc();
        }
        self.metrics.entries.set(table.lru.len() as i64);
        true
    }

    /// Drops every grant of session `session_id` (logout, refresh); returns how many.
    pub(crate) fn purge_session(&self, session_id: &str) -> usize {
        self.purge(|grant, _| grant.session_id == session_id)
    }

    /// Drops every grant for `media_id` (its gate changed); returns how many.
    pub(crate) fn purge_media(&self, media_id: &MediaId) -> usize {
        self.purge(|_, media| media == media_id)
    }

    /// Drops grants past their validity (the prune timer); returns how many.
    pub fn purge_expired(&self) -> usize {
        let now = self.clock.instant();
        self.purge(|grant, _| grant.valid_until <= now)
    }

    fn purge(&self, matches: impl Fn(&Grant, &MediaId) -> bool) -> usize {
        let mut table = match self.table.lock() {
            Ok(table) => table,
            Err(poisoned) => return self.empty_poisoned(poisoned),
        };
        table.epoch += 1;
        let before = table.lru.len();
        table.lru.retain(|(_, media), grant| !matches(grant, media));
        let purged = before - table.lru.len();
        self.metrics.evictions.inc_by(purged as u64);
        self.metrics.entries.set(table.lru.len() as i64);
        purged
    }

    /// A panic interrupted a holder of the lock: what the table holds is not trusted, so it is
    /// emptied (every later request is decided by the AuthActor again).
    fn empty_poisoned(&self, poisoned: PoisonError<MutexGuard<'_, Table>>) -> usize {
        let mut table = poisoned.into_inner();
        table.epoch += 1;
        let purged = table.lru.len();
        table.lru.clear();
        self.metrics.entries.set(0);
        drop(table);
        self.table.clear_poison();
        purged
    }

    pub fn stats(&self) -> Option<CacheStats> {
        let table = self.table.lock().ok()?;
        Some(CacheStats {
            hits: self.metrics.hits.get(),
            misses: self.metrics.misses.get(),
            evictions: self.metrics.evictions.get(),
            size: table.lru.len(),
            capacity: table.lru.cap().get(),
            ttl: std::time::Duration::ZERO,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn grants(capacity: usize) -> PlaybackGrants {
        PlaybackGrants::new(
            capacity,
            CacheMetrics::detached(),
            Arc::new(crate::clock::SystemClock),
        )
    }

    fn fill(session: &str, media_id: &MediaId, sid: &str, for_time: Duration) -> GrantFill {
        GrantFill {
            session: SessionDigest::of(session),
            media_id: media_id.clone(),
            session_id: sid.into(),
            token: Arc::from(format!("token-{session}")),
            valid_until: Instant::now() + for_time,
        }
    }

    #[test]
    fn a_grant_is_served_until_it_expires() {
        let grants = grants(10);
        let media = MediaId::new();
        let epoch = grants.epoch().unwrap();
        assert!(
            grants.insert_if_unchanged(fill("a", &media, "s1", Duration::from_millis(30)), epoch)
        );
        let session = SessionDigest::of("a");
        assert_eq!(grants.get(&session, &media).as_deref(), Some("token-a"));
        assert_eq!(grants.get(&SessionDigest::of("b"), &media), None);
        assert_eq!(grants.get(&session, &MediaId::new()), None);
        let deadline = Instant::now() + Duration::from_millis(30);
        while Instant::now() <= deadline {
            std::hint::spin_loop();
        }
        assert_eq!(grants.get(&session, &media), None, "expired");
        let stats = grants.stats().unwrap();
        assert_eq!((stats.hits, stats.misses, stats.size), (1, 3, 0));
        // A grant that is already over is not stored at all.
        let epoch = grants.epoch().unwrap();
        assert!(!grants.insert_if_unchanged(fill("a", &media, "s1", Duration::ZERO), epoch));
    }

    #[test]
    fn purges_drop_the_sessions_and_media_they_name() {
        let grants = grants(10);
        let (first, second) = (MediaId::new(), MediaId::new());
        let epoch = grants.epoch().unwrap();
        let hour = Duration::from_secs(3600);
        for (session, media, sid) in [
            ("a", &first, "s1"),
            ("a", &second, "s1"),
            ("b", &first, "s2"),
            ("c", &second, "s3"),
        ] {
            assert!(grants.insert_if_unchanged(fill(session, media, sid, hour), epoch));
        }
        assert_eq!(grants.purge_session("s1"), 2);
        assert_eq!(grants.get(&SessionDigest::of("a"), &first), None);
        assert_eq!(grants.get(&SessionDigest::of("a"), &second), None);
        assert!(grants.get(&SessionDigest::of("b"), &first).is_some());
        assert_eq!(grants.purge_media(&first), 1);
        assert_eq!(grants.get(&SessionDigest::of("b"), &first), None);
        assert!(grants.get(&SessionDigest::of("c"), &second).is_some());
        assert_eq!(grants.purge_expired(), 0);
    }

    #[test]
    fn a_decision_that_raced_a_purge_is_not_stored() {
        let grants = grants(10);
        let media = MediaId::new();
        let epoch = grants.epoch().unwrap();
        // A logout of some session lands while the decision waits on the chain.
        grants.purge_session("s1");
        let hour = Duration::from_secs(3600);
        assert!(!grants.insert_if_unchanged(fill("a", &media, "s1", hour), epoch));
        assert_eq!(grants.get(&SessionDigest::of("a"), &media), None);
        let epoch = grants.epoch().unwrap();
        grants.purge_media(&MediaId::new());
        assert!(!grants.insert_if_unchanged(fill("a", &media, "s1", hour), epoch));
    }

    #[test]
    fn the_table_is_bounded_and_swept() {
        let grants = grants(2);
        let media = MediaId::new();
        let epoch = grants.epoch().unwrap();
        let hour = Duration::from_secs(3600);
        for session in ["a", "b", "c"] {
            assert!(grants.insert_if_unchanged(fill(session, &media, session, hour), epoch));
        }
        assert_eq!(grants.get(&SessionDigest::of("a"), &media), None, "evicted");
        let stats = grants.stats().unwrap();
        assert_eq!((stats.size, stats.capacity, stats.evictions), (2, 2, 1));
        let epoch = grants.epoch().unwrap();
        let short = fill("d", &media, "d", Duration::from_millis(5));
        assert!(grants.insert_if_unchanged(short, epoch));
        let deadline = Instant::now() + Duration::from_millis(5);
        while Instant::now() <= deadline {
            std::hint::spin_loop();
        }
        assert_eq!(grants.purge_expired(), 1);
        assert_eq!(grants.stats().unwrap().size, 1);
    }

    #[test]
    fn a_poisoned_table_fails_closed() {
        let grants = grants(10);
        let media = MediaId::new();
        let epoch = grants.epoch().unwrap();
        let hour = Duration::from_secs(3600);
        assert!(grants.insert_if_unchanged(fill("a", &media, "s1", hour), epoch));
        let table = grants.table.clone();
        let _ = std::thread::spawn(move || {
            let _held = table.lock().unwrap();
            panic!("poison the grant table");
        })
        .join();
        assert_eq!(grants.get(&SessionDigest::of("a"), &media), None);
        assert_eq!(grants.epoch(), None);
        assert!(!grants.insert_if_unchanged(fill("b", &media, "s2", hour), epoch));
        // A purge empties it and makes it usable again, with a new epoch.
        assert_eq!(grants.purge_session("unrelated"), 1);
        let epoch_after = grants.epoch().unwrap();
        assert_ne!(epoch_after, epoch);
        assert_eq!(grants.get(&SessionDigest::of("a"), &media), None);
    }
}
