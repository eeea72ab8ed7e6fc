//! The HTTP endpoint's promises (README, "HTTP endpoint"): HEAD answers
//! with GET's headers and no body; a request is closed 5 s after it was
//! accepted, however its bytes trickle in; one client holds at most 8
//! connections; past 128 connections the oldest idle one makes room, so a
//! scrape is answered while slow clients hold every slot, and sweeps go on
//! throughout; `/silent` longest silent first, with `silent_since` the
//! moment the last heartbeat became older than the timeout; and per-host
//! series only with `--metrics-silent-hosts N`, at most N of them.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use hb_testkit::{
    collector::{self, Collector, Proc, is_event},
    control::{self, Log, now_ms, signal, start_logged, timestamp_ms, wait_exit},
    netns::{Link, Netns},
};

/// The binary under test.
const HB: &str = env!("CARGO_BIN_EXE_hb");

const SERVER: &str = "198.18.50.1";
/// The endpoint, on the collector namespace's loopback.
const LISTEN: &str = "127.0.0.1:9760";
const PORT: u16 = 9760;

fn setup(tag: &str) -> Link {
    Link::for_test_on(tag, "198.18.50", &[2, 3, 4])
}

/// `hb run` with the endpoint; `timings` are `--timeout` and `--sweep`.
fn start(
    link: &Link,
    log: &Log,
    timings: (&str, &str),
    extra: &[&str],
) -> (Collector, Vec<serde_json::Value>) {
    let mut args = vec![
        "--iface",
        link.a_if.as_str(),
        "--timeout",
        timings.0,
        "--sweep",
        timings.1,
        "--metrics-listen",
        LISTEN,
    ];
    args.extend_from_slice(extra);
    start_logged(HB, &link.a, &args, log)
}

/// A TCP connection to the endpoint, made in `ns`.
fn connect(ns: &Netns) -> TcpStream {
    ns.within(|| TcpStream::connect(("127.0.0.1", PORT)).expect("connecting to the endpoint"))
        .unwrap()
}

/// A reply: status, headers (names lower-cased) and body.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn parse(raw: &[u8]) -> Self {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of headers: {:?}", String::from_utf8_lossy(raw)));
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {head}"));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Self {
            status,
            headers,
            body: raw[split + 4..].to_vec(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> usize {
        self.header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Content-Length: {self:?}"))
    }
}

/// One request on a new connection; the whole reply, read to EOF.
fn request(ns: &Netns, req: &str) -> Reply {
    let mut s = connect(ns);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("reading the reply");
    Reply::parse(&raw)
}

fn get(ns: &Netns, path: &str) -> Reply {
    request(ns, &format!("GET {path} HTTP/1.1\r\nHost: hb\r\n\r\n"))
}

#[test]
fn head_answers_with_the_get_headers_and_no_body() {
    let link = setup("head");
    let log = Log::new("head");
    // Long sweeps: the values served change only with a sweep.
    let (_c, _) = start(&link, &log, ("4s", "2s"), &[]);
    for path in ["/metrics", "/silent"] {
        let mut tries = 0;
        let (get_reply, head) = loop {
            let before = get(&link.a, path);
            let head = request(
                &link.a,
                &format!("HEAD {path} HTTP/1.1\r\nHost: hb\r\n\r\n"),
            );
            let after = get(&link.a, path);
            tries += 1;
            // A sweep in between changes the body; try again.
            if before.body == after.body || tries == 5 {
                assert_eq!(before.body, after.body, "{path}: every try crossed a sweep");
                break (after, head);
            }
        };
        assert_eq!(get_reply.status, 200, "{path}");
        assert!(!get_reply.body.is_empty(), "{path}");
        assert_eq!(get_reply.content_length(), get_reply.body.len(), "{path}");
        assert_eq!(head.status, 200, "{path}: {head:?}");
        assert!(
            head.body.is_empty(),
            "{path}: HEAD sent a body: {:?}",
            String::from_utf8_lossy(&head.body)
        );
        assert_eq!(
            head.content_length(),
            get_reply.body.len(),
            "{path}: HEAD's Content-Length is not GET's body length"
        );
        assert_eq!(
            head.header("content-type"),
            get_reply.header("content-type"),
            "{path}"
        );
    }
}

/// Reads from `s` until EOF or an error; returns what came and when it
/// ended (None: nothing within `limit`).
fn read_until_closed(mut s: TcpStream, limit: Duration) -> (Vec<u8>, Option<Instant>) {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, Some(Instant::now())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                return (got, Some(Instant::now()));
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (got, None);
            }
            Err(e) => panic!("reading: {e}"),
        }
    }
}

/// Sends one byte of a request header every `period`, for at most
/// `limit`, or until the endpoint closes.
fn trickle(mut s: TcpStream, period: Duration, limit: Duration) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            thread::sleep(period);
            if s.write_all(b"a").is_err() {
                return;
            }
        }
    })
}

#[test]
fn silent_half_finished_and_trickling_requests_are_closed_5_s_after_accept() {
    let link = setup("deadline");
    let log = Log::new("deadline");
    let (c, _) = start(&link, &log, ("1s", "200ms"), &[]);
    let silent = connect(&link.a);
    let silent_since = Instant::now();
    let mut half = connect(&link.a);
    half.write_all(b"GET /metrics HTTP/1.1\r\nHost:").unwrap();
    let half_since = Instant::now();
    // A header that never ends, a byte every 500 ms (for 12 s at most).
    let mut slow = connect(&link.a);
    let slow_since = Instant::now();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
        .unwrap();
    let trickler = trickle(
        slow.try_clone().unwrap(),
        Duration::from_millis(500),
        Duration::from_secs(12),
    );
    let readers = [
        (silent, silent_since),
        (half, half_since),
        (slow, slow_since),
    ]
    .map(|(s, since)| {
        thread::spawn(move || {
            let (got, closed) = read_until_closed(s, Duration::from_secs(12));
            (got, closed.map(|at| at - since))
        })
    });
    // Sweeps go on meanwhile.
    let summaries = c
        .collect(Duration::from_secs(4))
        .iter()
        .filter(|v| v["event"] == "summary")
        .count();
    assert!(summaries >= 10, "{summaries} sweeps in 4 s");
    let sent = ["nothing", "half a request", "a byte every 500 ms"];
    for (what, reader) in sent.into_iter().zip(readers) {
        let (got, after) = reader.join().unwrap();
        let after = after.unwrap_or_else(|| panic!("sent {what}: still open after 12 s"));
        assert!(
            (Duration::from_millis(4800)..Duration::from_secs(7)).contains(&after),
            "sent {what}: closed after {after:?}"
        );
        assert!(
            got.is_empty(),
            "sent {what}: got {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    trickler.join().unwrap();
    // And the endpoint still answers.
    assert_eq!(get(&link.a, "/metrics").status, 200);
}

/// A TCP connection to the endpoint from `src`, an address of the
/// loopback (127.0.0.0/8), made on the calling thread's namespace.
fn connect_from(src: Ipv4Addr) -> TcpStream {
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a new socket, owned by the stream from here on.
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    };
    let (local, remote) = (sockaddr(src, 0), sockaddr(Ipv4Addr::LOCALHOST, PORT));
    let fd = stream.as_raw_fd();
    // SAFETY: sockaddr_in values of the length given, on our own socket.
    unsafe {
        assert_eq!(
            libc::bind(fd, (&raw const local).cast(), len),
            0,
            "binding {src}: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            libc::connect(fd, (&raw const remote).cast(), len),
            0,
            "connecting from {src}: {}",
            std::io::Error::last_os_error()
        );
    }
    stream
}

/// Connections to the endpoint from each of `from`, in that order, made
/// in `ns`.
fn open(ns: &Netns, from: Vec<Ipv4Addr>) -> Vec<TcpStream> {
    ns.within(move || from.into_iter().map(connect_from).collect())
        .expect("running in the namespace")
}

/// 127.0.1.`i`: client number `i` (a client is an address).
fn client(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1, u8::try_from(i).unwrap())
}

/// `GET path` from `from`, or what went wrong.
fn get_from(ns: &Netns, from: Ipv4Addr, path: &str) -> Result<Reply, String> {
    let mut s = open(ns, vec![from]).remove(0);
    reply_to(&mut s, path)
}

/// Sends `GET path` on `s` and reads the reply.
fn reply_to(s: &mut TcpStream, path: &str) -> Result<Reply, String> {
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: hb\r\n\r\n").as_bytes())
        .map_err(|e| format!("sending: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("reading: {e}"))?;
    if raw.is_empty() {
        return Err("closed without a reply".into());
    }
    Ok(Reply::parse(&raw))
}

/// Which of `conns` the endpoint has closed (end of file or reset); `seen`
/// keeps what earlier calls found.
fn closed(conns: &[TcpStream], seen: &mut Vec<bool>) {
    seen.resize(conns.len(), false);
    for (s, seen) in conns.iter().zip(seen.iter_mut()) {
        if *seen {
            continue;
        }
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 256];
        *seen = match (&*s).read(&mut buf) {
            Ok(0) => true,
            Ok(n) => panic!("an idle connection got {n} bytes"),
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
            Err(e) => panic!("reading: {e}"),
        };
        s.set_nonblocking(false).unwrap();
    }
}

/// Polls `conns` for up to `within` until `done` holds of which are
/// closed; returns which are.
fn closed_within(
    conns: &[TcpStream],
    within: Duration,
    done: impl Fn(&[bool]) -> bool,
) -> Vec<bool> {
    let until = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        closed(conns, &mut seen);
        if done(&seen) || Instant::now() > until {
            return seen;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Summaries the collector has printed since `since` (its lines read so
/// far).
fn summaries_since(c: &Collector, since: Instant) -> usize {
    c.lines
        .try_iter()
        .filter(|(at, v)| *at >= since && v["event"] == "summary")
        .count()
}

/// Sweeps went on since `since`: at least half of those due every 200 ms.
fn assert_sweeping(c: &Collector, since: Instant) {
    // The last line may still be on its way.
    thread::sleep(Duration::from_millis(300));
    let due = since.elapsed().as_millis() / 200;
    let seen = summaries_since(c, since);
    assert!(
        seen as u128 >= due / 2,
        "{seen} sweeps in {:?} (sweep 200ms)",
        since.elapsed()
    );
}

#[test]
fn one_client_holds_at_most_8_connections_its_oldest_idle_ones_make_room() {
    let link = setup("perpeer");
    let log = Log::new("perpeer");
    let (c, _) = start(&link, &log, ("1s", "200ms"), &[]);
    // One client opens as many connections as there are slots, and says
    // nothing (each would be closed by the deadline 5 s after it was
    // accepted: what follows must fit in that time).
    let opened = Instant::now();
    let mut conns = open(&link.a, vec![client(1); 128]);
    // Its oldest are closed at once to make room for its newer ones: it
    // keeps 8.
    let gone = closed_within(&conns, Duration::from_secs(3), |gone| {
        gone.iter().filter(|g| **g).count() >= 120
    });
    let kept: Vec<usize> = (0..128).filter(|&i| !gone[i]).collect();
    assert_eq!(
        kept,
        (120..128).collect::<Vec<_>>(),
        "connections of one client still open {:?} after it opened 128",
        opened.elapsed()
    );
    // Another client is served beside it...
    let reply = get_from(&link.a, client(2), "/metrics").expect("another client's scrape");
    assert_eq!(reply.status, 200);
    // ...and so is this one, on the 8 it kept and on a new connection.
    let newest = conns.last_mut().unwrap();
    assert_eq!(reply_to(newest, "/metrics").unwrap().status, 200);
    let reply = get_from(&link.a, client(1), "/silent").expect("a new connection of the client");
    assert_eq!(reply.status, 200);
    assert!(
        opened.elapsed() < Duration::from_millis(4500),
        "too slow to tell the cap from the deadline: {:?}",
        opened.elapsed()
    );
    assert_sweeping(&c, opened);
}

/// 16 clients with 8 connections each, in order (client 1's first): every
/// slot taken.
fn fill_every_slot(ns: &Netns) -> Vec<TcpStream> {
    open(ns, (0..128).map(|i| client(1 + i / 8)).collect())
}

#[test]
fn with_every_slot_held_by_trickling_clients_a_scrape_is_answered() {
    let link = setup("crowd");
    let log = Log::new("crowd");
    let (c, _) = start(&link, &log, ("1s", "200ms"), &[]);
    let opened = Instant::now();
    let mut crowd = fill_every_slot(&link.a);
    // Each starts a request and adds a byte to it every 500 ms.
    let stop = Arc::new(AtomicBool::new(false));
    for s in &mut crowd {
        s.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ").unwrap();
    }
    let trickler = {
        let crowd: Vec<TcpStream> = crowd.iter().map(|s| s.try_clone().unwrap()).collect();
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            for _ in 0..20 {
                thread::sleep(Duration::from_millis(500));
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                for mut s in &crowd {
                    let _ = s.write_all(b"a");
                }
            }
        })
    };
    // A Prometheus scrapes, and is answered every time, at once.
    for scrape in 1..=5 {
        let asked = Instant::now();
        let reply = get_from(&link.a, Ipv4Addr::new(127, 0, 0, 1), "/metrics")
            .unwrap_or_else(|e| panic!("scrape {scrape} while every slot is held: {e}"));
        assert_eq!(reply.status, 200);
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "scrape {scrape} answered after {:?}",
            asked.elapsed()
        );
        thread::sleep(Duration::from_millis(300));
    }
    assert!(
        opened.elapsed() < Duration::from_millis(4500),
        "too slow to tell room made from slots freed by the deadline: {:?}",
        opened.elapsed()
    );
    assert_sweeping(&c, opened);
    stop.store(true, Ordering::Relaxed);
    trickler.join().unwrap();
}

#[test]
fn past_128_connections_the_oldest_idle_one_makes_room_and_the_rest_are_served() {
    let link = setup("connlimit");
    let log = Log::new("connlimit");
    let (c, _) = start(&link, &log, ("1s", "200ms"), &[]);
    // 128 connections that say nothing, from 16 clients (each at its cap).
    let opened = Instant::now();
    let mut conns = fill_every_slot(&link.a);
    // The 129th, from a 17th client, is accepted last (the accept queue is
    // FIFO) and served...
    let reply = get_from(&link.a, client(17), "/metrics").expect("the 129th connection");
    assert_eq!(reply.status, 200);
    // ...the oldest was closed for it at once, not by the deadline, and
    // only that one.
    let gone = closed_within(&conns, Duration::from_secs(2), |gone| gone[0]);
    assert!(
        gone[0],
        "the oldest connection still open {:?} after it was opened",
        opened.elapsed()
    );
    let others: Vec<usize> = (1..128).filter(|&i| gone[i]).collect();
    assert!(others.is_empty(), "also closed: {others:?}");
    // The second oldest and the newest are live and served.
    for i in [1, 127] {
        let reply =
            reply_to(&mut conns[i], "/metrics").unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(reply.status, 200, "connection {i}");
    }
    assert!(
        opened.elapsed() < Duration::from_millis(4500),
        "too slow to tell room made from slots freed by the deadline: {:?}",
        opened.elapsed()
    );
    // Sweeping never stopped.
    assert_sweeping(&c, opened);
}

/// `hb beat` from 198.18.50.`host` every 100 ms.
fn beat(link: &Link, host: u8) -> Proc {
    collector::beat(HB, link, &format!("198.18.50.{host}"), SERVER, "100ms")
}

fn ms(v: &serde_json::Value, field: &str) -> u64 {
    v[field]
        .as_str()
        .and_then(timestamp_ms)
        .unwrap_or_else(|| panic!("no timestamp {field} in {v}"))
}

/// `hb_host_silent_seconds` samples of a scrape: (host label, value).
fn per_host_series(body: &str) -> Vec<(String, f64)> {
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text format");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == "hb_host_silent_seconds")
        .map(|s| {
            let v = match s.value {
                prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{other:?}"),
            };
            (s.labels.get("host").unwrap_or_default().to_owned(), v)
        })
        .collect()
}

#[test]
fn silent_hosts_longest_first_and_per_host_series_only_on_request() {
    const TIMEOUT_MS: u64 = 1500;
    const SWEEP_MS: u64 = 200;
    let link = setup("silent");
    let log = Log::new("silent");
    let (mut c, _) = start(&link, &log, ("1500ms", "200ms"), &[]);
    let hosts = ["198.18.50.2", "198.18.50.3", "198.18.50.4"];
    let mut clients: Vec<Option<Proc>> = [2, 3, 4].map(|h| Some(beat(&link, h))).into();
    let mut missing = hosts.to_vec();
    let (all, seen) = c.wait_for(Duration::from_secs(6), |v| {
        missing.retain(|h| !is_event(v, "new", h));
        missing.is_empty()
    });
    assert!(all.is_some(), "no `new` for {missing:?}: {seen:?}");

    // They stop 400 ms apart, in order.
    let mut stopped = Vec::new();
    for (i, client) in clients.iter_mut().enumerate() {
        if i > 0 {
            thread::sleep(Duration::from_millis(400));
        }
        drop(client.take());
        stopped.push(now_ms());
    }
    let mut silent_at = [None; 3];
    let (all, seen) = c.wait_for(Duration::from_secs(6), |v| {
        for (i, h) in hosts.iter().enumerate() {
            if is_event(v, "silent", h) {
                silent_at[i] = Some(ms(v, "ts"));
            }
        }
        silent_at.iter().all(Option::is_some)
    });
    assert!(all.is_some(), "not all silent: {seen:?}");
    let (summary, _) = c.wait_for(Duration::from_secs(2), |v| v["event"] == "summary");
    assert!(summary.is_some());

    // Longest silent first; silent_since is when the last heartbeat became
    // older than the timeout, and the `silent` event came within a sweep of it.
    let page = get(&link.a, "/silent");
    assert_eq!(page.status, 200);
    let page: serde_json::Value = serde_json::from_slice(&page.body).unwrap();
    assert_eq!(page["total"], 3, "{page}");
    let listed: Vec<&str> = page["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    assert_eq!(listed, hosts, "not longest silent first: {page}");
    let mut previous = u64::MAX;
    for (i, h) in page["hosts"].as_array().unwrap().iter().enumerate() {
        let (last_seen, since) = (ms(h, "last_seen"), ms(h, "silent_since"));
        let silent_for = h["silent_for_ms"].as_u64().unwrap();
        assert!(silent_for < previous, "{page}");
        previous = silent_for;
        // Its last heartbeat was at most a period (and a tick) before it
        // was stopped.
        assert!(
            last_seen + 400 >= stopped[i] && last_seen <= stopped[i] + 50,
            "{h}: last_seen {last_seen}, stopped at {}",
            stopped[i]
        );
        assert!(
            (since as i64 - (last_seen + TIMEOUT_MS) as i64).unsigned_abs() <= SWEEP_MS,
            "{h}: silent_since is not last_seen + timeout"
        );
        let reported = silent_at[i].unwrap();
        assert!(
            reported + 5 >= since && reported <= since + SWEEP_MS + 500,
            "{h}: reported silent at {reported}, silent since {since}"
        );
    }
    // `hb status` lists them in the same order.
    let status = control::status(HB, &link.a, &link.a_if);
    let listed: Vec<&str> = status["silent_hosts"]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    assert_eq!(listed, hosts, "{status}");

    // No per-host series by default.
    let metrics = get(&link.a, "/metrics");
    let body = String::from_utf8(metrics.body).unwrap();
    assert!(
        !body.contains("hb_host_silent_seconds"),
        "per-host series without --metrics-silent-hosts:\n{body}"
    );

    // With --metrics-silent-hosts 2 (after a restart): the two longest
    // silent, no more.
    signal(&c.proc.child, libc::SIGUSR2);
    assert_eq!(
        wait_exit(&mut c.proc.child, Duration::from_secs(10)),
        Some(0)
    );
    let (_c2, _) = start(
        &link,
        &log,
        ("1500ms", "200ms"),
        &["--metrics-silent-hosts", "2"],
    );
    let body = String::from_utf8(get(&link.a, "/metrics").body).unwrap();
    let series = per_host_series(&body);
    let names: Vec<&str> = series.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(names, hosts[..2], "{body}");
    assert!(
        series[0].1 > series[1].1 && series[1].1 > TIMEOUT_MS as f64 / 1000.0,
        "{series:?}"
    );
}
