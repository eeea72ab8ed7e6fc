//! Time as the real program keeps it (hb-common's `timing`): last-seen
//! ticks from the table's pinned epoch, wrapping every 52 days, and each
//! host's heartbeat period learned per heartbeat in `HB_TIMING`.

use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use aya::programs::{TestRun as _, TestRunOptions, XdpMode};
use hb_common::{DEFAULT_PORT, HostKey, MAGIC, TICK_NS, net::XDP_DROP, timing::tick};
use hb_testkit::{
    frames::{hb4, src_addr},
    netns::Link,
    program as kit,
    program::clock_ns,
};
use hb_userspace::{Tracker, Transition, monotonic_ns, xdp};

/// README (docs/design.md): a host beating every 100 ms is learned as
/// such: from real datagrams sent every 100 ms from another namespace,
/// through the program attached to the receiving veth, the table's timing
/// entry holds one sample an interval, a smoothed mean of 100 ms and a
/// small deviation (RFC 6298 smoothing, its first deviation R/2 decayed by
/// 3/4 a sample); a gap of lost heartbeats is left out (Karn's rule).
#[test]
fn a_host_beating_every_100_ms_is_learned_as_such() {
    const SENT: u32 = 30;
    const PERIOD: Duration = Duration::from_millis(100);
    let link = Link::for_test_on("tick", "198.18.61", &[2]);
    let iface = link.a_if.clone();
    let loaded = link
        .a
        .within(move || {
            let mut loaded = xdp::load(xdp::Settings {
                max_hosts: 64,
                // The namespace's own address and MAC are not the kit's.
                any_destination: true,
                ..xdp::Settings::default()
            })
            .expect("loading the XDP program");
            xdp::program(&mut loaded.ebpf)
                .unwrap()
                .attach(&iface, XdpMode::Skb)
                .expect("attaching to the veth");
            loaded
        })
        .unwrap();
    let late = link
        .b
        .within(|| {
            let sock = UdpSocket::bind("198.18.61.2:0").unwrap();
            let start = Instant::now();
            let (mut late, mut last) = (0, start);
            for i in 0..SENT {
                // On a schedule, so that sleeping does not add up.
                let at = start + PERIOD * i;
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                sock.send_to(&MAGIC, ("198.18.61.1", DEFAULT_PORT)).unwrap();
                // Karn's rule leaves out an interval over 1.5 periods (a
                // sender this late on a loaded machine): one sample less.
                let now = Instant::now();
                if i > 2 && now - last > PERIOD * 14 / 10 {
                    late += 1;
                }
                last = now;
            }
            late
        })
        .unwrap();
    let key = HostKey::from_ipv4([198, 18, 61, 2]);
    let e = loaded.table.get(&key).expect("the host is in the table");
    assert_eq!(e.beats, SENT, "every datagram recorded");
    let t = e.timing;
    let ms = |ns: u64| ns as f64 / 1e6;
    println!(
        "learned: {} samples, mean {:.2} ms, deviation {:.2} ms",
        t.samples(),
        ms(t.mean_ns()),
        ms(t.dev_ns())
    );
    assert!(
        (SENT - 1 - late..=SENT - 1).contains(&t.samples()),
        "one sample an interval ({late} sent late)"
    );
    // The coarse clock stamps within a kernel tick (4 ms at HZ=250) of
    // arrival, and sleeping wakes late by a little: 5 ms either way.
    assert!(
        (ms(t.mean_ns()) - 100.0).abs() <= 5.0,
        "mean {} ms",
        ms(t.mean_ns())
    );
    assert!(ms(t.dev_ns()) <= 10.0, "deviation {} ms", ms(t.dev_ns()));

    // Karn's rule in the program (hb-common's `Timing::update`): a gap of
    // 2.5 periods (lost heartbeats) is not learned, the interval after it
    // is.
    let send_after = |wait: Duration| {
        link.b
            .within(move || {
                let sock = UdpSocket::bind("198.18.61.2:0").unwrap();
                std::thread::sleep(wait);
                sock.send_to(&MAGIC, ("198.18.61.1", DEFAULT_PORT)).unwrap();
                Instant::now()
            })
            .unwrap()
    };
    let gap_end = send_after(PERIOD * 5 / 2);
    let g = loaded.table.get(&key).unwrap().timing;
    assert!(g.last_long(), "the gap is long");
    assert_eq!(
        (g.samples(), g.mean_x8(), g.dev_x4()),
        (t.samples(), t.mean_x8(), t.dev_x4()),
        "the gap is not learned"
    );
    let next = send_after(PERIOD);
    let n = loaded.table.get(&key).unwrap().timing;
    // Unless this sender too was late by half a period.
    if next - gap_end < PERIOD * 14 / 10 {
        assert!(!n.last_long());
        assert_eq!(n.samples(), t.samples() + 1, "the next interval is learned");
    }
}

fn beat(prog: &aya::programs::Xdp, i: u32) {
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(&hb4(&[], src_addr(i))),
            ..TestRunOptions::new()
        })
        .unwrap();
    assert_eq!(r.return_value, XDP_DROP);
}

/// Stamps wrap round (u32 ticks, every 52 days) while hosts beat and a
/// tracker sweeps: a table whose epoch puts the wrap 0.75 s into the test.
/// A host beating all along is never silent; one that stops before the
/// wrap is reported silent once (after it: its last stamp is just below
/// 2^32, the sweep's tick just above 0) and recovered once when it beats
/// again.
#[test]
fn stamps_wrap_and_the_tracker_follows() {
    const TIMEOUT: Duration = Duration::from_millis(500);
    let start = monotonic_ns();
    // tick(start) = 2^32 - 3 s of ticks: 0 again at start + 3 s. The
    // rounds begin 0.75 s before that, whatever loading took.
    let wrap_in = 3_000_000_000u64;
    let epoch = start.wrapping_sub((1u64 << 32) * TICK_NS - wrap_in);
    let mut loaded = kit::addressed(
        xdp::load(xdp::Settings {
            epoch_ns: Some(epoch),
            ..kit::settings(64)
        })
        .expect("loading the XDP program"),
    );
    assert_eq!(loaded.table.epoch_ns(), epoch, "the epoch is the table's");
    let prog = xdp::program(&mut loaded.ebpf).unwrap();
    let table = &loaded.table;
    let mut tracker = Tracker::new(TIMEOUT.as_nanos() as u64);
    tracker.set_epoch(epoch);
    let (steady, stops) = (1, 2);
    let mut events: Vec<(u32, Transition<HostKey>)> = Vec::new();
    let (mut first, mut last, mut stopped_at) = (None, 0, 0);
    let before_wrap = (start + wrap_in - 750_000_000).checked_sub(monotonic_ns());
    let before_wrap = before_wrap.expect("loading took longer than 2.25 s");
    std::thread::sleep(Duration::from_nanos(before_wrap));
    let begun = Instant::now();
    // 3 s of 50 ms rounds: `stops` beats for 0.5 s, is quiet past the wrap
    // until 2.2 s, then beats again.
    for round in 0..60u32 {
        std::thread::sleep(
            (begun + Duration::from_millis(50) * round).saturating_duration_since(Instant::now()),
        );
        let at = begun.elapsed();
        beat(prog, steady);
        if at < Duration::from_millis(500) || at > Duration::from_millis(2200) {
            beat(prog, stops);
            if at < Duration::from_millis(500) {
                stopped_at = table
                    .get(&HostKey::from_ipv4(src_addr(stops)))
                    .unwrap()
                    .last_seen;
            }
        }
        let seen = table
            .get(&HostKey::from_ipv4(src_addr(steady)))
            .unwrap()
            .last_seen;
        first.get_or_insert(seen);
        last = seen;
        let now = monotonic_ns();
        tracker.sweep(table.last_seen(), now, |t: Transition<u32>| {
            events.push((tick(now, epoch), t.with_host(table.key(*t.host()))))
        });
    }
    let first = first.unwrap();
    println!("stamps from {first} to {last}; events {events:?}");
    assert!(first > u32::MAX - 1000 && last < 3000, "the stamps wrapped");
    let key = |i| HostKey::from_ipv4(src_addr(i));
    let of = |i| -> Vec<&'static str> {
        events
            .iter()
            .filter(|(_, t)| *t.host() == key(i))
            .map(|(_, t)| match t {
                Transition::New { .. } => "new",
                Transition::Silent { .. } => "silent",
                Transition::Recovered { .. } => "recovered",
            })
            .collect()
    };
    assert_eq!(of(steady), ["new"], "the steady host");
    assert_eq!(
        of(stops),
        ["new", "silent", "recovered"],
        "the host that stops"
    );
    for &(now, t) in &events {
        match t {
            Transition::Silent { silent_for_ns, .. } => {
                assert!(
                    stopped_at > u32::MAX - 1000 && now < 1000,
                    "silent across the wrap: last stamp {stopped_at}, swept at {now}"
                );
                assert!(silent_for_ns > TIMEOUT.as_nanos() as u64);
                assert!(silent_for_ns < 1_000_000_000, "{silent_for_ns} ns");
            }
            Transition::Recovered { silent_for_ns, .. } => {
                // Quiet from 0.45-0.5 s to 2.2-2.25 s.
                let s = silent_for_ns as f64 / 1e9;
                assert!((1.6..=1.9).contains(&s), "silent for {s} s");
            }
            Transition::New { .. } => {}
        }
    }
}

/// docs/design.md (the clock): each CPU keeps its last reading of the
/// coarse clock and reads the clock again once jiffies move, so a stamp is
/// the coarse clock's time of the heartbeat, at worst one kernel tick
/// behind it (10 ms at the lowest HZ, 100), never ahead. On every CPU in
/// turn, a host beats every 2 ms for 300 ms (many beats a jiffy, the
/// cached reading used, and many jiffies, the reading renewed); each stamp
/// lies between the coarse clock before it, less one tick, and the fine
/// clock after it, and never goes back.
#[test]
fn stamps_follow_the_clock_on_every_cpu() {
    const JIFFY_AT_MOST: u64 = 10_000_000;
    let mut loaded = kit::addressed(xdp::load(kit::settings(64)).expect("loading the XDP program"));
    let epoch = loaded.table.epoch_ns();
    let prog = xdp::program(&mut loaded.ebpf).unwrap();
    let table = &loaded.table;
    let key = HostKey::from_ipv4(src_addr(7));
    let mut prev = 0;
    let mut beats = 0;
    for cpu in hb_testkit::race::allowed_cpus() {
        hb_testkit::race::pin_to(cpu);
        let begun = Instant::now();
        while begun.elapsed() < Duration::from_millis(300) {
            let t0 = clock_ns(libc::CLOCK_MONOTONIC_COARSE);
            beat(prog, 7);
            let t1 = clock_ns(libc::CLOCK_MONOTONIC);
            let (lo, hi) = (tick(t0 - JIFFY_AT_MOST, epoch), tick(t1, epoch));
            let stamp = table.get(&key).expect("the host is in the table").last_seen;
            assert!(
                (lo..=hi).contains(&stamp),
                "CPU {cpu}, beat {beats}: stamp {stamp} outside [{lo}, {hi}] (ticks)"
            );
            assert!(
                stamp >= prev,
                "CPU {cpu}: time went back ({prev} → {stamp})"
            );
            prev = stamp;
            beats += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    println!("{beats} beats, stamps up to {prev}");
}
