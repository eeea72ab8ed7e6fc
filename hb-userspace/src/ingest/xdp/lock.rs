//! One collector per instance: `hb run` holds an exclusive lock on
//! `/run/hb/<instance>.lock` for as long as it lives, and the kernel drops
//! it when the process ends, however it ends (a zombie holds nothing, a
//! recycled pid holds nothing). Of simultaneous starts exactly one gets it.
//! `hb status` asks whether it is held without taking it; `hb detach` takes
//! it, so that no collector starts while it removes the pins.
//!
//! The lock is an open file description lock (`F_OFD_SETLK`): it belongs
//! to the open file, like `flock`, and unlike `flock` it can be tested
//! without being taken (`F_OFD_GETLK`), so `hb status` never makes a
//! starting `hb run` fail. The holder writes its pid into the file, for
//! messages only.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Seek as _, Write as _},
    os::{
        fd::AsRawFd as _,
        unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// The lock, held until dropped.
#[derive(Debug)]
pub struct Lock {
    file: File,
    path: PathBuf,
}

/// The lock is held by a live process: its pid, if it wrote it yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub pid: Option<u32>,
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "pid {pid}"),
            None => f.write_str("pid not written yet"),
        }
    }
}

fn whole_file(kind: libc::c_int) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

impl Lock {
    /// Takes the lock at `path` (created if need be), or says who holds it.
    pub fn acquire(path: &Path) -> Result<Result<Lock, Held>> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // A lock file removed between our open and our lock is not the
        // lock any more (the remover held it, a newcomer creates another):
        // try again on the new file. Bounded: each round means another
        // process took and released the lock meanwhile.
        for _ in 0..16 {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)
                .with_context(|| format!("opening the lock file {}", path.display()))?;
            let mut lock = whole_file(libc::F_WRLCK);
            // SAFETY: fcntl on a live fd with a valid struct flock.
            if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &mut lock) } != 0 {
                let e = io::Error::last_os_error();
                if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) {
                    return Ok(Err(Held { pid: pid_in(&file) }));
                }
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
            let ours = file.metadata()?;
            match fs::metadata(path) {
                Ok(now) if now.dev() == ours.dev() && now.ino() == ours.ino() => {}
                _ => continue,
            }
            let mut lock = Lock {
                file,
                path: path.to_owned(),
            };
            lock.write_pid()?;
            return Ok(Ok(lock));
        }
        bail!("could not lock {}: it keeps being replaced", path.display())
    }

    fn write_pid(&mut self) -> Result<()> {
        self.file.set_len(0)?;
        self.file.rewind()?;
        writeln!(self.file, "{}", std::process::id())
            .with_context(|| format!("writing {}", self.path.display()))
    }

    /// Removes the lock file, then lets go of the lock: whoever opened the
    /// file meanwhile finds it gone and opens a new one.
    pub fn remove(self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Whether a live process holds the lock at `path` (never takes it).
pub fn held(path: &Path) -> Result<Option<Held>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut lock = whole_file(libc::F_WRLCK);
    // SAFETY: fcntl on a live fd with a valid struct flock.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut lock) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("testing the lock {}", path.display()));
    }
    Ok((lock.l_type != libc::F_UNLCK as libc::c_short).then(|| Held { pid: pid_in(&file) }))
}

/// The pid the holder wrote into the lock file.
fn pid_in(mut file: &File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_testing_never_takes_it() {
        let dir = std::env::temp_dir().join(format!("hb-lock-{}", std::process::id()));
        let path = dir.join("x.lock");
        assert_eq!(held(&path).unwrap(), None);
        let lock = Lock::acquire(&path).unwrap().unwrap();
        let me = Held {
            pid: Some(std::process::id()),
        };
        // Another open file description is refused, and told who holds it.
        assert_eq!(Lock::acquire(&path).unwrap().unwrap_err(), me);
        assert_eq!(held(&path).unwrap(), Some(me));
        drop(lock);
        assert_eq!(held(&path).unwrap(), None);
        let lock = Lock::acquire(&path).unwrap().unwrap();
        lock.remove();
        assert!(!path.exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
