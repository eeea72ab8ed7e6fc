//! The XDP program loaded for a test or a benchmark, with hb's defaults
//! (the default port, heartbeats consumed) and a table of `max_hosts`.
//!
//! The one module of the kit that uses hb-userspace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hb_userspace::xdp::{self, AuthSettings, Loaded, Settings};

use crate::frames::{DST_MAC, DST_V4, DST_V6};

/// hb's default settings with a table of `max_hosts`.
pub fn settings(max_hosts: u32) -> Settings {
    Settings {
        max_hosts,
        ..Settings::default()
    }
}

/// Loads (and verifies, does not attach) the program with
/// [`settings`]`(max_hosts)`; panics if it cannot (root and BPF needed).
#[track_caller]
pub fn load(max_hosts: u32) -> Loaded {
    addressed(
        xdp::load(settings(max_hosts))
            .unwrap_or_else(|e| panic!("loading the XDP program (root, BPF): {e:#}")),
    )
}

/// As [`load`], verifying signed heartbeats under `auth`'s key.
#[track_caller]
pub fn load_auth(max_hosts: u32, auth: Option<AuthSettings>) -> Loaded {
    addressed(
        xdp::load_auth(settings(max_hosts), auth)
            .unwrap_or_else(|e| panic!("loading the XDP program (root, BPF): {e:#}")),
    )
}

/// The local MAC and addresses of the collector that the kit's frames go
/// to: [`DST_MAC`], [`DST_V4`] and [`DST_V6`].
pub fn local_addrs() -> [IpAddr; 2] {
    [
        IpAddr::V4(Ipv4Addr::from(DST_V4)),
        IpAddr::V6(Ipv6Addr::from(DST_V6)),
    ]
}

/// The collector the kit's frames are addressed to, for the reference.
pub fn kit_dest() -> crate::reference::Dest {
    let mapped = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    crate::reference::Dest {
        any: false,
        mac: DST_MAC,
        addrs: local_addrs().into_iter().map(mapped).collect(),
    }
}

/// Makes `loaded` the collector the kit's frames are addressed to (as
/// `hb run` does for its interface from netlink).
pub fn addressed(mut loaded: Loaded) -> Loaded {
    let left_out = loaded
        .local
        .set(Some(DST_MAC), &local_addrs())
        .expect("writing the local addresses");
    assert!(left_out.is_empty());
    loaded
}

/// Nanoseconds of `clock` (CLOCK_MONOTONIC, or CLOCK_MONOTONIC_COARSE, the
/// clock the program stamps heartbeats with).
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
