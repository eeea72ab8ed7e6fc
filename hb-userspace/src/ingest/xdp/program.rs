//! Loads the embedded XDP program with its load-time settings and attaches it.

use anyhow::{Context as _, Result, bail};
use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData},
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use hb_common::{
    ALLOC_MAP, ANY_DEST_GLOBAL, AUTH_MAP, AUTH_MODE_GLOBAL, AuthMode, BARE_MAP, BEATS_MAP,
    CLAIM_MAP, COUNTERS_MAP, EPOCH_GLOBAL, FREE_MAP, HOST_MAPS, INDEX_MAP, INDEX_MASK_GLOBAL,
    INDEX_SEED_GLOBAL, LAST_SEEN_MAP, LOCAL_SET_SECTION, MAX_BARE_GLOBAL, MAX_HOSTS_GLOBAL,
    PAIRED_MAPS, PASS_GLOBAL, PORT_GLOBAL, PROGRAM, SIP_STATE_GLOBAL, SLOT_BITS_GLOBAL,
    SLOT_KEYS_MAP, TIMING_MAP, TRACKER_MAP,
    auth::{self, KEY_LEN},
    index,
};
use log::{info, warn};

use super::{
    link::{self, Place},
    local::LocalMaps,
    pins,
    table::{HostTable, TableMaps, TrackerWords},
};
use crate::track::tracker;

/// The object built by build.rs from hb-ebpf.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hb"));

/// Load-time settings of the program.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub port: u16,
    pub pass_heartbeats: bool,
    pub max_hosts: u32,
    /// How many bare hosts (known by address) the table takes; `None`:
    /// see [`default_max_bare_hosts`].
    pub max_bare_hosts: Option<u32>,
    /// `--any-destination`: heartbeats to any MAC and address are taken.
    pub any_destination: bool,
    /// The epoch of a new table (CLOCK_MONOTONIC ns its ticks count from);
    /// `None`: now. A pinned table keeps its own. For tests of the ticks'
    /// wrap-around.
    pub epoch_ns: Option<u64>,
    /// Other programs of the object to load on the same maps, for
    /// benchmarks (such as [`EVERY_FOLD_PROGRAM`](hb_common::EVERY_FOLD_PROGRAM)):
    /// only possible before the table's maps are mapped and their
    /// descriptors closed. `hb run` loads none.
    pub also_load: &'static [&'static str],
}

/// The bare hosts' share of a table of `max_hosts` by default: half with a
/// key that still accepts bare `PyHB` (so signed hosts always find the
/// other half, whatever spoofed sources send), the whole table otherwise
/// (without a key every host is bare; with `--require-auth` none is).
pub fn default_max_bare_hosts(max_hosts: u32, mode: AuthMode) -> u32 {
    match mode {
        AuthMode::Optional => max_hosts.div_ceil(2),
        AuthMode::Off | AuthMode::Required => max_hosts,
    }
}

impl Default for Settings {
    /// `hb run`'s defaults.
    fn default() -> Self {
        Self {
            port: hb_common::DEFAULT_PORT,
            pass_heartbeats: false,
            max_hosts: hb_common::DEFAULT_MAX_HOSTS,
            max_bare_hosts: None,
            any_destination: false,
            epoch_ns: None,
            also_load: &[],
        }
    }
}

/// How the program is attached to the interface.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// Native, else generic (skb) with a warning.
    Auto,
    /// In the driver: the cheapest per packet.
    Native,
    /// Generic (skb): works on every interface, costs more per packet.
    Skb,
}

/// Why attaching failed, where the caller decides on the reason.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("unknown interface `{0}`: pick one from `ip link` (in this network namespace)")]
    UnknownInterface(String),
    #[error(
        "{} is attached to another interface (index {ifindex}, program {program}), not to {iface} in this network namespace: hb leaves it alone",
        pin.display()
    )]
    Foreign {
        pin: std::path::PathBuf,
        iface: String,
        ifindex: u32,
        program: u32,
    },
    #[error("attaching XDP ({mode:?} mode) to {iface}")]
    Refused {
        iface: String,
        mode: XdpMode,
        #[source]
        source: ProgramError,
    },
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

/// The loaded program and its maps. Dropping it detaches the program,
/// unless its link is pinned (see `pins`).
pub struct Loaded {
    pub ebpf: Ebpf,
    /// The host table, with the outcome counters.
    pub table: HostTable,
    /// The tracker's state map (`HB_TRACKER`), `tracker_words` long.
    pub tracker: Option<Map>,
    pub tracker_words: usize,
    /// What the program takes as addressed to this collector.
    pub local: LocalMaps,
}

/// Loads and verifies the program; does not attach it.
pub fn load(settings: Settings) -> Result<Loaded> {
    load_with(settings, None, None)
}

/// As `load`, verifying signed heartbeats under `auth`'s key.
pub fn load_auth(settings: Settings, auth: Option<AuthSettings>) -> Result<Loaded> {
    load_with(settings, auth.as_ref(), None)
}

/// As `load_auth`, with every map pinned in `maps_dir`, reusing the maps
/// already pinned there: a new collector carries on with the table, the
/// counters, the replay state and the tracker state of the last one. Their
/// sizes win over `settings`.
pub fn load_with(
    settings: Settings,
    auth: Option<&AuthSettings>,
    maps_dir: Option<&Path>,
) -> Result<Loaded> {
    let pinned = match maps_dir {
        Some(dir) => pinned_sizes(dir)?,
        None => None,
    };
    let (max_hosts, epoch, seed) = match pinned {
        Some((max_hosts, epoch, seed)) => {
            if max_hosts != settings.max_hosts {
                warn!(
                    "--max-hosts {} differs from the pinned table's {max_hosts}: keeping {max_hosts} and the hosts in it (`hb detach` first to start over with a new size)",
                    settings.max_hosts
                );
            }
            (max_hosts, epoch, seed)
        }
        None => (
            settings.max_hosts,
            settings.epoch_ns.unwrap_or_else(crate::clock::monotonic_ns),
            random_seed()?,
        ),
    };
    if max_hosts > index::MAX_HOSTS {
        bail!(
            "--max-hosts {max_hosts} is more than the host table takes ({})",
            index::MAX_HOSTS
        );
    }
    let buckets = index::buckets(max_hosts);
    let (index_mask, slot_bits) = (buckets - 1, index::slot_bits(max_hosts));
    // Per-host replay state only costs memory where it is used.
    let auth_entries = if auth.is_some() { max_hosts } else { 1 };
    if let Some(dir) = maps_dir {
        let pin = dir.join(AUTH_MAP);
        if let Ok(info) = aya::maps::MapInfo::from_pin(&pin)
            && info.max_entries() != auth_entries
        {
            // Authentication turned on or off since the pins were made:
            // a fresh replay state (each host's next signed heartbeat is
            // then accepted on its MAC alone).
            info!("authentication changed since the last collector: starting a new replay state");
            std::fs::remove_file(&pin).with_context(|| format!("removing {}", pin.display()))?;
        }
    }
    let tracker_words = tracker::state_words(max_hosts as usize);
    let tracker_entries = u32::try_from(tracker_words).context("--max-hosts too large")?;
    let port_net = settings.port.to_be();
    let pass = u8::from(settings.pass_heartbeats);
    let any_dest = u8::from(settings.any_destination);
    let mode = auth_mode(auth);
    let max_bare = settings
        .max_bare_hosts
        .unwrap_or_else(|| default_max_bare_hosts(max_hosts, mode))
        .min(max_hosts);
    let mode = mode as u8;
    // The key itself never reaches the kernel, only SipHash's state after
    // it (from which the key follows, so it is as secret).
    let sip = auth.map_or([0; 4], |a| auth::state_after_header(&a.key).0);
    let mut loader = EbpfLoader::new();
    loader
        .override_global(PORT_GLOBAL, &port_net, true)
        .override_global(PASS_GLOBAL, &pass, true)
        .override_global(ANY_DEST_GLOBAL, &any_dest, true)
        .override_global(INDEX_MASK_GLOBAL, &index_mask, true)
        .override_global(SLOT_BITS_GLOBAL, &slot_bits, true)
        .override_global(MAX_HOSTS_GLOBAL, &max_hosts, true)
        .override_global(EPOCH_GLOBAL, &epoch, true)
        .override_global(INDEX_SEED_GLOBAL, &seed, true)
        .override_global(MAX_BARE_GLOBAL, &max_bare, true)
        .override_global(AUTH_MODE_GLOBAL, &mode, true)
        .override_global(SIP_STATE_GLOBAL, &sip, true)
        .map_max_entries(INDEX_MAP, buckets)
        .map_max_entries(AUTH_MAP, auth_entries)
        .map_max_entries(TRACKER_MAP, tracker_entries);
    for map in HOST_MAPS {
        loader.map_max_entries(map, max_hosts);
    }
    // Two slots an element (see hb-ebpf's table.rs).
    for map in PAIRED_MAPS {
        loader.map_max_entries(map, max_hosts.div_ceil(2).max(1));
    }
    if let Some(dir) = maps_dir {
        for name in pins::PINNED_MAPS {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    let mut ebpf = loader.load(OBJECT).map_err(|e| {
        let e = anyhow::Error::new(e);
        if pins::is_permission_error(&e) {
            e.context("loading the eBPF object needs root: run hb as root or with CAP_BPF and CAP_NET_ADMIN")
        } else {
            e.context("loading the eBPF object (hb needs a kernel with BPF, XDP and BTF)")
        }
    })?;
    let program: &mut Xdp = xdp_program(&mut ebpf)?;
    program
        .load()
        .context("the kernel refused the XDP program")?;
    for &name in settings.also_load {
        let p: &mut Xdp = ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name} in the object"))?
            .try_into()
            .with_context(|| format!("{name} is not an XDP program"))?;
        p.load()
            .with_context(|| format!("the kernel refused program {name}"))?;
    }
    let mut take = |name: &str| {
        ebpf.take_map(name)
            .with_context(|| format!("no map {name} in the object"))
    };
    let mut alloc = take(ALLOC_MAP)?;
    if pinned.is_none() {
        // A new table: its epoch and index seed, pinned with it (before the
        // program is attached, so before any stamp).
        let mut a: aya::maps::Array<&mut MapData, u64> =
            aya::maps::Array::try_from(&mut alloc).context("the slot allocator")?;
        a.set(1, epoch, 0).context("recording the table's epoch")?;
        a.set(2, seed[0], 0).context("recording the table's seed")?;
        a.set(3, seed[1], 0).context("recording the table's seed")?;
    }
    let maps = TableMaps {
        index: take(INDEX_MAP)?,
        claim: take(CLAIM_MAP)?,
        last_seen: take(LAST_SEEN_MAP)?,
        beats: take(BEATS_MAP)?,
        timing: take(TIMING_MAP)?,
        slot_keys: take(SLOT_KEYS_MAP)?,
        alloc,
        auth: take(AUTH_MAP)?,
        counters: take(COUNTERS_MAP)?,
        forgetting: Some((take(FREE_MAP)?, take(BARE_MAP)?)),
    };
    let tracker = Some(take(TRACKER_MAP)?);
    let local = LocalMaps::new(take(LOCAL_SET_SECTION)?)?;
    let table = HostTable::new(maps)?;
    Ok(Loaded {
        ebpf,
        table,
        tracker,
        tracker_words,
        local,
    })
}

/// A new table's index seed, from the kernel's random source.
fn random_seed() -> Result<[u64; 2]> {
    let mut seed = [0u64; 2];
    // SAFETY: writes at most the 16 bytes of `seed`.
    let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), size_of_val(&seed), 0) };
    if n != size_of_val(&seed) as isize {
        return Err(std::io::Error::last_os_error()).context("getrandom for the index seed");
    }
    Ok(seed)
}

/// Capacity, epoch and index seed of the table pinned in `dir`, if any.
fn pinned_sizes(dir: &Path) -> Result<Option<(u32, u64, [u64; 2])>> {
    if !dir.join(SLOT_KEYS_MAP).exists() {
        return Ok(None);
    }
    let open = |name: &str| {
        MapData::from_pin(dir.join(name))
            .with_context(|| format!("opening pinned {name} in {}", dir.display()))
    };
    let max_hosts = open(SLOT_KEYS_MAP)?.info()?.max_entries();
    let alloc = Map::Array(open(ALLOC_MAP)?);
    let alloc: aya::maps::Array<&MapData, u64> =
        aya::maps::Array::try_from(&alloc).context("the pinned slot allocator")?;
    let epoch = alloc
        .get(&1, 0)
        .context("reading the pinned table's epoch")?;
    let seed = [alloc.get(&2, 0), alloc.get(&3, 0)];
    let [Ok(s0), Ok(s1)] = seed else {
        bail!(
            "the pinned table in {} has no index seed: run `hb detach` to start a new one",
            dir.display()
        );
    };
    Ok(Some((max_hosts, epoch, [s0, s1])))
}

impl Loaded {
    /// The tracker's state words, mapped; taken once.
    pub fn take_tracker_words(&mut self) -> Result<TrackerWords> {
        let map = self.tracker.take().context("tracker state already taken")?;
        TrackerWords::new(map, self.tracker_words)
    }
}

/// The XDP program in a loaded object.
pub fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    Ok(ebpf
        .program_mut(PROGRAM)
        .context("no XDP program in the object")?
        .try_into()?)
}

/// How the program came to be attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// Attached anew in this mode; `pinned`: its link is pinned (else it
    /// detaches when this process ends).
    Fresh { mode: XdpMode, pinned: bool },
    /// Replaced the program on a pinned link in one step: the interface was
    /// never without a heartbeat filter.
    TookOver,
}

/// Attaches to `iface`. With `link_pin`, a link pinned there by an earlier
/// collector gets this program in its place atomically, if it is attached
/// to `iface` in this network namespace (a link attached elsewhere is left
/// alone, and attaching fails); otherwise the new link is pinned there, so
/// that the program outlives this process.
pub fn attach(
    loaded: &mut Loaded,
    iface: &str,
    mode: AttachMode,
    link_pin: Option<&Path>,
) -> Result<Attached> {
    let program = xdp_program(&mut loaded.ebpf)?;
    if let Some(pin) = link_pin {
        match link::place(pin, iface)? {
            Some(Place::Here) => match take_over(program, pin) {
                Ok(()) => {
                    info!("took over the program attached to {iface}: no heartbeat missed");
                    return Ok(Attached::TookOver);
                }
                Err(e) => {
                    warn!(
                        "cannot take over the pinned link {} ({e:#}): detaching it and attaching anew; heartbeats arriving meanwhile reach the stack",
                        pin.display()
                    );
                    let _ = std::fs::remove_file(pin);
                }
            },
            Some(Place::Gone) => {
                info!(
                    "the link pinned at {} lost its interface (deleted since): attaching anew",
                    pin.display()
                );
                let _ = std::fs::remove_file(pin);
            }
            Some(Place::Elsewhere { ifindex, program }) => {
                return Err(AttachError::Foreign {
                    pin: pin.to_owned(),
                    iface: iface.into(),
                    ifindex,
                    program,
                }
                .into());
            }
            None => {}
        }
    }
    let try_mode = |program: &mut Xdp, m: XdpMode| {
        program
            .attach(iface, m)
            .map(|id| (m, id))
            .map_err(|e| match e {
                ProgramError::UnknownInterface { .. } => {
                    AttachError::UnknownInterface(iface.into())
                }
                source => AttachError::Refused {
                    iface: iface.into(),
                    mode: m,
                    source,
                },
            })
    };
    let (mode, id) = match mode {
        AttachMode::Native => try_mode(program, XdpMode::Driver)?,
        AttachMode::Skb => try_mode(program, XdpMode::Skb)?,
        AttachMode::Auto => match try_mode(program, XdpMode::Driver) {
            Ok(m) => m,
            Err(e @ AttachError::UnknownInterface(_)) => return Err(e.into()),
            Err(e) => {
                let e = anyhow::Error::new(e);
                warn!(
                    "native XDP unavailable on {iface} ({e:#}); falling back to generic (skb) mode, which costs more per packet"
                );
                try_mode(program, XdpMode::Skb)?
            }
        },
    };
    info!("attached to {iface} in {} mode", mode_name(mode));
    let mut pinned = false;
    if let Some(pin) = link_pin {
        let link = program.take_link(id)?;
        match FdLink::try_from(link) {
            Ok(fd_link) => {
                // Dropping the pinned link only closes this process's fd.
                fd_link
                    .pin(pin)
                    .with_context(|| format!("pinning the XDP link at {}", pin.display()))?;
                pinned = true;
            }
            Err(e) => warn!(
                "the XDP program is attached through netlink ({e}), which cannot be pinned: it detaches when hb stops, and a restart misses heartbeats"
            ),
        }
    }
    Ok(Attached::Fresh { mode, pinned })
}

fn take_over(program: &mut Xdp, pin: &Path) -> Result<()> {
    let link = PinnedLink::from_pin(pin).context("opening the pinned link")?;
    let link = XdpLink::try_from(FdLink::from(link)).context("not an XDP link")?;
    program
        .attach_to_link(link)
        .context("replacing the program on the link")?;
    Ok(())
}

pub fn mode_name(mode: XdpMode) -> &'static str {
    match mode {
        XdpMode::Driver => "native",
        XdpMode::Skb => "generic (skb)",
        XdpMode::Hardware => "hardware",
        XdpMode::Default => "default",
    }
}

/// Whether the kernel takes the program from this process (BPF permitted,
/// verifier happy): a throw-away load of the smallest table.
pub fn probe() -> Result<()> {
    load(Settings {
        max_hosts: 1,
        ..Settings::default()
    })
    .map(drop)
}

/// Fails early with a clear message where hb cannot work at all.
pub fn check_environment() -> Result<()> {
    check_privileges("hb run loads an XDP program, which")?;
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!(
            "this kernel exposes no BTF (/sys/kernel/btf/vmlinux): hb needs a kernel with CONFIG_DEBUG_INFO_BTF and XDP"
        );
    }
    Ok(())
}

/// Fails, naming the fix, unless this process may use BPF and XDP: root,
/// or CAP_BPF (CAP_SYS_ADMIN before Linux 5.8) and CAP_NET_ADMIN. `what`
/// starts the message ("hb status, which").
pub fn check_privileges(what: &str) -> Result<()> {
    if !may_use_bpf() {
        bail!("{what} needs root: run it as root or with CAP_BPF and CAP_NET_ADMIN");
    }
    Ok(())
}

fn may_use_bpf() -> bool {
    const NET_ADMIN: u64 = 1 << 12;
    const SYS_ADMIN: u64 = 1 << 21;
    const BPF: u64 = 1 << 39;
    let effective = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|caps| u64::from_str_radix(caps.trim(), 16).ok())
        });
    match effective {
        Some(caps) => caps & NET_ADMIN != 0 && caps & (BPF | SYS_ADMIN) != 0,
        // SAFETY: geteuid has no preconditions.
        None => (unsafe { libc::geteuid() }) == 0,
    }
}
