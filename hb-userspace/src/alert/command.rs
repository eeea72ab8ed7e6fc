//! `--on-event CMD`: for setups without Alertmanager, runs `sh -c CMD`
//! with a batch of events on its stdin, as JSON lines (those of
//! `--format json`, whatever the format of stdout).
//!
//! The sweep only formats the lines and appends them to a queue; a thread
//! of its own runs the command, one invocation at a time, each bounded by
//! a timeout (then killed, with its process group). While one runs, the
//! next events wait in the queue and go in the next batch; a queue past
//! its cap drops its oldest lines (counted, logged once per overflow), so
//! a command that hangs or crawls never holds back a sweep nor fills the
//! memory.

use std::{
    collections::VecDeque,
    io::Write as _,
    os::{fd::AsFd as _, unix::process::CommandExt as _},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use hashbrown::HashSet;
use hb_common::HostKey;
use log::{info, warn};

use crate::{
    clock::monotonic_ns,
    track::{
        events::{Event, Format, format_event, timestamp},
        sweeper::Sweeper,
        table::Table,
    },
};

/// Lines queued at most; past it the oldest are dropped.
pub const QUEUE_CAP: usize = 100_000;

/// How often a running command is checked for its end.
const POLL: Duration = Duration::from_millis(10);

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct CommandStats {
    /// Invocations started.
    pub runs: AtomicU64,
    /// Invocations that failed: not started, killed at the timeout, or
    /// exited other than 0.
    pub failures: AtomicU64,
    /// Event lines dropped from a full queue.
    pub dropped: AtomicU64,
}

#[derive(Default)]
struct Queue {
    lines: VecDeque<String>,
    /// Lines were dropped since the command last took a batch (logged
    /// once per overflow).
    overflowing: bool,
    stop: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

pub struct OnEvent {
    shared: Arc<Shared>,
    stats: Arc<CommandStats>,
    cap: usize,
    thread: Option<thread::JoinHandle<()>>,
    /// Missing hosts already told (their `missing` line was queued).
    missing: HashSet<HostKey>,
}

impl OnEvent {
    /// Starts the thread that runs `command` (with `sh -c`).
    pub fn start(command: String, timeout: Duration) -> Result<Self> {
        Self::with_cap(command, timeout, QUEUE_CAP)
    }

    fn with_cap(command: String, timeout: Duration, cap: usize) -> Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
        });
        let stats = Arc::new(CommandStats::default());
        let thread = {
            let (shared, stats) = (Arc::clone(&shared), Arc::clone(&stats));
            thread::Builder::new()
                .name("hb-on-event".into())
                .spawn(move || run(&command, timeout, &shared, &stats))
                .context("starting the --on-event thread")?
        };
        Ok(Self {
            shared,
            stats,
            cap,
            thread: Some(thread),
            missing: HashSet::new(),
        })
    }

    pub fn stats(&self) -> Arc<CommandStats> {
        Arc::clone(&self.stats)
    }

    /// Queues the events of the sweep just done: its transitions, and the
    /// hosts it found missing.
    pub fn feed(&mut self, sweeper: &Sweeper, table: &dyn Table) {
        let ts = timestamp(SystemTime::now());
        let mut lines = Vec::new();
        for t in sweeper.last_transitions() {
            let slot = *t.host();
            // As on stdout: with what the table learned of its period.
            let mut host = table.host(slot);
            host.timing = table.timing(slot);
            let event = Event::Host(t.with_host(host), sweeper.ident(slot));
            lines.push(format_event(Format::Json, &ts, &event));
        }
        self.missing_lines(sweeper, &ts, &mut lines);
        if !lines.is_empty() {
            self.push(lines);
        }
    }

    /// `missing` lines for the hosts missing now and not told yet.
    fn missing_lines(&mut self, sweeper: &Sweeper, ts: &str, lines: &mut Vec<String>) {
        let roll = sweeper.roll();
        let count = roll.missing_count() as usize;
        if count == self.missing.len() && sweeper.last_transitions().is_empty() {
            return;
        }
        let Some(inv) = sweeper.fleet().inventory() else {
            self.missing.clear();
            return;
        };
        let now = monotonic_ns();
        let mut missing = HashSet::with_capacity(count);
        for (e, since) in roll.missing() {
            let key = inv.key(e);
            missing.insert(*key);
            if !self.missing.contains(key) {
                let event = Event::Missing {
                    host: key,
                    ident: inv.ident(e),
                    for_ns: now.saturating_sub(since),
                };
                lines.push(format_event(Format::Json, ts, &event));
            }
        }
        self.missing = missing;
    }

    fn push(&self, lines: Vec<String>) {
        let mut q = self.shared.queue.lock().expect("the queue's lock");
        q.lines.extend(lines);
        let over = q.lines.len().saturating_sub(self.cap);
        if over > 0 {
            q.lines.drain(..over);
            self.stats.dropped.fetch_add(over as u64, Ordering::Relaxed);
            if !q.overflowing {
                warn!(
                    "--on-event is behind: its queue is full ({} lines), dropping the oldest events",
                    self.cap
                );
                q.overflowing = true;
            }
        }
        drop(q);
        self.shared.wake.notify_one();
    }

    /// Stops the thread: the command running (if any) may finish within
    /// its timeout; what is still queued is not run.
    pub fn finish(mut self) {
        self.shared.queue.lock().expect("the queue's lock").stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread: takes the queued lines as one batch, runs the command on
/// them, and again, until stopped.
fn run(command: &str, timeout: Duration, shared: &Shared, stats: &CommandStats) {
    loop {
        let batch = {
            let mut q = shared.queue.lock().expect("the queue's lock");
            while q.lines.is_empty() && !q.stop {
                q = shared.wake.wait(q).expect("the queue's lock");
            }
            if q.stop {
                return;
            }
            q.overflowing = false;
            let mut batch = String::new();
            for line in q.lines.drain(..) {
                batch.push_str(&line);
                batch.push('\n');
            }
            batch
        };
        stats.runs.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = run_once(command, timeout, batch) {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            warn!("--on-event `{command}`: {e:#}");
        }
    }
}

/// One invocation: `sh -c command` with `batch` on its stdin; an error
/// unless it exits 0 within `timeout`.
fn run_once(command: &str, timeout: Duration, batch: String) -> Result<()> {
    // Its output goes to stderr: stdout is hb's event stream.
    let stderr = std::io::stderr().as_fd().try_clone_to_owned()?;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::from(stderr.try_clone()?))
        .stderr(Stdio::from(stderr))
        // Its own process group: a timeout kills whatever it started too.
        .process_group(0)
        .spawn()
        .context("cannot start it")?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    // Written from a thread: a command that does not read its stdin must
    // not hold this one past the timeout (the write fails once it is
    // killed).
    let writer = thread::Builder::new()
        .name("hb-on-event-in".into())
        .spawn(move || {
            let _ = stdin.write_all(batch.as_bytes());
        })
        .context("starting the stdin writer")?;
    let status = wait(&mut child, timeout);
    let _ = writer.join();
    match status? {
        Some(status) if status.success() => Ok(()),
        Some(status) => anyhow::bail!("it failed ({status})"),
        None => anyhow::bail!("killed after its timeout of {timeout:?}"),
    }
}

/// The exit status, or `None` if it ran past `timeout` (then killed).
fn wait(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            // SAFETY: signalling the process group of our own child.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(POLL);
    }
}

impl Drop for OnEvent {
    fn drop(&mut self) {
        if self.thread.is_some() {
            info!("--on-event stopped");
            self.shared.queue.lock().expect("the queue's lock").stop = true;
            self.shared.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{{\"n\":{i}}}")).collect()
    }

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "{what} within 10 s");
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn batches_queue_behind_a_running_command_and_the_oldest_are_dropped() {
        let dir = std::env::temp_dir().join(format!("hb-on-event-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        // The first run waits until the test lets it go.
        let gate = dir.join("gate");
        let cmd = format!(
            "while [ ! -e {g} ]; do sleep 0.01; done; cat >> {o}; echo end >> {o}",
            g = gate.display(),
            o = out.display()
        );
        let hook = OnEvent::with_cap(cmd, Duration::from_secs(10), 5).unwrap();
        let stats = hook.stats();
        hook.push(lines(2));
        wait_until("the first run", || stats.runs.load(Ordering::Relaxed) == 1);
        // Queued while it runs: 8 lines in a queue of 5, the 3 oldest go.
        hook.push(lines(4));
        hook.push(lines(4));
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 3);
        std::fs::write(&gate, "").unwrap();
        wait_until("two runs", || {
            std::fs::read_to_string(&out).is_ok_and(|s| s.matches("end").count() == 2)
        });
        let got = std::fs::read_to_string(&out).unwrap();
        assert_eq!(
            got,
            "{\"n\":0}\n{\"n\":1}\nend\n{\"n\":3}\n{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n{\"n\":3}\nend\n"
        );
        assert_eq!(stats.runs.load(Ordering::Relaxed), 2);
        assert_eq!(stats.failures.load(Ordering::Relaxed), 0);
        hook.finish();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn failures_and_timeouts_are_counted() {
        let hook = OnEvent::with_cap("exit 3".into(), Duration::from_secs(10), 5).unwrap();
        let stats = hook.stats();
        hook.push(lines(1));
        wait_until("a failure", || stats.failures.load(Ordering::Relaxed) == 1);
        hook.finish();

        let started = Instant::now();
        let hook = OnEvent::with_cap("sleep 30".into(), Duration::from_millis(200), 5).unwrap();
        let stats = hook.stats();
        hook.push(lines(1));
        wait_until("a timeout", || stats.failures.load(Ordering::Relaxed) == 1);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "killed at its timeout"
        );
        hook.finish();
    }
}
