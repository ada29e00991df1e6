//! Criterion benches for actor round trips: a `send` from another thread (as an HTTP handler
//! does) to a real, supervised actor and the reply back. `Ping` measures the mailbox alone;
//! `GetMedia` adds a record read (cache hit after the first). Run with
//! `cargo bench --bench actor_roundtrip`.

// Bench code: a failed unwrap is a failed bench.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use streamgate::config::{self, Sources};
use streamgate_actors::{
    metadata::{CreateMedia, GetMedia},
    model::{Media, MediaId, MediaState, UploadId},
    supervise::Ping,
    Actors,
};
use time::OffsetDateTime;

fn media() -> Media {
    let now = OffsetDateTime::now_utc();
    Media {
        id: MediaId::new(),
        title: "A bench clip".into(),
        description: "x".repeat(200),
        tags: vec!["bench".into()],
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

/// The real actors in their own actix system thread, as the server runs them.
fn start_actors(data_dir: &std::path::Path) -> Actors {
    let mut config = config::load(&Sources::default()).unwrap();
    config.storage.data_dir = data_dir.to_path_buf();
    config.storage.min_free_disk_mb = 1;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let system = actix_rt::System::new();
        system.block_on(async move {
            tx.send(streamgate_actors::start(config.actors()).unwrap())
                .unwrap();
        });
        system.run().unwrap();
    });
    rx.recv().unwrap()
}

fn roundtrip(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let actors = start_actors(dir.path());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stored = runtime.block_on(async {
        actors
            .metadata
            .send(CreateMedia {
                media: media(),
                gate: None,
            })
            .await
            .unwrap()
            .unwrap()
    });

    c.bench_function("actor/ping_roundtrip", |b| {
        b.iter(|| runtime.block_on(actors.metadata.send(Ping)).unwrap())
    });
    c.bench_function("actor/get_media_roundtrip", |b| {
        b.iter(|| {
            runtime
                .block_on(actors.metadata.send(GetMedia {
                    media_id: stored.id.clone(),
                }))
                .unwrap()
                .unwrap()
        })
    });
}

criterion_group!(benches, roundtrip);
criterion_main!(benches);
