//! The host table: where a heartbeat's time is stamped. Kept behind this one
//! module because its layout is what fleet-scale sweeping depends on.
//!
//! Layout: a hash map gives each host address a slot; per-slot data lives in
//! `BPF_F_MMAPABLE` arrays that userspace maps and sweeps as plain memory
//! (about 1000x faster than walking a hash map entry by entry). Slots are
//! handed out by an atomic counter, only by the CPU whose insert of the key
//! succeeded, so two CPUs racing on the same new host never take two slots,
//! and no slot is ever lost. Hosts are removed only by userspace, which
//! forgets a retired host (see hb-userspace's `HostTable::forget_slot`)
//! and queues its slot in `HB_FREE`: a new host takes a queued slot before
//! a never-used one. A full table refuses new hosts instead of evicting
//! watched ones. Bare hosts (known by their address) take at most
//! `HB_MAX_BARE` slots, counted in `HB_BARE`, so that signed hosts find
//! room whatever spoofed `PyHB` arrives.
//!
//! A known host's slot is found through a hint first: a u32 array indexed
//! by a multiplicative hash of the address, checked against the slot's key.
//! The hash map lookup (jhash over 16 bytes, bucket walk, memcmp) measured
//! 32 ns of a 70 ns heartbeat; a hint that hits costs two inlined array
//! lookups. A hint that misses (two hosts sharing it, or none yet) falls
//! back to the hash map and is rewritten, so hints never need locking.
//!
//! Authenticated hosts are keyed by host id (see `HostKey::from_host_id`),
//! and their slot's `HB_AUTH` entry holds the last accepted sequence number.
//! Their heartbeat is checked against it and the number advanced with a
//! compare-and-swap before anything else of the slot is touched; a new
//! host's entry is written before its slot is published. The MAC has been
//! verified by then, so only key holders ever create or advance state.
//!
//! Clock: bpf_ktime_get_coarse_ns (CLOCK_MONOTONIC at tick resolution).
//! bpf_jiffies64 measured 8 ns cheaper per heartbeat, but its unit (the
//! kernel's HZ) is not visible to userspace; the hint already brings a
//! known host within the 2.5x target, so hb keeps nanoseconds. The call is
//! the dearest thing a known host's heartbeat does (about 13 ns of 46 on
//! the benchmark VM, see docs/benchmarks.md), so it is made last.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{Array, HashMap, Queue},
};
use core::intrinsics::{AtomicOrdering, atomic_xadd};
use hb_common::{AuthSlot, BPF_F_MMAPABLE, DEFAULT_MAX_HOSTS, HostKey, SLOT_PENDING};

#[map(name = "HB_SLOTS")]
static SLOTS: HashMap<HostKey, u32> = HashMap::with_max_entries(DEFAULT_MAX_HOSTS, 0);
#[map(name = "HB_LAST_SEEN")]
static LAST_SEEN: Array<u64> = Array::with_max_entries(DEFAULT_MAX_HOSTS, BPF_F_MMAPABLE);
#[map(name = "HB_BEATS")]
static BEATS: Array<u64> = Array::with_max_entries(DEFAULT_MAX_HOSTS, BPF_F_MMAPABLE);
#[map(name = "HB_SLOT_KEYS")]
static SLOT_KEYS: Array<HostKey> = Array::with_max_entries(DEFAULT_MAX_HOSTS, BPF_F_MMAPABLE);
/// Slot hints: `slot + 1` of the host last seen at `hint_index(key)`, 0 if
/// none. A hint is only trusted once `SLOT_KEYS[slot]` equals the key, so
/// stale or overwritten hints cost a hash lookup, never a wrong stamp.
/// Two hints an element: array elements take 8 bytes even for a u32.
#[map(name = "HB_HINTS")]
static HINTS: Array<[u32; 2]> = Array::with_max_entries(DEFAULT_MAX_HOSTS / 2, 0);
/// Userspace's sweep state (never touched here): pinned with the table, so
/// a restarted collector carries on where the last one stopped.
#[map(name = "HB_TRACKER")]
static TRACKER: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);
/// Replay and loss state of authenticated hosts, by slot. One entry when
/// no key is configured (userspace shrinks it at load time).
#[map(name = "HB_AUTH")]
static AUTH: Array<AuthSlot> = Array::with_max_entries(DEFAULT_MAX_HOSTS, BPF_F_MMAPABLE);
#[map(name = "HB_ALLOC")]
static ALLOC: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);
/// Slots of forgotten hosts, queued by userspace once nothing can stamp
/// them any more; taken by new hosts first.
#[map(name = "HB_FREE")]
static FREE: Queue<u32> = Queue::with_max_entries(DEFAULT_MAX_HOSTS, 0);
/// Bare hosts (known by address) in the table, at most `HB_MAX_BARE`:
/// pinned with the table, so the cap holds across restarts.
#[map(name = "HB_BARE")]
static BARE: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// How many bare hosts the table takes (`--max-bare-hosts`); set by
/// userspace at load time.
#[unsafe(no_mangle)]
static HB_MAX_BARE: u32 = DEFAULT_MAX_HOSTS;

const EEXIST: i32 = 17;

/// Hint array size - 1 (a power of two - 1); set by userspace at load time.
#[unsafe(no_mangle)]
static HB_HINT_MASK: u32 = DEFAULT_MAX_HOSTS - 1;

pub enum Stamped {
    Known,
    New,
    TableFull,
    /// A signed heartbeat not newer than its host's last: nothing changed.
    Replayed,
}

/// What a verified signed heartbeat brings besides its key.
pub struct Fresh {
    /// Sequence number (host order).
    pub seq: u64,
    /// Source address, recorded for display.
    pub src: HostKey,
}

/// Records a heartbeat from `key` now; `fresh` for a verified signed one,
/// which is refused unless its sequence number is newer than the last.
#[inline(always)]
pub fn stamp(key: &HostKey, fresh: Option<&Fresh>) -> Stamped {
    let index = hint_index(key);
    let hint = HINTS
        .get_ptr_mut(index >> 1)
        .map(|pair| half(pair, index & 1));
    if let Some(h) = hint {
        // SAFETY: pointer from a successful array lookup.
        let slot = unsafe { core::ptr::read_volatile(h) }.wrapping_sub(1);
        if let Some(k) = SLOT_KEYS.get_ptr(slot)
            // SAFETY: pointer from a successful array lookup; a slot's key
            // never changes once the slot is published.
            && unsafe { same_key(k, key) }
        {
            if let Some(f) = fresh
                && !advance(slot, f)
            {
                return Stamped::Replayed;
            }
            touch(slot);
            return Stamped::Known;
        }
    }
    if let Some(slot) = SLOTS.get_ptr(key) {
        // SAFETY: pointer from a successful lookup (a deleted entry's
        // memory outlives this program run: RCU).
        let slot = unsafe { core::ptr::read_volatile(slot) };
        // SLOT_PENDING: another CPU is recording this host's first heartbeat
        // at this very moment; it stamps the same time. A signed heartbeat
        // cannot be ordered against that one: it is refused as a replay
        // (two signed beats of one host within nanoseconds are not a
        // client's doing).
        if slot == SLOT_PENDING {
            return if fresh.is_some() {
                Stamped::Replayed
            } else {
                Stamped::Known
            };
        }
        if let Some(f) = fresh
            && !advance(slot, f)
        {
            return Stamped::Replayed;
        }
        touch(slot);
        if let Some(h) = hint {
            // SAFETY: pointer from a successful array lookup.
            unsafe { core::ptr::write_volatile(h, slot + 1) };
        }
        return Stamped::Known;
    }
    // A new bare host takes a place in the bare hosts' share first, so
    // that spoofed sources cannot crowd signed hosts out of the table.
    let bare = if fresh.is_none() {
        match take_bare() {
            Some(b) => Some(b),
            None => return Stamped::TableFull,
        }
    } else {
        None
    };
    match SLOTS.insert(key, &SLOT_PENDING, BPF_NOEXIST as u64) {
        Ok(()) => {}
        // Another CPU inserted it between our lookup and insert: it owns the
        // slot allocation and stamps the same time (signed: as above).
        Err(e) if e == -EEXIST => {
            give_back(bare);
            return if fresh.is_some() {
                Stamped::Replayed
            } else {
                Stamped::Known
            };
        }
        Err(_) => {
            give_back(bare);
            return Stamped::TableFull;
        }
    }
    // A freed slot first (only this CPU pops it); else the next never
    // used. A pop refused under contention leaves the slot queued.
    let slot = match FREE.pop() {
        Ok(Some(slot)) => slot,
        _ => {
            let Some(next) = ALLOC.get_ptr_mut(0) else {
                let _ = SLOTS.remove(key);
                give_back(bare);
                return Stamped::TableFull;
            };
            // SAFETY: valid map value pointer.
            (unsafe { fetch_add(next, 1) }) as u32
        }
    };
    let (Some(k), Some(b), Some(t)) = (
        SLOT_KEYS.get_ptr_mut(slot),
        BEATS.get_ptr_mut(slot),
        LAST_SEEN.get_ptr_mut(slot),
    ) else {
        // Only if the arrays are smaller than the hash map: refuse the host.
        let _ = SLOTS.remove(key);
        give_back(bare);
        return Stamped::TableFull;
    };
    if let Some(f) = fresh {
        let Some(a) = AUTH.get_ptr_mut(slot) else {
            // Only if the auth array is smaller than the table: the slot
            // stays taken but unpublished, like a lost race would leave it.
            let _ = SLOTS.remove(key);
            return Stamped::TableFull;
        };
        // SAFETY: pointer from a successful array lookup; nobody else
        // writes this slot before it is published below.
        unsafe {
            core::ptr::write_volatile(
                a,
                AuthSlot {
                    seq: f.seq,
                    lost: 0,
                    addr: f.src,
                },
            )
        };
    }
    // SAFETY: pointers from successful array lookups. The order matters:
    // the sweeper treats a slot as ready once its last-seen time is non-zero,
    // so the key and count are written first, and the time is published
    // with an atomic exchange: the JIT makes it fully ordered on every
    // architecture (arm64 reorders plain stores, x86 does not).
    unsafe {
        core::ptr::write_volatile(k, *key);
        core::ptr::write_volatile(b, 1);
        exchange(t, now());
    }
    if let Some(value) = SLOTS.get_ptr_mut(key) {
        // SAFETY: pointer from a successful lookup.
        unsafe { core::ptr::write_volatile(value, slot) };
    }
    if let Some(h) = hint {
        // SAFETY: pointer from a successful array lookup.
        unsafe { core::ptr::write_volatile(h, slot + 1) };
    }
    Stamped::New
}

/// Takes a place in the bare hosts' share (`HB_MAX_BARE`) for a new bare
/// host; `None` when it is full. Atomic: of CPUs racing for the last
/// places, only as many as there are get one (each adds one and keeps it
/// only if the count before was below the cap, else takes it back), so the
/// cap never overshoots. A CPU taking one back may make another's attempt
/// fail at that moment: that heartbeat is refused once, the next one
/// finds its place.
#[inline(always)]
fn take_bare() -> Option<*mut u64> {
    let n = BARE.get_ptr_mut(0)?;
    // SAFETY: read_volatile keeps the load-time constant out of the code.
    let cap = u64::from(unsafe { core::ptr::read_volatile(&HB_MAX_BARE) });
    // A full share is seen with a plain load: a flood of new sources past
    // the cap does not bounce the counter's cache line between CPUs.
    // SAFETY: pointer from a successful array lookup.
    if unsafe { core::ptr::read_volatile(n) } >= cap {
        return None;
    }
    // SAFETY: valid, aligned map value.
    if unsafe { fetch_add(n, 1) } >= cap {
        give_back(Some(n));
        return None;
    }
    Some(n)
}

/// Gives back a place taken by `take_bare`, if any.
#[inline(always)]
fn give_back(bare: Option<*mut u64>) {
    if let Some(n) = bare {
        // SAFETY: valid, aligned map value; adding 2^64 - 1 subtracts one.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(n, u64::MAX) };
    }
}

/// The `which`th (0 or 1) u32 of a hint pair. The addition is written in
/// assembly so that it stays after the lookup's null check: LLVM would
/// hoist plain pointer arithmetic above it, which the verifier refuses.
#[inline(always)]
fn half(pair: *mut [u32; 2], which: u32) -> *mut u32 {
    let mut p = pair.cast::<u32>();
    // SAFETY: adds 0 or 4 to a pointer to 8 bytes of map value.
    unsafe {
        core::arch::asm!(
            "{0} += {1}",
            inout(reg) p,
            in(reg) u64::from(which & 1) * 4,
            // Not `pure`: that would let LLVM hoist it, too.
            options(nomem, nostack),
        )
    };
    p
}

/// Where a host's hint lives: a multiplicative hash of its address, masked
/// to the hint array's power-of-two size (set at load time).
#[inline(always)]
fn hint_index(key: &HostKey) -> u32 {
    let [a, b] = key.words();
    // SAFETY: read_volatile keeps the load-time constant out of the code.
    let mask = unsafe { core::ptr::read_volatile(&HB_HINT_MASK) };
    ((a ^ b).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32 & mask
}

/// # Safety
/// `stored` must point to a valid, 8-byte aligned map value.
#[inline(always)]
unsafe fn same_key(stored: *const HostKey, key: &HostKey) -> bool {
    // SAFETY: array values are 8-byte aligned; HostKey is align(8).
    let [a, b] = unsafe { (*stored).words() };
    [a, b] == key.words()
}

/// The time a heartbeat is stamped with. Read where it is stored, after
/// the lookups: a value kept across them (calls, to LLVM) is spilled to the
/// stack and loaded back.
#[inline(always)]
fn now() -> u64 {
    // Coarse clock: heartbeats come seconds apart, so a tick's resolution is
    // plenty, and it is measurably cheaper than bpf_ktime_get_ns.
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn touch(slot: u32) {
    if let Some(t) = LAST_SEEN.get_ptr_mut(slot) {
        // SAFETY: pointer from a successful array lookup.
        unsafe { core::ptr::write_volatile(t, now()) };
    }
    if let Some(b) = BEATS.get_ptr_mut(slot) {
        // SAFETY: as above; several CPUs may count the same host at once.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(b, 1) };
    }
}

/// Moves the slot's last accepted sequence number to `f.seq` if that is
/// newer; counts the heartbeats missing in between as lost. False: a
/// replay (or an older heartbeat), nothing changed.
#[inline(always)]
fn advance(slot: u32, f: &Fresh) -> bool {
    let Some(a) = AUTH.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: pointer from a successful array lookup.
    let seq = unsafe { &raw mut (*a).seq };
    // SAFETY: as above.
    let last = unsafe { core::ptr::read_volatile(seq) };
    if f.seq <= last {
        return false;
    }
    // Only one CPU moves a given `last` on: of two copies of one heartbeat
    // racing on two CPUs, one is a replay. A legitimate beat that loses
    // such a race is refused once; its host is alive through the winner.
    // SAFETY: valid, aligned map value.
    if unsafe { cmpxchg(seq, last, f.seq) } != last {
        return false;
    }
    // Loss is a gap in the client's count, the low 32 bits (see
    // docs/wire-format.md): it rises by one a heartbeat across the run
    // changes of one client process; a count that does not rise is a
    // restarted client (it counts from 0 again), which loses nothing. A
    // forgotten host (`hb forget`: last 0) starts its count afresh.
    let (count, was) = (f.seq as u32, last as u32);
    let gap = if last != 0 && count > was {
        u64::from(count - was - 1)
    } else {
        0
    };
    if gap != 0 {
        // SAFETY: valid, aligned map value; several CPUs may add at once.
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*a).lost, gap);
        }
        crate::count_n(hb_common::Counter::Lost, gap);
    }
    let [w0, w1] = f.src.words();
    // SAFETY: as above. The address is for display: a torn read while a
    // host moves shows one of its two addresses' halves for one sweep.
    unsafe {
        let addr = (&raw mut (*a).addr).cast::<u64>();
        core::ptr::write_volatile(addr, w0);
        core::ptr::write_volatile(addr.add(1), w1);
    }
    true
}

/// Atomic compare-and-exchange (BPF_ATOMIC | BPF_CMPXCHG, kernel >= 5.12):
/// stores `new` at `p` if it holds `old`; returns what it held. Assembly
/// for the same reason as `fetch_add`.
///
/// # Safety
/// `p` must point to a valid, 8-byte aligned map value.
#[inline(always)]
unsafe fn cmpxchg(p: *mut u64, old: u64, new: u64) -> u64 {
    let mut r0 = old;
    // SAFETY: the caller guarantees `p`.
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({0} + 0, r0, {1})",
            in(reg) p,
            in(reg) new,
            inout("r0") r0,
            options(nostack),
        );
    }
    r0
}

/// Atomic exchange (BPF_ATOMIC | BPF_XCHG, kernel >= 5.12), fully ordered:
/// the stores before it are visible before the value it stores. Assembly
/// for the same reason as `fetch_add`.
///
/// # Safety
/// `p` must point to a valid, 8-byte aligned map value.
#[inline(always)]
unsafe fn exchange(p: *mut u64, v: u64) {
    let mut v = v;
    // SAFETY: the caller guarantees `p`.
    unsafe {
        core::arch::asm!(
            "{0} = xchg_64({1} + 0, {0})",
            inout(reg) v,
            in(reg) p,
            options(nostack),
        );
    }
    let _ = v;
}

/// Atomic fetch-and-add (BPF_ATOMIC | BPF_FETCH, kernel >= 5.12). Written in
/// assembly because LLVM refuses to use the old value of an atomic add for
/// the generic BPF CPU that rustc selects, and aya-build gives no way to pick
/// another one.
///
/// # Safety
/// `p` must point to a valid, 8-byte aligned map value.
#[inline(always)]
unsafe fn fetch_add(p: *mut u64, v: u64) -> u64 {
    let mut v = v;
    // SAFETY: the caller guarantees `p`.
    unsafe {
        core::arch::asm!(
            "{0} = atomic_fetch_add((u64 *)({1} + 0), {0})",
            inout(reg) v,
            in(reg) p,
            options(nostack),
        );
    }
    v
}
