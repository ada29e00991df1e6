//! Local blobs mapped into memory for the segment hot path: one blocking call opens, stats and
//! maps the file (pages populated up front), and the response body is slices of that mapping,
//! so no request waits on the blocking pool more than once and nothing is read into a buffer.
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

/// A whole local blob, mapped, with what conditional and ranged GETs need.
#[derive(Debug, Clone)]
pub struct MappedBlob {
    /// The file's bytes; slicing is free (the mapping is shared, never copied).
    pub bytes: Bytes,
    /// The open file the mapping was made from (`None` for an empty blob), for senders that
    /// hand the kernel a file range instead of the mapped bytes.
    pub file: Option<Arc<std::fs::File>>,
    pub modified: Option<SystemTime>,
    /// Strong validator in actix-files' format (`ino:len:secs:nanos`, hex), so ETags handed out
    /// before this code served segments still revalidate.
    pub etag: Option<String>,
}

impl MappedBlob {
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Opens and maps `path` on the blocking pool (one round trip for the whole blob).
pub async fn map(path: PathBuf, key: &str) -> Result<MappedBlob, BlobError> {
    let key = key.to_string();
    tokio::task::spawn_blocking(move || map_now(&path, &key))
        .await
        .map_err(|e| BlobError::Backend(e.to_string()))?
}

fn map_now(path: &Path, key: &str) -> Result<MappedBlob, BlobError> {
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
    let (bytes, file) = if metadata.len() == 0 {
        (Bytes::new(), None)
    } else {
        (Bytes::from_owner(map_file(&file)?), Some(Arc::new(file)))
    };
    Ok(MappedBlob {
        bytes,
        file,
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
        let first = map(path.clone(), "seg").await.unwrap();
        let staged = dir.path().join("seg.m4s#1");
        std::fs::write(&staged, b"second").unwrap();
        std::fs::rename(&staged, &path).unwrap();
        let second = map(path.clone(), "seg").await.unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(&first.bytes[..], b"first version");
        assert_eq!(&second.bytes[..], b"second");
        assert_ne!(first.etag, second.etag);
        assert!(matches!(
            map(path, "seg").await,
            Err(BlobError::NotFound(_))
        ));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert!(map(empty, "empty").await.unwrap().is_empty());
    }
}
