//! Socket mode: heartbeats received on a UDP socket through io_uring feed
//! the same sweeper, events and endpoints; `--ingest auto` falls back to it
//! where XDP cannot be used.

use std::{
    net::UdpSocket,
    process::Stdio,
    time::{Duration, Instant},
};

use hb_testkit::{
    collector::{Collector, Metrics, beat, is_event, scrape},
    netns::Link,
};

/// The binary under test.
const HB: &str = env!("CARGO_BIN_EXE_hb");

fn setup(tag: &str) -> Link {
    let link = Link::for_test(tag);
    link.a
        .ip(&["addr", "add", "198.18.7.1/24", "dev", &link.a_if])
        .unwrap();
    link.a
        .ip(&["addr", "add", "fd00:4842::1/64", "dev", &link.a_if, "nodad"])
        .unwrap();
    for a in ["198.18.7.2/24", "198.18.7.3/24"] {
        link.b.ip(&["addr", "add", a, "dev", &link.b_if]).unwrap();
    }
    link.b
        .ip(&["addr", "add", "fd00:4842::2/64", "dev", &link.b_if, "nodad"])
        .unwrap();
    link
}

#[test]
fn socket_mode_reports_like_xdp() {
    let link = setup("sock");
    let collector = Collector::start(
        HB,
        &link.a,
        &[
            "--ingest",
            "socket",
            "--timeout",
            "1500ms",
            "--sweep",
            "200ms",
            "--metrics-listen",
            "127.0.0.1:9751",
        ],
    );
    let _a = beat(HB, &link, "198.18.7.2", "198.18.7.1", "100ms");
    let mut b = beat(HB, &link, "198.18.7.3", "198.18.7.1", "100ms");
    let _c = beat(HB, &link, "fd00:4842::2", "fd00:4842::1", "100ms");
    let mut missing = vec!["198.18.7.2", "198.18.7.3", "fd00:4842::2"];
    let (all, seen) = collector.wait_for(Duration::from_secs(5), |v| {
        missing.retain(|h| !is_event(v, "new", h));
        missing.is_empty()
    });
    assert!(all.is_some(), "no `new` for {missing:?}: {seen:?}");

    drop(b);
    let (silent, seen) = collector.wait_for(Duration::from_secs(4), |v| {
        is_event(v, "silent", "198.18.7.3")
    });
    assert!(silent.is_some(), "{seen:?}");
    let others: Vec<_> = seen.iter().filter(|v| v["event"] != "summary").collect();
    assert!(others.is_empty(), "{others:?}");
    b = beat(HB, &link, "198.18.7.3", "198.18.7.1", "100ms");
    let (rec, seen) = collector.wait_for(Duration::from_secs(3), |v| {
        is_event(v, "recovered", "198.18.7.3")
    });
    assert!(rec.is_some(), "{seen:?}");
    drop(b);

    // Not a heartbeat: counted, never a host.
    let tx = link
        .b
        .within(|| UdpSocket::bind("198.18.7.2:0").unwrap())
        .unwrap();
    for payload in [&b"PyHb"[..], b"PyHB!", b""] {
        tx.send_to(payload, "198.18.7.1:43278").unwrap();
    }
    // Scrapes show the last sweep: poll until one has counted them.
    let wrong = |m: &Metrics| m.value("hb_packets_total", &[("outcome", "wrong_payload")]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let m = loop {
        let m = scrape(&link.a, 9751);
        if wrong(&m) >= 3.0 || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(wrong(&m), 3.0);
    assert_eq!(m.value("hb_hosts", &[]), 3.0);
    assert_eq!(m.value("hb_build_info", &[("ingest", "socket")]), 1.0);
}

#[test]
fn auto_falls_back_to_a_socket_without_bpf() {
    let link = setup("auto");
    let log = std::env::temp_dir().join(format!("hb-auto-{}.log", std::process::id()));
    // An unprivileged user cannot load BPF programs.
    let mut cmd = link.a.command("setpriv").unwrap();
    cmd.args([
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
        HB,
        "run",
        "--iface",
        &link.a_if,
        "--timeout",
        "1s",
        "--sweep",
        "200ms",
        "--format",
        "json",
    ])
    .stdout(Stdio::piped())
    .stderr(std::fs::File::create(&log).unwrap());
    let collector = Collector::spawn(cmd);
    let _a = beat(HB, &link, "198.18.7.2", "198.18.7.1", "100ms");
    let (new, seen) =
        collector.wait_for(Duration::from_secs(5), |v| is_event(v, "new", "198.18.7.2"));
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(new.is_some(), "{seen:?}\n{stderr}");
    assert!(
        stderr.contains("XDP is unavailable") && stderr.contains("UDP socket"),
        "{stderr}"
    );
}
