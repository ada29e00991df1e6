//! What the audit log records beyond writes: challenge issuance, refused admin tokens and
//! sessions (security events), refused playback, and job outcomes. Events a client can repeat
//! at will are sampled: a flood leaves one entry per peer and interval, not one per request.

use std::time::Duration;

use serde_json::{json, Value};

use crate::{
    auth::{assert_refused, put_gate},
    auth_abuse::metric,
    chain::{dead_rpc_url, ALICE, BOB, CHAIN_ID},
    harness::poll,
    server::{bearer_client, make_clip, TestServer},
};

const ADMIN: &str = "audit-coverage-admin";
const DEADLINE: Duration = Duration::from_secs(180);

async fn entries(server: &TestServer, action: &str) -> Vec<Value> {
    let path = format!("/api/v1/audit?action={action}&limit=100");
    let (status, page) = server.get_json_as(ADMIN, &path).await;
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().unwrap().clone()
}

/// Waits until `action` has an entry (sampled entries are written in the background), then
/// checks there is exactly one and returns it.
async fn the_entry(server: &TestServer, action: &str) -> Value {
    let found = poll(Duration::from_secs(30), action, async || {
        let found = entries(server, action).await;
        (!found.is_empty()).then_some(found)
    })
    .await;
    assert_eq!(found.len(), 1, "{action}: {found:?}");
    found[0].clone()
}

async fn sampled(server: &TestServer, action: &str, result: &str) -> f64 {
    let series =
        format!(r#"streamgate_audit_refusals_total{{action="{action}",result="{result}"}}"#);
    metric(server, &series).await
}

#[tokio::test]
async fn challenges_refused_tokens_and_refused_playback_are_audited_once_per_peer() {
    let server = TestServer::start_with(|c| {
        c.auth.admin_token = ADMIN.into();
        crate::chain::read_chain(c, dead_rpc_url());
    });
    // The session's login asks for one challenge, then four more.
    let session = server.session().await.to_string();
    for _ in 0..4 {
        server.challenge(&BOB).await;
    }
    // A forged admin token and a forged session, three times each.
    for _ in 0..3 {
        let (status, body) = server
            .get_json_as("not-the-admin-token", "/api/v1/audit")
            .await;
        assert_refused(status, &body, 401, "admin_token_required");
        let (status, body) = server.get_json_as("sg1.forged", "/api/v1/jobs").await;
        assert_refused(status, &body, 401, "session_invalid");
    }
    // The session routes that take a token themselves count the same way.
    let response = bearer_client("sg1.forged")
        .post(server.url("/api/v1/auth/refresh"))
        .send()
        .await
        .unwrap();
    crate::auth::refused_with(response, 401, "session_invalid").await;
    // No token at all is no security event.
    assert_eq!(server.get("/api/v1/jobs").await.status(), 401);
    // Gated media: a segment without a playback token, three times.
    let (status, receipt) = server
        .upload(crate::tus::fake_video(16 * 1024), "g.mp4", None)
        .await;
    assert_eq!(status, 201, "{receipt}");
    let media_id = receipt["media_id"].as_str().unwrap().to_string();
    let gate = json!({"chain_id": CHAIN_ID, "contract": BOB.address, "standard": "erc721"});
    let (status, body) = put_gate(&server, &media_id, &session, &gate).await;
    assert_eq!(status, 200, "{body}");
    let segment = server.url(&format!("/api/v1/media/{media_id}/hls/360p/seg_00001.m4s"));
    for _ in 0..3 {
        let response = server.client.get(&segment).send().await.unwrap();
        crate::auth::refused_with(response, 401, "playback_token_required").await;
    }

    let challenge = the_entry(&server, "auth.challenge").await;
    assert_eq!(challenge["actor"], "ip:127.0.0.1");
    assert_eq!(challenge["outcome"], "ok");
    let detail = challenge["detail"].as_str().unwrap();
    assert!(detail.contains(ALICE.address), "{challenge}");
    let admin = the_entry(&server, "security.admin_token_refused").await;
    assert_eq!(
        (&admin["actor"], &admin["outcome"], &admin["detail"]),
        (
            &json!("ip:127.0.0.1"),
            &json!("denied"),
            &json!("admin_token_required")
        )
    );
    let refused = the_entry(&server, "security.session_refused").await;
    assert_eq!(refused["detail"], "session_invalid", "{refused}");
    let playback = the_entry(&server, "playback.refused").await;
    assert_eq!(playback["target"], media_id.as_str());
    assert_eq!(playback["detail"], "playback_token_required");

    // The rest of each flood was counted, not written.
    for (action, requests) in [
        ("auth.challenge", 5.0),
        ("security.admin_token_refused", 3.0),
        ("security.session_refused", 4.0),
        ("playback.refused", 3.0),
    ] {
        assert_eq!(sampled(&server, action, "written").await, 1.0, "{action}");
        assert_eq!(
            sampled(&server, action, "suppressed").await,
            requests - 1.0,
            "{action}"
        );
    }
}

#[tokio::test]
async fn job_outcomes_succeeded_failed_and_cancelled_are_audited() {
    let server = TestServer::start_with(|c| c.auth.admin_token = ADMIN.into());
    let admin = bearer_client(ADMIN);
    let scratch = tempfile::tempdir().unwrap();
    let clip = std::fs::read(make_clip(scratch.path(), "j.mp4", "320x240", 1)).unwrap();
    let (status, receipt) = server.upload(clip, "j.mp4", None).await;
    assert_eq!(status, 201, "{receipt}");
    let ready = receipt["media_id"].as_str().unwrap().to_string();
    // Sniffs as MP4, but ffmpeg cannot decode it: the job fails for good.
    let mut corrupt = vec![0, 0, 0, 0x20];
    corrupt.extend_from_slice(b"ftypisom");
    corrupt.extend((0..16 * 1024).map(|i| (i * 7 % 251) as u8));
    let (status, receipt) = server.upload(corrupt, "broken.mp4", None).await;
    assert_eq!(status, 201, "{receipt}");
    let broken = receipt["media_id"].as_str().unwrap().to_string();
    let media = server
        .wait_for_media(&ready, DEADLINE, |m| m["state"] != "processing")
        .await;
    assert_eq!(media["state"], "ready", "{media}");

    // A job an hour out, cancelled while queued.
    let later = time::OffsetDateTime::now_utc() + Duration::from_secs(3600);
    let later = later
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let submitted: Value = admin
        .post(server.url("/api/v1/jobs"))
        .json(&json!({"kind": "thumbnail", "media_id": ready, "run_at": later}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cancelled = submitted["id"].as_str().unwrap().to_string();
    let response = admin
        .post(server.url(&format!("/api/v1/jobs/{cancelled}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let outcomes = poll(DEADLINE, "three job outcomes", async || {
        let found = entries(&server, "job.outcome").await;
        (found.len() >= 3).then_some(found)
    })
    .await;
    assert_eq!(outcomes.len(), 3, "one entry per job: {outcomes:?}");
    let of = |needle: &str| {
        outcomes
            .iter()
            .find(|e| e["detail"].as_str().unwrap().contains(needle))
            .unwrap_or_else(|| panic!("{needle}: {outcomes:?}"))
            .clone()
    };
    let succeeded = of(&format!("transcode succeeded media {ready}"));
    assert_eq!(
        (&succeeded["outcome"], &succeeded["actor"]),
        (&json!("ok"), &json!("worker"))
    );
    let failed = of(&format!("transcode failed media {broken}"));
    assert_eq!(failed["outcome"], "failed");
    assert!(
        failed["detail"]
            .as_str()
            .unwrap()
            .ends_with(": undecodable"),
        "{failed}"
    );
    let cancelled_entry = of("thumbnail cancelled");
    assert_eq!(cancelled_entry["outcome"], "cancelled");
    assert_eq!(cancelled_entry["target"], cancelled.as_str());
}
