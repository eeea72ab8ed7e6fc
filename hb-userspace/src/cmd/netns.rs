//! `--netns NAME`: every subcommand can run in a named network namespace,
//! as `ip -n NAME` does. Only the network namespace changes (unlike
//! `ip netns exec`, which also gives the command a fresh `/sys`), so `hb`
//! sees the host's bpffs and mounts.

use std::{fs::File, io, os::fd::AsRawFd as _};

use anyhow::{Result, bail};

/// Moves the calling thread (the only one, at start) into the network
/// namespace `name`: `/run/netns/NAME`, or a path if it has a `/`.
pub fn enter(name: &str) -> Result<()> {
    let path = if name.contains('/') {
        name.to_owned()
    } else {
        format!("/run/netns/{name}")
    };
    let ns = match File::open(&path) {
        Ok(ns) => ns,
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "--netns {name}: no such network namespace (no {path}); `ip netns list` shows them"
        ),
        Err(e) => bail!("--netns {name}: opening {path}: {e}"),
    };
    // SAFETY: setns on a live fd; affects this thread, the only one.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EPERM) {
            bail!("--netns {name}: entering a network namespace needs root: run hb as root");
        }
        bail!("--netns {name}: {path} is not a network namespace ({e})");
    }
    Ok(())
}
