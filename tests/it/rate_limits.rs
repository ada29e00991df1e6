//! Rate limits that cannot be side-stepped: a request draws from the bucket of the route that
//! answers it however its path is spelt, an IPv6 client is its prefix, and the bucket tables
//! stay bounded under an address flood without forgetting the clients that are busy now.

use std::time::Instant;

use serde_json::Value;

use crate::server::TestServer;

/// A path no route takes: a 404 that draws from the gateway bucket, whose answer (unlike
/// `/ready`'s) does not depend on the actors having started.
const NOWHERE: &str = "/nowhere";

/// The value of the `/metrics` line that starts with `series` (name and labels).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .unwrap_or_else(|| panic!("no {series} in {text}"))
        .parse()
        .unwrap()
}

/// Percent-escapes the router decodes reach the login handler, so they take tokens from the
/// auth bucket: once they have emptied it, the plainly spelt request is refused too.
#[tokio::test]
async fn encoded_paths_draw_from_the_bucket_of_the_route_that_answers() {
    const AUTH_CAPACITY: usize = 4;
    let server = TestServer::start_with(|config| {
        let auth = config.rate_limit.services.get_mut("auth").unwrap();
        auth.capacity = AUTH_CAPACITY as u32;
        auth.refill_per_second = 1;
    });
    let post = |path: &str| {
        server
            .client
            .post(server.url(path))
            .json(&serde_json::json!({}))
            .send()
    };
    let disguised = [
        "/api/v1/%61uth/login",
        "/api/v1/%61%75%74%68/%6C%6F%67%69%6E",
        "/api/%76%31/auth/login",
        "/%61pi/v1/au%74h/lo%67in",
    ];
    // Answered by login (not 404) until the auth bucket is empty: the gateway bucket, 20 times
    // larger, would have let every one of these through.
    let mut answered = 0;
    let mut refused = false;
    for path in disguised.iter().cycle().take(AUTH_CAPACITY * 3) {
        let response = post(path).await.unwrap();
        match response.status().as_u16() {
            429 => {
                refused = true;
                break;
            }
            404 => panic!("{path} did not reach the login route"),
            _ => answered += 1,
        }
    }
    assert!(refused, "disguised logins were never refused");
    assert!(answered <= AUTH_CAPACITY, "{answered} answered");

    let plain = post("/api/v1/auth/login").await.unwrap();
    assert_eq!(
        plain.status(),
        429,
        "the plain path shares the emptied bucket"
    );
    let retry_after: u64 = plain.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: Value = plain.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited", "{body}");

    // What the router does not decode (`%2F`) or normalise (`//`) routes nowhere: a 404 from
    // the gateway bucket, not a way into the login handler.
    for path in ["/api/v1/auth%2Flogin", "//api/v1/auth/login"] {
        assert_eq!(post(path).await.unwrap().status(), 404, "{path}");
    }

    // The metrics agree: the login route's requests are all labelled auth, and only auth
    // refused anything.
    let text = server.get("/metrics").await.text().await.unwrap();
    let login_lines: Vec<&str> = text
        .lines()
        .filter(|line| {
            line.starts_with("streamgate_http_requests_total{")
                && line.contains(r#"route="/api/v1/auth/login""#)
        })
        .collect();
    assert!(!login_lines.is_empty(), "{text}");
    assert!(
        login_lines
            .iter()
            .all(|line| line.contains(r#"service="auth""#)),
        "{login_lines:?}"
    );
    // Refusals are counted too, by the route's pattern where the raw path matches one.
    let routed_to_login: f64 = login_lines
        .iter()
        .filter(|line| !line.contains(r#"status="429""#))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(routed_to_login, answered as f64);
    assert!(metric(&text, r#"streamgate_rate_limited_total{service="auth"}"#) >= 2.0);
    assert_eq!(
        metric(&text, r#"streamgate_rate_limited_total{service="gateway"}"#),
        0.0
    );
}

/// IPv6 clients (here behind a trusted IPv6 proxy, the server on `[::1]`) share a bucket per
/// `rate_limit.ipv6_prefix_len` bits; an IPv4-mapped address is its IPv4 address.
#[tokio::test]
async fn ipv6_clients_share_a_bucket_per_prefix() {
    for prefix_len in [64, 128] {
        let server = TestServer::start_on("[::1]:0", |config| {
            config.rate_limit.trusted_proxies = vec!["::1".parse().unwrap()];
            config.rate_limit.ipv6_prefix_len = prefix_len;
            let gateway = config.rate_limit.services.get_mut("gateway").unwrap();
            gateway.capacity = 2;
            gateway.refill_per_second = 1;
        });
        assert!(server.base.starts_with("http://[::1]:"), "{}", server.base);
        let ask = |forwarded: &'static str| {
            let request = server.client.get(server.url(NOWHERE));
            async move {
                request
                    .header("x-forwarded-for", forwarded)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        };
        assert_eq!(ask("2001:db8:aa:bb::1").await, 404);
        assert_eq!(ask("2001:db8:aa:bb:ffff::2").await, 404);
        let third = ask("2001:db8:aa:bb:1234:5678:9abc:def0").await;
        if prefix_len == 64 {
            assert_eq!(third, 429, "one /64, one bucket");
        } else {
            assert_eq!(third, 404, "every address its own bucket");
        }
        assert_eq!(ask("2001:db8:aa:bc::1").await, 404, "another /64");

        assert_eq!(ask("::ffff:198.51.100.7").await, 404);
        assert_eq!(ask("198.51.100.7").await, 404);
        assert_eq!(
            ask("::ffff:198.51.100.7").await,
            429,
            "mapped and plain IPv4 are one client"
        );
    }
}

/// A dual-stack socket sees IPv4 peers as IPv4-mapped IPv6 addresses: they are still the IPv4
/// proxy listed in `trusted_proxies` (whose X-Forwarded-For is then believed).
#[tokio::test]
async fn an_ipv4_mapped_peer_is_its_ipv4_address() {
    let server = TestServer::start_on("[::ffff:127.0.0.1]:0", |config| {
        config.rate_limit.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        let gateway = config.rate_limit.services.get_mut("gateway").unwrap();
        gateway.capacity = 2;
        gateway.refill_per_second = 1;
    });
    let port = server.base.rsplit(':').next().unwrap();
    let url = format!("http://127.0.0.1:{port}{NOWHERE}");
    let ask = |forwarded: &'static str| {
        let request = server.client.get(&url).header("x-forwarded-for", forwarded);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(ask("198.51.100.1").await, 404);
    assert_eq!(ask("198.51.100.1").await, 404);
    assert_eq!(ask("198.51.100.1").await, 429);
    assert_eq!(
        ask("198.51.100.2").await,
        404,
        "the proxy's hop is believed: another client, another bucket"
    );
}

/// With room for a handful of clients per service, a stream of new addresses evicts the least
/// recently seen buckets (counted in /metrics), never the one of a client that keeps asking:
/// it stays refused.
#[tokio::test]
async fn a_full_bucket_table_evicts_the_oldest_and_keeps_limiting_busy_clients() {
    const ROOM: usize = 4;
    const NEWCOMERS: usize = 20;
    let server = TestServer::start_with(|config| {
        config.rate_limit.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        config.rate_limit.max_tracked_clients = ROOM;
        // No sweep during the test: every bucket that goes is the cap's doing.
        config.rate_limit.cleanup_interval_s = 3600;
        let gateway = config.rate_limit.services.get_mut("gateway").unwrap();
        gateway.capacity = 2;
        gateway.refill_per_second = 1;
    });
    let ask = |forwarded: String| {
        let request = server
            .client
            .get(server.url(NOWHERE))
            .header("x-forwarded-for", forwarded);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let busy = || ask("198.51.100.1".to_string());
    let drained = Instant::now();
    assert_eq!(busy().await, 404);
    assert_eq!(busy().await, 404);
    let mut busy_answered = 0;
    for n in 0..NEWCOMERS {
        if busy().await != 429 {
            busy_answered += 1;
        }
        assert_eq!(ask(format!("203.0.113.{n}")).await, 404);
    }
    // One token a second at most; an evicted bucket would have come back full every round.
    let elapsed = drained.elapsed().as_secs() as usize;
    assert!(
        busy_answered <= elapsed,
        "the busy client got {busy_answered} answers in {elapsed} s"
    );

    let text = server.get("/metrics").await.text().await.unwrap();
    // The busy client and the newcomers; every one past the room pushed one bucket out.
    assert_eq!(
        metric(
            &text,
            r#"streamgate_rate_limit_evictions_total{service="gateway"}"#
        ),
        (1 + NEWCOMERS - ROOM) as f64
    );
    assert_eq!(
        metric(
            &text,
            r#"streamgate_rate_limit_evictions_total{service="auth"}"#
        ),
        0.0
    );
}

/// A 429 keeps the connection: the refused request's small body is read, so the client (a
/// player that went over, or a flood) is not handed a new connection to open for every refusal.
#[tokio::test]
async fn a_refused_request_keeps_its_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_with(|config| {
        let auth = config.rate_limit.services.get_mut("auth").unwrap();
        auth.capacity = 1;
        auth.refill_per_second = 1;
    });
    let address = server.base.trim_start_matches("http://").to_string();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let body = r#"{"message":"not a siwe message","signature":"0x00"}"#;
    let request = format!(
        "POST /api/v1/auth/login HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut statuses = Vec::new();
    for _ in 0..3 {
        socket.write_all(request.as_bytes()).await.unwrap();
        // One whole response: the head, then as many bytes as its Content-Length says.
        let mut received = Vec::new();
        let (head_end, length) = loop {
            let mut chunk = [0u8; 4096];
            let read = socket.read(&mut chunk).await.unwrap();
            assert!(
                read > 0,
                "the server closed the connection after {statuses:?}"
            );
            received.extend_from_slice(&chunk[..read]);
            if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&received[..end]).to_lowercase();
                assert!(!head.contains("connection: close"), "{head}");
                let length = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .map_or(0, |value| value.trim().parse::<usize>().unwrap());
                break (end + 4, length);
            }
        };
        while received.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            let read = socket.read(&mut chunk).await.unwrap();
            assert!(read > 0);
            received.extend_from_slice(&chunk[..read]);
        }
        let status = String::from_utf8_lossy(&received[9..12]).to_string();
        statuses.push(status);
    }
    // The first is the login's own refusal; the rest are 429s on the same connection.
    assert_ne!(statuses[0], "429", "{statuses:?}");
    assert_eq!(&statuses[1..], ["429", "429"], "{statuses:?}");
}
