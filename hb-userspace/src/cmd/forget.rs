//! `hb forget`: clears one signed host's replay state in the pinned maps,
//! so that its next valid heartbeat is accepted whatever its sequence
//! number (a host shut out by a clock far ahead, or by a key holder that
//! signed a huge number as its id). The collector need not run, nor stop.

use anyhow::{Result, bail};
use log::info;

use crate::{
    cli::ForgetArgs,
    ingest::xdp::{Bpffs, check_privileges, pins},
    track::events::host_id,
};

pub fn forget(args: ForgetArgs) -> Result<()> {
    check_privileges("hb forget writes pinned BPF maps, which")?;
    let iface = &args.iface;
    let inst = pins::Instance::new(iface, Bpffs::find(args.bpffs.as_deref())?)?;
    let (_, table) = pins::open(&inst)?;
    let id = host_id(args.host_id);
    let Some(last) = table.forget(&pins::auth_map(&inst)?, args.host_id)? else {
        bail!(
            "the collector on {iface} knows no signed host with host id {id} (`hb status --iface {iface}` lists the hosts it knows)"
        );
    };
    info!(
        "host id {id}: replay state cleared (its last accepted sequence number was {last:#x}); its next valid heartbeat is accepted"
    );
    Ok(())
}
