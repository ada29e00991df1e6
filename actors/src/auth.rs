//! AuthActor: who may do what. For now it guards admin endpoints with the configured token;
//! wallet sessions (SIWE) and NFT checks arrive here next.

use actix::{Actor, Context, Handler, Message, Supervised};
use sha2::{Digest, Sha256};

use crate::{
    config::AuthConfig,
    error::{DomainError, ErrorKind},
    supervise::supervised_basics,
};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing or invalid admin token")]
    NotAdmin,
}

impl DomainError for AuthError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Unauthorized
    }
    fn code(&self) -> &'static str {
        "admin_token_required"
    }
}

/// Checks a bearer token against the admin token; fails closed when none is configured.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), AuthError>")]
pub struct VerifyAdminToken {
    pub token: String,
}

pub struct AuthActor {
    /// SHA-256 of the admin token, so comparisons take the same time whatever the input.
    admin_token_digest: Option<[u8; 32]>,
}

impl AuthActor {
    pub fn new(config: &AuthConfig) -> Self {
        let admin_token_digest = (!config.admin_token.is_empty())
            .then(|| Sha256::digest(config.admin_token.as_bytes()).into());
        Self { admin_token_digest }
    }
}

impl Actor for AuthActor {
    type Context = Context<Self>;
}

impl Supervised for AuthActor {}

supervised_basics!(AuthActor);

impl Handler<VerifyAdminToken> for AuthActor {
    type Result = Result<(), AuthError>;

    fn handle(&mut self, msg: VerifyAdminToken, _: &mut Self::Context) -> Self::Result {
        let Some(expected) = self.admin_token_digest else {
            return Err(AuthError::NotAdmin);
        };
        let given: [u8; 32] = Sha256::digest(msg.token.as_bytes()).into();
        let difference = given
            .iter()
            .zip(expected.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if difference == 0 {
            Ok(())
        } else {
            Err(AuthError::NotAdmin)
        }
    }
}
