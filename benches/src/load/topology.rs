//! The test network: a collector namespace and a generator namespace joined
//! by a veth pair (hb-testkit's `Link`), with the load test's addresses,
//! which exist only inside them. Everything is removed when the
//! [`Topology`] is dropped, and by `hb_testkit::netns::cleanup_all` from the
//! signal handler's last resort.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Result, bail};
use hb_testkit::{
    frames::Ends,
    netns::{Link, Netns},
};

/// MAC of the collector's end of the veth pair.
pub const COLLECTOR_MAC: [u8; 6] = [0x02, 0x48, 0x42, 0, 0, 0x01];
/// MAC of the generator's end.
pub const GENERATOR_MAC: [u8; 6] = [0x02, 0x48, 0x42, 0, 0, 0x02];
/// The collector's addresses, held by its end of the veth pair.
pub const COLLECTOR_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const COLLECTOR_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x4842, 0, 0, 0, 0, 0, 1);
/// Where the generator's frames go: from its end to the collector's.
pub const ENDS: Ends = Ends {
    dst_mac: COLLECTOR_MAC,
    src_mac: GENERATOR_MAC,
    dst_v4: COLLECTOR_V4,
    dst_v6: COLLECTOR_V6,
};

/// The two namespaces and the veth pair between them.
///
/// Collector end `a_if`: 198.18.0.1/24, fd00:4842::1/64, MAC
/// [`COLLECTOR_MAC`], with routes to the simulated hosts' ranges (10.0.0.0/8,
/// fd00:4842:1::/64) through the veth so that reverse-path filtering accepts
/// them. Generator end `b_if`: 198.18.0.2/24, fd00:4842::2/64, MAC
/// [`GENERATOR_MAC`].
pub struct Topology {
    // Field order is drop order: the collector namespace goes first, taking
    // the veth pair with it.
    pub collector: Netns,
    pub generator: Netns,
    pub a_if: String,
    pub b_if: String,
}

impl Topology {
    /// `tag`: unique among topologies alive at once, at most 10 characters.
    pub fn new(tag: &str) -> Result<Self> {
        if tag.is_empty() || tag.len() > 10 {
            bail!("topology tag {tag:?} must be 1-10 characters (interface names)");
        }
        let Link {
            a: collector,
            b: generator,
            a_if,
            b_if,
        } = Link::new(
            Netns::new(format!("hbload-{tag}-c"))?,
            Netns::new(format!("hbload-{tag}-g"))?,
            &format!("hbl{tag}a"),
            &format!("hbl{tag}b"),
            Some([COLLECTOR_MAC, GENERATOR_MAC]),
        )?;
        let c = &collector;
        c.ip(&["addr", "add", &format!("{COLLECTOR_V4}/24"), "dev", &a_if])?;
        let v6 = format!("{COLLECTOR_V6}/64");
        c.ip(&["addr", "add", &v6, "dev", &a_if, "nodad"])?;
        c.ip(&["route", "add", "10.0.0.0/8", "dev", &a_if])?;
        c.ip(&["-6", "route", "add", "fd00:4842:1::/64", "dev", &a_if])?;
        let g = &generator;
        g.ip(&["addr", "add", "198.18.0.2/24", "dev", &b_if])?;
        g.ip(&["addr", "add", "fd00:4842::2/64", "dev", &b_if, "nodad"])?;
        Ok(Self {
            collector,
            generator,
            a_if,
            b_if,
        })
    }
}
