//! Connections as HLS players and browsers use them: opened ahead of time, then one request
//! every segment duration over the same connection.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::server::{read_request, TestServer};

/// Longer than a typical 6 s segment and than actix's 5 s defaults for both timeouts.
const SEGMENT_GAP: Duration = Duration::from_millis(6500);

/// Each gap waits on the connection itself: the server closing it (or sending anything) ends
/// the wait early and fails the test.
#[actix_rt::test]
async fn a_connection_opened_early_and_idle_between_segments_keeps_being_served() {
    let server = TestServer::start();
    let address = server.base.trim_start_matches("http://").to_string();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    for round in 0..2 {
        // Round 0: opened ahead of time, as a browser does (no 408 for the wait before the
        // first request). Round 1: idle between two segments on a kept-alive connection.
        let idle = tokio::time::timeout(SEGMENT_GAP, socket.readable()).await;
        assert!(
            idle.is_err(),
            "round {round}: the server acted on an idle connection"
        );
        socket
            .write_all(format!("GET /health HTTP/1.1\r\nhost: {address}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let (head, body) = read_request(&mut socket)
            .await
            .unwrap_or_else(|| panic!("round {round}: the server closed the connection"));
        assert!(head.starts_with("http/1.1 200"), "round {round}: {head}");
        assert!(!head.contains("connection: close"), "round {round}: {head}");
        assert!(!body.is_empty());
    }
}

/// One response off a raw connection, leaving any pipelined bytes after it in `pending`:
/// the lower-cased head and the body (none for a `HEAD`).
async fn next_response(
    socket: &mut tokio::net::TcpStream,
    pending: &mut Vec<u8>,
    head_only: bool,
) -> (String, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let length = if head_only { 0 } else { length };
            if pending.len() >= end + 4 + length {
                let body = pending[end + 4..end + 4 + length].to_vec();
                pending.drain(..end + 4 + length);
                return (head, body);
            }
        }
        let mut chunk = vec![0u8; 256 * 1024];
        let read = socket.read(&mut chunk).await.unwrap();
        assert!(read > 0, "the server closed the connection");
        pending.extend_from_slice(&chunk[..read]);
    }
}

/// Segments go out with sendfile (the counter moves by exactly the bytes sent) over a
/// kept-alive connection with pipelined plain and ranged GETs and a HEAD, then a conditional
/// GET; a request with a body hands the connection to actix, which goes on serving the same
/// bytes, copied, and answering HEAD.
#[actix_rt::test]
async fn segments_go_out_with_sendfile_until_a_request_with_a_body_hands_the_connection_over() {
    let server = TestServer::start();
    let scratch = tempfile::tempdir().unwrap();
    let clip = crate::server::make_clip(scratch.path(), "clip.mp4", "320x240", 2);
    let (status, receipt) = server
        .upload(std::fs::read(&clip).unwrap(), "clip.mp4", None)
        .await;
    assert_eq!(status, 201, "{receipt}");
    let media_id = receipt["media_id"].as_str().unwrap().to_string();
    server
        .wait_for_media(&media_id, Duration::from_secs(120), |m| {
            m["state"] != "processing"
        })
        .await;
    let base = format!("/api/v1/media/{media_id}/hls");
    let master = server.get_text(&format!("{base}/master.m3u8")).await;
    let variant = master.lines().find(|l| l.ends_with(".m3u8")).unwrap();
    let variant_dir = variant.rsplit_once('/').unwrap().0.to_string();
    let playlist = server.get_text(&format!("{base}/{variant}")).await;
    let segment = playlist.lines().find(|l| l.ends_with(".m4s")).unwrap();
    let on_disk = server
        .blob_files(&format!("media/{media_id}"))
        .into_iter()
        .find(|p| p.ends_with(format!("{variant_dir}/{segment}")))
        .unwrap();
    let expected = std::fs::read(on_disk).unwrap();
    let path = format!("{base}/{variant_dir}/{segment}");
    let sent_before =
        crate::auth_abuse::metric(&server, "streamgate_http_sendfile_bytes_total").await;

    let address = server.base.trim_start_matches("http://").to_string();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let mut pending = Vec::new();
    socket
        .write_all(
            format!(
                "GET {path} HTTP/1.1\r\nhost: {address}\r\n\r\n\
                 GET {path} HTTP/1.1\r\nhost: {address}\r\nrange: bytes=10-109\r\n\r\n\
                 HEAD {path} HTTP/1.1\r\nhost: {address}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let (head, body) = next_response(&mut socket, &mut pending, false).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert_eq!(body, expected, "the whole segment, byte for byte");
    let etag = head
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .unwrap()
        .to_string();
    let (head, body) = next_response(&mut socket, &mut pending, false).await;
    assert!(head.starts_with("http/1.1 206"), "{head}");
    assert_eq!(body, expected[10..110]);
    let (head, _) = next_response(&mut socket, &mut pending, true).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}", expected.len())),
        "HEAD tells the size it does not send: {head}"
    );
    socket
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: {address}\r\nif-none-match: {etag}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let (head, body) = next_response(&mut socket, &mut pending, true).await;
    assert!(head.starts_with("http/1.1 304"), "{head}");
    assert!(body.is_empty());
    let sent = crate::auth_abuse::metric(&server, "streamgate_http_sendfile_bytes_total").await;
    assert_eq!(sent - sent_before, (expected.len() + 100) as f64);

    socket
        .write_all(
            format!(
                "POST /api/v1/no-such-thing HTTP/1.1\r\nhost: {address}\r\ncontent-length: 2\r\n\r\n{{}}\
                 GET {path} HTTP/1.1\r\nhost: {address}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let (head, body) = next_response(&mut socket, &mut pending, false).await;
    assert!(head.starts_with("http/1.1 404"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("\"code\""));
    let (head, body) = next_response(&mut socket, &mut pending, false).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, expected, "served by actix after the hand-over");
    // Not pipelined: actix-http's codec keeps one method flag, so a HEAD followed by a request
    // it has already read gets a body.
    for method in ["HEAD", "GET"] {
        let request = format!("{method} {path} HTTP/1.1\r\nhost: {address}\r\n\r\n");
        socket.write_all(request.as_bytes()).await.unwrap();
        let (head, body) = next_response(&mut socket, &mut pending, method == "HEAD").await;
        assert!(head.starts_with("http/1.1 200"), "{method}: {head}");
        assert!(
            head.contains(&format!("content-length: {}", expected.len())),
            "{method}: {head}"
        );
        if method == "GET" {
            assert_eq!(body, expected, "no body went out for the HEAD before");
        }
    }
    assert_eq!(
        crate::auth_abuse::metric(&server, "streamgate_http_sendfile_bytes_total").await,
        sent,
        "actix copies; the front's counter stays"
    );

    // A head arriving in pieces: each short read leaves the socket drained and its readiness
    // forgotten, and the next piece must still wake the connection.
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    socket.set_nodelay(true).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: {address}\r\n\r\n");
    for piece in request.as_bytes().chunks(5) {
        socket.write_all(piece).await.unwrap();
        socket.flush().await.unwrap();
    }
    let answered = tokio::time::timeout(
        Duration::from_secs(30),
        next_response(&mut socket, &mut Vec::new(), false),
    )
    .await
    .expect("a head sent in pieces is answered");
    assert!(answered.0.starts_with("http/1.1 200"), "{}", answered.0);
    assert_eq!(answered.1, expected);
}

/// The listener queues as many connections as `server.listen_backlog` asks (the kernel caps it
/// at `net.core.somaxconn`), not std's 128: a crowd arriving at once is accepted, not retried.
#[actix_rt::test]
async fn the_listen_queue_holds_a_crowd_arriving_at_once() {
    let server = TestServer::start();
    let port = server.base.rsplit(':').next().unwrap().to_string();
    let listing = std::process::Command::new("ss")
        .args(["-Hlnt", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) lists listening sockets");
    let listing = String::from_utf8(listing.stdout).unwrap();
    // LISTEN, Recv-Q (waiting to be accepted), Send-Q (the backlog), local address, peer.
    let backlog: u32 = listing
        .split_whitespace()
        .nth(2)
        .and_then(|field| field.parse().ok())
        .unwrap_or_else(|| panic!("no listener on {port}: {listing:?}"));
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(backlog, 2048.min(somaxconn), "{listing}");
}
