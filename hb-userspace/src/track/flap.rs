//! Flap damping: a host that keeps going silent and coming back is reported
//! once as `flapping`, its `silent` and `recovered` held back until it has
//! been steady again (`flapping_end`, then its state if that is not the
//! one last reported).
//!
//! As Nagios and Icinga judge it: over a window of a host's last `WINDOW`
//! checks, the share that saw a state change, weighted towards the recent
//! (the oldest check weighs 0.8, the newest 1.2, linearly between; the
//! weights sum to `WINDOW`). A host starts flapping when the share reaches
//! `--flap-high` percent, stops when it falls below `--flap-low`. hb has no
//! per-host checks, so a check is a step of the host's own timeout (the
//! shortest time in which it can change state and back), taken when it
//! first changed state: a 5 s client against a 3 s timeout changes state
//! in nearly every step (flapping), a host whose link loses two heartbeats
//! in a row now and then in few.
//!
//! Memory: only hosts that changed state in their last `WINDOW` steps
//! (and flapping ones) have an entry; a window without changes is dropped.
//! Nothing of this outlives the process: a restarted collector starts
//! every host's window afresh (see docs/reference.md).

use hashbrown::HashMap;

use super::tracker::Transition;

/// Checks in a host's window.
pub const WINDOW: u32 = 21;
const MASK: u32 = (1 << WINDOW) - 1;

/// The state-change share of `bits` (bit 0 the newest check), percent.
pub fn share(bits: u32) -> f64 {
    // Weights 1.2 (newest) down to 0.8 (oldest) in steps of 0.02.
    let sum: f64 = (0..WINDOW)
        .filter(|i| bits & (1 << i) != 0)
        .map(|i| 1.2 - 0.02 * f64::from(i))
        .sum();
    sum * 100.0 / f64::from(WINDOW)
}

#[derive(Debug, Clone)]
struct Entry {
    /// A bit a check: it saw a state change (bit 0: the current check).
    bits: u32,
    /// Start of the current check, and the length of a check.
    step_at: u64,
    step_ns: u64,
    flapping: bool,
    /// The state the output was last told (silent or not).
    told_silent: bool,
    /// The latest transition held back, and when.
    held: Option<(Transition<u32>, u64)>,
}

impl Entry {
    /// Moves the window to the check `now` falls in.
    fn advance(&mut self, now: u64) {
        let steps = now.saturating_sub(self.step_at) / self.step_ns;
        if steps > 0 {
            self.bits = if steps >= u64::from(WINDOW) {
                0
            } else {
                (self.bits << steps) & MASK
            };
            self.step_at += steps * self.step_ns;
        }
    }
}

/// What to do with a host's transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Report it.
    Report,
    /// The host starts flapping: report that instead (share, percent).
    Start(u32),
    /// The host is flapping: hold it back.
    Hold,
}

/// The end of a host's flapping, found at a sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    pub slot: u32,
    /// The share when it ended, percent.
    pub share: u32,
    /// Its state, if it is not the one last reported: the latest
    /// transition held back, its `silent_for_ns` brought up to now for a
    /// `Silent`.
    pub state: Option<Transition<u32>>,
}

#[derive(Debug, Default)]
pub struct Flap {
    high: f64,
    low: f64,
    hosts: HashMap<u32, Entry>,
    flapping: usize,
}

impl Flap {
    /// Thresholds in percent; `high` 0: no damping.
    pub fn new(high: u8, low: u8) -> Self {
        let mut f = Self::default();
        f.set(high, low);
        f
    }

    /// New thresholds (a reload). Turned off, flapping hosts are let go at
    /// the next sweep as if they had calmed down.
    pub fn set(&mut self, high: u8, low: u8) {
        self.high = f64::from(high);
        self.low = f64::from(low.min(high));
    }

    pub fn enabled(&self) -> bool {
        self.high > 0.0
    }

    /// `t` (a `Silent` or `Recovered`), found at `now` for a host whose
    /// timeout is `step_ns`.
    pub fn transition(&mut self, t: Transition<u32>, now: u64, step_ns: u64) -> Verdict {
        let silent = matches!(t, Transition::Silent { .. });
        if !self.enabled() {
            // Turned off: what is reported now is what was told.
            if let Some(e) = self.hosts.get_mut(t.host()) {
                e.told_silent = silent;
                e.held = None;
            }
            return Verdict::Report;
        }
        let e = self.hosts.entry(*t.host()).or_insert_with(|| Entry {
            bits: 0,
            step_at: now,
            step_ns: step_ns.max(1),
            flapping: false,
            told_silent: !silent,
            held: None,
        });
        e.advance(now);
        e.bits |= 1;
        if e.flapping {
            e.held = Some((t, now));
            return Verdict::Hold;
        }
        let share = share(e.bits);
        if share >= self.high {
            e.flapping = true;
            e.held = Some((t, now));
            self.flapping += 1;
            return Verdict::Start(share.round() as u32);
        }
        e.told_silent = silent;
        Verdict::Report
    }

    /// End of a sweep at `now`: moves every window on, drops those without
    /// changes, and returns the hosts whose flapping ended.
    pub fn settle(&mut self, now: u64) -> Vec<End> {
        let mut ended = Vec::new();
        let (low, enabled) = (self.low, self.enabled());
        let mut stopped = 0;
        self.hosts.retain(|&slot, e| {
            e.advance(now);
            let share = share(e.bits);
            if e.flapping && (!enabled || share < low || e.bits == 0) {
                e.flapping = false;
                stopped += 1;
                let state = e.held.take().and_then(|(t, at)| {
                    let silent = matches!(t, Transition::Silent { .. });
                    (silent != e.told_silent).then_some(match t {
                        Transition::Silent {
                            host,
                            silent_for_ns,
                        } => Transition::Silent {
                            host,
                            silent_for_ns: silent_for_ns + now.saturating_sub(at),
                        },
                        other => other,
                    })
                });
                if let Some(t) = state {
                    e.told_silent = matches!(t, Transition::Silent { .. });
                }
                ended.push(End {
                    slot,
                    share: share.round() as u32,
                    state,
                });
            }
            e.flapping || e.bits != 0
        });
        self.flapping -= stopped;
        ended.sort_unstable_by_key(|e| e.slot);
        ended
    }

    pub fn is_flapping(&self, slot: u32) -> bool {
        self.hosts.get(&slot).is_some_and(|e| e.flapping)
    }

    /// Hosts flapping now.
    pub fn flapping(&self) -> usize {
        self.flapping
    }

    /// Hosts with a window (for the memory figure: few).
    pub fn tracked(&self) -> usize {
        self.hosts.len()
    }

    /// `slot`'s host is forgotten (or no longer watched): its window goes.
    pub fn forget(&mut self, slot: u32) {
        if let Some(e) = self.hosts.remove(&slot)
            && e.flapping
        {
            self.flapping -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn silent(host: u32) -> Transition<u32> {
        Transition::Silent {
            host,
            silent_for_ns: 3 * S,
        }
    }

    fn recovered(host: u32) -> Transition<u32> {
        Transition::Recovered {
            host,
            silent_for_ns: 2 * S,
        }
    }

    #[test]
    fn the_share_weighs_the_recent_more() {
        assert_eq!(share(0), 0.0);
        assert!((share(MASK) - 100.0).abs() < 1e-9);
        // The newest check alone: 1.2 / 21.
        assert!((share(1) - 120.0 / 21.0).abs() < 1e-9);
        // The oldest alone: 0.8 / 21.
        assert!((share(1 << 20) - 80.0 / 21.0).abs() < 1e-9);
        // Every other check, newest first: 11 checks of weights 1.2, 1.16,
        // ..., 0.8: 11 × 1.0 = 11 of 21.
        assert!((share(0b1_0101_0101_0101_0101_0101) - 1100.0 / 21.0).abs() < 1e-9);
    }

    #[test]
    fn a_host_changing_state_every_check_flaps_once_then_calms_down() {
        // A 5 s client against a 3 s timeout: silent at 3 s, back at 5 s,
        // every 5 s.
        let mut f = Flap::new(50, 25);
        let step = 3 * S;
        let mut verdicts = Vec::new();
        for i in 0..12u64 {
            let base = 10 * S + i * 5 * S;
            verdicts.push(f.transition(silent(7), base + 3 * S, step));
            assert!(f.settle(base + 3 * S).is_empty());
            verdicts.push(f.transition(recovered(7), base + 5 * S, step));
            assert!(f.settle(base + 5 * S).is_empty());
        }
        let start = verdicts
            .iter()
            .position(|v| matches!(v, Verdict::Start(_)))
            .expect("flaps");
        // Before: reported; share after k changed checks of 21 past 50%.
        assert!(verdicts[..start].iter().all(|&v| v == Verdict::Report));
        assert!(verdicts[start + 1..].iter().all(|&v| v == Verdict::Hold));
        assert_eq!(f.flapping(), 1);
        assert!(f.is_flapping(7));
        // It beats steadily from 70 s on: the window empties, check by
        // check; it ends once under 25%, its state (alive) the one held
        // back last and not told (the told state is the last reported).
        // Silent and recovered alternate, silent first.
        let last_reported_silent = (start - 1) % 2 == 0;
        let mut ends = Vec::new();
        let mut t = 70 * S;
        while ends.is_empty() && t < 200 * S {
            t += S;
            ends = f.settle(t);
        }
        assert_eq!(ends.len(), 1, "ended by {t}");
        let end = ends[0];
        assert_eq!(end.slot, 7);
        assert!(end.share < 25);
        // The held `recovered` is reported only if the last reported was
        // a `silent`.
        assert_eq!(end.state.is_some(), last_reported_silent);
        assert_eq!(f.flapping(), 0);
        // Its window drops once it has no change in it.
        while f.tracked() > 0 && t < 300 * S {
            t += S;
            assert!(f.settle(t).is_empty());
        }
        assert_eq!(f.tracked(), 0);
    }

    #[test]
    fn a_held_silent_is_reported_at_the_end_with_its_silence_so_far() {
        let mut f = Flap::new(10, 5);
        // Two changes in one 10 s check: 2 × ... the first reaches 1.2/21
        // = 5.7%, under 10; the next check's reaches 5.6 + 5.7 > 10.
        assert_eq!(f.transition(silent(1), 0, 10 * S), Verdict::Report);
        assert_eq!(
            f.transition(recovered(1), 10 * S, 10 * S),
            Verdict::Start(11)
        );
        assert_eq!(f.transition(silent(1), 12 * S, 10 * S), Verdict::Hold);
        // Still silent when it ends (both changes out of the window, 21
        // checks on): reported silent, for 3 s then + the time since.
        let ends = f.settle(12 * S + 220 * S);
        assert_eq!(
            ends,
            [End {
                slot: 1,
                share: 0,
                state: None,
            }],
            "the last told state was silent: nothing to report"
        );
        let mut f = Flap::new(10, 5);
        f.transition(recovered(2), 0, 10 * S);
        assert_eq!(f.transition(silent(2), 10 * S, 10 * S), Verdict::Start(11));
        let ends = f.settle(10 * S + 220 * S);
        assert_eq!(
            ends,
            [End {
                slot: 2,
                share: 0,
                state: Some(Transition::Silent {
                    host: 2,
                    silent_for_ns: 3 * S + 220 * S
                }),
            }]
        );
    }

    #[test]
    fn rare_changes_never_flap_and_leave_nothing() {
        // Silent and back once a minute against a 2 s step: 2 changes of
        // 21 checks at most, under 12%.
        let mut f = Flap::new(50, 25);
        for i in 0..10u64 {
            let at = i * 60 * S;
            assert_eq!(f.transition(silent(3), at, 2 * S), Verdict::Report);
            assert_eq!(
                f.transition(recovered(3), at + 3 * S, 2 * S),
                Verdict::Report
            );
            f.settle(at + 3 * S);
        }
        f.settle(700 * S);
        assert_eq!(f.tracked(), 0);
    }

    #[test]
    fn off_reports_everything() {
        let mut f = Flap::new(0, 0);
        for i in 0..50u64 {
            assert_eq!(f.transition(silent(1), i * S, S), Verdict::Report);
            assert_eq!(f.transition(recovered(1), i * S, S), Verdict::Report);
        }
        assert_eq!(f.tracked(), 0);
    }

    #[test]
    fn turned_off_lets_flapping_hosts_go() {
        let mut f = Flap::new(5, 1);
        assert!(matches!(f.transition(silent(4), 0, S), Verdict::Start(_)));
        f.set(0, 0);
        let ends = f.settle(S / 2);
        assert_eq!(ends.len(), 1);
        // Its `silent` was held back: reported now.
        assert_eq!(
            ends[0].state,
            Some(Transition::Silent {
                host: 4,
                silent_for_ns: 3 * S + S / 2
            })
        );
        assert_eq!(f.flapping(), 0);
    }
}
