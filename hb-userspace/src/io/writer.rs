//! Event lines reach stdout through the ring: a sweep appends its lines to a
//! buffer and returns at once; a ring write drains it. A slow reader of
//! stdout (a pipe to a log shipper, say) delays output, never sweeps: lines
//! wait in memory until written, up to [`queue_bound`] bytes (256 bytes a
//! host of the table, at least 256 MiB: every host's line of one sweep,
//! twice over). Past that, a sweep's lines are dropped whole (never part of
//! a line) and the drop is logged, once when it starts and once with how
//! many lines when the reader has caught up: memory stays bounded and no
//! line is lost silently. A
//! stdout that fails (its reader gone) is given up with one log line; the
//! collector goes on recording and serving its endpoints.
//!
//! The buffers give their memory back once written: a sweep that reported
//! a million new hosts queues about 100 MB, which the quiet sweeps after it
//! do not need.

use std::{
    io::{self, Write as _},
    os::fd::RawFd,
};

use anyhow::{Context as _, Result};
use io_uring::{opcode, types};

use super::{EventLoop, Token, Wake};

/// Bytes of buffer kept once written (as the sweeper keeps of its own): a
/// quiet sweep's summary line, a busy one's few hundred events.
const KEEP: usize = 64 << 10;
/// Bytes waiting for a slow reader past which a sweep's lines are dropped,
/// for a table of `max_hosts`: room for a line of every host (a `new` line
/// is about 100 bytes, more with an inventory's names) twice over, so that
/// a burst of the whole table is delayed, not cut, by a reader that keeps
/// up on average. At least 256 MiB.
pub fn queue_bound(max_hosts: u32) -> usize {
    (max_hosts as usize).saturating_mul(256).max(256 << 20)
}

/// Returns freed heap pages to the system. glibc keeps the pages of freed
/// blocks below its mmap threshold (which rises to 32 MiB once a block that
/// large was freed) resident until told; after a burst the sweep's and the
/// writer's buffers are such blocks. Called once a big buffer was shrunk.
pub fn give_back() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub struct RingWriter {
    fd: RawFd,
    /// Lines waiting for the write in flight to finish.
    pending: Vec<u8>,
    /// The buffer being written, and how much of it is done.
    inflight: Vec<u8>,
    written: usize,
    busy: bool,
    /// A write failed: lines are no longer written.
    failed: bool,
    /// Bytes written since the start.
    total: u64,
    /// Lines dropped while the reader was too slow, each as (bytes written
    /// before them, their length), until the reader reaches them.
    gaps: std::collections::VecDeque<(u64, u64)>,
    /// Bytes of dropped lines the reader has passed.
    skipped: u64,
    /// Lines and bytes dropped since the reader last caught up.
    dropping: (u64, u64),
    keep: usize,
    max_queued: usize,
}

impl RingWriter {
    /// The writer of a collector whose table holds `max_hosts`.
    pub fn stdout(max_hosts: u32) -> Self {
        Self::with_limits(libc::STDOUT_FILENO, KEEP, queue_bound(max_hosts))
    }

    /// A writer to `fd`, which must stay open as long as the writer.
    #[cfg(test)]
    fn new(fd: RawFd) -> Self {
        Self::with_limits(fd, KEEP, queue_bound(0))
    }

    fn with_limits(fd: RawFd, keep: usize, max_queued: usize) -> Self {
        Self {
            fd,
            pending: Vec::new(),
            inflight: Vec::new(),
            written: 0,
            busy: false,
            failed: false,
            total: 0,
            gaps: Default::default(),
            skipped: 0,
            dropping: (0, 0),
            keep,
            max_queued,
        }
    }

    /// Bytes written since the start, of all that was queued. Once writing
    /// failed, everything counts as written: those lines are given up, and
    /// what they tell must not wait for them forever. Lines dropped for a
    /// slow reader count as written once the reader has had the lines
    /// before them: they are given up too.
    pub fn bytes_written(&self) -> u64 {
        if self.failed {
            u64::MAX
        } else {
            self.total + self.skipped
        }
    }

    /// Bytes queued and not yet written.
    fn queued(&self) -> usize {
        self.pending.len() + (self.inflight.len() - self.written)
    }

    /// Queues complete lines and starts writing if idle; drops them if
    /// the reader is more than its bound behind.
    pub fn write(&mut self, ev: &mut EventLoop, bytes: &[u8]) -> Result<()> {
        if self.failed || bytes.is_empty() {
            return Ok(());
        }
        let queued = self.queued();
        // A reader that has caught up takes any sweep's lines, however many.
        if queued > 0 && queued + bytes.len() > self.max_queued {
            let lines = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
            if self.dropping == (0, 0) {
                log::error!(
                    "stdout's reader is {queued} bytes behind (at most {} may wait): event lines are dropped until it catches up, then counted in a log line; /metrics and /silent are unaffected",
                    self.max_queued
                );
            }
            self.dropping.0 += lines;
            self.dropping.1 += bytes.len() as u64;
            self.gaps
                .push_back((self.total + queued as u64, bytes.len() as u64));
            return Ok(());
        }
        self.pending.extend_from_slice(bytes);
        self.start(ev)
    }

    /// As `write`, but takes the lines from `lines` rather than copying
    /// them where nothing waits to be written (the usual case): a sweep
    /// that reported a million hosts is not held twice. `lines` is left
    /// empty, with a buffer of the writer's in its place.
    pub fn write_from(&mut self, ev: &mut EventLoop, lines: &mut Vec<u8>) -> Result<()> {
        let queued = self.queued();
        // Where `write` would drop them or append them behind others, it
        // does; otherwise they become the buffer to write.
        let fits = queued == 0 || queued + lines.len() <= self.max_queued;
        if self.failed || lines.is_empty() || !self.pending.is_empty() || !fits {
            let written = self.write(ev, lines);
            lines.clear();
            return written;
        }
        std::mem::swap(&mut self.pending, lines);
        self.start(ev)
    }

    /// Passes the dropped lines the reader has reached.
    fn pass_gaps(&mut self) {
        while let Some(&(at, len)) = self.gaps.front()
            && at <= self.total
        {
            self.skipped += len;
            self.gaps.pop_front();
        }
        if self.gaps.is_empty() && self.dropping != (0, 0) {
            let (lines, bytes) = std::mem::take(&mut self.dropping);
            log::error!(
                "stdout's reader has caught up: {lines} event lines ({bytes} bytes) were dropped while it was more than {} bytes behind",
                self.max_queued
            );
        }
    }

    fn start(&mut self, ev: &mut EventLoop) -> Result<()> {
        if self.busy || self.pending.is_empty() {
            return Ok(());
        }
        std::mem::swap(&mut self.pending, &mut self.inflight);
        self.written = 0;
        self.busy = true;
        self.submit(ev)
    }

    fn submit(&mut self, ev: &mut EventLoop) -> Result<()> {
        let rest = &self.inflight[self.written..];
        // Offset -1: the file's own position (and what pipes require).
        let sqe = opcode::Write::new(types::Fd(self.fd), rest.as_ptr(), rest.len() as u32)
            .offset(u64::MAX)
            .build()
            .user_data(Token::Stdout.encode());
        // SAFETY: `inflight` is neither touched nor freed while busy.
        unsafe { ev.submit(&[sqe]) }
    }

    /// Handles the completion of a write.
    pub fn complete(&mut self, ev: &mut EventLoop, result: i32) -> Result<()> {
        if result < 0 {
            let err = io::Error::from_raw_os_error(-result);
            if err.kind() == io::ErrorKind::Interrupted || err.kind() == io::ErrorKind::WouldBlock {
                return self.submit(ev);
            }
            self.give_up(&err.to_string());
            return Ok(());
        }
        if result == 0 {
            self.give_up("wrote nothing");
            return Ok(());
        }
        self.written += result as usize;
        self.total += result as u64;
        if self.written < self.inflight.len() {
            return self.submit(ev);
        }
        self.busy = false;
        self.inflight.clear();
        self.written = 0;
        // What a burst needed is given back; the pending buffer becomes
        // this one at the next start, so both shrink.
        if self.inflight.capacity() > self.keep {
            self.inflight.shrink_to(self.keep);
            give_back();
        }
        self.pass_gaps();
        self.start(ev)
    }

    fn give_up(&mut self, why: &str) {
        log::error!(
            "writing events to stdout failed ({why}): no more event lines are written; hb keeps recording and serving /metrics and /silent (its stdout reader is gone?)"
        );
        self.failed = true;
        self.busy = false;
        self.pending = Vec::new();
        self.inflight = Vec::new();
    }

    #[cfg(test)]
    fn busy(&self) -> bool {
        self.busy
    }

    /// At exit: lets the write in flight finish, then writes what is left.
    /// A signal meanwhile gives up on a stdout reader that is stuck (lines
    /// not yet written are lost then, and only then). Other completions
    /// are dropped: nothing else runs any more.
    pub fn drain(&mut self, ev: &mut EventLoop) -> Result<()> {
        while self.busy {
            match ev.wait()? {
                Wake::Done {
                    token: Token::Stdout,
                    result,
                    ..
                } => self.complete(ev, result)?,
                Wake::Stop(_) => return Ok(()),
                _ => {}
            }
        }
        self.finish()
    }

    /// Writes what is left, blocking; call once the write in flight is done.
    fn finish(&mut self) -> Result<()> {
        debug_assert!(!self.busy);
        if self.failed || self.pending.is_empty() {
            return Ok(());
        }
        // SAFETY: `fd` is open for as long as the writer (see `new`); the
        // ManuallyDrop keeps the File from closing it.
        let mut out = std::mem::ManuallyDrop::new(unsafe {
            <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(self.fd)
        });
        out.write_all(&self.pending)
            .context("writing events to stdout")?;
        self.total += self.pending.len() as u64;
        self.pending.clear();
        self.pending.shrink_to(self.keep);
        self.pass_gaps();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Read as _, os::fd::FromRawFd as _, time::Duration};

    use super::*;

    #[test]
    fn lines_arrive_in_order_through_the_ring() {
        let mut ev = EventLoop::new(Duration::from_secs(3600)).unwrap();
        let mut fds = [0; 2];
        // SAFETY: valid array for two fds.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the read end is ours.
        let mut reader = unsafe { std::fs::File::from_raw_fd(fds[0]) };
        let mut w = RingWriter::new(fds[1]);
        w.write(&mut ev, b"one\n").unwrap();
        // Queued behind the write in flight.
        w.write(&mut ev, b"two\n").unwrap();
        while w.busy() {
            if let Wake::Done {
                token: Token::Stdout,
                result,
                ..
            } = ev.wait().unwrap()
            {
                w.complete(&mut ev, result).unwrap();
            }
        }
        w.write(&mut ev, b"three\n").unwrap();
        // In flight when the collector stops: drained, then what came after.
        w.write(&mut ev, b"four\n").unwrap();
        w.drain(&mut ev).unwrap();
        // SAFETY: closing our write end so the read sees EOF.
        unsafe { libc::close(fds[1]) };
        let mut got = String::new();
        reader.read_to_string(&mut got).unwrap();
        assert_eq!(got, "one\ntwo\nthree\nfour\n");
    }

    #[test]
    fn a_stdout_without_reader_is_given_up_not_fatal() {
        let mut ev = EventLoop::new(Duration::from_secs(3600)).unwrap();
        let mut fds = [0; 2];
        // SAFETY: valid array for two fds.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: closing our own read end: writes now fail with EPIPE.
        unsafe { libc::close(fds[0]) };
        let mut w = RingWriter::new(fds[1]);
        w.write(&mut ev, b"lost\n").unwrap();
        while w.busy() {
            if let Wake::Done {
                token: Token::Stdout,
                result,
                ..
            } = ev.wait().unwrap()
            {
                assert!(result < 0, "a write without reader succeeded");
                w.complete(&mut ev, result).unwrap();
            }
        }
        // Nothing more is queued or written, and stopping is clean.
        w.write(&mut ev, b"dropped\n").unwrap();
        assert!(!w.busy() && w.pending.is_empty());
        w.drain(&mut ev).unwrap();
        // SAFETY: closing our own write end.
        unsafe { libc::close(fds[1]) };
    }

    /// Lines of `n` bytes each, `count` of them, numbered from `from`.
    fn lines(from: usize, count: usize, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(count * n);
        for i in from..from + count {
            let head = format!("{i:08} ");
            out.extend_from_slice(head.as_bytes());
            out.resize(out.len() + n - head.len() - 1, b'.');
            out.push(b'\n');
        }
        out
    }

    /// Drives the writer's completions until it is idle.
    fn settle(ev: &mut EventLoop, w: &mut RingWriter) {
        while w.busy() {
            if let Wake::Done {
                token: Token::Stdout,
                result,
                ..
            } = ev.wait().unwrap()
            {
                w.complete(ev, result).unwrap();
            }
        }
    }

    /// A pipe whose read end a thread drains to the end; joined for what
    /// it read.
    fn drained_pipe() -> (RawFd, std::thread::JoinHandle<Vec<u8>>) {
        let mut fds = [0; 2];
        // SAFETY: valid array for two fds.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the read end is ours, moved to the thread.
        let mut reader = unsafe { std::fs::File::from_raw_fd(fds[0]) };
        let t = std::thread::spawn(move || {
            let mut got = Vec::new();
            reader.read_to_end(&mut got).unwrap();
            got
        });
        (fds[1], t)
    }

    #[test]
    fn the_bound_holds_a_whole_tables_lines_twice() {
        // A JSON `new` line of an IPv6 host is about 100 bytes.
        let line = br#"{"ts":"2026-11-30T13:58:38.123Z","event":"new","host":"fd00:4842:1::98:9681","last_seen_ago_ms":412}"#.len() + 1;
        for hosts in [1, 1 << 20, 10 << 20, 1 << 28] {
            assert!(queue_bound(hosts) >= hosts as usize * line * 2, "{hosts}");
            assert!(queue_bound(hosts) >= 256 << 20);
        }
        assert_eq!(queue_bound(1000), 256 << 20);
    }

    #[test]
    fn a_burst_gives_its_memory_back_once_written() {
        let mut ev = EventLoop::new(Duration::from_secs(3600)).unwrap();
        let (fd, reader) = drained_pipe();
        let mut w = RingWriter::new(fd);
        // A burst bigger than what is kept, some of it queued behind the
        // write in flight (so both buffers grow).
        let mut sent = Vec::new();
        for k in 0..4 {
            let b = lines(k * 20_000, 20_000, 100);
            w.write(&mut ev, &b).unwrap();
            sent.extend_from_slice(&b);
        }
        assert!(sent.len() > 4 * KEEP);
        settle(&mut ev, &mut w);
        assert_eq!(w.bytes_written(), sent.len() as u64);
        // The promise: once flushed, no more than the keep size each.
        assert!(
            w.pending.capacity() <= KEEP && w.inflight.capacity() <= KEEP,
            "kept {} + {} bytes of buffer after the burst was written",
            w.pending.capacity(),
            w.inflight.capacity()
        );
        // And the writer still works with what it kept.
        let tail = lines(999_999, 3, 100);
        w.write(&mut ev, &tail).unwrap();
        sent.extend_from_slice(&tail);
        w.drain(&mut ev).unwrap();
        assert!(w.pending.capacity() <= KEEP && w.inflight.capacity() <= KEEP);
        // SAFETY: closing our write end so the reader sees EOF.
        unsafe { libc::close(fd) };
        assert!(reader.join().unwrap() == sent, "lines lost or reordered");
    }

    #[test]
    fn lines_handed_over_are_taken_not_copied() {
        let mut ev = EventLoop::new(Duration::from_secs(3600)).unwrap();
        let (fd, reader) = drained_pipe();
        let mut w = RingWriter::new(fd);
        let mut sent = Vec::new();
        // Nothing waits: the very buffer given is written.
        let mut a = lines(0, 20_000, 100);
        sent.extend_from_slice(&a);
        let at = a.as_ptr();
        w.write_from(&mut ev, &mut a).unwrap();
        assert!(a.is_empty());
        assert!(
            w.busy() && w.inflight.as_ptr() == at,
            "the lines were copied"
        );
        // While it is written (no completion handled yet), the next lines
        // wait as they are...
        let mut b = lines(20_000, 10, 100);
        sent.extend_from_slice(&b);
        let at = b.as_ptr();
        w.write_from(&mut ev, &mut b).unwrap();
        assert!(b.is_empty() && w.pending.as_ptr() == at, "copied");
        // ...and lines after them are appended to them.
        let mut c = lines(20_010, 10, 100);
        sent.extend_from_slice(&c);
        w.write_from(&mut ev, &mut c).unwrap();
        assert!(c.is_empty());
        settle(&mut ev, &mut w);
        assert_eq!(w.bytes_written(), sent.len() as u64);
        assert!(w.pending.capacity() <= KEEP && w.inflight.capacity() <= KEEP);
        w.drain(&mut ev).unwrap();
        // SAFETY: closing our write end so the reader sees EOF.
        unsafe { libc::close(fd) };
        assert!(reader.join().unwrap() == sent, "lines lost or reordered");
    }

    #[test]
    fn a_reader_too_far_behind_loses_whole_sweeps_counted_not_memory() {
        let mut ev = EventLoop::new(Duration::from_secs(3600)).unwrap();
        let mut fds = [0; 2];
        // SAFETY: valid array for two fds.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let max = 64 << 10;
        let mut w = RingWriter::with_limits(fds[1], 1024, max);
        // Nobody reads yet: the pipe takes 64 KiB at most, the rest waits.
        let a = lines(0, 400, 100);
        let b = lines(400, 400, 100);
        let c = lines(800, 10, 100);
        // Accepted: the reader had caught up.
        w.write(&mut ev, &a).unwrap();
        // Would queue 80 KB: dropped whole, handed over as the sweeps'
        // lines are.
        w.write_from(&mut ev, &mut b.clone()).unwrap();
        assert!(
            w.queued() <= max,
            "{} bytes queued past the bound",
            w.queued()
        );
        // Fits beside what waits: queued after the gap.
        w.write_from(&mut ev, &mut c.clone()).unwrap();
        assert!(w.queued() <= max);
        assert_eq!(w.dropping, (400, b.len() as u64), "the drop is counted");
        // SAFETY: the read end is ours.
        let mut reader = unsafe { std::fs::File::from_raw_fd(fds[0]) };
        let t = std::thread::spawn(move || {
            let mut got = Vec::new();
            reader.read_to_end(&mut got).unwrap();
            got
        });
        settle(&mut ev, &mut w);
        // Everything handed over is settled: written, or given up.
        assert_eq!(
            w.bytes_written(),
            (a.len() + b.len() + c.len()) as u64,
            "dropped lines never count as written, the sweeper waits forever"
        );
        assert_eq!(w.dropping, (0, 0), "the catch-up was not reported");
        // SAFETY: closing our write end so the reader sees EOF.
        unsafe { libc::close(fds[1]) };
        let got = t.join().unwrap();
        assert!(got == [a, c].concat(), "not A then C, whole lines");
    }
}
