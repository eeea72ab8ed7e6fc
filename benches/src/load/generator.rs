//! The traffic generator: an AF_PACKET socket on the generator's end of the
//! veth pair, frames built per batch and sent with `sendmmsg`, paced to a
//! rate or as fast as the kernel takes them. Every run is bounded by a
//! packet count and a wall-clock deadline.
//!
//! `sent` counts frames the kernel accepted. The socket bypasses the qdisc,
//! so a frame the veth pair cannot take (its receive ring or backlog full)
//! is refused to the sender (ENOBUFS) rather than dropped silently: it is
//! retried, and never counted as sent.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use hb_common::MAGIC;
use hb_testkit::{
    frames::{MAX_FRAME, write_udp},
    netns::Netns,
};

use super::{
    fleet::{Fleet, Hosts},
    signals,
    topology::ENDS,
};

/// Junk payload lengths: at least as long as a heartbeat, so that every
/// junk datagram is a whole datagram with the wrong payload (shorter ones
/// may count as `truncated`, depending on how the frame ends).
const MIN_JUNK: usize = 4;
const MAX_JUNK: usize = 16;

/// What to send for a while.
#[derive(Debug, Clone)]
pub struct Traffic {
    /// The hosts that beat, each once per round.
    pub hosts: Hosts,
    /// Heartbeats per second; `None`: as fast as possible.
    pub rate: Option<f64>,
    /// Fill every batch with junk datagrams to the heartbeat port (random
    /// sources and payloads) after the heartbeats that are due.
    pub junk: bool,
    pub duration: Duration,
    /// Hard cap on frames sent (heartbeats and junk).
    pub max_packets: u64,
}

/// What a run sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sent {
    pub heartbeats: u64,
    pub junk: u64,
    /// Sends refused by the kernel (retried).
    pub refused: u64,
    pub elapsed: Duration,
    /// Largest delay behind the paced schedule.
    pub max_lag: Duration,
}

impl Sent {
    pub fn add(&mut self, o: &Sent) {
        self.heartbeats += o.heartbeats;
        self.junk += o.junk;
        self.refused += o.refused;
        self.elapsed += o.elapsed;
        self.max_lag = self.max_lag.max(o.max_lag);
    }
}

pub struct Generator {
    fd: OwnedFd,
    fleet: Fleet,
    port: u16,
    batch: usize,
    /// Next host index to consider: rounds carry on across runs, so a host
    /// keeps its place (and its period) when the set of hosts changes.
    cursor: u32,
    rng: u64,
    bufs: Vec<[u8; MAX_FRAME]>,
}

impl Generator {
    /// Opens the socket on interface `iface` of namespace `ns`.
    pub fn open(ns: &Netns, iface: &str, fleet: Fleet, port: u16, batch: usize) -> Result<Self> {
        if !(1..=1024).contains(&batch) {
            bail!("batch size {batch} out of range (1-1024)");
        }
        let iface = iface.to_string();
        let fd = ns.within(move || open_socket(&iface))??;
        Ok(Self {
            fd,
            fleet,
            port,
            batch,
            cursor: 0,
            rng: 0x853c_49e6_748f_ea9b,
            bufs: vec![[0u8; MAX_FRAME]; batch],
        })
    }

    /// Sends `t` until its duration, its packet cap or a stop request.
    pub fn run(&mut self, t: &Traffic) -> Result<Sent> {
        if t.hosts.is_empty() && !t.junk {
            bail!("nothing to send");
        }
        let batch = self.batch;
        let mut iovs: Vec<libc::iovec> = self
            .bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: 0,
            })
            .collect();
        // SAFETY: mmsghdr is plain data; zeroed is a valid empty header.
        let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; batch];

        let start = Instant::now();
        let deadline = start + t.duration;
        let mut sent = Sent::default();
        let mut kinds = vec![false; batch]; // true: junk
        while sent.heartbeats + sent.junk < t.max_packets && !signals::stopping() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let room = (t.max_packets - sent.heartbeats - sent.junk).min(batch as u64) as usize;
            let due = match t.rate {
                None => room,
                Some(rate) => {
                    let target = (now.duration_since(start).as_secs_f64() * rate) as u64 + 1;
                    let behind = target.saturating_sub(sent.heartbeats);
                    if behind > batch as u64 {
                        sent.max_lag = sent
                            .max_lag
                            .max(Duration::from_secs_f64(behind as f64 / rate));
                    }
                    behind.min(room as u64) as usize
                }
            };
            let due = if t.hosts.is_empty() { 0 } else { due };
            let fill = if t.junk { room } else { due };
            if fill == 0 {
                // Ahead of the schedule: wait for the next heartbeat's turn.
                let rate = t.rate.unwrap_or(1e9);
                let next = start + Duration::from_secs_f64((sent.heartbeats as f64) / rate);
                let wait = next
                    .saturating_duration_since(now)
                    .min(Duration::from_millis(1));
                thread::sleep(wait.max(Duration::from_micros(20)));
                continue;
            }
            for k in 0..fill {
                let len = if k < due {
                    let host = self.next_host(&t.hosts);
                    let src = self.fleet.addr(host);
                    kinds[k] = false;
                    write_udp(&mut self.bufs[k], &ENDS, src, self.port, &MAGIC)
                } else {
                    kinds[k] = true;
                    self.junk_frame(k)
                };
                iovs[k].iov_len = len;
                msgs[k].msg_hdr.msg_iov = &mut iovs[k];
                msgs[k].msg_hdr.msg_iovlen = 1;
            }
            let (done, refused) = self.send(&mut msgs[..fill], deadline)?;
            sent.refused += refused;
            let junk = kinds[..done].iter().filter(|&&j| j).count() as u64;
            sent.junk += junk;
            sent.heartbeats += done as u64 - junk;
            if done < due {
                // Hosts picked but not sent (deadline): the next run starts
                // with the first of them.
                self.rewind(&t.hosts, due - done);
            }
        }
        sent.elapsed = start.elapsed();
        Ok(sent)
    }

    /// Sends one heartbeat from each of `hosts` now, in batches, retrying
    /// what the kernel refuses until `deadline`; returns how many were sent
    /// (a prefix of `hosts`). For schedules of their own (per-host periods).
    pub fn beat(&mut self, hosts: &[u32], deadline: Instant) -> Result<usize> {
        let mut done = 0;
        for chunk in hosts.chunks(self.batch) {
            let mut iovs: Vec<libc::iovec> = Vec::with_capacity(chunk.len());
            for (k, &host) in chunk.iter().enumerate() {
                let src = self.fleet.addr(host);
                let len = write_udp(&mut self.bufs[k], &ENDS, src, self.port, &MAGIC);
                iovs.push(libc::iovec {
                    iov_base: self.bufs[k].as_mut_ptr().cast(),
                    iov_len: len,
                });
            }
            // SAFETY: mmsghdr is plain data; zeroed is a valid empty header.
            let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; chunk.len()];
            for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
            }
            let (sent, _) = self.send(&mut msgs, deadline)?;
            done += sent;
            if sent < chunk.len() {
                break;
            }
        }
        Ok(done)
    }

    /// The next host of `hosts` at or after the cursor, wrapping around.
    fn next_host(&mut self, hosts: &Hosts) -> u32 {
        let mut i = self.cursor;
        if !(hosts.start..hosts.end).contains(&i) {
            i = hosts.start;
        }
        while !hosts.contains(i) {
            i += 1;
            if i >= hosts.end {
                i = hosts.start;
            }
        }
        self.cursor = i + 1;
        i
    }

    fn rewind(&mut self, hosts: &Hosts, n: usize) {
        for _ in 0..n {
            let mut i = self.cursor;
            loop {
                i = if i <= hosts.start {
                    hosts.end - 1
                } else {
                    i - 1
                };
                if hosts.contains(i) {
                    break;
                }
            }
            self.cursor = i;
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A datagram to the heartbeat port from a random source of either
    /// family whose payload is anything but `PyHB`.
    fn junk_frame(&mut self, k: usize) -> usize {
        let r = self.random();
        let src = if (r % 100) < u64::from(self.fleet.ipv6_percent) {
            let low = self.random();
            IpAddr::V6(Ipv6Addr::from(
                (0xfd00_4842_0001_0000u128 << 64) | u128::from(low),
            ))
        } else {
            IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (r >> 40) as u32 & 0x00ff_ffff))
        };
        let mut payload = [0u8; MAX_JUNK];
        let len = MIN_JUNK + (self.random() % (MAX_JUNK - MIN_JUNK + 1) as u64) as usize;
        let bytes = self.random().to_le_bytes();
        for (i, b) in payload[..len].iter_mut().enumerate() {
            *b = bytes[i % 8] ^ (i as u8);
        }
        if payload[..len] == MAGIC {
            payload[0] ^= 1;
        }
        write_udp(&mut self.bufs[k], &ENDS, src, self.port, &payload[..len])
    }

    /// Sends every message, retrying those the kernel refuses (ENOBUFS:
    /// the veth pair is full) until `deadline`; returns how many were sent
    /// (a prefix) and how many refusals there were.
    fn send(&self, msgs: &mut [libc::mmsghdr], deadline: Instant) -> Result<(usize, u64)> {
        let mut done = 0;
        let mut refused = 0u64;
        while done < msgs.len() {
            let rest = &mut msgs[done..];
            // SAFETY: every header points at a live iovec and buffer.
            let n = unsafe {
                libc::sendmmsg(self.fd.as_raw_fd(), rest.as_mut_ptr(), rest.len() as u32, 0)
            };
            if n > 0 {
                done += n as usize;
                continue;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR) => {
                    refused += 1;
                    if Instant::now() >= deadline || signals::stopping() {
                        break;
                    }
                    // Let the receive side (softirq, often on this CPU) drain.
                    if refused.is_multiple_of(16) {
                        thread::sleep(Duration::from_micros(50));
                    } else {
                        thread::yield_now();
                    }
                }
                _ => return Err(err).context("sendmmsg on the generator's packet socket"),
            }
        }
        Ok((done, refused))
    }
}

/// An AF_PACKET raw socket bound to `iface` (in the calling thread's
/// namespace) that only sends: protocol 0 receives nothing.
fn open_socket(iface: &str) -> Result<OwnedFd> {
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("interface {iface}"));
    }
    // SAFETY: plain socket call; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("AF_PACKET socket (needs root)");
    }
    // SAFETY: fd is a fresh socket we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let sndbuf: libc::c_int = 4 << 20;
    for (opt, level, val) in [
        // Straight to the driver: a full veth is reported to the sender.
        (libc::PACKET_QDISC_BYPASS, libc::SOL_PACKET, &one),
        (libc::SO_SNDBUFFORCE, libc::SOL_SOCKET, &sndbuf),
    ] {
        // SAFETY: an int option of the right size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                opt,
                (val as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("setsockopt on the packet socket");
        }
    }
    // SAFETY: sockaddr_ll is plain data.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex as i32;
    sll.sll_protocol = 0;
    // SAFETY: binding to a valid sockaddr_ll of the right length.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("binding to {iface}"));
    }
    Ok(fd)
}
