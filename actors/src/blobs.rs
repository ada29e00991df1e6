//! Blobs: one interface over `object_store`: the local filesystem by default, or an
//! S3-compatible server (`storage.blobs = "s3"`).
//!
//! Key layout (all relative to the store root):
//! - `uploads/{upload_id}/source` — an uploaded source file, as received
//! - `media/{media_id}/hls/master.m3u8`, `media/{media_id}/hls/{rendition}/{file}` — HLS output
//! - `media/{media_id}/dash/manifest.mpd` — DASH manifest over the same CMAF segments
//! - `media/{media_id}/thumbnail.jpg`
//!
//! Invariant: a blob becomes visible under its key only once it is complete (local writes go to a
//! temporary file and are renamed; S3 multipart uploads complete atomically).

use std::{ops::Range, path::PathBuf, sync::Arc};

use bytes::Bytes;
use futures_util::{stream::BoxStream, StreamExt, TryStreamExt};
use object_store::{
    aws::AmazonS3Builder, local::LocalFileSystem, path::Path as ObjectPath, GetOptions, GetRange,
    ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart,
};

use crate::{
    config::S3Config,
    model::{MediaId, UploadId},
};

pub mod mapped;
pub use mapped::{Access, MappedBlob};

/// The local backend names file paths in its errors: the messages of the variants a client can
/// see (4xx) leave the path out; `Backend` and `Full` keep their detail for the log only.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob not found")]
    NotFound(String),
    #[error("blob store failed: {0}")]
    Backend(String),
    /// The disk under the blob store is full (ENOSPC) or over a quota (EDQUOT).
    #[error("blob store disk full: {0}")]
    Full(String),
    /// The reader's copy (its `If-None-Match` ETag) is current.
    #[error("blob not modified")]
    NotModified(String),
    #[error("range not satisfiable")]
    RangeNotSatisfiable(String),
}

/// Whether an I/O error means the disk is full: ENOSPC, or EDQUOT (a filesystem quota).
pub fn is_disk_full(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT)
    ) || error.kind() == std::io::ErrorKind::StorageFull
        || error.kind() == std::io::ErrorKind::QuotaExceeded
}

/// Whether any error in `error`'s source chain is a full disk (object_store wraps the local
/// backend's `io::Error` two levels deep).
fn chain_is_disk_full(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error
            .downcast_ref::<std::io::Error>()
            .is_some_and(is_disk_full)
        {
            return true;
        }
        current = error.source();
    }
    false
}

/// An I/O error of our own local file handling.
fn io_blob_error(error: std::io::Error) -> BlobError {
    if is_disk_full(&error) {
        BlobError::Full(error.to_string())
    } else {
        BlobError::Backend(error.to_string())
    }
}

impl crate::error::DomainError for BlobError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            Self::NotFound(_) => crate::error::ErrorKind::NotFound,
            Self::Backend(_) => crate::error::ErrorKind::Unavailable,
            Self::Full(_) => crate::error::ErrorKind::InsufficientStorage,
            Self::NotModified(_) => crate::error::ErrorKind::Conflict,
            Self::RangeNotSatisfiable(_) => crate::error::ErrorKind::Invalid,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "blob_not_found",
            Self::Backend(_) => "blobs_unavailable",
            Self::Full(_) => "insufficient_storage",
            Self::NotModified(_) => "not_modified",
            Self::RangeNotSatisfiable(_) => "range_not_satisfiable",
        }
    }
}

impl From<object_store::Error> for BlobError {
    fn from(error: object_store::Error) -> Self {
        match error {
            object_store::Error::NotFound { path, .. } => Self::NotFound(path),
            object_store::Error::NotModified { path, .. } => Self::NotModified(path),
            other if chain_is_disk_full(&other) => Self::Full(other.to_string()),
            other => Self::Backend(other.to_string()),
        }
    }
}

/// What [`BlobStore::copy_missing_to`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlobCopy {
    /// Blobs written to the target.
    pub copied: u64,
    /// Blobs the target already held (a re-run).
    pub present: u64,
    /// Bytes written.
    pub bytes: u64,
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
        std::fs::create_dir_all(&root).map_err(io_blob_error)?;
        let root = root
            .canonicalize()
            .map_err(|e| BlobError::Backend(e.to_string()))?;
        let store = LocalFileSystem::new_with_prefix(&root)?.with_fsync(true);
        Ok(Self {
            inner: Arc::new(store),
            local_root: Some(root),
        })
    }

    /// An S3-compatible store; every object lives in `config.bucket`, path-style requests.
    /// `extra_ca_pem` (`tls.extra_ca_file`'s contents) is trusted besides the system's roots.
    pub fn s3(config: &S3Config, extra_ca_pem: Option<&[u8]>) -> Result<Self, BlobError> {
        // Client options first: `with_allow_http` below writes into them.
        let mut options = object_store::ClientOptions::new();
        for certificate in extra_ca_pem
            .map(object_store::Certificate::from_pem_bundle)
            .transpose()?
            .unwrap_or_default()
        {
            options = options.with_root_certificate(certificate);
        }
        let mut builder = AmazonS3Builder::new()
            .with_client_options(options)
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_allow_http(config.allow_http)
            .with_virtual_hosted_style_request(false);
        if !config.endpoint.is_empty() {
            builder = builder.with_endpoint(&config.endpoint);
        }
        if !config.access_key.is_empty() {
            builder = builder
                .with_access_key_id(&config.access_key)
                .with_secret_access_key(&config.secret_key);
        }
        Ok(Self {
            inner: Arc::new(builder.build()?),
            local_root: None,
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

    /// `media/{media_id}/hls`, the folder every [`Self::hls_key`] of the media is in.
    pub fn hls_prefix(media_id: &MediaId) -> String {
        format!("media/{media_id}/hls")
    }

    /// Whether blobs live on the data directory's disk (the local backend).
    pub fn is_local(&self) -> bool {
        self.local_root.is_some()
    }

    /// Where a blob lives on disk, for the local backend only.
    pub fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.local_root.as_ref().map(|root| root.join(key))
    }

    /// The whole blob opened (and with [`Access::Mapped`] mapped into memory), for the local
    /// backend only (`None` elsewhere). One blocking-pool round trip; see [`mapped`] for why
    /// mapping a blob is sound.
    pub async fn map_local(
        &self,
        key: &str,
        access: Access,
    ) -> Option<Result<MappedBlob, BlobError>> {
        let path = self.local_path(key)?;
        Some(mapped::map(path, key, access).await)
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
        let mut reader = tokio::fs::File::open(file).await.map_err(io_blob_error)?;
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

    /// Moves a complete, fsynced local file into the store under `key`: a rename on the local
    /// backend (same disk), a streamed multipart upload elsewhere. The file is gone afterwards.
    pub async fn adopt_file(&self, key: &str, file: &std::path::Path) -> Result<(), BlobError> {
        let io = io_blob_error;
        if let Some(target) = self.local_path(key) {
            let source = file.to_path_buf();
            return tokio::task::spawn_blocking(move || {
                let parent = target
                    .parent()
                    .ok_or_else(|| BlobError::Backend("blob key has no parent".into()))?;
                std::fs::create_dir_all(parent).map_err(io)?;
                match std::fs::rename(&source, &target) {
                    Ok(()) => {}
                    // Cross-device: the partial directory is on another disk.
                    Err(error) if error.raw_os_error() == Some(18) => {
                        let copy = target.with_extension("adopting");
                        std::fs::copy(&source, &copy).map_err(io)?;
                        std::fs::File::open(&copy)
                            .and_then(|f| f.sync_all())
                            .map_err(io)?;
                        std::fs::rename(&copy, &target).map_err(io)?;
                        std::fs::remove_file(&source).map_err(io)?;
                    }
                    Err(error) => return Err(io(error)),
                }
                // The rename is durable only once the directory entry is.
                std::fs::File::open(parent)
                    .and_then(|dir| dir.sync_all())
                    .map_err(io)
            })
            .await
            .map_err(|e| BlobError::Backend(e.to_string()))?;
        }
        self.put_file(key, file).await?;
        tokio::fs::remove_file(file).await.map_err(io)
    }

    /// Reads a blob or a byte range of it as a stream. `if_none_match` turns a current copy into
    /// [`BlobError::NotModified`].
    pub async fn read(
        &self,
        key: &str,
        range: Option<ByteRange>,
        if_none_match: Option<String>,
    ) -> Result<BlobRead, BlobError> {
        let options = GetOptions {
            range: range.clone().map(|range| match range {
                ByteRange::Bounded(range) => GetRange::Bounded(range),
                ByteRange::From(start) => GetRange::Offset(start),
                ByteRange::Suffix(length) => GetRange::Suffix(length),
            }),
            if_none_match,
            ..GetOptions::default()
        };
        let result = match self.inner.get_opts(&ObjectPath::from(key), options).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { path, .. }) => {
                return Err(BlobError::NotFound(path))
            }
            Err(object_store::Error::NotModified { path, .. }) => {
                return Err(BlobError::NotModified(path))
            }
            // The stores word a bad range differently; a ranged read failing on an existing
            // object is the range's fault.
            Err(_) if range.is_some() => return Err(BlobError::RangeNotSatisfiable(key.into())),
            Err(other) => return Err(other.into()),
        };
        let size = result.meta.size;
        let etag = result.meta.e_tag.clone();
        let range = result.range.clone();
        let stream = result.into_stream().map_err(BlobError::from).boxed();
        Ok(BlobRead {
            stream,
            range,
            size,
            etag,
        })
    }

    /// Streams a blob into a local file (fsynced), never holding it whole in memory: for tools
    /// such as ffmpeg that need a path when the store is not local.
    pub async fn download_to(&self, key: &str, file: &std::path::Path) -> Result<u64, BlobError> {
        use tokio::io::AsyncWriteExt;
        let io = io_blob_error;
        let mut read = self.read(key, None, None).await?;
        let mut out = tokio::fs::File::create(file).await.map_err(io)?;
        let mut written = 0;
        while let Some(bytes) = read.stream.next().await {
            let bytes = bytes?;
            out.write_all(&bytes).await.map_err(io)?;
            written += bytes.len() as u64;
        }
        out.sync_all().await.map_err(io)?;
        Ok(written)
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, BlobError> {
        Ok(self
            .inner
            .get(&ObjectPath::from(key))
            .await?
            .bytes()
            .await?)
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

    /// Copies every blob of this local store into `target`, skipping those `target` already
    /// holds with the same size (a blob appears whole or not at all in either store, so a
    /// re-run after an interruption copies only what is missing). `progress` hears (done, total).
    pub async fn copy_missing_to(
        &self,
        target: &BlobStore,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<BlobCopy, BlobError> {
        let mut listing = self.inner.list(None);
        let mut found = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            found.push((meta.location.to_string(), meta.size));
        }
        let total = found.len() as u64;
        let mut copy = BlobCopy::default();
        for (done, (key, size)) in found.into_iter().enumerate() {
            let held = match target.inner.head(&ObjectPath::from(key.as_str())).await {
                Ok(meta) => Some(meta.size),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(other) => return Err(other.into()),
            };
            if held == Some(size) {
                copy.present += 1;
            } else {
                let path = self
                    .local_path(&key)
                    .ok_or_else(|| BlobError::Backend("copying needs a local source".into()))?;
                target.put_file(&key, &path).await?;
                copy.copied += 1;
                copy.bytes += size;
            }
            progress(done as u64 + 1, total);
        }
        Ok(copy)
    }

    /// Keys under `prefix` with their last-modified time (Unix seconds), for age-based cleanup.
    pub async fn list_with_age(&self, prefix: &str) -> Result<Vec<(String, i64)>, BlobError> {
        let prefix = ObjectPath::from(prefix);
        let mut listing = self.inner.list(Some(&prefix));
        let mut keys = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            keys.push((meta.location.to_string(), meta.last_modified.timestamp()));
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

/// A byte range as HTTP `Range` asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ByteRange {
    /// `start..end`, end exclusive.
    Bounded(Range<u64>),
    /// From an offset to the end.
    From(u64),
    /// The last n bytes.
    Suffix(u64),
}

/// A blob being read: its bytes (or the asked range of them) as a stream.
pub struct BlobRead {
    pub stream: BoxStream<'static, Result<Bytes, BlobError>>,
    /// Which bytes the stream carries.
    pub range: Range<u64>,
    /// The whole blob's size.
    pub size: u64,
    pub etag: Option<String>,
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

    #[test]
    fn a_full_disk_under_object_store_is_told_apart_and_no_message_names_a_path() {
        // The shape of the local backend's error: an io::Error inside its own error inside
        // object_store's Generic.
        #[derive(Debug, thiserror::Error)]
        #[error("Unable to copy data to file /data/blobs/x: {source}")]
        struct Local {
            source: std::io::Error,
        }
        let full = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(Local {
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            }),
        };
        assert!(matches!(BlobError::from(full), BlobError::Full(_)));
        let other = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(Local {
                source: std::io::Error::from_raw_os_error(libc::EACCES),
            }),
        };
        assert!(matches!(BlobError::from(other), BlobError::Backend(_)));
        let missing = BlobError::NotFound("/data/blobs/media/x/thumbnail.jpg".into());
        assert!(!missing.to_string().contains("/data"), "{missing}");
    }

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
        let read = blobs
            .read("a/b", Some(ByteRange::Bounded(6..9)), None)
            .await
            .unwrap();
        assert_eq!((read.range.clone(), read.size), (6..9, 11));
        let bytes: Vec<Bytes> = read.stream.try_collect().await.unwrap();
        assert_eq!(bytes.concat(), b"wor");
        let etag = blobs.read("a/b", None, None).await.unwrap().etag;
        assert!(matches!(
            blobs.read("a/b", None, etag).await,
            Err(BlobError::NotModified(_))
        ));

        let partial = dir.path().join("partial");
        std::fs::write(&partial, b"adopted").unwrap();
        blobs.adopt_file("a/d/source", &partial).await.unwrap();
        assert!(!partial.exists());
        assert_eq!(
            blobs.get("a/d/source").await.unwrap(),
            Bytes::from_static(b"adopted")
        );
        let copy = dir.path().join("copy");
        assert_eq!(blobs.download_to("a/d/source", &copy).await.unwrap(), 7);
        assert_eq!(std::fs::read(&copy).unwrap(), b"adopted");
        assert_eq!(blobs.delete_prefix("a/d").await.unwrap(), 1);
        assert_eq!(blobs.delete_prefix("a").await.unwrap(), 1);
        assert!(blobs.list("a").await.unwrap().is_empty());
    }
}
