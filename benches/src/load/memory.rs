//! Memory as the system sees it: a real `hb run` on the load test's veth
//! pair, a fleet that each beats once, then a mass outage (every host
//! silent, then every host back), and what the machine and the collector
//! hold at each step, every page counted once: hb's BPF maps (each map
//! once, by its kernel memory, however hb reaches it), the collector's
//! private pages, its binary's pages, and MemAvailable. Figures are
//! printed, not checked: the machine is shared, MemAvailable moves with
//! everything else on it, so the process's own figures are given beside it.

use std::{
    fmt::Write as _,
    fs,
    os::fd::{AsFd as _, AsRawFd as _},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{BPF_F_MMAPABLE, MapMemory};

use super::{
    collector::{Collector, Kind, Settings},
    fleet::{Fleet, Hosts},
    generator::{Generator, Traffic},
    scenarios::Config,
    signals,
    topology::Topology,
};

/// What is measured at one moment.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    /// /proc/meminfo MemAvailable, bytes (median of a few reads).
    available: u64,
    /// The collector's VmRSS and VmHWM, bytes (0 before it runs).
    rss: u64,
    hwm: u64,
    /// This program's own VmRSS: it tallies the collector's events, and
    /// that is on the machine too (subtracted from the MemAvailable figure).
    own_rss: u64,
    /// The collector's pages by kind (its smaps).
    process: Process,
    /// hb's BPF maps, each once: those it holds an fd to, those its XDP
    /// program uses and those pinned for its instance.
    maps: Vec<MapMemory>,
    /// Kernel memory of the maps hb holds an fd to, alone (what this
    /// scenario reported before the split: mmapped maps whose fds are
    /// closed are not in it).
    fd_maps: u64,
}

impl Snapshot {
    /// Kernel memory of hb's maps.
    fn maps_total(&self) -> u64 {
        self.maps.iter().map(|m| m.memlock).sum()
    }

    /// Kernel memory of hb's maps that can be mmapped.
    fn maps_mappable(&self) -> u64 {
        self.maps
            .iter()
            .filter(|m| mappable(m))
            .map(|m| m.memlock)
            .sum()
    }

    /// The whole: the maps (once, however they are reached) and the
    /// collector's pages that are not map pages.
    fn total(&self) -> u64 {
        self.maps_total() + self.process.own()
    }
}

/// Whether a map's memory can be mapped into a process: arrays made
/// mmapable, and ring buffers.
fn mappable(m: &MapMemory) -> bool {
    m.flags & BPF_F_MMAPABLE != 0 || m.map_type == RINGBUF
}

/// `BPF_MAP_TYPE_RINGBUF`.
const RINGBUF: u32 = 27;

/// A process's resident pages by what they are, from /proc/PID/smaps
/// (bytes). `anon + file + bpf + kernel` is its VmRSS.
#[derive(Debug, Clone, Default)]
struct Process {
    /// Private anonymous pages (status' RssAnon): the collector's own
    /// memory. Of which:
    anon: u64,
    /// `[heap]`: glibc's main arena (brk);
    heap: u64,
    /// anonymous mappings: allocations past glibc's mmap threshold, other
    /// arenas, thread stacks;
    mappings: u64,
    /// the main thread's `[stack]`;
    stack: u64,
    /// pages of the binary and libraries written to (their data, relocations).
    data: u64,
    /// The anonymous mappings' sizes (resident), largest first.
    largest: Vec<u64>,
    /// File pages of the binary and its libraries (page cache, shared with
    /// whatever else maps them).
    file: u64,
    /// Pages of BPF maps mmapped (`anon_inode:bpf-map`): the kernel maps
    /// them all when mapped, and they count in VmRSS (as RssFile), though
    /// they are the maps' own memory.
    bpf: u64,
    /// Other kernel memory mapped in (`anon_inode:[io_uring]`: the rings).
    kernel: u64,
}

impl Process {
    /// What the process holds that is not a BPF map's.
    fn own(&self) -> u64 {
        self.anon + self.file + self.kernel
    }
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
    // Long enough for the burst to be sent and reported and the steady
    // figures read before the first host goes silent (checked), at about
    // 4 µs a frame on this machine's veth.
    let timeout = Duration::from_secs(30) + Duration::from_micros(5 * u64::from(hosts));
    let settings = Settings {
        hb: cfg.hb.clone(),
        iface: topo.a_if.clone(),
        port: cfg.port,
        ingest: None,
        timeout,
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

    let every_host_beats = |generator: &mut Generator| -> Result<Duration> {
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
        Ok(t.elapsed())
    };
    let t = Instant::now();
    let send_time = every_host_beats(&mut generator)?;
    // Every host reported `new` (the first sweeps after the burst), then
    // quiet sweeps: what is kept from then on is the steady size.
    let slack = Duration::from_secs(120 + u64::from(hosts / 100_000));
    wait_for(&collector, Kind::New, hosts, slack)?;
    let reported = t.elapsed();
    let peak = snapshot(Some(pid))?;
    collector.wait_summaries(5, Duration::from_secs(60))?;
    settle();
    let after = snapshot(Some(pid))?;
    let metrics = collector.scrape()?;
    let table_hosts = metrics.get("hb_hosts");
    if collector.events().totals[Kind::Silent as usize] > 0 {
        bail!(
            "hosts went silent ({timeout:?} timeout) before the steady figures were read: the burst took {send_time:?} to send"
        );
    }
    // A mass outage: every host silent at once, then every host back.
    wait_for(&collector, Kind::Silent, hosts, timeout + slack)?;
    let outage = snapshot(Some(pid))?;
    every_host_beats(&mut generator)?;
    wait_for(&collector, Kind::Recovered, hosts, slack)?;
    collector.wait_summaries(5, Duration::from_secs(60))?;
    settle();
    let recovered = snapshot(Some(pid))?;
    let events = collector.stop()?;
    for kind in Kind::ALL {
        if events.totals[kind as usize] != u64::from(hosts) {
            bail!(
                "{} `{}` lines for {hosts} hosts",
                events.totals[kind as usize],
                kind.name()
            );
        }
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
         `hb run --max-hosts {max_hosts} --timeout {}s` ({}), {hosts} hosts ({}% IPv6) beat \
         once each (sent in {:.1} s, all reported `new` {:.1} s after the first was sent; the \
         table says {table_hosts} hosts); *steady after*: 5 more sweeps. Then a mass outage: \
         *all silent* once every host was reported `silent`; every host beats again, \
         *recovered*: 5 sweeps after every host was reported `recovered`.\n",
        timeout.as_secs(),
        cfg.hb.display(),
        cfg.ipv6_percent,
        send_time.as_secs_f64(),
        reported.as_secs_f64(),
    );
    let _ = writeln!(
        md,
        "| | before hb | hb idle | burst reported | steady after | all silent | recovered |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    let row = |md: &mut String, name: &str, f: &dyn Fn(&Snapshot) -> u64| {
        let _ = write!(md, "| {name} |");
        for s in [&before, &idle, &peak, &after, &outage, &recovered] {
            let _ = write!(md, " {:.1} MiB |", mib(f(s)));
        }
        md.push('\n');
    };
    row(&mut md, "MemAvailable", &|s| s.available);
    row(&mut md, "hb VmRSS", &|s| s.rss);
    row(&mut md, "hb VmHWM", &|s| s.hwm);
    row(&mut md, "hb private (RssAnon)", &|s| s.process.anon);
    row(&mut md, "– heap (`[heap]`)", &|s| s.process.heap);
    row(&mut md, "– anonymous mappings", &|s| s.process.mappings);
    row(&mut md, "– stack", &|s| s.process.stack);
    row(&mut md, "– written data of binary and libraries", &|s| {
        s.process.data
    });
    row(&mut md, "hb binary and libraries (file pages)", &|s| {
        s.process.file
    });
    row(&mut md, "io_uring rings (mapped)", &|s| s.process.kernel);
    row(&mut md, "BPF map pages mapped (in VmRSS)", &|s| {
        s.process.bpf
    });
    row(&mut md, "hb's BPF maps, each once (memlock)", &|s| {
        s.maps_total()
    });
    row(&mut md, "– of which mappable", &|s| s.maps_mappable());
    row(&mut md, "– of which held by an fd", &|s| s.fd_maps);
    row(&mut md, "**total: maps + hb's pages not of maps**", &|s| {
        s.total()
    });
    row(&mut md, "this program's VmRSS", &|s| s.own_rss);
    let p = &after.process;
    let largest: Vec<String> = p
        .largest
        .iter()
        .take(6)
        .map(|&b| format!("{:.2}", mib(b)))
        .collect();
    let _ = writeln!(
        md,
        "\nPer host heard ({hosts}), steady after:\n\n\
         - kernel: hb's BPF maps **{:.1} B/host** (each map once, whether hb reaches it by an \
           fd, a mapping, its program or a pin; {:.1} B/host of them mappable: hb's VmRSS \
           shows {:.1} B/host of map pages, a ring buffer's data pages twice; counted here, \
           not again below)\n\
         - collector, private (RssAnon): **{:.1} B/host** ({:.1} B/host grown since idle; \
           {:.1} B/host when the burst was reported): heap {:.1}, anonymous mappings {:.1} \
           (MiB: {}), stack {:.1}, written data {:.1}\n\
         - collector, binary and libraries (file pages): {:.1} B/host; io_uring rings {:.1} \
           B/host\n\
         - collector's own share (private + binary + rings): **{:.1} B/host**; VmHWM (map \
           pages included) {:.0} B/host\n\
         - **total, kernel maps + collector: {:.1} B/host** ({:.1} MiB)\n\
         - with every host silent: collector private {:.1} B/host; once all recovered: \
           collector private {:.1} B/host, own share {:.1} B/host, total {:.1} B/host\n\
         - as the system sees it (MemAvailable before hb − steady after, less this program's \
           growth): {:.0} B/host ({:.1} MiB; the machine is shared, so this moves with \
           whatever else runs)\n",
        per(after.maps_total() as i64),
        per(after.maps_mappable() as i64),
        per(p.bpf as i64),
        per(p.anon as i64),
        per(p.anon as i64 - idle.process.anon as i64),
        per(peak.process.anon as i64),
        per(p.heap as i64),
        per(p.mappings as i64),
        if largest.is_empty() {
            "none".to_string()
        } else {
            largest.join(", ")
        },
        per(p.stack as i64),
        per(p.data as i64),
        per(p.file as i64),
        per(p.kernel as i64),
        per(p.own() as i64),
        per(after.hwm as i64),
        per(after.total() as i64),
        mib(after.total()),
        per(outage.process.anon as i64),
        per(recovered.process.anon as i64),
        per(recovered.process.own() as i64),
        per(recovered.total() as i64),
        per(system),
        system as f64 / (1 << 20) as f64,
    );
    let _ = writeln!(
        md,
        "| map | type | entries | flags | memlock | B/host |\n|---|---|---:|---|---:|---:|"
    );
    let mut maps = after.maps.clone();
    maps.sort_by_key(|m| std::cmp::Reverse(m.memlock));
    for m in &maps {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.1} MiB | {:.2} |",
            m.name,
            crate::map_type_name(m.map_type),
            m.max_entries,
            if m.flags & BPF_F_MMAPABLE != 0 {
                "mmapable"
            } else if m.map_type == RINGBUF {
                "mappable"
            } else {
                ""
            },
            mib(m.memlock),
            per(m.memlock as i64),
        );
    }
    md.push('\n');
    Ok(md)
}

/// Waits until `hosts` lines of `kind` were read from the collector.
fn wait_for(collector: &Collector, kind: Kind, hosts: u32, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        signals::check()?;
        let seen = collector.events().totals[kind as usize];
        if seen >= u64::from(hosts) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "only {seen} of {hosts} hosts reported {} in time",
                kind.name()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
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
    let mut s = Snapshot {
        available: avail[2],
        own_rss: status(std::process::id() as i32, "VmRSS:")?,
        ..Default::default()
    };
    if let Some(pid) = pid {
        s.rss = status(pid, "VmRSS:")?;
        s.hwm = status(pid, "VmHWM:")?;
        s.process = smaps(pid)?;
        (s.maps, s.fd_maps) = maps_of(pid)?;
    }
    Ok(s)
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

/// Process `pid`'s resident pages by kind.
fn smaps(pid: i32) -> Result<Process> {
    let path = format!("/proc/{pid}/smaps");
    let text = fs::read_to_string(&path).with_context(|| path.clone())?;
    Ok(parse_smaps(&text))
}

fn parse_smaps(text: &str) -> Process {
    let mut p = Process::default();
    // Each mapping: a header line (range, perms, offset, dev, inode,
    // [name]), then "Key: N kB" lines.
    let mut name = String::new();
    let mut rss = 0;
    let mut anon = 0;
    let flush = |p: &mut Process, name: &str, rss: u64, anon: u64| {
        p.anon += anon;
        if name == "anon_inode:bpf-map" {
            p.bpf += rss;
        } else if name.starts_with("anon_inode:") {
            p.kernel += rss;
        } else if name.starts_with('/') {
            p.file += rss - anon;
            p.data += anon;
        } else if name == "[heap]" {
            p.heap += anon;
        } else if name.starts_with("[stack") {
            p.stack += anon;
        } else if name.is_empty() {
            p.mappings += anon;
            if anon > 0 {
                p.largest.push(anon);
            }
        } else {
            // [vdso], [vvar] and the like: counted as mappings.
            p.mappings += anon;
        }
    };
    let mut started = false;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if first.ends_with(':') {
            let kb = words
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024;
            match first {
                "Rss:" => rss = kb,
                "Anonymous:" => anon = kb,
                _ => {}
            }
            continue;
        }
        if first.contains('-') {
            if started {
                flush(&mut p, &name, rss, anon);
            }
            started = true;
            // Range, perms, offset, dev, inode; the rest is the name.
            name = words.skip(4).collect::<Vec<_>>().join(" ");
            (rss, anon) = (0, 0);
        }
    }
    if started {
        flush(&mut p, &name, rss, anon);
    }
    p.largest.sort_unstable_by(|a, b| b.cmp(a));
    p
}

/// hb's BPF maps, each once (by id), and the memlock of those it holds an
/// fd to. Three ways lead to them, and each can miss some: fds (hb closes
/// the fds of the arrays it mmaps), its XDP program's maps (maps only
/// userspace reads are not among them) and its instance's pins (the
/// per-run maps are not pinned).
fn maps_of(pid: i32) -> Result<(Vec<MapMemory>, u64)> {
    let mut maps: Vec<MapMemory> = Vec::new();
    let mut fd_maps = 0;
    let mut add = |m: MapMemory| {
        if !maps.iter().any(|o| o.id == m.id) {
            maps.push(m);
            true
        } else {
            false
        }
    };
    let mut progs = Vec::new();
    let mut instance = None;
    let dir = format!("/proc/{pid}/fd");
    for entry in fs::read_dir(&dir).with_context(|| dir.clone())?.flatten() {
        let fd = entry.file_name().to_string_lossy().into_owned();
        let info_path = format!("/proc/{pid}/fdinfo/{fd}");
        if let Some(m) = crate::map_fdinfo_at(&info_path) {
            let memlock = m.memlock;
            if add(m) {
                fd_maps += memlock;
            }
            continue;
        }
        let info = fs::read_to_string(&info_path).unwrap_or_default();
        if let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("prog_id:"))
            .and_then(|v| v.trim().parse::<u32>().ok())
        {
            progs.push(id);
        }
        // `/run/hb/<instance>.lock`: the collector's instance name.
        if let Ok(target) = fs::read_link(entry.path())
            && let Some(name) = target.to_str().and_then(|t| t.strip_prefix("/run/hb/"))
            && let Some(name) = name.strip_suffix(".lock")
        {
            instance = Some(name.to_string());
        }
    }
    let mut ids = Vec::new();
    for prog in aya::programs::loaded_programs().flatten() {
        if progs.contains(&prog.id())
            && let Ok(Some(map_ids)) = prog.map_ids()
        {
            ids.extend(map_ids);
        }
    }
    if let Some(instance) = instance {
        let root = std::path::Path::new("/sys/fs/bpf/hb").join(instance);
        let mut stack = vec![root];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(path);
                } else if let Ok(data) = aya::maps::MapData::from_pin(&path)
                    && let Some(m) = crate::map_fdinfo_at(&format!(
                        "/proc/self/fdinfo/{}",
                        data.fd().as_fd().as_raw_fd()
                    ))
                {
                    // Read from the fd's fdinfo: the link's pin opens too,
                    // and its info would pass for a map's.
                    ids.push(m.id);
                }
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        add(crate::map_memory(id)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("hb's programs {progs:?}"))?);
    }
    maps.sort_by_key(|m| m.id);
    Ok((maps, fd_maps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_pages_are_sorted_by_kind() {
        let text = "\
55d9920c000-55d993a9000 r--p 00000000 fe:00 7375131   /usr/bin/hb
Size:               1652 kB
Rss:                 976 kB
Anonymous:            16 kB
55dbe4b7000-55dbe817000 rw-p 00000000 00:00 0          [heap]
Rss:                2060 kB
Anonymous:          2060 kB
7fce5ea73000-7fce5f674000 rw-p 00000000 00:00 0 
Rss:               12292 kB
Anonymous:         12292 kB
7fce5c7a6000-7fce5c8a7000 rw-p 00000000 00:00 0 
Rss:                1028 kB
Anonymous:          1028 kB
7fce61828000-7fce62828000 rw-s 00000000 00:10 1038     anon_inode:bpf-map
Rss:               16384 kB
Anonymous:             0 kB
7fce63828000-7fce63849000 rw-s 00000000 00:10 1853038  anon_inode:[io_uring]
Rss:                 132 kB
Anonymous:             0 kB
7fff03262000-7fff03283000 rw-p 00000000 00:00 0        [stack]
Rss:                  52 kB
Anonymous:            52 kB
";
        let p = parse_smaps(text);
        let k = 1024;
        assert_eq!(p.anon, (16 + 2060 + 12292 + 1028 + 52) * k);
        assert_eq!(p.data, 16 * k);
        assert_eq!(p.file, 960 * k);
        assert_eq!(p.heap, 2060 * k);
        assert_eq!(p.mappings, (12292 + 1028) * k);
        assert_eq!(p.largest, [12292 * k, 1028 * k]);
        assert_eq!(p.stack, 52 * k);
        assert_eq!(p.bpf, 16384 * k);
        assert_eq!(p.kernel, 132 * k);
    }
}
