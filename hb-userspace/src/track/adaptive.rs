//! `--timeout auto`: each host's timeout from its learned heartbeat timing
//! (`hb_common::timing`), and how suspicious a silent host's silence is.
//!
//! **Timeout.** A host that has `MIN_SAMPLES` intervals learned is silent
//! once its last heartbeat is older than
//!
//! ```text
//!     2 × mean + max(G, K × deviation), bounded to [--min-timeout, --max-timeout]
//! ```
//!
//! one mean for the next heartbeat, one more for a lost one (a single lost
//! UDP datagram is no outage), and a margin for jitter: K mean deviations,
//! at least G (for hosts so regular that their deviation is nearly 0, and
//! for the sweep's and the scheduler's own jitter). Before `MIN_SAMPLES`
//! intervals (a new host, or one whose slot was reused) the fixed bound
//! `--max-timeout` applies. See docs/config.md for why K and G are what
//! they are (measured with the quality benchmark). Intervals that span a
//! lost heartbeat are not learned (Karn's rule, in `hb_common::timing`):
//! the count is of intervals learned, and a loss leaves mean and
//! deviation, and so the timeout, as they were.
//!
//! **Suspicion.** A silent host's `phi`, as the accrual failure detector
//! of Hayashibara et al. (Akka, Cassandra) defines it: −log10 of the
//! probability that an interval is at least this long, with intervals
//! normal around the learned mean with a standard deviation σ =
//! max(deviation, G), and the normal tail approximated by the logistic
//! function Akka uses: with y = (t − mean) / σ and
//! e = exp(−y × (1.5976 + 0.070566 × y²)),
//! phi = −log10(e / (1 + e)) for t > mean, −log10(1 − 1 / (1 + e)) below.
//! phi 1 is a 10% chance of a heartbeat still coming, 3 is 0.1%, 8 is
//! 10⁻⁸. None without a learned mean.

use std::{fmt, str::FromStr, time::Duration};

use hb_common::Timing;

/// Mean deviations of margin.
pub const K: u64 = 4;
/// The least margin, and the least standard deviation of the suspicion.
pub const G_NS: u64 = 250_000_000;
/// Intervals learned before a host's own timeout applies.
pub const MIN_SAMPLES: u32 = 3;

/// `--timeout` and a group's `timeout`: a duration, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    Fixed(Duration),
    Auto,
}

impl Timeout {
    pub fn is_auto(self) -> bool {
        self == Self::Auto
    }

    /// The longest this timeout lets a host go unheard: the duration, or
    /// `max` (`--max-timeout`) for `auto`.
    pub fn bound(self, max: Duration) -> Duration {
        match self {
            Self::Fixed(d) => d,
            Self::Auto => max,
        }
    }
}

impl FromStr for Timeout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim() == "auto" {
            return Ok(Self::Auto);
        }
        crate::clock::parse_duration(s)
            .map(Self::Fixed)
            .map_err(|e| format!("{e} (or \"auto\": learned per host)"))
    }
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(d) => write!(f, "{}", humantime::format_duration(*d)),
            Self::Auto => f.write_str("auto"),
        }
    }
}

/// The bounds of `auto` timeouts, ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub min_ns: u64,
    pub max_ns: u64,
}

impl Policy {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min_ns: min.as_nanos() as u64,
            max_ns: max.as_nanos() as u64,
        }
    }

    /// The timeout of a host with `timing` (see the module's description).
    #[inline]
    pub fn timeout_ns(&self, timing: Timing) -> u64 {
        if timing.samples() < MIN_SAMPLES {
            return self.max_ns;
        }
        let margin = (K * timing.dev_ns()).max(G_NS);
        (2 * timing.mean_ns() + margin).clamp(self.min_ns, self.max_ns.max(self.min_ns))
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self::new(DEFAULT_MIN, DEFAULT_MAX)
    }
}

pub const DEFAULT_MIN: Duration = Duration::from_secs(2);
pub const DEFAULT_MAX: Duration = Duration::from_secs(300);

/// A host's learned period and jitter for output: (mean, deviation) in
/// ms, None before its first interval.
pub fn period_jitter_ms(timing: Timing) -> Option<(u64, u64)> {
    (timing.samples() > 0).then(|| (timing.mean_ns() / 1_000_000, timing.dev_ns() / 1_000_000))
}

/// The suspicion level of a host last heard `silent_ns` ago (see the
/// module's description); None before its first interval.
pub fn phi(timing: Timing, silent_ns: u64) -> Option<f64> {
    if timing.samples() == 0 {
        return None;
    }
    let mean = timing.mean_ns() as f64;
    let sigma = (timing.dev_ns().max(G_NS)) as f64;
    let y = (silent_ns as f64 - mean) / sigma;
    let exponent = y * (1.5976 + 0.070566 * y * y);
    let phi = if y > 0.0 {
        // −log10(e / (1 + e)) with e = exp(−exponent), in logs: e underflows
        // long before a silent host's phi stops growing.
        (exponent + (-exponent).exp().ln_1p()) / std::f64::consts::LN_10
    } else {
        let e = (-exponent).exp();
        -(1.0 - 1.0 / (1.0 + e)).log10()
    };
    Some(phi.max(0.0))
}

#[cfg(test)]
mod tests {
    use hb_common::timing::TICK_NS;

    use super::*;

    const MS: u64 = 1_000_000;

    /// A timing learned from `n` intervals of `ticks` each: mean `ticks`,
    /// deviation halving by 3/4 from `ticks / 2` (RFC 6298).
    fn steady(ticks: u32, n: u32) -> Timing {
        (0..n).fold(Timing::NONE, |t, _| t.update(ticks))
    }

    fn policy() -> Policy {
        Policy::new(Duration::from_secs(2), Duration::from_secs(300))
    }

    #[test]
    fn auto_parses_and_prints() {
        assert_eq!("auto".parse::<Timeout>(), Ok(Timeout::Auto));
        assert_eq!(
            "15s".parse::<Timeout>(),
            Ok(Timeout::Fixed(Duration::from_secs(15)))
        );
        assert!("often".parse::<Timeout>().unwrap_err().contains("auto"));
        assert_eq!(Timeout::Auto.to_string(), "auto");
        assert_eq!(
            Timeout::Auto.bound(Duration::from_secs(300)),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn the_fixed_bound_until_enough_samples() {
        let p = policy();
        assert_eq!(p.timeout_ns(Timing::NONE), 300_000 * MS);
        assert_eq!(p.timeout_ns(steady(954, MIN_SAMPLES - 1)), 300_000 * MS);
        assert_ne!(p.timeout_ns(steady(954, MIN_SAMPLES)), 300_000 * MS);
    }

    #[test]
    fn two_means_and_a_margin_of_k_deviations() {
        let p = policy();
        // 10 s a beat (9537 ticks), steady for 40 intervals: mean 9537
        // ticks, deviation 9537/2 × (3/4)^39 (fixed point: 0 by then).
        let t = steady(9537, 40);
        assert_eq!(t.mean_x8(), 9537 * 8);
        let dev = t.dev_ns();
        let expect = 2 * 9537 * TICK_NS + (4 * dev).max(250 * MS);
        assert_eq!(p.timeout_ns(t), expect);
        // A deviation of 1 s: 4 s of margin.
        let jittery = Timing(u64::from(9537u32 * 8) | (u64::from(954u32 * 4) << 28) | (10 << 56));
        assert_eq!(
            p.timeout_ns(jittery),
            2 * 9537 * TICK_NS + 4 * 954 * TICK_NS
        );
        // Steady: the margin is G.
        let regular = Timing(u64::from(9537u32 * 8) | (10 << 56));
        assert_eq!(p.timeout_ns(regular), 2 * 9537 * TICK_NS + 250 * MS);
    }

    #[test]
    fn bounded_by_min_and_max() {
        let p = policy();
        // 100 ms a beat: 2 × 100 ms + 250 ms < 2 s.
        let fast = Timing(u64::from(95u32 * 8) | (10 << 56));
        assert_eq!(p.timeout_ns(fast), 2_000 * MS);
        // An hour a beat: past 5 min.
        let slow = Timing(u64::from(3_433_000u32 * 8) | (10 << 56));
        assert_eq!(p.timeout_ns(slow), 300_000 * MS);
    }

    #[test]
    fn period_and_jitter_in_ms() {
        assert_eq!(period_jitter_ms(Timing::NONE), None);
        // One interval of 1000 ticks: mean 1000 ticks, deviation 500.
        let t = Timing::NONE.update(1000);
        assert_eq!(
            period_jitter_ms(t),
            Some((1000 * TICK_NS / MS, 500 * TICK_NS / MS))
        );
    }

    #[test]
    fn phi_by_hand() {
        // Mean 1000 ticks (1048.576 ms), deviation 500 ticks (524.288 ms).
        let t = Timing::NONE.update(1000);
        let (mean, sigma) = (1000.0 * TICK_NS as f64, 500.0 * TICK_NS as f64);
        assert_eq!(phi(Timing::NONE, 5_000 * MS), None);
        // At the mean: y = 0, e = 1, phi = −log10(1/2) = 0.30103.
        assert!((phi(t, mean as u64).unwrap() - std::f64::consts::LOG10_2).abs() < 1e-4);
        // One σ past the mean: y = 1, e = exp(−1.668166) = 0.188600,
        // phi = −log10(0.188600 / 1.188600) = 0.79950.
        let one = phi(t, (mean + sigma) as u64).unwrap();
        assert!((one - 0.79950).abs() < 1e-4, "{one}");
        // Three σ: y = 3, exponent 3 × (1.5976 + 0.635094) = 6.698082,
        // e = 0.0012320, phi = −log10(0.0012320 / 1.0012320) = 2.90948.
        let three = phi(t, (mean + 3.0 * sigma) as u64).unwrap();
        assert!((three - 2.90948).abs() < 1e-4, "{three}");
        // One σ before the mean: y = −1, e = exp(1.668166) = 5.302191,
        // phi = −log10(1 − 1/6.302191) = 0.07503.
        let early = phi(t, (mean - sigma) as u64).unwrap();
        assert!((early - 0.07503).abs() < 1e-4, "{early}");
        // Far out it keeps growing (no infinity): y = 100 gives
        // 100 × (1.5976 + 705.66) / ln 10 = 30715.81.
        let far = phi(t, (mean + 100.0 * sigma) as u64).unwrap();
        assert!((far - 30715.81).abs() < 0.01, "{far}");
    }

    #[test]
    fn phi_sigma_is_at_least_g() {
        // Steady: deviation 0, σ = 250 ms; 250 ms past the mean is y = 1.
        let t = Timing(u64::from(954u32 * 8) | (10 << 56));
        let at = t.mean_ns() + 250 * MS;
        assert!((phi(t, at).unwrap() - 0.79950).abs() < 1e-4);
    }
}
