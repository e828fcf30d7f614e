//! What the fuzz targets share: reading parameters off the front of an input, cutting bytes
//! into reads, a scripted in-memory socket, the paused-time runtime every async target runs on,
//! and a check that the bytes our HTTP/2 engine wrote are valid HTTP/2.
//!
//! Each target's input layout is in the doc comment at the top of its file; the seeds under
//! `fuzz/corpus/` follow them (`fuzz/seeds.py` writes them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http2::frame::{self, Frame, FrameReader};
use http2::hpack;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long (virtual time) an async target lets one input run. Time is paused, so timers
/// fire as soon as nothing else can run: the bound costs no wall-clock time, and a connection
/// that would wait forever (a peer that never answers) ends here.
pub const RUN_LIMIT: Duration = Duration::from_secs(120);

/// Takes parameters off the front of an input; past the end every byte reads as 0.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Wraps a fuzz input.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// The next byte (0 past the end).
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// The next two bytes, big-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    /// Up to `n` next bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Up to `len & mask` next bytes, `len` being the next byte: a short field.
    pub fn field(&mut self, mask: u8) -> &'a [u8] {
        let len = self.byte() & mask;
        self.take(usize::from(len))
    }

    /// A chunk prefixed by its 16-bit big-endian length (cut short at the end of the input);
    /// `None` once the input is used up.
    pub fn chunk(&mut self) -> Option<&'a [u8]> {
        if self.data.is_empty() {
            return None;
        }
        let len = usize::from(self.u16());
        Some(self.take(len))
    }

    /// Everything left.
    pub fn rest(self) -> &'a [u8] {
        self.data
    }

    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Cuts `data` into reads. `pattern` 0 is one read of everything; otherwise a deterministic
/// sequence of sizes, mostly small (1 to 16 bytes, which splits frame heads, varints and
/// base64 quanta) with some larger ones, drawn from a generator seeded by `pattern`.
pub fn split(data: &[u8], pattern: u8) -> Vec<Bytes> {
    let data = Bytes::copy_from_slice(data);
    if pattern == 0 {
        return if data.is_empty() {
            Vec::new()
        } else {
            vec![data]
        };
    }
    let mut state = u32::from(pattern).wrapping_mul(0x9e37_79b9) | 1;
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let size = match state % 8 {
            0 => 1 + (state >> 8) as usize % 2048,
            1 => 1 + (state >> 8) as usize % 128,
            _ => 1 + (state >> 8) as usize % 16,
        };
        let end = (at + size).min(data.len());
        out.push(data.slice(at..end));
        at = end;
    }
    out
}

/// Cuts HTTP/2 bytes into reads as a peer sends them: pattern 7 is one read per frame (by the
/// 9-byte heads; the client preface, if first, is a read of its own), anything else as
/// [`split`] does.
pub fn split_h2(data: &[u8], pattern: u8) -> Vec<Bytes> {
    if pattern != 7 {
        return split(data, pattern);
    }
    let data = Bytes::copy_from_slice(data);
    let mut out = Vec::new();
    let mut at = 0;
    if data.starts_with(frame::PREFACE) {
        out.push(data.slice(..frame::PREFACE.len()));
        at = frame::PREFACE.len();
    }
    while at < data.len() {
        let len = match data.get(at..at + 3) {
            Some(&[a, b, c]) => u32::from_be_bytes([0, a, b, c]) as usize,
            _ => 0,
        };
        let end = (at + frame::HEAD_LEN + len).min(data.len());
        out.push(data.slice(at..end));
        at = end;
    }
    out
}

/// What a [`ScriptIo`] does once its reads are used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtEnd {
    /// Reads return end of file: the peer closed its side.
    Eof,
    /// Reads stay pending forever: the peer went quiet (only timers move things on).
    Hang,
}

/// Bytes written to a [`ScriptIo`], shared with the target after the IO moved into a task.
pub type Written = Arc<Mutex<Vec<u8>>>;

/// Writes kept for checking: a connection may write more than this (a long echo), and only
/// the first bytes are checked then.
const WRITTEN_CAP: usize = 4 << 20;

/// An in-memory socket: reads come from a script, writes are recorded. Between two reads the
/// socket is not ready once (it wakes its task at once), as bytes arriving in several packets
/// would be: other tasks run in between (a client's requests go out before the answers
/// arrive).
pub struct ScriptIo {
    reads: VecDeque<Bytes>,
    /// The next read waits for one turn of the runtime first.
    pause: bool,
    at_end: AtEnd,
    /// Called once, when the reads are used up (e.g. to start a server's drain).
    on_end: Option<Box<dyn FnOnce() + Send>>,
    /// Most bytes one write call takes (`usize::MAX`: all), to exercise partial writes.
    write_limit: usize,
    /// Bytes the peer reads in all; past it every write is pending (a peer that stopped
    /// reading), `None`: no limit.
    write_budget: Option<usize>,
    written: Written,
}

impl ScriptIo {
    /// A socket whose reads are `reads`, then `at_end`.
    pub fn new(reads: Vec<Bytes>, at_end: AtEnd) -> Self {
        Self {
            reads: reads.into(),
            pause: false,
            at_end,
            on_end: None,
            write_limit: usize::MAX,
            write_budget: None,
            written: Arc::default(),
        }
    }

    /// Calls `f` once the reads are used up.
    pub fn on_end(mut self, f: impl FnOnce() + Send + 'static) -> Self {
        self.on_end = Some(Box::new(f));
        self
    }

    /// Takes at most `limit` bytes per write call (at least 1).
    pub fn write_limit(mut self, limit: usize) -> Self {
        self.write_limit = limit.max(1);
        self
    }

    /// Takes `budget` bytes in all, then leaves every write pending.
    pub fn write_budget(mut self, budget: usize) -> Self {
        self.write_budget = Some(budget);
        self
    }

    /// Where the writes are recorded.
    pub fn written(&self) -> Written {
        self.written.clone()
    }

    /// How many of `offered` bytes the next write takes (0: pending).
    fn accept(&mut self, offered: usize) -> usize {
        let mut n = offered.min(self.write_limit);
        if let Some(budget) = &mut self.write_budget {
            n = n.min(*budget);
            *budget -= n;
        }
        n
    }

    fn record(&self, bytes: &[u8]) {
        let mut w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let room = WRITTEN_CAP.saturating_sub(w.len());
        w.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

impl AsyncRead for ScriptIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pause {
            this.pause = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if let Some(front) = this.reads.front_mut() {
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front.split_to(n));
            if front.is_empty() {
                this.reads.pop_front();
                this.pause = true;
            }
            return Poll::Ready(Ok(()));
        }
        if let Some(f) = this.on_end.take() {
            f();
        }
        match this.at_end {
            AtEnd::Eof => Poll::Ready(Ok(())),
            // Never woken: the task goes on when a timer or another event wakes it.
            AtEnd::Hang => Poll::Pending,
        }
    }
}

impl AsyncWrite for ScriptIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = self.accept(buf.len());
        if n == 0 {
            return Poll::Pending;
        }
        self.record(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let offered: usize = bufs.iter().map(|b| b.len()).sum();
        if offered == 0 {
            return Poll::Ready(Ok(0));
        }
        let n = self.accept(offered);
        if n == 0 {
            return Poll::Pending;
        }
        let mut left = n;
        for b in bufs {
            let take = b.len().min(left);
            self.record(&b[..take]);
            left -= take;
            if left == 0 {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Write limits a flag byte picks from (see [`ScriptIo::write_limit`]).
pub fn write_limit(choice: u8) -> usize {
    match choice % 4 {
        0 => usize::MAX,
        1 => 1,
        2 => 9,
        _ => 100,
    }
}

/// A current-thread runtime with time paused (see [`RUN_LIMIT`]).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime")
}

/// Checks that `wire`, what our engine wrote to its peer, is valid HTTP/2: the client preface
/// first when `preface`, then frames that pass every per-frame check of RFC 9113 (a peer
/// would otherwise answer GOAWAY), header blocks not interrupted, and every header block
/// decodable by a fresh HPACK decoder in order (the encoder and its dynamic table in step
/// with the peer's). A frame cut off at the end (a peer that stopped reading) is fine.
pub fn check_h2_output(wire: &[u8], preface: bool) {
    let mut reader = FrameReader::new(frame::MAX_FRAME_SIZE_LIMIT, 64 << 20);
    reader.buf_mut().extend_from_slice(wire);
    if preface {
        match reader.take_preface() {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => panic!("our client did not start with the preface: {e}"),
        }
    }
    let mut decoder = hpack::Decoder::new(4096);
    loop {
        match reader.next() {
            Ok(Some(Frame::Headers { block, stream, .. })) => {
                if let Err(e) = decoder.decode(&block, usize::MAX, |_, _| {}) {
                    panic!(
                        "our engine wrote a header block a peer cannot decode (stream {stream}): {e}"
                    );
                }
            }
            Ok(Some(Frame::PushPromise { .. })) => panic!("our engine wrote a PUSH_PROMISE"),
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(e) => panic!("our engine wrote invalid HTTP/2: {e}"),
        }
    }
}

/// The recorded bytes of a [`ScriptIo`].
pub fn take_written(w: &Written) -> Vec<u8> {
    std::mem::take(&mut *w.lock().unwrap_or_else(|e| e.into_inner()))
}

/// A body of ready frames: data and trailers, or an error that resets the stream.
#[derive(Debug, Default)]
pub struct Frames(pub VecDeque<Result<http_body::Frame<Bytes>, String>>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = String;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, String>>> {
        Poll::Ready(self.0.pop_front())
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

/// Collects at most `limit` bytes of a body's data (then stops reading) and its trailers.
pub async fn collect<B>(mut body: B, limit: usize) -> (BytesMut, Option<http::HeaderMap>, bool)
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    use http_body_util::BodyExt;
    let mut data = BytesMut::new();
    let mut trailers = None;
    let mut ok = true;
    while data.len() < limit {
        match body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers = Some(t);
                    }
                }
            },
            Some(Err(_)) => {
                ok = false;
                break;
            }
            None => break,
        }
    }
    (data, trailers, ok)
}
