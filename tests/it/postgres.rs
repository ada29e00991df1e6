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
