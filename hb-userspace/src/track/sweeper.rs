//! One sweep: read the table, update host states, write events and a summary.

use std::{
    collections::VecDeque,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;
use hb_common::{Counter, HostKey};
use log::warn;

use crate::clock::monotonic_ns;

use super::{
    adaptive::{self, Timeout},
    events::{Event, FleetCounts, Format, Summary, format_event, timestamp},
    flap::{Flap, Verdict},
    fleet::{
        Fleet, Ident, MUTED,
        kept::{Keeper, Kept},
        roll::{IGNORED, Resolved, Roll, Timed, UNLISTED, lookup},
    },
    recent::Recent,
    silent::SilentOrder,
    table::Table,
    tracker::{Observer, Told, Tracker, Transition, timeout_ns},
};

/// Bytes of the output buffer kept from one sweep to the next: a quiet
/// sweep writes a summary line, a busy one a few hundred events.
const OUT_KEEP: usize = 64 << 10;
/// Transitions kept room for from one sweep to the next (as many bytes).
const TRANSITIONS_KEEP: usize = OUT_KEEP / size_of::<Transition<u32>>();
/// Lines awaiting their write kept room for once all are written.
const UNTOLD_KEEP: usize = OUT_KEEP / size_of::<(u64, Told)>();

/// Host events reported since the start.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventTotals {
    pub new: u64,
    pub silent: u64,
    pub recovered: u64,
    pub missing: u64,
    pub flapping: u64,
    pub flapping_end: u64,
}

/// What a fleet set carries on from the one before (see `Roll::expect`).
#[derive(Default)]
struct Carry {
    waiting: Vec<Timed>,
    missing: Vec<Timed>,
    /// Slots of hosts the new inventory no longer lists: forgotten.
    removed: Vec<u32>,
    /// When the grace of hosts never heard starts: the last collector's
    /// (restored), else the sweep that adopts.
    since: Option<u64>,
}

/// A line about the fleet that the kept state records once written.
#[derive(Debug, Clone, Copy)]
enum FleetTold {
    Missing(HostKey, u64),
    Found(HostKey),
}

/// Forgetting hosts, which frees their slots for new ones (see
/// `Table::forget`): hosts a reload drops from the inventory, and hosts
/// outside it (every host, without one) silent for `forget_after`. A slot
/// is forgotten in the table and the tracker at one sweep, and freed (the
/// told state says it is unknown, the table may hand it out) at a later
/// one, once no line about it is in flight: a heartbeat in flight when it
/// was forgotten cannot land on the next host's slot.
#[derive(Default)]
struct Forgetting {
    /// To forget at the next sweep.
    doomed: Vec<u32>,
    /// Forgotten, to free at the next sweep.
    dying: Vec<u32>,
    /// When to look for hosts silent for `forget_after`.
    next_scan: u64,
    total: u64,
}

/// A fleet a reload set, its hosts being looked up in the table a share of
/// a sweep at a time (`Sweeper::reload_fleet`): a million lookups at once
/// would hold up the sweep that adopts it by more than a sweep period.
struct Pending {
    fleet: Fleet,
    /// Slot -> its host in `fleet`, for the slots looked at so far;
    /// `STALE`: to look up when adopted (unknown then, or forgotten since).
    found: Vec<Resolved>,
}

const STALE: Resolved = Resolved {
    entry: u32::MAX - 2,
    class: 0,
};

/// The default share of a sweep for looking up a reloaded fleet's hosts.
const ADOPT_BUDGET: Duration = Duration::from_millis(50);

/// The longest between two looks for hosts to forget.
const FORGET_SCAN: u64 = 60_000_000_000;

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
    /// A summary line every this many sweeps; 0: none.
    summary_every: u32,
    /// Sweeps until the next summary line (0: this one).
    summary_in: u32,
    /// Heartbeats and lost heartbeats since the last summary line.
    unsummed: (u64, u64),
    fleet: Fleet,
    roll: Roll,
    /// The fleet was set: the next sweep holds the table against it.
    adopt: Option<Carry>,
    forgetting: Forgetting,
    /// The last sweep's reported transitions, by slot (alerts follow them).
    transitions: Vec<Transition<u32>>,
    /// The last events reported, for the status page.
    recent: Recent,
    /// The fleet's state kept for the next collector (see `keep_fleet`),
    /// what it was restored from (until the first fleet is set), and its
    /// lines not yet written.
    keeper: Option<Keeper>,
    restored: Option<Kept>,
    fleet_untold: VecDeque<(u64, FleetTold)>,
    /// A reloaded fleet being looked up; the lookups, once it is set.
    pending: Option<Pending>,
    presolved: Vec<Resolved>,
    adopt_budget: Duration,
    /// Flap damping (off until `set_flap`).
    flap: Flap,
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
            summary_every: 1,
            summary_in: 0,
            unsummed: (0, 0),
            roll: Roll::default(),
            adopt: Some(Carry::default()),
            forgetting: Forgetting::default(),
            transitions: Vec::new(),
            recent: Recent::default(),
            keeper: None,
            restored: None,
            fleet_untold: VecDeque::new(),
            pending: None,
            presolved: Vec::new(),
            adopt_budget: ADOPT_BUDGET,
            flap: Flap::new(0, 0),
        }
    }

    /// Writes the summary line every `sweeps` sweeps (0: never; the
    /// default is every sweep); the first sweep from now on writes one.
    /// `summary()` is every sweep's all the same.
    pub fn set_summary_every(&mut self, sweeps: u32) {
        self.summary_every = sweeps;
        self.summary_in = self.summary_in.min(sweeps.saturating_sub(1));
    }

    /// A new timeout for the sweeps from now on (a reload).
    pub fn set_timeout(&mut self, timeout_ns: u64) {
        self.tracker.set_timeout(timeout_ns);
    }

    /// `--timeout` (fixed or auto) and the bounds of auto timeouts, for the
    /// sweeps from now on (at start and at a reload).
    pub fn set_timeout_policy(&mut self, timeout: Timeout, auto: adaptive::Policy) {
        self.tracker.set_timeout_policy(timeout, auto);
    }

    /// Flap damping thresholds, percent (`high` 0: off).
    pub fn set_flap(&mut self, high: u8, low: u8) {
        self.flap.set(high, low);
    }

    /// Whether the host in `slot` is flapping.
    pub fn is_flapping(&self, slot: u32) -> bool {
        self.flap.is_flapping(slot)
    }

    /// Hosts flapping now.
    pub fn flapping(&self) -> usize {
        self.flap.flapping()
    }

    /// The lines the last sweep reported, each ending in a newline. Hand
    /// every sweep's lines to the output, in order, and say how far the
    /// output got with `written`.
    pub fn lines(&self) -> &[u8] {
        &self.out
    }

    /// The last sweep's lines, for an output that takes them (see
    /// `RingWriter::write_from`) rather than copying them.
    pub fn lines_mut(&mut self) -> &mut Vec<u8> {
        &mut self.out
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
        // A burst's million lines leave room for as many (24 MB): given back
        // once they are all written.
        if self.untold.is_empty() && self.untold.capacity() > UNTOLD_KEEP {
            self.untold.shrink_to(UNTOLD_KEEP);
            crate::io::give_back();
        }
        let Some(keeper) = self.keeper.as_mut() else {
            return;
        };
        while let Some(&(end, told)) = self.fleet_untold.front()
            && end <= bytes
        {
            match told {
                FleetTold::Missing(key, since) => keeper.told_missing(key, since),
                FleetTold::Found(key) => keeper.told_found(&key),
            }
            self.fleet_untold.pop_front();
        }
        if self.fleet_untold.is_empty() && self.fleet_untold.capacity() > UNTOLD_KEEP {
            self.fleet_untold.shrink_to(UNTOLD_KEEP);
            crate::io::give_back();
        }
        keeper.flush();
    }

    /// Keeps what the output is told about the fleet in `path` (hosts
    /// reported missing, when their grace started), and carries on from
    /// what the last collector kept there if the tracker carries on from
    /// it. Call before the first `set_fleet`.
    pub fn keep_fleet(&mut self, path: std::path::PathBuf) {
        let (keeper, kept) = Keeper::open(path, self.tracker.resumed());
        if let Some(k) = &kept {
            log::info!(
                "carrying on from the last collector's fleet state: {} hosts recorded as reported missing (those heard since are not)",
                k.missing.len()
            );
        }
        self.keeper = Some(keeper);
        self.restored = kept;
    }

    /// Adopts the fleet (inventory, names, group timeouts) for the sweeps
    /// from now on; at start and at every reload. The next sweep holds the
    /// table against it: hosts keep their state (alive, silent, missing or
    /// waiting out their grace) with no event; hosts it adds that were
    /// never heard start their grace then.
    pub fn set_fleet(&mut self, fleet: Fleet) {
        let (waiting, missing, since) = match self.restored.take() {
            Some(k) => (k.waiting, k.missing, k.epoch),
            None => {
                let (waiting, missing) = self.roll.carry(&self.fleet);
                (waiting, missing, None)
            }
        };
        let presolved = &self.presolved;
        let removed = match (self.fleet.inventory(), fleet.inventory()) {
            (Some(old), Some(new)) => self
                .roll
                .listed()
                .filter(|&(slot, e)| match presolved.get(slot as usize) {
                    Some(r) if *r != STALE => r.entry >= IGNORED,
                    _ => new.entry(old.key(e)).is_none(),
                })
                .map(|(slot, _)| slot)
                .collect(),
            _ => Vec::new(),
        };
        self.fleet = fleet;
        self.adopt = Some(Carry {
            waiting,
            missing,
            removed,
            since,
        });
    }

    /// A reload's fleet: as `set_fleet`, but its hosts are first looked up
    /// in the table over the next sweeps, at most `set_adopt_budget` of
    /// each, the last fleet staying in force meanwhile; the sweep after
    /// the last lookup adopts it. A newer fleet replaces one being looked
    /// up.
    pub fn reload_fleet(&mut self, fleet: Fleet) {
        self.pending = Some(Pending {
            fleet,
            found: Vec::new(),
        });
    }

    /// How long a sweep may spend looking up a reloaded fleet's hosts.
    pub fn set_adopt_budget(&mut self, budget: Duration) {
        self.adopt_budget = budget;
    }

    /// Looks up the next share of the table's slots in the fleet being
    /// reloaded; sets it once every slot is looked at.
    fn look_up(&mut self, table: &dyn Table) {
        let Some(p) = self.pending.as_mut() else {
            return;
        };
        let deadline = Instant::now() + self.adopt_budget;
        let len = table.len();
        while p.found.len() < len {
            let from = p.found.len();
            for slot in from as u32..(from + 4096).min(len) as u32 {
                p.found.push(if self.tracker.is_known(slot) {
                    lookup(&p.fleet, &table.host(slot).key())
                } else {
                    STALE
                });
            }
            if p.found.len() < len && Instant::now() >= deadline {
                return;
            }
        }
        let p = self.pending.take().expect("looked up");
        self.presolved = p.found;
        self.set_fleet(p.fleet);
    }

    /// Hosts forgotten since the start.
    pub fn forgotten(&self) -> u64 {
        self.forgetting.total
    }

    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// The name and labels of the host in `slot`, if inventoried.
    pub fn ident(&self, slot: u32) -> Option<Ident<'_>> {
        let e = self.roll.entry(slot);
        if e >= IGNORED {
            return None;
        }
        Some(self.fleet.inventory()?.ident(e))
    }

    /// The roll call of the fleet over the table (missing hosts, counts
    /// by group).
    pub fn roll(&self) -> &Roll {
        &self.roll
    }

    /// Whether the fleet asks for more than the defaults: an inventory or
    /// groups.
    fn fleet_active(&self) -> bool {
        self.fleet.inventory().is_some() || self.fleet.classes().len() > 1
    }

    /// Holds the table against a fleet just set (see `set_fleet`).
    fn adopt(&mut self, table: &dyn Table, now: u64, carry: Carry) {
        let active = self.fleet_active();
        self.roll = Roll::new(&self.fleet);
        // Forgotten by a collector that stopped before freeing them (those
        // this one is freeing are found too: `forget` skips them).
        let tracker = &self.tracker;
        self.forgetting
            .doomed
            .extend((0..table.len() as u32).filter(|&s| tracker.is_known(s) && table.forgotten(s)));
        self.forgetting.doomed.extend(carry.removed.iter().copied());
        let presolved = std::mem::take(&mut self.presolved);
        if !active {
            self.tracker.set_timeouts(Vec::new());
            if let Some(keeper) = self.keeper.as_mut() {
                keeper.adopted(None, Vec::new(), |_| false);
            }
            return;
        }
        let default = self.tracker.timeout_ns();
        let mut timeouts = vec![default; 256];
        for (c, policy) in self.fleet.classes().iter().enumerate() {
            timeouts[c] = policy.timeout.map_or(default, timeout_ns);
        }
        timeouts[MUTED as usize] = u64::MAX;
        self.tracker.set_timeouts(timeouts);
        let keep = self.tracker.keeps_told();
        for slot in 0..table.len() as u32 {
            if !self.tracker.is_known(slot) {
                continue;
            }
            let r = match presolved.get(slot as usize) {
                Some(&r) if r != STALE => self.roll.record(&self.fleet, slot, r),
                _ => self
                    .roll
                    .resolve(&self.fleet, slot, &table.host(slot).key()),
            };
            self.tracker.set_class(slot, r.class);
            if !self.tracker.is_silent(slot) {
                continue;
            }
            if r.class == MUTED {
                self.flap.forget(slot);
                self.silent.set_flapping(slot, false);
                // No longer watched: out of the silent hosts, quietly.
                if let Some(told) = self.tracker.unsilence(slot, now) {
                    self.silent.recovered(slot);
                    if keep {
                        self.untold
                            .push_back((self.reported + self.out.len() as u64, told));
                    }
                }
            } else if r.entry != UNLISTED {
                self.roll.silent_changed(r.class, true);
            }
        }
        let since = carry.since.unwrap_or(now);
        self.roll
            .expect(&self.fleet, since, &carry.waiting, &carry.missing);
        if let Some(keeper) = self.keeper.as_mut() {
            let inv = self.fleet.inventory();
            // The first fleet's grace start stays the epoch across reloads.
            let epoch = inv.map(|_| keeper.epoch().unwrap_or(since));
            let (waiting, _) = self.roll.carry(&self.fleet);
            let waiting = waiting
                .into_iter()
                .filter(|&(_, at)| Some(at) != epoch)
                .collect();
            // Kept: listed hosts. Carrying on from the last collector, not
            // those heard either: the tracker's state is then what was
            // told, so a heard host's first heartbeat was (`recovered`, if
            // it was missing). Later, a heard host's line may be in flight.
            let roll = &self.roll;
            let restored = carry.since.is_some();
            keeper.adopted(epoch, waiting, |k| {
                inv.and_then(|inv| inv.entry(k))
                    .is_some_and(|e| !(restored && roll.is_heard(e)))
            });
        }
    }

    /// One sweep's forgetting (see `Forgetting`): frees the slots
    /// forgotten at an earlier sweep, forgets those doomed since.
    fn forget(&mut self, table: &dyn Table, now: u64) {
        let f = &mut self.forgetting;
        if !f.dying.is_empty() && self.untold.is_empty() {
            for slot in f.dying.drain(..) {
                table.release(slot);
                self.tracker.free(slot);
                if let Err(e) = table.reuse(slot) {
                    warn!("slot {slot} of a forgotten host not freed: {e:#}");
                }
            }
        }
        if now >= f.next_scan {
            let after = self.fleet.config.forget_after.as_nanos() as u64;
            f.next_scan = now + (after / 4).clamp(1, FORGET_SCAN);
            let roll = &self.roll;
            let (tick, after) = (
                hb_common::timing::tick(now, table.epoch_ns()),
                hb_common::timing::ticks_floor(after),
            );
            for (slot, t) in table.last_seen().iter().enumerate() {
                let seen = t.load(std::sync::atomic::Ordering::Relaxed);
                if seen != 0
                    && hb_common::timing::age(tick, seen) > after
                    && roll.entry(slot as u32) >= IGNORED
                    && self.tracker.is_known(slot as u32)
                {
                    f.doomed.push(slot as u32);
                }
            }
        }
        if f.doomed.is_empty() {
            return;
        }
        let mut doomed = std::mem::take(&mut f.doomed);
        doomed.sort_unstable();
        doomed.dedup();
        let dying: hashbrown::HashSet<u32> = f.dying.iter().copied().collect();
        let before = f.total;
        for slot in doomed {
            if dying.contains(&slot) || !self.tracker.is_known(slot) {
                continue;
            }
            match table.forget(slot) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    warn!("forgetting the host in slot {slot}: {e:#}");
                    continue;
                }
            }
            let was_silent = self.tracker.is_silent(slot);
            if was_silent {
                self.silent.recovered(slot);
            }
            self.flap.forget(slot);
            self.silent.set_flapping(slot, false);
            self.tracker.forgetting(slot);
            self.roll.forget(&self.fleet, slot, was_silent);
            // Its key is gone: a lookup made before is void.
            if let Some(r) = self
                .pending
                .as_mut()
                .and_then(|p| p.found.get_mut(slot as usize))
            {
                *r = STALE;
            }
            let f = &mut self.forgetting;
            f.dying.push(slot);
            f.total += 1;
        }
        let n = self.forgetting.total - before;
        if n > 0 {
            log::info!(
                "forgot {n} hosts (dropped from the inventory, or silent for --forget-after): their slots are freed"
            );
        }
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

    /// The last events reported, with the time of the last sweep.
    pub fn recent(&self) -> &Recent {
        &self.recent
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
        // A sweep that reported a million new hosts leaves a buffer of
        // 100 MB: not kept for the quiet sweeps that follow.
        if self.out.capacity() > OUT_KEEP {
            self.out.shrink_to(OUT_KEEP);
            crate::io::give_back();
        }
        if self.pending.is_some() {
            self.look_up(table);
        }
        if let Some(carry) = self.adopt.take() {
            self.adopt(table, now, carry);
        }
        self.forget(table, now);
        self.transitions.clear();
        // As the output buffer: a million new hosts leave 16 MB.
        if self.transitions.capacity() > TRANSITIONS_KEEP {
            self.transitions.shrink_to(TRANSITIONS_KEEP);
            crate::io::give_back();
        }
        let Self {
            tracker,
            silent,
            format,
            out,
            events,
            reported,
            untold,
            transitions,
            recent,
            fleet_untold,
            flap,
            ..
        } = self;
        recent.sweep_at(wall);
        let ts = timestamp(wall);
        let keep_fleet = self.keeper.is_some();
        let keep = tracker.keeps_told();
        let last_seen = table.last_seen();
        let active = self.fleet.inventory().is_some() || self.fleet.classes().len() > 1;
        let mut obs = Obs {
            fleet: &self.fleet,
            roll: &mut self.roll,
            active,
            table,
            silent,
            events,
            out,
            untold,
            transitions,
            recent,
            fleet_untold,
            keep_fleet,
            reported: *reported,
            keep,
            format: *format,
            ts: &ts,
            now,
            flap,
            hold: None,
        };
        tracker.set_epoch(table.epoch_ns());
        tracker.sweep_timed(last_seen, &|slot| table.timing(slot), now, &mut obs);
        obs.flap_ends();
        let Obs {
            roll,
            out,
            events,
            fleet,
            recent,
            fleet_untold,
            reported,
            ..
        } = obs;
        if let Some(inv) = fleet.inventory() {
            roll.check_grace(fleet, now, |e, since| {
                events.missing += 1;
                let event = Event::Missing {
                    host: inv.key(e),
                    ident: inv.ident(e),
                    for_ns: now.saturating_sub(since),
                };
                recent.missing(inv.key(e), inv.ident(e).name, now.saturating_sub(since));
                push_line(out, &format_event(*format, &ts, &event));
                if keep_fleet {
                    let end = reported + out.len() as u64;
                    fleet_untold.push_back((end, FleetTold::Missing(*inv.key(e), since)));
                }
            });
        }
        silent.settle(tracker);
        // After a mass outage recovered, its hosts' room is not kept.
        if tracker.release_spare() | silent.release_spare() {
            crate::io::give_back();
        }
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
        // Hosts not tracked are not counted as hosts.
        let ignored = self.roll.ignored();
        self.summary = Summary {
            hosts: census.hosts.saturating_sub(ignored),
            alive: census.alive.saturating_sub(ignored),
            silent: census.silent,
            fleet: self.fleet.inventory().map(|_| FleetCounts {
                missing: self.roll.missing_count(),
                unknown_hosts: self.roll.unlisted(),
            }),
            heartbeats: delta(Counter::Heartbeat),
            lost: delta(Counter::Lost),
            packets,
            sweep: started.elapsed(),
        };
        self.last_packets = packets;
        self.unsummed.0 += self.summary.heartbeats;
        self.unsummed.1 += self.summary.lost;
        if self.summary_every > 0 {
            if self.summary_in == 0 {
                // The line counts heartbeats since the last line, not
                // since the last sweep.
                let (heartbeats, lost) = std::mem::take(&mut self.unsummed);
                let summed = Summary {
                    heartbeats,
                    lost,
                    ..self.summary.clone()
                };
                let line = format_event(self.format, &ts, &Event::Summary(&summed));
                push_line(&mut self.out, &line);
                self.summary_in = self.summary_every - 1;
            } else {
                self.summary_in -= 1;
            }
        }
        self.reported += self.out.len() as u64;
        // The sweep is told once its last line is written, summary or not
        // (a sweep without lines: at once). A restarted collector takes a
        // silent host that beat after it to have recovered meanwhile.
        if keep {
            self.untold.push_back((self.reported, Told::swept(now)));
        }
        Ok(())
    }
}

/// A sweep's observer: resolves hosts first heard against the fleet, and
/// writes the lines of the transitions the output is to see (an
/// inventoried host's first heartbeat is expected: no line, unless it was
/// reported missing; an ignored host has none). Every transition is told
/// to the tracker in turn with the lines, written or not.
struct Obs<'a> {
    fleet: &'a Fleet,
    roll: &'a mut Roll,
    active: bool,
    table: &'a dyn Table,
    silent: &'a mut SilentOrder,
    events: &'a mut EventTotals,
    out: &'a mut Vec<u8>,
    untold: &'a mut VecDeque<(u64, Told)>,
    transitions: &'a mut Vec<Transition<u32>>,
    recent: &'a mut Recent,
    fleet_untold: &'a mut VecDeque<(u64, FleetTold)>,
    keep_fleet: bool,
    reported: u64,
    keep: bool,
    format: Format,
    ts: &'a str,
    now: u64,
    flap: &'a mut Flap,
    /// The transition being emitted is held back (flap damping).
    hold: Option<Verdict>,
}

impl Obs<'_> {
    /// The host in `slot` for a line: its address, and what it learned.
    fn host(&self, slot: u32) -> super::events::Host {
        let mut host = self.table.host(slot);
        host.timing = self.table.timing(slot);
        host
    }

    /// The end of the sweep's flapping: `flapping_end` lines, and the
    /// state of a host whose last reported one it no longer is.
    fn flap_ends(&mut self) {
        for end in self.flap.settle(self.now) {
            let slot = end.slot;
            self.silent.set_flapping(slot, false);
            let entry = if self.active {
                self.roll.entry(slot)
            } else {
                UNLISTED
            };
            if entry == IGNORED {
                continue;
            }
            let ident = self
                .fleet
                .inventory()
                .filter(|_| entry < IGNORED)
                .map(|inv| inv.ident(entry));
            let host = self.host(slot);
            self.events.flapping_end += 1;
            let event = Event::Flapping {
                host,
                ident,
                share: end.share,
                end: true,
            };
            push_line(self.out, &format_event(self.format, self.ts, &event));
            if let Some(t) = end.state {
                self.report(t, ident);
            }
        }
    }

    /// Writes the line of `t`, held back while its host flapped.
    fn report(&mut self, t: Transition<u32>, ident: Option<Ident<'_>>) {
        match t {
            Transition::Silent { .. } => self.events.silent += 1,
            Transition::Recovered { .. } => self.events.recovered += 1,
            Transition::New { .. } => {}
        }
        self.report_line(t, ident);
    }

    /// Writes `t`'s line; alerts and the status page follow it.
    fn report_line(&mut self, t: Transition<u32>, ident: Option<Ident<'_>>) {
        self.transitions.push(t);
        let host = self.host(*t.host());
        self.recent
            .transition(&t, &host, ident.and_then(|i| i.name));
        let event = Event::Host(t.with_host(host), ident);
        push_line(self.out, &format_event(self.format, self.ts, &event));
    }
}

impl Observer for &mut Obs<'_> {
    fn emit_timed(&mut self, t: Transition<u32>, timeout_ns: u64) {
        let slot = *t.host();
        let watched = !self.active || self.roll.entry(slot) != IGNORED;
        if watched && (self.flap.enabled() || self.flap.tracked() > 0) {
            match self.flap.transition(t, self.now, timeout_ns) {
                Verdict::Report => {}
                verdict => self.hold = Some(verdict),
            }
        }
        self.emit(t)
    }

    fn classify(&mut self, slot: u32) -> u8 {
        if !self.active {
            return 0;
        }
        let key = self.table.host(slot).key();
        self.roll.resolve(self.fleet, slot, &key).class
    }

    fn emit(&mut self, t: Transition<u32>) {
        let now = self.now;
        let told = Told::transition(&t, now);
        let slot = *t.host();
        let entry = if self.active {
            self.roll.entry(slot)
        } else {
            UNLISTED
        };
        let inv = self.fleet.inventory().filter(|_| entry < IGNORED);
        let class = inv.map_or(0, |inv| inv.class(entry));
        let mut found = None;
        let line = match t {
            Transition::New { .. } => match inv {
                // Expected: a line only if it was reported missing.
                Some(inv) => self.roll.found(entry, class).map(|since| {
                    found = Some(*inv.key(entry));
                    self.events.recovered += 1;
                    Transition::Recovered {
                        host: slot,
                        silent_for_ns: now.saturating_sub(since),
                    }
                }),
                None if entry == IGNORED => None,
                None => {
                    self.events.new += 1;
                    Some(t)
                }
            },
            Transition::Silent {
                host,
                silent_for_ns,
            } => {
                // silent_for_ns is `now` less its last-seen time.
                self.silent.went_silent(host, now - silent_for_ns);
                if inv.is_some() {
                    self.roll.silent_changed(class, true);
                }
                self.events.silent += u64::from(entry != IGNORED && self.hold.is_none());
                (entry != IGNORED).then_some(t)
            }
            Transition::Recovered { host, .. } => {
                self.silent.recovered(host);
                if inv.is_some() {
                    self.roll.silent_changed(class, false);
                }
                self.events.recovered += u64::from(entry != IGNORED && self.hold.is_none());
                (entry != IGNORED).then_some(t)
            }
        };
        let ident = inv.map(|inv| inv.ident(entry));
        match (line, self.hold.take()) {
            (Some(line), None) => self.report_line(line, ident),
            (Some(_), Some(Verdict::Start(share))) => {
                // Reported instead of the transition that tipped it over.
                self.events.flapping += 1;
                self.silent.set_flapping(slot, true);
                let event = Event::Flapping {
                    host: self.host(slot),
                    ident,
                    share,
                    end: false,
                };
                push_line(self.out, &format_event(self.format, self.ts, &event));
            }
            _ => {}
        }
        if let Some(key) = found
            && self.keep_fleet
        {
            let end = self.reported + self.out.len() as u64;
            self.fleet_untold.push_back((end, FleetTold::Found(key)));
        }
        if self.keep {
            self.untold
                .push_back((self.reported + self.out.len() as u64, told));
        }
    }
}

fn push_line(out: &mut Vec<u8>, line: &str) {
    out.extend_from_slice(line.as_bytes());
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use std::{sync::atomic::AtomicU32, time::UNIX_EPOCH};

    use hb_common::{TICK_NS, timing::tick};

    use hb_common::HostKey;

    use super::*;
    use crate::track::{
        events::Host,
        table::Counts,
        tracker::{Words, state_words},
    };

    /// A second, near enough: whole ticks, so that times in seconds are
    /// exact in the table's ticks.
    const S: u64 = 1024 * TICK_NS;

    /// A stamp at `ns` (epoch 0).
    fn stamp_at(ns: u64) -> AtomicU32 {
        AtomicU32::new(if ns == 0 { 0 } else { tick(ns, 0) })
    }
    const SLOTS: usize = 8;

    struct Fake(Vec<AtomicU32>);

    impl Table for Fake {
        fn epoch_ns(&self) -> u64 {
            0
        }
        fn last_seen(&self) -> &[AtomicU32] {
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
        Fake(seen.iter().map(|&t| stamp_at(t)).collect())
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
        let tracker = Tracker::resume(15 * S, words, SLOTS, first.last_seen(), 0);
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
        let mut next = Tracker::resume(15 * S, words, SLOTS, second.last_seen(), 0);
        let mut new = Vec::new();
        next.sweep(second.last_seen(), 12 * S, |t| {
            if let Transition::New { host, .. } = t {
                new.push(host)
            }
        });
        new
    }

    #[test]
    fn a_burst_of_new_hosts_leaves_no_big_buffers_behind() {
        struct Wide(Vec<AtomicU32>);
        impl Table for Wide {
            fn epoch_ns(&self) -> u64 {
                0
            }
            fn last_seen(&self) -> &[AtomicU32] {
                &self.0
            }
            fn host(&self, slot: u32) -> Host {
                Host::addr(&HostKey::from_ipv4(slot.to_be_bytes()))
            }
            fn len(&self) -> usize {
                self.0.len()
            }
            fn capacity(&self) -> usize {
                self.0.len()
            }
            fn counters(&self) -> Result<Counts> {
                Ok([0; Counter::COUNT])
            }
        }
        let n = 200_000;
        let table = Wide((0..n).map(|_| stamp_at(10 * S)).collect());
        // Keeping what the output was told, as `hb run` does: the lines
        // await their write in `untold`.
        let words = Words::Heap(vec![0; state_words(n)]);
        let tracker = Tracker::resume(15 * S, words, n, table.last_seen(), 0);
        let mut sweeper = Sweeper::with_tracker(tracker, Format::Json);
        sweeper.sweep_at(&table, 10 * S, UNIX_EPOCH).unwrap();
        // The burst: every host new, lines and transitions past what is kept.
        assert_eq!(sweeper.last_transitions().len(), n);
        assert!(sweeper.lines().len() > OUT_KEEP);
        assert!(n > TRANSITIONS_KEEP && sweeper.untold.len() > UNTOLD_KEEP);
        // Written in two steps, as write completions come.
        let bytes = sweeper.lines().len() as u64;
        sweeper.written(bytes / 2);
        sweeper.written(bytes);
        assert!(
            sweeper.untold.capacity() <= UNTOLD_KEEP,
            "room for {} lines awaiting their write kept once all were written",
            sweeper.untold.capacity()
        );
        // The next, quiet sweep gives the rest back.
        sweeper.sweep_at(&table, 11 * S, UNIX_EPOCH).unwrap();
        assert!(
            sweeper.out.capacity() <= OUT_KEEP,
            "output buffer of {} bytes kept",
            sweeper.out.capacity()
        );
        assert!(
            sweeper.transitions.capacity() <= TRANSITIONS_KEEP,
            "room for {} transitions kept",
            sweeper.transitions.capacity()
        );
        // A mass outage: every host silent, then every host back. What
        // the silent hosts took is given back by the sweep that saw them
        // recover.
        let quiet = sweeper.tracker.heap_bytes() + sweeper.silent.heap_bytes();
        sweeper.sweep_at(&table, 30 * S, UNIX_EPOCH).unwrap();
        assert_eq!(sweeper.summary().silent, n as u64);
        let outage = sweeper.tracker.heap_bytes() + sweeper.silent.heap_bytes();
        assert!(
            outage > quiet + n * 16,
            "{outage} bytes for {n} silent hosts?"
        );
        for t in &table.0 {
            t.store(
                stamp_at(31 * S).into_inner(),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        sweeper.sweep_at(&table, 31 * S, UNIX_EPOCH).unwrap();
        assert_eq!(sweeper.summary().silent, 0);
        let after = sweeper.tracker.heap_bytes() + sweeper.silent.heap_bytes();
        assert!(
            after <= quiet + (256 << 10),
            "{after} bytes kept after {n} silent hosts recovered ({quiet} before the outage, {outage} in it)"
        );
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

    /// Which of `n` sweeps (1-based) wrote a summary line.
    fn summary_sweeps(every: u32, n: u64) -> Vec<u64> {
        let table = fake(&[10 * S]);
        let mut sweeper = Sweeper::new(15 * S, Format::Json);
        sweeper.set_summary_every(every);
        (1..=n)
            .filter(|&i| {
                sweeper.sweep_at(&table, 10 * S + i, UNIX_EPOCH).unwrap();
                String::from_utf8_lossy(sweeper.lines()).contains("\"summary\"")
            })
            .collect()
    }

    /// A fleet from an inventory `csv`, with `grace`, unknown hosts and
    /// groups as given.
    fn fleet(
        csv: &str,
        grace: u64,
        unknown: crate::track::fleet::UnknownHosts,
        groups: &[(&str, u64)],
    ) -> Fleet {
        use crate::track::fleet::{FleetConfig, GroupPolicy};
        use std::sync::atomic::AtomicUsize;
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "hb-sweeper-{}-{}.csv",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::write(&path, csv).unwrap();
        let config = FleetConfig {
            inventory: Some(path.clone()),
            grace: std::time::Duration::from_nanos(grace),
            unknown_hosts: unknown,
            groups: groups
                .iter()
                .map(|&(g, t)| {
                    (
                        g.to_owned(),
                        GroupPolicy {
                            timeout: Some(Timeout::Fixed(std::time::Duration::from_nanos(t))),
                            grace: None,
                        },
                    )
                })
                .collect(),
            ..Default::default()
        };
        let fleet = Fleet::load(&config).unwrap();
        std::fs::remove_file(&path).unwrap();
        fleet
    }

    /// (event, host) of each line, and the lines as JSON.
    fn events(sweeper: &Sweeper) -> Vec<serde_json::Value> {
        std::str::from_utf8(sweeper.lines())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["event"] != "summary")
            .collect()
    }

    fn kinds(sweeper: &Sweeper) -> Vec<(String, String)> {
        events(sweeper)
            .iter()
            .map(|v| {
                (
                    v["event"].as_str().unwrap().to_owned(),
                    v["host"].as_str().unwrap_or("?").to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn summary_lines_at_most_every_n_sweeps() {
        assert_eq!(summary_sweeps(1, 4), [1, 2, 3, 4]);
        assert_eq!(summary_sweeps(3, 8), [1, 4, 7]);
        assert!(summary_sweeps(0, 5).is_empty());
    }

    /// A collector whose host went silent, then a sweep with nothing to
    /// say, every line written; the host beats again while no collector
    /// runs: what the next collector reports.
    fn recovered_after_restart(summary_every: u32) -> Vec<Transition<u32>> {
        let words = Words::Heap(vec![0; state_words(SLOTS)]);
        let table = fake(&[10 * S]);
        let tracker = Tracker::resume(15 * S, words, SLOTS, table.last_seen(), 0);
        let mut sweeper = Sweeper::with_tracker(tracker, Format::Json);
        sweeper.set_summary_every(summary_every);
        let mut bytes = 0;
        for now in [10 * S, 30 * S, 40 * S] {
            sweeper.sweep_at(&table, now, UNIX_EPOCH).unwrap();
            bytes += sweeper.lines().len() as u64;
            sweeper.written(bytes);
        }
        let words = sweeper.into_tracker().into_words().unwrap();
        let now = fake(&[45 * S]);
        let mut next = Tracker::resume(15 * S, words, SLOTS, now.last_seen(), 0);
        let mut out = Vec::new();
        next.sweep(now.last_seen(), 46 * S, |t| out.push(t));
        out
    }

    #[test]
    fn without_summary_lines_a_restart_carries_on_the_same() {
        // Silent since at least the last sweep before the gap (40 s) less
        // the timeout: 45 - (40 - 15).
        let expected = [Transition::Recovered {
            host: 0,
            silent_for_ns: 20 * S,
        }];
        assert_eq!(recovered_after_restart(1), expected);
        assert_eq!(recovered_after_restart(0), expected);
        assert_eq!(recovered_after_restart(5), expected);
    }

    fn pair(e: &str, h: &str) -> (String, String) {
        (e.to_owned(), h.to_owned())
    }

    fn summary(sweeper: &Sweeper) -> serde_json::Value {
        let text = std::str::from_utf8(sweeper.lines()).unwrap();
        serde_json::from_str(text.lines().last().unwrap()).unwrap()
    }

    const INVENTORY: &str = "address,name,group,dc\n\
        198.18.0.0,web-0,web,fra\n\
        198.18.0.1,web-1,web,fra\n\
        198.18.0.2,db-2,db,ams\n\
        198.18.0.9,web-9,web,fra\n";

    #[test]
    fn inventoried_hosts_are_expected_missing_then_recovered() {
        use crate::track::fleet::UnknownHosts;
        let mut sw = Sweeper::new(15 * S, Format::Json);
        sw.set_fleet(fleet(INVENTORY, 5 * S, UnknownHosts::Track, &[]));
        // Slots 0, 1 (inventoried) and 3 (not) beat; 2 and 9 are not heard.
        let table = fake(&[10 * S, 10 * S, 0, 10 * S]);
        sw.sweep_at(&table, 10 * S, UNIX_EPOCH).unwrap();
        assert_eq!(kinds(&sw), [pair("new", "198.18.0.3")]);
        let s = summary(&sw);
        assert_eq!(
            (s["hosts"].as_u64(), s["missing"].as_u64()),
            (Some(3), Some(0))
        );
        assert_eq!(s["unknown_hosts"], 1);
        sw.sweep_at(&table, 14 * S, UNIX_EPOCH).unwrap();
        assert!(kinds(&sw).is_empty(), "within the grace");
        sw.sweep_at(&table, 15 * S, UNIX_EPOCH).unwrap();
        let ev = events(&sw);
        assert_eq!(
            kinds(&sw),
            [pair("missing", "198.18.0.2"), pair("missing", "198.18.0.9")]
        );
        assert_eq!(ev[0]["name"], "db-2");
        assert_eq!(
            ev[0]["labels"],
            serde_json::json!({"group": "db", "dc": "ams"})
        );
        assert_eq!(ev[0]["missing_for_ms"], 5 * S / 1_000_000);
        assert_eq!(summary(&sw)["missing"], 2);
        sw.sweep_at(&table, 16 * S, UNIX_EPOCH).unwrap();
        assert!(kinds(&sw).is_empty(), "missing is reported once");
        // Host 2 starts beating.
        let table = fake(&[17 * S, 17 * S, 17 * S, 17 * S]);
        sw.sweep_at(&table, 17 * S, UNIX_EPOCH).unwrap();
        let ev = events(&sw);
        assert_eq!(kinds(&sw), [pair("recovered", "198.18.0.2")]);
        assert_eq!(ev[0]["name"], "db-2");
        assert_eq!(ev[0]["silent_for_ms"], 7 * S / 1_000_000);
        assert_eq!(summary(&sw)["missing"], 1);
        assert_eq!(sw.roll().missing().count(), 1);
        // Host 0 falls silent: named.
        let table = fake(&[17 * S, 40 * S, 40 * S, 40 * S]);
        sw.sweep_at(&table, 40 * S, UNIX_EPOCH).unwrap();
        let ev = events(&sw);
        assert_eq!(kinds(&sw), [pair("silent", "198.18.0.0")]);
        assert_eq!(ev[0]["name"], "web-0");
        assert_eq!(ev[0]["labels"]["group"], "web");
        assert_eq!(sw.totals().new, 1);
        assert_eq!(sw.totals().missing, 2);
        let web = &sw.roll().by_class()[1];
        assert_eq!((web.hosts, web.silent, web.missing), (2, 1, 1));
    }

    #[test]
    fn ignored_hosts_are_counted_not_tracked() {
        use crate::track::fleet::UnknownHosts;
        let mut sw = Sweeper::new(15 * S, Format::Json);
        sw.set_fleet(fleet(INVENTORY, 60 * S, UnknownHosts::Ignore, &[]));
        let table = fake(&[10 * S, 10 * S, 10 * S, 10 * S, 10 * S]);
        sw.sweep_at(&table, 10 * S, UNIX_EPOCH).unwrap();
        assert!(kinds(&sw).is_empty());
        let s = summary(&sw);
        assert_eq!(
            (s["hosts"].as_u64(), s["unknown_hosts"].as_u64()),
            (Some(3), Some(2))
        );
        // Everyone stops: only the inventoried go silent.
        sw.sweep_at(&table, 30 * S, UNIX_EPOCH).unwrap();
        assert_eq!(
            kinds(&sw),
            [
                pair("silent", "198.18.0.0"),
                pair("silent", "198.18.0.1"),
                pair("silent", "198.18.0.2")
            ]
        );
        assert_eq!(summary(&sw)["silent"], 3);
        assert_eq!(sw.silent().len(), 3);
    }

    #[test]
    fn a_group_has_its_own_timeout() {
        use crate::track::fleet::UnknownHosts;
        let mut sw = Sweeper::new(15 * S, Format::Json);
        sw.set_fleet(fleet(
            INVENTORY,
            100 * S,
            UnknownHosts::Track,
            &[("db", 40 * S)],
        ));
        let table = fake(&[10 * S, 10 * S, 10 * S, 10 * S]);
        sw.sweep_at(&table, 10 * S, UNIX_EPOCH).unwrap();
        sw.sweep_at(&table, 30 * S, UNIX_EPOCH).unwrap();
        assert_eq!(
            kinds(&sw),
            [
                pair("silent", "198.18.0.0"),
                pair("silent", "198.18.0.1"),
                pair("silent", "198.18.0.3")
            ]
        );
        sw.sweep_at(&table, 50 * S, UNIX_EPOCH).unwrap();
        assert!(kinds(&sw).is_empty(), "db: 40 s");
        sw.sweep_at(&table, 51 * S, UNIX_EPOCH).unwrap();
        assert_eq!(kinds(&sw), [pair("silent", "198.18.0.2")]);
        // Back within the group's timeout, though past the default's.
        let table = fake(&[10 * S, 10 * S, 40 * S, 10 * S]);
        sw.sweep_at(&table, 70 * S, UNIX_EPOCH).unwrap();
        assert_eq!(kinds(&sw), [pair("recovered", "198.18.0.2")]);
    }

    #[test]
    fn a_new_fleet_adopts_hosts_as_they_are() {
        adopts_hosts_as_they_are(false);
    }

    #[test]
    fn a_reloaded_fleet_looked_up_over_sweeps_adopts_hosts_as_they_are() {
        adopts_hosts_as_they_are(true);
    }

    fn adopts_hosts_as_they_are(reload: bool) {
        use crate::track::fleet::UnknownHosts;
        let mut sw = Sweeper::new(15 * S, Format::Json);
        sw.set_fleet(fleet(INVENTORY, 5 * S, UnknownHosts::Track, &[]));
        // 0 alive, 1 silent, 3 unknown and silent; 2 and 9 missing.
        let table = fake(&[10 * S, 10 * S, 0, 10 * S]);
        sw.sweep_at(&table, 10 * S, UNIX_EPOCH).unwrap();
        let table = fake(&[29 * S, 10 * S, 0, 10 * S]);
        sw.sweep_at(&table, 30 * S, UNIX_EPOCH).unwrap();
        assert_eq!(kinds(&sw).len(), 2 + 2, "2 missing, 2 silent");
        // The new inventory drops 1 and 9, adds 3 (silent) and 7 (never
        // heard), keeps 0 and 2 (missing).
        let next = "address,name\n198.18.0.0,a\n198.18.0.2,b\n198.18.0.3,c\n198.18.0.7,d\n";
        let next = fleet(next, 5 * S, UnknownHosts::Track, &[]);
        if reload {
            // No time to look anything up: a chunk a sweep all the same.
            sw.set_adopt_budget(Duration::ZERO);
            sw.reload_fleet(next);
        } else {
            sw.set_fleet(next);
        }
        sw.sweep_at(&table, 31 * S, UNIX_EPOCH).unwrap();
        assert!(kinds(&sw).is_empty(), "{:?}", kinds(&sw));
        let s = summary(&sw);
        assert_eq!(s["missing"], 1, "2 is still missing");
        assert_eq!(s["silent"], 2);
        assert_eq!(s["unknown_hosts"], 1, "1 is no longer listed");
        assert_eq!(sw.ident(3).unwrap().name, Some("c"));
        // 7's grace started at the reload.
        sw.sweep_at(&table, 35 * S, UNIX_EPOCH).unwrap();
        assert!(kinds(&sw).is_empty());
        sw.sweep_at(&table, 36 * S, UNIX_EPOCH).unwrap();
        assert_eq!(kinds(&sw), [pair("missing", "198.18.0.7")]);
        // 2 comes: recovered, missing since the first fleet's start.
        let table = fake(&[36 * S, 10 * S, 36 * S, 10 * S]);
        sw.sweep_at(&table, 37 * S, UNIX_EPOCH).unwrap();
        let ev = events(&sw);
        assert_eq!(kinds(&sw), [pair("recovered", "198.18.0.2")]);
        assert_eq!(ev[0]["silent_for_ms"], 27 * S / 1_000_000);
    }

    #[test]
    fn a_reloaded_fleet_is_adopted_once_every_slot_is_looked_up() {
        use crate::track::fleet::UnknownHosts;
        // 10,000 hosts: three chunks of lookups, one a sweep at no budget.
        struct Big(Vec<AtomicU32>);
        impl Table for Big {
            fn epoch_ns(&self) -> u64 {
                0
            }
            fn last_seen(&self) -> &[AtomicU32] {
                &self.0
            }
            fn host(&self, slot: u32) -> Host {
                Host::addr(&HostKey::from_ipv4([10, 0, (slot >> 8) as u8, slot as u8]))
            }
            fn len(&self) -> usize {
                self.0.len()
            }
            fn capacity(&self) -> usize {
                self.0.len()
            }
            fn counters(&self) -> Result<Counts> {
                Ok([0; Counter::COUNT])
            }
        }
        const N: u32 = 10_000;
        let csv = |tag: &str| {
            let mut csv = String::from("address,name\n");
            for i in 0..N {
                csv += &format!("10.0.{}.{},{tag}{i}\n", i >> 8, i & 255);
            }
            csv
        };
        let table = |now: u64| Big((0..N).map(|_| stamp_at(now)).collect());
        let mut sw = Sweeper::new(15 * S, Format::Json);
        sw.set_fleet(fleet(&csv("a"), 5 * S, UnknownHosts::Track, &[]));
        sw.sweep_at(&table(S), S, UNIX_EPOCH).unwrap();
        assert!(kinds(&sw).is_empty(), "{:?}", kinds(&sw));
        sw.set_adopt_budget(Duration::ZERO);
        sw.reload_fleet(fleet(&csv("b"), 5 * S, UnknownHosts::Track, &[]));
        let name = |sw: &Sweeper, slot| sw.ident(slot).unwrap().name.unwrap().to_owned();
        for t in 2..4 {
            sw.sweep_at(&table(t * S), t * S, UNIX_EPOCH).unwrap();
            assert_eq!(name(&sw, 9999), "a9999", "still the last fleet at {t} s");
            assert!(kinds(&sw).is_empty(), "{:?}", kinds(&sw));
        }
        sw.sweep_at(&table(4 * S), 4 * S, UNIX_EPOCH).unwrap();
        assert_eq!(
            (name(&sw, 0), name(&sw, 9999)),
            ("b0".into(), "b9999".into())
        );
        assert!(kinds(&sw).is_empty(), "{:?}", kinds(&sw));
        assert_eq!(summary(&sw)["hosts"], N);
    }

    #[test]
    fn an_inventoried_host_first_heard_is_told_without_a_line() {
        // Its first heartbeat writes nothing, but a restarted collector
        // must not take it as new either: the tracker is told.
        use crate::track::fleet::UnknownHosts;
        let words = Words::Heap(vec![0; state_words(SLOTS)]);
        let table = fake(&[10 * S, 10 * S, 10 * S, 10 * S]);
        let tracker = Tracker::resume(15 * S, words, SLOTS, table.last_seen(), 0);
        let mut sw = Sweeper::with_tracker(tracker, Format::Json);
        sw.set_fleet(fleet(INVENTORY, 5 * S, UnknownHosts::Track, &[]));
        sw.sweep_at(&table, 10 * S, UNIX_EPOCH).unwrap();
        assert_eq!(kinds(&sw), [pair("new", "198.18.0.3")]);
        sw.written(sw.lines().len() as u64);
        let words = sw.into_tracker().into_words().unwrap();
        let mut next = Tracker::resume(15 * S, words, SLOTS, table.last_seen(), 0);
        let mut new = 0;
        next.sweep(table.last_seen(), 11 * S, |t| {
            new += u32::from(matches!(t, Transition::New { .. }))
        });
        assert_eq!(new, 0);
    }

    /// A table that forgets as the XDP one does: a forgotten slot reads 0
    /// and is handed out again once reused.
    struct Forgetful {
        seen: Vec<AtomicU32>,
        forgotten: std::cell::RefCell<Vec<bool>>,
        reused: std::cell::RefCell<Vec<u32>>,
    }

    impl Forgetful {
        fn new(seen: &[u64]) -> Self {
            Self {
                seen: seen.iter().map(|&t| stamp_at(t)).collect(),
                forgotten: std::cell::RefCell::new(vec![false; seen.len()]),
                reused: Default::default(),
            }
        }
        fn stamp(&self, slot: usize, t: u64) {
            self.seen[slot].store(
                stamp_at(t).into_inner(),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    impl Table for Forgetful {
        fn epoch_ns(&self) -> u64 {
            0
        }
        fn last_seen(&self) -> &[AtomicU32] {
            &self.seen
        }
        fn host(&self, slot: u32) -> Host {
            Host::addr(&HostKey::from_ipv4([198, 18, 0, slot as u8]))
        }
        fn len(&self) -> usize {
            self.seen.len()
        }
        fn capacity(&self) -> usize {
            SLOTS
        }
        fn counters(&self) -> Result<Counts> {
            Ok([0; Counter::COUNT])
        }
        fn forget(&self, slot: u32) -> Result<bool> {
            self.forgotten.borrow_mut()[slot as usize] = true;
            self.stamp(slot as usize, 0);
            Ok(true)
        }
        fn release(&self, slot: u32) {
            self.stamp(slot as usize, 0);
        }
        fn reuse(&self, slot: u32) -> Result<()> {
            self.forgotten.borrow_mut()[slot as usize] = false;
            self.reused.borrow_mut().push(slot);
            Ok(())
        }
        fn forgotten(&self, slot: u32) -> bool {
            self.forgotten.borrow()[slot as usize]
        }
    }

    /// A sweep whose lines are all written.
    fn swept(sw: &mut Sweeper, table: &dyn Table, now: u64) -> Vec<(String, String)> {
        sw.sweep_at(table, now, UNIX_EPOCH).unwrap();
        sw.written(sw.reported);
        kinds(sw)
    }

    fn forgetting_after(secs: u64) -> Fleet {
        Fleet::load(&crate::track::fleet::FleetConfig {
            forget_after: std::time::Duration::from_nanos(secs * S),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn a_host_silent_for_forget_after_is_forgotten_and_its_slot_reused() {
        let words = Words::Heap(vec![0; state_words(SLOTS)]);
        let table = Forgetful::new(&[10 * S, 10 * S]);
        let tracker = Tracker::resume(15 * S, words, SLOTS, table.last_seen(), 0);
        let mut sw = Sweeper::with_tracker(tracker, Format::Json);
        sw.set_fleet(forgetting_after(20));
        assert_eq!(swept(&mut sw, &table, 10 * S).len(), 2);
        table.stamp(0, 30 * S);
        assert_eq!(
            swept(&mut sw, &table, 30 * S),
            [pair("silent", "198.18.0.1")]
        );
        // Silent for 20 s, not more: kept. (Looked at every 5 s: a
        // quarter of forget_after.)
        table.stamp(0, 30 * S);
        assert!(swept(&mut sw, &table, 30 * S).is_empty());
        assert!(!table.forgotten(1));
        // Silent for 26 s, at the next look: forgotten, without a line.
        table.stamp(0, 36 * S);
        assert!(swept(&mut sw, &table, 36 * S).is_empty());
        assert!(table.forgotten(1));
        assert_eq!(sw.forgotten(), 1);
        let s = summary(&sw);
        assert_eq!(
            (s["hosts"].as_u64(), s["silent"].as_u64()),
            (Some(1), Some(0))
        );
        assert!(table.reused.borrow().is_empty(), "freed a sweep later");
        table.stamp(0, 37 * S);
        assert!(swept(&mut sw, &table, 37 * S).is_empty());
        assert_eq!(*table.reused.borrow(), [1]);
        // Unknown in the told state: a restarted collector agrees.
        let words = sw.into_tracker().into_words().unwrap();
        let again = Tracker::resume(15 * S, words, SLOTS, table.last_seen(), 0);
        assert_eq!(again.census().hosts, 1);
        assert!(!again.is_known(1));
        // The slot's next host is new.
        let mut sw = Sweeper::with_tracker(again, Format::Json);
        table.stamp(0, 38 * S);
        table.stamp(1, 38 * S);
        assert_eq!(swept(&mut sw, &table, 38 * S), [pair("new", "198.18.0.1")]);
    }

    #[test]
    fn a_collector_killed_between_the_steps_finishes_forgetting() {
        let words = Words::Heap(vec![0; state_words(SLOTS)]);
        let table = Forgetful::new(&[10 * S, 10 * S]);
        let tracker = Tracker::resume(15 * S, words, SLOTS, table.last_seen(), 0);
        let mut sw = Sweeper::with_tracker(tracker, Format::Json);
        sw.set_fleet(forgetting_after(20));
        swept(&mut sw, &table, 10 * S);
        table.stamp(0, 35 * S);
        swept(&mut sw, &table, 35 * S);
        assert!(table.forgotten(1));
        // Killed here: the next collector finds the slot known, forgotten.
        let words = sw.into_tracker().into_words().unwrap();
        let tracker = Tracker::resume(15 * S, words, SLOTS, table.last_seen(), 0);
        assert!(tracker.is_known(1));
        let mut sw = Sweeper::with_tracker(tracker, Format::Json);
        sw.set_fleet(forgetting_after(20));
        assert!(swept(&mut sw, &table, 36 * S).is_empty());
        assert_eq!(summary(&sw)["hosts"], 1);
        assert!(swept(&mut sw, &table, 37 * S).is_empty());
        assert_eq!(*table.reused.borrow(), [1]);
        assert!(!sw.tracker().is_known(1));
    }

    #[test]
    fn a_host_dropped_from_the_inventory_is_forgotten_at_the_reload() {
        use crate::track::fleet::UnknownHosts;
        let table = Forgetful::new(&[10 * S, 10 * S, 10 * S]);
        let mut sw = Sweeper::new(15 * S, Format::Json);
        sw.set_fleet(fleet(INVENTORY, 5 * S, UnknownHosts::Track, &[]));
        assert!(swept(&mut sw, &table, 10 * S).is_empty());
        let next = "address,name\n198.18.0.0,a\n198.18.0.2,c\n";
        sw.set_fleet(fleet(next, 5 * S, UnknownHosts::Track, &[]));
        assert!(swept(&mut sw, &table, 11 * S).is_empty());
        assert!(table.forgotten(1) && !table.forgotten(0) && !table.forgotten(2));
        let s = summary(&sw);
        assert_eq!(
            (s["hosts"].as_u64(), s["unknown_hosts"].as_u64()),
            (Some(2), Some(0))
        );
        assert!(swept(&mut sw, &table, 12 * S).is_empty());
        assert_eq!(*table.reused.borrow(), [1]);
    }
}
