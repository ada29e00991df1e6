//! Expiry sweeps and start-up recovery of tus uploads: cut-off checksummed PATCHes are cut
//! back, complete uploads that never finished are finished, expired ones removed with their
//! bytes (and their quota), finished records dropped after `upload.finished_retention_s`.

use super::*;

impl Handler<SweepExpiredUploads> for UploadActor {
    type Result = ResponseFuture<Result<usize, UploadError>>;

    fn handle(&mut self, _: SweepExpiredUploads, _: &mut Self::Context) -> Self::Result {
        let deps = self.tus.clone();
        let expired = self.uploads.with_label_values(&[upload_outcome::EXPIRED]);
        let pruned_counter = self.tus_pruned.clone();
        let expiry = self.expiry_window();
        let retention = Duration::from_secs(self.config.finished_retention_s);
        let quota = self.config.quota_bytes;
        Box::pin(async move {
            let now = OffsetDateTime::now_utc();
            let (mut swept, mut pruned) = (0, 0);
            for upload in all_uploads(&deps.repo).await? {
                if upload.state == TusState::Finished {
                    // The PATCH that completed the upload renewed `expires_at`, so it finished
                    // about `expiry` before it. Its bytes are the media's now: only the record goes.
                    if upload.expires_at - expiry + retention <= now {
                        let Ok(_lock) = deps.lock(&upload.id) else {
                            continue;
                        };
                        let id = upload.id.clone();
                        blocking(&deps.repo, move |repo| repo.delete_tus_upload(&id)).await?;
                        deps.records.remove(&upload.id);
                        let (dir, id) = (deps.partial_dir.clone(), upload.id.clone());
                        run_blocking(move || sink::remove_lock_file(&dir, &id)).await?;
                        pruned_counter.inc();
                        pruned += 1;
                    }
                    continue;
                }
                if upload.state != TusState::Receiving || upload.expires_at > now {
                    continue;
                }
                // A PATCH in progress renews the expiry as it writes.
                let Ok(_lock) = deps.lock(&upload.id) else {
                    continue;
                };
                // Read again under the lock: another node sharing the partial directory may
                // have renewed, finished or swept it since the listing.
                let id = upload.id.clone();
                let Some(upload) =
                    blocking(&deps.repo, move |repo| repo.get_tus_upload(&id)).await?
                else {
                    continue;
                };
                if upload.state != TusState::Receiving {
                    continue;
                }
                let upload = observe(&deps.partial_dir, upload, expiry).await?;
                if upload.expires_at > now {
                    continue;
                }
                remove_upload(&deps, &upload.id).await?;
                release(&deps.repo, &upload.owner, held_bytes(&upload), quota).await?;
                expired.inc();
                swept += 1;
            }
            if swept > 0 || pruned > 0 {
                tracing::info!(
                    swept,
                    pruned,
                    "deleted expired uploads and old finished records"
                );
            }
            Ok(swept)
        })
    }
}

impl Handler<RecoverTusUploads> for UploadActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: RecoverTusUploads, _: &mut Self::Context) -> Self::Result {
        let deps = self.tus.clone();
        let finisher = self.finisher();
        Box::pin(async move {
            let uploads = match all_uploads(&deps.repo).await {
                Ok(uploads) => uploads,
                Err(error) => {
                    tracing::error!(%error, "cannot list resumable uploads to recover");
                    return;
                }
            };
            for upload in uploads {
                let Ok(_lock) = deps.lock(&upload.id) else {
                    continue;
                };
                let upload_id = upload.id.clone();
                let recovered = match upload.state {
                    TusState::Receiving => recover_receiving(&deps, &finisher, upload).await,
                    TusState::Finishing => finisher
                        .finish(upload, None, "system:recovery".into())
                        .await
                        .map(drop),
                    TusState::Finished => Ok(()),
                };
                if let Err(error) = recovered {
                    tracing::error!(%error, %upload_id, "could not recover upload");
                }
            }
        })
    }
}

/// Cuts an unverified PATCH off the partial file, and finishes an upload whose last PATCH was
/// written whole but died before its reply finished it (the client's HEAD would otherwise see a
/// complete offset on an upload that never becomes media).
async fn recover_receiving(
    deps: &TusDeps,
    finisher: &Finisher,
    mut upload: TusUpload,
) -> Result<(), UploadError> {
    let path = partial_path(&deps.partial_dir, &upload.id);
    let (cut_to, sniffed) = (upload.unverified_from, upload.container.is_some());
    let found = run_blocking(move || {
        let mut file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
        {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        cut_back(&file, cut_to)?;
        let length = file.metadata()?.len();
        let mut head = Vec::new();
        if !sniffed {
            (&mut file)
                .take(SNIFF_BYTES as u64)
                .read_to_end(&mut head)?;
        }
        Ok(Some((file, length, (!sniffed).then_some(head))))
    })
    .await?;
    let Some((file, length, head)) = found else {
        return Ok(());
    };
    upload.offset = length;
    if upload.unverified_from.take().is_some() {
        save(deps, &upload).await?;
    }
    if upload.length != Some(length) {
        return Ok(());
    }
    if let Some(head) = head {
        // Not a video: left to expire, as the PATCH would have refused it.
        let Some(container) = sniff_container(&head) else {
            return Ok(());
        };
        upload.container = Some(container.as_str().to_string());
    }
    run_blocking(move || file.sync_data()).await?;
    finisher
        .finish(upload, None, "system:recovery".into())
        .await
        .map(drop)
}
