//! Socket mode (`--ingest socket`): heartbeats received on a UDP socket
//! through io_uring instead of the XDP program, for hosts where XDP cannot
//! be used, and as the baseline the load test compares XDP with. It feeds
//! the same sweeper, events and endpoints through its own host table with
//! the XDP table's semantics: one slot per host, never evicted, a full
//! table counts `table_full`.
//!
//! Receiving: one multishot RecvMsg with a ring of provided buffers: the
//! kernel picks a free buffer for each datagram and posts one completion
//! for it, with no system call to queue the next receive; the buffer goes
//! back to the ring (a store to shared memory) once recorded, and the
//! receive is armed again whenever the kernel ends it (buffers ran dry).
//! A prototype of the same design measured about 30% less CPU per datagram
//! on loopback (700 vs 999 ns) than the fallback used where provided
//! buffer rings are missing (before Linux 6.0): `RECV_SLOTS` single RecvMsg
//! operations kept queued, each with its own buffer. Either way the thread sleeps in io_uring_enter between
//! completions, and one wake drains every completion that has arrived.

use std::{
    io,
    mem::{size_of, zeroed},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context as _, Result};
use hashbrown::HashMap;
use hb_common::{Counter, HostKey, MAGIC};
use io_uring::{opcode, types};

use crate::{
    counters::Packets,
    event_loop::{EventLoop, OP_FLAG},
    output::Host,
    table::Hosts,
};

/// Tokens of this module's operations: this bit plus the slot index.
pub const TOKEN_BASE: u64 = 1 << 42;
/// Receive operations kept in flight.
const RECV_SLOTS: usize = 64;
/// Larger than any heartbeat: a longer datagram is a wrong payload anyway.
const BUF: usize = 64;

/// The socket path's host table (same layout idea as the kernel's: slots,
/// with last-seen times in a flat array the sweeper scans).
pub struct SocketTable {
    slots: HashMap<HostKey, u32>,
    last_seen: Vec<AtomicU64>,
    beats: Vec<u64>,
    keys: Vec<HostKey>,
    capacity: usize,
    counters: [u64; Counter::COUNT],
}

impl SocketTable {
    /// Sized once for `capacity` hosts, like the kernel's table: growing a
    /// map of half a million hosts stops the receive loop for tens of
    /// milliseconds, long enough to overflow the socket at 200k heartbeats/s
    /// (measured). Pages are only touched as hosts arrive.
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: HashMap::with_capacity(capacity),
            last_seen: Vec::with_capacity(capacity),
            beats: Vec::with_capacity(capacity),
            keys: Vec::with_capacity(capacity),
            capacity,
            counters: [0; Counter::COUNT],
        }
    }

    /// Records one datagram from `src` received at `now` (CLOCK_MONOTONIC).
    pub fn record(&mut self, src: IpAddr, payload: &[u8], now: u64) {
        if payload != MAGIC {
            self.counters[Counter::WrongPayload as usize] += 1;
            return;
        }
        // IPv4 senders on a dual-stack socket arrive as ::ffff:a.b.c.d, the
        // very key the XDP program gives them.
        let key = match src {
            IpAddr::V4(v4) => HostKey::from_ipv4(v4.octets()),
            IpAddr::V6(v6) => HostKey::from_ipv6(v6.octets()),
        };
        let slot = match self.slots.get(&key) {
            Some(&slot) => slot as usize,
            None if self.keys.len() >= self.capacity => {
                self.counters[Counter::TableFull as usize] += 1;
                return;
            }
            None => {
                let slot = self.keys.len();
                self.slots.insert(key, slot as u32);
                self.keys.push(key);
                self.beats.push(0);
                self.last_seen.push(AtomicU64::new(0));
                self.counters[Counter::NewHost as usize] += 1;
                slot
            }
        };
        self.last_seen[slot].store(now, Ordering::Relaxed);
        self.beats[slot] += 1;
        self.counters[Counter::Heartbeat as usize] += 1;
    }

    pub fn beats(&self, key: &HostKey) -> Option<u64> {
        self.slots.get(key).map(|&s| self.beats[s as usize])
    }
}

impl Hosts for SocketTable {
    fn last_seen(&self) -> &[AtomicU64] {
        &self.last_seen
    }
    fn host(&self, slot: u32) -> Host {
        Host::addr(&self.keys[slot as usize])
    }
    fn len(&self) -> usize {
        self.keys.len()
    }
    fn capacity(&self) -> usize {
        self.capacity
    }
}

impl Packets for SocketTable {
    fn read(&self) -> Result<[u64; Counter::COUNT]> {
        Ok(self.counters)
    }
}

/// One queued receive: the kernel writes into it while the operation is in
/// flight, so it lives in a boxed slice that never moves.
struct RecvSlot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    addr: libc::sockaddr_in6,
    buf: [u8; BUF],
}

pub struct SocketIngest {
    socket: UdpSocket,
    /// Never resized: the kernel holds pointers into it.
    slots: Box<[RecvSlot]>,
    /// The multishot receive's buffers, where the kernel supports them.
    multishot: Option<Multishot>,
    pub table: SocketTable,
}

/// Token of the multishot receive (the single receives use 0..RECV_SLOTS).
const MULTISHOT: u64 = 1 << 20;
const BUFFER_GROUP: u16 = 1;
/// Provided buffers: fewer than the completion queue holds (8192), so a
/// burst between two waits cannot overflow it.
const BUFFERS: u16 = 2048;
/// Per buffer: the recvmsg_out header (16 bytes), the sender's address (28)
/// and more than a heartbeat; a longer datagram is flagged truncated.
const BUFFER_SIZE: usize = 128;

/// A ring of provided buffers shared with the kernel: `BUFFERS` ring
/// entries (page-aligned) followed by the buffers, in one mapping. Never
/// unmapped: the kernel may write into it until the ring is gone, which is
/// at the end of the process.
struct Multishot {
    base: *mut u8,
    ring_bytes: usize,
    tail: u16,
    /// What the receive's completions are parsed against (its name length).
    msghdr: &'static libc::msghdr,
}

impl Multishot {
    fn new(ev: &EventLoop) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let ring_bytes =
            (BUFFERS as usize * size_of::<types::BufRingEntry>()).next_multiple_of(page);
        let bytes = ring_bytes + BUFFERS as usize * BUFFER_SIZE;
        // SAFETY: a fresh anonymous mapping, checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: all-zero is a valid msghdr; leaked: the kernel reads it
        // for as long as the receive is armed.
        let mut msghdr: Box<libc::msghdr> = Box::new(unsafe { zeroed() });
        msghdr.msg_namelen = size_of::<libc::sockaddr_in6>() as u32;
        let mut this = Self {
            base: base.cast(),
            ring_bytes,
            tail: 0,
            msghdr: Box::leak(msghdr),
        };
        for bid in 0..BUFFERS {
            this.recycle(bid);
        }
        // SAFETY: the ring stays mapped for the life of the process.
        unsafe { ev.register_buf_ring(this.base as u64, BUFFERS, BUFFER_GROUP) }.inspect_err(
            |_| {
                // SAFETY: not registered: nobody else knows this mapping.
                unsafe { libc::munmap(base, bytes) };
            },
        )?;
        Ok(this)
    }

    fn buffer(&self, bid: u16) -> &[u8] {
        // SAFETY: inside the mapping; the kernel is done with a buffer
        // once its completion is posted.
        unsafe {
            std::slice::from_raw_parts(
                self.base.add(self.ring_bytes + bid as usize * BUFFER_SIZE),
                BUFFER_SIZE,
            )
        }
    }

    /// Hands buffer `bid` back to the kernel.
    fn recycle(&mut self, bid: u16) {
        let ring = self.base.cast::<types::BufRingEntry>();
        // SAFETY: entry `tail % BUFFERS` is inside the ring; the kernel
        // does not read it before the tail below says so.
        unsafe {
            let entry = &mut *ring.add((self.tail & (BUFFERS - 1)) as usize);
            entry.set_addr(self.base.add(self.ring_bytes + bid as usize * BUFFER_SIZE) as u64);
            entry.set_len(BUFFER_SIZE as u32);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field of the first entry, published with release
        // ordering so the kernel sees the entry first.
        unsafe {
            let tail = types::BufRingEntry::tail(ring).cast_mut();
            (*tail.cast::<std::sync::atomic::AtomicU16>())
                .store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }
}

impl SocketIngest {
    /// Binds `addr` (`[::]` takes IPv4 and IPv6 alike).
    pub fn bind(addr: SocketAddr, capacity: usize) -> Result<Self> {
        let socket = UdpSocket::bind(addr).with_context(|| {
            format!("binding UDP {addr} for socket mode (is another program using the port?)")
        })?;
        // Heartbeats wait in the socket while a sweep runs, and the sweep
        // that reports a fleet's 200k new hosts a second takes 30-75 ms
        // (measured), up to 15k datagrams of ~2 KiB each as the kernel counts
        // them. 64 MiB (doubled by the kernel) holds a few such sweeps;
        // it is only used while datagrams wait. The forced size ignores
        // rmem_max where allowed.
        let size: libc::c_int = 64 << 20;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: a valid socket and an int option.
            let rc = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as u32,
                )
            };
            if rc == 0 {
                break;
            }
        }
        let mut got: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid socket, an int option and its length.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&mut got as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        // The kernel reports twice what it was given.
        if rc == 0 && got / 2 < size {
            log::warn!(
                "the socket's receive buffer is {} KiB, not {} KiB (capped by net.core.rmem_max without CAP_NET_ADMIN): heartbeats that arrive while a sweep reports many new hosts may overflow it; raise net.core.rmem_max for large fleets",
                got / 2 / 1024,
                size / 1024
            );
        }
        let slots = (0..RECV_SLOTS)
            .map(|_| {
                // SAFETY: plain C structs, all-zero is valid.
                unsafe { zeroed::<RecvSlot>() }
            })
            .collect();
        Ok(Self {
            socket,
            slots,
            multishot: None,
            table: SocketTable::new(capacity),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub fn owns(token: u64) -> bool {
        token & TOKEN_BASE != 0
    }

    /// Arms the multishot receive, or queues the single receives where
    /// the kernel has no provided buffer rings.
    pub fn start(&mut self, ev: &mut EventLoop) -> Result<()> {
        match Multishot::new(ev) {
            Ok(m) => {
                self.multishot = Some(m);
                log::info!(
                    "socket mode receives with io_uring multishot recvmsg and provided buffers"
                );
                self.arm_multishot(ev)
            }
            Err(e) => {
                log::info!(
                    "provided buffer rings unavailable ({e}): socket mode receives with {RECV_SLOTS} queued recvmsg"
                );
                self.start_single(ev)
            }
        }
    }

    /// Queues the single receives (kernels without provided buffer rings).
    fn start_single(&mut self, ev: &mut EventLoop) -> Result<()> {
        for i in 0..self.slots.len() {
            self.arm(ev, i)?;
        }
        Ok(())
    }

    /// How datagrams are received, for logs and tests.
    pub fn multishot(&self) -> bool {
        self.multishot.is_some()
    }

    fn arm_multishot(&mut self, ev: &mut EventLoop) -> Result<()> {
        let m = self.multishot.as_ref().expect("multishot receive");
        let sqe =
            opcode::RecvMsgMulti::new(types::Fd(self.socket.as_raw_fd()), m.msghdr, BUFFER_GROUP)
                .build()
                .user_data(OP_FLAG | TOKEN_BASE | MULTISHOT);
        // SAFETY: the msghdr is leaked and the buffers are never unmapped.
        unsafe { ev.submit(&[sqe]) }
    }

    /// One completion of the multishot receive.
    fn complete_multishot(
        &mut self,
        ev: &mut EventLoop,
        result: i32,
        flags: u32,
        now: u64,
    ) -> Result<()> {
        let m = self.multishot.as_mut().expect("multishot receive");
        if result >= 0
            && let Some(bid) = io_uring::cqueue::buffer_select(flags)
        {
            let data = &m.buffer(bid)[..(result as usize).min(BUFFER_SIZE)];
            if let Ok(out) = types::RecvMsgOut::parse(data, m.msghdr)
                && let Some(src) = name_source(out.name_data())
            {
                // A datagram longer than the buffer is not a heartbeat.
                let payload = if out.is_payload_truncated() {
                    &[][..]
                } else {
                    out.payload_data()
                };
                self.table.record(src, payload, now);
            }
            m.recycle(bid);
        } else if result < 0 && -result != libc::ENOBUFS && -result != libc::EINTR {
            log::warn!(
                "receiving heartbeats: {}",
                io::Error::from_raw_os_error(-result)
            );
        }
        // Ended (buffers ran dry, or an error): armed again; the buffers
        // of this wake have gone back to the ring already or will with the
        // completions still queued.
        if !io_uring::cqueue::more(flags) {
            self.arm_multishot(ev)?;
        }
        Ok(())
    }

    fn arm(&mut self, ev: &mut EventLoop, i: usize) -> Result<()> {
        let fd = self.socket.as_raw_fd();
        let s = &mut self.slots[i];
        s.iov = libc::iovec {
            iov_base: s.buf.as_mut_ptr().cast(),
            iov_len: BUF,
        };
        // SAFETY: all-zero is a valid msghdr.
        s.hdr = unsafe { zeroed() };
        s.hdr.msg_name = (&mut s.addr as *mut libc::sockaddr_in6).cast();
        s.hdr.msg_namelen = size_of::<libc::sockaddr_in6>() as u32;
        s.hdr.msg_iov = &mut s.iov;
        s.hdr.msg_iovlen = 1;
        let sqe = opcode::RecvMsg::new(types::Fd(fd), &mut s.hdr)
            .build()
            .user_data(OP_FLAG | TOKEN_BASE | i as u64);
        // SAFETY: the slot is in a boxed slice owned by self that never
        // moves, and is not touched again until its completion arrives.
        unsafe { ev.submit(&[sqe]) }
    }

    /// Handles the completion of receive `token`: records the datagram (at
    /// `now`) and queues the receive again.
    pub fn complete(
        &mut self,
        ev: &mut EventLoop,
        token: u64,
        result: i32,
        flags: u32,
        now: u64,
    ) -> Result<()> {
        if token == TOKEN_BASE | MULTISHOT {
            return self.complete_multishot(ev, result, flags, now);
        }
        let i = (token & !TOKEN_BASE) as usize;
        anyhow::ensure!(i < self.slots.len(), "unknown socket token {token:#x}");
        if result >= 0 {
            let s = &self.slots[i];
            let len = result as usize;
            // A datagram longer than the buffer is not a heartbeat.
            let payload = if s.hdr.msg_flags & libc::MSG_TRUNC != 0 {
                &s.buf[..0]
            } else {
                &s.buf[..len.min(BUF)]
            };
            if let Some(src) = source(&s.addr) {
                self.table
                    .record(src, if len > BUF { &[] } else { payload }, now);
            }
        } else if -result != libc::EINTR && -result != libc::EAGAIN {
            log::warn!(
                "receiving heartbeats: {}",
                io::Error::from_raw_os_error(-result)
            );
        }
        self.arm(ev, i)
    }
}

/// The sender from a received name (a `sockaddr_in6` or `sockaddr_in`); on
/// the `[::]` socket IPv4 senders come as IPv4-mapped addresses, and get
/// the IPv4 key the XDP path gives them.
fn name_source(name: &[u8]) -> Option<IpAddr> {
    let family = u16::from_ne_bytes([*name.first()?, *name.get(1)?]) as i32;
    match family {
        libc::AF_INET6 => {
            let a: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            let v6 = Ipv6Addr::from(a);
            Some(match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            })
        }
        libc::AF_INET => {
            let a: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(a)))
        }
        _ => None,
    }
}

/// The sender of a datagram from the single receive's address storage.
fn source(addr: &libc::sockaddr_in6) -> Option<IpAddr> {
    // SAFETY: a plain C struct, read as the bytes the kernel wrote.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (addr as *const libc::sockaddr_in6).cast::<u8>(),
            size_of::<libc::sockaddr_in6>(),
        )
    };
    name_source(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Datagrams recorded so far, heartbeats or not.
    fn received(s: &SocketIngest) -> u64 {
        let p = s.table.read().unwrap();
        p[Counter::Heartbeat as usize] + p[Counter::WrongPayload as usize]
    }

    /// Runs the loop until `done` or 5 s have passed.
    fn pump(ev: &mut EventLoop, s: &mut SocketIngest, done: impl Fn(&SocketIngest) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !done(s) && std::time::Instant::now() < deadline {
            if let crate::event_loop::Wake::Done {
                token,
                result,
                flags,
            } = ev.wait().unwrap()
                && SocketIngest::owns(token)
            {
                s.complete(ev, token, result, flags, 1).unwrap();
            }
        }
    }

    #[test]
    fn a_burst_beyond_the_buffers_is_received_whole() {
        let mut ev = EventLoop::new(std::time::Duration::from_millis(50)).unwrap();
        let mut s = SocketIngest::bind("127.0.0.1:0".parse().unwrap(), 100).unwrap();
        s.start(&mut ev).unwrap();
        assert!(s.multishot(), "this kernel has provided buffer rings");
        let to = s.local_addr().unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        // More than the ring holds, sent before the loop runs: the receive
        // runs dry, ends, and is armed again without losing a datagram.
        let n = 3 * BUFFERS as u64;
        for i in 0..n {
            let payload: &[u8] = if i % 2 == 0 { b"PyHB" } else { b"nope" };
            tx.send_to(payload, to).unwrap();
        }
        pump(&mut ev, &mut s, |s| received(s) == n);
        let p = s.table.read().unwrap();
        assert_eq!(p[Counter::Heartbeat as usize], n / 2);
        assert_eq!(p[Counter::WrongPayload as usize], n / 2);
        assert_eq!(p[Counter::NewHost as usize], 1);
        assert_eq!(s.table.host(0).ip, "127.0.0.1".parse::<IpAddr>().unwrap());
        // And it still receives afterwards.
        tx.send_to(b"PyHB", to).unwrap();
        pump(&mut ev, &mut s, |s| received(s) == n + 1);
        assert_eq!(received(&s), n + 1);
    }

    #[test]
    fn the_fallback_receive_takes_a_burst_whole() {
        // This kernel has buffer rings; the queued single receives that
        // stand in for them elsewhere are started directly.
        let mut ev = EventLoop::new(std::time::Duration::from_millis(50)).unwrap();
        let mut s = SocketIngest::bind("[::]:0".parse().unwrap(), 100).unwrap();
        s.start_single(&mut ev).unwrap();
        assert!(!s.multishot());
        let port = s.local_addr().unwrap().port();
        let v4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let v6 = UdpSocket::bind("[::1]:0").unwrap();
        // Three times the receives in flight, from two hosts, with a wrong
        // payload and one longer than the buffer among them.
        let n = 3 * RECV_SLOTS as u64;
        for i in 0..n {
            let (tx, to) = if i % 2 == 0 {
                (&v4, format!("127.0.0.1:{port}"))
            } else {
                (&v6, format!("[::1]:{port}"))
            };
            let long = [b'P'; 2 * BUF];
            let payload: &[u8] = match i {
                7 => b"PyHb",
                8 => &long,
                _ => b"PyHB",
            };
            tx.send_to(payload, to).unwrap();
        }
        pump(&mut ev, &mut s, |s| received(s) == n);
        let p = s.table.read().unwrap();
        assert_eq!(p[Counter::Heartbeat as usize], n - 2);
        assert_eq!(p[Counter::WrongPayload as usize], 2);
        assert_eq!(p[Counter::NewHost as usize], 2);
        let hosts: Vec<IpAddr> = (0..2).map(|i| s.table.host(i).ip).collect();
        assert_eq!(
            hosts,
            [
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn records_like_the_kernel_table() {
        let mut t = SocketTable::new(2);
        let a: IpAddr = "198.18.0.2".parse().unwrap();
        let b: IpAddr = "fd00:4842::2".parse().unwrap();
        let c: IpAddr = "198.18.0.3".parse().unwrap();
        t.record(a, b"PyHB", 10);
        t.record(a, b"PyHB", 20);
        t.record(b, b"PyHB", 30);
        t.record(c, b"PyHB", 40); // full
        t.record(a, b"PyHb", 50);
        t.record(a, b"PyHB!", 50);
        t.record(a, b"", 50);
        let p = t.read().unwrap();
        assert_eq!(p[Counter::Heartbeat as usize], 3);
        assert_eq!(p[Counter::NewHost as usize], 2);
        assert_eq!(p[Counter::TableFull as usize], 1);
        assert_eq!(p[Counter::WrongPayload as usize], 3);
        assert_eq!(Hosts::len(&t), 2);
        let ka = HostKey::from_ipv4([198, 18, 0, 2]);
        assert_eq!(t.beats(&ka), Some(2));
        let seen: Vec<u64> = t
            .last_seen()
            .iter()
            .map(|x| x.load(Ordering::Relaxed))
            .collect();
        assert_eq!(seen, [20, 30]);
        assert_eq!(t.host(0).ip, a);
        assert_eq!(t.host(1).ip, b);
        // An IPv4 sender seen through the dual-stack socket is the same host.
        let mut mapped: libc::sockaddr_in6 = unsafe { zeroed() };
        mapped.sin6_family = libc::AF_INET6 as u16;
        mapped.sin6_addr.s6_addr = Ipv4Addr::new(198, 18, 0, 2).to_ipv6_mapped().octets();
        assert_eq!(source(&mapped), Some(a));
    }

    #[test]
    fn a_table_never_grows_while_it_fills() {
        let n = 100_000;
        let mut t = SocketTable::new(n);
        let (buckets, keys) = (t.slots.capacity(), t.keys.as_ptr());
        for i in 0..n as u32 {
            t.record(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), b"PyHB", 1);
        }
        assert_eq!(Hosts::len(&t), n);
        // Growing means rehashing and copying every host at once.
        assert_eq!(t.slots.capacity(), buckets);
        assert_eq!(t.keys.as_ptr(), keys);
    }
}
