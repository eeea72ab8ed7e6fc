//! Time as the host table keeps it, and what it learns of each host's
//! heartbeat period. Shared so that the XDP program, the socket table and
//! the collector compute and read them the same way.
//!
//! **Ticks.** A last-seen time is a `u32` of ticks: CLOCK_MONOTONIC ns
//! `>> TICK_SHIFT` (1.048576 ms), counted from the table's epoch (pinned
//! with it, so a restarted collector reads the same clock) and wrapping
//! after about 52 days. Differences are taken with wrapping arithmetic, so
//! an age is right as long as it is below 2^31 ticks (about 26 days); 0
//! means "no heartbeat yet", and a stamp that lands on 0 is written as 1.
//! A shift, not a division: the program computes it per heartbeat.
//!
//! **Timing.** Per host, the intervals between heartbeats are folded into
//! a smoothed mean and mean deviation as RFC 6298 does for round-trip
//! times (α = 1/8, β = 1/4), in fixed point as Linux's TCP keeps them:
//! the mean scaled by 8, the deviation by 4, so that each update is shifts
//! and adds. One `u64`: mean×8 (28 bits), deviation×4 (26 bits: it stays
//! below `(MAX_INTERVAL + 1) × 4` = 2^26), the long intervals in a row
//! (2 bits, the top of the deviation's 28-bit field: entries pinned before
//! they had this use read as 0, unless their deviation was the largest
//! possible, 4.9 hours, which reads as 1 long interval and a deviation of
//! 0: harmless), samples (8 bits, saturating).
//!
//! **Karn's rule.** An interval that spans a lost heartbeat (about twice
//! the period) says nothing about the period, as a retransmitted
//! segment's round trip says nothing about the RTT (Karn and Partridge,
//! and RFC 6298 section 3): folded in, it would add a quarter of a whole
//! period to the deviation, and the timeout (four deviations) would stay
//! long for several intervals after each loss. So once `KARN_AFTER`
//! intervals are folded in, an interval longer than 1.5 × the mean is
//! *long*: the first `KARN_SKIPS` of a run of long intervals are not
//! folded in (only counted), every further one is (a host whose period
//! really grew, or one losing heartbeats all the time, must still be
//! learned), and the first interval that is not long ends the run. One
//! long gap (an outage, a lost heartbeat), or two in a row (two separate
//! losses, 1 in 10,000 intervals at 1% loss), thus leave what was learned
//! as it was.
//! Before `KARN_AFTER` intervals the rule cannot tell, but the first
//! interval may itself span a lost heartbeat: a second interval under 2/3
//! of the first starts the learning over from the second (as the first
//! interval starts it), or a 5 s host whose first interval was 10 s would
//! keep a long timeout for ten intervals.

/// Last-seen ticks are CLOCK_MONOTONIC ns shifted right by this much.
pub const TICK_SHIFT: u32 = 20;
/// Nanoseconds in a tick.
pub const TICK_NS: u64 = 1 << TICK_SHIFT;

/// The tick of `now_ns` on a table whose epoch is `epoch_ns` (never 0:
/// 0 is "not ready").
#[inline(always)]
pub const fn tick(now_ns: u64, epoch_ns: u64) -> u32 {
    let t = (now_ns.wrapping_sub(epoch_ns) >> TICK_SHIFT) as u32;
    if t == 0 { 1 } else { t }
}

/// Ticks from `then` to `now` (wrapping; right below 2^31 ticks).
#[inline(always)]
pub const fn ticks_since(now: u32, then: u32) -> u32 {
    now.wrapping_sub(then)
}

/// Age of a stamp `then` at `now`, in ticks: as `ticks_since`, but 0 for a
/// stamp ahead of `now` (a stamp and the clock that judges it are read at
/// different moments, on different CPUs), so that it never reads as an age
/// of 52 days.
#[inline(always)]
pub const fn age(now: u32, then: u32) -> u32 {
    let d = ticks_since(now, then);
    if (d as i32) < 0 { 0 } else { d }
}

/// A duration in ns as whole ticks, for comparing with ages: an age of `a`
/// ticks exceeds `ns` exactly when `a > ticks_floor(ns)`. Capped at
/// `i32::MAX` (ages are right below 2^31 ticks), so `u64::MAX` is "never".
#[inline(always)]
pub const fn ticks_floor(ns: u64) -> u32 {
    let t = ns >> TICK_SHIFT;
    if t > i32::MAX as u64 {
        i32::MAX as u32
    } else {
        t as u32
    }
}

const FIELD_BITS: u32 = 28;
const FIELD_MASK: u64 = (1 << FIELD_BITS) - 1;
/// The deviation's bits: 26 (it is at most `MAX_INTERVAL << 2` < 2^26).
const DEV_MASK: u64 = (1 << (FIELD_BITS - 2)) - 1;
/// Where the count of long intervals in a row is (see Karn's rule in the
/// module's description): the top 2 bits of the deviation's field.
const RUN_SHIFT: u32 = 2 * FIELD_BITS - 2;
/// The count of long intervals in a row, in place.
const RUN_MASK: u64 = 3 << RUN_SHIFT;
/// Where the count of intervals folded in is.
const SAMPLES_SHIFT: u32 = 2 * FIELD_BITS;
/// Long intervals in a row left out before the next one is folded in.
pub const KARN_SKIPS: u32 = 2;
/// Intervals folded in before Karn's rule applies: one interval is too
/// little to call another one long (two heartbeats a tick apart at start
/// would make the real period look long).
pub const KARN_AFTER: u32 = 2;
/// Longest interval folded in, in ticks (about 4.9 hours): a longer gap
/// counts as this, so that the scaled mean and deviation fit their fields.
pub const MAX_INTERVAL: u32 = (1 << 24) - 1;

/// A host's learned heartbeat timing (see the module's description).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timing(pub u64);

impl Timing {
    /// Nothing learned yet.
    pub const NONE: Self = Self(0);

    /// Intervals folded in (saturates at 255).
    #[inline(always)]
    pub const fn samples(self) -> u32 {
        (self.0 >> SAMPLES_SHIFT) as u32
    }

    /// Smoothed mean interval, in ticks × 8.
    #[inline(always)]
    pub const fn mean_x8(self) -> u32 {
        (self.0 & FIELD_MASK) as u32
    }

    /// Smoothed mean deviation, in ticks × 4.
    #[inline(always)]
    pub const fn dev_x4(self) -> u32 {
        ((self.0 >> FIELD_BITS) & DEV_MASK) as u32
    }

    /// Long intervals in a row up to the last one, up to `KARN_SKIPS`
    /// (Karn's rule, see the module's description).
    #[inline(always)]
    pub const fn long_run(self) -> u32 {
        ((self.0 >> RUN_SHIFT) & 3) as u32
    }

    /// Whether the last interval was long.
    #[inline(always)]
    pub const fn last_long(self) -> bool {
        self.long_run() != 0
    }

    /// Smoothed mean interval, ns.
    pub const fn mean_ns(self) -> u64 {
        (self.mean_x8() as u64 * TICK_NS) >> 3
    }

    /// Smoothed mean deviation, ns.
    pub const fn dev_ns(self) -> u64 {
        (self.dev_x4() as u64 * TICK_NS) >> 2
    }

    /// This timing with one more interval, `interval` ticks, folded in,
    /// unless Karn's rule leaves it out (see the module's description).
    /// An interval of 0 (two heartbeats within a tick: a duplicate, not a
    /// period) changes nothing.
    ///
    /// Run by the XDP program on every heartbeat, so written for it: in
    /// `u64` throughout (the BPF target has no 32-bit arithmetic that LLVM
    /// uses here: every `u32` result costs two shifts to clear its top
    /// half), and each field's change added to the word in place instead
    /// of the fields taken apart and packed again, which also keeps the
    /// chain from one heartbeat's word to the next short. No change
    /// carries into the next field: each new value fits its field (see
    /// the module's description for the bounds).
    #[inline(always)]
    pub const fn update(self, interval: u32) -> Self {
        if interval == 0 {
            return self;
        }
        let r = if interval > MAX_INTERVAL {
            MAX_INTERVAL
        } else {
            interval
        } as u64;
        let w = self.0;
        let n = w >> SAMPLES_SHIFT;
        let mean_x8 = w & FIELD_MASK;
        // The first interval, or a second under 2/3 of the first (which
        // then spanned a lost heartbeat: start over from this one):
        // 3 × r × 8 < 2 × mean × 8.
        if n == 0 || (n == 1 && (r << 4) + (r << 3) < mean_x8 << 1) {
            // Once a host: the fold below is laid out as the straight path.
            core::hint::cold_path();
            // RFC 6298 2.2: SRTT = R, RTTVAR = R/2.
            return Self((r << 3) | (r << (FIELD_BITS + 1)) | ((n + 1) << SAMPLES_SHIFT));
        }
        // RFC 6298 2.3, with the error against the old mean for both:
        // RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R|; SRTT = 7/8 SRTT + 1/8 R.
        // As changes: mean × 8 by r - mean, deviation × 4 by
        // err - deviation × 4 / 4 (either may be negative: wrapping).
        let mean = mean_x8 >> 3;
        // Without a branch (an abs, shifts and xors): r is on either side
        // of the mean at random, which a branch would mispredict half the
        // time. Both are under 2^25: no overflow as i64.
        let err = (r as i64 - mean as i64).unsigned_abs();
        let dev_x4 = (w >> FIELD_BITS) & DEV_MASK;
        let mut v = w
            .wrapping_add(r)
            .wrapping_sub(mean)
            .wrapping_add(err.wrapping_sub(dev_x4 >> 2) << FIELD_BITS);
        if n < 255 {
            v += 1 << SAMPLES_SHIFT;
        }
        let run = w & RUN_MASK;
        // Long: r > 1.5 × mean, compared at the mean's scale (r × 8 is at
        // most 2^27, 1.5 × mean × 8 below 2^28).
        if n >= KARN_AFTER as u64 && (r << 3) > mean_x8 + (mean_x8 >> 1) {
            core::hint::cold_path();
            if run < (KARN_SKIPS as u64) << RUN_SHIFT {
                return Self(w + (1 << RUN_SHIFT));
            }
            // A run stays at KARN_SKIPS while it lasts: the rest is
            // folded in.
            return Self(v);
        }
        Self(v - run)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{format, iter::repeat_n, vec::Vec};

    use super::*;

    /// RFC 6298 with Karn's rule in floating point, the reference: mean,
    /// deviation, intervals folded in, long intervals in a row.
    #[derive(Clone, Copy, Debug, Default)]
    struct Reference {
        mean: f64,
        dev: f64,
        samples: u32,
        run: u32,
    }

    impl Reference {
        fn step(self, r: u32) -> Self {
            let r = f64::from(r.min(MAX_INTERVAL));
            if self.samples == 0 || (self.samples == 1 && r < self.mean * 2.0 / 3.0) {
                return Self {
                    mean: r,
                    dev: r / 2.0,
                    samples: self.samples + 1,
                    run: 0,
                };
            }
            let long = self.samples >= 2 && r > 1.5 * self.mean;
            if long && self.run < 2 {
                return Self {
                    run: self.run + 1,
                    ..self
                };
            }
            Self {
                mean: 0.875 * self.mean + 0.125 * r,
                dev: 0.75 * self.dev + 0.25 * (self.mean - r).abs(),
                samples: (self.samples + 1).min(255),
                run: if long { self.run } else { 0 },
            }
        }

        /// `t` is within a tick of this (truncation loses under one scaled
        /// unit per step; it settles within a tick of the real values).
        fn agrees(&self, t: Timing, what: &str) {
            let m = f64::from(t.mean_x8()) / 8.0;
            let d = f64::from(t.dev_x4()) / 4.0;
            assert!(
                (m - self.mean).abs() <= 1.0 + self.mean * 1e-6,
                "{what}: mean {m} vs {}",
                self.mean
            );
            assert!(
                (d - self.dev).abs() <= 1.0 + self.dev * 1e-6,
                "{what}: deviation {d} vs {}",
                self.dev
            );
            assert_eq!(t.samples(), self.samples, "{what}: samples");
            assert_eq!(t.long_run(), self.run, "{what}: long run");
        }
    }

    /// The reference and `Timing` fed the same intervals, compared at each.
    fn follow(intervals: impl IntoIterator<Item = u32>, what: &str) -> (Timing, Reference) {
        let (mut t, mut real) = (Timing::NONE, Reference::default());
        for (i, r) in intervals.into_iter().enumerate() {
            t = t.update(r);
            real = real.step(r);
            real.agrees(t, &format!("{what}, interval {i} ({r})"));
        }
        (t, real)
    }

    #[test]
    fn follows_rfc_6298_and_karn_within_a_tick() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut long = 0;
        // Not a period of 1 tick: truncation then keeps the mean up to 7/8
        // of a tick high, and whether 2 ticks are long is a matter of it.
        for period in [7u32, 954, 4768, 28_610, 1 << 20] {
            let intervals = (0..300).map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // ±10% jitter, now and then one or two lost heartbeats (a
                // double or triple gap), now and then two losses in a row.
                let jitter = (seed % 21) as i64 - 10;
                let r = (i64::from(period) * (100 + jitter) / 100).max(1) as u32;
                match (seed >> 8) % 40 {
                    0 | 1 => r * 2,
                    2 => r * 3,
                    _ => r,
                }
            });
            let intervals: Vec<u32> = intervals.collect();
            let (t, _) = follow(intervals.iter().copied(), &format!("period {period}"));
            assert_eq!(t.samples(), 255);
            long += intervals.iter().filter(|&&r| r > period * 3 / 2).count();
        }
        assert!(long > 30, "the losses happened: {long}");
    }

    #[test]
    fn a_lost_heartbeat_changes_nothing_learned() {
        let steady = (0..20).fold(Timing::NONE, |t, _| t.update(954));
        let lost = steady.update(2 * 954);
        assert!(lost.last_long());
        assert_eq!(
            (lost.mean_x8(), lost.dev_x4(), lost.samples()),
            (steady.mean_x8(), steady.dev_x4(), steady.samples())
        );
        // The next interval is folded in as if the long one never was.
        assert_eq!(lost.update(954), steady.update(954));
        // Two heartbeats lost in one interval: one long interval as well.
        assert_eq!(steady.update(3 * 954).update(954), steady.update(954));
        // 1.5 × the mean is not long; a tick more is.
        assert!(!steady.update(954 * 3 / 2).last_long());
        assert_eq!(steady.update(954 * 3 / 2).samples(), steady.samples() + 1);
        assert!(steady.update(954 * 3 / 2 + 1).last_long());
    }

    #[test]
    fn an_outage_leaves_the_period_learned() {
        let steady = (0..20).fold(Timing::NONE, |t, _| t.update(954));
        // Five hours away (past MAX_INTERVAL), or an interval that wrapped.
        for gap in [MAX_INTERVAL, MAX_INTERVAL + 1, u32::MAX] {
            let back = steady.update(gap);
            assert_eq!(back.mean_x8(), steady.mean_x8(), "{gap}");
            assert_eq!(back.update(954), steady.update(954), "{gap}");
        }
    }

    #[test]
    fn two_losses_in_a_row_are_left_out_the_third_is_learned() {
        let steady = (0..20).fold(Timing::NONE, |t, _| t.update(954));
        let twice = steady.update(2 * 954).update(2 * 954);
        assert_eq!(twice.long_run(), 2);
        assert_eq!(
            (twice.mean_x8(), twice.dev_x4(), twice.samples()),
            (steady.mean_x8(), steady.dev_x4(), steady.samples())
        );
        assert_eq!(twice.update(954), steady.update(954));
        let thrice = twice.update(2 * 954);
        assert_eq!(thrice.long_run(), 2, "a run stays at KARN_SKIPS");
        assert_eq!(thrice.samples(), steady.samples() + 1);
        assert!(thrice.mean_x8() > steady.mean_x8());
        follow(
            repeat_n(954, 20).chain([1908, 1908, 954, 1908, 1908, 1908, 1908, 954, 1908, 954]),
            "in a row",
        );
    }

    #[test]
    fn a_longer_period_is_learned_two_intervals_late() {
        // 1 s, then 5 s: the first two 5 s intervals are left out, every
        // further one is folded in until 5 s is no longer long.
        let (t, _) = follow(repeat_n(954, 40).chain(repeat_n(4768, 60)), "1 s then 5 s");
        assert!((f64::from(t.mean_x8()) / 8.0 - 4768.0).abs() < 20.0);
        let once = (0..40).fold(Timing::NONE, |t, _| t.update(954));
        let two = once.update(4768).update(4768);
        assert_eq!(two.samples(), once.samples(), "the first two left out");
        let three = two.update(4768);
        assert_eq!(three.samples(), once.samples() + 1, "the third folded in");
        let four = three.update(4768);
        assert_eq!(four.samples(), once.samples() + 2, "and the fourth");
        assert!(four.last_long());
        // Once folded in, 2 × mean + 4 deviations covers the new period.
        assert!(2 * three.mean_ns() + 4 * three.dev_ns() > 4768 * TICK_NS);
    }

    #[test]
    fn a_shorter_period_is_learned_at_once() {
        let (t, _) = follow(repeat_n(4768, 40).chain(repeat_n(954, 60)), "5 s then 1 s");
        assert_eq!(t.samples(), 100);
        assert!(!t.last_long());
        assert!((f64::from(t.mean_x8()) / 8.0 - 954.0).abs() < 2.0);
    }

    #[test]
    fn the_first_intervals_are_all_folded_in() {
        // Two heartbeats a tick apart, then a period of 1000 ticks: with
        // one interval learned, the next is folded in however long.
        let t = Timing::NONE.update(1);
        assert_eq!(t.samples(), 1);
        let t = t.update(1000);
        assert_eq!(t.samples(), 2);
        assert!(!t.last_long());
        // From KARN_AFTER on, a long one is left out; and then learned.
        let (t, _) = follow([1, 1000, 1000, 1000, 1000, 1000], "a start burst");
        assert!(f64::from(t.mean_x8()) / 8.0 > 300.0);
        assert_eq!(Timing::NONE.update(u32::MAX).samples(), 1);
    }

    #[test]
    fn a_first_interval_that_spans_a_loss_is_started_over() {
        // 10 s, then 5 s: the first spanned a lost heartbeat.
        let t = Timing::NONE.update(9537).update(4768);
        assert_eq!(
            (t.mean_x8(), t.dev_x4(), t.samples(), t.last_long()),
            (4768 << 3, 4768 << 1, 2, false)
        );
        let (t, _) = follow(
            [
                9537, 4768, 9537, 4768, 4768, 4768, 4768, 4768, 4768, 4768, 4768,
            ],
            "10 s first",
        );
        // Learned as 5 s, its deviation decaying from 2.5 s (not from 5 s
        // with a mean of 10 s).
        assert!((f64::from(t.mean_x8()) / 8.0 - 4768.0).abs() < 10.0);
        assert!(t.dev_ns() < 2_500_000_000 * 3 / 10, "{}", t.dev_ns());
        // Not shorter than 2/3: learned as usual.
        assert_eq!(Timing::NONE.update(900).update(601).samples(), 2);
        assert_eq!(
            Timing::NONE.update(900).update(601).mean_x8(),
            900 * 7 + 601
        );
        // Only the second interval: later a short one is learned.
        follow([4768, 4768, 4768, 1000, 1000], "shorter later");
    }

    #[test]
    fn entries_pinned_before_the_run_count_read_as_they_were() {
        // The layout before the count: deviation up to 2^26, samples up to
        // 255. Any deviation below 2^26 reads as it was, with no run.
        let old = |dev_x4: u32| {
            Timing(
                u64::from(1000u32 << 3)
                    | (u64::from(dev_x4) << FIELD_BITS)
                    | (255 << (2 * FIELD_BITS)),
            )
        };
        for dev_x4 in [0, 4000, (1 << 26) - 1] {
            let t = old(dev_x4);
            assert_eq!((t.dev_x4(), t.long_run(), t.samples()), (dev_x4, 0, 255));
            assert_eq!(t.mean_x8(), 8000);
        }
        // The largest it could have (a deviation of 4.9 hours): a run of
        // one and no deviation, harmless.
        let t = old(1 << 26);
        assert_eq!((t.dev_x4(), t.long_run(), t.samples()), (0, 1, 255));
        // This layout keeps the deviation below 2^26 and the run at most
        // KARN_SKIPS, whatever comes in.
        let mut t = Timing::NONE;
        for i in 0..3000 {
            t = t.update(if i % 6 < 3 { u32::MAX } else { 1 });
            assert!(t.dev_x4() <= MAX_INTERVAL << 2 && t.dev_x4() < 1 << 26);
            assert!(t.long_run() <= KARN_SKIPS);
            assert!(t.mean_x8() >> 3 <= MAX_INTERVAL);
        }
    }

    /// `Timing::update` as first written (fields taken apart and packed
    /// again, `u32` arithmetic; the code of e4b8202 as it was, as a free
    /// function): the rules, plainly. The program's faster form must give
    /// the same word, bit for bit.
    fn update_plainly(t: Timing, interval: u32) -> Timing {
        const fn pack(mean_x8: u32, dev_x4: u32, run: u32, samples: u32) -> Timing {
            Timing(
                (mean_x8 as u64 & FIELD_MASK)
                    | ((dev_x4 as u64 & DEV_MASK) << FIELD_BITS)
                    | ((run as u64) << RUN_SHIFT)
                    | ((samples as u64) << (2 * FIELD_BITS)),
            )
        }
        if interval == 0 {
            return t;
        }
        let r = if interval > MAX_INTERVAL {
            MAX_INTERVAL
        } else {
            interval
        };
        let n = t.samples();
        let samples = if n < 255 { n + 1 } else { 255 };
        let (mean_x8, dev_x4) = (t.mean_x8(), t.dev_x4());
        if n == 0 || (n == 1 && (r << 4) + (r << 3) < mean_x8 << 1) {
            return pack(r << 3, r << 1, 0, samples);
        }
        let long = n >= KARN_AFTER && (r << 3) > mean_x8 + (mean_x8 >> 1);
        let run = t.long_run();
        if long && run < KARN_SKIPS {
            return Timing(t.0 + (1 << RUN_SHIFT));
        }
        let mean = mean_x8 >> 3;
        let err = r.abs_diff(mean);
        let dev_x4 = dev_x4 - (dev_x4 >> 2) + err;
        let mean_x8 = mean_x8 - (mean_x8 >> 3) + r;
        pack(mean_x8, dev_x4, if long { run } else { 0 }, samples)
    }

    #[test]
    fn the_programs_update_is_the_plain_one_bit_for_bit() {
        // Any state a host can be in (and every run count the two bits
        // hold), against intervals near the rules' edges and anywhere.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut checked = 0;
        for _ in 0..200_000 {
            // Up to 2^27 + 7: a first interval capped at MAX_INTERVAL
            // gives 8 × MAX_INTERVAL, an older hb's cap 2^27.
            let mean_x8 = (next() % ((1 << 27) + 8)) as u32 >> (next() % 28);
            let dev_x4 = ((next() % (1 << 26)) as u32) >> (next() % 26);
            let run = (next() % 4) as u32;
            let n = [0, 1, 2, 3, 254, 255, (next() % 256) as u32][(next() % 7) as usize];
            let t = Timing(
                u64::from(mean_x8)
                    | (u64::from(dev_x4) << FIELD_BITS)
                    | (u64::from(run) << RUN_SHIFT)
                    | (u64::from(n) << (2 * FIELD_BITS)),
            );
            let mean = mean_x8 >> 3;
            let (j, any) = ((next() % 3) as u32, (next() as u32) >> (next() % 32));
            let near = |v: u32| v.saturating_add(j).saturating_sub(1);
            for r in [
                0,
                1,
                near(mean),
                near(mean + mean / 2),
                near(mean * 2 / 3),
                near(mean * 2),
                MAX_INTERVAL,
                MAX_INTERVAL + 1,
                u32::MAX,
                any,
            ] {
                assert_eq!(
                    t.update(r),
                    update_plainly(t, r),
                    "{t:?} (mean×8 {mean_x8}, dev×4 {dev_x4}, run {run}, n {n}) + {r}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 2_000_000);
    }

    #[test]
    fn a_zero_interval_is_no_sample() {
        let t = Timing::NONE.update(5000);
        assert_eq!(t.update(0), t);
        assert_eq!(Timing::NONE.update(0), Timing::NONE);
    }

    #[test]
    fn long_gaps_stay_in_their_fields() {
        let mut t = Timing::NONE;
        for _ in 0..1000 {
            t = t.update(u32::MAX);
        }
        assert_eq!(t.mean_x8() >> 3, MAX_INTERVAL);
        assert!(t.dev_x4() <= (MAX_INTERVAL << 2));
        let back = t.update(1);
        assert!(back.mean_x8() < t.mean_x8());
    }

    #[test]
    fn ticks_wrap() {
        let epoch = 1_000_000_000;
        assert_eq!(tick(epoch, epoch), 1, "0 is reserved for not ready");
        assert_eq!(tick(epoch + 5 * TICK_NS, epoch), 5);
        let just_before = tick(epoch + (u32::MAX as u64) * TICK_NS, epoch);
        assert_eq!(just_before, u32::MAX);
        let after = tick(epoch + (u32::MAX as u64 + 10) * TICK_NS, epoch);
        assert_eq!(after, 9);
        assert_eq!(ticks_since(after, just_before), 10);
        assert_eq!(age(after, just_before), 10);
        assert_eq!(age(just_before, after), 0, "ahead of now: no age");
    }

    #[test]
    fn an_age_exceeds_a_duration_by_whole_ticks() {
        let ns = 15_000_000_000u64;
        let t = ticks_floor(ns);
        assert!(u64::from(t) * TICK_NS <= ns && u64::from(t + 1) * TICK_NS > ns);
        assert_eq!(ticks_floor(u64::MAX), i32::MAX as u32);
    }
}
