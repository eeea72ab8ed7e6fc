//! The time a heartbeat is stamped with, read cheaply.
//!
//! `bpf_ktime_get_coarse_ns` is a call into the kernel, and on kernels
//! with return-stack mitigations (SRSO "Safe RET", retbleed) a call and
//! its return cost about 13 ns: a quarter of a known host's heartbeat.
//! `bpf_jiffies64` is inlined by the verifier (a plain load), and the
//! coarse clock only moves when jiffies do (both advance in the tick), so
//! each CPU keeps the coarse time it read and the jiffies it read it at,
//! and calls the helper again only once jiffies have moved.
//!
//! One catch: the tick advances jiffies first and the clock just after
//! (`tick_do_update_jiffies64`, then `update_wall_time`), so a read in
//! between sees the new jiffies with the old time. A reading is therefore
//! trusted for its jiffy only once it differs from a reading taken in the
//! same or the previous jiffy (that one predates the update, so this one
//! follows it); until then every heartbeat reads the clock itself. With
//! traffic, that is one or two calls a jiffy on each CPU. What is left:
//! a CPU whose only reading of the previous jiffy fell in that jiffy's
//! own gap, and whose first of this jiffy falls in this one's, keeps a
//! time one jiffy old for the rest of this jiffy. Stamps are never ahead
//! of the coarse clock, only (rarely) one jiffy behind it, 1–10 ms
//! against heartbeats seconds apart.

use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::map,
    maps::PerCpuArray,
};
use hb_common::timing::tick;

/// The last coarse-clock reading of this CPU.
#[repr(C)]
struct Reading {
    /// The jiffies it was read at; `UNTRUSTED` set while it may predate
    /// the clock's update for that jiffy.
    jiffies: u64,
    ns: u64,
}

const UNTRUSTED: u64 = 1 << 63;

#[map(name = "HB_CLOCK")]
static CLOCK: PerCpuArray<Reading> = PerCpuArray::with_max_entries(1, 0);

/// CLOCK_MONOTONIC ns the table's ticks count from; set at load time.
#[unsafe(no_mangle)]
static HB_EPOCH: u64 = 0;

/// The tick a heartbeat is stamped with (see hb-common's `timing`). Read
/// where it is stored, after the lookups: a value kept across them (calls,
/// to LLVM) is spilled to the stack and loaded back.
#[inline(always)]
pub fn now() -> u32 {
    // SAFETY: read_volatile keeps the load-time constant out of the code.
    let epoch = unsafe { core::ptr::read_volatile(&HB_EPOCH) };
    tick(coarse_ns(), epoch)
}

#[inline(always)]
fn coarse_ns() -> u64 {
    // SAFETY: helper without preconditions (inlined by the verifier).
    let j = unsafe { bpf_jiffies64() };
    let Some(r) = CLOCK.get_ptr_mut(0) else {
        // SAFETY: as above.
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: pointer from a successful lookup of this CPU's entry; only
    // this CPU touches it, and XDP runs with preemption off.
    unsafe {
        if (*r).jiffies == j {
            return (*r).ns;
        }
        let ns = bpf_ktime_get_coarse_ns();
        let last = (*r).jiffies & !UNTRUSTED;
        let trusted = ns != (*r).ns && j.wrapping_sub(last) <= 1;
        (*r).ns = ns;
        (*r).jiffies = if trusted { j } else { j | UNTRUSTED };
        ns
    }
}
