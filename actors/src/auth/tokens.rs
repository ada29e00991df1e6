//! Signed tokens: wallet sessions (`Authorization: Bearer`) and playback tokens (a query
//! parameter on gated playlist and segment URLs, so stock HLS players carry them unchanged).
//!
//! Both are HMAC-SHA256 over their claims, with keys derived from one secret (from config, or
//! generated once and kept in the store) so a token of one kind never verifies as the other.
//!
//! Invariant: a token is accepted only after its MAC verifies in constant time; claims are read
//! only from a verified token.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use hmac::{digest::KeyInit, Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::{
    model::MediaId,
    store::{SharedRepo, StoreError},
};

type HmacSha256 = Hmac<Sha256>;

const SESSION_PREFIX: &str = "sg1";
const SECRET_BYTES: usize = 32;

/// HMAC-SHA256's block size: a key this long is used as it is, with no fallible length check.
const BLOCK: usize = 64;
type Key = [u8; BLOCK];

/// The two derived keys. Cheap to clone.
#[derive(Clone)]
pub struct Keys {
    session: Key,
    playback: Key,
}

impl Keys {
    pub fn from_secret(secret: &[u8]) -> Self {
        // Hashing first gives a fixed-length root key whatever the configured secret's length.
        let root = pad(&Sha256::digest(secret));
        Self {
            session: pad(&hmac(&root, &[b"streamgate session v1"])
                .finalize()
                .into_bytes()),
            playback: pad(&hmac(&root, &[b"streamgate playback v1"])
                .finalize()
                .into_bytes()),
        }
    }

    /// Uses `configured` when it is set; otherwise the secret generated on the first start and
    /// kept in the store, so sessions survive restarts.
    pub fn load_or_create(configured: &str, repo: &SharedRepo) -> Result<Self, StoreError> {
        if !configured.is_empty() {
            return Ok(Self::from_secret(configured.as_bytes()));
        }
        if let Some(secret) = repo.get_session_secret()? {
            return Ok(Self::from_secret(&secret));
        }
        let mut secret = [0u8; SECRET_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        // Another node starting at the same moment may store its own first: use whichever won.
        let stored = repo.create_session_secret(&secret)?;
        Ok(Self::from_secret(&stored))
    }

    /// Replaces the stored secret with a new random one (`streamgate rotate-secret`): every
    /// session and playback token signed with the old one fails from the next start on.
    pub fn rotate_stored(repo: &SharedRepo) -> Result<(), StoreError> {
        let mut secret = [0u8; SECRET_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        repo.put_session_secret(&secret)
    }

    // -----------------------------------------------------------------------------------------
    // Sessions

    pub fn sign_session(&self, claims: &SessionClaims) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let tag = hmac(&self.session, &[payload.as_bytes()])
            .finalize()
            .into_bytes();
        format!("{SESSION_PREFIX}.{payload}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// The claims of a well-formed, authentic session token. Expiry and revocation are the
    /// caller's to check.
    pub fn open_session(&self, token: &str) -> Option<SessionClaims> {
        let mut parts = token.split('.');
        let (Some(SESSION_PREFIX), Some(payload), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        hmac(&self.session, &[payload.as_bytes()])
            .verify_slice(&tag)
            .ok()?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
    }

    // -----------------------------------------------------------------------------------------
    // Playback

    /// `{expires}.{wallet}.{session}.{gate}.{tag}`: bound to one media item, one wallet, an
    /// expiry, the session it was minted for (`-` for the admin token) and the media's gate as
    /// it was then ([`PlaybackBinding`]), so a logout or a gate change refuses it at once.
    pub fn sign_playback(
        &self,
        media_id: &MediaId,
        wallet: &str,
        binding: &PlaybackBinding,
        expires_at: i64,
    ) -> String {
        let expires = expires_at.to_string();
        let session = binding
            .session
            .map_or_else(|| "-".to_string(), |tag| URL_SAFE_NO_PAD.encode(tag.0));
        let gate = binding.gate_epoch.to_string();
        let tag = hmac(
            &self.playback,
            &[
                media_id.as_bytes(),
                wallet.as_bytes(),
                expires.as_bytes(),
                session.as_bytes(),
                gate.as_bytes(),
            ],
        )
        .finalize()
        .into_bytes();
        format!(
            "{expires}.{wallet}.{session}.{gate}.{}",
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// The claims of an authentic, unexpired playback token for `media_id`. Whether its
    /// session and gate still stand is the [`super::PlaybackGuard`]'s to check.
    pub fn check_playback(
        &self,
        media_id: &MediaId,
        token: &str,
        now: OffsetDateTime,
    ) -> Result<PlaybackClaims, PlaybackTokenError> {
        let mut parts = token.split('.');
        let (Some(expires), Some(wallet), Some(session), Some(gate), Some(tag), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(PlaybackTokenError::Invalid);
        };
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| PlaybackTokenError::Invalid)?;
        hmac(
            &self.playback,
            &[
                media_id.as_bytes(),
                wallet.as_bytes(),
                expires.as_bytes(),
                session.as_bytes(),
                gate.as_bytes(),
            ],
        )
        .verify_slice(&tag)
        .map_err(|_| PlaybackTokenError::Invalid)?;
        let expires_at: i64 = expires.parse().map_err(|_| PlaybackTokenError::Invalid)?;
        if expires_at <= now.unix_timestamp() {
            return Err(PlaybackTokenError::Expired);
        }
        let session = match session {
            "-" => None,
            text => {
                let bytes = URL_SAFE_NO_PAD
                    .decode(text)
                    .map_err(|_| PlaybackTokenError::Invalid)?;
                Some(SessionTag(
                    bytes.try_into().map_err(|_| PlaybackTokenError::Invalid)?,
                ))
            }
        };
        Ok(PlaybackClaims {
            wallet: wallet.to_string(),
            expires_at,
            session,
            gate_epoch: gate.parse().map_err(|_| PlaybackTokenError::Invalid)?,
        })
    }
}

/// A session as a playback token names it: a digest of the session id, so a token seen in a
/// log or a referrer never reveals the id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionTag([u8; 16]);

impl SessionTag {
    pub fn of(session_id: &str) -> Self {
        let digest =
            Sha256::digest([b"streamgate playback session\0", session_id.as_bytes()].concat());
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&digest[..16]);
        Self(tag)
    }
}

/// What a playback token is bound to besides media, wallet and expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaybackBinding {
    /// The session it was minted for; `None` for the admin token (which cannot be revoked).
    pub session: Option<SessionTag>,
    /// The media's gate when it was minted (see `PlaybackGuard::gate_epoch`).
    pub gate_epoch: u64,
}

/// Zero-pads a 32-byte digest to the block size; HMAC pads shorter keys the same way.
fn pad(digest: &[u8]) -> Key {
    let mut key = [0u8; BLOCK];
    key[..digest.len().min(BLOCK)].copy_from_slice(&digest[..digest.len().min(BLOCK)]);
    key
}

/// HMAC over length-prefixed parts, so no two different part lists feed the same bytes.
fn hmac(key: &Key, parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = <HmacSha256 as KeyInit>::new(key.into());
    for part in parts {
        Mac::update(&mut mac, &(part.len() as u64).to_be_bytes());
        Mac::update(&mut mac, part);
    }
    mac
}

/// What a session token says. `sid` names the session for revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    pub sid: String,
    /// EIP-55 checksummed wallet address.
    pub sub: String,
    pub chain_id: u64,
    /// Unix seconds.
    pub iat: i64,
    pub exp: i64,
}

/// What a verified playback token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaybackClaims {
    pub wallet: String,
    pub expires_at: i64,
    pub session: Option<SessionTag>,
    pub gate_epoch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaybackTokenError {
    /// Malformed, forged, or made for other media.
    Invalid,
    Expired,
    /// Its session was logged out (or refreshed away).
    SessionRevoked,
    /// The media's gate changed (or was set) since it was minted.
    GateChanged,
}

/// A fresh random session id.
pub fn new_session_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_verify_and_tampering_is_refused() {
        let keys = Keys::from_secret(b"secret");
        let claims = SessionClaims {
            sid: new_session_id(),
            sub: "0x0000000000000000000000000000000000000001".into(),
            chain_id: 1,
            iat: 1,
            exp: 2,
        };
        let token = keys.sign_session(&claims);
        assert_eq!(keys.open_session(&token), Some(claims.clone()));
        assert_eq!(Keys::from_secret(b"other").open_session(&token), None);
        let forged = SessionClaims {
            exp: i64::MAX,
            ..claims
        };
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(
            keys.open_session(&format!("sg1.{forged_payload}.{}", parts[2])),
            None
        );
        assert_eq!(keys.open_session("sg1.x"), None);
    }

    #[test]
    fn playback_tokens_are_bound_to_media_wallet_session_gate_and_expiry() {
        let keys = Keys::from_secret(b"secret");
        let media = MediaId::new();
        let now = OffsetDateTime::now_utc();
        let expires = now.unix_timestamp() + 60;
        let binding = PlaybackBinding {
            session: Some(SessionTag::of("s1")),
            gate_epoch: 42,
        };
        let token = keys.sign_playback(&media, "0xabc", &binding, expires);
        let claims = keys.check_playback(&media, &token, now).unwrap();
        assert_eq!(claims.wallet, "0xabc");
        assert_eq!(claims.session, Some(SessionTag::of("s1")));
        assert_eq!(claims.gate_epoch, 42);
        assert_eq!(
            keys.check_playback(&MediaId::new(), &token, now),
            Err(PlaybackTokenError::Invalid)
        );
        let other_wallet = token.replace("0xabc", "0xabd");
        assert_eq!(
            keys.check_playback(&media, &other_wallet, now),
            Err(PlaybackTokenError::Invalid)
        );
        // Neither the session nor the gate epoch can be swapped.
        let parts: Vec<&str> = token.split('.').collect();
        let other_session = URL_SAFE_NO_PAD.encode(SessionTag::of("s2").0);
        for forged in [
            [parts[0], parts[1], &other_session, parts[3], parts[4]].join("."),
            [parts[0], parts[1], parts[2], "43", parts[4]].join("."),
            [parts[0], parts[1], "-", parts[3], parts[4]].join("."),
        ] {
            assert_eq!(
                keys.check_playback(&media, &forged, now),
                Err(PlaybackTokenError::Invalid),
                "{forged}"
            );
        }
        let admin = PlaybackBinding {
            session: None,
            gate_epoch: 0,
        };
        let token_of_admin = keys.sign_playback(&media, "admin", &admin, expires);
        assert_eq!(
            keys.check_playback(&media, &token_of_admin, now)
                .unwrap()
                .session,
            None
        );
        let later = now + time::Duration::seconds(61);
        assert_eq!(
            keys.check_playback(&media, &token, later),
            Err(PlaybackTokenError::Expired)
        );
        // A session token is not a playback token, even with the same secret.
        assert!(keys.check_playback(&media, "sg1.a.b", now).is_err());
    }
}
