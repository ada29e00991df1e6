//! Extractors that ask the AuthActor who is calling.

use std::{future::Future, pin::Pin};

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};
use streamgate_actors::{auth::VerifyAdminToken, Actors};

use crate::error::ApiError;

/// Proof that the request carried the admin token (`Authorization: Bearer <token>`).
pub struct Admin;

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let token = bearer_token(req);
        let actors = req.app_data::<web::Data<Actors>>().cloned();
        Box::pin(async move {
            let actors = actors.ok_or_else(|| ApiError::mailbox(actix::MailboxError::Closed))?;
            let token = token.unwrap_or_default();
            actors.auth.send(VerifyAdminToken { token }).await??;
            Ok(Admin)
        })
    }
}

fn bearer_token(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// The caller as the audit log names it. Taken from the socket, never from a header the client
/// sets: `ip:<address>` until wallet sessions exist.
pub fn caller(req: &HttpRequest) -> String {
    match req.peer_addr() {
        Some(address) => format!("ip:{}", address.ip()),
        None => "ip:unknown".to_string(),
    }
}
