//! HTTP/2 frames (RFC 9113 sections 4 and 6): a reader that splits received bytes into
//! validated frames, writers that append frames to a buffer, and the write queue of a connection.
//!
//! Design, and why:
//! - Zero copy in: [`FrameReader`] owns the socket's read buffer and hands out each payload as
//!   `split_to().freeze()` of it, so DATA bodies reach the application without a copy.
//! - Stateless checks here, stream state in the engine: everything RFC 9113 section 6 lets us
//!   check from one frame (stream id 0 or not, fixed lengths, padding, SETTINGS values) and the
//!   CONTINUATION sequence is checked by the reader, so the engine only tracks streams. Header
//!   blocks come out whole: CONTINUATION frames joined, padding and priority fields removed.
//! - Every violation is a connection error ([`ConnError`]): the few that RFC 9113 allows to be
//!   stream errors (a wrong-length PRIORITY, an oversized DATA) only come from broken peers, and
//!   closing is simpler and safe.
//! - Zero copy out: frames are small and appended to one scratch buffer by the `put_*` writers
//!   (one `reserve`, then plain writes); large DATA payloads stay the `Bytes` they came in and
//!   are queued next to it ([`WriteQueue`]), then written with vectored writes.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::AsyncWrite;

/// The client connection preface (RFC 9113 section 3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of a frame header.
pub const HEAD_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE every peer starts with (and the least it may advertise).
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;
/// The largest SETTINGS_MAX_FRAME_SIZE a peer may advertise.
pub const MAX_FRAME_SIZE_LIMIT: u32 = (1 << 24) - 1;
/// Initial flow-control window of the connection and of every stream.
pub const DEFAULT_WINDOW: u32 = 65_535;
/// The largest flow-control window.
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// Frame types (RFC 9113 section 6).
pub mod kind {
    /// DATA.
    pub const DATA: u8 = 0;
    /// HEADERS.
    pub const HEADERS: u8 = 1;
    /// PRIORITY (deprecated; parsed and ignored).
    pub const PRIORITY: u8 = 2;
    /// RST_STREAM.
    pub const RST_STREAM: u8 = 3;
    /// SETTINGS.
    pub const SETTINGS: u8 = 4;
    /// PUSH_PROMISE.
    pub const PUSH_PROMISE: u8 = 5;
    /// PING.
    pub const PING: u8 = 6;
    /// GOAWAY.
    pub const GOAWAY: u8 = 7;
    /// WINDOW_UPDATE.
    pub const WINDOW_UPDATE: u8 = 8;
    /// CONTINUATION.
    pub const CONTINUATION: u8 = 9;
}

/// Flags.
pub mod flag {
    /// DATA, HEADERS: last frame of the stream from this side.
    pub const END_STREAM: u8 = 0x1;
    /// SETTINGS, PING: an acknowledgement.
    pub const ACK: u8 = 0x1;
    /// HEADERS, PUSH_PROMISE, CONTINUATION: the header block ends in this frame.
    pub const END_HEADERS: u8 = 0x4;
    /// DATA, HEADERS, PUSH_PROMISE: a pad length byte leads, padding trails.
    pub const PADDED: u8 = 0x8;
    /// HEADERS: 5 bytes of priority fields follow the pad length.
    pub const PRIORITY: u8 = 0x20;
}

/// SETTINGS identifiers.
pub mod setting {
    /// SETTINGS_HEADER_TABLE_SIZE.
    pub const HEADER_TABLE_SIZE: u16 = 1;
    /// SETTINGS_ENABLE_PUSH.
    pub const ENABLE_PUSH: u16 = 2;
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub const MAX_CONCURRENT_STREAMS: u16 = 3;
    /// SETTINGS_INITIAL_WINDOW_SIZE.
    pub const INITIAL_WINDOW_SIZE: u16 = 4;
    /// SETTINGS_MAX_FRAME_SIZE.
    pub const MAX_FRAME_SIZE: u16 = 5;
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    pub const MAX_HEADER_LIST_SIZE: u16 = 6;
}

/// Error codes (RFC 9113 section 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Reason(pub u32);

impl Reason {
    /// Graceful shutdown, or no error.
    pub const NO_ERROR: Reason = Reason(0x0);
    /// Unspecific protocol error.
    pub const PROTOCOL_ERROR: Reason = Reason(0x1);
    /// Unexpected internal error.
    pub const INTERNAL_ERROR: Reason = Reason(0x2);
    /// Flow-control protocol violated.
    pub const FLOW_CONTROL_ERROR: Reason = Reason(0x3);
    /// SETTINGS not acknowledged in time.
    pub const SETTINGS_TIMEOUT: Reason = Reason(0x4);
    /// Frame received on a half-closed stream.
    pub const STREAM_CLOSED: Reason = Reason(0x5);
    /// Frame of an invalid size.
    pub const FRAME_SIZE_ERROR: Reason = Reason(0x6);
    /// Stream refused before any processing.
    pub const REFUSED_STREAM: Reason = Reason(0x7);
    /// Stream no longer needed.
    pub const CANCEL: Reason = Reason(0x8);
    /// The HPACK context cannot be maintained.
    pub const COMPRESSION_ERROR: Reason = Reason(0x9);
    /// A CONNECT tunnel failed.
    pub const CONNECT_ERROR: Reason = Reason(0xa);
    /// The peer is generating excessive load.
    pub const ENHANCE_YOUR_CALM: Reason = Reason(0xb);
    /// The transport does not meet security requirements.
    pub const INADEQUATE_SECURITY: Reason = Reason(0xc);
    /// HTTP/1.1 must be used instead.
    pub const HTTP_1_1_REQUIRED: Reason = Reason(0xd);

    /// The code's name from RFC 9113, or "unknown error code".
    pub fn description(self) -> &'static str {
        match self.0 {
            0x0 => "NO_ERROR",
            0x1 => "PROTOCOL_ERROR",
            0x2 => "INTERNAL_ERROR",
            0x3 => "FLOW_CONTROL_ERROR",
            0x4 => "SETTINGS_TIMEOUT",
            0x5 => "STREAM_CLOSED",
            0x6 => "FRAME_SIZE_ERROR",
            0x7 => "REFUSED_STREAM",
            0x8 => "CANCEL",
            0x9 => "COMPRESSION_ERROR",
            0xa => "CONNECT_ERROR",
            0xb => "ENHANCE_YOUR_CALM",
            0xc => "INADEQUATE_SECURITY",
            0xd => "HTTP_1_1_REQUIRED",
            _ => "unknown error code",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (0x{:x})", self.description(), self.0)
    }
}

/// One received frame. Payloads are zero-copy slices of the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `flow_len`: payload length including padding (what flow control counts).
    Data {
        /// Stream id (never 0).
        stream: u32,
        /// The payload without padding.
        data: Bytes,
        /// END_STREAM flag.
        end_stream: bool,
        /// The frame's whole payload length, padding included.
        flow_len: u32,
    },
    /// A complete header block: CONTINUATION frames joined, padding and priority fields removed.
    Headers {
        /// Stream id (never 0).
        stream: u32,
        /// The HPACK block.
        block: Bytes,
        /// END_STREAM flag of the HEADERS frame.
        end_stream: bool,
    },
    /// PRIORITY (deprecated by RFC 9113; the engine ignores it).
    Priority {
        /// Stream id (never 0).
        stream: u32,
        /// Stream dependency (exclusive bit removed).
        depends_on: u32,
    },
    /// RST_STREAM.
    RstStream {
        /// Stream id (never 0).
        stream: u32,
        /// Why the peer reset the stream.
        reason: Reason,
    },
    /// `params` in the order sent; unknown identifiers are kept (the receiver ignores them).
    Settings {
        /// An acknowledgement (then `params` is empty).
        ack: bool,
        /// Identifier and value pairs, values already checked.
        params: Vec<(u16, u32)>,
    },
    /// PUSH_PROMISE, after its CONTINUATION frames. The header block is dropped: partgate
    /// never enables push, so the engine answers with a PROTOCOL_ERROR anyway.
    PushPromise {
        /// Stream id (never 0).
        stream: u32,
        /// The promised stream id.
        promised: u32,
    },
    /// PING.
    Ping {
        /// An acknowledgement.
        ack: bool,
        /// Opaque data to echo.
        payload: [u8; 8],
    },
    /// GOAWAY.
    GoAway {
        /// Highest stream id the peer may have processed.
        last_stream: u32,
        /// Why the peer closes.
        reason: Reason,
        /// Opaque debug data.
        debug: Bytes,
    },
    /// WINDOW_UPDATE. An increment of 0 on a stream is returned as-is (the engine resets the
    /// stream); on stream 0 it is a connection error found by the reader.
    WindowUpdate {
        /// Stream id, 0 for the connection.
        stream: u32,
        /// Window increment (reserved bit removed).
        increment: u32,
    },
    /// A frame of an unknown type (ignored by the receiver, RFC 9113 section 4.1).
    Unknown,
}

/// A connection error found while reading: send GOAWAY(reason) and close.
#[derive(Debug, Clone, thiserror::Error)]
#[error("HTTP/2 {reason}: {detail}")]
pub struct ConnError {
    /// The error code for GOAWAY.
    pub reason: Reason,
    /// What was wrong, for logs (and GOAWAY debug data).
    pub detail: &'static str,
}

fn err<T>(reason: Reason, detail: &'static str) -> Result<T, ConnError> {
    Err(ConnError { reason, detail })
}

fn protocol<T>(detail: &'static str) -> Result<T, ConnError> {
    err(Reason::PROTOCOL_ERROR, detail)
}

fn frame_size<T>(detail: &'static str) -> Result<T, ConnError> {
    err(Reason::FRAME_SIZE_ERROR, detail)
}

/// Free space kept in the read buffer for the next socket read.
const READ_RESERVE: usize = 16 * 1024;

/// Stream ids and window increments carry a reserved high bit that receivers ignore.
const U31_MASK: u32 = 0x7fff_ffff;

/// A HEADERS or PUSH_PROMISE frame without END_HEADERS: the block is joined here.
#[derive(Debug)]
struct Partial {
    stream: u32,
    end_stream: bool,
    /// Set for PUSH_PROMISE.
    promised: Option<u32>,
    block: BytesMut,
    /// CONTINUATION frames so far (bounded: empty ones cost CPU but no memory).
    continuations: usize,
}

/// Splits received bytes into frames.
///
/// A joined header block larger than `max_header_block` is a connection error
/// ENHANCE_YOUR_CALM: the block cannot be skipped without decoding it (HPACK state), so the
/// stream cannot be refused alone, and the peer ignored our SETTINGS_MAX_HEADER_LIST_SIZE.
#[derive(Debug)]
pub struct FrameReader {
    buf: BytesMut,
    max_frame_size: u32,
    max_header_block: usize,
    partial: Option<Partial>,
}

impl FrameReader {
    /// `max_frame_size`: our advertised SETTINGS_MAX_FRAME_SIZE (a larger frame is
    /// FRAME_SIZE_ERROR); `max_header_block`: cap on a joined header block in bytes (over it:
    /// ConnError ENHANCE_YOUR_CALM).
    pub fn new(max_frame_size: u32, max_header_block: usize) -> Self {
        FrameReader {
            buf: BytesMut::with_capacity(READ_RESERVE),
            max_frame_size: max_frame_size.clamp(DEFAULT_MAX_FRAME_SIZE, MAX_FRAME_SIZE_LIMIT),
            max_header_block,
            partial: None,
        }
    }

    /// The buffer socket reads append to. It has at least 16 KiB free, and room for the rest
    /// of a large frame whose head is already buffered (so it arrives without regrowing).
    pub fn buf_mut(&mut self) -> &mut BytesMut {
        let mut want = READ_RESERVE;
        if let Some(len) = self.head_len()
            && len <= self.max_frame_size
        {
            let total = HEAD_LEN + len as usize;
            want = want.max(total.saturating_sub(self.buf.len()));
        }
        if self.buf.capacity() - self.buf.len() < want {
            self.buf.reserve(want);
        }
        &mut self.buf
    }

    /// Bytes read and not yet taken as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Payload length of the buffered frame head, if 9 bytes are there.
    fn head_len(&self) -> Option<u32> {
        match self.buf.get(..3) {
            Some(&[a, b, c]) => Some(u32::from_be_bytes([0, a, b, c])),
            _ => None,
        }
    }

    /// The connection preface a server reads first: Ok(true) once the 24 bytes matched (and were
    /// consumed), Ok(false) when more bytes are needed, Err(PROTOCOL_ERROR) on a mismatch.
    pub fn take_preface(&mut self) -> Result<bool, ConnError> {
        let n = self.buf.len().min(PREFACE.len());
        if self.buf[..n] != PREFACE[..n] {
            return protocol("invalid connection preface");
        }
        if n < PREFACE.len() {
            return Ok(false);
        }
        self.buf.advance(PREFACE.len());
        Ok(true)
    }

    /// Next complete frame; Ok(None) when more bytes are needed.
    ///
    /// Validates per RFC 9113 section 6 everything that can be checked without stream state.
    /// After an error the connection is dead: do not call again.
    // Not an Iterator: it returns Ok(None) for "need more bytes", not "done".
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Frame>, ConnError> {
        loop {
            let Some(&[l0, l1, l2, kind, flags, s0, s1, s2, s3]) = self.buf.get(..HEAD_LEN) else {
                return Ok(None);
            };
            let len = u32::from_be_bytes([0, l0, l1, l2]);
            let stream = u32::from_be_bytes([s0, s1, s2, s3]) & U31_MASK;
            if len > self.max_frame_size {
                return frame_size("frame larger than SETTINGS_MAX_FRAME_SIZE");
            }
            if let Some(p) = &self.partial
                && (kind != kind::CONTINUATION || stream != p.stream)
            {
                return protocol("header block interrupted before END_HEADERS");
            }
            let len = len as usize;
            if self.buf.len() < HEAD_LEN + len {
                return Ok(None);
            }
            self.buf.advance(HEAD_LEN);
            let payload = self.buf.split_to(len).freeze();
            if let Some(frame) = self.parse(kind, flags, stream, payload)? {
                return Ok(Some(frame));
            }
        }
    }

    /// One frame's checks; Ok(None) for a header block still waiting for CONTINUATION.
    fn parse(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: Bytes,
    ) -> Result<Option<Frame>, ConnError> {
        let len = payload.len();
        let frame = match kind {
            kind::DATA => {
                if stream == 0 {
                    return protocol("DATA on stream 0");
                }
                let mut data = payload;
                let pad = take_pad_len(flags, &mut data)?;
                strip_padding(&mut data, pad)?;
                Frame::Data {
                    stream,
                    data,
                    end_stream: flags & flag::END_STREAM != 0,
                    // len <= max_frame_size < 2^24.
                    flow_len: len as u32,
                }
            }
            kind::HEADERS => {
                if stream == 0 {
                    return protocol("HEADERS on stream 0");
                }
                let mut block = payload;
                let pad = take_pad_len(flags, &mut block)?;
                if flags & flag::PRIORITY != 0 {
                    let Some(dep) = be_u32(&block).filter(|_| block.len() >= 5) else {
                        return frame_size("HEADERS too short for its priority fields");
                    };
                    // RFC 9113 section 5.3.1: a stream error, which we may treat as a
                    // connection error (section 5.4.1): only a broken peer sends it.
                    if dep & U31_MASK == stream {
                        return protocol("HEADERS makes the stream depend on itself");
                    }
                    block.advance(5);
                }
                strip_padding(&mut block, pad)?;
                return self.start_block(stream, flags, None, block);
            }
            kind::PRIORITY => {
                if stream == 0 {
                    return protocol("PRIORITY on stream 0");
                }
                let Some(dep) = be_u32(&payload).filter(|_| len == 5) else {
                    return frame_size("PRIORITY length is not 5");
                };
                if dep & U31_MASK == stream {
                    return protocol("PRIORITY makes the stream depend on itself");
                }
                Frame::Priority {
                    stream,
                    depends_on: dep & U31_MASK,
                }
            }
            kind::RST_STREAM => {
                if stream == 0 {
                    return protocol("RST_STREAM on stream 0");
                }
                let Some(code) = be_u32(&payload).filter(|_| len == 4) else {
                    return frame_size("RST_STREAM length is not 4");
                };
                Frame::RstStream {
                    stream,
                    reason: Reason(code),
                }
            }
            kind::SETTINGS => {
                if stream != 0 {
                    return protocol("SETTINGS on a stream");
                }
                if flags & flag::ACK != 0 {
                    if len != 0 {
                        return frame_size("SETTINGS ACK with a payload");
                    }
                    return Ok(Some(Frame::Settings {
                        ack: true,
                        params: Vec::new(),
                    }));
                }
                if !len.is_multiple_of(6) {
                    return frame_size("SETTINGS length is not a multiple of 6");
                }
                let mut params = Vec::with_capacity(len / 6);
                for p in payload.chunks_exact(6) {
                    let (id, value) = match *p {
                        [a, b, c, d, e, f] => {
                            (u16::from_be_bytes([a, b]), u32::from_be_bytes([c, d, e, f]))
                        }
                        _ => continue,
                    };
                    check_setting(id, value)?;
                    params.push((id, value));
                }
                Frame::Settings { ack: false, params }
            }
            kind::PUSH_PROMISE => {
                if stream == 0 {
                    return protocol("PUSH_PROMISE on stream 0");
                }
                let mut block = payload;
                let pad = take_pad_len(flags, &mut block)?;
                let Some(promised) = be_u32(&block) else {
                    return frame_size("PUSH_PROMISE too short for the promised stream id");
                };
                block.advance(4);
                strip_padding(&mut block, pad)?;
                return self.start_block(stream, flags, Some(promised & U31_MASK), block);
            }
            kind::PING => {
                if stream != 0 {
                    return protocol("PING on a stream");
                }
                let Ok(data) = <[u8; 8]>::try_from(&payload[..]) else {
                    return frame_size("PING length is not 8");
                };
                Frame::Ping {
                    ack: flags & flag::ACK != 0,
                    payload: data,
                }
            }
            kind::GOAWAY => {
                if stream != 0 {
                    return protocol("GOAWAY on a stream");
                }
                let (Some(last), Some(code)) =
                    (be_u32(&payload), payload.get(4..).and_then(be_u32))
                else {
                    return frame_size("GOAWAY shorter than 8 bytes");
                };
                Frame::GoAway {
                    last_stream: last & U31_MASK,
                    reason: Reason(code),
                    debug: payload.slice(8..),
                }
            }
            kind::WINDOW_UPDATE => {
                let Some(inc) = be_u32(&payload).filter(|_| len == 4) else {
                    return frame_size("WINDOW_UPDATE length is not 4");
                };
                let increment = inc & U31_MASK;
                if increment == 0 && stream == 0 {
                    return protocol("WINDOW_UPDATE increment 0 on the connection");
                }
                Frame::WindowUpdate { stream, increment }
            }
            kind::CONTINUATION => return self.continue_block(flags, payload),
            _ => Frame::Unknown,
        };
        Ok(Some(frame))
    }

    /// The first fragment of a header block (HEADERS or PUSH_PROMISE).
    fn start_block(
        &mut self,
        stream: u32,
        flags: u8,
        promised: Option<u32>,
        fragment: Bytes,
    ) -> Result<Option<Frame>, ConnError> {
        if fragment.len() > self.max_header_block {
            return err(
                Reason::ENHANCE_YOUR_CALM,
                "header block larger than the limit",
            );
        }
        let end_stream = flags & flag::END_STREAM != 0;
        if flags & flag::END_HEADERS != 0 {
            return Ok(Some(block_frame(stream, end_stream, promised, fragment)));
        }
        // Rare (blocks over one frame): the fragments are copied together.
        let mut block = BytesMut::with_capacity(fragment.len().saturating_mul(2));
        block.extend_from_slice(&fragment);
        self.partial = Some(Partial {
            stream,
            end_stream,
            promised,
            block,
            continuations: 0,
        });
        Ok(None)
    }

    /// A CONTINUATION frame (`next` already checked it follows a fragment of the same stream).
    fn continue_block(&mut self, flags: u8, fragment: Bytes) -> Result<Option<Frame>, ConnError> {
        let Some(partial) = self.partial.as_mut() else {
            return protocol("CONTINUATION without a preceding HEADERS");
        };
        if partial.block.len() + fragment.len() > self.max_header_block {
            return err(
                Reason::ENHANCE_YOUR_CALM,
                "header block larger than the limit",
            );
        }
        partial.continuations += 1;
        if partial.continuations > self.max_header_block / 1024 + 16 {
            return err(Reason::ENHANCE_YOUR_CALM, "too many CONTINUATION frames");
        }
        partial.block.extend_from_slice(&fragment);
        if flags & flag::END_HEADERS == 0 {
            return Ok(None);
        }
        let Some(p) = self.partial.take() else {
            return protocol("CONTINUATION without a preceding HEADERS");
        };
        Ok(Some(block_frame(
            p.stream,
            p.end_stream,
            p.promised,
            p.block.freeze(),
        )))
    }
}

fn block_frame(stream: u32, end_stream: bool, promised: Option<u32>, block: Bytes) -> Frame {
    match promised {
        Some(promised) => Frame::PushPromise { stream, promised },
        None => Frame::Headers {
            stream,
            block,
            end_stream,
        },
    }
}

/// The first 4 bytes as a big-endian u32.
fn be_u32(b: &[u8]) -> Option<u32> {
    match b.get(..4) {
        Some(&[a, b, c, d]) => Some(u32::from_be_bytes([a, b, c, d])),
        _ => None,
    }
}

/// Removes the pad length byte of a PADDED frame and returns the pad length (0 when unpadded).
fn take_pad_len(flags: u8, payload: &mut Bytes) -> Result<usize, ConnError> {
    if flags & flag::PADDED == 0 {
        return Ok(0);
    }
    let Some(&pad) = payload.first() else {
        return frame_size("PADDED frame without a pad length");
    };
    payload.advance(1);
    Ok(pad as usize)
}

/// Removes `pad` trailing bytes; padding longer than what is left is PROTOCOL_ERROR.
fn strip_padding(payload: &mut Bytes, pad: usize) -> Result<(), ConnError> {
    if pad > payload.len() {
        return protocol("padding longer than the payload");
    }
    payload.truncate(payload.len() - pad);
    Ok(())
}

/// RFC 9113 section 6.5.2: values out of range are connection errors.
fn check_setting(id: u16, value: u32) -> Result<(), ConnError> {
    match id {
        setting::ENABLE_PUSH if value > 1 => protocol("SETTINGS_ENABLE_PUSH above 1"),
        setting::INITIAL_WINDOW_SIZE if value > MAX_WINDOW => err(
            Reason::FLOW_CONTROL_ERROR,
            "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
        ),
        setting::MAX_FRAME_SIZE
            if !(DEFAULT_MAX_FRAME_SIZE..=MAX_FRAME_SIZE_LIMIT).contains(&value) =>
        {
            protocol("SETTINGS_MAX_FRAME_SIZE out of range")
        }
        _ => Ok(()),
    }
}

/// A frame header as bytes.
fn head(len: usize, kind: u8, flags: u8, stream: u32) -> [u8; HEAD_LEN] {
    let [_, l0, l1, l2] = (len as u32).to_be_bytes();
    let [s0, s1, s2, s3] = (stream & U31_MASK).to_be_bytes();
    [l0, l1, l2, kind, flags, s0, s1, s2, s3]
}

// Frame writers: each appends one whole frame (header + payload) to `dst`, reserving once.

/// Appends a frame header; the caller appends `len` bytes of payload after it.
pub fn put_head(dst: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    debug_assert!(len <= MAX_FRAME_SIZE_LIMIT as usize);
    dst.extend_from_slice(&head(len, kind, flags, stream));
}

/// HEADERS (+ CONTINUATION frames when `block` exceeds `max_frame_size`, which is clamped to
/// the legal range: every peer accepts 16 KiB).
pub fn put_headers(
    dst: &mut BytesMut,
    stream: u32,
    block: &[u8],
    end_stream: bool,
    max_frame_size: u32,
) {
    let max = max_frame_size.clamp(DEFAULT_MAX_FRAME_SIZE, MAX_FRAME_SIZE_LIMIT) as usize;
    let frames = block.len().div_ceil(max).max(1);
    dst.reserve(block.len() + frames * HEAD_LEN);
    let (first, mut rest) = block.split_at(block.len().min(max));
    let mut flags = if end_stream { flag::END_STREAM } else { 0 };
    if rest.is_empty() {
        flags |= flag::END_HEADERS;
    }
    dst.extend_from_slice(&head(first.len(), kind::HEADERS, flags, stream));
    dst.extend_from_slice(first);
    while !rest.is_empty() {
        let (part, tail) = rest.split_at(rest.len().min(max));
        let flags = if tail.is_empty() {
            flag::END_HEADERS
        } else {
            0
        };
        dst.extend_from_slice(&head(part.len(), kind::CONTINUATION, flags, stream));
        dst.extend_from_slice(part);
        rest = tail;
    }
}

/// SETTINGS with `params` in order.
pub fn put_settings(dst: &mut BytesMut, params: &[(u16, u32)]) {
    let len = params.len() * 6;
    dst.reserve(HEAD_LEN + len);
    dst.extend_from_slice(&head(len, kind::SETTINGS, 0, 0));
    for &(id, value) in params {
        dst.put_u16(id);
        dst.put_u32(value);
    }
}

/// SETTINGS with ACK.
pub fn put_settings_ack(dst: &mut BytesMut) {
    dst.extend_from_slice(&head(0, kind::SETTINGS, flag::ACK, 0));
}

/// PING (or its ACK).
pub fn put_ping(dst: &mut BytesMut, ack: bool, payload: [u8; 8]) {
    let flags = if ack { flag::ACK } else { 0 };
    dst.reserve(HEAD_LEN + 8);
    dst.extend_from_slice(&head(8, kind::PING, flags, 0));
    dst.extend_from_slice(&payload);
}

/// GOAWAY.
pub fn put_goaway(dst: &mut BytesMut, last_stream: u32, reason: Reason, debug: &[u8]) {
    let len = 8 + debug.len();
    dst.reserve(HEAD_LEN + len);
    dst.extend_from_slice(&head(len, kind::GOAWAY, 0, 0));
    dst.put_u32(last_stream & U31_MASK);
    dst.put_u32(reason.0);
    dst.extend_from_slice(debug);
}

/// RST_STREAM.
pub fn put_rst_stream(dst: &mut BytesMut, stream: u32, reason: Reason) {
    dst.reserve(HEAD_LEN + 4);
    dst.extend_from_slice(&head(4, kind::RST_STREAM, 0, stream));
    dst.put_u32(reason.0);
}

/// WINDOW_UPDATE (`stream` 0: the connection).
pub fn put_window_update(dst: &mut BytesMut, stream: u32, increment: u32) {
    dst.reserve(HEAD_LEN + 4);
    dst.extend_from_slice(&head(4, kind::WINDOW_UPDATE, 0, stream));
    dst.put_u32(increment & U31_MASK);
}

/// DATA payloads up to this size are copied next to their frame header (one write slice);
/// larger ones are queued as they are.
const INLINE_DATA_MAX: usize = 1024;

/// Most slices handed to one vectored write.
const MAX_IOVECS: usize = 64;

/// Outgoing bytes of one connection: control frames and small payloads are appended to a
/// scratch `BytesMut`; large payloads (DATA bodies) are queued as the `Bytes` they came in,
/// never copied; written with vectored writes.
///
/// Order on the wire: `chunks` front to back, then `scratch`. Queuing a large payload first
/// moves the scratch bytes before it into `chunks` (a cheap `split().freeze()`).
#[derive(Debug, Default)]
pub struct WriteQueue {
    scratch: BytesMut,
    chunks: VecDeque<Bytes>,
    /// Total length of `chunks`.
    chunks_len: usize,
}

impl WriteQueue {
    /// An empty queue.
    pub fn new() -> Self {
        WriteQueue::default()
    }

    /// Where to append frames (put_* functions).
    pub fn scratch(&mut self) -> &mut BytesMut {
        &mut self.scratch
    }

    /// One DATA frame: the 9-byte head into scratch, then `payload` (copied into scratch when
    /// <= 1 KiB, else queued as its own chunk). `payload.len()` <= the peer's max frame size is
    /// the caller's job.
    pub fn put_data(&mut self, stream: u32, payload: Bytes, end_stream: bool) {
        let flags = if end_stream { flag::END_STREAM } else { 0 };
        let head = head(payload.len(), kind::DATA, flags, stream);
        if payload.len() <= INLINE_DATA_MAX {
            self.scratch.reserve(HEAD_LEN + payload.len());
            self.scratch.extend_from_slice(&head);
            self.scratch.extend_from_slice(&payload);
            return;
        }
        self.scratch.extend_from_slice(&head);
        let before = self.scratch.split().freeze();
        self.chunks_len += before.len() + payload.len();
        self.chunks.push_back(before);
        self.chunks.push_back(payload);
    }

    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        self.chunks_len + self.scratch.len()
    }

    /// Nothing waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes as much as the socket takes now (poll_write_vectored with up to 64 slices when the
    /// IO supports vectored writes, else chunk by chunk); Ready(Ok) once empty, Pending when the
    /// socket is full (waker registered). Does not flush; call `poll_flush` on the IO after it
    /// (TLS streams buffer).
    pub fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        mut io: Pin<&mut W>,
    ) -> Poll<io::Result<()>> {
        while !self.is_empty() {
            let n = if io.is_write_vectored() {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let mut count = 0;
                let parts = self
                    .chunks
                    .iter()
                    .map(|c| &c[..])
                    .chain(Some(&self.scratch[..]).filter(|s| !s.is_empty()));
                for (slot, part) in slices.iter_mut().zip(parts) {
                    *slot = IoSlice::new(part);
                    count += 1;
                }
                ready!(io.as_mut().poll_write_vectored(cx, &slices[..count]))?
            } else {
                let first = self.chunks.front().map_or(&self.scratch[..], |c| &c[..]);
                ready!(io.as_mut().poll_write(cx, first))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.consume(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Drops `n` written bytes from the front.
    fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                let n = n.min(self.scratch.len());
                if n == self.scratch.len() {
                    // Keeps the allocation for reuse from its start.
                    self.scratch.clear();
                } else {
                    self.scratch.advance(n);
                }
                return;
            };
            if n >= front.len() {
                n -= front.len();
                self.chunks_len -= front.len();
                self.chunks.pop_front();
            } else {
                front.advance(n);
                self.chunks_len -= n;
                n = 0;
            }
        }
    }

    /// The queued chunks (tests check that large payloads are not copied).
    #[cfg(test)]
    fn chunks(&self) -> &VecDeque<Bytes> {
        &self.chunks
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const MAX_BLOCK: usize = 64 * 1024;

    fn raw(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = head(payload.len(), kind, flags, stream).to_vec();
        v.extend_from_slice(payload);
        v
    }

    /// Feeds `bytes` in pieces of `step` bytes, collecting every frame.
    fn read_stepped(bytes: &[u8], step: usize) -> Result<Vec<Frame>, ConnError> {
        let mut r = FrameReader::new(DEFAULT_MAX_FRAME_SIZE, MAX_BLOCK);
        let mut out = Vec::new();
        for piece in bytes.chunks(step) {
            r.buf_mut().extend_from_slice(piece);
            while let Some(f) = r.next()? {
                out.push(f);
            }
        }
        assert!(r.buf_mut().is_empty(), "bytes left over");
        Ok(out)
    }

    /// Reads `bytes` whole and byte by byte (and at a few odd steps); both must agree.
    fn read(bytes: &[u8]) -> Result<Vec<Frame>, ConnError> {
        let whole = read_stepped(bytes, bytes.len().max(1));
        for step in [1, 2, 7, 10] {
            let stepped = read_stepped(bytes, step);
            match (&whole, &stepped) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "step {step}"),
                (Err(a), Err(b)) => assert_eq!(a.reason, b.reason, "step {step}"),
                _ => panic!("step {step}: {whole:?} vs {stepped:?}"),
            }
        }
        whole
    }

    fn read_one(bytes: &[u8]) -> Frame {
        let mut frames = read(bytes).unwrap();
        assert_eq!(frames.len(), 1, "{frames:?}");
        frames.remove(0)
    }

    fn read_err(bytes: &[u8]) -> Reason {
        read(bytes).unwrap_err().reason
    }

    #[test]
    fn reason_display() {
        assert_eq!(Reason::CANCEL.to_string(), "CANCEL (0x8)");
        assert_eq!(Reason(0x42).description(), "unknown error code");
        let e = ConnError {
            reason: Reason::PROTOCOL_ERROR,
            detail: "x",
        };
        assert_eq!(e.to_string(), "HTTP/2 PROTOCOL_ERROR (0x1): x");
    }

    #[test]
    fn data_plain_and_padded() {
        let f = read_one(&raw(kind::DATA, flag::END_STREAM, 1, b"hello"));
        assert_eq!(
            f,
            Frame::Data {
                stream: 1,
                data: Bytes::from_static(b"hello"),
                end_stream: true,
                flow_len: 5
            }
        );
        let f = read_one(&raw(kind::DATA, flag::PADDED, 3, b"\x03hi\0\0\0"));
        assert_eq!(
            f,
            Frame::Data {
                stream: 3,
                data: Bytes::from_static(b"hi"),
                end_stream: false,
                flow_len: 6
            }
        );
        // Padding filling the whole payload is legal: no data.
        let f = read_one(&raw(kind::DATA, flag::PADDED, 3, b"\x02\0\0"));
        assert!(matches!(f, Frame::Data { ref data, flow_len: 3, .. } if data.is_empty()));
        // Stream id reserved bit is ignored.
        let f = read_one(&raw(kind::DATA, 0, 0x8000_0005, b""));
        assert!(matches!(f, Frame::Data { stream: 5, .. }));
    }

    #[test]
    fn data_errors() {
        assert_eq!(
            read_err(&raw(kind::DATA, 0, 0, b"x")),
            Reason::PROTOCOL_ERROR
        );
        assert_eq!(
            read_err(&raw(kind::DATA, flag::PADDED, 1, b"\x03ab")),
            Reason::PROTOCOL_ERROR
        );
        assert_eq!(
            read_err(&raw(kind::DATA, flag::PADDED, 1, b"")),
            Reason::FRAME_SIZE_ERROR
        );
    }

    #[test]
    fn data_payload_is_not_copied() {
        let mut r = FrameReader::new(DEFAULT_MAX_FRAME_SIZE, MAX_BLOCK);
        r.buf_mut()
            .extend_from_slice(&raw(kind::DATA, 0, 1, &[7; 100]));
        let base = r.buf_mut().as_ptr() as usize;
        let Some(Frame::Data { data, .. }) = r.next().unwrap() else {
            panic!("not DATA")
        };
        assert_eq!(data.as_ptr() as usize, base + HEAD_LEN);
    }

    #[test]
    fn headers_padding_and_priority() {
        let f = read_one(&raw(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            1,
            b"\x82\x86",
        ));
        assert_eq!(
            f,
            Frame::Headers {
                stream: 1,
                block: Bytes::from_static(b"\x82\x86"),
                end_stream: true
            }
        );
        // PADDED + PRIORITY: pad length, 5 priority bytes, block, padding.
        let f = read_one(&raw(
            kind::HEADERS,
            flag::END_HEADERS | flag::PADDED | flag::PRIORITY,
            5,
            b"\x02\x80\0\0\x03\x10\x82\x84\0\0",
        ));
        assert_eq!(
            f,
            Frame::Headers {
                stream: 5,
                block: Bytes::from_static(b"\x82\x84"),
                end_stream: false
            }
        );
        let f = read_one(&raw(
            kind::HEADERS,
            flag::END_HEADERS | flag::PRIORITY,
            5,
            b"\0\0\0\x03\x10\x88",
        ));
        assert!(matches!(f, Frame::Headers { ref block, .. } if &block[..] == b"\x88"));
    }

    #[test]
    fn headers_errors() {
        let eh = flag::END_HEADERS;
        assert_eq!(
            read_err(&raw(kind::HEADERS, eh, 0, b"\x82")),
            Reason::PROTOCOL_ERROR
        );
        assert_eq!(
            read_err(&raw(kind::HEADERS, eh | flag::PRIORITY, 1, b"\0\0\0")),
            Reason::FRAME_SIZE_ERROR
        );
        assert_eq!(
            read_err(&raw(
                kind::HEADERS,
                eh | flag::PRIORITY | flag::PADDED,
                1,
                b"\x02\0\0\0\x03\x10\x82"
            )),
            Reason::PROTOCOL_ERROR
        );
        assert_eq!(
            read_err(&raw(kind::HEADERS, eh | flag::PADDED, 1, b"")),
            Reason::FRAME_SIZE_ERROR
        );
    }

    #[test]
    fn continuation_joins() {
        let mut bytes = raw(
            kind::HEADERS,
            flag::END_STREAM | flag::PADDED,
            3,
            b"\x01ab\0",
        );
        bytes.extend(raw(kind::CONTINUATION, 0, 3, b""));
        bytes.extend(raw(kind::CONTINUATION, 0, 3, b"cd"));
        bytes.extend(raw(kind::CONTINUATION, flag::END_HEADERS, 3, b"e"));
        bytes.extend(raw(kind::PING, 0, 0, &[1; 8]));
        let frames = read(&bytes).unwrap();
        assert_eq!(
            frames,
            vec![
                Frame::Headers {
                    stream: 3,
                    block: Bytes::from_static(b"abcde"),
                    end_stream: true
                },
                Frame::Ping {
                    ack: false,
                    payload: [1; 8]
                }
            ]
        );
    }

    #[test]
    fn continuation_violations() {
        // Alone.
        assert_eq!(
            read_err(&raw(kind::CONTINUATION, flag::END_HEADERS, 1, b"x")),
            Reason::PROTOCOL_ERROR
        );
        // After a complete HEADERS.
        let mut b = raw(kind::HEADERS, flag::END_HEADERS, 1, b"\x82");
        b.extend(raw(kind::CONTINUATION, flag::END_HEADERS, 1, b"x"));
        assert_eq!(read_err(&b), Reason::PROTOCOL_ERROR);
        // On another stream.
        let mut b = raw(kind::HEADERS, 0, 1, b"\x82");
        b.extend(raw(kind::CONTINUATION, flag::END_HEADERS, 3, b"x"));
        assert_eq!(read_err(&b), Reason::PROTOCOL_ERROR);
        // Another frame in between (even a PING or an unknown type).
        for (k, s, p) in [
            (kind::PING, 0, &[0u8; 8][..]),
            (0x42, 0, &b""[..]),
            (kind::DATA, 1, &b"x"[..]),
        ] {
            let mut b = raw(kind::HEADERS, 0, 1, b"\x82");
            b.extend(raw(k, 0, s, p));
            assert_eq!(read_err(&b), Reason::PROTOCOL_ERROR, "kind {k}");
        }
        // Detected from the head alone, before the (large) payload arrives.
        let mut r = FrameReader::new(DEFAULT_MAX_FRAME_SIZE, MAX_BLOCK);
        r.buf_mut()
            .extend_from_slice(&raw(kind::HEADERS, 0, 1, b"\x82"));
        r.buf_mut().extend_from_slice(&head(1000, kind::DATA, 0, 1));
        assert_eq!(r.next().unwrap_err().reason, Reason::PROTOCOL_ERROR);
    }

    #[test]
    fn push_promise() {
        let mut b = raw(
            kind::PUSH_PROMISE,
            flag::PADDED,
            1,
            b"\x01\x80\0\0\x02\x82\0",
        );
        b.extend(raw(kind::CONTINUATION, flag::END_HEADERS, 1, b"\x84"));
        assert_eq!(
            read(&b).unwrap(),
            vec![Frame::PushPromise {
                stream: 1,
                promised: 2
            }]
        );
        assert_eq!(
            read_err(&raw(
                kind::PUSH_PROMISE,
                flag::END_HEADERS,
                0,
                b"\0\0\0\x02"
            )),
            Reason::PROTOCOL_ERROR
        );
        assert_eq!(
            read_err(&raw(kind::PUSH_PROMISE, flag::END_HEADERS, 1, b"\0\0")),
            Reason::FRAME_SIZE_ERROR
        );
    }

    #[test]
    fn header_block_cap() {
        let mut r = FrameReader::new(DEFAULT_MAX_FRAME_SIZE, 10);
        r.buf_mut()
            .extend_from_slice(&raw(kind::HEADERS, flag::END_HEADERS, 1, &[0x82; 11]));
        assert_eq!(r.next().unwrap_err().reason, Reason::ENHANCE_YOUR_CALM);

        let mut r = FrameReader::new(DEFAULT_MAX_FRAME_SIZE, 10);
        r.buf_mut()
            .extend_from_slice(&raw(kind::HEADERS, 0, 1, &[0x82; 6]));
        r.buf_mut()
            .extend_from_slice(&raw(kind::CONTINUATION, flag::END_HEADERS, 1, &[0x82; 4]));
        assert!(matches!(r.next(), Ok(Some(Frame::Headers { .. }))));
        r.buf_mut()
            .extend_from_slice(&raw(kind::HEADERS, 0, 3, &[0x82; 6]));
        r.buf_mut()
            .extend_from_slice(&raw(kind::CONTINUATION, flag::END_HEADERS, 3, &[0x82; 5]));
        assert_eq!(r.next().unwrap_err().reason, Reason::ENHANCE_YOUR_CALM);

        // A flood of empty CONTINUATION frames.
        let mut r = FrameReader::new(DEFAULT_MAX_FRAME_SIZE, 1024);
        r.buf_mut()
            .extend_from_slice(&raw(kind::HEADERS, 0, 1, b"\x82"));
        for _ in 0..100 {
            r.buf_mut()
                .extend_from_slice(&raw(kind::CONTINUATION, 0, 1, b""));
        }
        assert_eq!(r.next().unwrap_err().reason, Reason::ENHANCE_YOUR_CALM);
    }

    #[test]
    fn oversized_frame() {
        let mut r = FrameReader::new(DEFAULT_MAX_FRAME_SIZE, MAX_BLOCK);
        // Only the head is needed to reject it.
        r.buf_mut()
            .extend_from_slice(&head(DEFAULT_MAX_FRAME_SIZE as usize + 1, kind::DATA, 0, 1));
        assert_eq!(r.next().unwrap_err().reason, Reason::FRAME_SIZE_ERROR);
        // Exactly the limit is fine, and the buffer grows to take it in one piece.
        let mut r = FrameReader::new(DEFAULT_MAX_FRAME_SIZE, MAX_BLOCK);
        let big = raw(kind::DATA, 0, 1, &vec![1; DEFAULT_MAX_FRAME_SIZE as usize]);
        r.buf_mut().extend_from_slice(&big[..HEAD_LEN]);
        assert!(r.next().unwrap().is_none());
        let buf = r.buf_mut();
        assert!(buf.capacity() - buf.len() >= DEFAULT_MAX_FRAME_SIZE as usize);
        buf.extend_from_slice(&big[HEAD_LEN..]);
        assert!(matches!(
            r.next(),
            Ok(Some(Frame::Data {
                flow_len: 16_384,
                ..
            }))
        ));
        // A larger advertised limit.
        let mut r = FrameReader::new(1 << 20, MAX_BLOCK);
        r.buf_mut()
            .extend_from_slice(&raw(kind::DATA, 0, 1, &vec![1; 100_000]));
        assert!(matches!(
            r.next(),
            Ok(Some(Frame::Data {
                flow_len: 100_000,
                ..
            }))
        ));
    }

    #[test]
    fn priority_rst_ping_goaway_window() {
        assert_eq!(
            read_one(&raw(kind::PRIORITY, 0, 3, b"\x80\0\0\x01\x0f")),
            Frame::Priority {
                stream: 3,
                depends_on: 1
            }
        );
        assert_eq!(
            read_one(&raw(kind::RST_STREAM, 0, 3, b"\0\0\0\x08")),
            Frame::RstStream {
                stream: 3,
                reason: Reason::CANCEL
            }
        );
        assert_eq!(
            read_one(&raw(kind::PING, flag::ACK, 0, b"abcdefgh")),
            Frame::Ping {
                ack: true,
                payload: *b"abcdefgh"
            }
        );
        assert_eq!(
            read_one(&raw(kind::GOAWAY, 0, 0, b"\x80\0\0\x07\0\0\0\x0bcalm")),
            Frame::GoAway {
                last_stream: 7,
                reason: Reason::ENHANCE_YOUR_CALM,
                debug: Bytes::from_static(b"calm")
            }
        );
        assert_eq!(
            read_one(&raw(kind::WINDOW_UPDATE, 0, 0, b"\x80\0\x01\0")),
            Frame::WindowUpdate {
                stream: 0,
                increment: 256
            }
        );
        // Increment 0 on a stream is the engine's business.
        assert_eq!(
            read_one(&raw(kind::WINDOW_UPDATE, 0, 5, b"\0\0\0\0")),
            Frame::WindowUpdate {
                stream: 5,
                increment: 0
            }
        );
        assert_eq!(read_one(&raw(0xfa, 0xff, 9, b"whatever")), Frame::Unknown);
    }

    #[test]
    fn fixed_length_and_stream_errors() {
        use Reason as R;
        let cases: &[(u8, u8, u32, &[u8], Reason)] = &[
            (kind::PRIORITY, 0, 0, b"\0\0\0\x01\x0f", R::PROTOCOL_ERROR),
            // A stream that depends on itself (RFC 9113 section 5.3.1), exclusive bit or not.
            (kind::PRIORITY, 0, 3, b"\0\0\0\x03\x0f", R::PROTOCOL_ERROR),
            (kind::PRIORITY, 0, 3, b"\x80\0\0\x03\x0f", R::PROTOCOL_ERROR),
            (
                kind::HEADERS,
                flag::PRIORITY | flag::END_HEADERS,
                5,
                b"\0\0\0\x05\x0f\x82",
                R::PROTOCOL_ERROR,
            ),
            (kind::PRIORITY, 0, 1, b"\0\0\0\x01", R::FRAME_SIZE_ERROR),
            (
                kind::PRIORITY,
                0,
                1,
                b"\0\0\0\x01\x0f\0",
                R::FRAME_SIZE_ERROR,
            ),
            (kind::RST_STREAM, 0, 0, b"\0\0\0\x08", R::PROTOCOL_ERROR),
            (kind::RST_STREAM, 0, 1, b"\0\0\x08", R::FRAME_SIZE_ERROR),
            (kind::RST_STREAM, 0, 1, b"\0\0\0\x08\0", R::FRAME_SIZE_ERROR),
            (kind::PING, 0, 1, b"12345678", R::PROTOCOL_ERROR),
            (kind::PING, 0, 0, b"1234567", R::FRAME_SIZE_ERROR),
            (kind::PING, 0, 0, b"123456789", R::FRAME_SIZE_ERROR),
            (kind::GOAWAY, 0, 1, b"\0\0\0\0\0\0\0\0", R::PROTOCOL_ERROR),
            (kind::GOAWAY, 0, 0, b"\0\0\0\0\0\0\0", R::FRAME_SIZE_ERROR),
            (kind::WINDOW_UPDATE, 0, 0, b"\0\0\0\0", R::PROTOCOL_ERROR),
            (kind::WINDOW_UPDATE, 0, 0, b"\x80\0\0\0", R::PROTOCOL_ERROR),
            (kind::WINDOW_UPDATE, 0, 1, b"\0\0\x01", R::FRAME_SIZE_ERROR),
            (
                kind::WINDOW_UPDATE,
                0,
                1,
                b"\0\0\0\x01\0",
                R::FRAME_SIZE_ERROR,
            ),
            (kind::SETTINGS, 0, 1, b"", R::PROTOCOL_ERROR),
            (
                kind::SETTINGS,
                flag::ACK,
                0,
                b"\0\x01\0\0\0\0",
                R::FRAME_SIZE_ERROR,
            ),
            (kind::SETTINGS, 0, 0, b"\0\x01\0\0\0", R::FRAME_SIZE_ERROR),
        ];
        for &(k, f, s, p, want) in cases {
            assert_eq!(
                read_err(&raw(k, f, s, p)),
                want,
                "kind {k} stream {s} {p:?}"
            );
        }
    }

    #[test]
    fn settings() {
        let mut payload = Vec::new();
        for (id, v) in [
            (1u16, 0u32),
            (4, MAX_WINDOW),
            (5, MAX_FRAME_SIZE_LIMIT),
            (0x99, 7),
        ] {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(
            read_one(&raw(kind::SETTINGS, 0, 0, &payload)),
            Frame::Settings {
                ack: false,
                params: vec![
                    (1, 0),
                    (4, MAX_WINDOW),
                    (5, MAX_FRAME_SIZE_LIMIT),
                    (0x99, 7)
                ]
            }
        );
        assert_eq!(
            read_one(&raw(kind::SETTINGS, flag::ACK, 0, b"")),
            Frame::Settings {
                ack: true,
                params: vec![]
            }
        );
        let bad = [
            (setting::ENABLE_PUSH, 2, Reason::PROTOCOL_ERROR),
            (
                setting::INITIAL_WINDOW_SIZE,
                MAX_WINDOW + 1,
                Reason::FLOW_CONTROL_ERROR,
            ),
            (setting::MAX_FRAME_SIZE, 16_383, Reason::PROTOCOL_ERROR),
            (
                setting::MAX_FRAME_SIZE,
                MAX_FRAME_SIZE_LIMIT + 1,
                Reason::PROTOCOL_ERROR,
            ),
        ];
        for (id, v, want) in bad {
            let mut p = id.to_be_bytes().to_vec();
            p.extend_from_slice(&v.to_be_bytes());
            assert_eq!(read_err(&raw(kind::SETTINGS, 0, 0, &p)), want, "{id}={v}");
        }
    }

    #[test]
    fn preface() {
        let mut r = FrameReader::new(DEFAULT_MAX_FRAME_SIZE, MAX_BLOCK);
        assert!(!r.take_preface().unwrap());
        r.buf_mut().extend_from_slice(&PREFACE[..10]);
        assert!(!r.take_preface().unwrap());
        r.buf_mut().extend_from_slice(&PREFACE[10..]);
        r.buf_mut()
            .extend_from_slice(&raw(kind::SETTINGS, flag::ACK, 0, b""));
        assert!(r.take_preface().unwrap());
        assert!(matches!(
            r.next(),
            Ok(Some(Frame::Settings { ack: true, .. }))
        ));

        let mut r = FrameReader::new(DEFAULT_MAX_FRAME_SIZE, MAX_BLOCK);
        r.buf_mut().extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(r.take_preface().unwrap_err().reason, Reason::PROTOCOL_ERROR);
    }

    #[test]
    fn writers_round_trip() {
        let mut b = BytesMut::new();
        put_settings(
            &mut b,
            &[
                (setting::ENABLE_PUSH, 0),
                (setting::INITIAL_WINDOW_SIZE, 1 << 20),
            ],
        );
        put_settings_ack(&mut b);
        put_ping(&mut b, true, *b"pingpong");
        put_goaway(&mut b, 9, Reason::NO_ERROR, b"bye");
        put_rst_stream(&mut b, 7, Reason::REFUSED_STREAM);
        put_window_update(&mut b, 0, 1 << 30);
        put_headers(&mut b, 1, b"\x82\x84", true, DEFAULT_MAX_FRAME_SIZE);
        put_head(&mut b, 2, kind::DATA, flag::END_STREAM, 1);
        b.extend_from_slice(b"ok");
        assert_eq!(
            &b[..HEAD_LEN + 12],
            b"\0\0\x0c\x04\0\0\0\0\0\0\x02\0\0\0\0\0\x04\0\x10\0\0"
        );
        assert_eq!(
            read(&b).unwrap(),
            vec![
                Frame::Settings {
                    ack: false,
                    params: vec![(2, 0), (4, 1 << 20)]
                },
                Frame::Settings {
                    ack: true,
                    params: vec![]
                },
                Frame::Ping {
                    ack: true,
                    payload: *b"pingpong"
                },
                Frame::GoAway {
                    last_stream: 9,
                    reason: Reason::NO_ERROR,
                    debug: Bytes::from_static(b"bye")
                },
                Frame::RstStream {
                    stream: 7,
                    reason: Reason::REFUSED_STREAM
                },
                Frame::WindowUpdate {
                    stream: 0,
                    increment: 1 << 30
                },
                Frame::Headers {
                    stream: 1,
                    block: Bytes::from_static(b"\x82\x84"),
                    end_stream: true
                },
                Frame::Data {
                    stream: 1,
                    data: Bytes::from_static(b"ok"),
                    end_stream: true,
                    flow_len: 2
                },
            ]
        );
    }

    #[test]
    fn put_headers_splits_into_continuations() {
        let block: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let mut b = BytesMut::new();
        put_headers(&mut b, 5, &block, false, 0); // clamped to 16 KiB
        assert_eq!(b.len(), block.len() + 3 * HEAD_LEN);
        assert_eq!(&b[..HEAD_LEN], &head(16_384, kind::HEADERS, 0, 5));
        let second = HEAD_LEN + 16_384;
        assert_eq!(
            &b[second..second + HEAD_LEN],
            &head(16_384, kind::CONTINUATION, 0, 5)
        );
        let third = second + HEAD_LEN + 16_384;
        assert_eq!(
            &b[third..third + HEAD_LEN],
            &head(40_000 - 32_768, kind::CONTINUATION, flag::END_HEADERS, 5)
        );
        let frames = read(&b).unwrap();
        assert_eq!(
            frames,
            vec![Frame::Headers {
                stream: 5,
                block: Bytes::from(block),
                end_stream: false
            }]
        );
        // Exactly one frame's worth, and empty.
        let mut b = BytesMut::new();
        put_headers(&mut b, 1, &[0x82; 16_384], true, 16_384);
        assert_eq!(b.len(), HEAD_LEN + 16_384);
        assert_eq!(b[4], flag::END_HEADERS | flag::END_STREAM);
        let mut b = BytesMut::new();
        put_headers(&mut b, 1, b"", false, 16_384);
        assert_eq!(&b[..], &head(0, kind::HEADERS, flag::END_HEADERS, 1));
    }

    /// A tiny xorshift PRNG: reproducible, no dependency.
    pub(crate) struct Rng(pub u64);
    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn fuzz_reader_never_panics() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..5000 {
            let mut r = FrameReader::new(DEFAULT_MAX_FRAME_SIZE, 4096);
            let len = (rng.next() % 200) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // Mostly plausible heads: small lengths, known types.
            if bytes.len() >= HEAD_LEN && !rng.next().is_multiple_of(4) {
                bytes[0] = 0;
                bytes[1] = 0;
                bytes[2] %= 64;
                bytes[3] %= 11;
            }
            for piece in bytes.chunks(1 + (rng.next() % 16) as usize) {
                r.buf_mut().extend_from_slice(piece);
                while let Ok(Some(_)) = r.next() {}
            }
        }
    }

    /// An AsyncWrite taking at most `per_call` bytes a call, counting calls.
    struct Trickle {
        out: Vec<u8>,
        per_call: usize,
        vectored: bool,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.per_call);
            self.calls += 1;
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.calls += 1;
            let mut left = self.per_call;
            for b in bufs {
                let n = b.len().min(left);
                self.out.extend_from_slice(&b[..n]);
                left -= n;
                if left == 0 {
                    break;
                }
            }
            Poll::Ready(Ok(self.per_call - left))
        }
        fn is_write_vectored(&self) -> bool {
            self.vectored
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Queues a mix of frames and returns the queue and the bytes expected on the wire.
    fn sample_queue(big: &Bytes) -> (WriteQueue, Vec<u8>) {
        let mut q = WriteQueue::new();
        let mut want = BytesMut::new();
        put_settings_ack(q.scratch());
        put_settings_ack(&mut want);
        q.put_data(1, Bytes::from_static(b"small"), false);
        put_head(&mut want, 5, kind::DATA, 0, 1);
        want.extend_from_slice(b"small");
        q.put_data(1, big.clone(), true);
        put_head(&mut want, big.len(), kind::DATA, flag::END_STREAM, 1);
        want.extend_from_slice(big);
        put_window_update(q.scratch(), 0, 99);
        put_window_update(&mut want, 0, 99);
        q.put_data(3, big.slice(..2000), false);
        put_head(&mut want, 2000, kind::DATA, 0, 3);
        want.extend_from_slice(&big[..2000]);
        assert_eq!(q.len(), want.len());
        (q, want.to_vec())
    }

    #[test]
    fn write_queue_keeps_large_payloads_by_reference() {
        let big = Bytes::from(vec![0xab; 5000]);
        let (q, _) = sample_queue(&big);
        // [settings ack + small DATA + head], big, [window update + head], big[..2000]
        let chunks = q.chunks();
        assert_eq!(chunks.len(), 4);
        assert_eq!(chunks[1].as_ptr(), big.as_ptr());
        assert_eq!(chunks[1].len(), 5000);
        assert_eq!(chunks[3].as_ptr(), big.as_ptr());
        assert!(q.scratch.is_empty());
    }

    #[tokio::test]
    async fn write_queue_writes_exact_bytes_a_few_at_a_time() {
        let big = Bytes::from((0..5000u32).map(|i| i as u8).collect::<Vec<_>>());
        for vectored in [true, false] {
            for per_call in [1, 3, 100, 1 << 20] {
                let (mut q, want) = sample_queue(&big);
                let mut io = Trickle {
                    out: Vec::new(),
                    per_call,
                    vectored,
                    calls: 0,
                };
                std::future::poll_fn(|cx| q.poll_write(cx, Pin::new(&mut io)))
                    .await
                    .unwrap();
                assert_eq!(io.out, want, "vectored {vectored} per_call {per_call}");
                assert!(q.is_empty());
                if per_call == 1 << 20 {
                    // One vectored write for everything, or one write per chunk.
                    assert_eq!(io.calls, if vectored { 1 } else { 4 });
                }
                // The queue is reusable after draining.
                put_settings_ack(q.scratch());
                std::future::poll_fn(|cx| q.poll_write(cx, Pin::new(&mut io)))
                    .await
                    .unwrap();
                assert_eq!(
                    &io.out[want.len()..],
                    &head(0, kind::SETTINGS, flag::ACK, 0)
                );
            }
        }
    }

    #[tokio::test]
    async fn write_queue_over_duplex_with_backpressure() {
        let big = Bytes::from((0..5000u32).map(|i| (i * 7) as u8).collect::<Vec<_>>());
        let (mut q, want) = sample_queue(&big);
        // A 64-byte pipe: the writer must wait for the reader again and again.
        let (mut a, mut b) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut b, &mut got)
                .await
                .unwrap();
            got
        });
        std::future::poll_fn(|cx| q.poll_write(cx, Pin::new(&mut a)))
            .await
            .unwrap();
        drop(a);
        assert_eq!(reader.await.unwrap(), want);
    }

    #[tokio::test]
    async fn write_queue_reports_write_zero() {
        let mut q = WriteQueue::new();
        put_settings_ack(q.scratch());
        let mut io = Trickle {
            out: Vec::new(),
            per_call: 0,
            vectored: true,
            calls: 0,
        };
        let e = std::future::poll_fn(|cx| q.poll_write(cx, Pin::new(&mut io)))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
    }
}
