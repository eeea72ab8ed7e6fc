//! Event lines reach stdout through the ring: a sweep appends its lines to a
//! buffer and returns at once; a ring write drains it. A slow reader of
//! stdout (a pipe to a log shipper, say) delays output, never sweeps, and
//! no line is dropped: lines wait in memory until written. A stdout that
//! fails (its reader gone) is given up with one log line; the collector
//! goes on recording and serving its endpoints.

use std::{
    io::{self, Write as _},
    os::fd::RawFd,
};

use anyhow::{Context as _, Result};
use io_uring::{opcode, types};

use super::{EventLoop, Token, Wake};

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
}

impl RingWriter {
    pub fn stdout() -> Self {
        Self::new(libc::STDOUT_FILENO)
    }

    /// A writer to `fd`, which must stay open as long as the writer.
    pub fn new(fd: RawFd) -> Self {
        Self {
            fd,
            pending: Vec::new(),
            inflight: Vec::new(),
            written: 0,
            busy: false,
            failed: false,
            total: 0,
        }
    }

    /// Bytes written since the start, of all that was queued. Once writing
    /// failed, everything counts as written: those lines are given up, and
    /// what they tell must not wait for them forever.
    pub fn bytes_written(&self) -> u64 {
        if self.failed { u64::MAX } else { self.total }
    }

    /// Queues complete lines and starts writing if idle.
    pub fn write(&mut self, ev: &mut EventLoop, bytes: &[u8]) -> Result<()> {
        if self.failed {
            return Ok(());
        }
        self.pending.extend_from_slice(bytes);
        self.start(ev)
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
}
