//! Sign-In with Ethereum (EIP-4361): the challenge we hand out and the strict check of what
//! comes back. Pure functions of the message, the signature, the policy and the clock; the
//! nonce bookkeeping is the actor's.
//!
//! Invariant: a login is accepted only when every field of the signed text is ours or allowed,
//! the text is exactly the canonical form of what we parsed (so no field we did not check was
//! signed), and the EIP-191 signature over that text recovers the message's address.

use std::str::FromStr;

use alloy_primitives::{Address, Signature};
use time::{Duration, OffsetDateTime};

use super::AuthError;

/// What a login must match, from `[auth]` config.
#[derive(Debug, Clone)]
pub struct LoginPolicy {
    /// RFC 3986 authority the message must name, e.g. `video.example.com`.
    pub domain: String,
    pub uri: String,
    pub allowed_chain_ids: Vec<u64>,
    /// How far in the future `Issued At` may lie (clients' clocks drift).
    pub clock_skew: Duration,
}

const STATEMENT: &str = "Sign in to StreamGate.";

/// A parsed, fully checked login.
#[derive(Debug, Clone)]
pub struct VerifiedLogin {
    /// EIP-55 checksummed.
    pub address: String,
    pub chain_id: u64,
    pub nonce: String,
}

/// Parses a client-supplied address (any case); `None` when it is not 20 hex bytes.
pub fn parse_address(text: &str) -> Option<Address> {
    let hex = text.strip_prefix("0x")?;
    if hex.len() != 40 {
        return None;
    }
    Address::from_str(text).ok()
}

/// The EIP-4361 text for a challenge.
pub fn challenge_message(
    policy: &LoginPolicy,
    address: Address,
    chain_id: u64,
    nonce: &str,
    issued_at: OffsetDateTime,
    expires_at: OffsetDateTime,
) -> Result<String, AuthError> {
    let bad_config = |what: &str| AuthError::Config(format!("auth.{what} is not valid for SIWE"));
    let message = siwe::Message {
        domain: policy.domain.parse().map_err(|_| bad_config("domain"))?,
        address: address.into_array(),
        statement: Some(STATEMENT.to_string()),
        uri: policy.uri.parse().map_err(|_| bad_config("uri"))?,
        version: siwe::Version::V1,
        chain_id,
        nonce: nonce.to_string(),
        issued_at: siwe::TimeStamp::from(issued_at),
        expiration_time: Some(siwe::TimeStamp::from(expires_at)),
        not_before: None,
        request_id: None,
        resources: Vec::new(),
    };
    Ok(message.to_string())
}

/// A login whose text passed every check that needs neither stored state nor the signature.
#[derive(Debug, Clone)]
pub struct CheckedLogin {
    pub address: Address,
    pub chain_id: u64,
    pub nonce: String,
    signature: Signature,
}

/// Checks everything about a login that needs no stored state and no curve arithmetic:
/// message, domain, URI, chain, time window and the signature's form. The nonce is checked by
/// the caller next, and the signature by [`recover_signer`] last, since it costs the most.
pub fn check_login(
    policy: &LoginPolicy,
    text: &str,
    signature: &str,
    now: OffsetDateTime,
) -> Result<CheckedLogin, AuthError> {
    let message = siwe::Message::from_str(text)
        .map_err(|error| AuthError::InvalidMessage(error.to_string()))?;
    if message.to_string() != text {
        return Err(AuthError::InvalidMessage(
            "the message is not in canonical EIP-4361 form".into(),
        ));
    }
    if message.domain.as_str() != policy.domain {
        return Err(AuthError::DomainMismatch);
    }
    if message.uri.as_str() != policy.uri {
        return Err(AuthError::UriMismatch);
    }
    if !policy.allowed_chain_ids.contains(&message.chain_id) {
        return Err(AuthError::ChainNotAllowed(message.chain_id));
    }
    if let Some(not_before) = &message.not_before {
        if *not_before.as_ref() > now {
            return Err(AuthError::MessageNotYetValid);
        }
    }
    if *message.issued_at.as_ref() > now + policy.clock_skew {
        return Err(AuthError::MessageNotYetValid);
    }
    if let Some(expires) = &message.expiration_time {
        if *expires.as_ref() <= now {
            return Err(AuthError::MessageExpired);
        }
    }
    Ok(CheckedLogin {
        address: Address::from(message.address),
        chain_id: message.chain_id,
        nonce: message.nonce,
        signature: parse_signature(signature)?,
    })
}

/// The EIP-191 check: the signature over `text` must recover the message's address.
pub fn recover_signer(text: &str, login: CheckedLogin) -> Result<VerifiedLogin, AuthError> {
    let recovered = login
        .signature
        .recover_address_from_msg(text.as_bytes())
        .map_err(|_| AuthError::SignatureMismatch)?;
    if recovered != login.address {
        return Err(AuthError::SignatureMismatch);
    }
    Ok(VerifiedLogin {
        address: login.address.to_checksum(None),
        chain_id: login.chain_id,
        nonce: login.nonce,
    })
}

fn parse_signature(text: &str) -> Result<Signature, AuthError> {
    let hex = text.strip_prefix("0x").unwrap_or(text);
    let bytes = hex::decode(hex).map_err(|_| AuthError::InvalidSignature)?;
    if bytes.len() != 65 {
        return Err(AuthError::InvalidSignature);
    }
    Signature::from_raw(&bytes).map_err(|_| AuthError::InvalidSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> LoginPolicy {
        LoginPolicy {
            domain: "video.example.com".into(),
            uri: "https://video.example.com".into(),
            allowed_chain_ids: vec![1],
            clock_skew: Duration::seconds(60),
        }
    }

    #[test]
    fn the_challenge_is_canonical_siwe() {
        let address = parse_address("0x6da01670d8fc844e736095918bbe11fe8d564163").unwrap();
        let now = OffsetDateTime::now_utc();
        let text = challenge_message(
            &policy(),
            address,
            1,
            "abcdefgh1234",
            now,
            now + Duration::minutes(5),
        )
        .unwrap();
        let parsed = siwe::Message::from_str(&text).unwrap();
        assert_eq!(parsed.to_string(), text);
        assert!(
            text.contains("0x6Da01670d8fc844e736095918bbE11fE8D564163"),
            "{text}"
        );
        // Unsigned garbage is refused before any signature work.
        assert!(matches!(
            check_login(&policy(), &text, "0x00", now),
            Err(AuthError::InvalidSignature)
        ));
        assert!(matches!(
            check_login(&policy(), "hello", "0x00", now),
            Err(AuthError::InvalidMessage(_))
        ));
    }

    #[test]
    fn addresses_must_be_twenty_hex_bytes() {
        assert!(parse_address("0x6da01670d8fc844e736095918bbe11fe8d564163").is_some());
        assert!(parse_address("6da01670d8fc844e736095918bbe11fe8d564163").is_none());
        assert!(parse_address("0x6da0").is_none());
        assert!(parse_address("0xZZa01670d8fc844e736095918bbe11fe8d564163").is_none());
    }
}
