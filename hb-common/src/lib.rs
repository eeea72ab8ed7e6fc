//! Types and constants shared by the XDP program and userspace. Everything
//! here is `#[repr(C)]` and laid out identically on both sides.
#![no_std]

/// UDP port the classic PyHeartBeat clients send to.
pub const DEFAULT_PORT: u16 = 43278;

/// The whole heartbeat payload of a classic client.
pub const MAGIC: [u8; 4] = *b"PyHB";

/// Hash map from host address to its slot (`u32`) in the arrays below.
pub const SLOTS_MAP: &str = "HB_SLOTS";
/// `BPF_F_MMAPABLE` array of `u64`, by slot: last heartbeat, CLOCK_MONOTONIC ns.
pub const LAST_SEEN_MAP: &str = "HB_LAST_SEEN";
/// `BPF_F_MMAPABLE` array of `u64`, by slot: heartbeats recorded.
pub const BEATS_MAP: &str = "HB_BEATS";
/// `BPF_F_MMAPABLE` array of [`HostKey`], by slot: the host's address.
pub const SLOT_KEYS_MAP: &str = "HB_SLOT_KEYS";
/// Array of `u32`, a power of two long: slot hints (`slot + 1`) indexed by a
/// hash of the address, which spare a known host the hash map lookup.
pub const HINTS_MAP: &str = "HB_HINTS";
/// Global (`u32`): the hint array's length - 1.
pub const HINT_MASK_GLOBAL: &str = "HB_HINT_MASK";
/// `BPF_F_MMAPABLE` array of `u64` the program never touches: userspace's
/// per-host state (see hb-userspace's tracker), kept in a map so that it is
/// pinned with the table and survives a restart of the collector.
pub const TRACKER_MAP: &str = "HB_TRACKER";
/// `BPF_F_MMAPABLE` array of one `u64`: the next free slot.
pub const ALLOC_MAP: &str = "HB_ALLOC";
/// Every map sized by `--max-hosts`.
pub const HOST_MAPS: [&str; 4] = [SLOTS_MAP, LAST_SEEN_MAP, BEATS_MAP, SLOT_KEYS_MAP];
/// Map flag: the array can be mmapped into userspace.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;
/// Slot value of a host whose first heartbeat is being recorded right now.
pub const SLOT_PENDING: u32 = u32::MAX;
/// Name of the per-CPU array of outcome counters, indexed by [`Counter`].
pub const COUNTERS_MAP: &str = "HB_COUNTERS";
/// Global (`u16`, network byte order): the UDP port heartbeats are sent to.
pub const PORT_GLOBAL: &str = "HB_PORT";
/// Global (`u8`, 0 or 1): let heartbeats continue to sockets after stamping.
pub const PASS_GLOBAL: &str = "HB_PASS_HEARTBEATS";
/// Name of the XDP program in the object.
pub const PROGRAM: &str = "hb";
/// An empty XDP program in the same object: the benchmarks' floor.
pub const BASELINE_PROGRAM: &str = "hb_baseline";

/// Default capacity of the host table, in hosts.
pub const DEFAULT_MAX_HOSTS: u32 = 1 << 20;

/// A host's address: IPv6, or IPv4 mapped into IPv6 (`::ffff:a.b.c.d`), so
/// one key type serves both families.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostKey {
    pub addr: [u8; 16],
}

impl HostKey {
    /// From the address's 16 bytes read as two native-endian words.
    #[inline(always)]
    pub const fn from_words(words: [u64; 2]) -> Self {
        // SAFETY: [u64; 2] and HostKey have the same size; any bytes are valid.
        unsafe { core::mem::transmute(words) }
    }

    /// The address as two native-endian words (cheap to compare and hash).
    #[inline(always)]
    pub fn words(&self) -> [u64; 2] {
        // SAFETY: 16 bytes, 8-byte aligned (align(8)).
        unsafe { core::ptr::read(self.addr.as_ptr().cast::<[u64; 2]>()) }
    }

    #[inline(always)]
    pub const fn from_ipv4(octets: [u8; 4]) -> Self {
        let [a, b, c, d] = octets;
        Self {
            addr: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d],
        }
    }

    #[inline(always)]
    pub const fn from_ipv6(addr: [u8; 16]) -> Self {
        Self { addr }
    }
}

/// What the table holds for one host (a view assembled from the arrays).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostEntry {
    /// `bpf_ktime_get_coarse_ns()` of the last heartbeat: CLOCK_MONOTONIC,
    /// at most one tick behind a fine-grained reading. 0: slot not ready.
    pub last_seen_ns: u64,
    /// Heartbeats recorded for this host since it entered the table.
    pub beats: u64,
}

/// Outcome counters. Every packet the program sees lands in exactly one of
/// them, except `NewHost`, which counts the subset of `Heartbeat`s that
/// added a host.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A heartbeat was recorded.
    Heartbeat = 0,
    /// ...and it was the host's first.
    NewHost = 1,
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    NotIp = 2,
    /// IP, but not UDP (or behind an IPv6 extension header hb does not walk).
    NotUdp = 3,
    /// UDP to another port.
    OtherPort = 4,
    /// UDP to the heartbeat port, but the payload is not exactly `PyHB`.
    WrongPayload = 5,
    /// The frame ends inside a header or the payload.
    Truncated = 6,
    /// An IP fragment (IPv4 MF or offset, IPv6 fragment header).
    Fragment = 7,
    /// A valid heartbeat from a new host that did not fit in the table.
    TableFull = 8,
}

impl Counter {
    pub const COUNT: usize = 9;
    pub const ALL: [Counter; Self::COUNT] = [
        Counter::Heartbeat,
        Counter::NewHost,
        Counter::NotIp,
        Counter::NotUdp,
        Counter::OtherPort,
        Counter::WrongPayload,
        Counter::Truncated,
        Counter::Fragment,
        Counter::TableFull,
    ];

    /// Name used in output and metrics (snake_case).
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Heartbeat => "heartbeat",
            Counter::NewHost => "new_host",
            Counter::NotIp => "not_ip",
            Counter::NotUdp => "not_udp",
            Counter::OtherPort => "other_port",
            Counter::WrongPayload => "wrong_payload",
            Counter::Truncated => "truncated",
            Counter::Fragment => "fragment",
            Counter::TableFull => "table_full",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain old data, repr(C), no padding.
    unsafe impl aya::Pod for super::HostKey {}
}
