//! Delivery, caches and search through the real server: every rendition read back with ffprobe
//! over HTTP, range and ETag edge cases, cache invalidation by the actors, full-text search with
//! filters and gap-free paging, the index rebuilt at start-up.

use std::{collections::HashSet, time::Duration};

use reqwest::header;
use serde_json::Value;
use streamgate_actors::{
    metadata::CreateMedia,
    model::{Media, MediaId, MediaState, UploadId},
};
use time::OffsetDateTime;

use crate::{
    chain::{ALICE, BOB},
    server::{ffprobe, make_clip, TestServer},
};

const READY_DEADLINE: Duration = Duration::from_secs(180);
const ADMIN: &str = "media-admin-token";

fn with_admin(config: &mut streamgate::Config) {
    config.auth.admin_token = ADMIN.into();
}

#[tokio::test]
async fn renditions_play_over_http_with_ranges_etags_and_invalidation() {
    let server = TestServer::start_with(with_admin);
    let scratch = tempfile::tempdir().unwrap();
    let clip = make_clip(scratch.path(), "clip.mp4", "854x480", 4);
    let (id, media) = server
        .upload_ready(
            std::fs::read(&clip).unwrap(),
            "clip.mp4",
            Some("Harbour at dawn"),
            READY_DEADLINE,
        )
        .await;
    let renditions = media["renditions"].as_array().unwrap().clone();
    assert_eq!(renditions.len(), 2, "480p and 360p: {media}");

    // Every rendition, read back by ffprobe through the HTTP endpoints.
    let master = ffprobe(&server.url(&format!("/api/v1/media/{id}/hls/master.m3u8")));
    assert!(master["streams"].as_array().unwrap().len() >= 2, "{master}");
    for rendition in &renditions {
        let name = rendition["name"].as_str().unwrap();
        let probe = ffprobe(&server.url(&format!("/api/v1/media/{id}/hls/{name}/index.m3u8")));
        let streams = probe["streams"].as_array().unwrap();
        let video = streams.iter().find(|s| s["codec_type"] == "video").unwrap();
        assert_eq!(video["codec_name"], "h264", "{name}: {probe}");
        assert_eq!(video["height"], rendition["height"], "{name}: {probe}");
        let audio = streams.iter().find(|s| s["codec_type"] == "audio").unwrap();
        assert_eq!(audio["codec_name"], "aac", "{name}: {probe}");
        let duration: f64 = probe["format"]["duration"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((duration - 4.0).abs() < 0.5, "{name}: {duration}");
    }

    // Playlists: short max-age, strong ETag, 304 on revalidation.
    let master_path = format!("/api/v1/media/{id}/hls/master.m3u8");
    let response = server.get(&master_path).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()[header::CACHE_CONTROL],
        "public, max-age=10"
    );
    let etag = response.headers()[header::ETAG]
        .to_str()
        .unwrap()
        .to_string();
    let master_text = response.text().await.unwrap();
    let revalidated = server
        .client
        .get(server.url(&master_path))
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(revalidated.status(), 304);
    assert_eq!(revalidated.headers()[header::ETAG].to_str().unwrap(), etag);
    assert!(revalidated.bytes().await.unwrap().is_empty());
    let other = server
        .client
        .get(server.url(&master_path))
        .header(header::IF_NONE_MATCH, "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    assert_eq!(other.text().await.unwrap(), master_text);

    // A segment: full, then the range edge cases.
    let name = renditions[0]["name"].as_str().unwrap();
    let playlist = server
        .get_text(&format!("/api/v1/media/{id}/hls/{name}/index.m3u8"))
        .await;
    let segment = playlist
        .lines()
        .find(|line| !line.starts_with('#') && !line.trim().is_empty())
        .unwrap();
    let segment_path = format!("/api/v1/media/{id}/hls/{name}/{segment}");
    let full = server.get(&segment_path).await;
    assert_eq!(full.status(), 200);
    let headers = full.headers().clone();
    assert_eq!(
        headers[header::CACHE_CONTROL],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(headers[header::CONTENT_TYPE], "video/iso.segment");
    let segment_etag = headers[header::ETAG].to_str().unwrap().to_string();
    let body = full.bytes().await.unwrap();
    let size = body.len();
    assert!(size > 1000, "segment of {size} bytes");

    let ranged = |range: &'static str| {
        server
            .client
            .get(server.url(&segment_path))
            .header(header::RANGE, range)
            .send()
    };
    let first = ranged("bytes=0-99").await.unwrap();
    assert_eq!(first.status(), 206);
    assert_eq!(
        first.headers()[header::CONTENT_RANGE],
        format!("bytes 0-99/{size}").as_str()
    );
    assert_eq!(first.bytes().await.unwrap(), body.slice(0..100));
    let suffix = ranged("bytes=-100").await.unwrap();
    assert_eq!(suffix.status(), 206);
    assert_eq!(
        suffix.headers()[header::CONTENT_RANGE],
        format!("bytes {}-{}/{size}", size - 100, size - 1).as_str()
    );
    assert_eq!(suffix.bytes().await.unwrap(), body.slice(size - 100..));
    let open_ended = ranged("bytes=100-").await.unwrap();
    assert_eq!(open_ended.status(), 206);
    assert_eq!(open_ended.bytes().await.unwrap(), body.slice(100..));
    let beyond = server
        .client
        .get(server.url(&segment_path))
        .header(header::RANGE, format!("bytes={size}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), 416);
    assert_eq!(
        beyond.headers()[header::CONTENT_RANGE],
        format!("bytes */{size}").as_str()
    );
    // Several ranges: answered with the first one (no multipart/byteranges).
    let several = ranged("bytes=0-9,20-29").await.unwrap();
    assert_eq!(several.status(), 206);
    assert_eq!(several.bytes().await.unwrap(), body.slice(0..10));
    let not_modified = server
        .client
        .get(server.url(&segment_path))
        .header(header::IF_NONE_MATCH, &segment_etag)
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), 304);
    for bad in ["..%2F..%2Fsource", "%2Fetc%2Fpasswd", "seg.m4s.."] {
        let response = server
            .get(&format!("/api/v1/media/{id}/hls/{name}/{bad}"))
            .await;
        assert_eq!(response.status(), 404, "{bad}");
    }
    let thumbnail = server
        .get(&format!("/api/v1/media/{id}/thumbnail.jpg"))
        .await;
    assert_eq!(thumbnail.status(), 200);
    assert_eq!(thumbnail.headers()[header::CONTENT_TYPE], "image/jpeg");

    // An edit is visible at once although the record was cached.
    let (_, before) = server.get_json(&format!("/api/v1/media/{id}")).await;
    assert_eq!(before["title"], "Harbour at dawn");
    assert!(server.actors.caches.metadata.stats().hits > 0);
    let edited = server
        .client
        .patch(server.url(&format!("/api/v1/media/{id}")))
        .bearer_auth(server.session().await)
        .json(&serde_json::json!({"title": "Harbour at dusk"}))
        .send()
        .await
        .unwrap();
    assert_eq!(edited.status(), 200);
    let (_, after) = server.get_json(&format!("/api/v1/media/{id}")).await;
    assert_eq!(after["title"], "Harbour at dusk");
    // Search is near real time (group commits).
    searchable(&server, "q=dusk", |ids| ids == [id.clone()]).await;
    let metrics = server.get("/metrics").await.text().await.unwrap();
    for series in [
        r#"streamgate_cache_requests_total{cache="metadata",result="hit"}"#,
        r#"streamgate_cache_requests_total{cache="streaming",result="hit"}"#,
    ] {
        let line = metrics.lines().find(|l| l.starts_with(series)).unwrap();
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(value >= 1.0, "{line}");
    }

    // Delete drops the cached playlists, the record, the blobs and the index entry.
    assert_eq!(server.get(&master_path).await.status(), 200);
    let media_id = MediaId::parse(&id).unwrap();
    let cached_playlists = || {
        let key = (media_id.clone(), "master.m3u8".to_string());
        server.actors.caches.streaming.get(&key).is_some()
    };
    assert!(cached_playlists(), "the master playlist is cached");
    assert_eq!(delete_as_alice(&server, &id).await, 204);
    assert!(!cached_playlists(), "delete dropped the cached playlist");
    assert_eq!(server.get(&master_path).await.status(), 404);
    assert_eq!(server.get(&segment_path).await.status(), 404);
    assert!(server.blob_files(&format!("media/{id}")).is_empty());
    searchable(&server, "q=harbour", |ids| ids.is_empty()).await;
}

#[tokio::test]
async fn a_record_without_a_source_blob_deletes_cleanly() {
    let server = TestServer::start();
    let id = create(
        &server,
        record("Made by hand", "", &["manual"], ALICE.address),
    )
    .await;
    assert_eq!(delete_as_alice(&server, &id).await, 204);
    let (status, body) = server.get_json(&format!("/api/v1/media/{id}")).await;
    assert_eq!(status, 404, "{body}");
}

/// `DELETE /api/v1/media/{id}` with ALICE's session; the status.
async fn delete_as_alice(server: &TestServer, id: &str) -> reqwest::StatusCode {
    server
        .client
        .delete(server.url(&format!("/api/v1/media/{id}")))
        .bearer_auth(server.session().await)
        .send()
        .await
        .unwrap()
        .status()
}

/// Polls a search until `done` holds for its ids: index writes become searchable with the next
/// group commit.
async fn searchable(
    server: &TestServer,
    query: &str,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let what = format!("{query} to match");
    crate::harness::poll_every(
        Duration::from_millis(50),
        Duration::from_secs(20),
        &what,
        async || {
            let ids = walk(server, query).await;
            if done(&ids) {
                Ok(ids)
            } else {
                Err(format!("{ids:?}"))
            }
        },
    )
    .await
}

fn record(title: &str, description: &str, tags: &[&str], owner: &str) -> Media {
    let now = OffsetDateTime::now_utc();
    Media {
        id: MediaId::new(),
        title: title.into(),
        description: description.into(),
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
        created_at: now,
        updated_at: now,
    }
}

/// Creates records through the MetadataActor, the path a finished upload takes.
async fn create(server: &TestServer, media: Media) -> String {
    let created = server
        .actors
        .metadata
        .send(CreateMedia { media, gate: None })
        .await
        .unwrap()
        .unwrap();
    created.id.to_string()
}

/// Follows `next_cursor` from `query` to the end; returns every id in order.
async fn walk(server: &TestServer, query: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/api/v1/media?{query}&cursor={cursor}"),
            None => format!("/api/v1/media?{query}"),
        };
        let (status, page) = server.get_json(&path).await;
        assert_eq!(status, 200, "{path}: {page}");
        ids.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|item| item["id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return ids,
        }
    }
}

fn assert_unique(ids: &[String]) {
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a page repeated an item");
}

#[tokio::test]
async fn search_finds_by_word_tag_and_owner_and_pages_without_gaps() {
    let server = TestServer::start_with(|config| {
        with_admin(config);
        // 1,100 records and ~60 page requests from one client.
        config.rate_limit.enabled = false;
    });
    let mut created = Vec::new();
    for n in 0..1100 {
        let (title, tags): (String, &[&str]) = match n % 4 {
            0 => (format!("Sailing the fjords {n}"), &["travel", "boats"]),
            1 => (format!("Cooking pasta {n}"), &["food"]),
            2 => (format!("Night sky timelapse {n}"), &["space", "travel"]),
            _ => (format!("Lecture {n}"), &[]),
        };
        let owner = if n % 10 == 0 {
            BOB.address
        } else {
            ALICE.address
        };
        let description = if n == 7 { "a rare Xylophone solo" } else { "" };
        created.push(create(&server, record(&title, description, tags, owner)).await);
    }

    // Without q: creation order, every record exactly once.
    searchable(&server, "q=xylophone", |_| {
        server.actors.search.len() == created.len()
    })
    .await;
    let all = walk(&server, "limit=100").await;
    assert_eq!(all, created, "id order, no duplicates, no gaps");
    // With q: relevance order, walked in odd-sized pages.
    let sailing = walk(&server, "q=sailing+fjords&limit=37").await;
    assert_unique(&sailing);
    let expected: HashSet<&String> = created.iter().step_by(4).collect();
    assert_eq!(sailing.iter().collect::<HashSet<_>>(), expected);
    // A word in a description; case does not matter.
    assert_eq!(walk(&server, "q=xylophone").await, vec![created[7].clone()]);
    // Tags: as a filter and as words.
    let travel = walk(&server, "tag=travel&limit=100").await;
    assert_eq!(travel.len(), 550);
    assert_unique(&travel);
    assert_eq!(walk(&server, "q=boats&limit=100").await.len(), 275);
    assert_eq!(
        walk(&server, "q=timelapse&tag=travel&limit=100")
            .await
            .len(),
        275
    );
    // Owner filter, in any letter case.
    let bobs = walk(
        &server,
        &format!("owner={}&limit=100", BOB.address.to_lowercase()),
    )
    .await;
    assert_eq!(bobs.len(), 110);
    assert_eq!(
        bobs,
        created.iter().step_by(10).cloned().collect::<Vec<_>>()
    );
    // Nothing matches: an empty page, no cursor.
    let (_, none) = server.get_json("/api/v1/media?q=zeppelin").await;
    assert_eq!(none, serde_json::json!({"items": [], "next_cursor": null}));
    // A forged cursor is a 400, not a 500.
    let (status, error) = server.get_json("/api/v1/media?q=pasta&cursor=xyz").await;
    assert_eq!(
        (status, error["code"].as_str()),
        (400, Some("invalid_cursor"))
    );

    // Edits are searchable after the next group commit.
    let response = server
        .client
        .patch(server.url(&format!("/api/v1/media/{}", created[3])))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"tags": ["Zeppelin"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let edited = vec![created[3].clone()];
    searchable(&server, "q=zeppelin", |ids| ids == edited).await;
    assert_eq!(walk(&server, "tag=zeppelin").await, edited);
}

/// Commits staged index writes now (what the group commit does within ~200 ms).
async fn commit_index(server: &TestServer) {
    let search = server.actors.search.clone();
    tokio::task::spawn_blocking(move || search.commit())
        .await
        .unwrap()
        .unwrap();
}

fn as_set(ids: &[String]) -> HashSet<&str> {
    ids.iter().map(String::as_str).collect()
}

/// A deletion leaves the list and search on the very next request, as a visibility change does,
/// not with the next group commit: a refused upload's record (made, then deleted) is never
/// listed, and a deleted video is not offered to anyone meanwhile.
#[tokio::test]
async fn a_deleted_media_leaves_the_list_and_search_at_once() {
    let server = TestServer::start_with(with_admin);
    let id = create(&server, record("Narwhal tusk", "", &[], ALICE.address)).await;
    commit_index(&server).await;
    assert_eq!(walk(&server, "q=narwhal").await, [id.as_str()]);
    assert!(walk(&server, "limit=100").await.contains(&id));
    let deleted = server
        .client
        .delete(server.url(&format!("/api/v1/media/{id}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert!(walk(&server, "q=narwhal").await.is_empty());
    assert!(!walk(&server, "limit=100").await.contains(&id));
}

#[tokio::test]
async fn cached_search_pages_are_never_served_after_a_change() {
    let server = TestServer::start_with(with_admin);
    let hits = || server.actors.caches.search.stats().hits;
    let first = create(
        &server,
        record("Walrus parade", "", &["arctic"], ALICE.address),
    )
    .await;
    commit_index(&server).await;

    assert_eq!(walk(&server, "q=walrus").await, [first.as_str()]);
    let before = hits();
    assert_eq!(walk(&server, "q=walrus").await, [first.as_str()]);
    // The same query in another spelling is the same page.
    assert_eq!(walk(&server, "q=+walrus+&limit=20").await, [first.as_str()]);
    assert_eq!(walk(&server, "tag=arctic").await, [first.as_str()]);
    assert_eq!(walk(&server, "tag=ARCTIC").await, [first.as_str()]);
    assert_eq!(hits(), before + 3, "repeated searches are cache hits");
    let metrics = server.get("/metrics").await.text().await.unwrap();
    let series = r#"streamgate_cache_requests_total{cache="search",result="hit"}"#;
    let line = metrics.lines().find(|l| l.starts_with(series)).unwrap();
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(value >= 3.0, "{line}");

    // A new match appears on the very next search once the index committed it.
    let second = create(
        &server,
        record("Walrus choir", "", &["Arctic"], BOB.address),
    )
    .await;
    commit_index(&server).await;
    let both = walk(&server, "q=walrus").await;
    assert_eq!(
        as_set(&both),
        HashSet::from([first.as_str(), second.as_str()])
    );
    assert_eq!(walk(&server, "tag=arctic").await.len(), 2);

    // An edit makes a match disappear on the very next search.
    let edited = server
        .client
        .patch(server.url(&format!("/api/v1/media/{first}")))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"title": "Seal parade"}))
        .send()
        .await
        .unwrap();
    assert_eq!(edited.status(), 200);
    commit_index(&server).await;
    assert_eq!(walk(&server, "q=walrus").await, [second.as_str()]);
    assert_eq!(walk(&server, "q=seal").await, [first.as_str()]);

    // So does a tag edit, for a filter page that was cached.
    let retagged = server
        .client
        .patch(server.url(&format!("/api/v1/media/{second}")))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"tags": ["antarctic"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(retagged.status(), 200);
    commit_index(&server).await;
    assert_eq!(walk(&server, "tag=arctic").await, [first.as_str()]);
    assert_eq!(walk(&server, "tag=antarctic").await, [second.as_str()]);
}

#[tokio::test]
async fn the_search_index_is_rebuilt_when_missing_or_damaged() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_path_buf();
    let on_data_dir = |config: &mut streamgate::Config| config.storage.data_dir = data_dir.clone();
    let mut created = Vec::new();
    {
        let server = TestServer::start_with(on_data_dir);
        for n in 0..30 {
            created.push(
                create(
                    &server,
                    record(&format!("Glacier walk {n}"), "", &["ice"], ALICE.address),
                )
                .await,
            );
        }
        searchable(&server, "q=glacier&limit=100", |ids| ids.len() == 30).await;
    }
    let index_dir = data_dir.join("search");
    assert!(index_dir.join("meta.json").exists());

    // Missing: built from the store.
    std::fs::remove_dir_all(&index_dir).unwrap();
    {
        let server = TestServer::start_with(on_data_dir);
        let found = walk(&server, "q=glacier&limit=7").await;
        assert_eq!(found.len(), 30);
        assert_eq!(walk(&server, "limit=100").await, created);
        // The writer that replaces the rebuild's own still takes writes.
        created.push(
            create(
                &server,
                record("Glacier walk 30", "", &["ice"], ALICE.address),
            )
            .await,
        );
        searchable(&server, "q=glacier&limit=100", |ids| ids.len() == 31).await;
    }

    // Damaged: meta.json is garbage, and a segment file is truncated.
    std::fs::write(index_dir.join("meta.json"), b"{ not json").unwrap();
    {
        let server = TestServer::start_with(on_data_dir);
        assert_eq!(walk(&server, "tag=ice&limit=100").await, created);
    }
    for entry in std::fs::read_dir(&index_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "store") {
            std::fs::write(&path, b"truncated").unwrap();
        }
    }
    let server = TestServer::start_with(on_data_dir);
    assert_eq!(walk(&server, "q=walk&limit=100").await.len(), 31);
}

#[tokio::test]
async fn the_admin_cache_serves_puts_misses_deletes_and_stats() {
    let server = TestServer::start_with(|config| {
        with_admin(config);
        config.cache.gateway_entries = 2;
    });
    let url = |path: &str| server.url(&format!("/api/v1/cache{path}"));
    let put = |key: &str, value: &'static str| {
        server
            .client
            .put(url(&format!("/{key}")))
            .bearer_auth(ADMIN)
            .header(header::CONTENT_TYPE, "application/json")
            .body(value)
            .send()
    };
    let get = |key: &str| {
        server
            .client
            .get(url(&format!("/{key}")))
            .bearer_auth(ADMIN)
            .send()
    };

    // Admin only.
    let anonymous = server.client.get(url("/stats")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let response = server
        .client
        .put(url("/x"))
        .bearer_auth(server.session().await)
        .body("1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401, "a session is not the admin token");

    assert_eq!(
        put("greeting", r#"{"hello":"world"}"#)
            .await
            .unwrap()
            .status(),
        204
    );
    let hit = get("greeting").await.unwrap();
    assert_eq!(hit.status(), 200);
    assert_eq!(hit.headers()[header::CONTENT_TYPE], "application/json");
    assert_eq!(hit.text().await.unwrap(), r#"{"hello":"world"}"#);
    let miss = get("absent").await.unwrap();
    assert_eq!(miss.status(), 404);
    let miss: Value = miss.json().await.unwrap();
    assert_eq!(miss["code"], "cache_miss");

    // LRU: a third key evicts the least recently used one.
    assert_eq!(put("a", "1").await.unwrap().status(), 204);
    assert_eq!(get("greeting").await.unwrap().status(), 200);
    assert_eq!(put("b", "2").await.unwrap().status(), 204);
    assert_eq!(
        get("a").await.unwrap().status(),
        404,
        "a was least recently used"
    );
    // TTL: an entry asked to live 0 s is gone at once.
    let expired = server
        .client
        .put(url("/short?ttl_s=0"))
        .bearer_auth(ADMIN)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(expired.status(), 204);
    assert_eq!(get("short").await.unwrap().status(), 404);

    let (_, stats) = {
        let response = server
            .client
            .get(url("/stats"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    assert_eq!(stats["hits"], 2, "{stats}");
    assert_eq!(stats["misses"], 3, "{stats}");
    assert_eq!(stats["evictions"], 3, "{stats}"); // greeting (by short), a (by b), short (TTL)
    assert_eq!(stats["size"], 1, "{stats}");
    assert_eq!(stats["capacity"], 2, "{stats}");
    assert_eq!(stats["caches"]["streaming"]["capacity"], 5000, "{stats}");
    assert_eq!(stats["caches"]["metadata"]["ttl_s"], 1800, "{stats}");

    let delete = |key: &'static str| {
        server
            .client
            .delete(url(&format!("/{key}")))
            .bearer_auth(ADMIN)
            .send()
    };
    assert_eq!(delete("b").await.unwrap().status(), 204);
    assert_eq!(delete("b").await.unwrap().status(), 404);
    assert_eq!(put("c", "3").await.unwrap().status(), 204);
    let cleared = server
        .client
        .delete(url(""))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), 200);
    assert_eq!(cleared.json::<Value>().await.unwrap()["cleared"], 1);
    assert_eq!(get("c").await.unwrap().status(), 404);

    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"streamgate_cache_requests_total{cache="gateway",result="hit"} 2"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"streamgate_cache_evictions_total{cache="gateway"} 3"#));
    assert!(metrics.contains(r#"streamgate_cache_entries{cache="gateway"} 0"#));

    let audit = server
        .client
        .get(server.url("/api/v1/audit?action=cache.put"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let keys: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["target"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["greeting", "a", "b", "short", "c"], "{audit}");
}
