//! What the HTTP endpoint serves: `GET /metrics` (Prometheus text
//! exposition) and `GET /silent` (silent hosts as JSON, paged). Rendered from
//! the last sweep's state: a scrape never reads the table itself.

use std::{fmt::Write as _, time::Duration};

use hb_common::Counter;

use super::server::{Request, Response, query_param};
use crate::{
    clock::monotonic_ns,
    track::{
        events::{Summary, host_id},
        silent::{longest_silent, silent_page},
        sweeper::{EventTotals, Sweeper},
        table::Table,
        tracker::Tracker,
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
    /// Per-host series for at most this many silent hosts (0: none).
    pub silent_series: usize,
}

impl Site {
    /// Answers `req` from the last sweep's state and the table.
    pub fn handle(&self, req: &Request<'_>, sweeper: &Sweeper, table: &dyn Table) -> Response {
        let ctx = Context {
            summary: sweeper.summary(),
            events: sweeper.totals(),
            tracker: sweeper.tracker(),
            table,
            site: self,
        };
        handle(req, &ctx)
    }
}

struct Context<'a> {
    summary: &'a Summary,
    events: &'a EventTotals,
    tracker: &'a Tracker,
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
        "/" => Response::new(
            200,
            "text/plain; charset=utf-8",
            "hb: GET /metrics, GET /silent?limit=N&offset=M\n",
        ),
        _ => Response::error(404, "not found: try /metrics or /silent"),
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
    let _ = writeln!(out, "hb_table_used {}", ctx.table.len());
    metric(
        &mut out,
        "hb_sweep_duration_seconds",
        "gauge",
        "Duration of the last sweep.",
    );
    let _ = writeln!(out, "hb_sweep_duration_seconds {}", s.sweep.as_secs_f64());
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
    ] {
        let _ = writeln!(out, "hb_events_total{{event=\"{event}\"}} {n}");
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
        for (host, last_seen) in longest_silent(ctx.tracker, ctx.table)
            .into_iter()
            .take(ctx.site.silent_series)
        {
            let secs = now.saturating_sub(last_seen) as f64 / 1e9;
            let id = host
                .id
                .map(|id| format!(",host_id=\"{}\"", host_id(id)))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "hb_host_silent_seconds{{host=\"{}\"{id}}} {secs:.3}",
                host.ip
            );
        }
    }
    out
}

fn silent(req: &Request<'_>, ctx: &Context<'_>) -> Response {
    let parse = |name: &str, default: usize| match query_param(req.query, name) {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| format!("{name} must be a non-negative integer")),
    };
    let (offset, limit) = match (parse("offset", 0), parse("limit", SILENT_PAGE)) {
        (Ok(o), Ok(l)) if l <= SILENT_PAGE_MAX => (o, l),
        (Ok(_), Ok(_)) => {
            return Response::error(400, &format!("limit must be at most {SILENT_PAGE_MAX}"));
        }
        (Err(e), _) | (_, Err(e)) => return Response::error(400, &e),
    };
    let page = silent_page(ctx.tracker, ctx.table, ctx.site.timeout, offset, limit);
    Response::new(
        200,
        "application/json",
        serde_json::to_vec(&page).expect("plain structs serialize"),
    )
}
