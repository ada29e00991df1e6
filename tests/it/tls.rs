//! Outbound TLS: ownership checks and alert webhooks through a real TLS endpoint on loopback
//! (nginx with a certificate from a CA made for the test, in front of anvil and of a webhook
//! receiver). Trusted through `tls.extra_ca_file` they work; without it they fail closed.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::json;
use streamgate_actors::monitor::alerts::{AlertLevel, AlertRule, Condition, Signal};

use crate::{
    auth::nft_verify,
    chain::{read_chain, Anvil, ALICE, BOB, CHAIN_ID},
    harness::{free_port, ChildProcess},
    server::TestServer,
};

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is installed (apt-get install openssl)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA and a certificate for 127.0.0.1 signed by it, written into `dir`.
struct TestCa {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl TestCa {
    fn create(dir: &Path) -> Self {
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=StreamGate test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(dir, &args);
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        openssl(dir, &args);
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                "server.pem",
            ],
        );
        Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }
}

/// nginx terminating TLS on a loopback port and proxying to `upstream` (plain http).
struct TlsProxy {
    url: String,
    _nginx: ChildProcess,
}

impl TlsProxy {
    async fn start(ca: &TestCa, scratch: &Path, upstream: &str) -> Self {
        let port = free_port();
        std::fs::create_dir_all(scratch).unwrap();
        let conf = scratch.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "user root;\nworker_processes 1;\npid {s}/nginx.pid;\nerror_log {s}/error.log;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n  access_log off;\n\
                   client_body_temp_path {s}; proxy_temp_path {s}; fastcgi_temp_path {s};\n\
                   uwsgi_temp_path {s}; scgi_temp_path {s};\n\
                   server {{\n    listen 127.0.0.1:{port} ssl;\n\
                     ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
                     location / {{ proxy_pass {upstream}; }}\n  }}\n}}\n",
                s = scratch.display(),
                cert = ca.cert.display(),
                key = ca.key.display(),
            ),
        )
        .unwrap();
        let extra = ["-g", "daemon off; master_process off;"];
        let nginx = crate::harness::start_nginx(scratch, &conf, &extra, port).await;
        Self {
            url: format!("https://127.0.0.1:{port}"),
            _nginx: nginx,
        }
    }
}

#[tokio::test]
async fn ownership_checks_reach_an_https_rpc_trusted_through_the_extra_ca_and_fail_closed_without_it(
) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::create(dir.path());
    let chain = Anvil::start().await;
    let erc721 = chain.deploy_erc721(&ALICE);
    chain.mint_erc721(&ALICE, &erc721, BOB.address);
    let proxy = TlsProxy::start(&ca, &dir.path().join("nginx"), &chain.url).await;
    let query = json!({"address": BOB.address, "chain_id": CHAIN_ID, "contract": erc721, "standard": "erc721", "token_id": 0});

    let ca_file = ca.ca.display().to_string();
    let rpc = proxy.url.clone();
    let trusting = TestServer::start_with(|c| {
        read_chain(c, rpc);
        c.tls.extra_ca_file = ca_file;
    });
    let session = trusting.session().await.to_string();
    let (status, answer) = nft_verify(&trusting, &session, &query).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["owns"], true, "{answer}");
    assert_eq!(answer["balance"], 1, "{answer}");
    drop(trusting);

    // Same endpoint, system roots only: the test CA is unknown, so the answer is "cannot
    // check", never "does not own".
    let rpc = proxy.url.clone();
    let untrusting = TestServer::start_with(|c| {
        read_chain(c, rpc);
        c.auth.rpc_timeout_ms = 10_000;
    });
    let session = untrusting.session().await.to_string();
    let (status, answer) = nft_verify(&untrusting, &session, &query).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["code"], "rpc_unavailable", "{answer}");
}

#[tokio::test]
async fn alert_webhooks_are_posted_over_https_to_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::create(dir.path());
    let (upstream, mut hooks) = crate::server::json_receiver().await;
    let proxy = TlsProxy::start(&ca, &dir.path().join("nginx"), &upstream).await;
    let hook = format!("{}/hook", proxy.url);
    let ca_file = ca.ca.display().to_string();
    let _server = TestServer::start_with(|c| {
        c.tls.extra_ca_file = ca_file;
        c.monitor.alert_webhooks = vec![hook];
        // Holds from the first sample on, so the alert fires at once.
        c.monitor.alert_rules = vec![AlertRule {
            name: "AlwaysOn".into(),
            signal: Signal::MemoryUsageRatio,
            condition: Condition::Gte,
            threshold: 0.0,
            for_s: 0.0,
            level: AlertLevel::Info,
            summary: "Fires at once.".into(),
        }];
    });
    let fired = tokio::time::timeout(Duration::from_secs(30), hooks.recv())
        .await
        .expect("the webhook arrives through the TLS proxy")
        .unwrap();
    assert_eq!(fired["status"], "firing", "{fired}");
    assert_eq!(
        fired["alerts"][0]["labels"]["alertname"], "AlwaysOn",
        "{fired}"
    );
}

#[tokio::test]
async fn request_spans_are_exported_over_https_to_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::create(dir.path());
    let (upstream, mut batches) = crate::server::json_receiver().await;
    let proxy = TlsProxy::start(&ca, &dir.path().join("nginx"), &upstream).await;
    let ca_file = ca.ca.display().to_string();
    let endpoint = proxy.url.clone();
    let server = TestServer::start_with(|c| {
        c.tls.extra_ca_file = ca_file;
        c.monitor.otlp_endpoint = endpoint;
        c.monitor.otlp_flush_interval_ms = 100;
    });
    assert!(server.get("/api/v1/media").await.status().is_success());
    let batch = tokio::time::timeout(Duration::from_secs(30), batches.recv())
        .await
        .expect("a span batch arrives through the TLS proxy")
        .unwrap();
    assert!(
        batch["resourceSpans"][0]["scopeSpans"][0]["spans"]
            .as_array()
            .is_some_and(|spans| !spans.is_empty()),
        "{batch}"
    );
}
