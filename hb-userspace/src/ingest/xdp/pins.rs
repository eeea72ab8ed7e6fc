//! A collector's state outside its process, so that it survives the process.
//! A collector is an *instance*: an interface in a network namespace, named
//! `<iface>@netns-<inode>` (the namespace's inode, as `ls -i /run/netns/X`
//! or `readlink /proc/PID/ns/net` show it), because interface names are
//! only unique within a namespace while bpffs and /run are shared (by
//! containers too). The name never depends on which process is PID 1.
//!
//! - `<bpffs>/hb/<instance>/link`: the XDP link, pinned. The program stays
//!   attached and keeps stamping heartbeats while no `hb run` is alive (after
//!   SIGKILL, a crash, or a restart), until `hb run` stops on SIGINT/SIGTERM
//!   or `hb detach` removes it. Adopted only if it is attached to this
//!   interface in this namespace (see `link`).
//! - `<bpffs>/hb/<instance>/layout-<N>/`: every map, pinned. A new `hb run`
//!   reuses them: the table, counters and tracker state carry on. `N` is the
//!   map layout version: pins of another layout are never read as this one.
//! - `/run/hb/<instance>.json`: pid and settings, for `hb status`.
//! - `/run/hb/<instance>.lock`: held by the live collector (see `lock`).
//! - `/run/hb/<instance>.fleet`: what the output was told about the fleet
//!   (hosts reported missing; see `track::fleet::kept`).
//!
//! `<bpffs>` is chosen by `bpffs`. Pins of an hb from before instance names
//! (`<bpffs>/hb/<iface>`, `/run/hb/<iface>.json`) are adopted by the first
//! `hb run` whose interface their link is attached to.
use std::{
    fs, io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{Map, MapData};
use hb_common::{
    ALLOC_MAP, AUTH_MAP, BARE_MAP, BEATS_MAP, CLAIM_MAP, COUNTERS_MAP, FREE_MAP, INDEX_MAP,
    LAST_SEEN_MAP, SLOT_KEYS_MAP, TIMING_MAP, TRACKER_MAP,
};
use log::{info, warn};
use serde::{Deserialize, Serialize};

use crate::track::{adaptive::Policy, tracker};

use super::{
    bpffs::Bpffs,
    link::{self, Place},
    table::{HostTable, TableMaps, TrackerWords},
};

const RUN_DIR: &str = "/run/hb";
/// Changes whenever the pinned maps' layout (names, types, sizes, meaning)
/// changes. 3: slot hints, tracker state, replay state (`HB_AUTH`), keys
/// of signed hosts. 4: two hints an array element. 5: the bare host count
/// (`HB_BARE`), and three more outcome counters (`not_for_us`,
/// `bad_source`, `bad_checksum`). 6: the index (`HB_INDEX`) in place of
/// the slot hash map and hints, last-seen as `u32` ticks from an epoch
/// (pinned in `HB_ALLOC`), `u32` counts, learned timing (`HB_TIMING`).
pub const LAYOUT_VERSION: u32 = 6;

/// Every map of the object that is pinned (all but aya-log's buffer and
/// the local MAC and addresses, which each collector writes afresh).
pub const PINNED_MAPS: [&str; 12] = [
    INDEX_MAP,
    CLAIM_MAP,
    FREE_MAP,
    LAST_SEEN_MAP,
    BEATS_MAP,
    TIMING_MAP,
    SLOT_KEYS_MAP,
    ALLOC_MAP,
    BARE_MAP,
    AUTH_MAP,
    TRACKER_MAP,
    COUNTERS_MAP,
];

/// What `hb status` needs to know about the collector.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub pid: u32,
    pub layout: u32,
    pub port: u16,
    pub timeout_ms: u64,
    pub sweep_ms: u64,
    pub max_hosts: u32,
    pub started: String,
    /// "off", "optional" (signed and bare heartbeats) or "required".
    /// Defaulted so that an older collector's state file still parses and
    /// gets the layout message.
    #[serde(default)]
    pub auth: String,
    /// The collector's network namespace cookie (never reused until
    /// reboot, unlike its inode): pins named after a namespace that is
    /// gone, whose inode a new one reuses, are not carried on from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_cookie: Option<u64>,
    /// Under `--timeout auto`: the bounds of the learned timeouts
    /// (`timeout_ms` is then the upper one, for older readers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto: Option<AutoBounds>,
}

/// `--min-timeout` and `--max-timeout`, as `hb status` reads them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct AutoBounds {
    pub min_ms: u64,
    pub max_ms: u64,
}

impl AutoBounds {
    pub fn of(policy: Policy) -> Self {
        Self {
            min_ms: policy.min_ns / 1_000_000,
            max_ms: policy.max_ns / 1_000_000,
        }
    }

    pub fn policy(self) -> Policy {
        Policy::new(
            Duration::from_millis(self.min_ms),
            Duration::from_millis(self.max_ms),
        )
    }
}

/// One collector's names: an interface in this network namespace.
#[derive(Debug, Clone)]
pub struct Instance {
    pub iface: String,
    /// `<iface>@netns-<inode>`.
    pub name: String,
    pub bpffs: Bpffs,
    /// This namespace's cookie, where the kernel tells it.
    pub netns_cookie: Option<u64>,
}

impl Instance {
    /// The collector on `iface` in the calling thread's network namespace,
    /// its pins in `bpffs`.
    pub fn new(iface: &str, bpffs: Bpffs) -> Result<Self> {
        let ino = ["/proc/thread-self/ns/net", "/proc/self/ns/net"]
            .iter()
            .find_map(|p| fs::metadata(p).ok())
            .context("cannot tell this network namespace: /proc/self/ns/net is unreadable (is /proc mounted?)")?
            .ino();
        Ok(Self {
            iface: iface.to_owned(),
            name: format!("{iface}@netns-{ino}"),
            bpffs,
            netns_cookie: netns_cookie(),
        })
    }

    /// The collector's pin directory.
    pub fn dir(&self) -> PathBuf {
        self.bpffs.root.join("hb").join(&self.name)
    }

    /// Where this build's maps are pinned.
    pub fn maps_dir(&self) -> PathBuf {
        self.dir().join(format!("layout-{LAYOUT_VERSION}"))
    }

    /// Where the XDP link is pinned.
    pub fn link(&self) -> PathBuf {
        self.dir().join("link")
    }

    pub fn state_file(&self) -> PathBuf {
        Path::new(RUN_DIR).join(format!("{}.json", self.name))
    }

    pub fn fleet_file(&self) -> PathBuf {
        Path::new(RUN_DIR).join(format!("{}.fleet", self.name))
    }

    pub fn lock_file(&self) -> PathBuf {
        Path::new(RUN_DIR).join(format!("{}.lock", self.name))
    }

    /// Where an hb from before instance names pinned for `iface`.
    pub fn legacy_dir(&self) -> PathBuf {
        self.bpffs.root.join("hb").join(&self.iface)
    }

    fn legacy_state_file(&self) -> PathBuf {
        Path::new(RUN_DIR).join(format!("{}.json", self.iface))
    }
}

/// This network namespace's cookie (SO_NETNS_COOKIE, Linux 5.14+).
fn netns_cookie() -> Option<u64> {
    // SAFETY: plain socket call.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a new fd that nothing else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt into a live u64 of the given length.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cookie)
}

/// What a start of `hb run` created, so that a failed start removes that
/// and nothing else.
#[derive(Debug, Default)]
pub struct Created {
    dir: bool,
    maps_dir: bool,
    /// Map pins that were not there before.
    maps: Vec<&'static str>,
    /// The link pin (a new attachment).
    pub link: bool,
    /// The program replaced another on a pinned link: the maps it records
    /// into now back the interface's filter, and stay.
    pub took_over: bool,
    pub state: bool,
    /// Pins of an older layout to migrate from (see `migrate`), left in
    /// place by `prepare`.
    pub migrate_from: Option<PathBuf>,
}

/// Gets the pin directory ready for this build: adopts the pins of an hb
/// from before instance names, drops those of a namespace that is gone,
/// refuses a link attached elsewhere, creates the directories, and removes
/// maps pinned by an hb with another map layout (their contents cannot be
/// read as this layout's). A pinned link is kept: the new program replaces
/// the old one on it without a gap. Call with the instance's lock held.
pub fn prepare(inst: &Instance) -> Result<Created> {
    adopt_legacy(inst)?;
    forget_stale(inst)?;
    if let Some(Place::Elsewhere { ifindex, program }) = link::place(&inst.link(), &inst.iface)? {
        bail!(
            "{} is attached to another interface (index {ifindex}, program {program}), not to {} in this network namespace: hb leaves it alone. If no collector uses it, remove {} by hand",
            inst.link().display(),
            inst.iface,
            inst.dir().display()
        );
    }
    let mut created = Created::default();
    let dir = inst.dir();
    created.dir = !dir.exists();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ours = inst.maps_dir();
    // An older layout this build migrates, where this layout has no table
    // yet (else that one is the newer state: a migration that stopped
    // between taking over and removing the old pins).
    let older = from_layout()
        .map(|n| dir.join(format!("layout-{n}")))
        .filter(|p| p.is_dir() && !ours.exists());
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path == ours || path == inst.link() || Some(&path) == older.as_ref() {
            continue;
        }
        let migrated = from_layout().is_some_and(|n| path == dir.join(format!("layout-{n}")));
        if path == staging_dir(inst) || migrated {
            // Staging: a start stopped before its take-over. The old
            // layout beside this one's table: one stopped after it.
            info!(
                "{}: left by an interrupted migration, removed ({})",
                path.display(),
                if migrated {
                    "its hosts are in this layout's table"
                } else {
                    "the next migration starts over"
                }
            );
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
            continue;
        }
        warn!(
            "{} was pinned by an hb build with another map layout (this one uses layout {LAYOUT_VERSION}): replacing it; the hosts it knew will be reported as new",
            path.display()
        );
        let removed = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.with_context(|| format!("removing {}", path.display()))?;
    }
    if older.is_some() {
        // Pinned in a staging directory until the migration is done.
        created.migrate_from = older;
        return Ok(created);
    }
    created.maps_dir = !ours.exists();
    fs::create_dir_all(&ours).with_context(|| format!("creating {}", ours.display()))?;
    created.maps = PINNED_MAPS
        .into_iter()
        .filter(|m| !ours.join(m).exists())
        .collect();
    Ok(created)
}

/// Replaces the pins of an older layout whose migration failed, as hb
/// did before it could migrate.
pub fn replace_older(inst: &Instance, created: &mut Created, why: &anyhow::Error) -> Result<()> {
    let Some(old) = created.migrate_from.take() else {
        return Ok(());
    };
    warn!(
        "{} was pinned by an hb build with another map layout (this one uses layout {LAYOUT_VERSION}) and cannot be migrated ({why:#}): replacing it; the hosts it knew will be reported as new",
        old.display()
    );
    discard(inst);
    fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    let ours = inst.maps_dir();
    created.maps_dir = true;
    created.maps = PINNED_MAPS.to_vec();
    fs::create_dir_all(&ours).with_context(|| format!("creating {}", ours.display()))
}

/// Undoes a failed start: removes what `created` says it made, and only
/// that (never what an earlier collector left to carry on from).
pub fn undo(inst: &Instance, created: &Created) {
    if created.migrate_from.is_some() && !created.took_over {
        // The old pins stay as they were: the next start migrates again.
        discard(inst);
    }
    if created.link {
        let _ = fs::remove_file(inst.link());
    }
    if !created.took_over {
        for map in &created.maps {
            let _ = fs::remove_file(inst.maps_dir().join(map));
        }
    }
    // Only if empty.
    if created.maps_dir {
        let _ = fs::remove_dir(inst.maps_dir());
    }
    if created.dir {
        let _ = fs::remove_dir(inst.dir());
    }
    if created.state {
        let _ = fs::remove_file(inst.state_file());
    }
}

/// Pins of an hb from before instance names, under the bare interface
/// name. That name was shared by every namespace whose PID 1 was in it
/// (containers, too), so they are adopted only if their link is attached
/// to this interface in this namespace: renamed to this instance's name,
/// so the table, counters and tracker state carry on and no host is lost.
fn adopt_legacy(inst: &Instance) -> Result<()> {
    let old = inst.legacy_dir();
    if inst.dir().exists() || !old.is_dir() {
        return Ok(());
    }
    match link::place(&old.join("link"), &inst.iface)? {
        Some(Place::Here) => {}
        Some(Place::Elsewhere { .. }) => {
            info!(
                "{} belongs to an earlier hb on another interface named {} (in another network namespace): left alone",
                old.display(),
                inst.iface
            );
            return Ok(());
        }
        Some(Place::Gone) | None => {
            info!(
                "{} was left by an earlier hb whose program is attached nowhere, so hb cannot tell whose it is: left alone (remove it by hand if no collector uses it)",
                old.display()
            );
            return Ok(());
        }
    }
    if let Some(pid) = legacy_alive(inst) {
        bail!(
            "an earlier hb run (pid {pid}) is watching {}: stop it with SIGUSR2 (its program stays attached) and start this one again, which carries on from it",
            inst.iface
        );
    }
    fs::rename(&old, inst.dir())
        .with_context(|| format!("renaming {} to {}", old.display(), inst.dir().display()))?;
    let _ = fs::remove_file(inst.legacy_state_file());
    info!(
        "adopted the pins an earlier hb left at {} (now {}): carrying on from its table, no host lost",
        old.display(),
        inst.dir().display()
    );
    Ok(())
}

/// The pid of a live earlier hb that wrote the legacy state file (earlier
/// builds hold no lock: its pid is all there is).
fn legacy_alive(inst: &Instance) -> Option<u32> {
    let state: State = serde_json::from_slice(&fs::read(inst.legacy_state_file()).ok()?).ok()?;
    let stat = fs::read_to_string(format!("/proc/{}/stat", state.pid)).ok()?;
    // "pid (comm) S ...": a zombie is not watching anything.
    let (comm, rest) = stat.split_once(") ")?;
    (comm.ends_with("(hb") && !rest.starts_with('Z')).then_some(state.pid)
}

/// Pins named after a network namespace that is gone, whose inode this one
/// reuses: their table is not this namespace's, so they are removed
/// (unless their link is attached somewhere, which `prepare` refuses).
fn forget_stale(inst: &Instance) -> Result<()> {
    let Some(state) = last_state(inst) else {
        return Ok(());
    };
    let (Some(theirs), Some(ours)) = (state.netns_cookie, inst.netns_cookie) else {
        return Ok(());
    };
    if theirs == ours || !inst.dir().exists() {
        return Ok(());
    }
    if matches!(
        link::place(&inst.link(), &inst.iface)?,
        Some(Place::Elsewhere { .. })
    ) {
        return Ok(());
    }
    warn!(
        "{} was left by a collector in a network namespace that is gone (this one reuses its number): removing it; this collector starts from an empty table",
        inst.dir().display()
    );
    fs::remove_dir_all(inst.dir()).with_context(|| format!("removing {}", inst.dir().display()))?;
    let _ = fs::remove_file(inst.state_file());
    let _ = fs::remove_file(inst.fleet_file());
    Ok(())
}

pub fn write_state(inst: &Instance, state: &State) -> Result<()> {
    fs::create_dir_all(RUN_DIR).with_context(|| format!("creating {RUN_DIR}"))?;
    let path = inst.state_file();
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_vec(state)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
}

/// The state file of the last collector of `inst`, running or not.
pub fn last_state(inst: &Instance) -> Option<State> {
    serde_json::from_slice(&fs::read(inst.state_file()).ok()?).ok()
}

/// Detaches the program (at once, even if a process holds its link) and
/// removes the link, the pinned maps and the state file.
pub fn remove(inst: &Instance) {
    if let Err(e) = link::detach(&inst.link()) {
        warn!("{e:#}: removing its pin detaches it once no process holds it");
    }
    let _ = fs::remove_file(inst.link());
    let _ = fs::remove_dir_all(inst.dir());
    let _ = fs::remove_file(inst.state_file());
    let _ = fs::remove_file(inst.fleet_file());
}

/// Removes what an earlier hb pinned under the bare interface name, if its
/// link is attached to this interface here; whether it did.
pub fn remove_legacy(inst: &Instance) -> Result<bool> {
    let old = inst.legacy_dir();
    if link::place(&old.join("link"), &inst.iface)? != Some(Place::Here) {
        return Ok(false);
    }
    link::detach(&old.join("link"))?;
    let _ = fs::remove_file(old.join("link"));
    fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    let _ = fs::remove_file(inst.legacy_state_file());
    Ok(true)
}

/// Opens the pinned table (with its counters) of `inst`'s collector,
/// whether its `hb run` is alive or not (the program records without it).
pub fn open(inst: &Instance) -> Result<(State, HostTable)> {
    let iface = &inst.iface;
    let Some(state) = last_state(inst) else {
        bail!(
            "no state of a collector on {iface} in {}",
            inst.state_file().display()
        );
    };
    if state.layout != LAYOUT_VERSION {
        bail!(
            "the collector on {iface} (pid {}) uses map layout {}, this hb reads layout {LAYOUT_VERSION}: use the matching hb binary",
            state.pid,
            state.layout
        );
    }
    let dir = inst.maps_dir();
    let load = |name: &str| {
        MapData::from_pin(dir.join(name))
            .with_context(|| format!("opening pinned {name} in {}", dir.display()))
    };
    let table = HostTable::new(TableMaps {
        index: Map::Array(load(INDEX_MAP)?),
        claim: Map::Array(load(CLAIM_MAP)?),
        last_seen: Map::Array(load(LAST_SEEN_MAP)?),
        beats: Map::Array(load(BEATS_MAP)?),
        timing: Map::Array(load(TIMING_MAP)?),
        slot_keys: Map::Array(load(SLOT_KEYS_MAP)?),
        alloc: Map::Array(load(ALLOC_MAP)?),
        auth: Map::Array(load(AUTH_MAP)?),
        counters: Map::PerCpuArray(load(COUNTERS_MAP)?),
        forgetting: None,
    })?;
    Ok((state, table))
}

/// What `inst`'s collector has told of its hosts (the tracker state pinned
/// with its table, see hb-userspace's `track::tracker`), for a table of
/// `slots`: a copy, read without writing.
pub fn told(inst: &Instance, slots: usize) -> Result<Vec<u64>> {
    let path = inst.maps_dir().join(TRACKER_MAP);
    let data =
        MapData::from_pin(&path).with_context(|| format!("opening pinned {}", path.display()))?;
    TrackerWords::copy(Map::Array(data), tracker::state_words(slots))
}

/// The pinned replay state (`HB_AUTH`) of `inst`'s collector, for writing
/// (`hb forget`).
pub fn auth_map(inst: &Instance) -> Result<MapData> {
    let path = inst.maps_dir().join(AUTH_MAP);
    MapData::from_pin(&path).with_context(|| format!("opening pinned {}", path.display()))
}

/// Whether `e` (anywhere in its chain) is the kernel refusing permission.
pub fn is_permission_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>().is_some_and(|io| {
            io.kind() == io::ErrorKind::PermissionDenied
                || matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES))
        })
    })
}

/// For tests and tools: the names `hb run` on `iface` uses from the calling
/// thread's network namespace, with bpffs chosen as `hb run` chooses it.
fn here(iface: &str) -> Instance {
    let bpffs = Bpffs::find(None).expect("no --bpffs: never fails");
    Instance::new(iface, bpffs).expect("/proc/self/ns/net")
}

/// The pin directory of the collector on `iface` in this namespace.
pub fn pin_dir(iface: &str) -> PathBuf {
    here(iface).dir()
}

/// The state file of the collector on `iface` in this namespace.
pub fn state_file(iface: &str) -> PathBuf {
    here(iface).state_file()
}

/// Mounts bpffs at /sys/fs/bpf if none is mounted there.
pub fn ensure_bpffs() -> Result<()> {
    Bpffs::find_or_mount(None).map(drop)
}

/// The layout whose pins this build migrates, if any.
pub fn from_layout() -> Option<u32> {
    (LAYOUT_VERSION != super::layout5::LAYOUT).then_some(super::layout5::LAYOUT)
}

/// Where this build's maps are pinned while they are being seeded.
pub fn staging_dir(inst: &Instance) -> PathBuf {
    inst.dir()
        .join(format!("layout-{LAYOUT_VERSION}-migrating"))
}

/// Discards what a migration that failed before its take-over left:
/// its staging directory.
pub fn discard(inst: &Instance) {
    let staging = staging_dir(inst);
    if staging.exists()
        && let Err(e) = fs::remove_dir_all(&staging)
    {
        warn!("removing {}: {e}", staging.display());
    }
}
