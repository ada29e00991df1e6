//! The configuration sections the domain owns. Defaults live in `config/default.toml` (the root
//! crate's base layer), not here, so there is exactly one place that documents them.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    pub min_free_disk_mb: u64,
    /// Where blobs live: `local` (under `data_dir/blobs`) or `s3` (the `[s3]` section).
    pub blobs: BlobBackend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobBackend {
    Local,
    S3,
}

/// An S3-compatible object store (AWS, MinIO, Ceph, moto, …).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    pub allow_http: bool,
}

impl std::fmt::Debug for S3Config {
    // Keeps the secret out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadConfig {
    pub max_size_bytes: u64,
    /// Bytes one owner may hold in resumable uploads; 0 means no quota.
    pub quota_bytes: u64,
    /// Seconds an unfinished resumable upload lives after its last PATCH.
    pub expiry_s: u64,
    /// Seconds between sweeps that delete expired uploads.
    pub cleanup_interval_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rung {
    pub name: String,
    pub height: u32,
    pub video_bitrate_kbps: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranscodeConfig {
    pub ffmpeg_path: String,
    pub ffprobe_path: String,
    pub workers: usize,
    pub max_attempts: u32,
    pub retry_base_delay_ms: u64,
    pub segment_seconds: u32,
    pub x264_preset: String,
    pub audio_bitrate_kbps: u32,
    pub ladder: Vec<Rung>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub admin_token: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    pub sample_interval_ms: u64,
    pub ping_timeout_ms: u64,
}

/// Everything [`crate::start`] needs.
#[derive(Debug, Clone)]
pub struct ActorsConfig {
    pub storage: StorageConfig,
    pub s3: S3Config,
    pub upload: UploadConfig,
    pub transcode: TranscodeConfig,
    pub auth: AuthConfig,
    pub monitor: MonitorConfig,
}

impl ActorsConfig {
    /// Checks what serde cannot: ranges and relations between keys.
    pub fn validate(&self) -> Result<(), String> {
        if self.transcode.workers == 0 {
            return Err("transcode.workers must be at least 1".into());
        }
        if self.transcode.ladder.is_empty() {
            return Err("transcode.ladder must have at least one rung".into());
        }
        for rung in &self.transcode.ladder {
            if rung.height < 144 || rung.height % 2 != 0 {
                return Err(format!(
                    "transcode.ladder rung {:?}: height must be even and at least 144",
                    rung.name
                ));
            }
            if !crate::names::is_safe_name(&rung.name) {
                return Err(format!(
                    "transcode.ladder rung {:?}: name must match [A-Za-z0-9_-]{{1,32}}",
                    rung.name
                ));
            }
        }
        if self.transcode.segment_seconds == 0 {
            return Err("transcode.segment_seconds must be at least 1".into());
        }
        if self.upload.max_size_bytes == 0 {
            return Err("upload.max_size_bytes must be at least 1".into());
        }
        if self.upload.expiry_s == 0 || self.upload.cleanup_interval_s == 0 {
            return Err("upload.expiry_s and upload.cleanup_interval_s must be at least 1".into());
        }
        if self.storage.blobs == BlobBackend::S3 && self.s3.bucket.is_empty() {
            return Err("storage.blobs = \"s3\" needs s3.bucket".into());
        }
        if self.monitor.sample_interval_ms < 100 {
            return Err("monitor.sample_interval_ms must be at least 100".into());
        }
        Ok(())
    }
}
