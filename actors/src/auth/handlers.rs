//! The AuthActor's session, ownership and gate handlers (the actor and its messages are in
//! `mod.rs`).

use actix::{
    ActorFutureExt, AtomicResponse, Handler, ResponseActFuture, ResponseFuture, WrapFuture,
};
use alloy_primitives::{Address, U256};
use time::{Duration, OffsetDateTime};

use super::{
    login, AuthActor, AuthError, Challenge, CheckOwnership, GateSpec, IssueChallenge, Login,
    Logout, NftChecker, Ownership, OwnershipQuery, Principal, RefreshSession, SessionGrant,
    SessionInfo, SetGate, ValidateGate, VerifySession,
};
use crate::{
    audit::{action, outcome, AuditEvent, AuditLog},
    error::DomainError,
    metadata::GetMedia,
    model::{Gate, NonceRecord, TokenStandard},
    store::{blocking, NonceUse, StoreError},
};

impl Handler<IssueChallenge> for AuthActor {
    type Result = ResponseFuture<Result<Challenge, AuthError>>;

    fn handle(&mut self, msg: IssueChallenge, _: &mut Self::Context) -> Self::Result {
        let prepared = (|| {
            let address = parse_address(&msg.address)?;
            if !self.policy.allowed_chain_ids.contains(&msg.chain_id) {
                return Err(AuthError::ChainNotAllowed(msg.chain_id));
            }
            let issued_at = self.deps.clock.now_utc();
            let expires_at = issued_at + Duration::seconds(self.deps.config.nonce_ttl_s as i64);
            let nonce = siwe::generate_nonce();
            let message = login::challenge_message(
                &self.policy,
                address,
                msg.chain_id,
                &nonce,
                issued_at,
                expires_at,
            )?;
            let record = NonceRecord {
                nonce: nonce.clone(),
                address: address.to_checksum(None),
                chain_id: msg.chain_id,
                issued_at,
                expires_at,
                used: false,
            };
            Ok((
                record,
                Challenge {
                    nonce,
                    message,
                    expires_at,
                },
            ))
        })();
        let repo = self.deps.repo.clone();
        let audit = self.deps.audit.clone();
        let caller = msg.caller;
        Box::pin(async move {
            let (record, challenge) = prepared?;
            let event = AuditEvent::ok(action::AUTH_CHALLENGE, caller.clone(), None).with_outcome(
                outcome::OK,
                format!("address {} chain {}", record.address, record.chain_id),
            );
            blocking(&repo, move |repo| repo.put_nonce(&record)).await?;
            // Anyone can ask for challenges at will: sampled per peer, written in the background.
            audit.record_refusal(event, &caller);
            Ok(challenge)
        })
    }
}

impl Handler<Login> for AuthActor {
    type Result = ResponseActFuture<Self, Result<SessionGrant, AuthError>>;

    /// Not atomic: the nonce's compare-and-swap in the store makes exactly one of concurrent
    /// logins with one nonce succeed, so a flood of logins never holds the mailbox. The nonce
    /// is spent before the signature is checked, so each challenge buys at most one signature
    /// recovery however often its text is replayed; that check runs on the blocking pool, off
    /// the actors' thread. A refusal is audited through the sampled, non-blocking path.
    fn handle(&mut self, msg: Login, _: &mut Self::Context) -> Self::Result {
        let now = self.deps.clock.now_utc();
        let policy = self.policy.clone();
        let repo = self.deps.repo.clone();
        let audit = self.deps.audit.clone();
        let metrics = self.deps.metrics.clone();
        let caller = msg.caller;
        let (message, signature) = (msg.message, msg.signature);
        Box::pin(
            async move {
                let checked = login::check_login(&policy, &message, &signature, now)?;
                let nonce = checked.nonce.clone();
                let found = blocking(&repo, move |repo| repo.consume_nonce(&nonce)).await?;
                let record = match found {
                    NonceUse::Unknown => return Err(AuthError::NonceUnknown),
                    NonceUse::AlreadyUsed(_) => return Err(AuthError::NonceUsed),
                    NonceUse::Consumed(record) => record,
                };
                if record.expires_at <= now {
                    return Err(AuthError::NonceExpired);
                }
                if record.address != checked.address.to_checksum(None)
                    || record.chain_id != checked.chain_id
                {
                    return Err(AuthError::NonceMismatch);
                }
                let verified =
                    tokio::task::spawn_blocking(move || login::recover_signer(&message, checked))
                        .await
                        .map_err(|error| AuthError::Store(StoreError::Join(error.to_string())))??;
                blocking(&repo, |repo| repo.sync_nonces()).await?;
                Ok(verified)
            }
            .into_actor(self)
            .then(move |verified, actor, _| {
                let (result, durable) = match verified {
                    Ok(verified) => {
                        let grant = actor.grant(verified.address.clone(), verified.chain_id);
                        metrics.auth_logins.with_label_values(&["ok"]).inc();
                        let event = AuditEvent::ok(action::AUTH_LOGIN, verified.address, None);
                        (Ok(grant), Some(event))
                    }
                    Err(error) => {
                        metrics.auth_logins.with_label_values(&[error.code()]).inc();
                        let event = AuditEvent::ok(action::AUTH_LOGIN, caller.clone(), None)
                            .with_outcome(outcome::DENIED, error.code());
                        audit.record_refusal(event, &caller);
                        (Err(error), None)
                    }
                };
                async move {
                    // Only a session handed out waits for its (flushed) audit entry.
                    if let Some(event) = durable {
                        audit.record(event).await;
                    }
                    result
                }
                .into_actor(actor)
            }),
        )
    }
}

impl Handler<VerifySession> for AuthActor {
    type Result = Result<SessionInfo, AuthError>;

    fn handle(&mut self, msg: VerifySession, _: &mut Self::Context) -> Self::Result {
        let claims = self.session(&msg.token)?;
        Ok(SessionInfo {
            address: claims.sub,
            chain_id: claims.chain_id,
            session_id: claims.sid,
            expires_at: OffsetDateTime::from_unix_timestamp(claims.exp)
                .map_err(|_| AuthError::SessionInvalid)?,
        })
    }
}

impl Handler<RefreshSession> for AuthActor {
    type Result = ResponseFuture<Result<SessionGrant, AuthError>>;

    fn handle(&mut self, msg: RefreshSession, _: &mut Self::Context) -> Self::Result {
        let claims = match self.session(&msg.token) {
            Ok(claims) => claims,
            Err(error) => return Box::pin(async move { Err(error) }),
        };
        let grant = self.grant(claims.sub.clone(), claims.chain_id);
        let revoked = self.revoke(&claims);
        let audit = self.deps.audit.clone();
        self.deps
            .metrics
            .auth_session_events
            .with_label_values(&["refresh"])
            .inc();
        Box::pin(async move {
            revoked.await?;
            audit
                .record(AuditEvent::ok(action::AUTH_REFRESH, claims.sub, None))
                .await;
            Ok(grant)
        })
    }
}

impl Handler<Logout> for AuthActor {
    type Result = ResponseFuture<Result<(), AuthError>>;

    fn handle(&mut self, msg: Logout, _: &mut Self::Context) -> Self::Result {
        let claims = match self.session(&msg.token) {
            Ok(claims) => claims,
            Err(error) => return Box::pin(async move { Err(error) }),
        };
        let revoked = self.revoke(&claims);
        let audit = self.deps.audit.clone();
        self.deps
            .metrics
            .auth_session_events
            .with_label_values(&["logout"])
            .inc();
        Box::pin(async move {
            revoked.await?;
            audit
                .record(AuditEvent::ok(action::AUTH_LOGOUT, claims.sub, None))
                .await;
            Ok(())
        })
    }
}

/// Parses a token id given as decimal or `0x` hex.
fn parse_token_id(text: &str) -> Result<U256, AuthError> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => U256::from_str_radix(hex, 16),
        None => U256::from_str_radix(text, 10),
    };
    parsed.map_err(|_| AuthError::InvalidQuery(format!("token_id {text:?} is not a uint256")))
}

/// An address from a request or a session (contract or holder), checked. Mixed case claims an
/// EIP-55 checksum, so it must be one: a typo in a checksummed address is caught, not used.
pub(super) fn parse_address(text: &str) -> Result<Address, AuthError> {
    let address =
        login::parse_address(text).ok_or_else(|| AuthError::InvalidAddress(text.to_string()))?;
    let hex = text.get(2..).unwrap_or_default();
    let mixed =
        hex.bytes().any(|b| b.is_ascii_lowercase()) && hex.bytes().any(|b| b.is_ascii_uppercase());
    if mixed && address.to_checksum(None) != text {
        return Err(AuthError::AddressChecksum(text.to_string()));
    }
    Ok(address)
}

pub(super) fn ownership_query(
    nft: &NftChecker,
    chain_id: u64,
    contract: &str,
    standard: TokenStandard,
    token_id: Option<&str>,
    holder: Address,
) -> Result<OwnershipQuery, AuthError> {
    if !nft.knows_chain(chain_id) {
        return Err(AuthError::ChainNotConfigured(chain_id));
    }
    let token_id = token_id.map(parse_token_id).transpose()?;
    if standard == TokenStandard::Erc1155 && token_id.is_none() {
        return Err(AuthError::InvalidQuery(
            "erc1155 needs a token_id".to_string(),
        ));
    }
    Ok(OwnershipQuery {
        chain_id,
        contract: parse_address(contract)?,
        standard,
        token_id,
        holder,
    })
}

/// Runs one ownership check and records it in the audit log.
pub(super) async fn checked_balance(
    nft: &NftChecker,
    audit: &AuditLog,
    query: &OwnershipQuery,
    actor: String,
) -> Result<nft_result::Checked, AuthError> {
    let target = format!(
        "{}:{}:{}",
        query.chain_id,
        query.contract,
        query
            .token_id
            .map(|id| id.to_string())
            .unwrap_or_else(|| "*".into())
    );
    let result = nft.balance(query).await;
    // A cached answer repeats a decision already audited when it was fetched (within the
    // cache TTL); auditing it again would put a flushed store write on every gated playlist.
    let event = match &result {
        Ok(holding) if holding.cached => None,
        Ok(holding) => Some(
            AuditEvent::ok(action::NFT_CHECK, actor, Some(target)).with_outcome(
                outcome::OK,
                format!("holder {} balance {} (rpc)", query.holder, holding.balance),
            ),
        ),
        Err(error) => {
            // A failure (a dead node, a bogus contract) is what a hostile caller can repeat:
            // sampled, in the background.
            let event = AuditEvent::ok(action::NFT_CHECK, actor.clone(), Some(target))
                .with_outcome(outcome::FAILED, error.code());
            audit.record_refusal(event, &actor);
            None
        }
    };
    if let Some(event) = event {
        audit.record(event).await;
    }
    result.map(|holding| nft_result::Checked {
        balance: holding.balance,
        cached: holding.cached,
        fresh_until: holding.fresh_until,
    })
}

pub(super) mod nft_result {
    pub struct Checked {
        pub balance: alloy_primitives::U256,
        pub cached: bool,
        /// When the answer leaves the ownership cache.
        pub fresh_until: std::time::Instant,
    }
}

impl Handler<CheckOwnership> for AuthActor {
    type Result = ResponseFuture<Result<Ownership, AuthError>>;

    fn handle(&mut self, msg: CheckOwnership, _: &mut Self::Context) -> Self::Result {
        let prepared = (|| -> Result<(Principal, OwnershipQuery), AuthError> {
            let (principal, _) = self.bearer(&msg.token)?;
            let holder = parse_address(&msg.address)?;
            let query = ownership_query(
                &self.deps.nft,
                msg.chain_id,
                &msg.contract,
                msg.standard,
                msg.token_id.as_deref(),
                holder,
            )?;
            // Only look-ups that reach the chain cost budget; admins have none.
            if let Principal::Wallet { session_id, .. } = &principal {
                if !self.deps.nft.is_cached(&query) {
                    self.charge_nft_budget(session_id)?;
                }
            }
            Ok((principal, query))
        })();
        let nft = self.deps.nft.clone();
        let audit = self.deps.audit.clone();
        Box::pin(async move {
            let (principal, query) = prepared?;
            let actor = principal.name().to_string();
            let checked = checked_balance(&nft, &audit, &query, actor).await?;
            Ok(Ownership {
                owns: checked.balance >= U256::from(1),
                balance: checked.balance,
                cached: checked.cached,
            })
        })
    }
}

impl Handler<ValidateGate> for AuthActor {
    type Result = Result<Gate, AuthError>;

    fn handle(&mut self, msg: ValidateGate, _: &mut Self::Context) -> Self::Result {
        validate_gate(&self.deps.nft, &msg.gate, &msg.principal)
    }
}

impl Handler<SetGate> for AuthActor {
    type Result = AtomicResponse<Self, Result<Option<Gate>, AuthError>>;

    fn handle(&mut self, msg: SetGate, _: &mut Self::Context) -> Self::Result {
        let metadata = self.deps.metadata.clone();
        let repo = self.deps.repo.clone();
        let audit = self.deps.audit.clone();
        let metrics = self.deps.metrics.clone();
        let playback = self.deps.playback.clone();
        let caches = self.deps.caches.clone();
        let validated = msg
            .gate
            .as_ref()
            .map(|spec| validate_gate(&self.deps.nft, spec, &msg.principal))
            .transpose();
        AtomicResponse::new(Box::pin(
            async move {
                let media = metadata
                    .send(GetMedia {
                        media_id: msg.media_id.clone(),
                    })
                    .await
                    .map_err(|_| AuthError::Mailbox)??;
                if !msg.principal.may_manage(media.owner.as_deref()) {
                    // A private media item does not exist for anyone else.
                    if media.visibility == crate::model::Visibility::Private {
                        return Err(crate::metadata::MetadataError::NotFound(media.id).into());
                    }
                    return Err(AuthError::NotOwner);
                }
                let gate = validated?;
                let media_id = media.id.clone();
                let change = match &gate {
                    Some(gate) => {
                        let stored = gate.clone();
                        let id = media_id.clone();
                        blocking(&repo, move |repo| repo.put_gate(&id, &stored)).await?;
                        "set"
                    }
                    None => {
                        let id = media_id.clone();
                        blocking(&repo, move |repo| repo.delete_gate(&id)).await?;
                        "clear"
                    }
                };
                // Durable first: a restart reloads exactly what was acknowledged.
                playback.set(media_id.clone(), gate.clone());
                caches.invalidate_gate(&media_id);
                metrics.gate_changes.with_label_values(&[change]).inc();
                let detail = match &gate {
                    Some(gate) => format!(
                        "set {} chain {} contract {} token {} min {}",
                        gate.standard.as_str(),
                        gate.chain_id,
                        gate.contract,
                        gate.token_id.as_deref().unwrap_or("*"),
                        gate.min_balance
                    ),
                    None => "clear".to_string(),
                };
                audit
                    .record(
                        AuditEvent::ok(
                            action::MEDIA_GATE,
                            msg.principal.name(),
                            Some(media_id.to_string()),
                        )
                        .with_outcome(outcome::OK, detail),
                    )
                    .await;
                // Lifecycle webhooks hear of it as of any other change to the media.
                if metadata
                    .send(crate::metadata::AnnounceUpdate { media_id })
                    .await
                    .is_err()
                {
                    tracing::error!("metadata actor unavailable: gate change not announced");
                }
                Ok(gate)
            }
            .into_actor(self),
        ))
    }
}

fn validate_gate(
    nft: &NftChecker,
    spec: &GateSpec,
    principal: &Principal,
) -> Result<Gate, AuthError> {
    // The holder does not matter for validation; any address will do.
    let query = ownership_query(
        nft,
        spec.chain_id,
        &spec.contract,
        spec.standard,
        spec.token_id.as_deref(),
        Address::ZERO,
    )?;
    if spec.min_balance == 0 {
        return Err(AuthError::InvalidQuery(
            "min_balance must be at least 1".into(),
        ));
    }
    if spec.standard == TokenStandard::Erc721 && query.token_id.is_some() && spec.min_balance > 1 {
        return Err(AuthError::InvalidQuery(
            "an ERC-721 token has one owner: min_balance must be 1 with a token_id".into(),
        ));
    }
    Ok(Gate {
        chain_id: spec.chain_id,
        contract: query.contract.to_checksum(None),
        standard: spec.standard,
        token_id: query.token_id.map(|id| id.to_string()),
        min_balance: spec.min_balance,
        set_by: principal.name().to_string(),
        set_at: OffsetDateTime::now_utc(),
    })
}
