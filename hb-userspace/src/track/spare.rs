//! Room left by a burst. Vectors and hash maps keep the capacity of the
//! most they ever held: after a mass outage of a million hosts recovers,
//! the tracker's and the silent order's tables would keep tens of MB for
//! the handful of hosts still silent. These give back room that is far
//! more than what is held.

use std::hash::{BuildHasher, Hash};

/// Entries of room always kept.
const FLOOR: usize = 1024;

/// Whether a container with room for `cap` that holds `len` has room to
/// give back: more than four times what it holds, so that one that only
/// halves is not reallocated at every sweep, and past the floor.
fn roomy(len: usize, cap: usize) -> bool {
    cap > FLOOR && cap > 4 * len
}

/// Shrinks `v` to twice what it holds if it is roomy; whether it was.
pub fn vec<T>(v: &mut Vec<T>) -> bool {
    let roomy = roomy(v.len(), v.capacity());
    if roomy {
        v.shrink_to((2 * v.len()).max(FLOOR));
    }
    roomy
}

/// As `vec`, for a hash map.
pub fn map<K: Hash + Eq, V, S: BuildHasher>(m: &mut hashbrown::HashMap<K, V, S>) -> bool {
    let roomy = roomy(m.len(), m.capacity());
    if roomy {
        m.shrink_to((2 * m.len()).max(FLOOR));
    }
    roomy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_past_four_times_the_content_is_given_back() {
        let mut v: Vec<u64> = (0..100_000).collect();
        assert!(!vec(&mut v), "full");
        v.truncate(30_000);
        assert!(!vec(&mut v), "a third full: kept, not reallocated");
        v.truncate(1000);
        assert!(vec(&mut v));
        assert!(v.capacity() < 10_000 && v.len() == 1000);
        assert!(v.iter().copied().eq(0..1000));
        let mut m: hashbrown::HashMap<u32, u64> =
            (0..100_000).map(|i| (i, 2 * u64::from(i))).collect();
        m.retain(|&k, _| k < 10);
        assert!(map(&mut m));
        assert!(m.capacity() < 10_000 && m.len() == 10 && m[&7] == 14);
        // Small ones are left alone.
        let mut small: Vec<u8> = Vec::with_capacity(FLOOR);
        assert!(!vec(&mut small) && small.capacity() == FLOOR);
    }
}
