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
//! Invariant: a playback token names its session and the gate it was minted under; it is
//! refused once that session is revoked (the AuthActor adds it here before acknowledging the
//! logout or refresh) or the media's gate is no longer that gate (its epoch, from the durable
//! `set_at`, so a restart cannot revive an old token).

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use time::OffsetDateTime;

use super::{
    grants::{PlaybackGrants, SessionDigest},
    tokens::{Keys, PlaybackBinding, PlaybackClaims, PlaybackTokenError, SessionTag},
};
use crate::model::{Gate, MediaId, Visibility};

#[derive(Clone)]
pub struct PlaybackGuard {
    keys: Keys,
    gates: Arc<RwLock<HashMap<MediaId, Gate>>>,
    /// Media that are not public, with their `visibility_epoch`; absent means public.
    hidden: Arc<RwLock<HashMap<MediaId, (Visibility, u64)>>>,
    grants: PlaybackGrants,
    /// Revoked sessions (as tokens name them) until they would have expired (unix seconds).
    revoked: Arc<RwLock<HashMap<SessionTag, i64>>>,
}

/// Why the gate table could not answer; the caller fails closed.
#[derive(Debug, Clone, Copy)]
pub struct GateTableUnavailable;

impl PlaybackGuard {
    pub fn new(keys: Keys, gates: HashMap<MediaId, Gate>, grants: PlaybackGrants) -> Self {
        Self {
            keys,
            gates: Arc::new(RwLock::new(gates)),
            hidden: Arc::default(),
            grants,
            revoked: Arc::default(),
        }
    }

    /// Which gate a token minted now is bound to: `set_at` in nanoseconds (durable, and new
    /// on every change), 0 when ungated.
    pub fn gate_epoch(gate: Option<&Gate>) -> u64 {
        gate.map_or(0, |gate| gate.set_at.unix_timestamp_nanos().max(1) as u64)
    }

    /// Tokens of session `session_id` are refused from now on (until `expires_at`, after which
    /// they would be expired anyway).
    pub(super) fn revoke_session(&self, session_id: &str, expires_at: OffsetDateTime) {
        let mut revoked = match self.revoked.write() {
            Ok(revoked) => revoked,
            Err(poisoned) => poisoned.into_inner(),
        };
        revoked.insert(SessionTag::of(session_id), expires_at.unix_timestamp());
    }

    /// Forgets revocations of sessions that have expired by `now`.
    pub(super) fn prune_revoked(&self, now: OffsetDateTime) {
        let mut revoked = match self.revoked.write() {
            Ok(revoked) => revoked,
            Err(poisoned) => poisoned.into_inner(),
        };
        revoked.retain(|_, expires_at| *expires_at >= now.unix_timestamp());
    }

    /// What a token minted now for `session_id` under `access_epoch` is bound to.
    pub(super) fn binding(session_id: Option<&str>, access_epoch: u64) -> PlaybackBinding {
        PlaybackBinding {
            session: session_id.map(SessionTag::of),
            gate_epoch: access_epoch,
        }
    }

    /// The gate's epoch combined with the epoch of a private visibility: 0 for media anyone
    /// may play, and new whenever the gate changes or the media turns private. Tokens are bound
    /// to it, and restricted media's playlists put it into their URLs (the version).
    pub fn access_epoch_of(gate: Option<&Gate>, visibility: (Visibility, u64)) -> u64 {
        let private = match visibility {
            (Visibility::Private, epoch) => epoch.max(1),
            _ => 0,
        };
        Self::gate_epoch(gate).wrapping_add(private.rotate_left(17))
    }

    /// [`Self::access_epoch_of`] for `media_id` as the tables say now.
    pub fn access_epoch(&self, media_id: &MediaId) -> Result<u64, GateTableUnavailable> {
        let gate = self.gate(media_id)?;
        Ok(Self::access_epoch_of(
            gate.as_ref(),
            self.visibility(media_id)?,
        ))
    }

    /// The media's visibility and its epoch (`Public`, 0 when the table has no entry). A
    /// poisoned lock is an error, never "public".
    pub fn visibility(
        &self,
        media_id: &MediaId,
    ) -> Result<(Visibility, u64), GateTableUnavailable> {
        let hidden = self.hidden.read().map_err(|_| GateTableUnavailable)?;
        Ok(hidden
            .get(media_id)
            .copied()
            .unwrap_or((Visibility::Public, 0)))
    }

    /// Records the media's visibility (deleted media: `Public`) and drops its remembered
    /// grants, so no decision made under the old visibility is reused.
    pub(crate) fn set_visibility(&self, media_id: &MediaId, visibility: Visibility, epoch: u64) {
        let mut hidden = match self.hidden.write() {
            Ok(hidden) => hidden,
            Err(poisoned) => poisoned.into_inner(),
        };
        match visibility {
            Visibility::Public => hidden.remove(media_id),
            other => hidden.insert(media_id.clone(), (other, epoch)),
        };
        drop(hidden);
        self.grants.purge_media(media_id);
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

    /// A valid playback token for `media_id`: authentic, unexpired, its session not revoked
    /// and minted under the media's current gate. A poisoned table refuses.
    pub fn check_token(
        &self,
        media_id: &MediaId,
        token: &str,
    ) -> Result<PlaybackClaims, PlaybackTokenError> {
        let claims = self
            .keys
            .check_playback(media_id, token, self.grants.clock().now_utc())?;
        if let Some(session) = &claims.session {
            let revoked = self
                .revoked
                .read()
                .map_err(|_| PlaybackTokenError::SessionRevoked)?;
            if revoked.contains_key(session) {
                return Err(PlaybackTokenError::SessionRevoked);
            }
        }
        let epoch = self
            .access_epoch(media_id)
            .map_err(|_| PlaybackTokenError::GateChanged)?;
        if epoch != claims.gate_epoch {
            return Err(PlaybackTokenError::GateChanged);
        }
        Ok(claims)
    }

    pub(super) fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Every media item the table holds a gate for.
    pub(crate) fn gated_ids(&self) -> Vec<MediaId> {
        let gates = match self.gates.read() {
            Ok(gates) => gates,
            Err(poisoned) => poisoned.into_inner(),
        };
        gates.keys().cloned().collect()
    }

    pub(crate) fn set(&self, media_id: MediaId, gate: Option<Gate>) {
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
