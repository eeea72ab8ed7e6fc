//! A collector seen from outside, as an operator sees it: signals and how
//! it exits, `hb status`, `hb detach` and other one-shot commands, what it
//! leaves on the machine (pins, the state file, the program on the
//! interface), whether heartbeats reach a socket, its stderr, and the
//! timestamps it writes. `hb` is
//! the binary under test (integration tests pass `env!("CARGO_BIN_EXE_hb")`).
//! Failures panic, as a test should.

use std::{
    ffi::OsStr,
    fs::File,
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{collector::Collector, netns::Netns};

/// Sends `signal` to `child`.
pub fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: signalling our own child, which is not reaped yet.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill({}, {signal})", child.id());
}

/// Waits up to `within` for `child` to exit; returns its exit code (`None`
/// if a signal ended it). Panics if it is still running then.
pub fn wait_exit(child: &mut Child, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the child") {
            return status.code();
        }
        assert!(
            Instant::now() < deadline,
            "pid {} still running after {within:?}",
            child.id()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `hb ARGS` in `ns` to completion (bounded: killed after 20 s).
pub fn hb(hb: impl AsRef<OsStr>, ns: &Netns, args: &[&str]) -> Output {
    let mut cmd = ns.command(hb).expect("entering the namespace");
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("waiting for hb").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("hb {args:?} did not finish within 20 s");
        }
        thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("reading hb's output")
}

/// `hb status --iface IFACE --format json` in `ns`, parsed; panics unless
/// its exit status is the README's for what it reports: 0 while `hb run`
/// runs, 3 when it does not.
pub fn status(hb_path: impl AsRef<OsStr>, ns: &Netns, iface: &str) -> serde_json::Value {
    let out = hb(
        hb_path,
        ns,
        &["status", "--iface", iface, "--format", "json"],
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("hb status printed no JSON ({e}): {out:?}"));
    let expected = if status["collector_running"] == true {
        0
    } else {
        3
    };
    assert_eq!(out.status.code(), Some(expected), "hb status: {out:?}");
    status
}

/// A cumulative packet counter from `hb status --format json`.
pub fn packets(status: &serde_json::Value, counter: &str) -> u64 {
    status["packets"][counter]
        .as_u64()
        .unwrap_or_else(|| panic!("no packets.{counter} in {status}"))
}

/// The collector's pin directory and state file for `iface`, as named from
/// inside `ns` (they carry the namespace's inode).
pub fn pins(ns: &Netns, iface: &str) -> (PathBuf, PathBuf) {
    let iface = iface.to_owned();
    ns.within(move || {
        (
            hb_userspace::xdp::pin_dir(&iface),
            hb_userspace::xdp::state_file(&iface),
        )
    })
    .expect("running in the namespace")
}

/// Whether `ip link` shows an XDP program on `iface` in `ns`.
pub fn xdp_attached(ns: &Netns, iface: &str) -> bool {
    let out = Command::new("ip")
        .args(["-n", &ns.name, "link", "show", iface])
        .output()
        .expect("running ip");
    assert!(out.status.success(), "ip link show {iface}: {out:?}");
    String::from_utf8_lossy(&out.stdout).contains("xdp")
}

/// Waits up to `within` for `ip link` to show no XDP program on `iface` (a
/// link whose last reference went away is released by the kernel shortly
/// after); returns whether it is gone.
pub fn xdp_gone_within(ns: &Netns, iface: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if !xdp_attached(ns, iface) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a `PyHB` sent from `from` (an address in `client`) to `to` (an
/// address and port in `server`) reaches a UDP socket bound there, within
/// three tries: whether no program is filtering heartbeats to that port.
pub fn heartbeat_reaches_socket(
    server: &Netns,
    client: &Netns,
    from: SocketAddr,
    to: SocketAddr,
) -> bool {
    let rx = server
        .within(move || UdpSocket::bind(to).expect("binding the heartbeat port"))
        .expect("running in the namespace");
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let tx = client
        .within(move || UdpSocket::bind(from).expect("binding the client's address"))
        .expect("running in the namespace");
    let mut buf = [0u8; 64];
    (0..3).any(|_| {
        tx.send_to(b"PyHB", to).unwrap();
        rx.recv(&mut buf).is_ok()
    })
}

/// A file that takes a process's stderr, removed on drop.
pub struct Log {
    pub path: PathBuf,
}

impl Log {
    /// A fresh file named after `tag` and this process.
    pub fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("hb-{tag}-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Self { path }
    }

    /// A handle to give a command as its stderr (appends, so that several
    /// processes can share one log).
    pub fn stdio(&self) -> Stdio {
        File::options()
            .create(true)
            .append(true)
            .open(&self.path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.path.display()))
            .into()
    }

    /// What was written so far.
    pub fn read(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `hb run ARGS --format json` in `ns`, its stderr in `log`; returns it once
/// it has printed its first summary (it is then attached and sweeping).
pub fn start_logged(
    hb: impl AsRef<OsStr>,
    ns: &Netns,
    args: &[&str],
    log: &Log,
) -> (Collector, Vec<serde_json::Value>) {
    let mut cmd = ns.command(hb).expect("entering the namespace");
    cmd.arg("run")
        .args(args)
        .args(["--format", "json"])
        .stdout(Stdio::piped())
        .stderr(log.stdio());
    let c = Collector::spawn(cmd);
    let (first, mut seen) = c.wait_for(Duration::from_secs(15), |v| v["event"] == "summary");
    let first = first.unwrap_or_else(|| {
        panic!(
            "hb run {args:?} printed no summary; saw {seen:?}; stderr:\n{}",
            log.read()
        )
    });
    seen.push(first.1);
    (c, seen)
}

/// Milliseconds since the Unix epoch of an RFC 3339 UTC timestamp as hb
/// writes them (`2026-11-25T02:07:17.636Z`), or `None` if it is not one.
pub fn timestamp_ms(ts: &str) -> Option<u64> {
    let (date, time) = ts.strip_suffix('Z')?.split_once('T')?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let (hms, ms) = time.split_once('.')?;
    let t: Vec<i64> = hms
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let (&[year, month, day], &[h, m, s]) = (d.as_slice(), t.as_slice()) else {
        return None;
    };
    let ms: i64 = ms.parse().ok()?;
    // Days since the epoch (Howard Hinnant's days_from_civil).
    let (y, mp) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    u64::try_from((((days * 24 + h) * 60 + m) * 60 + s) * 1000 + ms).ok()
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hb_timestamps() {
        assert_eq!(timestamp_ms("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(
            timestamp_ms("2026-11-25T02:07:17.636Z"),
            Some(1_795_572_437_636)
        );
        assert_eq!(
            timestamp_ms("2024-02-29T23:59:59.999Z"),
            Some(1_709_251_199_999)
        );
        assert_eq!(timestamp_ms("2026-11-25 02:07:17"), None);
    }
}
