//! The sweep: `Tracker::sweep` over slot-indexed last-seen times.
//!
//! - Plain `Vec<AtomicU32>` tables (ticks, epoch 0) of 100k, 1M and 10M hosts, in the steady
//!   state (every host alive and already known: a first sweep, not
//!   measured, reported them all new), and with 1% of them going silent at
//!   once (each measured sweep reports 1% silent; between sweeps, untimed,
//!   they beat again and an untimed sweep reports them recovered).
//! - The real table: the XDP program loaded with 2^20 slots, every slot
//!   filled by a heartbeat from a distinct address through
//!   BPF_PROG_TEST_RUN, swept through its read-only mmapped last-seen array.
//!
//! Afterwards, markdown tables on stdout: sweep times, and the memory per
//! host of the loaded object's maps (the kernel's "memlock" figure of each
//! map fd) plus the tracker's heap at 2^20 hosts.

use std::{
    hint::black_box,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use criterion::{BenchmarkId, Criterion, Throughput};
use hb_benches::{fmt_ns, map_type_name, maps_in_use};
use hb_common::{
    ALLOC_MAP, COUNTERS_MAP, Counter, HOST_MAPS, INDEX_MAP, PAIRED_MAPS, PROGRAM, net::XDP_DROP,
    timing::tick,
};
use hb_testkit::{
    frames::{hb4, set_ipv4_src, src_addr},
    program as kit,
};
use hb_userspace::{
    Tracker, Words, monotonic_ns,
    xdp::{self, Loaded},
};

const S: u64 = 1_000_000_000;
const TIMEOUT_NS: u64 = 15 * S;
/// Synthetic "now" for the Vec tables.
const NOW: u64 = 1_000 * S;
/// Last-seen tick of an alive host...
const ALIVE: u32 = tick(NOW - S, 0);
/// ...and of one that has been silent for longer than the timeout.
const STALE: u32 = tick(NOW - 20 * S, 0);
const SIZES: [usize; 3] = [100_000, 1_000_000, 10_000_000];
/// Every 100th slot goes silent: 1%.
const SILENT_STRIDE: usize = 100;
/// Hosts in the real table (hb's default `--max-hosts`).
const REAL_HOSTS: u32 = 1 << 20;
/// Memory target per host, kernel and collector (issue 14: 64).
const TARGET_BYTES_PER_HOST: f64 = 64.0;

/// A table of `n` alive hosts and a tracker that already knows them all.
fn steady(n: usize) -> (Vec<AtomicU32>, Tracker) {
    let table: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(ALIVE)).collect();
    let mut tracker = Tracker::new(TIMEOUT_NS);
    let mut new = 0;
    tracker.sweep(&table, NOW, |_| new += 1);
    assert_eq!(new, n, "the first sweep reports every host new");
    (table, tracker)
}

/// One steady-state sweep; returns the transitions reported (none).
#[inline]
fn sweep_steady(table: &[AtomicU32], tracker: &mut Tracker, now: u64) -> usize {
    let mut events = 0;
    tracker.sweep(table, now, |t| {
        black_box(t);
        events += 1;
    });
    events
}

/// One sweep in which 1% of the hosts go silent at once; returns its time.
/// Before it, untimed: mark the 1% stale. After it, untimed: they beat again
/// and a sweep reports them recovered, so every call starts from the steady
/// state.
fn sweep_one_percent_silent(table: &[AtomicU32], tracker: &mut Tracker) -> Duration {
    for slot in table.iter().step_by(SILENT_STRIDE) {
        slot.store(STALE, Ordering::Relaxed);
    }
    let mut silent = 0;
    let started = Instant::now();
    tracker.sweep(table, NOW, |t| {
        black_box(t);
        silent += 1;
    });
    let elapsed = started.elapsed();
    assert_eq!(silent, table.len().div_ceil(SILENT_STRIDE));
    for slot in table.iter().step_by(SILENT_STRIDE) {
        slot.store(ALIVE, Ordering::Relaxed);
    }
    let mut recovered = 0;
    tracker.sweep(table, NOW, |_| recovered += 1);
    assert_eq!(recovered, silent);
    elapsed
}

/// The program with `REAL_HOSTS` slots, every one taken by a distinct host.
fn full_real_table() -> Loaded {
    let mut loaded = kit::load(REAL_HOSTS);
    let started = Instant::now();
    {
        let prog: &Xdp = xdp::program(&mut loaded.ebpf).expect("hb program");
        let mut frame = hb4(&[], src_addr(0));
        for i in 0..REAL_HOSTS {
            set_ipv4_src(&mut frame, src_addr(i));
            let r = prog
                .test_run(TestRunOptions {
                    data_in: Some(&frame),
                    ..TestRunOptions::new()
                })
                .expect("BPF_PROG_TEST_RUN");
            assert_eq!(r.return_value, XDP_DROP);
        }
    }
    assert_eq!(loaded.table.len(), REAL_HOSTS as usize);
    let counters = loaded.table.counters().expect("reading counters");
    assert_eq!(counters[Counter::NewHost as usize], u64::from(REAL_HOSTS));
    assert_eq!(counters[Counter::TableFull as usize], 0);
    eprintln!(
        "sweep bench: {REAL_HOSTS} hosts added to the real table in {:.2?}",
        started.elapsed()
    );
    loaded
}

fn main() {
    let list_only = std::env::args().any(|a| a == "--list");
    let mut c = Criterion::default().configure_from_args();

    // The real table first: its fill is the slowest setup.
    let mut loaded = full_real_table();
    let now = monotonic_ns();
    // As the collector does: the tracker's bits in the HB_TRACKER map. A
    // long timeout: every host stays alive for the whole benchmark.
    let words = loaded.take_tracker_words().expect("mapping HB_TRACKER");
    let mut real_tracker = Tracker::resume(
        3_600 * S,
        Words::Shared(Box::new(words)),
        loaded.table.capacity(),
        loaded.table.last_seen(),
        loaded.table.epoch_ns(),
    );
    let mut new = 0;
    real_tracker.sweep(loaded.table.last_seen(), now, |_| new += 1);
    assert_eq!(new, REAL_HOSTS as usize);

    {
        let mut g = c.benchmark_group("sweep");
        g.warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
            .sample_size(10);
        for n in SIZES {
            let (table, mut tracker) = steady(n);
            g.throughput(Throughput::Elements(n as u64));
            g.bench_with_input(BenchmarkId::new("all_alive", n), &n, |b, _| {
                b.iter(|| sweep_steady(&table, &mut tracker, NOW))
            });
            g.bench_with_input(BenchmarkId::new("one_percent_silent", n), &n, |b, _| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| sweep_one_percent_silent(&table, &mut tracker))
                        .sum()
                })
            });
        }
        let table = &loaded.table;
        g.throughput(Throughput::Elements(u64::from(REAL_HOSTS)));
        g.bench_with_input(
            BenchmarkId::new("real_mmapped_table_all_alive", REAL_HOSTS),
            &REAL_HOSTS,
            |b, _| b.iter(|| sweep_steady(table.last_seen(), &mut real_tracker, now)),
        );
        g.finish();
    }
    c.final_summary();

    if !list_only {
        sweep_table(&loaded, &mut real_tracker, now);
        memory_table(&loaded, &real_tracker);
    }
}

/// Median of `runs` timings, at least 5 and at least ~0.5 s worth.
fn median_of(mut f: impl FnMut() -> Duration) -> Duration {
    let mut times = Vec::new();
    let started = Instant::now();
    while times.len() < 5 || (started.elapsed() < Duration::from_millis(500) && times.len() < 1000)
    {
        times.push(f());
    }
    times.sort();
    times[times.len() / 2]
}

fn sweep_table(loaded: &Loaded, real_tracker: &mut Tracker, now: u64) {
    let mut rows: Vec<(String, usize, Duration)> = Vec::new();
    for n in SIZES {
        let (table, mut tracker) = steady(n);
        let alive = median_of(|| {
            let started = Instant::now();
            let events = sweep_steady(&table, &mut tracker, NOW);
            let elapsed = started.elapsed();
            assert_eq!(events, 0);
            elapsed
        });
        rows.push((format!("{n} (Vec, all alive)"), n, alive));
        let silent = median_of(|| sweep_one_percent_silent(&table, &mut tracker));
        rows.push((format!("{n} (Vec, 1% go silent at once)"), n, silent));
    }
    let real = median_of(|| {
        let started = Instant::now();
        let events = sweep_steady(loaded.table.last_seen(), real_tracker, now);
        let elapsed = started.elapsed();
        assert_eq!(events, 0);
        elapsed
    });
    let n = REAL_HOSTS as usize;
    rows.push((format!("{n} (real mmapped table, all alive)"), n, real));

    println!();
    println!("Tracker::sweep, median of >= 5 sweeps each:");
    println!();
    println!("| hosts | sweep time | ns/host |");
    println!("| --- | ---: | ---: |");
    for (name, n, t) in rows {
        let ns = t.as_nanos() as f64;
        println!("| {name} | {} | {:.3} |", fmt_ns(ns), ns / n as f64);
    }
}

fn memory_table(loaded: &Loaded, tracker: &Tracker) {
    // This process has loaded only this object: the maps hb uses plus any
    // other map fd open here are exactly the object's maps.
    let prog: &Xdp = loaded
        .ebpf
        .program(PROGRAM)
        .expect("hb program")
        .try_into()
        .expect("XDP program");
    let maps = maps_in_use(&[prog]).expect("listing the object's maps");
    for name in HOST_MAPS
        .iter()
        .chain(&PAIRED_MAPS)
        .chain(&[INDEX_MAP, ALLOC_MAP, COUNTERS_MAP])
    {
        assert!(
            maps.iter().any(|m| m.name == *name),
            "map {name} missing from the memory figure"
        );
    }
    let kernel: u64 = maps.iter().map(|m| m.memlock).sum();
    let heap = tracker.heap_bytes() as u64;
    let hosts = f64::from(REAL_HOSTS);
    println!();
    println!("Memory at {REAL_HOSTS} hosts (every slot taken):");
    println!();
    println!("| map | type | max entries | kernel bytes (memlock) | bytes/host |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for m in &maps {
        println!(
            "| {} | {} | {} | {} | {:.2} |",
            m.name,
            map_type_name(m.map_type),
            m.max_entries,
            m.memlock,
            m.memlock as f64 / hosts
        );
    }
    println!(
        "| all {} maps of the object | | | {kernel} | {:.2} |",
        maps.len(),
        kernel as f64 / hosts
    );
    println!(
        "| tracker heap (Tracker::heap_bytes) | | | {heap} | {:.2} |",
        heap as f64 / hosts
    );
    let per_host = (kernel + heap) as f64 / hosts;
    println!();
    println!(
        "Memory per host at {REAL_HOSTS} hosts: {per_host:.1} bytes \
         (kernel maps {:.1} + tracker heap {:.2}): {} the {TARGET_BYTES_PER_HOST:.0} bytes/host target.",
        kernel as f64 / hosts,
        heap as f64 / hosts,
        if per_host <= TARGET_BYTES_PER_HOST {
            "within"
        } else {
            "NOT within"
        }
    );
}
