//! `hb detach`: removes what a stopped `hb run` left in place on purpose (the
//! attached program and its pinned state), so that nothing of hb remains.

use anyhow::{Result, bail};

use crate::{cli::DetachArgs, ingest::xdp::pins};

pub fn detach(args: DetachArgs) -> Result<()> {
    let iface = &args.iface;
    if let Some(state) = pins::running(iface) {
        bail!(
            "hb run (pid {}) is watching {iface}: stop it with SIGTERM or Ctrl-C, which detaches it",
            state.pid
        );
    }
    let dir = pins::pin_dir(iface);
    if !dir.exists() {
        println!(
            "nothing of hb is attached to {iface} (no {})",
            dir.display()
        );
        return Ok(());
    }
    let link = pins::link_path(iface).exists();
    pins::remove(iface);
    if dir.exists() {
        bail!("could not remove {}: remove it by hand", dir.display());
    }
    if link {
        println!("detached hb from {iface} and removed its pinned state");
    } else {
        println!("removed hb's pinned state for {iface} (no program was attached)");
    }
    Ok(())
}
