//! Stage `route`, wire level: find and rewrite the routing field inside a gRPC message.
//!
//! Receives the bytes of one gRPC message (the 5-byte frame header stripped) and a field path
//! such as `[1]` (`name`) or `[1, 1]` (`init.name`); hands back the name, or the message with the
//! name shortened. Nothing else is decoded: the message is walked tag by tag and the untouched
//! parts are re-used as zero-copy slices of the original buffer.

use bytes::{BufMut, Bytes, BytesMut};

/// Length of the gRPC frame header: 1 flag byte and a 4-byte big-endian length.
pub const HEADER_LEN: usize = 5;

/// Ways a message can be malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A varint ran past the end or past 10 bytes.
    #[error("truncated or overlong varint")]
    BadVarint,
    /// A field's length points past the end of the message.
    #[error("field length past end of message")]
    Truncated,
    /// Field number 0, a group, or an unknown wire type.
    #[error("invalid protobuf tag")]
    BadTag,
    /// The routing field is not valid UTF-8.
    #[error("resource name is not valid UTF-8")]
    NotUtf8,
}

/// The parsed 5-byte gRPC frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The message is compressed with the call's `grpc-encoding`.
    pub compressed: bool,
    /// Length of the message that follows.
    pub len: usize,
}

/// Where one length-delimited field sits inside its enclosing message.
#[derive(Debug, Clone, Copy)]
struct FieldLoc {
    /// Offset of the field's tag.
    start: usize,
    /// Offset of the field's value (after tag and length).
    value_start: usize,
    /// Offset just past the value.
    value_end: usize,
}

// === impl FrameHeader ===

impl FrameHeader {
    /// Parses a header from the first five bytes, if there are five.
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let head: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        Some(Self {
            compressed: head[0] != 0,
            len,
        })
    }

    /// Encodes a header for an uncompressed message of `len` bytes.
    pub fn encode(len: usize) -> [u8; HEADER_LEN] {
        let n = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
        [0, n[0], n[1], n[2], n[3]]
    }
}

/// Reads a varint at `pos`, returning the value and the offset after it.
fn read_varint(buf: &[u8], mut pos: usize) -> Result<(u64, usize), FrameError> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let byte = *buf.get(pos).ok_or(FrameError::BadVarint)?;
        pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok((value, pos));
        }
    }
    Err(FrameError::BadVarint)
}

fn put_varint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// Finds the last occurrence of `field` with wire type 2 (length-delimited) at the top level of
/// `msg`. A field of that number with another wire type is treated as absent.
fn locate(msg: &[u8], field: u32) -> Result<Option<FieldLoc>, FrameError> {
    let mut pos = 0;
    let mut found = None;
    while pos < msg.len() {
        let start = pos;
        let (tag, after_tag) = read_varint(msg, pos)?;
        let number = tag >> 3;
        if number == 0 || number > u64::from(u32::MAX >> 3) {
            return Err(FrameError::BadTag);
        }
        pos = match tag & 7 {
            0 => read_varint(msg, after_tag)?.1,
            1 => after_tag.checked_add(8).ok_or(FrameError::Truncated)?,
            5 => after_tag.checked_add(4).ok_or(FrameError::Truncated)?,
            2 => {
                let (len, value_start) = read_varint(msg, after_tag)?;
                let len = usize::try_from(len).map_err(|_| FrameError::Truncated)?;
                let value_end = value_start.checked_add(len).ok_or(FrameError::Truncated)?;
                if value_end > msg.len() {
                    return Err(FrameError::Truncated);
                }
                if number == u64::from(field) {
                    found = Some(FieldLoc {
                        start,
                        value_start,
                        value_end,
                    });
                }
                value_end
            }
            _ => return Err(FrameError::BadTag),
        };
        if pos > msg.len() {
            return Err(FrameError::Truncated);
        }
    }
    Ok(found)
}

/// A message split over several buffers, read front to back without copying it.
struct Chunked<'a> {
    chunks: &'a [Bytes],
    /// Index of the chunk holding `pos`, and the message offset where that chunk starts.
    at: usize,
    at_start: usize,
    len: usize,
}

impl Chunked<'_> {
    /// The byte at message offset `pos`; offsets never go backwards between calls.
    fn byte(&mut self, pos: usize) -> Option<u8> {
        while let Some(chunk) = self.chunks.get(self.at) {
            if pos < self.at_start + chunk.len() {
                return chunk.get(pos - self.at_start).copied();
            }
            self.at_start += chunk.len();
            self.at += 1;
        }
        None
    }

    fn varint(&mut self, mut pos: usize) -> Result<(u64, usize), FrameError> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = self.byte(pos).ok_or(FrameError::BadVarint)?;
            pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok((value, pos));
            }
        }
        Err(FrameError::BadVarint)
    }
}

/// Where the last top-level occurrence of length-delimited `field` ends in a message held as
/// `chunks` (0 when it is absent), walking tags and lengths only: the same walk and the same
/// errors as [`read_name`] over the message made contiguous, without copying it.
pub fn locate_end_in_chunks(chunks: &[Bytes], field: u32) -> Result<usize, FrameError> {
    let len = chunks.iter().map(Bytes::len).sum();
    let mut msg = Chunked {
        chunks,
        at: 0,
        at_start: 0,
        len,
    };
    let mut pos = 0;
    let mut found = 0;
    while pos < msg.len {
        let (tag, after_tag) = msg.varint(pos)?;
        let number = tag >> 3;
        if number == 0 || number > u64::from(u32::MAX >> 3) {
            return Err(FrameError::BadTag);
        }
        pos = match tag & 7 {
            0 => msg.varint(after_tag)?.1,
            1 => after_tag.checked_add(8).ok_or(FrameError::Truncated)?,
            5 => after_tag.checked_add(4).ok_or(FrameError::Truncated)?,
            2 => {
                let (value_len, value_start) = msg.varint(after_tag)?;
                let value_len = usize::try_from(value_len).map_err(|_| FrameError::Truncated)?;
                let value_end = value_start
                    .checked_add(value_len)
                    .ok_or(FrameError::Truncated)?;
                if value_end > msg.len {
                    return Err(FrameError::Truncated);
                }
                if number == u64::from(field) {
                    found = value_end;
                }
                value_end
            }
            _ => return Err(FrameError::BadTag),
        };
        if pos > msg.len {
            return Err(FrameError::Truncated);
        }
    }
    Ok(found)
}

/// Reads the string at `path` (field numbers, outermost first). `Ok(None)` when absent.
pub fn read_name<'a>(msg: &'a [u8], path: &[u32]) -> Result<Option<&'a str>, FrameError> {
    let Some((&field, rest)) = path.split_first() else {
        return Ok(None);
    };
    let Some(loc) = locate(msg, field)? else {
        return Ok(None);
    };
    let value = &msg[loc.value_start..loc.value_end];
    if rest.is_empty() {
        std::str::from_utf8(value)
            .map(Some)
            .map_err(|_| FrameError::NotUtf8)
    } else {
        read_name(value, rest)
    }
}

/// Returns the message with the string at `path` shortened by its first `strip` bytes, as a list
/// of segments (zero-copy slices of `msg` plus small new pieces) and their total length.
///
/// The caller has read the name with [`read_name`] and checked that `strip` is on a char
/// boundary within it. `strip == 0` returns the message untouched.
pub fn strip_name(
    msg: &Bytes,
    path: &[u32],
    strip: usize,
) -> Result<(Vec<Bytes>, usize), FrameError> {
    let mut out = Vec::with_capacity(4);
    let len = splice(msg, path, strip, &mut out)?;
    Ok((out, len))
}

/// Largest piece copied when framing a rewritten message; bigger pieces stay zero-copy slices.
const COALESCE_LIMIT: usize = 16 * 1024;

/// Frames a rewritten message (from [`strip_name`]) for sending: a fresh 5-byte header, with
/// runs of small pieces copied into one buffer so the message goes out as one or two DATA
/// frames. Many tiny frames per message would trip HTTP/2 servers' small-frame flood limits
/// (h2 answers GOAWAY ENHANCE_YOUR_CALM) and waste a 9-byte frame header each.
pub fn frame_segments(segments: Vec<Bytes>, len: usize) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(2);
    let mut run = BytesMut::with_capacity(HEADER_LEN + len.min(COALESCE_LIMIT));
    run.extend_from_slice(&FrameHeader::encode(len));
    for piece in segments {
        if piece.len() > COALESCE_LIMIT {
            if !run.is_empty() {
                out.push(run.split().freeze());
            }
            out.push(piece);
        } else {
            run.extend_from_slice(&piece);
        }
    }
    if !run.is_empty() {
        out.push(run.freeze());
    }
    out
}

/// [`strip_name`] and [`frame_segments`] in one: the framed, rewritten message ready to send,
/// its header counting `extra_len` more bytes that the caller sends after it (the uncopied tail
/// of a large first message). A message of up to [`COALESCE_LIMIT`] bytes, the usual case, is
/// written into one buffer (one allocation instead of five); a larger one keeps its big pieces
/// as zero-copy slices.
pub fn strip_framed(
    msg: &Bytes,
    path: &[u32],
    strip: usize,
    extra_len: usize,
) -> Result<Vec<Bytes>, FrameError> {
    if msg.len() > COALESCE_LIMIT {
        let (segments, len) = strip_name(msg, path, strip)?;
        return Ok(frame_segments(segments, len + extra_len));
    }
    let len = stripped_len(msg, path, strip)?;
    let mut out = BytesMut::with_capacity(HEADER_LEN + len);
    out.extend_from_slice(&FrameHeader::encode(len + extra_len));
    write_stripped(msg, path, strip, &mut out)?;
    Ok(vec![out.freeze()])
}

/// A later message of a stream, rewritten when it names `name`: the framed message with the
/// string at `path` shortened by its first `strip` bytes, or `None` when the message names
/// something else, has no name, or is malformed (then it goes on untouched). The pieces go to
/// `out`; returns whether there were any. `name` is valid UTF-8 (read by [`read_name`]), so
/// equal bytes are an equal name.
///
/// The same result as [`read_name`], a comparison and [`strip_framed`], in one walk over the
/// message for a top-level name in a small message (the usual case: `name = 1` of a few-dozen-
/// byte message); nested paths and large messages take that longer way.
pub fn restrip_framed(
    msg: &Bytes,
    path: &[u32],
    name: &[u8],
    strip: usize,
    out: &mut impl Extend<Bytes>,
) -> bool {
    if let ([field], true) = (path, msg.len() <= COALESCE_LIMIT && strip > 0) {
        let Ok(Some(loc)) = locate(msg, *field) else {
            return false;
        };
        let value = &msg[loc.value_start..loc.value_end];
        if value != name {
            return false;
        }
        let kept = &value[strip.min(value.len())..];
        let len = replaced_len(msg.len(), *field, &loc, kept.len());
        let mut framed = BytesMut::with_capacity(HEADER_LEN + len);
        framed.extend_from_slice(&FrameHeader::encode(len));
        write_replaced(msg, *field, &loc, kept, &mut framed);
        out.extend([framed.freeze()]);
        return true;
    }
    match read_name(msg, path) {
        Ok(Some(n)) if n.as_bytes() == name => match strip_framed(msg, path, strip, 0) {
            Ok(pieces) => {
                out.extend(pieces);
                true
            }
            Err(_) => false,
        },
        _ => false,
    }
}

/// Bytes a varint of `value` takes.
fn varint_len(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// The length of `msg` after [`splice`] (same walk, nothing built).
fn stripped_len(msg: &[u8], path: &[u32], strip: usize) -> Result<usize, FrameError> {
    let (Some((&field, rest)), true) = (path.split_first(), strip > 0) else {
        return Ok(msg.len());
    };
    let Some(loc) = locate(msg, field)? else {
        return Ok(msg.len());
    };
    let value = &msg[loc.value_start..loc.value_end];
    let inner = if rest.is_empty() {
        value.len() - strip.min(value.len())
    } else {
        stripped_len(value, rest, strip)?
    };
    Ok(replaced_len(msg.len(), field, &loc, inner))
}

/// The length of a message of `msg_len` bytes once the length-delimited `field` at `loc` holds
/// `inner` bytes.
fn replaced_len(msg_len: usize, field: u32, loc: &FieldLoc, inner: usize) -> usize {
    let tag = varint_len(u64::from(field) << 3 | 2);
    loc.start + tag + varint_len(inner as u64) + inner + (msg_len - loc.value_end)
}

/// Appends `msg` with the length-delimited `field` at `loc` holding `kept` instead.
fn write_replaced(msg: &[u8], field: u32, loc: &FieldLoc, kept: &[u8], out: &mut BytesMut) {
    out.extend_from_slice(&msg[..loc.start]);
    put_varint(out, u64::from(field) << 3 | 2);
    put_varint(out, kept.len() as u64);
    out.extend_from_slice(kept);
    out.extend_from_slice(&msg[loc.value_end..]);
}

/// Appends `msg` after [`splice`] to `out` (copying; for small messages).
fn write_stripped(
    msg: &[u8],
    path: &[u32],
    strip: usize,
    out: &mut BytesMut,
) -> Result<(), FrameError> {
    let (Some((&field, rest)), true) = (path.split_first(), strip > 0) else {
        out.extend_from_slice(msg);
        return Ok(());
    };
    let Some(loc) = locate(msg, field)? else {
        out.extend_from_slice(msg);
        return Ok(());
    };
    let value = &msg[loc.value_start..loc.value_end];
    if rest.is_empty() {
        write_replaced(msg, field, &loc, &value[strip.min(value.len())..], out);
        return Ok(());
    }
    out.extend_from_slice(&msg[..loc.start]);
    put_varint(out, u64::from(field) << 3 | 2);
    put_varint(out, stripped_len(value, rest, strip)? as u64);
    write_stripped(value, rest, strip, out)?;
    out.extend_from_slice(&msg[loc.value_end..]);
    Ok(())
}

fn splice(
    msg: &Bytes,
    path: &[u32],
    strip: usize,
    out: &mut Vec<Bytes>,
) -> Result<usize, FrameError> {
    let (Some((&field, rest)), true) = (path.split_first(), strip > 0) else {
        out.push(msg.clone());
        return Ok(msg.len());
    };
    let Some(loc) = locate(msg, field)? else {
        out.push(msg.clone());
        return Ok(msg.len());
    };
    let value = msg.slice(loc.value_start..loc.value_end);
    let mut inner = Vec::with_capacity(4);
    let inner_len = if rest.is_empty() {
        let kept = value.slice(strip.min(value.len())..);
        let len = kept.len();
        inner.push(kept);
        len
    } else {
        splice(&value, rest, strip, &mut inner)?
    };
    let mut head = BytesMut::with_capacity(16);
    put_varint(&mut head, u64::from(field) << 3 | 2);
    put_varint(&mut head, inner_len as u64);
    let before = msg.slice(..loc.start);
    let after = msg.slice(loc.value_end..);
    let total = before.len() + head.len() + inner_len + after.len();
    for piece in [before, head.freeze()]
        .into_iter()
        .chain(inner)
        .chain([after])
    {
        if !piece.is_empty() {
            out.push(piece);
        }
    }
    Ok(total)
}

#[cfg(test)]
#[path = "frame/tests.rs"]
mod tests;
