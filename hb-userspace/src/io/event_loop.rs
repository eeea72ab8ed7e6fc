//! The collector's single-threaded event loop on io_uring: sweep ticks are
//! absolute CLOCK_MONOTONIC timeouts, SIGINT/SIGTERM arrive through a
//! signalfd read, and other file descriptors are watched with one-shot polls.
//! Nothing busy-polls: the thread sleeps in `io_uring_enter` between events.
//!
//! Under load (socket mode: a completion per datagram) the thread is woken
//! for batches, not for every completion: completions are posted only when
//! it waits (`DEFER_TASKRUN`), and while they keep coming a wait returns once
//! `BATCH` are in, or `BATCH_WAIT_US` after it began if at least one is (the
//! kernel's minimum wait). The kernel ends such a wait after `BATCH_WAIT_US`
//! even with nothing in, so an idle loop goes back to plain waits and sleeps
//! until the next event. An event waits at most `BATCH_WAIT_US` for the
//! thread.

use std::{
    collections::VecDeque,
    io,
    mem::MaybeUninit,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    time::Duration,
};

use anyhow::{Context as _, Result};
use io_uring::{IoUring, opcode, squeue, types};

use super::Token;
use crate::clock::monotonic_ns;

/// Completions a wait returns for at once...
const BATCH: usize = 64;
/// ...unless this long has passed and at least one is in (µs).
const BATCH_WAIT_US: u32 = 500;

/// Why the loop woke up.
#[derive(Debug, PartialEq, Eq)]
pub enum Wake {
    /// A sweep is due.
    Tick,
    /// SIGINT or SIGTERM: time to stop; SIGUSR2: stop for a restart.
    Stop(&'static str),
    /// SIGHUP, which would otherwise end the process with the program
    /// attached.
    Hangup,
    /// An operation submitted with `submit` or `watch` completed; `flags`
    /// are the completion's (buffer id, more to come).
    Done {
        token: Token,
        result: i32,
        flags: u32,
    },
}

pub struct EventLoop {
    ring: IoUring,
    signals: OwnedFd,
    // Boxed: the kernel writes into / reads from these while the ops are in
    // flight, so they must not move.
    siginfo: Box<MaybeUninit<libc::signalfd_siginfo>>,
    tick_at: Box<types::Timespec>,
    period_ns: u64,
    next_tick_ns: u64,
    pending: VecDeque<Wake>,
    /// The kernel has the minimum wait (6.12): waits can be batched.
    batched: bool,
    /// The last wait brought more than one completion: batch the next.
    busy: bool,
}

impl EventLoop {
    /// Blocks SIGINT and SIGTERM for this thread (they are read from the
    /// signalfd instead) and arms the first tick one `period` from now.
    pub fn new(period: Duration) -> Result<Self> {
        let signals = block_stop_signals()?;
        // A large completion queue: a multishot receive posts one
        // completion a datagram, and bursts arrive between two waits.
        // Only this thread uses the ring, so completions can wait for it
        // (DEFER_TASKRUN, 6.1) instead of interrupting it one by one.
        let (sq, cq) = (64, 8192);
        let ring = IoUring::builder()
            .setup_cqsize(cq)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(sq)
            .or_else(|_| IoUring::builder().setup_cqsize(cq).build(sq))
            .context("creating an io_uring (is io_uring disabled by sysctl?)")?;
        let batched = ring.params().is_feature_min_timeout();
        let period_ns = period.as_nanos() as u64;
        let mut this = Self {
            ring,
            signals,
            siginfo: Box::new(MaybeUninit::uninit()),
            tick_at: Box::new(types::Timespec::new()),
            period_ns,
            next_tick_ns: monotonic_ns() + period_ns,
            pending: VecDeque::new(),
            batched,
            busy: false,
        };
        this.arm_tick()?;
        this.arm_signal()?;
        Ok(this)
    }

    /// Wakes with `Done { token, .. }` once `fd` is readable. Watch it again
    /// to get the next one.
    pub fn watch(&mut self, fd: RawFd, token: Token) -> Result<()> {
        let sqe = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .build()
            .user_data(token.encode());
        self.push(sqe)
    }

    /// Submits operations (their user data an encoded `Token`); each
    /// completion wakes with `Done { token, .. }`.
    /// Entries linked with `IO_LINK` are pushed in order by passing them
    /// together.
    ///
    /// # Safety
    /// Every buffer the entries point to must stay valid and unmoved until
    /// their completions arrive.
    pub unsafe fn submit(&mut self, entries: &[squeue::Entry]) -> Result<()> {
        let room = {
            let sq = self.ring.submission();
            sq.capacity() - sq.len()
        };
        if room < entries.len() {
            self.ring.submit().context("submitting to io_uring")?;
        }
        // SAFETY: the caller guarantees the buffers.
        unsafe {
            self.ring
                .submission()
                .push_multiple(entries)
                .map_err(|_| anyhow::anyhow!("io_uring submission queue full"))?;
        }
        Ok(())
    }

    /// Registers a ring of provided buffers as buffer group `bgid`.
    ///
    /// # Safety
    /// `addr` must point to `entries` page-aligned ring entries that stay
    /// valid until the ring is dropped.
    pub unsafe fn register_buf_ring(&self, addr: u64, entries: u16, bgid: u16) -> io::Result<()> {
        // SAFETY: the caller guarantees the memory.
        unsafe {
            self.ring
                .submitter()
                .register_buf_ring_with_flags(addr, entries, bgid, 0)
        }
    }

    /// Waits for the next event.
    pub fn wait(&mut self) -> Result<Wake> {
        loop {
            if let Some(w) = self.pending.pop_front() {
                return Ok(w);
            }
            let waited = if self.batched && self.busy {
                let args = types::SubmitArgs::new().min_wait_usec(BATCH_WAIT_US);
                self.ring.submitter().submit_with_args(BATCH, &args)
            } else {
                self.ring.submit_and_wait(1)
            };
            match waited {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The minimum wait ran out with nothing in.
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
                Err(e) => return Err(e).context("waiting on io_uring"),
            }
            let completions: Vec<(u64, i32, u32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags()))
                .collect();
            self.busy = completions.len() > 1;
            for (data, res, flags) in completions {
                let Some(token) = Token::decode(data) else {
                    log::debug!("io_uring completion with unknown user data {data:#x}");
                    continue;
                };
                match token {
                    Token::Tick => {
                        // -ETIME is the normal expiry.
                        if res < 0 && res != -libc::ETIME && res != -libc::ECANCELED {
                            return Err(io::Error::from_raw_os_error(-res)).context("sweep timer");
                        }
                        self.pending.push_back(Wake::Tick);
                        self.schedule_next_tick();
                        self.arm_tick()?;
                    }
                    Token::Signal => {
                        if res < 0 {
                            return Err(io::Error::from_raw_os_error(-res))
                                .context("reading signalfd");
                        }
                        // SAFETY: a successful read filled the struct.
                        let signo = unsafe { self.siginfo.assume_init_ref().ssi_signo } as i32;
                        self.pending.push_back(match signo {
                            libc::SIGHUP => Wake::Hangup,
                            libc::SIGINT => Wake::Stop("SIGINT"),
                            libc::SIGUSR2 => Wake::Stop("SIGUSR2"),
                            _ => Wake::Stop("SIGTERM"),
                        });
                        self.arm_signal()?;
                    }
                    token => self.pending.push_back(Wake::Done {
                        token,
                        result: res,
                        flags,
                    }),
                }
            }
        }
    }

    /// Next tick one period after the previous one; ticks missed because a
    /// sweep overran are skipped, not bunched up.
    fn schedule_next_tick(&mut self) {
        let now = monotonic_ns();
        self.next_tick_ns += self.period_ns;
        if self.next_tick_ns <= now {
            let behind = (now - self.next_tick_ns) / self.period_ns + 1;
            self.next_tick_ns += behind * self.period_ns;
        }
    }

    fn arm_tick(&mut self) -> Result<()> {
        *self.tick_at = types::Timespec::new()
            .sec(self.next_tick_ns / 1_000_000_000)
            .nsec((self.next_tick_ns % 1_000_000_000) as u32);
        // ABS timeouts use CLOCK_MONOTONIC, the clock the program stamps with.
        let sqe = opcode::Timeout::new(&*self.tick_at)
            .flags(types::TimeoutFlags::ABS)
            .build()
            .user_data(Token::Tick.encode());
        self.push(sqe)
    }

    fn arm_signal(&mut self) -> Result<()> {
        let sqe = opcode::Read::new(
            types::Fd(self.signals.as_raw_fd()),
            self.siginfo.as_mut_ptr().cast(),
            size_of::<libc::signalfd_siginfo>() as u32,
        )
        .build()
        .user_data(Token::Signal.encode());
        self.push(sqe)
    }

    fn push(&mut self, sqe: squeue::Entry) -> Result<()> {
        // SAFETY: every buffer an entry points to is owned by `self` (boxed)
        // or by the caller for as long as the fd is watched.
        unsafe {
            if self.ring.submission().push(&sqe).is_err() {
                self.ring.submit().context("submitting to io_uring")?;
                self.ring
                    .submission()
                    .push(&sqe)
                    .map_err(|_| anyhow::anyhow!("io_uring submission queue full"))?;
            }
        }
        Ok(())
    }
}

fn block_stop_signals() -> Result<OwnedFd> {
    // SAFETY: plain libc calls on a local, initialised sigset.
    unsafe {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
        libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
        libc::sigaddset(set.as_mut_ptr(), libc::SIGUSR2);
        libc::sigaddset(set.as_mut_ptr(), libc::SIGHUP);
        let set = set.assume_init();
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc))
                .context("blocking SIGINT/SIGTERM/SIGUSR2/SIGHUP");
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("creating a signalfd");
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::IngestOp;

    #[test]
    fn ticks_follow_the_period_and_signals_stop() {
        let mut ev = EventLoop::new(Duration::from_millis(20)).unwrap();
        let start = monotonic_ns();
        for _ in 0..3 {
            assert_eq!(ev.wait().unwrap(), Wake::Tick);
        }
        let elapsed = monotonic_ns() - start;
        // Three ticks of 20 ms cannot come sooner than 60 ms.
        assert!(elapsed >= 60_000_000, "{elapsed} ns");
        // SIGHUP and SIGTERM are blocked for this thread, so they wait in
        // the signalfd.
        // SAFETY: sending a signal to our own thread.
        unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGHUP) };
        loop {
            match ev.wait().unwrap() {
                Wake::Tick => continue,
                w => {
                    assert_eq!(w, Wake::Hangup);
                    break;
                }
            }
        }
        // SAFETY: as above.
        unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGTERM) };
        loop {
            match ev.wait().unwrap() {
                Wake::Tick => continue,
                w => {
                    assert_eq!(w, Wake::Stop("SIGTERM"));
                    break;
                }
            }
        }
    }

    /// Voluntary context switches of this thread so far.
    fn switches() -> u64 {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn an_idle_loop_sleeps_after_a_burst() {
        let mut ev = EventLoop::new(Duration::from_millis(300)).unwrap();
        // A burst of completions (no-ops) puts the loop in batched waits...
        let nops: Vec<_> = (0..50)
            .map(|slot| {
                opcode::Nop::new()
                    .build()
                    .user_data(Token::Ingest(IngestOp::Recv { slot }).encode())
            })
            .collect();
        // SAFETY: no-ops point to no buffers.
        unsafe { ev.submit(&nops).unwrap() };
        let mut done = 0;
        while done < nops.len() {
            match ev.wait().unwrap() {
                Wake::Done { result, .. } => {
                    assert_eq!(result, 0);
                    done += 1;
                }
                w => panic!("unexpected {w:?}"),
            }
        }
        // ...and with nothing more coming it sleeps until the tick, instead
        // of waking every BATCH_WAIT_US (600 times in 300 ms).
        let before = switches();
        assert_eq!(ev.wait().unwrap(), Wake::Tick);
        let woken = switches() - before;
        assert!(woken <= 10, "woken {woken} times while idle");
    }

    #[test]
    fn watched_fd_wakes_when_readable() {
        let mut ev = EventLoop::new(Duration::from_secs(3600)).unwrap();
        let mut fds = [0; 2];
        // SAFETY: valid array for two fds.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let token = Token::Ingest(IngestOp::KernelLog);
        ev.watch(fds[0], token).unwrap();
        // SAFETY: writing one byte from a valid buffer to our pipe.
        assert_eq!(unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) }, 1);
        assert!(matches!(ev.wait().unwrap(), Wake::Done { token: t, .. } if t == token));
        // SAFETY: closing our own fds.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
}
