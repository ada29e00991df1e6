//! Several nodes: `Cluster` runs one fresh Postgres database, one moto S3, two real `streamgate`
//! processes (each its own data directory and port, records in Postgres, blobs in S3, one
//! shared session secret) and nginx round-robin in front of them, with no sticky sessions.
//!
//! Every response through the proxy carries `x-upstream` (the node's `host:port`), so a test
//! can tell which node answered.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::{json, Value};
use streamgate_actors::store::test_postgres;

use crate::{
    chain::{Wallet, CHAIN_ID},
    harness::{free_port, poll, ChildProcess},
    s3::{Moto, BUCKET},
    server::{fetch_text, playlist_files, playlist_seconds, send_for_json},
};

/// Admin bearer token of every node.
pub const ADMIN_TOKEN: &str = "cluster-admin-token";
/// One session secret for all nodes: a session minted by one node is valid on the other.
const SESSION_SECRET: &str = "cluster-session-secret-0123456789abcdef";

/// One `streamgate` process of the cluster.
pub struct Node {
    /// `http://127.0.0.1:{port}`, straight to this node.
    pub base: String,
    port: u16,
    config_file: PathBuf,
    settings: Vec<String>,
    process: Option<ChildProcess>,
}

impl Node {
    /// The process id while it runs (to find its ffmpeg children).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildProcess::pid)
    }

    /// `host:port` as nginx names this node in `x-upstream`.
    pub fn upstream(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_streamgate"));
        command.arg("--config").arg(&self.config_file);
        for setting in &self.settings {
            command.args(["--set", setting]);
        }
        self.process = Some(ChildProcess::spawn(
            &mut command,
            "cargo builds it with the tests",
        ));
    }
}

pub struct Cluster {
    /// `http://127.0.0.1:{port}` of nginx.
    pub proxy_base: String,
    /// The nodes' shared database (for tests that inspect or drop it).
    #[allow(dead_code)]
    pub postgres_url: String,
    pub moto: Moto,
    /// A client with no credentials; `bearer_client` makes authenticated ones.
    pub client: reqwest::Client,
    nodes: Vec<Node>,
    _nginx: ChildProcess,
    scratch: tempfile::TempDir,
}

impl Cluster {
    /// Two nodes with the test defaults: one transcode worker each, ultrafast preset, a
    /// two-rung ladder (240p, 180p) of 1 s segments, 3 s job leases.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Two nodes, each also given `settings` as `--set key=value` overrides.
    pub async fn start_with(settings: &[&str]) -> Self {
        let scratch = tempfile::tempdir().unwrap();
        let postgres_url = test_postgres::fresh_database().unwrap();
        let moto = Moto::start().await;
        let settings: Vec<String> = settings.iter().map(|s| s.to_string()).collect();
        let mut nodes = Vec::new();
        for index in 0..2 {
            let port = free_port();
            let dir = scratch.path().join(format!("node{index}"));
            std::fs::create_dir_all(&dir).unwrap();
            let config_file = dir.join("streamgate.toml");
            std::fs::write(
                &config_file,
                node_config(&dir.join("data"), port, &postgres_url, &moto),
            )
            .unwrap();
            nodes.push(Node {
                base: format!("http://127.0.0.1:{port}"),
                port,
                config_file,
                settings: settings.clone(),
                process: None,
            });
        }
        let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        let (nginx, proxy_base) = start_nginx(&scratch.path().join("nginx"), &ports).await;
        let mut cluster = Self {
            proxy_base,
            postgres_url,
            moto,
            client: crate::server::client_builder().build().unwrap(),
            nodes,
            _nginx: nginx,
            scratch,
        };
        // One after the other: the second finds the schema migrated (either order works).
        for index in 0..cluster.nodes.len() {
            cluster.nodes[index].spawn();
            cluster.wait_ready(index).await;
        }
        cluster
    }

    pub fn node(&self, index: usize) -> &Node {
        &self.nodes[index]
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// SIGKILL: the node stops at once, mid-request and mid-transcode, leaving its lease.
    pub fn kill_node(&mut self, index: usize) {
        if let Some(mut process) = self.nodes[index].process.take() {
            process.kill();
        }
    }

    /// Starts the node again (killing it first if it runs) on its port and data directory, and
    /// waits until it is ready.
    pub async fn restart_node(&mut self, index: usize) {
        self.kill_node(index);
        self.nodes[index].spawn();
        self.wait_ready(index).await;
    }

    /// Waits for the node's `/health` to say ok (ffmpeg checked, store and S3 answering).
    async fn wait_ready(&self, index: usize) {
        let url = format!("{}/health", self.nodes[index].base);
        poll(
            Duration::from_secs(60),
            "a node to be healthy",
            async || matches!(self.client.get(&url).send().await, Ok(r) if r.status() == 200),
        )
        .await;
    }

    /// `proxy_base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.proxy_base)
    }

    /// GET /health through the proxy (whichever node it picks answers).
    pub async fn health(&self) -> reqwest::Response {
        self.client.get(self.url("/health")).send().await.unwrap()
    }

    /// A scratch directory that lives as long as the cluster (for clips).
    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }
}

/// The node's configuration file: everything but per-test `--set` overrides.
fn node_config(data_dir: &Path, port: u16, postgres_url: &str, moto: &Moto) -> String {
    let text = |value: &str| toml::Value::String(value.to_string()).to_string();
    format!(
        "[server]\nbind = {bind}\nworkers = 2\nshutdown_timeout_s = 2\n\n\
         [storage]\ndata_dir = {data}\nmin_free_disk_mb = 1\nrecords = \"postgres\"\nblobs = \"s3\"\n\n\
         [postgres]\nurl = {url}\npool_size = 4\n\n\
         [s3]\nendpoint = {endpoint}\nbucket = {bucket}\nregion = \"us-east-1\"\n\
         access_key = \"testing\"\nsecret_key = \"testing\"\nallow_http = true\n\n\
         [transcode]\nx264_preset = \"ultrafast\"\nworkers = 1\nsegment_seconds = 1\n\
         lease_s = 3\nclaim_interval_ms = 300\n\
         ladder = [{{ name = \"240p\", height = 240, video_bitrate_kbps = 400 }},\
                   {{ name = \"180p\", height = 180, video_bitrate_kbps = 250 }}]\n\n\
         [auth]\nadmin_token = {admin}\nsession_secret = {secret}\nallowed_chain_ids = [{CHAIN_ID}]\n\n\
         [monitor]\nsample_interval_ms = 500\n\n\
         [rate_limit]\ntrusted_proxies = [\"127.0.0.1\"]\n",
        bind = text(&format!("127.0.0.1:{port}")),
        data = text(&data_dir.display().to_string()),
        url = text(postgres_url),
        endpoint = text(&moto.endpoint),
        bucket = text(BUCKET),
        admin = text(ADMIN_TOKEN),
        secret = text(SESSION_SECRET),
    )
}

/// nginx in the foreground as the test's user, one process (`master_process off`, so a kill
/// leaves no worker behind), round-robin over `ports`. Request bodies stream to the node
/// (no buffering), so uploads of any size pass as they would to one node.
async fn start_nginx(dir: &Path, ports: &[u16]) -> (ChildProcess, String) {
    std::fs::create_dir_all(dir).unwrap();
    let port = free_port();
    let servers: String = ports
        .iter()
        .map(|p| format!("    server 127.0.0.1:{p} max_fails=1 fail_timeout=1s;\n"))
        .collect();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\n\
             pid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n  access_log off;\n\
               client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               upstream nodes {{\n{servers}    keepalive 16;\n  }}\n\
               server {{\n    listen 127.0.0.1:{port};\n\
                 client_max_body_size 0;\n\
                 proxy_request_buffering off;\n    proxy_buffering off;\n\
                 proxy_http_version 1.1;\n    proxy_set_header Connection \"\";\n\
                 proxy_set_header Host $http_host;\n\
                 proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
                 proxy_read_timeout 300s;\n\
                 add_header x-upstream $upstream_addr always;\n\
                 location / {{ proxy_pass http://nodes; }}\n  }}\n}}\n",
            d = dir.display(),
        ),
    )
    .unwrap();
    let nginx = crate::harness::start_nginx(dir, &conf, &[], port).await;
    (nginx, format!("http://127.0.0.1:{port}"))
}

/// Signs `wallet` in through `base` (the proxy or one node) and returns the session token.
pub async fn login(client: &reqwest::Client, base: &str, wallet: &Wallet) -> String {
    let challenge: Value = client
        .post(format!("{base}/api/v1/auth/challenge"))
        .json(&json!({"address": wallet.address, "chain_id": CHAIN_ID}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let message = challenge["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{challenge}"));
    let signature = wallet.sign(message);
    let login: Value = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"message": message, "signature": signature}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    login["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{login}"))
        .to_string()
}

/// GET `base` + `path` with an optional bearer token: status and JSON body (`null` if none).
pub async fn get_json(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    bearer: Option<&str>,
) -> (u16, Value) {
    let mut request = client.get(format!("{base}{path}"));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    send_for_json(request).await
}

/// One-shot upload of `bytes` through `base` with `bearer`: status and receipt.
pub async fn upload(
    client: &reqwest::Client,
    base: &str,
    bearer: &str,
    bytes: Vec<u8>,
    filename: &str,
) -> (u16, Value) {
    let part = reqwest::multipart::Part::bytes(bytes).file_name(filename.to_string());
    let form = reqwest::multipart::Form::new().part("file", part);
    let request = client
        .post(format!("{base}/api/v1/upload"))
        .bearer_auth(bearer)
        .multipart(form);
    send_for_json(request).await
}

/// The node that answered a response through the proxy: the last address in `x-upstream`
/// (nginx lists every node it tried, a dead one first).
pub fn answered_by(response: &reqwest::Response) -> String {
    let tried = response
        .headers()
        .get("x-upstream")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tried.rsplit(", ").next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn health_through_the_proxy_reaches_both_nodes_and_a_session_works_on_each() {
    let cluster = Cluster::start().await;
    let mut seen = std::collections::BTreeSet::new();
    // Round-robin: a handful of requests reach every node.
    for _ in 0..6 {
        let response = cluster.health().await;
        let node = answered_by(&response);
        let status = response.status();
        let health: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "{node}: {health}");
        assert_eq!(health["checks"]["store"]["status"], "ok", "{health}");
        seen.insert(node);
    }
    let expected: std::collections::BTreeSet<String> =
        cluster.nodes().iter().map(Node::upstream).collect();
    assert_eq!(seen, expected);

    // A session made on node 0 is accepted by node 1 (shared secret, shared records).
    let session = login(&cluster.client, &cluster.node(0).base, &crate::chain::ALICE).await;
    let (status, jobs) = get_json(
        &cluster.client,
        &cluster.node(1).base,
        "/api/v1/jobs",
        Some(&session),
    )
    .await;
    assert_eq!(status, 200, "{jobs}");

    // An upload through the proxy lands in the shared S3 bucket.
    let clip = crate::server::make_clip(cluster.scratch(), "smoke.mp4", "160x120", 1);
    let (status, receipt) = upload(
        &cluster.client,
        &cluster.proxy_base,
        &session,
        std::fs::read(clip).unwrap(),
        "smoke.mp4",
    )
    .await;
    assert_eq!(status, 201, "{receipt}");
    let keys = cluster.moto.keys("uploads/").await;
    assert!(
        keys.iter().any(|k| k.ends_with("/source")),
        "no source in S3: {keys:?}"
    );

    // A killed node drops out of the rotation; restarted, it serves again.
    let mut cluster = cluster;
    cluster.kill_node(1);
    assert_eq!(cluster.node(1).pid(), None);
    for _ in 0..4 {
        let response = cluster.health().await;
        assert_eq!(answered_by(&response), cluster.node(0).upstream());
        assert_eq!(response.status(), 200);
    }
    cluster.restart_node(1).await;
    let back = cluster.node(1).upstream();
    poll(
        Duration::from_secs(10),
        "the proxy to reach the restarted node",
        async || {
            let response = cluster.health().await;
            answered_by(&response) == back
        },
    )
    .await;
}

const JOB_DEADLINE: Duration = Duration::from_secs(120);

impl Cluster {
    /// A client sending the admin token (jobs API, cancel).
    pub fn admin(&self) -> reqwest::Client {
        crate::server::bearer_client(ADMIN_TOKEN)
    }

    /// The media's jobs, through the proxy.
    pub async fn jobs_of(&self, media_id: &str) -> Vec<Value> {
        let (status, page) = get_json(
            &self.client,
            &self.proxy_base,
            &format!("/api/v1/jobs?media_id={media_id}"),
            Some(ADMIN_TOKEN),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        page["items"].as_array().unwrap().clone()
    }

    /// Polls the media's only job through the proxy until `done` holds for it.
    pub async fn wait_for_job(&self, media_id: &str, done: impl Fn(&Value) -> bool) -> Value {
        poll(JOB_DEADLINE, "the media's job", async || {
            let jobs = self.jobs_of(media_id).await;
            match jobs.first() {
                Some(job) if done(job) => Ok(job.clone()),
                other => Err(format!("{other:?}")),
            }
        })
        .await
    }

    /// The node whose ffmpeg is running, and its ffmpeg pids, once one is.
    pub async fn ffmpeg_node(&self) -> (usize, Vec<u32>) {
        poll(JOB_DEADLINE, "ffmpeg to run on a node", async || {
            self.nodes.iter().enumerate().find_map(|(index, node)| {
                let pids = crate::shutdown::ffmpeg_children(node.pid()?);
                (!pids.is_empty()).then_some((index, pids))
            })
        })
        .await
    }

    /// Plays the media through the proxy, from each node at least once: the master playlist
    /// lists every rung, each rung's VOD playlist adds up to `seconds`, and every segment it
    /// names is served.
    pub async fn assert_plays(&self, media_id: &str, seconds: f64) {
        let hls = format!("{}/api/v1/media/{media_id}/hls", self.proxy_base);
        let master_url = format!("{hls}/master.m3u8");
        let live = self.live_nodes();
        let master = poll(
            Duration::from_secs(10),
            "the master playlist from every live node",
            async || {
                let mut answered = std::collections::BTreeSet::new();
                let mut master = String::new();
                for _ in 0..live {
                    let response = self.client.get(&master_url).send().await.unwrap();
                    let node = answered_by(&response);
                    let status = response.status();
                    master = response.text().await.unwrap();
                    if status != 200 {
                        return Err(format!("{node}: {status} {master}"));
                    }
                    answered.insert(node);
                }
                Ok((answered.len() == live)
                    .then_some(master)
                    .ok_or("one node twice")?)
            },
        )
        .await;
        for rung in ["240p", "180p"] {
            assert!(master.contains(&format!("{rung}/index.m3u8")), "{master}");
            let playlist = fetch_text(&self.client, format!("{hls}/{rung}/index.m3u8")).await;
            assert!(playlist.contains("#EXT-X-ENDLIST"), "{playlist}");
            let total = playlist_seconds(&playlist);
            assert!(
                (total - seconds).abs() < 0.5,
                "{rung}: {total}s of {seconds}s"
            );
            for file in playlist_files(&playlist) {
                let response = self
                    .client
                    .get(format!("{hls}/{rung}/{file}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200, "{rung}/{file}");
                assert!(!response.bytes().await.unwrap().is_empty(), "{rung}/{file}");
            }
        }
    }

    fn live_nodes(&self) -> usize {
        self.nodes.iter().filter(|n| n.process.is_some()).count()
    }

    /// Uploads a `size` clip of `seconds` through the proxy as ALICE; returns the media id.
    async fn upload_clip(&self, size: &str, seconds: u32) -> String {
        self.upload_clip_to(&self.proxy_base, size, seconds).await
    }

    /// Uploads a `size` clip of `seconds` through `base` as ALICE; returns the media id.
    async fn upload_clip_to(&self, base: &str, size: &str, seconds: u32) -> String {
        let name = format!("clip-{size}-{seconds}.mp4");
        let clip = crate::server::make_clip(self.scratch(), &name, size, seconds);
        self.upload_file_to(base, &clip).await
    }

    /// Uploads the file at `path` through `base` as ALICE; returns the media id.
    async fn upload_file_to(&self, base: &str, path: &Path) -> String {
        let session = login(&self.client, base, &crate::chain::ALICE).await;
        let (status, receipt) = upload(
            &self.client,
            base,
            &session,
            std::fs::read(path).unwrap(),
            "clip.mp4",
        )
        .await;
        assert_eq!(status, 201, "{receipt}");
        receipt["media_id"].as_str().unwrap().to_string()
    }
}

#[tokio::test]
async fn an_upload_through_the_proxy_transcodes_on_a_node_and_plays_through_either() {
    // The node that did not run the job hears of the finished record through the change feed.
    let cluster = Cluster::start().await;
    let media_id = cluster.upload_clip("320x240", 3).await;
    let job = cluster
        .wait_for_job(&media_id, |job| {
            job["state"] != "queued" && job["state"] != "running"
        })
        .await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    // The lease went with the run.
    assert!(job.get("node").is_none(), "{job}");
    cluster.assert_plays(&media_id, 3.0).await;
}

#[tokio::test]
async fn a_job_queued_on_a_busy_node_runs_on_the_node_with_a_free_worker() {
    let cluster = Cluster::start().await;
    let long = crate::server::make_clip(cluster.scratch(), "long.mp4", "640x480", 30);
    let short = crate::server::make_clip(cluster.scratch(), "short.mp4", "480x360", 10);
    let busy = &cluster.node(0).base;
    let long = cluster.upload_file_to(busy, &long).await;
    let first = cluster
        .wait_for_job(&long, |job| job["state"] == "running")
        .await;
    // Node 0's one worker is taken: the next job it queues is claimed by node 1's poll.
    let short = cluster.upload_file_to(busy, &short).await;
    let second = cluster
        .wait_for_job(&short, |job| job["state"] != "queued")
        .await;
    assert_eq!(first["state"], "running", "{first}");
    assert_eq!(second["state"], "running", "{second}");
    let (first_node, second_node) = (first["node"].as_str(), second["node"].as_str());
    assert!(
        first_node.is_some() && second_node.is_some(),
        "{first} {second}"
    );
    assert_ne!(first_node, second_node, "{first} {second}");
    for media_id in [&long, &short] {
        let done = cluster
            .wait_for_job(media_id, |job| job["state"] != "running")
            .await;
        assert_eq!(done["state"], "succeeded", "{done}");
    }
}

#[tokio::test]
async fn kill_9_of_the_node_running_ffmpeg_lets_the_other_node_finish_the_job() {
    let mut cluster = Cluster::start().await;
    let media_id = cluster.upload_clip("640x480", 20).await;
    let (victim, ffmpeg) = cluster.ffmpeg_node().await;
    let running = cluster
        .wait_for_job(&media_id, |job| job["state"] == "running")
        .await;
    let first_node = running["node"].as_str().unwrap().to_string();
    cluster.kill_node(victim);
    // As the loss of its machine would, the node's ffmpeg goes with it.
    for pid in &ffmpeg {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }

    // Once the 3 s lease lapsed, the survivor claims the job and runs it to the end.
    let survivor = 1 - victim;
    let taken = cluster
        .wait_for_job(&media_id, |job| {
            job["state"] == "running" && job["node"].as_str() != Some(first_node.as_str())
        })
        .await;
    assert_eq!(taken["attempts"], 2, "{taken}");
    let survivor_pid = cluster.node(survivor).pid().unwrap();
    let done = cluster
        .wait_for_job(&media_id, |job| job["state"] != "running")
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(
        crate::shutdown::ffmpeg_children(survivor_pid).is_empty(),
        "the survivor's ffmpeg ended with the job"
    );
    cluster.assert_plays(&media_id, 20.0).await;
}

#[tokio::test]
async fn a_cancel_through_one_node_kills_ffmpeg_on_the_node_running_the_job() {
    // A slow preset, so the transcode surely still runs when the cancel arrives.
    let cluster = Cluster::start_with(&["transcode.x264_preset=\"veryslow\""]).await;
    let media_id = cluster.upload_clip("640x480", 8).await;
    let (runner, ffmpeg) = cluster.ffmpeg_node().await;
    let job = cluster
        .wait_for_job(&media_id, |job| job["state"] == "running")
        .await;
    let job_id = job["id"].as_str().unwrap();

    let other = cluster.node(1 - runner);
    let response = cluster
        .admin()
        .post(format!("{}/api/v1/jobs/{job_id}/cancel", other.base))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let cancelled: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    // The reply comes once the running node stored the end of its run: its ffmpeg is gone.
    for pid in ffmpeg {
        assert!(
            !crate::shutdown::is_alive(pid),
            "ffmpeg {pid} outlived the cancel"
        );
    }
    let runner_pid = cluster.node(runner).pid().unwrap();
    assert!(crate::shutdown::ffmpeg_children(runner_pid).is_empty());
    let (status, stored) = get_json(
        &cluster.client,
        &cluster.node(runner).base,
        &format!("/api/v1/jobs/{job_id}"),
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["state"], "cancelled", "{stored}");
    assert_eq!(stored["error_code"], "cancelled", "{stored}");
}
