//! Threads that really run at once: each pinned to a CPU of its own and
//! released together, in lockstep rounds if asked, each reporting the
//! interval it worked in. A BPF_PROG_TEST_RUN executes on its caller's CPU,
//! so tests race the program on several CPUs this way, and prove it with
//! the intervals and the program's per-CPU counters
//! ([`PerCpuCounters`](crate::maps::PerCpuCounters)). Unpinned threads on a
//! busy machine may well take turns on one CPU.

use std::{
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    thread,
};

use hb_common::Counter;

use crate::program::clock_ns;

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer and size; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(
        rc,
        0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: cpu below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Up to `max` CPUs to race on, or `None` (and a line saying the test is
/// skipped) where this process may use only one.
pub fn cpus_to_race_on(max: usize) -> Option<Vec<usize>> {
    let mut cpus = allowed_cpus();
    if cpus.len() < 2 {
        println!(
            "skipped: one CPU ({cpus:?}) is all this process may use, so nothing can race here"
        );
        return None;
    }
    cpus.truncate(max.max(2));
    Some(cpus)
}

/// Pins the calling thread to `cpu`; panics if it cannot.
pub fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; cpu is checked below.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    assert!(cpu < libc::CPU_SETSIZE as usize);
    // SAFETY: cpu below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: valid pointer and size; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    assert_eq!(
        rc,
        0,
        "pinning a thread to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
}

/// The CPU the calling thread runs on.
pub fn current_cpu() -> usize {
    // SAFETY: no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    assert!(
        cpu >= 0,
        "sched_getcpu: {}",
        std::io::Error::last_os_error()
    );
    cpu as usize
}

/// When and where one thread worked.
#[derive(Clone, Copy, Debug)]
pub struct Span {
    pub cpu: usize,
    /// CLOCK_MONOTONIC at the start and end of its work.
    pub start_ns: u64,
    pub end_ns: u64,
}

/// Runs `work(i, &lockstep)` on one thread per CPU of `cpus`, thread `i`
/// pinned to `cpus[i]`, all released at once; returns each one's span and
/// result, in the order of `cpus`. Panics if a thread finds itself on
/// another CPU than its own.
pub fn on_cpus<T: Send>(
    cpus: &[usize],
    work: impl Fn(usize, &Lockstep) -> T + Sync,
) -> Vec<(Span, T)> {
    let lockstep = Lockstep::new(cpus.len());
    thread::scope(|s| {
        let threads: Vec<_> = cpus
            .iter()
            .enumerate()
            .map(|(i, &cpu)| {
                let (lockstep, work) = (&lockstep, &work);
                s.spawn(move || {
                    let _failing = PoisonOnPanic(lockstep);
                    pin_to(cpu);
                    assert_eq!(current_cpu(), cpu, "thread {i} not on its CPU");
                    lockstep.wait();
                    let start_ns = clock_ns(libc::CLOCK_MONOTONIC);
                    let out = work(i, lockstep);
                    let end_ns = clock_ns(libc::CLOCK_MONOTONIC);
                    assert_eq!(current_cpu(), cpu, "thread {i} left its CPU");
                    let span = Span {
                        cpu,
                        start_ns,
                        end_ns,
                    };
                    (span, out)
                })
            })
            .collect();
        let joined: Vec<_> = threads.into_iter().map(|t| t.join()).collect();
        if joined.iter().any(Result::is_err) {
            // A thread's own failure rather than another's "one failed".
            let first = joined.into_iter().filter_map(Result::err).min_by_key(|e| {
                e.downcast_ref::<String>().map(String::as_str) == Some(FAILED)
                    || e.downcast_ref::<&str>() == Some(&FAILED)
            });
            std::panic::resume_unwind(first.expect("a failure"));
        }
        joined.into_iter().map(Result::unwrap).collect()
    })
}

/// How long every span was running at once (latest start to earliest
/// end), or `None` if some thread finished before another started.
pub fn overlap_ns(spans: &[Span]) -> Option<u64> {
    let start = spans.iter().map(|s| s.start_ns).max()?;
    let end = spans.iter().map(|s| s.end_ns).min()?;
    (end > start).then(|| end - start)
}

/// Asserts that the threads of `spans` raced: all at work at one time,
/// each on a CPU of its own, and the program's per-CPU counters (`before`
/// and `after` the race, as [`PerCpuCounters`](crate::maps::PerCpuCounters)
/// reads them) show each thread's `per_thread` frames, counted in
/// `counted`, on its CPU.
#[track_caller]
pub fn assert_raced(
    spans: &[Span],
    before: &[[u64; Counter::COUNT]],
    after: &[[u64; Counter::COUNT]],
    counted: &[Counter],
    per_thread: u64,
) {
    let overlap = overlap_ns(spans);
    println!("race: {spans:?}, all at work at once for {overlap:?} ns");
    assert!(
        overlap.is_some(),
        "the threads took turns instead of racing: {spans:?}"
    );
    let mut cpus: Vec<usize> = spans.iter().map(|s| s.cpu).collect();
    cpus.sort_unstable();
    cpus.dedup();
    assert!(
        cpus.len() == spans.len() && cpus.len() >= 2,
        "threads must race on CPUs of their own: {spans:?}"
    );
    for s in spans {
        let ran: u64 = counted
            .iter()
            .map(|&c| after[s.cpu][c as usize] - before[s.cpu][c as usize])
            .sum();
        assert_eq!(
            ran, per_thread,
            "CPU {}: the program counted {ran} of its thread's {per_thread} frames there",
            s.cpu
        );
    }
}

/// What the other threads of a failed race fail with.
const FAILED: &str = "another racing thread failed";

/// A spinning barrier for rounds: no thread starts round `n + 1` before
/// every thread has finished round `n`, and all start a round within
/// nanoseconds of each other (a sleeping barrier's wake-ups are tens of
/// microseconds apart, longer than a test run).
pub struct Lockstep {
    threads: usize,
    arrived: AtomicUsize,
    /// A thread failed: the others stop waiting for it.
    failed: AtomicBool,
}

impl Lockstep {
    pub fn new(threads: usize) -> Self {
        Self {
            threads,
            arrived: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
        }
    }

    /// Waits for every thread to arrive at this round; panics if one of
    /// them failed instead.
    pub fn wait(&self) {
        let me = self.arrived.fetch_add(1, Ordering::AcqRel) + 1;
        let target = me.div_ceil(self.threads) * self.threads;
        let mut spins = 0u32;
        while self.arrived.load(Ordering::Acquire) < target {
            assert!(!self.failed.load(Ordering::Relaxed), "{FAILED}");
            spins += 1;
            if spins < 10_000 {
                std::hint::spin_loop();
            } else {
                // The other thread is off its CPU (a busy machine): let
                // whatever runs here go first.
                thread::yield_now();
            }
        }
    }
}

/// Tells the other threads of a [`Lockstep`] when this one panics, so that
/// they fail too instead of waiting for it forever.
struct PoisonOnPanic<'a>(&'a Lockstep);

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.failed.store(true, Ordering::Relaxed);
        }
    }
}
