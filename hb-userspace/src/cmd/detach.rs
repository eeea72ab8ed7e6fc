//! `hb detach`: removes what a stopped `hb run` left in place on purpose (the
//! attached program and its pinned state), so that nothing of hb remains.
//! It takes the instance's lock while it works, so no collector starts
//! meanwhile, and is refused while a live collector holds it (unless
//! `--force`).

use anyhow::{Result, bail};
use log::warn;

use crate::{
    cli::DetachArgs,
    ingest::xdp::{
        Bpffs, check_privileges, if_index,
        link::{self, Place},
        lock::Lock,
        pins,
    },
};

pub fn detach(args: DetachArgs) -> Result<()> {
    check_privileges("hb detach removes a BPF program, which")?;
    let iface = &args.iface;
    let inst = pins::Instance::new(iface, Bpffs::find(args.bpffs.as_deref())?)?;
    let lock = match Lock::acquire(&inst.lock_file())? {
        Ok(lock) => Some(lock),
        Err(held) if args.force => {
            warn!(
                "hb run ({held}) is watching {iface}: detaching anyway (--force); it keeps running without a program, and sees no heartbeats: stop it"
            );
            None
        }
        Err(held) => bail!(
            "hb run ({held}) is watching {iface}: stop it with SIGTERM or Ctrl-C, which detaches it (or `hb detach --force`)"
        ),
    };
    // Whatever happens next, a lock file of our own goes.
    let release = |lock: Option<Lock>| {
        if let Some(lock) = lock {
            lock.remove();
        }
    };
    if let Some(Place::Elsewhere { ifindex, program }) = link::place(&inst.link(), iface)? {
        release(lock);
        bail!(
            "{} is attached to another interface (index {ifindex}, program {program}), not to {iface} in this network namespace: hb leaves it alone; if no collector uses it, remove {} by hand",
            inst.link().display(),
            inst.dir().display()
        );
    }
    let dir = inst.dir();
    if !dir.exists() {
        let legacy = pins::remove_legacy(&inst);
        let state = inst.state_file();
        let _ = std::fs::remove_file(&state);
        let _ = std::fs::remove_file(inst.fleet_file());
        release(lock);
        if legacy? {
            println!(
                "detached an earlier hb from {iface} and removed its pinned state ({})",
                inst.legacy_dir().display()
            );
            return Ok(());
        }
        if if_index(iface).is_none() {
            bail!(
                "unknown interface `{iface}`: pick one from `ip link` (in this network namespace)"
            );
        }
        println!(
            "nothing of hb is attached to {iface} (no {})",
            dir.display()
        );
        return Ok(());
    }
    let link = inst.link().exists();
    pins::remove(&inst);
    release(lock);
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
