//! SIGKILL in the middle of a large first sweep. The pinned table holds
//! 2^18 hosts when collectors start (filled through BPF_PROG_TEST_RUN with
//! the program loaded on the pinned maps, while no collector runs); each
//! first sweep reports every one of them `new` (and, as their heartbeats
//! are older than the timeout, `silent`). Collectors are killed:
//!
//! - at a few points of CPU time into that sweep (nothing of it is written
//!   yet: a sweep hands its lines to stdout when it is done);
//! - once the sweep is done and its lines wait for a stdout nobody reads
//!   (64 KiB of them are in the pipe, the rest in the collector's memory).
//!
//! Over all the collectors, every host must be reported `new` exactly once
//! and `silent` at most once, and every summary line and every scrape of
//! `/metrics` must count `alive + silent == hosts`. The last collector
//! carries on: hosts recover and fall silent again, counted the same way.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Read},
    net::Ipv4Addr,
    path::PathBuf,
    process::{Child, ChildStdout, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime},
};

use aya::programs::{TestRun as _, TestRunOptions};
use hb_common::net::XDP_DROP;
use hb_testkit::{
    collector::get_metrics,
    frames::{hb4, set_ipv4_src, src_addr},
    netns::Link,
    program as kit,
};
use hb_userspace::{Format, Sweeper, monotonic_ns, xdp};

/// The binary under test.
const HB: &str = env!("CARGO_BIN_EXE_hb");

const HOSTS: u32 = 1 << 18;
const TIMEOUT: &str = "2s";
const TIMEOUT_NS: u64 = 2_000_000_000;
const SWEEP: &str = "1s";
const METRICS_PORT: u16 = 9464;
/// CPU time of the collector's thread into its first sweep at which it is
/// killed, in parts of that sweep as the test times it.
const KILL_AT: [f64; 3] = [0.05, 0.35, 0.7];
/// What a resumed collector logs just before its event loop starts.
const RESUMED: &str = "carrying on from the last collector";

/// What a collector wrote to stdout.
#[derive(Default)]
struct Output {
    /// `new`, `silent` and `recovered` lines per host.
    events: HashMap<String, [u32; 3]>,
    summaries: Vec<serde_json::Value>,
    /// `events` when the first summary arrived.
    before_first_summary: Option<HashMap<String, [u32; 3]>>,
    lines: usize,
    /// Bytes after the last newline: a line cut by the kill.
    cut: Vec<u8>,
}

impl Output {
    fn add(&mut self, events: &HashMap<String, [u32; 3]>) {
        for (host, n) in events {
            let e = self.events.entry(host.clone()).or_default();
            for k in 0..3 {
                e[k] += n[k];
            }
        }
    }

    /// Hosts with an event `k` (0 new, 1 silent, 2 recovered) `n` times
    /// for which `pick(n)`, and a few of them.
    fn hosts_where(&self, k: usize, pick: impl Fn(u32) -> bool) -> (usize, Vec<&str>) {
        let hosts: Vec<&str> = (self.events.iter())
            .filter(|(_, n)| pick(n[k]))
            .map(|(h, _)| h.as_str())
            .collect();
        (hosts.len(), hosts.into_iter().take(5).collect())
    }
}

/// The string value of `"key":"…"` in a JSON line written by hb.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

/// Reads a collector's stdout to its end; summaries are also sent on
/// `summaries` as they arrive.
fn read_output(out: impl Read, summaries: Option<mpsc::Sender<serde_json::Value>>) -> Output {
    let mut r = BufReader::with_capacity(1 << 20, out);
    let mut o = Output::default();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = r.read_until(b'\n', &mut buf).expect("reading stdout");
        if n == 0 {
            return o;
        }
        if buf.last() != Some(&b'\n') {
            o.cut = buf.clone();
            continue;
        }
        o.lines += 1;
        let line = std::str::from_utf8(&buf).expect("UTF-8 line");
        let k = match field(line, "event") {
            Some("new") => 0,
            Some("silent") => 1,
            Some("recovered") => 2,
            Some("summary") => {
                let v: serde_json::Value = serde_json::from_str(line).expect("a JSON summary");
                if let Some(tx) = &summaries {
                    let _ = tx.send(v.clone());
                }
                if o.before_first_summary.is_none() {
                    o.before_first_summary = Some(o.events.clone());
                }
                o.summaries.push(v);
                continue;
            }
            _ => panic!("unexpected line {line:?}"),
        };
        let host = field(line, "host").expect("host field");
        o.events.entry(host.to_owned()).or_default()[k] += 1;
    }
}

/// hosts, alive, silent of a summary line.
fn counts(v: &serde_json::Value) -> [u64; 3] {
    ["hosts", "alive", "silent"].map(|k| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}")))
}

/// `alive <= hosts` and `alive + silent == hosts`, or a panic naming `what`.
fn check_counts([hosts, alive, silent]: [u64; 3], what: &str) {
    assert!(
        alive <= hosts && alive.checked_add(silent) == Some(hosts) && hosts <= u64::from(HOSTS),
        "{what}: hosts={hosts} alive={alive} silent={silent}"
    );
}

/// hb_hosts, hb_hosts_alive, hb_hosts_silent, scraped.
fn scrape(link: &Link) -> [u64; 3] {
    let reply = get_metrics(&link.a, METRICS_PORT);
    ["hb_hosts", "hb_hosts_alive", "hb_hosts_silent"].map(|name| {
        reply
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in {reply}"))
            .parse()
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    })
}

/// A running `hb run`, its stderr echoed and searched for `RESUMED`.
struct Run {
    child: Child,
    stdout: Option<ChildStdout>,
    resumed: mpsc::Receiver<()>,
}

impl Run {
    fn start(link: &Link) -> Self {
        let mut cmd: Command = link.a.command(HB).expect("entering the namespace");
        cmd.args(["run", "--iface", &link.a_if, "--timeout", TIMEOUT])
            .args([
                "--sweep",
                SWEEP,
                "--summary-every",
                SWEEP,
                "--format",
                "json",
            ])
            .args(["--metrics-listen", &format!("127.0.0.1:{METRICS_PORT}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning hb run");
        let stderr = child.stderr.take().unwrap();
        let (tx, resumed) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[hb] {line}");
                if line.contains(RESUMED) {
                    let _ = tx.send(());
                }
            }
        });
        let stdout = child.stdout.take();
        Self {
            child,
            stdout,
            resumed,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Nanoseconds the collector's (one) thread has run.
    fn cpu_ns(&self) -> u64 {
        let pid = self.pid();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/schedstat"))
            .expect("reading schedstat");
        stat.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// Waits until the collector's thread has run `cpu_ns` more, or at
    /// least `then_idle` and is idle again (its sweep is done); returns how
    /// much it ran.
    fn run_for(&mut self, cpu_ns: u64, then_idle: u64) -> u64 {
        let c0 = self.cpu_ns();
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut last, mut still_since) = (c0, Instant::now());
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the collector died in its first sweep: {status}");
            }
            let now = self.cpu_ns();
            if now - c0 >= cpu_ns {
                return now - c0;
            }
            if now != last {
                (last, still_since) = (now, Instant::now());
            } else if now - c0 >= then_idle && still_since.elapsed() > Duration::from_millis(500) {
                return now - c0;
            }
            assert!(Instant::now() < deadline, "the first sweep did not end");
            thread::sleep(Duration::from_micros(200));
        }
    }

    fn wait_resumed(&self) {
        self.resumed
            .recv_timeout(Duration::from_secs(30))
            .expect("the collector did not carry on from the pinned state");
    }

    /// SIGKILL, once sure the collector is still running.
    fn kill(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the collector died before it was killed: {status}");
        }
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Reads stdout on a thread; summaries also arrive on the receiver.
    fn read(
        &mut self,
    ) -> (
        thread::JoinHandle<Output>,
        mpsc::Receiver<serde_json::Value>,
    ) {
        let out = self.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        (thread::spawn(move || read_output(out, Some(tx))), rx)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn next_summary(rx: &mpsc::Receiver<serde_json::Value>, within: Duration) -> serde_json::Value {
    rx.recv_timeout(within).expect("no summary line in time")
}

/// The collector's pinned maps, as named from inside its namespace.
fn maps_dir(link: &Link) -> PathBuf {
    let iface = link.a_if.clone();
    let dir = link.a.within(move || xdp::pin_dir(&iface)).unwrap();
    std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("layout-")
        })
        .unwrap_or_else(|| panic!("no maps pinned in {}", dir.display()))
}

/// The program loaded on the pinned maps (not attached).
fn load_pinned(link: &Link) -> xdp::Loaded {
    kit::addressed(
        xdp::load_with(kit::settings(1 << 20), None, Some(&maps_dir(link)))
            .expect("loading the program on the pinned maps"),
    )
}

/// A heartbeat from each host `i` in `hosts`, stamped into the pinned table.
fn beat_into_pinned_table(link: &Link, hosts: impl Iterator<Item = u32>) {
    let mut loaded = load_pinned(link);
    let prog = xdp::program(&mut loaded.ebpf).unwrap();
    let mut frame = hb4(&[], src_addr(0));
    for i in hosts {
        set_ipv4_src(&mut frame, src_addr(i));
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                ..TestRunOptions::new()
            })
            .expect("BPF_PROG_TEST_RUN");
        assert_eq!(r.return_value, XDP_DROP);
    }
}

fn host(i: u32) -> String {
    Ipv4Addr::from(src_addr(i)).to_string()
}

#[test]
fn sigkill_in_a_large_first_sweep_loses_no_host_and_keeps_counts_consistent() {
    let link = Link::for_test("crash");
    let mut seen = Output::default();

    // A first collector sweeps an empty table and stops for a restart: the
    // program stays attached, its maps pinned, its state says "swept".
    let mut first = Run::start(&link);
    let (reader, summaries) = first.read();
    check_counts(
        counts(&next_summary(&summaries, Duration::from_secs(30))),
        "first",
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(first.pid() as i32, libc::SIGUSR2) };
    assert_eq!(first.child.wait().unwrap().code(), Some(0));
    seen.add(&reader.join().unwrap().events);

    let started = Instant::now();
    beat_into_pinned_table(&link, 0..HOSTS);
    eprintln!(
        "{HOSTS} hosts in the pinned table in {:.2?}",
        started.elapsed()
    );
    let beaten = Instant::now();
    // What a collector's first sweep costs: the same sweep here (every
    // host new and silent), by a tracker that keeps nothing, in CPU time of
    // this thread.
    let sweep_ns = {
        let loaded = load_pinned(&link);
        let mut sweeper = Sweeper::new(TIMEOUT_NS, Format::Json);
        let later = monotonic_ns() + 2 * TIMEOUT_NS;
        let c0 = kit::clock_ns(libc::CLOCK_THREAD_CPUTIME_ID);
        sweeper
            .sweep_at(&loaded.table, later, SystemTime::now())
            .unwrap();
        let ns = kit::clock_ns(libc::CLOCK_THREAD_CPUTIME_ID) - c0;
        assert!(
            sweeper.lines().len() > 2 * 50 * HOSTS as usize,
            "a short first sweep"
        );
        ns
    };
    eprintln!("a first sweep takes {} ms of CPU", sweep_ns / 1_000_000);
    // Every host silent by the collectors' first sweeps too.
    let stale = Duration::from_nanos(TIMEOUT_NS + TIMEOUT_NS / 4);
    thread::sleep(stale.saturating_sub(beaten.elapsed()));

    // Killed at points into the first sweep, its lines not written yet.
    let mut mid_sweep = 0;
    for part in KILL_AT {
        let mut run = Run::start(&link);
        let (reader, _) = run.read();
        run.wait_resumed();
        let ran = run.run_for((sweep_ns as f64 * part) as u64, sweep_ns / 2);
        run.kill();
        let out = reader.join().unwrap();
        eprintln!(
            "killed {} ms of CPU into the first sweep: {} lines written",
            ran / 1_000_000,
            out.lines
        );
        if out.lines == 0 && out.cut.is_empty() {
            mid_sweep += 1;
        }
        for s in &out.summaries {
            check_counts(counts(s), "a killed collector's summary");
        }
        seen.add(&out.events);
    }
    assert!(
        mid_sweep >= 2,
        "only {mid_sweep} collectors were killed in their sweep"
    );

    // Killed once the sweep is done and its lines wait for a stdout nobody
    // reads: a pipe's worth is written, the rest never is.
    let mut run = Run::start(&link);
    run.wait_resumed();
    let ran = run.run_for(u64::MAX, sweep_ns / 2);
    eprintln!(
        "sweep done after {} ms of CPU; waiting for stdout",
        ran / 1_000_000
    );
    run.kill();
    let out = read_output(run.stdout.take().unwrap(), None);
    eprintln!(
        "killed while its lines waited: {} lines written, a cut line of {} bytes",
        out.lines,
        out.cut.len()
    );
    assert!(out.lines > 0, "nothing was written before the kill");
    assert!(out.summaries.is_empty(), "all of the sweep was written");
    seen.add(&out.events);
    drop(run);

    // The next collector reports what none of them wrote, once.
    let mut last_run = Run::start(&link);
    let (reader, summaries) = last_run.read();
    let first_summary = next_summary(&summaries, Duration::from_secs(60));
    let [hosts, alive, silent] = counts(&first_summary);
    check_counts([hosts, alive, silent], "the first summary after the kills");
    check_counts(scrape(&link), "/metrics after the kills");
    // Hosts beat again: a quarter of them recover, then fall silent again.
    beat_into_pinned_table(&link, (0..HOSTS).step_by(4));
    let mut recovered = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = next_summary(&summaries, Duration::from_secs(10));
        let c = counts(&v);
        check_counts(c, "a summary");
        check_counts(scrape(&link), "/metrics");
        recovered |= c[1] == u64::from(HOSTS / 4);
        if recovered && c[1] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery and silence: {v}");
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(last_run.pid() as i32, libc::SIGTERM) };
    assert_eq!(last_run.child.wait().unwrap().code(), Some(0));
    let out = reader.join().unwrap();
    for s in &out.summaries {
        check_counts(counts(s), "a summary");
    }
    let first = out.before_first_summary.as_ref().unwrap();

    // Up to the last collector's first summary, over all the collectors:
    // every host reported new exactly once, silent at most once, and the
    // summary counts what the lines said.
    let mut upto = Output::default();
    upto.add(&seen.events);
    upto.add(first);
    let missing: Vec<String> = (0..HOSTS)
        .map(host)
        .filter(|h| upto.events.get(h).is_none_or(|n| n[0] == 0))
        .collect();
    assert!(
        missing.is_empty(),
        "{} hosts never reported new, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(upto.events.len(), HOSTS as usize, "hosts with events");
    let (n, some) = upto.hosts_where(0, |n| n > 1);
    assert_eq!(n, 0, "hosts reported new more than once, e.g. {some:?}");
    let (n, some) = upto.hosts_where(1, |n| n > 1);
    assert_eq!(n, 0, "hosts reported silent more than once, e.g. {some:?}");
    let (n, some) = upto.hosts_where(2, |n| n > 0);
    assert_eq!(n, 0, "hosts reported recovered, e.g. {some:?}");
    let (told_silent, _) = upto.hosts_where(1, |n| n == 1);
    assert_eq!(
        [hosts, silent],
        [u64::from(HOSTS), told_silent as u64],
        "{first_summary}"
    );

    // And over the whole run: still new once only.
    seen.add(&out.events);
    let (n, some) = seen.hosts_where(0, |n| n != 1);
    assert_eq!(n, 0, "hosts not reported new exactly once, e.g. {some:?}");
}
