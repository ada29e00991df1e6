//! A real S3-compatible server for the tests: moto (`moto_server`, from PyPI) on 127.0.0.1,
//! one per test, with a fresh bucket. `.ci/test` installs it into `target/py`.

use std::{path::PathBuf, process::Command, time::Duration};

use streamgate::config::Config;
use streamgate_actors::config::BlobBackend;

use crate::{
    harness::{free_port, poll, ChildProcess},
    server::fetch_text,
};

pub const BUCKET: &str = "streamgate-test";

pub struct Moto {
    _process: ChildProcess,
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
        let port = free_port();
        let process = ChildProcess::spawn(
            Command::new(moto_binary()).args(["-H", "127.0.0.1", "-p", &port.to_string()]),
            "install it with `bash .ci/test` (pip install 'moto[server]' into target/py)",
        );
        let endpoint = format!("http://127.0.0.1:{port}");
        // Creating the bucket doubles as the readiness probe; moto accepts unsigned requests.
        let client = crate::server::client_builder().build().unwrap();
        poll(
            Duration::from_secs(30),
            "moto_server to come up",
            async || {
                let created = client.put(format!("{endpoint}/{BUCKET}")).send().await;
                match created {
                    Ok(response) if response.status().is_success() => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
        Self {
            _process: process,
            endpoint,
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
        let client = crate::server::client_builder().build().unwrap();
        let listing = fetch_text(
            &client,
            format!("{}/{BUCKET}?list-type=2&prefix={prefix}", self.endpoint),
        )
        .await;
        listing
            .split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split_once("</Key>").map(|(key, _)| key.to_string()))
            .collect()
    }

    pub async fn object(&self, key: &str) -> Vec<u8> {
        let response = crate::server::client_builder()
            .build()
            .unwrap()
            .get(format!("{}/{BUCKET}/{key}", self.endpoint))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{key}");
        response.bytes().await.unwrap().to_vec()
    }
}
