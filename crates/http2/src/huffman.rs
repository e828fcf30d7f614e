//! Huffman decoding of HPACK strings (RFC 7541 section 5.2, code in Appendix B).
//!
//! The HPACK code is canonical (codes of one length are consecutive, in symbol order), so only
//! each symbol's code length is written down here; the codes, the code tree and the decode
//! table are derived by const fns at compile time: no start-up work, no hand-copied codes.
//!
//! Decoding is a 4-bit state machine: a state is an inner node of the code tree (256 of them),
//! and `DECODE[state][nibble]` says where 4 more bits lead, which symbol they complete (at most
//! one: the shortest code has 5 bits) and whether the string may end there. Two lookups per
//! input byte, against a bit-by-bit tree walk's eight branches; the table is 12 KiB.

use super::hpack::HpackError;

/// Code length in bits of each symbol (0..=255 and EOS = 256), RFC 7541 Appendix B.
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0x00
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 0x10
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, // 0x20
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, // 0x30
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, // 0x40
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, // 0x50
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, // 0x60
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, // 0x70
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 0x80
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 0x90
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 0xa0
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 0xb0
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 0xc0
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 0xd0
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 0xe0
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 0xf0
    30, // EOS
];

const EOS: usize = 256;

/// Canonical code assignment: by length, then by symbol.
const fn canonical_codes() -> [u32; 257] {
    let mut codes = [0u32; 257];
    let mut code = 0u32;
    let mut len = 1;
    while len <= 30 {
        let mut sym = 0;
        while sym < 257 {
            if LENGTHS[sym] == len {
                codes[sym] = code;
                code += 1;
            }
            sym += 1;
        }
        code <<= 1;
        len += 1;
    }
    codes
}

/// Each symbol's code, right-aligned in `LENGTHS[sym]` bits.
const CODES: [u32; 257] = canonical_codes();

/// One transition of the decoder.
#[derive(Clone, Copy)]
struct Step {
    /// The state (inner tree node) after the nibble.
    next: u8,
    /// The symbol completed by the nibble, when `flags & EMIT`.
    sym: u8,
    flags: u8,
}

/// The nibble completed a symbol.
const EMIT: u8 = 1;
/// The string may end in `next`: it is the root, or a path of at most 7 one-bits (padding).
const ACCEPT: u8 = 2;
/// The nibble completed EOS, which must not appear in a string.
const FAIL: u8 = 4;

/// Marks a tree child as a leaf (symbol in the low bits); 0 is "no child yet".
const LEAF: u16 = 0x8000;
/// `ones` of a node whose path from the root is not all one-bits.
const NOT_ONES: u8 = u8::MAX;

const fn build_decode_table() -> [[Step; 16]; 256] {
    // The code tree: 257 leaves, so exactly 256 inner nodes (the code is complete); node 0 is
    // the root. An incomplete code would overflow these arrays and fail the build.
    let mut children = [[0u16; 2]; 256];
    // For each inner node: its depth if its path is all one-bits, else NOT_ONES.
    let mut ones = [NOT_ONES; 256];
    ones[0] = 0;
    let mut nodes = 1;
    let mut sym = 0;
    while sym < 257 {
        let code = CODES[sym];
        let mut bit_index = LENGTHS[sym] as u32;
        let mut node = 0;
        while bit_index > 1 {
            bit_index -= 1;
            let bit = ((code >> bit_index) & 1) as usize;
            if children[node][bit] == 0 {
                children[node][bit] = nodes as u16;
                ones[nodes] = if bit == 1 && ones[node] != NOT_ONES {
                    ones[node] + 1
                } else {
                    NOT_ONES
                };
                nodes += 1;
            }
            node = children[node][bit] as usize;
        }
        children[node][(code & 1) as usize] = LEAF | sym as u16;
        sym += 1;
    }

    let mut table = [[Step {
        next: 0,
        sym: 0,
        flags: 0,
    }; 16]; 256];
    let mut state = 0;
    while state < 256 {
        let mut nibble = 0;
        while nibble < 16 {
            let mut node = state;
            let mut flags = 0;
            let mut out = 0;
            let mut bit_index = 4;
            while bit_index > 0 {
                bit_index -= 1;
                let child = children[node][(nibble >> bit_index) & 1];
                if child & LEAF != 0 {
                    let s = (child & !LEAF) as usize;
                    if s == EOS {
                        flags |= FAIL;
                    } else {
                        flags |= EMIT;
                        out = s as u8;
                    }
                    node = 0;
                } else {
                    node = child as usize;
                }
            }
            if ones[node] <= 7 {
                flags |= ACCEPT;
            }
            table[state][nibble] = Step {
                next: node as u8,
                sym: out,
                flags,
            };
            nibble += 1;
        }
        state += 1;
    }
    table
}

static DECODE: [[Step; 16]; 256] = build_decode_table();

/// Most bytes `len` bytes of Huffman code can decode to (the shortest code has 5 bits).
pub(crate) fn max_decoded_len(len: usize) -> usize {
    len * 8 / 5
}

/// Appends the decoding of `src` to `dst`. Errors on EOS in the input and on padding that is
/// longer than 7 bits or not all one-bits.
pub(crate) fn decode(src: &[u8], dst: &mut Vec<u8>) -> Result<(), HpackError> {
    dst.reserve(max_decoded_len(src.len()));
    let mut state = 0u8;
    let mut flags = ACCEPT;
    for &byte in src {
        for nibble in [byte >> 4, byte & 0xf] {
            let step = DECODE[state as usize][nibble as usize];
            if step.flags & FAIL != 0 {
                return Err(HpackError::InvalidHuffman);
            }
            if step.flags & EMIT != 0 {
                dst.push(step.sym);
            }
            state = step.next;
            flags = step.flags;
        }
    }
    if flags & ACCEPT == 0 {
        return Err(HpackError::InvalidHuffman);
    }
    Ok(())
}

/// Huffman-encodes `src` (tests only: the encoder writes raw strings).
#[cfg(test)]
pub(crate) fn encode(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len());
    let mut acc = 0u64;
    let mut bits = 0u32;
    for &b in src {
        let len = LENGTHS[b as usize] as u32;
        acc = (acc << len) | CODES[b as usize] as u64;
        bits += len;
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        let pad = 8 - bits;
        out.push(((acc << pad) as u8) | ((1u8 << pad) - 1));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn dec(src: &[u8]) -> Result<Vec<u8>, HpackError> {
        let mut v = Vec::new();
        decode(src, &mut v).map(|()| v)
    }

    #[test]
    fn codes_match_rfc_examples() {
        // Spot checks against RFC 7541 Appendix B (the rest follows from canonical order).
        let known: [(usize, u32, u8); 9] = [
            (0, 0x1ff8, 13),
            (b' ' as usize, 0x14, 6),
            (b'0' as usize, 0x0, 5),
            (b'a' as usize, 0x3, 5),
            (b'z' as usize, 0x7b, 7),
            (b'~' as usize, 0x1ffd, 13),
            (0x7f, 0xffffffc, 28),
            (0xff, 0x3ffffee, 26),
            (EOS, 0x3fffffff, 30),
        ];
        for (sym, code, len) in known {
            assert_eq!((CODES[sym], LENGTHS[sym]), (code, len), "symbol {sym}");
        }
        // The code is complete: Kraft sum exactly 1.
        let kraft: u64 = LENGTHS.iter().map(|&l| 1u64 << (30 - l)).sum();
        assert_eq!(kraft, 1 << 30);
    }

    #[test]
    fn rfc_strings() {
        for (code, text) in [
            ("f1e3c2e5f23a6ba0ab90f4ff", &b"www.example.com"[..]),
            ("a8eb10649cbf", b"no-cache"),
            ("25a849e95ba97d7f", b"custom-key"),
            ("25a849e95bb8e8b4bf", b"custom-value"),
            ("6402", b"302"),
            ("aec3771a4b", b"private"),
            (
                "d07abe941054d444a8200595040b8166e082a62d1bff",
                b"Mon, 21 Oct 2013 20:13:21 GMT",
            ),
            (
                "9d29ad171863c78f0b97c8e9ae82ae43d3",
                b"https://www.example.com",
            ),
        ] {
            assert_eq!(dec(&hex(code)).unwrap(), text);
            assert_eq!(encode(text), hex(code));
        }
    }

    #[test]
    fn round_trip_every_byte() {
        let all: Vec<u8> = (0..=255u8).collect();
        assert_eq!(dec(&encode(&all)).unwrap(), all);
        for b in 0..=255u8 {
            for n in 1..4 {
                let s = vec![b; n];
                assert_eq!(dec(&encode(&s)).unwrap(), s);
            }
        }
        assert_eq!(dec(b"").unwrap(), b"");
    }

    #[test]
    fn rejects_bad_padding_and_eos() {
        // 'a' (00011) + 3 zero bits: padding not all ones.
        assert!(dec(&[0b0001_1000]).is_err());
        // 'a' + 3 one bits is fine; one more all-ones byte makes 11 bits of padding.
        assert_eq!(dec(&[0b0001_1111]).unwrap(), b"a");
        assert!(dec(&[0b0001_1111, 0xff]).is_err());
        // A whole byte of padding alone.
        assert!(dec(&[0xff]).is_err());
        // EOS (30 one-bits) inside the string.
        assert!(dec(&[0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(dec(&[0xff, 0xff, 0xff, 0xfc, 0x00]).is_err());
        // A truncated long code (first 8 bits of a 13-bit code) is not valid padding.
        assert!(dec(&[0xff]).is_err());
        assert!(dec(&[0xfe]).is_err());
    }
}
