//! One sweep: read the table, update host states, write events and a summary.

use std::{
    io::Write,
    time::{Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use hb_common::Counter;
use log::warn;

use crate::{
    cli::Format,
    clock::monotonic_ns,
    counters::Packets,
    output::{Event, Summary, format_event, timestamp},
    table::Hosts,
    tracker::{Tracker, Transition},
};

/// Host events reported since the start.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventTotals {
    pub new: u64,
    pub silent: u64,
    pub recovered: u64,
}

pub struct Sweeper<W: Write> {
    pub events: EventTotals,
    pub tracker: Tracker,
    format: Format,
    /// Where event lines go (a buffer that the ring writer drains).
    pub out: W,
    last_packets: [u64; Counter::COUNT],
    pub summary: Summary,
}

impl<W: Write> Sweeper<W> {
    pub fn new(timeout_ns: u64, format: Format, out: W) -> Self {
        Self::with_tracker(Tracker::new(timeout_ns), format, out)
    }

    pub fn with_tracker(tracker: Tracker, format: Format, out: W) -> Self {
        Self {
            events: EventTotals::default(),
            tracker,
            format,
            out,
            last_packets: [0; Counter::COUNT],
            summary: Summary::default(),
        }
    }

    pub fn sweep(&mut self, table: &dyn Hosts, counters: &dyn Packets) -> Result<()> {
        self.sweep_at(table, counters, monotonic_ns(), SystemTime::now())
    }

    /// A sweep at monotonic time `now` (every decision) and wall time `wall`
    /// (timestamps only).
    pub fn sweep_at(
        &mut self,
        table: &dyn Hosts,
        counters: &dyn Packets,
        now: u64,
        wall: SystemTime,
    ) -> Result<()> {
        let started = Instant::now();
        let Self {
            tracker,
            format,
            out,
            events,
            ..
        } = self;
        let mut write_err = None;
        let ts = timestamp(wall);
        tracker.sweep(table.last_seen(), now, |t| {
            match t {
                Transition::New { .. } => events.new += 1,
                Transition::Silent { .. } => events.silent += 1,
                Transition::Recovered { .. } => events.recovered += 1,
            }
            if write_err.is_none() {
                let t = t.with_host(table.host(*t.host()));
                let line = format_event(*format, &ts, &Event::Host(t));
                write_err = writeln!(out, "{line}").err();
            }
        });
        if let Some(e) = write_err {
            return Err(e).context("writing events to stdout");
        }

        let packets = counters.read()?;
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
        writeln!(self.out, "{line}").context("writing the summary to stdout")?;
        self.out.flush().context("flushing stdout")?;
        Ok(())
    }
}
