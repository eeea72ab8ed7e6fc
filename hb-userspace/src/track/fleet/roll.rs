//! The roll call: the fleet held against the table. Which slot is which
//! inventoried host (or none), which inventoried hosts were heard, which
//! are waiting out their grace and which were reported missing; counts by
//! group. The sweeper keeps one, rebuilt whole when the fleet changes.
//!
//! Memory a host: a `u32` a slot (its entry) and two bits an entry (heard,
//! missing); a waiting host costs a `u32` until its grace is over, a
//! missing one a map entry.

use hashbrown::HashMap;
use hb_common::HostKey;

use super::{Class, DEFAULT_CLASS, Fleet, MUTED, UnknownHosts};

/// `slot_entry` of a slot whose host the inventory does not list.
pub const UNLISTED: u32 = u32::MAX;
/// ... and that is not tracked (`unknown_hosts = ignore`).
pub const IGNORED: u32 = u32::MAX - 1;

/// A host by key, with a time (since when hb expected it).
pub type Timed = (HostKey, u64);

/// Hosts of one group by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCount {
    /// Heard (alive or silent).
    pub hosts: u64,
    pub silent: u64,
    pub missing: u64,
}

/// Inventoried hosts not heard yet, whose grace started at `since`.
#[derive(Debug)]
struct Waiting {
    since: u64,
    entries: Vec<u32>,
    /// The earliest time one of them can be missing.
    next_check: u64,
}

#[derive(Debug, Default)]
pub struct Roll {
    /// Slot -> entry, `UNLISTED` or `IGNORED`; for the slots resolved.
    slot_entry: Vec<u32>,
    /// Entries heard (a slot is theirs).
    heard: Vec<u64>,
    /// Entries reported missing -> since when hb expected them.
    missing: HashMap<u32, u64>,
    /// The same, (since, entry) in the order reported: the pages' order.
    missing_order: Vec<(u64, u32)>,
    /// Came back this sweep: taken out of `missing_order` at its end.
    found: bool,
    waiting: Vec<Waiting>,
    /// Slots heard whose host is not inventoried, and of them ignored.
    unlisted: u64,
    ignored: u64,
    by_class: Vec<GroupCount>,
}

fn get(bits: &[u64], i: u32) -> bool {
    bits.get(i as usize / 64)
        .is_some_and(|w| w & (1 << (i % 64)) != 0)
}

fn set(bits: &mut [u64], i: u32) {
    bits[i as usize / 64] |= 1 << (i % 64);
}

/// What resolving a slot found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub entry: u32,
    pub class: Class,
}

/// Which host of `fleet` has `key`: its entry (or `UNLISTED`, `IGNORED`)
/// and class. Reads the fleet only.
pub fn lookup(fleet: &Fleet, key: &HostKey) -> Resolved {
    let entry = match fleet.inventory() {
        None => UNLISTED,
        Some(inv) => match inv.entry(key) {
            Some(e) => e,
            None if fleet.config.unknown_hosts == UnknownHosts::Ignore => IGNORED,
            None => UNLISTED,
        },
    };
    let class = match entry {
        UNLISTED => DEFAULT_CLASS,
        IGNORED => MUTED,
        e => fleet.inventory().map_or(DEFAULT_CLASS, |inv| inv.class(e)),
    };
    Resolved { entry, class }
}

impl Roll {
    /// The roll of `fleet` over a table that has heard nothing yet
    /// resolved; `prev` is the roll of the fleet `old` it replaces.
    pub fn new(fleet: &Fleet) -> Self {
        let n = fleet.inventory().map_or(0, |i| i.len());
        Self {
            heard: vec![0; n.div_ceil(64)],
            by_class: vec![GroupCount::default(); fleet.classes().len()],
            ..Default::default()
        }
    }

    /// The slot's host, first heard (or the fleet just set): which entry
    /// it is, and its class.
    pub fn resolve(&mut self, fleet: &Fleet, slot: u32, key: &HostKey) -> Resolved {
        let r = lookup(fleet, key);
        self.record(fleet, slot, r)
    }

    /// The slot's host is `r` (looked up beforehand: see `lookup`).
    pub fn record(&mut self, fleet: &Fleet, slot: u32, r: Resolved) -> Resolved {
        let Resolved { entry, class } = r;
        let s = slot as usize;
        if self.slot_entry.len() <= s {
            self.slot_entry
                .resize((s + 1).max(self.slot_entry.len() * 2), UNLISTED);
        }
        self.slot_entry[s] = entry;
        match entry {
            UNLISTED | IGNORED => {
                if fleet.inventory().is_some() {
                    self.unlisted += 1;
                }
                if entry == IGNORED {
                    self.ignored += 1;
                }
            }
            e => {
                set(&mut self.heard, e);
                self.by_class[class as usize].hosts += 1;
            }
        }
        Resolved { entry, class }
    }

    /// The entry of `slot`'s host: `UNLISTED`, `IGNORED` or an entry.
    pub fn entry(&self, slot: u32) -> u32 {
        self.slot_entry
            .get(slot as usize)
            .copied()
            .unwrap_or(UNLISTED)
    }

    /// `slot`'s host is forgotten (`was_silent`: it was silent): no longer
    /// counted.
    pub fn forget(&mut self, fleet: &Fleet, slot: u32, was_silent: bool) {
        let Some(e) = self.slot_entry.get_mut(slot as usize) else {
            return;
        };
        let entry = std::mem::replace(e, UNLISTED);
        match (entry, fleet.inventory()) {
            (UNLISTED | IGNORED, Some(_)) => {
                self.unlisted = self.unlisted.saturating_sub(1);
                if entry == IGNORED {
                    self.ignored = self.ignored.saturating_sub(1);
                }
            }
            (UNLISTED | IGNORED, None) => {}
            (e, Some(inv)) => {
                if let Some(w) = self.heard.get_mut(e as usize / 64) {
                    *w &= !(1 << (e % 64));
                }
                if let Some(c) = self.by_class.get_mut(inv.class(e) as usize) {
                    c.hosts = c.hosts.saturating_sub(1);
                    if was_silent {
                        c.silent = c.silent.saturating_sub(1);
                    }
                }
            }
            (_, None) => {}
        }
    }

    /// Slots resolved to an inventoried host: (slot, entry).
    pub fn listed(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.slot_entry
            .iter()
            .enumerate()
            .filter(|&(_, &e)| e < IGNORED)
            .map(|(s, &e)| (s as u32, e))
    }

    /// `entry` was reported missing: since when hb expected it. Taken out.
    pub fn found(&mut self, entry: u32, class: Class) -> Option<u64> {
        if self.missing.is_empty() {
            return None;
        }
        let since = self.missing.remove(&entry)?;
        self.found = true;
        self.by_class[class as usize].missing -= 1;
        Some(since)
    }

    /// A slot of `class` went silent (+1) or came back (-1).
    pub fn silent_changed(&mut self, class: Class, went: bool) {
        if let Some(c) = self.by_class.get_mut(class as usize) {
            if went {
                c.silent += 1;
            } else {
                c.silent = c.silent.saturating_sub(1);
            }
        }
    }

    /// Hosts of the fleet not heard, whose grace starts at `since`.
    /// `carried`: (key, since) of hosts an earlier fleet was already
    /// waiting for, and `missing` those it had reported: they keep their
    /// times. Call once every slot the table has heard is resolved.
    pub fn expect(&mut self, fleet: &Fleet, since: u64, carried: &[Timed], missing: &[Timed]) {
        let Some(inv) = fleet.inventory() else {
            return;
        };
        let mut taken = vec![0u64; inv.len().div_ceil(64)];
        for &(key, at) in missing {
            if let Some(e) = inv.entry(&key)
                && !get(&self.heard, e)
                && !get(&taken, e)
            {
                set(&mut taken, e);
                self.missing.insert(e, at);
                self.missing_order.push((at, e));
                self.by_class[inv.class(e) as usize].missing += 1;
            }
        }
        self.missing_order.sort_unstable();
        let mut by_since: Vec<(u64, u32)> = Vec::new();
        for &(key, at) in carried {
            if let Some(e) = inv.entry(&key)
                && !get(&self.heard, e)
                && !get(&taken, e)
            {
                set(&mut taken, e);
                by_since.push((at, e));
            }
        }
        by_since.sort_unstable();
        let mut fresh = Vec::new();
        for e in 0..inv.len() as u32 {
            if !get(&self.heard, e) && !get(&taken, e) {
                fresh.push(e);
            }
        }
        for chunk in by_since.chunk_by(|a, b| a.0 == b.0) {
            self.waiting.push(Waiting {
                since: chunk[0].0,
                entries: chunk.iter().map(|&(_, e)| e).collect(),
                next_check: chunk[0].0,
            });
        }
        if !fresh.is_empty() {
            self.waiting.push(Waiting {
                since,
                entries: fresh,
                next_check: since,
            });
        }
    }

    /// Hosts whose grace ran out by `now` and that were not heard: taken
    /// as missing, each handed to `report` (entry, since).
    pub fn check_grace(&mut self, fleet: &Fleet, now: u64, mut report: impl FnMut(u32, u64)) {
        let Some(inv) = fleet.inventory() else {
            return;
        };
        let classes = fleet.classes();
        let grace = |e: u32| classes[inv.class(e) as usize].grace.as_nanos() as u64;
        let Self {
            waiting,
            heard,
            missing,
            missing_order,
            by_class,
            ..
        } = self;
        waiting.retain_mut(|w| {
            if now < w.next_check {
                return true;
            }
            let since = w.since;
            let mut next = u64::MAX;
            w.entries.retain(|&e| {
                if get(heard, e) {
                    return false;
                }
                let deadline = since.saturating_add(grace(e));
                if now >= deadline {
                    missing.insert(e, since);
                    missing_order.push((since, e));
                    by_class[inv.class(e) as usize].missing += 1;
                    report(e, since);
                    false
                } else {
                    next = next.min(deadline);
                    true
                }
            });
            w.next_check = next;
            w.entries.shrink_to_fit();
            !w.entries.is_empty()
        });
        if self.found {
            self.found = false;
            let missing = &self.missing;
            self.missing_order.retain(|(_, e)| missing.contains_key(e));
        }
        // Reported in grace order, which is `since` order but for hosts
        // with different graces: kept sorted for the pages.
        if !self.missing_order.is_sorted() {
            self.missing_order.sort_unstable();
        }
    }

    /// Missing hosts, in the order reported: (entry, since).
    pub fn missing(&self) -> impl ExactSizeIterator<Item = (u32, u64)> + '_ {
        self.missing_order.iter().map(|&(since, e)| (e, since))
    }

    /// Missing hosts `offset..offset + limit` in the order reported, found
    /// by index: a late page costs what an early one does.
    pub fn missing_page(
        &self,
        offset: usize,
        limit: usize,
    ) -> impl Iterator<Item = (u32, u64)> + '_ {
        let from = offset.min(self.missing_order.len());
        let to = from.saturating_add(limit).min(self.missing_order.len());
        self.missing_order[from..to]
            .iter()
            .map(|&(since, e)| (e, since))
    }

    /// What a new fleet carries on from this roll: hosts being waited for
    /// and hosts missing, by key, with their times.
    pub fn carry(&self, fleet: &Fleet) -> (Vec<Timed>, Vec<Timed>) {
        let Some(inv) = fleet.inventory() else {
            return Default::default();
        };
        let waiting = self
            .waiting
            .iter()
            .flat_map(|w| w.entries.iter().map(|&e| (*inv.key(e), w.since)))
            .collect();
        let missing = self
            .missing_order
            .iter()
            .map(|&(since, e)| (*inv.key(e), since))
            .collect();
        (waiting, missing)
    }

    /// Whether `entry`'s host was heard (a slot is its).
    pub fn is_heard(&self, entry: u32) -> bool {
        get(&self.heard, entry)
    }

    pub fn missing_count(&self) -> u64 {
        self.missing.len() as u64
    }

    /// Hosts heard that the inventory does not list (tracked or not).
    pub fn unlisted(&self) -> u64 {
        self.unlisted
    }

    /// Hosts heard, not inventoried and not tracked.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// Counts by class (index: the class).
    pub fn by_class(&self) -> &[GroupCount] {
        &self.by_class
    }

    pub fn heap_bytes(&self) -> usize {
        self.slot_entry.capacity() * 4
            + self.heard.capacity() * 8
            + self.missing.allocation_size()
            + self.missing_order.capacity() * 16
            + self
                .waiting
                .iter()
                .map(|w| w.entries.capacity() * 4)
                .sum::<usize>()
    }
}
