//! The inventory at fleet scale: a CSV of 1M hosts (addresses 10.x.y.z,
//! a name each, three label columns sharing 24 label sets), measured with
//! a counting global allocator:
//!
//! - `Fleet::load`: wall time (target ≤ 2 s) and the heap it keeps, and its
//!   peak while loading;
//! - what it adds to the collector beyond today's table: the fleet plus
//!   the sweeper's extra state (slot -> entry, heard bits, per-slot
//!   class), against a sweeper without an inventory, both over a
//!   synthetic table of 1M slots every one of which is an inventoried
//!   host (target ≤ 48 bytes a host);
//! - sweep times with and without the inventory, and the sweep that
//!   adopts a reloaded 1M-host inventory (`set_fleet`; target: within one
//!   sweep period, 1 s by default).
//!
//! `HB_INVENTORY_HOSTS` sets the number of hosts (default 1M). Markdown
//! tables on stdout.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    io::Write as _,
    sync::atomic::{AtomicU32, AtomicUsize, Ordering},
    time::{Duration, Instant, UNIX_EPOCH},
};

use anyhow::Result;
use hb_common::HostKey;
use hb_userspace::{Counts, Fleet, FleetConfig, Format, Host, Sweeper, Table};

/// Heap in use, and its peak since the last `reset_peak`.
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, counting sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller's contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: as the caller's contract.
        unsafe { System.dealloc(p, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller's contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        // SAFETY: as the caller's contract.
        let q = unsafe { System.realloc(p, layout, new) };
        if !q.is_null() {
            if new >= layout.size() {
                let now =
                    CURRENT.fetch_add(new - layout.size(), Ordering::Relaxed) + new - layout.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                CURRENT.fetch_sub(layout.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn heap() -> usize {
    CURRENT.load(Ordering::Relaxed)
}

fn reset_peak() {
    PEAK.store(heap(), Ordering::Relaxed);
}

const S: u64 = 1_000_000_000;
const NOW: u64 = 1_000 * S;
const LOAD_TARGET: Duration = Duration::from_secs(2);
const BYTES_TARGET: f64 = 48.0;

/// The address of host (and slot) `i`.
fn addr(i: u32) -> [u8; 4] {
    let [_, a, b, c] = (i + 1).to_be_bytes();
    [10, a, b, c]
}

/// `n` slots, host i in slot i, all alive.
struct Synthetic {
    seen: Vec<AtomicU32>,
}

impl Table for Synthetic {
    fn epoch_ns(&self) -> u64 {
        0
    }
    fn last_seen(&self) -> &[AtomicU32] {
        &self.seen
    }
    fn host(&self, slot: u32) -> Host {
        Host::addr(&HostKey::from_ipv4(addr(slot)))
    }
    fn len(&self) -> usize {
        self.seen.len()
    }
    fn capacity(&self) -> usize {
        self.seen.len()
    }
    fn counters(&self) -> Result<Counts> {
        Ok(Default::default())
    }
}

/// Writes the inventory: `address,name,group,dc,role`.
fn write_csv(path: &std::path::Path, n: u32) -> u64 {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(out, "address,name,group,dc,role").unwrap();
    for i in 0..n {
        let [a, b, c, d] = addr(i);
        writeln!(
            out,
            "{a}.{b}.{c}.{d},web-{i:06},g{},dc{},r{}",
            i % 8,
            i % 3,
            i % 4
        )
        .unwrap();
    }
    drop(out);
    std::fs::metadata(path).unwrap().len()
}

/// Times one sweep.
fn timed(sweeper: &mut Sweeper, table: &Synthetic, now: u64) -> Duration {
    let t = Instant::now();
    sweeper.sweep_at(table, now, UNIX_EPOCH).unwrap();
    t.elapsed()
}

fn main() {
    let n: u32 = std::env::var("HB_INVENTORY_HOSTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = std::env::temp_dir().join(format!("hb-bench-inventory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("hosts.csv");
    let file_bytes = write_csv(&path, n);
    let config = FleetConfig {
        inventory: Some(path.clone()),
        ..Default::default()
    };

    // Loading: the best of 3 for time; heap kept by the last.
    let mut load = Duration::MAX;
    let mut fleet = None;
    let (mut kept, mut peak) = (0, 0);
    for _ in 0..3 {
        drop(fleet.take());
        let before = heap();
        reset_peak();
        let t = Instant::now();
        let f = Fleet::load(&config).unwrap();
        load = load.min(t.elapsed());
        kept = heap() - before;
        peak = PEAK.load(Ordering::Relaxed) - before;
        fleet = Some(f);
    }
    let fleet = fleet.unwrap();
    let inv = fleet.inventory().unwrap();
    assert_eq!(inv.len(), n as usize);
    assert_eq!(inv.label_sets(), 24);
    // The fleet's own count leaves out a few small things (path, header).
    assert!(
        inv.heap_bytes().abs_diff(kept) < 64 << 10,
        "the fleet's own count agrees: {} counted, {kept} allocated",
        inv.heap_bytes()
    );

    let table = Synthetic {
        seen: (0..n)
            .map(|_| AtomicU32::new(hb_common::timing::tick(NOW - S, 0)))
            .collect(),
    };
    // Today: no inventory; the first sweep reports every host new, the
    // second is the steady state (its output buffer shrunk back).
    let before = heap();
    let mut plain = Sweeper::new(15 * S, Format::Json);
    timed(&mut plain, &table, NOW);
    let plain_sweep = (0..5)
        .map(|i| timed(&mut plain, &table, NOW + i * S / 10))
        .min()
        .unwrap();
    let plain_heap = heap() - before;
    drop(plain);

    // With the inventory: the first sweep adopts it (no line: every host
    // is expected).
    let before = heap();
    let mut with = Sweeper::new(15 * S, Format::Json);
    with.set_fleet(fleet);
    let adopt_first = timed(&mut with, &table, NOW);
    assert!(with.lines().len() < 1000, "an expected host is not new");
    let with_sweep = (0..5)
        .map(|i| timed(&mut with, &table, NOW + i * S / 10))
        .min()
        .unwrap();
    let with_heap = heap() - before;
    // A reload of the same inventory (loaded off the loop in a real
    // reload): the sweep that adopts it.
    let again = Fleet::load(&config).unwrap();
    let t = Instant::now();
    with.set_fleet(again);
    let set_fleet = t.elapsed();
    let adopt_reload = set_fleet + timed(&mut with, &table, NOW + S);
    assert!(
        with.lines().len() < 1000,
        "a reload reports nothing: {}",
        String::from_utf8_lossy(&with.lines()[..200.min(with.lines().len())])
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let per = |b: usize| b as f64 / f64::from(n);
    let beyond = (kept + with_heap).saturating_sub(plain_heap);
    println!(
        "\n## Inventory of {n} hosts ({:.1} MB of CSV)\n",
        file_bytes as f64 / 1e6
    );
    println!("| figure | value | target |");
    println!("|---|---|---|");
    println!(
        "| `Fleet::load` (best of 3) | {} | ≤ {} |",
        hb_benches::fmt_ns(load.as_nanos() as f64),
        hb_benches::fmt_ns(LOAD_TARGET.as_nanos() as f64)
    );
    println!(
        "| heap kept by the fleet | {:.1} MB ({:.1} B/host) | |",
        kept as f64 / 1e6,
        per(kept)
    );
    println!(
        "| heap peak while loading | {:.1} MB ({:.1} B/host) | |",
        peak as f64 / 1e6,
        per(peak)
    );
    println!(
        "| sweeper heap, no inventory | {:.1} MB ({:.1} B/host) | |",
        plain_heap as f64 / 1e6,
        per(plain_heap)
    );
    println!(
        "| sweeper heap, with the inventory | {:.1} MB ({:.1} B/host) | |",
        with_heap as f64 / 1e6,
        per(with_heap)
    );
    println!(
        "| **beyond today's table** (fleet + sweeper difference) | **{:.1} B/host** | ≤ {BYTES_TARGET} |",
        per(beyond)
    );
    println!(
        "| sweep, no inventory (steady, min of 5) | {} | |",
        hb_benches::fmt_ns(plain_sweep.as_nanos() as f64)
    );
    println!(
        "| sweep, with the inventory (steady, min of 5) | {} | |",
        hb_benches::fmt_ns(with_sweep.as_nanos() as f64)
    );
    println!(
        "| first sweep with the inventory (adopts it) | {} | ≤ 1 sweep period |",
        hb_benches::fmt_ns(adopt_first.as_nanos() as f64)
    );
    println!(
        "| `set_fleet` of a reloaded inventory and the sweep that adopts it | {} (`set_fleet` {}) | ≤ 1 sweep period |",
        hb_benches::fmt_ns(adopt_reload.as_nanos() as f64),
        hb_benches::fmt_ns(set_fleet.as_nanos() as f64)
    );
    let ok = load <= LOAD_TARGET && per(beyond) <= BYTES_TARGET;
    println!("\n{}", if ok { "targets met" } else { "TARGETS MISSED" });
}
