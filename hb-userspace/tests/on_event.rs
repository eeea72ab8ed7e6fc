//! `--on-event CMD` with the real collector (XDP on a veth of a test
//! namespace, `hb beat` clients in the other end's): the command gets the
//! events as JSON lines on its stdin, one run at a time; a command past
//! its timeout is killed and counted while the sweeps go on; a failing one
//! is counted.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use hb_testkit::{
    collector::{self, Collector, Proc, is_event},
    netns::Link,
};
use serde_json::Value;

const HB: &str = env!("CARGO_BIN_EXE_hb");
const METRICS_PORT: u16 = 9744;

/// A directory of the test's own, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("hb-onev-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start(link: &Link, cmd: &str, timeout: &str) -> Collector {
    let metrics = format!("127.0.0.1:{METRICS_PORT}");
    let c = Collector::start(
        HB,
        &link.a,
        &[
            "--iface",
            &link.a_if,
            "--timeout",
            "1s",
            "--sweep",
            "200ms",
            // Said here: the harness adds it only to commands without spaces.
            "--summary-every",
            "200ms",
            "--metrics-listen",
            &metrics,
            "--on-event",
            cmd,
            "--on-event-timeout",
            timeout,
        ],
    );
    let (first, _) = c.wait_for(Duration::from_secs(10), |v| v["event"] == "summary");
    assert!(first.is_some(), "collector printed no summary");
    c
}

fn beat(link: &Link, from: &str, to: &str) -> Proc {
    collector::beat(HB, link, from, to, "100ms")
}

fn metric(link: &Link, name: &str) -> f64 {
    collector::scrape(&link.a, METRICS_PORT).value(name, &[])
}

/// Waits up to 10 s for `metric` to reach at least `value`.
fn metric_reaches(link: &Link, name: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = metric(link, name);
        if now >= value {
            return;
        }
        assert!(Instant::now() < deadline, "{name} is {now}, not {value}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An event without its timestamp (the command's lines are formatted
/// after the sweep's).
fn sans_ts(v: &Value) -> Value {
    let mut v = v.clone();
    v.as_object_mut().unwrap().remove("ts");
    v
}

#[test]
fn the_command_gets_the_events_as_json_lines() {
    let link = Link::for_test_on("onev", "198.18.44", &[2, 3]);
    let dir = TempDir::new("lines");
    let out = dir.0.join("events");
    let cmd = format!("cat >> {}", out.display());
    let mut c = start(&link, &cmd, "10s");
    let _a = beat(&link, "198.18.44.2", "198.18.44.1");
    let b = beat(&link, "198.18.44.3", "198.18.44.1");
    let mut stdout = Vec::new();
    let (found, seen) = c.wait_for(Duration::from_secs(5), |v| {
        is_event(v, "new", "198.18.44.3")
    });
    stdout.extend(seen);
    stdout.extend(found.map(|f| f.1));
    drop(b);
    let (found, seen) = c.wait_for(Duration::from_secs(5), |v| {
        is_event(v, "silent", "198.18.44.3")
    });
    stdout.extend(seen);
    stdout.extend(found.map(|f| f.1));
    let _b = beat(&link, "198.18.44.3", "198.18.44.1");
    let (found, seen) = c.wait_for(Duration::from_secs(5), |v| {
        is_event(v, "recovered", "198.18.44.3")
    });
    stdout.extend(seen);
    stdout.extend(found.map(|f| f.1));
    let events: Vec<Value> = stdout
        .iter()
        .filter(|v| v["event"] != "summary")
        .map(sans_ts)
        .collect();
    let kinds: Vec<String> = events
        .iter()
        .map(|v| {
            format!(
                "{} {}",
                v["event"].as_str().unwrap(),
                v["host"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    for k in [
        "new 198.18.44.2",
        "new 198.18.44.3",
        "silent 198.18.44.3",
        "recovered 198.18.44.3",
    ] {
        assert!(kinds.contains(&k.to_owned()), "{k} in {kinds:?}");
    }

    // The command got the same events, in the same order, as JSON lines.
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let got: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        if got.len() >= events.len() || Instant::now() >= deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        got.iter()
            .all(|v| v["ts"].as_str().is_some_and(|t| t.ends_with('Z'))),
        "{got:?}"
    );
    let got: Vec<Value> = got.iter().map(sans_ts).collect();
    assert_eq!(got, events);
    assert!(metric(&link, "hb_on_event_runs_total") >= 1.0);
    assert_eq!(metric(&link, "hb_on_event_failures_total"), 0.0);
    assert_eq!(c.proc.terminate(), Some(0));
}

#[test]
fn a_command_past_its_timeout_is_killed_and_the_sweeps_go_on() {
    let link = Link::for_test_on("onevslow", "198.18.45", &[2, 3]);
    let dir = TempDir::new("slow");
    let mark = dir.0.join("started");
    // Records each start, then hangs (a child of its own: killed with it).
    let cmd = format!("echo x >> {}; sleep 60", mark.display());
    let mut c = start(&link, &cmd, "1s");
    let _a = beat(&link, "198.18.45.2", "198.18.45.1");
    let (found, seen) = c.wait_for(Duration::from_secs(5), |v| {
        is_event(v, "new", "198.18.45.2")
    });
    assert!(found.is_some(), "no `new`; saw {seen:?}");
    let started = Instant::now();
    // While it hangs, the collector sweeps on time (`collect` fails on a
    // late summary) and reports a new host.
    let _b = beat(&link, "198.18.45.3", "198.18.45.1");
    let (found, seen) = c.wait_for(Duration::from_secs(3), |v| {
        is_event(v, "new", "198.18.45.3")
    });
    assert!(
        found.is_some(),
        "no `new` while the command hangs; saw {seen:?}"
    );
    let lines = c.collect(Duration::from_millis(1500));
    let summaries = lines.iter().filter(|v| v["event"] == "summary").count();
    assert!(summaries >= 4, "{summaries} summaries in 1.5 s");
    metric_reaches(&link, "hb_on_event_failures_total", 1.0);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "killed at its timeout"
    );
    // Then the queued event runs (and hangs) in a second run.
    metric_reaches(&link, "hb_on_event_runs_total", 2.0);
    let runs = std::fs::read_to_string(&mark).unwrap();
    assert_eq!(runs.lines().count(), 2);
    assert_eq!(c.proc.terminate(), Some(0));
}

#[test]
fn a_failing_command_is_counted() {
    let link = Link::for_test_on("onevfail", "198.18.46", &[2]);
    let mut c = start(&link, "cat > /dev/null; exit 3", "10s");
    let _a = beat(&link, "198.18.46.2", "198.18.46.1");
    let (found, seen) = c.wait_for(Duration::from_secs(5), |v| {
        is_event(v, "new", "198.18.46.2")
    });
    assert!(found.is_some(), "no `new`; saw {seen:?}");
    metric_reaches(&link, "hb_on_event_failures_total", 1.0);
    assert_eq!(metric(&link, "hb_on_event_runs_total"), 1.0);
    // Failing commands do not stop the collector.
    c.collect(Duration::from_millis(600));
    assert_eq!(c.proc.terminate(), Some(0));
}
