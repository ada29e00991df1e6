//! Blobs: one interface over `object_store`, local filesystem by default.
//!
//! Key layout (all relative to the store root):
//! - `uploads/{upload_id}/source` — an uploaded source file, as received
//! - `media/{media_id}/hls/master.m3u8`, `media/{media_id}/hls/{rendition}/{file}` — HLS output
//! - `media/{media_id}/thumbnail.jpg`
//!
//! Invariant: a blob becomes visible under its key only once it is complete (local writes go to a
//! temporary file and are renamed; S3 multipart uploads complete atomically).

use std::{path::PathBuf, sync::Arc};

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::{
    local::LocalFileSystem, path::Path as ObjectPath, ObjectStore, ObjectStoreExt, PutPayload,
    WriteMultipart,
};

use crate::model::{MediaId, UploadId};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} not found")]
    NotFound(String),
    #[error("blob store failed: {0}")]
    Backend(String),
}

impl crate::error::DomainError for BlobError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            Self::NotFound(_) => crate::error::ErrorKind::NotFound,
            Self::Backend(_) => crate::error::ErrorKind::Unavailable,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "blob_not_found",
            Self::Backend(_) => "blobs_unavailable",
        }
    }
}

impl From<object_store::Error> for BlobError {
    fn from(error: object_store::Error) -> Self {
        match error {
            object_store::Error::NotFound { path, .. } => Self::NotFound(path),
            other => Self::Backend(other.to_string()),
        }
    }
}

/// A cheap-to-clone handle on the blob store. Reads are safe from any thread; the web crate
/// gets one at start-up for the segment hot path.
#[derive(Clone, Debug)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    /// Set for the local filesystem backend, so readers can serve files directly.
    local_root: Option<PathBuf>,
}

/// Chunk size for multipart writes (S3's minimum part size is 5 MiB).
const PART_SIZE: usize = 8 * 1024 * 1024;

impl BlobStore {
    /// Local filesystem store rooted at `root` (created if missing); every write is fsynced.
    pub fn local(root: PathBuf) -> Result<Self, BlobError> {
        std::fs::create_dir_all(&root).map_err(|e| BlobError::Backend(e.to_string()))?;
        let root = root
            .canonicalize()
            .map_err(|e| BlobError::Backend(e.to_string()))?;
        let store = LocalFileSystem::new_with_prefix(&root)?.with_fsync(true);
        Ok(Self {
            inner: Arc::new(store),
            local_root: Some(root),
        })
    }

    pub fn source_key(upload_id: &UploadId) -> String {
        format!("uploads/{upload_id}/source")
    }

    pub fn media_prefix(media_id: &MediaId) -> String {
        format!("media/{media_id}")
    }

    pub fn hls_key(media_id: &MediaId, file: &str) -> String {
        format!("media/{media_id}/hls/{file}")
    }

    /// Where a blob lives on disk, for the local backend only.
    pub fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.local_root.as_ref().map(|root| root.join(key))
    }

    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), BlobError> {
        self.inner
            .put(&ObjectPath::from(key), PutPayload::from(bytes))
            .await?;
        Ok(())
    }

    /// Copies a local file into the store without loading it whole into memory.
    pub async fn put_file(&self, key: &str, file: &std::path::Path) -> Result<(), BlobError> {
        let mut writer = self.writer(key).await?;
        let mut reader = tokio::fs::File::open(file)
            .await
            .map_err(|e| BlobError::Backend(e.to_string()))?;
        let mut buffer = vec![0u8; 1024 * 1024];
        loop {
            let read = tokio::io::AsyncReadExt::read(&mut reader, &mut buffer)
                .await
                .map_err(|e| BlobError::Backend(e.to_string()))?;
            if read == 0 {
                break;
            }
            writer.write(&buffer[..read]).await?;
        }
        writer.finish().await
    }

    /// Starts a streamed write; nothing is visible under `key` until [`BlobWriter::finish`].
    pub async fn writer(&self, key: &str) -> Result<BlobWriter, BlobError> {
        let upload = self.inner.put_multipart(&ObjectPath::from(key)).await?;
        Ok(BlobWriter {
            write: WriteMultipart::new_with_chunk_size(upload, PART_SIZE),
        })
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, BlobError> {
        Ok(self
            .inner
            .get(&ObjectPath::from(key))
            .await?
            .bytes()
            .await?)
    }

    /// Size and entity tag of a blob, then a stream of `range` of it (all of it when `None`):
    /// remote backends are read in chunks, never loaded whole.
    pub async fn get_stream(
        &self,
        key: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<BlobStream, BlobError> {
        let options = object_store::GetOptions {
            range: range.map(object_store::GetRange::Bounded),
            ..Default::default()
        };
        let result = self.inner.get_opts(&ObjectPath::from(key), options).await?;
        Ok(BlobStream {
            size: result.meta.size,
            e_tag: result.meta.e_tag.clone(),
            stream: result
                .into_stream()
                .map(|chunk| chunk.map_err(BlobError::from))
                .boxed(),
        })
    }

    /// Size and entity tag of a blob.
    pub async fn head(&self, key: &str) -> Result<(u64, Option<String>), BlobError> {
        let meta = self.inner.head(&ObjectPath::from(key)).await?;
        Ok((meta.size, meta.e_tag))
    }

    pub async fn exists(&self, key: &str) -> Result<bool, BlobError> {
        match self.inner.head(&ObjectPath::from(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(other) => Err(other.into()),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
        match self.inner.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(other) => Err(other.into()),
        }
    }

    /// Deletes every blob under `prefix`.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, BlobError> {
        let prefix = ObjectPath::from(prefix);
        let mut listing = self.inner.list(Some(&prefix));
        let mut deleted = 0;
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            self.delete(meta.location.as_ref()).await?;
            deleted += 1;
        }
        Ok(deleted)
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        let prefix = ObjectPath::from(prefix);
        let mut listing = self.inner.list(Some(&prefix));
        let mut keys = Vec::new();
        while let Some(meta) = listing.next().await {
            keys.push(meta?.location.to_string());
        }
        Ok(keys)
    }

    /// Proves the store is reachable and writable (for `/health`).
    pub async fn check(&self) -> Result<(), BlobError> {
        let key = ".health/probe";
        self.put(key, Bytes::from_static(b"ok")).await?;
        self.delete(key).await
    }
}

/// A blob being read: its full size and entity tag, and the requested bytes as a stream.
pub struct BlobStream {
    pub size: u64,
    pub e_tag: Option<String>,
    pub stream: futures_util::stream::BoxStream<'static, Result<Bytes, BlobError>>,
}

/// A streamed write into the blob store.
pub struct BlobWriter {
    write: WriteMultipart,
}

impl BlobWriter {
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), BlobError> {
        // Bounds how many parts are in flight, so memory stays at a few parts per upload.
        self.write.wait_for_capacity(2).await?;
        self.write.write(bytes);
        Ok(())
    }

    pub async fn finish(self) -> Result<(), BlobError> {
        self.write.finish().await?;
        Ok(())
    }

    /// Drops everything written so far.
    pub async fn abort(self) -> Result<(), BlobError> {
        self.write.abort().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn streamed_write_is_invisible_until_finished_and_abort_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::local(dir.path().to_path_buf()).unwrap();
        let mut writer = blobs.writer("a/b").await.unwrap();
        writer.write(b"hello ").await.unwrap();
        writer.write(b"world").await.unwrap();
        assert!(!blobs.exists("a/b").await.unwrap());
        writer.finish().await.unwrap();
        assert_eq!(
            blobs.get("a/b").await.unwrap(),
            Bytes::from_static(b"hello world")
        );

        let mut aborted = blobs.writer("a/c").await.unwrap();
        aborted.write(b"partial").await.unwrap();
        aborted.abort().await.unwrap();
        assert!(!blobs.exists("a/c").await.unwrap());
        assert_eq!(blobs.list("a").await.unwrap(), vec!["a/b".to_string()]);
        assert_eq!(blobs.delete_prefix("a").await.unwrap(), 1);
        assert!(blobs.list("a").await.unwrap().is_empty());
    }
}
