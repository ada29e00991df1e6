//! How much of a mapped segment a connection hands actix per poll.
//!
//! actix copies each body chunk into the connection's write buffer and writes once the buffer
//! holds a chunk, so the chunk size is the memory a sending connection holds. Large chunks
//! mean few large writes (fast with few viewers); with many viewers a fixed large chunk makes
//! memory grow with every viewer being served. So the chunk is the budget shared out among the
//! connections sending right now, between actix's own buffer size and a ceiling.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use actix_web::body::{BodySize, MessageBody};
use bytes::Bytes;

/// The smallest chunk: actix's default HTTP/1 write buffer, one write per poll.
pub const MIN_CHUNK_BYTES: usize = 32 * 1024;

/// Shared by every worker: the connections sending mapped bodies and what they may hold.
#[derive(Debug, Clone)]
pub struct SendBudget(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    sending: AtomicUsize,
    total_bytes: usize,
    max_chunk_bytes: usize,
}

impl SendBudget {
    /// `total_bytes` shared among all sending connections, at most `max_chunk_bytes` each.
    pub fn new(total_bytes: usize, max_chunk_bytes: usize) -> Self {
        Self(Arc::new(Shared {
            sending: AtomicUsize::new(0),
            total_bytes,
            max_chunk_bytes: max_chunk_bytes.max(MIN_CHUNK_BYTES),
        }))
    }

    /// `bytes` as a response body that takes its share of the budget while it sends.
    pub fn body(&self, bytes: Bytes) -> MappedBody {
        MappedBody {
            rest: bytes,
            budget: self.0.clone(),
            counted: false,
        }
    }

    /// Connections sending a mapped body right now.
    pub fn sending(&self) -> usize {
        self.0.sending.load(Ordering::Relaxed)
    }

    fn chunk_bytes(shared: &Shared, sending: usize) -> usize {
        (shared.total_bytes / sending.max(1)).clamp(MIN_CHUNK_BYTES, shared.max_chunk_bytes)
    }
}

/// A mapped blob as a response body: chunks of the mapping, never a copy of the whole.
pub struct MappedBody {
    rest: Bytes,
    budget: Arc<Shared>,
    /// Counted among the sending from its first poll until it is dropped (finished or the
    /// client went away), so a response built but never sent takes no share.
    counted: bool,
}

impl MessageBody for MappedBody {
    type Error = std::convert::Infallible;

    fn size(&self) -> BodySize {
        BodySize::Sized(self.rest.len() as u64)
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        if self.rest.is_empty() {
            return Poll::Ready(None);
        }
        if !self.counted {
            self.counted = true;
            self.budget.sending.fetch_add(1, Ordering::Relaxed);
        }
        let sending = self.budget.sending.load(Ordering::Relaxed);
        let chunk = SendBudget::chunk_bytes(&self.budget, sending);
        let len = self.rest.len().min(chunk);
        Poll::Ready(Some(Ok(self.rest.split_to(len))))
    }
}

impl Drop for MappedBody {
    fn drop(&mut self) {
        if self.counted {
            self.budget.sending.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    fn next(body: &mut MappedBody) -> Option<usize> {
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(body).poll_next(&mut cx) {
            Poll::Ready(Some(Ok(chunk))) => Some(chunk.len()),
            _ => None,
        }
    }

    #[test]
    fn chunks_shrink_as_more_connections_send_and_the_share_returns_on_drop() {
        let budget = SendBudget::new(4 * 1024 * 1024, 512 * 1024);
        let segment = Bytes::from(vec![7u8; 2 * 1024 * 1024]);
        let mut first = budget.body(segment.clone());
        assert_eq!(budget.sending(), 0, "not counted before it sends");
        assert_eq!(next(&mut first), Some(512 * 1024), "alone: the ceiling");
        let mut others: Vec<MappedBody> = (0..63).map(|_| budget.body(segment.clone())).collect();
        for other in &mut others {
            assert!(next(other).is_some());
        }
        assert_eq!(budget.sending(), 64);
        assert_eq!(
            next(&mut first),
            Some(4 * 1024 * 1024 / 64),
            "a 64th of the budget"
        );
        let mut crowd: Vec<MappedBody> = (0..200).map(|_| budget.body(segment.clone())).collect();
        for body in &mut crowd {
            next(body);
        }
        assert_eq!(
            next(&mut first),
            Some(MIN_CHUNK_BYTES),
            "never below actix's buffer"
        );
        drop(crowd);
        drop(others);
        assert_eq!(budget.sending(), 1);
        let mut sent = 512 * 1024 + 4 * 1024 * 1024 / 64 + MIN_CHUNK_BYTES;
        while let Some(len) = next(&mut first) {
            sent += len;
        }
        assert_eq!(sent, segment.len(), "every byte exactly once");
        drop(first);
        assert_eq!(budget.sending(), 0);
    }
}
