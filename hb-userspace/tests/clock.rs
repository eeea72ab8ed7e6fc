//! Decisions follow CLOCK_MONOTONIC only: the same table swept at the same
//! monotonic times gives the same events whatever the wall clock does
//! (jumps back an hour, forward a day); only the timestamps differ.

use std::time::{Duration, SystemTime};

use aya::programs::{TestRun as _, TestRunOptions};
use hb_testkit::{frames::hb4, program as kit};
use hb_userspace::{Format, Sweeper, monotonic_ns, xdp};

/// Event lines without their timestamps.
fn events(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("ts");
            v.as_object_mut().unwrap().remove("sweep_ms");
            v
        })
        .collect()
}

#[test]
fn wall_clock_jumps_change_no_decision() {
    let mut loaded = kit::load(64);
    let prog = xdp::program(&mut loaded.ebpf).unwrap();
    for host in 1..=3u8 {
        prog.test_run(TestRunOptions {
            data_in: Some(&hb4(&[], [10, 0, 0, host])),
            ..TestRunOptions::new()
        })
        .unwrap();
    }
    let timeout = Duration::from_secs(15);
    let start = monotonic_ns();
    let sec = 1_000_000_000u64;
    let base = SystemTime::now();
    let walls = [
        base,
        base - Duration::from_secs(3600),
        base + Duration::from_secs(86_400),
        base - Duration::from_secs(7200),
        base,
    ];
    let sweep = |wall_of: &dyn Fn(usize) -> SystemTime| {
        let mut sweeper = Sweeper::new(timeout.as_nanos() as u64, Format::Json);
        let mut all = Vec::new();
        // Monotonic time moves steadily: 0 s, 10 s, 20 s, 30 s, 40 s after
        // the stamps; the hosts go silent between 10 s and 20 s.
        for (i, now) in (0..5).map(|i| (i, start + i as u64 * 10 * sec)) {
            sweeper.sweep_at(&loaded.table, now, wall_of(i)).unwrap();
            all.push(events(sweeper.lines()));
        }
        all
    };
    let steady = sweep(&|i| base + Duration::from_secs(10 * i as u64));
    let jumping = sweep(&|i| walls[i]);
    assert_eq!(steady, jumping);
    // And the decisions are the expected ones: new, then silent, once.
    let kinds = |i: usize| -> Vec<String> {
        steady[i]
            .iter()
            .map(|v| v["event"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(kinds(0), ["new", "new", "new", "summary"]);
    assert_eq!(kinds(1), ["summary"]);
    assert_eq!(kinds(2), ["silent", "silent", "silent", "summary"]);
    assert_eq!(kinds(3), ["summary"]);
}
