//! Coarse deadlines for the gateway's default call timeout.
//!
//! Every call without a client deadline waits at most `gateway.default_timeout` (10 minutes
//! unless configured) for the part's response headers. A tokio timer per call means registering
//! on the timer wheel and taking the entry off again, reading the clock and polling the
//! `Sleep` on every call, for a timer that almost never fires (docs/perf/journal.md, round 8).
//! Here a call's deadline is an entry in a table, and one sweeper
//! task checks the table every *tick* (a sixteenth of the default timeout, between 5 ms and 1 s):
//! a deadline fires between its time and one tick later.
//!
//! The table has a shelf per worker thread ([`PerWorker`]), so a call's registration takes an
//! uncontended lock. The sweeper is spawned when the first call registers, on the runtime the
//! table was made on; it sleeps on a [`Notify`] while every shelf is empty, and ends when the
//! table is dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::workers::PerWorker;

/// The sweeper's period bounds: a sixteenth of the timeout, clamped to these.
const MIN_TICK: Duration = Duration::from_millis(5);
const MAX_TICK: Duration = Duration::from_secs(1);

/// One call's deadline.
struct Entry {
    /// `None`: too far away to represent (never fires).
    expires: Option<Instant>,
    /// The deadline passed (set by the sweeper).
    fired: bool,
    waker: Option<Waker>,
}

#[derive(Default)]
struct Shelf {
    /// `None`: a vacant slot (its index is in `free`).
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
    /// Deadlines ever registered here (the sweeper stays awake while this moves).
    registered: u64,
}

impl Shelf {
    /// Deadlines registered here and not dropped yet.
    fn live(&self) -> usize {
        self.entries.len() - self.free.len()
    }
}

/// The deadlines of every call in flight (see the module docs).
pub struct Deadlines {
    shelves: PerWorker<Shelf>,
    tick_ms: AtomicU64,
    /// The sweeper found every shelf empty and waits for `wake` (or is not started yet).
    idle: AtomicBool,
    started: AtomicBool,
    /// Where the sweeper runs: the runtime the table was made on (worker 0, which lives as
    /// long as the gateway), else the first registering call's.
    runtime: Option<tokio::runtime::Handle>,
    /// Shared with the sweeper, which holds only a weak reference to the table.
    wake: Arc<Notify>,
}

impl Deadlines {
    /// A table with a shelf for each of `workers` threads, for deadlines near `timeout`.
    pub fn new(workers: usize, timeout: Duration) -> Arc<Self> {
        let table = Arc::new(Self {
            shelves: PerWorker::new(workers),
            tick_ms: AtomicU64::new(0),
            idle: AtomicBool::new(true),
            started: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::try_current().ok(),
            wake: Arc::new(Notify::new()),
        });
        table.set_timeout(timeout);
        table
    }

    /// The timeout changed (a reload): the sweeper's period follows it from its next tick.
    pub fn set_timeout(&self, timeout: Duration) {
        let tick = (timeout / 16).clamp(MIN_TICK, MAX_TICK);
        let ms = u64::try_from(tick.as_millis()).unwrap_or(u64::MAX);
        self.tick_ms.store(ms, Ordering::Relaxed);
    }

    /// A deadline `after` from now: a future that completes once it has passed. Dropping it
    /// takes it out of the table. The first call starts the sweeper: on the table's runtime, or
    /// (a table made outside one) on the caller's, so it must then be called within one.
    pub fn after(self: &Arc<Self>, after: Duration) -> Deadline<'_> {
        let shelf = self.shelves.current();
        let expires = Instant::now().checked_add(after);
        let idx = {
            let mut s = self.shelves.lock(shelf);
            let entry = Some(Entry {
                expires,
                fired: false,
                waker: None,
            });
            s.registered = s.registered.wrapping_add(1);
            match s.free.pop() {
                Some(idx) => {
                    s.entries[idx] = entry;
                    idx
                }
                None => {
                    s.entries.push(entry);
                    s.entries.len() - 1
                }
            }
        };
        // After the entry is in (see `sweep` for why this order never misses a wake-up).
        if self.idle.load(Ordering::SeqCst) {
            if !self.started.swap(true, Ordering::SeqCst) {
                let sweeper = sweep(Arc::downgrade(self), self.wake.clone());
                match &self.runtime {
                    Some(runtime) => drop(runtime.spawn(sweeper)),
                    None => drop(tokio::spawn(sweeper)),
                }
            }
            self.wake.notify_one();
        }
        Deadline {
            table: self,
            shelf,
            idx,
        }
    }

    /// Fires every deadline that passed; returns whether any remain, and how many were ever
    /// registered.
    fn fire_expired(&self, now: Instant) -> (bool, u64) {
        let mut wakers = Vec::new();
        let mut any = false;
        let mut registered = 0u64;
        for index in 0..self.shelves.len() {
            let mut shelf = self.shelves.lock(index);
            any |= shelf.live() > 0;
            registered = registered.wrapping_add(shelf.registered);
            for entry in shelf.entries.iter_mut().flatten() {
                if !entry.fired && entry.expires.is_some_and(|at| at <= now) {
                    entry.fired = true;
                    wakers.extend(entry.waker.take());
                }
            }
        }
        wakers.into_iter().for_each(Waker::wake);
        (any, registered)
    }

    /// Deadlines in the table (for tests).
    pub fn len(&self) -> usize {
        (0..self.shelves.len())
            .map(|i| self.shelves.lock(i).live())
            .sum()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The sweeper: every tick, fires the deadlines that passed. It sleeps until a registration
/// wakes it only after a whole tick in which no deadline was registered and none is left: under
/// steady traffic (even one call at a time, whose deadline is usually gone by the next tick) it
/// keeps ticking, and calls never pay for waking it (a cross-thread wake-up, ~10 µs of CPU).
///
/// It sets `idle` *before* it checks the shelves, and a registration puts its entry in *before*
/// it reads `idle` (each under the shelf's lock): either the check sees the entry, or the
/// registration sees `idle` and notifies (a stored permit, if the sweeper is not waiting yet).
///
/// It holds the table only while it sweeps: dropping the table (which notifies) ends it.
async fn sweep(table: Weak<Deadlines>, wake: Arc<Notify>) {
    let mut seen = None;
    loop {
        let Some(t) = table.upgrade() else {
            return;
        };
        t.idle.store(true, Ordering::SeqCst);
        let (left, registered) = t.fire_expired(Instant::now());
        let busy = left || seen != Some(registered);
        seen = Some(registered);
        let tick = Duration::from_millis(t.tick_ms.load(Ordering::Relaxed));
        if busy {
            t.idle.store(false, Ordering::SeqCst);
        }
        drop(t);
        if busy {
            tokio::time::sleep(tick).await;
        } else {
            wake.notified().await;
        }
    }
}

impl Drop for Deadlines {
    fn drop(&mut self) {
        // An idle sweeper wakes up, finds the table gone and ends.
        self.wake.notify_one();
    }
}

/// A registered deadline (see [`Deadlines::after`]).
pub struct Deadline<'a> {
    table: &'a Deadlines,
    shelf: usize,
    idx: usize,
}

impl Future for Deadline<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut shelf = self.table.shelves.lock(self.shelf);
        let Some(Some(entry)) = shelf.entries.get_mut(self.idx) else {
            return Poll::Pending;
        };
        if entry.fired {
            return Poll::Ready(());
        }
        match &mut entry.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Deadline<'_> {
    fn drop(&mut self) {
        let mut shelf = self.table.shelves.lock(self.shelf);
        if let Some(slot) = shelf.entries.get_mut(self.idx)
            && slot.take().is_some()
        {
            shelf.free.push(self.idx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_deadline_fires_within_a_tick_after_its_time() {
        let table = Deadlines::new(2, Duration::from_millis(160)); // tick 10 ms
        let started = Instant::now();
        let fired = tokio::time::timeout(
            Duration::from_secs(2),
            table.after(Duration::from_millis(160)),
        );
        assert!(fired.await.is_ok(), "never fired");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(160), "{took:?}");
        assert!(took < Duration::from_millis(400), "{took:?}");
        assert!(table.is_empty());
    }

    #[tokio::test]
    async fn dropped_deadlines_leave_the_table_and_never_fire() {
        let table = Deadlines::new(1, Duration::from_millis(80)); // tick 5 ms
        let early = table.after(Duration::from_millis(40));
        let late = table.after(Duration::from_secs(60));
        assert_eq!(table.len(), 2);
        drop(late);
        assert_eq!(table.len(), 1);
        early.await;
        assert!(table.is_empty());
        // A slot is reused, and the sweeper (idle meanwhile) wakes again for it.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let again = tokio::time::timeout(
            Duration::from_secs(2),
            table.after(Duration::from_millis(20)),
        );
        assert!(
            again.await.is_ok(),
            "the idle sweeper never woke for a new deadline"
        );
    }

    #[tokio::test]
    async fn a_deadline_too_far_to_represent_never_fires() {
        let table = Deadlines::new(1, Duration::from_millis(80));
        let never = table.after(Duration::MAX);
        let soon = table.after(Duration::from_millis(10));
        soon.await;
        let mut never = std::pin::pin!(never);
        let polled = std::future::poll_fn(|cx| Poll::Ready(never.as_mut().poll(cx))).await;
        assert!(polled.is_pending());
    }

    #[tokio::test]
    async fn steady_short_calls_keep_the_sweeper_awake() {
        let table = Deadlines::new(1, Duration::from_millis(1600)); // tick 100 ms
        // One call at a time, each gone long before its deadline: the table is empty at most
        // sweeps, yet the sweeper never goes idle, so no call has to wake it.
        drop(table.after(Duration::from_secs(2)));
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(250) {
            tokio::time::sleep(Duration::from_millis(2)).await;
            drop(table.after(Duration::from_secs(2)));
            assert!(!table.idle.load(Ordering::SeqCst), "the sweeper went idle");
        }
        // With no calls for a few ticks, it does.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(table.idle.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn many_deadlines_each_fire_and_a_later_one_waits() {
        let table = Deadlines::new(1, Duration::from_millis(80));
        let soon: Vec<_> = (0..100)
            .map(|i| table.after(Duration::from_millis(10 + i % 10)))
            .collect();
        let later = table.after(Duration::from_secs(60));
        futures_util::future::join_all(soon).await;
        let mut later = std::pin::pin!(later);
        let polled = std::future::poll_fn(|cx| Poll::Ready(later.as_mut().poll(cx))).await;
        assert!(polled.is_pending(), "a deadline a minute away fired early");
        assert_eq!(table.len(), 1);
    }

    #[tokio::test]
    async fn the_sweeper_ends_with_the_table() {
        let table = Deadlines::new(1, Duration::from_millis(80));
        table.after(Duration::from_millis(5)).await;
        // Let the sweeper find the table empty and wait (idle) before the table goes.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let wake = table.wake.clone();
        let weak = Arc::downgrade(&table);
        drop(table);
        assert!(weak.upgrade().is_none(), "the idle sweeper kept the table");
        // The sweeper's clone of `wake` goes when it ends.
        for _ in 0..100 {
            if Arc::strong_count(&wake) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(Arc::strong_count(&wake), 1, "the sweeper did not end");
    }
}
