//! `--timeout auto` and flap damping, end to end: a real collector (the
//! XDP program, which learns each host's timing in the kernel, and socket
//! mode, whose table learns it the same way: `hb_common::timing`), real
//! datagrams from hosts in a test namespace, each host's heartbeats timed
//! by the test.
//!
//! The promises (docs/config.md): under `auto` a host is silent once its
//! last heartbeat is older than 2 × its mean interval + max(250 ms,
//! 4 × its mean deviation), bounded by --min-timeout and --max-timeout; a
//! host that keeps changing state is reported `flapping` once, its
//! `silent`/`recovered` held back, then `flapping_end`.

use std::{
    net::UdpSocket,
    thread,
    time::{Duration, Instant},
};

use hb_testkit::{
    collector::{Collector, is_event},
    control,
    netns::Link,
};

/// The binary under test.
const HB: &str = env!("CARGO_BIN_EXE_hb");
const TO: &str = "198.18.9.1:43278";

fn setup(tag: &str, hosts: &[&str]) -> Link {
    let link = Link::for_test(tag);
    link.a
        .ip(&["addr", "add", "198.18.9.1/24", "dev", &link.a_if])
        .unwrap();
    for h in hosts {
        link.b
            .ip(&["addr", "add", &format!("{h}/24"), "dev", &link.b_if])
            .unwrap();
    }
    link
}

/// A socket of host `from`, in the hosts' namespace.
fn host(link: &Link, from: &'static str) -> UdpSocket {
    link.b
        .within(move || UdpSocket::bind((from, 0)).unwrap())
        .unwrap()
}

/// Sends heartbeats from `tx` at the given gaps (bounded by their count);
/// returns when the last was sent.
fn beat_at(tx: &UdpSocket, gaps: impl IntoIterator<Item = Duration>) -> Instant {
    let mut last = Instant::now();
    let mut next = last;
    for gap in gaps {
        next += gap;
        thread::sleep(next.saturating_duration_since(Instant::now()));
        tx.send_to(b"PyHB", TO).unwrap();
        last = Instant::now();
    }
    last
}

/// xorshift: jitter that is the same in every run.
fn jitter(seed: &mut u64) -> f64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    (*seed % 2001) as f64 / 1000.0 - 1.0
}

#[derive(Clone, Copy)]
enum Ingest {
    Xdp,
    Socket,
}

fn collector(link: &Link, ingest: Ingest, timeout: &str, flap: &str) -> Collector {
    let how = match ingest {
        Ingest::Xdp => ["--ingest", "xdp", "--iface", &link.a_if],
        Ingest::Socket => ["--ingest", "socket", "--listen", "198.18.9.1"],
    };
    Collector::start(
        HB,
        &link.a,
        &[
            how[0],
            how[1],
            how[2],
            how[3],
            "--timeout",
            timeout,
            "--min-timeout",
            "300ms",
            "--max-timeout",
            "20s",
            "--sweep",
            "100ms",
            "--flap-high",
            flap,
        ],
    )
}

/// When the fast host was found after its last heartbeat, and the line.
type Found = Option<(Duration, serde_json::Value)>;

/// What `fast_and_slow` saw: the fast host found, every line, and (XDP)
/// `hb status --format json` run right after the fast host was found.
struct Seen {
    found: Found,
    lines: Vec<serde_json::Value>,
    status: Option<serde_json::Value>,
}

/// A host beating every 200 ms that stops: found within 2 periods, 250 ms
/// and a sweep (and the pipe), where a fixed 5 s timeout has not found it.
/// Meanwhile a host beating every 2 s ± 10%, one heartbeat lost, is never
/// silent.
fn fast_and_slow(ingest: Ingest, timeout: &str) -> Seen {
    let tag = match ingest {
        Ingest::Xdp => "x",
        Ingest::Socket => "s",
    };
    let link = setup(
        &format!("ad{tag}{}", &timeout[..2]),
        &["198.18.9.2", "198.18.9.3"],
    );
    let c = collector(&link, ingest, timeout, "0");
    let (fast, slow) = (host(&link, "198.18.9.2"), host(&link, "198.18.9.3"));
    let slow_beats = thread::spawn(move || {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        // 7 intervals around 2 s (learned after 3), then one heartbeat
        // lost (a gap of 4 s: within 2 means + 250 ms), then 2 more.
        let mut gaps = vec![Duration::ZERO];
        let mut jittered = |n| {
            (0..n)
                .map(|_| Duration::from_secs(2).mul_f64(1.0 + 0.1 * jitter(&mut seed)))
                .collect::<Vec<_>>()
        };
        gaps.extend(jittered(7));
        gaps.push(Duration::from_secs(4));
        gaps.extend(jittered(2));
        beat_at(&slow, gaps)
    });
    // 30 heartbeats (6 s) to learn from, then it stops.
    let last = beat_at(
        &fast,
        (0..30).map(|i| Duration::from_millis(if i == 0 { 0 } else { 200 })),
    );
    let (found, mut seen) = c.wait_for(Duration::from_secs(2), |v| {
        is_event(v, "silent", "198.18.9.2")
    });
    let found = found.map(|(at, v)| (at.saturating_duration_since(last), v));
    let status = match ingest {
        Ingest::Xdp if found.is_some() => Some(control::status(HB, &link.a, &link.a_if)),
        _ => None,
    };
    let slow_last = slow_beats.join().unwrap();
    // The slow host's last gap and a bit more: still not silent then.
    let left = Duration::from_millis(1500).saturating_sub(slow_last.elapsed());
    seen.extend(c.collect(left));
    Seen {
        found,
        lines: seen,
        status,
    }
}

#[test]
fn auto_finds_a_fast_host_in_a_few_periods_and_never_a_jittery_slow_one() {
    auto_fast_and_slow(Ingest::Xdp);
}

#[test]
fn socket_mode_learns_the_same() {
    auto_fast_and_slow(Ingest::Socket);
}

fn auto_fast_and_slow(ingest: Ingest) {
    let Seen {
        found,
        lines: seen,
        status,
    } = fast_and_slow(ingest, "auto");
    let (found, line) = found.unwrap_or_else(|| panic!("the 200 ms host was not found: {seen:?}"));
    // 2 × 200 ms + 250 ms, a sweep of 100 ms, 150 ms for the rest.
    assert!(found <= Duration::from_millis(900), "found after {found:?}");
    // Its line says what it learned: 200 ms (the sender's timer adds a
    // little), steady.
    let period = line["period_ms"].as_u64().unwrap();
    assert!((195..=215).contains(&period), "{line}");
    assert!(line["jitter_ms"].as_u64().unwrap() < 50, "{line}");
    let false_silent: Vec<_> = seen
        .iter()
        .filter(|v| is_event(v, "silent", "198.18.9.3"))
        .collect();
    assert!(false_silent.is_empty(), "{false_silent:?}");
    // README: `hb status` judges hosts as the collector does, each by its
    // own learned timeout: the fast host is silent there too (not alive
    // until --max-timeout), the slow one is not.
    if let Some(st) = status {
        assert_eq!(st["collector"]["auto"]["min_ms"], 300, "{st}");
        assert_eq!(st["collector"]["auto"]["max_ms"], 20_000, "{st}");
        let silent: Vec<_> = st["silent_hosts"]["hosts"]
            .as_array()
            .unwrap_or_else(|| panic!("{st}"))
            .iter()
            .map(|h| h["host"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(st["silent"], 1, "{st}");
        assert_eq!(silent, ["198.18.9.2"], "{st}");
    }
}

#[test]
fn a_fixed_long_timeout_does_not_find_it_as_fast() {
    // The same traffic under a fixed 5 s: nothing within the 2 s waited.
    let Seen { found, lines, .. } = fast_and_slow(Ingest::Xdp, "5s");
    assert_eq!(found, None, "{lines:?}");
}

#[test]
fn a_host_flapping_around_its_timeout_is_reported_once_then_steady() {
    let link = setup("adflap", &["198.18.9.4"]);
    let c = collector(&link, Ingest::Xdp, "500ms", "50");
    let tx = host(&link, "198.18.9.4");
    // A 1 s client against a 500 ms timeout, for 14 s: silent half a
    // second after each heartbeat, back at the next: a change in nearly
    // every check (a check: 500 ms, the timeout).
    let sender = thread::spawn(move || {
        beat_at(&tx, [Duration::from_secs(1); 14]);
        // Then steady, every 100 ms, for 10 s (20 checks: the changes move
        // to the light end of the window and out).
        beat_at(&tx, [Duration::from_millis(100); 100]);
    });
    // Lines up to its last heartbeat (after it, it goes silent for good).
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sender.is_finished() && Instant::now() < deadline {
        events.extend(c.collect(Duration::from_millis(200)));
    }
    sender.join().unwrap();
    let host: Vec<&str> = events
        .iter()
        .filter(|v| v["host"] == "198.18.9.4")
        .map(|v| v["event"].as_str().unwrap())
        .collect();
    let start = host.iter().position(|&e| e == "flapping");
    let end = host.iter().position(|&e| e == "flapping_end");
    let (Some(start), Some(end)) = (start, end) else {
        panic!("no flapping, flapping_end: {host:?}");
    };
    assert!(start < end, "{host:?}");
    assert_eq!(
        host.iter().filter(|&&e| e == "flapping").count(),
        1,
        "{host:?}"
    );
    assert_eq!(
        host.iter().filter(|&&e| e == "flapping_end").count(),
        1,
        "{host:?}"
    );
    // It flapped before it was found to: some silent/recovered first.
    assert!(host[..start].contains(&"silent"), "{host:?}");
    // Nothing held back was reported while it flapped.
    assert_eq!(&host[start + 1..end], &[] as &[&str], "{host:?}");
    // Its state once steady: alive. After the end, at most the one line
    // that says so (if the last reported was `silent`), and it is right.
    let after = &host[end + 1..];
    let last_before = host[..start]
        .iter()
        .rev()
        .find(|&&e| e == "silent" || e == "recovered" || e == "new");
    match last_before {
        Some(&"silent") => assert_eq!(after, ["recovered"], "{host:?}"),
        _ => assert!(after.is_empty(), "{host:?}"),
    }
    let flapping = events
        .iter()
        .find(|v| is_event(v, "flapping", "198.18.9.4"))
        .unwrap();
    assert!(
        flapping["state_changes_pct"].as_u64().unwrap() >= 50,
        "{flapping}"
    );
}
