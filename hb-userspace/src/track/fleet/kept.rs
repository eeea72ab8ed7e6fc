//! What the output was told about the fleet, kept in a file so that a
//! restarted collector (SIGUSR2, SIGKILL, a crash) carries on from it:
//! which inventoried hosts were reported `missing` (and since when hb
//! expected them), when the grace of the first fleet's hosts started, and
//! the hosts a reload added that are still waiting out their own grace.
//! Keyed by host key, not by inventory entry: an inventory edited between
//! two collectors keeps what it still lists.
//!
//! The tracker's discipline (see `track::tracker`): a `missing` line is
//! recorded here only once it is written, so what a collector decided but
//! did not write is decided again, and reported, by the next one. A host
//! recorded missing whose `recovered` line is written may stay in the file
//! for a while (rewriting it at every recovery would cost a million-host
//! fleet a file a sweep): the next collector finds it heard (the tracker's
//! told state knows it), and heard hosts are never missing.
//!
//! The file (`/run/hb/<instance>.fleet`) is rewritten whole, to a temporary
//! file renamed over it: a collector killed while writing leaves the last
//! one whole. Binary: a magic word, the epoch, two counts, then 24 bytes a
//! host (its key, the time); times are CLOCK_MONOTONIC, which /run (a
//! tmpfs) does not outlive.

use std::{
    fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use hashbrown::HashMap;
use hb_common::HostKey;
use log::warn;

use super::roll::Timed;

const MAGIC: [u8; 8] = *b"HBFLEET1";
const RECORD: usize = 24;

/// What a collector carries on from: the last one's kept state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Kept {
    /// When the grace of the first fleet's hosts started: hosts listed
    /// and never heard, with no time of their own, are expected since.
    pub epoch: Option<u64>,
    /// Hosts waiting out a grace that started later (added by a reload).
    pub waiting: Vec<Timed>,
    /// Hosts reported missing: since when hb expected them.
    pub missing: Vec<Timed>,
}

/// The kept state of a running collector, and its file.
#[derive(Debug)]
pub struct Keeper {
    path: PathBuf,
    epoch: Option<u64>,
    waiting: Vec<Timed>,
    /// Told missing (and, for a while, told recovered: see the module).
    missing: HashMap<HostKey, u64>,
    /// Entries of `missing` told recovered since the file was written.
    stale: usize,
    dirty: bool,
    /// The last write failed (said once until one succeeds).
    failing: bool,
}

impl Keeper {
    /// Keeps state in `path`; what it holds now is `read` (`None` where
    /// the collector does not carry on from an earlier one: the file is
    /// dropped).
    pub fn open(path: PathBuf, carry_on: bool) -> (Self, Option<Kept>) {
        let kept = if carry_on {
            match read(&path) {
                Ok(k) => k,
                Err(e) => {
                    warn!(
                        "{}: {e}; hosts never heard are expected afresh",
                        path.display()
                    );
                    None
                }
            }
        } else {
            let _ = fs::remove_file(&path);
            None
        };
        let mut this = Self {
            path,
            epoch: None,
            waiting: Vec::new(),
            missing: HashMap::new(),
            stale: 0,
            dirty: false,
            failing: false,
        };
        if let Some(k) = &kept {
            this.epoch = k.epoch;
            this.waiting.clone_from(&k.waiting);
            this.missing.extend(k.missing.iter().copied());
        }
        (this, kept)
    }

    /// A fleet was adopted: its epoch and the hosts waiting with a grace
    /// of their own; `listed` says whether the fleet lists a key (hosts it
    /// no longer lists are forgotten).
    pub fn adopted(
        &mut self,
        epoch: Option<u64>,
        waiting: Vec<Timed>,
        listed: impl Fn(&HostKey) -> bool,
    ) {
        self.epoch = epoch;
        self.waiting = waiting;
        self.missing.retain(|k, _| listed(k));
        self.stale = 0;
        self.dirty = true;
    }

    /// A `missing` line about `key` was written.
    pub fn told_missing(&mut self, key: HostKey, since: u64) {
        self.missing.insert(key, since);
        self.dirty = true;
    }

    /// A `recovered` line about `key`, reported missing, was written.
    pub fn told_found(&mut self, key: &HostKey) {
        if self.missing.remove(key).is_some() {
            self.stale += 1;
        }
    }

    /// Writes the file if what it holds changed (or enough of it is stale).
    pub fn flush(&mut self) {
        if !self.dirty && (self.stale < 1024 || self.stale < self.missing.len()) {
            return;
        }
        let kept = Kept {
            epoch: self.epoch,
            waiting: self.waiting.clone(),
            missing: self.missing.iter().map(|(k, s)| (*k, *s)).collect(),
        };
        // Without an inventory there is nothing to keep: no file.
        let done = if kept == Kept::default() {
            match fs::remove_file(&self.path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        } else {
            write(&self.path, &kept)
        };
        match done {
            Ok(()) => {
                self.dirty = false;
                self.stale = 0;
                self.failing = false;
            }
            Err(e) => {
                if !self.failing {
                    warn!(
                        "writing {}: {e}; a restarted collector may report missing hosts again",
                        self.path.display()
                    );
                }
                self.failing = true;
            }
        }
    }

    /// When the grace of the first fleet's hosts started, if it did.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }
}

/// The kept state in `path`; `None` if there is none.
pub fn read(path: &Path) -> io::Result<Option<Kept>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    if bytes.len() < 32 || bytes[..8] != MAGIC {
        return Err(bad("not an hb fleet state file"));
    }
    let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    let epoch = word(8);
    let (nw, nm) = (word(16) as usize, word(24) as usize);
    if bytes.len() != 32 + (nw + nm) * RECORD {
        return Err(bad("truncated"));
    }
    let records = |from: usize, n: usize| -> Vec<Timed> {
        (0..n)
            .map(|i| {
                let at = from + i * RECORD;
                let mut addr = [0; 16];
                addr.copy_from_slice(&bytes[at..at + 16]);
                (HostKey::from_ipv6(addr), word(at + 16))
            })
            .collect()
    };
    Ok(Some(Kept {
        epoch: (epoch != 0).then_some(epoch),
        waiting: records(32, nw),
        missing: records(32 + nw * RECORD, nm),
    }))
}

/// Writes `kept` to `path` whole: a reader sees the old file or this one.
pub fn write(path: &Path, kept: &Kept) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(32 + (kept.waiting.len() + kept.missing.len()) * RECORD);
    bytes.extend_from_slice(&MAGIC);
    for w in [
        kept.epoch.unwrap_or(0),
        kept.waiting.len() as u64,
        kept.missing.len() as u64,
    ] {
        bytes.extend_from_slice(&w.to_le_bytes());
    }
    for (key, at) in kept.waiting.iter().chain(&kept.missing) {
        bytes.extend_from_slice(&key.addr);
        bytes.extend_from_slice(&at.to_le_bytes());
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    drop(f);
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> HostKey {
        HostKey::from_ipv4([198, 18, 0, n])
    }

    #[test]
    fn what_is_written_reads_back() {
        let dir = std::env::temp_dir().join(format!("hb-kept-{}", std::process::id()));
        let path = dir.join("x.fleet");
        let kept = Kept {
            epoch: Some(7),
            waiting: vec![(key(1), 9)],
            missing: vec![(key(2), 7), (key(3), 8)],
        };
        write(&path, &kept).unwrap();
        assert_eq!(read(&path).unwrap(), Some(kept));
        // A fresh collector drops it.
        let (_, k) = Keeper::open(path.clone(), false);
        assert_eq!(k, None);
        assert!(!path.exists());
        assert_eq!(read(&path).unwrap(), None);
        fs::write(&path, b"HBFLEET1junk").unwrap();
        assert!(read(&path).is_err());
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn only_what_was_told_is_kept() {
        let dir = std::env::temp_dir().join(format!("hb-kept2-{}", std::process::id()));
        let path = dir.join("x.fleet");
        let (mut k, _) = Keeper::open(path.clone(), true);
        k.adopted(Some(5), vec![], |_| true);
        k.told_missing(key(1), 5);
        k.told_missing(key(2), 5);
        k.flush();
        let (mut k, kept) = Keeper::open(path.clone(), true);
        let mut missing = kept.unwrap().missing;
        missing.sort();
        assert_eq!(missing, [(key(1), 5), (key(2), 5)]);
        // A recovery is not worth a write on its own; a reload drops hosts
        // no longer listed.
        k.told_found(&key(1));
        k.flush();
        assert_eq!(read(&path).unwrap().unwrap().missing.len(), 2);
        k.adopted(Some(5), vec![(key(3), 9)], |h| *h != key(2));
        k.flush();
        let kept = read(&path).unwrap().unwrap();
        assert_eq!(kept.missing, []);
        assert_eq!(kept.waiting, [(key(3), 9)]);
        let _ = fs::remove_dir_all(dir);
    }
}
