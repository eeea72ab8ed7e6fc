//! Restarts without a gap: the program and its maps are pinned, so a
//! collector stopped for a restart (SIGUSR2) or killed (SIGKILL) leaves the
//! program recording, and the next `hb run` carries on from its state.
//! `hb detach` removes what is left; pins of another map layout are replaced.
//!
//! Known limit, by design: a host that both falls silent and comes back
//! while no collector runs leaves no trace to report.

use std::{
    net::UdpSocket,
    path::PathBuf,
    process::Output,
    time::{Duration, Instant},
};

use hb_testkit::{
    collector::{self, Collector, Proc, is_event},
    netns::{Link, Netns},
};

/// The binary under test.
const HB: &str = env!("CARGO_BIN_EXE_hb");

const TIMEOUT: &str = "1500ms";
const TIMEOUT_D: Duration = Duration::from_millis(1500);
const SWEEP: &str = "200ms";
/// The clients' period.
const PERIOD: Duration = Duration::from_millis(100);

fn beat(link: &Link, from: &str) -> Proc {
    let period = format!("{}ms", PERIOD.as_millis());
    collector::beat(HB, link, from, "198.18.5.1", &period)
}

fn setup(tag: &str) -> Link {
    Link::for_test_on(tag, "198.18.5", &[2, 3])
}

/// Starts a collector; returns it with its lines up to the first summary.
fn start_seen(link: &Link) -> (Collector, Vec<serde_json::Value>) {
    let c = Collector::start(
        HB,
        &link.a,
        &[
            "--iface",
            &link.a_if,
            "--timeout",
            TIMEOUT,
            "--sweep",
            SWEEP,
        ],
    );
    let (first, mut seen) = c.wait_for(Duration::from_secs(10), |v| v["event"] == "summary");
    seen.push(first.expect("collector printed no summary").1);
    (c, seen)
}

fn start(link: &Link) -> Collector {
    start_seen(link).0
}

fn hb(ns: &Netns, args: &[&str]) -> Output {
    ns.command(HB)
        .unwrap()
        .args(args)
        .output()
        .expect("running hb")
}

/// The collector's pin directory, where the README puts it: outside the
/// host's namespace, `/sys/fs/bpf/hb/<iface>@netns-<inode>`.
fn pin_dir(link: &Link) -> PathBuf {
    let ino = link.a.inode().unwrap();
    PathBuf::from(format!("/sys/fs/bpf/hb/{}@netns-{ino}", link.a_if))
}

/// The collector's state file: `/run/hb/<iface>@netns-<inode>.json`.
fn state_file(link: &Link) -> PathBuf {
    let ino = link.a.inode().unwrap();
    PathBuf::from(format!("/run/hb/{}@netns-{ino}.json", link.a_if))
}

/// `hb status --format json` in the collector's namespace.
/// `hb status` while no collector runs: the README's exit status 3 (not
/// running), and the table as the program keeps it.
fn status(link: &Link) -> serde_json::Value {
    let out = hb(
        &link.a,
        &["status", "--iface", &link.a_if, "--format", "json"],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Polls `hb status` until `done` holds of it (at most 10 s); returns it.
fn status_until(
    link: &Link,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = status(link);
        if done(&st) {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "hb status never showed {what}: {st}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The lines up to the first summary: what the collector's first sweep
/// reported.
fn first_sweep(lines: &[serde_json::Value]) -> &[serde_json::Value] {
    let n = lines
        .iter()
        .position(|v| v["event"] == "summary")
        .expect("a summary");
    &lines[..=n]
}

/// Whether a heartbeat sent to the collector reaches a socket there, i.e.
/// whether no program is filtering them.
fn heartbeat_reaches_socket(link: &Link) -> bool {
    let rx = link
        .a
        .within(|| UdpSocket::bind("198.18.5.1:43278").expect("binding the heartbeat port"))
        .unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let tx = link
        .b
        .within(|| UdpSocket::bind("198.18.5.2:0").unwrap())
        .unwrap();
    let mut buf = [0u8; 16];
    for _ in 0..3 {
        tx.send_to(b"PyHB", "198.18.5.1:43278").unwrap();
        if rx.recv(&mut buf).is_ok() {
            return true;
        }
    }
    false
}

fn wait_new(c: &Collector, hosts: &[&str]) {
    let mut missing = hosts.to_vec();
    let (all, seen) = c.wait_for(Duration::from_secs(5), |v| {
        missing.retain(|h| !is_event(v, "new", h));
        missing.is_empty()
    });
    assert!(all.is_some(), "no `new` for {missing:?}; saw {seen:?}");
}

/// Events about hosts (not summaries) among `lines`.
fn host_events(lines: &[serde_json::Value]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter(|v| v["event"] != "summary")
        .map(|v| {
            (
                v["event"].as_str().unwrap_or("").to_owned(),
                v["host"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn summary_hosts(lines: &[serde_json::Value]) -> Option<u64> {
    lines
        .iter()
        .rev()
        .find(|v| v["event"] == "summary")
        .and_then(|v| v["hosts"].as_u64())
}

#[test]
fn restarts_carry_on_without_missing_or_repeating_anything() {
    let link = setup("rst");
    let mut first = start(&link);
    let _a = beat(&link, "198.18.5.2");
    let mut b = beat(&link, "198.18.5.3");
    wait_new(&first, &["198.18.5.2", "198.18.5.3"]);

    // SIGUSR2: exits 0, the program stays attached and keeps recording.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(first.proc.child.id() as i32, libc::SIGUSR2) };
    let status = first.proc.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(pin_dir(&link).join("link").exists(), "link not pinned");
    assert!(state_file(&link).exists(), "state file removed");
    assert!(
        !heartbeat_reaches_socket(&link),
        "heartbeats reach the stack: the program was detached"
    );

    // While no collector runs, b stops and falls silent (its last
    // heartbeat, at most a period before it stopped, is older than the
    // timeout).
    drop(b);
    let stopped = Instant::now();
    let st = status_until(&link, "b silent", |st| st["silent"] == 1);
    assert_eq!(
        (st["hosts"].as_u64(), st["alive"].as_u64()),
        (Some(2), Some(1)),
        "{st}"
    );
    // Not sooner than the timeout allows (less a period, and scheduling
    // slack for the client's last beat): else the next check is void.
    assert!(
        stopped.elapsed() + PERIOD + Duration::from_millis(500) >= TIMEOUT_D,
        "b silent {:?} after it stopped",
        stopped.elapsed()
    );

    let (mut second, mut lines) = start_seen(&link);
    // The first sweep reports b, silent in the gap...
    assert_eq!(
        host_events(first_sweep(&lines)),
        [("silent".to_owned(), "198.18.5.3".to_owned())],
        "{lines:?}"
    );
    // ...and that is all: nothing is new again.
    lines.extend(second.collect(Duration::from_millis(1500)));
    assert_eq!(
        host_events(&lines),
        [("silent".to_owned(), "198.18.5.3".to_owned())],
        "{lines:?}"
    );
    assert_eq!(summary_hosts(&lines), Some(2), "{lines:?}");

    // b comes back, then falls silent again; the collector sees both.
    b = beat(&link, "198.18.5.3");
    let (rec, seen) = second.wait_for(Duration::from_secs(3), |v| {
        is_event(v, "recovered", "198.18.5.3")
    });
    assert!(rec.is_some(), "{seen:?}");
    drop(b);
    let (silent, seen) = second.wait_for(Duration::from_secs(4), |v| {
        is_event(v, "silent", "198.18.5.3")
    });
    assert!(silent.is_some(), "{seen:?}");
    // Two more summaries: the write holding the `silent` has completed, so
    // it is recorded as reported (one reported just before a kill is
    // reported again: at least once).
    for _ in 0..2 {
        let (s, seen) = second.wait_for(Duration::from_secs(3), |v| v["event"] == "summary");
        assert!(s.is_some(), "{seen:?}");
    }

    // SIGKILL this time: nothing is cleaned up, the program records on.
    second.proc.child.kill().unwrap();
    second.proc.child.wait().unwrap();
    assert!(!heartbeat_reaches_socket(&link));
    assert!(pin_dir(&link).join("link").exists(), "link not pinned");
    assert!(state_file(&link).exists(), "state file removed");
    // b comes back while no collector runs: `hb status` still reads the
    // table, and says the collector is gone.
    let _b = beat(&link, "198.18.5.3");
    let st = status_until(&link, "b alive again", |st| st["alive"] == 2);
    assert_eq!(st["collector_running"], false, "{st}");
    assert_eq!(st["hosts"], 2, "{st}");
    assert_eq!(st["silent"], 0, "{st}");

    // The next collector's first sweep reports the recovery that happened
    // in the gap, and nothing else comes.
    let (mut third, mut lines) = start_seen(&link);
    assert_eq!(
        host_events(first_sweep(&lines)),
        [("recovered".to_owned(), "198.18.5.3".to_owned())],
        "{lines:?}"
    );
    lines.extend(third.collect(Duration::from_millis(1500)));
    let events = host_events(&lines);
    assert_eq!(
        events,
        [("recovered".to_owned(), "198.18.5.3".to_owned())],
        "{lines:?}"
    );

    // SIGTERM detaches and removes everything.
    assert_eq!(third.proc.terminate(), Some(0));
    assert!(!pin_dir(&link).exists(), "pins left behind");
    assert!(!state_file(&link).exists(), "state file left behind");
    assert!(heartbeat_reaches_socket(&link), "program still attached");
}

#[test]
fn detach_removes_what_a_killed_collector_left() {
    let link = setup("det");
    let mut c = start(&link);
    let _a = beat(&link, "198.18.5.2");
    wait_new(&c, &["198.18.5.2"]);

    // Refused while the collector runs.
    let out = hb(&link.a, &["detach", "--iface", &link.a_if]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SIGTERM"),
        "{out:?}"
    );

    c.proc.child.kill().unwrap();
    c.proc.child.wait().unwrap();
    assert!(!heartbeat_reaches_socket(&link));
    assert!(pin_dir(&link).join("link").exists(), "link not pinned");
    assert!(state_file(&link).exists(), "no state file");
    let out = hb(&link.a, &["detach", "--iface", &link.a_if]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("detached hb from"));
    assert!(!pin_dir(&link).exists(), "pins left behind");
    assert!(!state_file(&link).exists(), "state file left behind");
    let deadline = Instant::now() + Duration::from_secs(3);
    while !heartbeat_reaches_socket(&link) {
        assert!(
            Instant::now() < deadline,
            "program still attached after detach"
        );
    }
    // Twice is fine.
    let out = hb(&link.a, &["detach", "--iface", &link.a_if]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing of hb"));
}

#[test]
fn pins_of_another_layout_are_replaced_not_read() {
    let link = setup("lay");
    let dir = pin_dir(&link);
    // What an hb with map layout 1 left (bpffs holds only directories and
    // pinned objects; an empty directory stands for its maps).
    hb_userspace::xdp::ensure_bpffs().unwrap();
    std::fs::create_dir_all(dir.join("layout-1").join("maps")).unwrap();
    let c = start(&link);
    assert!(!dir.join("layout-1").exists(), "old layout kept");
    assert!(dir.join("layout-6").is_dir(), "this layout not pinned");
    let _a = beat(&link, "198.18.5.2");
    wait_new(&c, &["198.18.5.2"]);
}
