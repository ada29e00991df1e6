//! The byte side of a tus PATCH: chunk checksums, the per-upload lock and running hash shared
//! by the actor's handlers, and [`TusSink`], which appends a PATCH's body to the partial file
//! off the async threads (see the invariants in [`super`]).

use super::*;

// ---------------------------------------------------------------------------------------------
// Checksums

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumAlgorithm {
    Sha1,
    Sha256,
}

impl ChecksumAlgorithm {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "sha1" => Some(Self::Sha1),
            "sha256" => Some(Self::Sha256),
            _ => None,
        }
    }
}

/// `Upload-Checksum`: the digest the client computed over this PATCH's body.
#[derive(Debug, Clone)]
pub struct ChunkChecksum {
    pub algorithm: ChecksumAlgorithm,
    pub digest: Vec<u8>,
}

pub(super) enum ChunkHasher {
    Sha1(Sha1),
    Sha256(Sha256),
}

impl ChunkHasher {
    pub(super) fn new(algorithm: ChecksumAlgorithm) -> Self {
        match algorithm {
            ChecksumAlgorithm::Sha1 => Self::Sha1(Sha1::new()),
            ChecksumAlgorithm::Sha256 => Self::Sha256(Sha256::new()),
        }
    }
    pub(super) fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha1(hasher) => hasher.update(bytes),
            Self::Sha256(hasher) => hasher.update(bytes),
        }
    }
    pub(super) fn matches(&self, digest: &[u8]) -> bool {
        match self {
            Self::Sha1(hasher) => hasher.clone().finalize().as_slice() == digest,
            Self::Sha256(hasher) => hasher.clone().finalize().as_slice() == digest,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state

/// State shared by the actor and the sinks it hands out. It outlives an actor restart, so a
/// restarted actor still sees which uploads are busy.
#[derive(Clone, Default)]
pub struct TusShared {
    pub(super) locks: Arc<Mutex<HashMap<UploadId, Arc<Holder>>>>,
    /// Woken whenever a lock is released, for a request waiting to take an upload over.
    pub(super) freed: Arc<tokio::sync::Notify>,
    /// The running whole-file SHA-256 of uploads between PATCHes, with the offset it covers.
    /// Lost on restart; finishing then hashes the file from disk.
    pub(super) hashes: Arc<Mutex<HashMap<UploadId, (u64, Hashed)>>>,
}

impl TusShared {
    pub(super) fn lock(&self, upload_id: &UploadId) -> Result<UploadLock, UploadError> {
        let mut locks = self.locks.lock().map_err(|_| UploadError::Locked)?;
        if locks.contains_key(upload_id) {
            return Err(UploadError::Locked);
        }
        let holder = Arc::new(Holder::default());
        locks.insert(upload_id.clone(), holder.clone());
        Ok(UploadLock {
            locks: self.locks.clone(),
            freed: self.freed.clone(),
            upload_id: upload_id.clone(),
            holder,
            _across_nodes: None,
        })
    }

    /// The PATCH holding the upload's lock in this process, if its body has sent nothing for
    /// `silent`.
    pub(super) fn silent_holder(
        &self,
        upload_id: &UploadId,
        silent: Duration,
    ) -> Option<Arc<Holder>> {
        let locks = self.locks.lock().ok()?;
        let holder = locks.get(upload_id)?;
        holder.silent_for(silent).then(|| holder.clone())
    }

    pub(super) fn take_hash(&self, upload_id: &UploadId, offset: u64) -> Option<Hashed> {
        let mut hashes = self.hashes.lock().ok()?;
        match hashes.remove(upload_id) {
            Some((covered, hasher)) if covered == offset => Some(hasher),
            _ if offset == 0 => Some(Hashed::Ready(Sha256::new())),
            _ => None,
        }
    }

    pub(super) fn keep_hash(&self, upload_id: &UploadId, offset: u64, hasher: Hashed) {
        if let Ok(mut hashes) = self.hashes.lock() {
            hashes.insert(upload_id.clone(), (offset, hasher));
        }
    }

    pub(super) fn forget_hash(&self, upload_id: &UploadId) {
        if let Ok(mut hashes) = self.hashes.lock() {
            hashes.remove(upload_id);
        }
    }
}

/// What a request waiting for an upload knows of the one holding its lock.
#[derive(Default)]
pub(super) struct Holder {
    /// When the holding PATCH last received body bytes; `None` for any other work under the
    /// lock (finishing, termination, an offset check), which is never taken over.
    last_received: Mutex<Option<std::time::Instant>>,
    /// Asks the holding PATCH to stop reading and keep what arrived.
    release: tokio::sync::Notify,
}

impl Holder {
    pub(super) fn received(&self) {
        if let Ok(mut last) = self.last_received.lock() {
            *last = Some(std::time::Instant::now());
        }
    }

    fn silent_for(&self, silent: Duration) -> bool {
        self.last_received
            .lock()
            .ok()
            .and_then(|last| *last)
            .is_some_and(|last| last.elapsed() >= silent)
    }

    /// The holder's PATCH ends; it may be waiting for a chunk or writing one (then it stops
    /// at the next).
    pub(super) fn ask_to_release(&self) {
        self.release.notify_one();
    }
}

/// Held while something works on an upload; dropping it unlocks.
pub(super) struct UploadLock {
    pub(super) locks: Arc<Mutex<HashMap<UploadId, Arc<Holder>>>>,
    pub(super) freed: Arc<tokio::sync::Notify>,
    pub(super) upload_id: UploadId,
    pub(super) holder: Arc<Holder>,
    /// The upload's lock file, `flock`ed: the lock across processes sharing `partial_dir`.
    /// Closing it (or the process dying) releases it.
    _across_nodes: Option<std::fs::File>,
}

impl TusDeps {
    /// The upload's lock, in this process and, through an exclusive `flock` on its lock file,
    /// in every other node sharing `partial_dir`: a PATCH racing one on another node is refused
    /// (`upload_locked`) instead of interleaving bytes, and a node's start-up recovery leaves
    /// alone what another node is finishing. The lock file outlives the partial file (which
    /// finishing moves away) until the record goes ([`remove_lock_file`]); it is made by the
    /// first lock of an upload whose partial file exists, never for an id nobody uploads to.
    pub(super) fn lock(&self, upload_id: &UploadId) -> Result<UploadLock, UploadError> {
        let mut lock = self.shared.lock(upload_id)?;
        let path = lock_path(&self.partial_dir, upload_id);
        let open = |create: bool| {
            std::fs::OpenOptions::new()
                .write(true)
                .create(create)
                .truncate(false)
                .open(&path)
        };
        let file = match open(false) {
            Ok(file) => Some(file),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if partial_path(&self.partial_dir, upload_id).exists() {
                    Some(open(true).map_err(io_error)?)
                } else {
                    None
                }
            }
            Err(error) => return Err(io_error(error)),
        };
        if let Some(file) = file {
            rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                .map_err(|_| UploadError::Locked)?;
            lock._across_nodes = Some(file);
        }
        Ok(lock)
    }
}

impl Drop for UploadLock {
    fn drop(&mut self) {
        if let Ok(mut locks) = self.locks.lock() {
            locks.remove(&self.upload_id);
        }
        self.freed.notify_waiters();
    }
}

/// What the resumable half of the actor needs besides the one-shot's dependencies.
#[derive(Clone)]
pub struct TusDeps {
    pub repo: SharedRepo,
    /// Where partial uploads live (`data_dir/partials`).
    pub partial_dir: PathBuf,
    pub shared: TusShared,
    /// The upload cache: stored records by id, read by HEAD and every PATCH; the actor's
    /// writes replace or drop an entry after the store has them.
    pub records: Arc<crate::cache::TtlLru<UploadId, crate::model::TusUpload>>,
    /// `storage.min_free_disk_mb` in bytes: below it, uploads are refused as "disk full".
    pub min_free_disk_bytes: u64,
}

pub(crate) fn partial_path(dir: &Path, upload_id: &UploadId) -> PathBuf {
    dir.join(format!("{upload_id}.part"))
}

fn lock_path(dir: &Path, upload_id: &UploadId) -> PathBuf {
    dir.join(format!("{upload_id}.lock"))
}

/// Removes the upload's lock file; only while holding the lock, once the record is gone, so a
/// node that opens a new one finds no upload to work on.
pub(super) fn remove_lock_file(dir: &Path, upload_id: &UploadId) -> std::io::Result<()> {
    match std::fs::remove_file(lock_path(dir, upload_id)) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

pub(super) fn io_error(error: std::io::Error) -> UploadError {
    if crate::blobs::is_disk_full(&error) {
        UploadError::DiskFull(error.to_string())
    } else {
        UploadError::Disk(error.to_string())
    }
}

pub(super) async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, UploadError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| UploadError::Disk(e.to_string()))?
        .map_err(io_error)
}

// ---------------------------------------------------------------------------------------------
// The sink

/// Receives one PATCH body: hashes it, sniffs the container while the first bytes arrive,
/// enforces the length, and writes into the partial file at the acknowledged offset.
pub struct TusSink {
    pub(super) upload: TusUpload,
    pub(super) start: u64,
    pub(super) received: u64,
    /// Most bytes this PATCH may carry, and the size limit exceeding it runs into.
    pub(super) room: u64,
    pub(super) limit: u64,
    /// Quota for a PATCH of an upload whose length is still deferred; grows with the bytes.
    pub(super) reservation: Option<Reservation>,
    /// Opened for appending: the file ends at `start` when the PATCH begins.
    pub(super) file: Arc<std::fs::File>,
    /// Received chunks not yet handed to the blocking pool; the HTTP layer's own buffers, so
    /// the body is never copied before the kernel copies it into the page cache.
    pub(super) pending: Vec<Bytes>,
    pub(super) pending_bytes: usize,
    /// Bytes of this PATCH handed to the blocking pool; the next batch lands at `start + flushed`.
    pub(super) flushed: u64,
    pub(super) chunk: Option<(ChunkChecksum, ChunkHasher)>,
    /// The running hash of the whole file; `None` when unknown (finishing then reads the file)
    /// and while `hashing` has it.
    pub(super) whole: Option<Hashed>,
    /// The whole-file hash running on its own thread, a few batches behind the writes.
    pub(super) hashing: Option<HashFeed>,
    /// The previous buffer being written on the blocking pool while the next one arrives.
    pub(super) in_flight: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// The file's first bytes, gathered until the container is known.
    pub(super) head: Option<Vec<u8>>,
    /// The container became known during this PATCH, so the record must learn it.
    pub(super) sniffed: bool,
    /// Shared with the write in flight, so a dropped sink's last write cannot land after the
    /// next PATCH has started.
    pub(super) lock: Arc<UploadLock>,
}

impl std::fmt::Debug for TusSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TusSink")
            .field("upload_id", &self.upload.id)
            .field("start", &self.start)
            .field("received", &self.received)
            .finish()
    }
}

impl TusSink {
    pub fn upload_id(&self) -> &UploadId {
        &self.upload.id
    }

    /// Completes when another request of the upload's owner takes it over (after
    /// `TAKE_OVER_AFTER` of silence): the PATCH should stop reading and commit what arrived.
    pub async fn release_requested(&self) {
        self.lock.holder.release.notified().await
    }

    pub async fn write(&mut self, chunk: Bytes) -> Result<(), UploadError> {
        self.lock.holder.received();
        let received = self.received + chunk.len() as u64;
        if received > self.room {
            return Err(UploadError::TooLarge { limit: self.limit });
        }
        if let Some(reservation) = &mut self.reservation {
            reservation.cover(received, RESERVE_AHEAD).await?;
        }
        if let Some((_, hasher)) = &mut self.chunk {
            hasher.update(&chunk);
        }
        self.received += chunk.len() as u64;
        if let Some(head) = &mut self.head {
            let wanted = SNIFF_BYTES.saturating_sub(head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..wanted]);
            if head.len() >= SNIFF_BYTES {
                self.sniff()?;
            }
        }
        self.pending_bytes += chunk.len();
        self.pending.push(chunk);
        if self.pending_bytes >= WRITE_BUFFER {
            self.flush().await?;
        }
        Ok(())
    }

    pub(super) fn sniff(&mut self) -> Result<(), UploadError> {
        let head = self.head.take().unwrap_or_default();
        let container = sniff_container(&head).ok_or(UploadError::NotAVideo)?;
        self.upload.container = Some(container.as_str().to_string());
        self.sniffed = true;
        Ok(())
    }

    /// Sends the pending chunks to the blocking pool as one gathered append, and to the hash
    /// thread; at most one append is in flight, so receiving the next batch overlaps with
    /// writing this one, and the hash may lag a few batches behind both.
    pub(super) async fn flush(&mut self) -> Result<(), UploadError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let chunks = Arc::new(std::mem::take(&mut self.pending));
        if let Some(hasher) = self.whole.take() {
            // The previous PATCH's hash has usually caught up during the round trip between.
            if let Some(hasher) = hasher.resolve().await {
                self.hashing = Some(HashFeed::start(hasher));
            }
        }
        if let Some(feed) = &self.hashing {
            if feed.batches.send(chunks.clone()).await.is_err() {
                // The hash thread is gone (it panicked): finishing reads the file instead.
                self.hashing = None;
            }
        }
        self.settle().await?;
        let (position, length) = (self.start + self.flushed, self.pending_bytes);
        self.flushed += length as u64;
        self.pending_bytes = 0;
        let (file, lock) = (self.file.clone(), self.lock.clone());
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            let _lock = lock;
            append_all(&file, &chunks)?;
            start_writeback(&file, position, length);
            Ok(())
        }));
        Ok(())
    }

    /// Waits for the write in flight.
    pub(super) async fn settle(&mut self) -> Result<(), UploadError> {
        if let Some(task) = self.in_flight.take() {
            task.await
                .map_err(|e| UploadError::Disk(e.to_string()))?
                .map_err(io_error)?;
        }
        Ok(())
    }

    /// Drops this PATCH's bytes: the file goes back to where the PATCH began. The cut is made
    /// durable (refusals are rare) so a power loss cannot bring the bytes back.
    pub(super) async fn discard(&mut self) -> Result<(), UploadError> {
        self.pending.clear();
        self.pending_bytes = 0;
        let settled = self.settle().await;
        let (file, start) = (self.file.clone(), self.start);
        run_blocking(move || file.set_len(start).and_then(|()| file.sync_all())).await?;
        settled
    }

    /// Writes every received byte to the file (the page cache): from here a crash of the
    /// process cannot lose them. The whole-file hash may still be catching up.
    pub(super) async fn write_out(&mut self) -> Result<(), UploadError> {
        self.flush().await?;
        self.settle().await?;
        if let Some(feed) = self.hashing.take() {
            self.whole = Some(Hashed::CatchingUp(feed.close()));
        }
        Ok(())
    }

    /// fsyncs the file. `with_mtime` also syncs the metadata the expiry is derived from.
    pub(super) async fn sync(&self, with_mtime: bool) -> Result<(), UploadError> {
        let file = self.file.clone();
        run_blocking(move || {
            if with_mtime {
                file.sync_all()
            } else {
                file.sync_data()
            }
        })
        .await
    }
}

/// Batches the hash thread may lag behind: the bytes they hold stay in memory until hashed.
const HASH_QUEUE: usize = 4;

/// The whole-file SHA-256 on a blocking-pool thread, fed batch by batch in order. Hashing a
/// gibibyte costs ~0.8 s of CPU (more than receiving and writing it together): on the thread
/// that receives, or in turn with the writes, it set the upload's pace.
pub(super) struct HashFeed {
    batches: tokio::sync::mpsc::Sender<Arc<Vec<Bytes>>>,
    task: tokio::task::JoinHandle<Sha256>,
}

impl HashFeed {
    fn start(mut hasher: Sha256) -> Self {
        let (batches, mut received) = tokio::sync::mpsc::channel::<Arc<Vec<Bytes>>>(HASH_QUEUE);
        let task = tokio::task::spawn_blocking(move || {
            while let Some(batch) = received.blocking_recv() {
                for chunk in batch.iter() {
                    hasher.update(chunk);
                }
            }
            hasher
        });
        Self { batches, task }
    }

    /// No more batches: the thread hashes what it has and hands the hasher back.
    fn close(self) -> tokio::task::JoinHandle<Sha256> {
        drop(self.batches);
        self.task
    }
}

/// The whole-file hash between batches and PATCHes.
pub(super) enum Hashed {
    Ready(Sha256),
    /// The hash thread of a PATCH already acknowledged, hashing its last batches: waiting for it
    /// is left to whoever needs the hash next (the next PATCH's first batch, or finishing), so
    /// the reply does not wait for it.
    CatchingUp(tokio::task::JoinHandle<Sha256>),
}

impl Hashed {
    /// The hasher, once caught up; `None` if the hash thread panicked (finishing then reads
    /// the file).
    pub(super) async fn resolve(self) -> Option<Sha256> {
        match self {
            Self::Ready(hasher) => Some(hasher),
            Self::CatchingUp(task) => task.await.ok(),
        }
    }
}

/// Starts writing a batch just appended to the disk, without waiting for it: otherwise the page
/// cache holds the whole upload until the fsync on completion, which then pays for all of it
/// after the last byte arrived instead of while the next ones arrive.
#[cfg(target_os = "linux")]
pub(super) fn start_writeback(file: &std::fs::File, position: u64, length: usize) {
    use std::os::fd::AsRawFd;
    let (Ok(position), Ok(length)) = (i64::try_from(position), i64::try_from(length)) else {
        return;
    };
    // SAFETY: a syscall on a descriptor `file` keeps open; it reads no memory of ours. Advisory:
    // if it fails, the fsync on completion still writes everything.
    #[allow(unsafe_code)]
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            position,
            length,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn start_writeback(_: &std::fs::File, _: u64, _: usize) {}

/// Appends `chunks` in as few `writev` calls as the kernel allows.
pub(super) fn append_all(mut file: &std::fs::File, chunks: &[Bytes]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = chunks.iter().map(|chunk| IoSlice::new(chunk)).collect();
    let mut remaining = &mut slices[..];
    while !remaining.is_empty() {
        match file.write_vectored(remaining) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut remaining, written),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_to_a_full_disk_is_insufficient_storage() {
        // /dev/full fails every write with a real ENOSPC from the kernel.
        let full = std::fs::OpenOptions::new()
            .append(true)
            .open("/dev/full")
            .unwrap();
        let error = append_all(&full, &[Bytes::from_static(b"chunk")]).unwrap_err();
        let error = io_error(error);
        assert!(matches!(error, UploadError::DiskFull(_)), "{error}");
        use crate::error::DomainError;
        assert_eq!(error.code(), "insufficient_storage");
        assert_eq!(
            io_error(std::io::Error::from_raw_os_error(libc::EDQUOT)).code(),
            "insufficient_storage"
        );
        assert_eq!(
            io_error(std::io::Error::from_raw_os_error(libc::EIO)).code(),
            "disk_unavailable"
        );
    }
}
