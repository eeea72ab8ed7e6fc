//! The HTTP endpoint scraped over loopback (inside the collector's
//! namespace) and parsed by a real Prometheus text-format parser.

use std::{
    io::{Read as _, Write as _},
    net::{TcpStream, UdpSocket},
    path::PathBuf,
    time::Duration,
};

use hb_testkit::{
    collector::{Collector, Metrics, Proc, is_event},
    netns::{Link, Netns},
};

/// The binary under test.
const HB: &str = env!("CARGO_BIN_EXE_hb");

/// One HTTP request; returns (status, body).
fn get(ns: &Netns, port: u16, request: &str) -> (u16, String) {
    let request = request.to_owned();
    ns.within(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the endpoint");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).expect("read the reply");
        let status = reply
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status line");
        let body = reply
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    })
    .unwrap()
}

/// `/metrics`, parsed; every lookup wants exactly one sample.
fn scrape(ns: &Netns, port: u16) -> Metrics {
    hb_testkit::collector::scrape(ns, port)
}

/// The `key=value` words of a line of `hb status` text, in order.
fn words(line: &str) -> Vec<(&str, &str)> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect()
}

#[test]
fn metrics_and_silent_endpoints() {
    let link = Link::for_test("met");
    link.a
        .ip(&["addr", "add", "198.18.2.1/24", "dev", &link.a_if])
        .unwrap();
    link.b
        .ip(&["addr", "add", "198.18.2.2/24", "dev", &link.b_if])
        .unwrap();
    link.b
        .ip(&["addr", "add", "198.18.2.3/24", "dev", &link.b_if])
        .unwrap();
    let port = 9743;
    let listen = format!("127.0.0.1:{port}");
    let collector = Collector::start(
        HB,
        &link.a,
        &[
            "--iface",
            &link.a_if,
            "--timeout",
            "1s",
            "--sweep",
            "200ms",
            "--max-hosts",
            "4096",
            "--metrics-listen",
            &listen,
            "--metrics-silent-hosts",
            "10",
        ],
    );
    assert!(
        collector
            .wait_for(Duration::from_secs(10), |v| v["event"] == "summary")
            .0
            .is_some()
    );

    let beat = |from: &str| {
        let mut cmd = link.b.command(HB).unwrap();
        cmd.args([
            "beat",
            "--server",
            "198.18.2.1",
            "--period",
            "100ms",
            "--bind",
            from,
        ]);
        Proc::spawn(cmd)
    };
    let _alive = beat("198.18.2.2");
    let stopped = beat("198.18.2.3");
    let mut missing = vec!["198.18.2.2", "198.18.2.3"];
    let (all, _) = collector.wait_for(Duration::from_secs(5), |v| {
        missing.retain(|h| !is_event(v, "new", h));
        missing.is_empty()
    });
    assert!(all.is_some(), "hosts never appeared: {missing:?}");

    // A client that connects and says nothing must not hold up sweeps.
    let idle = link
        .a
        .within(move || TcpStream::connect(("127.0.0.1", port)).unwrap())
        .unwrap();

    drop(stopped);
    let (silent, seen) = collector.wait_for(Duration::from_secs(4), |v| {
        is_event(v, "silent", "198.18.2.3")
    });
    assert!(silent.is_some(), "no silent event; saw {seen:?}");
    // Let the next summary land so the scrape reflects this sweep.
    assert!(
        collector
            .wait_for(Duration::from_secs(2), |v| v["event"] == "summary")
            .0
            .is_some()
    );

    let m = scrape(&link.a, port);
    assert_eq!(m.value("hb_hosts", &[]), 2.0);
    assert_eq!(m.value("hb_hosts_alive", &[]), 1.0);
    assert_eq!(m.value("hb_hosts_silent", &[]), 1.0);
    assert!(m.value("hb_heartbeats_total", &[]) >= 2.0);
    assert_eq!(m.value("hb_packets_total", &[("outcome", "new_host")]), 2.0);
    assert_eq!(m.value("hb_table_capacity", &[]), 4096.0);
    assert_eq!(m.value("hb_table_used", &[]), 2.0);
    assert_eq!(m.value("hb_events_total", &[("event", "silent")]), 1.0);
    assert_eq!(m.value("hb_events_total", &[("event", "new")]), 2.0);
    assert_eq!(m.value("hb_events_total", &[("event", "recovered")]), 0.0);
    assert!(m.value("hb_sweep_duration_seconds", &[]) > 0.0);
    assert_eq!(
        m.value("hb_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );
    // Per-host series: the silent host only.
    let per_host: Vec<_> = m.samples("hb_host_silent_seconds", &[]).collect();
    assert_eq!(per_host.len(), 1, "{per_host:?}");
    assert_eq!(per_host[0].labels.get("host"), Some("198.18.2.3"));

    // `hb status` reads the same state from the pinned maps.
    let status = |format: &str| {
        let out = link
            .a
            .command(HB)
            .unwrap()
            .args(["status", "--iface", &link.a_if, "--format", format])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = status("json");
    assert_eq!(code, Some(0), "{err}");
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            st["hosts"].as_u64(),
            st["alive"].as_u64(),
            st["silent"].as_u64()
        ),
        (Some(2), Some(1), Some(1)),
        "{st}"
    );
    assert_eq!(st["silent_hosts"]["hosts"][0]["host"], "198.18.2.3");
    assert_eq!(st["collector"]["timeout_ms"], 1000);
    assert!(st["packets"]["heartbeat"].as_u64().unwrap() >= 2);
    let (code, out, _) = status("text");
    assert_eq!(code, Some(0));
    let counts = out
        .lines()
        .find(|l| l.starts_with("hosts="))
        .unwrap_or_else(|| panic!("no counts line: {out}"));
    assert_eq!(
        words(counts)[..3],
        [("hosts", "2"), ("alive", "1"), ("silent", "1")],
        "{out}"
    );
    let silent_lines: Vec<_> = out
        .lines()
        .filter(|l| l.trim_start().starts_with("198.18."))
        .collect();
    assert_eq!(silent_lines.len(), 1, "{out}");
    assert_eq!(
        silent_lines[0].split_whitespace().next(),
        Some("198.18.2.3"),
        "{out}"
    );

    let (status, body) = get(&link.a, port, "GET /silent HTTP/1.1\r\n\r\n");
    assert_eq!(status, 200);
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["total"], 1);
    assert_eq!(page["hosts"][0]["host"], "198.18.2.3");
    assert!(page["hosts"][0]["silent_for_ms"].as_u64().unwrap() >= 1000);
    assert!(
        page["hosts"][0]["last_seen"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    let (status, body) = get(
        &link.a,
        port,
        "GET /silent?offset=1&limit=5 HTTP/1.1\r\n\r\n",
    );
    assert_eq!(status, 200);
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            page["total"].as_u64(),
            page["hosts"].as_array().map(Vec::len)
        ),
        (Some(1), Some(0))
    );

    // Bad requests get HTTP errors, and the collector carries on.
    assert_eq!(
        get(&link.a, port, "GET /silent?limit=lots HTTP/1.1\r\n\r\n").0,
        400
    );
    assert_eq!(
        get(&link.a, port, "GET /silent?limit=10001 HTTP/1.1\r\n\r\n").0,
        400
    );
    assert_eq!(
        get(
            &link.a,
            port,
            "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
        )
        .0,
        405
    );
    assert_eq!(get(&link.a, port, "GET /nope HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(get(&link.a, port, "\x01\x02 nonsense\r\n\r\n").0, 400);
    // Exactly the request limit, headers never ending (the server reads it
    // all, so closing sends no reset that could eat the reply).
    let mut huge = String::from("GET /metrics HTTP/1.1\r\nX-Pad: ");
    huge.push_str(&"a".repeat(8192 - huge.len()));
    assert_eq!(get(&link.a, port, &huge).0, 431);
    drop(idle);
    assert_eq!(scrape(&link.a, port).value("hb_hosts", &[]), 2.0);

    // Heartbeats are still recorded after all that.
    let tx = link
        .b
        .within(|| UdpSocket::bind("198.18.2.3:0").unwrap())
        .unwrap();
    tx.send_to(b"PyHB", "198.18.2.1:43278").unwrap();
    let (rec, seen) = collector.wait_for(Duration::from_secs(3), |v| {
        is_event(v, "recovered", "198.18.2.3")
    });
    assert!(rec.is_some(), "{seen:?}");

    // Pins and the state file are where the README puts them: outside the
    // host's namespace `<iface>` is `<iface>@netns-<inode>`...
    let ino = link.a.inode().unwrap();
    let pins = PathBuf::from(format!("/sys/fs/bpf/hb/{}@netns-{ino}", link.a_if));
    let state = PathBuf::from(format!("/run/hb/{}@netns-{ino}.json", link.a_if));
    assert!(pins.join("link").exists(), "no pinned link in {pins:?}");
    let maps: Vec<String> = std::fs::read_dir(pins.join("layout-6"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !maps.is_empty() && maps.iter().all(|m| m.starts_with("HB_")),
        "pinned maps in {pins:?}/layout-6: {maps:?}"
    );
    assert!(state.exists(), "no state file {state:?}");
    // ...and gone after SIGTERM.
    let mut collector = collector;
    assert_eq!(collector.proc.terminate(), Some(0));
    assert!(!pins.exists(), "pins left behind in {pins:?}");
    assert!(!state.exists(), "state file left behind: {state:?}");
    let out = link
        .a
        .command(HB)
        .unwrap()
        .args(["status", "--iface", &link.a_if])
        .output()
        .unwrap();
    // 3: not running (and nothing attached).
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no hb collector is running"));
}
