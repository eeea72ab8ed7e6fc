//! Loads the embedded XDP program with its load-time settings and attaches it.

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{ProgramError, Xdp, XdpMode},
};
use hb_common::{
    ALLOC_MAP, AUTH_MAP, AUTH_MODE_GLOBAL, AuthMode, BEATS_MAP, COUNTERS_MAP, HINT_MASK_GLOBAL,
    HINTS_MAP, HOST_MAPS, LAST_SEEN_MAP, PASS_GLOBAL, PORT_GLOBAL, PROGRAM, SIP_STATE_GLOBAL,
    SLOT_KEYS_MAP, SLOTS_MAP, auth::KEY_LEN, sip::SipState,
};
use log::{info, warn};

use crate::{
    cli::XdpModeArg,
    counters::Counters,
    table::{HostTable, TableMaps},
};

/// The object built by build.rs from hb-ebpf.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hb"));

/// Load-time settings of the program.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub port: u16,
    pub pass_heartbeats: bool,
    pub max_hosts: u32,
}

/// Authenticated heartbeats: the fleet key, and whether bare `PyHB` is
/// refused.
#[derive(Clone, Copy)]
pub struct AuthSettings {
    pub key: [u8; KEY_LEN],
    pub require: bool,
}

impl std::fmt::Debug for AuthSettings {
    // The key stays out of logs and panic messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("require", &self.require)
            .finish_non_exhaustive()
    }
}

/// What the program is told about authentication.
pub fn auth_mode(auth: Option<&AuthSettings>) -> AuthMode {
    match auth {
        None => AuthMode::Off,
        Some(a) if a.require => AuthMode::Required,
        Some(_) => AuthMode::Optional,
    }
}

/// The loaded program and its maps. Dropping it detaches the program.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub table: HostTable,
    pub counters: Counters,
}

/// Loads and verifies the program; does not attach it.
pub fn load(settings: Settings) -> Result<Loaded> {
    load_with(settings, None, None)
}

/// As `load`, verifying signed heartbeats under `auth`'s key.
pub fn load_auth(settings: Settings, auth: Option<AuthSettings>) -> Result<Loaded> {
    load_with(settings, auth.as_ref(), None)
}

/// As `load_auth`, and pins the maps in `pin_dir` (see `pins`) for `hb status`.
pub fn load_with(
    settings: Settings,
    auth: Option<&AuthSettings>,
    pin_dir: Option<&std::path::Path>,
) -> Result<Loaded> {
    let pass = u8::from(settings.pass_heartbeats);
    // Hints: a power of two at least as large as the table, so that most
    // hosts have a hint of their own.
    let hints = settings
        .max_hosts
        .checked_next_power_of_two()
        .unwrap_or(1 << 31);
    let hint_mask = hints - 1;
    let port_net = settings.port.to_be();
    let mode = auth_mode(auth) as u8;
    // The key itself never reaches the kernel, only SipHash's state after
    // it (from which the key follows, so it is as secret).
    let sip = auth.map_or([0; 4], |a| SipState::after_header(&a.key).0);
    let mut loader = EbpfLoader::new();
    loader
        .override_global(PORT_GLOBAL, &port_net, true)
        .override_global(PASS_GLOBAL, &pass, true)
        .override_global(HINT_MASK_GLOBAL, &hint_mask, true)
        .override_global(AUTH_MODE_GLOBAL, &mode, true)
        .override_global(SIP_STATE_GLOBAL, &sip, true)
        .map_max_entries(HINTS_MAP, hints)
        // Per-host replay state only costs memory where it is used.
        .map_max_entries(
            AUTH_MAP,
            if auth.is_some() {
                settings.max_hosts
            } else {
                1
            },
        );
    for map in HOST_MAPS {
        loader.map_max_entries(map, settings.max_hosts);
    }
    let mut ebpf = loader
        .load(OBJECT)
        .context("loading the eBPF object (are you root, on a kernel with BPF and BTF?)")?;
    let program: &mut Xdp = xdp(&mut ebpf)?;
    program
        .load()
        .context("the kernel refused the XDP program")?;
    let mut take = |name: &str| {
        ebpf.take_map(name)
            .with_context(|| format!("no map {name} in the object"))
    };
    let maps = TableMaps {
        slots: take(SLOTS_MAP)?,
        last_seen: take(LAST_SEEN_MAP)?,
        beats: take(BEATS_MAP)?,
        slot_keys: take(SLOT_KEYS_MAP)?,
        alloc: take(ALLOC_MAP)?,
        auth: take(AUTH_MAP)?,
    };
    let counters = take(COUNTERS_MAP)?;
    if let Some(dir) = pin_dir {
        crate::pins::pin(
            dir,
            &[
                (SLOTS_MAP, &maps.slots),
                (LAST_SEEN_MAP, &maps.last_seen),
                (BEATS_MAP, &maps.beats),
                (SLOT_KEYS_MAP, &maps.slot_keys),
                (ALLOC_MAP, &maps.alloc),
                (AUTH_MAP, &maps.auth),
                (COUNTERS_MAP, &counters),
            ],
        )?;
    }
    let table = HostTable::new(maps)?;
    let counters = Counters::new(counters)?;
    Ok(Loaded {
        ebpf,
        table,
        counters,
    })
}

pub fn xdp(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    Ok(ebpf
        .program_mut(PROGRAM)
        .context("no XDP program in the object")?
        .try_into()?)
}

/// Attaches to `iface`; returns the mode that was used.
pub fn attach(loaded: &mut Loaded, iface: &str, mode: XdpModeArg) -> Result<XdpMode> {
    let program = xdp(&mut loaded.ebpf)?;
    let try_mode = |program: &mut Xdp, m: XdpMode| {
        program.attach(iface, m).map(|_| m).map_err(|e| match e {
            ProgramError::UnknownInterface { .. } => anyhow::anyhow!(
                "unknown interface `{iface}`: pick one from `ip link` (in this network namespace)"
            ),
            e => anyhow::Error::new(e).context(format!("attaching XDP ({m:?} mode) to {iface}")),
        })
    };
    let mode = match mode {
        XdpModeArg::Native => try_mode(program, XdpMode::Driver)?,
        XdpModeArg::Skb => try_mode(program, XdpMode::Skb)?,
        XdpModeArg::Auto => match try_mode(program, XdpMode::Driver) {
            Ok(m) => m,
            Err(e) if e.to_string().starts_with("unknown interface") => return Err(e),
            Err(e) => {
                warn!(
                    "native XDP unavailable on {iface} ({e:#}); falling back to generic (skb) mode, which costs more per packet"
                );
                try_mode(program, XdpMode::Skb)?
            }
        },
    };
    info!("attached to {iface} in {} mode", mode_name(mode));
    Ok(mode)
}

pub fn mode_name(mode: XdpMode) -> &'static str {
    match mode {
        XdpMode::Driver => "native",
        XdpMode::Skb => "generic (skb)",
        XdpMode::Hardware => "hardware",
        XdpMode::Default => "default",
    }
}

/// Fails early with a clear message where hb cannot work at all.
pub fn check_environment() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "hb run loads an XDP program, which needs root (or CAP_BPF and CAP_NET_ADMIN): run it with sudo"
        );
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!(
            "this kernel exposes no BTF (/sys/kernel/btf/vmlinux): hb needs a kernel with CONFIG_DEBUG_INFO_BTF and XDP"
        );
    }
    Ok(())
}
