//! A host's key in the table, and what the table holds for it.

use crate::auth;

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

    /// The address as people write it: IPv4-mapped keys are IPv4.
    pub fn ip(&self) -> core::net::IpAddr {
        let v6 = core::net::Ipv6Addr::from(self.addr);
        match v6.to_ipv4_mapped() {
            Some(v4) => core::net::IpAddr::V4(v4),
            None => core::net::IpAddr::V6(v6),
        }
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
    /// The last heartbeat, in ticks from the table's epoch (see
    /// [`timing`](crate::timing); `bpf_ktime_get_coarse_ns()`, at most one
    /// kernel tick behind a fine-grained reading). 0: slot not ready.
    pub last_seen: u32,
    /// Heartbeats recorded for this host since it entered the table
    /// (wrapping).
    pub beats: u32,
    /// What the table learned of its heartbeat period.
    pub timing: crate::Timing,
}
