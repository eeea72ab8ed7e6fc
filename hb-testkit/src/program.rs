//! The XDP program loaded for a test or a benchmark, with hb's defaults
//! (the default port, heartbeats consumed) and a table of `max_hosts`.
//!
//! The one module of the kit that uses hb-userspace.

use hb_userspace::xdp::{self, AuthSettings, Loaded, Settings};

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
    xdp::load(settings(max_hosts))
        .unwrap_or_else(|e| panic!("loading the XDP program (root, BPF): {e:#}"))
}

/// As [`load`], verifying signed heartbeats under `auth`'s key.
#[track_caller]
pub fn load_auth(max_hosts: u32, auth: Option<AuthSettings>) -> Loaded {
    xdp::load_auth(settings(max_hosts), auth)
        .unwrap_or_else(|e| panic!("loading the XDP program (root, BPF): {e:#}"))
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
