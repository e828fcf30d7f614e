//! A raw HTTP/2 client for the attack bench, on blocking std sockets: frames encoded by hand
//! (a 9-byte header: 24-bit length, type, flags, 31-bit stream id; then the payload), HPACK by
//! hand (RFC 7541 integers and string literals, no Huffman coding), and a frame parser for what
//! the proxy sends back (its SETTINGS, WINDOW_UPDATEs, RST_STREAMs and, above all, GOAWAY).
//!
//! A [`Conn`] writes with a short send timeout, so that a proxy that stops reading (TCP
//! backpressure) shows as a stall rather than a blocked thread, and every loop of an attack
//! checks its deadline between writes. Attacks that must not read (PING and SETTINGS floods,
//! answers never read) parse what the proxy sent only after the attack, in [`Conn::finish`];
//! the others run a reader thread that stops the attack as soon as the proxy sends GOAWAY or
//! closes.

use std::collections::{BTreeMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types (RFC 9113 section 6).
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

// Flags.
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

// Settings.
pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

// Error codes.
pub const CANCEL: u32 = 0x8;

/// The initial flow-control window of a connection and of each stream (RFC 9113 6.9.2).
pub const DEFAULT_WINDOW: i64 = 65_535;
/// The largest frame payload every peer accepts (SETTINGS_MAX_FRAME_SIZE's floor).
pub const MAX_FRAME: usize = 16_384;
/// How long one write may block before it counts as a stall (the proxy is not reading).
const WRITE_TIMEOUT: Duration = Duration::from_millis(100);
/// What [`Conn::finish`] reads at most of what the proxy sent, and for how long.
const DRAIN_BYTES: usize = 64 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(1);

pub fn reason(code: u32) -> String {
    let name = match code {
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
        _ => return format!("error 0x{code:x}"),
    };
    name.to_owned()
}

// ================================================================================================
// Frames
// ================================================================================================

pub fn frame(out: &mut Vec<u8>, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len();
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

pub fn settings(out: &mut Vec<u8>, params: &[(u16, u32)]) {
    let mut payload = Vec::with_capacity(params.len() * 6);
    for (id, value) in params {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(out, SETTINGS, 0, 0, &payload);
}

pub fn ping(out: &mut Vec<u8>, opaque: u64) {
    frame(out, PING, 0, 0, &opaque.to_be_bytes());
}

pub fn rst_stream(out: &mut Vec<u8>, stream: u32, code: u32) {
    frame(out, RST_STREAM, 0, stream, &code.to_be_bytes());
}

// ================================================================================================
// HPACK (RFC 7541), encoder side only, no Huffman coding
// ================================================================================================

/// An integer with an N-bit prefix (5.1); `first` carries the representation's pattern bits.
pub fn hpack_int(out: &mut Vec<u8>, first: u8, prefix_bits: u8, value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A string literal, raw octets (H = 0).
fn hpack_str(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0x00, 7, s.len());
    out.extend_from_slice(s);
}

/// Indexed header field (6.1): static entries 1-61, dynamic ones from 62 on.
pub fn indexed(out: &mut Vec<u8>, index: usize) {
    hpack_int(out, 0x80, 7, index);
}

/// Literal header field without indexing, name from the static table (6.2.2).
pub fn literal_static_name(out: &mut Vec<u8>, name_index: usize, value: &[u8]) {
    hpack_int(out, 0x00, 4, name_index);
    hpack_str(out, value);
}

/// Literal header field with a new name: with incremental indexing (6.2.1, the decoder adds it
/// to its dynamic table) or without (6.2.2).
pub fn literal_new_name(out: &mut Vec<u8>, name: &[u8], value: &[u8], index: bool) {
    out.push(if index { 0x40 } else { 0x00 });
    hpack_str(out, name);
    hpack_str(out, value);
}

/// A gRPC request's header block, without touching the dynamic table: `:method POST`,
/// `:scheme http`, `:path`, `:authority`, `content-type: application/grpc`, `te: trailers`.
pub fn grpc_request_block(authority: &str, path: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(96 + path.len());
    indexed(&mut b, 3); // :method POST
    indexed(&mut b, 6); // :scheme http
    literal_static_name(&mut b, 4, path.as_bytes()); // :path
    literal_static_name(&mut b, 1, authority.as_bytes()); // :authority
    literal_static_name(&mut b, 31, b"application/grpc"); // content-type
    literal_new_name(&mut b, b"te", b"trailers", false);
    b
}

// ================================================================================================
// gRPC messages and protobuf, by hand
// ================================================================================================

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Protobuf field `field` of wire type 2 (length-delimited) holding `len` bytes: only the key
/// and length, for messages whose body is written (or not) separately.
pub fn pb_len_prefix(out: &mut Vec<u8>, field: u32, len: usize) {
    varint(out, u64::from(field << 3 | 2));
    varint(out, len as u64);
}

pub fn pb_string(out: &mut Vec<u8>, field: u32, s: &str) {
    pb_len_prefix(out, field, s.len());
    out.extend_from_slice(s.as_bytes());
}

pub fn pb_varint(out: &mut Vec<u8>, field: u32, v: u64) {
    varint(out, u64::from(field << 3));
    varint(out, v);
}

/// The 5-byte gRPC message prefix: not compressed, then the length big-endian.
pub fn grpc_prefix(out: &mut Vec<u8>, len: u32) {
    out.push(0);
    out.extend_from_slice(&len.to_be_bytes());
}

pub fn grpc_message(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    grpc_prefix(&mut out, message.len() as u32);
    out.extend_from_slice(message);
    out
}

// ================================================================================================
// What the proxy sent
// ================================================================================================

#[derive(Debug, Clone, Copy)]
pub struct ServerSettings {
    pub header_table_size: u32,
    pub max_concurrent_streams: Option<u32>,
    pub initial_window: u32,
    pub max_frame_size: u32,
    pub max_header_list_size: Option<u32>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            header_table_size: 4096,
            max_concurrent_streams: None,
            initial_window: DEFAULT_WINDOW as u32,
            max_frame_size: MAX_FRAME as u32,
            max_header_list_size: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Goaway {
    pub code: u32,
    pub last_stream: u32,
    pub debug: String,
    /// Since the attack started, when read while it ran; None when found only afterwards.
    pub at: Option<Duration>,
}

/// Everything parsed from the proxy's side of one connection.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub frames: u64,
    pub bytes: u64,
    pub by_type: BTreeMap<u8, u64>,
    pub settings: Option<ServerSettings>,
    pub goaway: Option<Goaway>,
    /// RST_STREAMs by error code.
    pub resets: BTreeMap<u32, u64>,
    /// Streams the proxy reset (bounded; only the stall attack looks at it).
    pub reset_streams: HashSet<u32>,
    /// The server's response HEADERS (including trailers-only answers).
    pub headers: u64,
}

/// State shared by a connection's writer and its reader thread.
#[derive(Default)]
struct Shared {
    seen: Mutex<Seen>,
    /// Connection-level send window: 65,535 plus the proxy's WINDOW_UPDATEs on stream 0, minus
    /// the DATA payload sent.
    credit: AtomicI64,
    /// The proxy closed (EOF, reset): when (since the attack started; None if found only after
    /// it) and how.
    closed: Mutex<Option<(Option<Duration>, String)>>,
    gone: AtomicBool,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Frame parser: bytes in, frames recorded in [`Seen`] as they complete.
#[derive(Default)]
struct Parser {
    buf: Vec<u8>,
}

impl Parser {
    fn push(&mut self, bytes: &[u8], shared: &Shared, now: Option<Duration>) {
        self.buf.extend_from_slice(bytes);
        let mut at = 0;
        let mut seen = lock(&shared.seen);
        seen.bytes += bytes.len() as u64;
        while self.buf.len() - at >= 9 {
            let h = &self.buf[at..at + 9];
            let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            if self.buf.len() - at < 9 + len {
                break;
            }
            let (ty, flags) = (h[3], h[4]);
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            let payload = &self.buf[at + 9..at + 9 + len];
            seen.frames += 1;
            *seen.by_type.entry(ty).or_default() += 1;
            match ty {
                SETTINGS if flags & ACK == 0 && seen.settings.is_none() => {
                    let mut s = ServerSettings::default();
                    for p in payload.chunks_exact(6) {
                        let id = u16::from_be_bytes([p[0], p[1]]);
                        let v = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
                        match id {
                            SETTINGS_HEADER_TABLE_SIZE => s.header_table_size = v,
                            SETTINGS_MAX_CONCURRENT_STREAMS => s.max_concurrent_streams = Some(v),
                            SETTINGS_INITIAL_WINDOW_SIZE => s.initial_window = v,
                            SETTINGS_MAX_FRAME_SIZE => s.max_frame_size = v,
                            SETTINGS_MAX_HEADER_LIST_SIZE => s.max_header_list_size = Some(v),
                            _ => {}
                        }
                    }
                    seen.settings = Some(s);
                }
                WINDOW_UPDATE if stream == 0 && payload.len() == 4 => {
                    let inc = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                        & 0x7fff_ffff;
                    shared.credit.fetch_add(i64::from(inc), Ordering::Relaxed);
                }
                RST_STREAM if payload.len() == 4 => {
                    let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    *seen.resets.entry(code).or_default() += 1;
                    if seen.reset_streams.len() < 100_000 {
                        seen.reset_streams.insert(stream);
                    }
                }
                HEADERS => seen.headers += 1,
                GOAWAY if payload.len() >= 8 && seen.goaway.is_none() => {
                    seen.goaway = Some(Goaway {
                        last_stream: u32::from_be_bytes([
                            payload[0], payload[1], payload[2], payload[3],
                        ]) & 0x7fff_ffff,
                        code: u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]),
                        debug: String::from_utf8_lossy(&payload[8..payload.len().min(8 + 80)])
                            .into_owned(),
                        at: now,
                    });
                    shared.gone.store(true, Ordering::Relaxed);
                }
                _ => {}
            }
            at += 9 + len;
        }
        self.buf.drain(..at);
    }
}

// ================================================================================================
// Connections
// ================================================================================================

/// How one attacker connection went.
#[derive(Debug, Clone, Default)]
pub struct ConnReport {
    pub seen: Seen,
    /// The proxy closed the connection: when (None: found only after the attack) and how.
    pub closed: Option<(Option<Duration>, String)>,
    pub bytes_sent: u64,
    /// First write that could not complete within the send timeout (the proxy stopped
    /// reading), and the total time writes were blocked.
    pub first_stall: Option<Duration>,
    pub stalled: Duration,
}

pub struct Conn {
    sock: TcpStream,
    t0: Instant,
    shared: Arc<Shared>,
    parser: Parser,
    reader: Option<JoinHandle<()>>,
    pub settings: ServerSettings,
    bytes_sent: u64,
    first_stall: Option<Duration>,
    stalled: Duration,
}

impl Conn {
    /// Connects, sends the preface and `ours` (our SETTINGS), reads until the proxy's SETTINGS
    /// arrive and acknowledges them. Times are reported relative to `t0`.
    pub fn open(
        addr: SocketAddr,
        from: Option<IpAddr>,
        t0: Instant,
        ours: &[(u16, u32)],
    ) -> Result<Conn, String> {
        let mut sock =
            connect(addr, from, Duration::from_secs(2)).map_err(|e| format!("connect: {e}"))?;
        let _ = sock.set_nodelay(true);
        sock.set_write_timeout(Some(WRITE_TIMEOUT))
            .map_err(|e| format!("set_write_timeout: {e}"))?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| format!("set_read_timeout: {e}"))?;
        let mut hello = PREFACE.to_vec();
        settings(&mut hello, ours);
        sock.write_all(&hello)
            .map_err(|e| format!("writing the preface: {e}"))?;
        let shared = Arc::new(Shared {
            credit: AtomicI64::new(DEFAULT_WINDOW),
            ..Default::default()
        });
        let mut parser = Parser::default();
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut buf = vec![0u8; 16 * 1024];
        let settings_seen = |shared: &Shared| lock(&shared.seen).settings;
        let server = loop {
            if let Some(s) = settings_seen(&shared) {
                break s;
            }
            if Instant::now() >= deadline {
                return Err("no SETTINGS from the proxy within 3 s".into());
            }
            match sock.read(&mut buf) {
                Ok(0) => return Err("closed before its SETTINGS".into()),
                Ok(n) => parser.push(&buf[..n], &shared, None),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(format!("reading its SETTINGS: {e}")),
            }
        };
        let mut ack = Vec::new();
        frame(&mut ack, SETTINGS, ACK, 0, &[]);
        sock.write_all(&ack)
            .map_err(|e| format!("acknowledging its SETTINGS: {e}"))?;
        Ok(Conn {
            sock,
            t0,
            shared,
            parser,
            reader: None,
            settings: server,
            bytes_sent: 0,
            first_stall: None,
            stalled: Duration::ZERO,
        })
    }

    /// Reads what the proxy sends from now on in a thread of its own (responses are parsed and
    /// dropped), so that a GOAWAY or a close ends the attack at once.
    pub fn start_reader(&mut self) -> Result<(), String> {
        let mut sock = self
            .sock
            .try_clone()
            .map_err(|e| format!("try_clone: {e}"))?;
        let shared = self.shared.clone();
        let mut parser = std::mem::take(&mut self.parser);
        let t0 = self.t0;
        self.reader = Some(std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while !shared.stop.load(Ordering::Relaxed) {
                match sock.read(&mut buf) {
                    Ok(0) => {
                        close(&shared, Some(t0.elapsed()), "EOF".into());
                        break;
                    }
                    Ok(n) => parser.push(&buf[..n], &shared, Some(t0.elapsed())),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(e) => {
                        close(&shared, Some(t0.elapsed()), e.kind().to_string());
                        break;
                    }
                }
            }
        }));
        Ok(())
    }

    /// The proxy sent GOAWAY or closed (seen by the reader thread, or by a failed write).
    pub fn gone(&self) -> bool {
        self.shared.gone.load(Ordering::Relaxed)
    }

    /// Connection-level send window left (meaningful with a reader thread).
    pub fn credit(&self) -> i64 {
        self.shared.credit.load(Ordering::Relaxed)
    }

    pub fn spend(&self, n: usize) {
        self.shared.credit.fetch_sub(n as i64, Ordering::Relaxed);
    }

    /// Streams the proxy has reset so far.
    pub fn was_reset(&self, stream: u32) -> bool {
        lock(&self.shared.seen).reset_streams.contains(&stream)
    }

    /// Writes all of `bytes` unless the attack must stop first (deadline, abort, the proxy
    /// gone); false means stop. Writes that block count as stalls and are retried.
    pub fn send(&mut self, bytes: &[u8], end: Instant, abort: &AtomicBool) -> bool {
        let mut rest = bytes;
        while !rest.is_empty() {
            if Instant::now() >= end || abort.load(Ordering::Relaxed) || self.gone() {
                return false;
            }
            let began = Instant::now();
            match self.sock.write(rest) {
                Ok(0) => {
                    close(
                        &self.shared,
                        Some(self.t0.elapsed()),
                        "write returned 0".into(),
                    );
                    return false;
                }
                Ok(n) => {
                    self.bytes_sent += n as u64;
                    rest = &rest[n..];
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if self.first_stall.is_none() {
                        self.first_stall = Some(self.t0.elapsed());
                    }
                    self.stalled += began.elapsed();
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    close(&self.shared, Some(self.t0.elapsed()), e.kind().to_string());
                    return false;
                }
            }
        }
        true
    }

    /// Ends the connection and says how it went: with a reader thread, lets it catch what is in
    /// flight; without one, reads (bounded) what the proxy sent during the attack, looking for
    /// its GOAWAY behind the answers that were never read.
    pub fn finish(mut self) -> ConnReport {
        if let Some(reader) = self.reader.take() {
            std::thread::sleep(Duration::from_millis(150));
            self.shared.stop.store(true, Ordering::Relaxed);
            let _ = reader.join();
        } else {
            self.drain();
        }
        let _ = self.sock.shutdown(Shutdown::Both);
        ConnReport {
            seen: lock(&self.shared.seen).clone(),
            closed: lock(&self.shared.closed).clone(),
            bytes_sent: self.bytes_sent,
            first_stall: self.first_stall,
            stalled: self.stalled,
        }
    }

    fn drain(&mut self) {
        let _ = self.sock.set_read_timeout(Some(Duration::from_millis(200)));
        let deadline = Instant::now() + DRAIN_TIME;
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0;
        while Instant::now() < deadline && total < DRAIN_BYTES {
            match self.sock.read(&mut buf) {
                Ok(0) => {
                    close(&self.shared, None, "EOF".into());
                    break;
                }
                Ok(n) => {
                    total += n;
                    self.parser.push(&buf[..n], &self.shared, None);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    close(&self.shared, None, e.kind().to_string());
                    break;
                }
            }
        }
    }
}

/// A TCP connection to `addr`, from the source address `from` if given (another loopback
/// address, so that the proxy sees the attacker as another client than the legitimate one).
pub fn connect(
    addr: SocketAddr,
    from: Option<IpAddr>,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let Some(ip) = from else {
        return TcpStream::connect_timeout(&addr, timeout);
    };
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sock.bind(&SocketAddr::new(ip, 0).into())?;
    sock.connect_timeout(&addr.into(), timeout)?;
    Ok(sock.into())
}

/// Records the first close only.
fn close(shared: &Shared, at: Option<Duration>, how: String) {
    let mut closed = lock(&shared.closed);
    if closed.is_none() {
        *closed = Some((at, how));
    }
    shared.gone.store(true, Ordering::Relaxed);
}
