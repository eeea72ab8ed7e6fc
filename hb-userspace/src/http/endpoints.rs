//! What the HTTP endpoint serves: `GET /metrics` (Prometheus text
//! exposition), `GET /silent` and `GET /missing` (hosts as JSON, paged) and
//! `GET /` (the status page, paged the same way: see `page`). Rendered from
//! the last sweep's state; the table is read only for the hosts a page
//! shows (their addresses), so a request costs what it returns.

use std::{
    fmt::Write as _,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use hb_common::Counter;

use super::{
    missing::MissingHost,
    page::{self, GroupRow, PAGE_ROWS},
    server::{Request, Response, query_param},
};
use crate::{
    alert,
    clock::monotonic_ns,
    track::{
        events::{Summary, host_id, host_ip, timestamp},
        fleet::{Fleet, Ident, roll::Roll},
        silent::{OwnedLabels, SilentOrder},
        sweeper::{EventTotals, Sweeper},
        table::Table,
    },
};

/// Default and largest page of `GET /silent`.
pub const SILENT_PAGE: usize = 1000;
pub const SILENT_PAGE_MAX: usize = 10_000;

/// The collector's endpoints: what they serve beyond the last sweep and
/// the table.
pub struct Site {
    /// Which path fills the table: "xdp" or "socket".
    pub ingest: &'static str,
    pub timeout: Duration,
    /// `--sweep`: exported so that a rule can compare a sweep's duration with it.
    pub sweep: Duration,
    /// Per-host series for at most this many silent hosts (0: none).
    pub silent_series: usize,
    /// The alert delivery's counters, with --alertmanager.
    pub alerts: Option<Arc<alert::Stats>>,
    /// With --on-event.
    pub on_event: Option<Arc<alert::CommandStats>>,
}

impl Site {
    /// Answers `req` from the last sweep's state, and from the table the
    /// addresses of the silent hosts it shows.
    pub fn handle(&self, req: &Request<'_>, sweeper: &Sweeper, table: &dyn Table) -> Response {
        let ctx = Context {
            sweeper,
            fleet: sweeper.fleet(),
            roll: sweeper.roll(),
            summary: sweeper.summary(),
            events: sweeper.totals(),
            silent: sweeper.silent(),
            table_used: sweeper.table_used(),
            table,
            site: self,
        };
        handle(req, &ctx)
    }
}

struct Context<'a> {
    sweeper: &'a Sweeper,
    fleet: &'a Fleet,
    roll: &'a Roll,
    summary: &'a Summary,
    events: &'a EventTotals,
    silent: &'a SilentOrder,
    table_used: usize,
    table: &'a dyn Table,
    site: &'a Site,
}

fn handle(req: &Request<'_>, ctx: &Context<'_>) -> Response {
    match req.path {
        "/metrics" => Response::new(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics(ctx),
        ),
        "/silent" => silent(req, ctx),
        "/missing" => missing(req, ctx),
        "/" => status_page(req, ctx),
        _ => Response::error(404, "not found: try /, /metrics, /silent or /missing"),
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn metrics(ctx: &Context<'_>) -> String {
    let s = ctx.summary;
    let mut out = String::with_capacity(4096);
    metric(
        &mut out,
        "hb_hosts",
        "gauge",
        "Hosts heard from since the collector started.",
    );
    let _ = writeln!(out, "hb_hosts {}", s.hosts);
    metric(
        &mut out,
        "hb_hosts_alive",
        "gauge",
        "Hosts whose last heartbeat is within the timeout.",
    );
    let _ = writeln!(out, "hb_hosts_alive {}", s.alive);
    metric(
        &mut out,
        "hb_hosts_silent",
        "gauge",
        "Hosts silent for longer than the timeout.",
    );
    let _ = writeln!(out, "hb_hosts_silent {}", s.silent);
    metric(
        &mut out,
        "hb_hosts_flapping",
        "gauge",
        "Hosts whose silent and recovered events flap damping holds back.",
    );
    let _ = writeln!(out, "hb_hosts_flapping {}", ctx.sweeper.flapping());
    metric(
        &mut out,
        "hb_heartbeats_total",
        "counter",
        "Heartbeats recorded.",
    );
    let _ = writeln!(
        out,
        "hb_heartbeats_total {}",
        s.packets[Counter::Heartbeat as usize]
    );
    metric(
        &mut out,
        "hb_packets_total",
        "counter",
        "Packets seen by the XDP program (by the socket in socket mode), by outcome.",
    );
    for &c in Counter::PACKETS {
        let _ = writeln!(
            out,
            "hb_packets_total{{outcome=\"{}\"}} {}",
            c.name(),
            s.packets[c as usize]
        );
    }
    metric(
        &mut out,
        "hb_heartbeats_lost_total",
        "counter",
        "Heartbeats missing from the sequence numbers of signed heartbeats.",
    );
    let _ = writeln!(
        out,
        "hb_heartbeats_lost_total {}",
        s.packets[Counter::Lost as usize]
    );
    metric(
        &mut out,
        "hb_table_capacity",
        "gauge",
        "Hosts the table can hold (--max-hosts).",
    );
    let _ = writeln!(out, "hb_table_capacity {}", ctx.table.capacity());
    metric(
        &mut out,
        "hb_table_used",
        "gauge",
        "Slots of the table in use.",
    );
    let _ = writeln!(out, "hb_table_used {}", ctx.table_used);
    metric(
        &mut out,
        "hb_sweep_duration_seconds",
        "gauge",
        "Duration of the last sweep.",
    );
    let _ = writeln!(out, "hb_sweep_duration_seconds {}", s.sweep.as_secs_f64());
    metric(
        &mut out,
        "hb_sweep_period_seconds",
        "gauge",
        "The sweep period (--sweep).",
    );
    let _ = writeln!(
        out,
        "hb_sweep_period_seconds {}",
        ctx.site.sweep.as_secs_f64()
    );
    metric(
        &mut out,
        "hb_events_total",
        "counter",
        "Host events reported, by kind.",
    );
    for (event, n) in [
        ("new", ctx.events.new),
        ("silent", ctx.events.silent),
        ("recovered", ctx.events.recovered),
        ("missing", ctx.events.missing),
        ("flapping", ctx.events.flapping),
        ("flapping_end", ctx.events.flapping_end),
    ] {
        let _ = writeln!(out, "hb_events_total{{event=\"{event}\"}} {n}");
    }
    metric(
        &mut out,
        "hb_hosts_forgotten_total",
        "counter",
        "Hosts forgotten (dropped from the inventory, or silent for --forget-after): their slots freed for new hosts.",
    );
    let _ = writeln!(out, "hb_hosts_forgotten_total {}", ctx.sweeper.forgotten());
    if ctx.fleet.inventory().is_some() {
        metric(
            &mut out,
            "hb_hosts_missing",
            "gauge",
            "Inventoried hosts not heard within their grace.",
        );
        let _ = writeln!(out, "hb_hosts_missing {}", ctx.roll.missing_count());
        metric(
            &mut out,
            "hb_unknown_hosts",
            "gauge",
            "Hosts heard that the inventory does not list (tracked or ignored, as unknown_hosts says).",
        );
        let _ = writeln!(out, "hb_unknown_hosts {}", ctx.roll.unlisted());
    }
    let classes = ctx.fleet.classes();
    if classes.len() > 1 {
        metric(
            &mut out,
            "hb_group_hosts",
            "gauge",
            "Inventoried hosts by group (their group label) and state.",
        );
        for (policy, count) in classes.iter().zip(ctx.roll.by_class()).skip(1) {
            let group = escape(&policy.group);
            for (state, n) in [
                ("alive", count.hosts.saturating_sub(count.silent)),
                ("silent", count.silent),
                ("missing", count.missing),
            ] {
                let _ = writeln!(
                    out,
                    "hb_group_hosts{{group=\"{group}\",state=\"{state}\"}} {n}"
                );
            }
        }
    }
    if let Some(a) = &ctx.site.alerts {
        alert_metrics(&mut out, a);
    }
    if let Some(c) = &ctx.site.on_event {
        for (name, help, v) in [
            (
                "hb_on_event_runs_total",
                "--on-event commands run.",
                &c.runs,
            ),
            (
                "hb_on_event_failures_total",
                "--on-event commands that failed: not started, killed at the timeout, or exited non-zero.",
                &c.failures,
            ),
            (
                "hb_on_event_dropped_total",
                "Events dropped from the full --on-event queue.",
                &c.dropped,
            ),
        ] {
            metric(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
    }
    metric(&mut out, "hb_build_info", "gauge", "Build information.");
    let _ = writeln!(
        out,
        "hb_build_info{{version=\"{}\",ingest=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        ctx.site.ingest
    );
    if ctx.site.silent_series > 0 {
        metric(
            &mut out,
            "hb_host_silent_seconds",
            "gauge",
            "Seconds since the last heartbeat, for silent hosts only (capped by --metrics-silent-hosts).",
        );
        let now = monotonic_ns();
        for (slot, last_seen) in ctx.silent.range(0, ctx.site.silent_series) {
            let host = ctx.table.host(slot);
            let secs = now.saturating_sub(last_seen) as f64 / 1e9;
            let id = host
                .id
                .map(|id| format!(",host_id=\"{}\"", host_id(id)))
                .unwrap_or_default();
            let named = ctx
                .sweeper
                .ident(slot)
                .map(|i| series_labels(&i))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "hb_host_silent_seconds{{host=\"{}\"{id}{named}}} {secs:.3}",
                host.ip
            );
        }
    }
    out
}

fn alert_metrics(out: &mut String, a: &alert::Stats) {
    metric(
        out,
        "hb_alerts_sent_total",
        "counter",
        "Alerts an Alertmanager accepted (each Alertmanager counts).",
    );
    let sent = a.sent.load(Ordering::Relaxed);
    let _ = writeln!(out, "hb_alerts_sent_total {sent}");
    metric(
        out,
        "hb_alert_delivery_failures_total",
        "counter",
        "POSTs to an Alertmanager that failed (no connection, timeout, or an error status).",
    );
    let failures = a.failures.load(Ordering::Relaxed);
    let _ = writeln!(out, "hb_alert_delivery_failures_total {failures}");
    metric(
        out,
        "hb_alert_queue_length",
        "gauge",
        "Alerts waiting to be delivered, summed over the Alertmanagers.",
    );
    let _ = writeln!(out, "hb_alert_queue_length {}", a.queue_length());
}

/// A label value in the exposition format: backslash, quote and newline
/// escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `,name="…",group="…",…` for a per-host series.
fn series_labels(ident: &Ident<'_>) -> String {
    let mut s = String::new();
    if let Some(name) = ident.name {
        let _ = write!(s, ",name=\"{}\"", escape(name));
    }
    for (k, v) in ident.labels.iter() {
        let _ = write!(s, ",{k}=\"{}\"", escape(v));
    }
    s
}

/// `offset` and `limit` of a paged request (`limit` by default: `default`).
fn paging(req: &Request<'_>, default: usize) -> Result<(usize, usize), Response> {
    let parse = |name: &str, default: usize| match query_param(req.query, name) {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| format!("{name} must be a non-negative integer")),
    };
    match (parse("offset", 0), parse("limit", default)) {
        (Ok(o), Ok(l)) if l <= SILENT_PAGE_MAX => Ok((o, l)),
        (Ok(_), Ok(_)) => Err(Response::error(
            400,
            &format!("limit must be at most {SILENT_PAGE_MAX}"),
        )),
        (Err(e), _) | (_, Err(e)) => Err(Response::error(400, &e)),
    }
}

#[derive(serde::Serialize)]
struct MissingPage {
    total: usize,
    offset: usize,
    limit: usize,
    hosts: Vec<MissingHost>,
}

/// `GET /missing`: inventoried hosts not heard within their grace, in the
/// order they were reported.
fn missing(req: &Request<'_>, ctx: &Context<'_>) -> Response {
    let (offset, limit) = match paging(req, SILENT_PAGE) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let (total, hosts) = missing_hosts(ctx, offset, limit);
    let page = MissingPage {
        total,
        offset,
        limit,
        hosts,
    };
    Response::new(
        200,
        "application/json",
        serde_json::to_vec(&page).expect("plain structs serialize"),
    )
}

/// Missing hosts `offset..offset + limit`, and how many are missing.
fn missing_hosts(ctx: &Context<'_>, offset: usize, limit: usize) -> (usize, Vec<MissingHost>) {
    let (now, wall) = (monotonic_ns(), std::time::SystemTime::now());
    let total = ctx.roll.missing().len();
    let hosts = match ctx.fleet.inventory() {
        None => Vec::new(),
        Some(inv) => ctx
            .roll
            .missing_page(offset, limit)
            .map(|(e, since)| {
                let key = inv.key(e);
                let ident = inv.ident(e);
                let ago = Duration::from_nanos(now.saturating_sub(since));
                MissingHost {
                    host: key.host_id().is_none().then(|| host_ip(key).to_string()),
                    host_id: key.host_id().map(host_id),
                    name: ident.name.map(str::to_owned),
                    labels: OwnedLabels::of(&ident),
                    expected_since: timestamp(
                        wall.checked_sub(ago).unwrap_or(std::time::UNIX_EPOCH),
                    ),
                    missing_for_ms: ago.as_millis() as u64,
                }
            })
            .collect(),
    };
    (total, hosts)
}

/// `GET /`: the status page, its lists paged as `/silent`'s.
fn status_page(req: &Request<'_>, ctx: &Context<'_>) -> Response {
    let (offset, limit) = match paging(req, PAGE_ROWS) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let names = |slot| ctx.sweeper.ident(slot);
    let silent = ctx
        .silent
        .page(ctx.table, &names, ctx.site.timeout, offset, limit);
    let (_, missing) = missing_hosts(ctx, offset, limit);
    let groups = ctx
        .fleet
        .classes()
        .iter()
        .zip(ctx.roll.by_class())
        .skip(1)
        .map(|(policy, count)| GroupRow {
            group: &policy.group,
            hosts: count.hosts,
            alive: count.hosts.saturating_sub(count.silent),
            silent: count.silent,
            missing: count.missing,
        })
        .collect();
    let inventory = ctx.fleet.inventory().is_some();
    let status = page::Status {
        ingest: ctx.site.ingest,
        timeout: ctx.site.timeout,
        sweep: ctx.site.sweep,
        summary: ctx.summary,
        inventory,
        missing: ctx.roll.missing_count(),
        unknown: ctx.roll.unlisted(),
        ignored: ctx.roll.ignored(),
        table_used: ctx.table_used,
        table_capacity: ctx.table.capacity(),
        last_sweep: ctx.sweeper.recent().last_sweep(),
        groups,
        silent: &silent,
        missing_hosts: &missing,
        recent: ctx.sweeper.recent(),
        offset,
        limit,
        now: std::time::SystemTime::now(),
    };
    Response::new(200, "text/html; charset=utf-8", page::render(&status))
}

fn silent(req: &Request<'_>, ctx: &Context<'_>) -> Response {
    let (offset, limit) = match paging(req, SILENT_PAGE) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let names = |slot| ctx.sweeper.ident(slot);
    let page = ctx
        .silent
        .page(ctx.table, &names, ctx.site.timeout, offset, limit);
    Response::new(
        200,
        "application/json",
        serde_json::to_vec(&page).expect("plain structs serialize"),
    )
}

#[cfg(test)]
mod tests {
    use std::{
        cell::Cell,
        sync::atomic::AtomicU32,
        time::{Duration, UNIX_EPOCH},
    };

    use anyhow::Result;
    use hb_common::{HostKey, timing::tick};

    use super::*;
    use crate::track::{
        events::{Format, Host},
        table::Counts,
    };

    const S: u64 = 1_000_000_000;

    /// Hosts 10.0.x.y, slot i last seen at i ms; counts the addresses read.
    struct Counting {
        seen: Vec<AtomicU32>,
        reads: Cell<usize>,
    }

    impl Table for Counting {
        fn epoch_ns(&self) -> u64 {
            0
        }
        fn last_seen(&self) -> &[AtomicU32] {
            &self.seen
        }
        fn host(&self, slot: u32) -> Host {
            self.reads.set(self.reads.get() + 1);
            let [_, _, a, b] = slot.to_be_bytes();
            Host::addr(&HostKey::from_ipv4([10, 0, a, b]))
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

    fn get(site: &Site, target: &str, sweeper: &Sweeper, table: &dyn Table) -> Response {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let req = Request {
            method: "GET",
            path,
            query,
        };
        site.handle(&req, sweeper, table)
    }

    #[test]
    fn a_page_reads_the_table_only_for_the_hosts_it_shows() {
        let n = 10_000u64;
        // Slot i last seen at 1 s + i ms: slot 0 is the longest silent.
        let table = Counting {
            seen: (0..n)
                .map(|i| AtomicU32::new(tick(S + i * 1_000_000, 0)))
                .collect(),
            reads: Cell::new(0),
        };
        let mut sweeper = Sweeper::new(15 * S, Format::Json);
        sweeper
            .sweep_at(&table, 100 * S, UNIX_EPOCH + Duration::from_secs(1000))
            .unwrap();
        assert_eq!(sweeper.summary().silent, n);
        let site = Site {
            ingest: "xdp",
            timeout: Duration::from_secs(15),
            sweep: Duration::from_secs(1),
            silent_series: 10,
            alerts: None,
            on_event: None,
        };

        table.reads.set(0);
        let page = get(&site, "/silent?limit=100&offset=5000", &sweeper, &table);
        assert_eq!(page.status, 200);
        assert_eq!(table.reads.get(), 100, "addresses read for a page of 100");
        let page: serde_json::Value = serde_json::from_slice(&page.body).unwrap();
        assert_eq!(page["total"], n);
        let hosts = page["hosts"].as_array().unwrap();
        assert_eq!(hosts.len(), 100);
        // Slot 5000 is 10.0.19.136.
        assert_eq!(hosts[0]["host"], "10.0.19.136");

        table.reads.set(0);
        let metrics = get(&site, "/metrics", &sweeper, &table);
        assert_eq!(metrics.status, 200);
        assert_eq!(table.reads.get(), 10, "addresses read for 10 series");
        let body = String::from_utf8(metrics.body).unwrap();
        assert!(
            body.contains("hb_host_silent_seconds{host=\"10.0.0.0\"}"),
            "{body}"
        );
        assert!(body.contains(&format!("hb_table_used {n}\n")), "{body}");
        assert!(body.contains("hb_sweep_period_seconds 1\n"), "{body}");
    }

    #[test]
    fn the_status_page_reads_the_table_only_for_the_hosts_it_shows() {
        let n = 10_000u64;
        let table = Counting {
            seen: (0..n)
                .map(|i| AtomicU32::new(tick(S + i * 1_000_000, 0)))
                .collect(),
            reads: Cell::new(0),
        };
        let mut sweeper = Sweeper::new(15 * S, Format::Json);
        sweeper
            .sweep_at(&table, 100 * S, UNIX_EPOCH + Duration::from_secs(1000))
            .unwrap();
        let site = Site {
            ingest: "xdp",
            timeout: Duration::from_secs(15),
            sweep: Duration::from_secs(1),
            silent_series: 0,
            alerts: None,
            on_event: None,
        };
        table.reads.set(0);
        let page = get(&site, "/?limit=20&offset=5000", &sweeper, &table);
        assert_eq!(page.status, 200);
        assert_eq!(
            table.reads.get(),
            20,
            "addresses read for a page of 20 silent hosts"
        );
        let html = String::from_utf8(page.body).unwrap();
        // Slot 5000 (10.0.19.136) first, slot 5019 (10.0.19.155) last.
        assert!(html.contains("<td>10.0.19.136</td>"), "{html}");
        assert!(html.contains("<td>10.0.19.155</td>"), "{html}");
        assert!(!html.contains("<td>10.0.19.156</td>"), "{html}");
        assert!(html.contains("Silent hosts (5001–5020 of 10000)"), "{html}");
        assert!(html.contains("id=\"silent\">10000<"), "{html}");
        // The sweep's first sight of 10000 hosts: the last 50 are kept.
        assert!(html.contains("Recent events (50, newest first)"), "{html}");
        assert_eq!(get(&site, "/?limit=10001", &sweeper, &table).status, 400);
    }
}
