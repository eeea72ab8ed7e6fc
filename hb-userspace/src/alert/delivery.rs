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
        mpsc::{Receiver, RecvTimeoutError},
    },
    time::{Duration, Instant, SystemTime},
};

use hashbrown::{HashMap, HashSet};
use log::{debug, warn};

use super::shape::{Alert, Key, postable};

/// What the event loop hands over.
#[derive(Debug)]
pub enum Message {
    /// Changes since the last message, in order.
    Changes(Vec<Change>),
    /// The whole current state: these alerts fire, and no others (after
    /// the queue overflowed, changes were lost).
    Snapshot(Vec<(Key, Alert)>),
}

#[derive(Debug)]
pub enum Change {
    Fire(Key, Alert),
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
                        Change::Fire(key, alert) => self.fire(key, alert),
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
                for (key, alert) in firing {
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
        self.entries.retain(|k, e| {
            e.resolved.is_none() || targets.iter().any(|t| t.pending.contains(k))
        });
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
        let ends_firing = SystemTime::now() + 4 * self.settings.resend;
        for chunk in keys.chunks(self.settings.batch.max(1)) {
            let body = postable(
                chunk.iter().filter_map(|k| self.entries.get(k)).map(|e| {
                    (&e.alert, e.resolved.unwrap_or(ends_firing))
                }),
                self.settings.generator_url.as_deref(),
            );
            let t = &mut self.targets[i];
            match post(&self.agent, &t.endpoint, &body) {
                Ok(()) => {
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
