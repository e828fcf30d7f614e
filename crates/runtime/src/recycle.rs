//! Reused heap slots for the call futures.
//!
//! Every call's future is boxed by the handler, and it is ~4 KiB (the whole call stack's state:
//! request, first message, route, the part's request and response). That is past glibc's
//! per-thread cache (tcache, up to 1,032 bytes), so a fresh box per call costs a `malloc` from
//! the arena and a `free` back to it on every call (docs/perf/journal.md, round 8). A
//! [`Recycler`] keeps the boxes of finished calls, per worker thread, and the next
//! call's future is written into one of them.
//!
//! A slot is a `Pin<Box<Option<F>>>`: the future is dropped in place (`Pin::set(None)`) when the
//! call ends or is dropped, and a new one is written with `Pin::set(Some(..))`, both safe: a
//! pinned value is never moved, only dropped where it is.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::workers::PerWorker;

/// Spare slots kept per shelf; more are freed. At ~4 KiB a slot, 64 keep up to 256 KiB per
/// worker after a burst, and cover 64 calls in flight per worker without a `malloc`.
const SPARES_PER_SHELF: usize = 64;

type Slot<F> = Pin<Box<Option<F>>>;

/// Spare slots for futures of type `F`, one shelf per worker thread ([`PerWorker`]).
pub struct Recycler<F> {
    shelves: PerWorker<Vec<Slot<F>>>,
}

impl<F: Future> Recycler<F> {
    /// A recycler with one shelf for each of `workers` threads.
    pub fn new(workers: usize) -> Arc<Self> {
        Arc::new(Self {
            shelves: PerWorker::new(workers),
        })
    }

    /// `future` in a spare slot if there is one, else in a new box.
    pub fn wrap(self: &Arc<Self>, future: F) -> Recycled<F> {
        let spare = self.shelves.lock_current().pop();
        let slot = match spare {
            Some(mut slot) => {
                slot.set(Some(future));
                slot
            }
            None => Box::pin(Some(future)),
        };
        Recycled {
            home: self.clone(),
            slot: Some(slot),
        }
    }

    /// How many spare slots the current thread's shelf holds.
    pub fn spares(&self) -> usize {
        self.shelves.lock_current().len()
    }

    fn put(&self, slot: Slot<F>) {
        let mut shelf = self.shelves.lock_current();
        if shelf.len() < SPARES_PER_SHELF {
            shelf.push(slot);
        }
    }
}

/// A future in a recycled slot: polls it, and gives the slot back (the future dropped in place)
/// when it completes or is dropped.
pub struct Recycled<F: Future> {
    home: Arc<Recycler<F>>,
    /// `None` once given back.
    slot: Option<Slot<F>>,
}

impl<F: Future> Recycled<F> {
    fn give_back(&mut self) {
        if let Some(mut slot) = self.slot.take() {
            slot.set(None);
            self.home.put(slot);
        }
    }
}

impl<F: Future> Future for Recycled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // `Recycled` is `Unpin`: the future itself stays pinned in its box.
        let this = self.get_mut();
        let Some(future) = this.slot.as_mut().and_then(|s| s.as_mut().as_pin_mut()) else {
            // Polled after it completed: it never completes again.
            return Poll::Pending;
        };
        let out = std::task::ready!(future.poll(cx));
        this.give_back();
        Poll::Ready(out)
    }
}

impl<F: Future> Drop for Recycled<F> {
    fn drop(&mut self) {
        self.give_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts its drops; completes on its second poll.
    struct Probe {
        drops: Arc<AtomicUsize>,
        polled: bool,
        value: u32,
    }

    impl Future for Probe {
        type Output = u32;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
            if self.polled {
                return Poll::Ready(self.value);
            }
            self.polled = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.drops.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn probe(drops: &Arc<AtomicUsize>, value: u32) -> Probe {
        Probe {
            drops: drops.clone(),
            polled: false,
            value,
        }
    }

    #[tokio::test]
    async fn completed_and_dropped_futures_give_their_slot_back_and_are_dropped_once() {
        let recycler = Recycler::new(1);
        let drops = Arc::new(AtomicUsize::new(0));
        assert_eq!(recycler.wrap(probe(&drops, 7)).await, 7);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert_eq!(recycler.spares(), 1);

        // The spare slot is used again, and the new future's own value comes out.
        let second = recycler.wrap(probe(&drops, 8));
        assert_eq!(recycler.spares(), 0);
        assert_eq!(second.await, 8);
        assert_eq!(drops.load(Ordering::SeqCst), 2);

        // Dropped before it completed (a cancelled call): dropped once, slot given back.
        let mut third = Box::pin(recycler.wrap(probe(&drops, 9)));
        let first_poll = std::future::poll_fn(|cx| Poll::Ready(third.as_mut().poll(cx))).await;
        assert!(first_poll.is_pending());
        drop(third);
        assert_eq!(drops.load(Ordering::SeqCst), 3);
        assert_eq!(recycler.spares(), 1);
    }

    #[tokio::test]
    async fn at_most_the_spare_limit_is_kept() {
        let recycler = Recycler::new(1);
        let drops = Arc::new(AtomicUsize::new(0));
        let many: Vec<_> = (0..SPARES_PER_SHELF + 10)
            .map(|i| recycler.wrap(probe(&drops, i as u32)))
            .collect();
        drop(many);
        assert_eq!(drops.load(Ordering::SeqCst), SPARES_PER_SHELF + 10);
        assert_eq!(recycler.spares(), SPARES_PER_SHELF);
    }
}
