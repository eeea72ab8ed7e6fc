//! The scripted scenarios: each runs against a fresh topology and collector,
//! sends its phases of traffic, then compares what was sent with what the
//! collector counted and reported.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    collector::{Collector, EventLog, Ingest, Kind, Metrics, Settings},
    cpu,
    fleet::{Fleet, Hosts},
    generator::{Generator, Sent, Traffic},
    inventory::Inventory,
    reference::Reader,
    signals,
    topology::Topology,
};

/// Scheduling and pipe latency allowed on a loaded 2-core machine when
/// checking that an event came in time.
pub const SLACK: Duration = Duration::from_millis(1500);
/// How long the idle softirq time is measured before each run.
const IDLE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Every host beats every period.
    Steady,
    /// Every host in turn, as fast as the generator goes.
    Flood,
    /// 1% of the hosts stop at once.
    Silent,
    /// 1% stop, then all of them come back at once.
    Recovery,
    /// 1% of the hosts leave and as many new ones join.
    Churn,
    /// Junk to the heartbeat port at full rate beside a small real fleet.
    JunkFlood,
    /// An inventory of every host, rewritten (1% removed, 1% added) and
    /// reloaded (SIGHUP) while heartbeats flow.
    Reload,
}

impl Scenario {
    pub const ALL: [Scenario; 7] = [
        Scenario::Steady,
        Scenario::Flood,
        Scenario::Silent,
        Scenario::Recovery,
        Scenario::Churn,
        Scenario::JunkFlood,
        Scenario::Reload,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::Flood => "flood",
            Scenario::Silent => "silent-1%",
            Scenario::Recovery => "recovery",
            Scenario::Churn => "churn",
            Scenario::JunkFlood => "junk-flood",
            Scenario::Reload => "reload",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        Self::ALL
            .into_iter()
            .find(|sc| sc.name() == s || sc.name().trim_end_matches("-1%") == s)
            .with_context(|| {
                let names: Vec<_> = Self::ALL.iter().map(|s| s.name()).collect();
                format!("unknown scenario {s:?} (expected {})", names.join(", "))
            })
    }
}

/// Parameters of a load test run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The `hb` binary under test.
    pub hb: PathBuf,
    pub hosts: u32,
    pub ipv6_percent: u8,
    /// Every host beats once per period (steady, silent, recovery, churn).
    pub period: Duration,
    pub timeout: Duration,
    pub sweep: Duration,
    /// Traffic time of steady, flood and junk-flood.
    pub duration: Duration,
    /// Cap on the flood rates (flood, junk-flood), frames/s; `None`: none.
    pub rate: Option<f64>,
    /// Real hosts beside the junk of junk-flood.
    pub junk_hosts: u32,
    pub batch: usize,
    pub port: u16,
    /// Cap on frames per traffic phase.
    pub max_packets: u64,
    /// Names the namespaces and interfaces (unique among concurrent runs).
    pub tag: String,
}

impl Config {
    pub fn validate(&self) -> Result<()> {
        // Churn adds 1% of new hosts; the address plan names MAX_HOSTS.
        let most = super::fleet::MAX_HOSTS / 101 * 100;
        if self.hosts == 0 || self.hosts > most || self.junk_hosts == 0 || self.junk_hosts > most {
            bail!("--hosts and --junk-hosts must be 1 to {most}");
        }
        if !(1..=1024).contains(&self.batch) {
            bail!("--batch must be 1 to 1024");
        }
        if self.timeout <= self.sweep {
            bail!("--timeout must be longer than --sweep");
        }
        if self.timeout <= self.period + self.sweep {
            bail!(
                "--timeout ({:?}) must be longer than --period + --sweep ({:?}): \
                 otherwise beating hosts look silent",
                self.timeout,
                self.period + self.sweep
            );
        }
        if self.ipv6_percent > 100 {
            bail!("--ipv6-percent is a share in percent (0-100)");
        }
        Ok(())
    }
}

/// The outcome of one scenario with one ingest mode.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: Scenario,
    pub ingest: Ingest,
    /// Distinct hosts simulated.
    pub hosts: u32,
    pub sent: Sent,
    /// Counter deltas over the run (`hb_packets_total`, events, ...).
    pub counters: Metrics,
    /// Wall time over which CPU was measured.
    pub window: Duration,
    /// User + system time of the `hb run` process.
    pub hb_cpu_ns: f64,
    /// Softirq time of the whole machine over the window, less the idle
    /// rate measured just before (`softirq_idle_ns`).
    pub softirq_ns: f64,
    pub softirq_idle_ns: f64,
    /// Failed expectations; empty: everything as expected.
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

impl Row {
    /// Heartbeats the collector recorded.
    pub fn accounted(&self) -> u64 {
        self.counters.packets("heartbeat")
    }

    pub fn loss(&self) -> i64 {
        self.sent.heartbeats as i64 - self.accounted() as i64
    }

    /// CPU per accounted packet (heartbeats, plus junk for junk-flood):
    /// the collector process and softirq, in ns.
    pub fn ns_per_packet(&self) -> Option<(f64, f64)> {
        let n = self.accounted() + self.counters.packets("wrong_payload");
        (n > 0).then(|| (self.hb_cpu_ns / n as f64, self.softirq_ns / n as f64))
    }
}

/// Events a scenario expects of each kind: exactly once for each host of
/// the sets, for nobody else, arriving within the window if one is given.
#[derive(Default)]
struct Expect {
    sets: [Vec<Hosts>; 3],
    windows: [Option<(Instant, Instant)>; 3],
    /// Largest `silent_for_ms` allowed.
    max_silent_for: Option<Duration>,
    /// Hosts the table takes as new (`new_host`), where that is not the
    /// hosts reported `new` (inventoried hosts are expected: no line).
    table_new: Option<u64>,
}

impl Expect {
    fn events(&mut self, kind: Kind, hosts: Hosts) {
        self.sets[kind as usize].push(hosts);
    }

    fn window(&mut self, kind: Kind, from: Instant, to: Instant) {
        self.windows[kind as usize] = Some((from, to));
    }

    fn check(&self, log: &EventLog, problems: &mut Vec<String>) {
        for kind in Kind::ALL {
            let k = kind as usize;
            let (mut expected, mut missing, mut repeated, mut seen) = (0u64, 0u64, 0u64, 0u64);
            for set in &self.sets[k] {
                for i in set.iter() {
                    expected += 1;
                    match log.counts[k].get(i as usize).copied().unwrap_or(0) {
                        0 => missing += 1,
                        1 => seen += 1,
                        c => {
                            repeated += 1;
                            seen += u64::from(c);
                        }
                    }
                }
            }
            let others = log.totals[k].saturating_sub(seen);
            let name = kind.name();
            if missing > 0 {
                problems.push(format!("{missing} of {expected} `{name}` events missing"));
            }
            if repeated > 0 {
                problems.push(format!("{repeated} hosts reported `{name}` more than once"));
            }
            if others > 0 {
                problems.push(format!("{others} unexpected `{name}` events"));
            }
            if let Some((from, to)) = self.windows[k] {
                if log.first[k].is_some_and(|t| t < from) {
                    problems.push(format!("`{name}` events before the scenario caused them"));
                }
                if let Some(t) = log.last[k].filter(|&t| t > to) {
                    problems.push(format!(
                        "last `{name}` event {:.2} s late",
                        (t - to).as_secs_f64()
                    ));
                }
            }
        }
        if let Some(max) = self.max_silent_for
            && log.max_silent_for_ms > max.as_millis() as u64
        {
            problems.push(format!(
                "a host was reported silent after {} ms (allowed: {} ms)",
                log.max_silent_for_ms,
                max.as_millis()
            ));
        }
        if log.foreign_count > 0 {
            problems.push(format!(
                "{} events about hosts never simulated, e.g. {:?}",
                log.foreign_count, log.foreign
            ));
        }
        if !log.bad_lines.is_empty() {
            problems.push(format!("unexpected output lines: {:?}", log.bad_lines));
        }
    }
}

/// Softirq time on an idle machine is not zero (timers, other work on the
/// machine): measured with the collector up and no traffic, to be
/// subtracted, at the same rate, from the run's. Nanoseconds per second.
fn idle_softirq_per_s() -> Result<f64> {
    let (from, at) = (cpu::Machine::now()?, Instant::now());
    std::thread::sleep(IDLE);
    signals::check()?;
    Ok(
        cpu::Machine::now()?.since(&from).softirq as f64 * cpu::tick_ns()
            / at.elapsed().as_secs_f64(),
    )
}

/// Can `scenario` run with the reference socket reader? It prints no
/// events, so only the scenarios that count packets.
pub fn reference_runs(scenario: Scenario) -> bool {
    matches!(
        scenario,
        Scenario::Steady | Scenario::Flood | Scenario::JunkFlood
    )
}

/// Steady, flood or junk-flood against the reference socket reader
/// instead of hb: the same traffic, counted by the reader.
fn run_reference(cfg: &Config, scenario: Scenario) -> Result<Row> {
    if !reference_runs(scenario) {
        bail!("{} needs a collector's events", scenario.name());
    }
    let fleet = Fleet::new(cfg.ipv6_percent);
    let topo = Topology::new(&cfg.tag)?;
    let mut generator = Generator::open(&topo.generator, &topo.b_if, fleet, cfg.port, cfg.batch)?;
    let mut reader = Reader::start(&topo.collector, cfg.port)?;
    let idle_softirq_per_s = idle_softirq_per_s()?;
    let (machine_before, start) = (cpu::Machine::now()?, Instant::now());
    let (hosts, rate, junk, duration) = match scenario {
        Scenario::Steady => {
            let all = Hosts::range(0, cfg.hosts);
            let rate = f64::from(cfg.hosts) / cfg.period.as_secs_f64();
            (all, Some(rate), false, cfg.duration)
        }
        Scenario::Flood => (Hosts::range(0, cfg.hosts), cfg.rate, false, cfg.duration),
        _ => {
            let fleet_hosts = Hosts::range(0, cfg.junk_hosts);
            let rate = f64::from(cfg.junk_hosts) / cfg.period.as_secs_f64();
            let duration = cfg.duration.max(cfg.timeout + 2 * cfg.sweep + cfg.period);
            (fleet_hosts, Some(rate), true, duration)
        }
    };
    let sent = generator.run(&Traffic {
        hosts,
        rate,
        junk,
        duration,
        max_packets: cfg.max_packets,
    })?;
    signals::check()?;
    // Let the reader drain its socket: stop once nothing more arrives.
    let mut last = reader.heartbeats();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = reader.heartbeats();
        if now == last || now >= sent.heartbeats {
            break;
        }
        last = now;
    }
    let got = reader.finish()?;
    let machine_after = cpu::Machine::now()?;
    drop(topo);
    let window = start.elapsed();
    let tick = cpu::tick_ns();
    let counters = Metrics(
        [
            (
                "hb_packets_total{outcome=\"heartbeat\"}".to_string(),
                got.heartbeats as f64,
            ),
            (
                "hb_packets_total{outcome=\"wrong_payload\"}".to_string(),
                got.other as f64,
            ),
        ]
        .into(),
    );
    let mut row = Row {
        scenario,
        ingest: Ingest::RefSocket,
        hosts: hosts.len(),
        sent,
        counters,
        window,
        hb_cpu_ns: got.cpu_ticks as f64 * tick,
        softirq_ns: (machine_after.since(&machine_before).softirq as f64 * tick
            - idle_softirq_per_s * window.as_secs_f64())
        .max(0.0),
        softirq_idle_ns: idle_softirq_per_s * window.as_secs_f64(),
        problems: Vec::new(),
        notes: Vec::new(),
    };
    if row.accounted() > sent.heartbeats || got.other > sent.junk {
        row.problems.push(format!(
            "the reader received {} heartbeats and {} others, more than the {} and {} sent",
            got.heartbeats, got.other, sent.heartbeats, sent.junk
        ));
    }
    Ok(row)
}

/// Runs one scenario with one ingest mode. `pass_ingest`: whether to pass
/// `--ingest` (the hb under test has it).
pub fn run(cfg: &Config, scenario: Scenario, ingest: Ingest, pass_ingest: bool) -> Result<Row> {
    if ingest == Ingest::RefSocket {
        return run_reference(cfg, scenario);
    }
    let fleet = Fleet::new(cfg.ipv6_percent);
    let n = cfg.hosts;
    let (p, t, s) = (cfg.period, cfg.timeout, cfg.sweep);
    let churn = (n / 100).max(1);
    let universe = match scenario {
        Scenario::Churn | Scenario::Reload => n + churn,
        Scenario::JunkFlood => cfg.junk_hosts,
        _ => n,
    };
    // A flood does not beat each host on a schedule: with the usual
    // timeout a round slower than it would make hosts look silent.
    let timeout = match scenario {
        Scenario::Flood => t + cfg.duration + SLACK,
        _ => t,
    };
    let topo = Topology::new(&cfg.tag)?;
    // Reload: the inventory lists hosts 0..n; the rewrite drops the first
    // 1% and adds the `churn` hosts after n.
    let inventory = match scenario {
        Scenario::Reload => Some(Inventory::write(&cfg.tag, fleet, 0..n)?),
        _ => None,
    };
    let settings = Settings {
        hb: cfg.hb.clone(),
        iface: topo.a_if.clone(),
        port: cfg.port,
        ingest: pass_ingest.then_some(ingest),
        timeout,
        sweep: s,
        max_hosts: universe + universe / 8 + 1024,
        inventory: inventory.as_ref().map(|i| i.path.clone()),
        extra: Vec::new(),
    };
    let mut generator = Generator::open(&topo.generator, &topo.b_if, fleet, cfg.port, cfg.batch)?;
    let mut collector = Collector::start(&topo.collector, &settings, fleet, universe)?;
    let idle_softirq_per_s = idle_softirq_per_s()?;
    let before = collector.scrape()?;
    let cpu_before = (
        cpu::process_ticks(collector.pid())?,
        cpu::Machine::now()?,
        Instant::now(),
    );

    let all = Hosts::range(0, n);
    let silenced = all.only(100, 0);
    let paced = |h: Hosts| Some(f64::from(h.len()) / p.as_secs_f64());
    let mut expect = Expect::default();
    let mut notes = Vec::new();
    let mut problems = Vec::new();
    let mut tx = Sender {
        generator: &mut generator,
        sent: Sent::default(),
        max_packets: cfg.max_packets,
    };
    // One round plus a sweep: every host has beaten and is known.
    let warm_up = |tx: &mut Sender, problems: &mut Vec<String>| -> Result<()> {
        let r = tx.send(all, paced(all), false, p + s)?;
        if r.heartbeats < u64::from(n) {
            problems.push(format!(
                "the generator sent {} heartbeats in the warm-up, fewer than the {n} hosts: \
                 raise --period",
                r.heartbeats
            ));
        }
        Ok(())
    };
    let reached = |sent: u64, hosts: u32| Hosts::range(0, sent.min(u64::from(hosts)) as u32);
    let mut reload_forgotten = None;

    match scenario {
        Scenario::Steady => {
            let r = tx.send(all, paced(all), false, cfg.duration)?;
            expect.events(Kind::New, reached(r.heartbeats, n));
        }
        Scenario::Flood => {
            let r = tx.send(all, cfg.rate, false, cfg.duration)?;
            expect.events(Kind::New, reached(r.heartbeats, n));
            notes.push(format!(
                "flood: collector timeout {} ms so that no host falls silent between rounds",
                timeout.as_millis()
            ));
        }
        Scenario::Silent | Scenario::Recovery => {
            warm_up(&mut tx, &mut problems)?;
            let quiet = all.skip(100, 0);
            let from = Instant::now();
            tx.send(quiet, paced(quiet), false, t + 2 * s + SLACK)?;
            expect.events(Kind::New, all);
            expect.events(Kind::Silent, silenced);
            expect.window(Kind::Silent, from, from + t + s + SLACK);
            expect.max_silent_for = Some(t + s + SLACK);
            if scenario == Scenario::Recovery {
                let from = Instant::now();
                tx.send(all, paced(all), false, p + 2 * s + SLACK)?;
                expect.events(Kind::Recovered, silenced);
                expect.window(Kind::Recovered, from, from + p + s + SLACK);
            }
        }
        Scenario::Churn => {
            warm_up(&mut tx, &mut problems)?;
            let moved = Hosts::range(churn, n + churn);
            let from = Instant::now();
            tx.send(moved, paced(moved), false, t.max(p) + 2 * s + SLACK)?;
            expect.events(Kind::New, Hosts::range(0, n + churn));
            expect.events(Kind::Silent, Hosts::range(0, churn));
            expect.window(Kind::Silent, from, from + t + s + SLACK);
            expect.window(Kind::New, cpu_before.2, from + p + s + SLACK);
            expect.max_silent_for = Some(t + s + SLACK);
        }
        Scenario::Reload => {
            let inv = inventory.as_ref().expect("written above");
            // Every host beats; the `churn` hosts after n are outside the
            // inventory: `new` (the others are expected: no line).
            let everyone = Hosts::range(0, n + churn);
            let r = tx.send(everyone, paced(everyone), false, p + s)?;
            if r.heartbeats < u64::from(n + churn) {
                problems.push(format!(
                    "the generator sent {} heartbeats in the warm-up, fewer than the {} hosts: \
                     raise --period",
                    r.heartbeats,
                    n + churn
                ));
            }
            // The first 1% retire (stop, and leave the inventory), the
            // hosts after n join it: the file is replaced, then SIGHUP,
            // with heartbeats flowing. Retired hosts are forgotten before
            // their timeout: no line about them.
            let wrote = Instant::now();
            inv.rewrite(fleet, churn..n + churn)?;
            let wrote = wrote.elapsed();
            let staying = Hosts::range(churn, n + churn);
            let hup = Instant::now();
            collector.signal(libc::SIGHUP);
            tx.send(staying, paced(staying), false, t + 2 * s + SLACK)?;
            expect.events(Kind::New, Hosts::range(n, n + churn));
            expect.table_new = Some(u64::from(n + churn));
            let log = collector.events();
            // Adoption shows as unknown_hosts dropping to 0: only if the
            // hosts outside the first inventory were heard before.
            let before_hup = log.summary_lines.iter().rev().find(|l| l.at < hup);
            if before_hup.and_then(|l| l.unknown_hosts) != Some(u64::from(churn)) {
                problems.push(format!(
                    "before SIGHUP the collector had not heard the {churn} hosts outside the \
                     inventory (summary: {:?}): adoption cannot be told",
                    before_hup.and_then(|l| l.unknown_hosts)
                ));
            }
            let adopted = log
                .summary_lines
                .iter()
                .find(|l| l.at > hup && l.unknown_hosts == Some(0));
            match adopted {
                None => problems
                    .push("the reload was not adopted (unknown_hosts never 0 after SIGHUP)".into()),
                Some(l) => notes.push(format!(
                    "reload: inventory of {n} hosts rewritten in {} ms ({churn} removed, {churn} \
                     added), adopted {} ms after SIGHUP by a sweep of {:.0} ms",
                    wrote.as_millis(),
                    (l.at - hup).as_millis(),
                    l.sweep_ms
                )),
            }
            let gap = log.max_summary_gap(cpu_before.2);
            let gap_hup = log.max_summary_gap(hup);
            notes.push(format!(
                "reload: longest gap between two sweeps (summary lines) {} ms over the run, \
                 {} ms from SIGHUP on (sweep {} ms); longest sweep {:.0} ms",
                gap.as_millis(),
                gap_hup.as_millis(),
                s.as_millis(),
                log.summary_lines
                    .iter()
                    .map(|l| l.sweep_ms)
                    .fold(0.0, f64::max)
            ));
            if gap > 2 * s {
                problems.push(format!(
                    "a sweep came {} ms after the one before (more than one sweep period late)",
                    gap.as_millis()
                ));
            }
            reload_forgotten = Some(u64::from(churn));
        }
        Scenario::JunkFlood => {
            let fleet_hosts = Hosts::range(0, universe);
            let duration = cfg.duration.max(t + 2 * s + p);
            tx.send(fleet_hosts, paced(fleet_hosts), true, duration)?;
            expect.events(Kind::New, fleet_hosts);
            if let Some(rate) = cfg.rate {
                notes.push(format!("junk-flood: capped at {rate} frames/s"));
            }
        }
    }

    let sent = tx.sent;
    // Events are judged as of the end of the traffic: stopping it makes
    // everybody silent a timeout later, which is not the scenario's doing.
    let log = collector.events();
    // Two sweeps later the counters include every frame sent.
    collector.wait_summaries(2, 2 * s + Duration::from_secs(30))?;
    let after = collector.scrape()?;
    let cpu_after = (cpu::process_ticks(collector.pid())?, cpu::Machine::now()?);
    collector.stop().context("stopping the collector")?;
    drop(topo);

    let window = cpu_before.2.elapsed();
    let tick = cpu::tick_ns();
    let counters = after.since(&before);
    let mut row = Row {
        scenario,
        ingest,
        hosts: universe,
        sent,
        counters,
        window,
        hb_cpu_ns: (cpu_after.0 - cpu_before.0) as f64 * tick,
        softirq_ns: (cpu_after.1.since(&cpu_before.1).softirq as f64 * tick
            - idle_softirq_per_s * window.as_secs_f64())
        .max(0.0),
        softirq_idle_ns: idle_softirq_per_s * window.as_secs_f64(),
        problems,
        notes,
    };
    expect.check(&log, &mut row.problems);
    check_counters(&mut row, &expect);
    if let Some(n) = reload_forgotten {
        let forgotten = row.counters.get("hb_hosts_forgotten_total");
        if forgotten != n {
            row.problems.push(format!(
                "{forgotten} hosts forgotten, expected the {n} removed"
            ));
        }
        if after.get("hb_unknown_hosts") != 0 || after.get("hb_hosts_missing") != 0 {
            row.problems.push(format!(
                "after the reload: {} unknown hosts, {} missing (expected none)",
                after.get("hb_unknown_hosts"),
                after.get("hb_hosts_missing")
            ));
        }
    }
    drop(inventory);
    if sent.refused > 0 {
        row.notes.push(format!(
            "the veth pair refused {} sends (receive side full); the generator retried them",
            sent.refused
        ));
    }
    if sent.max_lag > p / 2 && scenario != Scenario::Flood {
        row.notes.push(format!(
            "the generator fell {:.1} s behind its schedule",
            sent.max_lag.as_secs_f64()
        ));
    }
    Ok(row)
}

fn check_counters(row: &mut Row, expect: &Expect) {
    let c = &row.counters;
    let (accounted, sent) = (row.accounted(), row.sent.heartbeats);
    if accounted > sent {
        row.problems.push(format!(
            "the collector counted {accounted} heartbeats of {sent} sent"
        ));
    } else if accounted < sent && row.ingest == Ingest::Xdp {
        row.problems.push(format!(
            "{} of {sent} heartbeats not accounted",
            sent - accounted
        ));
    }
    let new_hosts: u64 = expect.table_new.unwrap_or_else(|| {
        expect.sets[Kind::New as usize]
            .iter()
            .map(|h| u64::from(h.len()))
            .sum()
    });
    if c.packets("new_host") != new_hosts {
        row.problems.push(format!(
            "new_host counter {} (expected {new_hosts})",
            c.packets("new_host")
        ));
    }
    if c.packets("table_full") != 0 {
        row.problems
            .push(format!("table_full counter {}", c.packets("table_full")));
    }
    if c.packets("wrong_payload") != row.sent.junk {
        row.problems.push(format!(
            "wrong_payload counter {} of {} junk datagrams sent",
            c.packets("wrong_payload"),
            row.sent.junk
        ));
    }
}

/// The generator, and what it sent over the phases of a scenario.
struct Sender<'a> {
    generator: &'a mut Generator,
    sent: Sent,
    max_packets: u64,
}

impl Sender<'_> {
    fn send(
        &mut self,
        hosts: Hosts,
        rate: Option<f64>,
        junk: bool,
        duration: Duration,
    ) -> Result<Sent> {
        let r = self.generator.run(&Traffic {
            hosts,
            rate,
            junk,
            duration,
            max_packets: self.max_packets,
        })?;
        signals::check()?;
        self.sent.add(&r);
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_of(fleet: Fleet, lines: &[(&str, u32)], at: Instant) -> EventLog {
        let mut log = EventLog::new(fleet, 1000);
        for (event, host) in lines {
            let line = format!(
                r#"{{"ts":"x","event":"{event}","host":"{}","silent_for_ms":2000}}"#,
                fleet.addr(*host)
            );
            log.record(&line, at);
        }
        log
    }

    fn problems(expect: &Expect, log: &EventLog) -> Vec<String> {
        let mut p = Vec::new();
        expect.check(log, &mut p);
        p
    }

    #[test]
    fn expectations_catch_missing_repeated_unexpected_and_late_events() {
        let fleet = Fleet::new(10);
        let t0 = Instant::now();
        let mut expect = Expect::default();
        expect.events(Kind::Silent, Hosts::range(0, 300).only(100, 0));
        expect.window(Kind::Silent, t0, t0 + Duration::from_secs(5));
        expect.max_silent_for = Some(Duration::from_secs(3));

        let ok = log_of(
            fleet,
            &[("silent", 0), ("silent", 100), ("silent", 200)],
            t0,
        );
        assert_eq!(problems(&expect, &ok), Vec::<String>::new());

        let missing = log_of(fleet, &[("silent", 0), ("silent", 200)], t0);
        assert!(problems(&expect, &missing)[0].contains("1 of 3 `silent` events missing"));

        let twice = log_of(
            fleet,
            &[
                ("silent", 0),
                ("silent", 100),
                ("silent", 200),
                ("silent", 100),
            ],
            t0,
        );
        assert!(problems(&expect, &twice)[0].contains("more than once"));

        let other = log_of(
            fleet,
            &[
                ("silent", 0),
                ("silent", 100),
                ("silent", 200),
                ("silent", 5),
                ("new", 7),
            ],
            t0,
        );
        let p = problems(&expect, &other);
        assert!(
            p.iter().any(|p| p.contains("1 unexpected `silent`")),
            "{p:?}"
        );
        assert!(p.iter().any(|p| p.contains("1 unexpected `new`")), "{p:?}");

        let late = log_of(
            fleet,
            &[("silent", 0), ("silent", 100), ("silent", 200)],
            t0 + Duration::from_secs(6),
        );
        assert!(problems(&expect, &late)[0].contains("late"));

        expect.max_silent_for = Some(Duration::from_secs(1));
        assert!(problems(&expect, &ok)[0].contains("2000 ms"));
    }

    #[test]
    fn counters_must_match_what_was_sent() {
        let mut row = Row {
            scenario: Scenario::JunkFlood,
            ingest: Ingest::Xdp,
            hosts: 10,
            sent: Sent {
                heartbeats: 100,
                junk: 50,
                ..Sent::default()
            },
            counters: Metrics::default(),
            window: Duration::from_secs(1),
            hb_cpu_ns: 0.0,
            softirq_ns: 0.0,
            softirq_idle_ns: 0.0,
            problems: Vec::new(),
            notes: Vec::new(),
        };
        let mut expect = Expect::default();
        expect.events(Kind::New, Hosts::range(0, 10));
        let set = |row: &mut Row, hb: f64, new: f64, junk: f64| {
            row.counters = Metrics(
                [
                    ("hb_packets_total{outcome=\"heartbeat\"}".to_string(), hb),
                    ("hb_packets_total{outcome=\"new_host\"}".to_string(), new),
                    (
                        "hb_packets_total{outcome=\"wrong_payload\"}".to_string(),
                        junk,
                    ),
                ]
                .into(),
            );
            row.problems.clear();
            check_counters(row, &expect);
            row.problems.clone()
        };
        assert!(set(&mut row, 100.0, 10.0, 50.0).is_empty());
        assert!(set(&mut row, 99.0, 10.0, 50.0)[0].contains("1 of 100 heartbeats not accounted"));
        assert!(set(&mut row, 100.0, 11.0, 50.0)[0].contains("new_host"));
        assert!(set(&mut row, 100.0, 10.0, 49.0)[0].contains("wrong_payload"));
        // Socket mode may lose heartbeats (the loss column shows it), but
        // never count more than were sent.
        row.ingest = Ingest::Socket;
        assert!(set(&mut row, 99.0, 10.0, 50.0).is_empty());
        assert!(set(&mut row, 101.0, 10.0, 50.0)[0].contains("counted 101"));
    }
}
