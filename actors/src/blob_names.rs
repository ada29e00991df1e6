//! Validation of client-supplied names that end up in blob keys.
//!
//! Invariant: a rendition or segment name that passes these checks cannot leave its media's
//! prefix: no separators, no `..`, no leading dot, ASCII only.

/// Rendition names: `[A-Za-z0-9_-]{1,32}`.
pub fn is_safe_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Segment file names: a safe stem plus one of the extensions the transcoder writes.
pub fn is_segment_name(name: &str) -> bool {
    match name.rsplit_once('.') {
        Some((stem, ext)) => is_safe_name(stem) && matches!(ext, "m4s" | "mp4" | "ts"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_traversal_and_odd_names() {
        for bad in [
            "",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "a\\b",
            "%2e%2e",
            "é",
            &"a".repeat(33),
        ] {
            assert!(!is_safe_name(bad), "{bad:?} accepted");
        }
        for bad in [
            "../seg.m4s",
            "seg.m4s/..",
            ".m4s",
            "seg.txt",
            "seg",
            "a/seg.ts",
            "seg..m4s",
        ] {
            assert!(!is_segment_name(bad), "{bad:?} accepted");
        }
        assert!(is_safe_name("720p"));
        assert!(is_segment_name("seg_00001.m4s"));
        assert!(is_segment_name("init_0.mp4"));
    }
}
