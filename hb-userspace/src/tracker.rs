//! Per-host state (alive or silent) and the transitions between states. Pure
//! logic over the table's slot-indexed last-seen times and the current
//! CLOCK_MONOTONIC time.
//!
//! State is slot-indexed too: two bits per host (known, silent) plus an entry
//! per *silent* host, so alive hosts cost userspace a quarter of a byte, and
//! a sweep is one linear pass over the last-seen array.

use std::sync::atomic::{AtomicU64, Ordering};

use hashbrown::HashMap;

/// A host state change found by a sweep; `H` identifies the host (a slot
/// here, an address once resolved for output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition<H> {
    /// First heartbeat ever seen from this host; `age_ns` is how long ago.
    New { host: H, age_ns: u64 },
    /// Was alive, its last heartbeat is now older than the timeout.
    Silent { host: H, silent_for_ns: u64 },
    /// Was silent and beats again; `silent_for_ns` is the length of the gap.
    Recovered { host: H, silent_for_ns: u64 },
}

impl<H> Transition<H> {
    pub fn host(&self) -> &H {
        match self {
            Self::New { host, .. } | Self::Silent { host, .. } | Self::Recovered { host, .. } => {
                host
            }
        }
    }

    pub fn with_host<K>(self, host: K) -> Transition<K> {
        match self {
            Self::New { age_ns, .. } => Transition::New { host, age_ns },
            Self::Silent { silent_for_ns, .. } => Transition::Silent {
                host,
                silent_for_ns,
            },
            Self::Recovered { silent_for_ns, .. } => Transition::Recovered {
                host,
                silent_for_ns,
            },
        }
    }
}

/// Counts at the end of a sweep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    pub hosts: u64,
    pub alive: u64,
    pub silent: u64,
}

#[derive(Default)]
struct Bits(Vec<u64>);

impl Bits {
    fn grow(&mut self, n: usize) {
        let words = n.div_ceil(64);
        if self.0.len() < words {
            self.0.resize(words, 0);
        }
    }
    #[inline]
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    #[inline]
    fn set(&mut self, i: usize, v: bool) {
        let (w, b) = (i / 64, 1u64 << (i % 64));
        if v { self.0[w] |= b } else { self.0[w] &= !b }
    }
    fn bytes(&self) -> usize {
        self.0.capacity() * 8
    }
}

pub struct Tracker {
    timeout_ns: u64,
    known: Bits,
    silent_bits: Bits,
    /// Silent hosts: slot -> last-seen time when they went silent.
    silent: HashMap<u32, u64>,
    /// Every slot below this is known.
    ready_upto: usize,
    hosts: u64,
}

impl Tracker {
    pub fn new(timeout_ns: u64) -> Self {
        Self {
            timeout_ns,
            known: Bits::default(),
            silent_bits: Bits::default(),
            silent: HashMap::new(),
            ready_upto: 0,
            hosts: 0,
        }
    }

    /// One sweep over `last_seen` (indexed by slot; 0 = slot not ready).
    pub fn sweep(
        &mut self,
        last_seen: &[AtomicU64],
        now_ns: u64,
        mut emit: impl FnMut(Transition<u32>),
    ) {
        let n = last_seen.len();
        self.known.grow(n);
        self.silent_bits.grow(n);
        let load = |slot: usize| last_seen[slot].load(Ordering::Relaxed);

        // Slots handed out since the last sweep (or not ready then).
        for slot in self.ready_upto..n {
            if self.known.get(slot) {
                continue;
            }
            let seen = load(slot);
            if seen == 0 {
                continue;
            }
            self.known.set(slot, true);
            self.hosts += 1;
            emit(Transition::New {
                host: slot as u32,
                age_ns: now_ns.saturating_sub(seen),
            });
        }
        while self.ready_upto < n && self.known.get(self.ready_upto) {
            self.ready_upto += 1;
        }

        // Silent hosts that beat again: few, so checked one by one.
        let timeout = self.timeout_ns;
        let silent_bits = &mut self.silent_bits;
        self.silent.retain(|&slot, &mut went_silent_at| {
            let seen = load(slot as usize);
            if seen != went_silent_at && now_ns.saturating_sub(seen) <= timeout {
                silent_bits.set(slot as usize, false);
                emit(Transition::Recovered {
                    host: slot,
                    silent_for_ns: seen.saturating_sub(went_silent_at),
                });
                false
            } else {
                true
            }
        });

        // Hosts that just went silent: the one pass over every slot. Age >
        // timeout is `seen < now - timeout`; the rare hit checks the bits.
        let threshold = now_ns.saturating_sub(timeout);
        for (slot, t) in last_seen.iter().enumerate() {
            let seen = t.load(Ordering::Relaxed);
            if seen < threshold && seen != 0 && !self.silent_bits.get(slot) && self.known.get(slot)
            {
                self.silent_bits.set(slot, true);
                self.silent.insert(slot as u32, seen);
                emit(Transition::Silent {
                    host: slot as u32,
                    silent_for_ns: now_ns - seen,
                });
            }
        }
    }

    pub fn census(&self) -> Census {
        let silent = self.silent.len() as u64;
        Census {
            hosts: self.hosts,
            alive: self.hosts - silent,
            silent,
        }
    }

    /// Silent hosts (slot) with the time they were last seen.
    pub fn silent_hosts(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.silent.iter().map(|(&slot, &seen)| (slot, seen))
    }

    /// Heap bytes of the tracker's state (for the memory figure).
    pub fn heap_bytes(&self) -> usize {
        self.known.bytes() + self.silent_bits.bytes() + self.silent.allocation_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn table(v: &[u64]) -> Vec<AtomicU64> {
        v.iter().map(|&x| AtomicU64::new(x)).collect()
    }

    fn sweep(t: &mut Tracker, seen: &[u64], now: u64) -> Vec<Transition<u32>> {
        let mut out = Vec::new();
        t.sweep(&table(seen), now, |tr| out.push(tr));
        out
    }

    #[test]
    fn new_then_silent_then_recovered() {
        let mut t = Tracker::new(15 * S);
        assert_eq!(
            sweep(&mut t, &[100 * S], 101 * S),
            [Transition::New { host: 0, age_ns: S }]
        );
        assert_eq!(
            t.census(),
            Census {
                hosts: 1,
                alive: 1,
                silent: 0
            }
        );
        // Exactly at the timeout: still alive.
        assert!(sweep(&mut t, &[100 * S], 115 * S).is_empty());
        assert_eq!(
            sweep(&mut t, &[100 * S], 116 * S),
            [Transition::Silent {
                host: 0,
                silent_for_ns: 16 * S
            }]
        );
        // Reported once, not on every sweep.
        assert!(sweep(&mut t, &[100 * S], 130 * S).is_empty());
        assert_eq!(
            t.census(),
            Census {
                hosts: 1,
                alive: 0,
                silent: 1
            }
        );
        assert_eq!(t.silent_hosts().collect::<Vec<_>>(), [(0, 100 * S)]);
        assert_eq!(
            sweep(&mut t, &[140 * S], 141 * S),
            [Transition::Recovered {
                host: 0,
                silent_for_ns: 40 * S
            }]
        );
        assert_eq!(
            t.census(),
            Census {
                hosts: 1,
                alive: 1,
                silent: 0
            }
        );
        assert!(sweep(&mut t, &[145 * S], 146 * S).is_empty());
        // And it can go silent again.
        assert_eq!(
            sweep(&mut t, &[145 * S], 170 * S),
            [Transition::Silent {
                host: 0,
                silent_for_ns: 25 * S
            }]
        );
    }

    #[test]
    fn stale_first_sighting_is_new_and_silent() {
        let mut t = Tracker::new(15 * S);
        assert_eq!(
            sweep(&mut t, &[100 * S], 200 * S),
            [
                Transition::New {
                    host: 0,
                    age_ns: 100 * S
                },
                Transition::Silent {
                    host: 0,
                    silent_for_ns: 100 * S
                }
            ]
        );
        assert_eq!(
            t.census(),
            Census {
                hosts: 1,
                alive: 0,
                silent: 1
            }
        );
    }

    #[test]
    fn others_are_not_disturbed() {
        let mut t = Tracker::new(15 * S);
        sweep(&mut t, &[1, 1, 1], S);
        // Slot 1 stops; 0 and 2 keep beating every 5 s.
        let mut events = Vec::new();
        for i in 1..=10u64 {
            let now = i * 5 * S;
            events.extend(sweep(&mut t, &[now, 1, now], now + S / 2));
        }
        assert_eq!(
            events,
            [Transition::Silent {
                host: 1,
                silent_for_ns: 15 * S + S / 2 - 1
            }]
        );
        assert_eq!(
            t.census(),
            Census {
                hosts: 3,
                alive: 2,
                silent: 1
            }
        );
    }

    #[test]
    fn slots_not_ready_are_picked_up_later_once() {
        let mut t = Tracker::new(15 * S);
        // Slot 1 is handed out but its first stamp is not written yet.
        assert_eq!(
            sweep(&mut t, &[10 * S, 0, 10 * S], 10 * S),
            [
                Transition::New { host: 0, age_ns: 0 },
                Transition::New { host: 2, age_ns: 0 }
            ]
        );
        assert_eq!(t.census().hosts, 2);
        assert_eq!(
            sweep(&mut t, &[11 * S, 11 * S, 11 * S, 11 * S], 11 * S),
            [
                Transition::New { host: 1, age_ns: 0 },
                Transition::New { host: 3, age_ns: 0 }
            ]
        );
        assert!(sweep(&mut t, &[12 * S; 4], 12 * S).is_empty());
        assert_eq!(
            t.census(),
            Census {
                hosts: 4,
                alive: 4,
                silent: 0
            }
        );
    }

    #[test]
    fn stamp_newer_than_now_is_alive() {
        // A heartbeat stamped between reading the clock and reading the table.
        let mut t = Tracker::new(15 * S);
        assert_eq!(
            sweep(&mut t, &[10 * S + 1], 10 * S),
            [Transition::New { host: 0, age_ns: 0 }]
        );
        assert!(sweep(&mut t, &[10 * S + 1], 11 * S).is_empty());
    }

    #[test]
    fn a_stale_restamp_does_not_recover() {
        // The stamp moved but is still older than the timeout (a heartbeat
        // delayed in a queue): the host stays silent.
        let mut t = Tracker::new(10);
        sweep(&mut t, &[100], 100);
        assert_eq!(
            sweep(&mut t, &[100], 200),
            [Transition::Silent {
                host: 0,
                silent_for_ns: 100
            }]
        );
        assert!(sweep(&mut t, &[150], 200).is_empty());
        assert_eq!(t.census().silent, 1);
        assert_eq!(
            sweep(&mut t, &[195], 200),
            [Transition::Recovered {
                host: 0,
                silent_for_ns: 95
            }]
        );
    }

    #[test]
    fn many_hosts_census() {
        let mut t = Tracker::new(15 * S);
        let now = 100 * S;
        let seen: Vec<u64> = (0..10_000u64)
            .map(|i| if i % 100 == 0 { now - 20 * S } else { now - S })
            .collect();
        let events = sweep(&mut t, &seen, now);
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, Transition::New { .. }))
                .count(),
            10_000
        );
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, Transition::Silent { .. }))
                .count(),
            100
        );
        assert_eq!(
            t.census(),
            Census {
                hosts: 10_000,
                alive: 9_900,
                silent: 100
            }
        );
    }
}
