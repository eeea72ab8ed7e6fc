//! Slot allocation under concurrency: new hosts from several CPUs at once,
//! each CPU's thread pinned to it (a BPF_PROG_TEST_RUN runs on its caller's
//! CPU), in lockstep rounds so that every round's test runs overlap: the
//! same new host on every CPU, and a different new host on each. No slot
//! may be lost or shared. That the runs really overlapped on several CPUs
//! is shown, not assumed: by the threads' intervals and by the program's
//! per-CPU counters.

use std::collections::HashSet;

use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use hb_common::{Counter, HostKey, net::XDP_DROP};
use hb_testkit::{
    frames::{PORT, hb4, ipv4_udp, signed_with, src_addr},
    maps::{Hints, PerCpuCounters},
    program as kit,
    race::{self, Span},
};
use hb_userspace::xdp;

fn beat(prog: &Xdp, frame: &[u8]) {
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::new()
        })
        .unwrap();
    assert_eq!(r.return_value, XDP_DROP);
}

#[test]
fn concurrent_new_hosts_get_distinct_slots() {
    let Some(cpus) = race::cpus_to_race_on(4) else {
        return;
    };
    let threads = cpus.len() as u32;
    const ROUNDS: u32 = 10_000;
    // Room for every host: the point is allocation, not a full table.
    let mut loaded = kit::load(1 << 17);
    let prog = xdp::program(&mut loaded.ebpf).unwrap();
    let per_cpu = PerCpuCounters::of(prog);
    let before = per_cpu.read();
    // Round r: every thread sends host r (a new host first seen on every
    // CPU at once: one insert wins), then a host of its own (new hosts on
    // every CPU at once: each takes a slot from the same counter).
    let own = |t: u32, r: u32| ROUNDS + r * threads + t;
    let spans: Vec<Span> = race::on_cpus(&cpus, |t, step| {
        for r in 0..ROUNDS {
            step.wait();
            beat(prog, &hb4(&[], src_addr(r)));
            step.wait();
            beat(prog, &hb4(&[], src_addr(own(t as u32, r))));
        }
    })
    .into_iter()
    .map(|(span, ())| span)
    .collect();
    let after = per_cpu.read();
    race::assert_raced(
        &spans,
        &before,
        &after,
        &[Counter::Heartbeat],
        2 * ROUNDS as u64,
    );

    let distinct = ROUNDS * (1 + threads);
    let table = &loaded.table;
    assert_eq!(
        table.len(),
        distinct as usize,
        "slots handed out != distinct hosts"
    );
    let counters = table.counters().unwrap();
    assert_eq!(counters[Counter::NewHost as usize], distinct as u64);
    assert_eq!(
        counters[Counter::Heartbeat as usize],
        (2 * ROUNDS * threads) as u64
    );
    // Every slot holds a distinct host, and the hash map points back to it.
    let mut keys = HashSet::new();
    let mut beats = 0;
    for slot in 0..distinct {
        let key = table.key(slot);
        assert!(keys.insert(key), "slot {slot}: host {key:?} has two slots");
        assert_eq!(
            table.slot(&key),
            Some(slot),
            "hash map and slot keys disagree"
        );
        let entry = table.entry(slot);
        assert_ne!(entry.last_seen_ns, 0, "slot {slot} never stamped");
        beats += entry.beats;
    }
    let expected: HashSet<HostKey> = (0..distinct)
        .map(|i| HostKey::from_ipv4(src_addr(i)))
        .collect();
    assert_eq!(keys, expected);
    // A heartbeat that loses the race for a new host's first stamp is
    // counted as a heartbeat but not in the host's beat count.
    let sent = (2 * ROUNDS * threads) as u64;
    assert!(beats <= sent);
    assert!(beats >= distinct as u64, "{beats}");
    // And the CPUs did race on one new host, not only at about one time.
    assert!(
        beats < sent,
        "no heartbeat ever lost a race for a new host's first stamp"
    );
    let new_by_cpu: Vec<u64> = spans
        .iter()
        .map(|s| after[s.cpu][Counter::NewHost as usize] - before[s.cpu][Counter::NewHost as usize])
        .collect();
    println!(
        "new hosts by CPU {new_by_cpu:?}; {} heartbeats lost a race for a new host's first stamp",
        sent - beats
    );
}

#[test]
fn a_full_table_refuses_new_hosts_without_losing_slots() {
    let mut loaded = kit::load(64);
    let prog = xdp::program(&mut loaded.ebpf).unwrap();
    std::thread::scope(|s| {
        for t in 0..2u32 {
            let prog = &*prog;
            s.spawn(move || {
                for i in 0..200u32 {
                    let frame = hb4(&[], src_addr(i * 2 + t));
                    prog.test_run(TestRunOptions {
                        data_in: Some(&frame),
                        ..TestRunOptions::new()
                    })
                    .unwrap();
                }
            });
        }
    });
    let counters = loaded.table.counters().unwrap();
    assert_eq!(loaded.table.len(), 64);
    assert_eq!(counters[Counter::NewHost as usize], 64);
    assert_eq!(counters[Counter::TableFull as usize], 400 - 64);
    let keys: HashSet<HostKey> = (0..64).map(|s| loaded.table.key(s)).collect();
    assert_eq!(keys.len(), 64);
}

/// The hint a host's slot is remembered at, derived here from
/// docs/design.md and hb-ebpf's table.rs rather than taken from hb: the
/// address's 16 bytes as two little-endian words (the program loads them
/// in memory order on a little-endian CPU), XORed, times the 64-bit golden
/// ratio constant 0x9e3779b97f4a7c15, the top 32 bits of the product,
/// masked to the hint array's size (a power of two at least `--max-hosts`).
fn hint_of(addr: [u8; 16], hints: u32) -> u32 {
    assert!(hints.is_power_of_two());
    let a = u64::from_le_bytes(addr[..8].try_into().unwrap());
    let b = u64::from_le_bytes(addr[8..].try_into().unwrap());
    ((a ^ b).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32 & (hints - 1)
}

/// An IPv4 address as the table keys it: `::ffff:a.b.c.d`.
fn mapped([a, b, c, d]: [u8; 4]) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d]
}

#[test]
fn hosts_sharing_a_hint_are_each_stamped_in_their_own_slot() {
    // 16 hosts, 16 hints: find hosts whose hints collide, then interleave
    // their heartbeats so that each finds the other's slot in the hint.
    const HINTS: u32 = 16;
    let mut loaded = kit::load(16);
    let hint = hint_of(mapped(src_addr(1)), HINTS);
    let sharing: Vec<u32> = (1..10_000)
        .filter(|&i| hint_of(mapped(src_addr(i)), HINTS) == hint)
        .take(3)
        .collect();
    assert_eq!(sharing.len(), 3, "no colliding hosts found");
    let prog = xdp::program(&mut loaded.ebpf).unwrap();
    // The program's own hints show that they really collide: after each
    // heartbeat, the one hint set is that hint, holding that host's slot.
    let hints = Hints::of(prog);
    assert_eq!(hints.read().len(), HINTS as usize, "hint array size");
    let rounds = 5u64;
    for round in 0..rounds {
        for &i in &sharing {
            beat(prog, &hb4(&[], src_addr(i)));
            let slot = loaded
                .table
                .slot(&HostKey::from_ipv4(src_addr(i)))
                .expect("host in the table");
            let set: Vec<(usize, u32)> = hints
                .read()
                .into_iter()
                .enumerate()
                .filter(|&(_, h)| h != 0)
                .collect();
            assert_eq!(
                set,
                [(hint as usize, slot + 1)],
                "round {round}, host {i}: hints set (index, slot + 1)"
            );
        }
    }
    assert_eq!(loaded.table.len(), sharing.len());
    for &i in &sharing {
        let key = HostKey::from_ipv4(src_addr(i));
        let slot = loaded.table.slot(&key).expect("host in the table");
        assert_eq!(loaded.table.key(slot), key);
        assert_eq!(loaded.table.entry(slot).beats, rounds, "host {i}");
    }
}

const KEY: [u8; 16] = *b"slots: fleet key";

/// The program with a key that still accepts bare `PyHB`, a table of
/// `max_hosts` and bare hosts capped at `max_bare` (`None`: the default).
fn load_keyed(max_hosts: u32, max_bare: Option<u32>) -> xdp::Loaded {
    kit::addressed(
        xdp::load_auth(
            xdp::Settings {
                max_bare_hosts: max_bare,
                ..kit::settings(max_hosts)
            },
            Some(xdp::AuthSettings {
                key: KEY,
                require: false,
            }),
        )
        .expect("loading the XDP program"),
    )
}

fn signed_beat(prog: &Xdp, host_id: u64, seq: u64) {
    let payload = signed_with(&KEY, 1, host_id, seq);
    beat(prog, &ipv4_udp([198, 18, 9, 9], PORT, &payload));
}

/// README: with a key (bare `PyHB` still accepted), bare hosts take at most
/// `--max-bare-hosts` slots (by default half the table), so that signed
/// hosts always find the rest; a new bare host beyond that is `table_full`,
/// a known one keeps beating. Without a key bare hosts take the whole
/// table.
#[test]
fn bare_hosts_are_capped_so_signed_hosts_find_room() {
    for (max_bare, cap) in [(None, 8), (Some(3), 3)] {
        let mut loaded = load_keyed(16, max_bare);
        let prog = xdp::program(&mut loaded.ebpf).unwrap();
        for i in 0..12 {
            beat(prog, &hb4(&[], src_addr(i)));
        }
        beat(prog, &hb4(&[], src_addr(0)));
        for id in 0..(16 - cap) as u64 {
            signed_beat(prog, id, 1);
        }
        let c = loaded.table.counters().unwrap();
        assert_eq!(
            c[Counter::TableFull as usize],
            12 - cap as u64,
            "{max_bare:?}"
        );
        assert_eq!(c[Counter::NewHost as usize], 16, "{max_bare:?}");
        assert_eq!(c[Counter::Heartbeat as usize], 16 + 1, "{max_bare:?}");
        assert_eq!(loaded.table.len(), 16);
        // Every signed host found room; the bare ones are the first `cap`.
        for id in 0..(16 - cap) as u64 {
            assert!(
                loaded.table.slot(&HostKey::from_host_id(id)).is_some(),
                "{max_bare:?}: signed host {id} found no room"
            );
        }
        for i in 0..12 {
            let known = loaded
                .table
                .slot(&HostKey::from_ipv4(src_addr(i)))
                .is_some();
            assert_eq!(known, i < cap, "{max_bare:?}: bare host {i}");
        }
    }
    // Without a key: the whole table.
    let mut loaded = kit::load(16);
    let prog = xdp::program(&mut loaded.ebpf).unwrap();
    for i in 0..17 {
        beat(prog, &hb4(&[], src_addr(i)));
    }
    let c = loaded.table.counters().unwrap();
    assert_eq!(c[Counter::NewHost as usize], 16);
    assert_eq!(c[Counter::TableFull as usize], 1);
}

/// New bare hosts from several CPUs at once never take more than the cap:
/// each round every CPU sends a host of its own, far more than the cap in
/// all.
#[test]
fn concurrent_new_bare_hosts_never_overshoot_the_cap() {
    let Some(cpus) = race::cpus_to_race_on(4) else {
        return;
    };
    let threads = cpus.len() as u32;
    const ROUNDS: u32 = 5_000;
    const CAP: u32 = 1_000;
    let mut loaded = load_keyed(1 << 16, Some(CAP));
    let prog = xdp::program(&mut loaded.ebpf).unwrap();
    let per_cpu = PerCpuCounters::of(prog);
    let before = per_cpu.read();
    let spans: Vec<Span> = race::on_cpus(&cpus, |t, step| {
        for r in 0..ROUNDS {
            step.wait();
            beat(prog, &hb4(&[], src_addr(r * threads + t as u32)));
        }
    })
    .into_iter()
    .map(|(span, ())| span)
    .collect();
    let after = per_cpu.read();
    race::assert_raced(
        &spans,
        &before,
        &after,
        &[Counter::Heartbeat, Counter::TableFull],
        ROUNDS as u64,
    );
    let sent = u64::from(ROUNDS * threads);
    let c = loaded.table.counters().unwrap();
    assert_eq!(c[Counter::NewHost as usize], u64::from(CAP));
    assert_eq!(c[Counter::Heartbeat as usize], u64::from(CAP));
    assert_eq!(c[Counter::TableFull as usize], sent - u64::from(CAP));
    assert_eq!(loaded.table.len(), CAP as usize);
    // And signed hosts still find room.
    signed_beat(prog, 1, 1);
    let c = loaded.table.counters().unwrap();
    assert_eq!(c[Counter::NewHost as usize], u64::from(CAP) + 1);
}

/// The bare hosts' count is pinned with the table: a program loaded again
/// on the same pins (a restarted collector) keeps the share as filled.
#[test]
fn the_bare_share_survives_a_reload_on_the_pinned_maps() {
    xdp::ensure_bpffs().unwrap();
    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/hb-test-bare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let load = || {
        kit::addressed(
            xdp::load_with(
                xdp::Settings {
                    max_bare_hosts: Some(2),
                    ..kit::settings(8)
                },
                Some(&xdp::AuthSettings {
                    key: KEY,
                    require: false,
                }),
                Some(&dir),
            )
            .expect("loading the program on pinned maps"),
        )
    };
    let mut first = load();
    let prog = xdp::program(&mut first.ebpf).unwrap();
    beat(prog, &hb4(&[], src_addr(1)));
    beat(prog, &hb4(&[], src_addr(2)));
    drop(first);
    let mut again = load();
    let prog = xdp::program(&mut again.ebpf).unwrap();
    beat(prog, &hb4(&[], src_addr(3)));
    beat(prog, &hb4(&[], src_addr(1)));
    signed_beat(prog, 5, 1);
    let c = again.table.counters().unwrap();
    drop(again);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(c[Counter::NewHost as usize], 3, "{c:?}");
    assert_eq!(c[Counter::TableFull as usize], 1, "{c:?}");
    assert_eq!(c[Counter::Heartbeat as usize], 4, "{c:?}");
}
