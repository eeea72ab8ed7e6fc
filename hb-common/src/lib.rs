//! Types and constants shared by the XDP program and userspace. Everything
//! here is `#[repr(C)]` and laid out identically on both sides.
#![no_std]

pub mod sip;

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
/// Array of `[u32; 2]`: slot hints (`slot + 1`), a power of two of them, two
/// an element, indexed by a hash of the address; they spare a known host the
/// hash map lookup.
pub const HINTS_MAP: &str = "HB_HINTS";
/// Global (`u32`): the hint array's length - 1.
pub const HINT_MASK_GLOBAL: &str = "HB_HINT_MASK";
/// `BPF_F_MMAPABLE` array of `u64` the program never touches: userspace's
/// per-host state (see hb-userspace's tracker), kept in a map so that it is
/// pinned with the table and survives a restart of the collector.
pub const TRACKER_MAP: &str = "HB_TRACKER";
/// `BPF_F_MMAPABLE` array of one `u64`: the next free slot.
pub const ALLOC_MAP: &str = "HB_ALLOC";
/// `BPF_F_MMAPABLE` array of [`AuthSlot`], by slot: replay and loss state of
/// hosts that send authenticated heartbeats. `--max-hosts` long when a key
/// is configured, one entry (unused) otherwise.
pub const AUTH_MAP: &str = "HB_AUTH";
/// Every map sized by `--max-hosts` (the auth array only with a key).
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
/// Global (`u8`, an [`AuthMode`]): whether authenticated heartbeats are
/// verified, and whether bare `PyHB` is still accepted.
pub const AUTH_MODE_GLOBAL: &str = "HB_AUTH_MODE";
/// Global (`[u64; 4]`): SipHash-2-4 state after the fleet key and the fixed
/// first message word ([`auth::HEADER`]); see [`sip::SipState::after_header`].
pub const SIP_STATE_GLOBAL: &str = "HB_SIP_STATE";
/// Name of the XDP program in the object.
pub const PROGRAM: &str = "hb";
/// An empty XDP program in the same object: the benchmarks' floor.
pub const BASELINE_PROGRAM: &str = "hb_baseline";

/// How the program treats heartbeats, by payload.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// No key: `PyHB` only; a signed payload is `wrong_payload`.
    Off = 0,
    /// Key configured: signed heartbeats are verified, bare `PyHB` accepted.
    Optional = 1,
    /// Key configured, bare `PyHB` counted as `unauthenticated` and ignored.
    Required = 2,
}

/// The authenticated heartbeat, version 1. All integers big-endian.
///
/// ```text
/// offset  size  field
///  0      4     "PyHB"
///  4      1     version = 1
///  5      1     flags = 0 (none defined)
///  6      2     reserved = 0
///  8      8     host id
/// 16      8     sequence number
/// 24      8     MAC: SipHash-2-4 under the 16-byte fleet key of bytes 0..24,
///               its 64-bit result in little-endian byte order (as the
///               reference implementation writes it)
/// ```
pub mod auth {
    /// Version of the payload below.
    pub const VERSION: u8 = 1;
    /// Whole payload length.
    pub const LEN: usize = 32;
    /// Bytes covered by the MAC.
    pub const SIGNED_LEN: usize = 24;
    /// Fleet key length.
    pub const KEY_LEN: usize = 16;
    /// The first 8 bytes of every version 1 payload: magic, version, flags
    /// and reserved. Fixed, so the XDP program checks them with one compare
    /// and starts SipHash from a state precomputed over them.
    pub const HEADER: [u8; 8] = [b'P', b'y', b'H', b'B', VERSION, 0, 0, 0];
    /// First 8 bytes of the table key of a host known by its host id: an
    /// IPv6 multicast prefix, which no datagram may carry as its source
    /// (RFC 4291), so it never equals an address key.
    pub const HOST_ID_TAG: [u8; 8] = [0xff, b'H', b'B', b'I', b'D', 0, 0, 0];
    /// Builds a signed payload: `mac` computes the SipHash-2-4 of its input.
    pub fn payload(key: &[u8; KEY_LEN], host_id: u64, seq: u64) -> [u8; LEN] {
        let mut p = [0u8; LEN];
        p[..8].copy_from_slice(&HEADER);
        p[8..16].copy_from_slice(&host_id.to_be_bytes());
        p[16..24].copy_from_slice(&seq.to_be_bytes());
        let mac = crate::sip::siphash24(key, &p[..SIGNED_LEN]);
        p[24..].copy_from_slice(&mac.to_le_bytes());
        p
    }
}

/// Per-slot state of a host that sends authenticated heartbeats.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthSlot {
    /// Sequence number of the last accepted heartbeat.
    pub seq: u64,
    /// Heartbeats missing from the accepted sequence numbers (gaps within
    /// one client run; see README).
    pub lost: u64,
    /// Source address of the last accepted heartbeat.
    pub addr: HostKey,
}

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

    /// The key of a host known by its host id (authenticated heartbeats):
    /// [`auth::HOST_ID_TAG`], then the id's 8 bytes big-endian.
    pub const fn from_host_id(id: u64) -> Self {
        let t = auth::HOST_ID_TAG;
        let i = id.to_be_bytes();
        Self {
            addr: [
                t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], i[0], i[1], i[2], i[3], i[4], i[5],
                i[6], i[7],
            ],
        }
    }

    /// The host id, if this is a host id key rather than an address.
    pub fn host_id(&self) -> Option<u64> {
        let (tag, id) = self.addr.split_at(8);
        (tag == auth::HOST_ID_TAG).then(|| u64::from_be_bytes(id.try_into().unwrap_or([0; 8])))
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
/// added a host, and `Lost`, which counts heartbeats that never came.
/// Indices are stable: new counters are appended.
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
    /// A signed heartbeat whose MAC does not verify, or of an unknown version
    /// or flags; or a bare `PyHB` from an IPv6 multicast source.
    Forged = 9,
    /// A signed heartbeat whose sequence number is not newer than the last
    /// one accepted from its host.
    Replayed = 10,
    /// A bare `PyHB` while authentication is required.
    Unauthenticated = 11,
    /// Not a packet outcome: heartbeats missing from the sequence numbers of
    /// accepted signed heartbeats (added per gap).
    Lost = 12,
}

impl Counter {
    pub const COUNT: usize = 13;
    /// The packet outcomes: every packet lands in exactly one of them
    /// (`NewHost` counts a subset of `Heartbeat`).
    pub const PACKETS: &'static [Counter] = Self::ALL.split_at(Self::COUNT - 1).0;
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
        Counter::Forged,
        Counter::Replayed,
        Counter::Unauthenticated,
        Counter::Lost,
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
            Counter::Forged => "forged",
            Counter::Replayed => "replayed",
            Counter::Unauthenticated => "unauthenticated",
            Counter::Lost => "lost",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain old data, repr(C), no padding.
    unsafe impl aya::Pod for super::HostKey {}
    // SAFETY: plain old data, repr(C), no padding.
    unsafe impl aya::Pod for super::AuthSlot {}
}
