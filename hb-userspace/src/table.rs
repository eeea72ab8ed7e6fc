//! Userspace side of the host table: how a sweep reads what the XDP program
//! stamped. Kept behind this one module because the layout will change for
//! fleet-scale sweeps.

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, Map, MapData};
use hb_common::{HostEntry, HostKey};

pub struct HostTable {
    map: HashMap<MapData, HostKey, HostEntry>,
}

impl HostTable {
    pub fn new(map: Map) -> Result<Self> {
        Ok(Self {
            map: HashMap::try_from(map).context("host table has an unexpected type")?,
        })
    }

    /// Calls `f` with every host in the table. Entries are only ever added,
    /// so a host missed by an iteration racing an insert shows up next time.
    pub fn for_each(&self, mut f: impl FnMut(HostKey, HostEntry)) -> Result<()> {
        for item in self.map.iter() {
            let (key, entry) = item.context("reading the host table")?;
            f(key, entry);
        }
        Ok(())
    }

    /// One host's entry, if it is in the table.
    pub fn get(&self, key: &HostKey) -> Option<HostEntry> {
        self.map.get(key, 0).ok()
    }
}
