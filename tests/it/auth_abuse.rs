//! Hostile clients of the auth surface: login floods are sampled into the audit log, the audit
//! log is pruned by retention, `nft/verify` needs a session and budgets its RPC calls, and
//! playback tokens end with their session and with the gate they were minted under (against a
//! real anvil chain).

use std::time::Duration;

use serde_json::{json, Value};

use crate::{
    auth::{assert_refused, bearer_get, nft_verify, play, put_gate, upload_ready, uris},
    chain::{Anvil, ALICE, BOB, CAROL, CHAIN_ID},
    harness::{poll, poll_every},
    server::{fetch_json, TestServer},
};

const ADMIN: &str = "admin-token";
const DEADLINE: Duration = Duration::from_secs(10);

/// The value of the series `series` (name and labels, exactly) in `/metrics`.
pub(crate) async fn metric(server: &TestServer, series: &str) -> f64 {
    let text = server.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} missing"))
        .trim()
        .parse()
        .unwrap()
}

async fn audit_items(server: &TestServer, query: &str) -> Vec<Value> {
    let admin = crate::server::bearer_client(ADMIN);
    let page = fetch_json(&admin, server.url(&format!("/api/v1/audit{query}"))).await;
    page["items"].as_array().unwrap().clone()
}

/// Polls `url` (no headers) until it is refused, failing after [`DEADLINE`]; returns the
/// refusal's status and body.
async fn refused_within_deadline(server: &TestServer, url: &str) -> (u16, Value) {
    let response = poll_every(
        Duration::from_millis(50),
        DEADLINE,
        &format!("{url} to be refused"),
        async || {
            let response = bearer_get(server, url, None).await;
            (response.status() != 200).then_some(response)
        },
    )
    .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn chain_config(rpc: String) -> impl FnOnce(&mut streamgate::config::Config) {
    move |c| {
        c.auth.admin_token = ADMIN.into();
        crate::chain::read_chain(c, rpc);
    }
}

#[tokio::test]
async fn a_login_flood_is_sampled_into_the_audit_log_without_holding_logins() {
    let server = TestServer::start_with(|c| {
        c.auth.admin_token = ADMIN.into();
        c.audit.refusal_interval_s = 3600;
        // Sixty auth requests from one address: the rate limiter has its own tests.
        c.rate_limit.enabled = false;
    });
    // Well-formed SIWE messages, each on its own challenge, with a signature that is not the
    // wallet's: each costs the server a signature recovery and ends in a refusal.
    let mut bodies = Vec::new();
    for _ in 0..30 {
        let message = server.challenge(&ALICE).await;
        let forged = BOB.sign(&message);
        bodies.push(json!({"message": message, "signature": forged}));
    }
    let attempts = bodies
        .iter()
        .map(|body| server.post_json("/api/v1/auth/login", body));
    for (status, body) in futures_util::future::join_all(attempts).await {
        assert_refused(status, &body, 401, "signature_mismatch");
    }
    let series = |result: &str| {
        format!(r#"streamgate_audit_refusals_total{{action="auth.login",result="{result}"}}"#)
    };
    assert_eq!(metric(&server, &series("written")).await, 1.0);
    assert_eq!(metric(&server, &series("suppressed")).await, 29.0);
    // A real login right after the flood goes through, and is audited durably.
    let session = server.login(&ALICE).await;
    assert!(session.starts_with("sg1."));
    // The sampled refusal is written in the background; wait for it by count, not by time.
    let (denied, logins) = poll(DEADLINE, "the sampled refusal to be written", async || {
        let logins = audit_items(&server, "?action=auth.login").await;
        let denied: Vec<Value> = logins
            .iter()
            .filter(|e| e["outcome"] == "denied")
            .cloned()
            .collect();
        assert!(denied.len() <= 1, "{logins:?}");
        let ok = logins.iter().any(|e| e["outcome"] == "ok");
        (denied.len() == 1 && ok).then_some((denied, logins))
    })
    .await;
    assert_eq!(denied[0]["actor"], "ip:127.0.0.1", "{logins:?}");
    assert_eq!(denied[0]["detail"], "signature_mismatch");
}

#[tokio::test]
async fn audit_retention_prunes_the_oldest_entries_on_its_timer() {
    let server = TestServer::start_with(|c| {
        c.auth.admin_token = ADMIN.into();
        c.audit.max_entries = 2;
        c.audit.prune_interval_s = 1;
    });
    for _ in 0..5 {
        server.login(&ALICE).await;
    }
    let items = poll(DEADLINE, "the audit log to be pruned", async || {
        let items = audit_items(&server, "").await;
        if items.len() <= 2 {
            Ok(items)
        } else {
            Err(format!("{} entries", items.len()))
        }
    })
    .await;
    assert_eq!(items.len(), 2, "the newest entries stay");
    assert!(metric(&server, "streamgate_audit_pruned_total").await >= 3.0);
}

#[tokio::test]
async fn nft_verify_needs_a_session_and_budgets_its_rpc_calls() {
    let chain = Anvil::start().await;
    let pass = chain.deploy_erc721(&ALICE);
    chain.mint_erc721(&ALICE, &pass, BOB.address);
    let server = TestServer::start_with({
        let tweak = chain_config(chain.url.clone());
        move |c| {
            tweak(c);
            c.auth.nft_verify_rpc_per_minute = 2;
        }
    });
    let query = |token_id: u64| json!({"address": BOB.address, "chain_id": CHAIN_ID, "contract": pass, "standard": "erc721", "token_id": token_id});
    let (status, body) = server.post_json("/api/v1/auth/nft/verify", &query(0)).await;
    assert_refused(status, &body, 401, "session_required");
    let (status, body) = nft_verify(&server, "sg1.forged.token", &query(0)).await;
    assert_refused(status, &body, 401, "session_invalid");

    let carol = server.login(&CAROL).await;
    let (status, answer) = nft_verify(&server, &carol, &query(0)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["owns"].clone(), answer["cached"].clone()),
        (json!(true), json!(false))
    );
    let (status, answer) = nft_verify(&server, &carol, &query(1)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["owns"], false, "token 1 was never minted");
    // The budget (2 per minute) is spent: a third uncached look-up is refused with a wait.
    let response = server
        .client
        .post(server.url("/api/v1/auth/nft/verify"))
        .bearer_auth(&carol)
        .json(&query(2))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "nft_rpc_budget_exceeded", "{body}");
    // Cached answers cost nothing, and another session has its own budget.
    let (status, answer) = nft_verify(&server, &carol, &query(0)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["cached"], true);
    let bob = server.login(&BOB).await;
    let (status, answer) = nft_verify(&server, &bob, &query(2)).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn playback_tokens_end_with_their_session_and_their_gate() {
    let chain = Anvil::start().await;
    let pass = chain.deploy_erc721(&ALICE);
    chain.mint_erc721(&ALICE, &pass, BOB.address);
    let server = TestServer::start_with(chain_config(chain.url.clone()));
    let media = upload_ready(&server, "bound.mp4").await;
    let gate =
        json!({"chain_id": CHAIN_ID, "contract": pass, "standard": "erc721", "min_balance": 1});
    let (status, body) = put_gate(&server, &media.media_id, ADMIN, &gate).await;
    assert_eq!(status, 200, "{body}");
    let base = server.url(&format!("/api/v1/media/{}/hls/", media.media_id));

    // Two sessions of one wallet: a logout ends the tokens of that session only.
    let bob = server.login(&BOB).await;
    let other_bob = server.login(&BOB).await;
    let (rendition_base, segment) = play(&server, &media.media_id, &bob).await;
    let (_, other_segment) = play(&server, &media.media_id, &other_bob).await;
    let segment_url = format!("{rendition_base}{segment}");
    let master = bearer_get(&server, &format!("{base}master.m3u8"), Some(&bob))
        .await
        .text()
        .await
        .unwrap();
    let variant_url = format!("{base}{}", uris(&master)[0]);
    server.logout(&bob).await;
    let (status, body) = refused_within_deadline(&server, &segment_url).await;
    assert_refused(status, &body, 401, "playback_session_revoked");
    let (status, body) = refused_within_deadline(&server, &variant_url).await;
    assert_refused(status, &body, 401, "playback_session_revoked");
    let other_url = format!("{rendition_base}{other_segment}");
    assert_eq!(bearer_get(&server, &other_url, None).await.status(), 200);

    // A holder who keeps session and pass plays on across a playlist reload.
    let (_, reloaded) = play(&server, &media.media_id, &other_bob).await;
    assert_eq!(
        bearer_get(&server, &format!("{rendition_base}{reloaded}"), None)
            .await
            .status(),
        200
    );

    // A gate change ends every token minted under the old gate, the holder's included; the
    // holder's next playlist reload carries a fresh token that plays.
    let stricter = json!({"chain_id": CHAIN_ID, "contract": pass, "standard": "erc721", "token_id": "0", "min_balance": 1});
    let (status, body) = put_gate(&server, &media.media_id, ADMIN, &stricter).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        refused_within_deadline(&server, &format!("{rendition_base}{reloaded}")).await;
    assert_refused(status, &body, 401, "playback_gate_changed");
    let (_, fresh) = play(&server, &media.media_id, &other_bob).await;
    assert_ne!(fresh, reloaded, "a new token after the gate change");

    // Revocations survive in the read handle: the logged-out session cannot get a new one.
    let response = bearer_get(&server, &format!("{base}master.m3u8"), Some(&bob)).await;
    let status = response.status().as_u16();
    assert_refused(
        status,
        &response.json().await.unwrap(),
        401,
        "session_revoked",
    );
    let metrics = server.get("/metrics").await.text().await.unwrap();
    for expected in [
        r#"streamgate_playback_refused_total{reason="playback_session_revoked"}"#,
        r#"streamgate_playback_refused_total{reason="playback_gate_changed"}"#,
    ] {
        assert!(metrics.contains(expected), "{expected} missing");
    }
}
