//! The whole path on real packets: `hb run` attached to a veth in one
//! namespace, `hb beat` clients in another, events read from its JSON output.

use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use hb_testkit::{
    collector::{self, Collector, Proc, is_event},
    netns::{Link, Netns},
};

/// The binary under test.
const HB: &str = env!("CARGO_BIN_EXE_hb");

const TIMEOUT: Duration = Duration::from_secs(2);
const SWEEP: Duration = Duration::from_millis(250);
/// Scheduling slack on a loaded 2-core machine, for what the test observes
/// from outside: the client's end, the line's way through a pipe.
const SLACK: Duration = Duration::from_millis(1500);
/// How late hb's own sweep may run beyond `--sweep` on a loaded 2-core
/// machine (its timer fires late, the sweep takes time; plus the coarse
/// clock's tick) before `silent_for` fails its bound. Half a sweep: a
/// report a whole sweep late still fails (see where it is used).
const SWEEP_LATE: Duration = Duration::from_millis(125);

fn beat(link: &Link, from: &str, to: &str) -> Proc {
    collector::beat(HB, link, from, to, "200ms")
}

#[test]
fn silent_and_recovered_hosts_are_reported_once() {
    let link = Link::for_test("e2e");
    let srv = &link.a;
    srv.ip(&["addr", "add", "198.18.0.1/24", "dev", &link.a_if])
        .unwrap();
    srv.ip(&["addr", "add", "fd00:4842::1/64", "dev", &link.a_if, "nodad"])
        .unwrap();
    for a in ["198.18.0.2/24", "198.18.0.3/24"] {
        link.b.ip(&["addr", "add", a, "dev", &link.b_if]).unwrap();
    }
    link.b
        .ip(&["addr", "add", "fd00:4842::2/64", "dev", &link.b_if, "nodad"])
        .unwrap();

    let timeout = format!("{}ms", TIMEOUT.as_millis());
    let sweep = format!("{}ms", SWEEP.as_millis());
    let mut collector = Collector::start(
        HB,
        srv,
        &[
            "--iface",
            &link.a_if,
            "--timeout",
            &timeout,
            "--sweep",
            &sweep,
            "--max-hosts",
            "1024",
        ],
    );
    // The first summary means the program is attached.
    let (first, _) = collector.wait_for(Duration::from_secs(10), |v| v["event"] == "summary");
    assert!(first.is_some(), "collector printed no summary");

    let a = beat(&link, "198.18.0.2", "198.18.0.1");
    let mut b = beat(&link, "198.18.0.3", "198.18.0.1");
    let c = beat(&link, "fd00:4842::2", "fd00:4842::1");
    let hosts = ["198.18.0.2", "198.18.0.3", "fd00:4842::2"];
    let mut missing: Vec<&str> = hosts.to_vec();
    let (all, seen) = collector.wait_for(Duration::from_secs(5), |v| {
        missing.retain(|h| !is_event(v, "new", h));
        missing.is_empty()
    });
    assert!(
        all.is_some(),
        "no `new` event for {missing:?}; saw {seen:?}"
    );

    // Stop b: exactly one `silent` for it, within timeout + one sweep of
    // its last heartbeat. That last one the test sends itself, a quarter
    // of a sweep (60-90 ms) after a sweep: the timeout is a whole number
    // of sweeps, so its timeout ends as far into a sweep period, and the
    // sweep that must report it comes 160-190 ms later (give or take the
    // timer's drift of a few ms): silent_for near TIMEOUT + 190 ms. A
    // report one sweep late (silent_for near TIMEOUT + SWEEP + 160-190 ms)
    // is then past the bound below in every run, which allows for a sweep
    // running up to SWEEP_LATE late.
    assert!(TIMEOUT.as_millis().is_multiple_of(SWEEP.as_millis()));
    const AFTER_SWEEP: Duration = Duration::from_millis(60);
    const RESEND: Duration = Duration::from_millis(30);
    drop(b);
    let tx_b = link
        .b
        .within(|| UdpSocket::bind("198.18.0.3:0").expect("bind in client namespace"))
        .unwrap();
    let mut seen = Vec::new();
    let last_beat = loop {
        let (summary, lines) = collector.wait_for(SWEEP + SLACK, |v| v["event"] == "summary");
        seen.extend(lines);
        let (swept, _) = summary.expect("a summary");
        std::thread::sleep((swept + AFTER_SWEEP).saturating_duration_since(Instant::now()));
        tx_b.send_to(b"PyHB", "198.18.0.1:43278").unwrap();
        let sent = Instant::now();
        // Too long after that sweep (a queued line, a slow test thread):
        // try again after the next one.
        if sent - swept <= AFTER_SWEEP + RESEND {
            break sent;
        }
    };
    // The wait is longer than the bound, so that a late report fails the
    // bound rather than looking like no report at all.
    let (silent, lines) = collector
        .wait_for(TIMEOUT + SWEEP + SLACK + Duration::from_secs(5), |v| {
            is_event(v, "silent", "198.18.0.3")
        });
    seen.extend(lines);
    let (at, ev) =
        silent.unwrap_or_else(|| panic!("no `silent` event for the stopped client; saw {seen:?}"));
    assert!(
        at - last_beat <= TIMEOUT + SWEEP + SLACK,
        "reported {:?} after the last heartbeat",
        at - last_beat
    );
    // hb's own measure: the sweep that finds it runs at most a sweep after
    // its last beat became older than the timeout, give or take the sweep
    // running late.
    let silent_for = Duration::from_millis(ev["silent_for_ms"].as_u64().expect("silent_for_ms"));
    assert!(
        silent_for > TIMEOUT && silent_for <= TIMEOUT + SWEEP + SWEEP_LATE,
        "{silent_for:?}"
    );
    let mut later = seen;
    later.extend(collector.collect(TIMEOUT + SWEEP));
    let host_events: Vec<_> = later
        .iter()
        .filter(|v| v["event"] != "summary" && v["event"] != "new")
        .collect();
    assert!(host_events.is_empty(), "unexpected events: {host_events:?}");
    let summary = later
        .iter()
        .rev()
        .find(|v| v["event"] == "summary")
        .expect("summaries go on");
    assert_eq!(
        (
            summary["hosts"].as_u64(),
            summary["alive"].as_u64(),
            summary["silent"].as_u64()
        ),
        (Some(3), Some(2), Some(1))
    );

    // Restart it: `recovered`, and the silence it reports covers the gap.
    b = beat(&link, "198.18.0.3", "198.18.0.1");
    let (rec, seen) = collector.wait_for(Duration::from_secs(3), |v| {
        is_event(v, "recovered", "198.18.0.3")
    });
    let (_, ev) = rec.unwrap_or_else(|| panic!("no `recovered` event; saw {seen:?}"));
    assert!(ev["silent_for_ms"].as_u64().unwrap() >= TIMEOUT.as_millis() as u64);
    assert!(seen.iter().all(|v| v["event"] == "summary"), "{seen:?}");

    // Other traffic to the heartbeat port still reaches a socket; heartbeats
    // do not (they are dropped in XDP).
    let rx = srv
        .within(|| UdpSocket::bind("0.0.0.0:43278").expect("bind in collector namespace"))
        .unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let tx = link
        .b
        .within(|| UdpSocket::bind("198.18.0.2:0").expect("bind in client namespace"))
        .unwrap();
    tx.send_to(b"PyHB", "198.18.0.1:43278").unwrap();
    tx.send_to(b"hello", "198.18.0.1:43278").unwrap();
    let mut buf = [0u8; 64];
    let n = rx
        .recv(&mut buf)
        .expect("the non-heartbeat datagram reached the socket");
    assert_eq!(&buf[..n], b"hello", "a heartbeat leaked past XDP");

    drop((a, b, c));
    // Attached while it runs (so the check below can see a program)...
    assert!(
        srv.xdp_prog(&link.a_if).unwrap().is_some(),
        "no XDP program on the interface while hb runs"
    );
    assert_eq!(
        collector.proc.terminate(),
        Some(0),
        "hb run exits 0 on SIGTERM"
    );
    // ...and detached: no XDP program left on the interface.
    assert_eq!(srv.xdp_prog(&link.a_if).unwrap(), None, "still attached");
}

#[test]
fn pass_heartbeats_lets_them_reach_sockets() {
    let link = Link::for_test("pass");
    link.a
        .ip(&["addr", "add", "198.18.1.1/24", "dev", &link.a_if])
        .unwrap();
    link.b
        .ip(&["addr", "add", "198.18.1.2/24", "dev", &link.b_if])
        .unwrap();
    let mut collector = Collector::start(
        HB,
        &link.a,
        &[
            "--iface",
            &link.a_if,
            "--pass-heartbeats",
            "--port",
            "5000",
            "--sweep",
            "100ms",
            "--max-hosts",
            "16",
        ],
    );
    assert!(
        collector
            .wait_for(Duration::from_secs(10), |v| v["event"] == "summary")
            .0
            .is_some()
    );
    let rx = link
        .a
        .within(|| UdpSocket::bind("0.0.0.0:5000").unwrap())
        .unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let tx = link
        .b
        .within(|| UdpSocket::bind("198.18.1.2:0").unwrap())
        .unwrap();
    tx.send_to(b"PyHB", "198.18.1.1:5000").unwrap();
    let mut buf = [0u8; 8];
    let n = rx.recv(&mut buf).expect("heartbeat passed to the socket");
    assert_eq!(&buf[..n], b"PyHB");
    let (new, seen) =
        collector.wait_for(Duration::from_secs(3), |v| is_event(v, "new", "198.18.1.2"));
    assert!(
        new.is_some(),
        "passed heartbeat was not recorded; saw {seen:?}"
    );
    assert_eq!(collector.proc.terminate(), Some(0));
}

#[test]
fn unknown_interface_is_a_clear_error() {
    let ns = Netns::for_test("noif");
    let out = ns
        .command(HB)
        .unwrap()
        .args(["run", "--iface", "nosuch0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown interface `nosuch0`"), "{err}");
}
