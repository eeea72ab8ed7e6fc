//! Socket mode (`--ingest socket`): heartbeats received on a UDP socket
//! through io_uring instead of the XDP program, for hosts where XDP cannot
//! be used, and as the baseline the load test compares XDP with. It feeds
//! the same sweeper, events and endpoints through its own host table.
//!
//! Receiving: one multishot RecvMsg with a ring of provided buffers: the
//! kernel picks a free buffer for each datagram and posts one completion
//! for it, with no system call to queue the next receive, and the receive
//! is armed again whenever the kernel ends it (buffers ran dry). A
//! prototype of the same design measured about 30% less CPU per datagram
//! on loopback (700 vs 999 ns) than the fallback used where provided
//! buffer rings are missing (before Linux 6.0): `RECV_SLOTS` single RecvMsg
//! operations kept queued, each with its own buffer. Either way the thread
//! sleeps in io_uring_enter between completions, and one wake drains every
//! completion that has arrived.

mod bufring;
mod table;

use std::{
    io,
    mem::{size_of, zeroed},
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    time::Duration,
};

use anyhow::{Context as _, Result};
use hb_common::HostKey;
use io_uring::{opcode, types};

pub use table::SocketTable;

use super::{Config, Ingest};
use crate::{
    clock::monotonic_ns,
    io::{EventLoop, IngestOp, Token},
    track::{table::Table, tracker::Tracker},
};
use bufring::{BUFFER_GROUP, BUFFER_SIZE, BufRing};

/// Receive operations kept in flight (without buffer rings).
const RECV_SLOTS: usize = 64;
/// Larger than any heartbeat: a longer datagram is a wrong payload anyway.
const BUF: usize = 64;

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
    multishot: Option<BufRing>,
    /// The multishot receive has delivered a datagram since it was armed
    /// first (an error before that means the kernel lacks it).
    delivered: bool,
    /// Receives that failed, armed again at the next tick rather than at
    /// once: an error that repeats would otherwise spin the loop.
    retry_multishot: bool,
    retry_slots: Vec<u16>,
    table: SocketTable,
    #[cfg(test)]
    multishot_arms: u32,
}

impl SocketIngest {
    /// Socket mode as `hb run` starts it: bound to `config`'s address and
    /// port, receiving.
    pub fn start_with(config: &Config, ev: &mut EventLoop) -> Result<Self> {
        let addr = SocketAddr::new(config.listen, config.port);
        let mut this = Self::bind(addr, config.max_hosts as usize)?;
        this.start(ev)?;
        log::info!(
            "socket mode: receiving heartbeats on UDP {}: timeout {}, sweep every {}, up to {} hosts",
            this.local_addr()?,
            super::timeout_text(config.timeout, config.auto),
            humantime::format_duration(config.sweep),
            config.max_hosts,
        );
        Ok(this)
    }

    /// Binds `addr` (`[::]` takes IPv4 and IPv6 alike, whatever
    /// `net.ipv6.bindv6only` says).
    pub fn bind(addr: SocketAddr, capacity: usize) -> Result<Self> {
        let socket = bind_udp(addr).with_context(|| {
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
            delivered: false,
            retry_multishot: false,
            retry_slots: Vec::new(),
            table: SocketTable::new(capacity),
            #[cfg(test)]
            multishot_arms: 0,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Arms the multishot receive, or queues the single receives where
    /// the kernel has no provided buffer rings.
    pub fn start(&mut self, ev: &mut EventLoop) -> Result<()> {
        match BufRing::new(ev) {
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

    /// How datagrams are received.
    #[cfg(test)]
    fn multishot(&self) -> bool {
        self.multishot.is_some()
    }

    fn arm_multishot(&mut self, ev: &mut EventLoop) -> Result<()> {
        #[cfg(test)]
        {
            self.multishot_arms += 1;
        }
        let m = self.multishot.as_ref().expect("multishot receive");
        let sqe =
            opcode::RecvMsgMulti::new(types::Fd(self.socket.as_raw_fd()), m.msghdr, BUFFER_GROUP)
                .build()
                .user_data(Token::Ingest(IngestOp::RecvMulti).encode());
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
        // A completion still in flight when socket mode fell back to single
        // receives.
        let Some(m) = self.multishot.as_mut() else {
            return Ok(());
        };
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
            self.delivered = true;
        } else if result < 0 && -result != libc::ENOBUFS && -result != libc::EINTR {
            let err = io::Error::from_raw_os_error(-result);
            if !self.delivered && [libc::EINVAL, libc::EOPNOTSUPP].contains(&-result) {
                // Buffer rings but no multishot receive (an older kernel).
                log::info!(
                    "multishot recvmsg unavailable ({err}): socket mode receives with {RECV_SLOTS} queued recvmsg"
                );
                self.multishot = None;
                return self.start_single(ev);
            }
            log::warn!("receiving heartbeats: {err} (trying again at the next sweep)");
            if !io_uring::cqueue::more(flags) {
                self.retry_multishot = true;
            }
            return Ok(());
        }
        // Ended (buffers ran dry): armed again; the buffers of this wake
        // have gone back to the ring already or will with the completions
        // still queued.
        if !io_uring::cqueue::more(flags) {
            self.arm_multishot(ev)?;
        }
        Ok(())
    }

    /// Arms the receives that failed since the last tick.
    fn retry(&mut self, ev: &mut EventLoop) -> Result<()> {
        if std::mem::take(&mut self.retry_multishot) && self.multishot.is_some() {
            self.arm_multishot(ev)?;
        }
        for slot in std::mem::take(&mut self.retry_slots) {
            self.arm(ev, slot as usize)?;
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
            .user_data(Token::Ingest(IngestOp::Recv { slot: i as u16 }).encode());
        // SAFETY: the slot is in a boxed slice owned by self that never
        // moves, and is not touched again until its completion arrives.
        unsafe { ev.submit(&[sqe]) }
    }

    /// Handles the completion of a receive: records the datagram (at
    /// `now`) and queues the receive again.
    fn receive(
        &mut self,
        ev: &mut EventLoop,
        op: IngestOp,
        result: i32,
        flags: u32,
        now: u64,
    ) -> Result<()> {
        let i = match op {
            IngestOp::RecvMulti => return self.complete_multishot(ev, result, flags, now),
            IngestOp::Recv { slot } => slot as usize,
            IngestOp::KernelLog => return Ok(()),
        };
        anyhow::ensure!(i < self.slots.len(), "unknown receive slot {i}");
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
                "receiving heartbeats: {} (trying again at the next sweep)",
                io::Error::from_raw_os_error(-result)
            );
            self.retry_slots.push(i as u16);
            return Ok(());
        }
        self.arm(ev, i)
    }
}

/// The sender's key from a received name (a `sockaddr_in6` or
/// `sockaddr_in`). On the `[::]` socket IPv4 senders come as IPv4-mapped
/// addresses: the very key the XDP program gives them.
/// A UDP socket bound to `addr`; on `[::]` IPv4 senders are received too
/// (as IPv4-mapped addresses), also where `net.ipv6.bindv6only` is 1.
fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    use std::os::fd::FromRawFd as _;
    let SocketAddr::V6(v6) = addr else {
        return UdpSocket::bind(addr);
    };
    // SAFETY: plain socket creation; the fd is owned right below.
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    let socket = unsafe { UdpSocket::from_raw_fd(fd) };
    let off: libc::c_int = 0;
    // SAFETY: a valid socket and an int option.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&off as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: all-zero is a valid sockaddr_in6, filled in below.
    let mut sa: libc::sockaddr_in6 = unsafe { zeroed() };
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_port = v6.port().to_be();
    sa.sin6_addr.s6_addr = v6.ip().octets();
    sa.sin6_flowinfo = v6.flowinfo();
    sa.sin6_scope_id = v6.scope_id();
    // SAFETY: a valid socket and address of the given length.
    let rc = unsafe {
        libc::bind(
            fd,
            (&sa as *const libc::sockaddr_in6).cast(),
            size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

fn name_source(name: &[u8]) -> Option<HostKey> {
    let family = u16::from_ne_bytes([*name.first()?, *name.get(1)?]) as i32;
    match family {
        libc::AF_INET6 => Some(HostKey::from_ipv6(name.get(8..24)?.try_into().ok()?)),
        libc::AF_INET => Some(HostKey::from_ipv4(name.get(4..8)?.try_into().ok()?)),
        _ => None,
    }
}

/// The sender of a datagram from the single receive's address storage.
fn source(addr: &libc::sockaddr_in6) -> Option<HostKey> {
    // SAFETY: a plain C struct, read as the bytes the kernel wrote.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (addr as *const libc::sockaddr_in6).cast::<u8>(),
            size_of::<libc::sockaddr_in6>(),
        )
    };
    name_source(bytes)
}

impl Ingest for SocketIngest {
    fn kind(&self) -> &'static str {
        "socket"
    }

    fn table(&self) -> &dyn Table {
        &self.table
    }

    fn begin(&mut self, timeout: Duration) -> Result<Tracker> {
        Ok(Tracker::new(timeout.as_nanos() as u64))
    }

    fn on_tick(&mut self, ev: &mut EventLoop) -> Result<()> {
        self.retry(ev)
    }

    fn complete(
        &mut self,
        ev: &mut EventLoop,
        op: IngestOp,
        result: i32,
        flags: u32,
    ) -> Result<()> {
        self.receive(ev, op, result, flags, monotonic_ns())
    }

    fn on_stop(&mut self, signal: &str) {
        log::info!("{signal}: stopping");
    }

    fn finish(self: Box<Self>) {}
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use hb_common::Counter;

    use super::{bufring::BUFFERS, *};
    use crate::{io::Wake, track::events::host_key};

    /// Datagrams recorded so far, heartbeats or not.
    fn received(s: &SocketIngest) -> u64 {
        let p = s.table.counters().unwrap();
        p[Counter::Heartbeat as usize] + p[Counter::WrongPayload as usize]
    }

    /// Runs the loop until `done` or 5 s have passed.
    fn pump(ev: &mut EventLoop, s: &mut SocketIngest, done: impl Fn(&SocketIngest) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !done(s) && std::time::Instant::now() < deadline {
            if let Wake::Done {
                token: Token::Ingest(op),
                result,
                flags,
            } = ev.wait().unwrap()
            {
                s.receive(ev, op, result, flags, 1).unwrap();
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
        let p = s.table.counters().unwrap();
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
        let p = s.table.counters().unwrap();
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

    /// A socket with a buffer ring as `start` would make, but whose
    /// multishot receive is not armed: completions are fed by hand.
    fn unarmed(ev: &EventLoop) -> SocketIngest {
        let mut s = SocketIngest::bind("127.0.0.1:0".parse().unwrap(), 100).unwrap();
        s.multishot = Some(BufRing::new(ev).unwrap());
        s
    }

    #[test]
    fn a_kernel_without_multishot_receive_gets_single_receives() {
        let mut ev = EventLoop::new(std::time::Duration::from_millis(50)).unwrap();
        let mut s = unarmed(&ev);
        // What such a kernel answers the first multishot receive with.
        s.receive(&mut ev, IngestOp::RecvMulti, -libc::EINVAL, 0, 1)
            .unwrap();
        assert!(!s.multishot(), "still waiting on a multishot receive");
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..3 * RECV_SLOTS {
            tx.send_to(b"PyHB", s.local_addr().unwrap()).unwrap();
        }
        let n = 3 * RECV_SLOTS as u64;
        pump(&mut ev, &mut s, |s| received(s) == n);
        assert_eq!(received(&s), n);
    }

    #[test]
    fn a_failing_receive_is_armed_again_at_the_next_tick_not_at_once() {
        let mut ev = EventLoop::new(std::time::Duration::from_millis(50)).unwrap();
        let mut s = unarmed(&ev);
        s.delivered = true;
        // An error that ends the receive: armed again at once, it could
        // fail again at once, forever.
        s.receive(&mut ev, IngestOp::RecvMulti, -libc::ENOMEM, 0, 1)
            .unwrap();
        s.receive(&mut ev, IngestOp::RecvMulti, -libc::ENOMEM, 0, 1)
            .unwrap();
        assert_eq!(s.multishot_arms, 0);
        s.on_tick(&mut ev).unwrap();
        assert_eq!(s.multishot_arms, 1);
        s.on_tick(&mut ev).unwrap();
        assert_eq!(s.multishot_arms, 1, "armed once per failure");
        // And it receives again.
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"PyHB", s.local_addr().unwrap()).unwrap();
        pump(&mut ev, &mut s, |s| received(s) == 1);
        assert_eq!(received(&s), 1);
        // Buffers running dry is no failure: armed again at once.
        s.receive(&mut ev, IngestOp::RecvMulti, -libc::ENOBUFS, 0, 1)
            .unwrap();
        assert_eq!(s.multishot_arms, 2);
    }

    #[test]
    fn an_ipv4_sender_on_the_dual_stack_socket_is_the_same_host() {
        // SAFETY: all-zero is a valid sockaddr_in6.
        let mut mapped: libc::sockaddr_in6 = unsafe { zeroed() };
        mapped.sin6_family = libc::AF_INET6 as u16;
        mapped.sin6_addr.s6_addr = Ipv4Addr::new(198, 18, 0, 2).to_ipv6_mapped().octets();
        let a: IpAddr = "198.18.0.2".parse().unwrap();
        assert_eq!(source(&mapped), Some(host_key(a)));
        assert_eq!(source(&mapped), Some(HostKey::from_ipv4([198, 18, 0, 2])));
    }
}
