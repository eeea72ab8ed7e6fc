//! Where heartbeats come in: the XDP program (in the kernel, before any
//! socket) or, where XDP cannot be used, a UDP socket on the ring. Either
//! fills a host table that the sweeper reads through `track::table::Table`.

pub mod socket;
pub mod xdp;

use std::{net::IpAddr, time::Duration};

use anyhow::{Result, bail};
use log::warn;

use crate::{
    io::{EventLoop, IngestOp},
    track::{adaptive::Policy, table::Table, tracker::Tracker},
};
use socket::SocketIngest;
use xdp::{AttachMode, AuthSettings, XdpIngest};

/// A running ingest, as the collector's loop drives it.
pub trait Ingest {
    /// "xdp" or "socket", as `/metrics` names it.
    fn kind(&self) -> &'static str;
    /// The table its heartbeats land in.
    fn table(&self) -> &dyn Table;
    /// Start-up is over: the tracker to sweep with, carrying on from the
    /// last collector's state where there is one. From here on, what the
    /// ingest leaves in place is for the next collector.
    fn begin(&mut self, timeout: Duration) -> Result<Tracker>;
    /// Where the sweeper keeps the fleet's told state for the next
    /// collector (see `track::fleet::kept`): where the tracker's state
    /// outlives the process too.
    fn fleet_file(&self) -> Option<std::path::PathBuf> {
        None
    }
    /// A reload changed the timeout: where the ingest tells `hb status`
    /// the collector's settings, it tells the new one.
    fn set_timeout(&mut self, _timeout: Duration, _auto: Option<Policy>) {}
    /// Called before every sweep.
    fn on_tick(&mut self, _ev: &mut EventLoop) -> Result<()> {
        Ok(())
    }
    /// One of its operations completed.
    fn complete(&mut self, ev: &mut EventLoop, op: IngestOp, result: i32, flags: u32)
    -> Result<()>;
    /// A stop signal arrived: says what stopping will do. `finish` does it,
    /// once the last lines are written.
    fn on_stop(&mut self, signal: &str);
    fn finish(self: Box<Self>);
}

/// Which ingest `start` picks.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestKind {
    /// XDP where it works, else a socket (with a warning).
    Auto,
    Xdp,
    Socket,
}

/// What an ingest is started with.
#[derive(Debug, Clone)]
pub struct Config {
    pub kind: IngestKind,
    /// The interface heartbeats arrive on (XDP).
    pub iface: Option<String>,
    /// The bpffs to pin in (`--bpffs`; else found, see `xdp::Bpffs`).
    pub bpffs: Option<std::path::PathBuf>,
    /// The address socket mode receives on.
    pub listen: IpAddr,
    pub port: u16,
    pub max_hosts: u32,
    /// `--max-bare-hosts` (XDP); `None`: the default for the mode.
    pub max_bare_hosts: Option<u32>,
    pub pass_heartbeats: bool,
    /// `--any-destination` (XDP).
    pub any_destination: bool,
    pub attach_mode: AttachMode,
    /// The fleet key, for signed heartbeats (XDP only).
    pub auth: Option<AuthSettings>,
    /// The collector's timeout and sweep period, for its logs and state.
    pub timeout: Duration,
    /// Under `--timeout auto`: the bounds of the learned timeouts
    /// (`timeout` is then the upper one).
    pub auto: Option<Policy>,
    pub sweep: Duration,
}

/// `timeout` as the logs give it: `15s`, or `auto (2s–5m)`.
pub fn timeout_text(timeout: Duration, auto: Option<Policy>) -> String {
    let d = |ns| humantime::format_duration(Duration::from_nanos(ns)).to_string();
    match auto {
        None => humantime::format_duration(timeout).to_string(),
        Some(p) => format!("auto ({}–{})", d(p.min_ns), d(p.max_ns)),
    }
}

/// Starts the ingest `config` asks for; with `Auto`, XDP where this
/// process may load it, else a socket.
pub fn start(config: &Config, ev: &mut EventLoop) -> Result<Box<dyn Ingest>> {
    let use_xdp = match config.kind {
        IngestKind::Xdp => {
            xdp::check_environment()?;
            true
        }
        IngestKind::Socket => false,
        IngestKind::Auto => match xdp::check_environment().and_then(|()| xdp::probe()) {
            Ok(()) => true,
            Err(e) if config.auth.is_some() => {
                return Err(e.context(
                    "XDP is unavailable, and socket mode does not verify signed heartbeats (--key-file)",
                ));
            }
            Err(e) => {
                warn!(
                    "XDP is unavailable ({e:#}): receiving heartbeats on a UDP socket instead (socket mode: only what reaches the socket is seen, at a higher cost per heartbeat)"
                );
                false
            }
        },
    };
    if !use_xdp {
        return Ok(Box::new(SocketIngest::start_with(config, ev)?));
    }
    let Some(iface) = &config.iface else {
        bail!("--iface is required for XDP");
    };
    Ok(Box::new(XdpIngest::start(config, iface, ev)?))
}
