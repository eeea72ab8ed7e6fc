//! The simulated fleet: host `i` (a `u32` index) has one fixed address,
//! IPv4 in 10.0.0.0/8 or IPv6 in fd00:4842:1::/64. Addresses exist only on
//! the test veth pair. The mapping goes both ways, so that a host named in
//! the collector's output can be matched to the host that was simulated.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// First IPv4 host address minus one (10.0.0.0): host `i` is 10.0.0.0 + i + 1.
const V4_BASE: u32 = 0x0a00_0000;
/// The /64 of IPv6 hosts: host `i` is fd00:4842:1:: + i + 1.
const V6_PREFIX: u128 = 0xfd00_4842_0001_0000_0000_0000_0000_0000;
/// Hosts the address plan can name: 10.0.0.1 .. 10.255.255.254.
pub const MAX_HOSTS: u32 = (1 << 24) - 2;

/// Which hosts are IPv6: a fixed share, spread over the indices by a hash so
/// that any regular subset (every 100th host, a range) holds both families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fleet {
    /// Percent of hosts that are IPv6 (0-100).
    pub ipv6_percent: u8,
}

impl Fleet {
    pub fn new(ipv6_percent: u8) -> Self {
        assert!(ipv6_percent <= 100, "a share in percent");
        Self { ipv6_percent }
    }

    #[inline]
    pub fn is_ipv6(&self, i: u32) -> bool {
        // Multiplicative hash: consecutive indices land far apart.
        let h = i.wrapping_mul(0x9e37_79b1) >> 16;
        (h % 100) < u32::from(self.ipv6_percent)
    }

    /// Address of host `i` (`i < MAX_HOSTS`).
    pub fn addr(&self, i: u32) -> IpAddr {
        debug_assert!(i < MAX_HOSTS);
        if self.is_ipv6(i) {
            IpAddr::V6(Ipv6Addr::from(V6_PREFIX + u128::from(i) + 1))
        } else {
            IpAddr::V4(Ipv4Addr::from(V4_BASE + i + 1))
        }
    }

    /// The index of the host with address `addr`, if it is one of ours.
    pub fn index(&self, addr: IpAddr) -> Option<u32> {
        let i = match addr {
            IpAddr::V4(a) => u32::from(a).checked_sub(V4_BASE + 1)?,
            IpAddr::V6(a) => {
                let off = u128::from(a).checked_sub(V6_PREFIX + 1)?;
                u32::try_from(off).ok()?
            }
        };
        (i < MAX_HOSTS && self.addr(i) == addr).then_some(i)
    }

    /// IPv4 and IPv6 hosts among `0..n`.
    pub fn families(&self, n: u32) -> (u32, u32) {
        let v6 = (0..n).filter(|&i| self.is_ipv6(i)).count() as u32;
        (n - v6, v6)
    }
}

/// Which members of a range a [`Hosts`] set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    All,
    /// All but the indices congruent to `.1` modulo `.0`.
    Skip(u32, u32),
    /// Only the indices congruent to `.1` modulo `.0`.
    Only(u32, u32),
}

/// A set of host indices: a range, filtered by index modulo a number (the
/// hosts that fall silent are every 100th, for instance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hosts {
    pub start: u32,
    pub end: u32,
    pub filter: Filter,
}

impl Hosts {
    pub fn range(start: u32, end: u32) -> Self {
        Self {
            start,
            end: end.max(start),
            filter: Filter::All,
        }
    }

    pub fn skip(self, modulus: u32, residue: u32) -> Self {
        assert!(modulus > 0 && residue < modulus);
        Self {
            filter: Filter::Skip(modulus, residue),
            ..self
        }
    }

    pub fn only(self, modulus: u32, residue: u32) -> Self {
        assert!(modulus > 0 && residue < modulus);
        Self {
            filter: Filter::Only(modulus, residue),
            ..self
        }
    }

    #[inline]
    pub fn contains(&self, i: u32) -> bool {
        (self.start..self.end).contains(&i)
            && match self.filter {
                Filter::All => true,
                Filter::Skip(m, r) => i % m != r,
                Filter::Only(m, r) => i % m == r,
            }
    }

    pub fn len(&self) -> u32 {
        let all = self.end - self.start;
        // Indices congruent to r modulo m in 0..x.
        let congruent = |m: u32, r: u32| {
            let below = |x: u32| x / m + u32::from(x % m > r);
            below(self.end) - below(self.start)
        };
        match self.filter {
            Filter::All => all,
            Filter::Skip(m, r) => all - congruent(m, r),
            Filter::Only(m, r) => congruent(m, r),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The members, in order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (self.start..self.end).filter(|&i| self.contains(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_map_both_ways() {
        let fleet = Fleet::new(10);
        let (v4, v6) = fleet.families(100_000);
        assert!((9_000..11_000).contains(&v6), "{v6} IPv6 hosts of 100k");
        assert_eq!(v4 + v6, 100_000);
        for i in (0..100_000).chain([MAX_HOSTS - 1]) {
            let a = fleet.addr(i);
            assert_eq!(fleet.index(a), Some(i), "{a}");
        }
        assert_eq!(Fleet::new(0).addr(0), "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(
            Fleet::new(100).addr(0),
            "fd00:4842:1::1".parse::<IpAddr>().unwrap()
        );
        // Not ours: other ranges, or the other family's form of an index.
        for a in ["10.0.0.0", "198.18.0.2", "fd00:4842::2", "fd00:4842:2::1"] {
            assert_eq!(fleet.index(a.parse().unwrap()), None, "{a}");
        }
        let i = (0..).find(|&i| !fleet.is_ipv6(i)).unwrap();
        let wrong = IpAddr::V6(Ipv6Addr::from(V6_PREFIX + u128::from(i) + 1));
        assert_eq!(fleet.index(wrong), None);
        // Every 100th host: both families.
        let silenced = Hosts::range(0, 100_000).only(100, 0);
        assert!(silenced.iter().any(|i| fleet.is_ipv6(i)));
        assert!(silenced.iter().any(|i| !fleet.is_ipv6(i)));
    }

    #[test]
    fn set_lengths() {
        for (start, end) in [(0, 0), (0, 1), (0, 100), (3, 1234), (99, 1001), (100, 200)] {
            let all = Hosts::range(start, end);
            for m in [1, 2, 7, 100] {
                for r in [0, m - 1, m / 2] {
                    let skip = all.skip(m, r);
                    let only = all.only(m, r);
                    assert_eq!(skip.len() as usize, skip.iter().count(), "{skip:?}");
                    assert_eq!(only.len() as usize, only.iter().count(), "{only:?}");
                    assert_eq!(skip.len() + only.len(), all.len());
                }
            }
        }
        assert_eq!(Hosts::range(0, 1_000_000).only(100, 0).len(), 10_000);
    }
}
