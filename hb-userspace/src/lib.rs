//! hb, the heartbeat collector: userspace side. The binary's `main` only
//! parses the command line and calls into these modules.

pub mod beat;
pub mod cli;
pub mod clock;
pub mod counters;
pub mod detach;
pub mod endpoints;
pub mod event_loop;
pub mod http;
pub mod key;
pub mod output;
pub mod pins;
pub mod program;
pub mod run;
pub mod socket;
pub mod status;
pub mod sweeper;
pub mod table;
pub mod tracker;
pub mod writer;
