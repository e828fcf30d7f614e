//! The wire-level resource-name rewrite, as the call stack forwards a call by name
//! (`stack.rs`, `forward_by_name`): the first gRPC message read off an arbitrary client body
//! (`body::read_first_message_routed`), its name read (`route::frame::read_name`) and resolved
//! against a fixed fleet (`route::RouteTable`), the message rewritten (`strip_framed`), and
//! the rest of the stream forwarded with every later message that names the same resource
//! rewritten too (`body::StreamRewrite` in `body::ForwardBody`); and the walk over a large first
//! message kept in pieces (`route::frame::locate_end_in_chunks`) against `read_name`.
//!
//! Checked: the stream is forwarded the same whatever its reads were; the first message sent
//! is well framed and names the resource as the part knows it; no later message still names
//! it as the client did; no message is lost, added or cut (the leftover of a stream that ends
//! inside a message goes on as it came); the strip is on a character boundary.
//!
//! Input: a flag byte (bits 0-2: read pattern; bits 3-4: the routing field path; bit 5: the
//! body ends with trailers; bits 6-7: the method's service), then the client's body.
#![no_main]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use partgate::body::{BufferBudget, ForwardBody, StreamRewrite, read_first_message_routed};
use partgate::route::frame::{self, FrameError, FrameHeader, HEADER_LEN};
use partgate::route::resource_name::Naming;
use partgate::route::table::{PartInfo, PartResources, Resource, RouteTable};
use partgate_fuzz::{Input, RUN_LIMIT, collect};

/// Field paths of routing names: `name`, `init.name` (AudioOut PlayStream), another field.
const FIELDS: [&[u32]; 4] = [&[1], &[1, 1], &[2], &[1, 2, 1]];

const SERVICES: [&str; 4] = [
    "viam.component.motor.v1.MotorService",
    "viam.component.sensor.v1.SensorService",
    "acme.component.counter.v1.CounterService",
    "viam.robot.v1.RobotService",
];

/// The largest first message buffered (`gateway.max_message_size`, made small).
const LIMIT: usize = 1 << 20;

fn resource(subtype: &str, name: &str) -> Resource {
    Resource {
        namespace: "rdk".into(),
        kind: "component".into(),
        subtype: subtype.into(),
        name: name.into(),
    }
}

/// A fleet with every naming rule: a main part, `part:name` parts, prefixes (one of them
/// multi-byte, one part never reached), and a name two parts share.
fn table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let part = |name: &str, naming| PartInfo {
            name: name.into(),
            naming,
        };
        let parts = [
            part("main", Naming::Main),
            part("sub1", Naming::PartColon),
            part("sub2", Naming::PartColon),
            part("cell", Naming::Prefix("cell-".into())),
            part("ete", Naming::Prefix("été-".into())),
            part("grip", Naming::Prefix("grip-".into())),
        ];
        let report = |resources: Vec<Resource>| {
            Some(Arc::new(PartResources {
                resources,
                subtypes: vec![(
                    Resource {
                        namespace: "acme".into(),
                        kind: "component".into(),
                        subtype: "counter".into(),
                        name: String::new(),
                    },
                    "acme.component.counter.v1.CounterService".into(),
                )],
            }))
        };
        let reported = [
            report(vec![
                resource("motor", "motor1"),
                resource("sensor", "temp"),
            ]),
            report(vec![resource("motor", "motor1"), resource("motor", "lift")]),
            report(vec![resource("motor", "lift"), resource("sensor", "imu")]),
            report(vec![resource("motor", "m1"), resource("sensor", "")]),
            report(vec![resource("motor", "ü")]),
            None,
        ];
        RouteTable::build(&parts, &reported)
    })
}

fn body(chunks: Vec<Bytes>, trailers: bool) -> tonic::body::Body {
    let mut frames: Vec<http_body::Frame<Bytes>> =
        chunks.into_iter().map(http_body::Frame::data).collect();
    if trailers {
        let mut t = HeaderMap::new();
        t.insert("x-end", HeaderValue::from_static("1"));
        frames.push(http_body::Frame::trailers(t));
    }
    tonic::body::Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
        frames.into_iter().map(Ok::<_, Infallible>),
    )))
}

/// How one forwarded call went.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Not forwarded (no message, malformed, unroutable...): why.
    Refused(String),
    /// Forwarded to `part`, the name cut by `strip` bytes: the bytes sent and the trailers.
    Sent {
        part: usize,
        strip: usize,
        wire: Vec<u8>,
        trailers: Option<HeaderMap>,
    },
}

async fn forward(mut body: tonic::body::Body, field: &'static [u32], service: &str) -> Outcome {
    let refused = |why: &dyn std::fmt::Display| Outcome::Refused(why.to_string());
    // A budget the first message never exceeds: only messages that take several reads are
    // held against it, so a tight one would make the outcome depend on the reads.
    let budget = BufferBudget::new(2 * LIMIT, 2 * LIMIT);
    let mut held = budget.hold(Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 4242))));
    let first =
        read_first_message_routed(&mut body, LIMIT, field.first().copied(), Some(&mut held)).await;
    drop(held);
    let first = match first {
        Ok(Some(first)) => first,
        Ok(None) => return refused(&"no message"),
        Err(e) => return refused(&e),
    };
    if first.header.compressed {
        return refused(&"compressed");
    }
    let name = match frame::read_name(&first.message, field) {
        Ok(Some(name)) if !name.is_empty() => name,
        Ok(_) => return refused(&"no name"),
        Err(e) => return refused(&e),
    };
    let route = match table().resolve(name, service) {
        Ok(route) => route,
        Err(e) => return refused(&e),
    };
    assert!(
        name.is_char_boundary(route.strip),
        "strip {} of {name:?} is not on a character boundary",
        route.strip
    );
    let local = &name[route.strip..];
    let mut queued = frame::strip_framed(&first.message, field, route.strip, first.tail_len())
        .expect("a message whose name was read rewrites");
    queued.extend(first.tail);
    let more = !first.rest.is_empty()
        || (first.trailers.is_none() && !http_body::Body::is_end_stream(&body));
    let rewrite = (route.strip > 0 && more)
        .then(|| StreamRewrite::new(field, Bytes::copy_from_slice(name.as_bytes()), route.strip));
    let forward = ForwardBody::new(queued, first.rest, body, first.trailers, rewrite);
    let (wire, trailers, ok) = collect(forward, usize::MAX).await;
    assert!(ok, "forwarding a body that never fails failed");
    let wire = wire.to_vec();

    // The first message: framed, its name as the part knows it.
    let header = FrameHeader::parse(&wire).expect("a frame header first");
    assert!(!header.compressed);
    let message = wire
        .get(HEADER_LEN..HEADER_LEN + header.len)
        .expect("the first message whole");
    assert_eq!(
        frame::read_name(message, field),
        Ok(Some(local)),
        "the first message does not name {local:?}"
    );
    Outcome::Sent {
        part: route.part,
        strip: route.strip,
        wire,
        trailers,
    }
}

/// The framed messages after the first one, and what is left after the last whole one.
fn later_messages(wire: &[u8]) -> (Vec<(bool, &[u8])>, &[u8]) {
    let mut messages = Vec::new();
    let mut rest = wire;
    let mut first = true;
    while let Some(h) = FrameHeader::parse(rest) {
        let Some(message) = rest.get(HEADER_LEN..HEADER_LEN + h.len) else {
            break;
        };
        if !first {
            messages.push((h.compressed, message));
        }
        first = false;
        rest = &rest[HEADER_LEN + h.len..];
    }
    (messages, rest)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.byte();
    let field = FIELDS[usize::from(flags >> 3 & 3)];
    let trailers = flags & 32 != 0;
    let service = SERVICES[usize::from(flags >> 6)];
    let payload = input.rest();

    // The walk over a first message kept in pieces (a large one, as received) finds what the
    // walk over it whole finds.
    if let Some(h) = FrameHeader::parse(payload)
        && let Some(message) = payload.get(HEADER_LEN..HEADER_LEN + h.len)
    {
        let top = &field[..1];
        let pieces = partgate_fuzz::split(message, flags & 7 | 1);
        match (
            frame::read_name(message, top),
            frame::locate_end_in_chunks(&pieces, top[0]),
        ) {
            (Ok(None), Ok(0)) => {}
            (Ok(Some(name)), Ok(end)) => {
                assert!(end > 0 && message[..end].ends_with(name.as_bytes()))
            }
            (Err(FrameError::NotUtf8), Ok(end)) => assert!(end > 0),
            (Err(a), Err(b)) => assert_eq!(a, b),
            (a, b) => panic!("the walk over pieces disagrees with read_name: {a:?} vs {b:?}"),
        }
    }

    let rt = partgate_fuzz::runtime();
    let run = |pattern| {
        let body = body(partgate_fuzz::split(payload, pattern), trailers);
        rt.block_on(async { tokio::time::timeout(RUN_LIMIT, forward(body, field, service)).await })
            .expect("forwarding a ready body never waits")
    };
    let whole = run(0);
    let pieces = run(flags & 7 | 1);
    assert_eq!(
        whole, pieces,
        "the forwarded stream depends on how the body was read"
    );

    let Outcome::Sent { strip, wire, .. } = whole else {
        return;
    };
    let (sent, sent_left) = later_messages(&wire);
    let (received, received_left) = later_messages(payload);
    assert_eq!(sent.len(), received.len(), "messages lost or added");
    assert_eq!(sent_left, received_left, "the leftover changed");
    let name = frame::read_name(
        &payload[HEADER_LEN..HEADER_LEN + FrameHeader::parse(payload).map_or(0, |h| h.len)],
        field,
    )
    .ok()
    .flatten()
    .unwrap_or_default();
    for ((compressed, out), (_, original)) in sent.iter().zip(&received) {
        if *compressed || strip == 0 {
            assert_eq!(out, original, "a message changed that must pass untouched");
            continue;
        }
        if let Ok(Some(n)) = frame::read_name(original, field)
            && n == name
        {
            assert_eq!(
                frame::read_name(out, field),
                Ok(Some(&name[strip..])),
                "a later message naming the resource was not rewritten"
            );
        } else {
            assert_eq!(out, original, "a message naming something else changed");
        }
    }
});
