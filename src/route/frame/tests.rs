use super::*;

/// Encodes a length-delimited field.
fn field(number: u32, value: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    put_varint(&mut out, u64::from(number) << 3 | 2);
    put_varint(&mut out, value.len() as u64);
    out.extend_from_slice(value);
    out.to_vec()
}

fn varint_field(number: u32, value: u64) -> Vec<u8> {
    let mut out = BytesMut::new();
    put_varint(&mut out, u64::from(number) << 3);
    put_varint(&mut out, value);
    out.to_vec()
}

fn join(segments: &[Bytes]) -> Vec<u8> {
    segments.iter().flat_map(|s| s.iter().copied()).collect()
}

#[test]
fn header_round_trip() {
    let head = FrameHeader::encode(300);
    assert_eq!(
        FrameHeader::parse(&head),
        Some(FrameHeader {
            compressed: false,
            len: 300
        })
    );
    assert_eq!(
        FrameHeader::parse(&[1, 0, 0, 0, 7]),
        Some(FrameHeader {
            compressed: true,
            len: 7
        })
    );
    assert_eq!(FrameHeader::parse(&[0, 0, 0]), None);
}

#[test]
fn reads_name_among_other_fields() {
    let mut msg = varint_field(2, 300);
    msg.extend(field(3, b"other"));
    msg.extend(field(1, b"sub1:motor1"));
    msg.extend([0x25, 1, 2, 3, 4]); // fixed32 field 4
    msg.extend([0x29, 1, 2, 3, 4, 5, 6, 7, 8]); // fixed64 field 5
    assert_eq!(read_name(&msg, &[1]), Ok(Some("sub1:motor1")));
}

#[test]
fn last_occurrence_wins() {
    let mut msg = field(1, b"first");
    msg.extend(field(1, b"second"));
    assert_eq!(read_name(&msg, &[1]), Ok(Some("second")));
}

#[test]
fn empty_and_absent() {
    assert_eq!(read_name(&[], &[1]), Ok(None));
    assert_eq!(read_name(&field(2, b"x"), &[1]), Ok(None));
    assert_eq!(read_name(&field(1, b""), &[1]), Ok(Some("")));
}

#[test]
fn non_string_field_one_is_absent() {
    assert_eq!(read_name(&varint_field(1, 5), &[1]), Ok(None));
}

#[test]
fn malformed_inputs_are_errors_not_panics() {
    assert_eq!(
        read_name(&[0x0a, 10, b'a'], &[1]),
        Err(FrameError::Truncated)
    );
    assert_eq!(read_name(&[0x0a], &[1]), Err(FrameError::BadVarint));
    assert_eq!(read_name(&[0xff; 12], &[1]), Err(FrameError::BadVarint));
    assert_eq!(read_name(&[0x00, 1], &[1]), Err(FrameError::BadTag));
    assert_eq!(read_name(&[0x0b], &[1]), Err(FrameError::BadTag)); // group start
    assert_eq!(
        read_name(&[0x0a, 2, 0xff, 0xfe], &[1]),
        Err(FrameError::NotUtf8)
    );
    assert_eq!(
        read_name(
            &[0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
            &[1]
        ),
        Err(FrameError::Truncated)
    );
    assert_eq!(read_name(&[0x25, 1], &[1]), Err(FrameError::Truncated));
}

#[test]
fn strips_prefix_keeping_other_fields() {
    let mut msg = varint_field(2, 7);
    msg.extend(field(1, b"sub1:motor1"));
    msg.extend(field(99, b"extra"));
    let bytes = Bytes::from(msg);
    let (segments, len) = strip_name(&bytes, &[1], 5).expect("rewrites");
    let out = join(&segments);
    assert_eq!(out.len(), len);
    let mut expected = varint_field(2, 7);
    expected.extend(field(1, b"motor1"));
    expected.extend(field(99, b"extra"));
    assert_eq!(out, expected);
}

#[test]
fn strip_zero_is_untouched_and_zero_copy() {
    let bytes = Bytes::from(field(1, b"motor1"));
    let (segments, len) = strip_name(&bytes, &[1], 0).expect("ok");
    assert_eq!(segments.len(), 1);
    assert_eq!(segments[0].as_ptr(), bytes.as_ptr());
    assert_eq!(len, bytes.len());
}

#[test]
fn nested_path_fixes_enclosing_lengths() {
    // PlayStreamRequest { init = 1: PlayStreamInit { name = 1, format = 2 } }
    let mut init = field(1, b"speakers:out1");
    init.extend(varint_field(2, 3));
    let mut msg = field(1, &init);
    msg.extend(field(2, b"audio"));
    let bytes = Bytes::from(msg);
    assert_eq!(read_name(&bytes, &[1, 1]), Ok(Some("speakers:out1")));
    let (segments, len) = strip_name(&bytes, &[1, 1], "speakers:".len()).expect("ok");
    let out = join(&segments);
    assert_eq!(out.len(), len);
    assert_eq!(read_name(&out, &[1, 1]), Ok(Some("out1")));
    assert_eq!(read_name(&out, &[2]), Ok(Some("audio")));
}

#[test]
fn long_names_change_varint_width() {
    let long = format!("p:{}", "x".repeat(200));
    let bytes = Bytes::from(field(1, long.as_bytes()));
    let (segments, len) = strip_name(&bytes, &[1], 2).expect("ok");
    let out = join(&segments);
    assert_eq!(out.len(), len);
    assert_eq!(read_name(&out, &[1]), Ok(Some(&long[2..])));
    // 200-byte name needs a 2-byte length; the original 202 did too.
    let short = Bytes::from(field(1, format!("pp:{}", "y".repeat(126)).as_bytes()));
    let (segments, len) = strip_name(&short, &[1], 3).expect("ok");
    let out = join(&segments);
    assert_eq!(out.len(), len);
    assert_eq!(
        out.len(),
        short.len() - 3 - 1,
        "length prefix shrinks from 2 bytes to 1"
    );
}

/// A small deterministic xorshift fuzz: `count` messages of 0 to 23 arbitrary bytes, each with
/// the generator state it was made from.
fn random_messages(seed: u64, count: usize) -> impl Iterator<Item = (u64, Vec<u8>)> {
    let mut state = seed;
    (0..count).map(move |_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = (state % 24) as usize;
        (
            state,
            (0..len).map(|i| (state >> (i % 8 * 8)) as u8).collect(),
        )
    })
}

#[test]
fn random_bytes_never_panic() {
    for (_, msg) in random_messages(0x2545_f491_4f6c_dd1d, 20_000) {
        let bytes = Bytes::from(msg);
        if let Ok(Some(name)) = read_name(&bytes, &[1]) {
            let strip = name.len() / 2;
            if name.is_char_boundary(strip) {
                let (segments, len) = strip_name(&bytes, &[1], strip).expect("located before");
                assert_eq!(join(&segments).len(), len);
            }
        }
        let _ = read_name(&bytes, &[1, 1]);
    }
}

#[test]
fn framing_coalesces_small_pieces_and_keeps_large_ones_zero_copy() {
    let mut msg = field(1, b"sub1:motor1");
    let big = vec![7u8; 100 * 1024];
    msg.extend(field(2, &big));
    let bytes = Bytes::from(msg);
    let (segments, len) = strip_name(&bytes, &[1], 5).expect("ok");
    let framed = frame_segments(segments, len);
    assert_eq!(framed.len(), 2, "one small run, then the big slice");
    let joined = join(&framed);
    assert_eq!(FrameHeader::parse(&joined).map(|h| h.len), Some(len));
    assert_eq!(read_name(&joined[HEADER_LEN..], &[1]), Ok(Some("motor1")));
    let small = Bytes::from(field(1, b"a:b"));
    let (segments, len) = strip_name(&small, &[1], 2).expect("ok");
    assert_eq!(frame_segments(segments, len).len(), 1);
}

#[test]
fn strip_framed_matches_strip_then_frame() {
    let mut nested = field(3, b"x");
    nested.extend(field(1, b"speakers:main:amp"));
    nested.extend(varint_field(2, 300));
    let mut outer = varint_field(4, 1);
    outer.extend(field(1, &nested));
    outer.extend(field(9, &[1u8; 200]));
    let long_name = "p".repeat(200) + ":motor";
    let cases: Vec<(Vec<u8>, &[u32], usize)> = vec![
        (field(1, b"sub1:motor1"), &[1], 5),
        (field(1, b"sub1:motor1"), &[1], 0),
        (field(2, b"no name here"), &[1], 3),
        (field(1, long_name.as_bytes()), &[1], 201),
        (outer.clone(), &[1, 1], "speakers:".len()),
        (outer, &[1, 1], 0),
        (Vec::new(), &[1], 2),
    ];
    for (msg, path, strip) in cases {
        let bytes = Bytes::from(msg);
        for extra in [0, 17] {
            let (segments, len) = strip_name(&bytes, path, strip).expect("ok");
            let expected = join(&frame_segments(segments, len + extra));
            let got = strip_framed(&bytes, path, strip, extra).expect("ok");
            assert_eq!(got.len(), 1, "small messages are one buffer");
            assert_eq!(join(&got), expected, "path {path:?} strip {strip}");
        }
    }
    let mut big = field(1, b"sub1:motor1");
    big.extend(field(2, &vec![7u8; 100 * 1024]));
    let big = Bytes::from(big);
    let (segments, len) = strip_name(&big, &[1], 5).expect("ok");
    let expected = join(&frame_segments(segments, len));
    assert_eq!(join(&strip_framed(&big, &[1], 5, 0).expect("ok")), expected);
    assert_eq!(
        strip_framed(&Bytes::from_static(&[0x0a, 0x09, b'a']), &[1], 1, 0),
        Err(FrameError::Truncated)
    );
}

/// The one-walk rewrite of a stream's later messages agrees with reading the name, comparing
/// it and calling `strip_framed`: for matching and other names, nested paths, large messages,
/// repeated fields, and arbitrary bytes.
#[test]
fn restrip_framed_matches_read_compare_strip() {
    fn slow(msg: &Bytes, path: &[u32], name: &[u8], strip: usize) -> Option<Vec<u8>> {
        match read_name(msg, path) {
            Ok(Some(n)) if n.as_bytes() == name => {
                strip_framed(msg, path, strip, 0).ok().map(|s| join(&s))
            }
            _ => None,
        }
    }
    fn fast(msg: &Bytes, path: &[u32], name: &[u8], strip: usize) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        restrip_framed(msg, path, name, strip, &mut out).then(|| join(&out))
    }
    let mut nested = field(3, b"x");
    nested.extend(field(1, b"speakers:main:amp"));
    let mut outer = varint_field(4, 1);
    outer.extend(field(1, &nested));
    let mut repeated = field(1, b"sub1:other");
    repeated.extend(field(1, b"sub1:motor1"));
    let mut big = field(1, b"sub1:motor1");
    big.extend(field(2, &vec![7u8; 100 * 1024]));
    let long_name = "p".repeat(200) + ":motor";
    /// A message, the name's path, the name a stream started with, bytes to strip.
    type Case<'a> = (Vec<u8>, &'a [u32], &'a [u8], usize);
    let cases: Vec<Case> = vec![
        (field(1, b"sub1:motor1"), &[1], b"sub1:motor1", 5),
        (field(1, b"sub1:motor1"), &[1], b"sub1:motor2", 5),
        (field(1, b"sub1:motor1"), &[1], b"sub1:motor1", 0),
        (field(2, b"sub1:motor1"), &[1], b"sub1:motor1", 5),
        (varint_field(1, 5), &[1], b"sub1:motor1", 5),
        (repeated.clone(), &[1], b"sub1:motor1", 5),
        (repeated, &[1], b"sub1:other", 5),
        (
            field(1, long_name.as_bytes()),
            &[1],
            long_name.as_bytes(),
            201,
        ),
        (outer.clone(), &[1, 1], b"speakers:main:amp", 9),
        (outer, &[1, 1], b"speakers:main:x", 9),
        (big, &[1], b"sub1:motor1", 5),
        (vec![0x0a, 0x09, b'a'], &[1], b"a", 1),
        (Vec::new(), &[1], b"", 1),
    ];
    for (msg, path, name, strip) in cases {
        let msg = Bytes::from(msg);
        let expected = slow(&msg, path, name, strip);
        assert_eq!(
            fast(&msg, path, name, strip),
            expected,
            "path {path:?} name {name:?}"
        );
    }
    assert!(
        fast(
            &Bytes::from(field(1, b"sub1:motor1")),
            &[1],
            b"sub1:motor1",
            5
        )
        .is_some()
    );
    for (state, mut msg) in random_messages(0x9e37_79b9_7f4a_7c15, 20_000) {
        if state & 1 == 0 {
            msg.extend(field(1, b"a:b"));
        }
        let msg = Bytes::from(msg);
        assert_eq!(fast(&msg, &[1], b"a:b", 2), slow(&msg, &[1], b"a:b", 2));
    }
}
