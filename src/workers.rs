//! Thread-per-core: the gateway's data plane runs on N single-threaded runtimes ("workers")
//! instead of one work-stealing pool, so that a call never changes threads.
//!
//! Worker 0 is the runtime that started the gateway (the binary runs it on the main thread as a
//! current-thread runtime; a test runs it wherever the test runs); workers 1..N are threads
//! this module starts, each with its own current-thread runtime, timer and I/O driver. Accepted
//! client connections are handed to the workers in turn, and each worker keeps its own
//! connection to every part ([`crate::pool`]'s lanes), so a call's client socket, call
//! future, part connection and part socket all live on one thread: waking the part
//! connection's task is a push onto the local run queue, not a futex and a context switch to
//! another worker (the cost that kept the latency at concurrency 1 from falling with the
//! instruction count; bench/README.md "Thread per core").
//!
//! Control-plane work (health checks, reloads, the operations endpoints, WebRTC) stays on
//! worker 0, where it was started.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::runtime::Handle;
use tokio::sync::watch;
use tracing::debug;

thread_local! {
    /// The worker index of the current thread (0 on any thread this module did not start).
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The worker the current thread is (0 for any thread but workers 1..N).
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// The data-plane runtimes. Cloning shares them; when the last clone is dropped, workers
/// 1..N stop and every task still on them is dropped.
#[derive(Clone)]
pub struct Workers {
    inner: Arc<Inner>,
}

struct Inner {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Dropping it (with `Inner`) ends every worker thread's `block_on`.
    _stop: watch::Sender<()>,
}

impl Workers {
    /// Worker 0 is the current runtime; starts `count - 1` more worker threads. Must be called
    /// inside a tokio runtime.
    pub fn start(count: usize) -> std::io::Result<Self> {
        let (stop, stopped) = watch::channel(());
        let mut handles = vec![Handle::current()];
        for index in 1..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let mut stopped = stopped.clone();
            std::thread::Builder::new()
                .name(format!("partgate-worker-{index}"))
                .spawn(move || {
                    INDEX.with(|i| i.set(index));
                    runtime.block_on(async move {
                        // Err: the sender is gone, which is the signal.
                        while stopped.changed().await.is_ok() {}
                    });
                    // Not `drop`: that would wait for blocking tasks.
                    runtime.shutdown_background();
                    debug!(worker = index, "worker stopped");
                })?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                handles,
                // Worker 0 also runs the control plane: the first connection goes elsewhere.
                next: AtomicUsize::new(1),
                _stop: stop,
            }),
        })
    }

    /// How many workers there are (at least 1).
    pub fn len(&self) -> usize {
        self.inner.handles.len()
    }

    /// Never true: there is always worker 0. (For clippy's `len_without_is_empty`.)
    pub fn is_empty(&self) -> bool {
        self.inner.handles.is_empty()
    }

    /// The next worker in turn, for a newly accepted connection.
    pub fn next(&self) -> &Handle {
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.handles.len();
        &self.inner.handles[n]
    }
}

/// One mutex-guarded `T` per worker thread, so that a worker's own lock is uncontended. Threads
/// that are no worker share the first (see [`current`]).
pub struct PerWorker<T> {
    slots: Box<[Mutex<T>]>,
}

impl<T: Default> PerWorker<T> {
    /// A `T::default()` for each of `workers` threads (at least one).
    pub fn new(workers: usize) -> Self {
        Self {
            slots: (0..workers.max(1)).map(|_| Mutex::default()).collect(),
        }
    }
}

impl<T> PerWorker<T> {
    /// The current thread's index among the slots.
    pub fn current(&self) -> usize {
        current() % self.slots.len()
    }

    /// Locks slot `index` (taken modulo the slot count), ignoring poisoning: a panic elsewhere
    /// leaves the value as consistent as any single mutation of it.
    pub fn lock(&self, index: usize) -> MutexGuard<'_, T> {
        // `slots` is never empty (see `new`).
        self.slots[index % self.slots.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks the current thread's slot.
    pub fn lock_current(&self) -> MutexGuard<'_, T> {
        self.lock(self.current())
    }

    /// How many slots there are (at least 1).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Never true (for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// One worker per core (what `gateway.worker_threads` defaults to).
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_worker_slots_wrap_and_a_non_worker_thread_uses_the_first() {
        let slots: PerWorker<u32> = PerWorker::new(0);
        assert_eq!(slots.len(), 1);
        let slots: PerWorker<u32> = PerWorker::new(3);
        assert_eq!(slots.current(), 0);
        *slots.lock_current() += 1;
        *slots.lock(4) += 10;
        assert_eq!(*slots.lock(0), 1);
        assert_eq!(*slots.lock(1), 10);
    }

    #[tokio::test]
    async fn tasks_run_on_their_worker_and_workers_stop_with_the_last_clone() {
        let workers = Workers::start(3).expect("workers");
        assert_eq!(workers.len(), 3);
        let mut seen = Vec::new();
        for _ in 0..6 {
            let index = workers
                .next()
                .spawn(async { current() })
                .await
                .expect("join");
            seen.push(index);
        }
        assert_eq!(seen, [1, 2, 0, 1, 2, 0]);
        let handle = workers.inner.handles[1].clone();
        drop(workers);
        // The worker thread shuts its runtime down: spawned tasks no longer run.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            drop(handle.spawn(async move {
                let _ = tx.send(());
            }));
            if rx.await.is_err() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "worker still running");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}
