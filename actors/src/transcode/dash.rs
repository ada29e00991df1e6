//! A DASH manifest over the CMAF segments the HLS ladder already wrote: no second encode, the
//! same `init_N.mp4` and `seg_NNNNN.m4s` files serve both protocols.
//!
//! The manifest is built from ffmpeg's own playlists: variant attributes (bandwidth, resolution,
//! codecs) from `master.m3u8`, segment names and their real durations from each media playlist.
//! It is published at `media/{id}/dash/manifest.mpd`, so segment URLs are `../hls/{rung}/{file}`
//! relative to it, both as blob keys and as HTTP paths.

use std::{fmt::Write as _, path::Path};

use crate::{blobs::BlobStore, model::MediaId};

/// The manifest's file name in a job's output directory.
pub const MANIFEST_FILE: &str = "manifest.mpd";

/// Where the manifest of `media_id` is published.
pub fn manifest_key(media_id: &MediaId) -> String {
    format!("{}/dash/{MANIFEST_FILE}", BlobStore::media_prefix(media_id))
}

/// One `#EXT-X-STREAM-INF` entry of a master playlist.
#[derive(Debug, Clone, PartialEq)]
struct Variant {
    bandwidth: u64,
    resolution: Option<(u32, u32)>,
    codecs: Option<String>,
    /// Relative to the master playlist, e.g. `720p/index.m3u8`.
    uri: String,
}

/// What a media playlist says: its init segment and every segment with its duration.
#[derive(Debug, Clone, PartialEq)]
struct MediaPlaylist {
    init: String,
    segments: Vec<(f64, String)>,
}

/// Builds the manifest from the playlists under `out_dir` (the HLS output of one job).
pub fn manifest_from_hls(out_dir: &Path) -> Result<String, String> {
    let read = |relative: &str| {
        std::fs::read_to_string(out_dir.join(relative))
            .map_err(|e| format!("cannot read {relative}: {e}"))
    };
    let variants = parse_master(&read("master.m3u8")?);
    if variants.is_empty() {
        return Err("master.m3u8 lists no variant".into());
    }
    let mut described = Vec::new();
    for variant in variants {
        let playlist = parse_media_playlist(&read(&variant.uri)?)
            .ok_or_else(|| format!("{} has no init segment or no segments", variant.uri))?;
        described.push((variant, playlist));
    }
    Ok(render(&described))
}

fn parse_master(text: &str) -> Vec<Variant> {
    let mut variants = Vec::new();
    let mut pending: Option<Variant> = None;
    for line in text.lines().map(str::trim) {
        if let Some(attributes) = line.strip_prefix("#EXT-X-STREAM-INF:") {
            let mut variant = Variant {
                bandwidth: 0,
                resolution: None,
                codecs: None,
                uri: String::new(),
            };
            for (key, value) in attribute_list(attributes) {
                match key {
                    "BANDWIDTH" => variant.bandwidth = value.parse().unwrap_or(0),
                    "RESOLUTION" => {
                        variant.resolution = value
                            .split_once('x')
                            .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
                    }
                    "CODECS" => variant.codecs = Some(value.to_string()),
                    _ => {}
                }
            }
            pending = Some(variant);
        } else if !line.is_empty() && !line.starts_with('#') {
            if let Some(mut variant) = pending.take() {
                variant.uri = line.to_string();
                variants.push(variant);
            }
        }
    }
    variants
}

fn parse_media_playlist(text: &str) -> Option<MediaPlaylist> {
    let mut init = None;
    let mut segments = Vec::new();
    let mut duration = None;
    for line in text.lines().map(str::trim) {
        if let Some(attributes) = line.strip_prefix("#EXT-X-MAP:") {
            init = attribute_list(attributes)
                .find(|(key, _)| *key == "URI")
                .map(|(_, value)| value.to_string());
        } else if let Some(rest) = line.strip_prefix("#EXTINF:") {
            duration = rest
                .split(',')
                .next()
                .and_then(|d| d.trim().parse::<f64>().ok());
        } else if !line.is_empty() && !line.starts_with('#') {
            segments.push((duration.take()?, line.to_string()));
        }
    }
    let init = init?;
    (!segments.is_empty()).then_some(MediaPlaylist { init, segments })
}

/// `KEY=value,KEY="quoted, value"` pairs of an HLS attribute list.
fn attribute_list(text: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut rest = text;
    std::iter::from_fn(move || {
        let (key, after) = rest.split_once('=')?;
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let (value, remaining) = quoted.split_once('"')?;
            (value, remaining.strip_prefix(',').unwrap_or(remaining))
        } else {
            match after.split_once(',') {
                Some((value, remaining)) => (value, remaining),
                None => (after, ""),
            }
        };
        rest = remaining;
        Some((key.trim(), value))
    })
}

/// Milliseconds, with segment boundaries rounded from the running total so they never drift.
const TIMESCALE: u64 = 1000;

fn render(variants: &[(Variant, MediaPlaylist)]) -> String {
    let total_s = variants
        .iter()
        .map(|(_, playlist)| playlist.segments.iter().map(|(d, _)| d).sum::<f64>())
        .fold(0.0_f64, f64::max);
    let max_segment_s = variants
        .iter()
        .flat_map(|(_, playlist)| playlist.segments.iter().map(|(d, _)| *d))
        .fold(0.0_f64, f64::max);
    let mut mpd = String::new();
    let _ = writeln!(mpd, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        mpd,
        r#"<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" profiles="urn:mpeg:dash:profile:isoff-live:2011" type="static" mediaPresentationDuration="PT{total_s:.3}S" maxSegmentDuration="PT{max_segment_s:.3}S" minBufferTime="PT{max_segment_s:.3}S">"#
    );
    let _ = writeln!(mpd, r#"  <Period id="0" start="PT0S">"#);
    let _ = writeln!(
        mpd,
        r#"    <AdaptationSet id="0" mimeType="video/mp4" segmentAlignment="true" startWithSAP="1">"#
    );
    for (index, (variant, playlist)) in variants.iter().enumerate() {
        // `720p/index.m3u8` → segments live in `../hls/720p/`.
        let directory = variant
            .uri
            .rsplit_once('/')
            .map(|(dir, _)| format!("../hls/{dir}/"))
            .unwrap_or_else(|| "../hls/".to_string());
        let mut attributes = format!(r#"id="{index}" bandwidth="{}""#, variant.bandwidth);
        if let Some((width, height)) = variant.resolution {
            let _ = write!(attributes, r#" width="{width}" height="{height}""#);
        }
        if let Some(codecs) = &variant.codecs {
            let _ = write!(attributes, r#" codecs="{}""#, escape(codecs));
        }
        let _ = writeln!(mpd, r#"      <Representation {attributes}>"#);
        let _ = writeln!(mpd, r#"        <SegmentList timescale="{TIMESCALE}">"#);
        let _ = writeln!(
            mpd,
            r#"          <Initialization sourceURL="{}"/>"#,
            escape(&format!("{directory}{}", playlist.init))
        );
        let _ = writeln!(mpd, "          <SegmentTimeline>");
        let mut elapsed_s = 0.0;
        let mut start = 0u64;
        for (duration_s, _) in &playlist.segments {
            elapsed_s += duration_s;
            let end = (elapsed_s * TIMESCALE as f64).round() as u64;
            let _ = writeln!(
                mpd,
                r#"            <S t="{start}" d="{}"/>"#,
                end.saturating_sub(start)
            );
            start = end;
        }
        let _ = writeln!(mpd, "          </SegmentTimeline>");
        for (_, name) in &playlist.segments {
            let _ = writeln!(
                mpd,
                r#"          <SegmentURL media="{}"/>"#,
                escape(&format!("{directory}{name}"))
            );
        }
        let _ = writeln!(mpd, "        </SegmentList>");
        let _ = writeln!(mpd, "      </Representation>");
    }
    let _ = writeln!(mpd, "    </AdaptationSet>");
    let _ = writeln!(mpd, "  </Period>");
    let _ = writeln!(mpd, "</MPD>");
    mpd
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASTER: &str = "#EXTM3U\n#EXT-X-VERSION:7\n\
        #EXT-X-STREAM-INF:BANDWIDTH=75900,RESOLUTION=320x240,CODECS=\"avc1.42c00d,mp4a.40.2\"\n\
        240p/index.m3u8\n\n\
        #EXT-X-STREAM-INF:BANDWIDTH=50000,RESOLUTION=240x180,CODECS=\"avc1.42c00c,mp4a.40.2\"\n\
        180p/index.m3u8\n";

    const MEDIA: &str = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MAP:URI=\"init_0.mp4\"\n\
        #EXTINF:2.000000,\nseg_00000.m4s\n#EXTINF:1.333333,\nseg_00001.m4s\n#EXT-X-ENDLIST\n";

    #[test]
    fn master_attributes_including_quoted_commas_parse() {
        let variants = parse_master(MASTER);
        assert_eq!(variants.len(), 2);
        assert_eq!(variants[0].bandwidth, 75900);
        assert_eq!(variants[0].resolution, Some((320, 240)));
        assert_eq!(variants[0].codecs.as_deref(), Some("avc1.42c00d,mp4a.40.2"));
        assert_eq!(variants[1].uri, "180p/index.m3u8");
    }

    #[test]
    fn the_timeline_carries_the_real_durations_and_shares_the_hls_segments() {
        let playlist = parse_media_playlist(MEDIA).unwrap();
        assert_eq!(playlist.init, "init_0.mp4");
        let variant = parse_master(MASTER).remove(0);
        let mpd = render(&[(variant, playlist)]);
        assert!(
            mpd.contains(r#"mediaPresentationDuration="PT3.333S""#),
            "{mpd}"
        );
        assert!(mpd.contains(r#"<S t="0" d="2000"/>"#), "{mpd}");
        assert!(mpd.contains(r#"<S t="2000" d="1333"/>"#), "{mpd}");
        assert!(
            mpd.contains(r#"sourceURL="../hls/240p/init_0.mp4""#),
            "{mpd}"
        );
        assert!(
            mpd.contains(r#"media="../hls/240p/seg_00001.m4s""#),
            "{mpd}"
        );
    }

    #[test]
    fn a_playlist_without_init_segment_is_refused() {
        assert!(parse_media_playlist("#EXTINF:1,\nseg.m4s\n").is_none());
    }
}
