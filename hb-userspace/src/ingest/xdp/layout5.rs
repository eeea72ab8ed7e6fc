//! A frozen reader of map layout 5 (hb up to the compact table): what a
//! collector of that layout pinned under `<bpffs>/hb/<instance>/layout-5/`,
//! read so that `migrate` can carry its hosts over to this build's table.
//!
//! Frozen: the names, types and sizes below are layout 5's as its program
//! (hb-ebpf's `table.rs` at commit ee8d61f) created them, kept here because
//! hb-common follows the current layout. Nothing here may change: pins of
//! layout 5 will look like this for as long as they exist.
//!
//! Layout 5: a hash map `HB_SLOTS` from host key (16 bytes) to slot (u32);
//! by slot, `BPF_F_MMAPABLE` arrays of the last heartbeat (CLOCK_MONOTONIC
//! ns, 0: slot not ready), the heartbeat count (u64), the key; `HB_AUTH`
//! (32-byte replay state) as long as the table when a fleet key was
//! configured, one entry otherwise; `HB_ALLOC` (next never-used slot),
//! `HB_BARE` (bare hosts), `HB_FREE` (queue of freed slots), `HB_HINTS`
//! (not read: a cache of `HB_SLOTS`), `HB_TRACKER` (the collector's told
//! state, its words as `track::tracker` reads them) and the per-CPU
//! `HB_COUNTERS` (16 u64).

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{Map, MapData, MapType, PerCpuArray};
use hb_common::{AuthSlot, HostKey};

use super::table::Mapped;

/// The layout this module reads.
pub const LAYOUT: u32 = 5;

const SLOTS: &str = "HB_SLOTS";
const LAST_SEEN: &str = "HB_LAST_SEEN";
const BEATS: &str = "HB_BEATS";
const SLOT_KEYS: &str = "HB_SLOT_KEYS";
const HINTS: &str = "HB_HINTS";
const TRACKER: &str = "HB_TRACKER";
const AUTH: &str = "HB_AUTH";
const ALLOC: &str = "HB_ALLOC";
const FREE: &str = "HB_FREE";
const BARE: &str = "HB_BARE";
const COUNTERS: &str = "HB_COUNTERS";
/// Every map layout 5 pinned.
pub const MAPS: [&str; 11] = [
    SLOTS, FREE, LAST_SEEN, BEATS, SLOT_KEYS, ALLOC, BARE, HINTS, AUTH, TRACKER, COUNTERS,
];
const MMAPABLE: u32 = 1 << 10;
/// First word of a forgotten host's key in `HB_SLOT_KEYS`.
const FORGOTTEN_KEY_WORD: u64 = u64::MAX;
/// Outcome counters of layout 5 (indices as hb-common's `Counter` had
/// them then: new counters are only ever appended).
pub const COUNTER_COUNT: usize = 16;
/// The tracker's header words (then bitmaps of known and silent bits).
const TRACKER_HEADER: usize = 4;

/// One host of a layout-5 table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    pub slot: u32,
    pub key: HostKey,
    pub last_seen_ns: u64,
    pub beats: u64,
    /// Replay state, where the table kept it (a fleet key was configured)
    /// and the host is known by host id.
    pub auth: Option<AuthSlot>,
}

/// Everything of a layout-5 table that carries over.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub capacity: u32,
    /// The next never-used slot (may exceed `capacity` once full).
    pub alloc: u64,
    /// Ready hosts, by slot.
    pub hosts: Vec<Host>,
    /// Free slots: queued in `HB_FREE`, or of forgotten hosts not yet
    /// queued (their collector stopped between two steps of forgetting).
    pub freed: Vec<u32>,
    /// Slots handed out but not ready: a first heartbeat being recorded.
    pub pending: Vec<u32>,
    /// Outcome counters, summed over CPUs.
    pub counters: [u64; COUNTER_COUNT],
    /// The tracker's words (header, known bits, silent bits).
    pub tracker: Vec<u64>,
}

/// The pinned maps of a layout-5 collector, open.
pub struct Layout5 {
    dir: PathBuf,
    capacity: usize,
    last_seen: Mapped<AtomicU64>,
    beats: Mapped<AtomicU64>,
    keys: Mapped<AtomicU64>,
    alloc: Mapped<AtomicU64>,
    /// Four words a slot; `None` when one entry long (no key then).
    auth: Option<Mapped<AtomicU64>>,
    tracker: Mapped<AtomicU64>,
    counters: PerCpuArray<MapData, u64>,
}

/// What layout 5 made each map: type, key size, value size, flags.
fn expected(name: &str) -> (MapType, u32, u32, u32) {
    match name {
        SLOTS => (MapType::Hash, 16, 4, 0),
        FREE => (MapType::Queue, 0, 4, 0),
        LAST_SEEN | BEATS | ALLOC | BARE | TRACKER => (MapType::Array, 4, 8, MMAPABLE),
        SLOT_KEYS => (MapType::Array, 4, 16, MMAPABLE),
        AUTH => (MapType::Array, 4, 32, MMAPABLE),
        HINTS => (MapType::Array, 4, 8, 0),
        COUNTERS => (MapType::PerCpuArray, 4, 8, 0),
        _ => unreachable!("not a layout-5 map: {name}"),
    }
}

impl Layout5 {
    /// Opens every map in `dir`, checking each is what layout 5 made (a
    /// map that is not is never read as one).
    pub fn open(dir: &Path) -> Result<Self> {
        let mut datas = Vec::with_capacity(MAPS.len());
        for name in MAPS {
            let path = dir.join(name);
            let data =
                MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
            let info = data.info()?;
            let (kind, key, value, flags) = expected(name);
            let got = (
                info.map_type().ok(),
                info.key_size(),
                info.value_size(),
                info.map_flags(),
            );
            if got != (Some(kind), key, value, flags) {
                bail!(
                    "{} is not layout 5's {name}: {got:?}, expected {:?}",
                    path.display(),
                    (kind, key, value, flags)
                );
            }
            datas.push((name, data, info.max_entries() as usize));
        }
        let mut take = |want: &str| {
            let i = datas.iter().position(|(n, ..)| *n == want).expect("opened");
            let (_, data, len) = datas.swap_remove(i);
            (data, len)
        };
        let (slots, capacity) = take(SLOTS);
        drop(slots);
        let mut array =
            |name: &str, words: usize, exact: Option<usize>| -> Result<Mapped<AtomicU64>> {
                let (data, len) = take(name);
                if let Some(n) = exact
                    && len != n
                {
                    bail!("{name} has {len} entries, layout 5 made it {n}");
                }
                Mapped::map_words(&data, len * words, 8 * words, name, libc::PROT_READ)
            };
        let last_seen = array(LAST_SEEN, 1, Some(capacity))?;
        let beats = array(BEATS, 1, Some(capacity))?;
        let keys = array(SLOT_KEYS, 2, Some(capacity))?;
        let alloc = array(ALLOC, 1, Some(1))?;
        let tracker_words = TRACKER_HEADER + 2 * capacity.div_ceil(64);
        let tracker = array(TRACKER, 1, Some(tracker_words))?;
        let (auth_data, auth_len) = take(AUTH);
        let auth = if auth_len == capacity && capacity > 1 {
            Some(Mapped::map_words(
                &auth_data,
                capacity * 4,
                32,
                AUTH,
                libc::PROT_READ,
            )?)
        } else {
            None
        };
        // Checked above, not read (see `snapshot`).
        drop(take(FREE));
        let (counters, _) = take(COUNTERS);
        Ok(Self {
            dir: dir.to_owned(),
            capacity,
            last_seen,
            beats,
            keys,
            alloc,
            auth,
            tracker,
            counters: PerCpuArray::try_from(Map::PerCpuArray(counters)).context("HB_COUNTERS")?,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The slot's last heartbeat (0: not ready).
    pub fn last_seen(&self, slot: u32) -> u64 {
        self.last_seen.as_slice()[slot as usize].load(Ordering::Acquire)
    }

    pub fn beats(&self, slot: u32) -> u64 {
        self.beats.as_slice()[slot as usize].load(Ordering::Relaxed)
    }

    /// The slot's key: read after its last-seen time (the program
    /// publishes a slot by writing that time last).
    pub fn key(&self, slot: u32) -> HostKey {
        let s = 2 * slot as usize;
        HostKey::from_words([
            self.keys.as_slice()[s].load(Ordering::Relaxed),
            self.keys.as_slice()[s + 1].load(Ordering::Relaxed),
        ])
    }

    pub fn auth(&self, slot: u32) -> Option<AuthSlot> {
        let a = self.auth.as_ref()?;
        let w = |i: usize| a.as_slice()[4 * slot as usize + i].load(Ordering::Relaxed);
        Some(AuthSlot {
            seq: w(0),
            lost: w(1),
            addr: HostKey::from_words([w(2), w(3)]),
        })
    }

    pub fn alloc(&self) -> u64 {
        self.alloc.as_slice()[0].load(Ordering::Acquire)
    }

    /// Outcome counters, summed over CPUs.
    pub fn counters(&self) -> Result<[u64; COUNTER_COUNT]> {
        let mut totals = [0; COUNTER_COUNT];
        for (i, t) in totals.iter_mut().enumerate() {
            *t = self
                .counters
                .get(&(i as u32), 0)
                .context("reading layout 5's counters")?
                .iter()
                .sum();
        }
        Ok(totals)
    }

    /// Reads the whole table, leaving it as it is (a start that fails
    /// later leaves the old collector's state whole). Freed slots are told
    /// by their keys, not by `HB_FREE` (a queue cannot be read without
    /// taking from it): a forgotten host's key stays forgotten until the
    /// program hands its slot to a new host.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let mut freed = Vec::new();
        let alloc = self.alloc();
        let ready = (alloc as usize).min(self.capacity);
        let mut hosts = Vec::new();
        let mut pending = Vec::new();
        for slot in 0..ready as u32 {
            let t = self.last_seen(slot);
            let key = self.key(slot);
            if key.words()[0] == FORGOTTEN_KEY_WORD {
                // Queued free, or forgotten and not yet queued: free.
                freed.push(slot);
            } else if t == 0 {
                pending.push(slot);
            } else {
                hosts.push(Host {
                    slot,
                    key,
                    last_seen_ns: t,
                    beats: self.beats(slot),
                    auth: key.host_id().and_then(|_| self.auth(slot)),
                });
            }
        }
        let tracker = self
            .tracker
            .as_slice()
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .collect();
        Ok(Snapshot {
            capacity: self.capacity as u32,
            alloc,
            hosts,
            freed,
            pending,
            counters: self.counters()?,
            tracker,
        })
    }
}
