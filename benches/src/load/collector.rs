//! The collector under test: the real `hb run --format json`, started in the
//! collector namespace, its event lines tallied per simulated host, its
//! `/metrics` scraped from inside the namespace.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use hb_testkit::netns::{self, Netns};
use serde::Deserialize;

use super::{fleet::Fleet, signals};

/// Where `hb run` serves /metrics inside the collector namespace.
pub const METRICS_ADDR: &str = "127.0.0.1:9743";

/// How heartbeats reach the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ingest {
    /// `hb run --ingest xdp` (or an hb without `--ingest`).
    Xdp,
    /// `hb run --ingest socket`.
    Socket,
    /// No hb: the reference socket reader (see `reference`).
    RefSocket,
}

impl Ingest {
    pub fn name(self) -> &'static str {
        match self {
            Ingest::Xdp => "xdp",
            Ingest::Socket => "socket",
            Ingest::RefSocket => "ref-socket",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "xdp" => Ok(Ingest::Xdp),
            "socket" => Ok(Ingest::Socket),
            "ref-socket" => Ok(Ingest::RefSocket),
            _ => bail!("unknown ingest mode {s:?} (expected xdp, socket or ref-socket)"),
        }
    }
}

/// Does this `hb` have `hb run --ingest` (XDP or socket)?
pub fn supports_ingest(hb: &Path) -> Result<bool> {
    let out = Command::new(hb)
        .args(["run", "--help"])
        .output()
        .with_context(|| format!("running {} run --help", hb.display()))?;
    let help = String::from_utf8_lossy(&out.stdout);
    Ok(help.contains("--ingest") && help.contains("socket"))
}

/// Does this `hb` have `hb run --summary-every`?
fn supports_summary_every(hb: &Path) -> Result<bool> {
    let out = Command::new(hb)
        .args(["run", "--help"])
        .output()
        .with_context(|| format!("running {} run --help", hb.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("--summary-every"))
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub hb: PathBuf,
    pub iface: String,
    pub port: u16,
    /// `None`: do not pass `--ingest` (an hb without it).
    pub ingest: Option<Ingest>,
    pub timeout: Duration,
    pub sweep: Duration,
    pub max_hosts: u32,
    /// `--inventory FILE` (the reload scenario).
    pub inventory: Option<PathBuf>,
    /// More options, after the others (the quality scenario's `--timeout
    /// auto`, which overrides `timeout`).
    pub extra: Vec<String>,
}

/// Host events, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    New = 0,
    Silent = 1,
    Recovered = 2,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::New, Kind::Silent, Kind::Recovered];

    pub fn name(self) -> &'static str {
        match self {
            Kind::New => "new",
            Kind::Silent => "silent",
            Kind::Recovered => "recovered",
        }
    }
}

/// What the collector printed, tallied.
#[derive(Debug, Clone)]
pub struct EventLog {
    fleet: Fleet,
    /// Events per kind per host index (saturating at 255).
    pub counts: [Vec<u8>; 3],
    pub totals: [u64; 3],
    /// Arrival of the first and last event of each kind.
    pub first: [Option<Instant>; 3],
    pub last: [Option<Instant>; 3],
    /// Largest `silent_for_ms` of a `silent` event.
    pub max_silent_for_ms: u64,
    /// Events about hosts the generator never simulated (first few kept).
    pub foreign: Vec<String>,
    pub foreign_count: u64,
    /// Lines that were not JSON events hb documents.
    pub bad_lines: Vec<String>,
    pub summaries: u64,
    /// Every summary line: when it arrived, its `unknown_hosts` (with an
    /// inventory) and its sweep's duration.
    pub summary_lines: Vec<SummaryLine>,
    /// Every host event in order, (kind, host index, arrival), once asked
    /// for (`Collector::keep_timeline`).
    pub timeline: Option<Vec<(Kind, u32, Instant)>>,
    /// `flapping` (false) and `flapping_end` (true) lines: (end, host
    /// index).
    pub flaps: Vec<(bool, u32)>,
}

/// One summary line, as the reload scenario looks at them.
#[derive(Debug, Clone, Copy)]
pub struct SummaryLine {
    pub at: Instant,
    pub unknown_hosts: Option<u64>,
    pub sweep_ms: f64,
}

impl EventLog {
    /// The longest time between two summary lines arriving after `from`
    /// (the first of them counts from `from`).
    pub fn max_summary_gap(&self, from: Instant) -> Duration {
        let mut last = from;
        let mut max = Duration::ZERO;
        for s in self.summary_lines.iter().filter(|s| s.at >= from) {
            max = max.max(s.at - last);
            last = s.at;
        }
        max
    }
}

impl EventLog {
    pub(crate) fn new(fleet: Fleet, hosts: u32) -> Self {
        let v = || vec![0u8; hosts as usize];
        Self {
            fleet,
            counts: [v(), v(), v()],
            totals: [0; 3],
            first: [None; 3],
            last: [None; 3],
            max_silent_for_ms: 0,
            foreign: Vec::new(),
            foreign_count: 0,
            bad_lines: Vec::new(),
            summaries: 0,
            summary_lines: Vec::new(),
            timeline: None,
            flaps: Vec::new(),
        }
    }

    pub(crate) fn record(&mut self, line: &str, at: Instant) {
        #[derive(Deserialize)]
        struct Line<'a> {
            event: &'a str,
            host: Option<&'a str>,
            silent_for_ms: Option<u64>,
            unknown_hosts: Option<u64>,
            sweep_ms: Option<f64>,
        }
        let Ok(l) = serde_json::from_str::<Line>(line) else {
            self.bad(line);
            return;
        };
        let kind = match l.event {
            "summary" => {
                self.summaries += 1;
                self.summary_lines.push(SummaryLine {
                    at,
                    unknown_hosts: l.unknown_hosts,
                    sweep_ms: l.sweep_ms.unwrap_or(0.0),
                });
                return;
            }
            "new" => Kind::New,
            "silent" => Kind::Silent,
            "recovered" => Kind::Recovered,
            "flapping" | "flapping_end" => {
                let end = l.event == "flapping_end";
                match l
                    .host
                    .and_then(|h| h.parse::<IpAddr>().ok())
                    .and_then(|a| self.fleet.index(a))
                {
                    Some(i) => self.flaps.push((end, i)),
                    None => self.bad(line),
                }
                return;
            }
            _ => {
                self.bad(line);
                return;
            }
        };
        let Some(host) = l.host else {
            self.bad(line);
            return;
        };
        let k = kind as usize;
        self.totals[k] += 1;
        self.first[k].get_or_insert(at);
        self.last[k] = Some(at);
        if kind == Kind::Silent {
            self.max_silent_for_ms = self.max_silent_for_ms.max(l.silent_for_ms.unwrap_or(0));
        }
        match host
            .parse::<IpAddr>()
            .ok()
            .and_then(|a| self.fleet.index(a))
            .filter(|&i| (i as usize) < self.counts[k].len())
        {
            Some(i) => {
                let c = &mut self.counts[k][i as usize];
                *c = c.saturating_add(1);
                if let Some(t) = self.timeline.as_mut() {
                    t.push((kind, i, at));
                }
            }
            None => {
                self.foreign_count += 1;
                if self.foreign.len() < 5 {
                    self.foreign.push(format!("{} {host}", kind.name()));
                }
            }
        }
    }

    fn bad(&mut self, line: &str) {
        if self.bad_lines.len() < 5 {
            self.bad_lines.push(line.chars().take(200).collect());
        }
    }
}

struct Shared {
    log: Mutex<EventLog>,
    changed: Condvar,
}

/// A running `hb run`; killed on drop.
pub struct Collector {
    child: Child,
    pid: i32,
    shared: Arc<Shared>,
    reader: Option<thread::JoinHandle<()>>,
    ns_path: String,
}

impl Collector {
    /// Starts the collector and waits until it has swept once (its program
    /// is attached by then). `hosts`: host indices its events may name.
    pub fn start(ns: &Netns, s: &Settings, fleet: Fleet, hosts: u32) -> Result<Self> {
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let mut cmd = ns.command(&s.hb)?;
        // SAFETY: only prctl (an async-signal-safe system call) between fork
        // and exec.
        unsafe {
            cmd.pre_exec(|| {
                // Should the load test be killed outright (SIGKILL), the
                // collector still gets SIGTERM and detaches.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.arg("run")
            .args(["--iface", &s.iface])
            .args(["--port", &s.port.to_string()])
            .args(if s.extra.iter().any(|a| a == "--timeout") {
                Vec::new()
            } else {
                vec!["--timeout".to_string(), ms(s.timeout)]
            })
            .args(["--sweep", &ms(s.sweep)])
            .args(["--max-hosts", &s.max_hosts.to_string()])
            .args(["--format", "json"])
            .args(["--metrics-listen", METRICS_ADDR]);
        if let Some(ingest) = s.ingest {
            cmd.args(["--ingest", ingest.name()]);
        }
        if let Some(inventory) = &s.inventory {
            cmd.arg("--inventory").arg(inventory);
        }
        cmd.args(&s.extra);
        // A summary line every sweep (they are counted as sweeps), from an
        // hb that otherwise writes one a minute.
        if supports_summary_every(&s.hb)? {
            cmd.args(["--summary-every", &ms(s.sweep)]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", s.hb.display()))?;
        let pid = child.id() as i32;
        signals::register_child(pid);
        let stdout = child.stdout.take().expect("piped stdout");
        let shared = Arc::new(Shared {
            log: Mutex::new(EventLog::new(fleet, hosts)),
            changed: Condvar::new(),
        });
        let reader = {
            let shared = shared.clone();
            thread::Builder::new()
                .name("hb-stdout".into())
                .spawn(move || {
                    let mut lines = BufReader::with_capacity(1 << 20, stdout).lines();
                    while let Some(Ok(line)) = lines.next() {
                        let at = Instant::now();
                        let mut log = shared.log.lock().unwrap();
                        log.record(&line, at);
                        drop(log);
                        shared.changed.notify_all();
                    }
                    shared.changed.notify_all();
                })?
        };
        let mut c = Self {
            child,
            pid,
            shared,
            reader: Some(reader),
            ns_path: ns.path(),
        };
        c.wait_summaries(1, Duration::from_secs(30))
            .context("waiting for the collector's first sweep")?;
        Ok(c)
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits until `n` more summary lines (sweeps) have been printed.
    pub fn wait_summaries(&mut self, n: u64, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        let mut log = self.shared.log.lock().unwrap();
        let target = log.summaries + n;
        while log.summaries < target {
            drop(log);
            if let Some(status) = self.child.try_wait()? {
                bail!("hb run exited: {status}");
            }
            signals::check()?;
            let now = Instant::now();
            if now >= deadline {
                bail!("no sweep within {within:?}");
            }
            log = self.shared.log.lock().unwrap();
            let wait = (deadline - now).min(Duration::from_millis(100));
            log = self.shared.changed.wait_timeout(log, wait).unwrap().0;
        }
        Ok(())
    }

    /// Sends `signal` to the collector (SIGHUP: reload).
    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(self.pid, signal) };
    }

    /// From now on, keeps every host event with its arrival time.
    pub fn keep_timeline(&self) {
        self.shared
            .log
            .lock()
            .unwrap()
            .timeline
            .get_or_insert_with(Vec::new);
    }

    /// A copy of the events so far.
    pub fn events(&self) -> EventLog {
        self.shared.log.lock().unwrap().clone()
    }

    /// Scrapes `/metrics` from inside the collector namespace.
    pub fn scrape(&self) -> Result<Metrics> {
        let text = netns::within(&self.ns_path, || -> Result<String> {
            let addr: SocketAddr = METRICS_ADDR.parse().unwrap();
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .context("connecting to hb's metrics endpoint")?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: hb\r\n\r\n")?;
            let mut resp = String::new();
            s.read_to_string(&mut resp)?;
            Ok(resp)
        })??;
        Metrics::parse(&text)
    }

    /// SIGTERM, then the exit status (SIGKILL after 10 s). Returns the
    /// events printed.
    pub fn stop(mut self) -> Result<EventLog> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                bail!("hb run did not stop within 10 s of SIGTERM (killed)");
            }
            thread::sleep(Duration::from_millis(20));
        };
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        if !status.success() {
            bail!("hb run exited with {status} on SIGTERM");
        }
        Ok(self.events())
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        // SIGTERM first: hb then detaches and removes its pins itself.
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own child, which has not been reaped.
            unsafe { libc::kill(self.pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while let Ok(None) = self.child.try_wait() {
                if Instant::now() >= deadline {
                    let _ = self.child.kill();
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.wait();
        signals::unregister_child(self.pid);
    }
}

/// Samples of a Prometheus text exposition, by `name{labels}` as printed.
#[derive(Debug, Clone, Default)]
pub struct Metrics(pub HashMap<String, f64>);

impl Metrics {
    pub fn parse(response: &str) -> Result<Self> {
        let Some((head, body)) = response.split_once("\r\n\r\n") else {
            bail!("not an HTTP response from hb: {response:.200}");
        };
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            bail!(
                "hb's /metrics answered {}",
                head.lines().next().unwrap_or("")
            );
        }
        let mut m = HashMap::new();
        for line in body.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let Some((key, value)) = line.rsplit_once(' ') else {
                bail!("bad metrics line {line:?}");
            };
            let value: f64 = value
                .parse()
                .with_context(|| format!("bad metrics value in {line:?}"))?;
            m.insert(key.to_string(), value);
        }
        Ok(Self(m))
    }

    /// A sample, 0 if absent.
    pub fn get(&self, key: &str) -> u64 {
        self.0.get(key).copied().unwrap_or(0.0) as u64
    }

    /// `hb_packets_total{outcome="<outcome>"}`.
    pub fn packets(&self, outcome: &str) -> u64 {
        self.get(&format!("hb_packets_total{{outcome=\"{outcome}\"}}"))
    }

    /// Every sample minus `earlier`'s (counters since then).
    pub fn since(&self, earlier: &Metrics) -> Metrics {
        Metrics(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v - earlier.0.get(k).copied().unwrap_or(0.0)))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_events() {
        let fleet = Fleet::new(50);
        let mut log = EventLog::new(fleet, 10);
        let t = Instant::now();
        let h = |i| fleet.addr(i).to_string();
        for line in [
            format!(
                r#"{{"ts":"x","event":"new","host":"{}","last_seen_ago_ms":1}}"#,
                h(3)
            ),
            format!(
                r#"{{"ts":"x","event":"silent","host":"{}","silent_for_ms":3100}}"#,
                h(3)
            ),
            format!(
                r#"{{"ts":"x","event":"silent","host":"{}","silent_for_ms":3500}}"#,
                h(3)
            ),
            format!(r#"{{"ts":"x","event":"new","host":"{}"}}"#, h(12)),
            r#"{"ts":"x","event":"new","host":"192.0.2.1"}"#.into(),
            r#"{"ts":"x","event":"summary","hosts":1,"packets":{}}"#.into(),
            "not json".into(),
        ] {
            log.record(&line, t);
        }
        assert_eq!(log.counts[0][3], 1);
        assert_eq!(log.counts[1][3], 2);
        assert_eq!(log.totals, [3, 2, 0]);
        assert_eq!(log.max_silent_for_ms, 3500);
        assert_eq!(log.foreign_count, 2, "{:?}", log.foreign);
        assert_eq!(log.summaries, 1);
        assert_eq!(log.bad_lines, ["not json"]);
    }

    #[test]
    fn the_longest_gap_between_summaries_counts_from_the_start() {
        let fleet = Fleet::new(0);
        let mut log = EventLog::new(fleet, 1);
        let t0 = Instant::now();
        let line = r#"{"ts":"x","event":"summary","hosts":1,"unknown_hosts":0,"sweep_ms":2.5}"#;
        for ms in [1000, 2000, 4500, 5000] {
            log.record(line, t0 + Duration::from_millis(ms));
        }
        assert_eq!(log.max_summary_gap(t0), Duration::from_millis(2500));
        assert_eq!(
            log.max_summary_gap(t0 + Duration::from_millis(4000)),
            Duration::from_millis(500)
        );
        assert_eq!(log.summary_lines[0].unknown_hosts, Some(0));
        assert_eq!(log.summary_lines[0].sweep_ms, 2.5);
    }

    #[test]
    fn parses_metrics() {
        let m = Metrics::parse(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n# HELP x y\n# TYPE x counter\n\
             hb_packets_total{outcome=\"heartbeat\"} 42\nhb_hosts 7\n",
        )
        .unwrap();
        assert_eq!(m.packets("heartbeat"), 42);
        assert_eq!(m.get("hb_hosts"), 7);
        assert_eq!(m.packets("table_full"), 0);
        assert!(Metrics::parse("HTTP/1.1 404 Not Found\r\n\r\nno").is_err());
    }
}
