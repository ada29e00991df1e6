//! A request's id and the body wrapper that keeps its log scope, for [`super::observe`].
//!
//! No `tracing` span per request (neither `tracing_actix_web::TracingLogger`'s nor our own):
//! an enabled span costs a registry slot, its fields formatted and enter/exit work on every
//! poll, for every request, and was a third of the monitoring overhead in the load bench.
//! Instead the request's ids are the thread's current [`RequestScope`] while its futures and
//! body are polled, and the log layers read them only when something is logged. The method,
//! route, status, client and duration are in the request metrics, the trace stats and the
//! OTLP span.

use std::{
    fmt,
    pin::Pin,
    task::{Context, Poll},
};

use actix_web::{
    body::{BodySize, MessageBody},
    web::Bytes,
};
use pin_project_lite::pin_project;
use streamgate_actors::monitor::traces::{self, RequestScope};

/// The id of one request (a random UUID), in its extensions and in `x-request-id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId(uuid::Uuid);

impl RequestId {
    pub(super) fn generate() -> Self {
        Self(traces::fast_uuid_v4())
    }

    pub fn uuid(&self) -> uuid::Uuid {
        self.0
    }

    /// The hyphenated form, without allocating.
    pub fn encode<'b>(&self, buffer: &'b mut [u8; 36]) -> &'b str {
        self.0.hyphenated().encode_lower(buffer)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

pin_project! {
    /// A response body polled inside its request's scope, so what a streaming body logs names
    /// the request.
    pub struct ScopedBody<B> {
        #[pin]
        body: B,
        scope: Option<RequestScope>,
    }
}

impl<B> ScopedBody<B> {
    pub(super) fn new(body: B, scope: Option<RequestScope>) -> Self {
        Self { body, scope }
    }
}

impl<B: MessageBody> MessageBody for ScopedBody<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.project();
        match *this.scope {
            Some(scope) => traces::in_request(scope, || this.body.poll_next(cx)),
            None => this.body.poll_next(cx),
        }
    }

    fn try_into_bytes(self) -> Result<Bytes, Self>
    where
        Self: Sized,
    {
        let Self { body, scope } = self;
        body.try_into_bytes().map_err(|body| Self { body, scope })
    }
}
