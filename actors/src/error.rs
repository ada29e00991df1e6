//! Error kinds shared by every actor.
//!
//! Each actor has its own `thiserror` enum; all of them implement [`DomainError`], which
//! reduces them to an [`ErrorKind`] and a stable `snake_case` code. The web crate maps kinds to
//! HTTP statuses in exactly one place, so the domain never speaks HTTP.

/// What went wrong, coarse enough to pick a status from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    Conflict,
    Invalid,
    TooLarge,
    UnsupportedMedia,
    /// The resource existed but is gone for good (an expired upload).
    Gone,
    /// Someone else is working on the resource right now (a PATCH in progress).
    Locked,
    /// The request's own integrity check failed (a tus chunk checksum).
    ChecksumMismatch,
    /// The caller's storage quota would be exceeded.
    QuotaExceeded,
    /// The caller used up a budget (queued jobs, uncached RPC calls); retry later.
    TooManyRequests,
    /// The server's disk is full (or below its configured free-space minimum).
    InsufficientStorage,
    Unauthorized,
    Forbidden,
    Unavailable,
    /// A service we depend on (a chain RPC node) answered with something unusable.
    Upstream,
    Internal,
}

/// Implemented by every actor's error enum.
pub trait DomainError: std::error::Error {
    fn kind(&self) -> ErrorKind;
    /// Stable `snake_case` code clients can match on.
    fn code(&self) -> &'static str;
    /// Seconds after which a [`ErrorKind::TooManyRequests`] refusal may be retried.
    fn retry_after_s(&self) -> Option<u64> {
        None
    }
}
