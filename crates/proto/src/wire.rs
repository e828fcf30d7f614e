//! Names on Viam's wire that are not in a `.proto`: metadata headers and well-known paths.

use http::HeaderName;

/// The request header carrying a session id on safety-monitored calls. Pre-parsed: a lookup by
/// `&str` parses and hashes the name first, and every call looks this up.
pub const SESSION_HEADER: HeaderName = HeaderName::from_static("viam-sid");
/// The response header naming resources a part itself safety-monitored for our session.
pub const MONITORED_NAME: &str = "viam-smrn";
/// [`MONITORED_NAME`] pre-parsed like [`SESSION_HEADER`]: every answer is checked for it.
pub const MONITORED_HEADER: HeaderName = HeaderName::from_static(MONITORED_NAME);
/// The path of `proto.rpc.v1.AuthService/Authenticate`.
pub const AUTHENTICATE_PATH: &str = "/proto.rpc.v1.AuthService/Authenticate";
