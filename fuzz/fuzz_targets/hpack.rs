//! HPACK (`partgate_http2::hpack`), Huffman included, in three modes picked by the first byte:
//!
//! - 0, decode: header blocks (each prefixed by its 16-bit length) through one decoder, as
//!   over one connection; the list size limit comes from the second byte. A list over the
//!   limit leaves the table in step (decoding goes on); any other error ends the connection.
//! - 1, round trip: the rest describes header lists (see `lists`) that our encoder writes
//!   and our decoder must read back exactly, table size updates included.
//! - 2, Huffman: the rest is a Huffman code, decoded through a literal field (twice: the
//!   second time from the decoder's cache) and compared with a bit-by-bit reference decoder.
#![no_main]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::{BufMut, Bytes, BytesMut};
use http2::hpack::{Decoder, Encoder, HpackError};
use libfuzzer_sys::fuzz_target;
use partgate_fuzz::Input;

fn decode(d: &mut Decoder, block: &Bytes, max: usize) -> Result<Vec<(Bytes, Bytes)>, HpackError> {
    let mut fields = Vec::new();
    d.decode(block, max, |n, v| fields.push((n, v)))
        .map(|()| fields)
}

fn blocks(mut input: Input<'_>) {
    let max = match input.byte() {
        0 => usize::MAX,
        n => usize::from(n) * 64,
    };
    let mut d = Decoder::new(4096);
    while let Some(block) = input.chunk() {
        let block = Bytes::copy_from_slice(block);
        match decode(&mut d, &block, max) {
            Ok(fields) => {
                let size: usize = fields.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
                assert!(size <= max, "a list over the limit was accepted");
            }
            // The table is in step: the next block can be decoded.
            Err(HpackError::ListTooLarge(_)) => {}
            // A connection error: the connection ends.
            Err(_) => return,
        }
    }
}

/// Header lists from the input: per field a control byte (bit 7: a dynamic table size update
/// to `byte * 32` before the next list; bit 6: end of the list; bit 5: never indexed; bits
/// 0-4: a name from a set that mixes static, gRPC and arbitrary names), then a value chunk.
fn lists(mut input: Input<'_>) {
    const NAMES: [&[u8]; 12] = [
        b":path",
        b":method",
        b"content-type",
        b"grpc-timeout",
        b"authorization",
        b"te",
        b"user-agent",
        b"x-custom",
        b"date",
        b"cookie",
        b"grpc-status",
        b":authority",
    ];
    let mut enc = Encoder::new();
    let mut dec = Decoder::new(4096);
    let mut list: Vec<(Vec<u8>, Vec<u8>, bool)> = Vec::new();
    let mut lists_done = 0;
    while !input.is_empty() && lists_done < 64 {
        let control = input.byte();
        if control & 0x80 != 0 {
            enc.set_max_table_size(usize::from(control & 0x7f) * 64);
            continue;
        }
        let value = input.field(0xff).to_vec();
        let name = match usize::from(control & 0x1f) {
            i if i < NAMES.len() => NAMES[i].to_vec(),
            // Arbitrary names: the value's first bytes.
            i => value.iter().take(i - NAMES.len() + 1).copied().collect(),
        };
        list.push((name, value, control & 0x20 != 0));
        if control & 0x40 != 0 || input.is_empty() {
            let mut block = BytesMut::new();
            enc.begin_block(&mut block);
            for (n, v, never) in &list {
                enc.encode(n, v, *never, &mut block);
            }
            let got = decode(&mut dec, &block.freeze(), usize::MAX)
                .unwrap_or_else(|e| panic!("our encoder's block does not decode: {e}"));
            let want: Vec<(Bytes, Bytes)> = list
                .drain(..)
                .map(|(n, v, _)| (Bytes::from(n), Bytes::from(v)))
                .collect();
            assert_eq!(got, want, "the header list changed on the way");
            lists_done += 1;
        }
    }
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 section 5.1).
fn put_int(out: &mut BytesMut, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.put_u8(first | value as u8);
        return;
    }
    out.put_u8(first | max as u8);
    value -= max;
    while value >= 128 {
        out.put_u8((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.put_u8(value as u8);
}

fn huffman(code: &[u8]) {
    // A literal without indexing, new name "h" (raw), value Huffman-coded; the same field
    // again, whose value comes from the decoder's cache of such values.
    let mut block = BytesMut::new();
    block.put_slice(&[0x00, 0x01, b'h']);
    put_int(&mut block, 0x80, 7, code.len());
    block.put_slice(code);
    let once = block.clone();
    block.extend_from_slice(&once);
    // The name Huffman-coded too (the other decoding path: `read_string`).
    block.put_u8(0x00);
    put_int(&mut block, 0x80, 7, code.len());
    block.put_slice(code);
    block.put_slice(&[0x01, b'v']);

    let want = reference_huffman(code);
    let got = decode(&mut Decoder::new(4096), &block.freeze(), usize::MAX);
    match (got, want) {
        (Ok(fields), Some(text)) => {
            assert_eq!(fields.len(), 3);
            assert_eq!(fields[0].1, text);
            assert_eq!(fields[1].1, text);
            assert_eq!(fields[2].0, text);
        }
        (Err(HpackError::InvalidHuffman), None) => {}
        (got, want) => panic!("Huffman decoding disagrees with the reference: {got:?} vs {want:?}"),
    }
}

/// RFC 7541 Appendix B code lengths (symbols 0-255, then EOS). The codes are canonical.
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

/// Decodes bit by bit against the (length, code) of every symbol: `None` on EOS in the
/// string, or padding longer than 7 bits or not all ones.
fn reference_huffman(code: &[u8]) -> Option<Vec<u8>> {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    static CODES: OnceLock<HashMap<(u8, u32), u16>> = OnceLock::new();
    let codes = CODES.get_or_init(|| {
        let mut map = HashMap::new();
        let mut next = 0u32;
        for len in 1..=30u8 {
            for (sym, _) in LENGTHS.iter().enumerate().filter(|(_, l)| **l == len) {
                map.insert((len, next), sym as u16);
                next += 1;
            }
            next <<= 1;
        }
        map
    });
    let mut out = Vec::new();
    let (mut acc, mut len) = (0u32, 0u8);
    for byte in code {
        for i in (0..8).rev() {
            acc = acc << 1 | u32::from(byte >> i & 1);
            len += 1;
            if let Some(&sym) = codes.get(&(len, acc)) {
                if sym == 256 {
                    return None;
                }
                out.push(sym as u8);
                acc = 0;
                len = 0;
            }
        }
    }
    // Leftover bits: padding, at most 7 and all ones (a prefix of EOS).
    (len <= 7 && acc == (1u32 << len) - 1).then_some(out)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    match input.byte() % 3 {
        0 => blocks(input),
        1 => lists(input),
        _ => huffman(input.rest()),
    }
});
