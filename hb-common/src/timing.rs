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
//! and adds. One `u64`: mean×8 (28 bits), deviation×4 (28 bits), samples
//! (8 bits, saturating).

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
/// Longest interval folded in, in ticks (about 4.9 hours): a longer gap
/// counts as this, so that the scaled mean always fits its field.
pub const MAX_INTERVAL: u32 = 1 << 24;

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
        (self.0 >> (2 * FIELD_BITS)) as u32
    }

    /// Smoothed mean interval, in ticks × 8.
    #[inline(always)]
    pub const fn mean_x8(self) -> u32 {
        (self.0 & FIELD_MASK) as u32
    }

    /// Smoothed mean deviation, in ticks × 4.
    #[inline(always)]
    pub const fn dev_x4(self) -> u32 {
        ((self.0 >> FIELD_BITS) & FIELD_MASK) as u32
    }

    /// Smoothed mean interval, ns.
    pub const fn mean_ns(self) -> u64 {
        (self.mean_x8() as u64 * TICK_NS) >> 3
    }

    /// Smoothed mean deviation, ns.
    pub const fn dev_ns(self) -> u64 {
        (self.dev_x4() as u64 * TICK_NS) >> 2
    }

    #[inline(always)]
    const fn pack(mean_x8: u32, dev_x4: u32, samples: u32) -> Self {
        Self(
            (mean_x8 as u64 & FIELD_MASK)
                | ((dev_x4 as u64 & FIELD_MASK) << FIELD_BITS)
                | ((samples as u64) << (2 * FIELD_BITS)),
        )
    }

    /// This timing with one more interval, `interval` ticks, folded in.
    /// An interval of 0 (two heartbeats within a tick: a duplicate, not a
    /// period) changes nothing.
    #[inline(always)]
    pub const fn update(self, interval: u32) -> Self {
        if interval == 0 {
            return self;
        }
        let r = if interval > MAX_INTERVAL {
            MAX_INTERVAL
        } else {
            interval
        };
        let n = self.samples();
        let samples = if n < 255 { n + 1 } else { 255 };
        if n == 0 {
            // RFC 6298 2.2: SRTT = R, RTTVAR = R/2.
            return Self::pack(r << 3, r << 1, samples);
        }
        let (mean_x8, dev_x4) = (self.mean_x8(), self.dev_x4());
        // RFC 6298 2.3, with the error against the old mean for both:
        // RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R|; SRTT = 7/8 SRTT + 1/8 R.
        let mean = mean_x8 >> 3;
        let err = r.abs_diff(mean);
        let dev_x4 = dev_x4 - (dev_x4 >> 2) + err;
        let mean_x8 = mean_x8 - (mean_x8 >> 3) + r;
        Self::pack(mean_x8, dev_x4, samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6298 in floating point, the reference: one step.
    fn reference(first: bool, (srtt, rttvar): (f64, f64), r: u32) -> (f64, f64) {
        let r = f64::from(r);
        if first {
            (r, r / 2.0)
        } else {
            (
                0.875 * srtt + 0.125 * r,
                0.75 * rttvar + 0.25 * (srtt - r).abs(),
            )
        }
    }

    #[test]
    fn follows_rfc_6298_within_a_tick() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for period in [1u32, 7, 954, 4768, 28_610, 1 << 20] {
            let mut t = Timing::NONE;
            let mut real = (0.0, 0.0);
            for i in 0..300 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // ±10% jitter, now and then a lost heartbeat (a double gap).
                let jitter = (seed % 21) as i64 - 10;
                let mut r = (i64::from(period) * (100 + jitter) / 100).max(1) as u32;
                if seed.is_multiple_of(100) {
                    r *= 2;
                }
                real = reference(i == 0, real, r);
                t = t.update(r);
                let (mean, dev) = real;
                let m = f64::from(t.mean_x8()) / 8.0;
                let d = f64::from(t.dev_x4()) / 4.0;
                // Truncation loses under one scaled unit per step; it
                // settles within a tick of the real values.
                assert!(
                    (m - mean).abs() <= 1.0 + mean * 1e-6,
                    "{period}: {m} vs {mean}"
                );
                assert!(
                    (d - dev).abs() <= 1.0 + dev * 1e-6,
                    "{period}: {d} vs {dev}"
                );
            }
            assert_eq!(t.samples(), 255);
        }
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
