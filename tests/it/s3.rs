//! A real S3-compatible server for the tests: moto (`moto_server`, from PyPI) on 127.0.0.1,
//! one per test, with a fresh bucket. `.ci/test` installs it into `target/py`.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use streamgate::config::Config;
use streamgate_actors::config::BlobBackend;

pub const BUCKET: &str = "streamgate-test";

pub struct Moto {
    child: Child,
    pub endpoint: String,
}

/// `MOTO_SERVER`, else the project's venv (`target/py`), else `PATH`.
fn moto_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let venv = crate::server::python_venv().join("bin/moto_server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("moto_server")
}

impl Moto {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let binary = moto_binary();
        let child = Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot run {} ({error}): install it with `bash .ci/test` \
                     (pip install 'moto[server]' into target/py)",
                    binary.display()
                )
            });
        let moto = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        // Creating the bucket doubles as the readiness probe; moto accepts unsigned requests.
        let client = reqwest::Client::new();
        let started = Instant::now();
        let mut ticks = tokio::time::interval(Duration::from_millis(100));
        loop {
            ticks.tick().await;
            let created = client
                .put(format!("{}/{BUCKET}", moto.endpoint))
                .send()
                .await;
            if matches!(&created, Ok(response) if response.status().is_success()) {
                return moto;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "moto_server did not come up: {created:?}"
            );
        }
    }

    /// Points a server configuration at this moto.
    pub fn configure(&self, config: &mut Config) {
        config.storage.blobs = BlobBackend::S3;
        config.s3.endpoint = self.endpoint.clone();
        config.s3.bucket = BUCKET.into();
        config.s3.region = "us-east-1".into();
        config.s3.access_key = "testing".into();
        config.s3.secret_key = "testing".into();
        config.s3.allow_http = true;
    }

    /// Keys under `prefix` in the bucket, read straight from moto (not through StreamGate).
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let listing = reqwest::Client::new()
            .get(format!(
                "{}/{BUCKET}?list-type=2&prefix={prefix}",
                self.endpoint
            ))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        listing
            .split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split_once("</Key>").map(|(key, _)| key.to_string()))
            .collect()
    }

    pub async fn object(&self, key: &str) -> Vec<u8> {
        let response = reqwest::Client::new()
            .get(format!("{}/{BUCKET}/{key}", self.endpoint))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{key}");
        response.bytes().await.unwrap().to_vec()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
