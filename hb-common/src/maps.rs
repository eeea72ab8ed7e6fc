//! The object's names, as userspace looks them up (maps, globals, programs),
//! and the layout constants of the host table.

/// `BPF_F_MMAPABLE` array of [`Bucket`](crate::index::Bucket)s: which slot
/// holds a host (see [`index`](crate::index)). A power of two of them.
pub const INDEX_MAP: &str = "HB_INDEX";
/// `BPF_F_MMAPABLE` array of [`CLAIM_LOCKS`](crate::index::CLAIM_LOCKS)
/// `u64`: the claim locks (0: free; else the tick it was taken at).
pub const CLAIM_MAP: &str = "HB_CLAIM";
/// Global (`u32`): the index's bucket count - 1.
pub const INDEX_MASK_GLOBAL: &str = "HB_INDEX_MASK";
/// Global (`u32`): bits of an index entry that hold the slot
/// ([`index::slot_bits`](crate::index::slot_bits)).
pub const SLOT_BITS_GLOBAL: &str = "HB_SLOT_BITS";
/// Global (`u32`): the table's capacity, in slots.
pub const MAX_HOSTS_GLOBAL: &str = "HB_MAX_HOSTS";
/// Global (`u64`): the table's epoch, CLOCK_MONOTONIC ns that last-seen
/// ticks count from (see [`timing`](crate::timing)); also kept in
/// `HB_ALLOC`'s second word, pinned with the table.
pub const EPOCH_GLOBAL: &str = "HB_EPOCH";
/// Global (`[u64; 2]`): the key of the index's hash (see
/// [`index::hash`](crate::index::hash)), random per table; also kept in
/// `HB_ALLOC`'s words 2 and 3, pinned with the table.
pub const INDEX_SEED_GLOBAL: &str = "HB_INDEX_SEED";
/// Words of `HB_ALLOC`: next slot, epoch, seed (two).
pub const ALLOC_WORDS: u32 = 4;
/// `BPF_F_MMAPABLE` array of `u64`, each two `u32` slots (slot `s` is half
/// `s & 1` of element `s / 2`): last heartbeat, in ticks from the epoch.
pub const LAST_SEEN_MAP: &str = "HB_LAST_SEEN";
/// As `LAST_SEEN_MAP`: heartbeats recorded (`u32`, wrapping).
pub const BEATS_MAP: &str = "HB_BEATS";
/// `BPF_F_MMAPABLE` array of [`Timing`](crate::Timing), by slot: the host's
/// learned heartbeat period.
pub const TIMING_MAP: &str = "HB_TIMING";
/// `BPF_F_MMAPABLE` array of [`HostKey`](crate::HostKey), by slot: the
/// host's address.
pub const SLOT_KEYS_MAP: &str = "HB_SLOT_KEYS";
/// `BPF_F_MMAPABLE` array of `u64` the program never touches: userspace's
/// per-host state (see hb-userspace's tracker), kept in a map so that it is
/// pinned with the table and survives a restart of the collector.
pub const TRACKER_MAP: &str = "HB_TRACKER";
/// `BPF_F_MMAPABLE` array of four `u64`: the next never-used slot, the
/// table's epoch (see `EPOCH_GLOBAL`) and the index's seed (see
/// `INDEX_SEED_GLOBAL`).
pub const ALLOC_MAP: &str = "HB_ALLOC";
/// `BPF_F_MMAPABLE` array of one `u64`: bare hosts (known by address) in
/// the table.
pub const BARE_MAP: &str = "HB_BARE";
/// Global (`u32`): how many bare hosts the table takes (`--max-bare-hosts`).
pub const MAX_BARE_GLOBAL: &str = "HB_MAX_BARE";
/// `BPF_F_MMAPABLE` array of [`AuthSlot`](crate::AuthSlot), by slot: replay
/// and loss state of hosts that send authenticated heartbeats.
/// `--max-hosts` long when a key is configured, one entry (unused) otherwise.
pub const AUTH_MAP: &str = "HB_AUTH";
/// Queue of `u32`: slots userspace freed (forgotten hosts), handed out to
/// new hosts before never-used ones. `--max-hosts` long.
pub const FREE_MAP: &str = "HB_FREE";
/// First word of the key of a forgotten host's slot (`SLOT_KEYS`): no
/// address or host id key has it (an IPv6 address in `ff00::/8` with
/// that tail is multicast, never a heartbeat's source), so an index entry
/// still naming the slot never matches again.
pub const FORGOTTEN_KEY_WORD: u64 = u64::MAX;
/// Every map with a slot an element, sized by `--max-hosts` (the auth
/// array only with a key). The index, and the arrays of two slots an
/// element (`PAIRED_MAPS`), are sized otherwise.
pub const HOST_MAPS: [&str; 3] = [SLOT_KEYS_MAP, TIMING_MAP, FREE_MAP];
/// Maps of two `u32` slots an element: `--max-hosts` / 2 (rounded up)
/// elements.
pub const PAIRED_MAPS: [&str; 2] = [LAST_SEEN_MAP, BEATS_MAP];
/// Map flag: the array can be mmapped into userspace.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;
/// Name of the per-CPU array of outcome counters, indexed by
/// [`Counter`](crate::Counter).
pub const COUNTERS_MAP: &str = "HB_COUNTERS";
/// Global (`u16`, network byte order): the UDP port heartbeats are sent to.
pub const PORT_GLOBAL: &str = "HB_PORT";
/// Global (`u8`, 0 or 1): let heartbeats continue to sockets after stamping.
pub const PASS_GLOBAL: &str = "HB_PASS_HEARTBEATS";
/// Global (`u8`, an [`AuthMode`](crate::AuthMode)): whether authenticated
/// heartbeats are verified, and whether bare `PyHB` is still accepted.
pub const AUTH_MODE_GLOBAL: &str = "HB_AUTH_MODE";
/// Global (`[u64; 4]`): SipHash-2-4 state after the fleet key and the fixed
/// first message word ([`auth::HEADER`](crate::auth::HEADER)); see
/// [`SipState::after_header`](crate::sip::SipState::after_header).
pub const SIP_STATE_GLOBAL: &str = "HB_SIP_STATE";
/// Name of the XDP program in the object.
pub const PROGRAM: &str = "hb";
/// An empty XDP program in the same object: the benchmarks' floor.
pub const BASELINE_PROGRAM: &str = "hb_baseline";
/// The XDP program as though every heartbeat came a tick or more after its
/// host's last (see hb-ebpf): the benchmarks' known host with its timing
/// folded in.
pub const EVERY_FOLD_PROGRAM: &str = "hb_every_fold";

/// Default capacity of the host table, in hosts.
pub const DEFAULT_MAX_HOSTS: u32 = 1 << 20;

/// The program's global section holding its [`LocalSet`]: what it takes
/// as addressed to this collector. A global, so that the program reads it
/// at a fixed address instead of looking it up in a map on every
/// heartbeat; to userspace it is an array map of one [`LocalSet`], under
/// this name. Written by userspace, kept current from netlink.
pub const LOCAL_SET_SECTION: &str = ".data.hb_local";
/// Buckets of the local address set (a power of two).
pub const LOCAL_BUCKETS: u32 = 1024;
/// Addresses a bucket holds.
pub const LOCAL_WAYS: usize = 4;
/// One bucket of the local address set.
pub type LocalBucket = [crate::HostKey; LOCAL_WAYS];

/// The interface's MAC and the addresses of the collector's network
/// namespace.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalSet {
    /// The interface's MAC, its 6 bytes as the program loads them
    /// (little-endian, in the low 48 bits); 0 when it has none.
    pub mac: u64,
    /// Each address in the bucket [`local_bucket`] names (IPv4 as
    /// `::ffff:a.b.c.d`; empty places are zero).
    pub buckets: [LocalBucket; LOCAL_BUCKETS as usize],
}

impl LocalSet {
    /// No MAC, no address.
    pub const EMPTY: Self = Self {
        mac: 0,
        buckets: [[crate::HostKey { addr: [0; 16] }; LOCAL_WAYS]; LOCAL_BUCKETS as usize],
    };
}

/// Global (`u8`, 0 or 1): `--any-destination`, heartbeats to any MAC and
/// any address are taken (mirror and SPAN ports).
pub const ANY_DEST_GLOBAL: &str = "HB_ANY_DESTINATION";

/// The bucket of the local address set that holds `words` (an address as
/// [`HostKey::words`](crate::HostKey::words) reads it): a multiplicative
/// hash, one multiply and a shift in the program.
#[inline(always)]
pub const fn local_bucket(words: [u64; 2]) -> u32 {
    ((words[0] ^ words[1]).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 54) as u32
}
const _: () = assert!(LOCAL_BUCKETS == 1 << (64 - 54));
