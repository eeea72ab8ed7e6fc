//! The XDP heartbeat filter: stamps `PyHB` datagrams (and, with a fleet key,
//! signed heartbeats whose MAC verifies) into the host table and drops them;
//! every other frame passes unchanged.
#![no_std]
#![no_main]
// core has no atomic read-modify-write on the BPF target: atomic_xadd for
// counting, inline assembly for the slot allocator's fetch-and-add.
#![feature(core_intrinsics, asm_experimental_arch)]
#![allow(internal_features)]

mod clock;
mod parse;
mod table;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use aya_log_ebpf::warn;
use hb_common::{
    AuthMode, Counter, DEFAULT_PORT, HostKey, LocalSet, auth, auth::mac_after_header, local_bucket,
    sip::SipState,
};

use crate::{
    parse::Frame,
    table::{Fresh, Stamped},
};

/// Heartbeat UDP port, network byte order (as on the wire); set by
/// userspace at load time.
#[unsafe(no_mangle)]
static HB_PORT: u16 = DEFAULT_PORT.to_be();

/// Non-zero: heartbeats continue to the stack after being stamped.
#[unsafe(no_mangle)]
static HB_PASS_HEARTBEATS: u8 = 0;

/// An `AuthMode`; set by userspace at load time.
#[unsafe(no_mangle)]
static HB_AUTH_MODE: u8 = AuthMode::Off as u8;

/// SipHash state after the fleet key and the fixed header word; set by
/// userspace at load time (zero, and unused, without a key).
#[unsafe(no_mangle)]
static HB_SIP_STATE: [u64; 4] = [0; 4];

/// Non-zero: `--any-destination`, heartbeats to any MAC and address.
#[unsafe(no_mangle)]
static HB_ANY_DESTINATION: u8 = 0;

/// The interface's MAC and the namespace's addresses, kept current by
/// userspace (see hb-common's `LOCAL_SET_SECTION`). A global in a section of
/// its own: read at a fixed address, where two map lookups (each a call as
/// far as LLVM knows, so what lives across it goes to the stack) cost a
/// heartbeat about 1.5 ns.
/// Only ever read with `read_volatile`: the linker sees no store to it and
/// would fold its loads to the zeros it starts with.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".data.hb_local")]
static mut HB_LOCAL: LocalSet = LocalSet::EMPTY;

/// The header word of a version 1 payload, as loaded from the wire.
const SIGNED_HEADER: u64 = u64::from_le_bytes(auth::HEADER);
/// `HostKey::from_host_id`'s first word, as loaded.
const HOST_ID_TAG: u64 = u64::from_le_bytes(auth::HOST_ID_TAG);

#[map(name = "HB_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT as u32, 0);

#[xdp]
pub fn hb(ctx: XdpContext) -> u32 {
    filter::<false>(ctx)
}

/// `hb` as though every heartbeat came at least a tick after its host's
/// last, as real ones do (seconds apart): what a heartbeat costs with its
/// timing folded in. For benchmarks only: BPF_PROG_TEST_RUN repeats a
/// frame within a tick, where `hb` has no interval to fold.
#[xdp]
pub fn hb_every_fold(ctx: XdpContext) -> u32 {
    filter::<true>(ctx)
}

/// The program; `EVERY_FOLD` for `hb_every_fold`.
#[inline(always)]
fn filter<const EVERY_FOLD: bool>(ctx: XdpContext) -> u32 {
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    // SAFETY: read_volatile keeps the compiler from folding the load-time
    // constant into the code.
    let port = unsafe { core::ptr::read_volatile(&HB_PORT) };
    let beat = match parse::heartbeat_source(&frame, port) {
        Ok(beat) => beat,
        Err(miss) => {
            count(miss);
            return xdp_action::XDP_PASS;
        }
    };
    // Someone else's heartbeat (a bridge, a router, a hypervisor's uplink)
    // is theirs: passed untouched.
    // SAFETY: as for HB_PORT.
    if unsafe { core::ptr::read_volatile(&HB_ANY_DESTINATION) } == 0 && !for_us(&frame, &beat.dst) {
        count(Counter::NotForUs);
        return xdp_action::XDP_PASS;
    }
    // No host sends from there; an IPv6 multicast source would also claim
    // the key space of host ids.
    if beat.bad_src {
        count(Counter::BadSource);
        return heartbeat_verdict();
    }
    let fresh;
    let key = match beat.signed {
        None => {
            // SAFETY: as for HB_PORT.
            let mode = unsafe { core::ptr::read_volatile(&HB_AUTH_MODE) };
            if mode == AuthMode::Required as u8 {
                count(Counter::Unauthenticated);
                return heartbeat_verdict();
            }
            fresh = None;
            beat.src
        }
        // Only with a key (the parser's doing).
        Some(s) => {
            if s.header != SIGNED_HEADER || !verified(s.host_id, s.seq, s.mac) {
                count(Counter::Forged);
                return heartbeat_verdict();
            }
            fresh = Some(Fresh {
                seq: u64::from_be(s.seq),
                src: beat.src,
            });
            HostKey::from_words([HOST_ID_TAG, s.host_id])
        }
    };
    match table::stamp::<EVERY_FOLD>(&key, fresh.as_ref()) {
        Stamped::Known => {
            count(Counter::Heartbeat);
        }
        Stamped::New => {
            count(Counter::Heartbeat);
            count(Counter::NewHost);
        }
        Stamped::TableFull => {
            let n = count(Counter::TableFull);
            // Logged on this CPU's 1st, 2nd, 4th, 8th... refusal: the
            // operator learns of it without a flood.
            if n & (n - 1) == 0 {
                warn!(
                    &ctx,
                    "no room for a new host (host table or bare hosts' share full): heartbeat from {:i} not recorded ({} so far on this CPU)",
                    beat.src.addr,
                    n
                );
            }
        }
        Stamped::Replayed => {
            count(Counter::Replayed);
        }
    }
    heartbeat_verdict()
}

/// Whether the frame is addressed to this collector: to the interface's
/// MAC or a group (broadcast, multicast) MAC, and to an address of its
/// network namespace.
#[inline(always)]
fn for_us(frame: &Frame, dst: &HostKey) -> bool {
    let local = &raw const HB_LOCAL;
    let mac = parse::dst_mac(frame);
    // The group bit is the first byte's lowest.
    // SAFETY: a global of the program's; see HB_LOCAL for the volatile.
    if mac & 1 == 0 && unsafe { core::ptr::read_volatile(&raw const (*local).mac) } != mac {
        return false;
    }
    let [a, b] = dst.words();
    // Empty places are zero: `::` is never local.
    if (a | b) == 0 {
        return false;
    }
    // In bounds: the hash is under LOCAL_BUCKETS.
    // SAFETY: as above.
    let bucket = unsafe { &raw const (*local).buckets[local_bucket([a, b]) as usize] };
    (0..hb_common::LOCAL_WAYS).any(|i| {
        // SAFETY: as above; HostKey is two aligned words.
        let w = unsafe { (&raw const (*bucket)[i]).cast::<[u64; 2]>() };
        // SAFETY: as above.
        unsafe { core::ptr::read_volatile(w) == [a, b] }
    })
}

/// Whether a fleet key is configured (signed heartbeats are verified).
#[inline(always)]
fn keyed() -> bool {
    // SAFETY: as for HB_PORT.
    unsafe { core::ptr::read_volatile(&HB_AUTH_MODE) != AuthMode::Off as u8 }
}

/// Heartbeats, and datagrams posing as one, are consumed here unless
/// `--pass-heartbeats`: a flood of forgeries stops in XDP too.
#[inline(always)]
fn heartbeat_verdict() -> u32 {
    // SAFETY: as for HB_PORT.
    if unsafe { core::ptr::read_volatile(&HB_PASS_HEARTBEATS) } != 0 {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// Checks a signed payload's MAC (words as loaded from the wire).
#[inline(always)]
fn verified(host_id: u64, seq: u64, mac: u64) -> bool {
    // SAFETY: as for HB_PORT, one word at a time.
    let state = unsafe {
        SipState([
            core::ptr::read_volatile(&HB_SIP_STATE[0]),
            core::ptr::read_volatile(&HB_SIP_STATE[1]),
            core::ptr::read_volatile(&HB_SIP_STATE[2]),
            core::ptr::read_volatile(&HB_SIP_STATE[3]),
        ])
    };
    mac_after_header(state, host_id, seq) == mac
}

/// Does nothing: the floor that benchmarks measure hb's cost against.
#[xdp]
pub fn hb_baseline(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Adds one to a per-CPU counter; returns the new value on this CPU.
#[inline(always)]
fn count(c: Counter) -> u64 {
    count_n(c, 1)
}

/// Adds `n` to a per-CPU counter; returns the new value on this CPU.
#[inline(always)]
pub(crate) fn count_n(c: Counter, n: u64) -> u64 {
    match COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it (XDP runs with
        // preemption disabled).
        Some(p) => unsafe {
            *p += n;
            *p
        },
        None => 0,
    }
}

// The verdicts in hb-common, which userspace (tests, benchmarks) compares
// BPF_PROG_TEST_RUN's results with, are the kernel's.
const _: () = {
    use hb_common::net;
    assert!(net::XDP_ABORTED == xdp_action::XDP_ABORTED);
    assert!(net::XDP_DROP == xdp_action::XDP_DROP);
    assert!(net::XDP_PASS == xdp_action::XDP_PASS);
    assert!(net::XDP_TX == xdp_action::XDP_TX);
    assert!(net::XDP_REDIRECT == xdp_action::XDP_REDIRECT);
};

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
