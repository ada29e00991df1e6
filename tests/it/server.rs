//! `TestServer`: the real app on 127.0.0.1:0 (or, with `start_on`, another loopback address)
//! in its own actix system thread, plus helpers.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use actix_web::dev::ServerHandle;
use serde_json::Value;
use streamgate::config::{self, Config, Sources};
use streamgate_actors::{
    clock::{ManualClock, SharedClock},
    Actors,
};

use crate::chain::{Wallet, ALICE, CHAIN_ID};

pub struct TestServer {
    pub base: String,
    pub actors: Actors,
    pub client: reqwest::Client,
    pub data_dir: PathBuf,
    /// The clock auth expiries run on: `advance` it rather than wait out a TTL.
    pub clock: Arc<ManualClock>,
    handle: ServerHandle,
    /// ALICE's session, made on first use; uploads go out with it.
    session: tokio::sync::OnceCell<String>,
    thread: Option<std::thread::JoinHandle<()>>,
    _data: tempfile::TempDir,
}

impl TestServer {
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    pub fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_on("127.0.0.1:0", tweak)
    }

    /// Listens on `bind` (e.g. `[::1]:0` for IPv6 clients) instead of 127.0.0.1:0.
    pub fn start_on(bind: &str, tweak: impl FnOnce(&mut Config)) -> Self {
        init_logging();
        let data = tempfile::tempdir().unwrap();
        let mut config = config::load(&Sources::default()).unwrap();
        config.storage.data_dir = data.path().to_path_buf();
        config.storage.min_free_disk_mb = 1;
        config.monitor.sample_interval_ms = 200;
        config.transcode.x264_preset = "ultrafast".into();
        config.auth.allowed_chain_ids = vec![CHAIN_ID];
        tweak(&mut config);
        let data_dir = config.storage.data_dir.clone();
        // A restart on the same data dir waits in `SledStore::open` for the previous server's
        // store lock to go.
        let listener = TcpListener::bind(bind).unwrap();
        let address = listener.local_addr().unwrap();
        let clock = Arc::new(ManualClock::default());
        let server_clock: SharedClock = clock.clone();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                match streamgate::start_with_clock(config, listener, server_clock) {
                    Ok(running) => {
                        started_tx
                            .send(Ok((running.handle.clone(), running.actors.clone())))
                            .unwrap();
                        running.wait().await.unwrap();
                    }
                    Err(error) => started_tx.send(Err(error.to_string())).unwrap(),
                }
            })
        });
        let (handle, actors) = started_rx.recv().unwrap().expect("server starts");
        Self {
            base: format!("http://{address}"),
            actors,
            client: client_builder().build().unwrap(),
            data_dir,
            clock,
            handle,
            session: tokio::sync::OnceCell::new(),
            thread: Some(thread),
            _data: data,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// The body of a GET as text, whatever its status.
    pub async fn get_text(&self, path: &str) -> String {
        self.get(path).await.text().await.unwrap()
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self.get(path).await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// GET with `Authorization: Bearer <token>` (a session or the admin token); a body that is
    /// not JSON reads as `null`.
    pub async fn get_json_as(&self, token: &str, path: &str) -> (u16, Value) {
        send_for_json(self.client.get(self.url(path)).bearer_auth(token)).await
    }

    /// GET as ALICE, who uploads in most tests (the jobs API shows a wallet its own jobs).
    pub async fn alice_get_json(&self, path: &str) -> (u16, Value) {
        let session = self.session().await.to_string();
        self.get_json_as(&session, path).await
    }

    /// Signs in with `wallet` (SIWE, signed by cast) and returns the session token.
    pub async fn login(&self, wallet: &Wallet) -> String {
        let (status, login) = self.try_login(wallet, |message| message).await;
        assert_eq!(status, 200, "{login}");
        login["token"].as_str().unwrap().to_string()
    }

    /// Asks for a challenge, lets `edit` change the message, signs it with `wallet`, logs in.
    pub async fn try_login(
        &self,
        wallet: &Wallet,
        edit: impl FnOnce(String) -> String,
    ) -> (u16, Value) {
        let message = edit(self.challenge(wallet).await);
        let signature = wallet.sign(&message);
        self.post_json(
            "/api/v1/auth/login",
            &serde_json::json!({"message": message, "signature": signature}),
        )
        .await
    }

    /// Logs `session` out (`POST /api/v1/auth/logout`) and asserts the 204.
    pub async fn logout(&self, session: &str) {
        let response = self
            .client
            .post(self.url("/api/v1/auth/logout"))
            .bearer_auth(session)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
    }

    /// A fresh SIWE challenge message for `wallet` on the test chain.
    pub async fn challenge(&self, wallet: &Wallet) -> String {
        let (status, challenge) = self
            .post_json(
                "/api/v1/auth/challenge",
                &serde_json::json!({"address": wallet.address, "chain_id": CHAIN_ID}),
            )
            .await;
        assert_eq!(status, 200, "{challenge}");
        challenge["message"].as_str().unwrap().to_string()
    }

    /// ALICE's session token (she uploads in most tests).
    pub async fn session(&self) -> &str {
        self.session.get_or_init(|| self.login(&ALICE)).await
    }

    /// A client that sends ALICE's session on every request (for tus clients, which repeat
    /// their headers on each request).
    pub async fn alice_client(&self) -> reqwest::Client {
        bearer_client(self.session().await)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        send_for_json(self.client.post(self.url(path)).json(body)).await
    }

    /// Uploads a file through the one-shot endpoint, as ALICE.
    pub async fn upload(
        &self,
        bytes: Vec<u8>,
        filename: &str,
        title: Option<&str>,
    ) -> (u16, Value) {
        let session = self.session().await.to_string();
        self.upload_as(Some(&session), bytes, filename, title).await
    }

    /// Uploads with the given bearer token, or none.
    pub async fn upload_as(
        &self,
        bearer: Option<&str>,
        bytes: Vec<u8>,
        filename: &str,
        title: Option<&str>,
    ) -> (u16, Value) {
        let part = reqwest::multipart::Part::bytes(bytes).file_name(filename.to_string());
        let mut form = reqwest::multipart::Form::new().part("file", part);
        if let Some(title) = title {
            form = form.text("title", title.to_string());
        }
        let mut request = self.client.post(self.url("/api/v1/upload")).multipart(form);
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// Uploads as ALICE and waits up to `deadline` for the media to turn ready; returns its id
    /// and its ready record.
    pub async fn upload_ready(
        &self,
        bytes: Vec<u8>,
        filename: &str,
        title: Option<&str>,
        deadline: Duration,
    ) -> (String, Value) {
        let (status, receipt) = self.upload(bytes, filename, title).await;
        assert_eq!(status, 201, "{receipt}");
        let media_id = receipt["media_id"].as_str().unwrap().to_string();
        let media = self
            .wait_for_media(&media_id, deadline, |m| m["state"] != "processing")
            .await;
        assert_eq!(media["state"], "ready", "{media}");
        (media_id, media)
    }

    /// Polls a media record until `done` holds for it, failing after `deadline`.
    pub async fn wait_for_media(
        &self,
        media_id: &str,
        deadline: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let path = format!("/api/v1/media/{media_id}");
        crate::harness::poll(deadline, "the media's wanted state", async || {
            let (status, media) = self.get_json(&path).await;
            assert_eq!(status, 200, "{media}");
            if done(&media) {
                Ok(media)
            } else {
                Err(media.to_string())
            }
        })
        .await
    }

    /// Every regular file under `blobs/{prefix}`, for "left nothing behind" checks.
    pub fn blob_files(&self, prefix: &str) -> Vec<PathBuf> {
        files_under(&self.data_dir.join("blobs").join(prefix))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // `stop` sends its command at once; the returned future only reports completion.
        drop(self.handle.stop(false));
        if std::thread::panicking() {
            // Report the failure now rather than wait on a server the failure may have wedged.
            return;
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Routes log events into the monitor's ring, as the binary does, so `/api/v1/monitor/logs`
/// has something to serve. Once per test process (the subscriber is global).
fn init_logging() {
    use streamgate_actors::monitor::logs::LogRing;
    use tracing_subscriber::{filter::LevelFilter, layer::SubscriberExt, Layer};
    static LOGGING: std::sync::Once = std::sync::Once::new();
    LOGGING.call_once(|| {
        let ring = LogRing::global(2000);
        let subscriber = tracing_subscriber::registry().with(
            ring.layer(tracing::Level::INFO)
                .with_filter(LevelFilter::INFO),
        );
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

/// A response's status and JSON body (`null` when the body is not JSON).
pub async fn status_and_json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Sends `request`: the answer's status and JSON body (`null` when the body is not JSON).
pub async fn send_for_json(request: reqwest::RequestBuilder) -> (u16, Value) {
    status_and_json(request.send().await.unwrap()).await
}

/// GETs `url` with `client` and parses the body as JSON, whatever the status.
pub async fn fetch_json(client: &reqwest::Client, url: impl reqwest::IntoUrl) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// GETs `url` with `client` and returns the body as text, whatever the status.
pub async fn fetch_text(client: &reqwest::Client, url: impl reqwest::IntoUrl) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

/// The summed `#EXTINF` durations of an HLS media playlist, in seconds.
pub fn playlist_seconds(playlist: &str) -> f64 {
    playlist
        .lines()
        .filter_map(|line| line.strip_prefix("#EXTINF:"))
        .map(|rest| rest.trim_end_matches(',').parse::<f64>().unwrap())
        .sum()
}

/// The files a CMAF media playlist names: its init segment (which it must name), then its segments.
pub fn playlist_files(playlist: &str) -> Vec<String> {
    let init = playlist
        .lines()
        .find_map(|line| line.strip_prefix("#EXT-X-MAP:URI=\""))
        .map(|rest| rest.trim_end_matches('"').to_string())
        .expect("CMAF playlists name their init segment");
    let segments = playlist
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(str::to_string);
    std::iter::once(init).chain(segments).collect()
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// The Python venv `.ci/test` fills (tuspy, moto): `target/py` in the workspace.
pub fn python_venv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py")
}

/// Makes a real H.264/AAC clip with ffmpeg's lavfi sources.
pub fn make_clip(dir: &Path, name: &str, size: &str, seconds: u32) -> PathBuf {
    let path = dir.join(name);
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={size}:rate=30"))
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
        .arg(&path)
        .status()
        .expect("ffmpeg is installed (apt-get install ffmpeg)");
    assert!(status.success(), "ffmpeg could not make the test clip");
    path
}

/// Runs `ffprobe` on a file or URL and returns its JSON report.
pub fn ffprobe(target: &str) -> Value {
    let output = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_format",
            "-show_streams",
            target,
        ])
        .output()
        .expect("ffprobe is installed (apt-get install ffmpeg)");
    assert!(
        output.status.success(),
        "ffprobe {target}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A reqwest client that sends `Authorization: Bearer <token>` on every request.
pub fn bearer_client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    client_builder().default_headers(headers).build().unwrap()
}

/// A client that never reuses a connection the server may be closing: idle pooled connections
/// are dropped well before the server's keep-alive timeout (5 s), so a request is never sent
/// on a socket the server closes at the same moment (hyper's `IncompleteMessage`).
pub fn client_builder() -> reqwest::ClientBuilder {
    streamgate_actors::outbound::install_default_provider();
    reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(2))
}

/// A loopback HTTP receiver standing in for an operator's service: answers each request with
/// `reply(head)`, then hands `parse(head, body)`, when `Some`, to the test; returns its base URL.
pub async fn http_receiver<T: Send + 'static>(
    reply: fn(&str) -> &'static [u8],
    parse: fn(&str, Vec<u8>) -> Option<T>,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<T>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Some((head, body)) = read_request(&mut socket).await else {
                    return;
                };
                let _ = socket.write_all(reply(&head)).await;
                if let Some(item) = parse(&head, body) {
                    let _ = tx.send(item);
                }
            });
        }
    });
    (base, rx)
}

/// An [`http_receiver`] that answers 200 and hands each JSON body to the test.
pub async fn json_receiver() -> (String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    http_receiver(
        |_| b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        |_, body| serde_json::from_slice(&body).ok(),
    )
    .await
}

/// Reads one HTTP/1.1 request from `socket`: its head (lower-cased) and its
/// `content-length` body; `None` if the peer closes first. For the test receivers (webhooks,
/// OTLP) that stand in for an operator's services.
pub async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let read = socket.read(&mut chunk).await.unwrap_or(0);
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
        let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if buffer.len() >= end + 4 + length {
            return Some((head, buffer[end + 4..end + 4 + length].to_vec()));
        }
    }
}
