//! hb, the heartbeat collector: userspace side. The binary's `main` parses
//! the command line and runs the subcommand.
//!
//! Rooms, lowest first (a module uses only those below it):
//! - `track`: host state from last-seen times (tracker, sweeper, events,
//!   silent pages) over the `Table` trait;
//! - `alert`: alerts to Alertmanager from the sweeps (a delivery thread);
//! - `io`: the io_uring event loop, its operation tokens, the stdout writer;
//! - `ingest`: where heartbeats come in (`xdp`, `socket`), each filling a
//!   `Table` and owning its completions;
//! - `http`: the scrape endpoint;
//! - `cli` and `cmd`: the command line and one file per subcommand.
//!
//! Everything is private to the crate but what the integration tests and
//! the benches drive, re-exported below.

mod alert;
mod cli;
mod clock;
mod cmd;
mod config;
mod http;
mod ingest;
mod io;
mod logging;
mod notify;
mod track;

pub use cli::{Cli, DEFAULT_SWEEP, parse_duration, parse_port};
pub use clock::monotonic_ns;
pub use cmd::{Signer, default_host_id, parse_key};
pub use http::{Request, Response, Site};
pub use logging::init as init_logging;
pub use track::{
    adaptive::DEFAULT_MIN as DEFAULT_MIN_TIMEOUT,
    events::{Format, Host, timestamp},
    fleet::{Fleet, FleetConfig, FleetError, GroupPolicy, UnknownHosts},
    silent::SilentOrder,
    sweeper::Sweeper,
    table::{Counts, Table},
    tracker::{Tracker, Transition, Words},
};

/// The XDP program: loading it as the collector does, its host table, and
/// where its state is pinned.
pub mod xdp {
    pub use crate::ingest::xdp::{
        AttachMode, AuthSettings, HostTable, Loaded, Settings,
        local::LocalMaps,
        pins::{LAYOUT_VERSION, ensure_bpffs, pin_dir, state_file},
        program::{OBJECT, load, load_auth, load_with, xdp_program as program},
    };
}
