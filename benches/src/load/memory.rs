//! Memory as the system sees it: a real `hb run` on the load test's veth
//! pair, a fleet that each beats once, and what the machine and the
//! collector's process hold before and after (MemAvailable, VmRSS, VmHWM,
//! the kernel memory charged to hb's BPF maps). Figures are printed, not
//! checked: the machine is shared, MemAvailable moves with everything else
//! on it, so the process's own figures are given beside it.

use std::{
    fmt::Write as _,
    fs, thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    collector::{Collector, Kind, Settings},
    fleet::{Fleet, Hosts},
    generator::{Generator, Traffic},
    scenarios::Config,
    signals,
    topology::Topology,
};

/// What is measured at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    /// /proc/meminfo MemAvailable, bytes (median of a few reads).
    available: u64,
    /// The collector's VmRSS and VmHWM, bytes (0 before it runs).
    rss: u64,
    hwm: u64,
    /// This program's own VmRSS: it tallies the collector's events, and
    /// that is on the machine too (subtracted from the MemAvailable figure).
    own_rss: u64,
    /// Kernel memory charged to the BPF maps hb holds ("memlock:").
    maps: u64,
}

/// Runs the measurement for `hosts` hosts in a table of `max_hosts`;
/// returns a markdown section.
pub fn run(cfg: &Config, hosts: u32, max_hosts: u32) -> Result<String> {
    if hosts == 0 || hosts > max_hosts || hosts > super::fleet::MAX_HOSTS {
        bail!(
            "memory: 1 to --max-hosts hosts, at most {}",
            super::fleet::MAX_HOSTS
        );
    }
    let fleet = Fleet::new(cfg.ipv6_percent);
    let tag: String = format!("m{}", cfg.tag).chars().take(10).collect();
    let topo = Topology::new(&tag)?;
    let settings = Settings {
        hb: cfg.hb.clone(),
        iface: topo.a_if.clone(),
        port: cfg.port,
        ingest: None,
        // Nobody goes silent while measuring: one heartbeat each.
        timeout: Duration::from_secs(3600),
        sweep: cfg.sweep,
        max_hosts,
        inventory: None,
        extra: Vec::new(),
    };
    let mut generator = Generator::open(&topo.generator, &topo.b_if, fleet, cfg.port, cfg.batch)?;
    settle();
    let before = snapshot(None)?;
    let mut collector = Collector::start(&topo.collector, &settings, fleet, hosts)?;
    let pid = collector.pid();
    // A few sweeps of the empty table: the steady state before the burst.
    collector.wait_summaries(3, Duration::from_secs(30))?;
    let idle = snapshot(Some(pid))?;

    let t = Instant::now();
    let sent = generator.run(&Traffic {
        hosts: Hosts::range(0, hosts),
        rate: None,
        junk: false,
        duration: Duration::from_secs(300),
        max_packets: u64::from(hosts),
    })?;
    if sent.heartbeats < u64::from(hosts) {
        bail!("sent {} of {hosts} heartbeats in 300 s", sent.heartbeats);
    }
    let send_time = t.elapsed();
    // Every host reported `new` (the first sweeps after the burst), then
    // quiet sweeps: what is kept from then on is the steady size.
    let deadline = Instant::now() + Duration::from_secs(120 + u64::from(hosts / 100_000));
    loop {
        signals::check()?;
        let new = collector.events().totals[Kind::New as usize];
        if new >= u64::from(hosts) {
            break;
        }
        if Instant::now() >= deadline {
            bail!("only {new} of {hosts} hosts reported new in time");
        }
        thread::sleep(Duration::from_millis(200));
    }
    let reported = t.elapsed();
    let peak = snapshot(Some(pid))?;
    collector.wait_summaries(5, Duration::from_secs(60))?;
    settle();
    let after = snapshot(Some(pid))?;
    let metrics = collector.scrape()?;
    let table_hosts = metrics.get("hb_hosts");
    let events = collector.stop()?;
    if events.totals[Kind::New as usize] != u64::from(hosts) {
        bail!(
            "{} `new` lines for {hosts} hosts",
            events.totals[Kind::New as usize]
        );
    }
    drop(topo);

    let n = f64::from(hosts);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let per = |b: i64| b as f64 / n;
    let system = before.available as i64
        - after.available as i64
        - (after.own_rss as i64 - before.own_rss as i64);
    let mut md = String::new();
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let _ = writeln!(
        md,
        "### Memory at {hosts} hosts ({date})\n\n\
         `hb run --max-hosts {max_hosts}` ({}), {hosts} hosts ({}% IPv6) beat once each \
         (sent in {:.1} s, all reported `new` {:.1} s after the first was sent; the table \
         says {table_hosts} hosts), figures after 5 more sweeps.\n",
        cfg.hb.display(),
        cfg.ipv6_percent,
        send_time.as_secs_f64(),
        reported.as_secs_f64(),
    );
    let _ = writeln!(
        md,
        "| | before hb | hb idle | burst reported | steady after |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    let row = |md: &mut String, name: &str, f: &dyn Fn(&Snapshot) -> u64| {
        let _ = writeln!(
            md,
            "| {name} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
            mib(f(&before)),
            mib(f(&idle)),
            mib(f(&peak)),
            mib(f(&after))
        );
    };
    row(&mut md, "MemAvailable", &|s| s.available);
    row(&mut md, "hb VmRSS", &|s| s.rss);
    row(&mut md, "hb VmHWM", &|s| s.hwm);
    row(&mut md, "hb's BPF maps (memlock)", &|s| s.maps);
    row(&mut md, "this program's VmRSS", &|s| s.own_rss);
    let _ = writeln!(
        md,
        "\nPer host heard ({hosts}):\n\n\
         - as the system sees it (MemAvailable before hb − steady after, less this program's \
           growth): **{:.0} B/host** ({:.1} MiB; the machine is shared, so this moves with \
           whatever else runs)\n\
         - kernel: hb's BPF maps (memlock) {:.0} B/host\n\
         - collector: VmRSS {:.0} B/host steady ({:.0} B/host grown since idle), {:.0} B/host \
           when the burst was reported, peak (VmHWM) {:.0} B/host\n\
         - kernel maps + collector RSS, steady: **{:.0} B/host**\n",
        per(system),
        system as f64 / (1 << 20) as f64,
        per(after.maps as i64),
        per(after.rss as i64),
        per(after.rss as i64 - idle.rss as i64),
        per(peak.rss as i64),
        per(after.hwm as i64),
        per((after.maps + after.rss) as i64),
    );
    Ok(md)
}

/// Lets the page cache and the allocator settle before reading figures.
fn settle() {
    thread::sleep(Duration::from_secs(2));
}

fn snapshot(pid: Option<i32>) -> Result<Snapshot> {
    let mut avail: Vec<u64> = (0..5)
        .map(|i| {
            if i > 0 {
                thread::sleep(Duration::from_millis(100));
            }
            meminfo("MemAvailable:")
        })
        .collect::<Result<_>>()?;
    avail.sort_unstable();
    let (rss, hwm, maps) = match pid {
        Some(pid) => (
            status(pid, "VmRSS:")?,
            status(pid, "VmHWM:")?,
            map_memlock(pid),
        ),
        None => (0, 0, 0),
    };
    Ok(Snapshot {
        available: avail[2],
        rss,
        hwm,
        own_rss: status(std::process::id() as i32, "VmRSS:")?,
        maps,
    })
}

/// A `kB` field of /proc/meminfo, in bytes.
fn meminfo(key: &str) -> Result<u64> {
    kb_field(&fs::read_to_string("/proc/meminfo")?, key).context("/proc/meminfo")
}

/// A `kB` field of /proc/<pid>/status, in bytes.
fn status(pid: i32, key: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| path.clone())?;
    kb_field(&text, key).with_context(|| format!("{key} in {path}"))
}

fn kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Kernel memory charged to the BPF maps process `pid` holds an fd to,
/// each map once.
fn map_memlock(pid: i32) -> u64 {
    let mut seen = Vec::new();
    let mut total = 0;
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    for entry in dir.flatten() {
        let fd = entry.file_name();
        let Ok(info) = fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.to_string_lossy()))
        else {
            continue;
        };
        let field = |key: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(memlock)) = (field("map_id:"), field("memlock:"))
            && !seen.contains(&id)
        {
            seen.push(id);
            total += memlock;
        }
    }
    total
}
