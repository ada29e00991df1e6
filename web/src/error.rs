//! `ApiError`: the one place that maps domain error kinds to HTTP statuses.
//!
//! Every error leaves as `{"code": "snake_case", "message": "..."}`. Server-side failures keep
//! their detail in the log and tell the client only what it can act on.

use actix_web::{
    body::BoxBody,
    http::{header, StatusCode},
    HttpResponse, ResponseError,
};
use serde::Serialize;
use streamgate_actors::{DomainError, ErrorKind};

/// The code of [`ApiError::body_timeout`].
pub const BODY_TIMEOUT: &str = "body_timeout";

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Sent as `Retry-After` (seconds).
    pub retry_after_s: Option<u64>,
}

#[derive(Serialize)]
pub struct ErrorBody<'a> {
    pub code: &'a str,
    pub message: &'a str,
}

/// The status table.
pub fn status_for(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::UnsupportedMedia => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorKind::Gone => StatusCode::GONE,
        ErrorKind::Locked => StatusCode::LOCKED,
        // tus checksum extension: "460 Checksum Mismatch".
        ErrorKind::ChecksumMismatch => StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST),
        ErrorKind::QuotaExceeded | ErrorKind::InsufficientStorage => {
            StatusCode::INSUFFICIENT_STORAGE
        }
        ErrorKind::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Upstream => StatusCode::BAD_GATEWAY,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// A request body that sent nothing for `server.body_timeout_s`
    /// ([`crate::middleware::body_stall`]).
    pub fn body_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            BODY_TIMEOUT,
            "the request body sent nothing for too long; send the request again \
             (a tus upload continues from its Upload-Offset)",
        )
    }

    /// [`ApiError::body_timeout`] if reading the body failed because it went silent, else
    /// `otherwise` (the route's own error for a body it could not read).
    pub fn unless_body_timeout(
        error: &actix_web::error::PayloadError,
        otherwise: impl FnOnce() -> Self,
    ) -> Self {
        if crate::middleware::body_stall::timed_out(error) {
            Self::body_timeout()
        } else {
            otherwise()
        }
    }

    /// A JSON body that could not be read or parsed.
    pub fn from_json(error: &actix_web::error::JsonPayloadError) -> Self {
        let invalid = || Self::bad_request("invalid_json", error.to_string());
        match error {
            actix_web::error::JsonPayloadError::Payload(payload) => {
                Self::unless_body_timeout(payload, invalid)
            }
            _ => invalid(),
        }
    }

    /// An actor's mailbox is closed or full: the service is briefly unable to answer.
    pub fn mailbox(error: actix::MailboxError) -> Self {
        tracing::error!(%error, "actor did not answer");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "actor_unavailable",
            "the service is restarting a component; retry shortly",
        )
    }

    pub fn domain<E: DomainError>(error: &E) -> Self {
        let status = status_for(error.kind());
        let message = if status.is_server_error() {
            tracing::error!(code = error.code(), %error, "request failed");
            match error.kind() {
                ErrorKind::Unavailable if error.code().starts_with("rpc_") => {
                    "the chain's RPC node is unavailable, so ownership cannot be checked; retry shortly".to_string()
                }
                ErrorKind::Unavailable => {
                    "a storage component is unavailable; retry shortly".to_string()
                }
                // Both say what the client can act on, and neither carries a detail to hide.
                ErrorKind::QuotaExceeded => error.to_string(),
                ErrorKind::InsufficientStorage => {
                    "the server's disk is full; nothing was stored".to_string()
                }
                ErrorKind::Upstream => {
                    "the chain's RPC node gave an unusable answer; retry shortly".to_string()
                }
                _ => "internal error".to_string(),
            }
        } else {
            error.to_string()
        };
        Self {
            retry_after_s: error.retry_after_s(),
            ..Self::new(status, error.code(), message)
        }
    }

    pub fn body(code: &str, message: &str) -> String {
        serde_json::to_string(&ErrorBody { code, message })
            .unwrap_or_else(|_| r#"{"code":"internal","message":"internal error"}"#.to_string())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse<BoxBody> {
        let mut response = HttpResponse::build(self.status);
        response.insert_header((header::CONTENT_TYPE, "application/json"));
        if let Some(seconds) = self.retry_after_s {
            response.insert_header((header::RETRY_AFTER, seconds));
        }
        response.body(Self::body(self.code, &self.message))
    }
}

macro_rules! from_domain {
    ($($error:ty),+ $(,)?) => {$(
        impl From<$error> for ApiError {
            fn from(error: $error) -> Self {
                Self::domain(&error)
            }
        }
    )+};
}

from_domain!(
    streamgate_actors::upload::UploadError,
    streamgate_actors::metadata::MetadataError,
    streamgate_actors::transcode::TranscodeError,
    streamgate_actors::auth::AuthError,
    streamgate_actors::monitor::MonitorError,
    streamgate_actors::store::StoreError,
    streamgate_actors::backup::BackupError,
    streamgate_actors::webhooks::WebhookError,
);

impl From<actix::MailboxError> for ApiError {
    fn from(error: actix::MailboxError) -> Self {
        Self::mailbox(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_are_4xx_and_server_errors_hide_detail() {
        let error = ApiError::from(streamgate_actors::upload::UploadError::NotAVideo);
        assert_eq!(error.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(error.code, "unsupported_container");
        let error = ApiError::from(streamgate_actors::metadata::MetadataError::Store(
            streamgate_actors::store::StoreError::Backend("disk on fire at /secret/path".into()),
        ));
        assert_eq!(error.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!error.message.contains("/secret/path"));
    }
}
