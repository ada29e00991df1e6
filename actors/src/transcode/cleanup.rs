//! The cleanup job: removes what nothing refers to any more.
//!
//! - blobs under `media/{id}/` whose media record is gone (a crash between deleting a record and
//!   its files, or a transcode that published for a media deleted meanwhile);
//! - source blobs under `uploads/{id}/` that no media record points at;
//! - partial blob writes abandoned by a crash (`object_store` stages local writes as
//!   `{key}#{n}`; they are invisible to listings and would stay forever);
//! - job work directories of jobs that are not running.
//!
//! Invariant: only things older than `transcode.cleanup_min_age_s` are removed, so a cleanup
//! never races an upload that has stored its blob but not yet its record, or a starting job.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use time::OffsetDateTime;

use super::ffmpeg::RunFailure;
use crate::{
    blobs::BlobStore,
    model::{JobId, MediaId},
    store::{blocking, SharedRepo},
};

/// What one cleanup removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanupReport {
    pub orphaned_blobs: u64,
    pub partial_writes: u64,
    pub stale_work_dirs: u64,
}

impl std::fmt::Display for CleanupReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "removed {} orphaned blobs, {} abandoned partial writes, {} stale work directories",
            self.orphaned_blobs, self.partial_writes, self.stale_work_dirs
        )
    }
}

pub struct Cleanup {
    pub repo: SharedRepo,
    pub blobs: BlobStore,
    pub work_dir: PathBuf,
    /// Jobs running right now: their work directories stay.
    pub running: HashSet<JobId>,
    pub min_age: Duration,
}

impl Cleanup {
    pub async fn run(self) -> Result<CleanupReport, RunFailure> {
        let mut report = CleanupReport::default();
        let cutoff = OffsetDateTime::now_utc().unix_timestamp()
            - i64::try_from(self.min_age.as_secs()).unwrap_or(i64::MAX);

        let (media_ids, source_keys) = blocking(&self.repo, |repo| {
            let media = repo.list_media(None, usize::MAX)?;
            Ok((
                media
                    .iter()
                    .map(|m| m.id.to_string())
                    .collect::<HashSet<_>>(),
                media
                    .into_iter()
                    .map(|m| m.source_key)
                    .collect::<HashSet<_>>(),
            ))
        })
        .await
        .map_err(|e| RunFailure::transient(e.to_string()))?;

        let listed = |prefix: &'static str| {
            let blobs = self.blobs.clone();
            async move {
                blobs
                    .list_with_age(prefix)
                    .await
                    .map_err(|e| RunFailure::transient(e.to_string()))
            }
        };
        for (key, modified) in listed("media").await? {
            let owner = key.split('/').nth(1).unwrap_or_default();
            let orphaned = MediaId::parse(owner).is_none() || !media_ids.contains(owner);
            if orphaned && modified <= cutoff {
                self.delete(&key).await?;
                report.orphaned_blobs += 1;
            }
        }
        for (key, modified) in listed("uploads").await? {
            if !source_keys.contains(&key) && modified <= cutoff {
                self.delete(&key).await?;
                report.orphaned_blobs += 1;
            }
        }

        let blob_root = self.blobs.local_path("");
        let work_dir = self.work_dir.clone();
        let running = self.running.clone();
        let min_age = self.min_age;
        let (partial_writes, stale_work_dirs) = tokio::task::spawn_blocking(move || {
            // Only where uploads and job output are written; other writers (the health probe)
            // have their own short-lived staged files.
            let partial = blob_root
                .map(|root| {
                    ["uploads", "media"]
                        .iter()
                        .map(|area| remove_partial_writes(&root.join(area), min_age))
                        .sum()
                })
                .unwrap_or(0);
            (
                partial,
                remove_stale_work_dirs(&work_dir, &running, min_age),
            )
        })
        .await
        .map_err(|e| RunFailure::transient(format!("cleanup thread failed: {e}")))?;
        report.partial_writes = partial_writes;
        report.stale_work_dirs = stale_work_dirs;
        Ok(report)
    }

    async fn delete(&self, key: &str) -> Result<(), RunFailure> {
        tracing::info!(key, "cleanup: removing orphaned blob");
        self.blobs
            .delete(key)
            .await
            .map_err(|e| RunFailure::transient(e.to_string()))
    }
}

fn old_enough(path: &Path, min_age: Duration) -> bool {
    std::fs::symlink_metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
        .and_then(|modified| SystemTime::now().duration_since(modified).ok())
        .is_some_and(|age| age >= min_age)
}

/// Staged local writes (`{key}#{n}`) left by a crash mid-write.
fn remove_partial_writes(root: &Path, min_age: Duration) -> u64 {
    let mut removed = 0;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(path);
            } else if entry.file_name().to_string_lossy().contains('#')
                && old_enough(&path, min_age)
                && std::fs::remove_file(&path).is_ok()
            {
                tracing::info!(path = %path.display(), "cleanup: removed abandoned partial write");
                removed += 1;
            }
        }
    }
    removed
}

fn remove_stale_work_dirs(work_dir: &Path, running: &HashSet<JobId>, min_age: Duration) -> u64 {
    let Ok(entries) = std::fs::read_dir(work_dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let in_use = JobId::parse(&name).is_some_and(|id| running.contains(&id));
        let path = entry.path();
        if !in_use && old_enough(&path, min_age) {
            let gone = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if gone.is_ok() {
                tracing::info!(path = %path.display(), "cleanup: removed stale work directory");
                removed += 1;
            }
        }
    }
    removed
}
