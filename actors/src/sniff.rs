//! Container sniffing from a file's first bytes: we accept video containers only, whatever the
//! file name says.

/// How many leading bytes [`sniff_container`] wants (MPEG-TS needs a second sync byte at 188).
pub const SNIFF_BYTES: usize = 189;

/// Names the container in `head`, or `None` when it is not a video container we accept.
pub fn sniff_container(head: &[u8]) -> Option<&'static str> {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if at(4, b"ftyp") {
        // ISO BMFF: mp4, mov, m4v, 3gp. Reject still-image brands (HEIF/AVIF).
        let brand = head.get(8..12)?;
        return (!matches!(brand, b"heic" | b"heix" | b"mif1" | b"msf1" | b"avif"))
            .then_some("mp4");
    }
    if at(0, &[0x1A, 0x45, 0xDF, 0xA3]) {
        return Some("matroska");
    }
    if at(0, b"RIFF") && at(8, b"AVI ") {
        return Some("avi");
    }
    if at(0, b"FLV") {
        return Some("flv");
    }
    if at(0, b"OggS") {
        return Some("ogg");
    }
    if at(0, &[0x00, 0x00, 0x01, 0xBA]) {
        return Some("mpeg-ps");
    }
    if head.first() == Some(&0x47) && head.get(188) == Some(&0x47) {
        return Some("mpeg-ts");
    }
    // QuickTime files that open with a `moov`/`mdat`/`wide`/`free` atom instead of `ftyp`.
    if at(4, b"moov") || at(4, b"mdat") || at(4, b"wide") {
        return Some("mov");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_containers_and_rejects_others() {
        let mut mp4 = vec![0, 0, 0, 0x20];
        mp4.extend_from_slice(b"ftypisom");
        assert_eq!(sniff_container(&mp4), Some("mp4"));
        let mut heic = vec![0, 0, 0, 0x18];
        heic.extend_from_slice(b"ftypheic");
        assert_eq!(sniff_container(&heic), None);
        assert_eq!(
            sniff_container(&[0x1A, 0x45, 0xDF, 0xA3, 1]),
            Some("matroska")
        );
        let mut ts = vec![0u8; SNIFF_BYTES];
        ts[0] = 0x47;
        ts[188] = 0x47;
        assert_eq!(sniff_container(&ts), Some("mpeg-ts"));
        assert_eq!(sniff_container(b"%PDF-1.7 hello"), None);
        assert_eq!(sniff_container(b"\x89PNG\r\n\x1a\n"), None);
        assert_eq!(sniff_container(b""), None);
    }
}
