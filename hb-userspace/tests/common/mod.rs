//! Test hosts on this machine: network namespaces joined by veth pairs, with
//! addresses that exist only inside them. Everything is removed on drop, so
//! also when a test fails (panics unwind through the guards).
#![allow(dead_code)]

use std::{
    fs::File,
    io::{BufRead as _, BufReader},
    os::fd::AsRawFd as _,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

/// Runs `ip` and panics with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace, deleted (with its interfaces) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        // Unique per process and tag; a leftover from a killed run of the
        // same pid is replaced.
        let name = format!("hbt-{}-{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    /// A command that runs inside this namespace. Only the network
    /// namespace changes (unlike `ip netns exec`, which also remounts /sys),
    /// so the program sees the machine's bpffs like a real collector.
    pub fn command(&self, program: &str) -> Command {
        use std::os::unix::process::CommandExt as _;
        let ns = File::open(format!("/run/netns/{}", self.name)).expect("opening the namespace");
        let mut cmd = Command::new(program);
        // SAFETY: only async-signal-safe calls between fork and exec; the
        // fd is moved into the closure and stays open until the command is
        // dropped.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Runs `f` on a thread that has joined this namespace: sockets it
    /// creates live in the namespace and can be used from any thread.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            let ns = File::open(&path).expect("opening the namespace");
            // SAFETY: setns on a valid namespace fd; affects this thread only.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in namespace panicked")
    }

    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // What collectors in this namespace left on purpose (their program
        // stays attached when killed): pins and state files named after the
        // namespace, which would otherwise outlive it.
        use std::os::unix::fs::MetadataExt as _;
        if let Ok(meta) = std::fs::metadata(format!("/run/netns/{}", self.name)) {
            let suffix = format!("@netns-{}", meta.ino());
            for dir in ["/sys/fs/bpf/hb", "/run/hb"] {
                let Ok(entries) = std::fs::read_dir(dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.trim_end_matches(".json").ends_with(&suffix) {
                        let path = entry.path();
                        let _ =
                            std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
                    }
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Two namespaces joined by a veth pair: `a`'s end is `a_if`, `b`'s is `b_if`.
pub struct Link {
    pub a: Netns,
    pub b: Netns,
    pub a_if: String,
    pub b_if: String,
}

impl Link {
    pub fn new(tag: &str) -> Self {
        let a = Netns::new(&format!("{tag}a"));
        let b = Netns::new(&format!("{tag}b"));
        // Interface names are limited to 15 bytes. They are unique per test
        // because pins and state files are named after the interface.
        assert!(tag.len() <= 10, "tag too long for an interface name");
        let (a_if, b_if) = (format!("hb{tag}0"), format!("hb{tag}1"));
        ip(&[
            "link", "add", &a_if, "netns", &a.name, "type", "veth", "peer", "name", &b_if, "netns",
            &b.name,
        ]);
        a.ip(&["link", "set", &a_if, "up"]);
        b.ip(&["link", "set", &b_if, "up"]);
        Self { a, b, a_if, b_if }
    }
}

/// `hb beat` from `from` to `to` every `period`, in `link`'s `b` namespace.
pub fn beat(link: &Link, from: &str, to: &str, period: &str) -> Proc {
    let mut cmd = link.b.command(env!("CARGO_BIN_EXE_hb"));
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
    pub fn start(ns: &Netns, args: &[&str]) -> Self {
        let mut cmd = ns.command(env!("CARGO_BIN_EXE_hb"));
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
}
