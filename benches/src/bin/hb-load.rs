//! hb-load: the end-to-end load test. A generator namespace simulates a
//! fleet and sends its heartbeats through a veth pair to the real `hb run`
//! in a collector namespace; prints a markdown table (see
//! `hb_benches::load`). Run as root, e.g. through `cargo xtask bench`.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use hb_benches::load::{
    self,
    collector::Ingest,
    report,
    scenarios::{Config, Scenario},
    signals,
};
use hb_userspace::{parse_duration, parse_port};

#[derive(Parser, Debug)]
#[command(about = "End-to-end load test of hb: a simulated fleet through a veth pair")]
struct Args {
    /// The hb binary under test (default: `hb` next to this program).
    #[arg(long)]
    hb: Option<PathBuf>,
    /// Distinct hosts simulated.
    #[arg(long, default_value_t = 1_000_000)]
    hosts: u32,
    /// Share of IPv6 hosts, in percent.
    #[arg(long, default_value_t = 10)]
    ipv6_percent: u8,
    /// Each host beats once per period (steady, silent-1%, recovery, churn).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    period: Duration,
    /// The collector's --timeout.
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
    timeout: Duration,
    /// The collector's --sweep.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    sweep: Duration,
    /// Traffic time of steady, flood and junk-flood.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    duration: Duration,
    /// Cap on the flood rate (frames/s) of flood and junk-flood; default: as fast as possible.
    #[arg(long)]
    rate: Option<f64>,
    /// Comma-separated scenarios: steady, flood, silent-1%, recovery, churn, junk-flood, reload, or all;
    /// and, not in all: memory (--hosts beat once, then all go silent and come back; hb's
    /// BPF maps, private, binary pages and MemAvailable at each step), quality (detection time
    /// and false `silent` rate of fixed timeouts).
    #[arg(long, default_value = "all")]
    scenarios: String,
    /// memory: the collector's --max-hosts (default: --hosts rounded up to a power of two).
    #[arg(long)]
    max_hosts: Option<u32>,
    /// quality: hosts of the mixed fleet.
    #[arg(long, default_value_t = 3000)]
    quality_hosts: u32,
    /// quality: traffic time per timeout.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    quality_duration: Duration,
    /// quality: comma-separated timeouts (fixed, or auto), one run each.
    #[arg(long, default_value = "15s,auto")]
    quality_timeouts: String,
    /// quality: --max-timeout of the auto runs (also the bound until a host has learned its period).
    #[arg(long, default_value = "70s", value_parser = parse_duration)]
    quality_max_timeout: Duration,
    /// Comma-separated ingest modes to compare: xdp, socket.
    #[arg(long, default_value = "xdp,socket")]
    ingest: String,
    /// Real hosts beside the junk in junk-flood.
    #[arg(long, default_value_t = 1000)]
    junk_hosts: u32,
    /// Frames per sendmmsg call.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Heartbeat port.
    #[arg(long, default_value_t = hb_common::DEFAULT_PORT, value_parser = parse_port)]
    port: u16,
    /// Cap on frames per traffic phase.
    #[arg(long, default_value_t = 500_000_000)]
    max_packets: u64,
    /// Where the markdown report goes (default: <target>/hb-bench/load.md).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Err(e) = real_main() {
        eprintln!("hb-load: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the load test creates network namespaces and attaches XDP: run it as root");
    }
    signals::install()?;
    let exe = std::env::current_exe().context("locating hb-load")?;
    let hb = match args.hb {
        Some(p) => p,
        None => exe.with_file_name("hb"),
    };
    if !hb.exists() {
        bail!(
            "no hb binary at {}: build it (cargo xtask build) or pass --hb",
            hb.display()
        );
    }
    let mut names: Vec<&str> = args.scenarios.split(',').map(str::trim).collect();
    let mut extra = |name: &str| {
        let had = names.contains(&name);
        names.retain(|&n| n != name);
        had
    };
    let (memory, quality) = (extra("memory"), extra("quality"));
    let scenarios: Vec<Scenario> = if names == ["all"] {
        Scenario::ALL.to_vec()
    } else {
        names
            .iter()
            .map(|n| Scenario::parse(n))
            .collect::<Result<_>>()?
    };
    let ingest: Vec<Ingest> = args
        .ingest
        .split(',')
        .map(|s| Ingest::parse(s.trim()))
        .collect::<Result<_>>()?;
    let out = args.out.unwrap_or_else(|| default_out(&hb));
    let cfg = Config {
        hb,
        hosts: args.hosts,
        ipv6_percent: args.ipv6_percent,
        period: args.period,
        timeout: args.timeout,
        sweep: args.sweep,
        duration: args.duration,
        rate: args.rate,
        junk_hosts: args.junk_hosts,
        batch: args.batch,
        port: args.port,
        max_packets: args.max_packets,
        tag: format!("{:x}", std::process::id()),
    };
    let mut md = String::new();
    if memory {
        let max = args
            .max_hosts
            .unwrap_or_else(|| args.hosts.next_power_of_two());
        md += &load::memory::run(&cfg, args.hosts, max)?;
    }
    if quality {
        let q = load::quality::Quality {
            hosts: args.quality_hosts,
            duration: args.quality_duration,
            timeouts: args
                .quality_timeouts
                .split(',')
                .map(|t| {
                    load::quality::Timeout::parse(t, args.quality_max_timeout)
                        .map_err(anyhow::Error::msg)
                })
                .collect::<Result<_>>()?,
            seed: 0x5eed_4842,
        };
        md += &load::quality::run(&cfg, &q)?;
    }
    let (rows, notes) = if scenarios.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        load::run_all(&cfg, &scenarios, &ingest)?
    };
    if !rows.is_empty() {
        md += &report::markdown(&cfg, &rows, &notes);
    }
    println!("{md}");
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, &md).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("hb-load: report written to {}", out.display());
    // The XDP path is what is under test; the socket baselines are measured
    // as they are (they lose heartbeats once the socket overflows, which is
    // the point of the comparison): their problems are reported, not fatal.
    let failed: Vec<_> = rows
        .iter()
        .filter(|r| !r.problems.is_empty() && r.ingest == hb_benches::load::collector::Ingest::Xdp)
        .map(|r| format!("{} / {}", r.scenario.name(), r.ingest.name()))
        .collect();
    if !failed.is_empty() {
        bail!("not as expected: {}", failed.join(", "));
    }
    Ok(())
}

/// `<target>/hb-bench/load.md` for an hb in `<target>/<profile>/hb`.
fn default_out(hb: &Path) -> PathBuf {
    hb.parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."))
        .join("hb-bench/load.md")
}
