//! Stage `route`: decide which part serves a call and how its name must be rewritten.
//!
//! Receives a method path and (for resource calls) the name read from the first message; hands
//! the `pool` stage a part index and how many bytes of the name to strip.

pub mod frame;
pub mod hash;
pub mod method;
pub mod methods;
pub mod resource_name;
pub mod table;

pub use method::{MethodKind, classify};
pub use table::{PartResources, Route, RouteTable};

/// `s` split at the first `sep`, which must be ASCII; `None` without one. A byte loop: the
/// strings split on every call (paths, resource names) are a few dozen bytes at most, where
/// `str::split_once` sets up a `memchr` search costing several times more.
pub fn split_once_ascii(s: &str, sep: u8) -> Option<(&str, &str)> {
    debug_assert!(sep.is_ascii());
    let at = s.bytes().position(|b| b == sep)?;
    // An ASCII byte is never inside a multi-byte character: both sides are on char boundaries.
    Some((s.get(..at)?, s.get(at + 1..)?))
}
