//! AuthActor: who is calling and what they may see.
//!
//! - Admin token from config (`VerifyAdminToken`, or `Authenticate` → [`Principal::Admin`]).
//! - Sign-In with Ethereum: `IssueChallenge` hands out an EIP-4361 message with a single-use,
//!   expiring nonce (kept in the store); `Login` checks it strictly ([`login`]) and issues a
//!   signed session token ([`tokens`]); `VerifySession`, `RefreshSession`, `Logout` (revocation
//!   is stored, so it survives restarts).
//! - Token ownership over JSON-RPC with a TTL cache ([`nft`]): `CheckOwnership`.
//! - Media gates: `SetGate` (owner or admin), `AuthorizePlayback` (mints the playback token
//!   carried by gated playlist and segment URLs), `AuthorizeSessionPlayback` (bearer token →
//!   playback token in one message, remembered per session and media in [`grants`]); the
//!   [`PlaybackGuard`] read handle lets the segment path check tokens, and the playlist path
//!   reuse remembered grants, without a message.
//!
//! Invariant: a nonce is consumed with a compare-and-swap in the store, so of concurrent logins
//! with one nonce exactly one succeeds. A refused login never waits on the store's flush (its
//! audit entry is sampled and written in the background), so a login flood cannot hold the
//! mailbox.
//! Invariant: every failure to establish identity or ownership is a refusal or an error; an
//! RPC failure is never read as "does not own".
//! Invariant: a revocation (logout, refresh) purges the session's playback grants before it is
//! acknowledged; a gate change purges the media's (in [`PlaybackGuard`]).

pub mod grants;
pub mod login;
pub mod nft;
pub mod playback;
pub mod tokens;

use std::{collections::HashMap, time::Duration as StdDuration};

use actix::{
    Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message, Supervised, WrapFuture,
};
use alloy_primitives::U256;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

pub use self::{
    grants::{PlaybackGrants, SessionDigest},
    login::LoginPolicy,
    nft::{NftChecker, NftMetrics, OwnershipQuery},
    playback::PlaybackGuard,
    tokens::Keys,
};
use crate::{
    audit::AuditLog,
    clock::SharedClock,
    config::AuthConfig,
    error::{DomainError, ErrorKind},
    metadata::{MetadataActor, MetadataError},
    model::{Gate, MediaId, TokenStandard},
    monitor::Metrics,
    store::{blocking, SharedRepo, StoreError},
    supervise::supervised_basics,
};

/// How the audit log names a caller holding the admin token.
pub const ADMIN: &str = "admin";
const PRUNE_EVERY: StdDuration = StdDuration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing or invalid admin token")]
    NotAdmin,
    #[error("this needs a session: send Authorization: Bearer <token from /api/v1/auth/login>")]
    SessionRequired,
    #[error("the session token is malformed or forged")]
    SessionInvalid,
    #[error("the session has expired; sign in again")]
    SessionExpired,
    #[error("the session was logged out")]
    SessionRevoked,
    #[error("invalid address {0:?}: expected 0x and 40 hex digits")]
    InvalidAddress(String),
    #[error("address {0:?} mixes upper and lower case but is not its EIP-55 checksum")]
    AddressChecksum(String),
    #[error("{0}")]
    InvalidQuery(String),
    #[error("not a valid EIP-4361 message: {0}")]
    InvalidMessage(String),
    #[error("the signature must be 65 bytes of hex")]
    InvalidSignature,
    #[error("the message names another domain")]
    DomainMismatch,
    #[error("the message names another URI")]
    UriMismatch,
    #[error("chain {0} is not allowed here")]
    ChainNotAllowed(u64),
    #[error("no RPC node is configured for chain {0}")]
    ChainNotConfigured(u64),
    #[error("the nonce was not issued by this server")]
    NonceUnknown,
    #[error("the nonce was already used")]
    NonceUsed,
    #[error("the nonce has expired; ask for a new challenge")]
    NonceExpired,
    #[error("the nonce was issued for another address or chain")]
    NonceMismatch,
    #[error("the message is not valid yet")]
    MessageNotYetValid,
    #[error("the message has expired")]
    MessageExpired,
    #[error("the signature was not made by the message's address")]
    SignatureMismatch,
    #[error("only the media's owner (or an admin) may do this")]
    NotOwner,
    #[error("this media is gated and your wallet does not hold the required token")]
    GateNotPassed,
    /// A private media item, asked for by someone who may not see it.
    #[error("media not found")]
    MediaNotFound,
    #[error("the contract did not answer as a token contract")]
    NotATokenContract,
    #[error("RPC node unavailable: {0}")]
    RpcUnavailable(String),
    #[error("RPC node answer unusable: {0}")]
    RpcBadResponse(String),
    #[error(
        "this session used up its uncached ownership checks for now; retry in {retry_after_s} s"
    )]
    RpcBudgetExceeded { retry_after_s: u64 },
    #[error(transparent)]
    Media(#[from] MetadataError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the metadata actor did not answer")]
    Mailbox,
    #[error("auth misconfigured: {0}")]
    Config(String),
}

impl DomainError for AuthError {
    fn kind(&self) -> ErrorKind {
        use AuthError::*;
        match self {
            NotAdmin | SessionRequired | SessionInvalid | SessionExpired | SessionRevoked
            | DomainMismatch | UriMismatch | ChainNotAllowed(_) | NonceUnknown | NonceUsed
            | NonceExpired | NonceMismatch | MessageNotYetValid | MessageExpired
            | SignatureMismatch => ErrorKind::Unauthorized,
            InvalidAddress(_)
            | AddressChecksum(_)
            | InvalidQuery(_)
            | InvalidMessage(_)
            | InvalidSignature
            | ChainNotConfigured(_)
            | NotATokenContract => ErrorKind::Invalid,
            NotOwner | GateNotPassed => ErrorKind::Forbidden,
            MediaNotFound => ErrorKind::NotFound,
            RpcUnavailable(_) | Store(_) | Mailbox => ErrorKind::Unavailable,
            RpcBadResponse(_) => ErrorKind::Upstream,
            RpcBudgetExceeded { .. } => ErrorKind::TooManyRequests,
            Media(error) => error.kind(),
            Config(_) => ErrorKind::Internal,
        }
    }

    fn code(&self) -> &'static str {
        use AuthError::*;
        match self {
            NotAdmin => "admin_token_required",
            SessionRequired => "session_required",
            SessionInvalid => "session_invalid",
            SessionExpired => "session_expired",
            SessionRevoked => "session_revoked",
            InvalidAddress(_) => "invalid_address",
            AddressChecksum(_) => "invalid_address_checksum",
            InvalidQuery(_) => "invalid_nft_query",
            InvalidMessage(_) => "invalid_siwe_message",
            InvalidSignature => "invalid_signature",
            DomainMismatch => "domain_mismatch",
            UriMismatch => "uri_mismatch",
            ChainNotAllowed(_) => "chain_not_allowed",
            ChainNotConfigured(_) => "chain_not_configured",
            NonceUnknown => "nonce_unknown",
            NonceUsed => "nonce_used",
            NonceExpired => "nonce_expired",
            NonceMismatch => "nonce_mismatch",
            MessageNotYetValid => "message_not_yet_valid",
            MessageExpired => "message_expired",
            SignatureMismatch => "signature_mismatch",
            NotOwner => "not_media_owner",
            GateNotPassed => "gate_not_passed",
            MediaNotFound => "media_not_found",
            NotATokenContract => "not_a_token_contract",
            RpcUnavailable(_) => "rpc_unavailable",
            RpcBadResponse(_) => "rpc_bad_response",
            RpcBudgetExceeded { .. } => "nft_rpc_budget_exceeded",
            Media(error) => error.code(),
            Store(_) => "store_unavailable",
            Mailbox => "actor_unavailable",
            Config(_) => "auth_misconfigured",
        }
    }

    fn retry_after_s(&self) -> Option<u64> {
        match self {
            Self::RpcBudgetExceeded { retry_after_s } => Some(*retry_after_s),
            _ => None,
        }
    }
}

/// Who is calling, as established from a bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Wallet {
        /// EIP-55 checksummed.
        address: String,
        session_id: String,
    },
}

impl Principal {
    /// How the audit log and media records name this caller.
    pub fn name(&self) -> &str {
        match self {
            Self::Admin => ADMIN,
            Self::Wallet { address, .. } => address,
        }
    }

    /// The wallet, for records that a wallet owns; admins own nothing.
    pub fn wallet(&self) -> Option<&str> {
        match self {
            Self::Admin => None,
            Self::Wallet { address, .. } => Some(address),
        }
    }

    /// Admins manage everything; a wallet manages what it owns.
    pub fn may_manage(&self, owner: Option<&str>) -> bool {
        match self {
            Self::Admin => true,
            Self::Wallet { address, .. } => owner == Some(address.as_str()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Messages

/// Checks a bearer token against the admin token; fails closed when none is configured.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), AuthError>")]
pub struct VerifyAdminToken {
    pub token: String,
}

/// The admin token or a live session token → who is calling.
#[derive(Debug, Message)]
#[rtype(result = "Result<Principal, AuthError>")]
pub struct Authenticate {
    pub token: String,
}

#[derive(Debug, Message)]
#[rtype(result = "Result<Challenge, AuthError>")]
pub struct IssueChallenge {
    pub address: String,
    pub chain_id: u64,
    /// The socket peer, whose challenges are audited (sampled per peer).
    pub caller: String,
}

#[derive(Debug, Clone)]
pub struct Challenge {
    pub nonce: String,
    pub message: String,
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, Message)]
#[rtype(result = "Result<SessionGrant, AuthError>")]
pub struct Login {
    pub message: String,
    pub signature: String,
    /// The socket peer, named in the audit log when the message names no address.
    pub caller: String,
}

#[derive(Debug, Clone)]
pub struct SessionGrant {
    pub token: String,
    pub address: String,
    pub chain_id: u64,
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, Message)]
#[rtype(result = "Result<SessionInfo, AuthError>")]
pub struct VerifySession {
    pub token: String,
}

#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub address: String,
    pub chain_id: u64,
    pub session_id: String,
    pub expires_at: OffsetDateTime,
}

/// Issues a fresh token for a live session and revokes the old one.
#[derive(Debug, Message)]
#[rtype(result = "Result<SessionGrant, AuthError>")]
pub struct RefreshSession {
    pub token: String,
}

#[derive(Debug, Message)]
#[rtype(result = "Result<(), AuthError>")]
pub struct Logout {
    pub token: String,
}

/// `POST /api/v1/auth/nft/verify`: needs a session (or the admin token) in `token`; a
/// session's uncached look-ups are budgeted (`auth.nft_verify_rpc_per_minute`).
#[derive(Debug, Message)]
#[rtype(result = "Result<Ownership, AuthError>")]
pub struct CheckOwnership {
    /// The bearer token.
    pub token: String,
    pub chain_id: u64,
    pub contract: String,
    pub standard: TokenStandard,
    pub token_id: Option<String>,
    pub address: String,
}

#[derive(Debug, Clone)]
pub struct Ownership {
    pub owns: bool,
    pub balance: U256,
    pub cached: bool,
}

/// What an owner asks for; validated into a [`Gate`].
#[derive(Debug, Clone)]
pub struct GateSpec {
    pub chain_id: u64,
    pub contract: String,
    pub standard: TokenStandard,
    pub token_id: Option<String>,
    pub min_balance: u64,
}

/// Sets (`Some`) or clears (`None`) the gate on a media item.
#[derive(Debug, Message)]
#[rtype(result = "Result<Option<Gate>, AuthError>")]
pub struct SetGate {
    pub media_id: MediaId,
    pub gate: Option<GateSpec>,
    pub principal: Principal,
}

/// Validates a gate given with an upload exactly like [`SetGate`] does, without storing it:
/// the upload stores it with the media record.
#[derive(Debug, Message)]
#[rtype(result = "Result<Gate, AuthError>")]
pub struct ValidateGate {
    pub gate: GateSpec,
    pub principal: Principal,
}

/// Decides whether `principal` may play gated `media_id`, and if so mints a playback token.
#[derive(Debug, Message)]
#[rtype(result = "Result<PlaybackGrant, AuthError>")]
pub struct AuthorizePlayback {
    pub media_id: MediaId,
    /// The media's owner, who may always play it.
    pub owner: Option<String>,
    pub principal: Principal,
}

/// A bearer token (session or admin) and gated `media_id` → a playback token: authenticates
/// and decides like [`AuthorizePlayback`] in one message, and remembers a wallet session's
/// grant in the [`PlaybackGrants`] the [`PlaybackGuard`] serves.
#[derive(Debug, Message)]
#[rtype(result = "Result<PlaybackGrant, AuthError>")]
pub struct AuthorizeSessionPlayback {
    pub token: String,
    pub media_id: MediaId,
    /// The media's owner, who may always play it.
    pub owner: Option<String>,
}

#[derive(Debug, Clone)]
pub struct PlaybackGrant {
    pub token: std::sync::Arc<str>,
    pub expires_at: OffsetDateTime,
}

// ---------------------------------------------------------------------------------------------
// Actor

/// Everything the actor needs, built once by [`crate::start`].
pub struct AuthDeps {
    pub config: AuthConfig,
    pub repo: SharedRepo,
    pub keys: Keys,
    pub playback: PlaybackGuard,
    /// A gate change drops the media's cached records and playlists.
    pub caches: crate::cache::Caches,
    pub nft: NftChecker,
    pub metadata: Addr<MetadataActor>,
    pub audit: AuditLog,
    pub metrics: Metrics,
    /// Revoked session ids and when they would have expired, as stored.
    pub revoked: HashMap<String, OffsetDateTime>,
    /// What session, nonce and playback-token expiries are measured against.
    pub clock: SharedClock,
}

pub struct AuthActor {
    deps: AuthDeps,
    policy: LoginPolicy,
    /// Uncached `nft/verify` look-ups per session id in the current minute.
    nft_budget: HashMap<String, BudgetWindow>,
    /// SHA-256 of the admin token, so comparisons take the same time whatever the input.
    admin_token_digest: Option<[u8; 32]>,
}

impl AuthActor {
    pub fn new(deps: AuthDeps) -> Self {
        let config = &deps.config;
        let admin_token_digest = (!config.admin_token.is_empty())
            .then(|| Sha256::digest(config.admin_token.as_bytes()).into());
        // Tokens of sessions revoked before a restart stay refused.
        for (session_id, expires_at) in &deps.revoked {
            deps.playback.revoke_session(session_id, *expires_at);
        }
        let policy = LoginPolicy {
            domain: config.domain.clone(),
            uri: config.uri.clone(),
            allowed_chain_ids: config.allowed_chain_ids.clone(),
            clock_skew: Duration::seconds(config.clock_skew_s as i64),
        };
        Self {
            deps,
            policy,
            nft_budget: HashMap::new(),
            admin_token_digest,
        }
    }

    fn is_admin_token(&self, token: &str) -> bool {
        let Some(expected) = self.admin_token_digest else {
            return false;
        };
        let given: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        given
            .iter()
            .zip(expected.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    fn session(&self, token: &str) -> Result<tokens::SessionClaims, AuthError> {
        let claims = self
            .deps
            .keys
            .open_session(token)
            .ok_or(AuthError::SessionInvalid)?;
        if claims.exp <= self.deps.clock.now_utc().unix_timestamp() {
            return Err(AuthError::SessionExpired);
        }
        if self.deps.revoked.contains_key(&claims.sid) {
            return Err(AuthError::SessionRevoked);
        }
        Ok(claims)
    }

    /// The admin token or a live session → who is calling, and the session's claims.
    fn bearer(&self, token: &str) -> Result<(Principal, Option<tokens::SessionClaims>), AuthError> {
        if token.is_empty() {
            return Err(AuthError::SessionRequired);
        }
        if self.is_admin_token(token) {
            return Ok((Principal::Admin, None));
        }
        let claims = self.session(token)?;
        let principal = Principal::Wallet {
            address: claims.sub.clone(),
            session_id: claims.sid.clone(),
        };
        Ok((principal, Some(claims)))
    }

    fn grant(&self, address: String, chain_id: u64) -> SessionGrant {
        let now = self.deps.clock.now_utc();
        let expires_at = now + Duration::seconds(self.deps.config.session_ttl_s as i64);
        let claims = tokens::SessionClaims {
            sid: tokens::new_session_id(),
            sub: address.clone(),
            chain_id,
            iat: now.unix_timestamp(),
            exp: expires_at.unix_timestamp(),
        };
        SessionGrant {
            token: self.deps.keys.sign_session(&claims),
            address,
            chain_id,
            expires_at,
        }
    }

    /// Revokes in memory at once (fail closed), then durably.
    fn revoke(
        &mut self,
        claims: &tokens::SessionClaims,
    ) -> impl std::future::Future<Output = Result<(), AuthError>> + 'static {
        let expires_at = OffsetDateTime::from_unix_timestamp(claims.exp)
            .unwrap_or_else(|_| OffsetDateTime::now_utc());
        self.deps.revoked.insert(claims.sid.clone(), expires_at);
        self.deps.playback.revoke_session(&claims.sid, expires_at);
        self.deps.playback.grants().purge_session(&claims.sid);
        let repo = self.deps.repo.clone();
        let sid = claims.sid.clone();
        async move {
            blocking(&repo, move |repo| {
                repo.put_revoked_session(&sid, expires_at)
            })
            .await?;
            Ok(())
        }
    }
}

/// Another node set or cleared the gate on `media_id`: reload it from the store.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct GateChangedElsewhere {
    pub media_id: MediaId,
}

/// Another node revoked a session (logout, refresh).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RevokedElsewhere {
    pub session_id: String,
    pub expires_at: OffsetDateTime,
}

/// The change feed had a gap: reload every gate and revocation from the store.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ReloadAuthState;

impl Handler<GateChangedElsewhere> for AuthActor {
    type Result = actix::AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: GateChangedElsewhere, _: &mut Self::Context) -> Self::Result {
        let (repo, playback, caches) = (
            self.deps.repo.clone(),
            self.deps.playback.clone(),
            self.deps.caches.clone(),
        );
        // Atomic: two changes to one gate are applied in the order they were heard.
        actix::AtomicResponse::new(Box::pin(
            async move {
                let id = msg.media_id.clone();
                match blocking(&repo, move |repo| repo.get_gate(&id)).await {
                    Ok(gate) => playback.set(msg.media_id.clone(), gate),
                    Err(error) => {
                        tracing::error!(%error, media_id = %msg.media_id, "remote gate change not applied");
                    }
                }
                caches.invalidate_gate(&msg.media_id);
            }
            .into_actor(self),
        ))
    }
}

impl Handler<RevokedElsewhere> for AuthActor {
    type Result = ();

    fn handle(&mut self, msg: RevokedElsewhere, _: &mut Self::Context) {
        self.deps
            .revoked
            .insert(msg.session_id.clone(), msg.expires_at);
        self.deps
            .playback
            .revoke_session(&msg.session_id, msg.expires_at);
        self.deps.playback.grants().purge_session(&msg.session_id);
    }
}

impl Handler<ReloadAuthState> for AuthActor {
    type Result = actix::AtomicResponse<Self, ()>;

    fn handle(&mut self, _: ReloadAuthState, _: &mut Self::Context) -> Self::Result {
        let (repo, playback, caches) = (
            self.deps.repo.clone(),
            self.deps.playback.clone(),
            self.deps.caches.clone(),
        );
        actix::AtomicResponse::new(Box::pin(
            async move {
                blocking(&repo, |repo| {
                    Ok((repo.list_gates()?, repo.list_revoked_sessions()?))
                })
                .await
            }
            .into_actor(self)
            .map(move |loaded, actor, _| match loaded {
                Ok((gates, revoked)) => {
                    let stored: HashMap<MediaId, Gate> = gates.into_iter().collect();
                    for media_id in playback.gated_ids() {
                        if !stored.contains_key(&media_id) {
                            playback.set(media_id.clone(), None);
                            caches.invalidate_gate(&media_id);
                        }
                    }
                    for (media_id, gate) in stored {
                        if playback.gate(&media_id).ok().flatten().as_ref() != Some(&gate) {
                            caches.invalidate_gate(&media_id);
                            playback.set(media_id, Some(gate));
                        }
                    }
                    for (session_id, expires_at) in revoked {
                        playback.revoke_session(&session_id, expires_at);
                        playback.grants().purge_session(&session_id);
                        actor.deps.revoked.insert(session_id, expires_at);
                    }
                    tracing::info!("gates and revocations reloaded after a change-feed gap");
                }
                Err(error) => tracing::error!(%error, "gates and revocations not reloaded"),
            }),
        ))
    }
}

/// One session's use of its `nft/verify` budget in a fixed one-minute window.
struct BudgetWindow {
    started: std::time::Instant,
    used: u32,
}

const BUDGET_WINDOW: StdDuration = StdDuration::from_secs(60);

impl AuthActor {
    /// Charges one uncached look-up to `session_id`, or says when the next one may be made.
    fn charge_nft_budget(&mut self, session_id: &str) -> Result<(), AuthError> {
        let now = std::time::Instant::now();
        let limit = self.deps.config.nft_verify_rpc_per_minute;
        let window = self
            .nft_budget
            .entry(session_id.to_string())
            .or_insert(BudgetWindow {
                started: now,
                used: 0,
            });
        if now.duration_since(window.started) >= BUDGET_WINDOW {
            *window = BudgetWindow {
                started: now,
                used: 0,
            };
        }
        if window.used >= limit {
            let left = BUDGET_WINDOW.saturating_sub(now.duration_since(window.started));
            return Err(AuthError::RpcBudgetExceeded {
                retry_after_s: left.as_secs_f64().ceil().max(1.0) as u64,
            });
        }
        window.used += 1;
        Ok(())
    }
}

impl Actor for AuthActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(PRUNE_EVERY, |actor, ctx| {
            let now = actor.deps.clock.now_utc();
            actor
                .deps
                .revoked
                .retain(|_, expires_at| *expires_at >= now);
            actor.deps.playback.grants().purge_expired();
            actor.deps.playback.prune_revoked(now);
            actor
                .nft_budget
                .retain(|_, window| window.started.elapsed() < BUDGET_WINDOW);
            let repo = actor.deps.repo.clone();
            ctx.spawn(
                async move {
                    let pruned = blocking(&repo, move |repo| {
                        Ok((repo.prune_nonces(now)?, repo.prune_revoked_sessions(now)?))
                    })
                    .await;
                    if let Err(error) = pruned {
                        tracing::warn!(%error, "could not prune expired nonces and sessions");
                    }
                }
                .into_actor(actor),
            );
        });
    }
}

impl Supervised for AuthActor {}

supervised_basics!(AuthActor);

impl Handler<VerifyAdminToken> for AuthActor {
    type Result = Result<(), AuthError>;

    fn handle(&mut self, msg: VerifyAdminToken, _: &mut Self::Context) -> Self::Result {
        if self.is_admin_token(&msg.token) {
            Ok(())
        } else {
            Err(AuthError::NotAdmin)
        }
    }
}

impl Handler<Authenticate> for AuthActor {
    type Result = Result<Principal, AuthError>;

    fn handle(&mut self, msg: Authenticate, _: &mut Self::Context) -> Self::Result {
        self.bearer(&msg.token).map(|(principal, _)| principal)
    }
}

mod authorize;
mod handlers;
