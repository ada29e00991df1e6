//! Lifecycle webhooks against a real HTTP receiver on 127.0.0.1: signed, stored before the
//! change is acknowledged, retried until the receiver is back, across a restart, at least once
//! with a stable event id.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use streamgate::config::Config;

use crate::{
    harness::poll,
    server::{bearer_client, fetch_json, make_clip, read_request, TestServer},
};

const SECRET: &str = "whsec-a-long-enough-secret";
const ADMIN: &str = "webhooks-admin-token";
const DEADLINE: Duration = Duration::from_secs(180);

/// What the receiver got: each request's head (lower-cased) and body.
type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Answers the first `failures` requests 500 (after reading them), the rest 204.
fn receive(listener: tokio::net::TcpListener, failures: usize) -> Seen {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let Some(request) = read_request(&mut socket).await else {
                continue;
            };
            let count = {
                let mut log = log.lock().unwrap();
                log.push(request);
                log.len()
            };
            let status = if count <= failures {
                "500 Internal Server Error"
            } else {
                "204 No Content"
            };
            let answer =
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            use tokio::io::AsyncWriteExt;
            let _ = socket.write_all(answer.as_bytes()).await;
        }
    });
    seen
}

fn configure(config: &mut Config, dir: &std::path::Path, port: u16) {
    config.storage.data_dir = dir.to_path_buf();
    config.auth.admin_token = ADMIN.into();
    // Gates name a chain; setting one reads nothing from it.
    crate::chain::read_chain(config, crate::chain::dead_rpc_url());
    config.webhooks = vec![streamgate_actors::config::WebhookConfig {
        url: format!("http://127.0.0.1:{port}/hook"),
        secret: SECRET.into(),
        events: streamgate_actors::webhooks::EVENTS
            .iter()
            .map(|event| event.to_string())
            .collect(),
    }];
}

/// The events received so far, each checked: POST to the configured path, JSON, and a
/// signature that verifies with the secret over `t.body`.
fn verified_events(seen: &Seen) -> Vec<Value> {
    let seen = seen.lock().unwrap().clone();
    seen.iter()
        .map(|(head, body)| {
            assert!(head.starts_with("post /hook "), "{head}");
            assert!(head.contains("content-type: application/json"), "{head}");
            let signature = head
                .lines()
                .find_map(|line| line.strip_prefix("x-streamgate-signature:"))
                .unwrap()
                .trim();
            let (t, v1) = signature.split_once(',').unwrap();
            let t = t.strip_prefix("t=").unwrap();
            let v1 = v1.strip_prefix("v1=").unwrap();
            let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
            mac.update(format!("{t}.").as_bytes());
            mac.update(body);
            mac.verify_slice(&hex::decode(v1).unwrap())
                .expect("the signature verifies");
            serde_json::from_slice(body).unwrap()
        })
        .collect()
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|event| event["type"] == kind)
        .collect()
}

async fn deliveries(server: &TestServer) -> Vec<Value> {
    let log = fetch_json(
        &bearer_client(ADMIN),
        server.url("/api/v1/webhooks/deliveries"),
    )
    .await;
    log["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn webhooks_are_signed_and_reach_a_receiver_that_was_down_across_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_path_buf();
    // A port with nothing listening: the receiver is down.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    let media_id = {
        let server = TestServer::start_with(|c| configure(c, &dir, port));
        let scratch = tempfile::tempdir().unwrap();
        let clip = std::fs::read(make_clip(scratch.path(), "hooked.mp4", "320x240", 2)).unwrap();
        let (status, receipt) = server.upload(clip, "hooked.mp4", Some("Hooked")).await;
        assert_eq!(status, 201, "{receipt}");
        let media_id = receipt["media_id"].as_str().unwrap().to_string();
        // Stored with the upload's acknowledgement, before any attempt could succeed.
        let log = deliveries(&server).await;
        assert!(
            log.iter().any(|d| d["type"] == "upload.finished"),
            "{log:?}"
        );
        server
            .wait_for_media(&media_id, DEADLINE, |m| m["state"] == "ready")
            .await;
        let log = poll(DEADLINE, "failed attempts of both events", async || {
            let log = deliveries(&server).await;
            let tried = |kind: &str| {
                log.iter().any(|d| {
                    d["type"] == kind
                        && d["state"] == "pending"
                        && d["attempts"].as_u64() >= Some(1)
                        && d["last_error"].is_string()
                })
            };
            if tried("upload.finished") && tried("media.ready") {
                Ok(log)
            } else {
                Err(format!("{log:?}"))
            }
        })
        .await;
        assert!(log
            .iter()
            .all(|d| d["url"] == format!("http://127.0.0.1:{port}/hook")));
        // The log is for admins only.
        let response = server.get("/api/v1/webhooks/deliveries").await;
        assert_eq!(response.status(), 401);
        media_id
    };

    // The receiver comes back (failing its first request once), and the server restarts.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let seen = receive(listener, 1);
    let server = TestServer::start_with(|c| configure(c, &dir, port));
    let events = poll(DEADLINE, "both events delivered", async || {
        // Jump past each retry's backoff rather than wait it out (well within the day).
        server.clock.advance(Duration::from_secs(120));
        let events = verified_events(&seen);
        let delivered = |kind: &str| {
            let received = of_type(&events, kind);
            // The first request was answered 500, so one event arrived more than once.
            !received.is_empty()
        };
        // The refused first request is recorded too: its event must come again.
        let refused_again = events
            .first()
            .is_some_and(|first| events.iter().filter(|e| e["id"] == first["id"]).count() >= 2);
        if delivered("upload.finished") && delivered("media.ready") && refused_again {
            Ok(events)
        } else {
            Err(format!("{events:?}"))
        }
    })
    .await;
    for event in &events {
        assert_eq!(event["media"]["id"], media_id.as_str(), "{event}");
        assert!(
            event["created_at"].is_string() && event["id"].is_string(),
            "{event}"
        );
        assert!(
            event["media"].get("source_key").is_none(),
            "no blob keys: {event}"
        );
    }
    assert_eq!(
        of_type(&events, "media.ready")[0]["media"]["state"],
        "ready"
    );
    // Duplicates carry one id; different events never share one.
    let first = &events[0];
    let repeats: Vec<&Value> = events.iter().filter(|e| e["id"] == first["id"]).collect();
    assert!(
        repeats.len() >= 2,
        "the refused event came again: {events:?}"
    );
    assert!(repeats.iter().all(|e| e["type"] == first["type"]));
    let finished_id = &of_type(&events, "upload.finished")[0]["id"];
    let ready_id = &of_type(&events, "media.ready")[0]["id"];
    assert_ne!(finished_id, ready_id);
    assert!(of_type(&events, "upload.finished")
        .iter()
        .all(|e| &e["id"] == finished_id));

    // Edits and deletes are events too, delivered at once now that the receiver answers.
    let alice = server.session().await.to_string();
    let response = server
        .client
        .patch(server.url(&format!("/api/v1/media/{media_id}")))
        .bearer_auth(&alice)
        .json(&json!({"title": "Renamed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // A gate set through its own route is a change to the media as well.
    let gate = json!({"chain_id": crate::chain::CHAIN_ID, "standard": "erc721", "min_balance": 1,
        "contract": "0x5FbDB2315678afecb367f032d93F642f64180aa3"});
    let response = server
        .client
        .put(server.url(&format!("/api/v1/media/{media_id}/gate")))
        .bearer_auth(&alice)
        .json(&gate)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    poll(
        DEADLINE,
        "the rename and the gate change announced",
        async || of_type(&verified_events(&seen), "media.updated").len() >= 2,
    )
    .await;
    let response = server
        .client
        .delete(server.url(&format!("/api/v1/media/{media_id}")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let events = poll(DEADLINE, "the update and the deletion", async || {
        let events = verified_events(&seen);
        let updated = of_type(&events, "media.updated");
        if !updated.is_empty() && !of_type(&events, "media.deleted").is_empty() {
            Ok(events)
        } else {
            Err(format!("{events:?}"))
        }
    })
    .await;
    assert_eq!(
        of_type(&events, "media.updated")[0]["media"]["title"],
        "Renamed"
    );

    // The log agrees: every delivery delivered, the refused one after more than one attempt.
    let log = poll(
        DEADLINE,
        "the log to show every delivery done",
        async || {
            let log = deliveries(&server).await;
            // `media.playable` too, when a pass saw the short clip before its job ended.
            let kinds = [
                "upload.finished",
                "media.ready",
                "media.updated",
                "media.deleted",
            ];
            let all_kinds = kinds.iter().all(|k| log.iter().any(|d| d["type"] == *k));
            if all_kinds && log.iter().all(|d| d["state"] == "delivered") {
                Ok(log)
            } else {
                Err(format!("{log:?}"))
            }
        },
    )
    .await;
    assert!(log.iter().any(|d| d["attempts"].as_u64() >= Some(2)));
    assert!(log.iter().all(|d| d["last_status"] == 204));
    drop(server);
    drop(data);
}
