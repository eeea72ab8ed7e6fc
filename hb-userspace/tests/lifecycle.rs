//! The collector's life as the README's guarantees describe it: how it
//! stops (SIGINT, SIGTERM, `hb detach`, an error after start-up), what the
//! next `hb run` finds then, a SIGUSR2 handover under a stream of
//! heartbeats, settings that change across a restart, and a second `hb run`
//! on a watched interface. Expected values come from README.md and
//! docs/operations.md.

use std::{
    io::{BufRead as _, BufReader},
    net::{SocketAddr, UdpSocket},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use hb_testkit::{
    collector::{self, Collector, Proc, is_event},
    control::{
        self, Log, heartbeat_reaches_socket, packets, signal, start_logged, wait_exit,
        xdp_attached, xdp_gone_within,
    },
    netns::{Link, Netns},
};

/// The binary under test.
const HB: &str = env!("CARGO_BIN_EXE_hb");

const TIMEOUT: &str = "1500ms";
const SWEEP: &str = "200ms";
/// The collector's address; clients are .2, .3 and .4.
const SERVER: &str = "198.18.30.1";

fn addr(host: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([198, 18, 30, host], port))
}

fn setup_link(link: &Link) {
    link.address("198.18.30", &[2, 3, 4]);
}

fn setup(tag: &str) -> Link {
    let link = Link::for_test(tag);
    setup_link(&link);
    link
}

/// `hb beat` from 198.18.30.`host` every 100 ms, to the default port.
fn beat(link: &Link, host: u8) -> Proc {
    collector::beat(HB, link, &format!("198.18.30.{host}"), SERVER, "100ms")
}

/// `hb run` on the link's collector end with the short test timings.
fn start(link: &Link, log: &Log, extra: &[&str]) -> (Collector, Vec<serde_json::Value>) {
    let mut args = vec![
        "--iface",
        link.a_if.as_str(),
        "--timeout",
        TIMEOUT,
        "--sweep",
        SWEEP,
    ];
    args.extend_from_slice(extra);
    start_logged(HB, &link.a, &args, log)
}

fn wait_new(c: &Collector, hosts: &[&str]) {
    let mut missing = hosts.to_vec();
    let (all, seen) = c.wait_for(Duration::from_secs(6), |v| {
        missing.retain(|h| !is_event(v, "new", h));
        missing.is_empty()
    });
    assert!(all.is_some(), "no `new` for {missing:?}; saw {seen:?}");
}

/// Whether the default port on the collector is unfiltered: a heartbeat
/// from `from` reaches a socket there.
fn reaches_socket(link: &Link, from: u8) -> bool {
    heartbeat_reaches_socket(&link.a, &link.b, addr(from, 0), addr(1, 43278))
}

/// The stop signals that detach (README: "SIGINT / SIGTERM / `hb detach`:
/// program detached, pins and state file removed, exit 0").
fn stop_detaches(link: &Link, c: &mut Collector, sig: libc::c_int, log: &Log) {
    let (pins, state) = control::pins(&link.a, &link.a_if);
    assert!(pins.exists() && state.exists(), "nothing pinned: {pins:?}");
    assert!(xdp_attached(&link.a, &link.a_if));
    signal(&c.proc.child, sig);
    let code = wait_exit(&mut c.proc.child, Duration::from_secs(10));
    assert_eq!(code, Some(0), "exit status; stderr:\n{}", log.read());
    assert!(!pins.exists(), "pins left behind in {pins:?}");
    assert!(!state.exists(), "state file left behind: {state:?}");
    assert!(
        xdp_gone_within(&link.a, &link.a_if, Duration::from_secs(3)),
        "`ip link` still shows the program"
    );
}

/// Summary fields of `lines`' first summary.
fn first_summary(lines: &[serde_json::Value]) -> &serde_json::Value {
    lines
        .iter()
        .find(|v| v["event"] == "summary")
        .expect("a summary")
}

#[test]
fn sigint_detaches_like_sigterm() {
    let link = setup("sigint");
    let log = Log::new("sigint");
    let (mut c, _) = start(&link, &log, &[]);
    let _a = beat(&link, 2);
    wait_new(&c, &["198.18.30.2"]);

    stop_detaches(&link, &mut c, libc::SIGINT, &log);
    assert!(reaches_socket(&link, 3), "heartbeats still filtered");

    // The next collector starts from an empty table: the host (beating
    // all along) is new again.
    // Its `new` may come in the first sweep, before the first summary.
    let (second, lines) = start(&link, &log, &[]);
    if !lines.iter().any(|v| is_event(v, "new", "198.18.30.2")) {
        wait_new(&second, &["198.18.30.2"]);
    }
}

#[test]
fn sigterm_and_detach_leave_an_empty_table() {
    let link = setup("empty");
    let log = Log::new("empty");
    let (mut first, _) = start(&link, &log, &[]);
    let a = beat(&link, 2);
    wait_new(&first, &["198.18.30.2"]);
    drop(a);

    // SIGTERM: the next collector finds nothing, the host is new again.
    stop_detaches(&link, &mut first, libc::SIGTERM, &log);
    let (mut second, lines) = start(&link, &log, &[]);
    let s = first_summary(&lines);
    assert_eq!(
        (s["hosts"].as_u64(), packets(s, "heartbeat")),
        (Some(0), 0),
        "the table or counters survived SIGTERM: {s}"
    );
    let a = beat(&link, 2);
    wait_new(&second, &["198.18.30.2"]);
    drop(a);

    // SIGUSR2 leaves everything in place; `hb detach` removes it.
    signal(&second.proc.child, libc::SIGUSR2);
    assert_eq!(
        wait_exit(&mut second.proc.child, Duration::from_secs(10)),
        Some(0)
    );
    let (pins, state) = control::pins(&link.a, &link.a_if);
    assert!(pins.exists() && xdp_attached(&link.a, &link.a_if));
    let out = control::hb(HB, &link.a, &["detach", "--iface", &link.a_if]);
    assert!(out.status.success(), "{out:?}");
    assert!(!pins.exists(), "pins left behind in {pins:?}");
    assert!(!state.exists(), "state file left behind: {state:?}");
    assert!(
        xdp_gone_within(&link.a, &link.a_if, Duration::from_secs(3)),
        "`ip link` still shows the program after hb detach"
    );
    let (third, lines) = start(&link, &log, &[]);
    let s = first_summary(&lines);
    assert_eq!(
        (s["hosts"].as_u64(), packets(s, "heartbeat")),
        (Some(0), 0),
        "the table or counters survived hb detach: {s}"
    );
    let _a = beat(&link, 2);
    wait_new(&third, &["198.18.30.2"]);
}

#[test]
fn a_crash_after_start_up_leaves_the_program_recording() {
    let link = setup("error");
    let log = Log::new("error");
    let a = beat(&link, 2);
    // A collector that crashes once the host is known (SIGABRT: the
    // process ends without any clean-up of its own). An error returned
    // after start-up takes the same way out, without the detach that only
    // SIGINT and SIGTERM ask for; but none can be caused from outside any
    // more: a failing stdout, the last one, is now given up and logged.
    let mut cmd = link.a.command(HB).unwrap();
    cmd.args([
        "run",
        "--iface",
        &link.a_if,
        "--timeout",
        TIMEOUT,
        "--sweep",
        SWEEP,
        "--summary-every",
        SWEEP,
        "--format",
        "json",
    ])
    .stdout(Stdio::piped())
    .stderr(log.stdio());
    let mut proc = Proc::spawn(cmd);
    let stdout = proc.child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        // Two summaries that count the host: the second is written only
        // after the write holding its `new` completed, which is when hb
        // records the host as reported (events whose write it has not seen
        // complete are reported again after a crash: at least once).
        let mut counted = 0;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["event"] == "summary" && v["hosts"] == 1 {
                counted += 1;
                if counted == 2 {
                    break;
                }
            }
        }
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(15))
        .unwrap_or_else(|_| panic!("the host was never counted; stderr:\n{}", log.read()));
    signal(&proc.child, libc::SIGABRT);
    let code = wait_exit(&mut proc.child, Duration::from_secs(10));
    assert_ne!(code, Some(0), "stderr:\n{}", log.read());
    drop(a);

    // The program stays attached and its pins in place...
    let (pins, state) = control::pins(&link.a, &link.a_if);
    assert!(pins.exists() && state.exists(), "pins removed on a crash");
    assert!(xdp_attached(&link.a, &link.a_if), "detached on a crash");
    let before = control::status(HB, &link.a, &link.a_if);
    assert_eq!(before["collector_running"], false, "{before}");
    assert_eq!(before["hosts"], 1, "{before}");

    // ...and keeps recording: five heartbeats from a new host are counted
    // (and reach no socket).
    let rx = link
        .a
        .within(|| UdpSocket::bind("0.0.0.0:43278").unwrap())
        .unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let tx = link
        .b
        .within(|| UdpSocket::bind("198.18.30.3:0").unwrap())
        .unwrap();
    for _ in 0..5 {
        tx.send_to(b"PyHB", addr(1, 43278)).unwrap();
    }
    let want = packets(&before, "heartbeat") + 5;
    let deadline = Instant::now() + Duration::from_secs(3);
    let after = loop {
        let s = control::status(HB, &link.a, &link.a_if);
        if packets(&s, "heartbeat") >= want || Instant::now() > deadline {
            break s;
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(packets(&after, "heartbeat"), want, "{after}");
    assert_eq!(packets(&after, "new_host"), 2, "{after}");
    assert!(rx.recv(&mut [0u8; 16]).is_err(), "a heartbeat passed");

    // The next collector carries on: the host recorded meanwhile is new,
    // the one known before is not new again.
    let (next, mut lines) = start(&link, &log, &[]);
    lines.extend(next.collect(Duration::from_millis(1000)));
    let news: Vec<_> = lines.iter().filter(|v| v["event"] == "new").collect();
    assert_eq!(news.len(), 1, "{lines:?}");
    assert!(is_event(news[0], "new", "198.18.30.3"), "{lines:?}");
    assert_eq!(first_summary(&lines)["hosts"], 2, "{lines:?}");
}

/// The veth pair's packet statistics, for a failure message.
fn veth_stats(link: &Link) -> String {
    let show = |ns: &Netns, iface: &str| {
        let out = std::process::Command::new("ip")
            .args(["-s", "-n", &ns.name, "link", "show", iface])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    format!("{}{}", show(&link.a, &link.a_if), show(&link.b, &link.b_if))
}

#[test]
fn a_sigusr2_handover_loses_no_heartbeat() {
    // Fixed MACs and a permanent neighbour entry: no ARP in the way of the
    // stream.
    const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x1e, 0x01];
    let link = Link::new(
        Netns::for_test("hoa"),
        Netns::for_test("hob"),
        "hbho0",
        "hbho1",
        Some([SERVER_MAC, [0x02, 0, 0, 0, 0x1e, 0x02]]),
    )
    .unwrap();
    setup_link(&link);
    link.b
        .ip(&[
            "neigh",
            "replace",
            SERVER,
            "lladdr",
            "02:00:00:00:1e:01",
            "dev",
            &link.b_if,
            "nud",
            "permanent",
        ])
        .unwrap();
    let log = Log::new("handover");
    let (mut first, _) = start(&link, &log, &[]);
    // Whatever reaches the stack would land here.
    let rx = link
        .a
        .within(|| UdpSocket::bind("0.0.0.0:43278").unwrap())
        .unwrap();
    rx.set_nonblocking(true).unwrap();
    let base = packets(&control::status(HB, &link.a, &link.a_if), "heartbeat");

    // A counted stream from three hosts, one heartbeat every 400 µs.
    let socks: Vec<UdpSocket> = [2u8, 3, 4]
        .into_iter()
        .map(|h| {
            link.b
                .within(move || UdpSocket::bind(addr(h, 0)).unwrap())
                .unwrap()
        })
        .collect();
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (sent, stop) = (sent.clone(), stop.clone());
        thread::spawn(move || {
            let period = Duration::from_micros(400);
            let started = Instant::now();
            let mut next = started;
            let mut n = 0u64;
            // Bounded: at most a minute, at most 150k heartbeats.
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                let now = Instant::now();
                if next > now {
                    thread::sleep(next - now);
                } else if now - next > period * 16 {
                    // Descheduled: carry on at the pace, no burst.
                    next = now;
                }
                next += period;
                if socks[(n % 3) as usize]
                    .send_to(b"PyHB", addr(1, 43278))
                    .is_ok()
                {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
                if n >= 150_000 {
                    break;
                }
            }
        })
    };
    let wait_sent = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while sent.load(Ordering::Relaxed) < n {
            assert!(Instant::now() < deadline, "the sender is stuck");
            thread::sleep(Duration::from_millis(5));
        }
    };
    wait_sent(500);
    wait_new(&first, &["198.18.30.2", "198.18.30.3", "198.18.30.4"]);

    signal(&first.proc.child, libc::SIGUSR2);
    let at_stop = sent.load(Ordering::Relaxed);
    assert_eq!(
        wait_exit(&mut first.proc.child, Duration::from_secs(10)),
        Some(0),
        "{}",
        log.read()
    );
    let (second, mut lines) = start(&link, &log, &[]);
    let at_start = sent.load(Ordering::Relaxed);
    wait_sent(at_start + 500);
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let total = sent.load(Ordering::Relaxed);
    assert!(
        at_start > at_stop,
        "no heartbeat was sent while no collector ran"
    );

    // Every heartbeat sent was recorded, exactly once, and none passed.
    let want = base + total;
    let (done, seen) = second.wait_for(Duration::from_secs(5), |v| {
        v["event"] == "summary" && packets(v, "heartbeat") >= want
    });
    lines.extend(seen);
    let last = done.map(|(_, v)| v).unwrap_or_else(|| {
        lines
            .iter()
            .rev()
            .find(|v| v["event"] == "summary")
            .cloned()
            .unwrap_or_default()
    });
    assert_eq!(
        packets(&last, "heartbeat"),
        want,
        "{total} sent ({at_stop} before SIGUSR2, {} during the restart); last summary {last}\n{}",
        at_start - at_stop,
        veth_stats(&link)
    );
    let mut buf = [0u8; 16];
    let mut passed = 0;
    while rx.recv(&mut buf).is_ok() {
        passed += 1;
    }
    assert_eq!(passed, 0, "heartbeats reached the socket");
    assert!(
        !lines.iter().any(|v| v["event"] == "new"),
        "hosts new again: {lines:?}"
    );
}

/// A text line of `hb run --format text`: when it arrived, and the line.
type TextLine = (Instant, String);

/// Reads `hb run --format text` lines on a channel.
fn text_lines(proc: &mut Proc) -> mpsc::Receiver<TextLine> {
    let stdout = proc.child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits up to `within` for a line matching `pred`; returns it and the
/// lines before it.
fn wait_line(
    rx: &mpsc::Receiver<TextLine>,
    within: Duration,
    mut pred: impl FnMut(&str) -> bool,
) -> (Option<TextLine>, Vec<String>) {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok((at, line)) if pred(&line) => return (Some((at, line)), seen),
            Ok((_, line)) => seen.push(line),
            Err(_) => break,
        }
    }
    (None, seen)
}

/// The timestamp a text line starts with, in ms since the epoch.
fn line_ms(line: &str) -> u64 {
    let ts = line.split_whitespace().next().unwrap_or_default();
    control::timestamp_ms(ts).unwrap_or_else(|| panic!("no timestamp at the start of {line:?}"))
}

#[test]
fn settings_change_across_a_restart_but_the_table_size() {
    let link = setup("settings");
    let log = Log::new("settings");
    let (mut first, _) = start(&link, &log, &["--max-hosts", "64"]);
    let a = beat(&link, 2);
    wait_new(&first, &["198.18.30.2"]);
    signal(&first.proc.child, libc::SIGUSR2);
    assert_eq!(
        wait_exit(&mut first.proc.child, Duration::from_secs(10)),
        Some(0)
    );
    drop(a);

    // Port, timeout, sweep and format all change; the table size cannot.
    let mut cmd = link.a.command(HB).unwrap();
    cmd.args([
        "run",
        "--iface",
        &link.a_if,
        "--port",
        "5000",
        "--timeout",
        "3s",
        "--sweep",
        "600ms",
        "--summary-every",
        "600ms",
        "--max-hosts",
        "128",
        "--format",
        "text",
    ])
    .stdout(Stdio::piped())
    .stderr(log.stdio());
    let mut second = Proc::spawn(cmd);
    let lines = text_lines(&mut second);
    let (summary, seen) = wait_line(&lines, Duration::from_secs(15), |l| l.contains(" summary "));
    assert!(summary.is_some(), "{seen:?}\n{}", log.read());

    // The table size is kept, with a warning.
    let stderr = log.read();
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("WARN") && l.contains("--max-hosts") && l.contains("64")),
        "no warning about --max-hosts: {stderr}"
    );
    let status = control::status(HB, &link.a, &link.a_if);
    assert_eq!(status["table_capacity"], 64, "{status}");

    // The port: the old one is no longer filtered, the new one is.
    let to = |port| addr(1, port);
    assert!(
        heartbeat_reaches_socket(&link.a, &link.b, addr(4, 0), to(43278)),
        "heartbeats to the old port are still taken"
    );
    assert!(
        !heartbeat_reaches_socket(&link.a, &link.b, addr(3, 0), to(5000)),
        "heartbeats to the new port are not taken"
    );
    let (new, seen) = wait_line(&lines, Duration::from_secs(3), |l| {
        l.contains(" new ") && l.contains("198.18.30.3 ")
    });
    assert!(
        new.is_some(),
        "the new port's heartbeat was not reported: {seen:?}"
    );

    // The timeout: a host beating to the new port, then stopping, is silent
    // after 3 s, not 1.5 s.
    let mut cmd = link.b.command(HB).unwrap();
    cmd.args([
        "beat",
        "--server",
        SERVER,
        "--port",
        "5000",
        "--period",
        "100ms",
        "--bind",
        "198.18.30.4",
    ]);
    let d = Proc::spawn(cmd);
    thread::sleep(Duration::from_millis(700));
    drop(d);
    let stopped = Instant::now();
    let (silent, seen) = wait_line(&lines, Duration::from_secs(8), |l| {
        l.contains(" silent ") && l.contains("198.18.30.4 ")
    });
    let (at, line) = silent.unwrap_or_else(|| panic!("no `silent` line: {seen:?}"));
    let silent_for = line
        .split_once("(silent for ")
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        // What follows (`, period …`) is the host's learned timing.
        .and_then(|d| hb_userspace::parse_duration(d.split(',').next()?).ok())
        .unwrap_or_else(|| panic!("no silence in {line:?}"));
    assert!(
        silent_for > Duration::from_secs(3) && at - stopped > Duration::from_millis(2500),
        "silent after {:?} (silent for {silent_for:?}): the old timeout",
        at - stopped
    );

    // The format: text, not JSON. The sweep: summaries 600 ms apart, by
    // their own timestamps.
    let mut summaries = Vec::new();
    let (_, mut rest) = wait_line(&lines, Duration::from_secs(4), |l| {
        if l.contains(" summary ") {
            summaries.push(line_ms(l));
        }
        summaries.len() >= 5
    });
    rest.extend(seen);
    assert!(
        rest.iter().chain([&line]).all(|l| !l.starts_with('{')),
        "JSON lines after the restart: {rest:?}"
    );
    assert!(summaries.len() >= 5, "{summaries:?}");
    // A sweep delayed by the machine shortens the next gap (ticks are
    // absolute), never to the old 200 ms.
    for pair in summaries.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            (400..=2000).contains(&gap),
            "summaries {gap} ms apart: {summaries:?}"
        );
    }
    let mean = (summaries[summaries.len() - 1] - summaries[0]) / (summaries.len() as u64 - 1);
    assert!((550..=1300).contains(&mean), "{summaries:?}");
    assert_eq!(
        control::hb(HB, &link.a, &["status", "--iface", &link.a_if])
            .status
            .code(),
        Some(0)
    );
    signal(&second.child, libc::SIGTERM);
    assert_eq!(
        wait_exit(&mut second.child, Duration::from_secs(10)),
        Some(0)
    );
}

#[test]
fn a_second_run_on_a_watched_interface_is_refused() {
    let link = setup("second");
    let log = Log::new("second");
    let (mut first, _) = start(&link, &log, &[]);
    let _a = beat(&link, 2);
    wait_new(&first, &["198.18.30.2"]);
    let pid = first.proc.child.id();
    let (pins, _) = control::pins(&link.a, &link.a_if);

    // Other settings, so that a replaced program would show.
    let mut cmd = link.a.command(HB).unwrap();
    cmd.args([
        "run",
        "--iface",
        &link.a_if,
        "--port",
        "5000",
        "--timeout",
        "2s",
        "--sweep",
        "500ms",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut second = Proc::spawn(cmd);
    let code = wait_exit(&mut second.child, Duration::from_secs(15));
    let mut stderr = String::new();
    std::io::Read::read_to_string(second.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(code, Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {stderr}");
    assert!(
        lines[0].starts_with("error: ")
            && lines[0].contains(&link.a_if)
            && lines[0].contains(&pid.to_string()),
        "the message names neither the interface nor the collector: {stderr}"
    );

    // The first is untouched: running, its state and program in place.
    assert!(
        first.proc.child.try_wait().unwrap().is_none(),
        "first exited"
    );
    assert!(pins.exists());
    let status = control::status(HB, &link.a, &link.a_if);
    assert_eq!(status["collector_running"], true, "{status}");
    assert_eq!(status["collector"]["pid"], pid, "{status}");
    assert_eq!(status["collector"]["port"], 43278, "{status}");
    assert!(
        !reaches_socket(&link, 3),
        "the first collector's program was replaced"
    );
    let _b = beat(&link, 4);
    wait_new(&first, &["198.18.30.3", "198.18.30.4"]);
    let (summary, _) = first.wait_for(Duration::from_secs(2), |v| v["event"] == "summary");
    assert!(summary.is_some(), "the first collector stopped sweeping");
    assert_eq!(first.proc.terminate(), Some(0), "{}", log.read());
}

#[test]
fn a_restart_with_a_bad_option_leaves_the_program_as_it_was() {
    let link = setup("badrestart");
    let log = Log::new("badrestart");
    let (mut first, _) = start(&link, &log, &[]);
    let _a = beat(&link, 2);
    wait_new(&first, &["198.18.30.2"]);
    signal(&first.proc.child, libc::SIGUSR2);
    assert_eq!(
        wait_exit(&mut first.proc.child, Duration::from_secs(10)),
        Some(0)
    );
    let before = control::status(HB, &link.a, &link.a_if);

    // Another port, and an endpoint address that is on no interface here.
    let out = control::hb(
        HB,
        &link.a,
        &[
            "run",
            "--iface",
            &link.a_if,
            "--port",
            "5000",
            "--metrics-listen",
            "198.18.99.99:9760",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert!(
        errors.len() == 1 && errors[0].contains("198.18.99.99:9760"),
        "{stderr}"
    );

    // The program of the last collector records on, as it was: heartbeats
    // to its port are taken, the state is the last collector's.
    assert!(!reaches_socket(&link, 3), "the old port is no longer taken");
    let after = control::status(HB, &link.a, &link.a_if);
    assert_eq!(after["collector"], before["collector"], "{after}");
    assert!(packets(&after, "heartbeat") > packets(&before, "heartbeat"));
    let (next, mut lines) = start(&link, &log, &[]);
    lines.extend(next.collect(Duration::from_millis(600)));
    assert!(
        !lines.iter().any(|v| is_event(v, "new", "198.18.30.2")),
        "{lines:?}"
    );
}
