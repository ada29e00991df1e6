//! Response head type and caching pool.

use std::{cell::RefCell, ops};

use crate::{
    header::{HeaderMap, HeaderName},
    message::Flags,
    ConnectionType, StatusCode, Version,
};

thread_local! {
    static RESPONSE_POOL: BoxedResponsePool = BoxedResponsePool::create();
}

#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub version: Version,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub reason: Option<&'static str>,
    pub(crate) flags: Flags,
    /// StreamGate patch: see [`ResponseHead::set_inline_header`].
    pub(crate) inline_header: InlineHeader,
}

/// StreamGate patch: the longest value [`ResponseHead::set_inline_header`] takes.
pub const INLINE_HEADER_VALUE_MAX: usize = 64;

/// StreamGate patch: room for the name beside a value of the longest length.
const INLINE_HEADER_NAME_MAX: usize = 32;

/// StreamGate patch: a header kept in the head itself as its whole line (`name: value\r\n`),
/// which the encoder copies in one piece. The storage stays with a pooled head: unset, only
/// `len` is zero, and `line` still starts with `name` and `": "`, so setting the same header
/// again copies only the value.
#[derive(Debug, Clone)]
pub(crate) struct InlineHeader {
    /// The name `line` starts with.
    name: Option<&'static HeaderName>,
    /// Bytes of `line` in use; zero when unset.
    len: u8,
    line: [u8; INLINE_HEADER_NAME_MAX + INLINE_HEADER_VALUE_MAX + 4],
}

impl InlineHeader {
    const UNSET: Self = Self {
        name: None,
        len: 0,
        line: [0; INLINE_HEADER_NAME_MAX + INLINE_HEADER_VALUE_MAX + 4],
    };

    /// The whole line and the length of its name, when set.
    pub(crate) fn line(&self) -> Option<(&[u8], usize)> {
        let name = self.name.filter(|_| self.len != 0)?;
        Some((self.line.get(..usize::from(self.len))?, name.as_str().len()))
    }

    pub(crate) fn unset(&mut self) {
        self.len = 0;
    }
}

/// Whether `value` may be a header value: no control character but tab, no DEL. Eight bytes a
/// step; a flagged word is checked byte by byte (it may only hold a tab).
#[inline]
fn is_header_text(value: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let byte_ok = |byte: &u8| (*byte >= 0x20 && *byte != 0x7f) || *byte == b'\t';
    let mut chunks = value.chunks_exact(8);
    for chunk in &mut chunks {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(chunk);
        let word = u64::from_ne_bytes(bytes);
        // Some byte below 0x20 (bytes with the high bit set are allowed obs-text) ...
        let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
        // ... or equal to 0x7f.
        let del = word ^ (ONES * 0x7f);
        let is_del = del.wrapping_sub(ONES) & !del & HIGHS;
        if below_space | is_del != 0 && !chunk.iter().all(byte_ok) {
            return false;
        }
    }
    chunks.remainder().iter().all(byte_ok)
}

impl ResponseHead {
    /// Create new instance of `ResponseHead` type
    #[inline]
    pub fn new(status: StatusCode) -> ResponseHead {
        ResponseHead {
            status,
            version: Version::HTTP_11,
            headers: HeaderMap::with_capacity(12),
            reason: None,
            flags: Flags::empty(),
            inline_header: InlineHeader::UNSET,
        }
    }

    /// StreamGate patch. Sets one header that the HTTP/1 encoder writes after those in
    /// [`headers`](Self::headers), from a copy of `value` kept inline in this head: no map
    /// insert, no allocation, no reference-counted buffer. Meant for a header generated for
    /// every response (a request id); it is not visible through `headers()`, and the map should
    /// not hold the same name. A second call replaces the first.
    ///
    /// Returns `false`, leaving the head without an inline header, when `value` is longer than
    /// [`INLINE_HEADER_VALUE_MAX`] bytes or holds a byte a header value may not (a control
    /// character other than tab, or DEL), or when name and value together pass 96 bytes.
    ///
    /// Inlined, so a value of fixed length (an id) is checked and copied in a few fixed-size
    /// steps.
    #[inline]
    pub fn set_inline_header(&mut self, name: &'static HeaderName, value: &[u8]) -> bool {
        if value.len() > INLINE_HEADER_VALUE_MAX || !is_header_text(value) {
            self.inline_header.unset();
            return false;
        }
        let inline = &mut self.inline_header;
        let name_len = name.as_str().len();
        if !inline.name.is_some_and(|line_name| std::ptr::eq(line_name, name)) {
            let name_text = name.as_str().as_bytes();
            let Some(room) = inline.line.get_mut(..name_len + 2) else {
                inline.unset();
                return false;
            };
            room[..name_len].copy_from_slice(name_text);
            room[name_len..].copy_from_slice(b": ");
            inline.name = Some(name);
        }
        let value_at = name_len + 2;
        let Some(room) = inline.line.get_mut(value_at..value_at + value.len() + 2) else {
            inline.unset();
            return false;
        };
        room[..value.len()].copy_from_slice(value);
        room[value.len()..].copy_from_slice(b"\r\n");
        inline.len = (value_at + value.len() + 2) as u8;
        true
    }

    /// StreamGate patch: the header set by [`set_inline_header`](Self::set_inline_header).
    pub fn inline_header(&self) -> Option<(&HeaderName, &[u8])> {
        let (line, name_len) = self.inline_header.line()?;
        let value = line.get(name_len + 2..line.len().checked_sub(2)?)?;
        self.inline_header.name.map(|name| (name, value))
    }

    /// Read the message headers.
    #[inline]
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Mutable reference to the message headers.
    #[inline]
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        &mut self.headers
    }

    /// Sets the flag that controls whether to send headers formatted as Camel-Case.
    ///
    /// Only applicable to HTTP/1.x responses; HTTP/2 header names are always lowercase.
    #[inline]
    pub fn set_camel_case_headers(&mut self, camel_case: bool) {
        if camel_case {
            self.flags.insert(Flags::CAMEL_CASE);
        } else {
            self.flags.remove(Flags::CAMEL_CASE);
        }
    }

    /// Set connection type of the message
    #[inline]
    pub fn set_connection_type(&mut self, ctype: ConnectionType) {
        match ctype {
            ConnectionType::Close => self.flags.insert(Flags::CLOSE),
            ConnectionType::KeepAlive => self.flags.insert(Flags::KEEP_ALIVE),
            ConnectionType::Upgrade => self.flags.insert(Flags::UPGRADE),
        }
    }

    #[inline]
    pub fn connection_type(&self) -> ConnectionType {
        if self.flags.contains(Flags::CLOSE) {
            ConnectionType::Close
        } else if self.flags.contains(Flags::KEEP_ALIVE) {
            ConnectionType::KeepAlive
        } else if self.flags.contains(Flags::UPGRADE) {
            ConnectionType::Upgrade
        } else if self.version < Version::HTTP_11 {
            ConnectionType::Close
        } else {
            ConnectionType::KeepAlive
        }
    }

    /// Check if keep-alive is enabled
    #[inline]
    pub fn keep_alive(&self) -> bool {
        self.connection_type() == ConnectionType::KeepAlive
    }

    /// Check upgrade status of this message
    #[inline]
    pub fn upgrade(&self) -> bool {
        self.connection_type() == ConnectionType::Upgrade
    }

    /// Get custom reason for the response
    #[inline]
    pub fn reason(&self) -> &str {
        self.reason.unwrap_or_else(|| {
            self.status
                .canonical_reason()
                .unwrap_or("<unknown status code>")
        })
    }

    #[inline]
    pub(crate) fn conn_type(&self) -> Option<ConnectionType> {
        if self.flags.contains(Flags::CLOSE) {
            Some(ConnectionType::Close)
        } else if self.flags.contains(Flags::KEEP_ALIVE) {
            Some(ConnectionType::KeepAlive)
        } else if self.flags.contains(Flags::UPGRADE) {
            Some(ConnectionType::Upgrade)
        } else {
            None
        }
    }

    /// Get response body chunking state
    #[inline]
    pub fn chunked(&self) -> bool {
        !self.flags.contains(Flags::NO_CHUNKING)
    }

    /// Set no chunking for payload
    #[inline]
    pub fn no_chunking(&mut self, val: bool) {
        if val {
            self.flags.insert(Flags::NO_CHUNKING);
        } else {
            self.flags.remove(Flags::NO_CHUNKING);
        }
    }
}

pub(crate) struct BoxedResponseHead {
    head: Option<Box<ResponseHead>>,
}

impl BoxedResponseHead {
    /// Get new message from the pool of objects
    pub fn new(status: StatusCode) -> Self {
        RESPONSE_POOL.with(|p| p.get_message(status))
    }
}

impl ops::Deref for BoxedResponseHead {
    type Target = ResponseHead;

    fn deref(&self) -> &Self::Target {
        self.head.as_ref().unwrap()
    }
}

impl ops::DerefMut for BoxedResponseHead {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.head.as_mut().unwrap()
    }
}

impl Drop for BoxedResponseHead {
    fn drop(&mut self) {
        if let Some(head) = self.head.take() {
            RESPONSE_POOL.with(move |p| p.release(head))
        }
    }
}

/// Response head object pool.
#[doc(hidden)]
pub struct BoxedResponsePool(#[allow(clippy::vec_box)] RefCell<Vec<Box<ResponseHead>>>);

impl BoxedResponsePool {
    fn create() -> BoxedResponsePool {
        BoxedResponsePool(RefCell::new(Vec::with_capacity(128)))
    }

    /// Get message from the pool.
    #[inline]
    fn get_message(&self, status: StatusCode) -> BoxedResponseHead {
        if let Some(mut head) = self.0.borrow_mut().pop() {
            head.reason = None;
            head.status = status;
            head.headers.clear();
            head.flags = Flags::empty();
            // StreamGate patch: a pooled head must not carry the previous response's header.
            head.inline_header.unset();
            BoxedResponseHead { head: Some(head) }
        } else {
            BoxedResponseHead {
                head: Some(Box::new(ResponseHead::new(status))),
            }
        }
    }

    /// Release request instance.
    #[inline]
    fn release(&self, msg: Box<ResponseHead>) {
        let pool = &mut self.0.borrow_mut();

        if pool.len() < 128 {
            pool.push(msg);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net,
    };

    use memchr::memmem;

    use crate::{
        h1::H1Service,
        header::{HeaderName, HeaderValue},
        Error, Request, Response, ServiceConfig,
    };

    #[actix_rt::test]
    async fn camel_case_headers() {
        let mut srv = actix_http_test::test_server(|| {
            H1Service::with_config(ServiceConfig::default(), |req: Request| async move {
                let mut res = Response::ok();

                if req.path().contains("camel") {
                    res.head_mut().set_camel_case_headers(true);
                }

                res.headers_mut().insert(
                    HeaderName::from_static("foo-bar"),
                    HeaderValue::from_static("baz"),
                );

                Ok::<_, Error>(res)
            })
            .tcp()
        })
        .await;

        let mut stream = net::TcpStream::connect(srv.addr()).unwrap();
        stream
            .write_all(b"GET /camel HTTP/1.1\r\nHost: localhost\r\nConnection: Close\r\n\r\n")
            .unwrap();
        let mut data = vec![];
        let _ = stream.read_to_end(&mut data).unwrap();
        assert_eq!(&data[..17], b"HTTP/1.1 200 OK\r\n");
        assert!(memmem::find(&data, b"Foo-Bar").is_some());
        assert!(memmem::find(&data, b"foo-bar").is_none());
        assert!(memmem::find(&data, b"Date").is_some());
        assert!(memmem::find(&data, b"date").is_none());
        assert!(memmem::find(&data, b"Content-Length").is_some());
        assert!(memmem::find(&data, b"content-length").is_none());

        let mut stream = net::TcpStream::connect(srv.addr()).unwrap();
        stream
            .write_all(b"GET /lower HTTP/1.1\r\nHost: localhost\r\nConnection: Close\r\n\r\n")
            .unwrap();
        let mut data = vec![];
        let _ = stream.read_to_end(&mut data).unwrap();
        assert_eq!(&data[..17], b"HTTP/1.1 200 OK\r\n");
        assert!(memmem::find(&data, b"Foo-Bar").is_none());
        assert!(memmem::find(&data, b"foo-bar").is_some());
        assert!(memmem::find(&data, b"Date").is_none());
        assert!(memmem::find(&data, b"date").is_some());
        assert!(memmem::find(&data, b"Content-Length").is_none());
        assert!(memmem::find(&data, b"content-length").is_some());

        srv.stop().await;
    }
}
