//! The full-text search index over media records (tantivy, on disk under `data_dir/search`).
//!
//! Indexed: title, description and tags as text (default tokenizer: split on non-alphanumerics,
//! lower-cased); tags and owner (lower-cased) as exact terms for filters; the id as two u64 fast
//! fields for ordering; each record as stored JSON, so a search answers without the record store.
//!
//! Order, and why paging has neither duplicates nor gaps:
//! - without `q`: id order (= creation order, ids are UUIDv7); the cursor is the last id. New
//!   media sort after every existing one, so concurrent creates never shift earlier pages.
//! - with `q`: score descending, then id ascending; the cursor is (score, id) and the next page
//!   holds exactly the docs that sort after it. Scores depend on index-wide statistics, so an
//!   edit *between* two page requests may move items across the cursor; with no writes in
//!   between the walk is exact.
//!
//! Writers: only the MetadataActor (the `IndexWriter` is behind a mutex). A write is staged in
//! the writer at once and committed by a group commit every [`COMMIT_INTERVAL`]: a tantivy
//! commit fsyncs several files (≈ 100 ms on a busy disk), so one per write would cap writes at
//! ~10/s. Search is therefore near real time: a change is searchable within about
//! [`COMMIT_INTERVAL`] plus one commit. A visibility change or a deletion commits at once
//! (the MetadataActor's `publish_at_once`): what must not be listed any more is not. Staged
//! writes are committed when the last handle drops; after a crash the start-up reconciliation
//! re-indexes them. Readers: any thread, through [`SearchIndex::search`].
//!
//! Invariant: at start-up the index matches the store. [`SearchIndex::open`] rebuilds it when it
//! is missing or unreadable and reconciles (re-indexes or drops) every record whose stored
//! `updated_at` differs, which covers a crash between a store write and its index commit.

mod page;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, Weak,
    },
    time::Duration,
};

use tantivy::{
    collector::Count,
    query::{AllQuery, BooleanQuery, Occur, Query, QueryParser, TermQuery},
    schema::{Field, IndexRecordOption, Schema, Value, FAST, STORED, STRING, TEXT},
    Index, IndexReader, IndexWriter, ReloadPolicy, Score, TantivyDocument, Term,
};

use crate::{
    error::{DomainError, ErrorKind},
    model::{Media, MediaId, Visibility},
    store::SharedRepo,
};

/// Memory for the single indexing thread (tantivy's minimum is 15 MB).
const WRITER_HEAP_BYTES: usize = 32_000_000;
pub const MAX_PAGE: usize = 100;
/// How often staged index writes are committed (and become searchable).
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search index: {0}")]
    Index(String),
    #[error("cursor is not one we issued")]
    InvalidCursor,
}

impl DomainError for SearchError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Index(_) => ErrorKind::Unavailable,
            Self::InvalidCursor => ErrorKind::Invalid,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            Self::Index(_) => "search_unavailable",
            Self::InvalidCursor => "invalid_cursor",
        }
    }
}

impl From<tantivy::TantivyError> for SearchError {
    fn from(error: tantivy::TantivyError) -> Self {
        Self::Index(error.to_string())
    }
}

/// One search request; every filter narrows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct SearchQuery {
    /// Words to find in title, description or tags (all must match); empty: everything.
    pub q: Option<String>,
    pub tag: Option<String>,
    pub owner: Option<String>,
    pub cursor: Option<String>,
    pub limit: usize,
}

impl SearchQuery {
    /// The query with everything [`SearchIndex::search`] ignores taken out: `q` trimmed (empty
    /// is none), `tag` and `owner` trimmed and lower-cased, `limit` clamped. Two queries with
    /// the same normal form return the same page.
    pub fn normalised(&self) -> Self {
        let exact = |text: &Option<String>| text.as_deref().map(|t| t.trim().to_lowercase());
        Self {
            q: self
                .q
                .as_deref()
                .map(str::trim)
                .filter(|q| !q.is_empty())
                .map(str::to_string),
            tag: exact(&self.tag),
            owner: exact(&self.owner),
            cursor: self.cursor.clone(),
            limit: self.limit.clamp(1, MAX_PAGE),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SearchPage {
    pub items: Vec<Media>,
    /// Present when a full page was returned; pass it back as `cursor`.
    pub next_cursor: Option<String>,
}

/// Where the previous page ended.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cursor {
    score: Score,
    id: u128,
}

impl Cursor {
    fn encode(&self, ranked: bool) -> String {
        let id = uuid::Uuid::from_u128(self.id).as_hyphenated().to_string();
        if ranked {
            format!("{:08x}.{id}", self.score.to_bits())
        } else {
            id
        }
    }

    fn decode(text: &str, ranked: bool) -> Result<Self, SearchError> {
        let (score, id) = match (ranked, text.split_once('.')) {
            (true, Some((bits, id))) => {
                let bits = u32::from_str_radix(bits, 16).map_err(|_| SearchError::InvalidCursor)?;
                (Score::from_bits(bits), id)
            }
            (false, None) => (0.0, text),
            _ => return Err(SearchError::InvalidCursor),
        };
        let id = uuid::Uuid::try_parse(id).map_err(|_| SearchError::InvalidCursor)?;
        if !score.is_finite() {
            return Err(SearchError::InvalidCursor);
        }
        Ok(Self {
            score,
            id: id.as_u128(),
        })
    }
}

#[derive(Clone, Copy)]
struct Fields {
    id: Field,
    id_hi: Field,
    id_lo: Field,
    updated: Field,
    title: Field,
    description: Field,
    tags_text: Field,
    tag: Field,
    owner: Field,
    record: Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let fields = Fields {
        id: builder.add_text_field("id", STRING),
        id_hi: builder.add_u64_field("id_hi", FAST),
        id_lo: builder.add_u64_field("id_lo", FAST),
        updated: builder.add_i64_field("updated_ns", FAST),
        title: builder.add_text_field("title", TEXT),
        description: builder.add_text_field("description", TEXT),
        tags_text: builder.add_text_field("tags_text", TEXT),
        tag: builder.add_text_field("tag", STRING),
        owner: builder.add_text_field("owner", STRING),
        record: builder.add_bytes_field("record", STORED),
    };
    (builder.build(), fields)
}

fn updated_ns(media: &Media) -> i64 {
    i64::try_from(media.updated_at.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

/// A cheap-to-clone handle on the index: searches from any thread; writes by the MetadataActor.
#[derive(Clone)]
pub struct SearchIndex {
    inner: Arc<Inner>,
}

struct Inner {
    reader: IndexReader,
    /// Words over title, description and tags, all required; built once (it only reads the
    /// schema and the tokenizers, which never change).
    parser: QueryParser,
    writer: Mutex<IndexWriter>,
    fields: Fields,
    dir: PathBuf,
    /// Writes staged since the last commit.
    dirty: AtomicBool,
    /// Bumped after every reload that follows a commit: the only point where what searches
    /// return changes (the reader reloads manually). Keys of the search page cache.
    generation: AtomicU64,
}

impl Inner {
    fn writer(&self) -> MutexGuard<'_, IndexWriter> {
        self.writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Commits staged writes, if any, and lets readers see them. The writer lock is held up to
    /// the generation bump, so a caller that finds nothing staged knows that whoever took the
    /// staged writes has made them searchable: [`SearchIndex::commit`] returning means searches
    /// see every write staged before it was called.
    fn commit(&self) -> Result<(), SearchError> {
        let mut writer = self.writer();
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        if let Err(error) = writer.commit() {
            // Keep them staged for the next try.
            self.dirty.store(true, Ordering::Release);
            return Err(error.into());
        }
        if let Err(error) = self.reader.reload() {
            // Committed but not visible: the next commit retries the reload.
            self.dirty.store(true, Ordering::Release);
            return Err(error.into());
        }
        // After the reload: a reader that sees the new generation searches the new segments.
        self.generation.fetch_add(1, Ordering::AcqRel);
        drop(writer);
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(error) = self.commit() {
            tracing::error!(%error, "staged search index writes lost; reconciled at next start");
        }
    }
}

/// Commits every [`COMMIT_INTERVAL`] until the index is dropped.
fn group_commits(inner: Weak<Inner>) {
    loop {
        std::thread::sleep(COMMIT_INTERVAL);
        let Some(inner) = inner.upgrade() else { return };
        if let Err(error) = inner.commit() {
            tracing::error!(%error, "search index commit failed; retrying");
        }
    }
}

/// What [`SearchIndex::open`] had to do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// The index was missing or unreadable and was created anew.
    pub rebuilt: bool,
    /// Records (re-)indexed to match the store.
    pub indexed: usize,
    /// Index entries dropped because the store no longer has them.
    pub dropped: usize,
}

impl SearchIndex {
    /// Opens (or creates, or rebuilds) the index in `dir` and reconciles it with `repo`.
    /// Blocking: call it at start-up, before the actors run.
    pub fn open(dir: &Path, repo: &SharedRepo) -> Result<(Self, OpenReport), SearchError> {
        let mut report = OpenReport::default();
        // An index dropped a moment ago (a restart in the same process) may still hold it.
        crate::store::wait_for_file_lock(
            &dir.join(".tantivy-writer.lock"),
            "the search index's writer lock",
        );
        let index = match Self::open_existing(dir) {
            Ok(index) => index,
            Err(reason) => {
                if dir.exists() {
                    tracing::warn!(dir = %dir.display(), %reason, "search index unreadable: rebuilding");
                } else {
                    tracing::info!(dir = %dir.display(), "no search index yet: building it");
                }
                report.rebuilt = true;
                let _ = std::fs::remove_dir_all(dir);
                std::fs::create_dir_all(dir).map_err(|e| SearchError::Index(e.to_string()))?;
                Index::create_in_dir(dir, schema().0)?
            }
        };
        let mut search = Self::unstarted(index.clone(), dir)?;
        let (indexed, dropped) = search.reconcile(repo)?;
        report.indexed = indexed;
        report.dropped = dropped;
        if indexed + dropped > 0 {
            // A writer keeps what its last batch needed (a scoring weight per replaced record,
            // buffers sized by the batch): after a rebuild of thousands of records that is
            // megabytes held for the life of the process. A new writer starts empty.
            drop(search);
            search = Self::unstarted(index, dir)?;
        }
        search.start_group_commits()?;
        Ok((search, report))
    }

    /// An index in memory only (benches, tests).
    pub fn in_memory() -> Result<Self, SearchError> {
        let search = Self::unstarted(Index::create_in_ram(schema().0), Path::new(""))?;
        search.start_group_commits()?;
        Ok(search)
    }

    fn open_existing(dir: &Path) -> Result<Index, String> {
        let index = Index::open_in_dir(dir).map_err(|e| e.to_string())?;
        if index.schema() != schema().0 {
            return Err("the index was built with another schema".into());
        }
        // Opening reads only meta.json: check every live file's checksum, then open them all.
        let damaged = index.validate_checksum().map_err(|e| e.to_string())?;
        if !damaged.is_empty() {
            return Err(format!("damaged files: {damaged:?}"));
        }
        let reader = index.reader().map_err(|e| e.to_string())?;
        let searcher = reader.searcher();
        searcher
            .search(&AllQuery, &Count)
            .map_err(|e| e.to_string())?;
        for segment in searcher.segment_readers() {
            let store = segment.get_store_reader(0).map_err(|e| e.to_string())?;
            for doc in segment.doc_ids_alive().take(1) {
                store
                    .get::<TantivyDocument>(doc)
                    .map_err(|e| e.to_string())?;
            }
            segment
                .fast_fields()
                .u64("id_hi")
                .map_err(|e| e.to_string())?;
        }
        Ok(index)
    }

    /// Reader and writer, without the group-commit thread: dropping it drops the writer at
    /// once, releasing the index's writer lock.
    fn unstarted(index: Index, dir: &Path) -> Result<Self, SearchError> {
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let writer = index.writer_with_num_threads(1, WRITER_HEAP_BYTES)?;
        let fields = schema().1;
        let mut parser = QueryParser::for_index(
            &index,
            vec![fields.title, fields.description, fields.tags_text],
        );
        parser.set_conjunction_by_default();
        let inner = Arc::new(Inner {
            reader,
            parser,
            writer: Mutex::new(writer),
            fields,
            dir: dir.to_path_buf(),
            dirty: AtomicBool::new(false),
            generation: AtomicU64::new(0),
        });
        Ok(Self { inner })
    }

    fn start_group_commits(&self) -> Result<(), SearchError> {
        let committer = Arc::downgrade(&self.inner);
        std::thread::Builder::new()
            .name("search-commit".into())
            .spawn(move || group_commits(committer))
            .map(drop)
            .map_err(|e| SearchError::Index(e.to_string()))
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn document(&self, media: &Media) -> Result<TantivyDocument, SearchError> {
        let f = self.inner.fields;
        let id = u128::from_be_bytes(*media.id.as_bytes());
        let mut doc = TantivyDocument::default();
        doc.add_text(f.id, media.id.to_string());
        doc.add_u64(f.id_hi, (id >> 64) as u64);
        doc.add_u64(f.id_lo, id as u64);
        doc.add_i64(f.updated, updated_ns(media));
        doc.add_text(f.title, &media.title);
        doc.add_text(f.description, &media.description);
        doc.add_text(f.tags_text, media.tags.join(" "));
        for tag in &media.tags {
            doc.add_text(f.tag, tag.to_lowercase());
        }
        if let Some(owner) = &media.owner {
            doc.add_text(f.owner, owner.to_lowercase());
        }
        let record = serde_json::to_vec(media).map_err(|e| SearchError::Index(e.to_string()))?;
        doc.add_bytes(f.record, &record);
        Ok(doc)
    }

    fn id_term(&self, media_id: &MediaId) -> Term {
        Term::from_field_text(self.inner.fields.id, &media_id.to_string())
    }

    /// Stages adding or replacing the records (searchable after the next commit). Media that
    /// are not public are only removed: list and search show public media alone.
    pub fn upsert(&self, media: &[Media]) -> Result<(), SearchError> {
        let documents = media
            .iter()
            .map(|item| {
                (item.visibility == Visibility::Public)
                    .then(|| self.document(item))
                    .transpose()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let writer = self.inner.writer();
        for (item, document) in media.iter().zip(documents) {
            writer.delete_term(self.id_term(&item.id));
            if let Some(document) = document {
                writer.add_document(document)?;
            }
        }
        self.inner.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Stages dropping a record (unsearchable after the next commit).
    pub fn remove(&self, media_id: &MediaId) -> Result<(), SearchError> {
        self.inner.writer().delete_term(self.id_term(media_id));
        self.inner.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Commits staged writes now, so searches see them when this returns. Blocking.
    pub fn commit(&self) -> Result<(), SearchError> {
        self.inner.commit()
    }

    /// Changes whenever committed writes become searchable. Read it *before* searching: a page
    /// searched after reading generation `g` reflects every change of generations up to `g`.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Number of indexed records.
    pub fn len(&self) -> usize {
        self.inner.reader.searcher().num_docs() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes the index hold exactly the store's records (start-up, and after a gap in the change
    /// feed between nodes); returns (indexed, dropped). Blocking.
    pub fn reconcile(&self, repo: &SharedRepo) -> Result<(usize, usize), SearchError> {
        let mut indexed: HashMap<u128, i64> = HashMap::new();
        let searcher = self.inner.reader.searcher();
        for segment in searcher.segment_readers() {
            let fast = segment.fast_fields();
            let hi = fast.u64("id_hi")?.first_or_default_col(0);
            let lo = fast.u64("id_lo")?.first_or_default_col(0);
            let updated = fast.i64("updated_ns")?.first_or_default_col(0);
            for doc in segment.doc_ids_alive() {
                let id = (u128::from(hi.get_val(doc)) << 64) | u128::from(lo.get_val(doc));
                indexed.insert(id, updated.get_val(doc));
            }
        }
        let mut stale = Vec::new();
        let mut after: Option<MediaId> = None;
        let mut upserted = 0;
        loop {
            let page = repo
                .list_media(after.as_ref(), 1000)
                .map_err(|e| SearchError::Index(e.to_string()))?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            for media in page {
                let id = u128::from_be_bytes(*media.id.as_bytes());
                let found = indexed.remove(&id);
                let listed = media.visibility == Visibility::Public;
                if (listed && found != Some(updated_ns(&media))) || (!listed && found.is_some()) {
                    stale.push(media);
                }
            }
            if stale.len() >= 5000 {
                upserted += stale.len();
                self.upsert(&std::mem::take(&mut stale))?;
            }
        }
        upserted += stale.len();
        self.upsert(&stale)?;
        let dropped = indexed.len();
        for id in indexed.keys() {
            if let Some(media_id) = MediaId::from_bytes(&id.to_be_bytes()) {
                self.remove(&media_id)?;
            }
        }
        self.commit()?;
        Ok((upserted, dropped))
    }

    /// One page of results. Blocking (CPU and mmap reads): call through [`Self::search_async`]
    /// from async code.
    pub fn search(&self, query: &SearchQuery) -> Result<SearchPage, SearchError> {
        let f = self.inner.fields;
        let limit = query.limit.clamp(1, MAX_PAGE);
        let words = query.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
        let ranked = words.is_some();
        let cursor = query
            .cursor
            .as_deref()
            .map(|text| Cursor::decode(text, ranked))
            .transpose()?;

        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        if let Some(words) = words {
            // Lenient: a stray quote or colon in what a user typed is not an error.
            let (parsed, _) = self.inner.parser.parse_query_lenient(words);
            clauses.push((Occur::Must, parsed));
        }
        let term = |field: Field, text: &str| -> Box<dyn Query> {
            Box::new(TermQuery::new(
                Term::from_field_text(field, &text.trim().to_lowercase()),
                IndexRecordOption::Basic,
            ))
        };
        if let Some(tag) = query.tag.as_deref() {
            clauses.push((Occur::Must, term(f.tag, tag)));
        }
        if let Some(owner) = query.owner.as_deref() {
            clauses.push((Occur::Must, term(f.owner, owner)));
        }
        let query: Box<dyn Query> = if clauses.is_empty() {
            Box::new(AllQuery)
        } else {
            Box::new(BooleanQuery::new(clauses))
        };

        // Order: score descending, then id ascending (every score is 0 without `q`); the page
        // is what sorts strictly after the cursor. Filters do not rank: scoring is off then.
        let searcher = self.inner.reader.searcher();
        let hits = searcher.search(
            query.as_ref(),
            &page::PageCollector {
                ranked,
                cursor,
                limit,
            },
        )?;
        let mut items = Vec::with_capacity(hits.len());
        for hit in &hits {
            let doc: TantivyDocument = searcher.doc(hit.address)?;
            let record = doc
                .get_first(f.record)
                .and_then(|value| value.as_bytes())
                .ok_or_else(|| SearchError::Index("a document has no record".into()))?;
            let media: Media =
                serde_json::from_slice(record).map_err(|e| SearchError::Index(e.to_string()))?;
            items.push(media);
        }
        let last = hits.last().map(|hit| Cursor {
            score: hit.score,
            id: hit.id,
        });
        let next_cursor = (items.len() == limit)
            .then(|| last.map(|cursor| cursor.encode(ranked)))
            .flatten();
        Ok(SearchPage { items, next_cursor })
    }

    /// [`Self::search`] on the blocking pool.
    pub async fn search_async(&self, query: SearchQuery) -> Result<SearchPage, SearchError> {
        let index = self.clone();
        tokio::task::spawn_blocking(move || index.search(&query))
            .await
            .map_err(|e| SearchError::Index(e.to_string()))?
    }

    /// [`Self::upsert`] on the blocking pool.
    pub async fn upsert_async(&self, media: Media) -> Result<(), SearchError> {
        let index = self.clone();
        tokio::task::spawn_blocking(move || index.upsert(std::slice::from_ref(&media)))
            .await
            .map_err(|e| SearchError::Index(e.to_string()))?
    }

    /// [`Self::remove`] on the blocking pool.
    pub async fn remove_async(&self, media_id: MediaId) -> Result<(), SearchError> {
        let index = self.clone();
        tokio::task::spawn_blocking(move || index.remove(&media_id))
            .await
            .map_err(|e| SearchError::Index(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MediaState, UploadId};
    use time::OffsetDateTime;

    fn media(title: &str, tags: &[&str], owner: &str) -> Media {
        Media {
            id: MediaId::new(),
            title: title.into(),
            description: String::new(),
            tags: tags.iter().map(|tag| tag.to_string()).collect(),
            owner: Some(owner.into()),
            visibility: Default::default(),
            visibility_epoch: 0,
            captions: Vec::new(),
            state: MediaState::Ready,
            failure: None,
            failure_code: None,
            container: None,
            upload_id: UploadId::new(),
            filename: None,
            size: 0,
            sha256: String::new(),
            source_key: String::new(),
            duration_s: None,
            width: None,
            height: None,
            video_codec: None,
            renditions: vec![],
            playable_at: None,
            created_at: OffsetDateTime::now_utc(),
            updated_at: OffsetDateTime::now_utc(),
        }
    }

    fn walk(index: &SearchIndex, mut query: SearchQuery) -> Vec<MediaId> {
        let mut seen = Vec::new();
        loop {
            let page = index.search(&query).unwrap();
            seen.extend(page.items.into_iter().map(|media| media.id));
            match page.next_cursor {
                Some(cursor) => query.cursor = Some(cursor),
                None => return seen,
            }
        }
    }

    #[test]
    fn the_generation_moves_exactly_when_a_commit_makes_writes_searchable() {
        let index = SearchIndex::in_memory().unwrap();
        let start = index.generation();
        index.commit().unwrap();
        assert_eq!(index.generation(), start, "nothing staged, nothing changed");
        index.upsert(&[media("otter", &[], "0xa")]).unwrap();
        index.commit().unwrap();
        assert_eq!(index.generation(), start + 1);
        assert_eq!(index.len(), 1);
        let spaced = SearchQuery {
            q: Some("  otter ".into()),
            tag: Some(" Fish".into()),
            owner: Some("0xA".into()),
            cursor: None,
            limit: 500,
        };
        let plain = SearchQuery {
            q: Some("otter".into()),
            tag: Some("fish".into()),
            owner: Some("0xa".into()),
            cursor: None,
            limit: MAX_PAGE,
        };
        assert_eq!(spaced.normalised(), plain.normalised());
        let blank = SearchQuery {
            q: Some(" ".into()),
            limit: 0,
            ..Default::default()
        };
        assert_eq!(
            blank.normalised(),
            SearchQuery {
                limit: 1,
                ..Default::default()
            }
        );
    }

    #[test]
    fn pages_walk_every_match_once_in_a_stable_order() {
        let index = SearchIndex::in_memory().unwrap();
        let items: Vec<Media> = (0..250)
            .map(|n| {
                let title = if n % 3 == 0 {
                    format!("river boat {n}")
                } else {
                    format!("mountain boat trip number {n}")
                };
                let tag = if n % 2 == 0 { "even" } else { "odd" };
                media(&title, &[tag], if n < 10 { "0xAbC" } else { "0xdef" })
            })
            .collect();
        index.upsert(&items).unwrap();
        index.commit().unwrap();
        assert_eq!(index.len(), 250);

        let all = walk(
            &index,
            SearchQuery {
                limit: 7,
                ..Default::default()
            },
        );
        let expected: Vec<MediaId> = items.iter().map(|media| media.id.clone()).collect();
        assert_eq!(all, expected, "no q: id order, every item once");

        let ranked = walk(
            &index,
            SearchQuery {
                q: Some("boat".into()),
                limit: 9,
                ..Default::default()
            },
        );
        let mut unique = ranked.clone();
        unique.sort();
        unique.dedup();
        assert_eq!((ranked.len(), unique.len()), (250, 250));

        let river = walk(
            &index,
            SearchQuery {
                q: Some("River".into()),
                limit: 5,
                ..Default::default()
            },
        );
        assert_eq!(river.len(), 84);
        let even = walk(
            &index,
            SearchQuery {
                tag: Some("EVEN".into()),
                limit: 50,
                ..Default::default()
            },
        );
        assert_eq!(even.len(), 125);
        let owned = walk(
            &index,
            SearchQuery {
                owner: Some("0xabc".into()),
                q: Some("boat".into()),
                limit: 3,
                ..Default::default()
            },
        );
        assert_eq!(owned.len(), 10);

        index.remove(&items[0].id).unwrap();
        let mut renamed = items[1].clone();
        renamed.title = "submarine".into();
        index.upsert(&[renamed]).unwrap();
        index.commit().unwrap();
        assert_eq!(index.len(), 249);
        let mut tagged = items[2].clone();
        tagged.tags = vec!["zeppelin".into()];
        index.upsert(&[tagged]).unwrap();
        index.commit().unwrap();
        let zeppelin = walk(
            &index,
            SearchQuery {
                tag: Some("zeppelin".into()),
                limit: 5,
                ..Default::default()
            },
        );
        assert_eq!(zeppelin, vec![items[2].id.clone()]);
        let found = walk(
            &index,
            SearchQuery {
                q: Some("submarine".into()),
                limit: 5,
                ..Default::default()
            },
        );
        assert_eq!(found, vec![items[1].id.clone()]);
        assert!(matches!(
            index.search(&SearchQuery {
                cursor: Some("nope".into()),
                limit: 5,
                ..Default::default()
            }),
            Err(SearchError::InvalidCursor)
        ));
    }
}
