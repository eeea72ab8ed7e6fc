//! `hb status`: the running collector's summary and silent hosts, read from
//! its pinned maps. Read-only: the collector is not disturbed.

use std::{fmt::Write as _, time::Duration};

use anyhow::Result;
use hb_common::Counter;
use serde_json::json;

use crate::{
    cli::{Format, StatusArgs},
    clock::monotonic_ns,
    ingest::xdp::pins,
    track::{silent::silent_page, tracker::Tracker},
};

pub fn status(args: StatusArgs) -> Result<()> {
    let (state, table) = pins::open(&args.iface)?;
    let running = pins::running(&args.iface).is_some();
    if !running {
        log::warn!(
            "hb run on {} (pid {}) is not running: the program is still attached and recording; start `hb run` to carry on reporting, or `hb detach` to remove it",
            args.iface,
            state.pid
        );
    }
    let timeout = Duration::from_millis(state.timeout_ms);
    // The same judgement the collector makes, on the same data.
    let mut tracker = Tracker::new(timeout.as_nanos() as u64);
    tracker.sweep(table.last_seen(), monotonic_ns(), |_| {});
    let census = tracker.census();
    let packets = table.counters()?;
    let page = silent_page(&tracker, &table, timeout, 0, args.limit);
    let packets_lost = packets[Counter::Lost as usize];
    let text = match args.format {
        Format::Json => {
            let packets: serde_json::Map<_, _> = Counter::PACKETS
                .iter()
                .map(|c| (c.name().to_owned(), packets[*c as usize].into()))
                .collect();
            json!({
                "iface": args.iface,
                "collector": state,
                "collector_running": running,
                "hosts": census.hosts,
                "alive": census.alive,
                "silent": census.silent,
                "table_used": table.len(),
                "table_capacity": table.capacity(),
                "lost": packets_lost,
                "packets": packets,
                "silent_hosts": page,
            })
            .to_string()
        }
        Format::Text => {
            let mut out = format!(
                "hb on {} (pid {}, since {}): port {}, auth {}, timeout {}, sweep {}\n\
                 hosts={} alive={} silent={} table={}/{} lost={}\npackets:",
                args.iface,
                state.pid,
                state.started,
                state.port,
                state.auth,
                humantime::format_duration(timeout),
                humantime::format_duration(Duration::from_millis(state.sweep_ms)),
                census.hosts,
                census.alive,
                census.silent,
                table.len(),
                table.capacity(),
                packets_lost,
            );
            for &c in Counter::PACKETS {
                let _ = write!(out, " {}={}", c.name(), packets[c as usize]);
            }
            if page.total > 0 {
                let _ = write!(
                    out,
                    "\nsilent hosts ({} of {}, longest silent first):",
                    page.hosts.len(),
                    page.total
                );
                for h in &page.hosts {
                    let ago = humantime::format_duration(Duration::from_millis(h.silent_for_ms));
                    let _ = write!(
                        out,
                        "\n  {:<39} silent for {ago} (last seen {})",
                        h.host, h.last_seen
                    );
                    if let (Some(id), Some(lost)) = (&h.host_id, h.lost) {
                        let _ = write!(out, " id={id}, {lost} lost");
                    }
                }
            }
            out
        }
    };
    println!("{text}");
    Ok(())
}
