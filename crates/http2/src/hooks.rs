//! Hooks: how the engine tells the runtime around it what its connections are doing, without
//! knowing that runtime. The app installs them once at start-up ([`install`]); until then they
//! do nothing.
//!
//! A thread-per-core runtime that waits awake for a part's answer (partgate's `answer_spin`)
//! needs to know when a request went out on this thread and when its answer came, and an idle
//! spin needs to know when a read brought bytes. The engine calls these at those points; the
//! calls are plain function pointers, so a hook costs one indirect call.

use std::sync::OnceLock;

/// What the engine reports. Each is called on the thread that drives the connection or the
/// call (on a thread-per-core runtime, the worker that owns both).
#[derive(Debug, Clone, Copy)]
pub struct Hooks {
    /// A client request was queued to the peer: its answer is now due.
    pub request_sent: fn(),
    /// The answer to a request reported with `request_sent` arrived, or the call ended without
    /// one (failed, reset or dropped). Called exactly once per `request_sent`, possibly on
    /// another thread when the call was moved there.
    pub answer_arrived: fn(),
    /// A read from a connection's socket brought bytes.
    pub data_read: fn(),
}

static HOOKS: OnceLock<Hooks> = OnceLock::new();

/// Installs the hooks for the whole process. The first call wins; later calls return `false`
/// and change nothing (tests that start several gateways in one process share them).
pub fn install(hooks: Hooks) -> bool {
    HOOKS.set(hooks).is_ok()
}

/// Reports a read that brought bytes.
#[inline]
pub(crate) fn data_read() {
    if let Some(h) = HOOKS.get() {
        (h.data_read)();
    }
}

/// A request whose answer is due: reported sent when made, answered when dropped.
pub(crate) struct AnswerDue(());

impl AnswerDue {
    #[inline]
    pub(crate) fn new() -> Self {
        if let Some(h) = HOOKS.get() {
            (h.request_sent)();
        }
        AnswerDue(())
    }
}

impl Drop for AnswerDue {
    #[inline]
    fn drop(&mut self) {
        if let Some(h) = HOOKS.get() {
            (h.answer_arrived)();
        }
    }
}
