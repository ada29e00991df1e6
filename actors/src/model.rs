//! Domain model: identifiers, media records, jobs. Plain data, serialised only into the store;
//! the web crate maps these to its own DTOs.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

macro_rules! id_type {
    ($name:ident) => {
        /// A UUIDv7 identifier: time ordered, so store keys sort by creation.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(uuid::Uuid);

        impl $name {
            pub fn new() -> Self {
                Self(uuid::Uuid::now_v7())
            }
            /// Parses a client-supplied id; `None` when it is not a UUID.
            pub fn parse(text: &str) -> Option<Self> {
                uuid::Uuid::try_parse(text).ok().map(Self)
            }
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }
            pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
                uuid::Uuid::from_slice(bytes).ok().map(Self)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.as_hyphenated().fmt(f)
            }
        }
    };
}

id_type!(MediaId);
id_type!(JobId);
id_type!(UploadId);
id_type!(AuditId);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaState {
    Uploading,
    Processing,
    Ready,
    Failed,
}

impl MediaState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uploading => "uploading",
            Self::Processing => "processing",
            Self::Ready => "ready",
            Self::Failed => "failed",
        }
    }
}

/// Who finds and plays a media item. Records stored before it existed read as `Public`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Listed, searchable, playable by anyone (subject to its gate).
    #[default]
    Public,
    /// Not listed or searchable; plays for anyone with the link (subject to its gate).
    Unlisted,
    /// Only the owner and admins see or play it; everyone else gets 404.
    Private,
}

impl Visibility {
    pub const ALL: [Self; 3] = [Self::Public, Self::Unlisted, Self::Private];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Unlisted => "unlisted",
            Self::Private => "private",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|level| level.as_str() == text)
    }
}

/// One rung of the HLS ladder as it was actually produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rendition {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub video_bitrate_kbps: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Media {
    pub id: MediaId,
    pub title: String,
    pub description: String,
    pub tags: Vec<String>,
    /// Wallet address of the creator; `None` until sessions exist.
    pub owner: Option<String>,
    #[serde(default)]
    pub visibility: Visibility,
    /// Nanoseconds since the epoch of the last change to `visibility` (0: never changed). It
    /// versions the URLs of non-public media, so a tightening never reuses a URL seen before.
    #[serde(default)]
    pub visibility_epoch: u64,
    /// Languages (BCP 47 tags) with a WebVTT caption track, sorted.
    #[serde(default)]
    pub captions: Vec<String>,
    pub state: MediaState,
    /// Why processing failed, when `state` is `Failed`: a message fit for the client.
    pub failure: Option<String>,
    /// The stable code of `failure` (e.g. `format_mismatch`).
    #[serde(default)]
    pub failure_code: Option<String>,
    pub upload_id: UploadId,
    pub filename: Option<String>,
    pub size: u64,
    pub sha256: String,
    /// Blob key of the uploaded source file.
    pub source_key: String,
    /// The container sniffed at upload (`sniff::Container` name); it pins ffmpeg's demuxer.
    /// `None` on records made before it was stored: the job sniffs the source then.
    #[serde(default)]
    pub container: Option<String>,
    pub duration_s: Option<f64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub video_codec: Option<String>,
    pub renditions: Vec<Rendition>,
    /// When the first segments of every rung were out, so the media played while its job
    /// still ran (`None`: not yet, or published only at the end).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub playable_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// Why a media's processing failed, as clients see it.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaFailure {
    /// Stable snake_case code.
    pub code: String,
    /// A message without paths or tool output.
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// The full ladder (or `profiles` of it), DASH manifest and thumbnail of one media item.
    Transcode,
    /// Only the thumbnail of one media item.
    Thumbnail,
    /// Removes orphaned blobs, abandoned partial writes and stale work directories.
    Cleanup,
}

impl JobKind {
    pub const ALL: [Self; 3] = [Self::Transcode, Self::Thumbnail, Self::Cleanup];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transcode => "transcode",
            Self::Thumbnail => "thumbnail",
            Self::Cleanup => "cleanup",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    /// Whether jobs of this kind work on one media item.
    pub fn needs_media(self) -> bool {
        !matches!(self, Self::Cleanup)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
    pub const ALL: [Self; 5] = [
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == text)
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub kind: JobKind,
    /// The media item worked on; `None` for kinds that work on the whole store (cleanup).
    pub media_id: Option<MediaId>,
    /// Ladder rung names to produce (transcode only); empty means the whole ladder.
    #[serde(default)]
    pub profiles: Vec<String>,
    pub state: JobState,
    /// 0 (lowest) to 9 (highest).
    pub priority: u8,
    pub attempts: u32,
    /// Why the last attempt failed: a message fit for the client (no paths, no ffmpeg output).
    pub last_error: Option<String>,
    /// The stable code of `last_error` (e.g. `undecodable`, `video_too_long`).
    #[serde(default)]
    pub error_code: Option<String>,
    /// The wallet that owns the job's media, for the per-owner queue cap and access checks.
    #[serde(default)]
    pub owner: Option<String>,
    /// 0–100.
    pub progress: u8,
    /// What a finished run did, e.g. what a cleanup removed.
    #[serde(default)]
    pub summary: Option<String>,
    /// Not before this time: a scheduled job, or the backoff before a retry.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub run_at: Option<OffsetDateTime>,
    /// When the latest attempt started.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    /// When the job reached a final state.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// W3C trace id of the request that queued the job; the job's logs carry it.
    #[serde(default)]
    pub trace_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Records on Postgres: the node running the job and until when (`None` while not
    /// running, and always on sled, where one node runs everything).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<JobLease>,
}

/// A running job's lease: `node` runs it until `until` unless it renews the lease first; once it
/// lapsed, any node may take the job over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLease {
    pub node: String,
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
    /// Who asked another node to cancel the run; the lease holder sees it when it renews.
    #[serde(default)]
    pub cancel_requested_by: Option<String>,
}

/// What the store did with a cancel request ([`crate::store::JobRepo::request_cancel`]).
#[derive(Debug, Clone, PartialEq)]
pub enum CancelRequest {
    /// No such job.
    Unknown,
    /// It had already ended; nothing changed.
    Final(Job),
    /// It was queued and is now cancelled.
    Cancelled(Job),
    /// It is running: the request is on its lease for the node running it.
    Requested(Job),
}

/// What ffprobe told us about a source file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub duration_s: f64,
    pub width: u32,
    pub height: u32,
    pub video_codec: String,
    pub has_audio: bool,
}

/// One entry of the append-only audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: AuditId,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// What happened, dotted `snake_case`: `upload.finish`, `job.submit`, `auth.login`, …
    pub action: String,
    /// Who did it: a wallet address, `admin`, or `ip:<address>` for anonymous callers.
    pub actor: String,
    /// What it was done to, e.g. a media or job id.
    pub target: Option<String>,
    /// `ok`, `denied` or `failed`.
    pub outcome: String,
    pub detail: Option<String>,
}

/// Which token standard a gate checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenStandard {
    Erc721,
    Erc1155,
}

impl TokenStandard {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Erc721 => "erc721",
            Self::Erc1155 => "erc1155",
        }
    }
}

/// A token-ownership requirement on one media item: the viewer's wallet must hold at least
/// `min_balance` of the token (`token_id`) or of the collection (no `token_id`, ERC-721 only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gate {
    pub chain_id: u64,
    /// EIP-55 checksummed contract address.
    pub contract: String,
    pub standard: TokenStandard,
    /// Decimal uint256.
    pub token_id: Option<String>,
    pub min_balance: u64,
    /// Who set it: a wallet address or `admin`.
    pub set_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub set_at: OffsetDateTime,
}

/// A login nonce we issued, bound to the address and chain it was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonceRecord {
    pub nonce: String,
    /// EIP-55 checksummed.
    pub address: String,
    pub chain_id: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Set by the one login that consumed it; kept until expiry so a replay is told apart from
    /// a nonce we never issued.
    pub used: bool,
}

/// Where a resumable (tus) upload stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TusState {
    /// Accepting PATCHes; the bytes live in a partial file outside the blob store.
    Receiving,
    /// Every byte arrived; the source blob, media record and job are being made. A restart
    /// resumes from here, so the job is queued exactly once.
    Finishing,
    /// The media record exists and its transcode job is queued.
    Finished,
}

impl TusState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Receiving => "receiving",
            Self::Finishing => "finishing",
            Self::Finished => "finished",
        }
    }
}

/// What `Upload-Metadata` said about the file, decoded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TusMetadata {
    pub filename: Option<String>,
    pub title: Option<String>,
    pub description: Option<String>,
    pub tags: Vec<String>,
    /// `visibility` from `Upload-Metadata`; `None`: the server default.
    #[serde(default)]
    pub visibility: Option<Visibility>,
    /// The validated `gate` from `Upload-Metadata`, stored with the media record.
    #[serde(default)]
    pub gate: Option<Gate>,
}

/// One resumable upload. While `receiving`, the partial file's length is the authority for the
/// offset; the stored `offset` is what it was when the record was last written (see `upload::tus`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TusUpload {
    pub id: UploadId,
    /// Who created it (the quota key): the caller identity string.
    pub owner: String,
    /// `None` while the length is deferred (`Upload-Defer-Length: 1`).
    pub length: Option<u64>,
    pub offset: u64,
    pub metadata: TusMetadata,
    /// The `Upload-Metadata` header as received, echoed on HEAD.
    pub raw_metadata: Option<String>,
    pub state: TusState,
    pub container: Option<String>,
    /// Set when finishing starts, so a restart creates the same media record.
    pub media_id: Option<MediaId>,
    /// SHA-256 of the whole file, known once finishing starts.
    pub sha256: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// An unfinished upload not touched before this is deleted with its bytes.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Set while a PATCH with an `Upload-Checksum` writes from this offset: its bytes are not
    /// part of the upload until verified, so a crash mid-PATCH cuts the file back to here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unverified_from: Option<u64>,
}
