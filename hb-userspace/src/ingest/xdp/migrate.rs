//! Upgrading across map layouts without losing a host: a collector that
//! finds the pins of a layout-5 collector (see `layout5`) carries its
//! hosts over to this build's table instead of starting from an empty one.
//!
//! Slot numbers are kept, so the tracker's told state (slot-indexed bits:
//! which hosts the output was told about, which of them silent) copies over
//! word for word: no migrated host is reported `new` again, a silent one
//! stays silent until it beats.
//!
//! The steps, each leaving a state a later `hb run` can start from:
//! 1. `begin`: read the old table (the old program may still be recording
//!    into it, through the pinned link).
//! 2. load this build's maps pinned in `layout-<N>-migrating` (bpffs refuses dots in names), and `seed`
//!    them: hosts, replay state, counters, allocator, tracker words. A
//!    start that fails up to here leaves the old pins as they were; the
//!    staging directory is discarded by the next start.
//! 3. attach: the new program replaces the old one on the pinned link in
//!    one step (the commit point: from here on only the new maps are
//!    stamped).
//! 4. `finish`: rename the staging directory into place, copy the last
//!    heartbeats the old program stamped since step 1 (the newer time
//!    wins), and remove the old pins.
//!
//! A failure before step 3 falls back to what hb did before it could
//! migrate: the old pins are replaced and their hosts reported as new.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{Map, MapData, PerCpuArray, PerCpuValues};
use hb_common::{COUNTERS_MAP, Counter, TRACKER_MAP};
use log::info;

use super::{
    layout5::{self, Layout5, Snapshot},
    pins::{Instance, staging_dir},
    program::Loaded,
    table::TrackerWords,
};
use crate::track::tracker;

/// The tracker's header words, then known bits, then silent bits.
const TRACKER_HEADER: usize = 4;

/// A migration under way: the old table read, the new one not yet seeded.
pub struct Migration {
    old: Layout5,
    snap: Snapshot,
    staging: PathBuf,
    target: PathBuf,
}

impl Migration {
    /// Reads the layout-5 table pinned in `old_dir`.
    pub fn begin(inst: &Instance, old_dir: &Path) -> Result<Self> {
        let old = Layout5::open(old_dir)?;
        let snap = old.snapshot()?;
        let staging = staging_dir(inst);
        if staging.exists() {
            fs::remove_dir_all(&staging)
                .with_context(|| format!("removing {}", staging.display()))?;
        }
        fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
        Ok(Self {
            old,
            snap,
            staging,
            target: inst.maps_dir(),
        })
    }

    /// Where the new maps are to be pinned while they are seeded.
    pub fn staging(&self) -> &Path {
        &self.staging
    }

    /// The old table's capacity, which the new one keeps.
    pub fn capacity(&self) -> u32 {
        self.snap.capacity
    }

    /// Fills `loaded` (not attached yet, its maps pinned in `staging`)
    /// from the old table.
    pub fn seed(&self, loaded: &Loaded, with_auth: bool) -> Result<()> {
        let table = &loaded.table;
        if table.capacity() < self.snap.capacity as usize {
            bail!(
                "the new table holds {} hosts, the old one {}",
                table.capacity(),
                self.snap.capacity
            );
        }
        let mut bare = 0;
        for h in &self.snap.hosts {
            // Counts are u32 now, wrapping as the program's do.
            if !table.insert_at(h.slot, &h.key, h.last_seen_ns, h.beats as u32)? {
                bail!("{} is in the old table twice", h.key.ip());
            }
            bare += u64::from(h.key.host_id().is_none());
            if with_auth && let Some(a) = &h.auth {
                table.seed_auth(h.slot, a);
            }
        }
        table.seed_counts(self.snap.alloc.min(u64::from(self.snap.capacity)), bare)?;
        // A first heartbeat being recorded as the old table was read was
        // never reported: its host is `new` at its next heartbeat, in a
        // slot of the new program's; its slot here is free.
        for &slot in self.snap.freed.iter().chain(&self.snap.pending) {
            table.reuse_slot(slot)?;
        }
        self.seed_tracker(loaded)?;
        self.seed_counters()?;
        Ok(())
    }

    /// Copies the tracker's words; the bits of a slot not carried over (a
    /// forgotten host's) are cleared, as its collector would have.
    fn seed_tracker(&self, loaded: &Loaded) -> Result<()> {
        let data = self.pinned(TRACKER_MAP)?;
        let mut words = TrackerWords::new(Map::Array(data), loaded.tracker_words)?;
        let old = &self.snap.tracker;
        let bitmap = (self.snap.capacity as usize).div_ceil(64);
        let new_bitmap = (words.len() - TRACKER_HEADER) / 2;
        if old.len() != TRACKER_HEADER + 2 * bitmap || new_bitmap < bitmap {
            bail!(
                "tracker state of {} words does not fit {} words",
                old.len(),
                words.len()
            );
        }
        let mut kept = vec![0u64; bitmap];
        for h in &self.snap.hosts {
            kept[h.slot as usize / 64] |= 1 << (h.slot % 64);
        }
        words[..TRACKER_HEADER].copy_from_slice(&old[..TRACKER_HEADER]);
        let (known, silent) = old[TRACKER_HEADER..].split_at(bitmap);
        for i in 0..bitmap {
            words[TRACKER_HEADER + i] = known[i] & kept[i];
            words[TRACKER_HEADER + new_bitmap + i] = silent[i] & kept[i];
        }
        debug_assert_eq!(tracker::state_words(self.snap.capacity as usize), old.len());
        Ok(())
    }

    /// The old counters, summed over CPUs, become CPU 0's.
    fn seed_counters(&self) -> Result<()> {
        let mut counters =
            PerCpuArray::<_, u64>::try_from(Map::PerCpuArray(self.pinned(COUNTERS_MAP)?))?;
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::Error::new(e).context(what))?;
        for (i, &total) in self.snap.counters.iter().enumerate().take(Counter::COUNT) {
            let mut values = vec![0u64; cpus];
            values[0] = total;
            counters
                .set(i as u32, PerCpuValues::try_from(values)?, 0)
                .with_context(|| format!("seeding counter {i}"))?;
        }
        Ok(())
    }

    fn pinned(&self, name: &str) -> Result<MapData> {
        let path = self.staging.join(name);
        MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))
    }

    /// After the new program took over: the new maps move into place, the
    /// heartbeats the old program recorded since `begin` are copied, and
    /// the old pins go. Returns how many hosts were carried over.
    pub fn finish(self, loaded: &Loaded) -> Result<usize> {
        fs::rename(&self.staging, &self.target).with_context(|| {
            format!(
                "renaming {} to {}",
                self.staging.display(),
                self.target.display()
            )
        })?;
        let table = &loaded.table;
        let mut raised = 0;
        for h in &self.snap.hosts {
            let t = self.old.last_seen(h.slot);
            if t > h.last_seen_ns && self.old.key(h.slot) == h.key {
                let auth = h
                    .auth
                    .zip(self.old.auth(h.slot))
                    .map(|(was, now)| (now.seq, now.lost.saturating_sub(was.lost)));
                let beats = self.old.beats(h.slot).saturating_sub(h.beats);
                table.catch_up(h.slot, t, beats as u32, auth);
                raised += 1;
            }
        }
        let hosts = self.snap.hosts.len();
        let silent = self.silent();
        fs::remove_dir_all(self.old.dir())
            .with_context(|| format!("removing {}", self.old.dir().display()))?;
        info!(
            "migrated {hosts} hosts from layout {} ({silent} silent; {raised} beat during the migration): none is reported new, silent ones stay silent until they beat",
            layout5::LAYOUT
        );
        Ok(hosts)
    }

    /// Migrated hosts the output was told are silent.
    fn silent(&self) -> usize {
        let bitmap = (self.snap.capacity as usize).div_ceil(64);
        let silent = &self.snap.tracker[TRACKER_HEADER + bitmap..];
        self.snap
            .hosts
            .iter()
            .filter(|h| silent[h.slot as usize / 64] & (1 << (h.slot % 64)) != 0)
            .count()
    }
}
