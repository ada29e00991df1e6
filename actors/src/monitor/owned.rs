//! Values with one writer, for the per-request path. An HTTP worker counts into its own copy
//! of each value with a plain load and store: no locked read-modify-write on every request
//! (each costs as much as a few dozen ordinary instructions) and no cache line that two
//! workers write. Readers (a render, a report, an alert rule) sum the copies, on their own
//! thread, with ordinary atomic loads.
//!
//! Invariant: a copy has exactly one writing handle, [`Owned`], which is neither `Clone` nor
//! `Sync`; a second writer would lose counts (never memory safety: every access is atomic).

use std::{
    cell::Cell,
    marker::PhantomData,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
};

/// Adds `delta` (wrapping) to a cell only its owner writes: a load and a store.
#[inline]
pub fn add(cell: &AtomicU64, delta: u64) {
    cell.store(
        cell.load(Ordering::Relaxed).wrapping_add(delta),
        Ordering::Relaxed,
    );
}

/// The writing end of a value other threads read.
pub struct Owned<T> {
    value: Arc<T>,
    _one_writer: PhantomData<Cell<()>>,
}

impl<T> Owned<T> {
    pub fn get(&self) -> &T {
        &self.value
    }
}

/// Every copy of one value, for its readers.
pub struct Copies<T> {
    copies: Mutex<Vec<Arc<T>>>,
}

impl<T> Default for Copies<T> {
    fn default() -> Self {
        Self {
            copies: Mutex::new(Vec::new()),
        }
    }
}

impl<T> Copies<T> {
    /// A new copy, kept for the readers for as long as the value exists: what a worker has
    /// counted still counts after the worker is gone, so totals never go backwards.
    pub fn add(&self, value: T) -> Owned<T> {
        let value = Arc::new(value);
        self.copies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::clone(&value));
        Owned {
            value,
            _one_writer: PhantomData,
        }
    }

    /// Runs `read` on every copy.
    pub fn for_each(&self, mut read: impl FnMut(&T)) {
        for copy in self
            .copies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            read(copy);
        }
    }

    /// The sum of `read` over the copies (wrapping: gauges store negative steps as
    /// two's complement).
    pub fn sum(&self, read: impl Fn(&T) -> u64) -> u64 {
        let mut total = 0u64;
        self.for_each(|copy| total = total.wrapping_add(read(copy)));
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_written_on_their_own_threads_sum_up() {
        let copies: Arc<Copies<AtomicU64>> = Arc::default();
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let owned = copies.add(AtomicU64::new(0));
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        add(owned.get(), 1);
                    }
                    // A gauge's step down.
                    add(owned.get(), u64::MAX);
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        assert_eq!(copies.sum(|copy| copy.load(Ordering::Relaxed)), 4 * 9_999);
    }
}
