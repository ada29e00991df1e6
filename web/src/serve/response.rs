//! Writing an app's response on a front connection: the head as actix-http writes it, then the
//! body — a [`FileBody`] straight from the page cache with `sendfile(2)`, anything else chunk
//! by chunk as the body yields it.

use std::{
    fs::File,
    io,
    io::Write as _,
    ops::Deref,
    os::fd::{AsFd, BorrowedFd},
    time::{Duration, SystemTime},
};

use actix_http::{
    body::{BodySize, BoxBody, MessageBody},
    header, Response, StatusCode,
};
use actix_rt::net::TcpStream;
use bytes::{BufMut, Bytes, BytesMut};
use prometheus::IntCounter;
use rustix::net::SendFlags;
use tokio::io::Interest;

use super::FileBody;

/// The most one `sendfile` call moves before the connection lets the worker's other
/// connections take a turn (as nginx's `sendfile_max_chunk`).
const SENDFILE_CHUNK: u64 = 2 * 1024 * 1024;
/// A body this small goes out in the same write as the head.
const INLINE_BODY_BYTES: usize = 16 * 1024;

/// A front connection as responses write to it. Waiting for room gives up after `stall`
/// (nginx's `send_timeout`): a viewer that stops reading does not hold its connection, its file
/// and a share of the worker forever.
pub(super) struct Out<'a> {
    io: &'a TcpStream,
    stall: Option<Duration>,
    /// Counts the times `stall` ran out.
    timed_out: &'a IntCounter,
}

impl<'a> Out<'a> {
    pub(super) fn new(
        io: &'a TcpStream,
        stall: Option<Duration>,
        timed_out: &'a IntCounter,
    ) -> Self {
        Self {
            io,
            stall,
            timed_out,
        }
    }

    /// Room to write, or `TimedOut` when none came for `stall`.
    async fn writable(&self) -> io::Result<()> {
        match self.stall {
            Some(stall) => match tokio::time::timeout(stall, self.io.writable()).await {
                Ok(ready) => ready,
                Err(_) => {
                    self.timed_out.inc();
                    Err(io::ErrorKind::TimedOut.into())
                }
            },
            None => self.io.writable().await,
        }
    }
}

impl Deref for Out<'_> {
    type Target = TcpStream;

    fn deref(&self) -> &TcpStream {
        self.io
    }
}

impl AsFd for Out<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.as_fd()
    }
}

/// Writes `response`; for a `HEAD` request (`head_only`) the head alone. Bytes sent from a file
/// are counted in `sendfile_bytes` as they go.
pub(super) async fn write(
    io: &Out<'_>,
    response: Response<BoxBody>,
    head_only: bool,
    keep_alive: bool,
    sendfile_bytes: &IntCounter,
) -> io::Result<()> {
    let status = response.status();
    let bodiless = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let size = response.body().size();
    let file = response.extensions().get::<FileBody>().cloned();
    let out = head(&response, size, keep_alive);
    let (_, body) = response.into_parts();
    if bodiless {
        return write_all(io, &out).await;
    }
    match (size, file) {
        (BodySize::Sized(len), Some(file)) if file.len == len => {
            // Corked, as nginx's `tcp_nopush`: the head and the file leave in full-sized
            // packets, the last when the cork lifts. Uncorked, this no-delay socket sent each
            // piece as `sendfile` queued it: 1.7 times nginx's packets for the same bytes.
            let _ = rustix::net::sockopt::set_tcp_cork(io, true);
            let sent = async {
                write_all(io, &out).await?;
                send_file(io, &file.file, file.offset, len, sendfile_bytes).await
            }
            .await;
            let _ = rustix::net::sockopt::set_tcp_cork(io, false);
            sent
        }
        (BodySize::None, _) => write_all(io, &out).await,
        (BodySize::Sized(len), _) => match body.try_into_bytes() {
            Ok(bytes) => write_with_head(io, out, &bytes).await,
            // A small body behind a middleware's wrapper: gathered after the head, so the
            // answer leaves in one packet as actix-http's would (two cost the client a wakeup).
            Err(body) if len <= INLINE_BODY_BYTES as u64 => {
                let mut out = out;
                gather(body, len, &mut out).await?;
                write_all(io, &out).await
            }
            Err(body) => {
                write_all_more(io, &out).await?;
                stream(io, body, Some(len)).await
            }
        },
        (BodySize::Stream, _) => {
            write_all_more(io, &out).await?;
            stream(io, body, None).await
        }
    }
}

/// 408 and close, for a request head that did not arrive in time.
pub(super) async fn request_timeout(io: &Out<'_>) -> io::Result<()> {
    let mut out = BytesMut::new();
    let _ = write!(
        (&mut out).writer(),
        "HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\ndate: {}\r\n\r\n",
        httpdate::fmt_http_date(SystemTime::now())
    );
    write_all(io, &out).await
}

/// The status line and headers; the framing headers (length, chunking, connection) are ours.
fn head(response: &Response<BoxBody>, size: BodySize, keep_alive: bool) -> BytesMut {
    let status = response.status();
    let mut out = BytesMut::with_capacity(512);
    let _ = write!(
        (&mut out).writer(),
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let keep_length = status == StatusCode::NOT_MODIFIED;
    let mut has_date = false;
    for (name, value) in response.headers() {
        if *name == header::TRANSFER_ENCODING
            || *name == header::CONNECTION
            || (*name == header::CONTENT_LENGTH && !keep_length)
        {
            continue;
        }
        has_date |= *name == header::DATE;
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    if !(status.is_informational() || status == StatusCode::NO_CONTENT || keep_length) {
        match size {
            BodySize::Sized(len) => {
                let _ = write!((&mut out).writer(), "content-length: {len}\r\n");
            }
            BodySize::Stream => out.put_slice(b"transfer-encoding: chunked\r\n"),
            BodySize::None => {}
        }
    }
    if !keep_alive {
        out.put_slice(b"connection: close\r\n");
    }
    if !has_date {
        let _ = write!(
            (&mut out).writer(),
            "date: {}\r\n",
            httpdate::fmt_http_date(SystemTime::now())
        );
    }
    out.put_slice(b"\r\n");
    out
}

/// The head and a whole body in as few writes as possible.
async fn write_with_head(io: &Out<'_>, mut head: BytesMut, body: &Bytes) -> io::Result<()> {
    if body.len() <= INLINE_BODY_BYTES {
        head.put_slice(body);
        return write_all(io, &head).await;
    }
    write_all(io, &head).await?;
    write_all(io, body).await
}

/// Appends all of a body of `len` bytes to `out`.
async fn gather(body: BoxBody, len: u64, out: &mut BytesMut) -> io::Result<()> {
    let mut body = std::pin::pin!(body);
    let end = out.len() + usize::try_from(len).unwrap_or(usize::MAX);
    while let Some(chunk) = std::future::poll_fn(|cx| body.as_mut().poll_next(cx)).await {
        let chunk = chunk.map_err(|error| io::Error::other(error.to_string()))?;
        let room = end.saturating_sub(out.len());
        out.put_slice(&chunk[..chunk.len().min(room)]);
    }
    if out.len() < end {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// A body as it yields chunks: exactly `len` bytes, or chunk-encoded when the length is unknown.
async fn stream(io: &Out<'_>, body: BoxBody, len: Option<u64>) -> io::Result<()> {
    let mut body = std::pin::pin!(body);
    let mut sent = 0u64;
    while let Some(chunk) = std::future::poll_fn(|cx| body.as_mut().poll_next(cx)).await {
        let chunk = chunk.map_err(|error| io::Error::other(error.to_string()))?;
        if chunk.is_empty() {
            continue;
        }
        match len {
            Some(len) => {
                let room = usize::try_from(len - sent).unwrap_or(usize::MAX);
                let part = &chunk[..chunk.len().min(room)];
                write_all(io, part).await?;
                sent += part.len() as u64;
            }
            None => {
                // One packet per chunk: its size line and data wait for the closing CRLF.
                let mut frame = BytesMut::with_capacity(16);
                let _ = write!((&mut frame).writer(), "{:X}\r\n", chunk.len());
                write_all_more(io, &frame).await?;
                write_all_more(io, &chunk).await?;
                write_all(io, b"\r\n").await?;
            }
        }
    }
    match len {
        Some(len) if sent < len => Err(io::ErrorKind::UnexpectedEof.into()),
        Some(_) => Ok(()),
        None => write_all(io, b"0\r\n\r\n").await,
    }
}

/// `len` bytes of `file` from `offset`, page cache to socket.
async fn send_file(
    io: &Out<'_>,
    file: &File,
    mut offset: u64,
    len: u64,
    sent: &IntCounter,
) -> io::Result<()> {
    let end = offset + len;
    while offset < end {
        let count = usize::try_from((end - offset).min(SENDFILE_CHUNK)).unwrap_or(usize::MAX);
        io.writable().await?;
        let moved = super::move_once(io, Interest::WRITABLE, count, || {
            Ok(rustix::fs::sendfile(io, file, Some(&mut offset), count)?)
        })?;
        match moved {
            // The file is shorter than its response said: end the connection, not the framing.
            Some(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Some(moved) => {
                sent.inc_by(moved as u64);
                // After a whole turn the worker's other connections take theirs.
                if moved == count && offset < end {
                    tokio::task::yield_now().await;
                }
            }
            None => {}
        }
    }
    Ok(())
}

async fn write_all(io: &Out<'_>, bytes: &[u8]) -> io::Result<()> {
    write_all_with(io, bytes, SendFlags::empty()).await
}

/// [`write_all`] with more to follow at once.
async fn write_all_more(io: &Out<'_>, bytes: &[u8]) -> io::Result<()> {
    write_all_with(io, bytes, SendFlags::MORE).await
}

async fn write_all_with(io: &Out<'_>, mut bytes: &[u8], flags: SendFlags) -> io::Result<()> {
    while !bytes.is_empty() {
        io.writable().await?;
        let sent = super::move_once(io, Interest::WRITABLE, bytes.len(), || {
            Ok(rustix::net::send(io, bytes, flags | SendFlags::NOSIGNAL)?)
        })?;
        match sent {
            Some(0) => return Err(io::ErrorKind::WriteZero.into()),
            Some(written) => bytes = &bytes[written..],
            None => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::narrow_connection;
    use tokio::io::AsyncReadExt;

    /// A file much larger than the socket's buffers goes out in many short `sendfile` calls,
    /// each woken by room freed after the last one filled the socket.
    #[actix_rt::test]
    async fn a_file_larger_than_the_socket_goes_out_whole_in_short_calls() {
        let content: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&content).unwrap();
        let (mut reader, writer) = narrow_connection().await;
        let sent = IntCounter::new("sent", "bytes").unwrap();
        let len = content.len() as u64;
        let mut received = Vec::new();
        let timed_out = IntCounter::new("timed_out", "sends").unwrap();
        let out = Out::new(&writer, Some(Duration::from_secs(60)), &timed_out);
        let (written, read) = tokio::join!(send_file(&out, &file, 1, len - 1, &sent), async {
            let mut chunk = [0u8; 1024];
            while (received.len() as u64) < len - 1 {
                let n = reader.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                received.extend_from_slice(&chunk[..n]);
            }
            io::Result::Ok(())
        });
        written.unwrap();
        read.unwrap();
        assert_eq!(sent.get(), len - 1);
        assert!(
            received == content[1..],
            "the bytes from the offset, in order"
        );
    }

    /// A reader that stops reading: waiting for room ends in `TimedOut` after the stall, and the
    /// bytes counted are those the socket took.
    #[actix_rt::test]
    async fn a_reader_that_stops_reading_times_the_send_out() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&vec![7u8; 8 * 1024 * 1024]).unwrap();
        let (_reader, writer) = narrow_connection().await;
        let sent = IntCounter::new("sent", "bytes").unwrap();
        let timed_out = IntCounter::new("timed_out", "sends").unwrap();
        let out = Out::new(&writer, Some(Duration::from_millis(200)), &timed_out);
        let error = send_file(&out, &file, 0, 8 * 1024 * 1024, &sent)
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(timed_out.get(), 1, "counted once");
        assert!(
            sent.get() > 0 && sent.get() < 8 * 1024 * 1024,
            "{}",
            sent.get()
        );
    }
}
