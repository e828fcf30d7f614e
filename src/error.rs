//! Errors: what can go wrong on a call and at start-up, and THE table mapping each to a gRPC code.
//!
//! Receives failures from every stage of the call stack; hands a `tonic::Status` (and so a
//! trailers-only HTTP response) to the client. Internal details are logged, never sent.

use tonic::{Code, Status};

/// Whose fault a failed call was, for logs and (later) metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something we cannot serve.
    Client,
    /// The gateway itself (limits, internal errors).
    Gateway,
    /// The downstream part (down, slow, broken).
    Part,
}

/// Characters of a client-controlled string that a log line or an error message keeps.
pub const CLIP_CHARS: usize = 128;

/// A string a client controls (a resource name, an entity, a path), made safe to put in a log
/// line or a status message: escaped as Rust's `Debug` escapes it (quotes, `\n`, control
/// characters: no forged log lines) and cut after [`CLIP_CHARS`] characters, with its full
/// length in bytes after the cut (no 30 MiB messages).
#[derive(Debug, Clone, Copy)]
pub struct Clipped<'a>(pub &'a str);

/// [`Clipped`] without the surrounding quotes (for text that sets the string off itself).
#[derive(Debug, Clone, Copy)]
pub struct Bare<'a>(&'a str);

impl<'a> Clipped<'a> {
    /// Escaped and cut, without the surrounding quotes.
    pub fn bare(self) -> Bare<'a> {
        Bare(self.0)
    }
}

/// Writes `s` escaped, quoted or not, cut after [`CLIP_CHARS`] characters with its length.
fn write_clipped(f: &mut std::fmt::Formatter<'_>, s: &str, quoted: bool) -> std::fmt::Result {
    let kept = match s.char_indices().nth(CLIP_CHARS) {
        Some((at, _)) => &s[..at],
        None => s,
    };
    if quoted {
        write!(f, "{kept:?}")?;
    } else {
        write!(f, "{}", kept.escape_debug())?;
    }
    if kept.len() < s.len() {
        write!(f, "... ({} bytes)", s.len())?;
    }
    Ok(())
}

impl std::fmt::Display for Clipped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write_clipped(f, self.0, true)
    }
}

impl std::fmt::Display for Bare<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write_clipped(f, self.0, false)
    }
}

/// Why a call or an `Authenticate` was refused: a fixed reason for metrics, and goutils' text
/// for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// No `authorization` header, or more than one.
    #[error("authentication required")]
    Missing,
    /// An `authorization` header that is not `Bearer <token>`.
    #[error("expected authorization header with prefix: Bearer ")]
    Malformed,
    /// A token whose `exp` has passed.
    #[error("unauthenticated: token is expired")]
    Expired,
    /// Any other token the gateway does not accept (another signer, a bad signature, audience
    /// or claims), with goutils' text for it.
    #[error("{0}")]
    InvalidToken(&'static str),
    /// `Authenticate` with credentials that match no configured secret or key.
    #[error("invalid credentials")]
    InvalidCredentials,
}

/// Everything that can fail a call inside the gateway. Statuses returned *by* a part are not
/// errors here: they pass through to the client untouched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The first message could not be read as a gRPC frame.
    #[error("malformed gRPC frame: {0}")]
    MalformedFrame(&'static str),
    /// The call needs a resource name and carries none.
    #[error("request for {} carries no resource name", Clipped(method).bare())]
    MissingName {
        /// The called method's path.
        method: String,
    },
    /// The routing field is compressed, so it cannot be read without decompressing.
    #[error("compressed first message: the resource name cannot be read; send it uncompressed")]
    Compressed,
    /// A client message is larger than the configured limit.
    #[error("message of {size} bytes is larger than the limit of {limit} bytes")]
    MessageTooLarge {
        /// Announced message size.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
    /// No part serves that name.
    #[error("no part serves a resource named {}", Clipped(name))]
    NotFound {
        /// The name as the client sent it.
        name: String,
    },
    /// A bare name that several parts serve.
    #[error(
        "resource name {} is ambiguous: served by parts {parts:?}; address it as \"<part>:{}\"",
        Clipped(name),
        Clipped(name).bare()
    )]
    Ambiguous {
        /// The name as the client sent it.
        name: String,
        /// The parts that serve it.
        parts: Vec<String>,
    },
    /// The method is one the gateway does not provide (and no part can take it).
    #[error("{0}")]
    Unimplemented(String),
    /// The part is not connected.
    #[error("not connected to part {part}")]
    PartUnavailable {
        /// The part's configured name.
        part: String,
    },
    /// The part did not answer in time.
    #[error("part {part} did not answer before the deadline")]
    DeadlineExceeded {
        /// The part's configured name.
        part: String,
    },
    /// Too many bytes of unfinished first messages are held, for this client connection or
    /// for the whole gateway (see `gateway.max_buffered_per_connection`).
    #[error("{}", if *per_connection {
        "this connection holds too many bytes of unfinished first messages; send them whole"
    } else {
        "the gateway holds too many bytes of unfinished first messages; retry later"
    })]
    BufferFull {
        /// The connection's own bound, rather than the gateway's.
        per_connection: bool,
    },
    /// The client holds its whole share of a part's concurrent calls.
    #[error("too many concurrent calls from this client to part {part}")]
    ClientOverloaded {
        /// The part's configured name.
        part: String,
    },
    /// The per-part concurrency limit is reached.
    #[error("too many concurrent calls to part {part}")]
    Overloaded {
        /// The part's configured name.
        part: String,
    },
    /// A fan-out reached some parts and failed on others (each named with its error).
    #[error("failed on {} part(s): {}", .0.len(), .0.iter().map(|(p, e)| format!("{p} ({e})")).collect::<Vec<_>>().join(", "))]
    FanOut(Vec<(String, String)>),
    /// Missing, malformed or invalid credentials or token.
    #[error("{0}")]
    Unauthenticated(AuthFailure),
    /// The caller may not reach that part.
    #[error("{0}")]
    PermissionDenied(String),
    /// A request the gateway answers itself is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// Too many failed authentication attempts from one peer.
    #[error("{0}")]
    RateLimited(String),
    /// A safety-monitored call's `viam-sid`, or a heartbeat's id, is malformed, unknown,
    /// expired or another entity's (the exact message SDKs look for to reset their session).
    #[error("SESSION_EXPIRED")]
    SessionExpired,
    /// `StartSession` beyond the session limit.
    #[error("too many sessions (at most {0})")]
    TooManySessions(usize),
    /// The client's request body failed while we were reading it.
    #[error("client request stream failed: {0}")]
    ClientStream(String),
    /// The part's answer had started when the connection to it was lost.
    #[error("connection to part {part} lost during the call")]
    PartLost {
        /// The part's configured name.
        part: String,
    },
    /// The part's answer had started when a reload removed or re-dialed the part.
    #[error("part {part} was removed or re-dialed by a configuration reload")]
    PartRemoved {
        /// The part's configured name.
        part: String,
    },
    /// The part's answer had started but did not end before the call's deadline.
    #[error("part {part} did not finish before the deadline")]
    StreamDeadline {
        /// The part's configured name.
        part: String,
    },
    /// A bug or an unexpected downstream transport failure; details are logged only.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What can fail in WebRTC signaling or on one data-channel stream. Mapped to gRPC codes in
/// [`WebRtcError::code`] (the same table as [`GatewayError`], kept here in the one place).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebRtcError {
    /// `rpc-host` names none of the gateway's hosts (goutils' exact message: clients fall back
    /// to direct gRPC on it).
    #[error("host not preconfigured")]
    HostNotPreconfigured,
    /// `rpc-host` missing or given more than once.
    #[error("expected exactly one rpc-host in metadata")]
    MissingHost,
    /// The offer is not base64(JSON({type: "offer", sdp})) or the transport refused it.
    #[error("invalid offer: {0}")]
    InvalidOffer(String),
    /// A trickled candidate the transport could not use.
    #[error("invalid ICE candidate: {0}")]
    InvalidCandidate(String),
    /// `CallUpdate` for a uuid that is not (or no longer) an active call.
    #[error("no active call with uuid {0:?}")]
    UnknownCall(String),
    /// WebRTC is disabled in the config, or its transport is not running.
    #[error("{0}")]
    Unavailable(&'static str),
    /// `Answer`: partgate is the answerer for its own hosts; it registers no others.
    #[error("answerer registration is not supported: partgate answers its own calls")]
    AnswerUnsupported,
    /// Too many peers on the endpoint.
    #[error("too many WebRTC peers")]
    TooManyPeers,
    /// The peer did not connect in time.
    #[error("WebRTC connection did not open within {0:?}")]
    ConnectTimeout(std::time::Duration),
    /// The peer closed or failed before it was connected.
    #[error("WebRTC connection closed before it opened")]
    PeerClosed,
    /// The transport failed (details logged only).
    #[error("WebRTC transport error: {0}")]
    Transport(String),
    /// 256 streams already open on the peer.
    #[error("too many concurrent streams on this connection (at most {0})")]
    TooManyStreams(usize),
    /// A message larger than the reassembly limit.
    #[error("message larger than {0} bytes")]
    MessageTooLarge(usize),
    /// A second `headers` frame on an open stream.
    #[error("headers already received")]
    HeadersTwice,
    /// The request headers are unusable (bad method path).
    #[error("invalid request headers: {0}")]
    BadHeaders(String),
    /// The part sent a compressed message, which the data channel cannot carry.
    #[error("compressed response message cannot be carried over WebRTC")]
    CompressedResponse,
    /// The client's messages stayed queued while the part did not read them.
    #[error("request stream stalled: the part did not take the client's messages in time")]
    Stalled,
    /// The data-channel peer is gone or reset the stream.
    #[error("stream cancelled")]
    Cancelled,
    /// Calling out over WebRTC: the peer connection went away during the call.
    #[error("WebRTC peer is gone")]
    PeerGone,
    /// A response that ended without trailers, or in the middle of a message.
    #[error("response ended without trailers or mid-message")]
    TruncatedResponse,
}

/// Problems found while loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The JSON is not valid or does not have the expected shape.
    #[error("{path}: {message}")]
    Parse {
        /// JSON path of the problem (`.` for the document itself).
        path: String,
        /// What is wrong there.
        message: String,
    },
    /// One or more semantic problems, each with its JSON path.
    #[error("invalid config:\n{}", .0.iter().map(|p| format!("  {}: {}", p.path, p.message)).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigProblem>),
}

/// One semantic problem in a config, with the JSON path where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// JSON path, for example `remotes[1].name`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Failures while starting the gateway.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Keys, certificates or part connections could not be set up.
    #[error("cannot start: {0}")]
    Setup(String),
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address we tried.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Every `reason` label [`GatewayError::reason`] gives (to drop a removed part's series).
pub const REASONS: [&str; 22] = [
    "invalid",
    "compressed",
    "too_large",
    "no_route",
    "ambiguous",
    "unimplemented",
    "unavailable",
    "deadline",
    "limit",
    "fan_out",
    "client_stream",
    "unauthenticated",
    "permission_denied",
    "rate_limited",
    "session_expired",
    "too_many_sessions",
    "internal",
    "part_lost",
    "removed",
    "stream_deadline",
    "buffer_full",
    "client_limit",
];

// === impl Fault ===

impl Fault {
    /// The `source` label of an error metric.
    pub fn label(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Gateway => "gateway",
            Fault::Part => "part",
        }
    }
}

// === impl AuthFailure ===

impl AuthFailure {
    /// The `reason` label of a refused authentication (a fixed word, never what was sent).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Expired => "expired",
            Self::InvalidToken(_) => "invalid_token",
            Self::InvalidCredentials => "bad_credentials",
        }
    }
}

// === impl GatewayError ===

impl GatewayError {
    /// THE table: every gateway failure's gRPC code, whose fault it was, and the `reason`
    /// label its metrics carry.
    pub fn row(&self) -> (Code, Fault, &'static str) {
        use Code as C;
        use Fault::{Client, Gateway, Part};
        match self {
            Self::MalformedFrame(_) | Self::MissingName { .. } => {
                (C::InvalidArgument, Client, "invalid")
            }
            Self::Compressed => (C::InvalidArgument, Client, "compressed"),
            Self::MessageTooLarge { .. } => (C::ResourceExhausted, Client, "too_large"),
            Self::RateLimited(_) => (C::ResourceExhausted, Client, "rate_limited"),
            Self::Unauthenticated(_) => (C::Unauthenticated, Client, "unauthenticated"),
            Self::PermissionDenied(_) => (C::PermissionDenied, Client, "permission_denied"),
            Self::InvalidArgument(_) => (C::InvalidArgument, Client, "invalid"),
            Self::SessionExpired => (C::InvalidArgument, Client, "session_expired"),
            Self::TooManySessions(_) => (C::ResourceExhausted, Client, "too_many_sessions"),
            Self::NotFound { .. } => (C::NotFound, Client, "no_route"),
            Self::Ambiguous { .. } => (C::FailedPrecondition, Client, "ambiguous"),
            Self::Unimplemented(_) => (C::Unimplemented, Client, "unimplemented"),
            Self::ClientStream(_) => (C::Cancelled, Client, "client_stream"),
            Self::PartUnavailable { .. } => (C::Unavailable, Part, "unavailable"),
            Self::FanOut(_) => (C::Unavailable, Part, "fan_out"),
            Self::PartLost { .. } => (C::Unavailable, Part, "part_lost"),
            Self::PartRemoved { .. } => (C::Unavailable, Gateway, "removed"),
            Self::DeadlineExceeded { .. } => (C::DeadlineExceeded, Part, "deadline"),
            Self::StreamDeadline { .. } => (C::DeadlineExceeded, Part, "stream_deadline"),
            Self::Overloaded { .. } => (C::ResourceExhausted, Gateway, "limit"),
            Self::ClientOverloaded { .. } => (C::ResourceExhausted, Client, "client_limit"),
            Self::BufferFull { per_connection } => {
                let fault = if *per_connection { Client } else { Gateway };
                (C::ResourceExhausted, fault, "buffer_full")
            }
            Self::Internal(_) => (C::Internal, Gateway, "internal"),
        }
    }

    /// The gRPC code and whose fault it was (see [`GatewayError::row`]).
    pub fn code_and_fault(&self) -> (Code, Fault) {
        let (code, fault, _) = self.row();
        (code, fault)
    }

    /// The `reason` label of a call the gateway ended itself (one of [`REASONS`]).
    pub fn reason(&self) -> &'static str {
        self.row().2
    }

    /// The `reason` label of a refused authentication: the token's or the credentials'
    /// failure, a rate limit, or a malformed request.
    pub fn auth_reason(&self) -> &'static str {
        match self {
            Self::Unauthenticated(failure) => failure.reason(),
            Self::RateLimited(_) => "rate_limited",
            Self::InvalidArgument(_) => "invalid_request",
            _ => "bad_credentials",
        }
    }

    /// Trailers that end a response already under way with this error: `grpc-status` and a
    /// `grpc-message` percent-encoded as gRPC says (bytes outside printable ASCII, and `%`).
    pub fn trailers(&self) -> http::HeaderMap {
        let status = self.to_status();
        let mut trailers = http::HeaderMap::with_capacity(2);
        trailers.insert("grpc-status", http::HeaderValue::from(status.code() as i32));
        if let Ok(value) = http::HeaderValue::from_str(
            &percent_encoding::utf8_percent_encode(status.message(), GRPC_MESSAGE_ESCAPES)
                .to_string(),
        ) {
            trailers.insert("grpc-message", value);
        }
        trailers
    }

    /// The status sent to the client. Internal errors get a generic message.
    pub fn to_status(&self) -> Status {
        let (code, _) = self.code_and_fault();
        let message = match self {
            Self::Internal(_) => "internal gateway error".to_owned(),
            other => other.to_string(),
        };
        Status::new(code, message)
    }
}

/// What `grpc-message` percent-encodes (gRPC over HTTP/2): every byte outside 0x20..=0x7E
/// (the crate always encodes non-ASCII bytes; `CONTROLS` adds 0x00-0x1F and 0x7F), and `%`.
const GRPC_MESSAGE_ESCAPES: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

// === impl WebRtcError ===

impl WebRtcError {
    /// THE table for WebRTC failures: gRPC code and whose fault it was.
    pub fn code_and_fault(&self) -> (Code, Fault) {
        match self {
            Self::HostNotPreconfigured
            | Self::MissingHost
            | Self::InvalidOffer(_)
            | Self::InvalidCandidate(_)
            | Self::UnknownCall(_)
            | Self::HeadersTwice
            | Self::BadHeaders(_) => (Code::InvalidArgument, Fault::Client),
            Self::Unavailable(_) | Self::AnswerUnsupported => (Code::Unimplemented, Fault::Client),
            Self::TooManyPeers => (Code::ResourceExhausted, Fault::Gateway),
            Self::TooManyStreams(_) | Self::MessageTooLarge(_) | Self::Stalled => {
                (Code::ResourceExhausted, Fault::Client)
            }
            Self::ConnectTimeout(_) => (Code::DeadlineExceeded, Fault::Client),
            Self::PeerClosed | Self::Cancelled => (Code::Cancelled, Fault::Client),
            Self::PeerGone => (Code::Unavailable, Fault::Part),
            Self::TruncatedResponse => (Code::Internal, Fault::Part),
            Self::Transport(_) | Self::CompressedResponse => (Code::Internal, Fault::Gateway),
        }
    }

    /// The status sent to the client; transport details are logged, not sent.
    pub fn to_status(&self) -> Status {
        let (code, _) = self.code_and_fault();
        let message = match self {
            Self::Transport(_) => "internal gateway error".to_owned(),
            other => other.to_string(),
        };
        Status::new(code, message)
    }
}

impl From<WebRtcError> for Status {
    fn from(err: WebRtcError) -> Self {
        err.to_status()
    }
}

impl From<GatewayError> for Status {
    fn from(err: GatewayError) -> Self {
        err.to_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of every variant: the table gives each a reason from [`REASONS`], and every reason
    /// is given by some variant.
    #[test]
    fn every_error_has_a_listed_reason() {
        let part = || "p".to_owned();
        let errors = [
            GatewayError::MalformedFrame("x"),
            GatewayError::MissingName { method: "m".into() },
            GatewayError::Compressed,
            GatewayError::MessageTooLarge { size: 2, limit: 1 },
            GatewayError::NotFound { name: "n".into() },
            GatewayError::Ambiguous {
                name: "n".into(),
                parts: vec![],
            },
            GatewayError::Unimplemented("u".into()),
            GatewayError::PartUnavailable { part: part() },
            GatewayError::DeadlineExceeded { part: part() },
            GatewayError::Overloaded { part: part() },
            GatewayError::ClientOverloaded { part: part() },
            GatewayError::BufferFull {
                per_connection: true,
            },
            GatewayError::FanOut(vec![]),
            GatewayError::Unauthenticated(AuthFailure::Missing),
            GatewayError::PermissionDenied("d".into()),
            GatewayError::InvalidArgument("i".into()),
            GatewayError::RateLimited("r".into()),
            GatewayError::SessionExpired,
            GatewayError::TooManySessions(1),
            GatewayError::ClientStream("c".into()),
            GatewayError::PartLost { part: part() },
            GatewayError::PartRemoved { part: part() },
            GatewayError::StreamDeadline { part: part() },
            GatewayError::Internal("i".into()),
        ];
        for err in &errors {
            assert!(REASONS.contains(&err.reason()), "{err}");
        }
        for reason in REASONS {
            assert!(
                errors.iter().any(|e| e.reason() == reason),
                "{reason} unused"
            );
        }
    }

    /// Mid-stream errors end a call with the table's code, and a message encoded as gRPC says.
    #[test]
    fn mid_stream_trailers_carry_the_code_and_an_encoded_message() {
        let t = GatewayError::PartLost { part: "arm".into() }.trailers();
        assert_eq!(t["grpc-status"], "14");
        assert_eq!(
            t["grpc-message"],
            "connection to part arm lost during the call"
        );
        let t = GatewayError::StreamDeadline {
            part: "b\u{e9}% \n".into(),
        }
        .trailers();
        assert_eq!(t["grpc-status"], "4");
        assert_eq!(
            t["grpc-message"],
            "part b%C3%A9%25 %0A did not finish before the deadline"
        );
        let t = GatewayError::Internal("secret detail".into()).trailers();
        assert_eq!(t["grpc-status"], "13");
        assert_eq!(t["grpc-message"], "internal gateway error");
    }

    /// What a client sends comes back escaped and cut: no forged lines, no 30 MiB messages.
    #[test]
    fn client_strings_in_messages_are_escaped_and_cut() {
        let err = GatewayError::NotFound {
            name: "arm\nINFO forged".into(),
        };
        assert_eq!(
            err.to_string(),
            r#"no part serves a resource named "arm\nINFO forged""#
        );
        let huge = "x".repeat(30 << 20);
        let err = GatewayError::NotFound { name: huge.clone() };
        let message = err.to_status().message().to_owned();
        assert!(message.len() < 300, "{} bytes", message.len());
        assert!(
            message.ends_with(&format!("... ({} bytes)", huge.len())),
            "{message}"
        );
        let err = GatewayError::Ambiguous {
            name: huge,
            parts: vec!["a".into(), "b".into()],
        };
        assert!(err.to_string().len() < 600);
        let err = GatewayError::MissingName {
            method: "/a.B/C".into(),
        };
        assert_eq!(
            err.to_string(),
            "request for /a.B/C carries no resource name"
        );
        // Cut on a character boundary.
        let wide = "\u{e9}".repeat(CLIP_CHARS + 1);
        assert!(
            Clipped(&wide)
                .to_string()
                .starts_with(&format!("{:?}", "\u{e9}".repeat(CLIP_CHARS)))
        );
    }

    #[test]
    fn auth_failures_have_fixed_reasons() {
        let unauth = |f| GatewayError::Unauthenticated(f);
        assert_eq!(unauth(AuthFailure::Missing).auth_reason(), "missing");
        assert_eq!(unauth(AuthFailure::Malformed).auth_reason(), "malformed");
        assert_eq!(unauth(AuthFailure::Expired).auth_reason(), "expired");
        assert_eq!(
            unauth(AuthFailure::InvalidToken("x")).auth_reason(),
            "invalid_token"
        );
        assert_eq!(
            unauth(AuthFailure::InvalidCredentials).auth_reason(),
            "bad_credentials"
        );
        assert_eq!(
            GatewayError::RateLimited("r".into()).auth_reason(),
            "rate_limited"
        );
        assert_eq!(
            GatewayError::InvalidArgument("i".into()).auth_reason(),
            "invalid_request"
        );
    }

    #[test]
    fn table_matches_architecture() {
        let cases = [
            (GatewayError::MalformedFrame("x"), Code::InvalidArgument),
            (
                GatewayError::MissingName {
                    method: "/a/b".into(),
                },
                Code::InvalidArgument,
            ),
            (GatewayError::NotFound { name: "m".into() }, Code::NotFound),
            (
                GatewayError::Ambiguous {
                    name: "m".into(),
                    parts: vec!["a".into(), "b".into()],
                },
                Code::FailedPrecondition,
            ),
            (
                GatewayError::PartUnavailable { part: "a".into() },
                Code::Unavailable,
            ),
            (
                GatewayError::DeadlineExceeded { part: "a".into() },
                Code::DeadlineExceeded,
            ),
            (
                GatewayError::Overloaded { part: "a".into() },
                Code::ResourceExhausted,
            ),
            (
                GatewayError::Internal("secret detail".into()),
                Code::Internal,
            ),
            (GatewayError::SessionExpired, Code::InvalidArgument),
            (GatewayError::TooManySessions(1024), Code::ResourceExhausted),
        ];
        for (err, code) in cases {
            assert_eq!(err.to_status().code(), code, "{err}");
        }
    }

    #[test]
    fn webrtc_failures_map_like_goutils() {
        let host = WebRtcError::HostNotPreconfigured.to_status();
        assert_eq!(host.code(), Code::InvalidArgument);
        assert_eq!(host.message(), "host not preconfigured");
        assert_eq!(
            WebRtcError::TooManyStreams(256).to_status().code(),
            Code::ResourceExhausted
        );
        assert_eq!(
            WebRtcError::MessageTooLarge(1 << 25).to_status().code(),
            Code::ResourceExhausted
        );
        assert_eq!(
            WebRtcError::Unavailable("off").to_status().code(),
            Code::Unimplemented
        );
        assert!(
            !WebRtcError::Transport("ice pwd=x".into())
                .to_status()
                .message()
                .contains("pwd")
        );
    }

    #[test]
    fn internal_details_are_not_sent() {
        let status = GatewayError::Internal("db password=hunter2".into()).to_status();
        assert!(!status.message().contains("hunter2"));
    }

    #[test]
    fn ambiguous_names_the_parts() {
        let status = GatewayError::Ambiguous {
            name: "lift".into(),
            parts: vec!["sub1".into(), "sub2".into()],
        }
        .to_status();
        assert!(status.message().contains("sub1") && status.message().contains("sub2"));
    }
}
