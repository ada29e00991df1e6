//! [`Stall`]: a limit on how long a client may leave a wait without progress (a body that stops
//! coming, a response it stops taking), polled by hand-written streams and I/O wrappers.

use std::{
    future::Future as _,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use prometheus::IntCounter;

/// Counts from the first wait without progress; progress starts it afresh. Running out is
/// counted once in `ran_out`, however often it is polled after.
pub struct Stall {
    limit: Option<Duration>,
    /// Running while waits make no progress.
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
    expired: bool,
    ran_out: IntCounter,
}

impl Stall {
    /// `None`: waits have no limit.
    pub fn new(limit: Option<Duration>, ran_out: IntCounter) -> Self {
        Self {
            limit,
            waiting: None,
            expired: false,
            ran_out,
        }
    }

    pub fn limit(&self) -> Option<Duration> {
        self.limit
    }

    /// Whether the limit has run out.
    pub fn expired(&self) -> bool {
        self.expired
    }

    /// The wait made progress.
    pub fn progressed(&mut self) {
        self.waiting = None;
    }

    /// The wait made none: ready once the limit has passed since the first such wait, pending
    /// (woken then) before.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(limit) = self.limit else {
            return Poll::Pending;
        };
        let timer = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if !self.expired {
            self.expired = true;
            self.ran_out.inc();
        }
        Poll::Ready(())
    }
}
