//! CPU time, from /proc: a process's user + system time, and the machine's
//! time per state. Both are tick-sampled on kernels without
//! `CONFIG_IRQ_TIME_ACCOUNTING` (a tick that finds the CPU in softirq
//! context is charged to softirq), so they are meaningful over seconds, not
//! milliseconds.

use std::fs;

use anyhow::{Context as _, Result, bail};

/// Nanoseconds per clock tick of /proc (USER_HZ).
pub fn tick_ns() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1e9 / if hz > 0 { hz as f64 } else { 100.0 }
}

/// User + system time of process `pid` (all its threads), in ticks.
pub fn process_ticks(pid: i32) -> Result<u64> {
    stat_ticks(&format!("/proc/{pid}/stat"))
}

/// User + system time of the calling thread alone, in ticks.
pub fn thread_ticks() -> Result<u64> {
    stat_ticks("/proc/thread-self/stat")
}

fn stat_ticks(path: &str) -> Result<u64> {
    let stat = fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces: count from after it.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("unexpected {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the file (utime, stime) are 12 and 13 after ')'.
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("no field {} in {path}", i + 3))
    };
    Ok(field(11)? + field(12)?)
}

/// Machine-wide CPU time by state, summed over CPUs, in ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Machine {
    pub user: u64,
    pub system: u64,
    pub idle: u64,
    pub irq: u64,
    pub softirq: u64,
}

impl Machine {
    pub fn now() -> Result<Self> {
        let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
            bail!("no cpu line in /proc/stat");
        };
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        if v.len() < 7 {
            bail!("short cpu line in /proc/stat: {line}");
        }
        // user nice system idle iowait irq softirq ...
        Ok(Self {
            user: v[0] + v[1],
            system: v[2],
            idle: v[3] + v[4],
            irq: v[5],
            softirq: v[6],
        })
    }

    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
            idle: self.idle.saturating_sub(earlier.idle),
            irq: self.irq.saturating_sub(earlier.irq),
            softirq: self.softirq.saturating_sub(earlier.softirq),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process_and_machine() {
        let me = std::process::id() as i32;
        let before = process_ticks(me).unwrap();
        // Spin until 50 ms of CPU time show, for at most 10 s of wall time
        // (the machine may be busy): the counter must move.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while after < before + 5 && start.elapsed().as_secs() < 10 {
            for _ in 0..1_000_000 {
                x = x.wrapping_mul(31).wrapping_add(1);
                std::hint::black_box(x);
            }
            after = process_ticks(me).unwrap();
        }
        assert!(after >= before + 5, "{before} -> {after}");
        let m = Machine::now().unwrap();
        assert!(m.user + m.system + m.idle > 0);
        assert!(process_ticks(-1).is_err());
    }
}
