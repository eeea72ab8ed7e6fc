//! Userspace side of the host table (layout: see hb-ebpf's `table.rs`). The
//! per-slot arrays are mmapped read-only, so a sweep reads last-seen times as
//! plain memory, with no system call per host.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{HashMap, Map, MapData};
use hb_common::{FORGOTTEN_KEY_WORD, HostEntry, HostKey, SLOT_PENDING};

use super::counters::Counters;
use crate::{
    io::page_size,
    track::{
        events::{Host, host_ip},
        table::{Counts, Table},
    },
};

/// A read-only shared mapping of a BPF array's values.
struct Mapped<T> {
    ptr: NonNull<T>,
    len: usize,
    bytes: usize,
}

impl<T> Mapped<T> {
    fn new(data: &MapData, len: usize, name: &str) -> Result<Self> {
        Self::map(data, len, name, libc::PROT_READ)
    }

    fn map(data: &MapData, len: usize, name: &str, prot: libc::c_int) -> Result<Self> {
        let info = data
            .info()
            .with_context(|| format!("reading {name}'s info"))?;
        // Array elements are laid out at 8-byte strides.
        if info.value_size() as usize != size_of::<T>()
            || (len > 1 && !size_of::<T>().is_multiple_of(8))
        {
            bail!(
                "{name} holds {}-byte values, hb expects {}",
                info.value_size(),
                size_of::<T>()
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

    fn as_slice(&self) -> &[T] {
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
/// only the collector writes them (`hb status` never maps them).
pub struct TrackerWords(Mapped<u64>);

impl TrackerWords {
    pub fn new(map: Map, words: usize) -> Result<Self> {
        let data = array_data(map, "tracker state")?;
        let n = data.info()?.max_entries() as usize;
        if n < words {
            bail!("the tracker state map holds {n} words, {words} are needed");
        }
        Ok(Self(Mapped::map(
            &data,
            n,
            "tracker state",
            libc::PROT_READ | libc::PROT_WRITE,
        )?))
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
    fn last_seen(&self) -> &[AtomicU64] {
        HostTable::last_seen(self)
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
    pub slots: Map,
    pub last_seen: Map,
    pub beats: Map,
    pub slot_keys: Map,
    pub alloc: Map,
    pub auth: Map,
    pub counters: Map,
    /// The free-slot queue and the bare hosts' count, for a table that
    /// forgets hosts (the collector's; `hb status` only reads).
    pub forgetting: Option<(Map, Map)>,
}

/// What forgetting a host writes to, besides the arrays (then mapped
/// writable).
struct Forgetting {
    /// The slot hash map's fd, for deleting a key.
    slots: OwnedFd,
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
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;

pub struct HostTable {
    slots: HashMap<MapData, HostKey, u32>,
    // The kernel writes these while we read: atomics (relaxed loads are
    // plain loads on x86) keep the reads well-defined.
    last_seen: Mapped<AtomicU64>,
    beats: Mapped<AtomicU64>,
    keys: Mapped<[AtomicU64; 2]>,
    alloc: Mapped<AtomicU64>,
    /// `AuthSlot`s as words: seq, lost, address (2 words). As long as the
    /// table with a key, one entry without.
    auth: Mapped<[AtomicU64; 4]>,
    counters: Counters,
    capacity: usize,
    forgetting: Option<Forgetting>,
}

impl HostTable {
    pub fn new(maps: TableMaps) -> Result<Self> {
        let (capacity, slots_fd) = match &maps.slots {
            Map::HashMap(data) => (
                data.info()?.max_entries() as usize,
                data.fd().as_fd().try_clone_to_owned()?,
            ),
            _ => bail!("the slot map is not a hash map"),
        };
        // Forgetting writes the arrays (the program never reads a slot
        // userspace writes: see `forget`).
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
                    slots: slots_fd,
                    free,
                    bare: Mapped::map(&bare, 1, "bare hosts' count", prot)?,
                })
            }
            None => None,
        };
        let slots: HashMap<MapData, HostKey, u32> =
            HashMap::try_from(maps.slots).context("slot map has an unexpected type")?;
        let last_seen = array_data(maps.last_seen, "last-seen array")?;
        let beats = array_data(maps.beats, "beats array")?;
        let keys = array_data(maps.slot_keys, "slot keys array")?;
        let alloc = array_data(maps.alloc, "slot allocator")?;
        let auth = array_data(maps.auth, "auth array")?;
        let auth_len = auth.info()?.max_entries() as usize;
        for (data, name) in [
            (&last_seen, "last-seen array"),
            (&beats, "beats array"),
            (&keys, "slot keys array"),
        ] {
            let n = data.info()?.max_entries() as usize;
            if n != capacity {
                bail!("{name} has {n} slots but the host map {capacity}");
            }
        }
        Ok(Self {
            last_seen: Mapped::map(&last_seen, capacity, "last-seen array", prot)?,
            beats: Mapped::map(&beats, capacity, "beats array", prot)?,
            keys: Mapped::map(&keys, capacity, "slot keys array", prot)?,
            alloc: Mapped::new(&alloc, 1, "slot allocator")?,
            auth: Mapped::map(&auth, auth_len, "auth array", prot)?,
            counters: Counters::new(maps.counters)?,
            slots,
            capacity,
            forgetting,
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
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

    /// Last-seen times of the slots in use; 0 means "not ready yet".
    pub fn last_seen(&self) -> &[AtomicU64] {
        &self.last_seen.as_slice()[..self.len()]
    }

    pub fn key(&self, slot: u32) -> HostKey {
        // Pairs with the program's fully ordered publication of the slot's
        // last-seen time, which the caller has read: the key written before
        // it is visible (a no-op on x86, a barrier on arm64).
        std::sync::atomic::fence(Ordering::Acquire);
        let [a, b] = &self.keys.as_slice()[slot as usize];
        let (a, b) = (a.load(Ordering::Relaxed), b.load(Ordering::Relaxed));
        let mut addr = [0u8; 16];
        addr[..8].copy_from_slice(&a.to_ne_bytes());
        addr[8..].copy_from_slice(&b.to_ne_bytes());
        HostKey { addr }
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

    /// Forgets the host in `slot`, first step: the slot's key no longer
    /// matches any host (a hint to it misses), the host's key leaves the
    /// hash map (its next heartbeat makes it a new host, in another slot)
    /// and its bare share is given back; its last-seen time is cleared.
    /// A CPU that found the slot just before may still stamp it once:
    /// `release`, a sweep later, clears what it wrote. False: this table
    /// does not forget (`hb status`'s).
    pub fn forget_slot(&self, slot: u32) -> Result<bool> {
        let Some(f) = &self.forgetting else {
            return Ok(false);
        };
        let s = slot as usize;
        if s >= self.capacity || self.slot_forgotten(slot) {
            return Ok(true);
        }
        let key = self.key(slot);
        let [first, second] = &self.keys.as_slice()[s];
        first.store(FORGOTTEN_KEY_WORD, Ordering::Release);
        second.store(0, Ordering::Release);
        match map_elem(
            f.slots.as_raw_fd(),
            BPF_MAP_DELETE_ELEM,
            (&raw const key) as u64,
            0,
        ) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
                return Err(e).context("deleting a forgotten host's key");
            }
            _ => {}
        }
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
        map_elem(
            f.free.fd().as_fd().as_raw_fd(),
            BPF_MAP_UPDATE_ELEM,
            0,
            (&raw const slot) as u64,
        )
        .context("queueing a forgotten host's slot")
    }

    /// Whether `slot` holds a forgotten host (freed or about to be).
    pub fn slot_forgotten(&self, slot: u32) -> bool {
        self.keys
            .as_slice()
            .get(slot as usize)
            .is_some_and(|[a, _]| a.load(Ordering::Acquire) == FORGOTTEN_KEY_WORD)
    }

    pub fn beats(&self, slot: u32) -> u64 {
        self.beats.as_slice()[slot as usize].load(Ordering::Relaxed)
    }

    pub fn entry(&self, slot: u32) -> HostEntry {
        HostEntry {
            last_seen_ns: self.last_seen.as_slice()[slot as usize].load(Ordering::Acquire),
            beats: self.beats(slot),
        }
    }

    /// One host's slot, if it is in the table and ready.
    pub fn slot(&self, key: &HostKey) -> Option<u32> {
        let slot = self.slots.get(key, 0).ok()?;
        (slot != SLOT_PENDING && (slot as usize) < self.capacity).then_some(slot)
    }

    /// One host's entry, if it is in the table.
    pub fn get(&self, key: &HostKey) -> Option<HostEntry> {
        self.slot(key).map(|s| self.entry(s))
    }

    /// Calls `f` with every ready host.
    pub fn for_each(&self, mut f: impl FnMut(HostKey, HostEntry)) {
        for (slot, t) in self.last_seen().iter().enumerate() {
            if t.load(Ordering::Acquire) != 0 {
                f(self.key(slot as u32), self.entry(slot as u32));
            }
        }
    }
}

// SAFETY: the mappings are read-only and accessed through atomics.
unsafe impl<T: Sync> Send for Mapped<T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for Mapped<T> {}
