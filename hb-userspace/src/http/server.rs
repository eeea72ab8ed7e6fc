//! A small HTTP/1.1 endpoint on the collector's io_uring: accept, recv and
//! send are ring operations, so a slow or silent client never blocks a sweep
//! and there is no thread per connection. One request per connection
//! (`Connection: close`), bounded request size, and:
//!
//! - a deadline per request, from accept to the last byte sent, however the
//!   bytes trickle in or out;
//! - at most `MAX_PER_PEER` connections per client address (per /64 for
//!   IPv6), `MAX_CONNS` in all;
//! - when a new connection finds no room (its peer at its cap, or every
//!   slot taken), the oldest idle connection (of that peer, or of all)
//!   makes room: one that has not sent a whole request yet. Connections
//!   sending a reply are never cut short; only when all of them are, is the
//!   new one closed.

use std::{
    net::{IpAddr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use anyhow::{Context as _, Result};
use io_uring::{opcode, squeue, types};
use log::debug;

use crate::{
    clock::monotonic_ns,
    io::{EventLoop, HttpOp, Token},
};

/// Connections served at once.
const MAX_CONNS: usize = 128;
/// Connections one client may hold. A Prometheus scrape uses one; eight
/// leave room for a pair of Prometheus servers, a federation and a few
/// people with curl behind one NAT, while one client holds at most 1/16 of
/// the slots (filling them takes 16 addresses).
const MAX_PER_PEER: usize = 8;
const MAX_REQUEST: usize = 8 * 1024;
/// From accept to the last byte of the reply.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Room for the connections being closed to make room (each until its
/// pending receive completes, at once) beside the live ones.
const SLOTS: usize = 2 * MAX_CONNS;

/// A parsed request: only what the endpoints use.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
}

/// A response to send.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            content_type,
            body: body.into(),
        }
    }

    pub fn error(status: u16, message: &str) -> Self {
        Self::new(status, "text/plain; charset=utf-8", format!("{message}\n"))
    }

    fn encode(&self, head_only: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "Error",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
            self.status,
            self.content_type,
            self.body.len(),
            if self.status == 405 { "Allow: GET, HEAD\r\n" } else { "" },
        )
        .into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// Where a connection is in its one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Receiving the request: idle, it can make room for a new connection.
    Reading,
    /// Sending the reply.
    Sending,
    /// Shut down to make room; freed when its receive completes.
    Closing,
}

struct Conn {
    stream: TcpStream,
    peer: IpAddr,
    /// Accept order: the lowest is the oldest.
    serial: u64,
    phase: Phase,
    buf: Box<[u8]>,
    filled: usize,
    out: Vec<u8>,
    sent: usize,
    /// The request's deadline (CLOCK_MONOTONIC, absolute), given to every
    /// receive and send.
    deadline: Box<types::Timespec>,
}

impl Conn {
    fn live(&self) -> bool {
        self.phase != Phase::Closing
    }
}

pub struct HttpServer {
    listener: TcpListener,
    conns: Vec<Option<Conn>>,
    accepted: u64,
}

fn token(id: usize, op: HttpOp) -> u64 {
    Token::Http {
        conn: id as u16,
        op,
    }
    .encode()
}

/// Whom the per-peer cap counts a connection against: its address, or
/// for IPv6 the /64 it is in (a host usually holds a whole /64 to pick
/// addresses from). IPv4-mapped addresses count as IPv4.
fn peer_of(addr: SocketAddr) -> IpAddr {
    match addr.ip().to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u64::MAX as u128))),
        v4 => v4,
    }
}

impl HttpServer {
    pub fn bind(addr: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
        Ok(Self {
            listener,
            conns: (0..SLOTS).map(|_| None).collect(),
            accepted: 0,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    pub fn start(&mut self, ev: &mut EventLoop) -> Result<()> {
        self.arm_accept(ev)
    }

    /// Starts accepting, and says where.
    pub fn serve(mut self, ev: &mut EventLoop) -> Result<Self> {
        self.start(ev)?;
        log::info!(
            "serving /, /metrics, /silent and /missing on http://{}",
            self.local_addr()?
        );
        Ok(self)
    }

    fn arm_accept(&mut self, ev: &mut EventLoop) -> Result<()> {
        let sqe = opcode::Accept::new(
            types::Fd(self.listener.as_raw_fd()),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
        .flags(libc::SOCK_CLOEXEC)
        .build()
        .user_data(token(0, HttpOp::Accept));
        // SAFETY: no buffers.
        unsafe { ev.submit(&[sqe]) }
    }

    /// Handles the completion of operation `op` on connection `conn`.
    pub fn complete(
        &mut self,
        ev: &mut EventLoop,
        conn: u16,
        op: HttpOp,
        result: i32,
        handler: &mut dyn FnMut(&Request<'_>) -> Response,
    ) -> Result<()> {
        let id = conn as usize;
        match op {
            HttpOp::Accept => {
                if result >= 0 {
                    // SAFETY: a successful accept returns a new fd we own.
                    let fd = unsafe { OwnedFd::from_raw_fd(result) };
                    self.admit(ev, TcpStream::from(fd))?;
                } else {
                    debug!(
                        "http: accept failed: {}",
                        std::io::Error::from_raw_os_error(-result)
                    );
                }
                self.arm_accept(ev)
            }
            HttpOp::Recv => {
                let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) else {
                    return Ok(());
                };
                if result <= 0 || conn.phase != Phase::Reading {
                    // Closed by the peer, failed, past the deadline, or
                    // shut down to make room.
                    self.conns[id] = None;
                    return Ok(());
                }
                conn.filled += result as usize;
                let response = match parse(&conn.buf[..conn.filled]) {
                    Parsed::Partial if conn.filled == conn.buf.len() => {
                        Some((Response::error(431, "request too large"), false))
                    }
                    Parsed::Partial => None,
                    Parsed::Bad => Some((Response::error(400, "malformed request"), false)),
                    Parsed::Done(req) => Some(match req.method {
                        "GET" => (handler(&req), false),
                        "HEAD" => (handler(&req), true),
                        _ => (Response::error(405, "only GET and HEAD"), false),
                    }),
                };
                match response {
                    None => self.arm_recv(ev, id),
                    Some((response, head_only)) => {
                        conn.out = response.encode(head_only);
                        conn.phase = Phase::Sending;
                        self.arm_send(ev, id)
                    }
                }
            }
            HttpOp::Send => {
                let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) else {
                    return Ok(());
                };
                if result <= 0 {
                    self.conns[id] = None;
                    return Ok(());
                }
                conn.sent += result as usize;
                if conn.sent < conn.out.len() {
                    self.arm_send(ev, id)
                } else {
                    self.conns[id] = None;
                    Ok(())
                }
            }
            // A deadline that fired or was cancelled: its operation's own
            // completion does the work.
            HttpOp::Deadline => Ok(()),
        }
    }

    /// Takes a new connection in, making room for it if needed; closes it
    /// if there is none to make.
    fn admit(&mut self, ev: &mut EventLoop, stream: TcpStream) -> Result<()> {
        // A peer already gone leaves no address: nothing to serve.
        let Ok(addr) = stream.peer_addr() else {
            return Ok(());
        };
        let peer = peer_of(addr);
        let live = self.conns.iter().flatten().filter(|c| c.live());
        let (all, mine) = live.fold((0, 0), |(all, mine), c| {
            (all + 1, mine + usize::from(c.peer == peer))
        });
        let room = if mine >= MAX_PER_PEER {
            Some(self.oldest_idle(|c| c.peer == peer))
        } else if all >= MAX_CONNS {
            Some(self.oldest_idle(|_| true))
        } else {
            None
        };
        match room {
            Some(None) => {
                debug!("http: no room for a connection from {addr}: closed");
                return Ok(());
            }
            Some(Some(oldest)) => self.make_room(oldest),
            None => {}
        }
        let Some(free) = self.conns.iter().position(Option::is_none) else {
            debug!("http: every slot is closing: a connection from {addr} closed");
            return Ok(());
        };
        self.accepted += 1;
        let at = monotonic_ns() + REQUEST_DEADLINE.as_nanos() as u64;
        self.conns[free] = Some(Conn {
            stream,
            peer,
            serial: self.accepted,
            phase: Phase::Reading,
            buf: vec![0; MAX_REQUEST].into_boxed_slice(),
            filled: 0,
            out: Vec::new(),
            sent: 0,
            deadline: Box::new(
                types::Timespec::new()
                    .sec(at / 1_000_000_000)
                    .nsec((at % 1_000_000_000) as u32),
            ),
        });
        self.arm_recv(ev, free)
    }

    /// The oldest connection still reading its request, among those
    /// `which` picks.
    fn oldest_idle(&self, which: impl Fn(&Conn) -> bool) -> Option<usize> {
        self.conns
            .iter()
            .enumerate()
            .filter_map(|(id, c)| Some((id, c.as_ref()?)))
            .filter(|(_, c)| c.phase == Phase::Reading && which(c))
            .min_by_key(|(_, c)| c.serial)
            .map(|(id, _)| id)
    }

    /// Closes idle connection `id` for a new one: its pending receive
    /// completes at once (end of file), and that frees the slot.
    fn make_room(&mut self, id: usize) {
        let conn = self.conns[id].as_mut().expect("live connection");
        debug!("http: closing the oldest idle connection to make room");
        // Fails only if the peer is gone already: then it completes anyway.
        let _ = conn.stream.shutdown(Shutdown::Both);
        conn.phase = Phase::Closing;
    }

    fn arm_recv(&mut self, ev: &mut EventLoop, id: usize) -> Result<()> {
        let conn = self.conns[id].as_mut().expect("live connection");
        let free = &mut conn.buf[conn.filled..];
        let op = opcode::Recv::new(
            types::Fd(conn.stream.as_raw_fd()),
            free.as_mut_ptr(),
            free.len() as u32,
        )
        .build()
        .flags(squeue::Flags::IO_LINK)
        .user_data(token(id, HttpOp::Recv));
        Self::with_deadline(ev, conn, id, op)
    }

    fn arm_send(&mut self, ev: &mut EventLoop, id: usize) -> Result<()> {
        let conn = self.conns[id].as_mut().expect("live connection");
        let rest = &conn.out[conn.sent..];
        let op = opcode::Send::new(
            types::Fd(conn.stream.as_raw_fd()),
            rest.as_ptr(),
            rest.len() as u32,
        )
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .flags(squeue::Flags::IO_LINK)
        .user_data(token(id, HttpOp::Send));
        Self::with_deadline(ev, conn, id, op)
    }

    /// Submits `op` linked to the request's deadline: the same moment for
    /// every receive and send of the request.
    fn with_deadline(ev: &mut EventLoop, conn: &Conn, id: usize, op: squeue::Entry) -> Result<()> {
        // ABS timeouts use CLOCK_MONOTONIC, the clock of `monotonic_ns`.
        let timeout = opcode::LinkTimeout::new(&*conn.deadline)
            .flags(types::TimeoutFlags::ABS)
            .build()
            .user_data(token(id, HttpOp::Deadline));
        // SAFETY: the buffers belong to the connection, which is dropped
        // only after this operation's completion.
        unsafe { ev.submit(&[op, timeout]) }
    }
}

enum Parsed<'a> {
    Partial,
    Bad,
    Done(Request<'a>),
}

fn parse(buf: &[u8]) -> Parsed<'_> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {
            let (Some(method), Some(target)) = (req.method, req.path) else {
                return Parsed::Bad;
            };
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (target, None),
            };
            Parsed::Done(Request {
                method,
                path,
                query,
            })
        }
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Bad,
    }
}

/// Value of `name` in a query string (`a=1&b=2`).
pub fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests() {
        let Parsed::Done(r) = parse(b"GET /silent?limit=5&offset=10 HTTP/1.1\r\nHost: x\r\n\r\n")
        else {
            panic!()
        };
        assert_eq!(
            r,
            Request {
                method: "GET",
                path: "/silent",
                query: Some("limit=5&offset=10")
            }
        );
        assert_eq!(query_param(r.query, "limit"), Some("5"));
        assert_eq!(query_param(r.query, "offset"), Some("10"));
        assert_eq!(query_param(r.query, "other"), None);
        assert!(matches!(
            parse(b"GET /metrics HTTP/1.1\r\nHost"),
            Parsed::Partial
        ));
        assert!(matches!(parse(b"\x00\x01garbage\r\n\r\n"), Parsed::Bad));
    }

    #[test]
    fn a_peer_is_an_ipv4_address_or_an_ipv6_64() {
        let peer = |a: &str| peer_of(a.parse().unwrap()).to_string();
        assert_eq!(peer("198.18.0.7:4000"), "198.18.0.7");
        assert_eq!(peer("[::ffff:198.18.0.7]:4000"), "198.18.0.7");
        assert_eq!(
            peer("[2001:db8:1:2:aaaa:bbbb:cccc:dddd]:4000"),
            "2001:db8:1:2::"
        );
        assert_eq!(peer("[::1]:4000"), "::");
    }

    #[test]
    fn encodes_responses() {
        let r = Response::new(200, "text/plain", "hi");
        assert_eq!(
            r.encode(false),
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
        );
        let head = String::from_utf8(Response::error(405, "no").encode(true)).unwrap();
        assert!(head.contains("Allow: GET, HEAD\r\n") && head.ends_with("\r\n\r\n"));
    }
}
