//! Authenticated heartbeats: the payload, the program's mode, and its
//! per-host replay and loss state.
//!
//! The authenticated heartbeat, version 1. All integers big-endian.
//!
//! ```text
//! offset  size  field
//!  0      4     "PyHB"
//!  4      1     version = 1
//!  5      1     flags = 0 (none defined)
//!  6      2     reserved = 0
//!  8      8     host id
//! 16      8     sequence number
//! 24      8     MAC: SipHash-2-4 under the 16-byte fleet key of bytes 0..24,
//!               its 64-bit result in little-endian byte order (as the
//!               reference implementation writes it)
//! ```

use crate::{HostKey, sip::SipState};

/// Version of the payload below.
pub const VERSION: u8 = 1;
/// Whole payload length.
pub const LEN: usize = 32;
/// Bytes covered by the MAC.
pub const SIGNED_LEN: usize = 24;
/// Fleet key length: SipHash's.
pub const KEY_LEN: usize = crate::sip::KEY_LEN;
/// The first 8 bytes of every version 1 payload: magic, version, flags
/// and reserved. Fixed, so the XDP program checks them with one compare
/// and starts SipHash from a state precomputed over them.
pub const HEADER: [u8; 8] = [b'P', b'y', b'H', b'B', VERSION, 0, 0, 0];
/// First 8 bytes of the table key of a host known by its host id: an
/// IPv6 multicast prefix, which no datagram may carry as its source
/// (RFC 4291), so it never equals an address key.
pub const HOST_ID_TAG: [u8; 8] = [0xff, b'H', b'B', b'I', b'D', 0, 0, 0];

/// The SipHash state after key setup and the first message word of every
/// version 1 payload ([`HEADER`]): computed once by userspace at load
/// time, so the XDP program runs 10 of the 12 rounds.
pub fn state_after_header(key: &[u8; KEY_LEN]) -> SipState {
    let mut s = SipState::from_key(key);
    s.compress(u64::from_le_bytes(HEADER));
    s
}

/// The MAC of a version 1 payload from the state after its header: the
/// host id and sequence words and the final block of a 24-byte message,
/// all as loaded little-endian from the wire.
#[inline(always)]
pub fn mac_after_header(mut s: SipState, host_id_word: u64, seq_word: u64) -> u64 {
    s.compress(host_id_word);
    s.compress(seq_word);
    s.compress((SIGNED_LEN as u64) << 56);
    s.finish()
}

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

/// Per-slot state of a host that sends authenticated heartbeats.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthSlot {
    /// Sequence number of the last accepted heartbeat.
    pub seq: u64,
    /// Heartbeats missing from the accepted sequence numbers (gaps within
    /// a client's heartbeat count; see docs/wire-format.md).
    pub lost: u64,
    /// Source address of the last accepted heartbeat.
    pub addr: HostKey,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_xdp_path_equals_the_full_hash() {
        let key: [u8; 16] = *b"0123456789abcdef";
        let p = payload(&key, 0x0102_0304_0506_0708, 42);
        let word = |i: usize| u64::from_le_bytes(p[i..i + 8].try_into().unwrap());
        assert_eq!(word(0), u64::from_le_bytes(HEADER));
        let mac = mac_after_header(state_after_header(&key), word(8), word(16));
        assert_eq!(mac, word(24));
        assert_eq!(mac, crate::sip::siphash24(&key, &p[..24]));
    }
}
