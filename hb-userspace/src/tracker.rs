//! Per-host state (alive or silent) and the transitions between states. Pure
//! logic: fed with what the table says and the current monotonic time.

use hashbrown::HashMap;
use hb_common::HostKey;

/// A host state change found by a sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// First heartbeat ever seen from this host; `age_ns` is how long ago.
    New { host: HostKey, age_ns: u64 },
    /// Was alive, its last heartbeat is now older than the timeout.
    Silent { host: HostKey, silent_for_ns: u64 },
    /// Was silent and beats again; `silent_for_ns` is the length of the gap.
    Recovered { host: HostKey, silent_for_ns: u64 },
}

#[derive(Debug, Clone, Copy)]
struct HostState {
    last_seen_ns: u64,
    beats: u64,
    silent: bool,
}

/// Counts at the end of a sweep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    pub hosts: u64,
    pub alive: u64,
    pub silent: u64,
}

pub struct Tracker {
    timeout_ns: u64,
    hosts: HashMap<HostKey, HostState>,
    silent: u64,
}

impl Tracker {
    pub fn new(timeout_ns: u64) -> Self {
        Self {
            timeout_ns,
            hosts: HashMap::new(),
            silent: 0,
        }
    }

    /// Takes one table entry into account. `now_ns` and `last_seen_ns` are
    /// CLOCK_MONOTONIC readings.
    pub fn observe(
        &mut self,
        host: HostKey,
        last_seen_ns: u64,
        beats: u64,
        now_ns: u64,
        mut emit: impl FnMut(Transition),
    ) {
        let age = now_ns.saturating_sub(last_seen_ns);
        let timed_out = age > self.timeout_ns;
        let Some(state) = self.hosts.get_mut(&host) else {
            self.hosts.insert(
                host,
                HostState {
                    last_seen_ns,
                    beats,
                    silent: timed_out,
                },
            );
            emit(Transition::New { host, age_ns: age });
            if timed_out {
                self.silent += 1;
                emit(Transition::Silent {
                    host,
                    silent_for_ns: age,
                });
            }
            return;
        };
        let beat_again = last_seen_ns != state.last_seen_ns || beats != state.beats;
        if beat_again {
            if state.silent && !timed_out {
                state.silent = false;
                self.silent -= 1;
                emit(Transition::Recovered {
                    host,
                    silent_for_ns: last_seen_ns.saturating_sub(state.last_seen_ns),
                });
            }
            state.last_seen_ns = last_seen_ns;
            state.beats = beats;
        }
        if !state.silent && timed_out {
            state.silent = true;
            self.silent += 1;
            emit(Transition::Silent {
                host,
                silent_for_ns: age,
            });
        }
    }

    pub fn census(&self) -> Census {
        let hosts = self.hosts.len() as u64;
        Census {
            hosts,
            alive: hosts - self.silent,
            silent: self.silent,
        }
    }

    /// Silent hosts with the time they were last seen.
    pub fn silent_hosts(&self) -> impl Iterator<Item = (HostKey, u64)> + '_ {
        self.hosts
            .iter()
            .filter(|(_, s)| s.silent)
            .map(|(k, s)| (*k, s.last_seen_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn host(n: u8) -> HostKey {
        HostKey::from_ipv4([10, 0, 0, n])
    }

    fn sweep(t: &mut Tracker, entries: &[(HostKey, u64, u64)], now: u64) -> Vec<Transition> {
        let mut out = Vec::new();
        for &(h, seen, beats) in entries {
            t.observe(h, seen, beats, now, |tr| out.push(tr));
        }
        out
    }

    #[test]
    fn new_then_silent_then_recovered() {
        let mut t = Tracker::new(15 * S);
        let a = host(1);
        assert_eq!(
            sweep(&mut t, &[(a, 100 * S, 1)], 101 * S),
            [Transition::New { host: a, age_ns: S }]
        );
        assert_eq!(t.census(), Census { hosts: 1, alive: 1, silent: 0 });
        // Exactly at the timeout: still alive.
        assert!(sweep(&mut t, &[(a, 100 * S, 1)], 115 * S).is_empty());
        assert_eq!(
            sweep(&mut t, &[(a, 100 * S, 1)], 116 * S),
            [Transition::Silent { host: a, silent_for_ns: 16 * S }]
        );
        // Reported once, not on every sweep.
        assert!(sweep(&mut t, &[(a, 100 * S, 1)], 130 * S).is_empty());
        assert_eq!(t.census(), Census { hosts: 1, alive: 0, silent: 1 });
        assert_eq!(t.silent_hosts().collect::<Vec<_>>(), [(a, 100 * S)]);
        assert_eq!(
            sweep(&mut t, &[(a, 140 * S, 2)], 141 * S),
            [Transition::Recovered { host: a, silent_for_ns: 40 * S }]
        );
        assert_eq!(t.census(), Census { hosts: 1, alive: 1, silent: 0 });
        assert!(sweep(&mut t, &[(a, 145 * S, 3)], 146 * S).is_empty());
    }

    #[test]
    fn stale_first_sighting_is_new_and_silent() {
        let mut t = Tracker::new(15 * S);
        let a = host(1);
        assert_eq!(
            sweep(&mut t, &[(a, 100 * S, 7)], 200 * S),
            [
                Transition::New { host: a, age_ns: 100 * S },
                Transition::Silent { host: a, silent_for_ns: 100 * S }
            ]
        );
        assert_eq!(t.census(), Census { hosts: 1, alive: 0, silent: 1 });
    }

    #[test]
    fn others_are_not_disturbed() {
        let mut t = Tracker::new(15 * S);
        let (a, b, c) = (host(1), host(2), host(3));
        sweep(&mut t, &[(a, 0, 1), (b, 0, 1), (c, 0, 1)], S);
        // b stops; a and c keep beating every 5 s.
        let mut events = Vec::new();
        for i in 1..=10u64 {
            let now = i * 5 * S;
            let entries = [(a, now, i + 1), (b, 0, 1), (c, now, i + 1)];
            events.extend(sweep(&mut t, &entries, now + S / 2));
        }
        assert_eq!(events, [Transition::Silent { host: b, silent_for_ns: 15 * S + S / 2 }]);
        assert_eq!(t.census(), Census { hosts: 3, alive: 2, silent: 1 });
    }

    #[test]
    fn stamp_newer_than_now_is_alive() {
        // A heartbeat stamped between reading the clock and reading the table.
        let mut t = Tracker::new(15 * S);
        let a = host(1);
        assert_eq!(
            sweep(&mut t, &[(a, 10 * S + 1, 1)], 10 * S),
            [Transition::New { host: a, age_ns: 0 }]
        );
    }

    #[test]
    fn beat_seen_by_count_alone_still_recovers() {
        // Coarse clock: two stamps can carry the same time; the count moves.
        let mut t = Tracker::new(10);
        let a = host(1);
        sweep(&mut t, &[(a, 100, 1)], 100);
        assert_eq!(
            sweep(&mut t, &[(a, 100, 1)], 200),
            [Transition::Silent { host: a, silent_for_ns: 100 }]
        );
        // Same stamp, more beats, but still old: stays silent.
        assert!(sweep(&mut t, &[(a, 100, 2)], 200).is_empty());
        assert_eq!(t.census().silent, 1);
    }
}
