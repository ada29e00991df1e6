//! Local blobs for the segment hot path: one blocking call opens and stats the file and, for a
//! body actix copies through its buffer, maps it (pages populated up front), so no request
//! waits on the blocking pool more than once and nothing is read into a buffer. A connection
//! of the front sends the open file with `sendfile` and needs no mapping.
//!
//! Why mapping is sound here (`Invariant:` in ARCHITECTURE.md): under the local blob root a file
//! is never written or truncated in place once it is visible under its key. Blobs appear by
//! rename (object_store's staged put and multipart, [`super::BlobStore::adopt_file`]) and go by
//! unlink (object_store delete, the cleanup job). A mapping keeps the inode it was made from, so
//! a replaced or removed blob goes on serving the old, complete bytes until the response ends;
//! a shrink in place — the one thing that could make a mapped page fault (SIGBUS) — never
//! happens.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;

use super::BlobError;

/// A whole local blob, opened, with what conditional and ranged GETs need; mapped when its
/// bytes go through a buffer.
#[derive(Debug, Clone)]
pub struct MappedBlob {
    /// The file's bytes when mapped (slicing is free: the mapping is shared, never copied);
    /// `None` when opened for `sendfile`, or an empty `Bytes` for an empty blob.
    pub bytes: Option<Bytes>,
    /// The open file (`None` for an empty blob), for senders that hand the kernel a file range.
    pub file: Option<Arc<std::fs::File>>,
    pub len: u64,
    pub modified: Option<SystemTime>,
    /// Strong validator in actix-files' format (`ino:len:secs:nanos`, hex), so ETags handed out
    /// before this code served segments still revalidate.
    pub etag: Option<String>,
}

impl MappedBlob {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// How a blob is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Mapped, pages populated: for bodies copied through a buffer.
    Mapped,
    /// Opened only: for bodies the kernel sends from the file.
    File,
}

/// Opens `path` and, with [`Access::Mapped`], maps it on the blocking pool: one round trip for
/// the whole blob. [`Access::File`] opens and stats in place, as nginx does: on a cached inode
/// that takes microseconds, and the hop to the blocking pool and back cost more than the rest of
/// the request (two thread wake-ups per segment).
pub async fn map(path: PathBuf, key: &str, access: Access) -> Result<MappedBlob, BlobError> {
    if access == Access::File {
        return map_now(&path, key, access);
    }
    let key = key.to_string();
    tokio::task::spawn_blocking(move || map_now(&path, &key, access))
        .await
        .map_err(|e| BlobError::Backend(e.to_string()))?
}

fn map_now(path: &Path, key: &str, access: Access) -> Result<MappedBlob, BlobError> {
    use std::os::unix::fs::MetadataExt;

    let file = std::fs::File::open(path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => BlobError::NotFound(key.to_string()),
        _ => BlobError::Backend(error.to_string()),
    })?;
    let metadata = file
        .metadata()
        .map_err(|e| BlobError::Backend(e.to_string()))?;
    if !metadata.is_file() {
        return Err(BlobError::NotFound(key.to_string()));
    }
    let modified = metadata.modified().ok();
    let etag = modified
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map(|since| {
            format!(
                "\"{:x}:{:x}:{:x}:{:x}\"",
                metadata.ino(),
                metadata.len(),
                since.as_secs(),
                since.subsec_nanos()
            )
        });
    // A zero-length mapping is an error (EINVAL); an empty blob needs none.
    let (bytes, file) = match (metadata.len(), access) {
        (0, _) => (Some(Bytes::new()), None),
        (_, Access::Mapped) => (
            Some(Bytes::from_owner(map_file(&file)?)),
            Some(Arc::new(file)),
        ),
        (_, Access::File) => (None, Some(Arc::new(file))),
    };
    Ok(MappedBlob {
        bytes,
        file,
        len: metadata.len(),
        modified,
        etag,
    })
}

#[allow(unsafe_code)]
fn map_file(file: &std::fs::File) -> Result<memmap2::Mmap, BlobError> {
    // SAFETY: the mapping is read-only and blobs under the local root are never modified or
    // truncated in place (module docs, ARCHITECTURE.md invariant); a rename over the key or an
    // unlink leaves this inode, and so every mapped page, intact until the mapping drops.
    unsafe { memmap2::MmapOptions::new().populate().map(file) }
        .map_err(|e| BlobError::Backend(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn a_mapping_outlives_a_rename_over_its_file_and_an_unlink() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg.m4s");
        std::fs::write(&path, b"first version").unwrap();
        let first = map(path.clone(), "seg", Access::Mapped).await.unwrap();
        let staged = dir.path().join("seg.m4s#1");
        std::fs::write(&staged, b"second").unwrap();
        std::fs::rename(&staged, &path).unwrap();
        let second = map(path.clone(), "seg", Access::Mapped).await.unwrap();
        let opened = map(path.clone(), "seg", Access::File).await.unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(&first.bytes.unwrap()[..], b"first version");
        assert_eq!(&second.bytes.unwrap()[..], b"second");
        assert!(opened.bytes.is_none());
        assert_eq!(opened.len, 6);
        assert_eq!(opened.etag, second.etag);
        assert_ne!(first.etag, second.etag);
        assert!(matches!(
            map(path, "seg", Access::File).await,
            Err(BlobError::NotFound(_))
        ));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert!(map(empty, "empty", Access::File).await.unwrap().is_empty());
    }
}
