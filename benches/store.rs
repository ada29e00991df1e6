//! Criterion benches for the record store: a durable write (insert + flush) and a read, so the
//! cost of acknowledging only after fsync stays visible. Run with `cargo bench --bench store`.

// Bench code: a failed unwrap is a failed bench.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use streamgate_actors::{
    model::{Media, MediaId, MediaState, UploadId},
    store::{MediaRepo, SledStore},
};
use time::OffsetDateTime;

fn media() -> Media {
    let now = OffsetDateTime::now_utc();
    Media {
        id: MediaId::new(),
        title: "A bench clip".into(),
        description: "x".repeat(200),
        tags: vec!["bench".into(), "video".into()],
        owner: None,
        visibility: Default::default(),
        visibility_epoch: 0,
        captions: Vec::new(),
        state: MediaState::Ready,
        failure: None,
        failure_code: None,
        container: None,
        upload_id: UploadId::new(),
        filename: Some("clip.mp4".into()),
        size: 1 << 20,
        sha256: "0".repeat(64),
        source_key: "uploads/x/source".into(),
        duration_s: Some(12.0),
        width: Some(1280),
        height: Some(720),
        video_codec: Some("h264".into()),
        renditions: vec![],
        playable_at: None,
        created_at: now,
        updated_at: now,
    }
}

fn store(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let stored = media();
    store.put_media(&stored).unwrap();

    c.bench_function("store/put_media_durable", |b| {
        b.iter(|| store.put_media(&media()).unwrap())
    });
    c.bench_function("store/get_media", |b| {
        b.iter(|| store.get_media(&stored.id).unwrap().unwrap())
    });
}

criterion_group!(benches, store);
criterion_main!(benches);
