//! `hb status`: the collector's summary and silent hosts, read from its
//! pinned maps. Read-only: the collector is not disturbed (its lock is
//! tested, never taken).
//!
//! Exit status: 0 while `hb run` runs (it holds the instance's lock); 3
//! when it does not, whether its program is still attached and recording
//! (the table is printed) or nothing of hb is there; one line on stderr
//! says which. Errors (an unknown interface, no permission) are 1.

use std::{fmt::Write as _, process::ExitCode, time::Duration};

use anyhow::{Result, bail};
use hb_common::Counter;
use log::warn;
use serde_json::json;

use crate::{
    cli::{Format, StatusArgs},
    clock::monotonic_ns,
    ingest::{
        timeout_text,
        xdp::{
            Bpffs, check_privileges, if_index,
            link::{self, Place},
            lock,
            pins::{self, AutoBounds},
        },
    },
    track::{
        adaptive::Timeout,
        events::{host_id, host_ip},
        fleet::{Fleet, FleetConfig, Inventory},
        silent::{OwnedLabels, silent_page},
        tracker::{self, Tracker, Words},
    },
};

/// `hb status`'s exit status when no `hb run` is running.
const NOT_RUNNING: u8 = 3;

pub fn status(args: StatusArgs) -> Result<ExitCode> {
    check_privileges("hb status reads pinned BPF maps, which")?;
    let iface = &args.iface;
    let inst = pins::Instance::new(iface, Bpffs::find(args.bpffs.as_deref())?)?;
    let running = lock::held(&inst.lock_file())?;
    let attached = link::place(&inst.link(), iface)? == Some(Place::Here);
    if pins::last_state(&inst).is_none() {
        if let Some(held) = running {
            eprintln!("hb run ({held}) on {iface} is starting: nothing to show yet");
            return Ok(ExitCode::SUCCESS);
        }
        if inst.dir().exists() {
            eprintln!(
                "no hb collector is running on {iface}; pins of one are left at {} (program {}), without a state file: `hb detach` removes them",
                inst.dir().display(),
                if attached {
                    "attached and recording"
                } else {
                    "not attached"
                }
            );
            return Ok(ExitCode::from(NOT_RUNNING));
        }
        if link::place(&inst.legacy_dir().join("link"), iface)? == Some(Place::Here) {
            eprintln!(
                "no hb collector is running on {iface}; the program of an earlier hb is attached and recording (pinned at {}): start `hb run` to carry on from it, or `hb detach` to remove it",
                inst.legacy_dir().display()
            );
            return Ok(ExitCode::from(NOT_RUNNING));
        }
        if if_index(iface).is_none() {
            bail!(
                "unknown interface `{iface}`: pick one from `ip link` (in this network namespace)"
            );
        }
        if args.format == Format::Json {
            println!(
                "{}",
                json!({"iface": iface, "collector_running": false, "program_attached": false})
            );
        }
        eprintln!("no hb collector is running on {iface}, and nothing of hb is attached to it");
        return Ok(ExitCode::from(NOT_RUNNING));
    }
    let (state, table) = pins::open(&inst).map_err(|e| {
        if pins::is_permission_error(&e) {
            e.context("hb status needs root: run it as root or with CAP_BPF and CAP_NET_ADMIN")
        } else {
            e
        }
    })?;
    let timeout = Duration::from_millis(state.timeout_ms);
    let auto = state.auto.map(AutoBounds::policy);
    let timeout_ns = tracker::timeout_ns(match auto {
        Some(_) => Timeout::Auto,
        None => Timeout::Fixed(timeout),
    });
    // Under auto, the bounds: for the judgement below, and for each silent
    // host's `silent_since` either way.
    let with_auto = |mut t: Tracker| {
        if let Some(policy) = auto {
            t.set_auto(policy);
        }
        t
    };
    // While the collector runs: what it has reported, as of its last
    // sweep (its groups' timeouts, flap damping and all), from the
    // tracker state it keeps pinned with the table.
    let told = match running {
        Some(_) => match pins::told(&inst, table.capacity()) {
            Ok(words) => Some(with_auto(Tracker::resume(
                timeout_ns,
                Words::Heap(words),
                table.capacity(),
                table.last_seen(),
                table.epoch_ns(),
            )))
            .filter(Tracker::resumed),
            Err(e) => {
                warn!("{e:#}: judging the hosts here instead of reading the collector's view");
                None
            }
        },
        None => None,
    };
    // Without it (no `hb run`, or nothing reported yet), the judgement the
    // collector makes, on the same data: under `auto`, each host by its
    // own learned timing; everyone by the global timeout.
    let tracker = told.unwrap_or_else(|| {
        let mut tracker = with_auto(Tracker::new(timeout_ns));
        tracker.set_epoch(table.epoch_ns());
        tracker.sweep_timed(
            table.last_seen(),
            &|slot| table.timing(slot),
            monotonic_ns(),
            |_| {},
        );
        tracker
    });
    let census = tracker.census();
    let packets = table.counters()?;
    let fleet = args
        .inventory
        .as_ref()
        .map(|path| {
            Fleet::load(&FleetConfig {
                inventory: Some(path.clone()),
                ..Default::default()
            })
        })
        .transpose()?;
    let inv = fleet.as_ref().and_then(Fleet::inventory);
    let names = |slot: u32| {
        let inv = inv?;
        inv.entry(&table.host(slot).key()).map(|e| inv.ident(e))
    };
    let page = silent_page(&tracker, &table, &names, timeout, 0, args.limit);
    let missing = inv.map(|inv| not_heard(inv, &table, args.limit));
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
                "collector_running": running.is_some(),
                "program_attached": attached,
                "hosts": census.hosts,
                "alive": census.alive,
                "silent": census.silent,
                "table_used": table.len(),
                "table_capacity": table.capacity(),
                "lost": packets_lost,
                "packets": packets,
                "silent_hosts": page,
                "missing": missing.as_ref().map(|m| m.0),
                "missing_hosts": missing.as_ref().map(|m| &m.1),
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
                timeout_text(timeout, auto),
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
                    if let (Some(p), Some(j)) = (h.period_ms, h.jitter_ms) {
                        let ms = |v| humantime::format_duration(Duration::from_millis(v));
                        let _ = write!(out, " period {}, jitter {}", ms(p), ms(j));
                    }
                    if let Some(phi) = h.phi {
                        let _ = write!(out, " phi {phi:.1}");
                    }
                    if h.flapping {
                        out.push_str(" flapping");
                    }
                    named(&mut out, h.name.as_deref(), h.labels.as_ref());
                }
            }
            if let Some((total, hosts)) = &missing {
                let _ = write!(
                    out,
                    "\nmissing hosts (inventoried, never heard by this collector; {} of {total}):",
                    hosts.len()
                );
                for h in hosts {
                    let _ = write!(out, "\n  {:<39}", h.host);
                    named(&mut out, h.name.as_deref(), h.labels.as_ref());
                }
            }
            out
        }
    };
    println!("{text}");
    if running.is_some() {
        return Ok(ExitCode::SUCCESS);
    }
    if attached {
        eprintln!(
            "hb run on {iface} (pid {}) is not running: its program is still attached and recording; start `hb run` to carry on reporting, or `hb detach` to remove it",
            state.pid
        );
    } else {
        eprintln!(
            "hb run on {iface} (pid {}) is not running, and its program is not attached (its interface went away): above is what it recorded; start `hb run` to carry on, or `hb detach` to remove it",
            state.pid
        );
    }
    Ok(ExitCode::from(NOT_RUNNING))
}

/// ` web-17 group=web dc=fra` after a host's line.
fn named(out: &mut String, name: Option<&str>, labels: Option<&OwnedLabels>) {
    if let Some(name) = name {
        let _ = write!(out, " {name}");
    }
    for (k, v) in labels.iter().flat_map(|l| &l.0) {
        let _ = write!(out, " {k}={v}");
    }
}

#[derive(serde::Serialize)]
struct NotHeard {
    host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<OwnedLabels>,
}

/// Inventoried hosts the table has no slot for: how many, and the first
/// `limit` in the inventory's order.
fn not_heard(
    inv: &Inventory,
    table: &crate::ingest::xdp::HostTable,
    limit: usize,
) -> (usize, Vec<NotHeard>) {
    let mut heard = vec![false; inv.len()];
    table.for_each(|key, _| {
        if let Some(e) = inv.entry(&key) {
            heard[e as usize] = true;
        }
    });
    let missing = (0..inv.len() as u32).filter(|&e| !heard[e as usize]);
    let total = missing.clone().count();
    let hosts = missing
        .take(limit)
        .map(|e| {
            let key = inv.key(e);
            let ident = inv.ident(e);
            NotHeard {
                host: match key.host_id() {
                    Some(id) => format!("id={}", host_id(id)),
                    None => host_ip(key).to_string(),
                },
                name: ident.name.map(str::to_owned),
                labels: OwnedLabels::of(&ident),
            }
        })
        .collect();
    (total, hosts)
}
