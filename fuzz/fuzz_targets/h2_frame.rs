//! HTTP/2 frame decoder (`partgate_http2::frame::FrameReader`): arbitrary bytes, read whole
//! and in pieces. The frames and the error must not depend on how the bytes were cut into
//! reads; whatever is accepted must respect the reader's own limits; and frames written by
//! the `put_*` writers must read back as written.
//!
//! Input: `flags` (bits 0-2: read pattern, bit 3: a client preface is expected first, bits
//! 4-5: our SETTINGS_MAX_FRAME_SIZE, bits 6-7: header block cap), then the bytes.
#![no_main]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::{BufMut, BytesMut};
use http2::frame::{self, Frame, FrameReader, Reason};
use libfuzzer_sys::fuzz_target;
use partgate_fuzz::{Input, split};

/// What one read of a connection gave: the frames, then the error that ended it.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    preface: Option<bool>,
    frames: Vec<Frame>,
    error: Option<(Reason, &'static str)>,
}

fn read(chunks: &[bytes::Bytes], preface: bool, max_frame: u32, max_block: usize) -> Outcome {
    let mut reader = FrameReader::new(max_frame, max_block);
    let mut out = Outcome {
        preface: None,
        frames: Vec::new(),
        error: None,
    };
    let mut want_preface = preface;
    for chunk in chunks {
        reader.buf_mut().extend_from_slice(chunk);
        if want_preface {
            match reader.take_preface() {
                Ok(true) => {
                    want_preface = false;
                    out.preface = Some(true);
                }
                Ok(false) => continue,
                Err(e) => {
                    out.preface = Some(false);
                    out.error = Some((e.reason, e.detail));
                    return out;
                }
            }
        }
        loop {
            match reader.next() {
                Ok(Some(f)) => {
                    check(&f, max_frame, max_block);
                    out.frames.push(f);
                }
                Ok(None) => break,
                Err(e) => {
                    out.error = Some((e.reason, e.detail));
                    return out;
                }
            }
        }
    }
    out
}

/// What a frame the reader accepted may look like.
fn check(f: &Frame, max_frame: u32, max_block: usize) {
    match f {
        Frame::Data {
            stream,
            data,
            flow_len,
            ..
        } => {
            assert_ne!(*stream, 0);
            assert!(data.len() <= *flow_len as usize && *flow_len <= max_frame);
        }
        Frame::Headers { stream, block, .. } => {
            assert_ne!(*stream, 0);
            assert!(block.len() <= max_block);
        }
        Frame::Priority { stream, depends_on } => {
            assert_ne!(*stream, 0);
            assert_ne!(stream, depends_on);
        }
        Frame::RstStream { stream, .. } | Frame::PushPromise { stream, .. } => {
            assert_ne!(*stream, 0)
        }
        Frame::Settings { ack, params } => assert!(!*ack || params.is_empty()),
        Frame::WindowUpdate { stream, increment } => {
            assert!(*increment <= frame::MAX_WINDOW);
            assert!(*stream != 0 || *increment != 0);
        }
        Frame::GoAway { last_stream, .. } => assert!(*last_stream <= frame::MAX_WINDOW),
        Frame::Ping { .. } | Frame::Unknown => {}
    }
}

/// Frames made by the writers from the input's bytes read back as written.
fn round_trip(data: &[u8]) {
    let mut input = Input::new(data);
    let mut wire = BytesMut::new();
    let mut expect = Vec::new();
    for _ in 0..8 {
        if input.is_empty() {
            break;
        }
        let stream = u32::from(input.u16()) + 1;
        match input.byte() % 6 {
            0 => {
                let len = usize::from(input.byte()) * 80;
                let block = vec![0x82; len];
                frame::put_headers(&mut wire, stream, &block, len % 3 == 0, 16_384);
                expect.push(Frame::Headers {
                    stream,
                    block: block.into(),
                    end_stream: len % 3 == 0,
                });
            }
            1 => {
                let params: Vec<(u16, u32)> = (0..input.byte() % 4)
                    .map(|i| (u16::from(i) + 7, u32::from(input.u16())))
                    .collect();
                frame::put_settings(&mut wire, &params);
                expect.push(Frame::Settings { ack: false, params });
            }
            2 => {
                let payload = [input.byte(), input.byte(), 0, 0, 0, 0, 0, 1];
                frame::put_ping(&mut wire, payload[0] & 1 == 1, payload);
                expect.push(Frame::Ping {
                    ack: payload[0] & 1 == 1,
                    payload,
                });
            }
            3 => {
                let debug = input.field(15).to_vec();
                let reason = Reason(u32::from(input.byte()));
                frame::put_goaway(&mut wire, stream, reason, &debug);
                expect.push(Frame::GoAway {
                    last_stream: stream,
                    reason,
                    debug: debug.into(),
                });
            }
            4 => {
                let reason = Reason(u32::from(input.byte()));
                frame::put_rst_stream(&mut wire, stream, reason);
                expect.push(Frame::RstStream { stream, reason });
            }
            _ => {
                let increment = u32::from(input.u16()) + 1;
                frame::put_window_update(&mut wire, stream % 2, increment);
                expect.push(Frame::WindowUpdate {
                    stream: stream % 2,
                    increment,
                });
            }
        }
    }
    // A DATA frame written by hand: the queue's writer needs a socket.
    let payload = input.rest();
    frame::put_head(
        &mut wire,
        payload.len().min(16_384),
        frame::kind::DATA,
        1,
        3,
    );
    wire.put_slice(&payload[..payload.len().min(16_384)]);
    expect.push(Frame::Data {
        stream: 3,
        data: bytes::Bytes::copy_from_slice(&payload[..payload.len().min(16_384)]),
        end_stream: true,
        flow_len: payload.len().min(16_384) as u32,
    });
    let got = read(&[wire.freeze()], false, 16_384, 1 << 20);
    assert_eq!(got.error, None);
    assert_eq!(got.frames, expect);
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.byte();
    let pattern = flags & 7;
    let preface = flags & 8 != 0;
    let max_frame =
        [16_384, 16_385, 65_536, frame::MAX_FRAME_SIZE_LIMIT][usize::from(flags >> 4 & 3)];
    let max_block = [64 << 10, 1024, 100, 0][usize::from(flags >> 6)];
    let bytes = input.rest();

    let whole = read(&split(bytes, 0), preface, max_frame, max_block);
    let pieces = read(&split(bytes, pattern.max(1)), preface, max_frame, max_block);
    assert_eq!(
        whole, pieces,
        "the frames depend on how the bytes were read"
    );

    round_trip(bytes);
});
