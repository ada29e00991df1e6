//! The configuration sections the domain owns. Defaults live in `config/default.toml` (the root
//! crate's base layer), not here, so there is exactly one place that documents them.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    pub min_free_disk_mb: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadConfig {
    pub max_size_bytes: u64,
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
    pub cleanup_min_age_s: u64,
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
        if self.monitor.sample_interval_ms < 100 {
            return Err("monitor.sample_interval_ms must be at least 100".into());
        }
        Ok(())
    }
}
