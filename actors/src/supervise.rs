//! Supervision: starts an actor so that a panic in one of its handlers restarts it instead of
//! killing it, and counts every restart.
//!
//! actix's own `Supervisor` restarts an actor that *stops*, but a panic unwinds through its future
//! and the actor is gone for good (every later `send` gets `MailboxError::Closed`). This wrapper
//! catches the unwind around each poll, then restarts the context the same way `Supervisor` does:
//! the mailbox and every `Addr` stay valid, `Supervised::restarting` resets the actor's state, and
//! `started` runs again. The message whose handler panicked gets `MailboxError::Closed`.

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    task::{Context as TaskContext, Poll},
};

use actix::{dev::ContextFut, Actor, Addr, AsyncContext, Context, Message, Supervised};
use prometheus::IntCounter;

/// Starts `make`'s actor on the current arbiter under panic supervision.
pub fn start<A, F>(name: &'static str, restarts: IntCounter, make: F) -> Addr<A>
where
    A: Actor<Context = Context<A>> + Supervised,
    F: FnOnce(&mut Context<A>) -> A,
{
    let mut ctx = Context::new();
    let actor = make(&mut ctx);
    let addr = ctx.address();
    let fut = ctx.into_future(actor);
    actix::spawn(PanicSupervisor {
        name,
        restarts,
        fut: Box::pin(fut),
    });
    addr
}

struct PanicSupervisor<A>
where
    A: Actor<Context = Context<A>> + Supervised,
{
    name: &'static str,
    restarts: IntCounter,
    fut: Pin<Box<ContextFut<A, Context<A>>>>,
}

impl<A> Future for PanicSupervisor<A>
where
    A: Actor<Context = Context<A>> + Supervised,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        loop {
            let polled = std::panic::catch_unwind(AssertUnwindSafe(|| self.fut.as_mut().poll(cx)));
            match polled {
                Ok(Poll::Pending) => return Poll::Pending,
                Ok(Poll::Ready(())) => {
                    // Stopped on its own: restart while anyone still holds an address.
                    if !self.fut.restart() {
                        return Poll::Ready(());
                    }
                    tracing::warn!(actor = self.name, "actor stopped; restarted");
                    self.restarts.inc();
                }
                Err(panic) => {
                    let reason = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".to_string());
                    tracing::error!(actor = self.name, %reason, "actor panicked; restarting");
                    self.restarts.inc();
                    if !self.fut.restart() {
                        return Poll::Ready(());
                    }
                }
            }
        }
    }
}

/// Liveness probe every actor answers; `/ready` and `/health` send it with a deadline.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Ping;

/// Makes the receiving actor panic. Compiled only with the `fault-injection` feature, which the
/// integration tests enable to prove supervision works.
#[cfg(feature = "fault-injection")]
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct InjectPanic;

/// Implements [`Ping`] (and, under `fault-injection`, [`InjectPanic`]) for actors.
macro_rules! supervised_basics {
    ($($actor:ty),+ $(,)?) => {$(
        impl actix::Handler<$crate::supervise::Ping> for $actor {
            type Result = ();
            fn handle(&mut self, _: $crate::supervise::Ping, _: &mut Self::Context) {}
        }
        #[cfg(feature = "fault-injection")]
        impl actix::Handler<$crate::supervise::InjectPanic> for $actor {
            type Result = ();
            #[allow(clippy::panic)]
            fn handle(&mut self, _: $crate::supervise::InjectPanic, _: &mut Self::Context) {
                panic!("fault injected into {}", stringify!($actor));
            }
        }
    )+};
}
pub(crate) use supervised_basics;
