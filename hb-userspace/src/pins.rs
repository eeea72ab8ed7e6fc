//! A running collector's state, visible to other processes: its maps pinned
//! in bpffs under `/sys/fs/bpf/hb/<iface>/`, and a small JSON state file
//! `/run/hb/<iface>.json` (pid and settings); outside the host's network
//! namespace, `<iface>` is `<iface>@netns-<inode>`. `hb status` reads both without
//! disturbing the collector.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{Map, MapData};
use hb_common::{
    ALLOC_MAP, AUTH_MAP, BEATS_MAP, COUNTERS_MAP, LAST_SEEN_MAP, SLOT_KEYS_MAP, SLOTS_MAP,
};
use serde::{Deserialize, Serialize};

use crate::{
    counters::Counters,
    table::{HostTable, TableMaps},
};

const BPFFS: &str = "/sys/fs/bpf";
const RUN_DIR: &str = "/run/hb";
/// Changes whenever the pinned maps' layout changes.
pub const LAYOUT_VERSION: u32 = 2;

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

fn data(map: &Map) -> Result<&MapData> {
    match map {
        Map::HashMap(d) | Map::Array(d) | Map::PerCpuArray(d) => Ok(d),
        _ => bail!("unexpected map type"),
    }
}

/// Pins the maps under `dir`, replacing what a collector that is gone left.
pub fn pin(dir: &Path, maps: &[(&str, &Map)]) -> Result<()> {
    ensure_bpffs()?;
    if dir.exists() {
        fs::remove_dir_all(dir)
            .with_context(|| format!("removing stale pins in {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, map) in maps {
        data(map)?
            .pin(dir.join(name))
            .with_context(|| format!("pinning {name} in {}", dir.display()))?;
    }
    Ok(())
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
    let state: State = serde_json::from_slice(&fs::read(state_file(iface)).ok()?).ok()?;
    Path::new(&format!("/proc/{}", state.pid))
        .exists()
        .then_some(state)
}

/// Removes the pins and state file of the collector on `iface`.
pub fn remove(iface: &str) {
    let _ = fs::remove_dir_all(pin_dir(iface));
    let _ = fs::remove_file(state_file(iface));
}

/// Opens the pinned table and counters of the collector on `iface`.
pub fn open(iface: &str) -> Result<(State, HostTable, Counters)> {
    let Some(state) = running(iface) else {
        bail!(
            "no hb collector is running on {iface} (no live state in {})",
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
    let dir = pin_dir(iface);
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
    })?;
    let counters = Counters::new(Map::PerCpuArray(load(COUNTERS_MAP)?))?;
    Ok((state, table, counters))
}
