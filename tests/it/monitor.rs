//! Monitoring and protection, end to end: alert rules that fire on real failures and resolve,
//! the webhook, Prometheus (promtool and a real server scraping us), the dashboard queries,
//! trace context, security headers, the log ring, and per-client rate limits with audit.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use streamgate_actors::monitor::alerts::{AlertLevel, AlertRule, Condition, Signal};
use tokio::{io::AsyncWriteExt, sync::mpsc};

use crate::{
    e2e::promtool_check_metrics,
    harness::{free_port, poll, ChildProcess},
    server::TestServer,
};

const ADMIN: &str = "monitor-admin";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A one-endpoint HTTP server that hands every POSTed JSON body to the test.
async fn webhook_receiver() -> (String, mpsc::UnboundedReceiver<Value>) {
    let (base, rx) = crate::server::json_receiver().await;
    (format!("{base}/hook"), rx)
}

async fn next_webhook(rx: &mut mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("a webhook arrives in time")
        .expect("the receiver is running")
}

async fn alerts(server: &TestServer) -> Value {
    let (status, body) = server.get_json("/api/v1/monitor/alerts").await;
    assert_eq!(status, 200, "{body}");
    body
}

fn is_firing(alerts: &Value, name: &str) -> bool {
    alerts["firing"]
        .as_array()
        .unwrap()
        .iter()
        .any(|rule| rule["name"] == name)
}

/// The 5xx are real: the monitor probes the blob store on its timer by writing `.health/probe` under the blob
/// root, and the test replaces that directory with a plain file, so the write fails with
/// ENOTDIR (even as root) and `/health` answers 503. Removing the file heals it. The rule is
/// the default HighErrorRate rule with a short window and hold so the test takes seconds.
#[tokio::test]
async fn error_rate_alert_fires_on_a_real_5xx_burst_resolves_and_calls_the_webhook() {
    let (hook, mut hooks) = webhook_receiver().await;
    let server = TestServer::start_with(|config| {
        config.monitor.alert_window_s = 2.0;
        config.monitor.alert_webhooks = vec![hook];
        config.monitor.alert_rules = vec![AlertRule {
            name: "HighErrorRate".into(),
            signal: Signal::HttpErrorRate,
            condition: Condition::Gt,
            threshold: 0.10,
            for_s: 0.5,
            level: AlertLevel::Critical,
            summary: "More than 10% of requests fail with a 5xx status.".into(),
        }];
    });
    // /health reports the monitor's last sample, which sees the breakage within a tick.
    let probe_dir = break_health(&server).await;
    let firing = poll(
        Duration::from_secs(15),
        "HighErrorRate to fire",
        async || {
            let health = server.get("/health").await;
            assert_eq!(health.status(), 503, "the blob store is broken for real");
            let alerts = alerts(&server).await;
            match is_firing(&alerts, "HighErrorRate") {
                true => Ok(alerts),
                false => Err(alerts.to_string()),
            }
        },
    )
    .await;
    assert_eq!(firing["firing"][0]["level"], "critical");
    let fired = next_webhook(&mut hooks).await;
    assert_eq!(fired["version"], "4");
    assert_eq!(fired["status"], "firing", "{fired}");
    assert_eq!(fired["alerts"][0]["labels"]["alertname"], "HighErrorRate");
    assert_eq!(fired["alerts"][0]["labels"]["severity"], "critical");

    std::fs::remove_file(&probe_dir).unwrap();
    poll(
        Duration::from_secs(15),
        "/health to see the healed blob store",
        || async { server.get_json("/health").await.1["checks"]["blobs"]["status"] == "ok" },
    )
    .await;
    let resolved_alerts = poll(
        Duration::from_secs(15),
        "HighErrorRate to resolve",
        async || {
            // Healed: the blob check passes again. (Other checks may read "degraded" on a loaded
            // machine, e.g. a slow actor ping; they are not what this test is about.)
            let (_, health) = server.get_json("/health").await;
            assert_eq!(
                health["checks"]["blobs"]["status"], "ok",
                "healed: {health}"
            );
            let alerts = alerts(&server).await;
            match is_firing(&alerts, "HighErrorRate") {
                false => Ok(alerts),
                true => Err(alerts.to_string()),
            }
        },
    )
    .await;
    let states: Vec<&str> = resolved_alerts["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["resolved", "firing", "pending"],
        "{resolved_alerts}"
    );
    let resolved = next_webhook(&mut hooks).await;
    assert_eq!(resolved["status"], "resolved", "{resolved}");
    assert_ne!(resolved["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");

    let text = server.get("/metrics").await.text().await.unwrap();
    assert!(
        text.contains(
            r#"streamgate_alert_transitions_total{alertname="HighErrorRate",state="resolved"} 1"#
        ),
        "{text}"
    );
}

fn client_from(address: &str) -> reqwest::Client {
    crate::server::client_builder()
        .local_address(address.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// Two clients at once on distinct loopback addresses (127/8 all reaches us): one floods the
/// metadata service, one stays under its refill rate. Only the flooder is refused; the refusal
/// is counted, audited once, and logged with the request's trace.
#[tokio::test]
async fn a_flooding_client_gets_429s_while_a_polite_one_sees_none() {
    let server = TestServer::start_with(|config| {
        config.auth.admin_token = ADMIN.into();
        let metadata = config.rate_limit.services.get_mut("metadata").unwrap();
        metadata.capacity = 20;
        metadata.refill_per_second = 10;
    });
    let url = server.url("/api/v1/media?limit=1");
    let flooder = client_from("127.0.0.2");
    let polite = client_from("127.0.0.1");

    let flood = async {
        let mut statuses = Vec::new();
        let mut traces = HashSet::new();
        let mut retry_afters = Vec::new();
        for _ in 0..15 {
            // The flood continues a caller's trace: responses return `traceparent` only then.
            let batch = (0..10).map(|_| {
                flooder
                    .get(&url)
                    .header(
                        "traceparent",
                        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                    )
                    .send()
            });
            for response in futures_util::future::join_all(batch).await {
                let response = response.unwrap();
                if response.status() == 429 {
                    retry_afters.push(
                        response.headers()["retry-after"]
                            .to_str()
                            .unwrap()
                            .parse::<u64>()
                            .unwrap(),
                    );
                    let traceparent = response.headers()["traceparent"].to_str().unwrap();
                    traces.insert(traceparent.split('-').nth(1).unwrap().to_string());
                    let body: Value = response.json().await.unwrap();
                    assert_eq!(body["code"], "rate_limited", "{body}");
                    statuses.push(429);
                } else {
                    statuses.push(response.status().as_u16());
                }
            }
        }
        (statuses, traces, retry_afters)
    };
    let gentle = async {
        let mut statuses = Vec::new();
        let mut ticks = tokio::time::interval(Duration::from_millis(250));
        for _ in 0..8 {
            ticks.tick().await;
            statuses.push(polite.get(&url).send().await.unwrap().status().as_u16());
        }
        statuses
    };
    let ((flood_statuses, flood_traces, retry_afters), polite_statuses) =
        tokio::join!(flood, gentle);

    let refused = flood_statuses.iter().filter(|s| **s == 429).count();
    assert!(refused >= 100, "the flooder is refused: {flood_statuses:?}");
    assert!(flood_statuses.iter().all(|s| *s == 200 || *s == 429));
    assert!(retry_afters.iter().all(|s| *s >= 1));
    assert!(
        polite_statuses.iter().all(|s| *s == 200),
        "the polite client never sees a 429: {polite_statuses:?}"
    );

    let text = server.get("/metrics").await.text().await.unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(r#"streamgate_rate_limited_total{service="metadata"}"#))
        .unwrap();
    assert_eq!(line.rsplit(' ').next().unwrap(), refused.to_string());

    // One audit entry for the whole flood (per client and service per audit interval).
    let audit_url = server.url("/api/v1/audit?action=rate_limit.exceeded");
    let entries = poll(
        Duration::from_secs(10),
        "the flood's audit entry",
        async || {
            let body: Value = server
                .client
                .get(&audit_url)
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let items = body["items"].as_array().unwrap().clone();
            (!items.is_empty()).then_some(items)
        },
    )
    .await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["actor"], "ip:127.0.0.2");
    assert_eq!(entries[0]["target"], "metadata");
    assert_eq!(entries[0]["outcome"], "denied");
    assert_eq!(entries[0]["detail"], "GET /api/v1/media");

    // The refusal is in the log ring, inside the refused request's trace. Admins only.
    let logs_url = server.url("/api/v1/monitor/logs?level=warn&limit=1000");
    assert_eq!(
        server.client.get(&logs_url).send().await.unwrap().status(),
        401
    );
    let logs: Value = server
        .client
        .get(&logs_url)
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let refusal = logs["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            r["message"] == "client went over its rate limit"
                && r["fields"].as_str().unwrap().contains("127.0.0.2")
        })
        .unwrap_or_else(|| panic!("no refusal logged: {logs}"));
    assert_eq!(refusal["level"], "warn");
    assert!(
        flood_traces.contains(refusal["trace_id"].as_str().unwrap()),
        "the log names the refused request's trace: {refusal}"
    );
    assert!(refusal["request_id"].as_str().is_some());
}

/// Behind a trusted proxy the client is the rightmost untrusted X-Forwarded-For hop; from
/// anyone else the header is ignored.
#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let server = TestServer::start_with(|config| {
        config.rate_limit.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        let gateway = config.rate_limit.services.get_mut("gateway").unwrap();
        gateway.capacity = 3;
        gateway.refill_per_second = 1;
    });
    let ready = |client: &reqwest::Client, forwarded: &str| {
        client
            .get(server.url("/ready"))
            .header("x-forwarded-for", forwarded)
            .send()
    };
    let proxy = client_from("127.0.0.1");
    // The first hop is whatever the client claimed; the proxy appended the real one.
    for _ in 0..3 {
        let response = ready(&proxy, "10.9.9.9, 198.51.100.1").await.unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(
        ready(&proxy, "10.9.9.8, 198.51.100.1")
            .await
            .unwrap()
            .status(),
        429,
        "a spoofed leftmost hop does not buy a new bucket"
    );
    assert_eq!(
        ready(&proxy, "198.51.100.2").await.unwrap().status(),
        200,
        "another real client has its own bucket"
    );
    // Not a trusted proxy: its header is ignored and its socket address is the client.
    let direct = client_from("127.0.0.3");
    let statuses: Vec<u16> = futures_util::future::join_all((0..5).map(|i| {
        ready(
            &direct,
            if i % 2 == 0 {
                "203.0.113.1"
            } else {
                "203.0.113.2"
            },
        )
    }))
    .await
    .into_iter()
    .map(|r| r.unwrap().status().as_u16())
    .collect();
    assert!(statuses.contains(&429), "{statuses:?}");
}

/// Request ids are written by the vendored actix-http from the pooled response head
/// (PATCHED.md): every response gets its own, and a response that never passed the middleware
/// (actix's own 400 for a malformed request) must not inherit the previous one.
#[tokio::test]
async fn request_ids_are_unique_uuids_and_never_outlive_their_response() {
    // One worker: the malformed request meets the pool the other responses went back to.
    let server = TestServer::start_with(|config| config.server.workers = 1);
    let request_id = || async {
        let response = server
            .client
            .get(server.url("/ready"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        // A version 4 UUID, lowercase and hyphenated.
        let shape_ok = id.len() == 36
            && id.char_indices().all(|(at, c)| match at {
                8 | 13 | 18 | 23 => c == '-',
                14 => c == '4',
                19 => "89ab".contains(c),
                _ => c.is_ascii_digit() || ('a'..='f').contains(&c),
            });
        assert!(shape_ok, "{id}");
        id
    };
    let mut ids = HashSet::new();
    for _ in 0..50 {
        assert!(ids.insert(request_id().await), "request ids repeat");
    }
    let address = server.base.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    stream
        .write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer)
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 400"), "{answer}");
    assert!(
        !answer.contains("x-request-id"),
        "a stale request id: {answer}"
    );
    // And the next response still gets a fresh one.
    assert!(ids.insert(request_id().await));
}

/// Requests are counted under the pattern of the resource that answered (the pattern it
/// carries as app data): also inside a scope with its own middleware (tus), for a method the
/// resource lacks (405), and as "unmatched" when no resource matched.
#[tokio::test]
async fn requests_are_counted_under_the_route_that_answered() {
    let server = TestServer::start();
    let status = |method: reqwest::Method, path: &'static str| {
        let request = server.client.request(method, server.url(path));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let missing = "/api/v1/media/00000000-0000-4000-8000-000000000000";
    assert_eq!(status(reqwest::Method::GET, missing).await, 404);
    assert_eq!(
        status(reqwest::Method::OPTIONS, "/api/v1/uploads").await,
        204
    );
    assert_eq!(status(reqwest::Method::DELETE, "/health").await, 405);
    assert_eq!(status(reqwest::Method::GET, "/no/such/page").await, 404);
    let text = server.get("/metrics").await.text().await.unwrap();
    let counted = |route: &str, method: &str, code: &str| {
        let labels = [
            format!("route=\"{route}\""),
            format!("method=\"{method}\""),
            format!("status=\"{code}\""),
        ];
        text.lines().any(|line| {
            line.starts_with("streamgate_http_requests_total{")
                && labels.iter().all(|label| line.contains(label.as_str()))
        })
    };
    for (route, method, code) in [
        ("/api/v1/media/{media_id}", "GET", "404"),
        ("/api/v1/uploads", "OPTIONS", "204"),
        ("/health", "DELETE", "405"),
        ("unmatched", "GET", "404"),
    ] {
        assert!(
            counted(route, method, code),
            "{route} {method} {code}: {text}"
        );
    }
}

#[tokio::test]
async fn trace_context_request_ids_and_security_headers_on_every_response() {
    let server = TestServer::start_with(|config| {
        config.http.cors_allowed_origins = vec!["https://player.example".into()];
    });
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = server
        .client
        .get(server.url("/api/v1/monitor/metrics"))
        .header("traceparent", caller)
        .header("origin", "https://player.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    let ours = headers["traceparent"].to_str().unwrap();
    let parts: Vec<&str> = ours.split('-').collect();
    assert_eq!(
        parts[1], "4bf92f3577b34da6a3ce929d0e0e4736",
        "the trace is continued"
    );
    assert_ne!(parts[2], "00f067aa0ba902b7", "with our own span");
    assert!(!headers["x-request-id"].is_empty());
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert!(headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://player.example"
    );
    let summary: Value = response.json().await.unwrap();
    assert!(
        summary["resident_memory_bytes"].as_u64().unwrap() > 0,
        "{summary}"
    );
    assert!(summary["requests_total"].as_u64().is_some());

    // An unknown origin gets no CORS grant; an invalid traceparent is replaced.
    let response = server
        .client
        .get(server.url("/api/v1/nowhere"))
        .header(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        )
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404, "JSON 404 still carries the headers");
    let headers = response.headers();
    assert!(headers.get("access-control-allow-origin").is_none());
    let replaced = headers["traceparent"]
        .to_str()
        .unwrap()
        .split('-')
        .nth(1)
        .unwrap()
        .to_string();
    assert_eq!(replaced.len(), 32);
    assert_ne!(replaced, "00000000000000000000000000000000");
    assert_eq!(headers["x-content-type-options"], "nosniff");

    let (status, traces) = server.get_json("/api/v1/monitor/traces?recent=50").await;
    assert_eq!(status, 200);
    assert!(traces["count"].as_u64().unwrap() >= 2, "{traces}");
    assert!(traces["duration_ms"]["max"].as_f64().unwrap() > 0.0);
    let recent: Vec<&str> = traces["recent"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["trace_id"].as_str())
        .collect();
    assert!(
        recent.contains(&"4bf92f3577b34da6a3ce929d0e0e4736"),
        "{traces}"
    );
    assert!(recent.contains(&replaced.as_str()), "{traces}");

    // No `traceparent` sent: a request id, and no `traceparent` back (not a response header
    // the standard defines; only callers that take part in a trace get ours).
    let response = server.get("/api/v1/monitor/metrics").await;
    assert!(!response.headers()["x-request-id"].is_empty());
    assert!(response.headers().get("traceparent").is_none());

    // Every actor answers the monitor's heartbeat; on a loaded machine the first one of a
    // freshly started actor may still be on its way.
    poll(Duration::from_secs(30), "every actor alive", async || {
        let (status, health) = server.get_json("/api/v1/monitor/health").await;
        assert_eq!(status, 200);
        let all_alive = health["actors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|actor| actor["alive"] == true && actor["last_heartbeat"].as_str().is_some());
        match all_alive {
            true => Ok(()),
            false => Err(health.to_string()),
        }
    })
    .await;
}

fn promtool(args: &[&str]) {
    let output = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool is installed (apt-get install --no-install-recommends prometheus)");
    assert!(
        output.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_rule_file_passes_promtool_check_and_its_unit_tests() {
    let dir = repo_path("config/prometheus");
    let rules = dir.join("streamgate-rules.yml");
    let tests = dir.join("streamgate-rules.test.yml");
    let example = dir.join("prometheus.example.yml");
    promtool(&["check", "rules", rules.to_str().unwrap()]);
    promtool(&["test", "rules", tests.to_str().unwrap()]);
    promtool(&["check", "config", example.to_str().unwrap()]);
    let text = std::fs::read_to_string(&rules).unwrap();
    for alert in [
        "StreamGateHighErrorRate",
        "StreamGateHighLatency",
        "StreamGateHighMemoryUsage",
        "StreamGateHighCpuUsage",
        "StreamGateServiceDown",
    ] {
        assert!(text.contains(&format!("alert: {alert}")), "{alert}");
    }
}

/// Every `expr:` of the rule file, with comparisons turned into `bool` ones so an alert that is
/// not firing still returns a (0) sample: the query proves its metrics exist.
fn rule_queries() -> Vec<String> {
    let text =
        std::fs::read_to_string(repo_path("config/prometheus/streamgate-rules.yml")).unwrap();
    let queries: Vec<String> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("expr:"))
        .map(|expr| {
            let mut query = expr.trim().to_string();
            for op in [" > ", " < ", " >= ", " <= ", " == "] {
                query = query.replace(op, &format!(" {} bool ", op.trim()));
            }
            query
        })
        .collect();
    assert_eq!(queries.len(), 5);
    queries
}

fn dashboard_queries() -> Vec<String> {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path("dashboards/streamgate.json")).unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert_eq!(panels.len(), 10, "the ten panels of SPEC.md");
    panels
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap().iter())
        .map(|target| target["expr"].as_str().unwrap().to_string())
        .collect()
}

/// A Prometheus server process, killed when dropped.
struct Prometheus {
    _child: ChildProcess,
    base: String,
    _dir: tempfile::TempDir,
}

fn start_prometheus(target: SocketAddr) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let rules = repo_path("config/prometheus/streamgate-rules.yml");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: streamgate\n    static_configs:\n      - targets: [\"{target}\"]\n",
            rules.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let child = ChildProcess::spawn(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}")),
        "apt-get install --no-install-recommends prometheus",
    );
    Prometheus {
        _child: child,
        base: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    }
}

async fn instant_query(
    client: &reqwest::Client,
    prometheus: &Prometheus,
    query: &str,
) -> Option<Value> {
    let response = client
        .get(format!("{}/api/v1/query", prometheus.base))
        .query(&[("query", query)])
        .send()
        .await
        .ok()?;
    let body: Value = response.json().await.ok()?;
    assert_eq!(body["status"], "success", "{query}: {body}");
    Some(body["data"]["result"].clone())
}

/// A real Prometheus scrapes the running app; every dashboard panel query and every alert
/// expression must return data: no panel on a metric that does not exist.
#[tokio::test]
async fn prometheus_scrapes_us_and_every_dashboard_and_rule_query_has_data() {
    let server = TestServer::start();
    let target: SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    // Traffic in every service the panels split by, including a streaming route.
    let _ = server
        .get("/api/v1/media/0190e7d0-7c2a-7000-8000-000000000000/hls/master.m3u8")
        .await;
    let _ = server.get("/api/v1/media?limit=1").await;

    let text = server.get("/metrics").await.text().await.unwrap();
    promtool_check_metrics(&text);
    for name in [
        "streamgate_process_cpu_seconds_total",
        "streamgate_process_resident_memory_bytes",
        "streamgate_host_memory_bytes",
        "streamgate_http_connections_active",
        r#"streamgate_cache_requests_total{cache="streaming",result="hit"}"#,
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }

    let prometheus = start_prometheus(target);
    let client = crate::server::client_builder().build().unwrap();
    // 5xx answers in the gateway service while Prometheus scrapes, for the per-service panel.
    let obstacle = break_health(&server).await;
    poll(
        Duration::from_secs(60),
        "prometheus to scrape the app",
        async || {
            let _ = server.get("/api/v1/media?limit=1").await;
            let _ = server.get("/health").await;
            // Three scrapes: every rate() over its window has at least two samples.
            let scraped = instant_query(
                &client,
                &prometheus,
                r#"count_over_time(up{job="streamgate"}[1m])"#,
            )
            .await
            .and_then(|result| result[0]["value"][1].as_str().map(str::to_string))
            .and_then(|count| count.parse::<f64>().ok())
            .unwrap_or(0.0);
            let up = instant_query(&client, &prometheus, r#"up{job="streamgate"}"#)
                .await
                .and_then(|result| result[0]["value"][1].as_str().map(str::to_string));
            match scraped >= 3.0 && up.as_deref() == Some("1") {
                true => Ok(()),
                false => Err(format!("scrapes: {scraped}, up: {up:?}")),
            }
        },
    )
    .await;
    let mut empty = Vec::new();
    for query in dashboard_queries().into_iter().chain(rule_queries()) {
        let result = instant_query(&client, &prometheus, &query).await.unwrap();
        if result.as_array().is_none_or(|r| r.is_empty()) {
            empty.push(query);
        }
    }
    assert!(empty.is_empty(), "queries without data: {empty:#?}");

    // The error-rate panel's per-service series: the failing service shows its share, a
    // healthy one shows 0 rather than no series.
    let per_service = dashboard_queries()
        .into_iter()
        .find(|query| query.contains("sum by (service)") && query.contains("5.."))
        .expect("a per-service error-rate query");
    let rates = poll(
        Duration::from_secs(30),
        "a per-service 5xx share for gateway",
        async || {
            let _ = server.get("/health").await;
            let result = instant_query(&client, &prometheus, &per_service)
                .await
                .unwrap_or_default();
            let rate = |service: &str| {
                result.as_array().and_then(|series| {
                    series
                        .iter()
                        .find(|s| s["metric"]["service"] == service)
                        .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
                })
            };
            match (rate("gateway"), rate("metadata")) {
                (Some(gateway), Some(metadata)) if gateway > 0.0 => Ok((gateway, metadata)),
                _ => Err(result.to_string()),
            }
        },
    )
    .await;
    assert!(rates.0 <= 1.0, "{rates:?}");
    assert_eq!(rates.1, 0.0, "metadata answered no 5xx: {rates:?}");
    std::fs::remove_file(obstacle).unwrap();
}

/// Makes the next `/health` answer 503 (the blob store's probe directory is a file) and
/// returns the obstacle, to be removed again.
async fn break_health(server: &TestServer) -> PathBuf {
    let probe_dir = server.data_dir.join("blobs").join(".health");
    let _ = std::fs::remove_dir_all(&probe_dir);
    std::fs::write(&probe_dir, b"in the way").unwrap();
    poll(
        Duration::from_secs(15),
        "/health to see the broken blob store",
        || async { server.get("/health").await.status() == 503 },
    )
    .await;
    probe_dir
}

/// `/api/v1/monitor/metrics` reports every rate-limit service's answers and their shares;
/// `/api/v1/monitor/traces` the total, average, min and max duration beside the percentiles.
#[tokio::test]
async fn the_json_monitor_has_per_service_rates_and_duration_statistics() {
    let server = TestServer::start();
    let obstacle = break_health(&server).await;
    std::fs::remove_file(obstacle).unwrap();
    assert_eq!(server.get("/api/v1/media?limit=1").await.status(), 200);
    let missing = "/api/v1/media/00000000-0000-4000-8000-000000000000";
    assert_eq!(server.get(missing).await.status(), 404);

    let (status, summary) = server.get_json("/api/v1/monitor/metrics").await;
    assert_eq!(status, 200, "{summary}");
    let services = summary["services"].as_object().unwrap();
    let names: HashSet<&str> = services.keys().map(String::as_str).collect();
    let expected: HashSet<&str> = streamgate_actors::monitor::metric_names::SERVICES
        .into_iter()
        .collect();
    assert_eq!(names, expected, "{summary}");
    let gateway = &services["gateway"];
    assert!(gateway["errors"].as_u64().unwrap() >= 1, "{gateway}");
    let share = |service: &Value, part: &str| {
        service[part].as_f64().unwrap() / service["requests"].as_f64().unwrap()
    };
    assert!((gateway["error_rate"].as_f64().unwrap() - share(gateway, "errors")).abs() < 1e-9);
    let metadata = &services["metadata"];
    assert_eq!(metadata["requests"], 2, "{metadata}");
    assert_eq!(
        (
            &metadata["successes"],
            &metadata["client_errors"],
            &metadata["errors"]
        ),
        (&Value::from(1), &Value::from(1), &Value::from(0)),
        "{metadata}"
    );
    assert_eq!(metadata["success_rate"], 0.5);
    assert_eq!(metadata["client_error_rate"], 0.5);
    assert_eq!(metadata["error_rate"], 0.0);
    assert_eq!(services["upload"]["requests"], 0);
    assert_eq!(services["upload"]["error_rate"], 0.0);

    let (status, traces) = server.get_json("/api/v1/monitor/traces").await;
    assert_eq!(status, 200, "{traces}");
    let duration = &traces["duration_ms"];
    let stat = |name: &str| duration[name].as_f64().unwrap();
    let count = traces["count"].as_f64().unwrap();
    assert!(count >= 4.0, "{traces}");
    assert!(stat("min") > 0.0, "{duration}");
    assert!(
        stat("min") <= stat("avg") && stat("avg") <= stat("max"),
        "{duration}"
    );
    assert!(stat("max") <= stat("total"), "{duration}");
    assert!(
        (stat("avg") * count - stat("total")).abs() < 1e-6 * stat("total").max(1.0),
        "{duration}"
    );
    for percentile in ["p50", "p95", "p99"] {
        assert!(stat(percentile) >= stat("min"), "{duration}");
    }
}

/// `/health` follows the ffmpeg binary on disk at the next sample, removed and back, rather
/// than at a fixed `-version` interval.
#[tokio::test]
async fn health_notices_ffmpeg_going_and_coming_back() {
    let bin = tempfile::tempdir().unwrap();
    let link = bin.path().join("ffmpeg");
    let real = Command::new("sh")
        .args(["-c", "command -v ffmpeg"])
        .output()
        .unwrap();
    let real = PathBuf::from(String::from_utf8(real.stdout).unwrap().trim());
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let path = link.to_str().unwrap().to_string();
    let server = TestServer::start_with(|config| config.transcode.ffmpeg_path = path);
    let ffmpeg_becomes = |wanted: &'static str| {
        let server = &server;
        poll(Duration::from_secs(10), wanted, move || async move {
            let (_, health) = server.get_json("/health").await;
            health["checks"]["ffmpeg"]["status"] == wanted
        })
    };
    ffmpeg_becomes("ok").await;
    std::fs::remove_file(&link).unwrap();
    ffmpeg_becomes("degraded").await;
    std::os::unix::fs::symlink(&real, &link).unwrap();
    ffmpeg_becomes("ok").await;
}
