//! StreamGate patch: the HTTP/1 dispatcher's read and write buffers come from, and go back to,
//! a small pool per worker thread, so a keep-alive connection holds no buffer while it idles.
//!
//! As released, every connection keeps an 8 KiB read and an 8 KiB write buffer for its whole
//! life. Their first pages are touched by the first request and response, so 10,000 idle
//! keep-alive connections held ~105 MB of resident memory in buffers alone. With the pool, a
//! connection takes its buffers when bytes arrive and gives them back once the response is
//! written and nothing else is pending; a busy worker recycles the same few buffers.

use std::cell::RefCell;

use bytes::BytesMut;

/// Buffers kept per worker thread between requests. Enough for the connections one worker
/// serves at once under load; past it, given-back buffers return to the allocator.
const POOLED_PER_THREAD: usize = 128;

thread_local! {
    static POOL: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// A pooled buffer as it was given back (empty; a read buffer may have less room left than it
/// started with, which the dispatcher's own `reserve` calls handle), or a new one of
/// `new_capacity` bytes when the pool is empty.
pub(crate) fn take(new_capacity: usize) -> BytesMut {
    POOL.with(|pool| pool.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(new_capacity))
}

/// Leaves `buffer` empty and without an allocation; what it held goes to the pool (or to the
/// allocator when the pool is full). A buffer grown past `pooled_capacity` by a large message
/// goes to the allocator, or, with `keep_grown`, stays where it is: a write buffer is kept as
/// it would be unpatched (within the dispatcher's own retention limit), so a connection
/// streaming large responses does not grow a fresh buffer for each one; a read buffer grown
/// by a request body's reads is not needed by the small requests that usually follow.
pub(crate) fn give_back(buffer: &mut BytesMut, pooled_capacity: usize, keep_grown: bool) {
    if buffer.capacity() == 0 || (keep_grown && buffer.capacity() > pooled_capacity) {
        return;
    }
    if buffer.capacity() > pooled_capacity {
        *buffer = BytesMut::new();
        return;
    }
    let mut buffer = std::mem::take(buffer);
    buffer.clear();
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < POOLED_PER_THREAD {
            pool.push(buffer);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_back_buffer_is_the_next_one_taken() {
        let mut buffer = take(8192);
        assert!(buffer.capacity() >= 8192);
        buffer.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        drop(buffer.split_to(18));
        let address = buffer.as_ptr();
        give_back(&mut buffer, 8192, true);
        assert_eq!(buffer.capacity(), 0, "the connection holds nothing while idle");
        let again = take(8192);
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), address, "the same allocation, not a new one");
    }

    #[test]
    fn a_buffer_grown_by_a_large_message_stays_with_its_connection() {
        let mut big = BytesMut::with_capacity(1 << 20);
        give_back(&mut big, 8192, true);
        assert!(big.capacity() >= 1 << 20);
        POOL.with(|pool| assert!(pool.borrow().iter().all(|b| b.capacity() <= 8192)));
    }

    #[test]
    fn a_grown_buffer_not_kept_is_freed_not_pooled() {
        let mut big = BytesMut::with_capacity(64 * 1024);
        give_back(&mut big, 8192, false);
        assert_eq!(big.capacity(), 0, "the idle connection holds nothing");
        POOL.with(|pool| assert!(pool.borrow().iter().all(|b| b.capacity() <= 8192)));
    }
}
