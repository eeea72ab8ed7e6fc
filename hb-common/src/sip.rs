//! SipHash-2-4 (Aumasson & Bernstein, 2012), the MAC of authenticated
//! heartbeats. One implementation for both sides: the XDP program runs the
//! rounds below on its 24 signed bytes (three message words and the final
//! block, straight-line code, no loops for the verifier to bound), and
//! userspace signs with [`siphash24`].

/// SipHash's key length.
pub const KEY_LEN: usize = 16;

/// The four state words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SipState(pub [u64; 4]);

impl SipState {
    /// The state after key setup (`k0`, `k1`: the key's two halves read
    /// little-endian).
    pub const fn new(k0: u64, k1: u64) -> Self {
        Self([
            k0 ^ 0x736f_6d65_7073_6575,
            k1 ^ 0x646f_7261_6e64_6f6d,
            k0 ^ 0x6c79_6765_6e65_7261,
            k1 ^ 0x7465_6462_7974_6573,
        ])
    }

    pub fn from_key(key: &[u8; KEY_LEN]) -> Self {
        let mut k0 = [0u8; 8];
        let mut k1 = [0u8; 8];
        k0.copy_from_slice(&key[..8]);
        k1.copy_from_slice(&key[8..]);
        Self::new(u64::from_le_bytes(k0), u64::from_le_bytes(k1))
    }

    #[inline(always)]
    fn round(&mut self) {
        let [mut v0, mut v1, mut v2, mut v3] = self.0;
        v0 = v0.wrapping_add(v1);
        v1 = v1.rotate_left(13);
        v1 ^= v0;
        v0 = v0.rotate_left(32);
        v2 = v2.wrapping_add(v3);
        v3 = v3.rotate_left(16);
        v3 ^= v2;
        v0 = v0.wrapping_add(v3);
        v3 = v3.rotate_left(21);
        v3 ^= v0;
        v2 = v2.wrapping_add(v1);
        v1 = v1.rotate_left(17);
        v1 ^= v2;
        v2 = v2.rotate_left(32);
        self.0 = [v0, v1, v2, v3];
    }

    /// Absorbs one 8-byte message word (read little-endian): 2 rounds.
    #[inline(always)]
    pub fn compress(&mut self, m: u64) {
        self.0[3] ^= m;
        self.round();
        self.round();
        self.0[0] ^= m;
    }

    /// Finalization: 4 rounds. The caller has absorbed the last block
    /// (the message length in the top byte, then any leftover bytes).
    #[inline(always)]
    pub fn finish(mut self) -> u64 {
        self.0[2] ^= 0xff;
        self.round();
        self.round();
        self.round();
        self.round();
        let [v0, v1, v2, v3] = self.0;
        v0 ^ v1 ^ v2 ^ v3
    }
}

/// SipHash-2-4 of `msg` under `key`, as the reference implementation
/// computes it (its output bytes are this value little-endian).
pub fn siphash24(key: &[u8; KEY_LEN], msg: &[u8]) -> u64 {
    let mut s = SipState::from_key(key);
    let mut words = msg.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        s.compress(u64::from_le_bytes(b));
    }
    let mut last = [0u8; 8];
    let rest = words.remainder();
    last[..rest.len()].copy_from_slice(rest);
    last[7] = msg.len() as u8;
    s.compress(u64::from_le_bytes(last));
    s.finish()
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::hash::Hasher as _;

    const KEY: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

    #[test]
    fn paper_vector() {
        // Appendix A of the SipHash paper: key 00..0f, message 00..0e.
        let msg: [u8; 15] = core::array::from_fn(|i| i as u8);
        assert_eq!(siphash24(&KEY, &msg), 0xa129_ca61_49be_45e5);
    }

    #[test]
    fn reference_vectors_of_every_length() {
        // The reference's vectors.h: key 00..0f, messages 00, 00 01, ...;
        // the first and the 64th entries, as bytes.
        let first: [u8; 8] = [0x31, 0x0e, 0x0e, 0xdd, 0x47, 0xdb, 0x6f, 0x72];
        assert_eq!(siphash24(&KEY, &[]).to_le_bytes(), first);
        let last: [u8; 8] = [0x72, 0x45, 0x06, 0xeb, 0x4c, 0x32, 0x8a, 0x95];
        let msg: [u8; 63] = core::array::from_fn(|i| i as u8);
        assert_eq!(siphash24(&KEY, &msg).to_le_bytes(), last);
    }

    #[test]
    fn agrees_with_the_siphasher_crate() {
        let mut key = [0u8; 16];
        let mut msg = [0u8; 64];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..200 {
            for b in key.iter_mut().chain(msg.iter_mut()) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let len = round % msg.len();
            let mut h = siphasher::sip::SipHasher24::new_with_key(&key);
            h.write(&msg[..len]);
            assert_eq!(siphash24(&key, &msg[..len]), h.finish(), "length {len}");
        }
    }
}
