//! Remembered playback grants (the gated playlist fast path) against a real chain (anvil): a
//! remembered grant serves working tokenised URIs, and ends at once on logout, on a gate change
//! and at the session's expiry.

use std::time::Duration;

use serde_json::json;
use streamgate_actors::clock::Clock;
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use crate::{
    auth::{bearer_get, play, put_gate, refused_with, upload_ready, uris},
    chain::{Anvil, ALICE, BOB, CHAIN_ID},
    server::TestServer,
};

const ADMIN: &str = "admin-token";

fn grant_hits(server: &TestServer) -> u64 {
    server.actors.playback.grant_stats().unwrap().hits
}

#[tokio::test]
async fn remembered_grants_play_and_end_at_logout_and_at_a_gate_change() {
    let chain = Anvil::start().await;
    let pass = chain.deploy_erc721(&ALICE);
    let unheld = chain.deploy_erc721(&ALICE);
    chain.mint_erc721(&ALICE, &pass, BOB.address);
    let rpc = chain.url.clone();
    let server = TestServer::start_with(move |c| {
        c.auth.admin_token = ADMIN.into();
        crate::chain::read_chain(c, rpc);
    });
    let media = upload_ready(&server, "remembered.mp4").await;
    let gate_on = |contract: &str| json!({"chain_id": CHAIN_ID, "contract": contract, "standard": "erc721", "min_balance": 1});
    let (status, body) = put_gate(&server, &media.media_id, ADMIN, &gate_on(&pass)).await;
    assert_eq!(status, 200, "{body}");
    let master = server.url(&format!("/api/v1/media/{}/hls/master.m3u8", media.media_id));

    // The first GET is decided by the AuthActor; the next ones reuse the remembered grant:
    // the same token, the same bytes (from the tokenised cache), URIs that play.
    let bob = server.login(&BOB).await;
    let response = bearer_get(&server, &master, Some(&bob)).await;
    assert_eq!(response.status(), 200);
    let decided = response.text().await.unwrap();
    assert!(uris(&decided)[0].contains("?token="), "{decided}");
    let (hits, tokenised_hits) = (
        grant_hits(&server),
        server.actors.caches.tokenised.stats().hits,
    );
    let response = bearer_get(&server, &master, Some(&bob)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), decided);
    assert_eq!(grant_hits(&server), hits + 1, "answered from the grant");
    assert_eq!(
        server.actors.caches.tokenised.stats().hits,
        tokenised_hits + 1
    );
    play(&server, &media.media_id, &bob).await;
    assert_eq!(grant_hits(&server), hits + 2);

    // Logout: refused at once, although the grant was remembered.
    server.logout(&bob).await;
    refused_with(
        bearer_get(&server, &master, Some(&bob)).await,
        401,
        "session_revoked",
    )
    .await;

    // A gate change to a contract BOB does not hold: refused at once.
    let bob = server.login(&BOB).await;
    play(&server, &media.media_id, &bob).await;
    let hits = grant_hits(&server);
    assert_eq!(bearer_get(&server, &master, Some(&bob)).await.status(), 200);
    assert_eq!(
        grant_hits(&server),
        hits + 1,
        "remembered before the change"
    );
    let (status, body) = put_gate(&server, &media.media_id, ADMIN, &gate_on(&unheld)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        server.actors.caches.tokenised.stats().size,
        0,
        "the gate change dropped the media's tokenised playlists"
    );
    refused_with(
        bearer_get(&server, &master, Some(&bob)).await,
        403,
        "gate_not_passed",
    )
    .await;
    // The owner still plays; back on the pass, BOB is decided afresh and plays.
    let alice = server.session().await.to_string();
    play(&server, &media.media_id, &alice).await;
    let (status, body) = put_gate(&server, &media.media_id, ADMIN, &gate_on(&pass)).await;
    assert_eq!(status, 200, "{body}");
    play(&server, &media.media_id, &bob).await;

    // Cleared: public, and no token in what anyone is served.
    let response = server
        .client
        .delete(server.url(&format!("/api/v1/media/{}/gate", media.media_id)))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    for session in [None, Some(bob.as_str())] {
        let response = bearer_get(&server, &master, session).await;
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        assert!(!text.contains("token="), "{text}");
    }
    let metrics = server.get("/metrics").await.text().await.unwrap();
    for expected in [
        r#"streamgate_cache_requests_total{cache="playback_grants",result="hit"}"#,
        r#"streamgate_cache_requests_total{cache="tokenised_playlists",result="miss"}"#,
    ] {
        assert!(metrics.contains(expected), "{expected} missing");
    }
}

#[tokio::test]
async fn an_expired_session_is_refused_although_its_grant_was_remembered() {
    let chain = Anvil::start().await;
    let pass = chain.deploy_erc721(&ALICE);
    chain.mint_erc721(&ALICE, &pass, BOB.address);
    let rpc = chain.url.clone();
    let server = TestServer::start_with(move |c| {
        c.auth.admin_token = ADMIN.into();
        // Longer than any slow machine takes for a few GETs; the clock is moved past it.
        c.auth.session_ttl_s = 3600;
        crate::chain::read_chain(c, rpc);
    });
    let media = upload_ready(&server, "expiring.mp4").await;
    let gate = json!({"chain_id": CHAIN_ID, "contract": pass, "standard": "erc721"});
    let (status, body) = put_gate(&server, &media.media_id, ADMIN, &gate).await;
    assert_eq!(status, 200, "{body}");
    let master = server.url(&format!("/api/v1/media/{}/hls/master.m3u8", media.media_id));

    let (status, login) = server.try_login(&BOB, |message| message).await;
    assert_eq!(status, 200, "{login}");
    let bob = login["token"].as_str().unwrap().to_string();
    let expires_at =
        OffsetDateTime::parse(login["expires_at"].as_str().unwrap(), &Rfc3339).unwrap();
    let hits = grant_hits(&server);
    let mut served = 0;
    for _ in 0..3 {
        let response = bearer_get(&server, &master, Some(&bob)).await;
        assert_eq!(response.status(), 200, "served before the session expires");
        served += 1;
    }
    assert!(server.clock.now_utc() < expires_at);
    server.clock.advance(Duration::from_secs(3601));
    assert!(server.clock.now_utc() >= expires_at);
    let response = bearer_get(&server, &master, Some(&bob)).await;
    refused_with(response, 401, "session_expired").await;
    assert!(served >= 2, "played before expiry ({served} times)");
    assert!(
        grant_hits(&server) > hits,
        "the remembered grant was in use before the expiry"
    );
}
