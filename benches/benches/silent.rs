//! The HTTP endpoint's work for `GET /silent` during a large outage: 1M
//! hosts, every one silent, in a synthetic table (a `Vec<AtomicU32>` of
//! last-seen ticks, addresses made from the slot), measured in one run:
//!
//! - after: the collector's own handler (`Site::handle`), over the order of
//!   silent hosts the sweeper keeps;
//! - before: the handler's work as it was before that order existed (commit
//!   6463f03, copied below): every silent host sorted and its address read,
//!   for every request;
//! - the sweep's side of it: what keeping the order costs a sweep in which
//!   1% of the hosts recover, or go silent, next to the tracker's own sweep.
//!
//! Afterwards, markdown tables on stdout, with the 1 ms target for
//! `/silent?limit=100`.

use std::{
    hint::black_box,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Result;
use criterion::{BenchmarkId, Criterion};
use hb_benches::fmt_ns;
use hb_common::HostKey;
use hb_userspace::{
    Counts, Format, Host, Request, SilentOrder, Site, Sweeper, Table, Tracker, Transition,
};

const S: u64 = 1_000_000_000;
const TIMEOUT_NS: u64 = 15 * S;
/// Silent hosts.
const HOSTS: u32 = 1_000_000;
/// Synthetic "now" of the sweeps.
const NOW: u64 = 100_000 * S;
/// Hosts that recover, then go silent again, in the upkeep rows: 1%.
const CHANGED: u32 = HOSTS / 100;
/// The handler's budget for a page of 100.
const TARGET: Duration = Duration::from_millis(1);

/// `HOSTS` hosts 10.x.y.z, all silent: last seen between 20 s and 20 s +
/// 1 s ago, in an order unrelated to their slots.
struct Synthetic {
    seen: Vec<AtomicU32>,
}

impl Synthetic {
    fn new() -> Self {
        let seen = (0..HOSTS)
            .map(|i| {
                // A bijection of the slots (7919 is prime to 10^6).
                let rank = u64::from(i) * 7919 % u64::from(HOSTS);
                AtomicU32::new(hb_common::timing::tick(NOW - 21 * S + rank * 1_000, 0))
            })
            .collect();
        Self { seen }
    }
}

impl Table for Synthetic {
    fn epoch_ns(&self) -> u64 {
        0
    }
    fn last_seen(&self) -> &[AtomicU32] {
        &self.seen
    }
    fn host(&self, slot: u32) -> Host {
        let [_, a, b, c] = slot.to_be_bytes();
        Host::addr(&HostKey::from_ipv4([10, a, b, c]))
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

/// The handler's work for `GET /silent` before the sweep kept the order
/// (commit 6463f03, `track/silent.rs` and the handler's serialisation),
/// copied as it was.
mod before {
    use super::*;
    use hb_userspace::timestamp;
    use serde::Serialize;

    #[derive(Serialize)]
    struct SilentHost {
        host: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        host_id: Option<String>,
        silent_since: String,
        last_seen: String,
        silent_for_ms: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        lost: Option<u64>,
    }

    #[derive(Serialize)]
    struct SilentPage {
        total: usize,
        offset: usize,
        limit: usize,
        hosts: Vec<SilentHost>,
    }

    fn longest_silent(tracker: &Tracker, table: &dyn Table) -> Vec<(Host, u64)> {
        let mut slots: Vec<(u64, u32)> = tracker
            .silent_hosts()
            .map(|(slot, seen)| (seen, slot))
            .collect();
        slots.sort_unstable();
        slots
            .into_iter()
            .map(|(seen, slot)| (table.host(slot), seen))
            .collect()
    }

    fn earlier(wall: SystemTime, ago: Duration) -> SystemTime {
        wall.checked_sub(ago)
            .filter(|t| *t >= UNIX_EPOCH)
            .unwrap_or(UNIX_EPOCH)
    }

    /// The body of `GET /silent?offset=..&limit=..`.
    pub fn silent(
        tracker: &Tracker,
        table: &dyn Table,
        timeout: Duration,
        offset: usize,
        limit: usize,
    ) -> Vec<u8> {
        let (now, wall) = (hb_userspace::monotonic_ns(), SystemTime::now());
        let all = longest_silent(tracker, table);
        let hosts = all
            .iter()
            .skip(offset)
            .take(limit)
            .map(|(host, seen)| {
                let ago = Duration::from_nanos(now.saturating_sub(*seen));
                let last_seen = earlier(wall, ago);
                SilentHost {
                    host: host.ip.to_string(),
                    host_id: host.id.map(|id| format!("{id:016x}")),
                    lost: host.lost,
                    silent_since: timestamp(last_seen + timeout),
                    last_seen: timestamp(last_seen),
                    silent_for_ms: ago.as_millis() as u64,
                }
            })
            .collect();
        serde_json::to_vec(&SilentPage {
            total: all.len(),
            offset,
            limit,
            hosts,
        })
        .expect("plain structs serialize")
    }
}

/// The collector's state after a sweep that found every host silent.
fn swept(table: &Synthetic) -> Sweeper {
    let mut tracker = Tracker::new(TIMEOUT_NS);
    tracker.sweep(table.last_seen(), NOW, |_| {});
    assert_eq!(tracker.census().silent, u64::from(HOSTS));
    // As a collector carrying on from the last one's state: the order is
    // sorted once, then kept by every sweep (below, the first).
    let mut sweeper = Sweeper::with_tracker(tracker, Format::Json);
    sweeper
        .sweep_at(table, NOW + S, SystemTime::now())
        .expect("a sweep of the synthetic table");
    assert_eq!(sweeper.silent().len(), HOSTS as usize);
    sweeper
}

fn site(silent_series: usize) -> Site {
    Site {
        ingest: "xdp",
        timeout: Duration::from_nanos(TIMEOUT_NS),
        sweep: Duration::from_secs(1),
        silent_series,
        alerts: None,
        on_event: None,
    }
}

/// `GET target` through the collector's handler; returns the body.
fn after(site: &Site, target: &str, sweeper: &Sweeper, table: &Synthetic) -> Vec<u8> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let req = Request {
        method: "GET",
        path,
        query,
    };
    let reply = site.handle(&req, sweeper, table);
    assert_eq!(reply.status, 200, "{target}");
    reply.body
}

/// The hosts a `/silent` body lists, in order.
fn listed(body: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(body).expect("JSON");
    assert_eq!(v["total"], HOSTS);
    v["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| h["host"].as_str().expect("host").to_owned())
        .collect()
}

/// Median of `f`'s timings, at least `min` runs and at least ~0.5 s worth.
fn median_of(min: usize, mut f: impl FnMut() -> Duration) -> Duration {
    let mut times = Vec::new();
    let started = Instant::now();
    while times.len() < min
        || (started.elapsed() < Duration::from_millis(500) && times.len() < 1000)
    {
        times.push(f());
    }
    times.sort();
    times[times.len() / 2]
}

fn timed<T>(f: impl FnOnce() -> T) -> Duration {
    let started = Instant::now();
    black_box(f());
    started.elapsed()
}

/// Pages asked for: (what, offset, limit).
const PAGES: [(&str, usize, usize); 4] = [
    ("/silent?limit=100", 0, 100),
    ("/silent?limit=100&offset=500000", 500_000, 100),
    ("/silent (default page: 1000)", 0, 1000),
    ("/silent?limit=10000 (largest page)", 0, 10_000),
];

fn main() {
    let list_only = std::env::args().any(|a| a == "--list");
    let mut c = Criterion::default().configure_from_args();

    let table = Synthetic::new();
    let sweeper = swept(&table);
    let plain = site(0);
    let timeout = Duration::from_nanos(TIMEOUT_NS);

    // Both handlers list the same hosts in the same order.
    for (_, offset, limit) in PAGES {
        let target = format!("/silent?limit={limit}&offset={offset}");
        let new = listed(&after(&plain, &target, &sweeper, &table));
        let old = listed(&before::silent(
            sweeper.tracker(),
            &table,
            timeout,
            offset,
            limit,
        ));
        assert_eq!(new.len(), limit);
        assert_eq!(new, old, "{target}: the handlers disagree");
    }

    {
        let mut g = c.benchmark_group("silent_1M");
        g.warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(2))
            .sample_size(10);
        g.bench_function(BenchmarkId::new("after", "limit=100"), |b| {
            b.iter(|| after(&plain, "/silent?limit=100", &sweeper, &table))
        });
        g.bench_function(BenchmarkId::new("after", "limit=100&offset=500000"), |b| {
            b.iter(|| after(&plain, "/silent?limit=100&offset=500000", &sweeper, &table))
        });
        g.bench_function(BenchmarkId::new("before", "limit=100"), |b| {
            b.iter(|| before::silent(sweeper.tracker(), &table, timeout, 0, 100))
        });
        g.finish();
    }
    c.final_summary();

    if !list_only {
        handler_table(&sweeper, &table);
        drop(sweeper);
        upkeep_table(&table);
    }
}

fn handler_table(sweeper: &Sweeper, table: &Synthetic) {
    let timeout = Duration::from_nanos(TIMEOUT_NS);
    let plain = site(0);
    let mut rows = Vec::new();
    for (what, offset, limit) in PAGES {
        let target = format!("/silent?limit={limit}&offset={offset}");
        let old = median_of(5, || {
            timed(|| before::silent(sweeper.tracker(), table, timeout, offset, limit))
        });
        let new = median_of(5, || timed(|| after(&plain, &target, sweeper, table)));
        rows.push((what.to_owned(), Some(old), new));
    }
    let series = site(100);
    let metrics = median_of(5, || timed(|| after(&series, "/metrics", sweeper, table)));
    rows.push((
        "/metrics with --metrics-silent-hosts 100".to_owned(),
        None,
        metrics,
    ));

    println!();
    println!(
        "GET /silent at {HOSTS} silent hosts (synthetic table): the handler's work on the event loop, median of >= 5 requests:"
    );
    println!();
    println!("| request | before | after | before/after |");
    println!("| --- | ---: | ---: | ---: |");
    for (what, old, new) in &rows {
        let new_ns = new.as_nanos() as f64;
        match old {
            Some(old) => {
                let old_ns = old.as_nanos() as f64;
                println!(
                    "| {what} | {} | {} | {:.0}x |",
                    fmt_ns(old_ns),
                    fmt_ns(new_ns),
                    old_ns / new_ns
                );
            }
            None => println!("| {what} | | {} | |", fmt_ns(new_ns)),
        }
    }
    let page = rows[0].2;
    println!();
    println!(
        "/silent?limit=100 at {HOSTS} silent hosts: {} {} the {} target.",
        fmt_ns(page.as_nanos() as f64),
        if page <= TARGET {
            "within"
        } else {
            "NOT within"
        },
        fmt_ns(TARGET.as_nanos() as f64),
    );
}

/// One tracker sweep at `now`, its transitions fed to `order` as the
/// sweeper feeds them; returns (tracker's sweep, settling the order).
fn sweep(
    tracker: &mut Tracker,
    order: &mut SilentOrder,
    table: &Synthetic,
    now: u64,
) -> (Duration, Duration) {
    let started = Instant::now();
    tracker.sweep(table.last_seen(), now, |t| match t {
        Transition::Silent {
            host,
            silent_for_ns,
        } => order.went_silent(host, now - silent_for_ns),
        Transition::Recovered { host, .. } => order.recovered(host),
        Transition::New { .. } => {}
    });
    let swept = started.elapsed();
    let started = Instant::now();
    order.settle(tracker);
    (swept, started.elapsed())
}

fn upkeep_table(table: &Synthetic) {
    let mut tracker = Tracker::new(TIMEOUT_NS);
    tracker.sweep(table.last_seen(), NOW, |_| {});
    let mut order = SilentOrder::of(&tracker);
    let changed = || table.seen.iter().step_by((HOSTS / CHANGED) as usize);
    let mut now = NOW;
    let (mut recover, mut fall, mut quiet) = (Vec::new(), Vec::new(), Vec::new());
    let started = Instant::now();
    while recover.len() < 5 || (started.elapsed() < Duration::from_secs(1) && recover.len() < 50) {
        // 1% beat again...
        now += S;
        for t in changed() {
            t.store(hb_common::timing::tick(now, 0), Ordering::Relaxed);
        }
        recover.push(sweep(&mut tracker, &mut order, table, now));
        assert_eq!(order.len(), (HOSTS - CHANGED) as usize);
        // ...then fall silent again, last seen later than all the others.
        now += TIMEOUT_NS + S;
        fall.push(sweep(&mut tracker, &mut order, table, now));
        assert_eq!(order.len(), HOSTS as usize);
        quiet.push(sweep(&mut tracker, &mut order, table, now));
    }
    let median = |rows: &mut Vec<(Duration, Duration)>,
                  pick: fn(&(Duration, Duration)) -> Duration| {
        let mut v: Vec<Duration> = rows.iter().map(pick).collect();
        v.sort();
        v[v.len() / 2].as_nanos() as f64
    };
    println!();
    println!(
        "Keeping the order at {HOSTS} silent hosts, per sweep (median of {} sweeps each):",
        recover.len()
    );
    println!();
    println!("| sweep | tracker's sweep | keeping the order |");
    println!("| --- | ---: | ---: |");
    for (what, rows) in [
        ("nothing changes", &mut quiet),
        ("1% recover", &mut recover),
        ("1% go silent", &mut fall),
    ] {
        println!(
            "| {what} | {} | {} |",
            fmt_ns(median(rows, |r| r.0)),
            fmt_ns(median(rows, |r| r.1)),
        );
    }
}
