//! The reload scenario's inventory: a CSV of simulated hosts, rewritten
//! whole (a temporary file renamed over it, as an operator's tooling
//! would) before the collector is sent SIGHUP. Removed on drop.

use std::{
    fs,
    io::{BufWriter, Write as _},
    ops::Range,
    path::PathBuf,
};

use anyhow::{Context as _, Result};

use super::fleet::Fleet;

pub struct Inventory {
    dir: PathBuf,
    pub path: PathBuf,
}

impl Inventory {
    /// An inventory of hosts `hosts` (indices of `fleet`), in a directory
    /// named after `tag`.
    pub fn write(tag: &str, fleet: Fleet, hosts: Range<u32>) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("hbload-{tag}-inventory"));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let this = Self {
            path: dir.join("hosts.csv"),
            dir,
        };
        this.rewrite(fleet, hosts)?;
        Ok(this)
    }

    /// Replaces the file with one listing `hosts`.
    pub fn rewrite(&self, fleet: Fleet, hosts: Range<u32>) -> Result<()> {
        let tmp = self.path.with_extension("csv.tmp");
        let file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        writeln!(w, "address,group")?;
        for i in hosts {
            // Two groups, so that the reload also carries group counts.
            writeln!(w, "{},g{}", fleet.addr(i), i % 2)?;
        }
        w.into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &self.path).with_context(|| format!("writing {}", self.path.display()))
    }
}

impl Drop for Inventory {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
