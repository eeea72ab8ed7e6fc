//! Helpers shared by the benchmarks in `benches/` (the kernel memory of BPF
//! maps, time formatting), and the end-to-end load test ([`load`]). Frames
//! and namespaces come from hb-testkit.

use std::{
    fs,
    os::fd::{AsFd as _, AsRawFd as _},
};

pub mod load;

/// One BPF map, with the kernel memory it uses.
#[derive(Debug, Clone)]
pub struct MapMemory {
    pub id: u32,
    /// Name as the kernel knows it (truncated to 15 bytes), if found.
    pub name: String,
    pub map_type: u32,
    pub max_entries: u64,
    /// Kernel memory charged to the map ("memlock:" in its fdinfo), bytes.
    pub memlock: u64,
    /// `map_flags` (`BPF_F_MMAPABLE` is 1 << 10).
    pub flags: u64,
}

/// `BPF_F_MMAPABLE`: the map's values can be mmapped.
pub const BPF_F_MMAPABLE: u64 = 1 << 10;

/// Reads a map's figures from `/proc/self/fdinfo/<fd>`; `None` if `fd` is
/// not a BPF map.
fn map_fdinfo(fd: &str) -> Option<MapMemory> {
    map_fdinfo_at(&format!("/proc/self/fdinfo/{fd}"))
}

/// As `map_fdinfo`, of any process's fd: `/proc/<pid>/fdinfo/<fd>`.
pub fn map_fdinfo_at(path: &str) -> Option<MapMemory> {
    let info = fs::read_to_string(path).ok()?;
    let field = |key: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let id = field("map_id:")? as u32;
    Some(MapMemory {
        id,
        name: aya::maps::MapInfo::from_id(id)
            .ok()
            .and_then(|info| info.name_as_str().map(str::to_string))
            .unwrap_or_else(|| "?".into()),
        map_type: field("map_type:")? as u32,
        max_entries: field("max_entries:").unwrap_or(0),
        memlock: field("memlock:")?,
        // Printed in hex ("0x400").
        flags: info
            .lines()
            .find_map(|l| l.strip_prefix("map_flags:"))
            .and_then(|v| u64::from_str_radix(v.trim().trim_start_matches("0x"), 16).ok())
            .unwrap_or(0),
    })
}

/// Every map `progs` use, plus every map this process holds an fd to, each
/// once. Both sources are needed: maps that are only mmapped (the table's
/// arrays, whose fds hb closes after mapping them) have no fd left, and a
/// map no program uses would not be among the programs' maps.
pub fn maps_in_use(progs: &[&aya::programs::Xdp]) -> Result<Vec<MapMemory>, String> {
    let mut ids = Vec::new();
    for prog in progs {
        let info = prog.info().map_err(|e| format!("program info: {e}"))?;
        let map_ids = info
            .map_ids()
            .map_err(|e| format!("program map ids: {e}"))?
            .ok_or("this kernel does not list a program's maps")?;
        ids.extend(map_ids);
    }
    let mut maps: Vec<MapMemory> = Vec::new();
    let mut add = |m: MapMemory| {
        if !maps.iter().any(|o| o.id == m.id) {
            maps.push(m);
        }
    };
    for id in ids {
        add(map_memory(id)?);
    }
    let dir = fs::read_dir("/proc/self/fd").map_err(|e| format!("/proc/self/fd: {e}"))?;
    for entry in dir.flatten() {
        if let Some(m) = map_fdinfo(&entry.file_name().to_string_lossy()) {
            add(m);
        }
    }
    maps.sort_by_key(|m| m.id);
    Ok(maps)
}

/// The figures of map `id`, read through a fresh fd while it is open.
pub fn map_memory(id: u32) -> Result<MapMemory, String> {
    let data = aya::maps::MapData::from_id(id).map_err(|e| format!("map {id}: {e}"))?;
    let fd = data.fd().as_fd().as_raw_fd();
    map_fdinfo(&fd.to_string()).ok_or(format!("map {id}: no fdinfo"))
}

/// Name of a `bpf_map_type` number (the ones hb uses).
pub fn map_type_name(t: u32) -> String {
    match t {
        1 => "hash".into(),
        2 => "array".into(),
        6 => "percpu_array".into(),
        22 => "queue".into(),
        27 => "ringbuf".into(),
        t => format!("type {t}"),
    }
}

/// Formats nanoseconds with a unit that keeps 3-4 significant digits.
pub fn fmt_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.3} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.3} µs", ns / 1e3)
    } else {
        format!("{ns:.2} ns")
    }
}
