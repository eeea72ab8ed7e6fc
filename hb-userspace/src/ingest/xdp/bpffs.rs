//! Which bpffs holds the pins. It must be one that outlives `hb run`, or a
//! restart cannot carry on: `ip netns exec` gives each command a fresh
//! `/sys` without bpffs, in a mount namespace of its own, and a bpffs hb
//! mounted there would vanish with the command. So:
//!
//! 1. `--bpffs DIR`, which must be a bpffs mount;
//! 2. `/sys/fs/bpf`, if a bpffs is mounted there; where none is, but PID 1
//!    or an ancestor of hb in another mount namespace has one there (the
//!    host's, seen from `ip netns exec`), hb first joins that mount
//!    namespace (`join_host_mounts`, at start) and so behaves as if started
//!    in it;
//! 3. for `hb run` only: a bpffs mounted at `/sys/fs/bpf` by hb. If hb's
//!    mount namespace is its own (not its parent's, or hb is PID 1), that
//!    mount goes away with hb: `private`, and hb says so at start.
//!
//! `hb status` and `hb detach` make the same choice, never mounting, so
//! they find what `hb run` pinned whether or not they run under
//! `ip netns exec`.

use std::{
    fs::{self, File},
    io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use log::info;

/// Where bpffs is normally mounted.
pub const SYS_FS_BPF: &str = "/sys/fs/bpf";
/// `statfs.f_type` of a bpffs.
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;

/// The bpffs that holds the pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bpffs {
    /// Its mount point.
    pub root: PathBuf,
    /// Whether a bpffs is mounted there (`hb status` and `hb detach` never
    /// mount one; nothing is pinned where there is none).
    pub present: bool,
    /// Mounted only in hb's own mount namespace: the pins go away with hb.
    pub private: bool,
}

impl Bpffs {
    /// The bpffs to use, without mounting one: `explicit`, else
    /// /sys/fs/bpf (`present` false if no bpffs is mounted there).
    pub fn find(explicit: Option<&Path>) -> Result<Self> {
        if let Some(dir) = explicit {
            if !is_bpffs(dir) {
                bail!(
                    "--bpffs {}: no bpffs is mounted there (mount one with `mount -t bpf bpffs {}`, or leave out --bpffs)",
                    dir.display(),
                    dir.display()
                );
            }
            return Ok(Self::at(dir, true));
        }
        Ok(Self::at(
            Path::new(SYS_FS_BPF),
            is_bpffs(Path::new(SYS_FS_BPF)),
        ))
    }

    /// As `find`, mounting bpffs at /sys/fs/bpf where none is mounted.
    pub fn find_or_mount(explicit: Option<&Path>) -> Result<Self> {
        let found = Self::find(explicit)?;
        if found.present {
            return Ok(found);
        }
        mount()?;
        Ok(Self {
            private: own_mount_namespace(),
            ..Self::at(Path::new(SYS_FS_BPF), true)
        })
    }

    fn at(root: &Path, present: bool) -> Self {
        Self {
            root: root.to_owned(),
            present,
            private: false,
        }
    }
}

/// Where this mount namespace has no bpffs at /sys/fs/bpf (a fresh /sys
/// from `ip netns exec`) and PID 1 or the nearest ancestor in another
/// mount namespace has one, joins that mount namespace, so that the pins
/// are the host's and outlive hb. Keeps the working directory. Returns the
/// pid whose namespace was joined. Call while the process has one thread.
/// Without the privileges to join, does nothing (the command then says
/// which privileges it needs).
pub fn join_host_mounts() -> Result<Option<u32>> {
    if is_bpffs(Path::new(SYS_FS_BPF)) {
        return Ok(None);
    }
    let ino = |pid: &str| fs::metadata(format!("/proc/{pid}/ns/mnt")).map(|m| m.ino());
    let own = ino("self").context("reading /proc/self/ns/mnt")?;
    let Some(pid) = std::iter::once(1)
        .chain(ancestors())
        .filter(|&pid| pid != std::process::id())
        .find(|pid| {
            ino(&pid.to_string()).is_ok_and(|theirs| theirs != own)
                && is_bpffs(&Path::new(&format!("/proc/{pid}/root")).join("sys/fs/bpf"))
        })
    else {
        return Ok(None);
    };
    let ns = File::open(format!("/proc/{pid}/ns/mnt"))
        .with_context(|| format!("opening /proc/{pid}/ns/mnt"))?;
    let cwd = File::open(".").ok();
    // SAFETY: setns on a live fd; the process has one thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EPERM) {
            return Ok(None);
        }
        return Err(e).with_context(|| {
            format!("joining the mount namespace of pid {pid}, which has the host's bpffs")
        });
    }
    if let Some(cwd) = cwd {
        // SAFETY: fchdir on a live directory fd.
        unsafe { libc::fchdir(cwd.as_raw_fd()) };
    }
    Ok(Some(pid))
}

/// This process's ancestors, nearest first (at most 64).
fn ancestors() -> impl Iterator<Item = u32> {
    let mut pid = std::process::id();
    std::iter::from_fn(move || {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let ppid = stat.rsplit_once(") ")?.1.split_whitespace().nth(1)?;
        pid = ppid.parse().ok().filter(|&p| p != 0)?;
        Some(pid)
    })
    .take(64)
}

fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut fs = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: a valid C string and a buffer for one struct statfs.
    if unsafe { libc::statfs(c.as_ptr(), fs.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: statfs succeeded, so it filled the struct.
    let f_type = unsafe { fs.assume_init() }.f_type;
    // f_type's type varies by target; the magic is 32 bits.
    f_type as u64 & 0xffff_ffff == BPF_FS_MAGIC
}

/// Whether hb's mount namespace dies with it, as far as can be told: hb is
/// PID 1 of its PID namespace, or its parent is in another mount namespace
/// (`ip netns exec`, `unshare --mount`, a service with private mounts).
fn own_mount_namespace() -> bool {
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    if parent == 0 || std::process::id() == 1 {
        return true;
    }
    let ino = |p: String| fs::metadata(p).map(|m| m.ino()).ok();
    match (
        ino("/proc/self/ns/mnt".into()),
        ino(format!("/proc/{parent}/ns/mnt")),
    ) {
        (Some(own), Some(theirs)) => own != theirs,
        _ => false,
    }
}

/// Mounts bpffs at /sys/fs/bpf.
fn mount() -> Result<()> {
    fs::create_dir_all(SYS_FS_BPF).with_context(|| format!("creating {SYS_FS_BPF}"))?;
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
        return Err(std::io::Error::last_os_error()).context(
            "bpffs is not mounted at /sys/fs/bpf and mounting it failed; mount it with `mount -t bpf bpffs /sys/fs/bpf`",
        );
    }
    info!("mounted bpffs at {SYS_FS_BPF}");
    Ok(())
}
