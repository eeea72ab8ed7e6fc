//! The program's per-CPU outcome counters, summed over CPUs.

use anyhow::{Context as _, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use hb_common::Counter;

use crate::track::table::Counts;

pub struct Counters {
    map: PerCpuArray<MapData, u64>,
}

impl Counters {
    pub fn new(map: Map) -> Result<Self> {
        Ok(Self {
            map: PerCpuArray::try_from(map).context("counters map has an unexpected type")?,
        })
    }

    /// Current totals, indexed by `Counter as usize`.
    pub fn read(&self) -> Result<Counts> {
        let mut totals = [0u64; Counter::COUNT];
        for (i, total) in totals.iter_mut().enumerate() {
            let per_cpu = self
                .map
                .get(&(i as u32), 0)
                .with_context(|| format!("reading counter {}", Counter::ALL[i].name()))?;
            *total = per_cpu.iter().sum();
        }
        Ok(totals)
    }
}
