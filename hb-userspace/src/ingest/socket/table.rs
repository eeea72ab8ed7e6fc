//! Socket mode's host table, with the kernel table's semantics: one slot per
//! host, never evicted, last-seen times in a flat array the sweeper scans,
//! a full table counts `table_full`; a host the sweeper forgets leaves the
//! table at the next datagram, and its slot goes to a later new host.
//! Last-seen times are ticks from the table's own epoch (its creation) and
//! each host's heartbeat timing is learned per datagram, as the program
//! does (see `hb_common::timing`).

use std::{
    cell::RefCell,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::Result;
use hashbrown::HashMap;
use hb_common::{
    Counter, HostKey, MAGIC, Timing,
    timing::{tick, ticks_since},
};

use crate::track::{
    events::Host,
    table::{Counts, Table},
};

pub struct SocketTable {
    slots: HashMap<HostKey, u32>,
    last_seen: Vec<AtomicU32>,
    beats: Vec<u32>,
    timing: Vec<Timing>,
    epoch_ns: u64,
    keys: Vec<HostKey>,
    capacity: usize,
    counters: Counts,
    /// Forgotten by the sweeper (which sees the table shared): their keys
    /// leave `slots` at the next datagram.
    forgotten: RefCell<Vec<u32>>,
    /// Slots freed, for new hosts first.
    free: RefCell<Vec<u32>>,
    /// Whether a slot's host was forgotten (until its slot is reused).
    gone: RefCell<Vec<bool>>,
}

impl SocketTable {
    /// Sized once for `capacity` hosts, like the kernel's table: growing a
    /// map of half a million hosts stops the receive loop for tens of
    /// milliseconds, long enough to overflow the socket at 200k heartbeats/s
    /// (measured). Pages are only touched as hosts arrive.
    pub fn new(capacity: usize) -> Self {
        Self::with_epoch(capacity, crate::clock::monotonic_ns())
    }

    /// As `new`, its ticks counted from `epoch_ns` (CLOCK_MONOTONIC).
    pub fn with_epoch(capacity: usize, epoch_ns: u64) -> Self {
        Self {
            slots: HashMap::with_capacity(capacity),
            last_seen: Vec::with_capacity(capacity),
            beats: Vec::with_capacity(capacity),
            timing: Vec::with_capacity(capacity),
            epoch_ns,
            keys: Vec::with_capacity(capacity),
            capacity,
            counters: [0; Counter::COUNT],
            forgotten: RefCell::default(),
            free: RefCell::default(),
            gone: RefCell::default(),
        }
    }

    /// Records one datagram from `key` received at `now` (CLOCK_MONOTONIC).
    pub fn record(&mut self, key: HostKey, payload: &[u8], now: u64) {
        if payload != MAGIC {
            self.counters[Counter::WrongPayload as usize] += 1;
            return;
        }
        if !self.forgotten.get_mut().is_empty() {
            for slot in self.forgotten.get_mut().drain(..) {
                self.slots.remove(&self.keys[slot as usize]);
            }
        }
        let slot = match self.slots.get(&key) {
            Some(&slot) => slot as usize,
            None if let Some(slot) = self.free.get_mut().pop() => {
                let s = slot as usize;
                self.slots.insert(key, slot);
                self.keys[s] = key;
                self.beats[s] = 0;
                self.timing[s] = Timing::NONE;
                self.gone.get_mut()[s] = false;
                self.counters[Counter::NewHost as usize] += 1;
                s
            }
            None if self.keys.len() >= self.capacity => {
                self.counters[Counter::TableFull as usize] += 1;
                return;
            }
            None => {
                let slot = self.keys.len();
                self.slots.insert(key, slot as u32);
                self.keys.push(key);
                self.beats.push(0);
                self.timing.push(Timing::NONE);
                self.last_seen.push(AtomicU32::new(0));
                self.counters[Counter::NewHost as usize] += 1;
                slot
            }
        };
        let now = tick(now, self.epoch_ns);
        let last = self.last_seen[slot].swap(now, Ordering::Relaxed);
        if last != 0 {
            self.timing[slot] = self.timing[slot].update(ticks_since(now, last));
        }
        self.beats[slot] = self.beats[slot].wrapping_add(1);
        self.counters[Counter::Heartbeat as usize] += 1;
    }

    #[cfg(test)]
    fn beats(&self, key: &HostKey) -> Option<u32> {
        self.slots.get(key).map(|&s| self.beats[s as usize])
    }
}

impl Table for SocketTable {
    fn last_seen(&self) -> &[AtomicU32] {
        &self.last_seen
    }
    fn epoch_ns(&self) -> u64 {
        self.epoch_ns
    }
    fn timing(&self, slot: u32) -> Timing {
        self.timing.get(slot as usize).copied().unwrap_or_default()
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
    fn counters(&self) -> Result<Counts> {
        Ok(self.counters)
    }
    fn forget(&self, slot: u32) -> Result<bool> {
        let s = slot as usize;
        if s >= self.keys.len() || self.forgotten(slot) {
            return Ok(true);
        }
        let mut gone = self.gone.borrow_mut();
        if gone.len() < self.keys.len() {
            gone.resize(self.keys.len(), false);
        }
        gone[s] = true;
        self.forgotten.borrow_mut().push(slot);
        self.last_seen[s].store(0, Ordering::Relaxed);
        Ok(true)
    }
    fn release(&self, slot: u32) {
        if let Some(t) = self.last_seen.get(slot as usize) {
            t.store(0, Ordering::Relaxed);
        }
    }
    fn reuse(&self, slot: u32) -> Result<()> {
        self.free.borrow_mut().push(slot);
        Ok(())
    }
    fn forgotten(&self, slot: u32) -> bool {
        self.gone
            .borrow()
            .get(slot as usize)
            .copied()
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::track::events::{host_ip, host_key};
    use hb_common::TICK_NS;

    /// Tick `n` of a table whose epoch is 0.
    const fn at(n: u64) -> u64 {
        n * TICK_NS
    }

    #[test]
    fn records_like_the_kernel_table() {
        let mut t = SocketTable::with_epoch(2, 0);
        let a: IpAddr = "198.18.0.2".parse().unwrap();
        let b: IpAddr = "fd00:4842::2".parse().unwrap();
        let c: IpAddr = "198.18.0.3".parse().unwrap();
        let (ka, kb, kc) = (host_key(a), host_key(b), host_key(c));
        t.record(ka, b"PyHB", at(10));
        t.record(ka, b"PyHB", at(20));
        t.record(kb, b"PyHB", at(30));
        t.record(kc, b"PyHB", at(40)); // full
        t.record(ka, b"PyHb", at(50));
        t.record(ka, b"PyHB!", at(50));
        t.record(ka, b"", at(50));
        let p = t.counters().unwrap();
        assert_eq!(p[Counter::Heartbeat as usize], 3);
        assert_eq!(p[Counter::NewHost as usize], 2);
        assert_eq!(p[Counter::TableFull as usize], 1);
        assert_eq!(p[Counter::WrongPayload as usize], 3);
        assert_eq!(Table::len(&t), 2);
        assert_eq!(t.beats(&HostKey::from_ipv4([198, 18, 0, 2])), Some(2));
        let seen: Vec<u32> = t
            .last_seen()
            .iter()
            .map(|x| x.load(Ordering::Relaxed))
            .collect();
        assert_eq!(seen, [20, 30]);
        // One interval of 10 ticks learned for a, none for b.
        assert_eq!(t.timing(0), Timing::NONE.update(10));
        assert_eq!(t.timing(0).mean_ns(), 10 * TICK_NS);
        assert_eq!(t.timing(1), Timing::NONE);
        assert_eq!(t.host(0).ip, a);
        assert_eq!(t.host(1).ip, b);
    }

    #[test]
    fn a_forgotten_host_leaves_and_its_slot_goes_to_the_next() {
        let mut t = SocketTable::with_epoch(2, 0);
        let (a, b, c) = (
            HostKey::from_ipv4([198, 18, 0, 2]),
            HostKey::from_ipv4([198, 18, 0, 3]),
            HostKey::from_ipv4([198, 18, 0, 4]),
        );
        t.record(a, b"PyHB", at(10));
        t.record(b, b"PyHB", at(10));
        assert!(t.forget(0).unwrap());
        assert!(t.forgotten(0));
        assert_eq!(t.last_seen()[0].load(Ordering::Relaxed), 0);
        // A heartbeat in flight lands before the key leaves (at the next
        // datagram, this one); the release clears it.
        t.record(c, b"PyHB", at(20));
        assert_eq!(t.counters().unwrap()[Counter::TableFull as usize], 1);
        t.release(0);
        t.reuse(0).unwrap();
        t.record(c, b"PyHB", at(30));
        assert_eq!(t.host(0).ip, host_ip(&c));
        assert!(!t.forgotten(0));
        assert_eq!(Table::len(&t), 2);
        assert_eq!(t.last_seen()[0].load(Ordering::Relaxed), 30);
        // The forgotten host is a new host: the table is full again.
        t.record(a, b"PyHB", at(40));
        assert_eq!(t.counters().unwrap()[Counter::TableFull as usize], 2);
        assert_eq!(t.beats(&a), None);
    }

    #[test]
    fn a_table_never_grows_while_it_fills() {
        let n = 100_000;
        let mut t = SocketTable::new(n);
        let (buckets, keys) = (t.slots.capacity(), t.keys.as_ptr());
        for i in 0..n as u32 {
            t.record(
                host_key(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))),
                b"PyHB",
                1,
            );
        }
        assert_eq!(Table::len(&t), n);
        // Growing means rehashing and copying every host at once.
        assert_eq!(t.slots.capacity(), buckets);
        assert_eq!(t.keys.as_ptr(), keys);
    }
}
