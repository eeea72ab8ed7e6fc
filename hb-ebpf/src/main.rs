//! The XDP heartbeat filter: stamps `PyHB` datagrams into the host table and
//! drops them; every other frame passes unchanged.
#![no_std]
#![no_main]
// core has no atomic read-modify-write on the BPF target: atomic_xadd for
// counting, inline assembly for the slot allocator's fetch-and-add.
#![feature(core_intrinsics, asm_experimental_arch)]
#![allow(internal_features)]

mod parse;
mod table;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use aya_log_ebpf::warn;
use hb_common::{Counter, DEFAULT_PORT};

use crate::{parse::Frame, table::Stamped};

/// Heartbeat UDP port, network byte order (as on the wire); set by
/// userspace at load time.
#[unsafe(no_mangle)]
static HB_PORT: u16 = DEFAULT_PORT.to_be();

/// Non-zero: heartbeats continue to the stack after being stamped.
#[unsafe(no_mangle)]
static HB_PASS_HEARTBEATS: u8 = 0;

#[map(name = "HB_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT as u32, 0);

#[xdp]
pub fn hb(ctx: XdpContext) -> u32 {
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    // SAFETY: read_volatile keeps the compiler from folding the load-time
    // constant into the code.
    let port = unsafe { core::ptr::read_volatile(&HB_PORT) };
    let key = match parse::heartbeat_source(&frame, port) {
        Ok(key) => key,
        Err(miss) => {
            count(miss);
            return xdp_action::XDP_PASS;
        }
    };
    match table::stamp(&key) {
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
                    "host table full: heartbeat from {:i} not recorded ({} so far on this CPU)",
                    key.addr,
                    n
                );
            }
        }
    }
    // SAFETY: as for HB_PORT.
    if unsafe { core::ptr::read_volatile(&HB_PASS_HEARTBEATS) } != 0 {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// Does nothing: the floor that benchmarks measure hb's cost against.
#[xdp]
pub fn hb_baseline(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Adds one to a per-CPU counter; returns the new value on this CPU.
#[inline(always)]
fn count(c: Counter) -> u64 {
    match COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it (XDP runs with
        // preemption disabled).
        Some(p) => unsafe {
            *p += 1;
            *p
        },
        None => 0,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
