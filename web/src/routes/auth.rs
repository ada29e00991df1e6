//! Wallet auth: SIWE challenge and login, session verify/refresh/logout, and ownership checks.
//!
//! `POST /api/v1/auth/challenge`, `/login`, `/verify`, `/refresh`, `/logout`, `/nft/verify`
//! (a session's, with a budget of uncached look-ups: 429 `nft_rpc_budget_exceeded`).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use streamgate_actors::{
    audit::action,
    auth::{
        AuthError, CheckOwnership, IssueChallenge, Login, Logout, RefreshSession, SessionGrant,
        VerifySession,
    },
    model::TokenStandard,
    Actors,
};
use time::OffsetDateTime;

use crate::{
    error::ApiError,
    extract::{audit_refused, bearer_token, caller},
};

pub(crate) fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ChallengeBody {
    address: String,
    chain_id: u64,
}

#[derive(Serialize)]
struct ChallengeDto {
    nonce: String,
    message: String,
    expires_at: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LoginBody {
    message: String,
    signature: String,
}

#[derive(Serialize)]
struct SessionDto {
    token: String,
    address: String,
    chain_id: u64,
    expires_at: String,
}

impl From<SessionGrant> for SessionDto {
    fn from(grant: SessionGrant) -> Self {
        Self {
            token: grant.token,
            address: grant.address,
            chain_id: grant.chain_id,
            expires_at: rfc3339(grant.expires_at),
        }
    }
}

#[derive(Serialize)]
struct VerifyDto {
    valid: bool,
    address: String,
    chain_id: u64,
    expires_at: String,
}

/// A token id as a JSON number or a decimal / `0x` hex string (uint256 exceeds JSON numbers).
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum TokenIdInput {
    Number(u64),
    Text(String),
}

impl TokenIdInput {
    pub(crate) fn into_text(self) -> String {
        match self {
            Self::Number(number) => number.to_string(),
            Self::Text(text) => text,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NftVerifyBody {
    address: String,
    chain_id: u64,
    contract: String,
    standard: TokenStandard,
    token_id: Option<TokenIdInput>,
}

#[derive(Serialize)]
struct NftVerifyDto {
    owns: bool,
    /// Saturates at u64::MAX; `balance_exact` is the decimal uint256.
    balance: u64,
    balance_exact: String,
    cached: bool,
}

pub(super) async fn challenge(
    req: HttpRequest,
    body: web::Json<ChallengeBody>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let challenge = actors
        .auth
        .send(IssueChallenge {
            address: body.address,
            chain_id: body.chain_id,
            caller: caller(&req),
        })
        .await??;
    Ok(HttpResponse::Ok().json(ChallengeDto {
        nonce: challenge.nonce,
        message: challenge.message,
        expires_at: rfc3339(challenge.expires_at),
    }))
}

pub(super) async fn login(
    req: HttpRequest,
    body: web::Json<LoginBody>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let grant = actors
        .auth
        .send(Login {
            message: body.message,
            signature: body.signature,
            caller: caller(&req),
        })
        .await??;
    Ok(HttpResponse::Ok().json(SessionDto::from(grant)))
}

/// A presented session refused (forged, expired, revoked) is a security event, audited
/// through the sampled path like the extractors' refusals.
fn session_refused(req: &HttpRequest, actors: &Actors, error: AuthError) -> ApiError {
    audit_refused(actors, true, action::SESSION_REFUSED, caller(req), error)
}

fn session_token(req: &HttpRequest) -> Result<String, ApiError> {
    bearer_token(req).ok_or_else(|| ApiError::from(AuthError::SessionRequired))
}

pub(super) async fn verify(
    req: HttpRequest,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let token = session_token(&req)?;
    let session = actors
        .auth
        .send(VerifySession { token })
        .await?
        .map_err(|error| session_refused(&req, &actors, error))?;
    Ok(HttpResponse::Ok().json(VerifyDto {
        valid: true,
        address: session.address,
        chain_id: session.chain_id,
        expires_at: rfc3339(session.expires_at),
    }))
}

pub(super) async fn refresh(
    req: HttpRequest,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let token = session_token(&req)?;
    let grant = actors
        .auth
        .send(RefreshSession { token })
        .await?
        .map_err(|error| session_refused(&req, &actors, error))?;
    Ok(HttpResponse::Ok().json(SessionDto::from(grant)))
}

pub(super) async fn logout(
    req: HttpRequest,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let token = session_token(&req)?;
    actors
        .auth
        .send(Logout { token })
        .await?
        .map_err(|error| session_refused(&req, &actors, error))?;
    Ok(HttpResponse::NoContent().finish())
}

pub(super) async fn nft_verify(
    req: HttpRequest,
    body: web::Json<NftVerifyBody>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let token = session_token(&req)?;
    let body = body.into_inner();
    let ownership = actors
        .auth
        .send(CheckOwnership {
            token,
            chain_id: body.chain_id,
            contract: body.contract,
            standard: body.standard,
            token_id: body.token_id.map(TokenIdInput::into_text),
            address: body.address,
        })
        .await?
        .map_err(|error| session_refused(&req, &actors, error))?;
    Ok(HttpResponse::Ok().json(NftVerifyDto {
        owns: ownership.owns,
        balance: u64::try_from(ownership.balance).unwrap_or(u64::MAX),
        balance_exact: ownership.balance.to_string(),
        cached: ownership.cached,
    }))
}
