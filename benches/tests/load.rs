//! The load test's harness, tested on a small fleet: its frames reach a real
//! UDP socket, and a short XDP run of steady and silent-1% accounts every
//! heartbeat and sees exactly the expected events. Runs as root.

use std::{
    net::UdpSocket,
    path::PathBuf,
    time::{Duration, Instant},
};

use hb_benches::load::{
    collector::Ingest,
    fleet::Fleet,
    fleet::Hosts,
    generator::{Generator, Traffic},
    scenarios::{self, Config, Scenario},
    topology::{self, Topology},
};

/// The debug `hb` that `cargo test --workspace` builds for hb-userspace's
/// own integration tests: target/debug/hb, next to target/debug/deps.
fn hb() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let hb = exe.parent().unwrap().parent().unwrap().join("hb");
    assert!(
        hb.exists(),
        "{} missing: run the whole suite (cargo xtask test), which builds it",
        hb.display()
    );
    hb
}

fn tag(prefix: &str) -> String {
    format!("{prefix}{:x}", std::process::id())
}

#[test]
fn frames_reach_a_udp_socket_over_both_families() {
    let topo = Topology::new(&tag("f")).unwrap();
    // Sockets bound in the collector namespace, as a socket-mode collector
    // would be: the kernel's own checks (IPv4 header checksum, IPv6 UDP
    // checksum, lengths, reverse path) must accept the generator's frames.
    let (v4, v6) = topo
        .collector
        .within(|| {
            let v4 = UdpSocket::bind("198.18.0.1:43299").unwrap();
            let v6 = UdpSocket::bind("[fd00:4842::1]:43299").unwrap();
            (v4, v6)
        })
        .unwrap();
    let fleet = Fleet::new(50);
    let mut g = Generator::open(&topo.generator, &topo.b_if, fleet, 43299, 16).unwrap();
    let sent = g
        .run(&Traffic {
            hosts: Hosts::range(0, 40),
            rate: None,
            junk: false,
            duration: Duration::from_secs(5),
            max_packets: 40,
        })
        .unwrap();
    assert_eq!(sent.heartbeats, 40);
    let mut seen = [false; 40];
    let mut buf = [0u8; 64];
    for sock in [&v4, &v6] {
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            assert_eq!(&buf[..n], b"PyHB");
            let i = fleet.index(from.ip()).expect("a simulated host") as usize;
            assert!(!seen[i], "{from} twice");
            seen[i] = true;
        }
    }
    let missing: Vec<_> = (0..40u32)
        .filter(|&i| !seen[i as usize])
        .map(|i| fleet.addr(i))
        .collect();
    assert!(missing.is_empty(), "not received: {missing:?}");
    assert!(fleet.families(40).1 > 0, "no IPv6 host among 40");
    let _ = topology::COLLECTOR_V6;
}

#[test]
fn small_xdp_run_accounts_every_heartbeat_and_reports_the_silent_hosts() {
    let cfg = Config {
        hb: hb(),
        hosts: 10_000,
        ipv6_percent: 10,
        period: Duration::from_secs(1),
        timeout: Duration::from_millis(2500),
        sweep: Duration::from_millis(500),
        duration: Duration::from_secs(3),
        rate: None,
        junk_hosts: 100,
        batch: 64,
        port: hb_common::DEFAULT_PORT,
        max_packets: 1_000_000,
        tag: tag("s"),
    };
    cfg.validate().unwrap();
    let start = Instant::now();
    for sc in [Scenario::Steady, Scenario::Silent] {
        let row = scenarios::run(&cfg, sc, Ingest::Xdp, false).unwrap();
        assert!(
            row.problems.is_empty(),
            "{}: {:?} (notes {:?})",
            sc.name(),
            row.problems,
            row.notes
        );
        assert!(
            row.sent.heartbeats >= 20_000,
            "{}: {:?}",
            sc.name(),
            row.sent
        );
        assert_eq!(row.accounted(), row.sent.heartbeats, "{}", sc.name());
        let events = |e: &str| {
            row.counters
                .get(&format!("hb_events_total{{event=\"{e}\"}}"))
        };
        assert_eq!(events("new"), 10_000, "{}", sc.name());
        let silent = if sc == Scenario::Silent { 100 } else { 0 };
        assert_eq!(events("silent"), silent, "{}", sc.name());
        assert_eq!(events("recovered"), 0, "{}", sc.name());
    }
    eprintln!("load harness test took {:?}", start.elapsed());
}
