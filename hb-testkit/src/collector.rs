//! A real collector for integration tests: `hb run --format json` in a
//! namespace, its stdout lines parsed and handed over on a channel, and
//! `hb beat` clients. `hb` is the binary under test (integration tests pass
//! `env!("CARGO_BIN_EXE_hb")`). Failures panic, as a test should.
//!
//! The harness never turns a failure into a pass: when the collector's
//! output ends (hb exited, or closed stdout) or a line is not a JSON event,
//! the next [`Collector::wait_for`] panics with the line and the collector's
//! exit status, instead of waiting out its window as if nothing happened.
//! And once the collector has printed its first summary, every window also
//! checks that it is still sweeping: summaries keep arriving, one per
//! `--sweep` period, at most [`SWEEP_SLACK`] late. (hb writes a summary
//! line every `--summary-every`, 60 s by default: the harness asks for one
//! every sweep.)

use std::{
    cell::Cell,
    ffi::OsStr,
    fmt,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use crate::netns::{Link, Netns};

/// How late a summary may arrive, beyond the sweep period, before the
/// harness says the collector stopped sweeping. Generous for a loaded 2-core
/// machine (the collector's timer and this harness's reader thread both
/// need the CPU); a collector that stops sweeping stays silent for ever.
pub const SWEEP_SLACK: Duration = Duration::from_secs(1);

/// `hb run`'s default `--sweep` (README: CLI).
const DEFAULT_SWEEP: Duration = Duration::from_secs(1);

/// `hb beat` from `from` to `to` every `period`, in `link`'s `b` namespace.
pub fn beat(hb: impl AsRef<OsStr>, link: &Link, from: &str, to: &str, period: &str) -> Proc {
    let mut cmd = link.b.command(hb).expect("entering the namespace");
    cmd.args(["beat", "--server", to, "--period", period, "--bind", from]);
    Proc::spawn(cmd)
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Self {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        Self { child }
    }

    /// Sends SIGTERM and waits; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for child") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "child did not exit on SIGTERM");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Why a collector's output ended: recorded by the reader thread before it
/// closes the channel, so every line before it is delivered first.
#[derive(Debug, Clone)]
enum Ending {
    /// End of output: the collector exited or closed its stdout.
    Eof,
    /// A line that is not a JSON event (`{"ts": "…", "event": "…", …}`).
    Unparsable { line: String, error: String },
    /// Reading stdout failed.
    ReadError(String),
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Eof => write!(f, "its output ended"),
            Self::Unparsable { line, error } => {
                write!(
                    f,
                    "it printed a line that is not a JSON event ({error}): {line:?}"
                )
            }
            Self::ReadError(e) => write!(f, "reading its output failed: {e}"),
        }
    }
}

/// Starts `hb run` and collects its stdout lines (JSON) on a channel.
pub struct Collector {
    pub proc: Proc,
    /// Event lines, each with the time the harness read it. Disconnected
    /// when the output ends; [`Collector::wait_for`] then says why.
    pub lines: mpsc::Receiver<(Instant, serde_json::Value)>,
    ending: Arc<Mutex<Option<Ending>>>,
    /// The collector's `--sweep`: one summary per period is expected.
    sweep: Duration,
    /// When the last summary was read; `None` before the first.
    last_summary: Cell<Option<Instant>>,
}

impl Collector {
    /// `hb run ARGS --format json` in `ns`.
    pub fn start(hb: impl AsRef<OsStr>, ns: &Netns, args: &[&str]) -> Self {
        let mut cmd = ns.command(hb).expect("entering the namespace");
        cmd.arg("run").args(args).args(["--format", "json"]);
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        // (`spawn` adds --summary-every.)
        Self::spawn(cmd)
    }

    /// Runs `cmd` (an `hb run --format json`, stdout piped) as a collector.
    /// Its sweep period is read from `--sweep` among the arguments (also
    /// inside one, as in `sh -c "… hb run --sweep 200ms …"`); 1 s without.
    /// A summary line every sweep is asked for (`--summary-every`, added
    /// at the end of the command line unless it has one).
    pub fn spawn(mut cmd: Command) -> Self {
        let sweep = sweep_of(&cmd);
        summary_every_sweep(&mut cmd, sweep);
        Self::spawn_sweeping(cmd, sweep)
    }

    /// Runs `cmd` as a collector that prints a summary every `sweep`.
    pub fn spawn_sweeping(cmd: Command, sweep: Duration) -> Self {
        let mut proc = Proc::spawn(cmd);
        let stdout = proc.child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        let ending = Arc::new(Mutex::new(None));
        let end = Arc::clone(&ending);
        thread::spawn(move || {
            let mut out = BufReader::new(stdout);
            let why = read_lines(&mut out, &tx);
            *end.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
            // Dropping the sender after the ending is recorded: a receiver
            // that sees the channel closed finds the reason.
            drop(tx);
            // Whatever follows a bad line is read and dropped, so that the
            // collector does not fail on a closed pipe: its exit status
            // stays its own.
            let _ = std::io::copy(&mut out, &mut std::io::sink());
        });
        Self {
            proc,
            lines,
            ending,
            sweep,
            last_summary: Cell::new(None),
        }
    }

    /// The sweep period the harness expects summaries at.
    pub fn sweep(&self) -> Duration {
        self.sweep
    }

    /// Waits up to `within` for an event matching `pred`; returns it, with
    /// every other line seen on the way.
    ///
    /// Panics, naming the lines seen and the collector's exit status, when
    /// its output ends or a line is not a JSON event, and when it has
    /// stopped sweeping (see the module's documentation). So a window in
    /// which nothing is expected to happen passes only on a collector that
    /// is alive and sweeping all along.
    pub fn wait_for(
        &self,
        within: Duration,
        mut pred: impl FnMut(&serde_json::Value) -> bool,
    ) -> (Option<(Instant, serde_json::Value)>, Vec<serde_json::Value>) {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, v)) => {
                    if v["event"] == "summary" {
                        self.check_gap(at, &seen);
                        self.last_summary.set(Some(at));
                    }
                    if pred(&v) {
                        return (Some((at, v)), seen);
                    }
                    seen.push(v);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // Everything read so far is handled: the collector must
                    // still be running, and sweeping.
                    if let Some(status) = exited(self.proc.child.id()) {
                        self.fail(&format!("it {status}"), &seen);
                    }
                    self.check_gap(Instant::now(), &seen);
                    return (None, seen);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let why = self
                        .ending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone()
                        .unwrap_or(Ending::ReadError("the reader thread died".into()));
                    self.fail(&why.to_string(), &seen);
                }
            }
        }
    }

    /// Every line that arrives within `window`; panics if the collector
    /// exits, prints junk or stops sweeping meanwhile (see
    /// [`Collector::wait_for`]).
    pub fn collect(&self, window: Duration) -> Vec<serde_json::Value> {
        self.wait_for(window, |_| false).1
    }

    /// Panics if the last summary is older than a sweep and the slack at
    /// `now` (once there has been one).
    fn check_gap(&self, now: Instant, seen: &[serde_json::Value]) {
        let Some(last) = self.last_summary.get() else {
            return;
        };
        let gap = now.saturating_duration_since(last);
        if gap > self.sweep + SWEEP_SLACK {
            self.fail(
                &format!(
                    "it stopped sweeping: no summary for {gap:?} (--sweep {:?}, slack {SWEEP_SLACK:?})",
                    self.sweep
                ),
                seen,
            );
        }
    }

    fn fail(&self, why: &str, seen: &[serde_json::Value]) -> ! {
        let status = wait_exit(self.proc.child.id(), Duration::from_secs(2))
            .unwrap_or_else(|| "is still running".into());
        panic!(
            "the collector failed: {why}; it {status}; lines of this wait: {}",
            serde_json::Value::from(seen.to_vec())
        );
    }
}

/// Reads event lines until the output ends or one is not an event; returns
/// why it stopped.
fn read_lines(out: impl BufRead, tx: &mpsc::Sender<(Instant, serde_json::Value)>) -> Ending {
    for line in out.lines() {
        let line = match line {
            Ok(line) => line,
            Err(e) => return Ending::ReadError(e.to_string()),
        };
        let v = match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(v) if v["event"].is_string() && v["ts"].is_string() => v,
            Ok(_) => {
                return Ending::Unparsable {
                    line,
                    error: "no string `event` and `ts`".into(),
                };
            }
            Err(e) => {
                return Ending::Unparsable {
                    line,
                    error: e.to_string(),
                };
            }
        };
        if tx.send((Instant::now(), v)).is_err() {
            break;
        }
    }
    Ending::Eof
}

/// How child `pid` ended (`exited with status 1`, `was killed by signal 9`),
/// or `None` while it runs. Does not reap it: its `Child` still can.
fn exited(pid: u32) -> Option<String> {
    // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on our own child with a valid siginfo_t; WNOWAIT
    // leaves it waitable.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if rc != 0 {
        return Some(format!(
            "cannot be waited for ({}: reaped already?)",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: waitid filled in the SIGCHLD fields (si_pid 0: still running).
    let (who, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
    if who == 0 {
        return None;
    }
    Some(match code {
        libc::CLD_EXITED => format!("exited with status {status}"),
        libc::CLD_KILLED | libc::CLD_DUMPED => format!("was killed by signal {status}"),
        _ => format!("ended (si_code {code}, status {status})"),
    })
}

/// [`exited`], waiting up to `patience` for the child to end.
fn wait_exit(pid: u32, patience: Duration) -> Option<String> {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(status) = exited(pid) {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The `--sweep` value among `cmd`'s arguments, or inside one of them (a
/// shell command line); hb's default without.
fn sweep_of(cmd: &Command) -> Duration {
    let words = words_of(cmd);
    let mut value = None;
    for (i, w) in words.iter().enumerate() {
        if let Some(v) = w.strip_prefix("--sweep=") {
            value = Some(v.to_owned());
        } else if w == "--sweep" {
            value = words.get(i + 1).cloned();
        }
    }
    value.map_or(DEFAULT_SWEEP, |v| parse_ms_or_s(&v))
}

/// Adds `--summary-every` (one summary line every `sweep`) to `cmd`, an
/// `hb run` whose arguments end its command line, unless it has one.
pub fn summary_every_sweep(cmd: &mut Command, sweep: Duration) {
    let words = words_of(cmd);
    if words
        .iter()
        .any(|w| w == "--summary-every" || w.starts_with("--summary-every="))
    {
        return;
    }
    assert!(
        !cmd.get_args().any(|a| a.to_string_lossy().contains(' ')),
        "a collector run through a shell command line must say --summary-every itself: {cmd:?}"
    );
    cmd.args(["--summary-every", &format!("{}ms", sweep.as_millis())]);
}

/// Every word of `cmd`'s arguments, also inside one (a shell command line).
fn words_of(cmd: &Command) -> Vec<String> {
    cmd.get_args()
        .flat_map(|a| {
            a.to_string_lossy()
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `250ms` or `2s`: the forms the tests write. Not hb's own parser: the
/// harness must know the period independently of the code under test.
fn parse_ms_or_s(v: &str) -> Duration {
    let number = |n: &str| n.parse::<u64>().ok();
    if let Some(ms) = v.strip_suffix("ms").and_then(number) {
        Duration::from_millis(ms)
    } else if let Some(s) = v.strip_suffix('s').and_then(number) {
        Duration::from_secs(s)
    } else {
        panic!("the harness reads --sweep as `<n>ms` or `<n>s`, not {v:?}")
    }
}

/// Is `v` the event `event` about `host`?
pub fn is_event(v: &serde_json::Value, event: &str, host: &str) -> bool {
    v["event"] == event && v["host"] == host
}

/// `GET /metrics` from the collector's endpoint on 127.0.0.1:`port` inside
/// `ns`; the whole reply, headers included.
pub fn get_metrics(ns: &Netns, port: u16) -> String {
    use std::io::{Read as _, Write as _};
    ns.within(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: hb\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        reply
    })
    .expect("running in the namespace")
}

/// `/metrics` parsed by a Prometheus text-format parser, for exact
/// comparisons of values.
pub struct Metrics {
    pub scrape: prometheus_parse::Scrape,
}

impl Metrics {
    /// Parses an HTTP reply of `/metrics`: status 200, then the exposition.
    pub fn parse(reply: &str) -> Self {
        let (head, body) = reply
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("not an HTTP reply: {reply:?}"));
        assert!(
            head.starts_with("HTTP/1.1 200 "),
            "/metrics answered {head:?}"
        );
        let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
            .unwrap_or_else(|e| panic!("not the Prometheus text format ({e}): {body}"));
        Self { scrape }
    }

    /// Samples named `name` whose labels include `labels`.
    pub fn samples<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a prometheus_parse::Sample> + 'a {
        self.scrape.samples.iter().filter(move |s| {
            s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
    }

    /// The value of the one sample named `name` whose labels include
    /// `labels`; panics when there is none, or more than one.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<_> = self.samples(name, labels).collect();
        let [sample] = found[..] else {
            panic!(
                "{} samples {name} {labels:?}, not one: {found:?}",
                found.len()
            );
        };
        match sample.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name} {labels:?}: not a number: {other:?}"),
        }
    }
}

/// `/metrics` of the collector on 127.0.0.1:`port` inside `ns`, parsed.
pub fn scrape(ns: &Netns, port: u16) -> Metrics {
    Metrics::parse(&get_metrics(ns, port))
}

#[cfg(test)]
mod tests {
    //! The harness against stand-in collectors (shell loops): it must fail
    //! on what a broken hb would do, and pass on a working one.

    use super::*;

    const SUMMARY: &str = r#"{"ts":"2026-11-30T00:00:00.000Z","event":"summary","hosts":0}"#;

    /// A stand-in collector running `script` under `sh -c`.
    fn fake(script: &str, sweep: Duration) -> Collector {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]).stdout(Stdio::piped());
        Collector::spawn_sweeping(cmd, sweep)
    }

    fn summaries_every_100ms() -> String {
        format!("while :; do echo '{SUMMARY}'; sleep 0.1; done")
    }

    fn panic_message(f: impl FnOnce()) -> String {
        let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .expect_err("the harness did not fail");
        err.downcast_ref::<String>()
            .cloned()
            .or_else(|| err.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default()
    }

    #[test]
    fn a_sweeping_collector_passes_a_quiet_window() {
        let c = fake(&summaries_every_100ms(), Duration::from_millis(100));
        let lines = c.collect(Duration::from_millis(1500));
        // About 15 summaries; a loaded machine may lose a few.
        assert!(lines.len() >= 5, "{lines:?}");
        assert!(lines.iter().all(|v| v["event"] == "summary"));
    }

    #[test]
    fn a_collector_that_exits_fails_the_wait_with_its_status() {
        let c = fake(
            &format!("echo '{SUMMARY}'; exit 3"),
            Duration::from_millis(100),
        );
        let msg = panic_message(|| {
            c.collect(Duration::from_secs(5));
        });
        assert!(msg.contains("output ended"), "{msg}");
        assert!(msg.contains("exited with status 3"), "{msg}");
        assert!(msg.contains("summary"), "the lines seen: {msg}");
    }

    #[test]
    fn a_killed_collector_fails_the_wait_with_its_signal() {
        let c = fake(&summaries_every_100ms(), Duration::from_millis(100));
        assert!(
            c.wait_for(Duration::from_secs(5), |v| v["event"] == "summary")
                .0
                .is_some()
        );
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.proc.child.id() as i32, libc::SIGKILL) };
        let msg = panic_message(|| {
            c.wait_for(Duration::from_secs(5), |v| v["event"] == "never");
        });
        assert!(msg.contains("killed by signal 9"), "{msg}");
    }

    #[test]
    fn a_line_that_is_not_an_event_fails_the_wait() {
        for junk in ["not json", r#"{"event":"summary"}"#, "[1,2]"] {
            let c = fake(
                &format!("echo '{SUMMARY}'; echo '{junk}'; exec sleep 10"),
                Duration::from_millis(100),
            );
            let msg = panic_message(|| {
                c.collect(Duration::from_secs(5));
            });
            assert!(msg.contains("not a JSON event"), "{msg}");
            assert!(msg.contains(&format!("{junk:?}")), "{msg}");
            assert!(msg.contains("still running"), "{msg}");
        }
    }

    #[test]
    fn a_collector_that_stops_sweeping_fails_a_quiet_window() {
        // Alive, but its summaries stop after three.
        let c = fake(
            &format!("for i in 1 2 3; do echo '{SUMMARY}'; sleep 0.1; done; exec sleep 30"),
            Duration::from_millis(100),
        );
        let msg = panic_message(|| {
            c.collect(Duration::from_secs(3));
        });
        assert!(msg.contains("stopped sweeping"), "{msg}");
        assert!(msg.contains("still running"), "{msg}");
    }

    #[test]
    fn the_sweep_period_is_read_from_the_arguments() {
        let cmd = |args: &[&str]| {
            let mut c = Command::new("hb");
            c.args(args);
            sweep_of(&c)
        };
        assert_eq!(
            cmd(&["run", "--sweep", "250ms"]),
            Duration::from_millis(250)
        );
        assert_eq!(cmd(&["run", "--sweep=2s"]), Duration::from_secs(2));
        assert_eq!(cmd(&["run"]), Duration::from_secs(1));
        assert_eq!(
            cmd(&[
                "-c",
                "umount x; exec hb run --iface a --sweep 200ms --format json"
            ]),
            Duration::from_millis(200)
        );
    }
}
