//! A request body that stops arriving ends in an error after `server.body_timeout_s` (nginx's
//! `client_body_timeout`, tusd's network timeout). actix-http waits for body bytes forever, so a
//! client that goes silent mid-upload would hold its connection and, for a tus `PATCH`, the
//! upload's lock: its own resume would be refused until the server restarts. With the limit
//! the handler sees the body end in an error, keeps what arrived and lets go.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use actix_web::{
    dev::{Payload, Service, ServiceRequest, Transform},
    error::PayloadError,
    http::header,
    web::Bytes,
    HttpMessage as _,
};
use futures_util::{
    future::{ready, Ready},
    Stream,
};
use prometheus::IntCounter;

use crate::stall::Stall;

/// Wraps the body of every request that has one in a [`Stalling`] stream.
#[derive(Debug, Clone)]
pub struct BodyStall {
    limit: Option<Duration>,
    timed_out: IntCounter,
}

impl BodyStall {
    /// `None`: bodies may pause for as long as they like. `timed_out` counts the bodies that
    /// went silent for `limit`.
    pub fn new(limit: Option<Duration>, timed_out: IntCounter) -> Self {
        Self { limit, timed_out }
    }
}

impl<S> Transform<S, ServiceRequest> for BodyStall
where
    S: Service<ServiceRequest>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Transform = BodyStallService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(BodyStallService {
            service,
            limit: self.limit,
            timed_out: self.timed_out.clone(),
        }))
    }
}

pub struct BodyStallService<S> {
    service: S,
    limit: Option<Duration>,
    timed_out: IntCounter,
}

impl<S> Service<ServiceRequest> for BodyStallService<S>
where
    S: Service<ServiceRequest>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    actix_web::dev::forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        let has_body = req.headers().contains_key(header::CONTENT_LENGTH)
            || req.headers().contains_key(header::TRANSFER_ENCODING);
        if let (Some(limit), true) = (self.limit, has_body) {
            let body = Stalling::new(req.take_payload(), limit, self.timed_out.clone());
            req.set_payload(Payload::from(
                Box::pin(body) as actix_http::BoxedPayloadStream
            ));
        }
        self.service.call(req)
    }
}

/// Whether `error` is how a [`Stalling`] body ends: no bytes within the limit.
pub fn timed_out(error: &PayloadError) -> bool {
    matches!(error, PayloadError::Io(error) if error.kind() == io::ErrorKind::TimedOut)
}

/// A body that fails with `TimedOut` once a read has waited `limit` for its next bytes.
pub struct Stalling<S> {
    body: S,
    /// Counts from a read that found nothing; every chunk resets it.
    stall: Stall,
}

impl<S> Stalling<S> {
    pub fn new(body: S, limit: Duration, counted: IntCounter) -> Self {
        Self {
            body,
            stall: Stall::new(Some(limit), counted),
        }
    }
}

impl<S> Stream for Stalling<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.stall.expired() {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = Pin::new(&mut this.body).poll_next(cx) {
            this.stall.progressed();
            return Poll::Ready(item);
        }
        let seconds = this.stall.limit().unwrap_or_default().as_secs();
        this.stall.poll_expired(cx).map(|()| {
            Some(Err(PayloadError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no body bytes arrived for {seconds} s"),
            ))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt as _;

    /// A body that sends one chunk and then nothing: the chunk, then `TimedOut`, then the end.
    #[actix_rt::test]
    async fn a_body_that_goes_silent_ends_in_timed_out_after_what_arrived() {
        let (mut sender, body) = actix_http::h1::Payload::create(false);
        sender.feed_data(Bytes::from_static(b"first"));
        let counted = IntCounter::new("timed_out", "bodies").unwrap();
        let mut body = Stalling::new(body, Duration::from_millis(100), counted.clone());
        assert_eq!(body.next().await.unwrap().unwrap(), "first");
        let waited = tokio::time::timeout(Duration::from_secs(30), body.next())
            .await
            .expect("the body gave up on its own");
        match waited {
            Some(Err(error)) => assert!(timed_out(&error), "{error:?}"),
            other => panic!("expected TimedOut, got {other:?}"),
        }
        assert!(body.next().await.is_none());
        assert_eq!(counted.get(), 1);
        drop(sender);
    }

    /// Chunks arriving more often than the limit never trip it, however long the body lasts.
    #[actix_rt::test]
    async fn a_slow_body_that_keeps_coming_is_read_whole() {
        let (mut sender, body) = actix_http::h1::Payload::create(false);
        let feed = async move {
            // 1.2 s in all, longer than the limit; each pause far shorter.
            for _ in 0..40 {
                tokio::time::sleep(Duration::from_millis(30)).await;
                sender.feed_data(Bytes::from_static(b"x"));
            }
            sender.feed_eof();
        };
        let read = async {
            let counted = IntCounter::new("timed_out", "bodies").unwrap();
            let mut body = Stalling::new(body, Duration::from_millis(500), counted);
            let mut total = 0;
            while let Some(chunk) = body.next().await {
                total += chunk.unwrap().len();
            }
            total
        };
        let ((), total) = tokio::join!(feed, read);
        assert_eq!(total, 40);
    }
}
