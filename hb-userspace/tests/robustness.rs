//! What must not end or blind a running collector: a SIGHUP, a namespace
//! whose sockets are IPv6-only by default, a stdout whose reader is gone.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use hb_testkit::{
    collector::{Collector, Proc, beat, is_event},
    netns::{Link, Netns},
};

/// The binary under test.
const HB: &str = env!("CARGO_BIN_EXE_hb");

fn summaries(lines: &[serde_json::Value]) -> usize {
    lines.iter().filter(|v| v["event"] == "summary").count()
}

#[test]
fn sighup_is_logged_and_ignored() {
    let link = Link::for_test("hup");
    let mut collector = Collector::start(
        HB,
        &link.a,
        &[
            "--ingest",
            "socket",
            "--port",
            "43290",
            "--sweep",
            "100ms",
            "--timeout",
            "1s",
        ],
    );
    let (first, _) = collector.wait_for(Duration::from_secs(5), |v| v["event"] == "summary");
    assert!(first.is_some(), "no summary from the collector");
    let pid = collector.proc.child.id() as i32;
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    // Still there and still sweeping (SIGHUP's default action ends the
    // process with exit status 129).
    let after = collector.collect(Duration::from_millis(800));
    assert!(
        collector.proc.child.try_wait().unwrap().is_none(),
        "hb exited on SIGHUP"
    );
    assert!(
        summaries(&after) >= 3,
        "sweeps stopped after SIGHUP: {after:?}"
    );
    assert_eq!(collector.proc.terminate(), Some(0));
}

#[test]
fn socket_mode_hears_ipv4_hosts_where_sockets_are_ipv6_only() {
    let link = Link::for_test_on("v6only", "198.18.9", &[2]);
    // Per namespace: `[::]` sockets bound here take IPv6 only by default.
    link.a
        .within(|| std::fs::write("/proc/sys/net/ipv6/bindv6only", "1"))
        .unwrap()
        .unwrap();
    let collector = Collector::start(
        HB,
        &link.a,
        &["--ingest", "socket", "--sweep", "100ms", "--timeout", "1s"],
    );
    let _beat = beat(HB, &link, "198.18.9.2", "198.18.9.1", "100ms");
    let started = Instant::now();
    let (new, seen) =
        collector.wait_for(Duration::from_secs(5), |v| is_event(v, "new", "198.18.9.2"));
    assert!(
        new.is_some(),
        "IPv4 host never heard after {:?} (bindv6only=1): {seen:?}",
        started.elapsed()
    );
}

#[test]
fn a_collector_whose_stdout_reader_is_gone_keeps_recording_and_serving() {
    let link = Link::for_test_on("nostdout", "198.18.10", &[2]);
    let mut cmd = link.a.command(HB).unwrap();
    cmd.args([
        "run",
        "--ingest",
        "socket",
        "--sweep",
        "100ms",
        "--timeout",
        "1s",
        "--metrics-listen",
        "127.0.0.1:9761",
    ])
    .stdout(Stdio::piped());
    let mut proc = Proc::spawn(cmd);
    // The reader goes away before the first sweep writes anything.
    drop(proc.child.stdout.take());
    let _beat = beat(HB, &link, "198.18.10.2", "198.18.10.1", "100ms");
    let deadline = Instant::now() + Duration::from_secs(10);
    let heartbeats = || -> Option<f64> {
        let reply = try_metrics(&link.a, 9761)?;
        let body = reply.split("\r\n\r\n").nth(1)?;
        let lines = body.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).ok()?;
        scrape
            .samples
            .iter()
            .find(|s| s.metric == "hb_heartbeats_total")
            .and_then(|s| match s.value {
                prometheus_parse::Value::Counter(v) => Some(v),
                _ => None,
            })
    };
    // Heartbeats keep being counted, sweeps keep running, well after the
    // first sweeps' lines failed to be written.
    let mut last = 0.0;
    let mut rises = 0;
    while rises < 5 && Instant::now() < deadline {
        assert!(
            proc.child.try_wait().unwrap().is_none(),
            "hb exited when its stdout reader went away"
        );
        let now = heartbeats().unwrap_or(0.0);
        if now > last {
            rises += 1;
            last = now;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(rises, 5, "the heartbeat count stopped rising at {last}");
    assert_eq!(proc.terminate(), Some(0));
}

/// `GET /metrics` on 127.0.0.1:`port` in `ns`; None while nothing listens.
fn try_metrics(ns: &Netns, port: u16) -> Option<String> {
    use std::io::{Read as _, Write as _};
    ns.within(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: hb\r\n\r\n")
            .ok()?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).ok()?;
        Some(reply)
    })
    .expect("running in the namespace")
}
