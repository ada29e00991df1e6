//! Publishing a ladder while ffmpeg is still writing it, so an upload plays seconds after its
//! last byte instead of after the whole encode.
//!
//! ffmpeg writes EVENT playlists and renames each playlist into place only after the segments
//! it lists are closed (`temp_file`). Each pass reads those playlists, puts the newly listed
//! segments (init first) into the blob store, and only then the playlist that lists them; the
//! master goes out once every rung it names has a segment.
//!
//! Invariant: a published playlist lists only segments already durable in the blob store, and
//! a published segment is never written again: a retry that encodes the same source skips the
//! names already out, so no URL changes its content and the sequence only grows.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use bytes::Bytes;

use super::ffmpeg::RunFailure;
use crate::{blobs::BlobStore, model::MediaId};

pub(super) const MASTER: &str = "master.m3u8";

/// What one pass found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Pass {
    /// Segments put into the blob store by this pass.
    pub segments: usize,
    /// The master playlist went out in this pass: the media is playable from now on.
    pub became_playable: bool,
}

pub(super) struct Publisher {
    blobs: BlobStore,
    media_id: MediaId,
    out_dir: PathBuf,
    /// Files (relative, e.g. `720p/seg_00003.m4s`) already in the blob store.
    published: HashSet<String>,
    /// Per rung playlist (e.g. `720p/index.m3u8`): how many segments its published copy lists.
    listed: HashMap<String, usize>,
    master_out: bool,
}

impl Publisher {
    /// Picks up what an earlier attempt of the same job already published, so a retry continues
    /// that sequence instead of rewriting it.
    pub async fn resume(blobs: BlobStore, media_id: MediaId, out_dir: PathBuf) -> Self {
        let mut publisher = Self {
            blobs,
            media_id,
            out_dir,
            published: HashSet::new(),
            listed: HashMap::new(),
            master_out: false,
        };
        let master = publisher
            .blobs
            .get(&BlobStore::hls_key(&publisher.media_id, MASTER))
            .await;
        let Ok(master) = master else {
            return publisher;
        };
        publisher.master_out = true;
        for variant in variants(&String::from_utf8_lossy(&master)) {
            let key = BlobStore::hls_key(&publisher.media_id, &variant);
            let Ok(text) = publisher.blobs.get(&key).await else {
                continue;
            };
            let listing = Listing::parse(&String::from_utf8_lossy(&text));
            let dir = parent(&variant);
            publisher
                .published
                .extend(listing.files().map(|file| join(&dir, file)));
            publisher.listed.insert(variant, listing.segments.len());
        }
        publisher
    }

    /// One pass over what ffmpeg has written so far.
    pub async fn step(&mut self) -> Result<Pass, RunFailure> {
        let mut pass = Pass::default();
        let Some(master) = read_text(&self.out_dir.join(MASTER)).await else {
            return Ok(pass);
        };
        let variants = variants(&master);
        let mut every_rung_started = !variants.is_empty();
        for variant in &variants {
            let Some(text) = read_text(&self.out_dir.join(variant)).await else {
                every_rung_started = false;
                continue;
            };
            let listing = Listing::parse(&text);
            if listing.segments.is_empty() {
                every_rung_started = false;
                continue;
            }
            let already = self.listed.get(variant).copied().unwrap_or(0);
            if listing.segments.len() <= already {
                continue;
            }
            let dir = parent(variant);
            for file in listing.files() {
                let relative = join(&dir, file);
                if self.published.contains(&relative) {
                    continue;
                }
                self.put_file(&relative).await?;
                self.published.insert(relative);
                pass.segments += 1;
            }
            // The segments are durable; now the playlist that lists them.
            self.put_bytes(variant, Bytes::from(text)).await?;
            self.listed.insert(variant.clone(), listing.segments.len());
        }
        if every_rung_started && !self.master_out {
            self.put_bytes(MASTER, Bytes::from(master)).await?;
            self.master_out = true;
            pass.became_playable = true;
        }
        Ok(pass)
    }

    /// Whether `relative` (e.g. `720p/seg_00000.m4s`) is already out.
    pub fn is_published(&self, relative: &str) -> bool {
        self.published.contains(relative)
    }

    async fn put_file(&self, relative: &str) -> Result<(), RunFailure> {
        let key = BlobStore::hls_key(&self.media_id, relative);
        self.blobs
            .put_file(&key, &self.out_dir.join(relative))
            .await
            .map_err(|e| RunFailure::transient(format!("cannot publish {relative}: {e}")))
    }

    async fn put_bytes(&self, relative: &str, bytes: Bytes) -> Result<(), RunFailure> {
        let key = BlobStore::hls_key(&self.media_id, relative);
        self.blobs
            .put(&key, bytes)
            .await
            .map_err(|e| RunFailure::transient(format!("cannot publish {relative}: {e}")))
    }
}

/// The files a media playlist points at: its init section and segments, in order.
#[derive(Debug, Default, PartialEq)]
struct Listing {
    init: Option<String>,
    segments: Vec<String>,
}

impl Listing {
    fn parse(text: &str) -> Self {
        let mut listing = Self::default();
        for line in text.lines().map(str::trim) {
            if let Some(map) = line.strip_prefix("#EXT-X-MAP:") {
                listing.init = map
                    .split(',')
                    .find_map(|attribute| attribute.strip_prefix("URI="))
                    .map(|uri| uri.trim_matches('"').to_string());
            } else if !line.is_empty() && !line.starts_with('#') {
                listing.segments.push(line.to_string());
            }
        }
        listing
    }

    fn files(&self) -> impl Iterator<Item = &str> {
        self.init
            .iter()
            .chain(self.segments.iter())
            .map(String::as_str)
    }
}

/// The media playlists a master names, e.g. `720p/index.m3u8`.
fn variants(master: &str) -> Vec<String> {
    master
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        // Only names ffmpeg writes under our output directory.
        .filter(|line| !line.contains("..") && !line.starts_with('/') && !line.contains(':'))
        .map(String::from)
        .collect()
}

fn parent(relative: &str) -> String {
    relative
        .rsplit_once('/')
        .map_or_else(String::new, |(dir, _)| dir.to_string())
}

fn join(dir: &str, file: &str) -> String {
    if dir.is_empty() {
        file.to_string()
    } else {
        format!("{dir}/{file}")
    }
}

/// A file ffmpeg renamed into place, or `None` while it does not exist yet.
async fn read_text(path: &Path) -> Option<String> {
    tokio::fs::read_to_string(path).await.ok()
}

/// Turns ffmpeg's finished EVENT playlist into the VOD playlist served once the job is done.
pub(super) fn as_vod(playlist: &str) -> String {
    playlist.replace("#EXT-X-PLAYLIST-TYPE:EVENT", "#EXT-X-PLAYLIST-TYPE:VOD")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROWING: &str = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:2\n\
        #EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:EVENT\n#EXT-X-INDEPENDENT-SEGMENTS\n\
        #EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:2.000000,\nseg_00000.m4s\n#EXTINF:2.000000,\n\
        seg_00001.m4s\n";

    #[test]
    fn a_listing_has_its_init_and_segments_in_order() {
        let listing = Listing::parse(GROWING);
        assert_eq!(listing.init.as_deref(), Some("init.mp4"));
        assert_eq!(listing.segments, ["seg_00000.m4s", "seg_00001.m4s"]);
        assert_eq!(
            listing.files().collect::<Vec<_>>(),
            ["init.mp4", "seg_00000.m4s", "seg_00001.m4s"]
        );
    }

    #[test]
    fn variants_are_relative_names_only() {
        let master = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\n720p/index.m3u8\n\
            #EXT-X-STREAM-INF:BANDWIDTH=1\n../other/index.m3u8\n/abs.m3u8\nhttp://x/y.m3u8\n";
        assert_eq!(variants(master), ["720p/index.m3u8"]);
        assert_eq!(parent("720p/index.m3u8"), "720p");
        assert_eq!(join("720p", "init.mp4"), "720p/init.mp4");
    }

    #[test]
    fn the_finished_playlist_becomes_vod() {
        let done = format!("{GROWING}#EXT-X-ENDLIST\n");
        let vod = as_vod(&done);
        assert!(vod.contains("#EXT-X-PLAYLIST-TYPE:VOD"));
        assert!(!vod.contains("EVENT"));
        assert!(vod.ends_with("#EXT-X-ENDLIST\n"));
    }

    #[tokio::test]
    async fn a_pass_publishes_segments_before_their_playlist_and_the_master_last() {
        let root = tempfile::tempdir().unwrap();
        let blobs = BlobStore::local(root.path().join("blobs")).unwrap();
        let out = root.path().join("out");
        std::fs::create_dir_all(out.join("360p")).unwrap();
        std::fs::create_dir_all(out.join("720p")).unwrap();
        let master = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\n360p/index.m3u8\n\
            #EXT-X-STREAM-INF:BANDWIDTH=2\n720p/index.m3u8\n";
        std::fs::write(out.join(MASTER), master).unwrap();
        for file in ["init.mp4", "seg_00000.m4s", "seg_00001.m4s"] {
            std::fs::write(out.join("360p").join(file), file).unwrap();
            std::fs::write(out.join("720p").join(file), file).unwrap();
        }
        std::fs::write(out.join("360p/index.m3u8"), GROWING).unwrap();
        let media_id = MediaId::new();
        let mut publisher = Publisher::resume(blobs.clone(), media_id.clone(), out.clone()).await;

        // One rung has segments, the other none yet: no master, so not playable.
        let pass = publisher.step().await.unwrap();
        assert_eq!(pass.segments, 3);
        assert!(!pass.became_playable);
        let key = |file: &str| BlobStore::hls_key(&media_id, file);
        assert!(blobs.exists(&key("360p/seg_00001.m4s")).await.unwrap());
        assert!(blobs.exists(&key("360p/index.m3u8")).await.unwrap());
        assert!(!blobs.exists(&key(MASTER)).await.unwrap());

        std::fs::write(out.join("720p/index.m3u8"), GROWING).unwrap();
        let pass = publisher.step().await.unwrap();
        assert_eq!(pass.segments, 3);
        assert!(pass.became_playable);
        assert!(blobs.exists(&key(MASTER)).await.unwrap());
        // Nothing new: nothing written.
        assert_eq!(publisher.step().await.unwrap(), Pass::default());

        // A retry resumes: what is out stays as it was, even if the new encode differs.
        std::fs::write(out.join("360p/seg_00000.m4s"), "re-encoded").unwrap();
        let mut retry = Publisher::resume(blobs.clone(), media_id.clone(), out.clone()).await;
        assert!(retry.is_published("360p/seg_00000.m4s"));
        assert_eq!(retry.step().await.unwrap(), Pass::default());
        let kept = blobs.get(&key("360p/seg_00000.m4s")).await.unwrap();
        assert_eq!(&kept[..], b"seg_00000.m4s");
    }
}
