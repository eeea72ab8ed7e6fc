//! Alerts to Alertmanager (API v2): `HostSilent` while a host is silent,
//! `HostMissing` while an inventoried host was never heard (past its
//! grace), `CollectorBlind` while the collector cannot trust what it sees.
//!
//! The event loop's side is the [`Notifier`]: after each sweep it turns the
//! sweep's transitions into alert changes and hands them to the delivery
//! thread through a bounded queue, never waiting: when the queue is full it
//! notes that a resync is needed and, at a later sweep, hands over the
//! whole current state instead. The thread does the HTTP (see
//! [`delivery`]), so a slow or absent Alertmanager never slows a sweep.

mod command;
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
use hashbrown::{HashMap, HashSet};
use hb_common::HostKey;
use log::warn;

pub use self::{
    command::{CommandStats, OnEvent},
    delivery::{Settings, Stats},
    shape::Collector,
};
use self::{
    delivery::{Change, Delivery, Message, Queue},
    shape::{HostIdent, Key, Raise},
    sight::{Blindness, Facts, Sight},
};
use crate::{
    clock::monotonic_ns,
    track::{
        sweeper::Sweeper,
        table::Table,
        tracker::{AUTO, Transition},
    },
};

/// Sweeps' worth of changes the queue holds before a resync is needed.
const QUEUE: usize = 64;

/// Sweeps between two full comparisons of the missing hosts with those
/// alerted when nothing says they changed (a reload that relabels them).
const MISSING_RECHECK: u32 = 60;

/// How long a stopping collector waits for the last deliveries.
const FINISH: Duration = Duration::from_secs(5);

pub struct Notifier {
    queue: Option<Queue>,
    done: mpsc::Receiver<()>,
    stats: Arc<Stats>,
    sight: Sight,
    timeout: Duration,
    /// The interface whose state is checked (XDP mode).
    iface: Option<String>,
    /// Silent hosts not alerted yet (not trusted yet): slot -> last seen.
    held: HashMap<u32, u64>,
    blind: Option<(Blindness, SystemTime)>,
    /// Missing hosts alerted (`HostMissing` firing), by inventory key.
    missing: HashSet<HostKey>,
    /// Sweeps until the missing hosts are compared in full anyway.
    missing_recheck: u32,
    /// Changes were lost (queue full): hand over the whole state next.
    resync: bool,
}

impl Notifier {
    /// Starts the delivery thread.
    pub fn start(
        settings: Settings,
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
        let queue = Queue::new(tx, Arc::clone(&stats));
        Ok(Self::new(queue, done, stats, timeout, sweep, iface))
    }

    fn new(
        queue: Queue,
        done: mpsc::Receiver<()>,
        stats: Arc<Stats>,
        timeout: Duration,
        sweep: Duration,
        iface: Option<String>,
    ) -> Self {
        Self {
            queue: Some(queue),
            done,
            stats,
            sight: Sight::new(timeout, sweep),
            timeout,
            iface,
            held: HashMap::new(),
            blind: None,
            missing: HashSet::new(),
            missing_recheck: 0,
            // The first hand-over is the whole state: a collector carrying
            // on from another one's table has hosts silent already.
            resync: true,
        }
    }

    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// Takes in the sweep just done; `table` names its hosts.
    pub fn feed(&mut self, sweeper: &Sweeper, table: &dyn Table) {
        let link_up = self.iface.as_deref().and_then(link_up);
        self.feed_at(sweeper, table, monotonic_ns(), SystemTime::now(), link_up);
    }

    /// `feed` at monotonic time `now`, wall time `wall`, with the
    /// interface's state.
    fn feed_at(
        &mut self,
        sweeper: &Sweeper,
        table: &dyn Table,
        now: u64,
        wall: SystemTime,
        link_up: Option<bool>,
    ) {
        let wall_of = |mono: u64| wall - Duration::from_nanos(now.saturating_sub(mono));
        let summary = sweeper.summary();
        let blind = self.sight.observe(Facts {
            now,
            heartbeats: summary.heartbeats,
            alive: summary.alive,
            link_up,
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
        let silent = |slot: u32, last_seen: u64| Raise::HostSilent {
            host: table.host(slot),
            ident: sweeper.ident(slot).as_ref().and_then(HostIdent::of),
            last_seen: wall_of(last_seen),
            // The host's own timeout where it is learned (auto).
            silent_since: wall_of(last_seen)
                + match sweeper.tracker().timeout_of(slot) {
                    AUTO => Duration::from_nanos(
                        sweeper.tracker().host_timeout(slot, table.timing(slot)),
                    ),
                    _ => timeout,
                },
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
                    changes.push(Change::Fire(Key::Blind, self.blind_raise().unwrap()));
                }
                None => {
                    warn!("the collector sees its hosts again");
                    self.blind = None;
                    changes.push(Change::Resolve(Key::Blind, wall));
                }
            }
        }
        let missing_now = self.missing_changes(sweeper, blind.is_some(), wall_of, wall);
        if !self.resync {
            changes.extend(missing_now.1);
        }
        let message = if self.resync {
            let mut firing: Vec<(Key, Raise)> = sweeper
                .silent()
                .range(0, usize::MAX)
                .filter(|(slot, _)| !self.held.contains_key(slot))
                // Alerts follow the lines: a flapping host's are held back.
                .filter(|&(slot, _)| !sweeper.is_flapping(slot))
                .map(|(slot, last_seen)| (Key::Host(slot), silent(slot, last_seen)))
                .collect();
            firing.extend(missing_now.0);
            firing.extend(self.blind_raise().map(|a| (Key::Blind, a)));
            Message::Snapshot(firing)
        } else if changes.is_empty() {
            return;
        } else {
            Message::Changes(changes)
        };
        self.hand_over(message);
    }

    /// The `HostMissing` alerts: (all firing, when a resync needs them;
    /// the changes since the last sweep). Missing hosts are not alerted
    /// while the collector is blind (it would not have heard them); they
    /// are resolved when heard (the roll no longer lists them missing) or
    /// dropped from the inventory.
    #[allow(clippy::type_complexity)]
    fn missing_changes(
        &mut self,
        sweeper: &Sweeper,
        blind: bool,
        wall_of: impl Fn(u64) -> SystemTime,
        wall: SystemTime,
    ) -> (Vec<(Key, Raise)>, Vec<Change>) {
        let roll = sweeper.roll();
        let count = roll.missing_count() as usize;
        self.missing_recheck = self.missing_recheck.saturating_sub(1);
        let unchanged = count == self.missing.len()
            && sweeper.last_transitions().is_empty()
            && !self.resync
            && self.missing_recheck > 0;
        if unchanged || (count == 0 && self.missing.is_empty()) {
            return Default::default();
        }
        self.missing_recheck = MISSING_RECHECK;
        let fleet = sweeper.fleet();
        let mut firing = Vec::new();
        let mut changes = Vec::new();
        let mut now_missing = HashSet::with_capacity(count);
        let mut alerted = HashSet::with_capacity(count);
        if let Some(inv) = fleet.inventory() {
            let classes = fleet.classes();
            for (e, since) in roll.missing() {
                let key = *inv.key(e);
                now_missing.insert(key);
                let fired = self.missing.contains(&key);
                if blind && !fired {
                    continue;
                }
                alerted.insert(key);
                if fired && !self.resync {
                    continue;
                }
                let grace = classes[inv.class(e) as usize].grace;
                let raise = Raise::HostMissing {
                    key,
                    ident: HostIdent::of(&inv.ident(e)),
                    expected_since: wall_of(since),
                    missing_since: wall_of(since) + grace,
                };
                if !fired {
                    changes.push(Change::Fire(Key::Missing(key), raise.clone()));
                }
                firing.push((Key::Missing(key), raise));
            }
        }
        for gone in self.missing.iter().filter(|k| !now_missing.contains(*k)) {
            changes.push(Change::Resolve(Key::Missing(*gone), wall));
        }
        self.missing = alerted;
        (firing, changes)
    }

    fn blind_raise(&self) -> Option<Raise> {
        self.blind.map(|(why, since)| Raise::CollectorBlind {
            why: why.reason(),
            since,
        })
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
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // SAFETY: a plain socket call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a new descriptor, owned by nothing else (closed on drop).
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all zeros is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = iface.as_bytes();
    if name.len() >= req.ifr_name.len() {
        return None;
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads a NUL-terminated name and writes the flags
    // into `req`, which outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return None;
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = libc::c_int::from(unsafe { req.ifr_ifru.ifru_flags });
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

#[cfg(test)]
mod tests {
    use std::{
        cell::Cell,
        sync::atomic::{AtomicU32, Ordering},
        time::UNIX_EPOCH,
    };

    use hb_common::{Counter, HostKey};

    use super::*;
    use crate::track::{
        events::{Format, Host},
        table::Counts,
    };

    const S: u64 = 1_000_000_000;

    /// A table whose hosts beat when told to.
    struct Fake {
        seen: Vec<AtomicU32>,
        heartbeats: Cell<u64>,
    }

    impl Fake {
        fn new(hosts: usize) -> Self {
            Self {
                seen: (0..hosts).map(|_| AtomicU32::new(0)).collect(),
                heartbeats: Cell::new(0),
            }
        }

        fn beat(&self, slot: usize, at: u64) {
            self.seen[slot].store(hb_common::timing::tick(at, 0), Ordering::Relaxed);
            self.heartbeats.set(self.heartbeats.get() + 1);
        }
    }

    impl Table for Fake {
        fn epoch_ns(&self) -> u64 {
            0
        }
        fn last_seen(&self) -> &[AtomicU32] {
            &self.seen
        }
        fn host(&self, slot: u32) -> Host {
            Host::addr(&HostKey::from_ipv4([198, 18, 0, slot as u8]))
        }
        fn len(&self) -> usize {
            self.seen.len()
        }
        fn capacity(&self) -> usize {
            self.seen.len()
        }
        fn counters(&self) -> anyhow::Result<Counts> {
            let mut c = [0; Counter::COUNT];
            c[Counter::Heartbeat as usize] = self.heartbeats.get();
            Ok(c)
        }
    }

    /// A notifier (timeout 10 s, sweep 1 s) whose queue of `depth` the
    /// test reads, and its sweeper.
    fn notifier(depth: usize) -> (Notifier, mpsc::Receiver<Message>, Sweeper) {
        let stats = Arc::new(Stats::default());
        let (tx, rx) = mpsc::sync_channel(depth);
        let (_, done) = mpsc::channel();
        let n = Notifier::new(
            Queue::new(tx, Arc::clone(&stats)),
            done,
            stats,
            Duration::from_secs(10),
            Duration::from_secs(1),
            None,
        );
        (n, rx, Sweeper::new(10 * S, Format::Json))
    }

    fn sweep(n: &mut Notifier, sw: &mut Sweeper, table: &Fake, t: u64, link_up: bool) {
        let wall = UNIX_EPOCH + Duration::from_secs(1_000_000 + t);
        sw.sweep_at(table, t * S, wall).unwrap();
        n.feed_at(sw, table, t * S, wall, Some(link_up));
    }

    /// What a message says: keys fired, keys resolved (sorted); a
    /// snapshot's keys count as fired.
    fn said(m: Message) -> (bool, Vec<Key>, Vec<Key>) {
        match m {
            Message::Snapshot(s) => (true, s.into_iter().map(|(k, _)| k).collect(), vec![]),
            Message::Changes(c) => {
                let (mut fired, mut resolved) = (vec![], vec![]);
                for c in c {
                    match c {
                        Change::Fire(k, _) => fired.push(k),
                        Change::Resolve(k, _) => resolved.push(k),
                    }
                }
                fired.sort();
                resolved.sort();
                (false, fired, resolved)
            }
        }
    }

    /// A fleet listing 198.18.0.0 .. 198.18.0.`hosts`-1 as `h-N` in group
    /// `g`, with a grace of 5 s.
    fn listed(hosts: u8) -> crate::track::fleet::Fleet {
        use crate::track::fleet::{Fleet, FleetConfig};
        let path = std::env::temp_dir().join(format!("hb-alert-inv-{}.csv", std::process::id()));
        let mut csv = String::from("address,name,group\n");
        for h in 0..hosts {
            csv.push_str(&format!("198.18.0.{h},h-{h},g\n"));
        }
        std::fs::write(&path, csv).unwrap();
        let fleet = Fleet::load(&FleetConfig {
            inventory: Some(path.clone()),
            grace: Duration::from_secs(5),
            ..FleetConfig::default()
        })
        .unwrap();
        let _ = std::fs::remove_file(&path);
        fleet
    }

    #[test]
    fn a_missing_host_is_alerted_once_trusted_and_resolved_when_heard() {
        let (mut n, rx, mut sw) = notifier(64);
        // Slots 0 and 1 beat; 198.18.0.2 is listed and never heard.
        sw.set_fleet(listed(3));
        let table = Fake::new(2);
        for t in 1..=4 {
            (0..2).for_each(|h| table.beat(h, t * S));
            sweep(&mut n, &mut sw, &table, t, true);
        }
        assert_eq!(said(rx.try_recv().unwrap()), (true, vec![], vec![]));
        // The link goes down before its grace ends (at 6 s): held.
        for t in 5..=8 {
            sweep(&mut n, &mut sw, &table, t, false);
        }
        assert_eq!(sw.roll().missing_count(), 1);
        assert_eq!(
            said(rx.try_recv().unwrap()),
            (false, vec![Key::Blind], vec![])
        );
        assert!(rx.try_recv().is_err(), "not alerted while blind");
        // It sees again (a timeout after the link is back): alerted, with
        // its inventory name and labels.
        for t in 9..=30 {
            (0..2).for_each(|h| table.beat(h, t * S));
            sweep(&mut n, &mut sw, &table, t, true);
        }
        let key = Key::Missing(HostKey::from_ipv4([198, 18, 0, 2]));
        let changes: Vec<Message> = rx.try_iter().collect();
        let fired: Vec<&Raise> = changes
            .iter()
            .flat_map(|m| match m {
                Message::Changes(c) => c.iter(),
                Message::Snapshot(_) => panic!("no resync"),
            })
            .filter_map(|c| match c {
                Change::Fire(k, r) if *k == key => Some(r),
                _ => None,
            })
            .collect();
        assert_eq!(fired.len(), 1, "{changes:?}");
        let alert = fired[0].alert(&Collector::default());
        assert_eq!(alert.labels["alertname"], "HostMissing");
        assert_eq!(alert.labels["host"], "198.18.0.2");
        assert_eq!(alert.labels["name"], "h-2");
        assert_eq!(alert.labels["group"], "g");
        // Heard at last: resolved.
        let table = Fake::new(3);
        (0..3).for_each(|h| table.beat(h, 31 * S));
        sweep(&mut n, &mut sw, &table, 31, true);
        sweep(&mut n, &mut sw, &table, 32, true);
        let resolved: Vec<(bool, Vec<Key>, Vec<Key>)> = rx.try_iter().map(said).collect();
        assert!(
            resolved.iter().any(|(_, _, r)| r.contains(&key)),
            "{resolved:?}"
        );
    }

    #[test]
    fn the_state_of_an_interface() {
        assert_eq!(link_up("lo"), Some(true));
        assert_eq!(link_up("hb-no-such-if"), None);
        assert_eq!(link_up("a-name-too-long-for-linux"), None);
    }

    #[test]
    fn a_full_queue_is_followed_by_the_whole_state() {
        let (mut n, rx, mut sw) = notifier(1);
        let table = Fake::new(1);
        table.beat(0, S);
        // The one host goes silent at 12 s (trusted: it was the only one)
        // while the queue still holds the first hand-over.
        for t in 1..=12 {
            sweep(&mut n, &mut sw, &table, t, true);
        }
        assert_eq!(said(rx.try_recv().unwrap()), (true, vec![], vec![]));
        assert!(rx.try_recv().is_err(), "the change did not fit");
        sweep(&mut n, &mut sw, &table, 13, true);
        assert_eq!(
            said(rx.try_recv().unwrap()),
            (true, vec![Key::Host(0)], vec![])
        );
        // Then changes again.
        table.beat(0, 14 * S);
        sweep(&mut n, &mut sw, &table, 14, true);
        assert_eq!(
            said(rx.try_recv().unwrap()),
            (false, vec![], vec![Key::Host(0)])
        );
    }

    #[test]
    fn hosts_silent_while_blind_are_held_and_alerted_once_it_sees() {
        let (mut n, rx, mut sw) = notifier(64);
        let table = Fake::new(3);
        for t in 1..=10 {
            (0..3).for_each(|h| table.beat(h, t * S));
            sweep(&mut n, &mut sw, &table, t, true);
        }
        assert_eq!(said(rx.try_recv().unwrap()), (true, vec![], vec![]));
        sweep(&mut n, &mut sw, &table, 11, false);
        assert_eq!(
            said(rx.try_recv().unwrap()),
            (false, vec![Key::Blind], vec![])
        );
        // All three go silent at 21 s: held, the link back up or not.
        for t in 12..=39 {
            sweep(&mut n, &mut sw, &table, t, t >= 22);
        }
        assert_eq!(sw.silent().len(), 3);
        // Only the reason changes: the link is up, nothing is heard.
        assert_eq!(
            said(rx.try_recv().unwrap()),
            (false, vec![Key::Blind], vec![])
        );
        let more: Vec<_> = rx.try_iter().map(said).collect();
        assert!(more.is_empty(), "no host alerted while blind: {more:?}");
        // Host 0 is heard again: the collector can hear, and sees again a
        // timeout later; hosts 1 and 2, silent all along, are alerted then.
        table.beat(0, 40 * S);
        for t in 40..=48 {
            sweep(&mut n, &mut sw, &table, t, true);
            table.beat(0, t * S);
        }
        assert!(rx.try_recv().is_err(), "still blind until a timeout after");
        sweep(&mut n, &mut sw, &table, 49, true);
        assert_eq!(
            said(rx.try_recv().unwrap()),
            (false, vec![Key::Host(1), Key::Host(2)], vec![Key::Blind])
        );
    }
}
