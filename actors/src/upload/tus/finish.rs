//! Finishing a complete tus upload exactly once: the `finishing` state first, then the blob,
//! the media record and the transcode job, each checked for before it is made again.

use super::*;
use crate::sniff::Container;

// ---------------------------------------------------------------------------------------------
// Finishing

/// What finishing an upload needs, cloned out of the actor.
pub(in crate::upload) struct Finisher {
    pub(in crate::upload) deps: TusDeps,
    pub(in crate::upload) blobs: BlobStore,
    pub(in crate::upload) metadata: actix::Addr<crate::metadata::MetadataActor>,
    pub(in crate::upload) transcode: actix::Addr<crate::transcode::TranscodeActor>,
    pub(in crate::upload) finished: prometheus::IntCounter,
    pub(in crate::upload) stored_bytes: prometheus::IntCounter,
    pub(in crate::upload) duration: prometheus::Histogram,
    pub(in crate::upload) audit: crate::audit::AuditLog,
}

impl Finisher {
    /// Turns a complete upload into a source blob, a media record and one queued job. Safe to
    /// run again on an upload left `finishing` by a crash: every step checks what exists.
    pub(in crate::upload) async fn finish(
        &self,
        mut upload: TusUpload,
        whole: Option<Sha256>,
        caller: String,
    ) -> Result<TusUpload, UploadError> {
        let partial = partial_path(&self.deps.partial_dir, &upload.id);
        let resumed = upload.state == TusState::Finishing;
        if !resumed {
            let sha256 = match whole {
                Some(hasher) => hex::encode(hasher.finalize()),
                None => hash_file(partial.clone()).await?,
            };
            upload.state = TusState::Finishing;
            upload.sha256 = Some(sha256);
            upload.media_id = Some(MediaId::new());
            save(&self.deps, &upload).await?;
        }
        let media_id = upload
            .media_id
            .clone()
            .ok_or_else(|| UploadError::Disk("finishing upload has no media id".into()))?;
        let key = BlobStore::source_key(&upload.id);
        if tokio::fs::try_exists(&partial).await.map_err(io_error)? {
            self.blobs.adopt_file(&key, &partial).await?;
        } else if !self.blobs.exists(&key).await? {
            return Err(UploadError::Disk(format!(
                "upload {} lost its bytes before finishing",
                upload.id
            )));
        }
        let exists = resumed && self.media_exists(&media_id).await?;
        if !exists {
            let metadata = &upload.metadata;
            let mut media = media_record(
                media_id.clone(),
                &crate::upload::ReceivedFile {
                    upload_id: upload.id.clone(),
                    key,
                    filename: metadata.filename.clone(),
                    container: upload
                        .container
                        .as_deref()
                        .and_then(Container::parse)
                        .map_or("", Container::as_str),
                    size: upload.offset,
                    sha256: upload.sha256.clone().unwrap_or_default(),
                },
                metadata.title.clone(),
                metadata.description.clone(),
                metadata.tags.clone(),
                owner_wallet(&upload.owner),
            );
            media.visibility = metadata.visibility.unwrap_or_default();
            self.metadata
                .send(CreateMedia {
                    media,
                    gate: metadata.gate.clone(),
                })
                .await
                .map_err(|_| UploadError::Mailbox("metadata"))??;
        }
        if !(resumed && self.job_exists(&media_id).await?) {
            self.transcode
                .send(SubmitJob {
                    kind: JobKind::Transcode,
                    media_id: media_id.clone(),
                    priority: 5,
                    caller: caller.clone(),
                    trace_id: None,
                    owner_cap: false,
                })
                .await
                .map_err(|_| UploadError::Mailbox("transcode"))??;
        }
        upload.state = TusState::Finished;
        save(&self.deps, &upload).await?;
        self.finished.inc();
        self.stored_bytes.inc_by(upload.offset);
        let took = OffsetDateTime::now_utc() - upload.created_at;
        self.duration.observe(took.as_seconds_f64().max(0.0));
        self.audit
            .record(AuditEvent::ok(
                action::UPLOAD_FINISH,
                caller,
                Some(media_id.to_string()),
            ))
            .await;
        Ok(upload)
    }

    pub(in crate::upload) async fn media_exists(
        &self,
        media_id: &MediaId,
    ) -> Result<bool, UploadError> {
        let found = self
            .metadata
            .send(GetMedia {
                media_id: media_id.clone(),
            })
            .await
            .map_err(|_| UploadError::Mailbox("metadata"))?;
        match found {
            Ok(_) => Ok(true),
            Err(MetadataError::NotFound(_)) => Ok(false),
            Err(other) => Err(other.into()),
        }
    }

    /// Whether the media already has a job; only on the rare recovery path.
    pub(in crate::upload) async fn job_exists(
        &self,
        media_id: &MediaId,
    ) -> Result<bool, UploadError> {
        let jobs = self
            .transcode
            .send(ListJobs {
                state: None,
                media_id: Some(media_id.clone()),
                owner: None,
                after: None,
                limit: 1,
            })
            .await
            .map_err(|_| UploadError::Mailbox("transcode"))??;
        Ok(!jobs.is_empty())
    }
}

pub(in crate::upload) async fn hash_file(path: PathBuf) -> Result<String, UploadError> {
    run_blocking(move || {
        let mut file = std::fs::File::open(path)?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; WRITE_BUFFER];
        loop {
            let read = file.read(&mut buffer)?;
            if read == 0 {
                return Ok(hex::encode(hasher.finalize()));
            }
            hasher.update(&buffer[..read]);
        }
    })
    .await
}
