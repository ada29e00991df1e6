//! Shared by the benches (`delivery.rs`, `load.rs`, `transcode.rs`, `upload.rs`): the HLS data
//! set on disk, test inputs (a clip, an incompressible upload source), nginx and a bare
//! actix-web server as same-run baselines, and `wrk` with its output parsed.
//!
//! Each bench binary compiles its own copy and uses a different subset, hence the allow.
#![allow(dead_code)]

use std::{
    io::Write,
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use actix_web::{web, App, HttpResponse, HttpServer};
use streamgate_actors::model::{Media, MediaId, MediaState, Rendition, UploadId};
use time::OffsetDateTime;

/// A 6 s segment at ~2.8 Mbit/s, the 720p rung's size.
pub const SEGMENT_BYTES: usize = 2 * 1024 * 1024;
/// A 6 s segment at ~0.7 Mbit/s, the 360p rung's size.
pub const SEGMENT_BYTES_360P: usize = 512 * 1024;
/// Segments written per media item and rung by [`write_hls`].
pub const SEGMENTS: usize = 4;

/// A ready media record of the shape the transcoder leaves behind (720p and 360p renditions).
pub fn media(title: String, tags: Vec<String>, owner: &str, state: MediaState) -> Media {
    let now = OffsetDateTime::now_utc();
    Media {
        id: MediaId::new(),
        title,
        description: "A benchmark record with a few words of description.".into(),
        tags,
        owner: Some(owner.into()),
        visibility: Default::default(),
        visibility_epoch: 0,
        captions: Vec::new(),
        state,
        failure: None,
        failure_code: None,
        container: None,
        upload_id: UploadId::new(),
        filename: None,
        size: SEGMENT_BYTES as u64,
        sha256: String::new(),
        source_key: String::new(),
        duration_s: Some(24.0),
        width: Some(1280),
        height: Some(720),
        video_codec: Some("h264".into()),
        renditions: vec![
            Rendition {
                name: "720p".into(),
                width: 1280,
                height: 720,
                video_bitrate_kbps: 2800,
            },
            Rendition {
                name: "360p".into(),
                width: 640,
                height: 360,
                video_bitrate_kbps: 600,
            },
        ],
        playable_at: None,
        created_at: now,
        updated_at: now,
    }
}

/// Writes the HLS files of `media_id` where the transcoder would put them under `data_dir`
/// (master; 720p and 360p playlists of [`SEGMENTS`] segments each, of [`SEGMENT_BYTES`] and
/// [`SEGMENT_BYTES_360P`] incompressible bytes) and returns the `hls` directory, which nginx can
/// serve as its root.
pub fn write_hls(data_dir: &Path, media_id: &MediaId) -> std::path::PathBuf {
    let hls = data_dir.join(format!("blobs/media/{media_id}/hls"));
    for (rung, bytes) in [("720p", SEGMENT_BYTES), ("360p", SEGMENT_BYTES_360P)] {
        std::fs::create_dir_all(hls.join(rung)).unwrap();
        let mut segment = vec![0u8; bytes];
        for (n, byte) in segment.iter_mut().enumerate() {
            *byte = (n.wrapping_mul(2_654_435_761) >> 13) as u8;
        }
        let mut playlist = String::from(
            "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:6\n#EXT-X-MAP:URI=\"init.mp4\"\n",
        );
        for n in 0..SEGMENTS {
            std::fs::write(hls.join(format!("{rung}/seg_{n:03}.m4s")), &segment).unwrap();
            playlist.push_str(&format!("#EXTINF:6.000,\nseg_{n:03}.m4s\n"));
        }
        playlist.push_str("#EXT-X-ENDLIST\n");
        std::fs::write(hls.join(format!("{rung}/index.m3u8")), &playlist).unwrap();
    }
    std::fs::write(
        hls.join("master.m3u8"),
        "#EXTM3U\n#EXT-X-VERSION:7\n\
         #EXT-X-STREAM-INF:BANDWIDTH=2928000,RESOLUTION=1280x720,CODECS=\"avc1.64001f,mp4a.40.2\"\n720p/index.m3u8\n\
         #EXT-X-STREAM-INF:BANDWIDTH=728000,RESOLUTION=640x360,CODECS=\"avc1.64001e,mp4a.40.2\"\n360p/index.m3u8\n",
    )
    .unwrap();
    hls
}

/// A bare actix-web server (one worker, no middleware) answering `/` with `body`.
pub fn start_bare(
    body: Vec<u8>,
    content_type: &'static str,
) -> (String, actix_web::dev::ServerHandle) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let body = web::Bytes::from(body);
            let server = HttpServer::new(move || {
                let body = body.clone();
                App::new().route(
                    "/",
                    web::get().to(move || {
                        let body = body.clone();
                        async move {
                            HttpResponse::Ok()
                                .insert_header(("content-type", content_type))
                                .body(body)
                        }
                    }),
                )
            })
            .workers(1)
            .listen(listener)
            .unwrap()
            .run();
            tx.send(server.handle()).unwrap();
            server.await.unwrap();
        })
    });
    (format!("http://{address}/"), rx.recv().unwrap())
}

/// A running nginx; killed on drop.
pub struct Nginx(Child);

impl Nginx {
    /// The master process; its workers are its children.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers too (SIGKILL would leave them serving).
        let stopped = Command::new("kill")
            .arg(self.0.id().to_string())
            .status()
            .is_ok_and(|status| status.success());
        if !stopped {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// nginx (one worker, sendfile, no access log) serving `root` on a free port.
pub fn start_nginx(root: &Path, scratch: &Path) -> (String, Nginx) {
    start_nginx_with(root, scratch, "1", 1024)
}

/// [`start_nginx`] with `workers` (`worker_processes`: a number or `auto`) and
/// `connections` per worker.
pub fn start_nginx_with(
    root: &Path,
    scratch: &Path,
    workers: &str,
    connections: usize,
) -> (String, Nginx) {
    let port = free_port();
    let conf = scratch.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "user root;\nworker_processes {workers};\nworker_rlimit_nofile {files};\n\
             pid {scratch}/nginx.pid;\nerror_log {scratch}/error.log;\n\
             events {{ worker_connections {connections}; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 1000000;\n\
               types {{ video/iso.segment m4s; video/mp4 mp4; application/vnd.apple.mpegurl m3u8; }}\n\
               client_body_temp_path {scratch}; proxy_temp_path {scratch}; fastcgi_temp_path {scratch};\n\
               uwsgi_temp_path {scratch}; scgi_temp_path {scratch};\n\
               server {{ listen 127.0.0.1:{port}; root {root}; etag on; }}\n}}\n",
            scratch = scratch.display(),
            root = root.display(),
            files = connections * 2,
        ),
    )
    .unwrap();
    let child = Command::new("nginx")
        .args(["-e", &format!("{}/error.log", scratch.display()), "-p"])
        .arg(scratch)
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("nginx is installed (apt-get install nginx-light)");
    let nginx = Nginx(child);
    wait_for_port(port, "nginx");
    (format!("http://127.0.0.1:{port}"), nginx)
}

/// A port that was free a moment ago (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on `port` (a child process starting up).
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One wrk run, parsed.
#[derive(Debug, Clone, Default)]
pub struct Load {
    pub requests_per_s: f64,
    pub megabytes_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Non-2xx/3xx responses plus socket errors (connect, read, write, timeout).
    pub errors: u64,
}

/// What wrk should send besides a plain GET of the URL.
#[derive(Debug, Clone, Copy, Default)]
pub struct WrkOptions<'a> {
    /// A Lua script (`-s`), e.g. from [`paths_script`].
    pub script: Option<&'a Path>,
    /// Extra headers (`-H "Name: value"`).
    pub headers: &'a [String],
}

/// Runs wrk (2 threads, `--latency`) against `url` and parses its report.
pub fn wrk(url: &str, connections: u32, seconds: u32, options: WrkOptions<'_>) -> Load {
    let mut command = Command::new("wrk");
    command.args([
        "-t2",
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--timeout",
        "10s",
        "--latency",
    ]);
    for header in options.headers {
        command.args(["-H", header]);
    }
    if let Some(script) = options.script {
        command.arg("-s").arg(script);
    }
    let output = command
        .arg(url)
        .output()
        .expect("wrk is installed (apt-get install wrk)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    parse_wrk(&text)
}

/// Parses wrk's `--latency` report.
pub fn parse_wrk(text: &str) -> Load {
    let field = |prefix: &str| {
        text.lines()
            .find_map(|line| line.trim().strip_prefix(prefix))
            .map(|value| value.trim().to_string())
            .unwrap_or_else(|| panic!("no {prefix} in wrk output: {text}"))
    };
    let latency =
        |prefix: &str| with_unit(&field(prefix), &[("us", 1e-3), ("ms", 1.0), ("s", 1e3)]);
    let non_2xx: u64 = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .map(|n| n.trim().parse().unwrap())
        .unwrap_or(0);
    // "Socket errors: connect 0, read 0, write 0, timeout 0"
    let socket: u64 = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("Socket errors:"))
        .map(|rest| {
            rest.split(',')
                .map(|part| {
                    part.split_whitespace()
                        .last()
                        .unwrap()
                        .parse::<u64>()
                        .unwrap()
                })
                .sum()
        })
        .unwrap_or(0);
    Load {
        requests_per_s: field("Requests/sec:").parse().unwrap(),
        megabytes_per_s: with_unit(
            &field("Transfer/sec:"),
            &[("GB", 1e3), ("MB", 1.0), ("KB", 1e-3), ("B", 1e-6)],
        ),
        p50_ms: latency("50%"),
        p99_ms: latency("99%"),
        errors: non_2xx + socket,
    }
}

/// "12.5MB" with units [("MB", 1.0), …] → 12.5 in the base unit.
pub fn with_unit(text: &str, units: &[(&str, f64)]) -> f64 {
    for (unit, factor) in units {
        if let Some(number) = text.strip_suffix(unit) {
            if let Ok(value) = number.trim().parse::<f64>() {
                return value * factor;
            }
        }
    }
    panic!("cannot read {text:?}")
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The medians of several runs; errors add up.
pub fn summarise(loads: &[Load]) -> Load {
    Load {
        requests_per_s: median(loads.iter().map(|l| l.requests_per_s).collect()),
        megabytes_per_s: median(loads.iter().map(|l| l.megabytes_per_s).collect()),
        p50_ms: median(loads.iter().map(|l| l.p50_ms).collect()),
        p99_ms: median(loads.iter().map(|l| l.p99_ms).collect()),
        errors: loads.iter().map(|l| l.errors).sum(),
    }
}

/// Each side's runs of a [`paired_rounds`] comparison and each round's ours ÷ baseline req/s.
#[derive(Default)]
pub struct Rounds {
    pub ours: Vec<Load>,
    pub baseline: Vec<Load>,
    pub ratios: Vec<f64>,
}

impl Rounds {
    /// The medians of each side and the median of the rounds' own ratios: the two runs of a
    /// round meet the same machine, so when its load drifts during the comparison (other
    /// tenants of the host) the rounds' ratios move less than the ratio of the two medians.
    pub fn summary(self) -> (Load, Load, f64) {
        (
            summarise(&self.ours),
            summarise(&self.baseline),
            median(self.ratios),
        )
    }

    /// Adds `more`'s runs to these (one comparison measured on several sets of servers).
    pub fn extend(&mut self, more: Rounds) {
        self.ours.extend(more.ours);
        self.baseline.extend(more.baseline);
        self.ratios.extend(more.ratios);
    }
}

/// Ratios as the bench prints them: three decimals, space-separated.
pub fn show_ratios(ratios: &[f64]) -> String {
    ratios
        .iter()
        .map(|ratio| format!("{ratio:.3}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A 1 s warm-up of each, then `rounds` runs of `seconds` alternating which goes first, so
/// neither side always meets the warmer (or busier) machine. Per-round ratios are printed.
pub fn paired_rounds(
    ours: (&str, WrkOptions<'_>),
    baseline: (&str, WrkOptions<'_>),
    connections: u32,
    rounds: usize,
    seconds: u32,
) -> Rounds {
    wrk(ours.0, connections, 1, ours.1);
    wrk(baseline.0, connections, 1, baseline.1);
    let mut runs: (Vec<Load>, Vec<Load>) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 0 {
            runs.0.push(wrk(ours.0, connections, seconds, ours.1));
            runs.1
                .push(wrk(baseline.0, connections, seconds, baseline.1));
        } else {
            runs.1
                .push(wrk(baseline.0, connections, seconds, baseline.1));
            runs.0.push(wrk(ours.0, connections, seconds, ours.1));
        }
    }
    let ratios: Vec<f64> = runs
        .0
        .iter()
        .zip(&runs.1)
        .map(|(ours, baseline)| ours.requests_per_s / baseline.requests_per_s)
        .collect();
    eprintln!(
        "  {} vs {}: per-round ratios {}",
        ours.0,
        baseline.0,
        show_ratios(&ratios)
    );
    Rounds {
        ours: runs.0,
        baseline: runs.1,
        ratios,
    }
}

/// A wrk Lua script that cycles through `requests` (path, extra headers): weight a path by
/// listing it several times. Each wrk thread starts at a different offset.
pub fn paths_script(path: &Path, requests: &[(String, Vec<(String, String)>)]) {
    let quote = |text: &str| format!("{text:?}");
    let mut lua = String::from("local requests = {\n");
    for (target, headers) in requests {
        let headers: Vec<String> = headers
            .iter()
            .map(|(name, value)| format!("[{}] = {}", quote(name), quote(value)))
            .collect();
        lua.push_str(&format!(
            "  {{ path = {}, headers = {{ {} }} }},\n",
            quote(target),
            headers.join(", ")
        ));
    }
    lua.push_str(
        "}\ncounter = 0\nlocal threads = 0\n\
         function setup(thread)\n  thread:set(\"counter\", threads * 7919)\n  threads = threads + 1\nend\n\
         function request()\n  counter = counter + 1\n  local r = requests[(counter % #requests) + 1]\n  \
         return wrk.format(\"GET\", r.path, r.headers)\nend\n",
    );
    std::fs::write(path, lua).unwrap();
}

/// A 1280x720 H.264/AAC test clip.
pub fn make_clip(path: &Path, seconds: u64) {
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=1280x720:rate=30")
        .args(["-f", "lavfi", "-i", "sine=frequency=440", "-t"])
        .arg(seconds.to_string())
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-c:a",
            "aac",
            "-shortest",
        ])
        .arg(path)
        .status()
        .expect("ffmpeg is installed (apt-get install ffmpeg)");
    assert!(status.success());
}

/// An MP4 header (so the sniffer accepts it) and pseudo-random bytes (so nothing compresses).
pub fn write_source(path: &Path, size: usize) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let header = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2";
    file.write_all(header).unwrap();
    let mut written = header.len();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1024 * 1024];
    while written < size {
        for word in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let take = block.len().min(size - written);
        file.write_all(&block[..take]).unwrap();
        written += take;
    }
    file.flush().unwrap();
}

/// What a transcode worker runs for an mp4 `input` into `out`: its probe, then the ffmpeg
/// arguments of the one-decode ladder and of the thumbnail (the bare baseline of the benches).
pub fn worker_commands(
    config: &streamgate_actors::config::TranscodeConfig,
    input: &Path,
    out: &Path,
) -> (streamgate_actors::model::Probe, Vec<Vec<String>>) {
    use streamgate_actors::transcode::ffmpeg;
    let container = streamgate_actors::sniff::Container::Mp4;
    let probe = ffmpeg::probe(
        &config.ffprobe_path,
        input,
        container,
        &ffmpeg::SourceLimits::from(config),
        std::time::Duration::from_secs(config.probe_timeout_s),
        &ffmpeg::KillSwitch::default(),
    )
    .unwrap();
    let rungs = ffmpeg::plan_ladder(&config.ladder, &[], probe.height);
    let demuxer = container.demuxer();
    let ladder = ffmpeg::hls_arguments(config, demuxer, input, out, &probe, &rungs);
    let thumbnail = ffmpeg::thumbnail_arguments(demuxer, input, &out.join("thumbnail.jpg"), &probe);
    (probe, vec![ladder, thumbnail])
}

/// GET `url` with a bearer `token` and parse the JSON answer (the benches poll the jobs API,
/// which needs the owner's session or the admin token).
pub async fn get_json_as(
    client: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    token: &str,
) -> serde_json::Value {
    client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// POST `bytes` to `{base}/api/v1/upload` as the multipart file `file_name`, with a bearer `token`.
pub async fn post_upload(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    bytes: Vec<u8>,
    file_name: &str,
) -> reqwest::Response {
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(bytes).file_name(file_name.to_string()),
    );
    client
        .post(format!("{base}/api/v1/upload"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .unwrap()
}

/// The id of the first job listed for `media_id` (an upload's own transcode job).
pub async fn media_job_id(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    media_id: &str,
) -> String {
    let jobs = get_json_as(
        client,
        format!("{base}/api/v1/jobs?media_id={media_id}"),
        token,
    )
    .await;
    jobs["items"][0]["id"].as_str().unwrap().to_string()
}

/// Polls the job at `url` until it succeeds; panics when it fails, is cancelled or takes 600 s.
pub async fn job_succeeded(client: &reqwest::Client, url: &str, token: &str) -> serde_json::Value {
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        ticks.tick().await;
        let job = get_json_as(client, url, token).await;
        match job["state"].as_str() {
            Some("succeeded") => return job,
            Some("failed" | "cancelled") => panic!("job ended badly: {job}"),
            _ => assert!(Instant::now() < deadline, "job too slow: {job}"),
        }
    }
}

/// Uploads the clip at `clip` (under its own file name) and waits for the transcode job it
/// queues to succeed; returns the media id.
pub async fn upload_transcoded(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    clip: &Path,
) -> String {
    let file_name = clip.file_name().unwrap().to_string_lossy();
    let bytes = std::fs::read(clip).unwrap();
    let receipt: serde_json::Value = post_upload(client, base, token, bytes, &file_name)
        .await
        .json()
        .await
        .unwrap();
    let media_id = receipt["media_id"].as_str().unwrap().to_string();
    let job_id = media_job_id(client, base, token, &media_id).await;
    job_succeeded(client, &format!("{base}/api/v1/jobs/{job_id}"), token).await;
    media_id
}
