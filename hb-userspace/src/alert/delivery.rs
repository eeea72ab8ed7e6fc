//! The delivery thread: keeps the alerts the sweeps raised and resolved,
//! and pushes them to every Alertmanager (`POST {URL}/api/v2/alerts`), as
//! Prometheus does with an Alertmanager cluster: each one gets every alert.
//!
//! Per Alertmanager it keeps what is still to send (`pending`): a change is
//! pending for each until that one took it. Firing alerts are all sent
//! again every `resend`, with `endsAt` four resends ahead (Alertmanager
//! resolves them by itself if hb stops); a resolved alert is sent with its
//! `endsAt` at the recovery, and dropped once every Alertmanager took it.
//! A failed POST backs off (doubling, capped) and then sends the whole
//! current state again, so whatever an Alertmanager lost while down (a
//! restart without storage) comes back, and nothing stays firing by
//! mistake.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    time::{Duration, Instant, SystemTime},
};

use hashbrown::{HashMap, HashSet};
use log::{debug, warn};

use super::shape::{Alert, Collector, Ends, Key, Raise, postable};

/// What the event loop hands over.
#[derive(Debug)]
pub enum Message {
    /// Changes since the last message, in order.
    Changes(Vec<Change>),
    /// The whole current state: these alerts fire, and no others (after
    /// the queue overflowed, changes were lost).
    Snapshot(Vec<(Key, Raise)>),
}

#[derive(Debug)]
pub enum Change {
    Fire(Key, Raise),
    /// Resolved at that time.
    Resolve(Key, SystemTime),
}

impl Message {
    /// Alerts it carries (for the queue length).
    pub fn len(&self) -> usize {
        match self {
            Self::Changes(c) => c.len(),
            Self::Snapshot(s) => s.len(),
        }
    }
}

/// Counters shared with the metrics endpoint.
#[derive(Debug, Default)]
pub struct Stats {
    /// Alerts an Alertmanager accepted (each Alertmanager counts).
    pub sent: AtomicU64,
    /// POSTs that failed (connection, timeout, or a status other than 2xx).
    pub failures: AtomicU64,
    /// Alert changes handed to the thread and not yet taken in.
    pub handed: AtomicU64,
    /// Alerts waiting to be sent, summed over the Alertmanagers.
    pub pending: AtomicU64,
}

impl Stats {
    /// Alerts waiting: handed over, or taken in and not yet delivered.
    pub fn queue_length(&self) -> u64 {
        self.handed.load(Ordering::Relaxed) + self.pending.load(Ordering::Relaxed)
    }
}

/// The event loop's end of the queue to the delivery thread: never
/// waits, and counts what it hands over.
pub struct Queue {
    tx: SyncSender<Message>,
    stats: Arc<Stats>,
}

impl Queue {
    pub fn new(tx: SyncSender<Message>, stats: Arc<Stats>) -> Self {
        Self { tx, stats }
    }

    pub fn try_send(&self, m: Message) -> Result<(), TrySendError<Message>> {
        let n = m.len() as u64;
        // Counted before the thread can take it (and count it out).
        self.stats.handed.fetch_add(n, Ordering::Relaxed);
        self.tx.try_send(m).inspect_err(|_| {
            self.stats.handed.fetch_sub(n, Ordering::Relaxed);
        })
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// Alertmanager base URLs (`http://host:9093`).
    pub urls: Vec<String>,
    pub resend: Duration,
    /// Alerts per POST.
    pub batch: usize,
    /// First retry delay after a failure; doubles up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Bound on one POST.
    pub request_timeout: Duration,
    pub generator_url: Option<String>,
    /// Who raises the alerts (their annotations).
    pub collector: Collector,
}

impl Settings {
    pub fn new(urls: Vec<String>, resend: Duration) -> Self {
        Self {
            urls,
            resend,
            batch: 5000,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            generator_url: None,
            collector: Collector::default(),
        }
    }
}

struct Entry {
    alert: Alert,
    resolved: Option<SystemTime>,
}

struct Target {
    /// `{URL}/api/v2/alerts`.
    endpoint: String,
    pending: HashSet<Key>,
    /// When every firing alert is to be sent again.
    resend_at: Instant,
    /// No attempt before then (backing off).
    retry_at: Instant,
    backoff: Duration,
}

pub struct Delivery {
    settings: Settings,
    entries: HashMap<Key, Entry>,
    targets: Vec<Target>,
    stats: Arc<Stats>,
    agent: ureq::Agent,
}

impl Delivery {
    pub fn new(settings: Settings, stats: Arc<Stats>) -> Self {
        let now = Instant::now();
        let targets = settings
            .urls
            .iter()
            .map(|u| Target {
                endpoint: format!("{}/api/v2/alerts", u.trim_end_matches('/')),
                pending: HashSet::new(),
                resend_at: now,
                retry_at: now,
                backoff: settings.backoff,
            })
            .collect();
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(settings.request_timeout))
            .http_status_as_error(false)
            // Alertmanager is reached directly: no proxy from the
            // environment.
            .proxy(None)
            .build()
            .into();
        Self {
            settings,
            entries: HashMap::new(),
            targets,
            stats,
            agent,
        }
    }

    /// Runs until the sender is dropped (the collector stops); then makes
    /// one last attempt for what is pending, so that recoveries seen just
    /// before the stop are delivered.
    pub fn run(mut self, rx: Receiver<Message>) {
        loop {
            let wait = self.next_due().saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(m) => {
                    self.take(m);
                    while let Ok(m) = rx.try_recv() {
                        self.take(m);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.deliver(true);
                    return;
                }
            }
            self.deliver(false);
        }
    }

    fn take(&mut self, m: Message) {
        self.stats
            .handed
            .fetch_sub(m.len() as u64, Ordering::Relaxed);
        match m {
            Message::Changes(changes) => {
                for c in changes {
                    match c {
                        Change::Fire(key, raise) => {
                            let alert = raise.alert(&self.settings.collector);
                            self.fire(key, alert)
                        }
                        Change::Resolve(key, at) => self.resolve(key, at),
                    }
                }
            }
            Message::Snapshot(firing) => {
                let keys: HashSet<Key> = firing.iter().map(|(k, _)| *k).collect();
                let gone: Vec<Key> = self
                    .entries
                    .iter()
                    .filter(|(k, e)| e.resolved.is_none() && !keys.contains(*k))
                    .map(|(k, _)| *k)
                    .collect();
                let now = SystemTime::now();
                for key in gone {
                    self.resolve(key, now);
                }
                for (key, raise) in firing {
                    let alert = raise.alert(&self.settings.collector);
                    let same = self
                        .entries
                        .get(&key)
                        .is_some_and(|e| e.resolved.is_none() && e.alert.labels == alert.labels);
                    if !same {
                        self.fire(key, alert);
                    }
                }
            }
        }
        self.count_pending();
    }

    fn fire(&mut self, key: Key, alert: Alert) {
        self.entries.insert(
            key,
            Entry {
                alert,
                resolved: None,
            },
        );
        self.mark(key);
    }

    fn resolve(&mut self, key: Key, at: SystemTime) {
        if let Some(e) = self.entries.get_mut(&key)
            && e.resolved.is_none()
        {
            e.resolved = Some(at);
            self.mark(key);
        }
    }

    fn mark(&mut self, key: Key) {
        for t in &mut self.targets {
            t.pending.insert(key);
        }
    }

    fn count_pending(&self) {
        let n: usize = self.targets.iter().map(|t| t.pending.len()).sum();
        self.stats.pending.store(n as u64, Ordering::Relaxed);
    }

    /// When an Alertmanager is next due for a POST.
    fn next_due(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        self.targets
            .iter()
            .map(|t| {
                if t.pending.is_empty() && !self.any_firing() {
                    far.max(t.retry_at)
                } else if t.pending.is_empty() {
                    t.resend_at.max(t.retry_at)
                } else {
                    t.retry_at
                }
            })
            .min()
            .unwrap_or(far)
    }

    fn any_firing(&self) -> bool {
        self.entries.values().any(|e| e.resolved.is_none())
    }

    /// POSTs to each Alertmanager that is due (all, with `all`), then drops
    /// resolved alerts every Alertmanager took.
    fn deliver(&mut self, all: bool) {
        let now = Instant::now();
        for i in 0..self.targets.len() {
            let t = &self.targets[i];
            let due = all || now >= t.retry_at;
            let full = now >= t.resend_at;
            if due && (full || !t.pending.is_empty()) {
                self.attempt(i, full);
            }
        }
        let targets = &self.targets;
        self.entries
            .retain(|k, e| e.resolved.is_none() || targets.iter().any(|t| t.pending.contains(k)));
        self.count_pending();
    }

    /// One round to Alertmanager `i`: its pending alerts, and with `full`
    /// every firing one, in batches. Stops at the first failure.
    fn attempt(&mut self, i: usize, full: bool) {
        let mut keys: Vec<Key> = self.targets[i].pending.iter().copied().collect();
        if full {
            let pending = &self.targets[i].pending;
            keys.extend(
                self.entries
                    .iter()
                    .filter(|(k, e)| e.resolved.is_none() && !pending.contains(*k))
                    .map(|(k, _)| *k),
            );
        }
        // Recoveries first: a backlog never holds back the good news.
        keys.sort_by_key(|k| self.entries.get(k).is_none_or(|e| e.resolved.is_none()));
        for chunk in keys.chunks(self.settings.batch.max(1)) {
            // Per POST: a round of a mass outage takes seconds.
            let ends_firing = SystemTime::now() + 4 * self.settings.resend;
            let body = postable(
                chunk
                    .iter()
                    .filter_map(|k| self.entries.get(k))
                    .map(|e| (&e.alert, e.resolved.map_or(Ends::Firing, Ends::At))),
                ends_firing,
                self.settings.generator_url.as_deref(),
            );
            let t = &mut self.targets[i];
            let began = Instant::now();
            match post(&self.agent, &t.endpoint, &body) {
                Ok(()) => {
                    debug!(
                        "alerts to {}: {} ({} bytes) in {:?}",
                        t.endpoint,
                        chunk.len(),
                        body.len(),
                        began.elapsed()
                    );
                    self.stats
                        .sent
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    for k in chunk {
                        t.pending.remove(k);
                    }
                }
                Err(e) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        "alerts to {}: {e}; retrying in {:?}, then sending every firing alert again",
                        t.endpoint, t.backoff
                    );
                    let now = Instant::now();
                    t.retry_at = now + t.backoff;
                    t.backoff = (t.backoff * 2).min(self.settings.max_backoff);
                    t.resend_at = now;
                    return;
                }
            }
        }
        let t = &mut self.targets[i];
        if t.backoff != self.settings.backoff {
            debug!("alerts to {}: delivered again", t.endpoint);
        }
        t.backoff = self.settings.backoff;
        if full {
            t.resend_at = Instant::now() + self.settings.resend;
        }
    }
}

fn post(agent: &ureq::Agent, endpoint: &str, body: &[u8]) -> Result<(), String> {
    let mut resp = agent
        .post(endpoint)
        .header("Content-Type", "application/json")
        .send(body)
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    // Read to the end, so that the connection can be used again.
    let text = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .unwrap_or_default();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {status}: {}", text.trim()))
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader, Read, Write},
        net::{SocketAddr, TcpListener, TcpStream},
        sync::{Mutex, atomic::AtomicU16, mpsc::sync_channel},
        thread,
    };

    use hb_common::HostKey;
    use serde_json::Value;

    use super::*;
    use crate::track::events::Host;

    /// An Alertmanager stand-in for the delivery's own logic: records every
    /// POST (when it came, its path, its JSON body) and answers with
    /// `status`. (The tests against the real Alertmanager are in
    /// tests/alertmanager.rs.)
    struct Receiver {
        addr: SocketAddr,
        posts: Arc<Mutex<Vec<(Instant, String, Value)>>>,
        status: Arc<AtomicU16>,
    }

    impl Receiver {
        fn start() -> Self {
            Self::on(TcpListener::bind("127.0.0.1:0").unwrap())
        }

        fn on(listener: TcpListener) -> Self {
            let addr = listener.local_addr().unwrap();
            let posts = Arc::new(Mutex::new(Vec::new()));
            let status = Arc::new(AtomicU16::new(200));
            let (p, s) = (Arc::clone(&posts), Arc::clone(&status));
            thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { return };
                    let (p, s) = (Arc::clone(&p), Arc::clone(&s));
                    thread::spawn(move || serve(conn, &p, &s));
                }
            });
            Self {
                addr,
                posts,
                status,
            }
        }

        fn url(&self) -> String {
            format!("http://{}", self.addr)
        }

        fn posts(&self) -> Vec<(Instant, String, Value)> {
            self.posts.lock().unwrap().clone()
        }

        /// Alerts received, in order, each with when its POST came.
        fn alerts(&self) -> Vec<(Instant, Value)> {
            self.posts()
                .into_iter()
                .flat_map(|(at, _, body)| {
                    body.as_array()
                        .unwrap()
                        .iter()
                        .map(|a| (at, a.clone()))
                        .collect::<Vec<_>>()
                })
                .collect()
        }

        /// Waits up to 10 s for `pred` over the alerts received.
        fn wait(&self, what: &str, pred: impl Fn(&[(Instant, Value)]) -> bool) {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let alerts = self.alerts();
                if pred(&alerts) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "waited 10 s for {what}; received {} alerts, the last: {:?}",
                    alerts.len(),
                    alerts.last()
                );
                thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn serve(conn: TcpStream, posts: &Mutex<Vec<(Instant, String, Value)>>, status: &AtomicU16) {
        let mut out = conn.try_clone().unwrap();
        let mut conn = BufReader::new(conn);
        loop {
            let mut head = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                if conn.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let mut body = vec![0; length];
            conn.read_exact(&mut body).unwrap();
            let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
            let code = status.load(Ordering::Relaxed);
            if code == 200 {
                let json = serde_json::from_slice(&body).expect("a JSON body");
                posts.lock().unwrap().push((Instant::now(), path, json));
            }
            let reply = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
            if out.write_all(reply.as_bytes()).is_err() {
                return;
            }
        }
    }

    /// Waits up to 10 s for `cond` (the thread counts a POST after the
    /// receiver has it).
    fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "waited 10 s for {what}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn settings(urls: Vec<String>) -> Settings {
        Settings {
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(400),
            request_timeout: Duration::from_secs(5),
            ..Settings::new(urls, Duration::from_secs(60))
        }
    }

    /// A delivery thread as the notifier starts it.
    fn start(settings: Settings) -> (Queue, Arc<Stats>) {
        let stats = Arc::new(Stats::default());
        let delivery = Delivery::new(settings, Arc::clone(&stats));
        let (tx, rx) = sync_channel(64);
        thread::spawn(move || delivery.run(rx));
        (Queue::new(tx, Arc::clone(&stats)), stats)
    }

    fn host(i: u32) -> String {
        let [_, _, a, b] = (i + (10 << 24)).to_be_bytes();
        format!("10.0.{a}.{b}")
    }

    fn silent(i: u32) -> (Key, Raise) {
        let ip: std::net::Ipv4Addr = host(i).parse().unwrap();
        let host = Host::addr(&HostKey::from_ipv4(ip.octets()));
        let t = SystemTime::now();
        let raise = Raise::HostSilent {
            host,
            ident: None,
            last_seen: t,
            silent_since: t,
        };
        (Key::Host(i), raise)
    }

    fn fire(range: std::ops::Range<u32>) -> Message {
        Message::Changes(
            range
                .map(|i| {
                    let (k, a) = silent(i);
                    Change::Fire(k, a)
                })
                .collect(),
        )
    }

    fn is(alert: &Value, i: u32) -> bool {
        alert["labels"]["host"] == host(i).as_str()
    }

    fn ends_at(alert: &Value) -> SystemTime {
        humantime::parse_rfc3339(alert["endsAt"].as_str().unwrap()).unwrap()
    }

    fn resolved(alert: &Value) -> bool {
        ends_at(alert) <= SystemTime::now()
    }

    #[test]
    fn a_mass_outage_goes_in_batches_within_seconds() {
        let am = Receiver::start();
        let mut s = settings(vec![am.url()]);
        s.batch = 5000;
        let (tx, stats) = start(s);
        let began = Instant::now();
        tx.try_send(fire(0..12_000)).unwrap();
        am.wait("12000 alerts", |a| a.len() >= 12_000);
        let took = began.elapsed();
        let posts = am.posts();
        let sizes: Vec<usize> = posts
            .iter()
            .map(|(_, _, b)| b.as_array().unwrap().len())
            .collect();
        assert_eq!(sizes, [5000, 5000, 2000]);
        assert!(posts.iter().all(|(_, path, _)| path == "/api/v2/alerts"));
        let hosts: HashSet<String> = am
            .alerts()
            .iter()
            .map(|(_, a)| a["labels"]["host"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(hosts.len(), 12_000);
        assert!(took < Duration::from_secs(10), "{took:?}");
        until("12000 sent, none queued", || {
            stats.sent.load(Ordering::Relaxed) == 12_000 && stats.queue_length() == 0
        });
    }

    #[test]
    fn firing_alerts_are_sent_again_every_resend_ending_four_resends_ahead() {
        let am = Receiver::start();
        let mut s = settings(vec![am.url()]);
        s.resend = Duration::from_millis(300);
        let (tx, _) = start(s);
        tx.try_send(fire(0..2)).unwrap();
        am.wait("three rounds", |a| a.len() >= 6);
        let alerts = am.alerts();
        let firsts: Vec<Instant> = alerts
            .iter()
            .filter(|(_, a)| is(a, 0))
            .map(|(at, _)| *at)
            .collect();
        for w in firsts.windows(2) {
            let gap = w[1] - w[0];
            assert!(
                gap >= Duration::from_millis(290) && gap < Duration::from_millis(1000),
                "{gap:?}"
            );
        }
        let (at, last) = alerts.last().unwrap();
        let ahead = ends_at(last)
            .duration_since(SystemTime::now() - at.elapsed())
            .unwrap();
        assert!(
            ahead > Duration::from_millis(1100) && ahead <= Duration::from_millis(1250),
            "endsAt {ahead:?} ahead, not 4 x 300 ms"
        );
    }

    #[test]
    fn after_failures_it_backs_off_then_sends_everything_again() {
        let am = Receiver::start();
        am.status.store(503, Ordering::Relaxed);
        let (tx, stats) = start(settings(vec![am.url()]));
        tx.try_send(fire(0..3)).unwrap();
        // 100, 200, 400, 400 ms between tries: five failures in about 1.1 s.
        let began = Instant::now();
        while stats.failures.load(Ordering::Relaxed) < 5 {
            assert!(began.elapsed() < Duration::from_secs(5), "no retries");
            thread::sleep(Duration::from_millis(10));
        }
        let took = began.elapsed();
        assert!(
            took >= Duration::from_millis(1000) && took < Duration::from_millis(2500),
            "5 failures in {took:?}: not backing off 100, 200, 400, 400 ms"
        );
        assert_eq!(stats.queue_length(), 3);
        assert!(am.alerts().is_empty());
        am.status.store(200, Ordering::Relaxed);
        am.wait("the three alerts", |a| a.len() >= 3);
        until("none queued", || stats.queue_length() == 0);
        // A later change goes out alone (no full resend before `resend`).
        tx.try_send(fire(3..4)).unwrap();
        am.wait("the fourth", |a| a.iter().any(|(_, a)| is(a, 3)));
        assert_eq!(am.alerts().len(), 4);
    }

    #[test]
    fn a_recovery_while_alertmanager_is_down_is_delivered_when_it_is_back() {
        let am = Receiver::start();
        let (tx, stats) = start(settings(vec![am.url()]));
        tx.try_send(fire(0..2)).unwrap();
        am.wait("two firing", |a| a.len() >= 2);
        am.status.store(500, Ordering::Relaxed);
        let recovered = SystemTime::now();
        tx.try_send(Message::Changes(vec![Change::Resolve(
            Key::Host(0),
            recovered,
        )]))
        .unwrap();
        while stats.failures.load(Ordering::Relaxed) < 2 {
            thread::sleep(Duration::from_millis(10));
        }
        am.status.store(200, Ordering::Relaxed);
        am.wait("host 0 resolved", |a| {
            a.iter().any(|(_, a)| is(a, 0) && resolved(a))
        });
        let alerts = am.alerts();
        let (_, r) = alerts
            .iter()
            .find(|(_, a)| is(a, 0) && resolved(a))
            .unwrap();
        // endsAt is the recovery (to the millisecond), not the delivery.
        let off = ends_at(r).duration_since(recovered).unwrap_or_default();
        assert!(off < Duration::from_millis(1), "{off:?}");
        // On reconnection the whole state: host 1 still firing.
        let after = &alerts[2..];
        assert!(after.iter().any(|(_, a)| is(a, 1) && !resolved(a)));
        until("none queued", || stats.queue_length() == 0);
    }

    #[test]
    fn an_alertmanager_that_was_not_listening_gets_everything_once_it_listens() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let (tx, stats) = start(settings(vec![format!("http://{addr}")]));
        tx.try_send(fire(0..2)).unwrap();
        tx.try_send(Message::Changes(vec![Change::Resolve(
            Key::Host(0),
            SystemTime::now(),
        )]))
        .unwrap();
        while stats.failures.load(Ordering::Relaxed) < 2 {
            thread::sleep(Duration::from_millis(10));
        }
        let am = Receiver::on(TcpListener::bind(addr).unwrap());
        am.wait("both", |a| a.len() >= 2);
        let alerts = am.alerts();
        assert!(alerts.iter().any(|(_, a)| is(a, 0) && resolved(a)));
        assert!(alerts.iter().any(|(_, a)| is(a, 1) && !resolved(a)));
    }

    #[test]
    fn every_alertmanager_gets_every_alert_even_with_one_down() {
        let (a, b) = (Receiver::start(), Receiver::start());
        b.status.store(503, Ordering::Relaxed);
        let (tx, stats) = start(settings(vec![a.url(), b.url()]));
        tx.try_send(fire(0..5)).unwrap();
        a.wait("five on a", |x| x.len() >= 5);
        until("b's five still to go", || stats.queue_length() == 5);
        b.status.store(200, Ordering::Relaxed);
        b.wait("five on b", |x| x.len() >= 5);
        until("10 sent", || stats.sent.load(Ordering::Relaxed) == 10);
        // Changes go to both at once (a minute before the next resend).
        tx.try_send(Message::Changes(vec![Change::Resolve(
            Key::Host(0),
            SystemTime::now(),
        )]))
        .unwrap();
        tx.try_send(fire(5..6)).unwrap();
        for am in [&a, &b] {
            am.wait("0 resolved and 5 firing", |x| {
                x.iter().any(|(_, a)| is(a, 0) && resolved(a)) && x.iter().any(|(_, a)| is(a, 5))
            });
        }
    }

    #[test]
    fn a_snapshot_resolves_what_it_no_longer_holds() {
        let am = Receiver::start();
        let (tx, _) = start(settings(vec![am.url()]));
        tx.try_send(fire(0..3)).unwrap();
        am.wait("three", |a| a.len() >= 3);
        // The queue overflowed meanwhile: 0 recovered, 1 and 3 are silent.
        tx.try_send(Message::Snapshot(vec![silent(1), silent(3)]))
            .unwrap();
        am.wait("0 resolved and 3 firing", |a| {
            a.iter().any(|(_, a)| is(a, 0) && resolved(a))
                && a.iter().any(|(_, a)| is(a, 3) && !resolved(a))
        });
        let later: Vec<_> = am.alerts().into_iter().skip(3).collect();
        assert!(
            !later.iter().any(|(_, a)| is(a, 1)),
            "1 was delivered already and is unchanged"
        );
        assert!(
            later.iter().any(|(_, a)| is(a, 2) && resolved(a)),
            "2 is not in the snapshot either"
        );
    }
}
