//! Prometheus and Alertmanager from Debian's packages (`prometheus`,
//! `prometheus-alertmanager`, installed by `cargo xtask setup` and
//! `cargo xtask test`), run for real inside a test namespace on loopback:
//! each with its own temporary directory (configuration, storage, log),
//! `--web.listen-address=127.0.0.1:PORT`, killed and its directory removed
//! on drop, so also when a test fails. They die with the test thread that
//! started them too (`PR_SET_PDEATHSIG`), should the test process itself be
//! killed.
//!
//! Every wait is bounded; a server that exits or never gets ready fails
//! the test with the end of its log. Failures panic, as a test should.

use std::{
    ffi::OsStr,
    fs::{self, File},
    io::{Read as _, Write as _},
    net::TcpStream,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{collector::Proc, netns::Netns};

/// How long a server may take to answer `/-/ready` on a loaded 2-core
/// machine (Prometheus replays its empty WAL, Alertmanager reads its config).
pub const READY_WITHIN: Duration = Duration::from_secs(30);

/// How long one HTTP exchange with a server may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the `wait_for` helpers ask again.
const POLL: Duration = Duration::from_millis(250);

/// The first of `names` found on `PATH`. Panics, saying how to install it,
/// when none is: the tests need the real program and never skip without it.
pub fn program(names: &[&str]) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    names
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "none of {names:?} is on PATH: run `cargo xtask setup` (or `cargo xtask test`), \
                 which installs Debian's prometheus and prometheus-alertmanager"
            )
        })
}

/// `promtool` (package `prometheus`).
pub fn promtool() -> PathBuf {
    program(&["promtool"])
}

/// `amtool` (package `prometheus-alertmanager`).
pub fn amtool() -> PathBuf {
    program(&["amtool"])
}

/// A directory of its own under the system's temporary directory, removed
/// with everything in it on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// `<tmp>/hb-test-<pid>-<tag>-<n>`, created empty.
    #[track_caller]
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("hb-test-{}-{tag}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` in this directory; returns its path.
    #[track_caller]
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path.join(name);
        fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// One HTTP/1.0 exchange with 127.0.0.1:`port` inside the namespace at
/// `ns_path`: `method target`, with `body` (content type, bytes) if any.
/// Returns the status and the body. HTTP/1.0, so that Go's servers neither
/// chunk the reply nor keep the connection open: the body is all that
/// follows the headers.
pub fn http(
    ns_path: &str,
    port: u16,
    method: &str,
    target: &str,
    body: Option<(&str, &[u8])>,
) -> Result<(u16, String)> {
    let mut request = format!("{method} {target} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n");
    let payload = match body {
        Some((content_type, bytes)) => {
            request.push_str(&format!(
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                bytes.len()
            ));
            bytes.to_vec()
        }
        None => Vec::new(),
    };
    request.push_str("\r\n");
    let mut request = request.into_bytes();
    request.extend(payload);
    crate::netns::within(ns_path, move || -> Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), HTTP_TIMEOUT)
            .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
        s.set_read_timeout(Some(HTTP_TIMEOUT))?;
        s.set_write_timeout(Some(HTTP_TIMEOUT))?;
        s.write_all(&request)?;
        let mut reply = Vec::new();
        s.read_to_end(&mut reply)
            .with_context(|| format!("reading the reply from 127.0.0.1:{port}"))?;
        let reply = String::from_utf8(reply).context("a reply that is not UTF-8")?;
        let (head, body) = reply
            .split_once("\r\n\r\n")
            .with_context(|| format!("not an HTTP reply: {reply:?}"))?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("no status in {head:?}"))?;
        Ok((status, body.to_owned()))
    })?
}

/// `s` percent-encoded for a URL's query (everything but RFC 3986's
/// unreserved characters).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A server process in a namespace: its directory, its log, its port.
struct Server {
    /// Killed before the directory is removed (field order).
    proc: Proc,
    /// Held for its drop: removed after the process is killed.
    _dir: TempDir,
    log: PathBuf,
    ns_path: String,
    port: u16,
    what: &'static str,
}

impl Server {
    /// Starts `cmd` (made by `ns.command`) with its output into `dir/NAME.log`,
    /// and waits for `GET /-/ready` to answer 200.
    fn start(what: &'static str, mut cmd: Command, ns: &Netns, dir: TempDir, port: u16) -> Self {
        let log = dir.path().join(format!("{what}.log"));
        let out = File::create(&log).expect("creating the server's log");
        let err = out.try_clone().expect("duplicating the log's fd");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: only prctl (async-signal-safe) between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // Dies with the thread that started it, if the test process
                // is killed before the guard's drop can run.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let server = Self {
            proc: Proc::spawn(cmd),
            _dir: dir,
            log,
            ns_path: ns.path(),
            port,
            what,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            self.check_running();
            let last = match http(&self.ns_path, self.port, "GET", "/-/ready", None) {
                Ok((200, _)) => return,
                Ok((status, body)) => format!("{status} {}", body.trim()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                self.fail(&format!("not ready within {READY_WITHIN:?} (last: {last})"));
            }
            thread::sleep(POLL);
        }
    }

    /// Panics with the log if the process has exited.
    fn check_running(&self) {
        // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our own child; WNOWAIT leaves it waitable.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                self.proc.child.id(),
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: waitid filled in the SIGCHLD fields (si_pid 0: running).
        if rc == 0 && unsafe { info.si_pid() } != 0 {
            // SAFETY: as above.
            let status = unsafe { info.si_status() };
            self.fail(&format!("exited (status {status})"));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn fail(&self, why: &str) -> ! {
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "{} on 127.0.0.1:{} {why}; the end of its log:\n{}",
            self.what,
            self.port,
            tail.join("\n")
        );
    }

    fn get(&self, target: &str) -> (u16, String) {
        http(&self.ns_path, self.port, "GET", target, None)
            .unwrap_or_else(|e| self.fail(&format!("did not answer GET {target}: {e:#}")))
    }

    /// GETs a JSON API answering `{"status": "success", "data": …}`; returns
    /// `data`.
    fn api(&self, target: &str) -> serde_json::Value {
        let (status, body) = self.get(target);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| {
            self.fail(&format!(
                "answered GET {target} with non-JSON ({e}): {body}"
            ))
        });
        if status != 200 || v["status"] != "success" {
            self.fail(&format!("answered GET {target} with {status}: {body}"));
        }
        v["data"].clone()
    }

    /// Polls `f` until it returns something, for at most `within`; panics
    /// naming `what` and `f`'s last answer (its `Err`) when it never does.
    fn wait_for<T>(
        &self,
        within: Duration,
        what: &str,
        mut f: impl FnMut() -> std::result::Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            self.check_running();
            match f() {
                Ok(v) => return v,
                Err(last) if Instant::now() >= deadline => self.fail(&format!(
                    "never showed {what} within {within:?}; last: {last}"
                )),
                Err(_) => thread::sleep(POLL),
            }
        }
    }
}

/// A Prometheus server (Debian's `prometheus`) in a test namespace.
pub struct Prometheus {
    server: Server,
}

impl Prometheus {
    /// The configuration of one scrape job `job` over `targets`, scraped and
    /// evaluated every `interval` (e.g. `"1s"`), with `rule_files` (absolute
    /// paths).
    pub fn config(job: &str, targets: &[String], interval: &str, rule_files: &[&Path]) -> String {
        let mut yaml = format!(
            "global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n\
             rule_files:\n"
        );
        for f in rule_files {
            yaml.push_str(&format!("  - {:?}\n", f.display().to_string()));
        }
        yaml.push_str(&format!(
            "scrape_configs:\n  - job_name: {job:?}\n    static_configs:\n      - targets: {}\n",
            serde_json::to_string(targets).expect("strings serialize")
        ));
        yaml
    }

    /// The `alerting:` section that sends alerts to the Alertmanagers on
    /// these loopback ports (all of them, as Prometheus does with a
    /// cluster), to append to a [`Prometheus::config`].
    pub fn alerting(alertmanager_ports: &[u16]) -> String {
        let targets: Vec<String> = alertmanager_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!(
            "alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: {}\n",
            serde_json::to_string(&targets).expect("strings serialize")
        )
    }

    /// Starts Prometheus in `ns` on 127.0.0.1:`port` with `config` (YAML)
    /// and waits until it is ready.
    #[track_caller]
    pub fn start(ns: &Netns, port: u16, config: &str) -> Self {
        let dir = TempDir::new("prometheus");
        let config = dir.write("prometheus.yml", config);
        let data = dir.path().join("data");
        let mut cmd = ns
            .command(program(&["prometheus"]))
            .expect("entering the namespace");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // Debian's defaults point at /usr/share/prometheus; unneeded.
            .arg(format!("--web.console.templates={}", dir.path().display()))
            .arg(format!("--web.console.libraries={}", dir.path().display()));
        Self {
            server: Server::start("prometheus", cmd, ns, dir, port),
        }
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.server.log()
    }

    /// `GET /api/v1/…` (e.g. `"targets"`, `"rules"`); returns `data`.
    pub fn api(&self, path: &str) -> serde_json::Value {
        self.server.api(&format!("/api/v1/{path}"))
    }

    /// An instant query; returns `data.result` (a vector's samples).
    pub fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let data = self.api(&format!("query?query={}", url_encode(expr)));
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// An instant query as Prometheus answers it, without failing the test:
    /// (HTTP status, the whole JSON reply). For checking that an expression
    /// is accepted at all.
    pub fn try_query(&self, expr: &str) -> (u16, serde_json::Value) {
        let (status, body) = self
            .server
            .get(&format!("/api/v1/query?query={}", url_encode(expr)));
        (
            status,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// The value of a query's one sample; `None` while it has none (and
    /// panics on more than one).
    pub fn value(&self, expr: &str) -> Option<f64> {
        let result = self.query(expr);
        match &result[..] {
            [] => None,
            [sample] => sample["value"][1].as_str().and_then(|v| v.parse().ok()),
            _ => panic!("{expr}: more than one sample: {result:?}"),
        }
    }

    /// How many rule group evaluations have begun, summed over the groups
    /// (Prometheus's own `prometheus_rule_group_iterations_total`).
    pub fn rule_group_iterations(&self) -> f64 {
        let (status, body) = self.server.get("/metrics");
        assert_eq!(status, 200, "Prometheus's own /metrics: {body}");
        body.lines()
            .filter(|l| l.starts_with("prometheus_rule_group_iterations_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until every rule group (of one: the tests load one file) has
    /// been evaluated `times` times from start to end after this call, so
    /// that what was stored before it has been seen by the rules.
    pub fn wait_evaluated(&self, times: u32) {
        let start = self.rule_group_iterations();
        // An evaluation may be under way now: it counts as begun already.
        // Iteration start + times + 1 begins only after the `times` ones
        // before it have ended (a group evaluates one iteration at a time).
        let target = start + f64::from(times) + 1.0;
        self.wait_for(
            Duration::from_secs(u64::from(times) * 5 + 10),
            &format!("{times} rule evaluations"),
            |p| {
                let now = p.rule_group_iterations();
                if now >= target {
                    Ok(())
                } else {
                    Err(format!("{now} iterations, waiting for {target}"))
                }
            },
        );
    }

    /// Alerts, pending and firing (`/api/v1/alerts`).
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        self.api("alerts")["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The alerts named `name` in `state` ("pending" or "firing").
    pub fn alerts_named(&self, name: &str, state: &str) -> Vec<serde_json::Value> {
        self.alerts()
            .into_iter()
            .filter(|a| a["labels"]["alertname"] == name && a["state"] == state)
            .collect()
    }

    /// Polls `f` on this server until it returns `Ok`, for at most
    /// `within`; panics naming `what`, `f`'s last `Err` and the server's
    /// log otherwise.
    pub fn wait_for<T>(
        &self,
        within: Duration,
        what: &str,
        mut f: impl FnMut(&Self) -> std::result::Result<T, String>,
    ) -> T {
        self.server.wait_for(within, what, || f(self))
    }
}

/// How an Alertmanager joins others.
pub enum Cluster {
    /// A single node: `--cluster.listen-address=` (empty, no gossip).
    Single,
    /// Gossip on 127.0.0.1:`listen`, with the peers on these loopback ports.
    Peer { listen: u16, peers: Vec<u16> },
}

/// An Alertmanager (Debian's `prometheus-alertmanager`) in a test namespace.
pub struct Alertmanager {
    server: Server,
}

impl Alertmanager {
    /// Starts Alertmanager in `ns` on 127.0.0.1:`port` with `config`
    /// (YAML), joined as `cluster` says, and waits until it is ready.
    #[track_caller]
    pub fn start(ns: &Netns, port: u16, cluster: Cluster, config: &str) -> Self {
        let dir = TempDir::new("alertmanager");
        let config = dir.write("alertmanager.yml", config);
        let data = dir.path().join("data");
        let mut cmd = ns
            .command(program(&["alertmanager", "prometheus-alertmanager"]))
            .expect("entering the namespace");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        match cluster {
            Cluster::Single => {
                cmd.arg("--cluster.listen-address=");
            }
            Cluster::Peer { listen, peers } => {
                cmd.arg(format!("--cluster.listen-address=127.0.0.1:{listen}"))
                    .arg(format!("--cluster.advertise-address=127.0.0.1:{listen}"));
                for p in peers {
                    cmd.arg(format!("--cluster.peer=127.0.0.1:{p}"));
                }
            }
        }
        Self {
            server: Server::start("alertmanager", cmd, ns, dir, port),
        }
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.server.log()
    }

    /// `GET /api/v2/…` (e.g. `"status"`, `"alerts"`); the JSON reply.
    pub fn api(&self, path: &str) -> serde_json::Value {
        let target = format!("/api/v2/{path}");
        let (status, body) = self.server.get(&target);
        if status != 200 {
            self.server
                .fail(&format!("answered GET {target} with {status}: {body}"));
        }
        serde_json::from_str(&body).unwrap_or_else(|e| {
            self.server.fail(&format!(
                "answered GET {target} with non-JSON ({e}): {body}"
            ))
        })
    }

    /// `POST /api/v2/alerts` with `alerts` (a JSON array); the status.
    pub fn post_alerts(&self, alerts: &serde_json::Value) -> u16 {
        let body = alerts.to_string();
        http(
            &self.server.ns_path,
            self.server.port,
            "POST",
            "/api/v2/alerts",
            Some(("application/json", body.as_bytes())),
        )
        .unwrap_or_else(|e| self.server.fail(&format!("did not take alerts: {e:#}")))
        .0
    }

    /// Runs `amtool ARGS --alertmanager.url=…` against this server, in its
    /// namespace.
    pub fn amtool(&self, args: &[&str]) -> Output {
        let ns_file = File::open(&self.server.ns_path).expect("opening the namespace");
        let mut cmd = Command::new(amtool());
        cmd.args(args)
            .arg(format!(
                "--alertmanager.url=http://127.0.0.1:{}",
                self.server.port
            ))
            .stdin(Stdio::null());
        // SAFETY: only setns (async-signal-safe) between fork and exec.
        unsafe {
            use std::os::fd::AsRawFd as _;
            cmd.pre_exec(move || {
                if libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.output().expect("running amtool")
    }

    /// Polls `f` on this server until it returns `Ok`, for at most
    /// `within`; panics naming `what`, `f`'s last `Err` and the log
    /// otherwise.
    pub fn wait_for<T>(
        &self,
        within: Duration,
        what: &str,
        mut f: impl FnMut(&Self) -> std::result::Result<T, String>,
    ) -> T {
        self.server.wait_for(within, what, || f(self))
    }
}

/// Runs `promtool ARGS` (no namespace needed: it reads files); its output.
pub fn run_promtool<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Output {
    Command::new(promtool())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running promtool")
}

/// A webhook receiver for Alertmanager's notifications, on an ephemeral
/// port of a namespace's loopback: each notification with when it came.
pub struct Webhook {
    pub port: u16,
    notes: std::sync::Arc<std::sync::Mutex<Vec<(Instant, serde_json::Value)>>>,
}

impl Webhook {
    pub fn start(ns: &Netns) -> Self {
        let listener = ns
            .within(|| std::net::TcpListener::bind("127.0.0.1:0").expect("bind the webhook"))
            .expect("entering the namespace");
        let port = listener.local_addr().unwrap().port();
        let notes = std::sync::Arc::default();
        let got = std::sync::Arc::clone(&notes);
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let got = std::sync::Arc::clone(&got);
                thread::spawn(move || receive_notes(conn, &got));
            }
        });
        Self { port, notes }
    }

    /// Every notification so far, with when it came.
    pub fn notes(&self) -> Vec<(Instant, serde_json::Value)> {
        self.notes.lock().unwrap().clone()
    }

    /// Every alert of every notification so far.
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        self.notes
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, n)| n["alerts"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Waits up to `within` for an alert matching `pred`.
    pub fn wait(
        &self,
        within: Duration,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(a) = self.alerts().into_iter().find(|a| pred(a)) {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {within:?}; the webhook got {:?}",
                self.notes()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Serves one connection: POSTs with a JSON body, answered 200.
fn receive_notes(conn: TcpStream, got: &std::sync::Mutex<Vec<(Instant, serde_json::Value)>>) {
    use std::io::{BufRead as _, BufReader};
    let mut out = conn.try_clone().unwrap();
    let mut conn = BufReader::new(conn);
    loop {
        let mut length = 0;
        loop {
            let mut line = String::new();
            if conn.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        if conn.read_exact(&mut body).is_err() {
            return;
        }
        let note = serde_json::from_slice(&body).expect("a JSON notification");
        got.lock().unwrap().push((Instant::now(), note));
        if out
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}
