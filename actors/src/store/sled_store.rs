//! sled implementation of the repository traits: one tree per relation, JSON values keyed by
//! the 16 id bytes (UUIDv7, so key order is creation order).

use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};

use super::{AuditFilter, AuditRepo, JobRepo, MediaRepo, Repo, StoreError, TusRepo};
use crate::model::{AuditEntry, Job, JobId, JobState, Media, MediaId, TusUpload, UploadId};

const MEDIA_TREE: &str = "media";
const JOBS_TREE: &str = "jobs";
const AUDIT_TREE: &str = "audit";
const TUS_TREE: &str = "tus_uploads";

pub struct SledStore {
    db: sled::Db,
    media: sled::Tree,
    jobs: sled::Tree,
    audit: sled::Tree,
    tus: sled::Tree,
}

impl SledStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(path).open().map_err(backend)?;
        let media = db.open_tree(MEDIA_TREE).map_err(backend)?;
        let jobs = db.open_tree(JOBS_TREE).map_err(backend)?;
        let audit = db.open_tree(AUDIT_TREE).map_err(backend)?;
        let tus = db.open_tree(TUS_TREE).map_err(backend)?;
        Ok(Self {
            db,
            media,
            jobs,
            audit,
            tus,
        })
    }

    fn put<T: Serialize>(
        &self,
        tree: &sled::Tree,
        key: &[u8],
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Backend(e.to_string()))?;
        tree.insert(key, bytes).map_err(backend)?;
        // sled only fsyncs on its own every 500 ms; callers acknowledge after this returns.
        self.db.flush().map_err(backend)?;
        Ok(())
    }

    fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>, StoreError> {
        match tree.get(key).map_err(backend)? {
            Some(bytes) => decode(key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn scan<T: DeserializeOwned>(
        tree: &sled::Tree,
        after: Option<&[u8]>,
        mut keep: impl FnMut(&T) -> bool,
        limit: usize,
    ) -> Result<Vec<T>, StoreError> {
        let range = match after {
            Some(after) => tree
                .range::<&[u8], _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => tree.iter(),
        };
        let mut found = Vec::new();
        for entry in range {
            if found.len() >= limit {
                break;
            }
            let (key, bytes) = entry.map_err(backend)?;
            let value: T = decode(&key, &bytes)?;
            if keep(&value) {
                found.push(value);
            }
        }
        Ok(found)
    }
}

fn backend(error: sled::Error) -> StoreError {
    StoreError::Backend(error.to_string())
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: hex::encode(key),
        reason: e.to_string(),
    })
}

impl MediaRepo for SledStore {
    fn get_media(&self, media_id: &MediaId) -> Result<Option<Media>, StoreError> {
        Self::get(&self.media, media_id.as_bytes())
    }

    fn put_media(&self, media: &Media) -> Result<(), StoreError> {
        self.put(&self.media, media.id.as_bytes(), media)
    }

    fn delete_media(&self, media_id: &MediaId) -> Result<bool, StoreError> {
        let existed = self
            .media
            .remove(media_id.as_bytes())
            .map_err(backend)?
            .is_some();
        self.db.flush().map_err(backend)?;
        Ok(existed)
    }

    fn list_media(&self, after: Option<&MediaId>, limit: usize) -> Result<Vec<Media>, StoreError> {
        Self::scan(
            &self.media,
            after.map(|id| id.as_bytes().as_slice()),
            |_: &Media| true,
            limit,
        )
    }
}

impl JobRepo for SledStore {
    fn get_job(&self, job_id: &JobId) -> Result<Option<Job>, StoreError> {
        Self::get(&self.jobs, job_id.as_bytes())
    }

    fn put_job(&self, job: &Job) -> Result<(), StoreError> {
        self.put(&self.jobs, job.id.as_bytes(), job)
    }

    fn list_jobs(
        &self,
        state: Option<JobState>,
        after: Option<&JobId>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        Self::scan(
            &self.jobs,
            after.map(|id| id.as_bytes().as_slice()),
            |job: &Job| state.is_none_or(|wanted| job.state == wanted),
            limit,
        )
    }
}

impl AuditRepo for SledStore {
    fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.put(&self.audit, entry.id.as_bytes(), entry)
    }

    fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        Self::scan(
            &self.audit,
            filter.after.as_ref().map(|id| id.as_bytes().as_slice()),
            |entry: &AuditEntry| {
                filter
                    .action
                    .as_ref()
                    .is_none_or(|action| &entry.action == action)
                    && filter
                        .actor
                        .as_ref()
                        .is_none_or(|actor| &entry.actor == actor)
                    && filter.since.is_none_or(|since| entry.at >= since)
            },
            filter.limit,
        )
    }
}

impl TusRepo for SledStore {
    fn get_tus_upload(&self, upload_id: &UploadId) -> Result<Option<TusUpload>, StoreError> {
        Self::get(&self.tus, upload_id.as_bytes())
    }

    fn put_tus_upload(&self, upload: &TusUpload) -> Result<(), StoreError> {
        self.put(&self.tus, upload.id.as_bytes(), upload)
    }

    fn delete_tus_upload(&self, upload_id: &UploadId) -> Result<bool, StoreError> {
        let existed = self
            .tus
            .remove(upload_id.as_bytes())
            .map_err(backend)?
            .is_some();
        self.db.flush().map_err(backend)?;
        Ok(existed)
    }

    fn list_tus_uploads(
        &self,
        after: Option<&UploadId>,
        limit: usize,
    ) -> Result<Vec<TusUpload>, StoreError> {
        Self::scan(
            &self.tus,
            after.map(|id| id.as_bytes().as_slice()),
            |_: &TusUpload| true,
            limit,
        )
    }
}

impl Repo for SledStore {
    fn check(&self) -> Result<(), StoreError> {
        self.media.first().map_err(backend)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{JobKind, MediaState, UploadId};
    use time::OffsetDateTime;

    fn media() -> Media {
        let now = OffsetDateTime::now_utc();
        Media {
            id: MediaId::new(),
            title: "t".into(),
            description: String::new(),
            tags: vec![],
            owner: None,
            state: MediaState::Processing,
            failure: None,
            upload_id: UploadId::new(),
            filename: None,
            size: 1,
            sha256: String::new(),
            source_key: "k".into(),
            duration_s: None,
            width: None,
            height: None,
            video_codec: None,
            renditions: vec![],
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn media_round_trips_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let stored = media();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.put_media(&stored).unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.get_media(&stored.id).unwrap(), Some(stored.clone()));
        assert!(store.delete_media(&stored.id).unwrap());
        assert_eq!(store.get_media(&stored.id).unwrap(), None);
    }

    #[test]
    fn list_pages_in_creation_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let all: Vec<Media> = (0..5).map(|_| media()).collect();
        for m in &all {
            store.put_media(m).unwrap();
        }
        let first = store.list_media(None, 2).unwrap();
        let rest = store.list_media(Some(&first[1].id), 10).unwrap();
        let ids: Vec<_> = first.iter().chain(&rest).map(|m| m.id.clone()).collect();
        assert_eq!(ids, all.iter().map(|m| m.id.clone()).collect::<Vec<_>>());
    }

    #[test]
    fn jobs_filter_by_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let now = OffsetDateTime::now_utc();
        for state in [JobState::Queued, JobState::Running, JobState::Queued] {
            store
                .put_job(&Job {
                    id: JobId::new(),
                    kind: JobKind::Transcode,
                    media_id: MediaId::new(),
                    state,
                    priority: 5,
                    attempts: 0,
                    last_error: None,
                    progress: 0,
                    created_at: now,
                    updated_at: now,
                })
                .unwrap();
        }
        assert_eq!(
            store
                .list_jobs(Some(JobState::Queued), None, 10)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(store.list_jobs(None, None, 10).unwrap().len(), 3);
    }
}
