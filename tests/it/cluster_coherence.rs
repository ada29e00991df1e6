//! Two nodes on one Postgres database (and one S3 bucket): what one node changes, the other
//! honours within a second (gates, logouts, edits, deletes, search), both agree on the session
//! secret however they start, and a nonce stays single-use across them.

use std::time::Duration;

use serde_json::{json, Value};
use streamgate::config::Config;
use streamgate_actors::{config::RecordBackend, store::test_postgres};

use crate::{
    auth::{bearer_get, play, put_gate},
    chain::{Anvil, ALICE, BOB, CHAIN_ID},
    harness::poll_every,
    s3::Moto,
    server::{make_clip, TestServer},
};

const ADMIN: &str = "admin-token";
/// What the issue promises: a change through one node is honoured by the other this fast.
const COHERENT_WITHIN: Duration = Duration::from_secs(1);

fn on_postgres(config: &mut Config, url: &str) {
    config.storage.records = RecordBackend::Postgres;
    config.postgres.url = url.to_string();
    config.postgres.pool_size = 4;
    config.auth.admin_token = ADMIN.into();
}

/// Polls `check` every 50 ms until it holds, failing after [`COHERENT_WITHIN`].
async fn within_a_second<T>(what: &str, mut check: impl AsyncFnMut() -> Result<T, String>) -> T {
    poll_every(
        Duration::from_millis(50),
        COHERENT_WITHIN,
        what,
        async || check().await,
    )
    .await
}

async fn status_and_code(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, body["code"].clone())
}

async fn search_titles(server: &TestServer, word: &str) -> Vec<String> {
    let (status, page) = server.get_json(&format!("/api/v1/media?q={word}")).await;
    assert_eq!(status, 200, "{page}");
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["title"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn gates_logouts_edits_and_deletes_through_one_node_are_honoured_by_the_other() {
    let chain = Anvil::start().await;
    let pass = chain.deploy_erc721(&ALICE);
    let unheld = chain.deploy_erc721(&ALICE);
    chain.mint_erc721(&ALICE, &pass, BOB.address);
    let moto = Moto::start().await;
    let url = test_postgres::fresh_database().unwrap();
    let node = |rpc: String| {
        let (url, moto) = (url.clone(), &moto);
        TestServer::start_with(move |config| {
            on_postgres(config, &url);
            moto.configure(config);
            crate::chain::read_chain(config, rpc);
        })
    };
    let a = node(chain.url.clone());
    let b = node(chain.url.clone());

    // Uploaded through A while B already holds the processing record: A's transcode marking
    // it ready reaches B too.
    let scratch = tempfile::tempdir().unwrap();
    let clip = std::fs::read(make_clip(scratch.path(), "coherent.mp4", "320x240", 2)).unwrap();
    let (status, receipt) = a.upload(clip, "coherent.mp4", Some("coherent")).await;
    assert_eq!(status, 201, "{receipt}");
    let id = &receipt["media_id"].as_str().unwrap().to_string();
    let (status, early) = b.get_json(&format!("/api/v1/media/{id}")).await;
    assert_eq!(status, 200, "{early}");
    let ready = a
        .wait_for_media(id, Duration::from_secs(120), |m| m["state"] != "processing")
        .await;
    assert_eq!(ready["state"], "ready", "{ready}");
    within_a_second("B to show the media ready", async || {
        let (_, record) = b.get_json(&format!("/api/v1/media/{id}")).await;
        if record["state"] == "ready" {
            Ok(())
        } else {
            Err(record.to_string())
        }
    })
    .await;
    let master = |server: &TestServer| server.url(&format!("/api/v1/media/{id}/hls/master.m3u8"));
    // B has the record and the public playlist cached before anything changes.
    let (status, record) = b.get_json(&format!("/api/v1/media/{id}")).await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["gated"], false, "{record}");
    assert_eq!(bearer_get(&b, &master(&b), None).await.status(), 200);

    // A session made on A works on B: one secret.
    let bob = a.login(&BOB).await;
    let gate = |contract: &str| json!({"chain_id": CHAIN_ID, "contract": contract, "standard": "erc721", "min_balance": 1});

    // A gate BOB does not pass, set through A: B refuses him (and anonymous callers).
    let (status, body) = put_gate(&a, id, ADMIN, &gate(&unheld)).await;
    assert_eq!(status, 200, "{body}");
    within_a_second("B to enforce the gate set through A", async || {
        let seen = status_and_code(bearer_get(&b, &master(&b), Some(&bob)).await).await;
        match seen {
            (403, code) if code == "gate_not_passed" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(bearer_get(&b, &master(&b), None).await.status(), 401);
    let (_, record) = b.get_json(&format!("/api/v1/media/{id}")).await;
    assert_eq!(record["gated"], true, "{record}");

    // Moved to the pass through A: BOB plays through B.
    let (status, body) = put_gate(&a, id, ADMIN, &gate(&pass)).await;
    assert_eq!(status, 200, "{body}");
    within_a_second("B to let BOB pass the new gate", async || match bearer_get(
        &b,
        &master(&b),
        Some(&bob),
    )
    .await
    .status()
    .as_u16()
    {
        200 => Ok(()),
        other => Err(other.to_string()),
    })
    .await;
    play(&b, id, &bob).await;

    // Logout through A: B refuses the session, remembered grant or not.
    a.logout(&bob).await;
    within_a_second("B to refuse the session logged out through A", async || {
        let seen = status_and_code(bearer_get(&b, &master(&b), Some(&bob)).await).await;
        match seen {
            (401, code) if code == "session_revoked" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // An edit through A: B's record and B's search show it.
    let alice = a.session().await.to_string();
    let response = a
        .client
        .patch(a.url(&format!("/api/v1/media/{id}")))
        .bearer_auth(&alice)
        .json(&json!({"title": "zebra crossing", "tags": ["stripes"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    within_a_second("B to show the edit made through A", async || {
        let (_, record) = b.get_json(&format!("/api/v1/media/{id}")).await;
        let found = search_titles(&b, "zebra").await;
        if record["title"] == "zebra crossing" && found == ["zebra crossing"] {
            Ok(())
        } else {
            Err(format!("record {}, search {found:?}", record["title"]))
        }
    })
    .await;
    for filter in ["q=zebra&tag=stripes", &format!("owner={}", ALICE.address)] {
        let (status, page) = b.get_json(&format!("/api/v1/media?{filter}")).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(
            page["items"].as_array().unwrap().len(),
            1,
            "{filter}: {page}"
        );
        assert_eq!(page["items"][0]["title"], "zebra crossing", "{page}");
    }

    // A delete through A: gone from B's record and search.
    let response = a
        .client
        .delete(a.url(&format!("/api/v1/media/{id}")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    within_a_second("B to forget the media deleted through A", async || {
        let (status, _) = b.get_json(&format!("/api/v1/media/{id}")).await;
        let found = search_titles(&b, "zebra").await;
        if status == 404 && found.is_empty() {
            Ok(())
        } else {
            Err(format!("status {status}, search {found:?}"))
        }
    })
    .await;
}

#[tokio::test]
async fn nodes_starting_together_share_one_secret_and_a_nonce_is_single_use_across_them() {
    let url = test_postgres::fresh_database().unwrap();
    // Both start at once against the empty database: each may generate a secret.
    let (a, b) = std::thread::scope(|scope| {
        let start = || {
            let url = url.clone();
            scope.spawn(move || TestServer::start_with(|config| on_postgres(config, &url)))
        };
        let (a, b) = (start(), start());
        (a.join().unwrap(), b.join().unwrap())
    });
    let session = a.login(&ALICE).await;
    let response = b
        .client
        .post(b.url("/api/v1/auth/verify"))
        .bearer_auth(&session)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "B accepts A's session");

    // A challenge from A, signed once, logs in through B exactly once.
    let message = a.challenge(&ALICE).await;
    let body = json!({"message": message, "signature": ALICE.sign(&message)});
    let (first, second) = tokio::join!(
        b.post_json("/api/v1/auth/login", &body),
        a.post_json("/api/v1/auth/login", &body)
    );
    let mut statuses = [first.0, second.0];
    statuses.sort();
    assert_eq!(statuses, [200, 401], "{first:?} {second:?}");
    let refused = if first.0 == 401 { first.1 } else { second.1 };
    assert_eq!(refused["code"], "nonce_used", "{refused}");
}

/// What one request under load saw: a right answer, or a clean refusal.
#[derive(Debug)]
enum Seen {
    Answered,
    Refused503,
}

/// GETs the media record and the job list as ALICE: 200 with the right record, or 503 with
/// `store_unavailable`; anything else (a 500, a wrong record, a code-less error) fails.
async fn one_request(server: &TestServer, session: &str, media_id: &str) -> Seen {
    let (status, record) = server
        .get_json_as(session, &format!("/api/v1/media/{media_id}"))
        .await;
    let (jobs_status, jobs) = server.get_json_as(session, "/api/v1/jobs").await;
    let mut seen = Seen::Answered;
    for (status, body) in [(status, &record), (jobs_status, &jobs)] {
        match status {
            200 => {}
            503 => {
                assert_eq!(body["code"], "store_unavailable", "{body}");
                seen = Seen::Refused503;
            }
            other => panic!("status {other} under a Postgres restart: {body}"),
        }
    }
    if status == 200 {
        assert_eq!(record["id"], media_id, "{record}");
    }
    if jobs_status == 200 {
        assert!(jobs["items"].is_array(), "{jobs}");
    }
    seen
}

#[tokio::test]
async fn a_postgres_restart_under_load_fails_requests_cleanly_and_the_nodes_recover() {
    let postgres = test_postgres::TestPostgres::start_own().unwrap();
    let url = postgres.fresh_database().unwrap();
    let node = || {
        let url = url.clone();
        TestServer::start_with(move |config| {
            on_postgres(config, &url);
            config.postgres.connect_timeout_ms = 300;
        })
    };
    let (a, b) = (node(), node());
    let scratch = tempfile::tempdir().unwrap();
    let clip = std::fs::read(crate::server::make_clip(
        scratch.path(),
        "r.mp4",
        "160x120",
        1,
    ))
    .unwrap();
    let (status, receipt) = a.upload(clip, "r.mp4", Some("before the restart")).await;
    assert_eq!(status, 201, "{receipt}");
    let media_id = receipt["media_id"].as_str().unwrap().to_string();
    let session = a.session().await.to_string();

    // Load on both nodes the whole time: every answer is right or a clean 503.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let refused = std::sync::atomic::AtomicUsize::new(0);
    let load = async {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for server in [&a, &b] {
                if let Seen::Refused503 = one_request(server, &session, &media_id).await {
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    };
    let restart = async {
        postgres.stop().unwrap();
        crate::harness::poll(
            Duration::from_secs(30),
            "503s while Postgres is down",
            async || {
                let n = refused.load(std::sync::atomic::Ordering::Relaxed);
                if n >= 4 {
                    Ok(())
                } else {
                    Err(format!("{n} refused"))
                }
            },
        )
        .await;
        postgres.start_again().unwrap();
        for server in [&a, &b] {
            crate::harness::poll(
                Duration::from_secs(30),
                "the node to answer again",
                async || match one_request(server, &session, &media_id).await {
                    Seen::Answered => Ok(()),
                    other => Err(format!("{other:?}")),
                },
            )
            .await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    tokio::join!(load, restart);

    // The change feed is back too (or its reload caught up): an edit through A shows on B.
    let response = a
        .client
        .patch(a.url(&format!("/api/v1/media/{media_id}")))
        .bearer_auth(&session)
        .json(&json!({"title": "after the restart"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    crate::harness::poll(
        Duration::from_secs(5),
        "B to show the edit after the restart",
        async || {
            let (_, record) = b.get_json(&format!("/api/v1/media/{media_id}")).await;
            if record["title"] == "after the restart" {
                Ok(())
            } else {
                Err(record["title"].to_string())
            }
        },
    )
    .await;
    let (status, health) = b.get_json("/health").await;
    assert_eq!(status, 200, "{health}");
}

/// One tus request through the proxy: which node answered, the status, `Upload-Offset`.
async fn tus_request(request: reqwest::RequestBuilder) -> (String, u16, u64) {
    let response = request
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    let node = crate::cluster::answered_by(&response);
    let status = response.status().as_u16();
    let offset = response
        .headers()
        .get("upload-offset")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    (node, status, offset)
}

#[tokio::test]
async fn a_tus_upload_through_the_proxy_alternates_nodes_and_racing_patches_on_two_nodes_lock() {
    let shared = tempfile::tempdir().unwrap();
    let partial_dir = format!("upload.partial_dir={}", shared.path().display());
    let cluster = crate::cluster::Cluster::start_with(&[&partial_dir]).await;
    let session = crate::cluster::login(&cluster.client, &cluster.proxy_base, &ALICE).await;
    let alice = crate::server::bearer_client(&session);
    let clip = crate::server::make_clip(cluster.scratch(), "tus.mp4", "320x240", 2);
    let video = std::fs::read(clip).unwrap();
    let b64 = crate::tus::b64;
    let response = alice
        .post(cluster.url("/api/v1/uploads"))
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", video.len().to_string())
        .header(
            "Upload-Metadata",
            format!("filename {},title {}", b64(b"tus.mp4"), b64(b"across")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let upload_url = cluster.url(&location);

    // A PATCH held open on node 0 locks the upload on node 1 too (shared partial file).
    let first = video.len() / 4;
    let node_url = |index: usize| format!("{}{location}", cluster.node(index).base);
    let (sender, pending) = crate::tus::held_patch_with(
        &alice,
        node_url(0),
        0,
        first as u64,
        Some(crate::tus::sha256_header(&video[..first])),
    );
    sender.send(Ok(video[..first / 2].to_vec())).await.unwrap();
    // Node 0 holds the lock once it stored where the checksummed PATCH started (it does that
    // under the lock, before it reads the body): read that straight from the database.
    let store = streamgate_actors::store::PostgresStore::connect(
        &cluster.postgres_url,
        1,
        Duration::from_secs(10),
    )
    .unwrap();
    let upload_id =
        streamgate_actors::model::UploadId::parse(location.rsplit('/').next().unwrap()).unwrap();
    crate::harness::poll(
        Duration::from_secs(10),
        "node 0 to take the PATCH",
        async || {
            use streamgate_actors::store::TusRepo;
            let upload = store.get_tus_upload(&upload_id).unwrap().unwrap();
            if upload.unverified_from == Some(0) {
                Ok(())
            } else {
                Err(format!("{upload:?}"))
            }
        },
    )
    .await;
    let (_, status, _) = tus_request(
        alice
            .patch(node_url(1))
            .header("Content-Type", "application/offset+octet-stream")
            .header("Upload-Offset", "0")
            .body(Vec::new()),
    )
    .await;
    assert_eq!(status, 423, "node 1 refuses a PATCH while node 0 writes");
    sender
        .send(Ok(video[first / 2..first].to_vec()))
        .await
        .unwrap();
    drop(sender);
    let response = pending.await.unwrap().unwrap();
    assert_eq!(response.status(), 204);

    // The rest through the proxy, checksummed, in chunks that alternate between the nodes.
    let mut offset = first;
    let mut answered = std::collections::BTreeSet::new();
    for piece in video[first..].chunks(video.len() / 8 + 1) {
        let (node, status, next) = tus_request(
            alice
                .patch(&upload_url)
                .header("Content-Type", "application/offset+octet-stream")
                .header("Upload-Offset", offset.to_string())
                .header("Upload-Checksum", crate::tus::sha256_header(piece))
                .body(piece.to_vec()),
        )
        .await;
        assert_eq!(status, 204, "PATCH at {offset} on {node}");
        assert_eq!(next as usize, offset + piece.len());
        offset += piece.len();
        answered.insert(node);
        // Every node reports the same offset right away.
        for index in 0..2 {
            let (_, status, seen) = tus_request(alice.head(node_url(index))).await;
            assert_eq!(
                (status, seen as usize),
                (200, offset),
                "HEAD on node {index}"
            );
        }
    }
    assert_eq!(answered.len(), 2, "the PATCHes alternated: {answered:?}");

    let (status, upload) = crate::cluster::get_json(
        &cluster.client,
        &cluster.proxy_base,
        &location,
        Some(&session),
    )
    .await;
    assert_eq!(status, 200, "{upload}");
    assert_eq!(upload["state"], "finished", "{upload}");
    let media_id = upload["media_id"].as_str().unwrap().to_string();
    let media = crate::harness::poll(
        Duration::from_secs(120),
        "the media to be ready",
        async || {
            let (_, media) = crate::cluster::get_json(
                &cluster.client,
                &cluster.proxy_base,
                &format!("/api/v1/media/{media_id}"),
                None,
            )
            .await;
            if media["state"] == "processing" {
                Err(media.to_string())
            } else {
                Ok(media)
            }
        },
    )
    .await;
    assert_eq!(media["state"], "ready", "{media}");
    assert_eq!(media["sha256"], crate::tus::sha256_hex(&video), "{media}");
    for index in 0..2 {
        let response = cluster
            .client
            .get(format!(
                "{}/api/v1/media/{media_id}/hls/master.m3u8",
                cluster.node(index).base
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "node {index} plays it");
    }

    // A length declared on one node binds the next PATCH on the other at once.
    let bytes = crate::tus::fake_video(90_000);
    let response = alice
        .post(format!("{}/api/v1/uploads", cluster.node(0).base))
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Defer-Length", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let patch = |index: usize, offset: usize, end: usize, length: Option<usize>| {
        let mut request = alice
            .patch(format!("{}{location}", cluster.node(index).base))
            .header("Content-Type", "application/offset+octet-stream")
            .header("Upload-Offset", offset.to_string())
            .body(bytes[offset..end].to_vec());
        if let Some(length) = length {
            request = request.header("Upload-Length", length.to_string());
        }
        tus_request(request)
    };
    assert_eq!(patch(0, 0, 30_000, None).await.1, 204);
    assert_eq!(patch(1, 30_000, 60_000, Some(bytes.len())).await.1, 204);
    assert_eq!(patch(0, 60_000, 90_000, None).await.1, 204);
    let (status, upload) = crate::cluster::get_json(
        &cluster.client,
        &cluster.node(1).base,
        &location,
        Some(&session),
    )
    .await;
    assert_eq!(status, 200, "{upload}");
    assert_eq!(upload["state"], "finished", "{upload}");
}
