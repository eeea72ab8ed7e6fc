//! Whether the collector can trust what it sees. A collector that stops
//! receiving (interface down, traffic rerouted, the machine stalled) sees
//! every host fall silent; paging for the whole fleet would be wrong and
//! useless. So:
//!
//! - a host that went silent is trusted only once the collector has heard
//!   some heartbeat after the host's timeout ran out (so it could hear, when
//!   this host had a heartbeat due and none came), or if it was the only
//!   host alive (nothing to compare with); until then it is held;
//! - the collector is *blind* while its interface is down, after a sweep
//!   that came more than half a timeout late, and when it heard nothing at
//!   all for a whole timeout while at least two hosts were alive; and for
//!   one timeout after the last of these, so that hosts get the time to be
//!   heard again before they count as silent;
//! - while blind, it raises `CollectorBlind` and holds back new host
//!   alerts (held hosts still silent when it sees again are alerted then).
//!
//! Pure logic on monotonic nanoseconds; the notifier feeds it every sweep.

use std::time::Duration;

/// Why the collector is blind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blindness {
    LinkDown,
    Stalled,
    Deaf,
}

impl Blindness {
    pub fn reason(self) -> &'static str {
        match self {
            Self::LinkDown => "its interface is down",
            Self::Stalled => "a sweep came more than half a timeout late",
            Self::Deaf => "no heartbeat at all for a whole timeout while hosts were alive",
        }
    }
}

/// What a sweep found, as far as sight goes.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    /// Monotonic time of the sweep.
    pub now: u64,
    /// Heartbeats recorded since the previous sweep.
    pub heartbeats: u64,
    /// Hosts alive after the sweep.
    pub alive: u64,
    /// Whether the interface is up; `None` where not known.
    pub link_up: Option<bool>,
}

/// Fewest hosts alive for "heard nothing" to mean "deaf" rather than "the
/// one host went silent".
const WITNESSES: u64 = 2;

#[derive(Debug)]
pub struct Sight {
    timeout: u64,
    period: u64,
    prev_sweep: Option<u64>,
    /// Hosts alive after the previous sweep, and after the last.
    alive_before: u64,
    last_alive: u64,
    /// Start of the latest sweep period in which heartbeats came.
    heard_at: Option<u64>,
    /// Hosts alive at the end of that period.
    alive_when_heard: u64,
    /// Blind until then, and why.
    blind: Option<(u64, Blindness)>,
}

impl Sight {
    pub fn new(timeout: Duration, period: Duration) -> Self {
        Self {
            timeout: timeout.as_nanos() as u64,
            period: period.as_nanos() as u64,
            prev_sweep: None,
            alive_before: 0,
            last_alive: 0,
            heard_at: None,
            alive_when_heard: 0,
            blind: None,
        }
    }

    /// Takes in a sweep; call before judging its transitions with
    /// [`trusts`](Self::trusts). Returns whether the collector is blind.
    pub fn observe(&mut self, f: Facts) -> Option<Blindness> {
        let mut evidence = None;
        if f.link_up == Some(false) {
            evidence = Some(Blindness::LinkDown);
        }
        if let Some(prev) = self.prev_sweep {
            if f.now.saturating_sub(prev) > self.period + self.timeout / 2 {
                evidence = evidence.or(Some(Blindness::Stalled));
            }
            if f.heartbeats > 0 {
                self.heard_at = Some(prev);
                self.alive_when_heard = f.alive;
            }
        }
        if let Some(heard) = self.heard_at
            && self.alive_when_heard >= WITNESSES
            && f.now.saturating_sub(heard) > self.timeout + self.period
        {
            evidence = evidence.or(Some(Blindness::Deaf));
        }
        if let Some(why) = evidence {
            self.blind = Some((f.now + self.timeout, why));
        }
        if self.blind.is_some_and(|(until, _)| f.now >= until) {
            self.blind = None;
        }
        self.alive_before = self.last_alive;
        self.last_alive = f.alive;
        self.prev_sweep = Some(f.now);
        self.blind.map(|(_, why)| why)
    }

    /// Whether a silent host last heard at `last_seen` may be alerted (as
    /// of the sweep last observed). Never while blind.
    pub fn trusts(&self, last_seen: u64) -> bool {
        if self.blind.is_some() {
            return false;
        }
        self.heard_at
            .is_some_and(|heard| heard >= last_seen + self.timeout)
            || self.alive_before < WITNESSES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    /// timeout 10 s, sweep 1 s.
    fn sight() -> Sight {
        Sight::new(Duration::from_secs(10), Duration::from_secs(1))
    }

    fn facts(now_s: u64, heartbeats: u64, alive: u64) -> Facts {
        Facts {
            now: now_s * S,
            heartbeats,
            alive,
            link_up: Some(true),
        }
    }

    /// Sweeps every second from `from` to `to` (inclusive), with heartbeats
    /// and `alive` hosts; returns the blindness at the last.
    fn run(s: &mut Sight, from: u64, to: u64, heartbeats: u64, alive: u64) -> Option<Blindness> {
        let mut last = None;
        for t in from..=to {
            last = s.observe(facts(t, heartbeats, alive));
        }
        last
    }

    #[test]
    fn a_host_silent_while_others_beat_is_trusted() {
        let mut s = sight();
        assert_eq!(run(&mut s, 0, 30, 100, 50), None);
        // Heartbeats came from 29 s to 30 s: after a timeout from 19 s.
        assert!(s.trusts(19 * S));
        assert!(!s.trusts(19 * S + 1));
    }

    #[test]
    fn a_host_heard_last_of_all_is_held() {
        let mut s = sight();
        run(&mut s, 0, 20, 100, 50);
        // Nothing heard since 20 s: a host last heard within the last
        // period with heartbeats is not trusted...
        run(&mut s, 21, 29, 0, 50);
        // Heard last from 19 s to 20 s: a host whose timeout ran out after
        // 19 s is held...
        assert!(!s.trusts(9 * S + S / 2));
        // ...one whose timeout ran out before is not.
        assert!(s.trusts(9 * S));
    }

    #[test]
    fn the_only_host_going_silent_is_trusted() {
        let mut s = sight();
        run(&mut s, 0, 10, 1, 1);
        assert_eq!(run(&mut s, 11, 40, 0, 0), None, "one host: never deaf");
        let mut s = sight();
        run(&mut s, 0, 10, 1, 1);
        s.observe(facts(11, 0, 0));
        assert!(s.trusts(10 * S), "it was the only one alive");
        let mut s = sight();
        run(&mut s, 0, 10, 2, 2);
        s.observe(facts(11, 0, 1));
        assert!(!s.trusts(10 * S), "another was alive: held");
    }

    #[test]
    fn hearing_nothing_for_a_timeout_is_deaf_then_sight_returns_after_a_timeout() {
        let mut s = sight();
        run(&mut s, 0, 20, 100, 50);
        // Heard last in the period from 19 s to 20 s.
        assert_eq!(run(&mut s, 21, 30, 0, 50), None);
        assert_eq!(run(&mut s, 31, 31, 0, 0), Some(Blindness::Deaf));
        assert!(!s.trusts(0));
        // Heard again from 39 s: deaf until 39 s, then blind for a timeout.
        assert_eq!(run(&mut s, 32, 39, 0, 0), Some(Blindness::Deaf));
        assert_eq!(run(&mut s, 40, 48, 100, 50), Some(Blindness::Deaf));
        assert_eq!(run(&mut s, 49, 49, 100, 50), None);
        assert!(s.trusts(30 * S));
    }

    #[test]
    fn a_late_sweep_blinds_for_a_timeout() {
        let mut s = sight();
        run(&mut s, 0, 10, 100, 50);
        // 1 s + 5 s is the limit: 6 s late is not over it, 7 s is.
        assert_eq!(run(&mut s, 16, 16, 100, 50), None);
        assert_eq!(run(&mut s, 23, 23, 100, 50), Some(Blindness::Stalled));
        assert_eq!(run(&mut s, 24, 32, 100, 50), Some(Blindness::Stalled));
        assert_eq!(run(&mut s, 33, 33, 100, 50), None);
    }

    #[test]
    fn a_link_down_blinds_until_a_timeout_after_it_is_up() {
        let mut s = sight();
        run(&mut s, 0, 10, 100, 50);
        let down = Facts {
            link_up: Some(false),
            ..facts(11, 0, 50)
        };
        assert_eq!(s.observe(down), Some(Blindness::LinkDown));
        assert!(!s.trusts(0));
        assert_eq!(run(&mut s, 12, 20, 100, 50), Some(Blindness::LinkDown));
        assert_eq!(run(&mut s, 21, 21, 100, 50), None);
    }
}
