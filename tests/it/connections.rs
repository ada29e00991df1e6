//! Connections as HLS players and browsers use them: opened ahead of time, then one request
//! every segment duration over the same connection.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::server::{read_request, TestServer};

/// Longer than a typical 6 s segment and than actix's 5 s defaults for both timeouts.
const SEGMENT_GAP: Duration = Duration::from_millis(6500);

/// The waits are the behaviour under test (idle time on a held connection), not
/// synchronisation: nothing else is awaited.
#[actix_rt::test]
async fn a_connection_opened_early_and_idle_between_segments_keeps_being_served() {
    let server = TestServer::start();
    let address = server.base.trim_start_matches("http://").to_string();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    for round in 0..2 {
        // Round 0: opened ahead of time, as a browser does (no 408 for the wait before the
        // first request). Round 1: idle between two segments on a kept-alive connection.
        tokio::time::sleep(SEGMENT_GAP).await;
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
