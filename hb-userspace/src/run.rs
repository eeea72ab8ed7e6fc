//! `hb run`: attach, sweep on every tick, stop cleanly on SIGINT/SIGTERM.

use std::os::fd::AsRawFd as _;

use anyhow::{Result, anyhow};
use hb_common::AuthMode;
use log::{info, warn};

use crate::{
    cli::RunArgs,
    endpoints,
    event_loop::{EventLoop, FIRST_USER_TOKEN, Wake},
    http::HttpServer,
    key, pins,
    program::{self, AuthSettings, Settings},
    sweeper::Sweeper,
    tracker::{Tracker, Words},
    writer::{self, RingWriter},
};

const LOG_TOKEN: u64 = FIRST_USER_TOKEN;

pub fn run(args: RunArgs) -> Result<()> {
    args.validate().map_err(|e| anyhow!(e))?;
    // Before anything is loaded: a bad key file leaves nothing behind.
    let auth = match &args.key_file {
        Some(path) => Some(AuthSettings {
            key: key::read(path)?,
            require: args.require_auth,
        }),
        None => None,
    };
    program::check_environment()?;
    // Signals are routed to the loop before anything is attached, so a
    // Ctrl-C at any point still detaches.
    let mut events = EventLoop::new(args.sweep)?;
    if let Some(other) = pins::running(&args.iface)
        && other.pid != std::process::id()
    {
        anyhow::bail!(
            "another hb run (pid {}) is already watching {}: stop it first",
            other.pid,
            args.iface
        );
    }
    // Unknown interfaces fail here, before anything is pinned for them.
    if nix_if_index(&args.iface).is_none() {
        anyhow::bail!(
            "unknown interface `{}`: pick one from `ip link` (in this network namespace)",
            args.iface
        );
    }
    let resuming = pins::prepare(&args.iface)?;
    // Until the loop runs, a failure undoes what this run pinned, but never
    // what an earlier collector left to carry on from.
    let mut pins_guard = PinGuard {
        iface: &args.iface,
        armed: !resuming,
    };
    let mut loaded = program::load_with(
        Settings {
            port: args.port,
            pass_heartbeats: args.pass_heartbeats,
            max_hosts: args.max_hosts,
        },
        auth.as_ref(),
        Some(&pins::maps_dir(&args.iface)),
    )?;
    let mut kernel_log = match aya_log::EbpfLogger::init(&mut loaded.ebpf) {
        Ok(logger) => {
            events.watch(logger.as_raw_fd(), LOG_TOKEN)?;
            Some(logger)
        }
        Err(e) => {
            warn!("kernel-side log unavailable: {e}");
            None
        }
    };
    program::attach(
        &mut loaded,
        &args.iface,
        args.xdp_mode,
        Some(&pins::link_path(&args.iface)),
    )?;
    let mut iface = IfaceWatch {
        index: nix_if_index(&args.iface),
    };
    pins::write_state(
        &args.iface,
        &pins::State {
            pid: std::process::id(),
            layout: pins::LAYOUT_VERSION,
            port: args.port,
            timeout_ms: args.timeout.as_millis() as u64,
            sweep_ms: args.sweep.as_millis() as u64,
            max_hosts: args.max_hosts,
            started: crate::output::timestamp(std::time::SystemTime::now()),
            auth: auth_name(auth.as_ref()).to_owned(),
        },
    )?;
    info!(
        "watching UDP port {} on {}: timeout {}, sweep every {}, up to {} hosts, {}",
        args.port,
        args.iface,
        humantime::format_duration(args.timeout),
        humantime::format_duration(args.sweep),
        args.max_hosts,
        match program::auth_mode(auth.as_ref()) {
            AuthMode::Off => "classic PyHB heartbeats only (no --key-file)",
            AuthMode::Optional => "signed heartbeats verified, bare PyHB accepted",
            AuthMode::Required => "signed heartbeats only (bare PyHB ignored)",
        }
    );

    let mut http = match args.metrics_listen {
        Some(addr) => {
            let mut server = HttpServer::bind(addr)?;
            server.start(&mut events)?;
            info!(
                "serving /metrics and /silent on http://{}",
                server.local_addr()?
            );
            Some(server)
        }
        None => None,
    };

    let words = loaded.take_tracker_words()?;
    let tracker = Tracker::resume(
        args.timeout.as_nanos() as u64,
        Words::Shared(Box::new(words)),
        loaded.table.capacity(),
        loaded.table.last_seen(),
    );
    if tracker.resumed() {
        let census = tracker.census();
        info!(
            "carrying on from the last collector on {}: {} hosts known, {} silent; only changes since its last sweep are reported",
            args.iface, census.hosts, census.silent
        );
    }
    let mut sweeper = Sweeper::with_tracker(tracker, args.format, Vec::new());
    // From here on, state is left for the next collector unless the
    // operator asks to detach.
    pins_guard.armed = false;
    let mut detach = true;
    let mut stdout = RingWriter::stdout();
    loop {
        match events.wait()? {
            Wake::Tick => {
                iface.check(&mut loaded, &args);
                sweeper.sweep(&loaded.table, &loaded.counters)?;
                stdout.write(&mut events, &sweeper.out)?;
                sweeper.out.clear();
            }
            Wake::Done {
                token: writer::TOKEN,
                result,
            } => stdout.complete(&mut events, result)?,
            Wake::Done { token, result } if HttpServer::owns(token) => {
                if let Some(server) = http.as_mut() {
                    let ctx = endpoints::Context {
                        summary: &sweeper.summary,
                        events: &sweeper.events,
                        tracker: &sweeper.tracker,
                        table: &loaded.table,
                        timeout: args.timeout,
                        silent_series: args.metrics_silent_hosts,
                    };
                    server.complete(&mut events, token, result, &mut |req| {
                        endpoints::handle(req, &ctx)
                    })?;
                }
            }
            Wake::Done { .. } => {}
            Wake::Readable(LOG_TOKEN) => {
                if let Some(logger) = kernel_log.as_mut() {
                    logger.flush();
                    events.watch(logger.as_raw_fd(), LOG_TOKEN)?;
                }
            }
            Wake::Readable(_) => {}
            Wake::Stop("SIGUSR2") => {
                info!(
                    "SIGUSR2: stopping for a restart; the program stays attached to {} and keeps recording, the next `hb run` carries on",
                    args.iface
                );
                detach = false;
                break;
            }
            Wake::Stop(signal) => {
                info!("{signal}: detaching from {}", args.iface);
                break;
            }
        }
    }
    // Lines already queued are written before exiting.
    // A second signal gives up on a stdout reader that is stuck.
    while stdout.busy() {
        match events.wait()? {
            Wake::Done {
                token: writer::TOKEN,
                result,
            } => stdout.complete(&mut events, result)?,
            Wake::Stop(_) => break,
            _ => {}
        }
    }
    if !stdout.busy() {
        stdout.finish()?;
    }
    drop(kernel_log);
    if detach {
        // Unpinning the link leaves this process's references as the last
        // ones: dropping the program detaches it.
        pins::remove(&args.iface);
    }
    drop(loaded);
    Ok(())
}

/// Follows the interface: when it disappears (driver reload, veth deleted)
/// the program's link dies with it; hb keeps sweeping (its hosts go silent,
/// which is the truth), and attaches again when an interface of that name
/// is back.
struct IfaceWatch {
    /// The index attached to, or None while the interface is gone.
    index: Option<u32>,
}

impl IfaceWatch {
    fn check(&mut self, loaded: &mut program::Loaded, args: &RunArgs) {
        let now = nix_if_index(&args.iface);
        if now == self.index {
            return;
        }
        if now.is_none() {
            warn!(
                "{} is gone: no heartbeats can arrive, its hosts will be reported silent; hb attaches again when {} is back",
                args.iface, args.iface
            );
            self.index = None;
            return;
        }
        // Back (or replaced by a new interface of that name).
        match program::attach(
            loaded,
            &args.iface,
            args.xdp_mode,
            Some(&pins::link_path(&args.iface)),
        ) {
            Ok(_) => {
                info!("{} is back: attached again", args.iface);
                self.index = now;
            }
            // Tried again on the next sweep.
            Err(e) => warn!("attaching to {} again: {e:#}", args.iface),
        }
    }
}

/// Removes the pins when armed and dropped (a failure during start-up).
struct PinGuard<'a> {
    iface: &'a str,
    armed: bool,
}

/// The auth mode as the state file and `hb status` name it.
fn auth_name(auth: Option<&AuthSettings>) -> &'static str {
    match program::auth_mode(auth) {
        AuthMode::Off => "off",
        AuthMode::Optional => "optional",
        AuthMode::Required => "required",
    }
}

impl Drop for PinGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            pins::remove(self.iface);
        }
    }
}

fn nix_if_index(iface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(iface).ok()?;
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}
