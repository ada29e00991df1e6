//! The AuthActor's playback decisions: `AuthorizePlayback` (a principal → a playback token) and
//! `AuthorizeSessionPlayback` (a bearer token → a playback token in one message, remembered in
//! the [`super::grants::PlaybackGrants`] for a wallet session so the next playlist GET of that
//! session needs no message).
//!
//! Invariant: the grant epoch is read before the session, the gate and ownership are read, so a
//! logout or gate change landing while the decision waits on the chain keeps it out of the table.
//! Invariant: a remembered grant ends no later than the session, the ownership answer it used,
//! and the reuse window of its playback token (at most half the token's lifetime).

use std::{
    future::Future,
    sync::Arc,
    time::{Duration as StdDuration, Instant},
};

use actix::{Handler, ResponseFuture};
use alloy_primitives::U256;
use time::{Duration, OffsetDateTime};

use super::{
    grants::{GrantFill, SessionDigest},
    handlers::{checked_balance, ownership_query, parse_address},
    AuthActor, AuthError, AuthorizePlayback, AuthorizeSessionPlayback, PlaybackGrant,
    PlaybackGuard, Principal,
};
use crate::model::{MediaId, Visibility};

/// A decision and what bounds how long it may be reused.
struct Decision {
    grant: PlaybackGrant,
    /// Whether a gate was in force (nothing is remembered for ungated media).
    gated: bool,
    /// When the ownership answer used leaves its cache; `None` when none was needed (owner).
    ownership_fresh_until: Option<Instant>,
}

impl AuthActor {
    /// Whether `principal` may play `media_id`; if so, a fresh playback token.
    fn decide(
        &self,
        media_id: MediaId,
        owner: Option<String>,
        principal: Principal,
    ) -> impl Future<Output = Result<Decision, AuthError>> + 'static {
        let nft = self.deps.nft.clone();
        let audit = self.deps.audit.clone();
        let playback = self.deps.playback.clone();
        let ttl = Duration::seconds(self.deps.config.playback_token_ttl_s as i64);
        let clock = self.deps.clock.clone();
        async move {
            let unavailable = |_| AuthError::Config("gate table unavailable".into());
            let gate = playback.gate(&media_id).map_err(unavailable)?;
            let visibility = playback.visibility(&media_id).map_err(unavailable)?;
            // Private media do not exist for anyone else: not found, never "forbidden".
            if visibility.0 == Visibility::Private && !principal.may_manage(owner.as_deref()) {
                return Err(AuthError::MediaNotFound);
            }
            let wallet = principal.name().to_string();
            let mut ownership_fresh_until = None;
            let may_play = match (&principal, &gate) {
                (_, None) | (Principal::Admin, _) => true,
                (principal, Some(_)) if principal.may_manage(owner.as_deref()) => true,
                (Principal::Wallet { address, .. }, Some(gate)) => {
                    let holder = parse_address(address)?;
                    let query = ownership_query(
                        &nft,
                        gate.chain_id,
                        &gate.contract,
                        gate.standard,
                        gate.token_id.as_deref(),
                        holder,
                    )?;
                    let checked = checked_balance(&nft, &audit, &query, wallet.clone()).await?;
                    ownership_fresh_until = Some(checked.fresh_until);
                    checked.balance >= U256::from(gate.min_balance)
                }
            };
            if !may_play {
                return Err(AuthError::GateNotPassed);
            }
            let expires_at = clock.now_utc() + ttl;
            // Bound to the gate read above: a change since then makes the token stale at once.
            let session_id = match &principal {
                Principal::Wallet { session_id, .. } => Some(session_id.as_str()),
                Principal::Admin => None,
            };
            let binding = PlaybackGuard::binding(
                session_id,
                PlaybackGuard::access_epoch_of(gate.as_ref(), visibility),
            );
            let token = playback.keys().sign_playback(
                &media_id,
                &wallet,
                &binding,
                expires_at.unix_timestamp(),
            );
            Ok(Decision {
                grant: PlaybackGrant {
                    token: token.into(),
                    expires_at,
                },
                gated: gate.is_some() || visibility.0 == Visibility::Private,
                ownership_fresh_until,
            })
        }
    }

    /// How long a token minted now may be handed out again: the configured reuse window, at
    /// most half the token's lifetime, so a reused token always has half its life left.
    fn grant_reuse(&self) -> StdDuration {
        let config = &self.deps.config;
        StdDuration::from_secs(config.playback_grant_reuse_s)
            .min(StdDuration::from_millis(config.playback_token_ttl_s * 500))
    }
}

impl Handler<AuthorizePlayback> for AuthActor {
    type Result = ResponseFuture<Result<PlaybackGrant, AuthError>>;

    fn handle(&mut self, msg: AuthorizePlayback, _: &mut Self::Context) -> Self::Result {
        let decided = self.decide(msg.media_id, msg.owner, msg.principal);
        Box::pin(async move { Ok(decided.await?.grant) })
    }
}

impl Handler<AuthorizeSessionPlayback> for AuthActor {
    type Result = ResponseFuture<Result<PlaybackGrant, AuthError>>;

    fn handle(&mut self, msg: AuthorizeSessionPlayback, _: &mut Self::Context) -> Self::Result {
        let grants = self.deps.playback.grants().clone();
        // Before anything is read: a purge from here on keeps this decision out of the table.
        let epoch = grants.epoch();
        let (principal, session) = match self.bearer(&msg.token) {
            Ok(found) => found,
            Err(error) => return Box::pin(async move { Err(error) }),
        };
        let decided = self.decide(msg.media_id.clone(), msg.owner, principal);
        let reuse = self.grant_reuse();
        let clock = self.deps.clock.clone();
        Box::pin(async move {
            let decision = decided.await?;
            // Admin tokens are not remembered: only sessions can be revoked, and admins are few.
            if let (Some(epoch), Some(claims), true) = (epoch, session, decision.gated) {
                let (now, wall_now) = (clock.instant(), clock.now_utc());
                let session_left = OffsetDateTime::from_unix_timestamp(claims.exp)
                    .map(|expires| expires - wall_now)
                    .unwrap_or(Duration::ZERO);
                let session_left = StdDuration::try_from(session_left).unwrap_or_default();
                let mut valid_until = now + session_left.min(reuse);
                if let Some(fresh_until) = decision.ownership_fresh_until {
                    valid_until = valid_until.min(fresh_until);
                }
                grants.insert_if_unchanged(
                    GrantFill {
                        session: SessionDigest::of(&msg.token),
                        media_id: msg.media_id,
                        session_id: claims.sid,
                        token: Arc::clone(&decision.grant.token),
                        valid_until,
                    },
                    epoch,
                );
            }
            Ok(decision.grant)
        })
    }
}
