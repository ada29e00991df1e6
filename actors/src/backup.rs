//! Backups of an install and their restore.
//!
//! A backup is a directory: `manifest.json`, `db/` (a copy of every record, itself a store),
//! `partials/` (unfinished resumable uploads) and `blobs/` (one file per blob key). Records are
//! copied first, then partials, then blobs: blobs are written before the records that name
//! them and never change once visible, so every blob a copied record references is still there
//! when the blobs are copied (unless its media was deleted meanwhile). What a copy taken from a
//! running server can show — a job `running`, a tus upload mid-PATCH, a quota counter a record
//! apart — is what a crash leaves, and start-up recovery handles it (re-queue, the partial's
//! length is its offset, quota recount). The search index is rebuilt from the records at start.
//! With S3 blobs the backup names the bucket instead of copying it, unless asked to.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use actix::{
    Actor, ActorFutureExt, Context, Handler, Message, ResponseActFuture, Supervised, WrapFuture,
};
use serde::{Deserialize, Serialize};

use crate::{
    blobs::BlobStore,
    config::BlobBackend,
    error::{DomainError, ErrorKind},
    store::SharedRepo,
};

pub const MANIFEST: &str = "manifest.json";
const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("a backup is being taken already")]
    Running,
    #[error("{0} is not empty: restore only into an empty data directory")]
    NotEmpty(String),
    #[error("{0} exists already: back up into a new directory")]
    Exists(String),
    #[error("{0} is not a StreamGate backup (no readable manifest.json)")]
    NotABackup(String),
    #[error("backup format {0} is not one this version restores")]
    Format(u32),
    #[error("records: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("blobs: {0}")]
    Blobs(#[from] crate::blobs::BlobError),
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
}

impl DomainError for BackupError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Running | Self::NotEmpty(_) => ErrorKind::Conflict,
            Self::NotABackup(_) | Self::Format(_) => ErrorKind::Invalid,
            // Internal: through the server's route it would be a name collision, and its
            // message names a server path.
            Self::Exists(_) => ErrorKind::Internal,
            Self::Store(_) | Self::Blobs(_) | Self::Io { .. } => ErrorKind::Unavailable,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::Running => "backup_running",
            Self::NotEmpty(_) => "data_dir_not_empty",
            Self::Exists(_) => "backup_exists",
            Self::NotABackup(_) => "not_a_backup",
            Self::Format(_) => "backup_format_unsupported",
            Self::Store(_) => "store_unavailable",
            Self::Blobs(_) => "blob_store_unavailable",
            Self::Io { .. } => "backup_io_failed",
        }
    }
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |error| BackupError::Io {
        path: path.display().to_string(),
        reason: error.to_string(),
    }
}

/// What a backup holds; written last, so a backup without one is incomplete.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The StreamGate version that wrote it.
    pub version: String,
    pub created_at: String,
    /// Where the backed-up install kept its blobs.
    pub blobs: String,
    /// The bucket of an S3 install (its blobs are referenced there unless copied).
    pub s3_bucket: String,
    pub s3_endpoint: String,
    /// Whether `blobs/` holds the blobs (always for local blobs).
    pub blobs_included: bool,
    pub records: u64,
    pub blob_files: u64,
    pub blob_bytes: u64,
    pub partial_files: u64,
}

/// Reports progress: (stage, done, total); `total` 0 when unknown.
pub type Progress = Arc<dyn Fn(&str, u64, u64) + Send + Sync>;

/// What to back up and how.
pub struct BackupPlan {
    pub repo: SharedRepo,
    pub blobs: BlobStore,
    pub backend: BlobBackend,
    pub s3_bucket: String,
    pub s3_endpoint: String,
    /// The install's partial uploads (`upload.partial_dir`, else `data_dir/partials`).
    pub partial_dir: PathBuf,
    pub out: PathBuf,
    /// Copy S3 blobs too (local blobs are always copied).
    pub with_blobs: bool,
}

pub async fn backup(plan: BackupPlan, progress: Progress) -> Result<Manifest, BackupError> {
    let out = plan.out.clone();
    if out.exists() {
        return Err(BackupError::Exists(out.display().to_string()));
    }
    std::fs::create_dir_all(&out).map_err(io_error(&out))?;

    let repo = plan.repo.clone();
    let db = out.join("db");
    let report = progress.clone();
    let records = tokio::task::spawn_blocking(move || {
        let total = repo.record_count();
        repo.copy_to(&db, &mut |done| report("records", done, total))
    })
    .await
    .map_err(|e| crate::store::StoreError::Join(e.to_string()))??;

    let partials_from = plan.partial_dir.clone();
    let partials_to = out.join("partials");
    let partial_files =
        tokio::task::spawn_blocking(move || copy_tree(&partials_from, &partials_to))
            .await
            .map_err(|e| crate::store::StoreError::Join(e.to_string()))??
            .0;

    let blobs_included = plan.backend == BlobBackend::Local || plan.with_blobs;
    let (mut blob_files, mut blob_bytes) = (0, 0);
    if blobs_included {
        let keys: Vec<String> = plan
            .blobs
            .list("")
            .await?
            .into_iter()
            .filter(|key| !key.starts_with('.'))
            .collect();
        let total = keys.len() as u64;
        for key in keys {
            let target = out.join("blobs").join(&key);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(io_error(parent))?;
            }
            match plan.blobs.download_to(&key, &target).await {
                Ok(bytes) => {
                    blob_files += 1;
                    blob_bytes += bytes;
                }
                // Deleted since it was listed (its media went): nothing references it now.
                Err(crate::blobs::BlobError::NotFound(_)) => {
                    let _ = std::fs::remove_file(&target);
                }
                Err(error) => return Err(error.into()),
            }
            progress("blobs", blob_files, total);
        }
    }

    let manifest = Manifest {
        format: FORMAT,
        version: env!("CARGO_PKG_VERSION").to_string(),
        created_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        blobs: match plan.backend {
            BlobBackend::Local => "local",
            BlobBackend::S3 => "s3",
        }
        .to_string(),
        s3_bucket: plan.s3_bucket,
        s3_endpoint: plan.s3_endpoint,
        blobs_included,
        records,
        blob_files,
        blob_bytes,
        partial_files,
    };
    write_manifest(&out, &manifest)?;
    Ok(manifest)
}

fn write_manifest(out: &Path, manifest: &Manifest) -> Result<(), BackupError> {
    let path = out.join(MANIFEST);
    let text = serde_json::to_vec_pretty(manifest).map_err(|e| BackupError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let file = std::fs::File::create(&path).map_err(io_error(&path))?;
    std::io::Write::write_all(&mut &file, &text).map_err(io_error(&path))?;
    file.sync_all().map_err(io_error(&path))
}

/// What a running server needs to back itself up (`POST /api/v1/admin/backups`).
#[derive(Clone)]
pub struct BackupDeps {
    pub repo: SharedRepo,
    pub blobs: BlobStore,
    pub backend: BlobBackend,
    pub s3_bucket: String,
    pub s3_endpoint: String,
    pub data_dir: PathBuf,
    /// Where partial uploads live (`upload.partial_dir`).
    pub partial_dir: PathBuf,
}

/// Takes backups of the running server into `data_dir/backups/<name>`, one at a time.
pub struct BackupActor {
    deps: BackupDeps,
    running: bool,
}

impl BackupActor {
    pub fn new(deps: BackupDeps) -> Self {
        Self {
            deps,
            running: false,
        }
    }
}

impl Actor for BackupActor {
    type Context = Context<Self>;
}

impl Supervised for BackupActor {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.running = false;
    }
}

crate::supervise::supervised_basics!(BackupActor);

/// Answers the new backup's directory name (under `data_dir/backups`) and its manifest.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<(String, Manifest), BackupError>")]
pub struct TakeBackup {
    pub with_blobs: bool,
}

impl Handler<TakeBackup> for BackupActor {
    type Result = ResponseActFuture<Self, Result<(String, Manifest), BackupError>>;

    fn handle(&mut self, message: TakeBackup, _: &mut Self::Context) -> Self::Result {
        if self.running {
            return Box::pin(actix::fut::ready(Err(BackupError::Running)));
        }
        self.running = true;
        let now = time::OffsetDateTime::now_utc();
        let name = format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z-{}",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let deps = self.deps.clone();
        let plan = BackupPlan {
            repo: deps.repo,
            blobs: deps.blobs,
            backend: deps.backend,
            s3_bucket: deps.s3_bucket,
            s3_endpoint: deps.s3_endpoint,
            out: deps.data_dir.join("backups").join(&name),
            partial_dir: deps.partial_dir,
            with_blobs: message.with_blobs,
        };
        Box::pin(
            async move {
                let manifest = backup(plan, Arc::new(|_: &str, _: u64, _: u64| {})).await?;
                tracing::info!(%name, records = manifest.records, blobs = manifest.blob_files, "backup taken");
                Ok((name, manifest))
            }
            .into_actor(self)
            .map(|done, actor, _| {
                actor.running = false;
                done
            }),
        )
    }
}

/// Reads and checks a backup's manifest.
pub fn read_manifest(from: &Path) -> Result<Manifest, BackupError> {
    let not_a_backup = || BackupError::NotABackup(from.display().to_string());
    let text = std::fs::read(from.join(MANIFEST)).map_err(|_| not_a_backup())?;
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|_| not_a_backup())?;
    if manifest.format != FORMAT {
        return Err(BackupError::Format(manifest.format));
    }
    Ok(manifest)
}

/// True when `dir` is missing or holds nothing.
pub fn is_empty_dir(dir: &Path) -> Result<bool, BackupError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(error) => Err(io_error(dir)(error)),
    }
}

/// Restores `from` into the empty `data_dir` (partial uploads into `partial_dir`). Blobs in the
/// backup go to the store `blobs` opens
/// (the target install's, opened only once the directory is known to be empty); a backup that
/// references S3 blobs restores records only.
pub async fn restore(
    from: &Path,
    data_dir: &Path,
    partial_dir: &Path,
    blobs: impl FnOnce() -> Result<BlobStore, String>,
    progress: Progress,
) -> Result<Manifest, BackupError> {
    if !is_empty_dir(data_dir)? {
        return Err(BackupError::NotEmpty(data_dir.display().to_string()));
    }
    let manifest = read_manifest(from)?;
    let (source, target) = (from.to_path_buf(), data_dir.to_path_buf());
    let partials = partial_dir.to_path_buf();
    let report = progress.clone();
    let records = manifest.records;
    tokio::task::spawn_blocking(move || -> Result<(), BackupError> {
        report("records", 0, records);
        copy_tree(&source.join("db"), &target.join("db"))?;
        report("records", records, records);
        copy_tree(&source.join("partials"), &partials)?;
        Ok(())
    })
    .await
    .map_err(|e| crate::store::StoreError::Join(e.to_string()))??;
    if manifest.blobs_included {
        let blobs = blobs().map_err(|reason| BackupError::Io {
            path: "the blob store".into(),
            reason,
        })?;
        let root = from.join("blobs");
        let files = files_under(&root)?;
        let total = files.len() as u64;
        for (done, file) in files.iter().enumerate() {
            let key = file
                .strip_prefix(&root)
                .map_err(|e| BackupError::Io {
                    path: file.display().to_string(),
                    reason: e.to_string(),
                })?
                .to_string_lossy()
                .into_owned();
            blobs.put_file(&key, file).await?;
            progress("blobs", done as u64 + 1, total);
        }
    }
    Ok(manifest)
}

/// Every file under `root` (none when it is missing).
fn files_under(root: &Path) -> Result<Vec<PathBuf>, BackupError> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(io_error(&dir)(error)),
        };
        for entry in entries {
            let entry = entry.map_err(io_error(&dir))?;
            let kind = entry.file_type().map_err(io_error(&dir))?;
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Copies the files under `from` to the same places under `to`, each fsynced; answers (files,
/// bytes). A missing `from` copies nothing.
fn copy_tree(from: &Path, to: &Path) -> Result<(u64, u64), BackupError> {
    let (mut files, mut bytes) = (0, 0);
    for file in files_under(from)? {
        let relative = file.strip_prefix(from).map_err(|e| BackupError::Io {
            path: file.display().to_string(),
            reason: e.to_string(),
        })?;
        let target = to.join(relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io_error(parent))?;
        }
        bytes += std::fs::copy(&file, &target).map_err(io_error(&file))?;
        std::fs::File::open(&target)
            .and_then(|f| f.sync_all())
            .map_err(io_error(&target))?;
        files += 1;
    }
    Ok((files, bytes))
}
