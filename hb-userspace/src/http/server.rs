//! A small HTTP/1.1 endpoint on the collector's io_uring: accept, recv and
//! send are ring operations, so a slow or silent client never blocks a sweep
//! and there is no thread per connection. One request per connection
//! (`Connection: close`), bounded request size, bounded connection count,
//! and a deadline on every read and write.

use std::{
    net::{SocketAddr, TcpListener},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use anyhow::{Context as _, Result};
use io_uring::{opcode, squeue, types};
use log::debug;

use crate::io::{EventLoop, HttpOp, Token};

const MAX_CONNS: usize = 128;
const MAX_REQUEST: usize = 8 * 1024;
const IO_DEADLINE: Duration = Duration::from_secs(5);

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

struct Conn {
    fd: OwnedFd,
    buf: Box<[u8]>,
    filled: usize,
    out: Vec<u8>,
    sent: usize,
    deadline: Box<types::Timespec>,
}

pub struct HttpServer {
    listener: TcpListener,
    conns: Vec<Option<Conn>>,
}

fn token(id: usize, op: HttpOp) -> u64 {
    Token::Http {
        conn: id as u16,
        op,
    }
    .encode()
}

impl HttpServer {
    pub fn bind(addr: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
        Ok(Self {
            listener,
            conns: (0..MAX_CONNS).map(|_| None).collect(),
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    pub fn start(&mut self, ev: &mut EventLoop) -> Result<()> {
        self.arm_accept(ev)
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
                    match self.conns.iter().position(Option::is_none) {
                        Some(free) => {
                            self.conns[free] = Some(Conn {
                                fd,
                                buf: vec![0; MAX_REQUEST].into_boxed_slice(),
                                filled: 0,
                                out: Vec::new(),
                                sent: 0,
                                deadline: Box::new(deadline()),
                            });
                            self.arm_recv(ev, free)?;
                        }
                        // Too many open connections: closing this one is
                        // the back-pressure.
                        None => debug!("http: connection limit reached, closing a new connection"),
                    }
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
                if result <= 0 {
                    // Closed by the peer, failed, or the deadline fired.
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

    fn arm_recv(&mut self, ev: &mut EventLoop, id: usize) -> Result<()> {
        let conn = self.conns[id].as_mut().expect("live connection");
        let free = &mut conn.buf[conn.filled..];
        let op = opcode::Recv::new(
            types::Fd(conn.fd.as_raw_fd()),
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
            types::Fd(conn.fd.as_raw_fd()),
            rest.as_ptr(),
            rest.len() as u32,
        )
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .flags(squeue::Flags::IO_LINK)
        .user_data(token(id, HttpOp::Send));
        Self::with_deadline(ev, conn, id, op)
    }

    fn with_deadline(
        ev: &mut EventLoop,
        conn: &mut Conn,
        id: usize,
        op: squeue::Entry,
    ) -> Result<()> {
        *conn.deadline = deadline();
        let timeout = opcode::LinkTimeout::new(&*conn.deadline)
            .build()
            .user_data(token(id, HttpOp::Deadline));
        // SAFETY: the buffers belong to the connection, which is dropped
        // only after this operation's completion.
        unsafe { ev.submit(&[op, timeout]) }
    }
}

fn deadline() -> types::Timespec {
    types::Timespec::from(IO_DEADLINE)
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
