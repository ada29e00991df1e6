//! Storage limits of uploads: the per-owner quota, held as reservations against the owner's
//! counter in the store, and the disk's free-space minimum.
//!
//! Invariant (with a quota set): an owner's counter is the sum of their media's source sizes,
//! their resumable uploads' lengths (the offset while the length is deferred) and what running
//! one-shot uploads and PATCHes have reserved. A reservation is made before the bytes are
//! stored, so two uploads can never both take the last of a quota. A crash can leave a
//! reservation behind; [`recount`] rebuilds every counter from the records at start-up.

use std::{collections::BTreeMap, path::Path};

use super::UploadError;
use crate::{
    model::TusState,
    store::{blocking, quota_owner, Repo, SharedRepo},
};

/// How much a growing upload reserves ahead of its bytes, so it writes the counter once per
/// this many bytes rather than once per chunk.
pub(crate) const RESERVE_AHEAD: u64 = 8 * 1024 * 1024;

/// Bytes held against one owner's quota by an upload in progress. Dropped while holding bytes
/// (a failed or abandoned upload), it gives them back.
pub(crate) struct Reservation {
    repo: SharedRepo,
    owner: String,
    /// 0: no quota, nothing is counted.
    quota: u64,
    held: u64,
}

impl Reservation {
    pub(crate) fn new(repo: SharedRepo, owner: &str, quota: u64) -> Self {
        Self {
            repo,
            owner: owner.to_string(),
            quota,
            held: 0,
        }
    }

    /// Makes sure at least `needed` bytes are held, taking up to `ahead` more in the same write.
    pub(crate) async fn cover(&mut self, needed: u64, ahead: u64) -> Result<(), UploadError> {
        if self.quota == 0 || needed <= self.held {
            return Ok(());
        }
        let min = needed - self.held;
        let max = min.saturating_add(ahead);
        let (owner, quota) = (self.owner.clone(), self.quota);
        let granted = blocking(&self.repo, move |repo| {
            repo.reserve_quota(&owner, min, max, quota)
        })
        .await?;
        match granted {
            Some(granted) => {
                self.held += granted;
                Ok(())
            }
            None => Err(UploadError::QuotaExceeded { quota }),
        }
    }

    /// Gives back what is held beyond `keep` bytes.
    pub(crate) async fn trim(&mut self, keep: u64) -> Result<(), UploadError> {
        let extra = self.held.saturating_sub(keep);
        if extra > 0 {
            let owner = self.owner.clone();
            blocking(&self.repo, move |repo| repo.release_quota(&owner, extra)).await?;
            self.held -= extra;
        }
        Ok(())
    }

    /// The held bytes now belong to something stored (a source file, an upload record).
    pub(crate) fn keep(mut self) {
        self.held = 0;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.held == 0 {
            return;
        }
        let (repo, owner, held) = (
            self.repo.clone(),
            std::mem::take(&mut self.owner),
            self.held,
        );
        let release = move || {
            if let Err(error) = repo.release_quota(&owner, held) {
                tracing::warn!(%error, owner, held, "quota reservation not released");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(release)),
            Err(_) => release(),
        }
    }
}

/// Gives `bytes` held by `owner` back (a terminated or expired upload, a refused record).
pub(crate) async fn release(
    repo: &SharedRepo,
    owner: &str,
    bytes: u64,
    quota: u64,
) -> Result<(), UploadError> {
    if quota == 0 || bytes == 0 {
        return Ok(());
    }
    let owner = owner.to_string();
    blocking(repo, move |repo| repo.release_quota(&owner, bytes)).await?;
    Ok(())
}

/// Refuses new bytes while the data directory's disk has less than `min_free` bytes free.
pub(crate) fn ensure_free_space(dir: &Path, min_free: u64) -> Result<(), UploadError> {
    let stats = rustix::fs::statvfs(dir)
        .map_err(|error| UploadError::Disk(format!("statvfs {}: {error}", dir.display())))?;
    let free = stats.f_bavail.saturating_mul(stats.f_frsize);
    if free < min_free {
        return Err(UploadError::DiskFull(format!(
            "{} MiB free, below the minimum of {} MiB",
            free >> 20,
            min_free >> 20
        )));
    }
    Ok(())
}

/// Rebuilds every owner's counter from the records: media sources, plus resumable uploads not
/// yet media (their length, or the partial file's size while the length is deferred). Runs at
/// start-up, before any upload, so it drops whatever a crash left reserved.
pub fn recount(repo: &dyn Repo, partial_dir: &Path) -> Result<(), UploadError> {
    const PAGE: usize = 1000;
    let mut usage: BTreeMap<String, u64> = BTreeMap::new();
    let mut after = None;
    loop {
        let page = repo.list_media(after.as_ref(), PAGE)?;
        for media in &page {
            *usage
                .entry(quota_owner(media.owner.as_deref()).to_string())
                .or_default() += media.size;
        }
        after = page.last().map(|media| media.id.clone());
        if page.len() < PAGE {
            break;
        }
    }
    let mut after = None;
    loop {
        let page = repo.list_tus_uploads(after.as_ref(), PAGE)?;
        for upload in &page {
            let held = match upload.state {
                TusState::Finished => 0,
                // Counted as media once its record exists.
                TusState::Finishing => match &upload.media_id {
                    Some(media_id) if repo.get_media(media_id)?.is_some() => 0,
                    _ => upload.length.unwrap_or(upload.offset),
                },
                TusState::Receiving => match upload.length {
                    Some(length) => length,
                    None => std::fs::metadata(super::tus::partial_path(partial_dir, &upload.id))
                        .map_or(0, |meta| meta.len()),
                },
            };
            *usage.entry(upload.owner.clone()).or_default() += held;
        }
        after = page.last().map(|upload| upload.id.clone());
        if page.len() < PAGE {
            break;
        }
    }
    repo.reset_quota_usage(&usage)?;
    Ok(())
}
