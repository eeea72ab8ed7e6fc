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

/// Where the tracker's state words live: its own heap, or memory shared
/// with something that outlives the process (the pinned `HB_TRACKER` map).
pub enum Words {
    Heap(Vec<u64>),
    Shared(Box<dyn std::ops::DerefMut<Target = [u64]> + Send>),
}

impl Words {
    fn get(&self) -> &[u64] {
        match self {
            Self::Heap(v) => v,
            Self::Shared(m) => m,
        }
    }
    fn get_mut(&mut self) -> &mut [u64] {
        match self {
            Self::Heap(v) => v,
            Self::Shared(m) => m,
        }
    }
}

// The state words: a header, then `known` and `silent` bits, each
// `bitmap_words(slots)` long.
const LAST_SWEEP: usize = 0;
const READY_UPTO: usize = 1;
const HOSTS: usize = 2;
const HEADER: usize = 4;

/// Words of state a tracker needs for `slots` slots.
pub fn state_words(slots: usize) -> usize {
    HEADER + 2 * bitmap_words(slots)
}

fn bitmap_words(slots: usize) -> usize {
    slots.div_ceil(64)
}

pub struct Tracker {
    timeout_ns: u64,
    /// Header, known bits, silent bits (see `state_words`).
    words: Words,
    /// Length of each bitmap, in words.
    bitmap: usize,
    /// Silent hosts: slot -> last-seen time when they went silent.
    silent: HashMap<u32, u64>,
}

impl Tracker {
    pub fn new(timeout_ns: u64) -> Self {
        Self {
            timeout_ns,
            words: Words::Heap(vec![0; HEADER]),
            bitmap: 0,
            silent: HashMap::new(),
        }
    }

    /// A tracker whose state lives in `words` (`state_words(slots)` long),
    /// carrying on from the state a previous tracker left there, if any:
    /// hosts it knew are not new, hosts it reported silent are still silent.
    /// `last_seen` is the table as it is now.
    ///
    /// A silent host that beat again while no tracker ran is reported
    /// recovered by the next sweep; the time it last beat before that is
    /// gone, so its `silent_for_ns` is a lower bound: it was already silent
    /// at the previous tracker's last sweep.
    pub fn resume(
        timeout_ns: u64,
        mut words: Words,
        slots: usize,
        last_seen: &[AtomicU64],
    ) -> Self {
        let bitmap = bitmap_words(slots);
        let w = words.get_mut();
        assert!(w.len() >= state_words(slots), "tracker state too small");
        let last_sweep = w[LAST_SWEEP];
        let mut silent = HashMap::new();
        if last_sweep != 0 {
            let silent_bits = &w[HEADER + bitmap..HEADER + 2 * bitmap];
            let before_gap = last_sweep.saturating_sub(timeout_ns);
            for (i, &word) in silent_bits.iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    let slot = i * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let seen = last_seen.get(slot).map_or(0, |t| t.load(Ordering::Relaxed));
                    // Beat since the last sweep: the stamp it went silent
                    // with is overwritten; before_gap differs from `seen`,
                    // so the next sweep reports the recovery.
                    let went_silent_at = if seen > last_sweep { before_gap } else { seen };
                    silent.insert(slot as u32, went_silent_at);
                }
            }
        } else {
            w.fill(0);
        }
        Self {
            timeout_ns,
            words,
            bitmap,
            silent,
        }
    }

    /// The state words, for a later `resume`.
    pub fn into_words(self) -> Words {
        self.words
    }

    /// Whether this tracker carries on from an earlier one's state.
    pub fn resumed(&self) -> bool {
        self.words.get()[LAST_SWEEP] != 0
    }

    /// Makes room for `n` slots (heap state only; shared state is sized
    /// for the whole table up front).
    fn grow(&mut self, n: usize) {
        let need = bitmap_words(n);
        if need <= self.bitmap {
            return;
        }
        let Words::Heap(old) = &self.words else {
            panic!("{n} slots do not fit the shared tracker state");
        };
        let need = need.max(self.bitmap * 2);
        let mut new = vec![0; HEADER + 2 * need];
        let b = self.bitmap;
        new[..HEADER].copy_from_slice(&old[..HEADER]);
        new[HEADER..HEADER + b].copy_from_slice(&old[HEADER..HEADER + b]);
        new[HEADER + need..HEADER + need + b].copy_from_slice(&old[HEADER + b..HEADER + 2 * b]);
        self.words = Words::Heap(new);
        self.bitmap = need;
    }

    #[inline]
    fn bit(&self, map: usize, i: usize) -> bool {
        self.words.get()[HEADER + map * self.bitmap + i / 64] & (1 << (i % 64)) != 0
    }

    #[inline]
    fn set_bit(&mut self, map: usize, i: usize, v: bool) {
        let b = self.bitmap;
        let w = &mut self.words.get_mut()[HEADER + map * b + i / 64];
        if v {
            *w |= 1 << (i % 64)
        } else {
            *w &= !(1 << (i % 64))
        }
    }

    /// One sweep over `last_seen` (indexed by slot; 0 = slot not ready).
    pub fn sweep(
        &mut self,
        last_seen: &[AtomicU64],
        now_ns: u64,
        mut emit: impl FnMut(Transition<u32>),
    ) {
        const KNOWN: usize = 0;
        const SILENT: usize = 1;
        let n = last_seen.len();
        self.grow(n);
        let load = |slot: usize| last_seen[slot].load(Ordering::Relaxed);

        // Slots handed out since the last sweep (or not ready then).
        let mut ready_upto = self.words.get()[READY_UPTO] as usize;
        let mut hosts = self.words.get()[HOSTS];
        for slot in ready_upto..n {
            if self.bit(KNOWN, slot) {
                continue;
            }
            let seen = load(slot);
            if seen == 0 {
                continue;
            }
            self.set_bit(KNOWN, slot, true);
            hosts += 1;
            emit(Transition::New {
                host: slot as u32,
                age_ns: now_ns.saturating_sub(seen),
            });
        }
        while ready_upto < n && self.bit(KNOWN, ready_upto) {
            ready_upto += 1;
        }

        // Silent hosts that beat again: few, so checked one by one.
        let timeout = self.timeout_ns;
        let mut recovered = Vec::new();
        self.silent.retain(|&slot, &mut went_silent_at| {
            let seen = load(slot as usize);
            if seen != went_silent_at && now_ns.saturating_sub(seen) <= timeout {
                recovered.push(slot);
                emit(Transition::Recovered {
                    host: slot,
                    silent_for_ns: seen.saturating_sub(went_silent_at),
                });
                false
            } else {
                true
            }
        });
        for slot in recovered {
            self.set_bit(SILENT, slot as usize, false);
        }

        // Hosts that just went silent: the one pass over every slot. Age >
        // timeout is `seen < now - timeout`; the rare hit checks the bits.
        let threshold = now_ns.saturating_sub(timeout);
        for (slot, t) in last_seen.iter().enumerate() {
            let seen = t.load(Ordering::Relaxed);
            if seen < threshold && seen != 0 && !self.bit(SILENT, slot) && self.bit(KNOWN, slot) {
                self.set_bit(SILENT, slot, true);
                self.silent.insert(slot as u32, seen);
                emit(Transition::Silent {
                    host: slot as u32,
                    silent_for_ns: now_ns - seen,
                });
            }
        }
        let w = self.words.get_mut();
        w[READY_UPTO] = ready_upto as u64;
        w[HOSTS] = hosts;
        // Last: a tracker resuming from here trusts the bits above it.
        w[LAST_SWEEP] = now_ns.max(1);
    }

    pub fn census(&self) -> Census {
        let silent = self.silent.len() as u64;
        let hosts = self.words.get()[HOSTS];
        Census {
            hosts,
            alive: hosts - silent,
            silent,
        }
    }

    /// Silent hosts (slot) with the time they were last seen.
    pub fn silent_hosts(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.silent.iter().map(|(&slot, &seen)| (slot, seen))
    }

    /// Heap bytes of the tracker's state (for the memory figure).
    pub fn heap_bytes(&self) -> usize {
        let words = match &self.words {
            Words::Heap(v) => v.capacity() * 8,
            Words::Shared(_) => 0,
        };
        words + self.silent.allocation_size()
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
    fn a_resumed_tracker_reports_only_what_happened_in_the_gap() {
        let slots = 4;
        let words = Words::Heap(vec![0; state_words(slots)]);
        let table4 = |v: [u64; 4]| table(&v);
        let mut a = Tracker::resume(15 * S, words, slots, &table4([0; 4]));
        assert!(!a.resumed());
        let mut events = Vec::new();
        a.sweep(&table(&[10 * S, 10 * S, 10 * S]), 10 * S, |t| {
            events.push(t)
        });
        assert_eq!(events.len(), 3);
        events.clear();
        a.sweep(&table(&[30 * S, 10 * S, 28 * S]), 30 * S, |t| {
            events.push(t)
        });
        assert_eq!(
            events,
            [Transition::Silent {
                host: 1,
                silent_for_ns: 20 * S
            }]
        );
        // The collector stops. While it is gone: host 1 beats again, host 2
        // falls silent, host 3 appears, host 0 carries on.
        let words = a.into_words();
        let now = table4([49 * S, 45 * S, 28 * S, 46 * S]);
        let mut b = Tracker::resume(15 * S, words, slots, &now);
        assert!(b.resumed());
        assert_eq!(b.census().hosts, 3);
        assert_eq!(b.census().silent, 1);
        events.clear();
        b.sweep(&now, 50 * S, |t| events.push(t));
        assert_eq!(
            events,
            [
                Transition::New {
                    host: 3,
                    age_ns: 4 * S
                },
                // Silent since at least the last sweep before the gap minus
                // the timeout (30 - 15): 45 - 15.
                Transition::Recovered {
                    host: 1,
                    silent_for_ns: 30 * S
                },
                Transition::Silent {
                    host: 2,
                    silent_for_ns: 22 * S
                },
            ]
        );
        assert_eq!(
            b.census(),
            Census {
                hosts: 4,
                alive: 3,
                silent: 1
            }
        );
        // A host still silent across a restart is not reported again.
        let words = b.into_words();
        let later = table4([60 * S, 60 * S, 28 * S, 60 * S]);
        let mut c = Tracker::resume(15 * S, words, slots, &later);
        events.clear();
        c.sweep(&later, 61 * S, |t| events.push(t));
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(c.census().silent, 1);
    }

    #[test]
    fn heap_state_grows_without_losing_bits() {
        let mut t = Tracker::new(15 * S);
        sweep(&mut t, &[S; 10], S);
        assert_eq!(sweep(&mut t, &[S; 10], 20 * S).len(), 10);
        // 1000 slots: the bitmaps are re-laid out; the 10 stay silent.
        let mut seen = vec![20 * S; 1000];
        seen[..10].fill(S);
        let events = sweep(&mut t, &seen, 21 * S);
        assert_eq!(events.len(), 990);
        assert!(events.iter().all(|e| matches!(e, Transition::New { .. })));
        assert_eq!(t.census().silent, 10);
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
