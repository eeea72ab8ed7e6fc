//! The program's own maps, found through the loaded program (the map ids
//! the kernel lists for it), for what the facade does not show: the
//! outcome counters CPU by CPU, and the host index.

use aya::{
    maps::{Array, Map, MapData, PerCpuArray},
    programs::Xdp,
};
use hb_common::{
    COUNTERS_MAP, Counter, INDEX_MAP,
    index::{BUCKET_ENTRIES, Bucket},
};

/// The map named `name` that `prog` uses; panics if there is none.
#[track_caller]
pub fn program_map(prog: &Xdp, name: &str) -> Map {
    let info = prog.info().expect("program info");
    let ids = info
        .map_ids()
        .expect("the program's map ids")
        .expect("a kernel that lists a program's maps");
    for id in ids {
        let data = MapData::from_id(id).expect("opening a map of the program");
        if data.info().expect("map info").name_as_str() == Some(name) {
            return Map::from_map_data(data).expect("a map type aya knows");
        }
    }
    panic!("the program uses no map named {name}");
}

/// The per-CPU array of outcome counters (`HB_COUNTERS`), read CPU by CPU.
pub struct PerCpuCounters(PerCpuArray<MapData, u64>);

impl PerCpuCounters {
    #[track_caller]
    pub fn of(prog: &Xdp) -> Self {
        Self(PerCpuArray::try_from(program_map(prog, COUNTERS_MAP)).expect("a per-CPU array"))
    }

    /// The counters of every possible CPU, indexed by CPU, then by
    /// `Counter as usize`.
    pub fn read(&self) -> Vec<[u64; Counter::COUNT]> {
        let mut by_cpu: Vec<[u64; Counter::COUNT]> = Vec::new();
        for c in Counter::ALL {
            let values = self.0.get(&(c as u32), 0).expect("reading a counter");
            by_cpu.resize(values.len(), [0; Counter::COUNT]);
            for (cpu, v) in values.iter().enumerate() {
                by_cpu[cpu][c as usize] = *v;
            }
        }
        by_cpu
    }
}

/// The host index (`HB_INDEX`, see hb-common's `index`): its entries,
/// bucket by bucket, read through the syscall (not the facade's mapping).
pub struct Index(Array<MapData, Bucket>);

impl Index {
    #[track_caller]
    pub fn of(prog: &Xdp) -> Self {
        Self(Array::try_from(program_map(prog, INDEX_MAP)).expect("an array"))
    }

    /// Every entry, by bucket then place (0: empty).
    pub fn read(&self) -> Vec<[u32; BUCKET_ENTRIES as usize]> {
        (0..self.0.len())
            .map(|i| {
                let b = self.0.get(&i, 0).expect("reading a bucket");
                std::array::from_fn(|at| (b[at / 2] >> ((at % 2) * 32)) as u32)
            })
            .collect()
    }
}
