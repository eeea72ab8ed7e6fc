//! One sweep: read the table, update host states, write events and a summary.

use std::{
    collections::VecDeque,
    time::{Instant, SystemTime},
};

use anyhow::Result;
use hb_common::Counter;
use log::warn;

use crate::clock::monotonic_ns;

use super::{
    events::{Event, Format, Summary, format_event, timestamp},
    silent::SilentOrder,
    table::Table,
    tracker::{Told, Tracker, Transition},
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
    /// Bytes of every line reported so far (the sweeps' `lines`, one after
    /// the other).
    reported: u64,
    /// Lines not yet known to be written, where the tracker keeps what the
    /// output was told: where each ends in those bytes, and what it told.
    untold: VecDeque<(u64, Told)>,
    fleet: super::fleet::Fleet,
    /// The last sweep's transitions, by slot.
    transitions: Vec<Transition<u32>>,
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
            reported: 0,
            untold: VecDeque::new(),
            fleet: Default::default(),
            transitions: Vec::new(),
        }
    }

    /// The lines the last sweep reported, each ending in a newline. Hand
    /// every sweep's lines to the output, in order, and say how far the
    /// output got with `written`.
    pub fn lines(&self) -> &[u8] {
        &self.out
    }

    /// The output has written the first `bytes` bytes of all the lines
    /// reported: what the lines written whole told is recorded with the
    /// tracker (a restarted collector does not report it again; what was
    /// not written, it reports).
    pub fn written(&mut self, bytes: u64) {
        while let Some(&(end, told)) = self.untold.front()
            && end <= bytes
        {
            self.tracker.told(told);
            self.untold.pop_front();
        }
    }

    /// Adopts the fleet (inventory, names, group timeouts) for the sweeps
    /// from now on; at start and at every reload.
    // SKELETON: the inventory work makes the sweep use it.
    pub fn set_fleet(&mut self, fleet: super::fleet::Fleet) {
        self.fleet = fleet;
    }

    pub fn fleet(&self) -> &super::fleet::Fleet {
        &self.fleet
    }

    /// Host events reported since the start.
    pub fn totals(&self) -> &EventTotals {
        &self.events
    }

    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    #[cfg(test)]
    fn into_tracker(self) -> Tracker {
        self.tracker
    }

    /// The silent hosts of the last sweep, longest silent first.
    pub fn silent(&self) -> &SilentOrder {
        &self.silent
    }

    /// The last sweep's transitions, hosts by slot (alerts follow them).
    pub fn last_transitions(&self) -> &[Transition<u32>] {
        &self.transitions
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
        self.transitions.clear();
        let Self {
            tracker,
            silent,
            format,
            out,
            events,
            reported,
            untold,
            transitions,
            ..
        } = self;
        let ts = timestamp(wall);
        let keep = tracker.keeps_told();
        let last_seen = table.last_seen();
        tracker.sweep(last_seen, now, |t| {
            transitions.push(t);
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
            let told = Told::transition(&t, now);
            let t = t.with_host(table.host(*t.host()));
            push_line(out, &format_event(*format, &ts, &Event::Host(t)));
            if keep {
                untold.push_back((*reported + out.len() as u64, told));
            }
        });
        silent.settle(tracker);
        // The slots this sweep read: those in use when it began.
        self.table_used = last_seen.len();

        let packets = match table.counters() {
            Ok(packets) => packets,
            Err(e) => {
                // The lines so far are still this sweep's.
                self.reported += self.out.len() as u64;
                return Err(e);
            }
        };
        let delta = |c: Counter| packets[c as usize].saturating_sub(self.last_packets[c as usize]);
        let table_full = delta(Counter::TableFull);
        if table_full > 0 {
            warn!(
                "host table full: {table_full} heartbeats from new hosts were not recorded since the last sweep; raise --max-hosts (for bare PyHB hosts, --max-bare-hosts)"
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
        self.reported += self.out.len() as u64;
        if keep {
            self.untold.push_back((self.reported, Told::swept(now)));
        }
        Ok(())
    }
}

fn push_line(out: &mut Vec<u8>, line: &str) {
    out.extend_from_slice(line.as_bytes());
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use std::{sync::atomic::AtomicU64, time::UNIX_EPOCH};

    use hb_common::HostKey;

    use super::*;
    use crate::track::{
        events::Host,
        table::Counts,
        tracker::{Words, state_words},
    };

    const S: u64 = 1_000_000_000;
    const SLOTS: usize = 8;

    struct Fake(Vec<AtomicU64>);

    impl Table for Fake {
        fn last_seen(&self) -> &[AtomicU64] {
            &self.0
        }
        fn host(&self, slot: u32) -> Host {
            Host::addr(&HostKey::from_ipv4([198, 18, 0, slot as u8]))
        }
        fn len(&self) -> usize {
            self.0.len()
        }
        fn capacity(&self) -> usize {
            SLOTS
        }
        fn counters(&self) -> Result<Counts> {
            Ok([0; Counter::COUNT])
        }
    }

    fn fake(seen: &[u64]) -> Fake {
        Fake(seen.iter().map(|&t| AtomicU64::new(t)).collect())
    }

    /// Where each line of `out` ends.
    fn ends(out: &[u8]) -> Vec<u64> {
        (0..out.len())
            .filter(|&i| out[i] == b'\n')
            .map(|i| i as u64 + 1)
            .collect()
    }

    /// Two sweeps of a collector whose output took `bytes` of their lines;
    /// then the hosts the next collector reports new.
    fn next_reports_new(bytes: impl FnOnce(&[u64], &[u64]) -> u64) -> Vec<u32> {
        let words = Words::Heap(vec![0; state_words(SLOTS)]);
        let first = fake(&[10 * S, 10 * S, 10 * S]);
        let tracker = Tracker::resume(15 * S, words, SLOTS, first.last_seen());
        let mut sweeper = Sweeper::with_tracker(tracker, Format::Json);
        sweeper.sweep_at(&first, 10 * S, UNIX_EPOCH).unwrap();
        let one = ends(sweeper.lines());
        let second = fake(&[11 * S, 11 * S, 11 * S, 11 * S]);
        sweeper.sweep_at(&second, 11 * S, UNIX_EPOCH).unwrap();
        let base = *one.last().unwrap();
        let two: Vec<u64> = ends(sweeper.lines()).iter().map(|e| base + e).collect();
        assert_eq!(
            (one.len(), two.len()),
            (4, 2),
            "3 new and a summary, 1 new and a summary"
        );
        // Said in steps, as write completions do.
        let bytes = bytes(&one, &two);
        sweeper.written(bytes / 2);
        sweeper.written(bytes);
        let words = sweeper.into_tracker().into_words().unwrap();
        let mut next = Tracker::resume(15 * S, words, SLOTS, second.last_seen());
        let mut new = Vec::new();
        next.sweep(second.last_seen(), 12 * S, |t| {
            if let Transition::New { host, .. } = t {
                new.push(host)
            }
        });
        new
    }

    #[test]
    fn only_lines_written_whole_are_told() {
        assert_eq!(next_reports_new(|_, _| 0), [0, 1, 2, 3]);
        assert_eq!(next_reports_new(|one, _| one[0] - 1), [0, 1, 2, 3]);
        assert_eq!(next_reports_new(|one, _| one[0]), [1, 2, 3]);
        assert_eq!(next_reports_new(|one, _| one[2] + 5), [3]);
        assert_eq!(next_reports_new(|_, two| two[0] - 1), [3]);
        assert!(next_reports_new(|_, two| two[0]).is_empty());
        assert!(next_reports_new(|_, two| two[1]).is_empty());
    }

    #[test]
    fn a_tracker_that_keeps_nothing_queues_nothing() {
        let table = fake(&[10 * S; 3]);
        let mut sweeper = Sweeper::new(15 * S, Format::Text);
        sweeper.sweep_at(&table, 10 * S, UNIX_EPOCH).unwrap();
        assert_eq!(ends(sweeper.lines()).len(), 4);
        assert!(sweeper.untold.is_empty());
    }
}
