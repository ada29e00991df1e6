//! A panicking actor is restarted by its supervisor, the restart is counted, and the next
//! request succeeds.

use streamgate_actors::supervise::InjectPanic;

use crate::server::TestServer;

#[tokio::test]
async fn a_panicked_actor_is_restarted_and_counted() {
    let server = TestServer::start();
    let (status, before) = server.get_json("/api/v1/monitor/health").await;
    assert_eq!(status, 200);
    let restarts = |report: &serde_json::Value, name: &str| {
        report["actors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|actor| actor["name"] == name)
            .map(|actor| actor["restarts"].as_u64().unwrap())
            .unwrap()
    };
    assert_eq!(restarts(&before, "metadata"), 0);

    // The message that panics gets no answer; the actor is not gone.
    let reply = server.actors.metadata.send(InjectPanic).await;
    assert!(reply.is_err(), "the panicking handler cannot reply");

    let (status, page) = server.get_json("/api/v1/media").await;
    assert_eq!(status, 200, "metadata answers after the restart: {page}");

    let (_, after) = server.get_json("/api/v1/monitor/health").await;
    assert_eq!(restarts(&after, "metadata"), 1, "{after}");
    assert!(
        after["actors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["alive"] == true),
        "{after}"
    );
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"streamgate_actor_restarts_total{actor="metadata"} 1"#),
        "{metrics}"
    );

    // The transcode actor, which owns the job queue, recovers the same way.
    assert!(server.actors.transcode.send(InjectPanic).await.is_err());
    let (status, _) = server.alice_get_json("/api/v1/jobs").await;
    assert_eq!(status, 200);
}
