//! Missing hosts across restarts, with the real program: what a collector
//! reported `missing` is not reported again by the next one (SIGUSR2 for
//! an upgrade, SIGKILL), and a host reported missing that starts beating
//! while no collector runs is `recovered` once the next one sweeps. A
//! restart within the grace does not start it again.

use std::{path::PathBuf, time::Duration};

use hb_testkit::{
    collector::{self, Collector, Proc, is_event},
    netns::Link,
};

const HB: &str = env!("CARGO_BIN_EXE_hb");
const NET: &str = "198.18.64";

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn beat(link: &Link, host: u8) -> Proc {
    collector::beat(
        HB,
        link,
        &format!("{NET}.{host}"),
        &format!("{NET}.1"),
        "100ms",
    )
}

/// Events about hosts (not summaries).
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

fn last_summary(lines: &[serde_json::Value]) -> &serde_json::Value {
    lines
        .iter()
        .rev()
        .find(|v| v["event"] == "summary")
        .expect("a summary")
}

fn pair(e: &str, h: &str) -> (String, String) {
    (e.to_owned(), h.to_owned())
}

#[test]
fn missing_hosts_are_reported_once_across_restarts() {
    let link = Link::for_test_on("fmr", NET, &[2, 8, 9]);
    let dir = TempDir(std::env::temp_dir().join(format!("hb-fmr-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let csv = dir.0.join("hosts.csv");
    std::fs::write(
        &csv,
        format!("address,name\n{NET}.2,a\n{NET}.8,b\n{NET}.9,c\n"),
    )
    .unwrap();
    let args = [
        "--iface",
        &link.a_if,
        "--timeout",
        "1s",
        "--sweep",
        "200ms",
        "--inventory",
        csv.to_str().unwrap(),
        "--grace",
        "2s",
    ];
    let start = || Collector::start(HB, &link.a, &args);
    let _a = beat(&link, 2);

    // .8 and .9 never beat: missing once the grace is over, once each.
    let mut first = start();
    let mut told = Vec::new();
    let (done, seen) = first.wait_for(Duration::from_secs(8), |v| {
        if v["event"] == "missing" {
            told.push(v["host"].as_str().unwrap_or("").to_owned());
        }
        told.len() == 2
    });
    assert!(done.is_some(), "not both missing: {seen:?}");
    told.sort();
    assert_eq!(told, [format!("{NET}.8"), format!("{NET}.9")]);
    // Two more summaries: the missing lines are written and recorded.
    for _ in 0..2 {
        let (s, seen) = first.wait_for(Duration::from_secs(3), |v| v["event"] == "summary");
        assert!(s.is_some(), "{seen:?}");
    }

    // Upgrade: SIGUSR2, and .8 starts beating while no collector runs.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(first.proc.child.id() as i32, libc::SIGUSR2) };
    assert_eq!(first.proc.child.wait().unwrap().code(), Some(0));
    let _b = beat(&link, 8);
    std::thread::sleep(Duration::from_millis(500));

    // The next collector reports .8 recovered, and .9 is not missing again
    // (well past the grace).
    let second = start();
    let lines = second.collect(Duration::from_secs(4));
    assert_eq!(
        host_events(&lines),
        [pair("recovered", &format!("{NET}.8"))],
        "{lines:?}"
    );
    let rec = lines.iter().find(|v| v["event"] == "recovered").unwrap();
    assert_eq!(rec["name"], "b");
    assert!(
        rec["silent_for_ms"].as_u64().unwrap() >= 2000,
        "expected since the first collector's start: {rec}"
    );
    let s = last_summary(&lines);
    assert_eq!(
        (s["hosts"].as_u64(), s["missing"].as_u64()),
        (Some(2), Some(1)),
        "{s}"
    );

    // Killed: the next one carries on the same (and right away, at a zero
    // gap, as at an upgrade).
    let mut second = second;
    second.proc.child.kill().unwrap();
    second.proc.child.wait().unwrap();
    let third = start();
    let lines = third.collect(Duration::from_secs(4));
    assert_eq!(host_events(&lines), [], "{lines:?}");
    assert_eq!(last_summary(&lines)["missing"], 1, "{lines:?}");

    // Without it (SIGTERM detaches: the next collector starts afresh) the
    // missing host is missing again after the grace.
    let mut third = third;
    assert_eq!(third.proc.terminate(), Some(0));
    let fourth = start();
    let (m, seen) = fourth.wait_for(Duration::from_secs(8), |v| v["event"] == "missing");
    assert!(m.is_some(), "{seen:?}");
    assert!(is_event(&m.unwrap().1, "missing", &format!("{NET}.9")));
}

#[test]
fn a_restart_within_the_grace_does_not_wait_it_out_again() {
    const NET: &str = "198.18.66";
    let link = Link::for_test_on("fmg", NET, &[2]);
    let dir = TempDir(std::env::temp_dir().join(format!("hb-fmg-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let csv = dir.0.join("hosts.csv");
    std::fs::write(&csv, format!("address,name\n{NET}.2,a\n{NET}.9,never\n")).unwrap();
    let args = [
        "--iface",
        &link.a_if,
        "--timeout",
        "1s",
        "--sweep",
        "200ms",
        "--inventory",
        csv.to_str().unwrap(),
        "--grace",
        "4s",
    ];
    let _a = collector::beat(HB, &link, &format!("{NET}.2"), &format!("{NET}.1"), "100ms");
    let first = Collector::start(HB, &link.a, &args);
    // The grace starts at the first sweep (hb takes a while to start).
    let (s, seen) = first.wait_for(Duration::from_secs(10), |v| v["event"] == "summary");
    let (started, _) = s.unwrap_or_else(|| panic!("no sweep: {seen:?}"));
    // Half the grace, and a few sweeps written, then an upgrade.
    let lines = first.collect(Duration::from_secs(2));
    assert_eq!(host_events(&lines), [], "{lines:?}");
    let mut first = first;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(first.proc.child.id() as i32, libc::SIGUSR2) };
    assert_eq!(first.proc.child.wait().unwrap().code(), Some(0));
    let second = Collector::start(HB, &link.a, &args);
    let (m, seen) = second.wait_for(Duration::from_secs(8), |v| v["event"] == "missing");
    let (_, m) = m.unwrap_or_else(|| panic!("no missing: {seen:?}"));
    let since_start = started.elapsed().as_millis() as u64;
    assert!(is_event(&m, "missing", &format!("{NET}.9")), "{m}");
    // Expected since the first collector's start, not the second's: its
    // grace ran on across the restart.
    let for_ms = m["missing_for_ms"].as_u64().unwrap();
    assert!(
        for_ms + 500 >= since_start && for_ms >= 4000,
        "missing for {for_ms} ms, {since_start} ms after the first collector's first sweep: {m}"
    );
    let lines = second.collect(Duration::from_secs(1));
    assert_eq!(host_events(&lines), [], "{lines:?}");
}
