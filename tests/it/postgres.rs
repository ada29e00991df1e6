//! The server with its records in Postgres (a throwaway Debian PostgreSQL the harness starts):
//! the main job and wallet login behave as on sled, and nothing lands in a sled store.

use std::time::Duration;

use serde_json::json;
use streamgate_actors::{config::RecordBackend, store::test_postgres};

use crate::{chain::ALICE, e2e, server::TestServer};

#[tokio::test]
async fn on_postgres_an_upload_transcodes_and_plays_and_a_nonce_is_single_use() {
    let url = test_postgres::fresh_database().unwrap();
    let server = TestServer::start_with(|config| {
        config.storage.records = RecordBackend::Postgres;
        config.postgres.url = url.clone();
        config.postgres.pool_size = 4;
    });
    e2e::upload_transcode_stream(&server, e2e::Upload::OneShot).await;
    assert!(
        !server.data_dir.join("db").exists(),
        "records went to a sled store"
    );
    let (status, health) = server.get_json("/health").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["checks"]["store"]["status"], "ok", "{health}");
    assert_eq!(
        health["checks"]["store"]["detail"], "postgres answers",
        "{health}"
    );
    // Pool use (sampled on the monitor's timer) and the latency of every store call.
    let metrics = crate::harness::poll(Duration::from_secs(10), "pool metrics", async || {
        let text = server.get("/metrics").await.text().await.unwrap();
        if text.contains("streamgate_store_pool_max_connections 4") {
            Ok(text)
        } else {
            Err("no pool sample yet".to_string())
        }
    })
    .await;
    let value = |name: &str| -> f64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default();
        line.rsplit(' ')
            .next()
            .unwrap_or_default()
            .parse()
            .unwrap_or(-1.0)
    };
    let (in_use, idle) = (
        value("streamgate_store_pool_connections{state=\"in_use\"}"),
        value("streamgate_store_pool_connections{state=\"idle\"}"),
    );
    assert!(
        in_use >= 0.0 && idle >= 0.0 && in_use + idle <= 4.0,
        "{in_use} {idle}"
    );
    assert!(
        in_use + idle >= 1.0,
        "the pool keeps a connection: {in_use} {idle}"
    );
    assert!(value("streamgate_store_query_duration_seconds_count") > 10.0);
    crate::e2e::promtool_check_metrics(&metrics);

    let message = server.challenge(&ALICE).await;
    let signature = ALICE.sign(&message);
    let body = json!({"message": message, "signature": signature});
    let (status, first) = server.post_json("/api/v1/auth/login", &body).await;
    assert_eq!(status, 200, "{first}");
    let (status, second) = server.post_json("/api/v1/auth/login", &body).await;
    assert_eq!(status, 401, "{second}");
    assert_eq!(second["code"], "nonce_used", "{second}");
}

#[tokio::test]
async fn a_lost_postgres_shows_in_health_and_requests_fail_with_503() {
    let url = test_postgres::fresh_database().unwrap();
    let server = TestServer::start_with(|config| {
        config.storage.records = RecordBackend::Postgres;
        config.postgres.url = url.clone();
        config.postgres.connect_timeout_ms = 500;
    });
    let (status, _) = server.alice_get_json("/api/v1/jobs").await;
    assert_eq!(status, 200);
    test_postgres::drop_database(&url).unwrap();
    let health = crate::harness::poll(
        Duration::from_secs(30),
        "health reporting postgres down",
        async || {
            let (_, health) = server.get_json("/health").await;
            if health["checks"]["store"]["status"] == "down" {
                Ok(health)
            } else {
                Err(health.to_string())
            }
        },
    )
    .await;
    assert_eq!(health["status"], "down", "{health}");
    assert!(
        health["checks"]["store"]["detail"]
            .as_str()
            .unwrap()
            .starts_with("postgres"),
        "{health}"
    );
    let (status, body) = server.alice_get_json("/api/v1/jobs").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "store_unavailable", "{body}");
}

fn migrate(config_file: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_streamgate"))
        .args(["migrate", "--to", "postgres", "--config"])
        .arg(config_file)
        .output()
        .unwrap()
}

#[tokio::test]
async fn migrate_copies_a_sled_install_into_postgres_and_refuses_while_it_runs() {
    let scratch = tempfile::tempdir().unwrap();
    let install = scratch.path().join("install");
    let url = test_postgres::fresh_database().unwrap();
    let config_file = scratch.path().join("migrate.toml");
    let toml_string = |text: &str| toml::Value::String(text.to_string()).to_string();
    std::fs::write(
        &config_file,
        format!(
            "[storage]\ndata_dir = {}\n\n[postgres]\nurl = {}\n",
            toml_string(&install.display().to_string()),
            toml_string(&url)
        ),
    )
    .unwrap();

    let on_sled = TestServer::start_with(|config| config.storage.data_dir = install.clone());
    let media_id = e2e::upload_transcode_stream(&on_sled, e2e::Upload::OneShot).await;
    let session = on_sled.session().await.to_string();
    let (status, jobs) = on_sled.alice_get_json("/api/v1/jobs").await;
    assert_eq!(status, 200, "{jobs}");
    let refused = migrate(&config_file);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("stop it before migrating"), "{stderr}");
    drop(on_sled);
    let store = install.join("db");
    crate::harness::poll(
        Duration::from_secs(30),
        "the stopped server to let go of its store",
        async || {
            if streamgate_actors::store::sled_in_use(&store) {
                Err("held".to_string())
            } else {
                Ok(())
            }
        },
    )
    .await;
    // A second run copies the same records again: nothing doubles, nothing fails.
    for _ in 0..2 {
        let copied = migrate(&config_file);
        let stdout = String::from_utf8_lossy(&copied.stdout);
        assert!(
            copied.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&copied.stderr)
        );
        for line in ["media: 1", "jobs: 1", "session_secret: 1"] {
            assert!(stdout.lines().any(|l| l == line), "{line}: {stdout}");
        }
    }

    let on_postgres = TestServer::start_with(|config| {
        config.storage.data_dir = install.clone();
        config.storage.records = RecordBackend::Postgres;
        config.postgres.url = url.clone();
    });
    // The session secret came along: a session from the sled server still works.
    let (status, jobs_after) = on_postgres.get_json_as(&session, "/api/v1/jobs").await;
    assert_eq!(status, 200, "{jobs_after}");
    assert_eq!(jobs_after["items"], jobs["items"]);
    let (status, media) = on_postgres
        .get_json(&format!("/api/v1/media/{media_id}"))
        .await;
    assert_eq!(status, 200, "{media}");
    assert_eq!(media["state"], "ready", "{media}");
    let master = on_postgres
        .get(&format!("/api/v1/media/{media_id}/hls/master.m3u8"))
        .await;
    assert_eq!(master.status(), 200);
    let (status, found) = on_postgres.get_json("/api/v1/media?q=first").await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["items"][0]["id"], media_id.as_str(), "{found}");
}

#[tokio::test]
async fn migrate_keeps_every_record_and_blob_of_a_populated_install_and_resumes_its_uploads() {
    use streamgate_actors::store::{PostgresStore, WebhookRepo};

    let scratch = tempfile::tempdir().unwrap();
    let install = scratch.path().join("install");
    let shared_partials = scratch.path().join("partials");
    let url = test_postgres::fresh_database().unwrap();
    let moto = crate::s3::Moto::start().await;
    // A hook nobody answers: its deliveries stay queued in the store.
    let hook = streamgate_actors::config::WebhookConfig {
        url: crate::chain::dead_rpc_url(),
        secret: "a-webhook-secret-of-some-length".into(),
        events: vec!["media.ready".into(), "media.updated".into()],
    };

    // Populated on sled with local blobs: a played media item, a gate, a logged-out session,
    // pending webhook deliveries and a half-sent resumable upload.
    let on_sled = TestServer::start_with(|config| {
        config.storage.data_dir = install.clone();
        config.auth.admin_token = "admin".into();
        config.webhooks = vec![hook.clone()];
        crate::chain::read_chain(config, crate::chain::dead_rpc_url());
    });
    let media_id = e2e::upload_transcode_stream(&on_sled, e2e::Upload::OneShot).await;
    let gate = json!({"chain_id": crate::chain::CHAIN_ID, "contract": "0x0000000000000000000000000000000000000001", "standard": "erc721", "min_balance": 1});
    let (status, body) = crate::auth::put_gate(&on_sled, &media_id, "admin", &gate).await;
    assert_eq!(status, 200, "{body}");
    let gone = on_sled.login(&ALICE).await;
    on_sled.logout(&gone).await;
    let alice = on_sled.alice_client().await;
    let video = crate::tus::fake_video(200_000);
    let response = alice
        .post(on_sled.url("/api/v1/uploads"))
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", video.len().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let response = alice
        .patch(on_sled.url(&location))
        .header("Tus-Resumable", "1.0.0")
        .header("Content-Type", "application/offset+octet-stream")
        .header("Upload-Offset", "0")
        .body(video[..80_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let session = on_sled.session().await.to_string();
    let local_blobs: std::collections::BTreeSet<String> =
        crate::server::files_under(&install.join("blobs"))
            .iter()
            .map(|path| {
                path.strip_prefix(install.join("blobs"))
                    .unwrap()
                    .display()
                    .to_string()
            })
            .filter(|key| !key.starts_with(".health"))
            .collect();
    assert!(
        local_blobs.iter().any(|k| k.ends_with("master.m3u8")),
        "{local_blobs:?}"
    );
    drop(on_sled);
    crate::harness::poll(
        Duration::from_secs(30),
        "the sled store to be free",
        async || {
            if streamgate_actors::store::sled_in_use(&install.join("db")) {
                Err("held".to_string())
            } else {
                Ok(())
            }
        },
    )
    .await;
    let queued = {
        use streamgate_actors::store::{SledStore, WebhookRepo};
        let sled = SledStore::open(&install.join("db")).unwrap();
        sled.list_deliveries(1000).unwrap().len()
    };
    assert!(queued > 0, "the dead hook left deliveries queued");

    let config_file = scratch.path().join("migrate.toml");
    let text = |value: &str| toml::Value::String(value.to_string()).to_string();
    std::fs::write(
        &config_file,
        format!(
            "[storage]\ndata_dir = {}\nblobs = \"s3\"\n\n[postgres]\nurl = {}\n\n\
             [upload]\npartial_dir = {}\n\n\
             [s3]\nendpoint = {}\nbucket = {}\nregion = \"us-east-1\"\naccess_key = \"testing\"\n\
             secret_key = \"testing\"\nallow_http = true\n",
            text(&install.display().to_string()),
            text(&url),
            text(&shared_partials.display().to_string()),
            text(&moto.endpoint),
            text(crate::s3::BUCKET),
        ),
    )
    .unwrap();
    // "blobs: N copied, M already there"
    let blob_counts = |stdout: &str| -> (usize, usize) {
        let line = stdout
            .lines()
            .find(|l| l.starts_with("blobs: "))
            .unwrap_or_default();
        let numbers: Vec<usize> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect();
        assert_eq!(numbers.len(), 2, "{stdout}");
        (numbers[0], numbers[1])
    };
    let first = migrate(&config_file);
    let stdout = String::from_utf8_lossy(&first.stdout).to_string();
    assert!(
        first.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let (copied, present) = blob_counts(&stdout);
    assert!(copied >= local_blobs.len() && present == 0, "{stdout}");
    let delivered = format!("webhook_deliveries: {queued}");
    for line in [
        "media: 1",
        "gates: 1",
        "auth_revoked_sessions: 1",
        "tus_uploads: 1",
        &delivered,
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line}: {stdout}");
    }
    // Safe to re-run: nothing is copied twice.
    let again = migrate(&config_file);
    let stdout = String::from_utf8_lossy(&again.stdout).to_string();
    assert!(again.status.success(), "{stdout}");
    assert_eq!(blob_counts(&stdout), (0, copied), "{stdout}");

    // Every blob is in the bucket, every pending delivery in Postgres.
    let in_bucket: std::collections::BTreeSet<String> = moto.keys("").await.into_iter().collect();
    assert!(
        local_blobs.is_subset(&in_bucket),
        "missing: {:?}",
        local_blobs.difference(&in_bucket).collect::<Vec<_>>()
    );
    let store = PostgresStore::connect(&url, 1, Duration::from_secs(10)).unwrap();
    assert_eq!(store.list_deliveries(1000).unwrap().len(), queued);
    drop(store);

    // A node on Postgres and S3 with an empty data directory serves all of it.
    let on_postgres = TestServer::start_with(|config| {
        config.storage.records = RecordBackend::Postgres;
        config.postgres.url = url.clone();
        config.upload.partial_dir = shared_partials.clone();
        moto.configure(config);
        crate::chain::read_chain(config, crate::chain::dead_rpc_url());
    });
    let (status, media) = on_postgres
        .get_json(&format!("/api/v1/media/{media_id}"))
        .await;
    assert_eq!(status, 200, "{media}");
    assert_eq!(
        (&media["state"], &media["gated"]),
        (&json!("ready"), &json!(true)),
        "{media}"
    );
    let master = on_postgres
        .client
        .get(on_postgres.url(&format!("/api/v1/media/{media_id}/hls/master.m3u8")))
        .bearer_auth(&session)
        .send()
        .await
        .unwrap();
    assert_eq!(master.status(), 200, "the owner plays it from S3");
    let (status, refused) = on_postgres.get_json_as(&gone, "/api/v1/jobs").await;
    assert_eq!(status, 401, "{refused}");
    assert_eq!(refused["code"], "session_revoked", "{refused}");
    // The half-sent upload resumes where it stopped and finishes.
    let alice = crate::server::bearer_client(&session);
    let head = alice
        .head(on_postgres.url(&location))
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(head.headers()["upload-offset"], "80000");
    let response = alice
        .patch(on_postgres.url(&location))
        .header("Tus-Resumable", "1.0.0")
        .header("Content-Type", "application/offset+octet-stream")
        .header("Upload-Offset", "80000")
        .body(video[80_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
}
