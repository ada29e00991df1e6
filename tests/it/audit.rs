//! The audit log records uploads, rejections and job submissions, and only admins read it.

use serde_json::Value;

use crate::server::{make_clip, TestServer};

#[tokio::test]
async fn uploads_rejections_and_jobs_are_audited_for_admins_only() {
    let server = TestServer::start_with(|config| config.auth.admin_token = "audit-token".into());
    let scratch = tempfile::tempdir().unwrap();
    let clip = std::fs::read(make_clip(scratch.path(), "a.mp4", "320x240", 1)).unwrap();
    let (status, receipt) = server.upload(clip, "a.mp4", None).await;
    assert_eq!(status, 201, "{receipt}");
    let (status, _) = server
        .upload(b"not a video at all".repeat(20), "b.mp4", None)
        .await;
    assert_eq!(status, 415);

    let response = server.get("/api/v1/audit").await;
    assert_eq!(response.status(), 401, "the audit log is for admins");

    let read = |query: &'static str| {
        let request = server
            .client
            .get(server.url(&format!("/api/v1/audit{query}")))
            .bearer_auth("audit-token");
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    // The login's challenge is audited in the background (and the job's outcome once it
    // ends, whenever that is): wait for the one, leave the other out.
    crate::harness::poll(
        std::time::Duration::from_secs(30),
        "the challenge's entry",
        async || !read("?action=auth.challenge").await["items"][0].is_null(),
    )
    .await;
    let all = read("").await;
    let items: Vec<&Value> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] != "job.outcome")
        .collect();
    let actions: Vec<&str> = items
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "auth.challenge",
            "auth.login",
            "job.submit",
            "upload.finish",
            "upload.reject"
        ],
        "{all}"
    );
    let finish = items[3];
    assert_eq!(finish["target"], receipt["media_id"]);
    assert_eq!(
        finish["actor"],
        crate::chain::ALICE.address,
        "the caller is the session's wallet"
    );
    let rejected = read("?action=upload.reject").await;
    assert_eq!(rejected["items"].as_array().unwrap().len(), 1);
    assert_eq!(rejected["items"][0]["outcome"], "denied");
    assert_eq!(rejected["items"][0]["detail"], "unsupported_container");
    let future = read("?since=2999-01-01T00:00:00Z").await;
    assert!(future["items"].as_array().unwrap().is_empty());
    let paged = read("?limit=3").await;
    let cursor = paged["next_cursor"].as_str().unwrap().to_string();
    let rest = server
        .client
        .get(server.url(&format!("/api/v1/audit?cursor={cursor}")))
        .bearer_auth("audit-token")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(rest["items"][0]["action"], "upload.finish");
}
