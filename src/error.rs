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

/// Everything that can fail a call inside the gateway. Statuses returned *by* a part are not
/// errors here: they pass through to the client untouched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The first message could not be read as a gRPC frame.
    #[error("malformed gRPC frame: {0}")]
    MalformedFrame(&'static str),
    /// The call needs a resource name and carries none.
    #[error("request for {method} carries no resource name")]
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
    #[error("no part serves a resource named {name:?}")]
    NotFound {
        /// The name as the client sent it.
        name: String,
    },
    /// A bare name that several parts serve.
    #[error(
        "resource name {name:?} is ambiguous: served by parts {parts:?}; address it as \"<part>:{name}\""
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
    Unauthenticated(String),
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

// === impl GatewayError ===

impl GatewayError {
    /// THE table: every gateway failure's gRPC code and whose fault it was.
    pub fn code_and_fault(&self) -> (Code, Fault) {
        match self {
            Self::MalformedFrame(_) | Self::MissingName { .. } | Self::Compressed => {
                (Code::InvalidArgument, Fault::Client)
            }
            Self::MessageTooLarge { .. } | Self::RateLimited(_) => {
                (Code::ResourceExhausted, Fault::Client)
            }
            Self::Unauthenticated(_) => (Code::Unauthenticated, Fault::Client),
            Self::PermissionDenied(_) => (Code::PermissionDenied, Fault::Client),
            Self::InvalidArgument(_) | Self::SessionExpired => {
                (Code::InvalidArgument, Fault::Client)
            }
            Self::TooManySessions(_) => (Code::ResourceExhausted, Fault::Client),
            Self::NotFound { .. } => (Code::NotFound, Fault::Client),
            Self::Ambiguous { .. } => (Code::FailedPrecondition, Fault::Client),
            Self::Unimplemented(_) => (Code::Unimplemented, Fault::Client),
            Self::ClientStream(_) => (Code::Cancelled, Fault::Client),
            Self::PartUnavailable { .. } | Self::FanOut(_) => (Code::Unavailable, Fault::Part),
            Self::DeadlineExceeded { .. } => (Code::DeadlineExceeded, Fault::Part),
            Self::Overloaded { .. } => (Code::ResourceExhausted, Fault::Gateway),
            Self::Internal(_) => (Code::Internal, Fault::Gateway),
        }
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
