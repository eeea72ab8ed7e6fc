//! Slot allocation under concurrency: many new hosts from several threads at
//! once (each BPF_PROG_TEST_RUN runs on the calling thread's CPU), and many
//! threads racing on the *same* new host. No slot may be lost or shared.

use std::{collections::HashSet, sync::Barrier};

use aya::programs::{TestRun as _, TestRunOptions};
use hb_common::{Counter, HostKey, net::XDP_DROP};
use hb_testkit::{
    frames::{hb4, src_addr},
    program as kit,
};
use hb_userspace::xdp;

#[test]
fn concurrent_new_hosts_get_distinct_slots() {
    const THREADS: u32 = 4;
    const PER_THREAD: u32 = 20_000;
    // Room for every host: the point is allocation, not a full table.
    let mut loaded = kit::load(1 << 17);
    let prog = xdp::program(&mut loaded.ebpf).unwrap();
    let barrier = Barrier::new(THREADS as usize);
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            let (prog, barrier) = (&*prog, &barrier);
            s.spawn(move || {
                barrier.wait();
                // Every thread walks the same new hosts in the same order,
                // so each is first seen on several CPUs at about once.
                for i in 0..PER_THREAD {
                    let frame = hb4(&[], src_addr(i));
                    let r = prog
                        .test_run(TestRunOptions {
                            data_in: Some(&frame),
                            ..TestRunOptions::new()
                        })
                        .unwrap();
                    assert_eq!(r.return_value, XDP_DROP);
                }
            });
        }
    });
    let distinct = PER_THREAD;
    let table = &loaded.table;
    assert_eq!(
        table.len(),
        distinct as usize,
        "slots handed out != distinct hosts"
    );
    let counters = loaded.table.counters().unwrap();
    assert_eq!(counters[Counter::NewHost as usize], distinct as u64);
    assert_eq!(
        counters[Counter::Heartbeat as usize],
        (PER_THREAD * THREADS) as u64
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
    assert!(beats <= (PER_THREAD * THREADS) as u64);
    assert!(beats >= distinct as u64, "{beats}");
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

/// The hint slot the program looks at first for `key` (its hash, as in
/// hb-ebpf's table.rs), for a hint array of `mask + 1` entries.
fn hint_index(key: &HostKey, mask: u32) -> u32 {
    let [a, b] = key.words();
    ((a ^ b).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32 & mask
}

#[test]
fn hosts_sharing_a_hint_are_each_stamped_in_their_own_slot() {
    // 16 hosts, 16 hints: find hosts whose hints collide, then interleave
    // their heartbeats so that each finds the other's slot in the hint.
    let mut loaded = kit::load(16);
    let mask = 15;
    let first = HostKey::from_ipv4(src_addr(1));
    let sharing: Vec<u32> = (1..10_000)
        .filter(|&i| hint_index(&HostKey::from_ipv4(src_addr(i)), mask) == hint_index(&first, mask))
        .take(3)
        .collect();
    assert_eq!(sharing.len(), 3, "no colliding hosts found");
    let prog = xdp::program(&mut loaded.ebpf).unwrap();
    let rounds = 5u64;
    for _ in 0..rounds {
        for &i in &sharing {
            let r = prog
                .test_run(TestRunOptions {
                    data_in: Some(&hb4(&[], src_addr(i))),
                    ..TestRunOptions::new()
                })
                .unwrap();
            assert_eq!(r.return_value, XDP_DROP);
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
