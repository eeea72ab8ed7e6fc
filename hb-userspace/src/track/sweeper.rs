//! One sweep: read the table, update host states, write events and a summary.

use std::time::{Instant, SystemTime};

use anyhow::Result;
use hb_common::Counter;
use log::warn;

use crate::clock::monotonic_ns;

use super::{
    events::{Event, Format, Summary, format_event, timestamp},
    silent::SilentOrder,
    table::Table,
    tracker::{Tracker, Transition},
};

/// Host events reported since the start.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventTotals {
    pub new: u64,
    pub silent: u64,
    pub recovered: u64,
}

pub struct Sweeper {
    events: EventTotals,
    tracker: Tracker,
    /// The tracker's silent hosts, longest silent first.
    silent: SilentOrder,
    /// Slots of the table in use at the last sweep.
    table_used: usize,
    format: Format,
    /// The last sweep's event lines and summary.
    out: Vec<u8>,
    last_packets: [u64; Counter::COUNT],
    summary: Summary,
}

impl Sweeper {
    pub fn new(timeout_ns: u64, format: Format) -> Self {
        Self::with_tracker(Tracker::new(timeout_ns), format)
    }

    pub fn with_tracker(tracker: Tracker, format: Format) -> Self {
        Self {
            events: EventTotals::default(),
            silent: SilentOrder::of(&tracker),
            table_used: 0,
            tracker,
            format,
            out: Vec::new(),
            last_packets: [0; Counter::COUNT],
            summary: Summary::default(),
        }
    }

    /// The lines the last sweep reported, each ending in a newline.
    pub fn lines(&self) -> &[u8] {
        &self.out
    }

    /// Host events reported since the start.
    pub fn totals(&self) -> &EventTotals {
        &self.events
    }

    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// The silent hosts of the last sweep, longest silent first.
    pub fn silent(&self) -> &SilentOrder {
        &self.silent
    }

    /// Slots of the table in use at the last sweep.
    pub fn table_used(&self) -> usize {
        self.table_used
    }

    /// What the last sweep found.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    pub fn sweep(&mut self, table: &dyn Table) -> Result<()> {
        self.sweep_at(table, monotonic_ns(), SystemTime::now())
    }

    /// A sweep at monotonic time `now` (every decision) and wall time `wall`
    /// (timestamps only).
    pub fn sweep_at(&mut self, table: &dyn Table, now: u64, wall: SystemTime) -> Result<()> {
        let started = Instant::now();
        self.out.clear();
        let Self {
            tracker,
            silent,
            format,
            out,
            events,
            ..
        } = self;
        let ts = timestamp(wall);
        let last_seen = table.last_seen();
        tracker.sweep(last_seen, now, |t| {
            match t {
                Transition::New { .. } => events.new += 1,
                Transition::Silent {
                    host,
                    silent_for_ns,
                } => {
                    events.silent += 1;
                    // silent_for_ns is `now` less its last-seen time.
                    silent.went_silent(host, now - silent_for_ns);
                }
                Transition::Recovered { host, .. } => {
                    events.recovered += 1;
                    silent.recovered(host);
                }
            }
            let t = t.with_host(table.host(*t.host()));
            push_line(out, &format_event(*format, &ts, &Event::Host(t)));
        });
        silent.settle(tracker);
        // The slots this sweep read: those in use when it began.
        self.table_used = last_seen.len();

        let packets = table.counters()?;
        let delta = |c: Counter| packets[c as usize].saturating_sub(self.last_packets[c as usize]);
        let table_full = delta(Counter::TableFull);
        if table_full > 0 {
            warn!(
                "host table full: {table_full} heartbeats from new hosts were not recorded since the last sweep; raise --max-hosts"
            );
        }
        let census = self.tracker.census();
        self.summary = Summary {
            hosts: census.hosts,
            alive: census.alive,
            silent: census.silent,
            heartbeats: delta(Counter::Heartbeat),
            lost: delta(Counter::Lost),
            packets,
            sweep: started.elapsed(),
        };
        self.last_packets = packets;
        let line = format_event(self.format, &ts, &Event::Summary(&self.summary));
        push_line(&mut self.out, &line);
        Ok(())
    }
}

fn push_line(out: &mut Vec<u8>, line: &str) {
    out.extend_from_slice(line.as_bytes());
    out.push(b'\n');
}
