//! The service manager's notification protocol (sd_notify(3)), written out:
//! one datagram of `KEY=VALUE` lines to the unix socket named by
//! `NOTIFY_SOCKET` (a path, or an abstract name written `@name`). Without
//! `NOTIFY_SOCKET` (not started by systemd with `Type=notify`) every call
//! does nothing.
//!
//! `hb run` tells systemd it is ready once its program is attached and the
//! first sweep ran, pings the watchdog from the sweep tick (so a loop that
//! stops ticking is restarted), and says when it reloads and stops.
//!
//! A failed send is logged once and otherwise ignored: the collector keeps
//! collecting whatever happens to its supervisor's socket.

use std::{
    env, io,
    os::unix::net::{SocketAddr, UnixDatagram},
    time::{Duration, Instant},
};

use log::{debug, warn};

pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Watchdog>,
    ready: bool,
    /// A send failed and was logged: later failures are only debug lines.
    failed: bool,
}

/// `WATCHDOG=1` pings: at least every `every`, from the sweep tick.
struct Watchdog {
    /// Half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3) recommends.
    every: Duration,
    /// The tick period.
    sweep: Duration,
    last: Option<Instant>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`. `sweep`
    /// is the tick period the watchdog is pinged at.
    pub fn from_env(sweep: Duration) -> Self {
        let socket = env::var_os("NOTIFY_SOCKET").and_then(|name| {
            let name = name.to_string_lossy().into_owned();
            match connect(&name) {
                Ok(s) => Some(s),
                Err(e) => {
                    warn!("NOTIFY_SOCKET={name}: {e}; not notifying the service manager");
                    None
                }
            }
        });
        let watchdog = socket.as_ref().and_then(|_| watchdog_from_env(sweep));
        Self {
            socket,
            watchdog,
            ready: false,
            failed: false,
        }
    }

    /// Called after every sweep: the first one says the collector is
    /// ready, and the watchdog is pinged when a ping is due before the next
    /// tick.
    pub fn swept(&mut self) {
        if !self.ready {
            self.ready();
        }
        let now = Instant::now();
        if let Some(w) = self.watchdog.as_mut()
            // Waiting for the next tick would leave more than `every`
            // between two pings.
            && w.last.is_none_or(|last| now.duration_since(last) + w.sweep > w.every)
        {
            w.last = Some(now);
            self.send("WATCHDOG=1");
        }
    }

    /// `READY=1` after a reload (whether it took or was refused). Before
    /// the first sweep, nothing: that sweep says it.
    pub fn reloaded(&mut self) {
        if self.ready {
            self.send("READY=1");
        }
    }

    fn ready(&mut self) {
        self.ready = true;
        self.send("READY=1");
    }

    /// `RELOADING=1` with the time it began (systemd 253 wants it). Before
    /// the first `READY=1` a reload is part of the start: nothing is said.
    pub fn reloading(&mut self) {
        if !self.ready {
            return;
        }
        let msg = format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            crate::clock::monotonic_ns() / 1000
        );
        self.send(&msg);
    }

    /// `STOPPING=1` when `signal` stops the collector. Not for SIGUSR2,
    /// which ends this process for the next to carry on, the service
    /// staying up: told nothing, systemd sees a process that exited on its
    /// own and `Restart=always` starts the next one, without the unit
    /// passing through "deactivating". (systemd 252 restarts it after
    /// `STOPPING=1` too; only `systemctl stop` forbids the restart.)
    pub fn stopping(&mut self, signal: &str) {
        if signal != "SIGUSR2" {
            self.send("STOPPING=1");
        }
    }

    fn send(&mut self, msg: &str) {
        let Some((sock, addr)) = &self.socket else {
            return;
        };
        match sock.send_to_addr(msg.as_bytes(), addr) {
            Ok(_) => debug!("sd_notify: {}", msg.replace('\n', " ")),
            Err(e) if !self.failed => {
                self.failed = true;
                warn!("telling the service manager {msg:?} failed: {e}");
            }
            Err(e) => debug!("telling the service manager {msg:?} failed: {e}"),
        }
    }
}

/// An unbound datagram socket and the address of `name`: a path, or an
/// abstract name written with a leading `@`.
fn connect(name: &str) -> io::Result<(UnixDatagram, SocketAddr)> {
    let addr = if let Some(abs) = name.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt as _;
        SocketAddr::from_abstract_name(abs.as_bytes())?
    } else if name.starts_with('/') {
        SocketAddr::from_pathname(name)?
    } else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "neither a path nor an abstract name (@…)",
        ));
    };
    Ok((UnixDatagram::unbound()?, addr))
}

/// The watchdog systemd armed for this process, if any: `WATCHDOG_USEC`,
/// and `WATCHDOG_PID` (when set) naming this process.
fn watchdog_from_env(sweep: Duration) -> Option<Watchdog> {
    let usec = env::var("WATCHDOG_USEC").ok()?;
    let Some(usec) = usec.parse::<u64>().ok().filter(|&u| u > 0) else {
        warn!("WATCHDOG_USEC={usec} is not a number of microseconds: not pinging the watchdog");
        return None;
    };
    if let Ok(pid) = env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        debug!("WATCHDOG_PID={pid} is not this process: not pinging the watchdog");
        return None;
    }
    let every = Duration::from_micros(usec) / 2;
    if sweep >= every {
        warn!(
            "the watchdog ({}) is shorter than two sweeps ({} each): pinging on every sweep, but a slow one may get hb restarted; set WatchdogSec= to more than twice --sweep",
            humantime::format_duration(Duration::from_micros(usec)),
            humantime::format_duration(sweep)
        );
    }
    Some(Watchdog {
        every,
        sweep,
        // The first ping comes with the first sweep.
        last: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abstract_and_path_names() {
        use std::os::linux::net::SocketAddrExt as _;
        let (_, a) = connect("@hb/notify").unwrap();
        assert_eq!(a.as_abstract_name(), Some(&b"hb/notify"[..]));
        let (_, p) = connect("/run/systemd/notify").unwrap();
        assert_eq!(
            p.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        assert!(connect("relative").is_err());
    }
}
