//! Stage `route`: decide which part serves a call and how its name must be rewritten.
//!
//! Receives a method path and (for resource calls) the name read from the first message; hands
//! the `pool` stage a part index and how many bytes of the name to strip.

pub mod frame;
pub mod hash;
pub mod method;
pub mod resource_name;
pub mod table;

pub use method::{MethodKind, classify};
pub use table::{PartResources, Route, RouteTable};
