//! The JSON shapes of `POST /api/v1/cache/batch` and `POST /api/v1/cache/warm`.

use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    pub ops: Vec<BatchOpBody>,
}

/// One operation, tagged by `op`. `set` stores `value` (text) with `content_type`
/// (`text/plain; charset=utf-8` unless given) for at most `ttl_s` seconds.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum BatchOpBody {
    Get {
        key: String,
    },
    Set {
        key: String,
        value: String,
        content_type: Option<String>,
        ttl_s: Option<u64>,
    },
    Delete {
        key: String,
    },
}

/// One operation's result, in request order. `status` is what the single-key route would
/// have answered (200 hit, 204 stored or deleted, 404 `cache_miss`, 400 `invalid_cache_key`).
#[derive(Serialize)]
pub struct BatchResultDto {
    pub op: &'static str,
    pub key: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    /// A hit's value when it is UTF-8 text…
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// …and base64 (standard alphabet) otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

#[derive(Serialize)]
pub struct BatchDto {
    pub results: Vec<BatchResultDto>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmBody {
    pub media_ids: Vec<String>,
}

#[derive(Serialize)]
pub struct WarmDto {
    /// Records put into the metadata cache.
    pub records: usize,
    /// Playlists put into the streaming cache.
    pub playlists: usize,
    /// Ids without a record.
    pub missing: Vec<String>,
}
