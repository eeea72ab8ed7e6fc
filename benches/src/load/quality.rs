//! Detection quality of fixed timeouts and of `--timeout auto`: a fleet mixing 1 s, 5 s and 30 s
//! periods, each interval drawn within ±10% of the period, 1% of the
//! heartbeats lost at random (never sent), and a share of the hosts that
//! stop for good at a random moment. Reported per period class: the time
//! from a stopped host's last heartbeat to its `silent` line (as this
//! program receives it from hb's stdout), and the false `silent` events
//! (of hosts still beating) per 1,000 host-hours of beating.
//!
//! One collector per timeout in turn, the same fleet and the same seed
//! for each (losses and stops included), so that `auto` and the fixed
//! timeouts are compared on the same traffic. Flap damping is at hb's
//! default; `flapping` lines are counted per class.

/// A timeout the scenario runs a collector with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    Fixed(Duration),
    /// `--timeout auto --max-timeout MAX`.
    Auto {
        max: Duration,
    },
}

impl Timeout {
    /// The longest a host may go unheard before it is silent.
    fn bound(self) -> Duration {
        match self {
            Self::Fixed(d) => d,
            Self::Auto { max } => max,
        }
    }

    /// The sweep hb chooses for this timeout when none is given (a quarter
    /// of the shortest timeout, at most 1 s: config.md), here at most
    /// `cap` (hb-load's `--sweep`): each collector runs as an operator's
    /// would.
    fn sweep(self, cap: Duration) -> Duration {
        let shortest = match self {
            Self::Fixed(d) => d,
            // hb's --min-timeout default: the collector is started without one.
            Self::Auto { .. } => hb_userspace::DEFAULT_MIN_TIMEOUT,
        };
        (shortest / 4).min(hb_userspace::DEFAULT_SWEEP).min(cap)
    }

    fn is_auto(self) -> bool {
        matches!(self, Self::Auto { .. })
    }

    /// `15s`, or `auto` (whose --max-timeout is `auto_max`).
    pub fn parse(s: &str, auto_max: Duration) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(Self::Auto { max: auto_max }),
            d => hb_userspace::parse_duration(d).map(Self::Fixed),
        }
    }
}

impl std::fmt::Display for Timeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fixed(d) => write!(f, "{} s", d.as_secs_f64()),
            Self::Auto { max } => write!(f, "auto (max {} s)", max.as_secs_f64()),
        }
    }
}

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    fmt::Write as _,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::{
    collector::{Collector, Kind, Settings},
    fleet::Fleet,
    generator::Generator,
    scenarios::Config,
    signals,
    topology::Topology,
};

/// The period classes, host `i` in class `i % 3`.
pub const PERIODS: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
];
/// Each interval is the period times a factor within 1 ± JITTER.
const JITTER: f64 = 0.10;
/// Share of heartbeats lost.
const LOSS: f64 = 0.01;
/// One host in STOP_EVERY stops (`i % STOP_EVERY == STOP_EVERY - 1`: every
/// class has its share).
const STOP_EVERY: u32 = 10;
/// No host stops before this: every host has beaten a few times.
const WARMUP: Duration = Duration::from_secs(45);

#[derive(Debug, Clone)]
pub struct Quality {
    pub hosts: u32,
    pub duration: Duration,
    pub timeouts: Vec<Timeout>,
    pub seed: u64,
}

/// Figures of one period class under one timeout.
#[derive(Debug, Clone, Default)]
struct Class {
    hosts: u32,
    stopped: u32,
    /// Time to detection of each stopped host detected, ms.
    detect_ms: Vec<f64>,
    /// Stopped hosts without a `silent` line after their last heartbeat.
    missed: u32,
    false_silent: u64,
    /// Hours of beating (first heartbeat to stop or end), all hosts.
    host_hours: f64,
    sent: u64,
    lost: u64,
    /// `flapping` lines.
    flapping: u64,
}

/// A small deterministic generator (xorshift64*): the same fleet for every
/// timeout.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub fn run(cfg: &Config, q: &Quality) -> Result<String> {
    let stop_window = |t: Duration| {
        // Stopped hosts stop early enough to be detected before the end:
        // a 30 s period plus the timeout plus sweeps and slack.
        q.duration
            .checked_sub(t + PERIODS[2] + Duration::from_secs(10))
            .filter(|&end| end > WARMUP + Duration::from_secs(30))
    };
    if q.hosts < 30 {
        bail!("quality: at least 30 hosts");
    }
    let mut md = String::new();
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let _ = writeln!(
        md,
        "### Detection quality, fixed timeouts and auto ({date})\n\n\
         {} hosts, a third each beating every 1 s, 5 s and 30 s (each interval within ±{:.0}%), \
         {:.0}% of heartbeats lost at random, one host in {STOP_EVERY} stopping for good at a \
         random moment after {} s; {} s of traffic per timeout; each collector sweeps at hb's \
         default for its timeout (at most {} ms). Detection: \
         from a stopped host's last heartbeat sent to its `silent` line read from hb's stdout. \
         False: `silent` lines of hosts still beating, per 1,000 host-hours of beating. \
         Flapping: `flapping` lines (flap damping at hb's default, 50%/25%).\n",
        q.hosts,
        JITTER * 100.0,
        LOSS * 100.0,
        WARMUP.as_secs(),
        q.duration.as_secs(),
        cfg.sweep.as_millis(),
    );
    let _ = writeln!(
        md,
        "| timeout | period | hosts | host-hours | stopped | detected in (median / p95 / max) | missed | false `silent` | per 1,000 host-hours | flapping |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for &timeout in &q.timeouts {
        let Some(stop_end) = stop_window(timeout.bound()) else {
            bail!(
                "quality: --quality-duration {:?} too short for timeout {timeout:?}",
                q.duration
            );
        };
        let classes = run_one(cfg, q, timeout, stop_end)?;
        for (c, p) in classes.iter().zip(PERIODS) {
            let mut d = c.detect_ms.clone();
            d.sort_by(f64::total_cmp);
            let pct = |f: f64| {
                if d.is_empty() {
                    f64::NAN
                } else {
                    d[((d.len() - 1) as f64 * f).round() as usize]
                }
            };
            let _ = writeln!(
                md,
                "| {} (sweep {} ms) | {} s | {} | {:.1} | {} | {:.1} / {:.1} / {:.1} s | {} | {} | {:.0} | {} |",
                timeout,
                timeout.sweep(cfg.sweep).as_millis(),
                p.as_secs(),
                c.hosts,
                c.host_hours,
                c.stopped,
                pct(0.5) / 1e3,
                pct(0.95) / 1e3,
                pct(1.0) / 1e3,
                c.missed,
                c.false_silent,
                c.false_silent as f64 / c.host_hours * 1000.0,
                c.flapping,
            );
            log::info!(
                "quality: timeout {timeout:?}, period {p:?}: sent {}, lost {}",
                c.sent,
                c.lost
            );
        }
    }
    Ok(md)
}

/// One run: a fresh topology and collector with `timeout`.
fn run_one(cfg: &Config, q: &Quality, timeout: Timeout, stop_end: Duration) -> Result<[Class; 3]> {
    let fleet = Fleet::new(cfg.ipv6_percent);
    let tag: String = format!("q{}", cfg.tag).chars().take(10).collect();
    let topo = Topology::new(&tag)?;
    let settings = Settings {
        hb: cfg.hb.clone(),
        iface: topo.a_if.clone(),
        port: cfg.port,
        ingest: None,
        timeout: timeout.bound(),
        sweep: timeout.sweep(cfg.sweep),
        max_hosts: q.hosts * 2 + 1024,
        inventory: None,
        extra: match timeout {
            Timeout::Fixed(_) => Vec::new(),
            Timeout::Auto { max } => vec![
                "--timeout".into(),
                "auto".into(),
                "--max-timeout".into(),
                format!("{}ms", max.as_millis()),
            ],
        },
    };
    let mut generator = Generator::open(&topo.generator, &topo.b_if, fleet, cfg.port, cfg.batch)?;
    let collector = Collector::start(&topo.collector, &settings, fleet, q.hosts)?;
    collector.keep_timeline();

    let n = q.hosts as usize;
    let mut rng = Rng(q.seed | 1);
    let start = Instant::now();
    let at = |d: Duration| start + d;
    // Per host: when it stops (None: never), its first and last heartbeat.
    let stop: Vec<Option<Instant>> = (0..q.hosts)
        .map(|i| {
            let u = rng.unit();
            (i % STOP_EVERY == STOP_EVERY - 1).then(|| at(WARMUP + (stop_end - WARMUP).mul_f64(u)))
        })
        .collect();
    let mut first: Vec<Option<Instant>> = vec![None; n];
    let mut last: Vec<Option<Instant>> = vec![None; n];
    // Stopped hosts' heartbeats as sent, to say why a detection was slow.
    let mut sends: Vec<Vec<Instant>> = vec![Vec::new(); n];
    let mut classes: [Class; 3] = Default::default();
    let mut due: BinaryHeap<Reverse<(Instant, u32)>> = (0..q.hosts)
        .map(|i| {
            let p = PERIODS[(i % 3) as usize];
            Reverse((at(p.mul_f64(rng.unit())), i))
        })
        .collect();
    let end = at(q.duration);
    let mut batch = Vec::new();
    while Instant::now() < end {
        signals::check()?;
        let now = Instant::now();
        batch.clear();
        while let Some(&Reverse((t, i))) = due.peek()
            && t <= now
        {
            due.pop();
            let c = (i % 3) as usize;
            if stop[i as usize].is_some_and(|s| t >= s) {
                continue;
            }
            if rng.unit() < LOSS {
                classes[c].lost += 1;
            } else {
                batch.push(i);
            }
            let p = PERIODS[c].mul_f64(1.0 + JITTER * (2.0 * rng.unit() - 1.0));
            due.push(Reverse((t + p, i)));
        }
        if !batch.is_empty() {
            let sent = generator.beat(&batch, end)?;
            let now = Instant::now();
            for &i in &batch[..sent] {
                first[i as usize].get_or_insert(now);
                last[i as usize] = Some(now);
                if stop[i as usize].is_some() {
                    sends[i as usize].push(now);
                }
                classes[(i % 3) as usize].sent += 1;
            }
        }
        let next = due.peek().map_or(end, |r| r.0.0).min(end);
        let wait = next.saturating_duration_since(Instant::now());
        thread::sleep(wait.clamp(Duration::from_micros(200), Duration::from_millis(5)));
    }
    let events = collector.events();
    collector.stop()?;
    drop(topo);

    for &(end, i) in &events.flaps {
        if !end && (i as usize) < n {
            classes[i as usize % 3].flapping += 1;
        }
    }
    let timeline = events.timeline.unwrap_or_default();
    let stopped: Vec<bool> = stop.iter().map(Option::is_some).collect();
    let judged = judge(&timeline, &stopped, &last);
    for i in 0..n {
        let c = &mut classes[i % 3];
        c.hosts += 1;
        if let Some(f) = first[i] {
            let until = stop[i].map_or(end, |s| s.min(end));
            c.host_hours += until.saturating_duration_since(f).as_secs_f64() / 3600.0;
        }
        c.false_silent += u64::from(judged.false_silent[i]);
        if stopped[i] {
            c.stopped += 1;
            match judged.detected[i] {
                Some(d) => c.detect_ms.push(d.as_secs_f64() * 1e3),
                None => c.missed += 1,
            }
        }
    }
    if timeout.is_auto() {
        explain_slowest(&judged, &sends);
    }
    if events.foreign_count > 0 || !events.bad_lines.is_empty() {
        bail!(
            "quality: unexpected lines from hb: {:?} {:?}",
            events.foreign,
            events.bad_lines
        );
    }
    Ok(classes)
}

/// Logs, per class, the stopped host detected last: its last intervals as
/// sent and what hb-common's `Timing` learns from all of them (the table
/// learns from arrival stamps, within a tick or so of these).
fn explain_slowest(judged: &Judged, sends: &[Vec<Instant>]) {
    for (c, period) in PERIODS.iter().enumerate() {
        let slowest = (c..sends.len())
            .step_by(3)
            .filter_map(|i| judged.detected[i].map(|d| (d, i)))
            .max();
        let Some((d, i)) = slowest else { continue };
        let ticks: Vec<u32> = sends[i]
            .windows(2)
            .map(|w| ((w[1] - w[0]).as_nanos() as u64 >> hb_common::TICK_SHIFT) as u32)
            .collect();
        let t = ticks
            .iter()
            .fold(hb_common::Timing::NONE, |t, &r| t.update(r));
        let ms = |ticks: &[u32]| -> Vec<u64> {
            ticks
                .iter()
                .map(|&r| (u64::from(r) * hb_common::TICK_NS) / 1_000_000)
                .collect()
        };
        log::info!(
            "quality: slowest of period {:?}: host {i} in {d:?}; learned mean {} ms, deviation {} ms, {} samples; intervals (ms): {:?}",
            period,
            t.mean_ns() / 1_000_000,
            t.dev_ns() / 1_000_000,
            t.samples(),
            ms(&ticks)
        );
    }
}

/// What the events say of each host.
#[derive(Debug, PartialEq)]
struct Judged {
    /// Stopped hosts: time from the last heartbeat to the `silent` that
    /// detected it (its last event, after that heartbeat); None: missed.
    detected: Vec<Option<Duration>>,
    /// `silent` events that were not a detection, per host.
    false_silent: Vec<u32>,
}

fn judge(timeline: &[(Kind, u32, Instant)], stopped: &[bool], last: &[Option<Instant>]) -> Judged {
    let n = stopped.len();
    let mut last_event: Vec<Option<usize>> = vec![None; n];
    for (k, &(kind, i, _)) in timeline.iter().enumerate() {
        if kind != Kind::New {
            last_event[i as usize] = Some(k);
        }
    }
    let mut detection: Vec<Option<usize>> = vec![None; n];
    let mut detected = vec![None; n];
    for i in (0..n).filter(|&i| stopped[i]) {
        if let Some((k, l)) = last_event[i].zip(last[i]) {
            let (kind, _, when) = timeline[k];
            if kind == Kind::Silent && when > l {
                detection[i] = Some(k);
                detected[i] = Some(when - l);
            }
        }
    }
    let mut false_silent = vec![0; n];
    for (k, &(kind, i, _)) in timeline.iter().enumerate() {
        if kind == Kind::Silent && detection[i as usize] != Some(k) {
            false_silent[i as usize] += 1;
        }
    }
    Judged {
        detected,
        false_silent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_hosts_last_silent_is_its_detection_every_other_is_false() {
        let t0 = Instant::now();
        let t = |s: u64| t0 + Duration::from_secs(s);
        // Host 0 beats on and flapped once; host 1 flapped, then stopped
        // (last heartbeat at 40 s) and was found at 56 s; host 2 stopped
        // and was never found; host 3 stopped, but its only `silent` came
        // before its last heartbeat (then it recovered): missed, and false;
        // host 4 stopped, its last event a `silent` before its last
        // heartbeat (the `recovered` not out yet): missed, and false.
        let timeline = [
            (Kind::New, 0, t(0)),
            (Kind::New, 1, t(0)),
            (Kind::New, 2, t(0)),
            (Kind::New, 3, t(0)),
            (Kind::New, 4, t(0)),
            (Kind::Silent, 0, t(20)),
            (Kind::Silent, 1, t(21)),
            (Kind::Recovered, 0, t(25)),
            (Kind::Recovered, 1, t(26)),
            (Kind::Silent, 3, t(27)),
            (Kind::Recovered, 3, t(30)),
            (Kind::Silent, 4, t(45)),
            (Kind::Silent, 1, t(56)),
        ];
        let got = judge(
            &timeline,
            &[false, true, true, true, true],
            &[
                Some(t(60)),
                Some(t(40)),
                Some(t(10)),
                Some(t(30)),
                Some(t(50)),
            ],
        );
        assert_eq!(
            got,
            Judged {
                detected: vec![None, Some(Duration::from_secs(16)), None, None, None],
                false_silent: vec![1, 1, 0, 1, 1],
            }
        );
    }
}
