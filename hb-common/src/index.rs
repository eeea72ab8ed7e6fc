//! The host table's index: which slot holds a host. Shared so that the XDP
//! program and userspace (`hb status`, forgetting, migration) find and
//! claim slots the same way.
//!
//! The index is an array of buckets of [`BUCKET_ENTRIES`] `u32` entries
//! (one 64-byte cache line a bucket), a power of two of them. An entry is
//! `tag << slot_bits | (slot + 1)`, 0 when empty. A host has two candidate
//! buckets (two hashes of its address); it is in one of them, and a new
//! host goes to the less loaded one ("two choices": the fullest bucket of a
//! table at capacity holds about 11 of 16). The tag is hash bits that name
//! neither bucket, so an entry whose tag differs is skipped without
//! reading the slot's key; a lookup scans from a tag-chosen place, so that
//! a known host is usually found at the first entry it reads. Lookups never
//! stop at an empty entry: removing a host just clears its entry.

/// Entries in a bucket: 64 bytes, one cache line.
pub const BUCKET_ENTRIES: u32 = 16;
/// A bucket as the maps hold it: entries `2i` and `2i + 1` are the low and
/// high halves of word `i` (little-endian), so that an entry is claimed
/// with a 64-bit compare-and-exchange on its word.
pub type Bucket = [u64; (BUCKET_ENTRIES / 2) as usize];

/// Index entries per slot of the table: about 2 (8 bytes a host).
pub const ENTRIES_PER_HOST: u32 = 2;

/// Buckets of the index of a table of `max_hosts`: a power of two, about
/// two entries a host.
pub const fn buckets(max_hosts: u32) -> u32 {
    let want = (max_hosts as u64 * ENTRIES_PER_HOST as u64).div_ceil(BUCKET_ENTRIES as u64);
    let want = if want < 2 { 2 } else { want };
    let p = want.next_power_of_two();
    if p > 1 << 31 { 1 << 31 } else { p as u32 }
}

/// The largest table the index takes: its entries keep a bit of tag.
pub const MAX_HOSTS: u32 = (1 << 31) - 1;

/// Bits of an entry that hold `slot + 1` in a table of `max_hosts` (at
/// most [`MAX_HOSTS`]: below 32); the rest hold the tag.
pub const fn slot_bits(max_hosts: u32) -> u32 {
    let m = if max_hosts > MAX_HOSTS {
        MAX_HOSTS
    } else {
        max_hosts
    };
    32 - m.leading_zeros()
}

/// The 64-bit hash a host's buckets and tag come from (the two words of
/// its [`HostKey`](crate::HostKey)), keyed by the table's `seed`:
/// multiply and xor-shift, a few instructions in the program.
///
/// The seed is random, made when the table is created and pinned with it
/// (`HB_ALLOC` words 2 and 3; the program has it as a global). Without it,
/// anyone who can send spoofed `PyHB` could compute 32 addresses that fill
/// both buckets of a host that is not yet in the table and make its first
/// heartbeats `table_full`; with it, which addresses share buckets cannot
/// be told from outside the collector. (Not a cryptographic PRF: the
/// attacker sees nothing of the placement to learn the seed from.)
#[inline(always)]
pub const fn hash(words: [u64; 2], seed: [u64; 2]) -> u64 {
    let words = [words[0] ^ seed[0], words[1] ^ seed[1]];
    // Two rounds: one multiply of the words folded together would give
    // every pair of keys whose words cancel in the fold the same buckets
    // and tag (the fuzz test's addresses filled a bucket pair at 400 hosts
    // of 1,000 that way); the second round mixes the second word in again.
    let mut h = (words[0] ^ words[1].rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^= h >> 31;
    h = (h ^ words[1]).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^ (h >> 29)
}

/// Where a host is looked for: its two buckets and its tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub first: u32,
    pub second: u32,
    /// `< 2^(32 - slot_bits)`.
    pub tag: u32,
}

/// A host's place, from its hash, in an index of `mask + 1` buckets whose
/// entries hold `slot_bits` bits of slot. The first bucket comes from the
/// hash's low half, the second from the high half's low bits, the tag from
/// the high half's top bits (never the second bucket's: the index has
/// fewer buckets than slots).
#[inline(always)]
pub const fn place(h: u64, mask: u32, slot_bits: u32) -> Place {
    let high = (h >> 32) as u32;
    Place {
        first: h as u32 & mask,
        second: high & mask,
        tag: high.wrapping_shr(slot_bits),
    }
}

// Shifts by `slot_bits` (below 32, see `slot_bits`) without a branch: the
// program looks at entries in its hottest loop.

/// The entry of `slot` with `tag`.
#[inline(always)]
pub const fn entry(tag: u32, slot: u32, slot_bits: u32) -> u32 {
    tag.wrapping_shl(slot_bits) | (slot + 1)
}

/// The tag of a non-empty entry.
#[inline(always)]
pub const fn entry_tag(e: u32, slot_bits: u32) -> u32 {
    e.wrapping_shr(slot_bits)
}

/// The slot of a non-empty entry.
#[inline(always)]
pub const fn entry_slot(e: u32, slot_bits: u32) -> u32 {
    (e & 1u32.wrapping_shl(slot_bits).wrapping_sub(1)).wrapping_sub(1)
}

/// What [`tagged`] compares a bucket's words with to find entries of
/// `tag`: the tag in its place in both halves of a word, and the mask of
/// the tag's bits in both halves.
#[inline(always)]
pub const fn tag_pattern(tag: u32, slot_bits: u32) -> (u64, u64) {
    let lane = tag.wrapping_shl(slot_bits) as u64;
    let mask = u32::MAX.wrapping_shl(slot_bits) as u64;
    (lane | lane << 32, mask | mask << 32)
}

/// Non-zero exactly when an entry of bucket word `word` (two entries) has
/// the tag of `pattern` (see [`tag_pattern`]); an empty entry has tag 0.
/// No branch: the masked difference has a zero 32-bit half exactly where
/// an entry's tag matches, and "has a zero half" is the borrow trick of
/// finding a zero byte in a word (exact as to whether there is one).
#[inline(always)]
pub const fn tagged(word: u64, (pattern, mask): (u64, u64)) -> u64 {
    let m = (word ^ pattern) & mask;
    m.wrapping_sub(0x0000_0001_0000_0001) & !m & 0x8000_0000_8000_0000
}

/// Claim locks (`HB_CLAIM`): a new host is claimed holding the lock its
/// hash names, so that two claims of one host are never at once (see
/// hb-ebpf's table.rs). Distinct hosts rarely share one (1 in 4096).
pub const CLAIM_LOCKS: u32 = 4096;
/// A claim lock held for longer than this many ticks (about 67 ms; a claim
/// takes under a microsecond) was left by a holder that died (a killed
/// `hb` inserting from userspace): it may be taken over.
pub const CLAIM_STALE_TICKS: u32 = 64;
/// How long the program waits for a held claim lock, ns: some twenty
/// claims whose lines are all cold. Past it, the heartbeat is not recorded
/// (the host's next one is), so that a lock held by a preempted userspace
/// insert never stalls the receive path.
pub const CLAIM_WAIT_NS: u64 = 20_000;

/// The claim lock of a host with hash `h`: other bits than its buckets'.
#[inline(always)]
pub const fn claim_lock(h: u64) -> u32 {
    ((h ^ (h >> 29)).wrapping_mul(0x94d0_49bb_1331_11eb) >> 52) as u32 & (CLAIM_LOCKS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        for max in [1u32, 7, 1 << 20, 10_000_000, MAX_HOSTS] {
            let bits = slot_bits(max);
            assert!(bits < 32);
            assert!(u64::from(max) < 1u64 << bits);
            let mask = buckets(max) - 1;
            let p = place(hash([0, 0xffff_0a00_0001], [0, 0]), mask, bits);
            assert!(p.first <= mask && p.second <= mask);
            let e = entry(p.tag, max - 1, bits);
            assert_ne!(e, 0);
            assert_eq!(entry_slot(e, bits), max - 1);
            assert_eq!(entry_tag(e, bits), p.tag);
        }
    }

    /// `tagged` against the entries' tags read one by one, over words of
    /// random entries, empty ones, and entries with the tag in either half.
    #[test]
    fn tagged_finds_exactly_the_words_with_the_tag() {
        let mut x = 0x243f_6a88_85a3_08d3u64;
        let mut next = || {
            // xorshift64: any spread of words will do.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut seen = [0u32; 2];
        for bits in [1u32, 5, 11, 21, 24, 31] {
            let slot_mask = (1u32 << bits) - 1;
            for _ in 0..20_000 {
                // Tag 0 (the empty entries' tag) a quarter of the time.
                let tag = if next() % 4 == 0 {
                    0
                } else {
                    (next() as u32).wrapping_shr(bits)
                };
                let half = |r: u64| -> u32 {
                    match r % 4 {
                        0 => 0,
                        1 => entry(tag, (r >> 8) as u32 & slot_mask.wrapping_sub(1) >> 1, bits),
                        _ => (r >> 32) as u32,
                    }
                };
                let (lo, hi) = (half(next()), half(next()));
                let word = u64::from(hi) << 32 | u64::from(lo);
                let has = |e: u32| e == 0 && tag == 0 || e != 0 && entry_tag(e, bits) == tag;
                let expected = has(lo) || has(hi);
                assert_eq!(
                    tagged(word, tag_pattern(tag, bits)) != 0,
                    expected,
                    "word {word:#x}, tag {tag:#x}, {bits} slot bits"
                );
                seen[usize::from(expected)] += 1;
            }
        }
        // Both answers were put to the test, many times.
        assert!(seen.iter().all(|&n| n > 10_000), "{seen:?}");
    }

    #[test]
    fn about_two_entries_a_host() {
        assert_eq!(buckets(1 << 20) * BUCKET_ENTRIES, 2 << 20);
        assert_eq!(buckets(1), 2);
        assert!(buckets(10_000_000) * BUCKET_ENTRIES >= 20_000_000);
    }
}
