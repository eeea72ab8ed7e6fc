//! A reference socket reader: the least any socket-based collector must do
//! per heartbeat (the kernel's IP and UDP receive path, a `recvmmsg` copy, a
//! payload compare), with nothing else (no host table, no events). It stands
//! in for hb's socket mode when the hb under test has none, as a lower bound
//! of that mode's cost.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread,
};

use anyhow::{Context as _, Result, bail};
use hb_common::MAGIC;
use hb_testkit::netns::{self, Netns};

use super::cpu;

const BATCH: usize = 64;
const SLOT: usize = 64;

/// What the reader received, and its own CPU time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Received {
    pub heartbeats: u64,
    /// Datagrams whose payload is not `PyHB`.
    pub other: u64,
    pub cpu_ticks: u64,
}

pub struct Reader {
    stop: Arc<AtomicBool>,
    heartbeats: Arc<AtomicU64>,
    handle: Option<thread::JoinHandle<Result<Received>>>,
}

impl Reader {
    /// Binds `[::]:port` (IPv4 too) in `ns` and reads until stopped.
    pub fn start(ns: &Netns, port: u16) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let heartbeats = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready) = mpsc::channel();
        let path = ns.path();
        let handle = {
            let (stop, heartbeats) = (stop.clone(), heartbeats.clone());
            thread::Builder::new().name("socket-ref".into()).spawn(
                move || -> Result<Received> {
                    let sock = netns::within(&path, move || open(port))??;
                    let _ = ready_tx.send(());
                    read(&sock, &stop, &heartbeats)
                },
            )?
        };
        let mut r = Self {
            stop,
            heartbeats,
            handle: Some(handle),
        };
        if ready.recv().is_err() {
            // The thread ended before binding: its error says why.
            return Err(r.finish().unwrap_err());
        }
        Ok(r)
    }

    /// Heartbeats received so far.
    pub fn heartbeats(&self) -> u64 {
        self.heartbeats.load(Ordering::Relaxed)
    }

    /// Stops the reader; what it received.
    pub fn finish(&mut self) -> Result<Received> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take() {
            Some(h) => h
                .join()
                .map_err(|_| anyhow::anyhow!("the reference reader panicked"))?,
            None => bail!("reader already finished"),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if self.handle.is_some() {
            let _ = self.finish();
        }
    }
}

fn setsockopt(fd: &OwnedFd, level: i32, opt: i32, val: &[u8]) -> Result<()> {
    // SAFETY: val is a live buffer of the given length.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            val.as_ptr().cast(),
            val.len() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("setsockopt on the reference socket");
    }
    Ok(())
}

fn open(port: u16) -> Result<OwnedFd> {
    // SAFETY: plain socket call; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("UDP socket");
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    setsockopt(
        &fd,
        libc::IPPROTO_IPV6,
        libc::IPV6_V6ONLY,
        &0i32.to_ne_bytes(),
    )?;
    // A large buffer, as a production collector would set.
    let rcvbuf = (16i32 << 20).to_ne_bytes();
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &rcvbuf)?;
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: viewing a timeval as its bytes.
    let tv = unsafe {
        std::slice::from_raw_parts(
            (&tv as *const libc::timeval).cast::<u8>(),
            size_of::<libc::timeval>(),
        )
    };
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, tv)?;
    // SAFETY: sockaddr_in6 is plain data; zero is the unspecified address.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as u16;
    sa.sin6_port = port.to_be();
    // SAFETY: binding a valid sockaddr_in6 of the right length.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in6).cast(),
            size_of::<libc::sockaddr_in6>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("binding [::]:{port}"));
    }
    Ok(fd)
}

/// Reads with `recvmmsg` until `stop`, counting heartbeats.
fn read(fd: &OwnedFd, stop: &AtomicBool, heartbeats: &AtomicU64) -> Result<Received> {
    let start = cpu::thread_ticks()?;
    let mut bufs = vec![[0u8; SLOT]; BATCH];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: SLOT,
        })
        .collect();
    // SAFETY: mmsghdr is plain data.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let mut got = Received::default();
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: every header points at a live iovec and buffer.
        let n = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => continue,
                _ => return Err(err).context("recvmmsg"),
            }
        }
        let mut hb = 0;
        for (m, b) in msgs[..n as usize].iter().zip(&bufs) {
            if m.msg_len as usize == MAGIC.len() && b[..4] == MAGIC {
                hb += 1;
            } else {
                got.other += 1;
            }
        }
        got.heartbeats += hb;
        heartbeats.fetch_add(hb, Ordering::Relaxed);
    }
    got.cpu_ticks = cpu::thread_ticks()? - start;
    Ok(got)
}
