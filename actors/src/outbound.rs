//! The one place outbound HTTP clients are built: ownership RPC, alert webhooks, OTLP export.
//!
//! TLS is rustls with the aws-lc-rs provider (the stack `object_store` already compiles in), the
//! system's roots (the OS store, e.g. Debian's ca-certificates, which operators already manage)
//! plus the PEM certificates of `tls.extra_ca_file` for private endpoints. Plain `http://` stays
//! allowed. A server whose certificate chains to none of these is refused.

use std::{sync::Arc, time::Duration};

use rustls::{crypto::aws_lc_rs, ClientConfig, RootCertStore};
use rustls_pki_types::{pem::PemObject, CertificateDer};

use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("tls.extra_ca_file {path}: {reason}")]
    ExtraCa { path: String, reason: String },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("HTTP client: {0}")]
    Client(String),
}

/// Builds the clients; cheap to clone (the trust roots are shared).
#[derive(Clone)]
pub struct Outbound {
    tls: Arc<ClientConfig>,
    /// The extra CA file's contents, for clients built elsewhere (the S3 blob store).
    extra_ca_pem: Option<Arc<[u8]>>,
    /// How many roots the clients trust (reported by `streamgate check`).
    roots: usize,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

/// Makes aws-lc-rs the process's default rustls provider, for reqwest clients built without
/// [`Outbound`] (reqwest's rustls support is compiled without a provider of its own: building
/// such a client before this runs panics). Idempotent.
pub fn install_default_provider() {
    // Err means a provider is installed already, which is all we need.
    let _ = aws_lc_rs::default_provider().install_default();
}

impl Outbound {
    /// Loads the system's roots and `extra_ca_file` (if set). A missing or unreadable extra CA
    /// file is an error: the operator asked for it, so endpoints behind it would fail later.
    pub fn new(config: &TlsConfig) -> Result<Self, OutboundError> {
        install_default_provider();
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for error in &native.errors {
            tracing::warn!(%error, "cannot load some of the system's TLS roots");
        }
        roots.add_parsable_certificates(native.certs);
        let path = config.extra_ca_file.trim();
        let mut extra_ca_pem = None;
        if !path.is_empty() {
            let extra_error = |reason: String| OutboundError::ExtraCa {
                path: path.to_string(),
                reason,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| extra_error(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| extra_error(e.to_string()))?;
            if certs.is_empty() {
                return Err(extra_error("holds no PEM certificate".into()));
            }
            let pem = std::fs::read(path).map_err(|e| extra_error(e.to_string()))?;
            extra_ca_pem = Some(Arc::from(pem));
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| extra_error(format!("not a usable CA certificate: {e}")))?;
            }
        }
        if roots.is_empty() {
            tracing::warn!("no trusted TLS roots: every https:// endpoint will be refused");
        }
        let count = roots.len();
        let tls = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| OutboundError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            tls: Arc::new(tls),
            extra_ca_pem,
            roots: count,
        })
    }

    /// A client whose every request must finish within `timeout`.
    pub fn client(&self, timeout: Duration) -> Result<reqwest::Client, OutboundError> {
        reqwest::Client::builder()
            .use_preconfigured_tls(ClientConfig::clone(&self.tls))
            .timeout(timeout)
            .build()
            .map_err(|e| OutboundError::Client(e.to_string()))
    }

    /// `tls.extra_ca_file`'s PEM text, if one is configured.
    pub fn extra_ca_pem(&self) -> Option<&[u8]> {
        self.extra_ca_pem.as_deref()
    }

    pub fn trusted_roots(&self) -> usize {
        self.roots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_or_empty_extra_ca_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let config = TlsConfig {
            extra_ca_file: missing.display().to_string(),
        };
        assert!(matches!(
            Outbound::new(&config),
            Err(OutboundError::ExtraCa { .. })
        ));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let config = TlsConfig {
            extra_ca_file: empty.display().to_string(),
        };
        assert!(matches!(
            Outbound::new(&config),
            Err(OutboundError::ExtraCa { .. })
        ));
    }
}
