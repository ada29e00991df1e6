//! Hostile uploads, as an attacker would craft them: files that make ffmpeg read other files
//! (a DASH manifest behind an `ftyp`, an HLS playlist or concat script behind a container
//! signature, a QuickTime file with external data references), sources over the transcoder's
//! limits, and one wallet trying to fill the queue. Each is refused at upload with a 4xx, or its
//! job fails with a stable code; no frame of another file is ever published, and no client
//! sees a server path or ffmpeg's output.

use std::{path::Path, process::Command, time::Duration};

use serde_json::{json, Value};
use streamgate_actors::config::Rung;

use crate::{
    chain::BOB,
    server::{bearer_client, make_clip, TestServer},
};

const ADMIN: &str = "hostile-admin";
const DEADLINE: Duration = Duration::from_secs(120);

fn start(tweak: impl FnOnce(&mut streamgate::Config)) -> TestServer {
    TestServer::start_with(|config| {
        config.auth.admin_token = ADMIN.into();
        config.transcode.ladder = vec![Rung {
            name: "180p".into(),
            height: 180,
            video_bitrate_kbps: 250,
        }];
        config.transcode.segment_seconds = 1;
        tweak(config);
    })
}

/// A ready victim media; returns its id.
async fn victim(server: &TestServer) -> String {
    let scratch = tempfile::tempdir().unwrap();
    let clip = std::fs::read(make_clip(scratch.path(), "v.mp4", "320x240", 2)).unwrap();
    let (media_id, _) = server
        .upload_ready(clip, "victim.mp4", None, DEADLINE)
        .await;
    media_id
}

/// Where the victim's one rung is published on the local blob store.
fn rung_dir(server: &TestServer, media_id: &str) -> std::path::PathBuf {
    server
        .data_dir
        .join("blobs/media")
        .join(media_id)
        .join("hls/180p")
}

/// Uploads `bytes` as BOB; a 201's media must end `failed` with one of `codes`, and nothing of
/// it may be published. Returns the failed media record, or `None` when the upload itself was
/// refused.
async fn refused(server: &TestServer, bytes: Vec<u8>, codes: &[&str]) -> Option<Value> {
    let bob = server.login(&BOB).await;
    let (status, receipt) = server
        .upload_as(Some(&bob), bytes, "attack.mp4", None)
        .await;
    if status != 201 {
        assert!((400..500).contains(&status), "{status} {receipt}");
        assert_eq!(receipt["code"], "unsupported_container", "{receipt}");
        return None;
    }
    let media_id = receipt["media_id"].as_str().unwrap().to_string();
    let media = server
        .wait_for_media(&media_id, DEADLINE, |m| m["state"] != "processing")
        .await;
    assert_eq!(media["state"], "failed", "{media}");
    let code = media["failure_code"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(codes.contains(&code.as_str()), "{media}");
    assert!(
        server.blob_files(&format!("media/{media_id}")).is_empty(),
        "a hostile upload published output"
    );
    assert_no_leak(server, &media["failure"]);
    // Its job says the same, to its owner.
    let (_, page) = server
        .get_json_as(&bob, &format!("/api/v1/jobs?media_id={media_id}"))
        .await;
    let job = &page["items"][0];
    assert_eq!(job["state"], "failed", "{page}");
    assert_eq!(job["error_code"], code.as_str(), "{page}");
    assert_no_leak(server, &job["last_error"]);
    Some(media)
}

fn assert_no_leak(server: &TestServer, text: &Value) {
    let text = text.as_str().unwrap_or_default();
    assert!(!text.is_empty());
    let data_dir = server.data_dir.display().to_string();
    for leak in [data_dir.as_str(), "/", "ffprobe", "ffmpeg", "Invalid data"] {
        assert!(
            !text.contains(leak),
            "client-visible error leaks {leak:?}: {text}"
        );
    }
}

/// The DASH manifest that made ffmpeg decode another media's segments: `head` first, then an
/// MPD whose segment list names the victim's init and first segment through `base`.
fn dash_manifest(head: &[u8], base: &str) -> Vec<u8> {
    let mut file = head.to_vec();
    file.extend_from_slice(
        format!(
            "\n<MPD xmlns=\"urn:mpeg:dash:schema:mpd:2011\" type=\"static\" \
             mediaPresentationDuration=\"PT2S\" minBufferTime=\"PT1S\" \
             profiles=\"urn:mpeg:dash:profile:isoff-on-demand:2011\"><Period>\
             <AdaptationSet mimeType=\"video/mp4\"><Representation id=\"v\" bandwidth=\"1\" \
             width=\"320\" height=\"180\" codecs=\"avc1.64000d\">\
             <SegmentList duration=\"1\" timescale=\"1\">\
             <Initialization sourceURL=\"{base}/init.mp4\"/>\
             <SegmentURL media=\"{base}/seg_00000.m4s\"/>\
             <SegmentURL media=\"{base}/seg_00001.m4s\"/>\
             </SegmentList></Representation></AdaptationSet></Period></MPD>\n"
        )
        .as_bytes(),
    );
    file
}

/// A real `ftyp` box (brand isom) and a `free` box that pushes what follows past the bytes the
/// upload sniffs, so the file reaches ffprobe.
fn mp4_signature() -> Vec<u8> {
    let mut head = vec![0, 0, 0, 0x14];
    head.extend_from_slice(b"ftypisom\0\0\x02\0isom");
    head.extend_from_slice(&[0, 0, 1, 0]);
    head.extend_from_slice(b"free");
    head.extend(std::iter::repeat_n(b' ', 256 - 8));
    head
}

#[tokio::test]
async fn dash_manifests_cannot_pull_in_another_media() {
    let server = start(|_| {});
    let victim = victim(&server).await;
    let victim_dir = rung_dir(&server, &victim);
    assert!(victim_dir.join("init.mp4").exists());
    let relative = format!("../../media/{victim}/hls/180p");
    let absolute = victim_dir.display().to_string();

    // The original attack: a comment that puts `ftyp` at byte 4. Refused at upload now.
    for base in [&relative, &absolute] {
        let file = dash_manifest(b"<!--ftypjp2 x-->", base);
        assert!(refused(&server, file, &[]).await.is_none());
    }
    // Behind a real box, the manifest reaches the job, which ffprobe pins to the container.
    for base in [&relative, &absolute] {
        let file = dash_manifest(&mp4_signature(), base);
        refused(&server, file, &["undecodable", "format_mismatch"])
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn playlists_and_concat_scripts_behind_a_container_signature_fail() {
    let server = start(|_| {});
    let victim = victim(&server).await;
    let segment = rung_dir(&server, &victim).join("seg_00000.m4s");
    let hls = format!(
        "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:1\n#EXT-X-MAP:URI=\"{}\"\n\
         #EXTINF:1.0,\n{}\n#EXT-X-ENDLIST\n",
        segment.with_file_name("init.mp4").display(),
        segment.display()
    );
    let concat = format!("ffconcat version 1.0\nfile '{}'\n", segment.display());
    // At the front, the first bytes give them away.
    for text in [&hls, &concat] {
        let mut file = vec![0x1A, 0x45, 0xDF, 0xA3, b'\n'];
        file.extend_from_slice(text.as_bytes());
        assert!(refused(&server, file, &[]).await.is_none());
    }
    // Past the sniffed bytes, they reach ffprobe, which reads them with the mp4 demuxer only.
    for text in [&hls, &concat] {
        let mut file = mp4_signature();
        file.extend_from_slice(text.as_bytes());
        refused(&server, file, &["undecodable", "format_mismatch"])
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_mov_with_external_data_references_fails_with_its_own_code() {
    let server = start(|_| {});
    let scratch = tempfile::tempdir().unwrap();
    // The victim: a QuickTime file elsewhere on the server's disk.
    let victim = scratch.path().join("victim.mov");
    let status = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25",
        ])
        .args([
            "-t",
            "2",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-f",
            "mov",
        ])
        .arg(&victim)
        .status()
        .unwrap();
    assert!(status.success());
    let evil = with_external_reference(&std::fs::read(&victim).unwrap(), &victim);
    // Sanity: ffmpeg with data references on reads the victim's frames through it.
    let evil_path = scratch.path().join("evil.mov");
    std::fs::write(&evil_path, &evil).unwrap();
    assert_eq!(
        first_frame_hash(&evil_path, &["-enable_drefs", "1"]),
        first_frame_hash(&victim, &[]),
        "the crafted file must really point at the victim"
    );
    refused(&server, evil, &["external_reference"]).await;
}

/// The MD5 of the first decoded frame, through `options` given to the input.
fn first_frame_hash(file: &Path, options: &[&str]) -> Option<String> {
    let output = Command::new("ffmpeg")
        .args(["-v", "error"])
        .args(options)
        .arg("-i")
        .arg(file)
        .args(["-frames:v", "1", "-f", "framemd5", "-"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .rfind(|line| !line.starts_with('#'))
        .and_then(|line| line.rsplit(',').next())
        .map(|hash| hash.trim().to_string())
}

/// `mov` with its `dref` replaced by a Mac alias record naming `target`, and its sample data
/// zeroed: every frame it has lives in `target` (the file, found next to it).
fn with_external_reference(mov: &[u8], target: &Path) -> Vec<u8> {
    fn find(data: &[u8], start: usize, end: usize, path: &mut Vec<(usize, usize)>) -> bool {
        let mut at = start;
        while at + 8 <= end {
            let size = u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize;
            let kind = &data[at + 4..at + 8];
            path.push((at, size));
            if kind == b"dref" {
                return true;
            }
            if [&b"moov"[..], b"trak", b"mdia", b"minf", b"dinf"].contains(&kind)
                && find(data, at + 8, at + size, path)
            {
                return true;
            }
            path.pop();
            at += size;
        }
        false
    }
    let mut path = Vec::new();
    assert!(find(mov, 0, mov.len(), &mut path), "no dref box");
    let (dref_at, dref_size) = *path.last().unwrap();
    let full = target.display().to_string().into_bytes();
    let name = target.file_name().unwrap().to_string_lossy().into_owned();
    let mut alias = vec![0u8; 10 + 1 + 27 + 12];
    alias.push(name.len() as u8);
    let mut padded = name.into_bytes();
    padded.resize(63, 0);
    alias.extend_from_slice(&padded);
    alias.extend_from_slice(&[0; 16]);
    alias.extend_from_slice(&[0, 1, 0, 1]); // one level up from the alias, one down to the target
    alias.extend_from_slice(&[0; 16]);
    alias.extend_from_slice(&2u16.to_be_bytes()); // an absolute path record
    alias.extend_from_slice(&(full.len() as u16).to_be_bytes());
    alias.extend_from_slice(&full);
    if full.len() % 2 == 1 {
        alias.push(0);
    }
    alias.extend_from_slice(&[0xFF, 0xFF, 0, 0]);
    let mut entry = ((12 + alias.len()) as u32).to_be_bytes().to_vec();
    entry.extend_from_slice(b"alis\0\0\0\0");
    entry.extend_from_slice(&alias);
    let mut dref = ((16 + entry.len()) as u32).to_be_bytes().to_vec();
    dref.extend_from_slice(b"dref\0\0\0\0\0\0\0\x01");
    dref.extend_from_slice(&entry);
    let grow = dref.len() as i64 - dref_size as i64;
    let mut out = mov[..dref_at].to_vec();
    out.extend_from_slice(&dref);
    out.extend_from_slice(&mov[dref_at + dref_size..]);
    for (at, size) in &path[..path.len() - 1] {
        let grown = (*size as i64 + grow) as u32;
        out[*at..*at + 4].copy_from_slice(&grown.to_be_bytes());
    }
    // The sample data goes: only the reference can supply frames now.
    let mut at = 0;
    while at + 8 <= out.len() {
        let size = u32::from_be_bytes(out[at..at + 4].try_into().unwrap()) as usize;
        if &out[at + 4..at + 8] == b"mdat" {
            out[at + 8..at + size].fill(0);
        }
        at += size.max(8);
    }
    out
}

/// A clip made with `args` after the lavfi inputs.
fn clip(dir: &Path, name: &str, video: &str, seconds: u32, audio: bool) -> Vec<u8> {
    let path = dir.join(name);
    let mut command = Command::new("ffmpeg");
    command.args(["-v", "error", "-y", "-f", "lavfi", "-i", video]);
    if audio {
        command.args(["-f", "lavfi", "-i", "sine=frequency=440"]);
    }
    let status = command
        .args([
            "-t",
            &seconds.to_string(),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
        ])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(path).unwrap()
}

#[tokio::test]
async fn disguised_sources_and_sources_over_a_limit_fail_with_their_code() {
    let server = start(|config| {
        config.transcode.max_duration_s = 3.0;
        config.transcode.max_frame_pixels = 320 * 240;
        config.transcode.max_streams = 1;
        config.transcode.max_frame_rate = 30.0;
    });
    let dir = tempfile::tempdir().unwrap();
    let small = "testsrc2=size=160x120:rate=25";
    let cases = [
        (
            clip(dir.path(), "long.mp4", small, 4, false),
            "video_too_long",
        ),
        (
            clip(
                dir.path(),
                "big.mp4",
                "testsrc2=size=640x480:rate=25",
                1,
                false,
            ),
            "resolution_too_large",
        ),
        (
            clip(dir.path(), "av.mp4", small, 1, true),
            "too_many_streams",
        ),
        (
            clip(
                dir.path(),
                "fast.mp4",
                "testsrc2=size=160x120:rate=60",
                1,
                false,
            ),
            "frame_rate_too_high",
        ),
    ];
    for (bytes, code) in cases {
        refused(&server, bytes, &[code]).await.unwrap();
    }
    // Matroska's signature in front of an MPEG-TS stream: ffprobe finds MPEG-TS.
    let ts = dir.path().join("t.ts");
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", small, "-t", "1"])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-f", "mpegts"])
        .arg(&ts)
        .status()
        .unwrap();
    assert!(status.success());
    let mut disguised = vec![0x1A, 0x45, 0xDF, 0xA3];
    disguised.extend(std::fs::read(&ts).unwrap());
    refused(&server, disguised, &["format_mismatch"])
        .await
        .unwrap();
    // Within every limit, a clip still plays.
    let (status, receipt) = server
        .upload(clip(dir.path(), "ok.mp4", small, 1, false), "ok.mp4", None)
        .await;
    assert_eq!(status, 201, "{receipt}");
    let media = server
        .wait_for_media(receipt["media_id"].as_str().unwrap(), DEADLINE, |m| {
            m["state"] != "processing"
        })
        .await;
    assert_eq!(media["state"], "ready", "{media}");
}

#[tokio::test]
async fn ffprobe_runs_under_its_deadline() {
    // No time at all: the deadline, not the file, ends the probe.
    let server = start(|config| config.transcode.probe_timeout_s = 0);
    let dir = tempfile::tempdir().unwrap();
    let bytes = clip(
        dir.path(),
        "c.mp4",
        "testsrc2=size=160x120:rate=25",
        1,
        false,
    );
    refused(&server, bytes, &["probe_timeout"]).await.unwrap();
}

#[tokio::test]
async fn one_wallet_cannot_fill_the_queue_and_jobs_are_private() {
    let server = start(|config| config.transcode.max_active_jobs_per_owner = 1);
    let alice_media = victim(&server).await;
    let admin = bearer_client(ADMIN);
    // An admin's job for Alice's media, far in the future: Alice now has one active job.
    let run_at = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let response = admin
        .post(server.url("/api/v1/jobs"))
        .json(&json!({
            "kind": "thumbnail",
            "media_id": alice_media,
            "run_at": run_at.format(&time::format_description::well_known::Rfc3339).unwrap(),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let scheduled: Value = response.json().await.unwrap();
    let (_, before) = server.get_json("/api/v1/media?limit=100").await;
    let dir = tempfile::tempdir().unwrap();
    let bytes = clip(
        dir.path(),
        "c.mp4",
        "testsrc2=size=160x120:rate=25",
        1,
        false,
    );
    let (status, error) = server.upload(bytes.clone(), "c.mp4", None).await;
    assert_eq!(status, 429, "{error}");
    assert_eq!(error["code"], "too_many_active_jobs", "{error}");
    // The refused upload left no record and no source behind.
    let (_, after) = server.get_json("/api/v1/media?limit=100").await;
    let ids = |page: &Value| {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&before), ids(&after));
    assert!(
        server.blob_files("uploads").len() == 1,
        "only the victim's source stays"
    );
    // A resumable upload is refused before it sends a byte.
    let alice = server.session().await.to_string();
    let response = server
        .client
        .post(server.url("/api/v1/uploads"))
        .bearer_auth(&alice)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", "1000")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["code"], "too_many_active_jobs", "{error}");
    // Another wallet is not held up.
    let bob = server.login(&BOB).await;
    let (status, receipt) = server.upload_as(Some(&bob), bytes, "b.mp4", None).await;
    assert_eq!(status, 201, "{receipt}");

    // The jobs API: the admin and the owner see a job; anyone else gets 404 or nothing.
    let job = format!("/api/v1/jobs/{}", scheduled["id"].as_str().unwrap());
    assert_eq!(server.get_json_as(&alice, &job).await.0, 200);
    assert_eq!(server.get_json_as(ADMIN, &job).await.0, 200);
    let (status, error) = server.get_json_as(&bob, &job).await;
    assert_eq!((status, &error["code"]), (404, &json!("job_not_found")));
    let (status, _) = server.get_json(&job).await;
    assert_eq!(status, 401);
    let (status, _) = server.get_json("/api/v1/jobs").await;
    assert_eq!(status, 401);
    let (status, page) = server.get_json_as(&bob, "/api/v1/jobs?limit=100").await;
    assert_eq!(status, 200);
    let items = page["items"].as_array().unwrap();
    assert!(!items.is_empty() && items.iter().all(|j| j["media_id"] == receipt["media_id"]));
}

#[tokio::test]
async fn on_s3_the_job_reads_a_private_download_and_no_url() {
    let moto = crate::s3::Moto::start().await;
    let server = start(|config| moto.configure(config));
    let victim = victim(&server).await;
    let prefix = format!("media/{victim}/hls/180p");
    assert!(moto
        .keys(&prefix)
        .await
        .iter()
        .any(|k| k.ends_with("init.mp4")));
    // The bucket answers plain GETs here, so the manifest names the victim's objects by URL,
    // and by the path a download next to the source would climb to.
    let by_url = format!("{}/{}/{prefix}", moto.endpoint, crate::s3::BUCKET);
    for base in [by_url.as_str(), &format!("../../{prefix}")] {
        let file = dash_manifest(&mp4_signature(), base);
        let media = refused(&server, file, &["undecodable", "format_mismatch"])
            .await
            .unwrap();
        let id = media["id"].as_str().unwrap();
        assert!(moto.keys(&format!("media/{id}")).await.is_empty());
    }
}
