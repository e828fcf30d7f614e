//! Thread-per-core: the gateway's data plane runs on N single-threaded runtimes ("workers")
//! instead of one work-stealing pool, so that a call never changes threads.
//!
//! Worker 0 is the runtime that started the gateway (the binary runs it on the main thread as a
//! current-thread runtime; a test runs it wherever the test runs); workers 1..N are threads
//! this module starts, each with its own current-thread runtime, timer and I/O driver. Accepted
//! client connections are handed to the workers in turn, and each worker keeps its own
//! connection to every part (the app's pool keeps a lane per worker), so a call's client socket, call
//! future, part connection and part socket all live on one thread: waking the part
//! connection's task is a push onto the local run queue, not a futex and a context switch to
//! another worker (the cost that kept the latency at concurrency 1 high however little work a
//! call did; docs/perf/journal.md, round 4).
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
    /// Requests sent to parts and their answers on this thread (see [`request_sent`]).
    static ANSWERS: Answers = const { Answers::new() };
}

/// How long a worker keeps polling its sockets after the last read that brought data, before
/// it blocks in `epoll_wait` (nanoseconds; 0: never spins). See [`before_park`].
static SPIN_NS: AtomicU64 = AtomicU64::new(0);

/// How long a worker that waits for a part's answer polls for it before it blocks in
/// `epoll_wait` (nanoseconds; 0: never). See [`before_park`].
static ANSWER_SPIN_NS: AtomicU64 = AtomicU64::new(0);

/// Nanoseconds all workers spent in idle-spin turns that found no data (see
/// [`idle_spin_seconds`]).
static SPUN_NS: AtomicU64 = AtomicU64::new(0);

/// Nanoseconds all workers spent in turns that polled for an answer and found no data (see
/// [`answer_spin_seconds`]).
static ANSWER_SPUN_NS: AtomicU64 = AtomicU64::new(0);

/// A worker's idle-spin state.
struct Spin {
    /// [`ACTIVITY`] when last looked at.
    seen: u64,
    /// When [`ACTIVITY`] was last seen to move.
    last: Option<Instant>,
    /// The spinner task's waker: waking it turns the runtime's next park into a poll.
    waker: Option<Waker>,
    /// The last spin turn: when it started, [`ACTIVITY`] then, and whether it waited for an
    /// answer (else it was the idle spin's).
    turn: Option<(Instant, u64, bool)>,
    /// The window for an awaited answer.
    answer: AnswerWait,
}

/// When a worker waits for a part's answer (see [`request_sent`]), and how the last waits went.
struct AnswerWait {
    /// Requests sent ([`Answers`]) when last looked at.
    seen: u64,
    /// When this window began (the first park after a request went out), while one runs.
    since: Option<Instant>,
    /// Windows that ended without the answer skip the next `backoff` requests (doubling, at
    /// most [`MAX_ANSWER_BACKOFF`]): a part that answers slowly is not waited for awake.
    backoff: u64,
    /// No window for requests before the count of those sent reaches this.
    skip_until: u64,
}

/// The most requests that a worker lets go by without waiting awake after its waits missed.
const MAX_ANSWER_BACKOFF: u64 = 64;

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
    SPIN_NS.store(nanos(window), Ordering::Relaxed);
}

/// Sets how long a worker waits awake for a part's answer (`gateway.answer_spin`); zero turns
/// it off. One value for the process, like [`set_idle_spin`].
pub fn set_answer_spin(window: Duration) {
    ANSWER_SPIN_NS.store(nanos(window), Ordering::Relaxed);
}

/// `duration` in nanoseconds, saturating.
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Counts a request sent from this thread whose answer is now due: a worker that parks after a
/// request went out and before any answer came may poll for it instead of sleeping
/// ([`before_park`]). Installed as the HTTP/2 engine's `request_sent` hook.
pub fn request_sent() {
    ANSWERS.with(|a| {
        a.sent.set(a.sent.get().wrapping_add(1));
        a.answered_at_send.set(a.answered.get());
    });
}

/// Counts the answer to a request counted by [`request_sent`] (its head, its failure, or the
/// call giving up). Installed as the HTTP/2 engine's `answer_arrived` hook.
pub fn answer_arrived() {
    // Called on another thread (never on the gateway's workers, where a call stays on one
    // thread), it counts there: the sender's window then only runs to its end.
    let _ = ANSWERS.try_with(|a| a.answered.set(a.answered.get().wrapping_add(1)));
}

/// A thread's requests to parts and their answers (see [`request_sent`]).
struct Answers {
    sent: Cell<u64>,
    answered: Cell<u64>,
    /// `answered` when the latest request went out.
    answered_at_send: Cell<u64>,
}

impl Answers {
    const fn new() -> Self {
        Answers {
            sent: Cell::new(0),
            answered: Cell::new(0),
            answered_at_send: Cell::new(0),
        }
    }

    /// Requests sent, and whether an answer has come since the latest.
    fn now(&self) -> (u64, bool) {
        let waiting = self.answered.get() == self.answered_at_send.get();
        (self.sent.get(), waiting)
    }
}

/// Counts a read that brought data on this thread: the signal that keeps an idle worker
/// spinning (one thread-local add).
#[inline]
pub fn note_activity() {
    ACTIVITY.with(|a| a.set(a.get().wrapping_add(1)));
}

/// The runtimes' `on_thread_park` hook: runs when a worker has no task left and is about to
/// block in `epoll_wait`. While a part's answer is due (`gateway.answer_spin`, see
/// [`AnswerWait::due`]), or within the idle spin's window after the last read that brought
/// data (`gateway.idle_spin`), it yields the CPU once (`sched_yield`) and wakes this worker's
/// spinner task instead, so the runtime polls its sockets without blocking and comes back here.
///
/// Why: on a virtual machine an idle vCPU halts, and waking a thread on it costs the
/// hypervisor's round trip, several times per proxied call at low concurrency (measured in
/// docs/perf/journal.md, rounds 10 and 12). A worker that expects the answer to what it just
/// forwarded stays on its CPU for a short while instead, and reads the answer without being
/// woken. The yield keeps the spin from taking a core that another thread is waiting for: on a
/// loaded machine the scheduler runs that thread, on an idle one the yield returns at once.
fn before_park() {
    let idle = SPIN_NS.load(Ordering::Relaxed);
    let answer = ANSWER_SPIN_NS.load(Ordering::Relaxed);
    if idle == 0 && answer == 0 {
        return;
    }
    let activity = ACTIVITY.with(Cell::get);
    let (sent, waiting) = ANSWERS.with(Answers::now);
    let _ = SPIN.try_with(|spin| {
        let mut spin = spin.borrow_mut();
        let spin = &mut *spin;
        // A turn that read nothing was spent only on spinning, and is counted below.
        let empty_turn = spin
            .turn
            .take()
            .filter(|&(_, before, _)| before == activity);
        if idle == 0 && !waiting && empty_turn.is_none() {
            // Nothing to wait for and nothing to count: no clock read (the answer spin's
            // usual park, the one after the answer went back to the client).
            spin.answer.answered(sent);
            return;
        }
        let now = Instant::now();
        if let Some((start, _, for_answer)) = empty_turn {
            let spun = if for_answer {
                &ANSWER_SPUN_NS
            } else {
                &SPUN_NS
            };
            spun.fetch_add(
                nanos(now.saturating_duration_since(start)),
                Ordering::Relaxed,
            );
        }
        let answer_due = answer != 0 && spin.answer.due(sent, waiting, now, answer);
        let idle_spin = idle != 0 && spin.keep_spinning(activity, now, idle);
        if (answer_due || idle_spin)
            && let Some(waker) = &spin.waker
        {
            spin.turn = Some((now, activity, answer_due));
            std::thread::yield_now();
            waker.wake_by_ref();
        }
    });
}

/// Seconds the workers spent in idle-spin turns that found no data: what `gateway.idle_spin`
/// costs (`partgate_worker_idle_spin_seconds_total`). Wall time, including any the spinning
/// thread gave away in its yields.
pub fn idle_spin_seconds() -> f64 {
    Duration::from_nanos(SPUN_NS.load(Ordering::Relaxed)).as_secs_f64()
}

/// Seconds the workers spent polling for parts' answers in turns that found no data: what
/// `gateway.answer_spin` costs (`partgate_worker_answer_spin_seconds_total`), counted like
/// [`idle_spin_seconds`].
pub fn answer_spin_seconds() -> f64 {
    Duration::from_nanos(ANSWER_SPUN_NS.load(Ordering::Relaxed)).as_secs_f64()
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
            answer: AnswerWait::new(),
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

impl AnswerWait {
    /// Nothing sent yet, no backoff.
    const fn new() -> Self {
        AnswerWait {
            seen: 0,
            since: None,
            backoff: 0,
            skip_until: 0,
        }
    }

    /// Whether a worker about to park should poll once more for an answer: `sent` is the
    /// thread's count of requests sent, `waiting` whether no answer has come since the latest,
    /// `window` the wait in nanoseconds. A window runs from the first park after a request
    /// went out until an answer comes; one that ends without it makes the next requests skip
    /// theirs (a part that answers slower than the window is not waited for awake).
    fn due(&mut self, sent: u64, waiting: bool, now: Instant, window: u64) -> bool {
        if !waiting {
            self.answered(sent);
            return false;
        }
        if sent != self.seen {
            self.seen = sent;
            self.since = (sent >= self.skip_until).then_some(now);
        }
        let Some(since) = self.since else {
            return false;
        };
        if now.saturating_duration_since(since).as_nanos() < u128::from(window) {
            return true;
        }
        self.since = None;
        self.backoff = (self.backoff * 2).clamp(1, MAX_ANSWER_BACKOFF);
        self.skip_until = sent.saturating_add(self.backoff + 1);
        false
    }

    /// An answer has come since the latest of `sent` requests: a window that ran ends, caught.
    fn answered(&mut self, sent: u64) {
        self.seen = sent;
        if self.since.take().is_some() {
            self.backoff = 0;
        }
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

    #[test]
    fn an_answer_window_runs_until_the_answer_and_misses_back_off() {
        let window = 100_000; // 100 µs
        let t0 = Instant::now();
        let at = |us| t0 + Duration::from_micros(us);
        let mut wait = AnswerWait::new();
        // Nothing sent: no wait.
        assert!(!wait.due(0, true, at(0), window));
        // Request 1 out: wait from the first park after it until the answer comes.
        assert!(wait.due(1, true, at(10), window));
        assert!(wait.due(1, true, at(100), window));
        assert!(!wait.due(1, false, at(101), window));
        // Answered: no more waiting, however soon the worker parks again.
        assert!(!wait.due(1, false, at(102), window));
        // Answered before the first park: nothing to wait for.
        assert!(!wait.due(2, false, at(200), window));
        // Request 3 goes unanswered past the window: a miss.
        assert!(wait.due(3, true, at(300), window));
        assert!(wait.due(3, true, at(399), window));
        assert!(!wait.due(3, true, at(400), window));
        assert!(!wait.due(3, true, at(401), window));
        // After the first miss the next request is not waited for, the one after is.
        assert!(!wait.due(4, true, at(500), window));
        assert!(wait.due(5, true, at(600), window));
        // A second miss in a row: the next two go by.
        assert!(!wait.due(5, true, at(700), window));
        assert!(!wait.due(6, true, at(800), window));
        assert!(!wait.due(7, true, at(900), window));
        assert!(wait.due(8, true, at(1000), window));
        // A caught answer ends the backoff: the next request is waited for again.
        assert!(!wait.due(8, false, at(1050), window));
        assert!(wait.due(9, true, at(1100), window));
        // Misses in a row back off to at most MAX_ANSWER_BACKOFF requests between waits.
        let mut t = 2_000;
        let mut gap = 0;
        let mut gaps = Vec::new();
        for sent in 10..1_000 {
            t += 1_000;
            if wait.due(sent, true, at(t), window) {
                gaps.push(gap);
                gap = 0;
                // Unanswered: the window ends, a miss.
                assert!(!wait.due(sent, true, at(t + 100), window));
            } else {
                gap += 1;
            }
        }
        assert_eq!(&gaps[..8], [0, 1, 2, 4, 8, 16, 32, 64]);
        assert!(
            gaps[8..].iter().all(|&g| g == MAX_ANSWER_BACKOFF),
            "{gaps:?}"
        );
    }

    /// A current-thread runtime built like a worker's (`before_park` as its park hook, a
    /// spinner on it), and how many times the hook ran.
    fn hooked_runtime() -> (tokio::runtime::Runtime, Arc<AtomicU64>) {
        let parks = Arc::new(AtomicU64::new(0));
        let counted = parks.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(move || {
                counted.fetch_add(1, Ordering::Relaxed);
                before_park();
            })
            .build()
            .expect("runtime");
        runtime.block_on(async {
            drop(tokio::spawn(spinner()));
            tokio::task::yield_now().await;
        });
        (runtime, parks)
    }

    /// Parks of the hooked runtime while it sleeps on a 150 ms timer.
    async fn parks_while_idle(parks: &AtomicU64) -> u64 {
        let before = parks.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(150)).await;
        parks.load(Ordering::Relaxed) - before
    }

    /// A worker built like the gateway's polls instead of sleeping for the window after data
    /// was read, then sleeps again: counted as calls of the park hook while the runtime has
    /// nothing to do. The window is far longer than the config allows: on a loaded machine
    /// every turn's yield may hand the core away for a scheduler slice (milliseconds), and the
    /// test must not depend on the load.
    #[test]
    fn an_idle_worker_spins_only_within_the_window_after_activity() {
        set_idle_spin(Duration::from_millis(100));
        let (runtime, parks) = hooked_runtime();
        let spun_before = idle_spin_seconds();
        let (quiet, after_read, after_window) = runtime.block_on(async {
            // No read yet: the worker sleeps through the timer.
            let quiet = parks_while_idle(&parks).await;
            // A read brought data: the worker polls for the window, then sleeps again.
            note_activity();
            let after_read = parks_while_idle(&parks).await;
            // Nothing read since: no spin at all.
            let after_window = parks_while_idle(&parks).await;
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

    /// A worker that sent a request polls until its answer comes or the window ends, and
    /// sleeps once the answer is in; the time is counted as the answer spin's. (A long window,
    /// for the reason above.)
    #[test]
    fn a_worker_waits_awake_for_an_answer_and_sleeps_once_it_comes() {
        set_answer_spin(Duration::from_millis(100));
        let (runtime, parks) = hooked_runtime();
        let spun_before = answer_spin_seconds();
        let (quiet, waiting, skipped, answered) = runtime.block_on(async {
            let quiet = parks_while_idle(&parks).await;
            // A request out, its answer not yet in: the worker polls for the window, which
            // runs out (a miss).
            request_sent();
            let waiting = parks_while_idle(&parks).await;
            answer_arrived();
            // After a miss the next request is not waited for.
            request_sent();
            let skipped = parks_while_idle(&parks).await;
            answer_arrived();
            // A request answered before the worker parks: nothing to wait for.
            request_sent();
            answer_arrived();
            let answered = parks_while_idle(&parks).await;
            (quiet, waiting, skipped, answered)
        });
        set_answer_spin(Duration::ZERO);
        let spun = answer_spin_seconds() - spun_before;
        assert!(quiet <= 5, "slept with nothing sent: {quiet} parks");
        assert!(waiting >= 10, "polled for the answer: {waiting} parks");
        assert!(skipped <= 5, "backed off after a miss: {skipped} parks");
        assert!(answered <= 5, "slept once answered: {answered} parks");
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
