//! The silent hosts, longest silent first, paged: what `GET /silent`, the
//! per-host series and `hb status` show.
//!
//! The order is kept by the sweep ([`SilentOrder`]), not made per request:
//! a page costs the hosts it shows (their addresses are read from the
//! table then, for those hosts only), whatever the number of silent hosts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::clock::monotonic_ns;

use super::{
    adaptive::{self, period_jitter_ms, phi},
    events::{host_id, timestamp},
    fleet::Ident,
    table::Table,
    tracker::{AUTO, Tracker},
};

/// How a page names a slot's host beyond its address: its inventory name
/// and labels, if any.
pub type Names<'f> = &'f dyn Fn(u32) -> Option<Ident<'f>>;

/// No inventory: no names.
#[cfg(test)]
pub fn no_names(_: u32) -> Option<Ident<'static>> {
    None
}

/// Silent hosts, longest silent first: by last-seen time, then slot (a
/// stable order for paging). The sweeper keeps it from the tracker's
/// transitions: hosts that went silent are sorted among themselves and
/// appended (a host goes silent later than those before it, so they
/// normally come after them), hosts that recovered are taken out in one
/// pass (marked in a bitmap of slots: a bit a slot of the table, kept).
#[derive(Debug, Default)]
pub struct SilentOrder {
    /// (last seen, slot), ascending.
    hosts: Vec<(u64, u32)>,
    /// Went silent in the sweep under way.
    added: Vec<(u64, u32)>,
    /// Recovered in the sweep under way...
    recovered: Vec<u32>,
    /// ...and their bits, set while they are taken out.
    marks: Vec<u64>,
    /// Silent hosts whose timeout is not the tracker's default (a group's):
    /// slot -> timeout, for their `silent_since`.
    own_timeout: hashbrown::HashMap<u32, u64>,
    /// The tracker's `timeouts_gen` `own_timeout` was made for.
    timeouts_gen: u64,
    /// The tracker's default timeout is learned per host (`AUTO`), within
    /// these bounds.
    default_auto: bool,
    auto: adaptive::Policy,
    /// Silent or not, hosts flapping (few).
    flapping: hashbrown::HashSet<u32>,
}

impl SilentOrder {
    /// The tracker's silent hosts, sorted (once: `hb status`, and a
    /// collector carrying on from the last one's state).
    pub fn of(tracker: &Tracker) -> Self {
        let mut order = Self::default();
        order.rebuild(tracker);
        order
    }

    fn rebuild(&mut self, tracker: &Tracker) {
        self.hosts.clear();
        self.hosts
            .extend(tracker.silent_hosts().map(|(slot, seen)| (seen, slot)));
        self.hosts.sort_unstable();
        self.own_timeout.clear();
        self.add_own_timeouts(tracker, 0);
        self.timeouts_gen = tracker.timeouts_gen();
        self.default_auto = tracker.timeout_ns() == AUTO;
        self.auto = tracker.auto();
    }

    /// Marks the host in `slot` flapping or not.
    pub fn set_flapping(&mut self, slot: u32, on: bool) {
        if on {
            self.flapping.insert(slot);
        } else {
            self.flapping.remove(&slot);
        }
    }

    /// Records the timeouts of `hosts[from..]` that are their own.
    fn add_own_timeouts(&mut self, tracker: &Tracker, from: usize) {
        let default = tracker.timeout_ns();
        for &(_, slot) in &self.hosts[from.min(self.hosts.len())..] {
            let t = tracker.timeout_of(slot);
            if t != default {
                self.own_timeout.insert(slot, t);
            }
        }
    }

    /// `slot`, last seen at `last_seen`, went silent in this sweep.
    pub fn went_silent(&mut self, slot: u32, last_seen: u64) {
        self.added.push((last_seen, slot));
    }

    /// `slot` recovered in this sweep.
    pub fn recovered(&mut self, slot: u32) {
        self.recovered.push(slot);
    }

    /// The sweep is over: applies its transitions. Costs O(k log k) for
    /// the k hosts that went silent, plus one pass over the list when
    /// hosts recovered, or when one went silent with an earlier last-seen
    /// time than the list's last (first seen already silent, as after a
    /// restart). `tracker` is the one whose transitions were fed in, and
    /// the order was made of it (`of`) or kept since its first sweep.
    pub fn settle(&mut self, tracker: &Tracker) {
        if let Some(&last) = self.recovered.iter().max() {
            let words = last as usize / 64 + 1;
            if self.marks.len() < words {
                self.marks.resize(words, 0);
            }
            for &slot in &self.recovered {
                self.marks[slot as usize / 64] |= 1 << (slot % 64);
            }
            let marks = &self.marks;
            let kept = |&(_, slot): &(u64, u32)| {
                marks
                    .get(slot as usize / 64)
                    .is_none_or(|w| w & (1 << (slot % 64)) == 0)
            };
            self.hosts.retain(kept);
            self.added.retain(kept);
            for slot in self.recovered.drain(..) {
                self.marks[slot as usize / 64] = 0;
                self.own_timeout.remove(&slot);
            }
        }
        self.added.sort_unstable();
        let in_order = match (self.hosts.last(), self.added.first()) {
            (Some(last), Some(first)) => last < first,
            _ => true,
        };
        if self.timeouts_gen != tracker.timeouts_gen() {
            // A reload changed the timeouts: every host's is looked up again.
            self.own_timeout.clear();
            self.timeouts_gen = tracker.timeouts_gen();
            self.default_auto = tracker.timeout_ns() == AUTO;
            self.auto = tracker.auto();
            self.hosts.append(&mut self.added);
            self.add_own_timeouts(tracker, 0);
        } else {
            let from = self.hosts.len();
            self.hosts.append(&mut self.added);
            self.add_own_timeouts(tracker, from);
        }
        if !in_order {
            // Two sorted runs: the stable sort merges them in one pass.
            self.hosts.sort();
        }
        let silent = tracker.census().silent;
        if self.hosts.len() as u64 != silent {
            // A bug: never seen. Pages stay right, at the cost of a sort.
            debug_assert_eq!(self.hosts.len() as u64, silent, "silent order lost track");
            log::warn!("the order of silent hosts lost track of the tracker; sorted again");
            self.rebuild(tracker);
        }
    }

    /// Gives back the room of hosts no longer silent, and of a sweep's
    /// transitions, past what they hold; whether there was any.
    pub fn release_spare(&mut self) -> bool {
        use super::spare;
        spare::vec(&mut self.hosts)
            | spare::vec(&mut self.added)
            | spare::vec(&mut self.recovered)
            | spare::map(&mut self.own_timeout)
    }

    /// Heap bytes of the order (tests).
    #[cfg(test)]
    pub fn heap_bytes(&self) -> usize {
        (self.hosts.capacity() + self.added.capacity()) * size_of::<(u64, u32)>()
            + self.recovered.capacity() * 4
            + self.marks.capacity() * 8
            + self.own_timeout.allocation_size()
    }

    /// Silent hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Hosts `offset..offset + limit` of the order: (slot, last seen).
    pub fn range(&self, offset: usize, limit: usize) -> impl Iterator<Item = (u32, u64)> + '_ {
        let start = offset.min(self.hosts.len());
        let end = start.saturating_add(limit).min(self.hosts.len());
        self.hosts[start..end]
            .iter()
            .map(|&(seen, slot)| (slot, seen))
    }

    /// A page: `limit` hosts from `offset`, silent for as long as they have
    /// been by now.
    pub fn page(
        &self,
        table: &dyn Table,
        names: Names<'_>,
        timeout: Duration,
        offset: usize,
        limit: usize,
    ) -> SilentPage {
        // `timeout`: the hosts' without a timeout of their own (a group's).
        let (now, wall) = (monotonic_ns(), SystemTime::now());
        self.page_at(table, names, timeout, (offset, limit), now, wall)
    }

    /// As `page`, at monotonic time `now` and wall time `wall`.
    fn page_at(
        &self,
        table: &dyn Table,
        names: Names<'_>,
        timeout: Duration,
        (offset, limit): (usize, usize),
        now: u64,
        wall: SystemTime,
    ) -> SilentPage {
        let hosts = self
            .range(offset, limit)
            .map(|(slot, seen)| {
                let host = table.host(slot);
                let ago = Duration::from_nanos(now.saturating_sub(seen));
                let last_seen = earlier(wall, ago);
                let ident = names(slot);
                let timing = table.timing(slot);
                let own = match self.own_timeout.get(&slot) {
                    Some(&t) => t,
                    None if self.default_auto => AUTO,
                    None => timeout.as_nanos() as u64,
                };
                let own = match own {
                    AUTO => self.auto.timeout_ns(timing),
                    t => t,
                };
                let learned = period_jitter_ms(timing);
                SilentHost {
                    host: host.ip.to_string(),
                    host_id: host.id.map(host_id),
                    name: ident.and_then(|i| i.name.map(str::to_owned)),
                    labels: ident.and_then(|i| OwnedLabels::of(&i)),
                    lost: host.lost,
                    silent_since: timestamp(last_seen + Duration::from_nanos(own)),
                    last_seen: timestamp(last_seen),
                    silent_for_ms: ago.as_millis() as u64,
                    period_ms: learned.map(|p| p.0),
                    jitter_ms: learned.map(|p| p.1),
                    phi: phi(timing, ago.as_nanos() as u64).map(|p| (p * 100.0).round() / 100.0),
                    flapping: self.flapping.contains(&slot),
                }
            })
            .collect();
        SilentPage {
            total: self.len(),
            offset,
            limit,
            hosts,
        }
    }
}

/// A host's labels, for a page: serialized as a JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedLabels(pub Vec<(String, String)>);

impl OwnedLabels {
    /// The labels of `ident`; `None` if it has none.
    pub fn of(ident: &Ident<'_>) -> Option<Self> {
        let v: Vec<_> = ident
            .labels
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        (!v.is_empty()).then_some(Self(v))
    }
}

impl Serialize for OwnedLabels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
pub struct SilentHost {
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<OwnedLabels>,
    /// When its last heartbeat became older than the timeout.
    pub silent_since: String,
    pub last_seen: String,
    pub silent_for_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    /// Its learned heartbeat period and jitter (mean deviation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<u64>,
    /// Suspicion level: −log10 of the chance that a heartbeat is still to
    /// come (see `track::adaptive`), two decimals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phi: Option<f64>,
    /// Flap damping holds its `silent` and `recovered` back.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub flapping: bool,
}

#[derive(Serialize)]
pub struct SilentPage {
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    pub hosts: Vec<SilentHost>,
}

/// A page of the tracker's silent hosts, longest silent first (sorted for
/// this page: for a tracker no sweeper keeps an order for, as `hb status`'s).
pub fn silent_page(
    tracker: &Tracker,
    table: &dyn Table,
    names: Names<'_>,
    timeout: Duration,
    offset: usize,
    limit: usize,
) -> SilentPage {
    SilentOrder::of(tracker).page(table, names, timeout, offset, limit)
}

/// `ago` before `wall`, or the epoch where that would be earlier: a wall
/// clock behind the uptime (a machine whose clock was never set, a time
/// namespace) must not bring a page down.
fn earlier(wall: SystemTime, ago: Duration) -> SystemTime {
    wall.checked_sub(ago)
        .filter(|t| *t >= UNIX_EPOCH)
        .unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use hb_common::timing::tick;

    use anyhow::Result;
    use hb_common::HostKey;

    use super::*;
    use crate::track::{events::Host, table::Counts, tracker::Transition};

    /// One host, last seen at monotonic 1 s.
    struct OneHost([AtomicU32; 1]);

    impl Table for OneHost {
        fn epoch_ns(&self) -> u64 {
            0
        }
        fn last_seen(&self) -> &[AtomicU32] {
            &self.0
        }
        fn host(&self, _: u32) -> Host {
            Host::addr(&HostKey::from_ipv4([10, 0, 0, 1]))
        }
        fn len(&self) -> usize {
            1
        }
        fn capacity(&self) -> usize {
            1
        }
        fn counters(&self) -> Result<Counts> {
            Ok(Default::default())
        }
    }

    #[test]
    fn a_wall_clock_behind_the_uptime_gives_the_epoch_not_a_panic() {
        let s = 1_000_000_000;
        let table = OneHost([AtomicU32::new(tick(s, 0))]);
        let mut tracker = Tracker::new(15 * s);
        let now = 1_000 * s;
        tracker.sweep(table.last_seen(), now, |_| {});
        // Silent for 999 s, on a clock that reads 10 s after the epoch.
        let wall = UNIX_EPOCH + Duration::from_secs(10);
        let page = SilentOrder::of(&tracker).page_at(
            &table,
            &no_names,
            Duration::from_secs(15),
            (0, 10),
            now,
            wall,
        );
        assert_eq!(page.total, 1);
        let h = &page.hosts[0];
        assert_eq!(h.last_seen, "1970-01-01T00:00:00.000Z");
        assert_eq!(h.silent_since, "1970-01-01T00:00:15.000Z");
        assert_eq!(h.silent_for_ms, 999_000);
    }

    /// Drives `order` as the sweeper does: one tracker sweep, its
    /// transitions fed in, then settled.
    fn sweep(tracker: &mut Tracker, order: &mut SilentOrder, seen: &[AtomicU32], now: u64) {
        tracker.sweep(seen, now, |t| match t {
            Transition::Silent {
                host,
                silent_for_ns,
            } => order.went_silent(host, now - silent_for_ns),
            Transition::Recovered { host, .. } => order.recovered(host),
            Transition::New { .. } => {}
        });
        order.settle(tracker);
    }

    #[test]
    fn the_order_kept_by_the_sweep_is_the_order_sorted_from_scratch() {
        const S: u64 = 1_000_000_000;
        let n = 2_000;
        let seen: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
        let mut tracker = Tracker::new(15 * S);
        let mut order = SilentOrder::default();
        // A small xorshift: every sweep, hosts beat, stop, come back, and
        // new ones appear already silent (first seen long ago).
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut stopped = vec![false; n];
        for round in 1..=200u64 {
            let now = 100 * S + round * S / 2;
            for (slot, t) in seen.iter().enumerate() {
                let r = rand() % 1000;
                let stamp = t.load(Ordering::Relaxed);
                if stamp == 0 {
                    if r < 20 {
                        // First seen: mostly alive, sometimes long ago.
                        let age = if r < 5 { 20 * S + rand() % (60 * S) } else { 0 };
                        t.store(tick(now - age, 0), Ordering::Relaxed);
                    }
                    continue;
                }
                if r < 3 {
                    stopped[slot] = !stopped[slot];
                }
                if !stopped[slot] && r < 500 {
                    t.store(tick(now - rand() % S, 0), Ordering::Relaxed);
                }
            }
            sweep(&mut tracker, &mut order, &seen, now);
            let fresh = SilentOrder::of(&tracker);
            assert_eq!(order.hosts, fresh.hosts, "round {round}");
        }
        assert!(order.len() > 100, "the test made too few silent hosts");
        assert!(order.len() < n / 2, "the test made too few alive hosts");
    }

    #[test]
    fn a_range_past_the_end_is_empty_or_short() {
        let order = SilentOrder {
            hosts: (0..10).map(|i| (100 + i, i as u32)).collect(),
            ..Default::default()
        };
        assert_eq!(
            order.range(0, 3).collect::<Vec<_>>(),
            [(0, 100), (1, 101), (2, 102)]
        );
        assert_eq!(order.range(8, 5).count(), 2);
        assert_eq!(order.range(10, 5).count(), 0);
        assert_eq!(order.range(usize::MAX, usize::MAX).count(), 0);
    }
}
