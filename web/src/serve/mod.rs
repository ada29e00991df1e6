//! The HTTP/1 front every connection starts at.
//!
//! actix-http copies each body chunk into a per-connection write buffer and then into the
//! socket, so a segment costs two copies and, with many viewers, memory per sending
//! connection. The front reads request heads itself: a bodiless `GET`/`HEAD` is handed to the
//! same actix-web app (every middleware, extractor and gate check runs as for any request) and
//! its response written here, a local file body with `sendfile(2)` (no copy, no buffer). Any
//! other request — one with a body, an upgrade, HTTP/1.0, a head we cannot parse — and
//! everything after it on that connection goes to actix-http's own dispatcher, with the bytes
//! already read.
//!
//! Invariant: the front decides only how a response is written, never what it is: every
//! request reaches the app's service, whichever path writes its answer.

mod connection;
mod response;

use std::{fs::File, io, net::TcpListener, rc::Rc, sync::Arc, time::Duration};

use actix_http::{body::MessageBody, HttpService, Request, Response};
use actix_server::ServerBuilder;
use actix_service::{
    fn_factory, fn_service, map_config, IntoServiceFactory, ServiceFactory, ServiceFactoryExt as _,
};
use actix_web::dev::{AppConfig, Extensions};

pub use connection::PrefixedIo;

/// One non-blocking call on `io` that moves at most `want` bytes: `Ok(None)` when the socket
/// was not ready. A short move means the socket is drained (or full): its readiness is forgotten
/// at once, as tokio's own `poll_read` does, rather than found out by one more call that would
/// block. Inside `try_io` what is forgotten is the readiness seen before the call, so bytes or
/// room arriving meanwhile still wake the connection.
fn move_once(
    io: &actix_rt::net::TcpStream,
    interest: tokio::io::Interest,
    want: usize,
    call: impl FnOnce() -> io::Result<usize>,
) -> io::Result<Option<usize>> {
    let mut moved = None;
    let outcome = io.try_io(interest, || {
        let count = call()?;
        moved = Some(count);
        if count > 0 && count < want {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(())
    });
    match (moved, outcome) {
        (Some(count), _) => Ok(Some(count)),
        (None, Err(error)) if error.kind() == io::ErrorKind::WouldBlock => Ok(None),
        (None, Err(error)) => Err(error),
        (None, Ok(())) => Ok(None),
    }
}

/// A loopback connection with small buffers on both ends: a few KiB fill it.
#[cfg(test)]
pub(crate) async fn narrow_connection() -> (tokio::net::TcpStream, actix_rt::net::TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let reader = tokio::net::TcpSocket::new_v4().unwrap();
    reader.set_recv_buffer_size(4096).unwrap();
    let reader = reader
        .connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (writer, _) = listener.accept().unwrap();
    rustix::net::sockopt::set_socket_send_buffer_size(&writer, 4096).unwrap();
    writer.set_nonblocking(true).unwrap();
    (reader, actix_rt::net::TcpStream::from_std(writer).unwrap())
}

/// A response body that is a range of a local file: a connection of the front sends it with
/// `sendfile(2)`; actix's dispatcher ignores it and streams the response's own body, which must
/// hold the same bytes.
#[derive(Debug, Clone)]
pub struct FileBody {
    pub file: Arc<File>,
    pub offset: u64,
    pub len: u64,
}

/// In the extensions of every request the front takes: its response may carry a [`FileBody`]
/// with a [`SentByFront`] body.
#[derive(Debug, Clone, Copy)]
pub struct SendsFiles;

/// The body of a response the front sends from its [`FileBody`]: the size, no bytes. Only a
/// request with [`SendsFiles`] gets one; polled anyway, it fails rather than send nothing.
#[derive(Debug)]
pub struct SentByFront {
    len: u64,
}

impl SentByFront {
    pub fn new(len: u64) -> Self {
        Self { len }
    }
}

impl MessageBody for SentByFront {
    type Error = std::io::Error;

    fn size(&self) -> actix_http::body::BodySize {
        actix_http::body::BodySize::Sized(self.len)
    }

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<bytes::Bytes, Self::Error>>> {
        std::task::Poll::Ready(Some(Err(std::io::Error::other(
            "a body only the connection front sends was polled",
        ))))
    }
}

/// How the front treats connections.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Off: every connection goes straight to actix-http (bodies copied through its buffer).
    pub sendfile: bool,
    /// Counts the body bytes sent with `sendfile`.
    pub sendfile_bytes: prometheus::IntCounter,
    /// Counts responses given up because the client took nothing for `timeouts.send`.
    pub send_timeouts: prometheus::IntCounter,
    pub timeouts: Timeouts,
}

/// Connection timing, as actix's `HttpServer` takes it.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Idle time allowed between two requests; `None` closes after each response.
    pub keep_alive: Option<Duration>,
    /// Time a new connection may take to send its first request; `None` is no limit.
    pub first_request: Option<Duration>,
    /// Time a response may wait for the client to take more of it; `None` is no limit.
    pub send: Option<Duration>,
}

/// Called with each new connection's extensions (e.g. a guard counting open connections).
pub type OnConnect = Arc<dyn Fn(&mut Extensions) + Send + Sync>;

/// Adds a listener whose connections start at the front to `builder`, one app per worker from
/// `app` (as `HttpServer::new` takes it).
pub fn listen<F, I, S, B>(
    builder: ServerBuilder,
    listener: TcpListener,
    settings: Settings,
    on_connect: OnConnect,
    app: F,
) -> std::io::Result<ServerBuilder>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: std::fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    let address = listener.local_addr()?;
    let shutdown = builder.graceful_shutdown_signal();
    builder.listen("streamgate-http", listener, move || {
        let app = app.clone();
        let on_connect = on_connect.clone();
        let shutdown = shutdown.clone();
        let settings = settings.clone();
        fn_factory(move || {
            let timeouts = settings.timeouts;
            let handoff_connect = on_connect.clone();
            let handoff_shutdown = shutdown.clone();
            let mut handoff = HttpService::build()
                .client_request_timeout(timeouts.first_request.unwrap_or(Duration::ZERO))
                .client_disconnect_timeout(Duration::from_secs(1))
                .local_addr(address)
                .graceful_shutdown_signal(move || {
                    let signal = handoff_shutdown.clone();
                    async move { signal.notified().await }
                })
                .on_connect_ext(move |_: &PrefixedIo, extensions| handoff_connect(extensions));
            handoff = match timeouts.keep_alive {
                Some(idle) => handoff.keep_alive(idle),
                None => handoff.keep_alive(actix_http::KeepAlive::Disabled),
            };
            let handoff = handoff.h1(map_config(
                app()
                    .into_factory()
                    .map_err(|error| error.into().error_response()),
                |_| AppConfig::default(),
            ));
            let front = app().into_factory();
            let on_connect = on_connect.clone();
            let shutdown = shutdown.clone();
            let settings = settings.clone();
            async move {
                let handoff = handoff.new_service(()).await?;
                let app = front
                    .new_service(AppConfig::default())
                    .await
                    .map_err(|error| tracing::error!(?error, "the app did not start"))?;
                let shared = Rc::new(connection::Front {
                    app,
                    handoff,
                    settings,
                    on_connect,
                    shutdown,
                });
                Ok::<_, ()>(fn_service(move |io: actix_rt::net::TcpStream| {
                    let shared = Rc::clone(&shared);
                    async move {
                        shared.serve(io).await;
                        Ok::<_, ()>(())
                    }
                }))
            }
        })
    })
}
