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

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tracing::debug;

thread_local! {
    /// The worker index of the current thread (0 on any thread this module did not start).
    static INDEX: Cell<usize> = const { Cell::new(0) };
    /// Reads that returned data on this thread (see [`note_activity`]).
    static ACTIVITY: Cell<u64> = const { Cell::new(0) };
    /// This thread's idle spin (see [`before_park`]).
    static SPIN: RefCell<Spin> = const { RefCell::new(Spin::new()) };
}

/// How long a worker keeps polling its sockets after the last read that brought data, before
/// it blocks in `epoll_wait` (nanoseconds; 0: never spins). See [`before_park`].
static SPIN_NS: AtomicU64 = AtomicU64::new(0);

/// Nanoseconds all workers spent in spin turns that found no data (see [`idle_spin_seconds`]).
static SPUN_NS: AtomicU64 = AtomicU64::new(0);

/// A worker's idle-spin state.
struct Spin {
    /// [`ACTIVITY`] when last looked at.
    seen: u64,
    /// When [`ACTIVITY`] was last seen to move.
    last: Option<Instant>,
    /// The spinner task's waker: waking it turns the runtime's next park into a poll.
    waker: Option<Waker>,
    /// The last spin turn: when it started and [`ACTIVITY`] then.
    turn: Option<(Instant, u64)>,
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
            let runtime = runtime()?;
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
        for handle in &handles {
            // Pending forever; dropped with its runtime.
            drop(handle.spawn(spinner()));
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

/// Sets how long idle workers spin (`gateway.idle_spin`); zero turns spinning off. One value
/// for the process (a process runs one gateway; its start and every reload set it).
pub fn set_idle_spin(window: Duration) {
    let ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
    SPIN_NS.store(ns, Ordering::Relaxed);
}

/// Counts a read that brought data on this thread: the signal that keeps an idle worker
/// spinning (one thread-local add).
#[inline]
pub fn note_activity() {
    ACTIVITY.with(|a| a.set(a.get().wrapping_add(1)));
}

/// The runtimes' `on_thread_park` hook: runs when a worker has no task left and is about to
/// block in `epoll_wait`. Within the spin window after the last read that brought data, it
/// yields the CPU once (`sched_yield`) and wakes this worker's spinner task instead, so the
/// runtime polls its sockets without blocking and comes back here.
///
/// Why: on a virtual machine an idle vCPU halts, and waking a thread on it costs the
/// hypervisor's round trip (tens of µs, several times per proxied call at low concurrency;
/// bench/README.md, round 10). A worker that expects the answer to what it just forwarded
/// stays on its CPU for a short while instead, and reads the answer without being woken. The
/// yield keeps the spin from taking a core that another thread is waiting for: on a loaded
/// machine the scheduler runs that thread, on an idle one the yield returns at once.
fn before_park() {
    let window = SPIN_NS.load(Ordering::Relaxed);
    if window == 0 {
        return;
    }
    let activity = ACTIVITY.with(Cell::get);
    let _ = SPIN.try_with(|spin| {
        let mut spin = spin.borrow_mut();
        let spin = &mut *spin;
        let now = Instant::now();
        // A turn that read nothing was spent only on spinning: count it.
        if let Some((start, before)) = spin.turn.take()
            && before == activity
        {
            let ns = now.saturating_duration_since(start).as_nanos();
            SPUN_NS.fetch_add(u64::try_from(ns).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
        if spin.keep_spinning(activity, now, window)
            && let Some(waker) = &spin.waker
        {
            spin.turn = Some((now, activity));
            std::thread::yield_now();
            waker.wake_by_ref();
        }
    });
}

/// Seconds the workers spent spinning in turns that found no data: what `gateway.idle_spin`
/// costs (`partgate_worker_idle_spin_seconds_total`). Wall time, including any the spinning
/// thread gave away in its yields.
pub fn idle_spin_seconds() -> f64 {
    Duration::from_nanos(SPUN_NS.load(Ordering::Relaxed)).as_secs_f64()
}

// === impl Spin ===

impl Spin {
    /// Nothing read yet, no spinner registered.
    const fn new() -> Self {
        Spin {
            seen: 0,
            last: None,
            waker: None,
            turn: None,
        }
    }

    /// Whether a worker about to park should poll once more instead: `activity` is the
    /// thread's read count now, `window` the spin window in nanoseconds. The window runs from
    /// the first park after the count last moved.
    fn keep_spinning(&mut self, activity: u64, now: Instant, window: u64) -> bool {
        if activity != self.seen {
            self.seen = activity;
            self.last = Some(now);
        }
        let Some(last) = self.last else {
            return false;
        };
        if now.saturating_duration_since(last).as_nanos() < u128::from(window) {
            return true;
        }
        self.last = None;
        false
    }
}

/// A worker's spinner: a task that does nothing when polled but leaves its waker where
/// [`before_park`] finds it. Spawned once on each worker.
async fn spinner() {
    poll_fn(|cx| {
        let _ = SPIN.try_with(|spin| {
            let mut spin = spin.borrow_mut();
            if !spin.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                spin.waker = Some(cx.waker().clone());
            }
        });
        Poll::<()>::Pending
    })
    .await;
}

/// A connection's IO whose reads count as activity for the idle spin, for connections our
/// HTTP/2 does not serve (HTTP/1.1: gRPC-Web, the operations endpoints), whose reads would
/// otherwise not call [`note_activity`].
#[derive(Debug)]
pub struct Active<I>(pub I);

impl<I: AsyncRead + Unpin> AsyncRead for Active<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.0).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            note_activity();
        }
        read
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Active<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A worker's runtime: single-threaded, with I/O and timers, and [`before_park`] as its park
/// hook. Workers 1..N are built here; the binary builds worker 0 with it too.
pub fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(before_park)
        .build()
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

    #[tokio::test(flavor = "current_thread")]
    async fn reads_through_active_count_only_when_they_bring_bytes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut io = Active(ours);
        let count = || ACTIVITY.with(Cell::get);
        let start = count();
        theirs.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(io.read(&mut buf).await.unwrap(), 5);
        assert_eq!(count(), start + 1, "a read with bytes counts");
        io.write_all(b"back").await.unwrap();
        assert_eq!(theirs.read(&mut buf).await.unwrap(), 4);
        assert_eq!(count(), start + 1, "writes do not count");
        drop(theirs);
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        assert_eq!(count(), start + 1, "end of stream does not count");
    }

    #[test]
    fn the_spin_window_runs_from_the_last_activity_and_then_ends() {
        let window = 100_000; // 100 µs
        let t0 = Instant::now();
        let at = |us| t0 + Duration::from_micros(us);
        let mut spin = Spin::new();
        // Nothing read yet: no spin.
        assert!(!spin.keep_spinning(0, at(0), window));
        // Data read: spin until the window has passed since the first park after it.
        assert!(spin.keep_spinning(1, at(10), window));
        assert!(spin.keep_spinning(1, at(109), window));
        assert!(!spin.keep_spinning(1, at(110), window));
        // Once over, it stays over until the next read, however soon the worker parks again.
        assert!(!spin.keep_spinning(1, at(111), window));
        // A read during the spin starts the window again.
        assert!(spin.keep_spinning(2, at(200), window));
        assert!(spin.keep_spinning(3, at(290), window));
        assert!(spin.keep_spinning(3, at(389), window));
        assert!(!spin.keep_spinning(3, at(390), window));
        // A clock that goes backwards (another thread's `Instant`) counts as no time passed.
        assert!(spin.keep_spinning(4, at(500), window));
        assert!(spin.keep_spinning(4, at(400), window));
    }

    /// A worker built like the gateway's (`on_thread_park(before_park)` and a spinner) polls
    /// instead of sleeping for the window after data was read, then sleeps again: counted as
    /// calls of the park hook while the runtime has nothing to do. The window is far longer
    /// than the config allows: on a loaded machine every turn's yield may hand the core away
    /// for a scheduler slice (milliseconds), and the test must not depend on the load.
    #[test]
    fn an_idle_worker_spins_only_within_the_window_after_activity() {
        static PARKS: AtomicU64 = AtomicU64::new(0);
        let parks = || PARKS.load(Ordering::Relaxed);
        let window = Duration::from_millis(100);
        set_idle_spin(window);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(|| {
                PARKS.fetch_add(1, Ordering::Relaxed);
                before_park();
            })
            .build()
            .expect("runtime");
        let spun_before = idle_spin_seconds();
        let (quiet, after_read, after_window) = runtime.block_on(async {
            drop(tokio::spawn(spinner()));
            tokio::task::yield_now().await;
            let idle = || async {
                let before = parks();
                tokio::time::sleep(Duration::from_millis(150)).await;
                parks() - before
            };
            // No read yet: the worker sleeps through the timer.
            let quiet = idle().await;
            // A read brought data: the worker polls for the window, then sleeps again.
            note_activity();
            let after_read = idle().await;
            // Nothing read since: no spin at all.
            let after_window = idle().await;
            (quiet, after_read, after_window)
        });
        set_idle_spin(Duration::ZERO);
        let spun = idle_spin_seconds() - spun_before;
        assert!(quiet <= 5, "slept through an idle period: {quiet} parks");
        assert!(
            after_read >= 10,
            "polled instead of sleeping after a read: {after_read} parks"
        );
        assert!(after_window <= 5, "slept again: {after_window} parks");
        // The empty turns are counted: about the window (a turn's yield included), never the
        // sleeps before and after it.
        assert!((0.05..0.14).contains(&spun), "spun {spun} s");
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
