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
