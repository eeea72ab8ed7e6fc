//! The XDP ingest: the program attached to an interface, its host table
//! mapped into the collector, and its state pinned so that it outlives the
//! process (see `pins`).

mod counters;
mod iface;
pub mod pins;
pub mod program;
pub mod table;

use std::{os::fd::AsRawFd as _, time::Duration};

use anyhow::{Result, bail};
use hb_common::AuthMode;
use log::{info, warn};

pub use program::{
    AttachMode, AuthSettings, Loaded, Settings, auth_mode, check_environment, probe,
};
pub use table::HostTable;

use super::{Config, Ingest};
use crate::{
    io::{EventLoop, IngestOp, Token},
    track::{
        events::timestamp,
        table::Table,
        tracker::{Tracker, Words},
    },
};
use iface::{IfaceWatch, if_index};

type KernelLog = aya_log::EbpfLogger<&'static dyn log::Log>;

pub struct XdpIngest {
    iface: String,
    loaded: Loaded,
    kernel_log: Option<KernelLog>,
    watch: IfaceWatch,
    /// While set, dropping this removes the pins: a failure during start-up
    /// must leave nothing behind.
    pins_armed: bool,
    /// Whether `finish` detaches (SIGINT, SIGTERM) or leaves the program
    /// recording for the next collector (SIGUSR2).
    detach: bool,
}

impl XdpIngest {
    /// Loads the program (carrying on from pinned maps where a collector
    /// left them) and attaches it to `iface`.
    pub fn start(config: &Config, iface: &str, ev: &mut EventLoop) -> Result<Self> {
        if let Some(other) = pins::running(iface)
            && other.pid != std::process::id()
        {
            bail!(
                "another hb run (pid {}) is already watching {iface}: stop it first",
                other.pid
            );
        }
        // Unknown interfaces fail here, before anything is pinned for them.
        if if_index(iface).is_none() {
            bail!(
                "unknown interface `{iface}`: pick one from `ip link` (in this network namespace)"
            );
        }
        let resuming = pins::prepare(iface)?;
        // Until the loop runs, a failure undoes what this run pinned, but
        // never what an earlier collector left to carry on from.
        let loaded = load(config, iface).inspect_err(|_| {
            if !resuming {
                pins::remove(iface);
            }
        })?;
        let mut this = Self {
            iface: iface.to_owned(),
            loaded,
            kernel_log: None,
            // Watched from the index attached to (set again below).
            watch: IfaceWatch::new(iface, config.attach_mode),
            pins_armed: !resuming,
            detach: true,
        };
        this.kernel_log = kernel_log(&mut this.loaded, ev)?;
        let link = pins::link_path(iface);
        program::attach(&mut this.loaded, iface, config.attach_mode, Some(&link))?;
        this.watch = IfaceWatch::new(iface, config.attach_mode);
        pins::write_state(iface, &state(config))?;
        info!(
            "watching UDP port {} on {iface}: timeout {}, sweep every {}, up to {} hosts, {}",
            config.port,
            humantime::format_duration(config.timeout),
            humantime::format_duration(config.sweep),
            config.max_hosts,
            match auth_mode(config.auth.as_ref()) {
                AuthMode::Off => "classic PyHB heartbeats only (no --key-file)",
                AuthMode::Optional => "signed heartbeats verified, bare PyHB accepted",
                AuthMode::Required => "signed heartbeats only (bare PyHB ignored)",
            }
        );
        Ok(this)
    }
}

/// Loads the program with `config`'s settings, its maps pinned for `iface`.
fn load(config: &Config, iface: &str) -> Result<Loaded> {
    let settings = Settings {
        port: config.port,
        pass_heartbeats: config.pass_heartbeats,
        max_hosts: config.max_hosts,
    };
    program::load_with(settings, config.auth.as_ref(), Some(&pins::maps_dir(iface)))
}

/// The program's own log lines, forwarded to hb's log when its fd is
/// readable; hb runs without them where aya-log cannot set up.
fn kernel_log(loaded: &mut Loaded, ev: &mut EventLoop) -> Result<Option<KernelLog>> {
    match aya_log::EbpfLogger::init(&mut loaded.ebpf) {
        Ok(logger) => {
            ev.watch(logger.as_raw_fd(), Token::Ingest(IngestOp::KernelLog))?;
            Ok(Some(logger))
        }
        Err(e) => {
            warn!("kernel-side log unavailable: {e}");
            Ok(None)
        }
    }
}

/// What `hb status` reads about this collector.
fn state(config: &Config) -> pins::State {
    pins::State {
        pid: std::process::id(),
        layout: pins::LAYOUT_VERSION,
        port: config.port,
        timeout_ms: config.timeout.as_millis() as u64,
        sweep_ms: config.sweep.as_millis() as u64,
        max_hosts: config.max_hosts,
        started: timestamp(std::time::SystemTime::now()),
        auth: auth_name(config.auth.as_ref()).to_owned(),
    }
}

impl Ingest for XdpIngest {
    fn kind(&self) -> &'static str {
        "xdp"
    }

    fn table(&self) -> &dyn Table {
        &self.loaded.table
    }

    fn begin(&mut self, timeout: Duration) -> Result<Tracker> {
        let words = self.loaded.take_tracker_words()?;
        let tracker = Tracker::resume(
            timeout.as_nanos() as u64,
            Words::Shared(Box::new(words)),
            self.loaded.table.capacity(),
            self.loaded.table.last_seen(),
        );
        if tracker.resumed() {
            let census = tracker.census();
            info!(
                "carrying on from the last collector on {}: {} hosts known, {} silent; only changes since its last sweep are reported",
                self.iface, census.hosts, census.silent
            );
        }
        self.pins_armed = false;
        Ok(tracker)
    }

    fn on_tick(&mut self, _ev: &mut EventLoop) -> Result<()> {
        self.watch.check(&mut self.loaded);
        Ok(())
    }

    fn complete(
        &mut self,
        ev: &mut EventLoop,
        op: IngestOp,
        _result: i32,
        _flags: u32,
    ) -> Result<()> {
        if op == IngestOp::KernelLog
            && let Some(logger) = self.kernel_log.as_mut()
        {
            logger.flush();
            ev.watch(logger.as_raw_fd(), Token::Ingest(op))?;
        }
        Ok(())
    }

    fn on_stop(&mut self, signal: &str) {
        if signal == "SIGUSR2" {
            info!(
                "SIGUSR2: stopping for a restart; the program stays attached to {} and keeps recording, the next `hb run` carries on",
                self.iface
            );
            self.detach = false;
        } else {
            info!("{signal}: detaching from {}", self.iface);
        }
    }

    /// With `detach`, unpins the link (this process's references are then
    /// the last ones: dropping the program detaches it) and removes the
    /// pins; without, leaves the program recording for the next collector.
    fn finish(mut self: Box<Self>) {
        self.pins_armed = false;
        drop(self.kernel_log.take());
        if self.detach {
            pins::remove(&self.iface);
        }
    }
}

impl Drop for XdpIngest {
    fn drop(&mut self) {
        if self.pins_armed {
            pins::remove(&self.iface);
        }
    }
}

/// The auth mode as the state file and `hb status` name it.
fn auth_name(auth: Option<&AuthSettings>) -> &'static str {
    match auth_mode(auth) {
        AuthMode::Off => "off",
        AuthMode::Optional => "optional",
        AuthMode::Required => "required",
    }
}
