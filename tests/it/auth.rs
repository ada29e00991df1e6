//! Wallet auth and NFT-gated streaming against a real chain (anvil) and real contracts
//! (OpenZeppelin 4.9.6 presets), with signatures from a real wallet (`cast wallet sign`).

use std::time::Duration;

use serde_json::{json, Value};
use streamgate_actors::clock::Clock;
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use crate::{
    chain::{dead_rpc_url, Anvil, ALICE, BOB, CAROL, CHAIN_ID},
    server::{make_clip, send_for_json, TestServer},
};

const READY_DEADLINE: Duration = Duration::from_secs(180);
/// The admin token of the gated-media end-to-end test, which reads the audit log with it.
const GATE_TEST_ADMIN_TOKEN: &str = "admin-token";

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap()
}

/// Replaces the line starting with `prefix` (the whole line) with `line`.
fn replace_line(message: &str, prefix: &str, line: &str) -> String {
    let mut found = false;
    let edited: Vec<String> = message
        .lines()
        .map(|l| {
            if l.starts_with(prefix) {
                found = true;
                line.to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(found, "no line starting with {prefix:?} in {message}");
    edited.join("\n")
}

fn without_line(message: &str, prefix: &str) -> String {
    message
        .lines()
        .filter(|l| !l.starts_with(prefix))
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) fn assert_refused(status: u16, body: &Value, expected_status: u16, expected_code: &str) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["code"], expected_code, "{body}");
}

/// Asserts `response` is a refusal with `status` and error `code`.
pub(crate) async fn refused_with(response: reqwest::Response, status: u16, code: &str) {
    let actual = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_refused(actual, &body, status, code);
}

pub(crate) async fn bearer_get(
    server: &TestServer,
    url: &str,
    token: Option<&str>,
) -> reqwest::Response {
    let mut request = server.client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn post_bearer(server: &TestServer, path: &str, token: &str) -> (u16, Value) {
    send_for_json(server.client.post(server.url(path)).bearer_auth(token)).await
}

/// `POST /api/v1/auth/nft/verify` with `session` as the bearer.
pub(crate) async fn nft_verify(server: &TestServer, session: &str, query: &Value) -> (u16, Value) {
    let request = server
        .client
        .post(server.url("/api/v1/auth/nft/verify"))
        .bearer_auth(session)
        .json(query);
    send_for_json(request).await
}

// ---------------------------------------------------------------------------------------------
// Login

#[tokio::test]
async fn login_verify_refresh_logout_and_revocation_survives_restart() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_path_buf();
    let (old_token, new_token) = {
        let server = TestServer::start_with(|c| c.storage.data_dir = dir.clone());
        let (status, login) = server.try_login(&ALICE, |m| m).await;
        assert_eq!(status, 200, "{login}");
        assert_eq!(login["address"], ALICE.address);
        let token = login["token"].as_str().unwrap().to_string();

        let (status, verified) = post_bearer(&server, "/api/v1/auth/verify", &token).await;
        assert_eq!(status, 200, "{verified}");
        assert_eq!(verified["valid"], true);
        assert_eq!(verified["address"], ALICE.address);

        let (status, refreshed) = post_bearer(&server, "/api/v1/auth/refresh", &token).await;
        assert_eq!(status, 200, "{refreshed}");
        let refreshed = refreshed["token"].as_str().unwrap().to_string();
        assert_ne!(refreshed, token);
        let (status, body) = post_bearer(&server, "/api/v1/auth/verify", &token).await;
        assert_refused(status, &body, 401, "session_revoked");

        let second = server.login(&ALICE).await;
        let (status, _) = post_bearer(&server, "/api/v1/auth/logout", &second).await;
        assert_eq!(status, 204);
        let (status, body) = post_bearer(&server, "/api/v1/auth/verify", &second).await;
        assert_refused(status, &body, 401, "session_revoked");

        let (status, body) = post_bearer(&server, "/api/v1/auth/verify", "sg1.forged.token").await;
        assert_refused(status, &body, 401, "session_invalid");

        let metrics = server.get("/metrics").await.text().await.unwrap();
        assert!(
            metrics.contains(r#"streamgate_auth_logins_total{outcome="ok"} 2"#),
            "{metrics}"
        );
        assert!(
            metrics.contains(r#"streamgate_auth_session_events_total{event="logout"} 1"#),
            "{metrics}"
        );
        (second, refreshed)
    };
    // Same data directory: the generated secret and the revocations are back.
    let server = TestServer::start_with(|c| c.storage.data_dir = dir.clone());
    let (status, body) = post_bearer(&server, "/api/v1/auth/verify", &old_token).await;
    assert_refused(status, &body, 401, "session_revoked");
    let (status, body) = post_bearer(&server, "/api/v1/auth/verify", &new_token).await;
    assert_eq!(status, 200, "{body}");
    drop(data);
}

/// ALICE's login with her signed challenge message changed by `edit` is refused: 401 `code`.
async fn assert_edited_login_refused(edit: impl FnOnce(String) -> String, code: &str) {
    let server = TestServer::start();
    let (status, body) = server.try_login(&ALICE, edit).await;
    assert_refused(status, &body, 401, code);
}

async fn post_login(server: &TestServer, message: &str, signature: &str) -> (u16, Value) {
    server
        .post_json(
            "/api/v1/auth/login",
            &json!({"message": message, "signature": signature}),
        )
        .await
}

#[tokio::test]
async fn login_with_a_wrong_domain_is_refused() {
    assert_edited_login_refused(
        |m| m.replacen("localhost:8080", "evil.example", 1),
        "domain_mismatch",
    )
    .await;
}

#[tokio::test]
async fn login_with_a_wrong_uri_is_refused() {
    assert_edited_login_refused(
        |m| replace_line(&m, "URI: ", "URI: https://evil.example/login"),
        "uri_mismatch",
    )
    .await;
}

#[tokio::test]
async fn login_on_a_chain_not_allowed_is_refused() {
    let server = TestServer::start();
    let (status, body) = server
        .try_login(&ALICE, |m| replace_line(&m, "Chain ID: ", "Chain ID: 1"))
        .await;
    assert_refused(status, &body, 401, "chain_not_allowed");
    let (status, body) = server
        .post_json(
            "/api/v1/auth/challenge",
            &json!({"address": ALICE.address, "chain_id": 1}),
        )
        .await;
    assert_refused(status, &body, 401, "chain_not_allowed");
}

#[tokio::test]
async fn login_with_an_unknown_nonce_is_refused() {
    assert_edited_login_refused(
        |m| replace_line(&m, "Nonce: ", "Nonce: notissuedbyus1234"),
        "nonce_unknown",
    )
    .await;
}

#[tokio::test]
async fn login_with_a_reused_nonce_is_refused() {
    let server = TestServer::start();
    let message = server.challenge(&ALICE).await;
    let signature = ALICE.sign(&message);
    let body = json!({"message": message, "signature": signature});
    let (status, first) = server.post_json("/api/v1/auth/login", &body).await;
    assert_eq!(status, 200, "{first}");
    let (status, second) = server.post_json("/api/v1/auth/login", &body).await;
    assert_refused(status, &second, 401, "nonce_used");
}

#[tokio::test]
async fn concurrent_logins_with_one_nonce_exactly_one_succeeds() {
    let server = TestServer::start();
    let message = server.challenge(&ALICE).await;
    let signature = ALICE.sign(&message);
    let body = json!({"message": message, "signature": signature});
    let attempts = (0..16).map(|_| server.post_json("/api/v1/auth/login", &body));
    let results = futures_util::future::join_all(attempts).await;
    let succeeded = results.iter().filter(|(status, _)| *status == 200).count();
    assert_eq!(succeeded, 1, "{results:?}");
    for (status, body) in results.iter().filter(|(status, _)| *status != 200) {
        assert_refused(*status, body, 401, "nonce_used");
    }
}

#[tokio::test]
async fn login_with_an_expired_nonce_is_refused() {
    let server = TestServer::start_with(|c| c.auth.nonce_ttl_s = 300);
    let (status, challenge) = server
        .post_json(
            "/api/v1/auth/challenge",
            &json!({"address": ALICE.address, "chain_id": CHAIN_ID}),
        )
        .await;
    assert_eq!(status, 200);
    let expires_at =
        OffsetDateTime::parse(challenge["expires_at"].as_str().unwrap(), &Rfc3339).unwrap();
    // The message itself carries no expiry, so only the nonce's expiry can refuse it.
    let message = without_line(challenge["message"].as_str().unwrap(), "Expiration Time: ");
    server.clock.advance(Duration::from_secs(301));
    assert!(server.clock.now_utc() > expires_at);
    let signature = ALICE.sign(&message);
    let (status, body) = post_login(&server, &message, &signature).await;
    assert_refused(status, &body, 401, "nonce_expired");
}

#[tokio::test]
async fn login_with_a_message_not_yet_valid_is_refused() {
    let later = rfc3339(OffsetDateTime::now_utc() + time::Duration::hours(1));
    assert_edited_login_refused(
        |m| format!("{m}\nNot Before: {later}"),
        "message_not_yet_valid",
    )
    .await;
}

#[tokio::test]
async fn login_with_an_expired_message_is_refused() {
    let earlier = rfc3339(OffsetDateTime::now_utc() - time::Duration::minutes(1));
    assert_edited_login_refused(
        |m| {
            replace_line(
                &m,
                "Expiration Time: ",
                &format!("Expiration Time: {earlier}"),
            )
        },
        "message_expired",
    )
    .await;
}

#[tokio::test]
async fn login_with_a_bad_signature_is_refused() {
    let server = TestServer::start();
    let message = server.challenge(&ALICE).await;
    let mut signature = ALICE.sign(&message);
    // Flip one nibble of r: still a well-formed signature, just not ALICE's.
    let flipped = if &signature[10..11] == "a" { "b" } else { "a" };
    signature.replace_range(10..11, flipped);
    let (status, body) = post_login(&server, &message, &signature).await;
    assert_refused(status, &body, 401, "signature_mismatch");
    let (status, body) = post_login(&server, &message, "0x1234").await;
    assert_refused(status, &body, 400, "invalid_signature");
}

#[tokio::test]
async fn login_signed_by_a_different_key_is_refused() {
    let server = TestServer::start();
    let message = server.challenge(&ALICE).await;
    let signature = BOB.sign(&message);
    let (status, body) = post_login(&server, &message, &signature).await;
    assert_refused(status, &body, 401, "signature_mismatch");
    // The refusal spent the nonce: replaying the text costs no second signature recovery, and
    // even the right signature now needs a fresh challenge.
    let (status, body) = post_login(&server, &message, &signature).await;
    assert_refused(status, &body, 401, "nonce_used");
    let (status, body) = post_login(&server, &message, &ALICE.sign(&message)).await;
    assert_refused(status, &body, 401, "nonce_used");
    let session = server.login(&ALICE).await;
    assert!(session.starts_with("sg1."));
}

// ---------------------------------------------------------------------------------------------
// Gated streaming

pub(crate) struct Playable {
    pub(crate) media_id: String,
}

pub(crate) async fn upload_ready(server: &TestServer, name: &str) -> Playable {
    let scratch = tempfile::tempdir().unwrap();
    let clip = std::fs::read(make_clip(scratch.path(), name, "320x240", 2)).unwrap();
    let (media_id, media) = server
        .upload_ready(clip, name, Some(name), READY_DEADLINE)
        .await;
    assert_eq!(media["owner"], ALICE.address);
    Playable { media_id }
}

pub(crate) async fn put_gate(
    server: &TestServer,
    media_id: &str,
    token: &str,
    gate: &Value,
) -> (u16, Value) {
    let response = server
        .client
        .put(server.url(&format!("/api/v1/media/{media_id}/gate")))
        .bearer_auth(token)
        .json(gate)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// `gated` of the only search result for `word`.
async fn searched_gated(server: &TestServer, word: &str) -> bool {
    let (status, page) = server.get_json(&format!("/api/v1/media?q={word}")).await;
    assert_eq!(status, 200, "{page}");
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{page}");
    items[0]["gated"].as_bool().unwrap()
}

/// Every URI line of a playlist.
pub(crate) fn uris(playlist: &str) -> Vec<String> {
    playlist
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn cache_control(response: &reqwest::Response) -> String {
    response.headers()["cache-control"]
        .to_str()
        .unwrap()
        .to_string()
}

/// Fetches master → first media playlist → first segment with the tokens the server put in.
pub(crate) async fn play(server: &TestServer, media_id: &str, session: &str) -> (String, String) {
    let base = server.url(&format!("/api/v1/media/{media_id}/hls/"));
    let response = bearer_get(server, &format!("{base}master.m3u8"), Some(session)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(cache_control(&response), "private, no-store");
    let master = response.text().await.unwrap();
    let variant = uris(&master)[0].clone();
    assert!(variant.contains("?token="), "{master}");
    let response = bearer_get(server, &format!("{base}{variant}"), None).await;
    assert_eq!(
        response.status(),
        200,
        "a player follows the URI without headers"
    );
    let media_playlist = response.text().await.unwrap();
    assert!(
        media_playlist.contains("#EXT-X-MAP:URI=\"") && media_playlist.contains(".mp4?token="),
        "the init segment carries the token too: {media_playlist}"
    );
    let rendition = variant.rsplit_once('/').unwrap().0;
    let segment = uris(&media_playlist)[0].clone();
    assert!(segment.contains("?token="), "{media_playlist}");
    let response = bearer_get(server, &format!("{base}{rendition}/{segment}"), None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(cache_control(&response), "private, no-store");
    assert!(!response.bytes().await.unwrap().is_empty());
    (format!("{base}{rendition}/"), segment)
}

/// A chain where BOB holds ERC-721 token 0 and 3 of ERC-1155 id 7 and CAROL 1 of id 7, a
/// server reading it, and two ready uploads of ALICE's, still ungated.
struct GateFixture {
    _chain: Anvil,
    server: TestServer,
    admin: reqwest::Client,
    alice: String,
    bob: String,
    carol: String,
    erc721: String,
    erc1155: String,
    first: Playable,
    second: Playable,
}

impl GateFixture {
    async fn start() -> Self {
        let chain = Anvil::start().await;
        let erc721 = chain.deploy_erc721(&ALICE);
        let erc1155 = chain.deploy_erc1155(&ALICE);
        chain.mint_erc721(&ALICE, &erc721, BOB.address); // token 0 → BOB
        chain.mint_erc1155(&ALICE, &erc1155, BOB.address, 7, 3);
        chain.mint_erc1155(&ALICE, &erc1155, CAROL.address, 7, 1);
        let rpc = chain.url.clone();
        let server = TestServer::start_with(move |c| {
            c.auth.admin_token = GATE_TEST_ADMIN_TOKEN.into();
            crate::chain::read_chain(c, rpc);
        });
        let alice = server.session().await.to_string();
        let bob = server.login(&BOB).await;
        let carol = server.login(&CAROL).await;
        let first = upload_ready(&server, "first.mp4").await;
        let second = upload_ready(&server, "second.mp4").await;
        // Searchable at once, for the pages that show `gated`.
        let search = server.actors.search.clone();
        tokio::task::spawn_blocking(move || search.commit())
            .await
            .unwrap()
            .unwrap();
        Self {
            _chain: chain,
            admin: crate::server::bearer_client(GATE_TEST_ADMIN_TOKEN),
            server,
            alice,
            bob,
            carol,
            erc721,
            erc1155,
            first,
            second,
        }
    }

    fn erc721_gate(&self) -> Value {
        json!({"chain_id": CHAIN_ID, "contract": self.erc721, "standard": "erc721", "min_balance": 1})
    }

    /// ALICE gates `first` by the ERC-721 and `second` by 2 of ERC-1155 id 7.
    async fn gate_both(&self) {
        let (status, body) = put_gate(
            &self.server,
            &self.first.media_id,
            &self.alice,
            &self.erc721_gate(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["gated"], true);
        let erc1155_gate = json!({"chain_id": CHAIN_ID, "contract": self.erc1155, "standard": "erc1155", "token_id": "7", "min_balance": 2});
        let (status, body) = put_gate(
            &self.server,
            &self.second.media_id,
            &self.alice,
            &erc1155_gate,
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }

    /// `/api/v1/media/{id}`, then `/{path}` unless `path` is empty.
    fn url(&self, media: &Playable, path: &str) -> String {
        let record = self
            .server
            .url(&format!("/api/v1/media/{}", media.media_id));
        if path.is_empty() {
            record
        } else {
            format!("{record}/{path}")
        }
    }

    /// The first segment URL of `first` while it is ungated: public and immutable.
    async fn public_segment(&self) -> String {
        let base = self.url(&self.first, "hls/");
        let master = bearer_get(&self.server, &format!("{base}master.m3u8"), None).await;
        assert_eq!(master.status(), 200);
        let variant = uris(&master.text().await.unwrap())[0].clone();
        let rendition = variant.split('/').next().unwrap().to_string();
        let media_playlist = bearer_get(&self.server, &format!("{base}{variant}"), None)
            .await
            .text()
            .await
            .unwrap();
        let segment = format!("{base}{rendition}/{}", uris(&media_playlist)[0]);
        let response = bearer_get(&self.server, &segment, None).await;
        assert_eq!(response.status(), 200);
        assert!(cache_control(&response).contains("immutable"));
        segment
    }

    async fn audited(&self, action: &str) -> usize {
        let path = format!("/api/v1/audit?action={action}&limit=500");
        let audit = crate::server::fetch_json(&self.admin, self.server.url(&path)).await;
        audit["items"].as_array().unwrap().len()
    }
}

#[tokio::test]
async fn anonymous_uploads_are_refused_and_ungated_media_is_public_and_cached_in_search() {
    let fx = GateFixture::start().await;
    let server = &fx.server;
    let (status, body) = server
        .upload_as(None, b"\x00\x00\x00\x20ftypisom".repeat(10), "a.mp4", None)
        .await;
    assert_refused(status, &body, 401, "session_required");
    fx.public_segment().await;

    // Search pages show `gated` and are cached: a gate change shows on the very next page.
    assert!(!searched_gated(server, "first").await);
    let hits = server.actors.caches.search.stats().hits;
    assert!(!searched_gated(server, "first").await);
    assert_eq!(server.actors.caches.search.stats().hits, hits + 1);
    fx.gate_both().await;
    assert!(searched_gated(server, "first").await);
}

#[tokio::test]
async fn only_the_owner_gates_edits_or_deletes_her_media() {
    let fx = GateFixture::start().await;
    let server = &fx.server;
    let gate = fx.erc721_gate();
    let (status, body) = put_gate(server, &fx.first.media_id, &fx.bob, &gate).await;
    assert_refused(status, &body, 403, "not_media_owner");
    let (status, body) = put_gate(server, &fx.first.media_id, "nonsense", &gate).await;
    assert_refused(status, &body, 401, "session_invalid");
    let bad_chain = json!({"chain_id": 5, "contract": fx.erc721, "standard": "erc721"});
    let (status, body) = put_gate(server, &fx.second.media_id, &fx.alice, &bad_chain).await;
    assert_refused(status, &body, 400, "chain_not_configured");
    fx.gate_both().await;
    let response = server
        .client
        .patch(fx.url(&fx.first, ""))
        .bearer_auth(&fx.bob)
        .json(&json!({"title": "mine now"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let response = server
        .client
        .delete(fx.url(&fx.first, ""))
        .bearer_auth(&fx.carol)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
}

#[tokio::test]
async fn gated_playlists_segments_and_thumbnails_refuse_anonymous_callers_and_non_holders() {
    let fx = GateFixture::start().await;
    let server = &fx.server;
    let public_segment = fx.public_segment().await;
    fx.gate_both().await;
    let master = fx.url(&fx.first, "hls/master.m3u8");
    assert_eq!(
        bearer_get(server, &public_segment, None).await.status(),
        401
    );
    assert_eq!(bearer_get(server, &master, None).await.status(), 401);
    // CAROL holds no ERC-721 and only 1 of the 2 ERC-1155 tokens needed.
    let response = bearer_get(server, &master, Some(&fx.carol)).await;
    refused_with(response, 403, "gate_not_passed").await;
    let second_master = fx.url(&fx.second, "hls/master.m3u8");
    let response = bearer_get(server, &second_master, Some(&fx.carol)).await;
    assert_eq!(response.status(), 403);

    // The thumbnail shares the gate.
    let thumbnail = fx.url(&fx.first, "thumbnail.jpg");
    let response = bearer_get(server, &thumbnail, None).await;
    refused_with(response, 401, "session_required").await;
    let response = bearer_get(server, &thumbnail, Some(&fx.carol)).await;
    assert_eq!(response.status(), 403);
    let response = bearer_get(server, &thumbnail, Some(&fx.bob)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(cache_control(&response), "private, no-store");
    assert_eq!(&response.bytes().await.unwrap()[..2], &[0xFF, 0xD8]);
}

#[tokio::test]
async fn dash_shares_the_gate_and_tokenises_every_segment_for_a_holder() {
    let fx = GateFixture::start().await;
    let server = &fx.server;
    fx.gate_both().await;
    let dash = fx.url(&fx.first, "dash/manifest.mpd");
    assert_eq!(bearer_get(server, &dash, None).await.status(), 401);
    assert_eq!(
        bearer_get(server, &dash, Some(&fx.carol)).await.status(),
        403
    );
    let response = bearer_get(server, &dash, Some(&fx.bob)).await;
    assert_eq!(response.status(), 200);
    assert!(cache_control(&response).contains("no-store"));
    let mpd = response.text().await.unwrap();
    let segment = mpd
        .split("media=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    assert!(segment.contains("?token="), "{mpd}");
    let dash_base = fx.url(&fx.first, "dash/");
    let response = bearer_get(server, &format!("{dash_base}{segment}"), None).await;
    assert_eq!(
        response.status(),
        200,
        "the tokenised DASH segment URL plays"
    );
    let untokenised = segment.split('?').next().unwrap();
    let response = bearer_get(server, &format!("{dash_base}{untokenised}"), None).await;
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn holders_and_the_owner_play_and_missing_forged_or_foreign_tokens_are_refused() {
    let fx = GateFixture::start().await;
    let server = &fx.server;
    fx.gate_both().await;
    // BOB holds both: he plays, with tokens in every URI.
    let (rendition_base, segment) = play(server, &fx.first.media_id, &fx.bob).await;
    let (_, second_segment) = play(server, &fx.second.media_id, &fx.bob).await;
    // The owner plays her own gated media without holding the token.
    play(server, &fx.first.media_id, &fx.alice).await;

    let bare = segment.split('?').next().unwrap();
    let token = segment.split("token=").nth(1).unwrap();
    let response = bearer_get(server, &format!("{rendition_base}{bare}"), None).await;
    refused_with(response, 401, "playback_token_required").await;
    let (expires, rest) = token.split_once('.').unwrap();
    let later: i64 = expires.parse::<i64>().unwrap() + 3600;
    let forged = format!("{rendition_base}{bare}?token={later}.{rest}");
    refused_with(
        bearer_get(server, &forged, None).await,
        403,
        "playback_token_invalid",
    )
    .await;
    let other_token = second_segment.split("token=").nth(1).unwrap();
    let foreign = format!("{rendition_base}{bare}?token={other_token}");
    let response = bearer_get(server, &foreign, None).await;
    assert_eq!(response.status(), 403, "a token for other media");

    // A stock player: ffprobe with only the session header, the rest from the rewritten URIs.
    let probe = ffprobe_with_session(&fx.url(&fx.first, "hls/master.m3u8"), &fx.bob);
    let streams = probe["streams"].as_array().unwrap();
    assert!(
        streams.iter().any(|s| s["codec_type"] == "video"),
        "{probe}"
    );
}

#[tokio::test]
async fn nft_verify_answers_from_the_chain_then_its_cache_and_checks_are_audited_and_counted() {
    let fx = GateFixture::start().await;
    let server = &fx.server;
    fx.gate_both().await;
    let master = fx.url(&fx.first, "hls/master.m3u8");
    let response = bearer_get(server, &master, Some(&fx.carol)).await;
    refused_with(response, 403, "gate_not_passed").await;
    play(server, &fx.first.media_id, &fx.bob).await;

    let query = json!({"address": BOB.address, "chain_id": CHAIN_ID, "contract": fx.erc721, "standard": "erc721", "token_id": 0});
    let (status, answer) = nft_verify(server, &fx.carol, &query).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["owns"], true);
    assert_eq!(answer["balance"], 1);
    let query = json!({"address": CAROL.address, "chain_id": CHAIN_ID, "contract": fx.erc1155, "standard": "erc1155", "token_id": "7"});
    let (_, answer) = nft_verify(server, &fx.carol, &query).await;
    assert_eq!(answer["balance"], 1, "{answer}");
    let audited_before = fx.audited("auth.nft_check").await;
    let (_, again) = nft_verify(server, &fx.carol, &query).await;
    assert_eq!(again["cached"], true, "{again}");
    assert_eq!(
        fx.audited("auth.nft_check").await,
        audited_before,
        "a cached answer is not audited again"
    );
    assert!(audited_before >= 4, "{audited_before} checks audited");
    let metrics = server.get("/metrics").await.text().await.unwrap();
    for expected in [
        r#"streamgate_nft_checks_total{outcome="ok",source="cache"}"#,
        r#"streamgate_nft_rpc_duration_seconds_count{method="erc721_balance_of"}"#,
        r#"streamgate_playback_refused_total{reason="gate_not_passed"}"#,
    ] {
        assert!(metrics.contains(expected), "{expected} missing:\n{metrics}");
    }
}

#[tokio::test]
async fn clearing_the_gate_makes_media_public_again_and_gate_changes_are_audited() {
    let fx = GateFixture::start().await;
    let server = &fx.server;
    let public_segment = fx.public_segment().await;
    fx.gate_both().await;
    let thumbnail = fx.url(&fx.first, "thumbnail.jpg");
    assert_eq!(bearer_get(server, &thumbnail, None).await.status(), 401);
    let response = server
        .client
        .delete(fx.url(&fx.first, "gate"))
        .bearer_auth(&fx.alice)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = bearer_get(server, &public_segment, None).await;
    assert_eq!(response.status(), 200);
    assert!(cache_control(&response).contains("immutable"));
    assert!(!searched_gated(server, "first").await);
    let response = bearer_get(server, &thumbnail, None).await;
    assert_eq!(response.status(), 200);
    assert!(cache_control(&response).contains("public"));

    assert_eq!(fx.audited("media.gate").await, 3);
    let metrics = server.get("/metrics").await.text().await.unwrap();
    for expected in [
        r#"streamgate_gate_changes_total{change="set"} 2"#,
        r#"streamgate_gate_changes_total{change="clear"} 1"#,
    ] {
        assert!(metrics.contains(expected), "{expected} missing:\n{metrics}");
    }
}

fn ffprobe_with_session(url: &str, session: &str) -> Value {
    let output = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-print_format", "json", "-show_streams"])
        .args(["-headers", &format!("Authorization: Bearer {session}\r\n")])
        .arg(url)
        .output()
        .expect("ffprobe is installed (apt-get install ffmpeg)");
    assert!(
        output.status.success(),
        "ffprobe {url}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test]
async fn a_transfer_revokes_access_after_the_cache_ttl_and_a_dead_rpc_fails_closed() {
    let mut chain = Anvil::start().await;
    let erc721 = chain.deploy_erc721(&ALICE);
    chain.mint_erc721(&ALICE, &erc721, BOB.address); // token 0
    let rpc = chain.url.clone();
    let server = TestServer::start_with(move |c| {
        // Long enough that nothing expires on a slow machine before the clock is moved.
        c.auth.nft_cache_ttl_ms = 600_000;
        c.auth.playback_token_ttl_s = 600;
        crate::chain::read_chain(c, rpc);
    });
    let alice = server.session().await.to_string();
    let bob = server.login(&BOB).await;
    let carol = server.login(&CAROL).await;
    let media = upload_ready(&server, "gated.mp4").await;
    let gate =
        json!({"chain_id": CHAIN_ID, "contract": erc721, "standard": "erc721", "token_id": "0"});
    let (status, body) = put_gate(&server, &media.media_id, &alice, &gate).await;
    assert_eq!(status, 200, "{body}");
    let master = server.url(&format!("/api/v1/media/{}/hls/master.m3u8", media.media_id));
    let (rendition_base, segment) = play(&server, &media.media_id, &bob).await;

    let segment_url = format!("{rendition_base}{segment}");
    let ten_minutes = Duration::from_secs(601);

    // Segment tokens are short-lived: served until their TTL, refused after it.
    assert_eq!(bearer_get(&server, &segment_url, None).await.status(), 200);
    server.clock.advance(ten_minutes);
    refused_with(
        bearer_get(&server, &segment_url, None).await,
        401,
        "playback_token_expired",
    )
    .await;

    // BOB gives the token to CAROL: the cached answer still lets him in until it expires.
    // (The last move of the clock expired the cache; this GET caches the answer anew.)
    assert_eq!(bearer_get(&server, &master, Some(&bob)).await.status(), 200);
    chain.transfer_erc721(&BOB, &erc721, CAROL.address, 0);
    assert_eq!(
        bearer_get(&server, &master, Some(&bob)).await.status(),
        200,
        "the cached answer holds until its TTL"
    );
    server.clock.advance(ten_minutes);
    assert_eq!(bearer_get(&server, &master, Some(&bob)).await.status(), 403);
    play(&server, &media.media_id, &carol).await;

    // The node goes away: ownership cannot be checked, and that is not "does not own".
    chain.kill();
    assert_eq!(
        bearer_get(&server, &master, Some(&carol)).await.status(),
        200,
        "only the cached answer may still pass"
    );
    server.clock.advance(ten_minutes);
    refused_with(
        bearer_get(&server, &master, Some(&carol)).await,
        503,
        "rpc_unavailable",
    )
    .await;
    let query = json!({"address": CAROL.address, "chain_id": CHAIN_ID, "contract": erc721, "standard": "erc721"});
    let (status, body) = nft_verify(&server, &carol, &query).await;
    assert_refused(status, &body, 503, "rpc_unavailable");
}

#[tokio::test]
async fn an_rpc_node_that_never_answered_fails_closed() {
    let dead = dead_rpc_url();
    let server = TestServer::start_with(move |c| {
        c.auth.rpc = vec![streamgate_actors::config::ChainRpc {
            chain_id: CHAIN_ID,
            url: dead,
        }];
    });
    let query = json!({"address": BOB.address, "chain_id": CHAIN_ID, "contract": ALICE.address, "standard": "erc721"});
    let session = server.session().await.to_string();
    let (status, body) = nft_verify(&server, &session, &query).await;
    assert_refused(status, &body, 503, "rpc_unavailable");
    assert!(
        !body["message"].as_str().unwrap().contains("127.0.0.1"),
        "{body}"
    );
}
