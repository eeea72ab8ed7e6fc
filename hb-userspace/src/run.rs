//! `hb run`: attach, sweep on every tick, stop cleanly on SIGINT/SIGTERM.

use std::os::fd::AsRawFd as _;

use anyhow::{Context as _, Result, anyhow};
use hb_common::AuthMode;
use log::{info, warn};

use crate::{
    cli::{Ingest, RunArgs},
    clock::monotonic_ns,
    counters::Packets,
    endpoints,
    event_loop::{EventLoop, FIRST_USER_TOKEN, Wake},
    http::HttpServer,
    key, pins,
    program::{self, AuthSettings, Settings},
    socket::SocketIngest,
    sweeper::Sweeper,
    table::Hosts,
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
    // Signals are routed to the loop before anything is attached, so a
    // Ctrl-C at any point still detaches.
    let mut events = EventLoop::new(args.sweep)?;
    let use_xdp = match args.ingest {
        Ingest::Xdp => {
            program::check_environment()?;
            true
        }
        Ingest::Socket => false,
        Ingest::Auto => match program::check_environment().and_then(|()| program::probe()) {
            Ok(()) => true,
            Err(e) if auth.is_some() => {
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
    let mut source = if use_xdp {
        let iface = args.iface.clone().context("--iface is required for XDP")?;
        Source::Xdp(XdpSource::start(&args, iface, auth.as_ref(), &mut events)?)
    } else {
        let addr = std::net::SocketAddr::new(args.listen, args.port);
        let mut socket = SocketIngest::bind(addr, args.max_hosts as usize)?;
        socket.start(&mut events)?;
        info!(
            "socket mode: receiving heartbeats on UDP {}: timeout {}, sweep every {}, up to {} hosts",
            socket.local_addr()?,
            humantime::format_duration(args.timeout),
            humantime::format_duration(args.sweep),
            args.max_hosts,
        );
        Source::Socket(socket)
    };

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

    let tracker = match &mut source {
        Source::Xdp(xdp) => xdp.tracker(&args)?,
        Source::Socket(_) => Tracker::new(args.timeout.as_nanos() as u64),
    };
    let mut sweeper = Sweeper::with_tracker(tracker, args.format, Vec::new());
    if let Source::Xdp(xdp) = &mut source {
        // From here on, state is left for the next collector unless the
        // operator asks to detach.
        xdp.pins_armed = false;
    }
    let mut detach = true;
    let mut stdout = RingWriter::stdout();
    loop {
        match events.wait()? {
            Wake::Tick => {
                if let Source::Xdp(xdp) = &mut source {
                    xdp.iface.check(&mut xdp.loaded, &xdp.name, &args);
                }
                let (hosts, packets) = source.tables();
                sweeper.sweep(hosts, packets)?;
                stdout.write(&mut events, &sweeper.out)?;
                sweeper.out.clear();
            }
            Wake::Done {
                token: writer::TOKEN,
                result,
                ..
            } => stdout.complete(&mut events, result)?,
            Wake::Done {
                token,
                result,
                flags,
            } if SocketIngest::owns(token) => {
                if let Source::Socket(socket) = &mut source {
                    socket.complete(&mut events, token, result, flags, monotonic_ns())?;
                }
            }
            Wake::Done { token, result, .. } if HttpServer::owns(token) => {
                if let Some(server) = http.as_mut() {
                    let (hosts, _) = source.tables();
                    let ctx = endpoints::Context {
                        summary: &sweeper.summary,
                        events: &sweeper.events,
                        tracker: &sweeper.tracker,
                        table: hosts,
                        ingest: source.name(),
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
                if let Source::Xdp(xdp) = &mut source
                    && let Some(logger) = xdp.kernel_log.as_mut()
                {
                    logger.flush();
                    events.watch(logger.as_raw_fd(), LOG_TOKEN)?;
                }
            }
            Wake::Readable(_) => {}
            Wake::Stop("SIGUSR2") if matches!(source, Source::Xdp(_)) => {
                info!(
                    "SIGUSR2: stopping for a restart; the program stays attached to {} and keeps recording, the next `hb run` carries on",
                    args.iface.as_deref().unwrap_or_default()
                );
                detach = false;
                break;
            }
            Wake::Stop(signal) => {
                match &source {
                    Source::Xdp(xdp) => info!("{signal}: detaching from {}", xdp.name),
                    Source::Socket(_) => info!("{signal}: stopping"),
                }
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
                ..
            } => stdout.complete(&mut events, result)?,
            Wake::Stop(_) => break,
            _ => {}
        }
    }
    if !stdout.busy() {
        stdout.finish()?;
    }
    if let Source::Xdp(xdp) = source {
        xdp.finish(detach);
    }
    Ok(())
}

/// Where heartbeats come from.
// One value per process: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Source {
    Xdp(XdpSource),
    Socket(SocketIngest),
}

impl Source {
    fn tables(&self) -> (&dyn Hosts, &dyn Packets) {
        match self {
            Self::Xdp(x) => (&x.loaded.table, &x.loaded.counters),
            Self::Socket(s) => (&s.table, &s.table),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Xdp(_) => "xdp",
            Self::Socket(_) => "socket",
        }
    }
}

/// The XDP program attached to an interface, with its pinned state.
struct XdpSource {
    name: String,
    loaded: program::Loaded,
    kernel_log: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    iface: IfaceWatch,
    /// While set, dropping this removes the pins (a failure during start-up
    /// that must leave nothing behind).
    pins_armed: bool,
}

impl XdpSource {
    fn start(
        args: &RunArgs,
        iface: String,
        auth: Option<&AuthSettings>,
        events: &mut EventLoop,
    ) -> Result<Self> {
        if let Some(other) = pins::running(&iface)
            && other.pid != std::process::id()
        {
            anyhow::bail!(
                "another hb run (pid {}) is already watching {iface}: stop it first",
                other.pid
            );
        }
        // Unknown interfaces fail here, before anything is pinned for them.
        if if_index(&iface).is_none() {
            anyhow::bail!(
                "unknown interface `{iface}`: pick one from `ip link` (in this network namespace)"
            );
        }
        let resuming = pins::prepare(&iface)?;
        // Until the loop runs, a failure undoes what this run pinned, but
        // never what an earlier collector left to carry on from.
        let mut this = Self {
            iface: IfaceWatch { index: None },
            name: iface.clone(),
            loaded: match Self::load(args, &iface, auth) {
                Ok(loaded) => loaded,
                Err(e) => {
                    if !resuming {
                        pins::remove(&iface);
                    }
                    return Err(e);
                }
            },
            kernel_log: None,
            pins_armed: !resuming,
        };
        this.kernel_log = match aya_log::EbpfLogger::init(&mut this.loaded.ebpf) {
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
            &mut this.loaded,
            &iface,
            args.xdp_mode,
            Some(&pins::link_path(&iface)),
        )?;
        this.iface.index = if_index(&iface);
        pins::write_state(
            &iface,
            &pins::State {
                pid: std::process::id(),
                layout: pins::LAYOUT_VERSION,
                port: args.port,
                timeout_ms: args.timeout.as_millis() as u64,
                sweep_ms: args.sweep.as_millis() as u64,
                max_hosts: args.max_hosts,
                started: crate::output::timestamp(std::time::SystemTime::now()),
                auth: auth_name(auth).to_owned(),
            },
        )?;
        info!(
            "watching UDP port {} on {iface}: timeout {}, sweep every {}, up to {} hosts, {}",
            args.port,
            humantime::format_duration(args.timeout),
            humantime::format_duration(args.sweep),
            args.max_hosts,
            match program::auth_mode(auth) {
                AuthMode::Off => "classic PyHB heartbeats only (no --key-file)",
                AuthMode::Optional => "signed heartbeats verified, bare PyHB accepted",
                AuthMode::Required => "signed heartbeats only (bare PyHB ignored)",
            }
        );
        Ok(this)
    }

    fn load(args: &RunArgs, iface: &str, auth: Option<&AuthSettings>) -> Result<program::Loaded> {
        program::load_with(
            Settings {
                port: args.port,
                pass_heartbeats: args.pass_heartbeats,
                max_hosts: args.max_hosts,
            },
            auth,
            Some(&pins::maps_dir(iface)),
        )
    }

    /// The tracker, carrying on from the state the last collector pinned.
    fn tracker(&mut self, args: &RunArgs) -> Result<Tracker> {
        let words = self.loaded.take_tracker_words()?;
        let tracker = Tracker::resume(
            args.timeout.as_nanos() as u64,
            Words::Shared(Box::new(words)),
            self.loaded.table.capacity(),
            self.loaded.table.last_seen(),
        );
        if tracker.resumed() {
            let census = tracker.census();
            info!(
                "carrying on from the last collector on {}: {} hosts known, {} silent; only changes since its last sweep are reported",
                self.name, census.hosts, census.silent
            );
        }
        Ok(tracker)
    }

    /// Stops: with `detach`, unpins the link (this process's references are
    /// then the last ones: dropping the program detaches it) and removes the
    /// pins; without, leaves the program recording for the next collector.
    fn finish(mut self, detach: bool) {
        self.pins_armed = false;
        drop(self.kernel_log.take());
        if detach {
            pins::remove(&self.name);
        }
    }
}

impl Drop for XdpSource {
    fn drop(&mut self) {
        if self.pins_armed {
            pins::remove(&self.name);
        }
    }
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
    fn check(&mut self, loaded: &mut program::Loaded, iface: &str, args: &RunArgs) {
        let now = if_index(iface);
        if now == self.index {
            return;
        }
        if now.is_none() {
            warn!(
                "{iface} is gone: no heartbeats can arrive, its hosts will be reported silent; hb attaches again when {iface} is back"
            );
            self.index = None;
            return;
        }
        // Back (or replaced by a new interface of that name).
        match program::attach(loaded, iface, args.xdp_mode, Some(&pins::link_path(iface))) {
            Ok(_) => {
                info!("{iface} is back: attached again");
                self.index = now;
            }
            // Tried again on the next sweep.
            Err(e) => warn!("attaching to {iface} again: {e:#}"),
        }
    }
}

/// The auth mode as the state file and `hb status` name it.
fn auth_name(auth: Option<&AuthSettings>) -> &'static str {
    match program::auth_mode(auth) {
        AuthMode::Off => "off",
        AuthMode::Optional => "optional",
        AuthMode::Required => "required",
    }
}

fn if_index(iface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(iface).ok()?;
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}
