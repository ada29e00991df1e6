//! One connection at the front: read a request head, answer it through the app, repeat; hand
//! the connection to actix-http at the first request the front does not take.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use actix_http::{
    body::MessageBody,
    header::{self, HeaderName, HeaderValue},
    Method, Request, Response, Uri, Version,
};
use actix_rt::net::TcpStream;
use actix_server::GracefulShutdownSignal;
use actix_service::Service;
use actix_web::dev::Extensions;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

use super::{response, OnConnect, Settings};
use crate::stall::Stall;

/// A head longer than this goes to actix-http, which answers it 431.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// More header lines than this go to actix-http too (it allows 96).
const MAX_HEADERS: usize = 64;
/// What one read asks for; a typical head fits.
const READ_BYTES: usize = 4096;

/// One worker's front: its instance of the app and of actix-http's HTTP/1 service.
pub(super) struct Front<A, H> {
    pub app: A,
    pub handoff: H,
    pub settings: Settings,
    pub on_connect: OnConnect,
    pub shutdown: GracefulShutdownSignal,
}

/// What the next request on a connection is.
enum Next {
    /// One the front answers: the request, whether it is a `HEAD`, whether the client asked to
    /// close after it, and the length of its head in the buffer.
    Take {
        request: Request,
        head_only: bool,
        close: bool,
        head_len: usize,
    },
    /// One for actix-http: it reads the request again from the buffered bytes.
    HandOff,
    /// The client went away, or sent nothing within the timeout.
    Closed,
    /// A request head begun but not finished within the timeout.
    TimedOut,
}

impl<A, H> Front<A, H>
where
    A: Service<Request>,
    A::Error: Into<actix_web::Error>,
    H: Service<(PrefixedIo, Option<SocketAddr>)>,
{
    pub(super) async fn serve<B>(&self, io: TcpStream)
    where
        A::Response: Into<Response<B>>,
        B: MessageBody + 'static,
    {
        let peer = io.peer_addr().ok();
        let stall = self.settings.timeouts.send;
        let send_timeouts = &self.settings.send_timeouts;
        if !self.settings.sendfile {
            let io = PrefixedIo::new(BytesMut::new(), io, stall, send_timeouts.clone());
            let _ = self.handoff.call((io, peer)).await;
            return;
        }
        // Small responses go out at once; large ones are written in large pieces anyway.
        let _ = io.set_nodelay(true);
        let mut extensions = Extensions::new();
        (self.on_connect)(&mut extensions);
        let mut buf = BytesMut::new();
        let mut first = true;
        loop {
            let timeouts = self.settings.timeouts;
            let wait = if first {
                timeouts.first_request
            } else {
                timeouts.keep_alive
            };
            match self.next(&io, &mut buf, wait, peer).await {
                Next::Take {
                    request,
                    head_only,
                    close,
                    head_len,
                } => {
                    buf.advance(head_len);
                    let keep_alive = timeouts.keep_alive.is_some() && !close;
                    let answer = match self.app.call(request).await {
                        Ok(answer) => answer.into().map_into_boxed_body(),
                        Err(error) => {
                            let error: actix_web::Error = error.into();
                            Response::from(error.error_response()).map_into_boxed_body()
                        }
                    };
                    let keep_alive = keep_alive && answer.head().keep_alive();
                    let written = response::write(
                        &response::Out::new(&io, timeouts.send, send_timeouts),
                        answer,
                        head_only,
                        keep_alive,
                        &self.settings.sendfile_bytes,
                    )
                    .await;
                    if written.is_err() || !keep_alive {
                        return;
                    }
                    if buf.is_empty() {
                        // An idle connection holds no buffer.
                        buf = BytesMut::new();
                    }
                }
                Next::HandOff => break,
                Next::Closed => return,
                Next::TimedOut => {
                    let _ = response::request_timeout(&response::Out::new(
                        &io,
                        timeouts.send,
                        send_timeouts,
                    ))
                    .await;
                    return;
                }
            }
            first = false;
        }
        // actix-http counts the connection from here on.
        drop(extensions);
        let _ = self
            .handoff
            .call((PrefixedIo::new(buf, io, stall, send_timeouts.clone()), peer))
            .await;
    }

    /// Reads until `buf` holds a whole request head, then decides who answers it.
    async fn next(
        &self,
        io: &TcpStream,
        buf: &mut BytesMut,
        wait: Option<Duration>,
        peer: Option<SocketAddr>,
    ) -> Next {
        let deadline = wait.map(|wait| tokio::time::Instant::now() + wait);
        loop {
            if !buf.is_empty() {
                match take(buf, peer) {
                    Some(next) => return next,
                    None if buf.len() >= MAX_HEAD_BYTES => return Next::HandOff,
                    None => {}
                }
            }
            let idle = buf.is_empty();
            let ready = async {
                match deadline {
                    Some(deadline) => tokio::time::timeout_at(deadline, io.readable())
                        .await
                        .map_err(|_| ()),
                    None => Ok(io.readable().await),
                }
            };
            tokio::select! {
                ready = ready => match ready {
                    Err(()) => return timed_out(buf),
                    Ok(Err(_)) => return Next::Closed,
                    Ok(Ok(())) => {}
                },
                // Only an idle connection closes at shutdown; a request on its way is answered.
                _ = self.shutdown.notified(), if idle => return Next::Closed,
            }
            buf.reserve(READ_BYTES);
            let room = buf.capacity() - buf.len();
            match super::move_once(io, Interest::READABLE, room, || io.try_read_buf(buf)) {
                Ok(Some(0)) | Err(_) => return Next::Closed,
                Ok(_) => {}
            }
        }
    }
}

/// A connection that sent nothing within its timeout just closes (as nginx does); a head that
/// never completes is answered 408.
fn timed_out(buf: &BytesMut) -> Next {
    if buf.is_empty() {
        Next::Closed
    } else {
        Next::TimedOut
    }
}

/// The request at the start of `buf` if its head is complete: `Take` for a bodiless HTTP/1.1
/// `GET` or `HEAD`, `HandOff` for anything else; `None` while the head is incomplete.
fn take(buf: &BytesMut, peer: Option<SocketAddr>) -> Option<Next> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return None,
        Err(_) => return Some(Next::HandOff),
    };
    Some(
        request(&parsed, peer).map_or(Next::HandOff, |(request, close)| Next::Take {
            head_only: request.head().method == Method::HEAD,
            request,
            close,
            head_len,
        }),
    )
}

/// The actix request for a parsed head the front answers, and whether the client asked to
/// close; `None` for a request actix-http must handle (a body, an upgrade, an expectation).
fn request(
    parsed: &httparse::Request<'_, '_>,
    peer: Option<SocketAddr>,
) -> Option<(Request, bool)> {
    let method = match parsed.method? {
        "GET" => Method::GET,
        "HEAD" => Method::HEAD,
        _ => return None,
    };
    if parsed.version? != 1 {
        return None;
    }
    let uri = Uri::try_from(parsed.path?).ok()?;
    let mut request = Request::new();
    actix_web::HttpMessage::extensions_mut(&request).insert(super::SendsFiles);
    let head = request.head_mut();
    head.method = method;
    head.uri = uri;
    head.version = Version::HTTP_11;
    head.peer_addr = peer;
    let mut close = false;
    for line in parsed.headers.iter() {
        let name = HeaderName::from_bytes(line.name.as_bytes()).ok()?;
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
            || name == header::EXPECT
        {
            return None;
        }
        if name == header::CONNECTION {
            let value = std::str::from_utf8(line.value).ok()?.to_ascii_lowercase();
            if value.contains("upgrade") {
                return None;
            }
            close |= value.split(',').any(|option| option.trim() == "close");
        }
        head.headers
            .append(name, HeaderValue::from_bytes(line.value).ok()?);
    }
    Some((request, close))
}

/// A connection handed to actix-http: the bytes the front already read, then the socket.
/// actix-http has no limit on how long a response waits for the client to take it, so a write
/// that finds no room for `stall` fails here (`server.send_timeout_s`, as on the front).
pub struct PrefixedIo {
    prefix: BytesMut,
    io: TcpStream,
    /// Counts from the first write that finds no room; any write that gets through resets it.
    stall: Stall,
}

impl PrefixedIo {
    fn new(
        prefix: BytesMut,
        io: TcpStream,
        stall: Option<Duration>,
        timed_out: prometheus::IntCounter,
    ) -> Self {
        Self {
            prefix,
            io,
            stall: Stall::new(stall, timed_out),
        }
    }

    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Pending => self
                .stall
                .poll_expired(cx)
                .map(|()| Err(io::ErrorKind::TimedOut.into())),
            done => {
                self.stall.progressed();
                done
            }
        }
    }
}

impl AsyncRead for PrefixedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let len = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..len]);
        self.prefix.advance(len);
        if self.prefix.is_empty() {
            self.prefix = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for PrefixedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(cx, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::narrow_connection;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// `writer` as actix-http gets it, giving up after `stall_ms`, and its timeout count.
    fn handed_off(writer: TcpStream, stall_ms: u64) -> (PrefixedIo, prometheus::IntCounter) {
        let timed_out = prometheus::IntCounter::new("timed_out", "sends").unwrap();
        let stall = Some(Duration::from_millis(stall_ms));
        let io = PrefixedIo::new(BytesMut::new(), writer, stall, timed_out.clone());
        (io, timed_out)
    }

    /// A handed-off connection whose client stops reading: the write fails with `TimedOut`
    /// once no room came for the stall, as a front answer would.
    #[actix_rt::test]
    async fn a_handed_off_write_that_finds_no_room_times_out() {
        let (_reader, writer) = narrow_connection().await;
        let (mut io, timed_out) = handed_off(writer, 200);
        let bytes = vec![7u8; 8 * 1024 * 1024];
        let write = io.write_all(&bytes);
        let error = tokio::time::timeout(Duration::from_secs(30), write)
            .await
            .expect("the write gave up on its own")
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(timed_out.get(), 1, "counted once");
    }

    /// A slow reader that keeps taking bytes is never cut off: the stall counts from the last
    /// write that got through, not from the first that waited.
    #[actix_rt::test]
    async fn a_slow_reader_that_keeps_reading_gets_everything() {
        let (mut reader, writer) = narrow_connection().await;
        let (mut io, timed_out) = handed_off(writer, 300);
        let len = 512 * 1024;
        let (written, read) = tokio::join!(
            async {
                io.write_all(&vec![7u8; len]).await?;
                io.shutdown().await
            },
            async {
                let (mut total, mut chunk) = (0, vec![0u8; 64 * 1024]);
                loop {
                    // Slower than the writer, well within the stall.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    match reader.read(&mut chunk).await? {
                        0 => return io::Result::Ok(total),
                        n => total += n,
                    }
                }
            }
        );
        written.unwrap();
        assert_eq!(read.unwrap(), len);
        assert_eq!(timed_out.get(), 0);
    }

    fn next(head: &str) -> Option<Next> {
        take(&BytesMut::from(head.as_bytes()), None)
    }

    fn taken(head: &str) -> (Request, bool, bool, usize) {
        match next(head) {
            Some(Next::Take {
                request,
                head_only,
                close,
                head_len,
            }) => (request, head_only, close, head_len),
            _ => panic!("not taken: {head:?}"),
        }
    }

    #[test]
    fn bodiless_http11_gets_and_heads_are_taken_with_their_headers() {
        let head = "GET /a/b?c=d HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\n\r\nGET /next";
        let (request, head_only, close, head_len) = taken(head);
        assert_eq!(request.head().uri, "/a/b?c=d");
        assert_eq!(request.head().headers.get("range").unwrap(), "bytes=0-1");
        assert!(!head_only && !close);
        assert_eq!(&head[head_len..], "GET /next", "the pipelined rest stays");
        let (_, head_only, close, _) =
            taken("HEAD / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n");
        assert!(head_only && close);
    }

    #[test]
    fn anything_else_goes_to_actix_and_a_partial_head_waits() {
        for head in [
            "POST / HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}",
            "GET / HTTP/1.0\r\n\r\n",
            "GET / HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello",
            "GET / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            "GET /ws HTTP/1.1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
            "OPTIONS / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nbad header\r\n\r\n",
        ] {
            assert!(matches!(next(head), Some(Next::HandOff)), "{head:?}");
        }
        assert!(next("GET / HTTP/1.1\r\nhost: x\r\n").is_none());
    }
}
