//! Types and constants shared by the XDP program and userspace. Everything
//! here is `#[repr(C)]` and laid out identically on both sides.
//!
//! One module per topic; what userspace and the program name most is also
//! at the crate root.
#![no_std]

pub mod auth;
pub mod counters;
pub mod index;
pub mod key;
pub mod maps;
pub mod net;
pub mod sip;
pub mod timing;
#[cfg(feature = "user")]
mod user;

pub use auth::{AuthMode, AuthSlot};
pub use counters::Counter;
pub use key::{HostEntry, HostKey};
pub use maps::*;
pub use net::{DEFAULT_PORT, MAGIC};
pub use timing::{TICK_NS, TICK_SHIFT, Timing};
