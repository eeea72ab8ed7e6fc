//! hb as a systemd service (docs/operations.md, "Running as a service"):
//! the notification protocol against a notify socket the test binds (READY
//! once the program is attached and the first sweep ran, watchdog pings at
//! half `WATCHDOG_USEC` and only for `WATCHDOG_PID`, RELOADING/READY around
//! SIGHUP, STOPPING on SIGTERM), the unit file (`systemd-analyze verify`,
//! and hb working under exactly its capability bounding set), and
//! `hb completions` / `hb man` against clap's own definition of the CLI.
//!
//! PID 1 here need not be systemd: the service manager's side of each
//! promise is played by the test (its socket, its environment, setpriv for
//! the bounding set).

use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use clap::{CommandFactory as _, ValueEnum as _};
use hb_testkit::{
    collector::{self, Collector, is_event},
    control::{self, Log, signal, wait_exit, xdp_attached},
    netns::Link,
};
use hb_userspace::Cli;

/// The binary under test.
const HB: &str = env!("CARGO_BIN_EXE_hb");
const SWEEP: Duration = Duration::from_millis(500);
const SERVER: &str = "198.18.41.1";
const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../contrib/systemd/hb.service");

/// The service manager's end: a unix datagram socket bound where
/// `NOTIFY_SOCKET` points, its messages read on a thread with the time each
/// arrived.
struct NotifySocket {
    /// What `NOTIFY_SOCKET` is set to.
    name: String,
    path: Option<PathBuf>,
    messages: mpsc::Receiver<(Instant, String)>,
}

impl NotifySocket {
    /// Bound at a path, reachable from every network namespace.
    fn at_path(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("hb-notify-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let sock =
            UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("binding {}: {e}", path.display()));
        Self::listen(sock, path.display().to_string(), Some(path))
    }

    /// An abstract name (`@…`): only reachable from this network namespace.
    fn abstract_name(tag: &str) -> Self {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("hb-notify-{tag}-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).expect("binding an abstract socket");
        Self::listen(sock, format!("@{name}"), None)
    }

    fn listen(sock: UnixDatagram, name: String, path: Option<PathBuf>) -> Self {
        let (tx, messages) = mpsc::channel();
        // Bounded: the read times out, and the thread ends once the test
        // has dropped the receiver.
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) => {
                        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                        if tx.send((Instant::now(), msg)).is_err() {
                            return;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        // Still wanted?
                        if tx.send((Instant::now(), String::new())).is_err() {
                            return;
                        }
                    }
                    Err(e) => panic!("reading the notify socket: {e}"),
                }
            }
        });
        Self {
            name,
            path,
            messages,
        }
    }

    /// The next message within `within` (keep-alive ticks skipped).
    fn next(&self, within: Duration) -> Option<(Instant, String)> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.messages.recv_timeout(left) {
                Ok((_, m)) if m.is_empty() => continue,
                Ok(msg) => return Some(msg),
                Err(_) => return None,
            }
        }
    }

    /// Every message within `window`.
    fn collect(&self, window: Duration) -> Vec<(Instant, String)> {
        let end = Instant::now() + window;
        let mut all = Vec::new();
        while let Some(m) = self.next(end.saturating_duration_since(Instant::now())) {
            all.push(m);
        }
        all
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// `hb run` on the link's collector end as systemd starts it: the notify
/// socket and watchdog in its environment, `WATCHDOG_PID` its own pid
/// (`exec` keeps the shell's) unless `watchdog_pid` names another.
fn start(
    link: &Link,
    notify: &NotifySocket,
    watchdog_usec: u64,
    watchdog_pid: Option<u32>,
    log: &Log,
) -> (Collector, Instant) {
    let pid = watchdog_pid.map_or("$$".to_string(), |p| p.to_string());
    let script = format!(
        "export WATCHDOG_PID={pid}; exec {HB} run --iface {} --ingest xdp --timeout 3s --sweep {}ms --summary-every {}ms --format json",
        link.a_if,
        SWEEP.as_millis(),
        SWEEP.as_millis()
    );
    let mut cmd = link.a.command("sh").expect("entering the namespace");
    cmd.args(["-c", &script])
        .env("NOTIFY_SOCKET", &notify.name)
        .env("WATCHDOG_USEC", watchdog_usec.to_string())
        .stdout(Stdio::piped())
        .stderr(log.stdio());
    let at = Instant::now();
    (Collector::spawn_sweeping(cmd, SWEEP), at)
}

#[test]
fn ready_after_the_first_sweep_then_watchdog_pings_then_stopping() {
    let link = Link::for_test_on("svcnot", "198.18.41", &[2]);
    let log = Log::new("svc-notify");
    let notify = NotifySocket::at_path("ready");
    // Pings due every 2 s (half of it); at a 500 ms sweep, every 3rd or 4th.
    let watchdog = Duration::from_secs(4);
    let (mut c, started) = start(&link, &notify, watchdog.as_micros() as u64, None, &log);

    // READY=1 is the first message, once the program is attached and a
    // sweep ran: not before one sweep period after the start.
    let (ready_at, msg) = notify
        .next(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no READY=1 within 15 s; stderr:\n{}", log.read()));
    assert_eq!(msg.lines().next(), Some("READY=1"), "first message {msg:?}");
    assert!(
        ready_at - started >= SWEEP,
        "READY=1 {:?} after the start, before the first sweep ({SWEEP:?})",
        ready_at - started
    );
    assert!(
        xdp_attached(&link.a, &link.a_if),
        "READY=1 but no program on {}",
        link.a_if
    );
    let (summary, seen) = c.wait_for(Duration::from_secs(5), |v| v["event"] == "summary");
    let (summary_at, _) = summary.unwrap_or_else(|| panic!("no summary; saw {seen:?}"));
    // Written in the same tick; read by two threads of a loaded machine.
    let apart = summary_at.max(ready_at) - summary_at.min(ready_at);
    assert!(
        apart < collector::SWEEP_SLACK,
        "READY=1 and the first summary are {apart:?} apart: not the same sweep"
    );

    // The collector works while it pings.
    let _beat = collector::beat(HB, &link, "198.18.41.2", SERVER, "200ms");
    let (new, seen) = c.wait_for(Duration::from_secs(6), |v| {
        is_event(v, "new", "198.18.41.2")
    });
    assert!(new.is_some(), "no `new`; saw {seen:?}");

    // Watchdog pings: at most half the watchdog apart (a late tick
    // allowed), and not on every sweep. The first comes with READY=1.
    let window = Duration::from_secs(9);
    let msgs = notify.collect(window);
    let mut pings: Vec<Instant> = Vec::new();
    for (at, m) in &msgs {
        assert_eq!(m, "WATCHDOG=1", "unexpected message while running");
        pings.push(*at);
    }
    assert!(
        pings.len() >= 4,
        "{} pings in {window:?} with a {watchdog:?} watchdog",
        pings.len()
    );
    let half = watchdog / 2;
    for pair in pings.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap <= half + collector::SWEEP_SLACK,
            "pings {gap:?} apart, more than half the watchdog ({half:?})"
        );
        assert!(
            gap >= half - SWEEP - Duration::from_millis(500),
            "pings {gap:?} apart: more often than needed for a {watchdog:?} watchdog"
        );
    }

    // SIGHUP: RELOADING=1 (with the time it began), then READY=1.
    signal(&c.proc.child, libc::SIGHUP);
    let mut after_hup = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while after_hup.len() < 2
        && let Some((_, m)) = notify.next(deadline.saturating_duration_since(Instant::now()))
    {
        if m != "WATCHDOG=1" {
            after_hup.push(m);
        }
    }
    assert_eq!(after_hup.len(), 2, "after SIGHUP: {after_hup:?}");
    assert!(
        after_hup[0].lines().any(|l| l == "RELOADING=1")
            && after_hup[0]
                .lines()
                .any(|l| l.starts_with("MONOTONIC_USEC=")),
        "after SIGHUP: {after_hup:?}"
    );
    assert_eq!(after_hup[1], "READY=1", "after SIGHUP: {after_hup:?}");

    // SIGTERM: STOPPING=1, the last message, then exit 0.
    signal(&c.proc.child, libc::SIGTERM);
    let code = wait_exit(&mut c.proc.child, Duration::from_secs(10));
    assert_eq!(code, Some(0), "stderr:\n{}", log.read());
    let rest: Vec<String> = notify
        .collect(Duration::from_millis(500))
        .into_iter()
        .map(|(_, m)| m)
        .filter(|m| m != "WATCHDOG=1")
        .collect();
    assert_eq!(rest, ["STOPPING=1"], "after SIGTERM");
}

#[test]
fn watchdog_pings_only_for_the_watched_pid_and_sigusr2_is_no_stop() {
    let link = Link::for_test_on("svcpid", "198.18.42", &[]);
    let log = Log::new("svc-pid");
    let notify = NotifySocket::at_path("pid");
    // A watchdog armed for another process (pid 1): hb is ready, but pings
    // for nobody.
    let (mut c, _) = start(&link, &notify, 1_000_000, Some(1), &log);
    let (_, msg) = notify
        .next(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no READY=1; stderr:\n{}", log.read()));
    assert_eq!(msg, "READY=1");
    let msgs = notify.collect(Duration::from_secs(3));
    assert!(msgs.is_empty(), "WATCHDOG_PID=1, yet: {msgs:?}");
    let _ = c.collect(Duration::from_millis(100));

    // SIGUSR2: hb exits 0 with its program attached, and without
    // STOPPING=1 (docs/operations.md): the service is not stopping, its
    // process is replaced (Restart=always, see the_unit_under_systemd).
    signal(&c.proc.child, libc::SIGUSR2);
    let code = wait_exit(&mut c.proc.child, Duration::from_secs(10));
    let after = notify.collect(Duration::from_millis(500));
    let attached = xdp_attached(&link.a, &link.a_if);
    let detached = control::hb(HB, &link.a, &["detach", "--iface", &link.a_if]);
    assert_eq!(code, Some(0), "exit status after SIGUSR2");
    assert!(attached, "SIGUSR2 left no program attached");
    assert!(after.is_empty(), "after SIGUSR2: {after:?}");
    assert!(detached.status.success(), "hb detach: {detached:?}");
}

#[test]
fn an_abstract_notify_socket_and_none() {
    // Socket mode on loopback, in this namespace: an abstract socket is
    // only reachable from the namespace it was bound in.
    let port = free_udp_port();
    let notify = NotifySocket::abstract_name("abs");
    let log = Log::new("svc-abs");
    let run = |env: Option<&str>| {
        let mut cmd = Command::new(HB);
        cmd.args([
            "run",
            "--ingest",
            "socket",
            "--listen",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--timeout",
            "2s",
            "--sweep",
            "200ms",
            "--format",
            "json",
        ])
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .stdout(Stdio::piped())
        .stderr(log.stdio());
        if let Some(name) = env {
            cmd.env("NOTIFY_SOCKET", name);
        }
        Collector::spawn(cmd)
    };
    let mut c = run(Some(&notify.name));
    let (_, msg) = notify
        .next(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no READY=1 on {}; stderr:\n{}", notify.name, log.read()));
    assert_eq!(msg, "READY=1");
    signal(&c.proc.child, libc::SIGTERM);
    assert_eq!(
        wait_exit(&mut c.proc.child, Duration::from_secs(10)),
        Some(0)
    );
    assert_eq!(
        notify.next(Duration::from_secs(2)).map(|m| m.1).as_deref(),
        Some("STOPPING=1")
    );

    // Without NOTIFY_SOCKET: runs as before, tells nobody.
    let mut c = run(None);
    let _ = c.wait_for(Duration::from_secs(5), |v| v["event"] == "summary");
    let _ = c.collect(Duration::from_millis(600));
    signal(&c.proc.child, libc::SIGTERM);
    assert_eq!(
        wait_exit(&mut c.proc.child, Duration::from_secs(10)),
        Some(0)
    );
    assert!(notify.next(Duration::from_millis(300)).is_none());
    assert!(!log.read().contains("NOTIFY_SOCKET"), "{}", log.read());
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The unit's value of `key` (the last one set).
fn unit_value(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_owned())
        .next_back()
}

#[test]
fn the_unit_verifies_and_says_what_operations_md_says() {
    let unit = std::fs::read_to_string(UNIT).expect("contrib/systemd/hb.service");
    let get = |k: &str| unit_value(&unit, k).unwrap_or_else(|| panic!("no {k}= in the unit"));
    // What docs/operations.md promises of it.
    assert_eq!(get("Type"), "notify");
    assert_eq!(get("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(
        get("ExecStart"),
        "/usr/local/bin/hb run --config /etc/hb/hb.toml"
    );
    // SIGUSR2 exits 0, so only `always` restarts it (systemctl stop never).
    assert_eq!(get("Restart"), "always");
    assert!(get("RequiresMountsFor").contains("/sys/fs/bpf"));
    let rw = get("ReadWritePaths");
    assert!(rw.contains("/sys/fs/bpf") && rw.contains("/run/hb"), "{rw}");
    assert_eq!(get("RuntimeDirectory"), "hb");
    // More than twice hb's default sweep (1 s), which pings.
    let watchdog = humantime::parse_duration(&get("WatchdogSec")).unwrap();
    assert!(
        watchdog > Duration::from_secs(2),
        "WatchdogSec={watchdog:?}"
    );

    let Some(analyze) = which("systemd-analyze") else {
        eprintln!("SKIPPED: systemd-analyze is not installed, the unit was not verified");
        return;
    };
    // verify wants ExecStart to exist: the built hb stands in.
    let dir = std::env::temp_dir().join(format!("hb-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("hb.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/hb", HB)).unwrap();
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("running systemd-analyze");
    let _ = std::fs::remove_dir_all(&dir);
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on unknown keys and bad values, and only says so.
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {}\n{said}",
        out.status
    );
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// The unit's capability bounding set, as setpriv takes it (`+bpf,…`).
fn bounding_set(unit: &str) -> Vec<String> {
    unit_value(unit, "CapabilityBoundingSet")
        .expect("CapabilityBoundingSet=")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect()
}

/// `hb run --ingest xdp` in the link's collector end, as root with only
/// `caps` in its bounding set and no new privileges (what the unit gives
/// it): whether it attached and saw a heartbeat.
fn runs_with(link: &Link, setpriv: &Path, caps: &[String], log: &Log) -> Result<(), String> {
    let mut cmd = link.a.command(setpriv).expect("entering the namespace");
    cmd.arg(format!("--bounding-set=-all,{}", caps.join(",")))
        .args(["--inh-caps=-all", "--no-new-privs", "--", HB, "run"])
        .args(["--iface", &link.a_if, "--ingest", "xdp"])
        .args(["--timeout", "3s", "--sweep", "200ms", "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(log.stdio());
    let mut c = Collector::spawn(cmd);
    let started = Instant::now();
    loop {
        if let Some(code) = c.proc.child.try_wait().unwrap() {
            return Err(format!("exited with {code}"));
        }
        if let Ok((_, v)) = c.lines.recv_timeout(Duration::from_millis(100))
            && is_event(&v, "new", "198.18.43.2")
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err("no `new` within 10 s".into());
        }
    }
    signal(&c.proc.child, libc::SIGTERM);
    match wait_exit(&mut c.proc.child, Duration::from_secs(10)) {
        Some(0) => Ok(()),
        code => Err(format!("exit status {code:?} on SIGTERM")),
    }
}

#[test]
fn hb_needs_each_capability_of_the_unit_and_no_other() {
    let Some(setpriv) = which("setpriv") else {
        eprintln!("SKIPPED: setpriv (util-linux) is not installed");
        return;
    };
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let caps = bounding_set(&unit);
    let link = Link::for_test_on("svccap", "198.18.43", &[2]);
    let log = Log::new("svc-caps");
    let _beat = collector::beat(HB, &link, "198.18.43.2", "198.18.43.1", "100ms");

    runs_with(&link, &setpriv, &caps, &log).unwrap_or_else(|e| {
        panic!(
            "with the unit's bounding set {caps:?}: {e}; stderr:\n{}",
            log.read()
        )
    });
    for drop in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != drop).cloned().collect();
        assert!(
            runs_with(&link, &setpriv, &fewer, &log).is_err(),
            "hb works without {drop}: drop it from the unit's CapabilityBoundingSet"
        );
    }
}

#[test]
fn completions_name_every_subcommand_and_option() {
    let cli = Cli::command();
    for shell in clap_complete::Shell::value_variants() {
        let name = shell.to_possible_value().unwrap().get_name().to_owned();
        let out = Command::new(HB)
            .args(["completions", &name])
            .output()
            .unwrap();
        assert!(out.status.success(), "hb completions {name}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        for sub in cli.get_subcommands() {
            assert!(
                script.contains(sub.get_name()),
                "{name} completions lack `{}`",
                sub.get_name()
            );
        }
        if name == "bash" {
            for sub in cli.get_subcommands() {
                for long in sub.get_arguments().filter_map(|a| a.get_long()) {
                    assert!(
                        script.contains(&format!("--{long}")),
                        "bash completions lack `hb {} --{long}`",
                        sub.get_name()
                    );
                }
            }
            // And bash reads it.
            if let Some(bash) = which("bash") {
                let dir = std::env::temp_dir().join(format!("hb-compl-{}", std::process::id()));
                std::fs::create_dir_all(&dir).unwrap();
                let file = dir.join("hb.bash");
                std::fs::write(&file, &script).unwrap();
                let ok = Command::new(bash).arg("-n").arg(&file).status().unwrap();
                let _ = std::fs::remove_dir_all(&dir);
                assert!(ok.success(), "bash -n rejects the completion script");
            }
        }
    }
    let bad = Command::new(HB)
        .args(["completions", "cmd"])
        .output()
        .unwrap();
    assert_eq!(
        bad.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn the_man_page_renders_every_subcommand_and_option() {
    let out = Command::new(HB).arg("man").output().unwrap();
    assert!(out.status.success(), "hb man: {out:?}");
    let roff = String::from_utf8(out.stdout).unwrap();
    let th: Vec<&str> = roff.lines().filter(|l| l.starts_with(".TH ")).collect();
    assert_eq!(th.len(), 1, "one page, titled once: {th:?}");
    assert!(th[0].starts_with(".TH hb 1"), "{th:?}");

    let Some(groff) = which("groff") else {
        eprintln!("SKIPPED: groff is not installed, the page was not rendered");
        return;
    };
    // Wide lines and no hyphenation: every name stays whole. Warnings on.
    let mut render = Command::new(groff)
        .args(["-man", "-Tutf8", "-ww", "-rLL=400n", "-rHY=0", "-P-cbou"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        render
            .stdin
            .take()
            .unwrap()
            .write_all(roff.as_bytes())
            .unwrap();
    }
    let rendered = render.wait_with_output().unwrap();
    assert!(rendered.status.success());
    let warnings = String::from_utf8_lossy(&rendered.stderr);
    assert!(warnings.trim().is_empty(), "groff: {warnings}");
    // U+2010 and U+2212 are what groff makes of `-` in -Tutf8.
    let text = String::from_utf8(rendered.stdout)
        .unwrap()
        .replace(['\u{2010}', '\u{2212}'], "-");

    let cli = Cli::command();
    for arg in cli.get_arguments().filter_map(|a| a.get_long()) {
        assert!(text.contains(&format!("--{arg}")), "no --{arg} in the page");
    }
    for sub in cli.get_subcommands() {
        let heading = format!("HB {}", sub.get_name().to_uppercase());
        assert!(
            text.lines().any(|l| l.trim_end() == heading),
            "no section {heading}"
        );
        let section = text
            .split(&heading)
            .nth(1)
            .and_then(|rest| rest.split("\nHB ").next())
            .unwrap();
        for arg in sub.get_arguments() {
            if let Some(long) = arg.get_long() {
                assert!(
                    section.contains(&format!("--{long}")),
                    "no --{long} in section {heading}"
                );
            }
            if let Some(help) = arg.get_help() {
                // The option's help, as the page words it.
                let first = help.to_string();
                let first = first
                    .split_whitespace()
                    .take(4)
                    .collect::<Vec<_>>()
                    .join(" ");
                assert!(
                    section
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                        .contains(&first),
                    "section {heading} lacks {first:?}"
                );
            }
        }
    }
}

/// systemd as PID 1 of its own pid, mount, uts, ipc and network namespaces
/// (as in a container), with only the units of `dir`
/// (`SYSTEMD_UNIT_PATH`). Killed, with everything it started, on drop.
struct Systemd {
    unshare: std::process::Child,
    /// Its pid outside its namespace.
    pid1: u32,
}

impl Systemd {
    const BINARY: &str = "/lib/systemd/systemd";

    fn boot(units: &Path) -> Self {
        let script = format!(
            "mount -t tmpfs tmpfs /run && exec env container=hb-test SYSTEMD_UNIT_PATH={} {} --system --unit=hbtest.target",
            units.display(),
            Self::BINARY
        );
        let unshare = Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child=SIGKILL", "--mount-proc"])
            .args(["--mount", "--uts", "--ipc", "--net", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("running unshare");
        let children = format!("/proc/{0}/task/{0}/children", unshare.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid1 = loop {
            let found = std::fs::read_to_string(&children)
                .ok()
                .and_then(|c| c.split_whitespace().next()?.parse::<u32>().ok());
            if let Some(pid) = found
                && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "systemd")
            {
                break pid;
            }
            assert!(Instant::now() < deadline, "systemd did not start");
            thread::sleep(Duration::from_millis(50));
        };
        let this = Self { unshare, pid1 };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let state = this.systemctl(&["is-system-running"]);
            let state = String::from_utf8_lossy(&state.stdout);
            if matches!(state.trim(), "running" | "degraded") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "systemd in a namespace is `{}` after 30 s",
                state.trim()
            );
            thread::sleep(Duration::from_millis(100));
        }
        this
    }

    /// `systemctl ARGS` against this systemd (bounded: 30 s).
    fn systemctl(&self, args: &[&str]) -> std::process::Output {
        Command::new("timeout")
            .args(["30", "nsenter", "-t", &self.pid1.to_string(), "-m", "-p"])
            .args(["--", "systemctl", "--no-pager"])
            .args(args)
            .output()
            .expect("running nsenter systemctl")
    }

    /// `systemctl ARGS`, which must succeed.
    fn ok(&self, args: &[&str]) {
        let out = self.systemctl(args);
        assert!(out.status.success(), "systemctl {args:?}: {out:?}");
    }

    /// A property of hb.service.
    fn show(&self, property: &str) -> String {
        let out = self.systemctl(&["show", "-p", property, "--value", "hb.service"]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Waits up to `within` for hb.service to run a main process other than
    /// `old` and be active again; returns it.
    fn restarted(&self, old: &str, within: Duration, mut meanwhile: impl FnMut()) -> String {
        let deadline = Instant::now() + within;
        loop {
            meanwhile();
            let pid = self.show("MainPID");
            if pid != old && pid != "0" && self.show("ActiveState") == "active" {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "hb.service not running again within {within:?}: {}",
                self.show("ActiveState")
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        // unshare's death kills systemd (--kill-child), and with PID 1 the
        // whole pid namespace.
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

/// Lines of `path` (hb's stdout, JSON) that are `event` for `host`.
fn events_in(path: &Path, event: &str, host: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| is_event(v, event, host))
        .count()
}

/// The unit under a real systemd: start returns once hb is ready, reload
/// returns, SIGUSR2 is an upgrade without a gap (restarted by systemd, the
/// program attached throughout, no host `new` again), a loop that stops
/// ticking is killed by the watchdog and restarted the same way, and
/// `systemctl stop` detaches and is not restarted.
#[test]
fn the_unit_under_systemd() {
    if !Path::new(Systemd::BINARY).exists() || which("unshare").is_none() {
        eprintln!(
            "SKIPPED: no {} or unshare to run the unit under",
            Systemd::BINARY
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("hb-systemd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("hb.service.d")).unwrap();
    struct RemoveDir(PathBuf);
    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _dir = RemoveDir(dir.clone());
    // The unit's sandbox hides /tmp (PrivateTmp) and /root and /home
    // (ProtectHome): wherever this checkout is, the service runs a copy
    // of the built hb from a place the sandbox leaves visible.
    let bin = PathBuf::from(format!("/var/lib/hb-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&bin);
    std::fs::create_dir_all(&bin).unwrap();
    let _bin = RemoveDir(bin.clone());
    let hb = bin.join("hb");
    std::fs::copy(HB, &hb).unwrap();
    let hb = hb.display().to_string();
    let unit = std::fs::read_to_string(UNIT).unwrap();
    std::fs::write(
        dir.join("hb.service"),
        unit.replace("/usr/local/bin/hb", &hb),
    )
    .unwrap();
    std::fs::write(dir.join("hbtest.target"), "[Unit]\nDescription=hb test\n").unwrap();
    let (out, err) = (dir.join("hb.out"), dir.join("hb.err"));
    let iface = "hbsvcsd0";
    // Only the units above exist: no sysinit.target to depend on. The
    // command line instead of a config file, and a short watchdog.
    std::fs::write(
        dir.join("hb.service.d/test.conf"),
        format!(
            "[Unit]\nDefaultDependencies=no\n[Service]\nExecStart=\nExecStart={hb} run --iface {iface} --ingest xdp --timeout 3s --sweep {}ms --format json\nWatchdogSec=3s\nStandardOutput=append:{}\nStandardError=append:{}\n",
            SWEEP.as_millis(),
            out.display(),
            err.display()
        ),
    )
    .unwrap();

    let systemd = Systemd::boot(&dir);
    // Its network namespace, named, for the test link.
    let a = format!("hbt-{}-svcsda", std::process::id());
    hb_testkit::netns::ip(&["netns", "attach", &a, &systemd.pid1.to_string()])
        .expect("naming systemd's network namespace");
    let a = hb_testkit::netns::Netns { name: a };
    let b = hb_testkit::netns::Netns::for_test("svcsdb");
    let link = Link::new(a, b, iface, "hbsvcsd1", None).expect("a veth pair");
    link.address("198.18.44", &[2]);
    let stderr = || std::fs::read_to_string(&err).unwrap_or_default();

    // Start: returns once READY=1 came, after the first sweep.
    let t0 = Instant::now();
    systemd.ok(&["start", "hb.service"]);
    let took = t0.elapsed();
    assert_eq!(systemd.show("ActiveState"), "active", "{}", stderr());
    assert!(
        took >= SWEEP,
        "systemctl start returned after {took:?}, before a sweep"
    );
    assert!(xdp_attached(&link.a, iface));
    assert_eq!(systemd.show("WatchdogUSec"), "3s");

    let _beat = collector::beat(HB, &link, "198.18.44.2", "198.18.44.1", "100ms");
    let deadline = Instant::now() + Duration::from_secs(10);
    while events_in(&out, "new", "198.18.44.2") == 0 {
        assert!(Instant::now() < deadline, "no `new`; stderr:\n{}", stderr());
        thread::sleep(Duration::from_millis(50));
    }
    systemd.ok(&["reload", "hb.service"]);
    assert_eq!(systemd.show("ActiveState"), "active");

    // The upgrade: SIGUSR2, and systemd starts it again.
    let first = systemd.show("MainPID");
    systemd.ok(&["kill", "-s", "USR2", "--kill-whom=main", "hb.service"]);
    let mut detached = false;
    let second = systemd.restarted(&first, Duration::from_secs(15), || {
        detached |= !xdp_attached(&link.a, iface);
    });
    assert!(!detached, "the program was detached during the restart");
    assert_eq!(systemd.show("NRestarts"), "1");

    // A loop that stops ticking: SIGSTOP, and the watchdog (3 s) kills it.
    thread::sleep(Duration::from_secs(1));
    systemd.ok(&["kill", "-s", "STOP", "--kill-whom=main", "hb.service"]);
    let stopped = Instant::now();
    let _third = systemd.restarted(&second, Duration::from_secs(20), || {
        detached |= !xdp_attached(&link.a, iface);
    });
    let after = stopped.elapsed();
    assert!(
        !detached,
        "the program was detached during the watchdog restart"
    );
    assert!(
        after >= Duration::from_millis(1500) && after <= Duration::from_secs(12),
        "restarted {after:?} after the loop stopped, with WatchdogSec=3s"
    );
    assert_eq!(systemd.show("NRestarts"), "2");
    thread::sleep(Duration::from_secs(1));
    assert_eq!(
        events_in(&out, "new", "198.18.44.2"),
        1,
        "a host reported `new` again across restarts"
    );

    // Stop: SIGTERM detaches, and systemd leaves it stopped.
    systemd.ok(&["stop", "hb.service"]);
    assert!(
        control::xdp_gone_within(&link.a, iface, Duration::from_secs(3)),
        "still attached after systemctl stop"
    );
    thread::sleep(Duration::from_secs(1));
    // Well past RestartSec (100 ms): not restarting (systemd resets
    // NRestarts on a stop).
    assert_eq!(systemd.show("ActiveState"), "inactive");
    assert_eq!(systemd.show("SubState"), "dead");
    assert_eq!(systemd.show("Result"), "success");
    drop(link);
}
