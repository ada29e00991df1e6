//! The read handle the segment hot path uses: which media are gated (and how), and the key
//! that checks playback tokens. The AuthActor writes it; `web` only reads it, without a
//! message round trip, so ungated segments cost one uncontended read lock. It also holds the
//! [`PlaybackGrants`] (the AuthActor's remembered "session may play media" decisions), so a
//! gated playlist GET whose decision is remembered needs no message either.
//!
//! Invariant: the table is loaded from the store before the HTTP server starts and is updated
//! only after a gate change is durable, so a gated media item is never served as public
//! (a set gate is visible here before it is acknowledged).
//! Invariant: a gate change purges the media's grants right after the table changes (so a
//! decision made with the old gate is neither served nor stored afterwards), before the
//! change is acknowledged.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use time::OffsetDateTime;

use super::{
    grants::{PlaybackGrants, SessionDigest},
    tokens::{Keys, PlaybackClaims, PlaybackTokenError},
};
use crate::model::{Gate, MediaId};

#[derive(Clone)]
pub struct PlaybackGuard {
    keys: Keys,
    gates: Arc<RwLock<HashMap<MediaId, Gate>>>,
    grants: PlaybackGrants,
}

/// Why the gate table could not answer; the caller fails closed.
#[derive(Debug, Clone, Copy)]
pub struct GateTableUnavailable;

impl PlaybackGuard {
    pub fn new(keys: Keys, gates: HashMap<MediaId, Gate>, grants: PlaybackGrants) -> Self {
        Self {
            keys,
            gates: Arc::new(RwLock::new(gates)),
            grants,
        }
    }

    /// The playback token the AuthActor granted this bearer session for `media_id`, while that
    /// decision stands. Only for media the caller has just found gated in this table; a miss
    /// (or a poisoned grant table) goes to the AuthActor.
    pub fn granted(&self, session: &SessionDigest, media_id: &MediaId) -> Option<Arc<str>> {
        self.grants.get(session, media_id)
    }

    /// Hits, misses, evictions and size of the grant table (`None`: poisoned).
    pub fn grant_stats(&self) -> Option<crate::cache::CacheStats> {
        self.grants.stats()
    }

    pub(super) fn grants(&self) -> &PlaybackGrants {
        &self.grants
    }

    /// Whether `media_id` is gated, without copying the gate. Fails like [`Self::gate`].
    pub fn is_gated(&self, media_id: &MediaId) -> Result<bool, GateTableUnavailable> {
        let gates = self.gates.read().map_err(|_| GateTableUnavailable)?;
        Ok(gates.contains_key(media_id))
    }

    /// The gate on `media_id`, if any. A poisoned lock is an error, never "ungated".
    pub fn gate(&self, media_id: &MediaId) -> Result<Option<Gate>, GateTableUnavailable> {
        let gates = self.gates.read().map_err(|_| GateTableUnavailable)?;
        Ok(gates.get(media_id).cloned())
    }

    pub fn check_token(
        &self,
        media_id: &MediaId,
        token: &str,
    ) -> Result<PlaybackClaims, PlaybackTokenError> {
        self.keys
            .check_playback(media_id, token, OffsetDateTime::now_utc())
    }

    pub(super) fn keys(&self) -> &Keys {
        &self.keys
    }

    pub(super) fn set(&self, media_id: MediaId, gate: Option<Gate>) {
        // A poisoned lock still holds a consistent map (inserts and removes cannot half-happen).
        let mut gates = match self.gates.write() {
            Ok(gates) => gates,
            Err(poisoned) => poisoned.into_inner(),
        };
        match gate {
            Some(gate) => gates.insert(media_id.clone(), gate),
            None => gates.remove(&media_id),
        };
        drop(gates);
        self.grants.purge_media(&media_id);
    }
}
