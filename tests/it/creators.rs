//! What creators set on their media: visibility (public, unlisted, private) and a gate given
//! with the upload, checked for every kind of caller on every surface.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::{
    auth::{bearer_get, play, uris},
    chain::{Anvil, ALICE, BOB, CAROL, CHAIN_ID},
    harness::poll,
    server::{make_clip, send_for_json, TestServer},
};

const READY: Duration = Duration::from_secs(180);
const ADMIN: &str = "creators-admin-token";

/// A 2 s clip's bytes.
fn clip(name: &str) -> Vec<u8> {
    let scratch = tempfile::tempdir().unwrap();
    std::fs::read(make_clip(scratch.path(), name, "320x240", 2)).unwrap()
}

/// One-shot upload as ALICE with extra form fields.
async fn upload_with(server: &TestServer, name: &str, fields: &[(&str, String)]) -> (u16, Value) {
    let part = reqwest::multipart::Part::bytes(clip(name)).file_name(name.to_string());
    let mut form = reqwest::multipart::Form::new()
        .part("file", part)
        .text("title", name.to_string());
    for (key, value) in fields {
        form = form.text(key.to_string(), value.clone());
    }
    let session = server.session().await.to_string();
    let response = server
        .client
        .post(server.url("/api/v1/upload"))
        .bearer_auth(session)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Uploads and waits (as ALICE, who may see private media) until it is ready.
async fn ready_upload(server: &TestServer, name: &str, fields: &[(&str, String)]) -> String {
    let (status, receipt) = upload_with(server, name, fields).await;
    assert_eq!(status, 201, "{receipt}");
    let media_id = receipt["media_id"].as_str().unwrap().to_string();
    let alice = server.session().await.to_string();
    let path = format!("/api/v1/media/{media_id}");
    poll(READY, "the upload to be ready", async || {
        let (status, media) = server.get_json_as(&alice, &path).await;
        assert_eq!(status, 200, "{media}");
        match media["state"].as_str() {
            Some("ready") => Ok(()),
            Some("processing") => Err(media.to_string()),
            _ => panic!("not ready: {media}"),
        }
    })
    .await;
    media_id
}

async fn status_of(server: &TestServer, path: &str, token: Option<&str>) -> u16 {
    bearer_get(server, &server.url(path), token)
        .await
        .status()
        .as_u16()
}

fn cache_control(response: &reqwest::Response) -> String {
    response.headers()["cache-control"]
        .to_str()
        .unwrap()
        .to_string()
}

/// Ids on the list page (or search page) at `path`, as `token` sees it.
async fn listed(server: &TestServer, path: &str, token: Option<&str>) -> Vec<String> {
    let response = bearer_get(server, &server.url(path), token).await;
    assert_eq!(response.status(), 200);
    let page: Value = response.json().await.unwrap();
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_string())
        .collect()
}

async fn patch_media(
    server: &TestServer,
    media_id: &str,
    token: &str,
    body: Value,
) -> (u16, Value) {
    let request = server
        .client
        .patch(server.url(&format!("/api/v1/media/{media_id}")))
        .bearer_auth(token)
        .json(&body);
    send_for_json(request).await
}

/// The first segment URL of a media's first variant, following the playlists as `token` gets
/// them (absolute URL, with whatever token and version the server put in).
async fn first_segment(server: &TestServer, media_id: &str, token: Option<&str>) -> String {
    let base = server.url(&format!("/api/v1/media/{media_id}/hls/"));
    let master = bearer_get(server, &format!("{base}master.m3u8"), token).await;
    assert_eq!(master.status(), 200);
    let variant = uris(&master.text().await.unwrap())[0].clone();
    let directory = variant
        .split('?')
        .next()
        .unwrap()
        .rsplit_once('/')
        .unwrap()
        .0;
    let playlist = bearer_get(server, &format!("{base}{variant}"), None)
        .await
        .text()
        .await
        .unwrap();
    format!("{base}{directory}/{}", uris(&playlist)[0])
}

#[tokio::test]
async fn each_visibility_answers_anonymous_callers_other_wallets_the_owner_and_the_admin() {
    let server = TestServer::start_with(|c| c.auth.admin_token = ADMIN.into());
    let alice = server.session().await.to_string();
    let bob = server.login(&BOB).await;
    let public = ready_upload(&server, "public.mp4", &[]).await;
    let unlisted = ready_upload(
        &server,
        "unlisted.mp4",
        &[("visibility", "unlisted".into())],
    )
    .await;
    let private = ready_upload(&server, "private.mp4", &[("visibility", "private".into())]).await;
    let (_, record) = server.get_json(&format!("/api/v1/media/{public}")).await;
    assert_eq!(record["visibility"], "public", "the server default");

    // List and search show public media only, whoever asks.
    let everyone = [None, Some(bob.as_str()), Some(alice.as_str()), Some(ADMIN)];
    poll(READY, "the public upload to be listed", async || {
        listed(&server, "/api/v1/media?limit=100", None)
            .await
            .contains(&public)
    })
    .await;
    for token in everyone {
        for path in [
            "/api/v1/media?limit=100",
            "/api/v1/media?q=mp4&limit=100",
            &format!("/api/v1/media?owner={}&limit=100", ALICE.address),
        ] {
            let ids = listed(&server, path, token).await;
            assert!(ids.contains(&public), "{path}: {ids:?}");
            assert!(!ids.contains(&unlisted), "{path}: {ids:?}");
            assert!(!ids.contains(&private), "{path}: {ids:?}");
        }
    }

    // Public and unlisted media play for everyone; only shared caches differ.
    for media_id in [&public, &unlisted] {
        for token in everyone {
            let record = format!("/api/v1/media/{media_id}");
            assert_eq!(status_of(&server, &record, token).await, 200);
            for file in ["hls/master.m3u8", "dash/manifest.mpd", "thumbnail.jpg"] {
                let path = format!("/api/v1/media/{media_id}/{file}");
                assert_eq!(status_of(&server, &path, token).await, 200, "{path}");
            }
        }
        let segment = first_segment(&server, media_id, None).await;
        let response = bearer_get(&server, &segment, None).await;
        assert_eq!(response.status(), 200);
        let cache = cache_control(&response);
        if *media_id == public {
            assert!(
                cache.starts_with("public") && cache.contains("immutable"),
                "{cache}"
            );
        } else {
            assert!(cache.starts_with("private"), "unlisted: {cache}");
        }
    }

    // Private media: owner and admin see and play it; for anyone else it does not exist,
    // with the very answers a missing media item gets.
    let missing = "01938a6e-0000-7000-8000-000000000000";
    let surfaces = [
        "",
        "/hls/master.m3u8",
        "/hls/180p/index.m3u8",
        "/hls/180p/seg_00000.m4s",
        "/hls/180p/init_0.mp4",
        "/dash/manifest.mpd",
        "/thumbnail.jpg",
        "/gate",
    ];
    for suffix in surfaces {
        let (hidden_path, missing_path) = (
            format!("/api/v1/media/{private}{suffix}"),
            format!("/api/v1/media/{missing}{suffix}"),
        );
        for token in [None, Some(bob.as_str()), Some("sg1.forged")] {
            let hidden = bearer_get(&server, &server.url(&hidden_path), token).await;
            let absent = bearer_get(&server, &server.url(&missing_path), token).await;
            assert_eq!(hidden.status(), 404, "{hidden_path} as {token:?}");
            assert_eq!(absent.status(), 404, "{missing_path} as {token:?}");
            let hidden: Value = hidden.json().await.unwrap();
            let absent: Value = absent.json().await.unwrap();
            assert_eq!(hidden["code"], absent["code"], "{hidden_path}");
            assert_eq!(
                hidden["message"].as_str().unwrap().replace(&private, "ID"),
                absent["message"].as_str().unwrap().replace(missing, "ID"),
            );
        }
    }
    for token in [alice.as_str(), ADMIN] {
        for file in ["", "/dash/manifest.mpd", "/thumbnail.jpg"] {
            let path = format!("/api/v1/media/{private}{file}");
            assert_eq!(status_of(&server, &path, Some(token)).await, 200, "{path}");
        }
        let segment = first_segment(&server, &private, Some(token)).await;
        assert!(segment.contains("?token="), "{segment}");
        let response = bearer_get(&server, &segment, None).await;
        assert_eq!(response.status(), 200, "{segment}");
        assert_eq!(cache_control(&response), "private, no-store");
        // The same URL without its token, even with another wallet's session, is not found.
        let bare = segment.split('?').next().unwrap();
        assert_eq!(bearer_get(&server, bare, Some(&bob)).await.status(), 404);
    }
    // BOB cannot change, gate or delete it either, and learns nothing.
    let (status, _) = patch_media(&server, &private, &bob, json!({"title": "mine"})).await;
    assert_eq!(status, 404);
    for method in [reqwest::Method::PUT, reqwest::Method::DELETE] {
        let url = server.url(&format!("/api/v1/media/{private}/gate"));
        let response = server
            .client
            .request(method.clone(), url)
            .bearer_auth(&bob)
            .json(&Value::Null)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{method} gate");
    }
    let url = server.url(&format!("/api/v1/media/{private}"));
    let response = server
        .client
        .delete(url)
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn visibility_changes_apply_at_once_in_every_cache_and_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_path_buf();
    let (media_id, public_segment) = {
        let server = TestServer::start_with(|c| c.storage.data_dir = dir.clone());
        let alice = server.session().await.to_string();
        let media_id = ready_upload(&server, "turns.mp4", &[]).await;
        let record = format!("/api/v1/media/{media_id}");
        let master = format!("{record}/hls/master.m3u8");
        // Warm every cache: the record, the playlists, a list page and a segment.
        let public_segment = first_segment(&server, &media_id, None).await;
        assert_eq!(
            bearer_get(&server, &public_segment, None).await.status(),
            200
        );
        poll(READY, "the upload to be listed", async || {
            listed(&server, "/api/v1/media", None)
                .await
                .contains(&media_id)
        })
        .await;

        let (status, body) =
            patch_media(&server, &media_id, &alice, json!({"visibility": "private"})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["visibility"], "private");
        // At once, without waiting for any cache to expire.
        assert_eq!(status_of(&server, &record, None).await, 404);
        assert_eq!(status_of(&server, &master, None).await, 404);
        assert_eq!(
            bearer_get(&server, &public_segment, None).await.status(),
            404
        );
        assert!(!listed(&server, "/api/v1/media", None)
            .await
            .contains(&media_id));
        assert!(!listed(&server, "/api/v1/media?q=turns", None)
            .await
            .contains(&media_id));
        // The owner plays it under URLs no public cache ever saw.
        let private_segment = first_segment(&server, &media_id, Some(&alice)).await;
        let path = |url: &str| url.split('?').next().unwrap().to_string();
        assert_ne!(path(&private_segment), path(&public_segment));
        assert_eq!(
            bearer_get(&server, &private_segment, None).await.status(),
            200
        );
        let (status, body) = patch_media(
            &server,
            &media_id,
            &alice,
            json!({"visibility": "nonsense"}),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        (media_id, public_segment)
    };

    // A restart keeps it private, down to the segments.
    let server = TestServer::start_with(|c| c.storage.data_dir = dir.clone());
    let alice = server.session().await.to_string();
    let record = format!("/api/v1/media/{media_id}");
    assert_eq!(status_of(&server, &record, None).await, 404);
    let segment =
        public_segment.replace(public_segment.split("/api/").next().unwrap(), &server.base);
    assert_eq!(bearer_get(&server, &segment, None).await.status(), 404);
    assert!(!listed(&server, "/api/v1/media", None)
        .await
        .contains(&media_id));

    let (status, body) =
        patch_media(&server, &media_id, &alice, json!({"visibility": "public"})).await;
    assert_eq!(status, 200, "{body}");
    assert!(listed(&server, "/api/v1/media", None)
        .await
        .contains(&media_id));
    assert_eq!(status_of(&server, &record, None).await, 200);
    assert_eq!(bearer_get(&server, &segment, None).await.status(), 200);
    drop(server);
    drop(data);
}

#[tokio::test]
async fn a_gated_upload_is_never_reachable_without_the_gate_from_the_moment_of_its_201() {
    let chain = Anvil::start().await;
    let pass = chain.deploy_erc721(&ALICE);
    chain.mint_erc721(&ALICE, &pass, BOB.address);
    let rpc = chain.url.clone();
    let server = TestServer::start_with(move |c| {
        crate::chain::read_chain(c, rpc);
        // Polled flat out from the 201: a 429 would hide what the poll is looking for.
        c.rate_limit.enabled = false;
    });
    let carol = server.login(&CAROL).await;
    let gate = json!({"chain_id": CHAIN_ID, "contract": pass, "standard": "erc721"});

    // A gate `PUT …/gate` would refuse is refused with the upload, which keeps nothing.
    let bad = json!({"chain_id": CHAIN_ID, "contract": "0x12", "standard": "erc721"});
    let (status, body) = upload_with(&server, "bad.mp4", &[("gate", bad.to_string())]).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_address")),
        "{body}"
    );
    let (status, body) = upload_with(&server, "bad.mp4", &[("gate", "{".into())]).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_gate")),
        "{body}"
    );
    assert!(listed(&server, "/api/v1/media", None).await.is_empty());

    let (status, receipt) = upload_with(&server, "gated.mp4", &[("gate", gate.to_string())]).await;
    assert_eq!(status, 201, "{receipt}");
    let media_id = receipt["media_id"].as_str().unwrap().to_string();
    let record = format!("/api/v1/media/{media_id}");
    let mut polls = 0;
    poll(READY, "the gated upload to be ready", async || {
        polls += 1;
        let (status, media) = server.get_json(&record).await;
        assert_eq!(status, 200, "{media}");
        assert_eq!(media["gated"], true, "gated from the first read: {media}");
        for file in [
            "hls/master.m3u8",
            "hls/180p/index.m3u8",
            "hls/180p/init_0.mp4",
            "hls/180p/seg_00000.m4s",
            "dash/manifest.mpd",
            "thumbnail.jpg",
        ] {
            let status = status_of(&server, &format!("{record}/{file}"), None).await;
            assert_ne!(status, 200, "{file} reachable without the gate");
            let status = status_of(&server, &format!("{record}/{file}"), Some(&carol)).await;
            assert_ne!(status, 200, "{file} reachable by a non-holder");
        }
        if media["state"] == "ready" {
            Ok(())
        } else {
            Err(media.to_string())
        }
    })
    .await;
    assert!(polls > 1, "polled while it was processing");
    let (_, gate_state) = server.get_json(&format!("{record}/gate")).await;
    assert_eq!(
        gate_state["gate"]["contract"]
            .as_str()
            .unwrap()
            .to_lowercase(),
        pass.to_lowercase()
    );

    // A holder plays it, under versioned URLs that no shared cache may keep.
    let bob = server.login(&BOB).await;
    let (rendition_base, segment) = play(&server, &media_id, &bob).await;
    assert!(rendition_base.contains("/hls/v"), "{rendition_base}");
    let response = bearer_get(&server, &format!("{rendition_base}{segment}"), None).await;
    assert_eq!(cache_control(&response), "private, no-store");

    // The same through tus: `gate` and `visibility` in Upload-Metadata.
    use base64::Engine;
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let video = clip("tus.mp4");
    let alice = server.session().await.to_string();
    let response = server
        .client
        .request(Method::POST, server.url("/api/v1/uploads"))
        .bearer_auth(&alice)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", video.len().to_string())
        .header(
            "Upload-Metadata",
            format!(
                "filename {},gate {},visibility {}",
                b64("tus.mp4"),
                b64(&gate.to_string()),
                b64("unlisted")
            ),
        )
        .header("Content-Type", "application/offset+octet-stream")
        .body(video)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let (status, upload) = server.get_json_as(&alice, &location).await;
    assert_eq!(status, 200, "{upload}");
    let tus_media = upload["media_id"].as_str().unwrap();
    let (_, media) = server.get_json(&format!("/api/v1/media/{tus_media}")).await;
    assert_eq!(media["gated"], true, "{media}");
    assert_eq!(media["visibility"], "unlisted", "{media}");
    let master = format!("/api/v1/media/{tus_media}/hls/master.m3u8");
    assert_ne!(status_of(&server, &master, None).await, 200);
    // A gate tus metadata carries is validated like any other.
    let response = server
        .client
        .request(Method::POST, server.url("/api/v1/uploads"))
        .bearer_auth(&alice)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", "1000")
        .header(
            "Upload-Metadata",
            format!("gate {}", b64("{\"chain_id\": 1}")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    drop(chain);
}

const VTT: &str = "WEBVTT\n\n00:00.000 --> 00:01.500\nHello from the captions\n";

async fn put_caption(
    server: &TestServer,
    media_id: &str,
    lang: &str,
    token: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let request = server
        .client
        .put(server.url(&format!("/api/v1/media/{media_id}/captions/{lang}")))
        .bearer_auth(token)
        .header("content-type", "text/vtt")
        .body(body);
    send_for_json(request).await
}

#[tokio::test]
async fn captions_are_validated_play_in_hls_and_dash_and_follow_visibility() {
    let server = TestServer::start_with(|c| c.auth.admin_token = ADMIN.into());
    let alice = server.session().await.to_string();
    let bob = server.login(&BOB).await;
    let media_id = ready_upload(&server, "captioned.mp4", &[]).await;
    let media = format!("/api/v1/media/{media_id}");

    // Refused: not WebVTT, not a language tag, too large, not UTF-8, not the owner.
    let refusals = [
        (
            "en",
            b"1\n00:00:00,000 --> 00:00:01,000\nsrt\n".to_vec(),
            alice.as_str(),
            400,
            "invalid_caption",
        ),
        (
            "english_US",
            VTT.as_bytes().to_vec(),
            alice.as_str(),
            400,
            "invalid_caption",
        ),
        (
            "en",
            [VTT.as_bytes(), &vec![b'a'; 600 * 1024]].concat(),
            alice.as_str(),
            413,
            "caption_too_large",
        ),
        (
            "en",
            b"WEBVTT\n\xff\xfe\n".to_vec(),
            alice.as_str(),
            400,
            "invalid_caption",
        ),
        (
            "en",
            VTT.as_bytes().to_vec(),
            bob.as_str(),
            403,
            "not_media_owner",
        ),
    ];
    for (lang, body, token, status, code) in refusals {
        let (got, body) = put_caption(&server, &media_id, lang, token, body).await;
        assert_eq!(
            (got, body["code"].as_str()),
            (status, Some(code)),
            "{lang}: {body}"
        );
    }
    let (status, body) =
        put_caption(&server, &media_id, "en", &alice, VTT.as_bytes().to_vec()).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = put_caption(
        &server,
        &media_id,
        "fr",
        ADMIN,
        VTT.replace("Hello", "Bonjour").into_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["captions"], json!(["en", "fr"]));

    let response = bearer_get(&server, &server.url(&format!("{media}/captions/en")), None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/vtt");
    assert_eq!(response.text().await.unwrap(), VTT);

    // HLS: a SUBTITLES group every variant names, which ffmpeg reads as WebVTT streams.
    let master = bearer_get(
        &server,
        &server.url(&format!("{media}/hls/master.m3u8")),
        None,
    )
    .await
    .text()
    .await
    .unwrap();
    assert!(
        master.contains("TYPE=SUBTITLES") && master.contains("LANGUAGE=\"fr\""),
        "{master}"
    );
    let variants = master
        .lines()
        .filter(|l| l.starts_with("#EXT-X-STREAM-INF"))
        .count();
    assert_eq!(
        master.matches("SUBTITLES=\"subs\"").count(),
        variants,
        "{master}"
    );
    // ffmpeg reads HLS subtitle renditions only when told experimental features are fine.
    let output = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-strict",
            "experimental",
            "-print_format",
            "json",
        ])
        .args([
            "-show_streams",
            &server.url(&format!("{media}/hls/master.m3u8")),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let probe: Value = serde_json::from_slice(&output.stdout).unwrap();
    let subtitles: Vec<&Value> = probe["streams"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["codec_type"] == "subtitle")
        .collect();
    assert_eq!(subtitles.len(), 2, "{probe}");
    assert!(
        subtitles.iter().all(|s| s["codec_name"] == "webvtt"),
        "{probe}"
    );
    // DASH: a text AdaptationSet per track.
    let mpd = bearer_get(
        &server,
        &server.url(&format!("{media}/dash/manifest.mpd")),
        None,
    )
    .await
    .text()
    .await
    .unwrap();
    assert!(mpd.contains("mimeType=\"text/vtt\" lang=\"en\""), "{mpd}");

    // Private: the captions are hidden like the rest; the owner's URLs carry her token.
    let (status, _) =
        patch_media(&server, &media_id, &alice, json!({"visibility": "private"})).await;
    assert_eq!(status, 200);
    for path in [
        "captions/en",
        "captions/en/index.m3u8",
        "captions/en/captions.vtt",
    ] {
        let url = server.url(&format!("{media}/{path}"));
        assert_eq!(
            bearer_get(&server, &url, None).await.status(),
            404,
            "{path}"
        );
        assert_eq!(
            bearer_get(&server, &url, Some(&bob)).await.status(),
            404,
            "{path}"
        );
    }
    let master = bearer_get(
        &server,
        &server.url(&format!("{media}/hls/master.m3u8")),
        Some(&alice),
    )
    .await
    .text()
    .await
    .unwrap();
    let uri = master
        .split("URI=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    assert!(uri.contains("/captions/en/index.m3u8?token="), "{master}");
    let playlist = bearer_get(&server, &server.url(&uri), None)
        .await
        .text()
        .await
        .unwrap();
    let file = uris(&playlist)[0].clone();
    let response = bearer_get(&server, &server.url(&file), None).await;
    assert_eq!(response.status(), 200, "{playlist}");
    assert_eq!(cache_control(&response), "private, no-store");
    assert_eq!(response.text().await.unwrap(), VTT);

    // Deleting a track takes it out of the record and the playlists.
    let response = server
        .client
        .delete(server.url(&format!("{media}/captions/fr")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, body) = server
        .get_json_as(&alice, &format!("{media}/captions/fr"))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("caption_not_found"))
    );
    let (_, record) = server.get_json_as(&alice, &media).await;
    assert_eq!(record["captions"], json!(["en"]));
}
