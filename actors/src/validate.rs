//! Input validation shared by every domain: Ethereum addresses (EIP-55), emails, hex digests
//! and bounded text. Each check returns the normalised value or a [`ValidationError`] that
//! names the field, so handlers can answer 400 with a precise message.

use sha3::{Digest, Keccak256};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    pub field: &'static str,
    pub reason: String,
}

impl crate::error::DomainError for ValidationError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Invalid
    }
    fn code(&self) -> &'static str {
        "invalid_input"
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ValidationError {
    ValidationError {
        field,
        reason: reason.into(),
    }
}

/// An Ethereum address: `0x` and 40 hex digits. Mixed case must match its EIP-55 checksum
/// (a typo in a checksummed address is caught); all-lower or all-upper carries no checksum
/// and is accepted. Returns the checksummed form.
pub fn eth_address(field: &'static str, text: &str) -> Result<String, ValidationError> {
    let hex_part = text
        .strip_prefix("0x")
        .ok_or_else(|| invalid(field, "must start with 0x"))?;
    if hex_part.len() != 40 || !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(field, "must be 0x followed by 40 hex digits"));
    }
    let checksummed = to_checksum(hex_part);
    let has_lower = hex_part.bytes().any(|b| b.is_ascii_lowercase());
    let has_upper = hex_part.bytes().any(|b| b.is_ascii_uppercase());
    if has_lower && has_upper && checksummed[2..] != *hex_part {
        return Err(invalid(field, "EIP-55 checksum mismatch"));
    }
    Ok(checksummed)
}

fn to_checksum(hex_part: &str) -> String {
    let lower = hex_part.to_ascii_lowercase();
    let hash = Keccak256::digest(lower.as_bytes());
    let mut out = String::with_capacity(42);
    out.push_str("0x");
    for (i, c) in lower.chars().enumerate() {
        let nibble = (hash[i / 2] >> (if i % 2 == 0 { 4 } else { 0 })) & 0x0f;
        out.push(if c.is_ascii_alphabetic() && nibble >= 8 {
            c.to_ascii_uppercase()
        } else {
            c
        });
    }
    out
}

/// A hex digest of `bytes` bytes (32 for SHA-256), returned in lowercase.
pub fn hex_digest(
    field: &'static str,
    text: &str,
    bytes: usize,
) -> Result<String, ValidationError> {
    if text.len() != bytes * 2 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(field, format!("must be {} hex digits", bytes * 2)));
    }
    Ok(text.to_ascii_lowercase())
}

/// A plausible email address: one `@`, a local part of 1–64 characters, a domain of dotted
/// labels (letters, digits, hyphens), 254 characters at most. Deliverability is not checked.
pub fn email(field: &'static str, text: &str) -> Result<String, ValidationError> {
    let bad = || invalid(field, "is not an email address");
    if text.len() > 254 {
        return Err(invalid(field, "is longer than 254 characters"));
    }
    let (local, domain) = text.split_once('@').ok_or_else(bad)?;
    if local.is_empty()
        || local.len() > 64
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
        || !local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c))
    {
        return Err(bad());
    }
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if labels.len() < 2 || !labels.iter().all(label_ok) {
        return Err(bad());
    }
    Ok(format!("{local}@{}", domain.to_ascii_lowercase()))
}

/// Free text of `min..=max` characters without control characters (newlines and tabs allowed
/// when `multiline`). Returns it trimmed.
pub fn bounded_text(
    field: &'static str,
    text: &str,
    min: usize,
    max: usize,
    multiline: bool,
) -> Result<String, ValidationError> {
    let trimmed = text.trim();
    let count = trimmed.chars().count();
    if count < min || count > max {
        return Err(invalid(field, format!("must be {min} to {max} characters")));
    }
    let allowed = |c: char| !c.is_control() || (multiline && (c == '\n' || c == '\t'));
    if !trimmed.chars().all(allowed) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eip55_vectors_pass_and_typos_fail() {
        // The test vectors of EIP-55.
        for address in [
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
            "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
            "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
        ] {
            assert_eq!(eth_address("owner", address).unwrap(), address);
            assert_eq!(
                eth_address("owner", &address.to_ascii_lowercase().replace("0X", "0x")).unwrap(),
                address
            );
        }
        let typo = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD";
        assert_eq!(
            eth_address("owner", typo).unwrap_err().reason,
            "EIP-55 checksum mismatch"
        );
        assert!(eth_address("owner", "5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed").is_err());
        assert!(eth_address("owner", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAe").is_err());
        assert!(eth_address("owner", "0xZZAeb6053F3E94C9b9A09f33669435E7Ef1BeAed").is_err());
    }

    #[test]
    fn digests_emails_and_text() {
        let sha = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";
        assert_eq!(hex_digest("sha256", sha, 32).unwrap(), sha.to_lowercase());
        assert!(hex_digest("sha256", &sha[1..], 32).is_err());
        assert!(hex_digest("sha256", &sha.replace('E', "g"), 32).is_err());

        assert_eq!(
            email("email", "Ann.Lee+tv@Example.COM").unwrap(),
            "Ann.Lee+tv@example.com"
        );
        for bad in [
            "ann",
            "@example.com",
            "ann@",
            "ann@localhost",
            "a..b@x.io",
            "ann@-x.io",
            "a b@x.io",
        ] {
            assert!(email("email", bad).is_err(), "{bad}");
        }

        assert_eq!(
            bounded_text("title", "  A clip ", 1, 10, false).unwrap(),
            "A clip"
        );
        assert!(bounded_text("title", "", 1, 10, false).is_err());
        assert!(bounded_text("title", "é".repeat(11).as_str(), 1, 10, false).is_err());
        assert!(bounded_text("title", "a\u{0}b", 1, 10, false).is_err());
        assert!(bounded_text("description", "a\nb", 1, 10, true).is_ok());
        assert!(bounded_text("title", "a\nb", 1, 10, false).is_err());
    }
}
