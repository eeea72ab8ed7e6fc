//! Forgotten hosts' slots in the real program: the table's three steps
//! (`forget_slot`, `release_slot`, `reuse_slot`), then new hosts from
//! several CPUs at once, in lockstep, through BPF_PROG_TEST_RUN (see
//! slots.rs). A freed slot goes to exactly one new host, before any
//! never-used slot; a forgotten host's index entry is cleared, and it is a
//! new host when it comes back.

use std::collections::HashSet;

use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use hb_common::{Counter, net::XDP_DROP};
use hb_testkit::{
    frames::{hb4, src_addr},
    maps::{Index, PerCpuCounters},
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
fn freed_slots_go_to_new_hosts_once_each() {
    let Some(cpus) = race::cpus_to_race_on(4) else {
        return;
    };
    let threads = cpus.len() as u32;
    /// Hosts first, all forgotten.
    const OLD: u32 = 2048;
    /// Rounds of new hosts (one a thread a round): more than the freed
    /// slots, so the last ones take never-used slots.
    const ROUNDS: u32 = 1500;
    let mut loaded = kit::load(1 << 14);
    let prog = xdp::program(&mut loaded.ebpf).unwrap();
    for i in 0..OLD {
        beat(prog, &hb4(&[], src_addr(i)));
    }
    let table = &loaded.table;
    assert_eq!(table.len(), OLD as usize);
    let old_keys: Vec<_> = (0..OLD).map(|s| table.key(s)).collect();
    for slot in 0..OLD {
        assert!(table.forget_slot(slot).unwrap());
        assert!(table.slot_forgotten(slot));
        assert_eq!(
            table.slot(&old_keys[slot as usize]),
            None,
            "key still mapped"
        );
        table.release_slot(slot);
        assert_eq!(table.entry(slot), Default::default(), "slot {slot} cleared");
        table.reuse_slot(slot).unwrap();
    }
    // Their index entries are cleared, read through the syscall too.
    assert_eq!(table.index_entries(), 0, "index entries left behind");
    let set: usize = Index::of(prog)
        .read()
        .iter()
        .map(|b| b.iter().filter(|&&e| e != 0).count())
        .sum();
    assert_eq!(set, 0);

    let per_cpu = PerCpuCounters::of(prog);
    let before = per_cpu.read();
    let new = |t: u32, r: u32| 100_000 + r * threads + t;
    let spans: Vec<Span> = race::on_cpus(&cpus, |t, step| {
        for r in 0..ROUNDS {
            step.wait();
            beat(prog, &hb4(&[], src_addr(new(t as u32, r))));
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
        ROUNDS as u64,
    );

    let fresh = ROUNDS * threads;
    // The freed slots first, then as many never-used ones as needed.
    let used = OLD.max(fresh);
    let table = &loaded.table;
    assert_eq!(table.len(), used as usize, "slots handed out");
    let mut keys = HashSet::new();
    let mut empty = 0;
    for slot in 0..used {
        if table.entry(slot).last_seen == 0 {
            // A freed slot no new host took (more freed than new).
            assert!(
                table.slot_forgotten(slot),
                "slot {slot} neither used nor freed"
            );
            empty += 1;
            continue;
        }
        let key = table.key(slot);
        assert!(keys.insert(key), "slot {slot}: host {key:?} has two slots");
        assert_eq!(table.slot(&key), Some(slot), "index and slot keys disagree");
        assert_eq!(
            table.entry(slot).beats,
            1,
            "slot {slot}: counts start afresh"
        );
    }
    assert_eq!(keys.len() as u32, fresh, "every new host has a slot");
    assert_eq!(empty, used - fresh);
    for i in 0..fresh {
        let t = i % threads;
        let key = hb_common::HostKey::from_ipv4(src_addr(new(t, i / threads)));
        assert!(keys.contains(&key), "new host {i} has no slot");
    }

    // An old host comes back: a new host, in a slot of its own.
    beat(prog, &hb4(&[], src_addr(0)));
    let table = &loaded.table;
    let slot = table.slot(&old_keys[0]).expect("the old host is back");
    assert_eq!(table.entry(slot).beats, 1);
    assert_eq!(table.index_entries() as u32, fresh + 1, "one entry a host");
    let counters = table.counters().unwrap();
    assert_eq!(
        counters[Counter::NewHost as usize],
        u64::from(OLD + fresh + 1)
    );
}
