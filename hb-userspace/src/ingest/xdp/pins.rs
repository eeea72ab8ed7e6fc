//! A collector's state outside its process, so that it survives the process:
//!
//! - `/sys/fs/bpf/hb/<iface>/link`: the XDP link, pinned. The program stays
//!   attached and keeps stamping heartbeats while no `hb run` is alive (after
//!   SIGKILL, a crash, or a restart), until `hb run` stops on SIGINT/SIGTERM
//!   or `hb detach` removes it.
//! - `/sys/fs/bpf/hb/<iface>/layout-<N>/`: every map, pinned. A new `hb run`
//!   reuses them: the table, counters and tracker state carry on. `N` is the
//!   map layout version: pins of another layout are never read as this one.
//! - `/run/hb/<iface>.json`: pid and settings, for `hb status`.
//!
//! Outside the host's network namespace, `<iface>` is `<iface>@netns-<inode>`.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{Map, MapData};
use hb_common::{
    ALLOC_MAP, AUTH_MAP, BEATS_MAP, COUNTERS_MAP, HINTS_MAP, LAST_SEEN_MAP, SLOT_KEYS_MAP,
    SLOTS_MAP, TRACKER_MAP,
};
use serde::{Deserialize, Serialize};

use super::table::{HostTable, TableMaps};

const BPFFS: &str = "/sys/fs/bpf";
const RUN_DIR: &str = "/run/hb";
/// Changes whenever the pinned maps' layout (names, types, sizes, meaning)
/// changes. 3: slot hints, tracker state, replay state (`HB_AUTH`), keys
/// of signed hosts. 4: two hints an array element.
pub const LAYOUT_VERSION: u32 = 4;

/// Every map of the object that is pinned (all but aya-log's buffer).
pub const PINNED_MAPS: [&str; 9] = [
    SLOTS_MAP,
    LAST_SEEN_MAP,
    BEATS_MAP,
    SLOT_KEYS_MAP,
    ALLOC_MAP,
    HINTS_MAP,
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
}

pub fn pin_dir(iface: &str) -> PathBuf {
    Path::new(BPFFS).join("hb").join(instance(iface))
}

/// Where this build's maps are pinned.
pub fn maps_dir(iface: &str) -> PathBuf {
    pin_dir(iface).join(format!("layout-{LAYOUT_VERSION}"))
}

/// Where the XDP link is pinned.
pub fn link_path(iface: &str) -> PathBuf {
    pin_dir(iface).join("link")
}

pub fn state_file(iface: &str) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{}.json", instance(iface)))
}

/// The name of the collector on `iface`: the interface name, qualified by
/// the network namespace outside the host's own, because interface names
/// are only unique within a namespace while bpffs and /run are shared.
/// `hb status` run in the same namespace finds the same name.
fn instance(iface: &str) -> String {
    use std::os::unix::fs::MetadataExt as _;
    let ino = |p: &str| fs::metadata(p).map(|m| m.ino()).ok();
    match (ino("/proc/thread-self/ns/net"), ino("/proc/1/ns/net")) {
        (Some(own), Some(init)) if own == init => iface.to_owned(),
        // Not the host's namespace, or it cannot be told (pid 1 hidden).
        (Some(own), _) => format!("{iface}@netns-{own}"),
        (None, _) => iface.to_owned(),
    }
}

/// Mounts bpffs at /sys/fs/bpf if nothing is mounted there.
pub fn ensure_bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    if mounts.lines().any(|l| {
        l.split_whitespace().nth(1) == Some(BPFFS) && l.split_whitespace().nth(2) == Some("bpf")
    }) {
        return Ok(());
    }
    fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    let (src, target, fstype) = (c"bpffs", c"/sys/fs/bpf", c"bpf");
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .context("bpffs is not mounted at /sys/fs/bpf and mounting it failed; mount it with `mount -t bpf bpffs /sys/fs/bpf`");
    }
    log::info!("mounted bpffs at {BPFFS}");
    Ok(())
}

/// Gets the pin directory ready for this build: creates it, and removes
/// maps pinned by an hb with another map layout (their contents cannot be
/// read as this layout's). A pinned link is kept: the new program replaces
/// the old one on it without a gap. Returns whether this layout's maps are
/// already there (state to carry on from).
pub fn prepare(iface: &str) -> Result<bool> {
    ensure_bpffs()?;
    let dir = pin_dir(iface);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ours = maps_dir(iface);
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path == ours || path == link_path(iface) {
            continue;
        }
        log::warn!(
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
    fs::create_dir_all(&ours).with_context(|| format!("creating {}", ours.display()))?;
    Ok(ours.join(SLOTS_MAP).exists())
}

pub fn write_state(iface: &str, state: &State) -> Result<()> {
    fs::create_dir_all(RUN_DIR).with_context(|| format!("creating {RUN_DIR}"))?;
    let path = state_file(iface);
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_vec(state)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
}

/// The collector on `iface`, if one is running.
pub fn running(iface: &str) -> Option<State> {
    last_state(iface).filter(|state| Path::new(&format!("/proc/{}", state.pid)).exists())
}

/// The state file of the last collector on `iface`, running or not.
pub fn last_state(iface: &str) -> Option<State> {
    serde_json::from_slice(&fs::read(state_file(iface)).ok()?).ok()
}

/// Detaches the program (unpins its link: the last reference, once this
/// process lets go of it) and removes the pinned maps and the state file.
pub fn remove(iface: &str) {
    let _ = fs::remove_file(link_path(iface));
    let _ = fs::remove_dir_all(pin_dir(iface));
    let _ = fs::remove_file(state_file(iface));
}

/// Opens the pinned table (with its counters) of the collector on `iface`,
/// whether its `hb run` is alive or not (the program records without it).
pub fn open(iface: &str) -> Result<(State, HostTable)> {
    let Some(state) = last_state(iface) else {
        bail!(
            "no hb collector is running on {iface} (no state in {})",
            state_file(iface).display()
        );
    };
    if state.layout != LAYOUT_VERSION {
        bail!(
            "the collector on {iface} (pid {}) uses map layout {}, this hb reads layout {LAYOUT_VERSION}: use the matching hb binary",
            state.pid,
            state.layout
        );
    }
    let dir = maps_dir(iface);
    if !dir.join(SLOTS_MAP).exists() {
        bail!(
            "no hb collector is running on {iface} (nothing pinned in {})",
            dir.display()
        );
    }
    let load = |name: &str| {
        MapData::from_pin(dir.join(name))
            .with_context(|| format!("opening pinned {name} in {}", dir.display()))
    };
    let table = HostTable::new(TableMaps {
        slots: Map::HashMap(load(SLOTS_MAP)?),
        last_seen: Map::Array(load(LAST_SEEN_MAP)?),
        beats: Map::Array(load(BEATS_MAP)?),
        slot_keys: Map::Array(load(SLOT_KEYS_MAP)?),
        alloc: Map::Array(load(ALLOC_MAP)?),
        auth: Map::Array(load(AUTH_MAP)?),
        counters: Map::PerCpuArray(load(COUNTERS_MAP)?),
    })?;
    Ok((state, table))
}
