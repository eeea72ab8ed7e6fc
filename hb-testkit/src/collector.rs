//! A real collector for integration tests: `hb run --format json` in a
//! namespace, its stdout lines parsed and handed over on a channel, and
//! `hb beat` clients. `hb` is the binary under test (integration tests pass
//! `env!("CARGO_BIN_EXE_hb")`). Failures panic, as a test should.

use std::{
    ffi::OsStr,
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use crate::netns::{Link, Netns};

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

/// Starts `hb run` and collects its stdout lines (JSON) on a channel.
pub struct Collector {
    pub proc: Proc,
    pub lines: mpsc::Receiver<(Instant, serde_json::Value)>,
}

impl Collector {
    /// `hb run ARGS --format json` in `ns`.
    pub fn start(hb: impl AsRef<OsStr>, ns: &Netns, args: &[&str]) -> Self {
        let mut cmd = ns.command(hb).expect("entering the namespace");
        cmd.arg("run").args(args).args(["--format", "json"]);
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        Self::spawn(cmd)
    }

    /// Runs `cmd` (an `hb run --format json`, stdout piped) as a collector.
    pub fn spawn(cmd: Command) -> Self {
        let mut proc = Proc::spawn(cmd);
        let stdout = proc.child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line: {line:?}: {e}"));
                if tx.send((Instant::now(), v)).is_err() {
                    break;
                }
            }
        });
        Self { proc, lines }
    }

    /// Waits up to `within` for an event matching `pred`; returns it, with
    /// every other line seen on the way.
    pub fn wait_for(
        &self,
        within: Duration,
        mut pred: impl FnMut(&serde_json::Value) -> bool,
    ) -> (Option<(Instant, serde_json::Value)>, Vec<serde_json::Value>) {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok((at, v)) if pred(&v) => return (Some((at, v)), seen),
                Ok((_, v)) => seen.push(v),
                Err(_) => break,
            }
        }
        (None, seen)
    }

    /// Every line that arrives within `window`.
    pub fn collect(&self, window: Duration) -> Vec<serde_json::Value> {
        self.wait_for(window, |_| false).1
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
