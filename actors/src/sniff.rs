//! Container sniffing from a file's first bytes: we accept video containers only, whatever the
//! file name says. The container found here is stored with the media and pins the demuxer that
//! ffprobe and ffmpeg may use on the file (see `transcode::ffmpeg`).
//!
//! Invariant: sniffing is an allow-list. A file is accepted only when its first bytes are the
//! structure of one of [`Container`]'s formats, never because a magic string appears somewhere.

/// How many leading bytes [`sniff_container`] wants (MPEG-TS needs a second sync byte at 188).
pub const SNIFF_BYTES: usize = 189;

/// A video container we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    /// ISO base media (mp4, m4v, 3gp) with a video brand.
    Mp4,
    /// QuickTime that opens with a `moov`, `mdat` or `wide` atom instead of `ftyp`.
    Mov,
    Matroska,
    Avi,
    Flv,
    Ogg,
    MpegPs,
    MpegTs,
}

impl Container {
    pub const ALL: [Self; 8] = [
        Self::Mp4,
        Self::Mov,
        Self::Matroska,
        Self::Avi,
        Self::Flv,
        Self::Ogg,
        Self::MpegPs,
        Self::MpegTs,
    ];

    /// The name stored with uploads and media.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mp4 => "mp4",
            Self::Mov => "mov",
            Self::Matroska => "matroska",
            Self::Avi => "avi",
            Self::Flv => "flv",
            Self::Ogg => "ogg",
            Self::MpegPs => "mpeg-ps",
            Self::MpegTs => "mpeg-ts",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == text)
    }

    /// The one ffmpeg demuxer that may read this container.
    pub fn demuxer(self) -> &'static str {
        match self {
            Self::Mp4 | Self::Mov => "mov",
            Self::Matroska => "matroska",
            Self::Avi => "avi",
            Self::Flv => "flv",
            Self::Ogg => "ogg",
            Self::MpegPs => "mpeg",
            Self::MpegTs => "mpegts",
        }
    }
}

/// Major brands of ISO BMFF files that carry video. Anything else (jp2, jxl, heic, avif, audio
/// only m4a, …) is refused: an allow-list, so a new image brand is refused too.
const VIDEO_BRANDS: &[&[u8; 4]] = &[
    b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"iso7", b"iso8", b"iso9", b"mp41",
    b"mp42", b"mp71", b"avc1", b"M4V ", b"M4VH", b"M4VP", b"qt  ", b"3gp4", b"3gp5", b"3gp6",
    b"3gp7", b"3gp8", b"3gp9", b"3g2a", b"3g2b", b"3g2c", b"3ge6", b"3ge7", b"3gg6", b"dash",
    b"msdh", b"cmfc", b"cmf2", b"f4v ", b"MSNV", b"XAVC", b"mmp4", b"NDAS", b"kddi",
];

/// Text that opens playlists, manifests and scripts ffmpeg would follow to other files. None of
/// them belongs in the first bytes of a real video container.
const REFERENCE_MARKERS: &[&[u8]] = &[b"#EXTM3U", b"<MPD", b"<?xml", b"ffconcat", b"<!--"];

/// Names the container in `head`, or `None` when it is not a video container we accept.
pub fn sniff_container(head: &[u8]) -> Option<Container> {
    // Only the first bytes count, however many the caller has: the same file gets the same
    // answer whichever upload path (and chunking) delivered it.
    let head = &head[..head.len().min(SNIFF_BYTES)];
    if REFERENCE_MARKERS
        .iter()
        .any(|marker| head.windows(marker.len()).any(|window| window == *marker))
    {
        return None;
    }
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    let box_size = head
        .get(0..4)
        .and_then(|bytes| <[u8; 4]>::try_from(bytes).ok())
        .map(u32::from_be_bytes);
    if at(4, b"ftyp") {
        // An `ftyp` box holds a major brand, a minor version and a few compatible brands.
        let size = box_size?;
        let brand = head.get(8..12)?;
        let plausible = (16..=512).contains(&size) && size % 4 == 0;
        return (plausible && VIDEO_BRANDS.iter().any(|known| known.as_slice() == brand))
            .then_some(Container::Mp4);
    }
    if at(0, &[0x1A, 0x45, 0xDF, 0xA3]) {
        return Some(Container::Matroska);
    }
    if at(0, b"RIFF") && at(8, b"AVI ") {
        return Some(Container::Avi);
    }
    if at(0, b"FLV\x01") {
        return Some(Container::Flv);
    }
    if at(0, b"OggS") {
        return Some(Container::Ogg);
    }
    if at(0, &[0x00, 0x00, 0x01, 0xBA]) {
        return Some(Container::MpegPs);
    }
    if head.first() == Some(&0x47) && head.get(188) == Some(&0x47) {
        return Some(Container::MpegTs);
    }
    // QuickTime files that open with a `moov`/`mdat`/`wide` atom instead of `ftyp`; size 1 means
    // a 64-bit size follows.
    if (at(4, b"moov") || at(4, b"mdat") || at(4, b"wide"))
        && box_size.is_some_and(|size| size == 1 || size >= 8)
    {
        return Some(Container::Mov);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ftyp(size: u8, brand: &[u8; 4]) -> Vec<u8> {
        let mut head = vec![0, 0, 0, size];
        head.extend_from_slice(b"ftyp");
        head.extend_from_slice(brand);
        head.extend_from_slice(&[0; 20]);
        head
    }

    #[test]
    fn recognises_containers_and_rejects_others() {
        assert_eq!(sniff_container(&ftyp(0x20, b"isom")), Some(Container::Mp4));
        assert_eq!(sniff_container(&ftyp(0x14, b"qt  ")), Some(Container::Mp4));
        for image in [b"heic", b"avif", b"mif1", b"jp2 ", b"jxl ", b"M4A "] {
            assert_eq!(sniff_container(&ftyp(0x18, image)), None, "{image:?}");
        }
        assert_eq!(
            sniff_container(&[0x1A, 0x45, 0xDF, 0xA3, 1]),
            Some(Container::Matroska)
        );
        let mut ts = vec![0u8; SNIFF_BYTES];
        ts[0] = 0x47;
        ts[188] = 0x47;
        assert_eq!(sniff_container(&ts), Some(Container::MpegTs));
        assert_eq!(sniff_container(b"%PDF-1.7 hello"), None);
        assert_eq!(sniff_container(b"\x89PNG\r\n\x1a\n"), None);
        assert_eq!(sniff_container(b""), None);
    }

    #[test]
    fn refuses_text_that_only_looks_like_a_box() {
        // ffmpeg's DASH demuxer claims this; `ftyp` at byte 4 made it pass before.
        assert_eq!(sniff_container(b"<!--ftypjp2 x--><MPD>"), None);
        assert_eq!(sniff_container(b"<!--ftypisom x--><MPD>"), None);
        // A box-shaped head with a playlist or concat script behind it.
        let mut hls = ftyp(0x14, b"isom");
        hls.extend_from_slice(b"\n#EXTM3U\n");
        assert_eq!(sniff_container(&hls), None);
        let mut concat = vec![0x1A, 0x45, 0xDF, 0xA3, b'\n'];
        concat.extend_from_slice(b"ffconcat version 1.0\n");
        assert_eq!(sniff_container(&concat), None);
        // Past the sniffed bytes, text is ffprobe's to judge, whatever the chunking.
        let mut late = ftyp(0x14, b"isom");
        late.resize(SNIFF_BYTES, b' ');
        late.extend_from_slice(b"#EXTM3U");
        assert_eq!(sniff_container(&late), Some(Container::Mp4));
        // An `ftyp` whose size is not that of a real box.
        assert_eq!(sniff_container(&ftyp(0x07, b"isom")), None);
    }

    #[test]
    fn names_round_trip_and_pin_a_demuxer() {
        for container in Container::ALL {
            assert_eq!(Container::parse(container.as_str()), Some(container));
        }
        assert_eq!(Container::Mp4.demuxer(), "mov");
        assert_eq!(Container::MpegTs.demuxer(), "mpegts");
    }
}
