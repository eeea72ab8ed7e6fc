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
const SWEEP: &str = "200ms";

fn beat(link: &Link, from: &str) -> Proc {
    collector::beat(HB, link, from, "198.18.5.1", "100ms")
}

fn setup(tag: &str) -> Link {
    let link = Link::for_test(tag);
    link.a
        .ip(&["addr", "add", "198.18.5.1/24", "dev", &link.a_if])
        .unwrap();
    for a in ["198.18.5.2/24", "198.18.5.3/24"] {
        link.b.ip(&["addr", "add", a, "dev", &link.b_if]).unwrap();
    }
    link
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

/// The collector's pin directory, as named from inside its namespace.
fn pin_dir(link: &Link) -> PathBuf {
    let iface = link.a_if.clone();
    link.a
        .within(move || hb_userspace::xdp::pin_dir(&iface))
        .unwrap()
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
    assert!(
        !heartbeat_reaches_socket(&link),
        "heartbeats reach the stack: the program was detached"
    );

    // While no collector runs, b stops and falls silent.
    drop(b);
    std::thread::sleep(Duration::from_millis(2500));

    let (mut second, mut lines) = start_seen(&link);
    // Exactly one event: b went silent in the gap. Nothing is new again.
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

    // SIGKILL this time: nothing is cleaned up, the program records on.
    second.proc.child.kill().unwrap();
    second.proc.child.wait().unwrap();
    assert!(!heartbeat_reaches_socket(&link));
    // b comes back while no collector runs.
    let _b = beat(&link, "198.18.5.3");
    std::thread::sleep(Duration::from_millis(500));
    // `hb status` still reads the table, and says the collector is gone
    // (exit status 3: not running).
    let out = hb(
        &link.a,
        &["status", "--iface", &link.a_if, "--format", "json"],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["collector_running"], false, "{status}");
    assert_eq!(status["hosts"], 2, "{status}");
    assert_eq!(status["alive"], 2, "{status}");

    // The next collector reports the recovery that happened in the gap, once.
    let (mut third, mut lines) = start_seen(&link);
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
    let out = hb(&link.a, &["detach", "--iface", &link.a_if]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("detached hb from"));
    assert!(!pin_dir(&link).exists());
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
    let _a = beat(&link, "198.18.5.2");
    wait_new(&c, &["198.18.5.2"]);
}
