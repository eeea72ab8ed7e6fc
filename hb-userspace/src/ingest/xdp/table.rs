//! Userspace side of the host table (layout: see hb-ebpf's `table.rs`). The
//! index and the per-slot arrays are mmapped (read-only for `hb status`), so
//! a sweep reads last-seen times as plain memory, with no system call per
//! host, and a host is found, forgotten or inserted with the program's own
//! protocol: compare-and-exchange on the index's words.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{Map, MapData};
use hb_common::{
    FORGOTTEN_KEY_WORD, HostEntry, HostKey, Timing,
    index::{self, BUCKET_ENTRIES, Place},
    timing::tick,
};

use super::counters::Counters;
use crate::{
    io::page_size,
    track::{
        events::{Host, host_ip},
        table::{Counts, Table},
    },
};

/// A shared mapping of a BPF array's values (read-only unless mapped
/// writable).
pub(super) struct Mapped<T> {
    ptr: NonNull<T>,
    len: usize,
    bytes: usize,
}

impl<T> Mapped<T> {
    fn map(data: &MapData, len: usize, name: &str, prot: libc::c_int) -> Result<Self> {
        // Array elements are laid out at 8-byte strides.
        if len > 1 && !size_of::<T>().is_multiple_of(8) {
            bail!("{name}: hb cannot map {}-byte values", size_of::<T>());
        }
        Self::map_words(data, len, size_of::<T>(), name, prot)
    }

    /// Maps `data`, whose elements are `value_size` bytes, as `len` `T`s
    /// (several a map element, for the arrays of two slots an element).
    pub(super) fn map_words(
        data: &MapData,
        len: usize,
        value_size: usize,
        name: &str,
        prot: libc::c_int,
    ) -> Result<Self> {
        let info = data
            .info()
            .with_context(|| format!("reading {name}'s info"))?;
        if info.value_size() as usize != value_size {
            bail!(
                "{name} holds {}-byte values, hb expects {value_size}",
                info.value_size(),
            );
        }
        let page = page_size();
        let bytes = (len * size_of::<T>()).div_ceil(page).max(1) * page;
        // SAFETY: mapping a BPF_F_MMAPABLE array fd shared; the kernel
        // checks size and flags.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                prot,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error()).with_context(|| format!("mmapping {name}"));
        }
        Ok(Self {
            ptr: NonNull::new(ptr.cast()).expect("mmap returned null"),
            len,
            bytes,
        })
    }

    pub(super) fn as_slice(&self) -> &[T] {
        // SAFETY: the mapping holds `len` elements and lives as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> Drop for Mapped<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}

fn array_data(map: Map, name: &str) -> Result<MapData> {
    match map {
        Map::Array(data) => Ok(data),
        _ => bail!("{name} is not an array"),
    }
}

/// The tracker's state words in the `HB_TRACKER` map, mapped read-write:
/// only the collector writes them (`hb status` reads a copy, see `copy`).
pub struct TrackerWords(Mapped<u64>);

impl TrackerWords {
    pub fn new(map: Map, words: usize) -> Result<Self> {
        let (data, n) = Self::sized(map, words)?;
        Ok(Self(Mapped::map(
            &data,
            n,
            "tracker state",
            libc::PROT_READ | libc::PROT_WRITE,
        )?))
    }

    /// The first `words` words, copied through a read-only mapping: what
    /// the collector has told so far, for `hb status`, which never writes
    /// them.
    pub fn copy(map: Map, words: usize) -> Result<Vec<u64>> {
        let (data, n) = Self::sized(map, words)?;
        let m = Mapped::<u64>::map(&data, n, "tracker state", libc::PROT_READ)?;
        Ok(m.as_slice()[..words].to_vec())
    }

    fn sized(map: Map, words: usize) -> Result<(MapData, usize)> {
        let data = array_data(map, "tracker state")?;
        let n = data.info()?.max_entries() as usize;
        if n < words {
            bail!("the tracker state map holds {n} words, {words} are needed");
        }
        Ok((data, n))
    }
}

impl std::ops::Deref for TrackerWords {
    type Target = [u64];
    fn deref(&self) -> &[u64] {
        self.0.as_slice()
    }
}

impl std::ops::DerefMut for TrackerWords {
    fn deref_mut(&mut self) -> &mut [u64] {
        // SAFETY: mapped writable; the kernel program never touches this map
        // and only one collector runs per interface.
        unsafe { std::slice::from_raw_parts_mut(self.0.ptr.as_ptr(), self.0.len) }
    }
}

impl Table for HostTable {
    fn last_seen(&self) -> &[AtomicU32] {
        HostTable::last_seen(self)
    }
    fn epoch_ns(&self) -> u64 {
        self.epoch_ns
    }
    fn host(&self, slot: u32) -> Host {
        HostTable::host(self, slot)
    }
    fn len(&self) -> usize {
        HostTable::len(self)
    }
    fn capacity(&self) -> usize {
        HostTable::capacity(self)
    }
    fn counters(&self) -> Result<Counts> {
        HostTable::counters(self)
    }
    fn timing(&self, slot: u32) -> Timing {
        HostTable::timing(self, slot)
    }
    fn forget(&self, slot: u32) -> Result<bool> {
        self.forget_slot(slot)
    }
    fn release(&self, slot: u32) {
        self.release_slot(slot)
    }
    fn reuse(&self, slot: u32) -> Result<()> {
        self.reuse_slot(slot)
    }
    fn forgotten(&self, slot: u32) -> bool {
        self.slot_forgotten(slot)
    }
}

/// Raw maps of the table, as taken from the loaded object.
pub struct TableMaps {
    pub index: Map,
    pub claim: Map,
    pub last_seen: Map,
    pub beats: Map,
    pub timing: Map,
    pub slot_keys: Map,
    pub alloc: Map,
    pub auth: Map,
    pub counters: Map,
    /// The free-slot queue and the bare hosts' count, for a table that
    /// forgets hosts (the collector's; `hb status` only reads).
    pub forgetting: Option<(Map, Map)>,
}

/// What forgetting (and inserting) a host writes to, besides the arrays
/// (then mapped writable).
struct Forgetting {
    /// `HB_FREE`: freed slots, for the program to hand out again.
    free: MapData,
    /// `HB_BARE`: bare hosts in the table.
    bare: Mapped<AtomicU64>,
}

/// `bpf(2)` on a map element: `cmd` with `key` and `value` pointers.
fn map_elem(fd: i32, cmd: libc::c_long, key: u64, value: u64) -> io::Result<()> {
    // union bpf_attr's map element command layout.
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let attr = Attr {
        map_fd: fd as u32,
        _pad: 0,
        key,
        value,
        flags: 0,
    };
    // SAFETY: a valid bpf_attr for the command, pointers the caller's.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &raw const attr,
            size_of::<Attr>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;

/// Where an entry was found: bucket, place in it, and the entry.
#[derive(Clone, Copy, Debug)]
struct Spot {
    bucket: u32,
    at: u32,
    entry: u32,
}

pub struct HostTable {
    /// The index's buckets, as words of two entries.
    index: Mapped<AtomicU64>,
    /// The claim locks.
    claim: Mapped<AtomicU64>,
    mask: u32,
    slot_bits: u32,
    // The kernel writes these while we read: atomics (relaxed loads are
    // plain loads on x86) keep the reads well-defined. Two `u32` slots a
    // map element for the last-seen times and counts.
    last_seen: Mapped<AtomicU32>,
    beats: Mapped<AtomicU32>,
    timing: Mapped<AtomicU64>,
    keys: Mapped<[AtomicU64; 2]>,
    /// The next never-used slot, the epoch, the index seed.
    alloc: Mapped<AtomicU64>,
    seed: [u64; 2],
    /// `AuthSlot`s as words: seq, lost, address (2 words). As long as the
    /// table with a key, one entry without.
    auth: Mapped<[AtomicU64; 4]>,
    counters: Counters,
    capacity: usize,
    epoch_ns: u64,
    forgetting: Option<Forgetting>,
}

/// Elements of `data`, checked against `want`.
fn entries(data: &MapData, want: Option<usize>, name: &str) -> Result<usize> {
    let n = data.info()?.max_entries() as usize;
    if let Some(w) = want
        && n != w
    {
        bail!("{name} has {n} elements, a table of its size needs {w}");
    }
    Ok(n)
}

impl HostTable {
    pub fn new(maps: TableMaps) -> Result<Self> {
        // Forgetting writes the arrays (the program never reads a slot
        // userspace writes: see `forget`) and the index.
        let prot = match maps.forgetting {
            Some(_) => libc::PROT_READ | libc::PROT_WRITE,
            None => libc::PROT_READ,
        };
        let forgetting = match maps.forgetting {
            Some((free, bare)) => {
                let free = match free {
                    Map::Queue(data) => data,
                    _ => bail!("the free-slot map is not a queue"),
                };
                let bare = array_data(bare, "bare hosts' count")?;
                Some(Forgetting {
                    free,
                    bare: Mapped::map(&bare, 1, "bare hosts' count", prot)?,
                })
            }
            None => None,
        };
        let index = array_data(maps.index, "host index")?;
        let claim = array_data(maps.claim, "claim locks")?;
        entries(&claim, Some(index::CLAIM_LOCKS as usize), "claim locks")?;
        let last_seen = array_data(maps.last_seen, "last-seen array")?;
        let beats = array_data(maps.beats, "beats array")?;
        let timing = array_data(maps.timing, "timing array")?;
        let keys = array_data(maps.slot_keys, "slot keys array")?;
        let alloc = array_data(maps.alloc, "slot allocator")?;
        let auth = array_data(maps.auth, "auth array")?;
        let auth_len = auth.info()?.max_entries() as usize;
        let capacity = entries(&keys, None, "slot keys array")?;
        let max_hosts = u32::try_from(capacity).context("table too large")?;
        let buckets = entries(
            &index,
            Some(index::buckets(max_hosts) as usize),
            "host index",
        )?;
        let pairs = capacity.div_ceil(2);
        entries(&last_seen, Some(pairs), "last-seen array")?;
        entries(&beats, Some(pairs), "beats array")?;
        entries(&timing, Some(capacity), "timing array")?;
        entries(
            &alloc,
            Some(hb_common::ALLOC_WORDS as usize),
            "slot allocator",
        )?;
        let index_words = buckets * (BUCKET_ENTRIES as usize / 2);
        let alloc: Mapped<AtomicU64> = Mapped::map(
            &alloc,
            hb_common::ALLOC_WORDS as usize,
            "slot allocator",
            prot,
        )?;
        let epoch_ns = alloc.as_slice()[1].load(Ordering::Acquire);
        let seed = [2, 3].map(|i| alloc.as_slice()[i].load(Ordering::Acquire));
        Ok(Self {
            index: Mapped::map_words(
                &index,
                index_words,
                size_of::<index::Bucket>(),
                "host index",
                prot,
            )?,
            claim: Mapped::map(&claim, index::CLAIM_LOCKS as usize, "claim locks", prot)?,
            mask: buckets as u32 - 1,
            slot_bits: index::slot_bits(max_hosts),
            last_seen: Mapped::map_words(&last_seen, 2 * pairs, 8, "last-seen array", prot)?,
            beats: Mapped::map_words(&beats, 2 * pairs, 8, "beats array", prot)?,
            timing: Mapped::map(&timing, capacity, "timing array", prot)?,
            keys: Mapped::map(&keys, capacity, "slot keys array", prot)?,
            alloc,
            seed,
            auth: Mapped::map(&auth, auth_len, "auth array", prot)?,
            counters: Counters::new(maps.counters)?,
            capacity,
            epoch_ns,
            forgetting,
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The CLOCK_MONOTONIC ns the table's ticks count from.
    pub fn epoch_ns(&self) -> u64 {
        self.epoch_ns
    }

    /// The key of the table's index hash (see hb-common's `index::hash`).
    pub fn index_seed(&self) -> [u64; 2] {
        self.seed
    }

    /// The program's outcome counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counts> {
        self.counters.read()
    }

    /// Slots handed out so far (some may still be being filled in).
    pub fn len(&self) -> usize {
        let next = self.alloc.as_slice()[0].load(Ordering::Acquire) as usize;
        next.min(self.capacity)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Last-seen ticks of the slots in use; 0 means "not ready yet".
    pub fn last_seen(&self) -> &[AtomicU32] {
        &self.last_seen.as_slice()[..self.len()]
    }

    pub fn key(&self, slot: u32) -> HostKey {
        // Pairs with the program's fully ordered publication of the slot's
        // last-seen time, which the caller has read: the key written before
        // it is visible (a no-op on x86, a barrier on arm64).
        std::sync::atomic::fence(Ordering::Acquire);
        let [a, b] = &self.keys.as_slice()[slot as usize];
        HostKey::from_words([a.load(Ordering::Relaxed), b.load(Ordering::Relaxed)])
    }

    /// A host as reported: its address, and for a host known by its host
    /// id, the id, the address it last sent from and its lost heartbeats.
    pub fn host(&self, slot: u32) -> Host {
        let key = self.key(slot);
        let auth = key
            .host_id()
            .and_then(|id| Some((id, self.auth.as_slice().get(slot as usize)?)));
        match auth {
            Some((id, [_, lost, a, b])) => {
                let addr =
                    HostKey::from_words([a.load(Ordering::Relaxed), b.load(Ordering::Relaxed)]);
                Host {
                    ip: host_ip(&addr),
                    id: Some(id),
                    lost: Some(lost.load(Ordering::Relaxed)),
                    timing: hb_common::Timing::NONE,
                }
            }
            None => Host {
                ip: host_ip(&key),
                id: None,
                lost: None,
                timing: hb_common::Timing::NONE,
            },
        }
    }

    /// The last accepted sequence number of a host known by its host id.
    pub fn last_seq(&self, slot: u32) -> Option<u64> {
        self.key(slot).host_id()?;
        Some(self.auth.as_slice().get(slot as usize)?[0].load(Ordering::Relaxed))
    }

    /// Clears the replay state of the host known by host id `id`, through
    /// `auth`, the pinned `HB_AUTH` map of this table: its last accepted
    /// sequence number becomes 0, so its next valid signed heartbeat is
    /// accepted and starts its count afresh (the program counts no loss
    /// from 0). Returns the number it held; `None` if no such host.
    pub fn forget(&self, auth: &MapData, id: u64) -> Result<Option<u64>> {
        let Some(slot) = self.slot(&HostKey::from_host_id(id)) else {
            return Ok(None);
        };
        let len = auth.info()?.max_entries() as usize;
        if slot as usize >= len {
            return Ok(None);
        }
        let auth: Mapped<[AtomicU64; 4]> =
            Mapped::map(auth, len, "auth array", libc::PROT_READ | libc::PROT_WRITE)?;
        // An atomic store: the program's compare-and-swap on the same word
        // either ran before (and is forgotten) or sees 0.
        Ok(Some(
            auth.as_slice()[slot as usize][0].swap(0, Ordering::AcqRel),
        ))
    }

    /// Forgets the host in `slot`, first step: its index entry is cleared
    /// (its next heartbeat makes it a new host, in another slot), the
    /// slot's key no longer matches any host (a CPU that read the entry
    /// just before misses) and its bare share is given back; its last-seen
    /// time is cleared. A CPU that found the slot just before may still
    /// stamp it once: `release`, a sweep later, clears what it wrote.
    /// False: this table does not forget (`hb status`'s).
    pub fn forget_slot(&self, slot: u32) -> Result<bool> {
        let Some(f) = &self.forgetting else {
            return Ok(false);
        };
        let s = slot as usize;
        if s >= self.capacity || self.slot_forgotten(slot) {
            return Ok(true);
        }
        let key = self.key(slot);
        let place = self.place(&key);
        for bucket in [place.first, place.second] {
            if let Some(spot) = self.scan(bucket, place.tag, |e| {
                index::entry_slot(e, self.slot_bits) == slot
            }) {
                self.clear(spot);
            }
        }
        let [first, second] = &self.keys.as_slice()[s];
        first.store(FORGOTTEN_KEY_WORD, Ordering::Release);
        second.store(0, Ordering::Release);
        if key.host_id().is_none() {
            // Never below zero, whatever an older hb left.
            let bare = &f.bare.as_slice()[0];
            let _ = bare.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
        self.last_seen.as_slice()[s].store(0, Ordering::Release);
        Ok(true)
    }

    /// Forgets `slot`, second step (a sweep after `forget`): clears what a
    /// late heartbeat may have stamped, and the slot's counts.
    pub fn release_slot(&self, slot: u32) {
        let s = slot as usize;
        if self.forgetting.is_none() || s >= self.capacity {
            return;
        }
        self.last_seen.as_slice()[s].store(0, Ordering::Release);
        self.beats.as_slice()[s].store(0, Ordering::Relaxed);
        self.timing.as_slice()[s].store(0, Ordering::Relaxed);
        if let Some(a) = self.auth.as_slice().get(s) {
            for w in a {
                w.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Forgets `slot`, last step: queues it for the program to hand to a
    /// new host.
    pub fn reuse_slot(&self, slot: u32) -> Result<()> {
        let Some(f) = &self.forgetting else {
            return Ok(());
        };
        push_free(f, slot)
    }

    /// Whether `slot` holds a forgotten host (freed or about to be).
    pub fn slot_forgotten(&self, slot: u32) -> bool {
        self.keys
            .as_slice()
            .get(slot as usize)
            .is_some_and(|[a, _]| a.load(Ordering::Acquire) == FORGOTTEN_KEY_WORD)
    }

    pub fn beats(&self, slot: u32) -> u32 {
        self.beats.as_slice()[slot as usize].load(Ordering::Relaxed)
    }

    /// What the program learned of `slot`'s heartbeat period.
    pub fn timing(&self, slot: u32) -> Timing {
        self.timing
            .as_slice()
            .get(slot as usize)
            .map_or(Timing::NONE, |t| Timing(t.load(Ordering::Relaxed)))
    }

    pub fn entry(&self, slot: u32) -> HostEntry {
        HostEntry {
            last_seen: self.last_seen.as_slice()[slot as usize].load(Ordering::Acquire),
            beats: self.beats(slot),
            timing: self.timing(slot),
        }
    }

    /// One host's slot, if it is in the table: found in the index as the
    /// program finds it.
    pub fn slot(&self, key: &HostKey) -> Option<u32> {
        self.find(key, None).map(|(slot, _)| slot)
    }

    /// One host's entry, if it is in the table and ready.
    pub fn get(&self, key: &HostKey) -> Option<HostEntry> {
        self.slot(key)
            .map(|s| self.entry(s))
            .filter(|e| e.last_seen != 0)
    }

    /// Calls `f` with every ready host.
    pub fn for_each(&self, mut f: impl FnMut(HostKey, HostEntry)) {
        for (slot, t) in self.last_seen().iter().enumerate() {
            if t.load(Ordering::Acquire) != 0 {
                f(self.key(slot as u32), self.entry(slot as u32));
            }
        }
    }

    /// Entries the index holds (a full scan: for tests and tools).
    pub fn index_entries(&self) -> usize {
        self.index
            .as_slice()
            .iter()
            .map(|w| {
                let w = w.load(Ordering::Relaxed);
                usize::from(w as u32 != 0) + usize::from((w >> 32) as u32 != 0)
            })
            .sum()
    }

    /// Inserts `key` as the program claims a slot for a new host (see
    /// hb-ebpf's `table.rs`), safely while the program runs: its last
    /// heartbeat at `last_seen_ns` (CLOCK_MONOTONIC), `beats` of them. A
    /// host already in the table keeps its slot and entry, which is
    /// returned. `None`: no room (both its buckets full, or no slot left).
    /// A bare host is counted in the bare hosts' share, whose cap is not
    /// checked (it is the program's load-time setting). Fails on a table
    /// opened read-only.
    pub fn insert(&self, key: &HostKey, last_seen_ns: u64, beats: u32) -> Result<Option<u32>> {
        let Some(f) = &self.forgetting else {
            bail!("this host table is opened read-only");
        };
        let place = self.place(key);
        if let Some((slot, _)) = self.find(key, None) {
            return Ok(Some(slot));
        }
        let lock =
            &self.claim.as_slice()[index::claim_lock(index::hash(key.words(), self.seed)) as usize];
        // Held by the program on some CPU for well under a microsecond, or
        // by a collector that died: stale (and taken over) within 64 ticks.
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
        let me = loop {
            let me = u64::from(tick(crate::clock::monotonic_ns(), self.epoch_ns));
            let free = |held: u64| {
                held == 0
                    || hb_common::timing::ticks_since(me as u32, held as u32)
                        > index::CLAIM_STALE_TICKS
            };
            match lock.fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                free(h).then_some(me)
            }) {
                Ok(_) => break me,
                Err(held) if std::time::Instant::now() > deadline => {
                    bail!("claim lock {held:#x} held for too long")
                }
                Err(_) => std::hint::spin_loop(),
            }
        };
        let claimed = self.insert_locked(f, key, place, last_seen_ns, beats);
        let _ = lock.compare_exchange(me, 0, Ordering::AcqRel, Ordering::Acquire);
        claimed
    }

    /// `insert`, holding the host's claim lock.
    fn insert_locked(
        &self,
        f: &Forgetting,
        key: &HostKey,
        place: Place,
        last_seen_ns: u64,
        beats: u32,
    ) -> Result<Option<u32>> {
        if let Some((slot, _)) = self.find(key, None) {
            return Ok(Some(slot));
        }
        let Some(bucket) = self.emptier(place) else {
            return Ok(None);
        };
        let Some(slot) = self.take_slot(f)? else {
            return Ok(None);
        };
        let Some(spot) = self.enter(slot, key, place, bucket) else {
            push_free(f, slot)?;
            return Ok(None);
        };
        if let Some((other, _)) = self.find(key, Some(spot)) {
            // The program claimed it meanwhile: ours goes back.
            self.clear(spot);
            push_free(f, slot)?;
            return Ok(Some(other));
        }
        if key.host_id().is_none() {
            f.bare.as_slice()[0].fetch_add(1, Ordering::AcqRel);
        }
        self.publish(slot, last_seen_ns, beats);
        Ok(Some(slot))
    }

    /// The less loaded of `place`'s two buckets; `None` if both are full.
    fn emptier(&self, place: Place) -> Option<u32> {
        let load = |b: u32| BUCKET_ENTRIES - self.used(b);
        let (e1, e2) = (load(place.first), load(place.second));
        match (e1, e2) {
            (0, 0) => None,
            _ if e1 >= e2 => Some(place.first),
            _ => Some(place.second),
        }
    }

    /// Writes `key` into `slot` (not yet published) and sets its entry in
    /// `bucket`: where it went, `None` if the bucket filled meanwhile.
    fn enter(&self, slot: u32, key: &HostKey, place: Place, bucket: u32) -> Option<Spot> {
        let [k0, k1] = &self.keys.as_slice()[slot as usize];
        let [w0, w1] = key.words();
        k0.store(w0, Ordering::Relaxed);
        k1.store(w1, Ordering::Relaxed);
        self.timing.as_slice()[slot as usize].store(0, Ordering::Relaxed);
        self.put(
            bucket,
            place.tag,
            index::entry(place.tag, slot, self.slot_bits),
        )
    }

    /// Publishes `slot` with its count and last heartbeat: last, as the
    /// program does (see `key`), since a non-zero last-seen makes it ready.
    fn publish(&self, slot: u32, last_seen_ns: u64, beats: u32) {
        let s = slot as usize;
        self.beats.as_slice()[s].store(beats, Ordering::Relaxed);
        self.last_seen.as_slice()[s].store(tick(last_seen_ns, self.epoch_ns), Ordering::Release);
    }

    fn place(&self, key: &HostKey) -> Place {
        index::place(
            index::hash(key.words(), self.seed),
            self.mask,
            self.slot_bits,
        )
    }

    /// Entry `at` of `bucket`, and its word.
    fn entry_at(&self, bucket: u32, at: u32) -> (&AtomicU64, u32) {
        let w = &self.index.as_slice()[(bucket * BUCKET_ENTRIES / 2 + at / 2) as usize];
        (w, (at & 1) * 32)
    }

    /// Used entries of `bucket`.
    fn used(&self, bucket: u32) -> u32 {
        (0..BUCKET_ENTRIES)
            .filter(|&at| {
                let (w, shift) = self.entry_at(bucket, at);
                (w.load(Ordering::Acquire) >> shift) as u32 != 0
            })
            .count() as u32
    }

    /// The first entry of `bucket` with `tag` that `pick` takes, scanned
    /// as the program scans.
    fn scan(&self, bucket: u32, tag: u32, mut pick: impl FnMut(u32) -> bool) -> Option<Spot> {
        (0..BUCKET_ENTRIES).find_map(|i| {
            let at = (tag + i) & (BUCKET_ENTRIES - 1);
            let (w, shift) = self.entry_at(bucket, at);
            let entry = (w.load(Ordering::Acquire) >> shift) as u32;
            (entry != 0 && index::entry_tag(entry, self.slot_bits) == tag && pick(entry))
                .then_some(Spot { bucket, at, entry })
        })
    }

    /// `key`'s slot and entry, skipping the entry at `skip`.
    fn find(&self, key: &HostKey, skip: Option<Spot>) -> Option<(u32, Spot)> {
        let place = self.place(key);
        let words = key.words();
        let buckets = if place.first == place.second {
            &[place.first][..]
        } else {
            &[place.first, place.second][..]
        };
        buckets.iter().find_map(|&b| {
            let spot = self.scan(b, place.tag, |e| {
                let slot = index::entry_slot(e, self.slot_bits) as usize;
                let here = skip.is_some_and(|s| s.bucket == b && s.entry == e);
                !here
                    && self.keys.as_slice().get(slot).is_some_and(|[a, c]| {
                        [a.load(Ordering::Acquire), c.load(Ordering::Acquire)] == words
                    })
            })?;
            Some((index::entry_slot(spot.entry, self.slot_bits), spot))
        })
    }

    /// Sets an empty entry of `bucket` (from the place `tag` chooses).
    fn put(&self, bucket: u32, tag: u32, entry: u32) -> Option<Spot> {
        (0..BUCKET_ENTRIES).find_map(|i| {
            let at = (tag + i) & (BUCKET_ENTRIES - 1);
            let (w, shift) = self.entry_at(bucket, at);
            let word = w.load(Ordering::Acquire);
            ((word >> shift) as u32 == 0
                && w.compare_exchange(
                    word,
                    word | (u64::from(entry) << shift),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok())
            .then_some(Spot { bucket, at, entry })
        })
    }

    /// Clears the entry at `spot` if it still holds its entry.
    fn clear(&self, spot: Spot) {
        let (w, shift) = self.entry_at(spot.bucket, spot.at);
        let _ = w.fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
            ((word >> shift) as u32 == spot.entry).then_some(word & !(0xffff_ffffu64 << shift))
        });
    }

    /// A slot for a new host, as the program takes one.
    fn take_slot(&self, f: &Forgetting) -> Result<Option<u32>> {
        let mut slot = 0u32;
        match map_elem(
            f.free.fd().as_fd().as_raw_fd(),
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            0,
            (&raw mut slot) as u64,
        ) {
            Ok(()) => return Ok(Some(slot)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e).context("taking a freed slot"),
        }
        let next = &self.alloc.as_slice()[0];
        let cap = self.capacity as u64;
        Ok(next
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()
            .map(|n| n as u32))
    }
}

/// Queues `slot` for the program to hand to a new host.
fn push_free(f: &Forgetting, slot: u32) -> Result<()> {
    map_elem(
        f.free.fd().as_fd().as_raw_fd(),
        BPF_MAP_UPDATE_ELEM,
        0,
        (&raw const slot) as u64,
    )
    .context("queueing a freed slot")
}

/// Seeding: a table filled from an older layout's pins (see `migrate`)
/// before its program is attached, slot for slot, so that the tracker's
/// told state, which is slot-indexed, carries over unchanged. Only on the
/// collector's (writable) table.
impl HostTable {
    /// Puts `key` in `slot` (which the caller owns: below the allocator's
    /// next slot and not queued free), with its last heartbeat and count,
    /// into the index as `insert` does. False if the key is in the table
    /// already; an error if both its buckets are full. Only before the
    /// program is attached: it takes no claim lock.
    pub fn insert_at(
        &self,
        slot: u32,
        key: &HostKey,
        last_seen_ns: u64,
        beats: u32,
    ) -> Result<bool> {
        if self.forgetting.is_none() {
            bail!("this host table is opened read-only");
        }
        let s = slot as usize;
        if s >= self.capacity {
            bail!("slot {slot} is beyond a table of {}", self.capacity);
        }
        if self.find(key, None).is_some() {
            return Ok(false);
        }
        let place = self.place(key);
        let spot = self
            .emptier(place)
            .and_then(|bucket| self.enter(slot, key, place, bucket));
        let Some(spot) = spot else {
            bail!(
                "no room in the index for {} (both its buckets full)",
                key.ip()
            );
        };
        if self.find(key, Some(spot)).is_some() {
            // The program claimed it meanwhile (a heartbeat after the
            // take-over): that entry stays, this one goes.
            self.clear(spot);
            return Ok(false);
        }
        self.publish(slot, last_seen_ns, beats);
        Ok(true)
    }

    /// Raises `slot`'s last heartbeat to `last_seen_ns` if that is newer,
    /// and adds `beats` to its count (heartbeats the older program recorded
    /// while this table was being seeded); with `auth`, raises its last
    /// sequence number to `.0` and adds `.1` lost heartbeats. Safe while
    /// the program runs.
    pub fn catch_up(&self, slot: u32, last_seen_ns: u64, beats: u32, auth: Option<(u64, u64)>) {
        let s = slot as usize;
        if self.forgetting.is_none() || s >= self.capacity {
            return;
        }
        let t = tick(last_seen_ns, self.epoch_ns);
        let _ =
            self.last_seen.as_slice()[s].fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                ((t.wrapping_sub(old) as i32) > 0).then_some(t)
            });
        self.beats.as_slice()[s].fetch_add(beats, Ordering::Relaxed);
        if let Some((seq, lost)) = auth
            && self.auth.as_slice().len() == self.capacity
        {
            let a = &self.auth.as_slice()[s];
            a[0].fetch_max(seq, Ordering::AcqRel);
            a[1].fetch_add(lost, Ordering::Relaxed);
        }
    }

    /// The replay state of the host in `slot`, before the program runs.
    /// False where the table keeps none.
    pub fn seed_auth(&self, slot: u32, auth: &hb_common::AuthSlot) -> bool {
        if self.forgetting.is_none() || self.auth.as_slice().len() != self.capacity {
            return false;
        }
        let Some(a) = self.auth.as_slice().get(slot as usize) else {
            return false;
        };
        let [w2, w3] = auth.addr.words();
        a[1].store(auth.lost, Ordering::Relaxed);
        a[2].store(w2, Ordering::Relaxed);
        a[3].store(w3, Ordering::Relaxed);
        a[0].store(auth.seq, Ordering::Release);
        true
    }

    /// The slot allocator's next never-used slot and the bare hosts'
    /// count, before the program runs.
    pub fn seed_counts(&self, next_slot: u64, bare: u64) -> Result<()> {
        let Some(f) = &self.forgetting else {
            bail!("this host table is opened read-only");
        };
        self.alloc.as_slice()[0].store(next_slot, Ordering::Release);
        f.bare.as_slice()[0].store(bare, Ordering::Release);
        Ok(())
    }

    /// Counts `n` more bare hosts (the program may be counting too).
    pub fn add_bare(&self, n: u64) {
        if let Some(f) = &self.forgetting {
            f.bare.as_slice()[0].fetch_add(n, Ordering::AcqRel);
        }
    }
}

// SAFETY: the mappings are read-only and accessed through atomics.
unsafe impl<T: Sync> Send for Mapped<T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for Mapped<T> {}
