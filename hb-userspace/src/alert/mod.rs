//! Alerts to Alertmanager (API v2): `HostSilent` while a host is silent,
//! `CollectorBlind` while the collector cannot trust what it sees.
//!
//! The event loop's side is the [`Notifier`]: after each sweep it turns the
//! sweep's transitions into alert changes and hands them to the delivery
//! thread through a bounded queue, never waiting: when the queue is full it
//! notes that a resync is needed and, at a later sweep, hands over the
//! whole current state instead. The thread does the HTTP (see
//! [`delivery`]), so a slow or absent Alertmanager never slows a sweep.

mod delivery;
mod shape;
mod sight;

use std::{
    sync::{
        Arc,
        mpsc::{self, TrySendError},
    },
    thread,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use hashbrown::HashMap;
use log::warn;

use self::{
    delivery::{Change, Delivery, Message, Queue},
    shape::{Alert, Key, collector_blind, host_silent},
    sight::{Blindness, Facts, Sight},
};
pub use self::{
    delivery::{Settings, Stats},
    shape::Collector,
};
use crate::{
    clock::monotonic_ns,
    track::{sweeper::Sweeper, table::Table, tracker::Transition},
};

/// Sweeps' worth of changes the queue holds before a resync is needed.
const QUEUE: usize = 64;

/// How long a stopping collector waits for the last deliveries.
const FINISH: Duration = Duration::from_secs(5);

pub struct Notifier {
    queue: Option<Queue>,
    done: mpsc::Receiver<()>,
    stats: Arc<Stats>,
    sight: Sight,
    collector: Collector,
    timeout: Duration,
    /// The interface whose state is checked (XDP mode).
    iface: Option<String>,
    /// Silent hosts not alerted yet (not trusted yet): slot -> last seen.
    held: HashMap<u32, u64>,
    blind: Option<(Blindness, SystemTime)>,
    /// Changes were lost (queue full): hand over the whole state next.
    resync: bool,
}

impl Notifier {
    /// Starts the delivery thread.
    pub fn start(
        settings: Settings,
        collector: Collector,
        timeout: Duration,
        sweep: Duration,
        iface: Option<String>,
    ) -> Result<Self> {
        let stats = Arc::new(Stats::default());
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let (done_tx, done) = mpsc::channel();
        let delivery = Delivery::new(settings, Arc::clone(&stats));
        thread::Builder::new()
            .name("hb-alerts".into())
            .spawn(move || {
                delivery.run(rx);
                let _ = done_tx.send(());
            })
            .context("starting the alert delivery thread")?;
        Ok(Self {
            queue: Some(Queue::new(tx, Arc::clone(&stats))),
            done,
            stats,
            sight: Sight::new(timeout, sweep),
            collector,
            timeout,
            iface,
            held: HashMap::new(),
            blind: None,
            // The first hand-over is the whole state: a collector carrying
            // on from another one's table has hosts silent already.
            resync: true,
        })
    }

    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// Takes in the sweep just done; `table` names its hosts.
    pub fn feed(&mut self, sweeper: &Sweeper, table: &dyn Table) {
        let now = monotonic_ns();
        let wall = SystemTime::now();
        let wall_of = |mono: u64| wall - Duration::from_nanos(now.saturating_sub(mono));
        let summary = sweeper.summary();
        let blind = self.sight.observe(Facts {
            now,
            heartbeats: summary.heartbeats,
            alive: summary.alive,
            link_up: self.iface.as_deref().and_then(link_up),
        });
        let mut changes = Vec::new();
        for t in sweeper.last_transitions() {
            match *t {
                Transition::Silent {
                    host,
                    silent_for_ns,
                } => {
                    self.held.insert(host, now.saturating_sub(silent_for_ns));
                }
                Transition::Recovered { host, .. } => {
                    if self.held.remove(&host).is_none() {
                        changes.push(Change::Resolve(Key::Host(host), wall));
                    }
                }
                Transition::New { .. } => {}
            }
        }
        let timeout = self.timeout;
        let collector = &self.collector;
        let silent = |slot: u32, last_seen: u64| {
            host_silent(
                &table.host(slot),
                wall_of(last_seen),
                wall_of(last_seen) + timeout,
                collector,
            )
        };
        if blind.is_none() && !self.held.is_empty() {
            let sight = &self.sight;
            self.held.retain(|&slot, &mut last_seen| {
                let trusted = sight.trusts(last_seen);
                if trusted {
                    changes.push(Change::Fire(Key::Host(slot), silent(slot, last_seen)));
                }
                !trusted
            });
        }
        if blind != self.blind.map(|b| b.0) {
            // A change of reason is a new annotation on the same alert.
            match blind {
                Some(why) => {
                    warn!(
                        "the collector cannot see its hosts ({}): holding back host alerts",
                        why.reason()
                    );
                    let since = self.blind.map_or(wall, |b| b.1);
                    self.blind = Some((why, since));
                    changes.push(Change::Fire(Key::Blind, self.blind_alert().unwrap()));
                }
                None => {
                    warn!("the collector sees its hosts again");
                    self.blind = None;
                    changes.push(Change::Resolve(Key::Blind, wall));
                }
            }
        }
        let message = if self.resync {
            let mut firing: Vec<(Key, Alert)> = sweeper
                .silent()
                .range(0, usize::MAX)
                .filter(|(slot, _)| !self.held.contains_key(slot))
                .map(|(slot, last_seen)| (Key::Host(slot), silent(slot, last_seen)))
                .collect();
            firing.extend(self.blind_alert().map(|a| (Key::Blind, a)));
            Message::Snapshot(firing)
        } else if changes.is_empty() {
            return;
        } else {
            Message::Changes(changes)
        };
        self.hand_over(message);
    }

    fn blind_alert(&self) -> Option<Alert> {
        self.blind
            .map(|(why, since)| collector_blind(why.reason(), since, &self.collector))
    }

    fn hand_over(&mut self, message: Message) {
        let Some(queue) = &self.queue else { return };
        match queue.try_send(message) {
            Ok(()) => self.resync = false,
            Err(e) => {
                if !self.resync {
                    let why = match e {
                        TrySendError::Full(_) => "its queue is full",
                        TrySendError::Disconnected(_) => "it stopped",
                    };
                    warn!(
                        "alert delivery is behind ({why}): the whole state is handed over once it takes it"
                    );
                }
                self.resync = true;
            }
        }
    }

    /// Stops the delivery thread after a last attempt at what is pending,
    /// waiting for it a few seconds at most.
    pub fn finish(mut self) {
        drop(self.queue.take());
        if self.done.recv_timeout(FINISH).is_err() {
            warn!("alert delivery still busy after {FINISH:?}: not waiting");
        }
    }
}

/// Whether `iface` is up and running (in this network namespace); `None`
/// when that cannot be told.
fn link_up(iface: &str) -> Option<bool> {
    // SAFETY: a plain socket, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: ifreq is plain data; all zeros is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = iface.as_bytes();
    if name.len() >= req.ifr_name.len() {
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        return None;
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads a NUL-terminated name and writes the flags
    // into `req`, which outlives the call.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return None;
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags } as libc::c_int;
    Some(flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0)
}

/// The machine's host name, for the alerts' annotations.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer and its length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
