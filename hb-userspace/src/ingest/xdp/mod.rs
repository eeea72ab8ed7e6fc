//! The XDP ingest: the program attached to an interface, its host table
//! mapped into the collector, and its state pinned so that it outlives the
//! process (see `pins`).

mod bpffs;
mod counters;
mod iface;
mod layout5;
pub mod link;
pub mod local;
pub mod lock;
mod migrate;
pub mod pins;
pub mod program;
pub mod table;

use std::{os::fd::AsRawFd as _, time::Duration};

use anyhow::{Result, bail};
use hb_common::AuthMode;
use log::{info, warn};

pub use bpffs::{Bpffs, join_host_mounts};
pub use link::if_index;
pub use program::{
    AttachMode, AuthSettings, Loaded, Settings, auth_mode, check_environment, check_privileges,
    probe,
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
use iface::IfaceWatch;
use local::LocalWatch;
use lock::Lock;
use pins::{Created, Instance};
use program::Attached;

type KernelLog = aya_log::EbpfLogger<&'static dyn log::Log>;

pub struct XdpIngest {
    instance: Instance,
    /// Held for the process's lifetime: no other `hb run` on this instance.
    lock: Option<Lock>,
    loaded: Loaded,
    kernel_log: Option<KernelLog>,
    watch: IfaceWatch,
    /// Keeps the program's local MAC and addresses current (none with
    /// `--any-destination`).
    local: Option<LocalWatch>,
    /// While set, dropping this undoes what this start created: a failure
    /// during start-up leaves nothing of its own behind, and never removes
    /// what an earlier collector left to carry on from.
    created: Option<Created>,
    /// Whether the program outlives this process: its link is pinned, in a
    /// bpffs that outlives it.
    outlives: bool,
    /// Whether `finish` detaches (SIGINT, SIGTERM) or leaves the program
    /// recording for the next collector (SIGUSR2).
    detach: bool,
}

impl XdpIngest {
    /// Loads the program (carrying on from pinned maps where a collector
    /// left them) and attaches it to `iface`.
    pub fn start(config: &Config, iface: &str, ev: &mut EventLoop) -> Result<Self> {
        // Unknown interfaces fail here, before anything is pinned for them.
        if if_index(iface).is_none() {
            bail!(
                "unknown interface `{iface}`: pick one from `ip link` (in this network namespace)"
            );
        }
        let bpffs = Bpffs::find_or_mount(config.bpffs.as_deref())?;
        let instance = Instance::new(iface, bpffs)?;
        let lock = match Lock::acquire(&instance.lock_file())? {
            Ok(lock) => lock,
            Err(held) => bail!(
                "another hb run ({held}) is already watching {iface} in this network namespace: stop it first (`hb status --iface {iface}` shows it)"
            ),
        };
        if instance.bpffs.private {
            warn!(
                "the bpffs hb mounted at {} lives only in hb's own mount namespace (e.g. under `ip netns exec`) and goes away with hb: the program detaches when hb stops, and restarts will not be gap-free; mount bpffs at /sys/fs/bpf in the host's mount namespace and run hb there (`hb run --netns NAME` rather than `ip netns exec`), or pass --bpffs DIR on a bpffs that outlives hb",
                instance.bpffs.root.display()
            );
        }
        let mut created = pins::prepare(&instance)?;
        let (mut loaded, migration) = match load_or_migrate(config, &instance, &mut created) {
            Ok(loaded) => loaded,
            Err(e) => {
                pins::undo(&instance, &created);
                return Err(e);
            }
        };
        // Before attaching: the program takes no heartbeat for someone else's.
        let local = if config.any_destination {
            info!("--any-destination: heartbeats to any MAC and address are taken");
            None
        } else {
            Some(
                LocalWatch::start(iface, &mut loaded.local)
                    .inspect_err(|_| pins::undo(&instance, &created))?,
            )
        };
        let link = instance.link();
        let mut this = Self {
            loaded,
            kernel_log: None,
            // Watched from the index attached to (set again below).
            watch: IfaceWatch::new(iface, config.attach_mode, link.clone()),
            local,
            created: Some(created),
            outlives: false,
            detach: true,
            lock: Some(lock),
            instance,
        };
        this.kernel_log = kernel_log(&mut this.loaded, ev)?;
        let attached = program::attach(&mut this.loaded, iface, config.attach_mode, Some(&link))?;
        let created = this.created.as_mut().expect("set above");
        match attached {
            Attached::TookOver => created.took_over = true,
            Attached::Fresh { pinned, .. } => created.link = pinned,
        }
        this.outlives = !this.instance.bpffs.private
            && matches!(
                attached,
                Attached::TookOver | Attached::Fresh { pinned: true, .. }
            );
        this.watch = IfaceWatch::new(iface, config.attach_mode, link);
        created.state = !this.instance.state_file().exists();
        pins::write_state(&this.instance, &state(config, &this.instance))?;
        if let Some(m) = migration {
            // Taken over: the old pins are not to be migrated again.
            created.migrate_from = None;
            if let Err(e) = m.finish(&this.loaded) {
                warn!(
                    "{e:#}: the migrated table is recording, but the next start migrates again from the old pins"
                );
            }
        }
        info!(
            "watching UDP port {} on {iface}: timeout {}, sweep every {}, up to {} hosts, {}",
            config.port,
            super::timeout_text(config.timeout, config.auto),
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

/// Loads the program with `config`'s settings, its maps pinned for `inst`.
fn load(config: &Config, inst: &Instance) -> Result<Loaded> {
    program::load_with(
        settings(config),
        config.auth.as_ref(),
        Some(&inst.maps_dir()),
    )
}

fn settings(config: &Config) -> Settings {
    Settings {
        port: config.port,
        pass_heartbeats: config.pass_heartbeats,
        max_hosts: config.max_hosts,
        max_bare_hosts: config.max_bare_hosts,
        any_destination: config.any_destination,
        ..Settings::default()
    }
}

/// As `load`, carrying the hosts of an older layout's pins over (see
/// `migrate`) where `prepare` found them; where they cannot be, they are
/// replaced as before. A program the kernel refuses is an error: the old
/// pins then stay for a build that loads.
fn load_or_migrate(
    config: &Config,
    inst: &Instance,
    created: &mut Created,
) -> Result<(Loaded, Option<migrate::Migration>)> {
    let Some(old) = created.migrate_from.clone() else {
        return Ok((load(config, inst)?, None));
    };
    let m = match migrate::Migration::begin(inst, &old) {
        Ok(m) => m,
        Err(e) => {
            pins::replace_older(inst, created, &e)?;
            return Ok((load(config, inst)?, None));
        }
    };
    if m.capacity() != config.max_hosts {
        warn!(
            "--max-hosts {} differs from the migrated table's {}: keeping {} and the hosts in it (`hb detach` first to start over with a new size)",
            config.max_hosts,
            m.capacity(),
            m.capacity()
        );
    }
    let settings = Settings {
        max_hosts: m.capacity(),
        ..settings(config)
    };
    let loaded = program::load_with(settings, config.auth.as_ref(), Some(m.staging()))?;
    if let Err(e) = m.seed(&loaded, config.auth.is_some()) {
        drop(loaded);
        pins::replace_older(inst, created, &e)?;
        return Ok((load(config, inst)?, None));
    }
    Ok((loaded, Some(m)))
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
fn state(config: &Config, inst: &Instance) -> pins::State {
    pins::State {
        pid: std::process::id(),
        layout: pins::LAYOUT_VERSION,
        port: config.port,
        timeout_ms: config.timeout.as_millis() as u64,
        sweep_ms: config.sweep.as_millis() as u64,
        max_hosts: config.max_hosts,
        started: timestamp(std::time::SystemTime::now()),
        auth: auth_name(config.auth.as_ref()).to_owned(),
        netns_cookie: inst.netns_cookie,
        auto: config.auto.map(pins::AutoBounds::of),
    }
}

impl Ingest for XdpIngest {
    fn kind(&self) -> &'static str {
        "xdp"
    }

    fn table(&self) -> &dyn Table {
        &self.loaded.table
    }

    fn set_timeout(&mut self, timeout: Duration, auto: Option<crate::track::adaptive::Policy>) {
        let Some(mut state) = pins::last_state(&self.instance) else {
            return;
        };
        state.timeout_ms = timeout.as_millis() as u64;
        state.auto = auto.map(pins::AutoBounds::of);
        if let Err(e) = pins::write_state(&self.instance, &state) {
            warn!("{e:#}: hb status judges by the old timeout");
        }
    }

    fn begin(&mut self, timeout: Duration) -> Result<Tracker> {
        let words = self.loaded.take_tracker_words()?;
        let tracker = Tracker::resume(
            timeout.as_nanos() as u64,
            Words::Shared(Box::new(words)),
            self.loaded.table.capacity(),
            self.loaded.table.last_seen(),
            self.loaded.table.epoch_ns(),
        );
        if tracker.resumed() {
            let census = tracker.census();
            info!(
                "carrying on from the last collector on {}: {} hosts known, {} silent; only changes since its last sweep are reported",
                self.instance.iface, census.hosts, census.silent
            );
        }
        self.created = None;
        Ok(tracker)
    }

    fn fleet_file(&self) -> Option<std::path::PathBuf> {
        self.outlives.then(|| self.instance.fleet_file())
    }

    fn on_tick(&mut self, _ev: &mut EventLoop) -> Result<()> {
        self.watch.check(&mut self.loaded);
        if let Some(local) = self.local.as_mut() {
            local.check(&mut self.loaded.local);
        }
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
        let iface = &self.instance.iface;
        if signal != "SIGUSR2" {
            info!("{signal}: detaching from {iface}");
        } else if self.outlives {
            info!(
                "SIGUSR2: stopping for a restart; the program stays attached to {iface} and keeps recording, the next `hb run` carries on"
            );
            self.detach = false;
        } else {
            info!(
                "SIGUSR2: stopping; the program cannot outlive hb here (see the warning at start), so it detaches from {iface} and the next `hb run` starts from an empty table"
            );
        }
    }

    /// With `detach`, unpins the link (this process's references are then
    /// the last ones: dropping the program detaches it) and removes the
    /// pins; without, leaves the program recording for the next collector.
    fn finish(mut self: Box<Self>) {
        self.created = None;
        drop(self.kernel_log.take());
        if self.detach {
            pins::remove(&self.instance);
            if let Some(lock) = self.lock.take() {
                lock.remove();
            }
        }
    }
}

impl Drop for XdpIngest {
    fn drop(&mut self) {
        if let Some(created) = self.created.take() {
            pins::undo(&self.instance, &created);
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
