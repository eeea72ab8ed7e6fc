//! The load test's report: a markdown table of the rows, the machine they
//! were measured on, and the XDP-to-socket CPU ratio.

use std::{fmt::Write as _, fs, time::SystemTime};

use super::{
    collector::Ingest,
    scenarios::{Config, Row, Scenario},
};

/// Thousands separators: 1234567 -> "1,234,567".
pub fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn signed(n: i64) -> String {
    if n < 0 {
        format!("-{}", grouped(n.unsigned_abs()))
    } else {
        grouped(n as u64)
    }
}

/// One line about the machine: CPUs, model, kernel, memory.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0.0, |kb| kb as f64 / (1024.0 * 1024.0));
    format!("{cpus} CPUs ({model}), Linux {kernel}, {mem_gib:.0} GiB")
}

fn percent(ns: f64, window_s: f64) -> String {
    format!("{:.1}%", ns / 1e9 / window_s * 100.0)
}

/// The rows as a markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(
        "| scenario | ingest | hosts | sent | accounted | loss | heartbeats/s | hb CPU | softirq CPU | CPU ns/packet (hb + softirq) | events as expected |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        // CPU shares of the traffic window: the measurement window also
        // holds the warm-up of the collector and the final sweeps, which
        // would dilute them. The idle softirq is a rate, over the window.
        let traffic = r.sent.elapsed.as_secs_f64().max(1e-9);
        let w = r.window.as_secs_f64();
        let rate = r.accounted() as f64 / traffic;
        let mut sent = grouped(r.sent.heartbeats);
        if r.sent.junk > 0 {
            let _ = write!(sent, " + {} junk", grouped(r.sent.junk));
        }
        let mut accounted = grouped(r.accounted());
        if r.sent.junk > 0 {
            let junk = r.counters.packets("wrong_payload");
            let _ = write!(accounted, " + {} junk", grouped(junk));
        }
        let per = match r.ns_per_packet() {
            Some((hb, si)) => format!("{:.0} ({:.0} + {:.0})", hb + si, hb, si),
            None => "-".into(),
        };
        let softirq = format!(
            "{} (idle {})",
            percent(r.softirq_ns, traffic),
            percent(r.softirq_idle_ns, w)
        );
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario.name(),
            r.ingest.name(),
            grouped(u64::from(r.hosts)),
            sent,
            accounted,
            signed(r.loss()),
            grouped(rate as u64),
            percent(r.hb_cpu_ns, traffic),
            softirq,
            per,
            match (r.ingest, r.problems.is_empty()) {
                (Ingest::RefSocket, true) => "n/a (no events)",
                (_, true) => "yes",
                (_, false) => "no",
            },
        );
    }
    out
}

/// Socket-to-XDP CPU per heartbeat, for each scenario run in both modes.
pub fn ratios(rows: &[Row]) -> Vec<String> {
    let mut out = Vec::new();
    for sc in Scenario::ALL {
        let find = |i| rows.iter().find(|r| r.scenario == sc && r.ingest == i);
        let Some(x) = find(Ingest::Xdp) else {
            continue;
        };
        let Some(s) = find(Ingest::Socket).or_else(|| find(Ingest::RefSocket)) else {
            continue;
        };
        let (Some((xh, xs)), Some((sh, ss))) = (x.ns_per_packet(), s.ns_per_packet()) else {
            continue;
        };
        out.push(format!(
            "{}: {} uses {:.2}x the CPU per packet of XDP ({:.0} ns vs {:.0} ns; \
             collector process {:.0} vs {:.0} ns, softirq {:.0} vs {:.0} ns)",
            sc.name(),
            match s.ingest {
                Ingest::Socket => "socket mode",
                _ => "the reference socket reader",
            },
            (sh + ss) / (xh + xs),
            sh + ss,
            xh + xs,
            sh,
            xh,
            ss,
            xs
        ));
    }
    out
}

/// The whole report in markdown.
pub fn markdown(cfg: &Config, rows: &[Row], notes: &[String]) -> String {
    let mut out = String::new();
    let date = hb_userspace::timestamp(SystemTime::now());
    let _ = writeln!(out, "## hb load test, {}\n", &date[..10]);
    let _ = writeln!(out, "Machine: {}.\n", machine());
    let _ = writeln!(
        out,
        "Parameters: {} hosts ({}% IPv6), period {} ms, timeout {} ms, sweep {} ms, \
         steady/flood {} s, junk-flood fleet {} hosts, batch {}, flood rate {}.\n",
        grouped(u64::from(cfg.hosts)),
        cfg.ipv6_percent,
        cfg.period.as_millis(),
        cfg.timeout.as_millis(),
        cfg.sweep.as_millis(),
        cfg.duration.as_secs_f64(),
        grouped(u64::from(cfg.junk_hosts)),
        cfg.batch,
        cfg.rate
            .map_or("unlimited".into(), |r| format!("at most {r:.0}/s")),
    );
    out.push_str(&table(rows));
    out.push('\n');
    for line in ratios(rows) {
        let _ = writeln!(out, "- {line}");
    }
    for n in notes {
        let _ = writeln!(out, "- {n}");
    }
    for r in rows {
        for n in &r.notes {
            let _ = writeln!(out, "- {} / {}: {n}", r.scenario.name(), r.ingest.name());
        }
        for p in &r.problems {
            let _ = writeln!(
                out,
                "- **{} / {}: {p}**",
                r.scenario.name(),
                r.ingest.name()
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_digits() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(signed(-1234), "-1,234");
    }
}
