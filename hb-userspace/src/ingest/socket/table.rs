//! Socket mode's host table, with the kernel table's semantics: one slot per
//! host, never evicted, last-seen times in a flat array the sweeper scans,
//! a full table counts `table_full`.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use hashbrown::HashMap;
use hb_common::{Counter, HostKey, MAGIC};

use crate::track::{
    events::Host,
    table::{Counts, Table},
};

pub struct SocketTable {
    slots: HashMap<HostKey, u32>,
    last_seen: Vec<AtomicU64>,
    beats: Vec<u64>,
    keys: Vec<HostKey>,
    capacity: usize,
    counters: Counts,
}

impl SocketTable {
    /// Sized once for `capacity` hosts, like the kernel's table: growing a
    /// map of half a million hosts stops the receive loop for tens of
    /// milliseconds, long enough to overflow the socket at 200k heartbeats/s
    /// (measured). Pages are only touched as hosts arrive.
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: HashMap::with_capacity(capacity),
            last_seen: Vec::with_capacity(capacity),
            beats: Vec::with_capacity(capacity),
            keys: Vec::with_capacity(capacity),
            capacity,
            counters: [0; Counter::COUNT],
        }
    }

    /// Records one datagram from `key` received at `now` (CLOCK_MONOTONIC).
    pub fn record(&mut self, key: HostKey, payload: &[u8], now: u64) {
        if payload != MAGIC {
            self.counters[Counter::WrongPayload as usize] += 1;
            return;
        }
        let slot = match self.slots.get(&key) {
            Some(&slot) => slot as usize,
            None if self.keys.len() >= self.capacity => {
                self.counters[Counter::TableFull as usize] += 1;
                return;
            }
            None => {
                let slot = self.keys.len();
                self.slots.insert(key, slot as u32);
                self.keys.push(key);
                self.beats.push(0);
                self.last_seen.push(AtomicU64::new(0));
                self.counters[Counter::NewHost as usize] += 1;
                slot
            }
        };
        self.last_seen[slot].store(now, Ordering::Relaxed);
        self.beats[slot] += 1;
        self.counters[Counter::Heartbeat as usize] += 1;
    }

    #[cfg(test)]
    fn beats(&self, key: &HostKey) -> Option<u64> {
        self.slots.get(key).map(|&s| self.beats[s as usize])
    }
}

impl Table for SocketTable {
    fn last_seen(&self) -> &[AtomicU64] {
        &self.last_seen
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
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::track::events::host_key;

    #[test]
    fn records_like_the_kernel_table() {
        let mut t = SocketTable::new(2);
        let a: IpAddr = "198.18.0.2".parse().unwrap();
        let b: IpAddr = "fd00:4842::2".parse().unwrap();
        let c: IpAddr = "198.18.0.3".parse().unwrap();
        let (ka, kb, kc) = (host_key(a), host_key(b), host_key(c));
        t.record(ka, b"PyHB", 10);
        t.record(ka, b"PyHB", 20);
        t.record(kb, b"PyHB", 30);
        t.record(kc, b"PyHB", 40); // full
        t.record(ka, b"PyHb", 50);
        t.record(ka, b"PyHB!", 50);
        t.record(ka, b"", 50);
        let p = t.counters().unwrap();
        assert_eq!(p[Counter::Heartbeat as usize], 3);
        assert_eq!(p[Counter::NewHost as usize], 2);
        assert_eq!(p[Counter::TableFull as usize], 1);
        assert_eq!(p[Counter::WrongPayload as usize], 3);
        assert_eq!(Table::len(&t), 2);
        assert_eq!(t.beats(&HostKey::from_ipv4([198, 18, 0, 2])), Some(2));
        let seen: Vec<u64> = t
            .last_seen()
            .iter()
            .map(|x| x.load(Ordering::Relaxed))
            .collect();
        assert_eq!(seen, [20, 30]);
        assert_eq!(t.host(0).ip, a);
        assert_eq!(t.host(1).ip, b);
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
