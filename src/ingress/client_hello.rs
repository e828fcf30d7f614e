//! Stage `listener`, TLS: the server name (SNI) in a client's ClientHello, peeked before rustls
//! reads it, so that a handshake rustls refuses for its server name gets a log line that says
//! why and what to change.
//!
//! Receives the first bytes of a TLS connection (left in the socket for rustls); hands the
//! listener what the server name was. rustls refuses a `host_name` that is no DNS name (it
//! accepts and ignores an IP literal): the Viam Python SDK sends `auth_entity` as the server
//! name when it differs from the host dialed, so an entity such as `localhost:8080` ends the
//! handshake with an `illegal_parameter` alert. The bytes are not rewritten: the ClientHello
//! is part of the transcript both sides hash, so a server that drops the name from it fails
//! the handshake later (the client sees DECRYPTION_FAILED_OR_BAD_RECORD_MAC). The gateway uses
//! the server name for nothing else.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tracing::{debug, info};

/// How much of a connection's first bytes is looked at: a ClientHello is usually under 2 KiB,
/// and clients built on OpenSSL (Python's `ssl`) send the server name first.
pub const PEEK_LIMIT: usize = 4 * 1024;

/// Longest server name shown in a log line (a DNS name has at most 253 characters).
const SHOWN_NAME: usize = 255;

/// At most this many refused-server-name lines a minute at `info`; the rest go to `debug`, so
/// a client that sends many cannot flood the log.
const NOTICES_PER_MINUTE: u32 = 8;

/// The server name of a ClientHello, as rustls will judge it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerName {
    /// No server name, a DNS name, or an IP literal (which rustls ignores).
    Acceptable,
    /// A server name rustls refuses (no DNS name: `localhost:8080`, a bracketed address, or a
    /// name of an unknown type), as lossy UTF-8 cut to 255 bytes.
    Refused(String),
    /// Not a ClientHello, cut short before its server name, or malformed: rustls decides.
    Unknown,
}

/// Peeks at a new TLS connection's first bytes (one read, whatever has arrived) and says what
/// its server name is. The bytes stay in the socket for rustls.
pub async fn peek_server_name(stream: &TcpStream) -> ServerName {
    // On the heap, and only for the peek: the connection's future keeps no buffer.
    let mut buf = vec![0u8; PEEK_LIMIT];
    match stream.peek(&mut buf).await {
        Ok(n) => server_name(buf.get(..n).unwrap_or_default()),
        Err(_) => ServerName::Unknown,
    }
}

/// Logs a failed TLS handshake: at `info` (a few a minute) when rustls refused the server name
/// the client sent, saying what to change; at `debug` otherwise.
pub fn log_handshake_failure(peer: SocketAddr, name: &ServerName, error: &std::io::Error) {
    let refused_name = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::PeerMisbehaved(
                    rustls::PeerMisbehaved::ServerNameMustContainOneHostName
                )
            )
        });
    match name {
        ServerName::Refused(value) if refused_name && notice_allowed(Instant::now()) => info!(
            peer = %peer,
            server_name = ?value,
            "TLS handshake refused: the client sent a server name (SNI) that is not a DNS name, \
             such as a host:port, and rustls answers it with an illegal_parameter alert. The Viam \
             SDKs send auth_entity as the server name: leave auth_entity unset (the address \
             dialed, e.g. localhost:8080, is then the entity) or set it to a host name without \
             a port (network.fqdn or one of gateway.auth_entities)"
        ),
        ServerName::Refused(value) => {
            debug!(peer = %peer, server_name = ?value, error = %error, "TLS handshake failed")
        }
        _ => debug!(peer = %peer, error = %error, "TLS handshake failed"),
    }
}

/// Whether another `info` notice fits in this minute's budget.
fn notice_allowed(now: Instant) -> bool {
    static WINDOW: Mutex<Option<(Instant, u32)>> = Mutex::new(None);
    let Ok(mut window) = WINDOW.lock() else {
        return false;
    };
    match &mut *window {
        Some((start, count)) if now.duration_since(*start) < Duration::from_secs(60) => {
            *count += 1;
            *count <= NOTICES_PER_MINUTE
        }
        slot => {
            *slot = Some((now, 1));
            true
        }
    }
}

/// The server name in `bytes`, the start of a TLS connection: one or more handshake records
/// holding a ClientHello, possibly cut short. Never panics, whatever the bytes.
pub fn server_name(bytes: &[u8]) -> ServerName {
    let Some(payload) = handshake_payload(bytes) else {
        return ServerName::Unknown;
    };
    let mut message = Cursor::new(&payload);
    // HandshakeType client_hello(1), then a 24-bit length.
    if message.u8() != Some(1) {
        return ServerName::Unknown;
    }
    let Some(declared) = message.take(3) else {
        return ServerName::Unknown;
    };
    let declared = declared
        .iter()
        .fold(0usize, |n, &b| (n << 8) | usize::from(b));
    let whole = message.rest.len() >= declared;
    let body = message.rest.get(..declared).unwrap_or(message.rest);
    client_hello_server_name(body, whole)
}

/// The handshake bytes carried by the records at the start of `bytes` (borrowed when one
/// record holds them, as it nearly always does); `None` when `bytes` does not start with a
/// handshake record.
fn handshake_payload(bytes: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mut records = Cursor::new(bytes);
    let mut payload: Option<Cow<'_, [u8]>> = None;
    // ContentType handshake(22), legacy version, 16-bit length, fragment.
    while records.u8() == Some(22) {
        let (Some(_version), Some(len)) = (records.take(2), records.u16()) else {
            break;
        };
        // A record cut short still gives what it has.
        let fragment = records.take(len).unwrap_or(records.rest);
        payload = Some(match payload {
            None => Cow::Borrowed(fragment),
            Some(before) => Cow::Owned([before.as_ref(), fragment].concat()),
        });
        if fragment.len() < len {
            break;
        }
    }
    payload
}

/// The server name in a ClientHello's body (`whole`: not cut short).
fn client_hello_server_name(body: &[u8], whole: bool) -> ServerName {
    let mut hello = Cursor::new(body);
    // legacy_version, random, legacy_session_id, cipher_suites, legacy_compression_methods.
    let head = hello.take(2 + 32).is_some()
        && hello.vec8().is_some()
        && hello.vec16().is_some()
        && hello.vec8().is_some();
    if !head {
        return ServerName::Unknown;
    }
    if hello.rest.is_empty() {
        // No extensions at all (TLS 1.2 allows it).
        return if whole {
            ServerName::Acceptable
        } else {
            ServerName::Unknown
        };
    }
    let Some(declared) = hello.u16() else {
        return ServerName::Unknown;
    };
    let mut extensions = Cursor::new(hello.rest.get(..declared).unwrap_or(hello.rest));
    while !extensions.rest.is_empty() {
        let (Some(kind), Some(data)) = (extensions.u16(), extensions.vec16()) else {
            return ServerName::Unknown;
        };
        // ExtensionType server_name(0).
        if kind == 0 {
            return judge(data);
        }
    }
    if whole && hello.rest.len() == declared {
        ServerName::Acceptable
    } else {
        ServerName::Unknown
    }
}

/// A `server_name` extension's data as rustls judges it: its first entry must be a
/// `host_name` that is a DNS name or an IP literal.
fn judge(data: &[u8]) -> ServerName {
    let mut extension = Cursor::new(data);
    let Some(list) = extension.vec16() else {
        return ServerName::Unknown;
    };
    let mut list = Cursor::new(list);
    match list.u8() {
        None => ServerName::Unknown,
        // NameType host_name(0).
        Some(0) => match list.vec16() {
            None => ServerName::Unknown,
            Some(name) => match rustls::pki_types::ServerName::try_from(name) {
                Ok(_) => ServerName::Acceptable,
                Err(_) => {
                    let shown = name.get(..SHOWN_NAME).unwrap_or(name);
                    ServerName::Refused(String::from_utf8_lossy(shown).into_owned())
                }
            },
        },
        Some(other) => ServerName::Refused(format!("(a name of type {other})")),
    }
}

/// Reads big-endian fields off a byte slice; `None` past its end.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = self.rest.split_at_checked(n)?;
        self.rest = rest;
        Some(taken)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }

    fn u16(&mut self) -> Option<usize> {
        let bytes: [u8; 2] = self.take(2)?.try_into().ok()?;
        Some(usize::from(u16::from_be_bytes(bytes)))
    }

    /// An opaque vector with an 8-bit length.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let len = self.u8()?;
        self.take(usize::from(len))
    }

    /// An opaque vector with a 16-bit length.
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let len = self.u16()?;
        self.take(len)
    }
}

#[cfg(test)]
#[path = "client_hello/tests.rs"]
mod tests;
