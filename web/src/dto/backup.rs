//! The JSON shape of `POST /api/v1/admin/backups`' answer.

use serde::Serialize;
use streamgate_actors::backup::Manifest;

/// A backup the server took: its name under the data directory's `backups/` (never a path).
#[derive(Serialize)]
pub struct BackupDto {
    pub name: String,
    pub created_at: String,
    pub records: u64,
    pub partial_files: u64,
    pub blobs_included: bool,
    pub blob_files: u64,
    pub blob_bytes: u64,
}

impl BackupDto {
    pub fn new(name: String, manifest: &Manifest) -> Self {
        Self {
            name,
            created_at: manifest.created_at.clone(),
            records: manifest.records,
            partial_files: manifest.partial_files,
            blobs_included: manifest.blobs_included,
            blob_files: manifest.blob_files,
            blob_bytes: manifest.blob_bytes,
        }
    }
}
