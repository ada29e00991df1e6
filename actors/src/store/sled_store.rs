//! sled implementation of the repository traits: one tree per relation, JSON values keyed by
//! the 16 id bytes (UUIDv7, so key order is creation order).

use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};

use super::{AuditFilter, AuditRepo, JobFilter, JobRepo, MediaRepo, Repo, StoreError};
use crate::model::{AuditEntry, Job, JobId, Media, MediaId};

const MEDIA_TREE: &str = "media";
const JOBS_TREE: &str = "jobs";
const AUDIT_TREE: &str = "audit";

pub struct SledStore {
    db: sled::Db,
    media: sled::Tree,
    jobs: sled::Tree,
    audit: sled::Tree,
}

impl SledStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(path).open().map_err(backend)?;
        let media = db.open_tree(MEDIA_TREE).map_err(backend)?;
        let jobs = db.open_tree(JOBS_TREE).map_err(backend)?;
        let audit = db.open_tree(AUDIT_TREE).map_err(backend)?;
        Ok(Self {
            db,
            media,
            jobs,
            audit,
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

    fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, StoreError> {
        Self::scan(
            &self.jobs,
            filter.after.as_ref().map(|id| id.as_bytes().as_slice()),
            |job: &Job| {
                filter.state.is_none_or(|wanted| job.state == wanted)
                    && filter
                        .media_id
                        .as_ref()
                        .is_none_or(|wanted| job.media_id.as_ref() == Some(wanted))
            },
            filter.limit,
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

impl Repo for SledStore {
    fn check(&self) -> Result<(), StoreError> {
        self.media.first().map_err(backend)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{JobKind, JobState, MediaState, UploadId};
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
        let media_id = MediaId::new();
        for (state, media) in [
            (JobState::Queued, Some(media_id.clone())),
            (JobState::Running, Some(media_id.clone())),
            (JobState::Queued, None),
        ] {
            store
                .put_job(&Job {
                    id: JobId::new(),
                    kind: JobKind::Transcode,
                    media_id: media,
                    profiles: vec![],
                    state,
                    priority: 5,
                    attempts: 0,
                    last_error: None,
                    progress: 0,
                    summary: None,
                    run_at: None,
                    started_at: None,
                    finished_at: None,
                    created_at: now,
                    updated_at: now,
                })
                .unwrap();
        }
        let count = |filter: JobFilter| store.list_jobs(&filter).unwrap().len();
        assert_eq!(count(JobFilter::all_in(JobState::Queued)), 2);
        let all = JobFilter {
            limit: 10,
            ..JobFilter::default()
        };
        assert_eq!(count(all.clone()), 3);
        let of_media = JobFilter {
            media_id: Some(media_id),
            ..all
        };
        assert_eq!(count(of_media.clone()), 2);
        assert_eq!(
            count(JobFilter {
                state: Some(JobState::Running),
                ..of_media
            }),
            1
        );
    }
}
