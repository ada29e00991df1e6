//! Extractors that ask the AuthActor who is calling.
//!
//! Invariant: identity comes only from `Authorization: Bearer <token>` verified by the
//! AuthActor (the admin token or a signed session), or from the socket for the audit log;
//! never from a header a client can set to any value it likes.

use std::{future::Future, pin::Pin};

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};
use streamgate_actors::{
    audit::{action, outcome, AuditEvent},
    auth::{AuthError, Authenticate, Principal, VerifyAdminToken},
    error::{DomainError, ErrorKind},
    monitor::traces::{self, TraceContext},
    Actors,
};

use crate::error::ApiError;

/// Proof that the request carried the admin token (`Authorization: Bearer <token>`).
pub struct Admin;

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let token = bearer_token(req);
        let actors = req.app_data::<web::Data<Actors>>().cloned();
        let peer = caller(req);
        Box::pin(async move {
            let actors = actors.ok_or_else(|| ApiError::mailbox(actix::MailboxError::Closed))?;
            let presented = token.as_deref().is_some_and(|token| !token.is_empty());
            let token = token.unwrap_or_default();
            let verified = actors.auth.send(VerifyAdminToken { token }).await?;
            verified.map_err(|error| {
                audit_refused(&actors, presented, action::ADMIN_TOKEN_REFUSED, peer, error)
            })?;
            Ok(Admin)
        })
    }
}

/// A caller with a live wallet session or the admin token; 401 otherwise.
pub struct Authenticated(pub Principal);

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let token = bearer_token(req);
        let actors = req.app_data::<web::Data<Actors>>().cloned();
        let peer = caller(req);
        Box::pin(async move {
            let actors = actors.ok_or_else(|| ApiError::mailbox(actix::MailboxError::Closed))?;
            let presented = token.as_deref().is_some_and(|token| !token.is_empty());
            let token = token.unwrap_or_default();
            let principal = actors
                .auth
                .send(Authenticate { token })
                .await?
                .map_err(|error| {
                    audit_refused(&actors, presented, action::SESSION_REFUSED, peer, error)
                })?;
            Ok(Authenticated(principal))
        })
    }
}

/// A bearer token that was presented and refused is a security event: audited through the
/// sampled path, so a flood of forged tokens costs at most one entry per peer and interval.
pub(crate) fn audit_refused(
    actors: &Actors,
    presented: bool,
    action: &'static str,
    peer: String,
    error: AuthError,
) -> ApiError {
    if presented && error.kind() == ErrorKind::Unauthorized {
        let event =
            AuditEvent::ok(action, peer.clone(), None).with_outcome(outcome::DENIED, error.code());
        actors.audit.record_refusal(event, &peer);
    }
    error.into()
}

/// Like [`Authenticated`], but a request with no `Authorization` header is `None` (public
/// routes that serve more to a session). A header that is present must verify.
pub struct MaybeAuthenticated(pub Option<Principal>);

impl FromRequest for MaybeAuthenticated {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        if !req.headers().contains_key(header::AUTHORIZATION) {
            return Box::pin(async { Ok(MaybeAuthenticated(None)) });
        }
        let authenticated = Authenticated::from_request(req, payload);
        Box::pin(async move { Ok(MaybeAuthenticated(Some(authenticated.await?.0))) })
    }
}

/// The token of `Authorization: Bearer <token>`, if the header has that form.
pub fn bearer_token(req: &HttpRequest) -> Option<String> {
    bearer_str(req).map(str::to_string)
}

/// [`bearer_token`] borrowed from the request, for hot paths that need a copy only sometimes.
pub fn bearer_str(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The caller as the audit log names it when no session says who: taken from the socket,
/// never from a header the client sets (`ip:<address>`).
pub fn caller(req: &HttpRequest) -> String {
    match req.peer_addr() {
        Some(address) => format!("ip:{}", address.ip()),
        None => "ip:unknown".to_string(),
    }
}

/// The W3C trace the observing middleware gave the request being handled (the thread's
/// request scope while the handler is polled), to hand on to actors and background work.
/// `None` with monitoring off, or outside a handler's poll (e.g. in a spawned task).
pub fn current_trace() -> Option<TraceContext> {
    traces::current_request().map(|scope| scope.trace)
}

/// [`current_trace`]'s trace id as 32 hex digits.
pub fn trace_id() -> Option<String> {
    current_trace().map(|trace| trace.trace_id_hex())
}
