//! The host table: where a heartbeat's time is stamped. Kept behind this one
//! module because its layout is what fleet-scale sweeping depends on.
//!
//! Layout (6): each host has a slot; per-slot data lives in
//! `BPF_F_MMAPABLE` arrays that userspace maps and sweeps as plain memory:
//! the key (16 B), last-seen ticks (4 B), heartbeats (4 B) and learned
//! timing (8 B). Which slot a host has is found in the index (8 B a host,
//! see hb-common's `index`): two candidate buckets of 16 `u32` entries,
//! `tag | slot + 1`, scanned from a tag-chosen entry, each hit checked
//! against the slot's key. It replaces layout 5's hash map (88 B a host,
//! jhash and a bucket walk per lookup) and its hint array.
//!
//! Claiming a slot for a new host happens holding a claim lock (one of
//! `HB_CLAIM`'s 4096, chosen by a hash of the host): the host is looked
//! for again under it (another CPU may have just claimed it; only if an
//! entry of its buckets has its tag, which a branch-free survey of the two
//! lines tells, counting their empty entries too), a slot is taken (a
//! freed one from `HB_FREE` first, else the next never used from
//! `HB_ALLOC`), its key written, then an empty entry of the less loaded
//! bucket is set with a compare-and-exchange. Then both buckets are
//! scanned again: if another entry names the same key, this CPU clears its
//! own entry and gives its slot back (under the lock this cannot happen,
//! but a lock taken over from a holder that died, see
//! `CLAIM_STALE_TICKS`, may leave one: of two such claimers the later
//! always sees the earlier's entry, so no host ever holds two slots). Only
//! then is the slot's last-seen time (the tick the lock was taken at)
//! published: a slot whose last-seen reads 0 is being claimed (or was
//! given back), and a lookup that finds it stamps nothing. Without the
//! lock, the post-check alone is what the first layout-6 draft did: CPUs
//! racing on one new host all backed off now and then (35 of 10,000
//! lockstep rounds on 2 CPUs), losing that first heartbeat; with it, a CPU
//! that finds the lock held waits (up to 64 reads paced by clock reads, at
//! most `CLAIM_WAIT_NS`, 20 µs, where a claim takes about one) and then
//! finds the host claimed: its heartbeat counts.
//! Hosts are removed only by userspace, which forgets a retired host (see
//! hb-userspace's `HostTable::forget_slot`): clears its entry, and queues
//! its slot in `HB_FREE`. A full table (both buckets full, or no slot
//! left) refuses new hosts instead of evicting watched ones. Bare hosts
//! (known by their address) take at most `HB_MAX_BARE` slots, counted in
//! `HB_BARE`, so that signed hosts find room whatever spoofed `PyHB`
//! arrives.
//!
//! Authenticated hosts are keyed by host id (see `HostKey::from_host_id`),
//! and their slot's `HB_AUTH` entry holds the last accepted sequence number.
//! Their heartbeat is checked against it and the number advanced with a
//! compare-and-swap before anything else of the slot is touched; a new
//! host's entry is written before its slot is published. The MAC has been
//! verified by then, so only key holders ever create or advance state.
//!
//! Time: last-seen is `u32` ticks (coarse CLOCK_MONOTONIC ns >> 20) from
//! the table's epoch (`HB_EPOCH`), see hb-common's `timing`. A known host's
//! heartbeat folds the interval since its last one into its `HB_TIMING`
//! entry (RFC 6298 mean and deviation): a plain read-modify-write, so two
//! CPUs stamping one host within nanoseconds (a duplicated datagram) may
//! lose one sample, never corrupt the entry (one 8-byte store).

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, Queue},
};
use core::intrinsics::{AtomicOrdering, atomic_xadd};
use hb_common::{
    AuthSlot, BPF_F_MMAPABLE, DEFAULT_MAX_HOSTS, HostKey, Timing,
    index::{self, Bucket, Place},
    timing::ticks_since,
};

use crate::clock::now;

/// Index buckets (see hb-common's `index`); sized at load time.
#[map(name = "HB_INDEX")]
static INDEX: Array<Bucket> = Array::with_max_entries(DEFAULT_MAX_HOSTS / 8, BPF_F_MMAPABLE);
/// Two slots an element (see `pair`).
#[map(name = "HB_LAST_SEEN")]
static LAST_SEEN: Array<u64> = Array::with_max_entries(DEFAULT_MAX_HOSTS / 2, BPF_F_MMAPABLE);
/// Two slots an element (see `pair`).
#[map(name = "HB_BEATS")]
static BEATS: Array<u64> = Array::with_max_entries(DEFAULT_MAX_HOSTS / 2, BPF_F_MMAPABLE);
#[map(name = "HB_TIMING")]
static TIMING: Array<u64> = Array::with_max_entries(DEFAULT_MAX_HOSTS, BPF_F_MMAPABLE);
#[map(name = "HB_SLOT_KEYS")]
static SLOT_KEYS: Array<HostKey> = Array::with_max_entries(DEFAULT_MAX_HOSTS, BPF_F_MMAPABLE);
/// Userspace's sweep state (never touched here): pinned with the table, so
/// a restarted collector carries on where the last one stopped.
#[map(name = "HB_TRACKER")]
static TRACKER: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);
/// Replay and loss state of authenticated hosts, by slot. One entry when
/// no key is configured (userspace shrinks it at load time).
#[map(name = "HB_AUTH")]
static AUTH: Array<AuthSlot> = Array::with_max_entries(DEFAULT_MAX_HOSTS, BPF_F_MMAPABLE);
/// The next never-used slot; the table's epoch and index seed (read by
/// userspace only).
#[map(name = "HB_ALLOC")]
static ALLOC: Array<u64> = Array::with_max_entries(hb_common::ALLOC_WORDS, BPF_F_MMAPABLE);
/// Slots of forgotten hosts (or given back by a lost claim), taken by new
/// hosts first.
#[map(name = "HB_FREE")]
static FREE: Queue<u32> = Queue::with_max_entries(DEFAULT_MAX_HOSTS, 0);
/// Claim locks, by a hash of the host (see hb-common's `index`).
#[map(name = "HB_CLAIM")]
static CLAIM: Array<u64> = Array::with_max_entries(index::CLAIM_LOCKS, BPF_F_MMAPABLE);
/// Bare hosts (known by address) in the table, at most `HB_MAX_BARE`:
/// pinned with the table, so the cap holds across restarts.
#[map(name = "HB_BARE")]
static BARE: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// How many bare hosts the table takes (`--max-bare-hosts`); set by
/// userspace at load time.
#[unsafe(no_mangle)]
static HB_MAX_BARE: u32 = DEFAULT_MAX_HOSTS;

/// The table's capacity, in slots; set by userspace at load time.
#[unsafe(no_mangle)]
static HB_MAX_HOSTS: u32 = DEFAULT_MAX_HOSTS;

/// Index buckets - 1 (a power of two - 1); set by userspace at load time.
#[unsafe(no_mangle)]
static HB_INDEX_MASK: u32 = DEFAULT_MAX_HOSTS / 8 - 1;

/// Bits of an index entry that hold the slot; set at load time.
#[unsafe(no_mangle)]
static HB_SLOT_BITS: u32 = 21;

/// The index hash's key (random per table, pinned); set at load time.
#[unsafe(no_mangle)]
static HB_INDEX_SEED: [u64; 2] = [0; 2];

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
/// `EVERY_FOLD`: see `hb_every_fold`.
#[inline(always)]
pub fn stamp<const EVERY_FOLD: bool>(key: &HostKey, fresh: Option<&Fresh>) -> Stamped {
    // SAFETY: read_volatile keeps the load-time constants out of the code.
    let (mask, bits) = unsafe {
        (
            core::ptr::read_volatile(&HB_INDEX_MASK),
            core::ptr::read_volatile(&HB_SLOT_BITS),
        )
    };
    // SAFETY: as above.
    let seed = unsafe {
        [
            core::ptr::read_volatile(&HB_INDEX_SEED[0]),
            core::ptr::read_volatile(&HB_INDEX_SEED[1]),
        ]
    };
    let h = index::hash(key.words(), seed);
    let place = index::place(h, mask, bits);
    if let Some(slot) = lookup(key, place, bits) {
        return known::<EVERY_FOLD>(slot, fresh);
    }
    // A new host: claimed holding its claim lock, so that no other CPU
    // claims it at the same time. A lock held by another CPU is waited for
    // (a claim takes well under a microsecond), boundedly; then its host
    // is looked for again: the other CPU may have just claimed this one.
    let Some(lock) = lock(index::claim_lock(h)) else {
        // Still held after the wait: this heartbeat is not recorded (the
        // host's next one is).
        return if fresh.is_some() {
            Stamped::Replayed
        } else {
            Stamped::Known
        };
    };
    // Looked for again only if an entry of either bucket has its tag: a
    // survey of the two lines (already in the cache) without a branch,
    // which also counts their empty entries, instead of the entry by
    // entry lookup that a new host nearly always goes through for nothing.
    let (e1, t1) = survey(place.first, place.tag, bits);
    let (e2, t2) = survey(place.second, place.tag, bits);
    let again = if t1 | t2 != 0 {
        lookup(key, place, bits)
    } else {
        None
    };
    let stamped = match again {
        Some(slot) => known::<EVERY_FOLD>(slot, fresh),
        None => claim(key, fresh, place, bits, lock, (e1, e2)),
    };
    unlock(lock);
    stamped
}

/// `key`'s slot, looked for in its two buckets.
#[inline(always)]
fn lookup(key: &HostKey, place: Place, bits: u32) -> Option<u32> {
    // The entry its tag chooses in its first bucket, on its own first:
    // where a known host nearly always is (the loop finds it there too,
    // after its setup).
    if let Some(b) = INDEX.get_ptr(place.first) {
        let at = place.tag & (index::BUCKET_ENTRIES - 1);
        // SAFETY: pointer from a successful array lookup; `at / 2` < 8.
        let word = unsafe { core::ptr::read_volatile((b as *const u64).add((at >> 1) as usize)) };
        let e = (word >> ((at & 1) * 32)) as u32;
        if index::entry_tag(e, bits) == place.tag {
            let slot = index::entry_slot(e, bits);
            if let Some(k) = SLOT_KEYS.get_ptr(slot)
                // SAFETY: pointer from a successful array lookup.
                && unsafe { same_key(k, key) }
            {
                return Some(slot);
            }
        }
    }
    if let Some(slot) = find(key, place.first, place.tag, bits, u32::MAX) {
        return Some(slot);
    }
    if place.second != place.first {
        return find(key, place.second, place.tag, bits, u32::MAX);
    }
    None
}

/// Takes claim lock `n`: waits a bounded while for its holder, takes over
/// one left stale (see hb-common's `CLAIM_STALE_TICKS`).
#[inline(always)]
fn lock(n: u32) -> Option<Lock> {
    let l = CLAIM.get_ptr_mut(n)?;
    let me = now();
    let mut since = 0;
    // 64 tries: each a clock read apart, and few enough for the verifier,
    // which walks the loop once for each way the program gets here.
    for _ in 0..64 {
        // SAFETY: pointer from a successful array lookup.
        let held = unsafe { core::ptr::read_volatile(l) };
        if (held == 0 || ticks_since(me, held as u32) > index::CLAIM_STALE_TICKS)
            // SAFETY: valid, aligned map value.
            && unsafe { cmpxchg(l, held, u64::from(me)) } == held
        {
            return Some(Lock {
                word: l,
                me: u64::from(me),
                took_over: held != 0,
            });
        }
        // Held: waited for by the clock, not by a count of reads. 256
        // bare reads took about as long as a claim whose lines are all
        // cold (the waiter's heartbeat then went unrecorded in 2 of 80
        // runs of tests/forget.rs); each read here is paced by a call
        // into the kernel (tens of ns), and the wait ends after
        // CLAIM_WAIT_NS.
        // SAFETY: helper without preconditions.
        let t = unsafe { bpf_ktime_get_ns() };
        if since == 0 {
            since = t;
        } else if t.wrapping_sub(since) > index::CLAIM_WAIT_NS {
            break;
        }
    }
    None
}

/// Releases a claim lock taken by `lock` (fully ordered: what the claim
/// wrote is visible before the lock is free), unless it was taken over.
#[inline(always)]
fn unlock(l: Lock) {
    // SAFETY: pointer from `lock`.
    unsafe { cmpxchg(l.word, l.me, 0) };
}

/// A claim lock taken.
#[derive(Clone, Copy)]
struct Lock {
    word: *mut u64,
    /// The value this claim holds it with.
    me: u64,
    /// Taken over from a holder that left it stale.
    took_over: bool,
}

impl Lock {
    /// Whether the lock alone cannot vouch that no other claim of the host
    /// ran at the same time: it was taken over, or taken from this claim.
    #[inline(always)]
    fn shared(&self) -> bool {
        // SAFETY: pointer from `lock`.
        self.took_over || unsafe { core::ptr::read_volatile(self.word) } != self.me
    }
}

/// A heartbeat of the known host in `slot`.
#[inline(always)]
fn known<const EVERY_FOLD: bool>(slot: u32, fresh: Option<&Fresh>) -> Stamped {
    let Some(t) = pair(&LAST_SEEN, slot) else {
        return Stamped::Known;
    };
    // SAFETY: pointer from a successful array lookup.
    let last = unsafe { core::ptr::read_volatile(t) };
    // 0: another CPU is claiming this slot for this host right now, and
    // stamps the same time (or gives it back, and the host's next
    // heartbeat claims again). A signed heartbeat cannot be ordered against
    // that one: it is refused as a replay.
    if last == 0 {
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
    let now = now();
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(t, now) };
    let interval = ticks_since(now, last);
    // Never 0, at the cost of one `or` (a `max` would add a compare and
    // a branch to what is measured).
    let interval = if EVERY_FOLD { interval | 1 } else { interval };
    if let Some(p) = TIMING.get_ptr_mut(slot) {
        // SAFETY: pointer from a successful array lookup; see the module's
        // description for the race.
        unsafe {
            let was = Timing(core::ptr::read_volatile(p));
            core::ptr::write_volatile(p, was.update(interval).0);
        }
    }
    if let Some(b) = pair(&BEATS, slot) {
        // SAFETY: as above; several CPUs may count the same host at once.
        unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(b, 1) };
    }
    Stamped::Known
}

/// Looks for `key` in `bucket`, from the entry its tag chooses: its slot.
/// Skips the entry at `skip` (a claimer's own). Nothing but the loop
/// counter changes from one entry to the next, so that the verifier's
/// states of every path through an entry are the same at the next one.
#[inline(always)]
fn find(key: &HostKey, bucket: u32, tag: u32, bits: u32, skip: u32) -> Option<u32> {
    let b = INDEX.get_ptr(bucket)?;
    for i in 0..index::BUCKET_ENTRIES {
        let at = (tag + i) & (index::BUCKET_ENTRIES - 1);
        // SAFETY: pointer from a successful array lookup; `at / 2` < 8.
        let word = unsafe { core::ptr::read_volatile((b as *const u64).add((at >> 1) as usize)) };
        let e = (word >> ((at & 1) * 32)) as u32;
        // An empty entry (0) whose tag would match (tag 0) names slot
        // u32::MAX, which no lookup finds: no test of its own.
        if at == skip || index::entry_tag(e, bits) != tag {
            continue;
        }
        let slot = index::entry_slot(e, bits);
        if let Some(k) = SLOT_KEYS.get_ptr(slot)
            // SAFETY: pointer from a successful array lookup.
            && unsafe { same_key(k, key) }
        {
            return Some(slot);
        }
    }
    None
}

/// The empty entries of `bucket` (0 if there is no such bucket), and
/// whether any entry has `tag` (non-zero if so; see hb-common's
/// `index::tagged`: an empty entry has tag 0). Without a branch, so that
/// the verifier follows one path.
#[inline(always)]
fn survey(bucket: u32, tag: u32, bits: u32) -> (u32, u64) {
    let Some(b) = INDEX.get_ptr(bucket) else {
        return (0, 0);
    };
    let pattern = index::tag_pattern(tag, bits);
    let (mut n, mut tagged) = (0u64, 0u64);
    for i in 0..(index::BUCKET_ENTRIES / 2) {
        // SAFETY: pointer from a successful array lookup; i < 8.
        let w = unsafe { core::ptr::read_volatile((b as *const u64).add(i as usize)) };
        n += 2 - nonzero(w & 0xffff_ffff) - nonzero(w >> 32);
        tagged |= index::tagged(w, pattern);
    }
    (n as u32, tagged)
}

/// 1 if `x` is not 0, else 0, without a branch: BPF has no "set if", so
/// LLVM makes `x != 0` a jump, and the verifier would follow (and keep
/// apart) every count of empty entries. The top bit of `x | -x` is set
/// exactly when `x` is not 0.
#[inline(always)]
fn nonzero(x: u64) -> u64 {
    let y: u64;
    // SAFETY: arithmetic on registers only.
    unsafe {
        core::arch::asm!(
            "{y} = {x}",
            "{y} = -{y}",
            "{y} |= {x}",
            "{y} >>= 63",
            x = in(reg) x,
            y = out(reg) y,
            options(pure, nomem, nostack),
        )
    };
    y
}

/// Records the first heartbeat of a new host: claims a slot (see the
/// module's description). `empty`: the empty entries of its two buckets.
#[inline(always)]
fn claim(
    key: &HostKey,
    fresh: Option<&Fresh>,
    place: Place,
    bits: u32,
    lock: Lock,
    (e1, e2): (u32, u32),
) -> Stamped {
    if e1 == 0 && e2 == 0 {
        return Stamped::TableFull;
    }
    let bucket = if e1 >= e2 { place.first } else { place.second };
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
    let Some(slot) = take_slot() else {
        give_back(bare);
        return Stamped::TableFull;
    };
    let (Some(k), Some(tm)) = (SLOT_KEYS.get_ptr_mut(slot), TIMING.get_ptr_mut(slot)) else {
        give_back(bare);
        return Stamped::TableFull;
    };
    if let Some(f) = fresh {
        let Some(a) = AUTH.get_ptr_mut(slot) else {
            // Only if the auth array is smaller than the table.
            let _ = FREE.push(&slot, 0);
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
    // SAFETY: pointers from successful array lookups; the slot is this
    // CPU's until its entry is set.
    unsafe {
        core::ptr::write_volatile(k, *key);
        core::ptr::write_volatile(tm, 0);
    }
    let entry = index::entry(place.tag, slot, bits);
    let Some(at) = put(bucket, place.tag, entry) else {
        // Filled meanwhile.
        let _ = FREE.push(&slot, 0);
        give_back(bare);
        return Stamped::TableFull;
    };
    // The post-check, needed only where the lock was shared (a holder that
    // died, see the module's description): another claimer's entry for
    // this key, set before ours, is seen here.
    let twin = if !lock.shared() {
        None
    } else {
        match find(
            key,
            place.first,
            place.tag,
            bits,
            skip(place.first, bucket, at),
        ) {
            Some(f) => Some(f),
            None if place.second != place.first => find(
                key,
                place.second,
                place.tag,
                bits,
                skip(place.second, bucket, at),
            ),
            None => None,
        }
    };
    if twin.is_some() {
        clear(bucket, at, entry);
        let _ = FREE.push(&slot, 0);
        give_back(bare);
        return if fresh.is_some() {
            Stamped::Replayed
        } else {
            Stamped::Known
        };
    }
    let (Some(b), Some(t)) = (pair(&BEATS, slot), LAST_SEEN.get_ptr_mut(slot >> 1)) else {
        return Stamped::New;
    };
    // SAFETY: pointers from successful array lookups. The order matters:
    // the sweeper treats a slot as ready once its last-seen time is
    // non-zero, so the key and count are written first, and the time is
    // published with an atomic operation: the JIT makes it fully ordered
    // on every architecture (arm64 reorders plain stores, x86 does not).
    // The time is the tick the claim lock was taken at, under a
    // microsecond ago: reading the clock again (see `now`) would give the
    // same tick nearly always.
    unsafe {
        core::ptr::write_volatile(b, 1);
        publish(t, slot & 1, lock.me as u32);
    }
    Stamped::New
}

/// The entry place to skip in `bucket` when the claimer's own is at `at`
/// in `own`.
#[inline(always)]
fn skip(bucket: u32, own: u32, at: u32) -> u32 {
    if bucket == own { at } else { u32::MAX }
}

/// A slot for a new host: a freed one first (only this CPU pops it), else
/// the next never used; `None` when none is left.
#[inline(always)]
fn take_slot() -> Option<u32> {
    if let Ok(Some(slot)) = FREE.pop() {
        return Some(slot);
    }
    let next = ALLOC.get_ptr_mut(0)?;
    // SAFETY: read_volatile keeps the load-time constant out of the code.
    let cap = u64::from(unsafe { core::ptr::read_volatile(&HB_MAX_HOSTS) });
    // A full table is seen with a plain load, so that a flood of new
    // sources does not move the counter on (nor bounce its cache line).
    // SAFETY: pointer from a successful array lookup.
    if unsafe { core::ptr::read_volatile(next) } >= cap {
        return None;
    }
    // SAFETY: valid map value pointer. CPUs racing past the last slot take
    // numbers beyond it, which name no slot: refused below.
    let slot = unsafe { fetch_add(next, 1) };
    (slot < cap).then_some(slot as u32)
}

/// Sets an empty entry of `bucket` to `entry`, from the place its tag
/// chooses; where it went, `None` if the bucket is full.
#[inline(always)]
fn put(bucket: u32, tag: u32, entry: u32) -> Option<u32> {
    let b = INDEX.get_ptr_mut(bucket)?;
    for i in 0..index::BUCKET_ENTRIES {
        let at = (tag + i) & (index::BUCKET_ENTRIES - 1);
        let shift = (at & 1) * 32;
        // SAFETY: pointer from a successful array lookup; `at / 2` < 8.
        let w = unsafe { (b as *mut u64).add((at >> 1) as usize) };
        // SAFETY: as above.
        let word = unsafe { core::ptr::read_volatile(w) };
        if (word >> shift) as u32 != 0 {
            continue;
        }
        let new = word | (u64::from(entry) << shift);
        // SAFETY: valid, aligned map value. A failure (the other half
        // changed, or this one was taken) moves on: the bucket is scanned
        // once, bounded.
        if unsafe { cmpxchg(w, word, new) } == word {
            return Some(at);
        }
    }
    None
}

/// Clears entry `at` of `bucket`, which holds `entry` (a lost claim).
#[inline(always)]
fn clear(bucket: u32, at: u32, entry: u32) {
    let Some(b) = INDEX.get_ptr_mut(bucket) else {
        return;
    };
    let at = at & (index::BUCKET_ENTRIES - 1);
    let shift = (at & 1) * 32;
    // SAFETY: pointer from a successful array lookup; `at / 2` < 8.
    let w = unsafe { (b as *mut u64).add((at >> 1) as usize) };
    // The other half may change meanwhile (another claim): retried, a few
    // times at most under any real contention.
    for _ in 0..8 {
        // SAFETY: as above.
        let word = unsafe { core::ptr::read_volatile(w) };
        if (word >> shift) as u32 != entry {
            return;
        }
        let new = word & !(0xffff_ffffu64 << shift);
        // SAFETY: valid, aligned map value.
        if unsafe { cmpxchg(w, word, new) } == word {
            return;
        }
    }
}

/// Publishes a new slot's last-seen time `v` in half `which` of the
/// element at `w`: a fully ordered store (a compare-and-exchange of the
/// whole element, retried if the other slot's half moved meanwhile).
///
/// # Safety
/// `w` must point to a valid, 8-byte aligned map value.
#[inline(always)]
unsafe fn publish(w: *mut u64, which: u32, v: u32) {
    let shift = (which & 1) * 32;
    for _ in 0..8 {
        // SAFETY: the caller guarantees the element.
        let word = unsafe { core::ptr::read_volatile(w) };
        let new = (word & !(0xffff_ffffu64 << shift)) | (u64::from(v) << shift);
        // SAFETY: as above.
        if unsafe { cmpxchg(w, word, new) } == word {
            return;
        }
    }
    // Only under a storm of stamps on the neighbouring slot: a plain
    // store of the whole element, as ordered on x86 all the same.
    // SAFETY: as above.
    unsafe {
        let word = core::ptr::read_volatile(w);
        core::ptr::write_volatile(
            w,
            (word & !(0xffff_ffffu64 << shift)) | (u64::from(v) << shift),
        );
    }
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

/// Half `slot & 1` of element `slot / 2` of a map of two `u32` slots an
/// element. The addition is written in assembly so that it stays after the
/// lookup's null check: LLVM would hoist plain pointer arithmetic above
/// it, which the verifier refuses.
#[inline(always)]
fn pair(map: &Array<u64>, slot: u32) -> Option<*mut u32> {
    let mut p = map.get_ptr_mut(slot >> 1)?.cast::<u32>();
    // SAFETY: adds 0 or 4 to a pointer to 8 bytes of map value.
    unsafe {
        core::arch::asm!(
            "{0} += {1}",
            inout(reg) p,
            in(reg) u64::from(slot & 1) * 4,
            // Not `pure`: that would let LLVM hoist it, too.
            options(nomem, nostack),
        )
    };
    Some(p)
}

/// # Safety
/// `stored` must point to a valid, 8-byte aligned map value.
#[inline(always)]
unsafe fn same_key(stored: *const HostKey, key: &HostKey) -> bool {
    // SAFETY: array values are 8-byte aligned; HostKey is align(8).
    let [a, b] = unsafe { (*stored).words() };
    [a, b] == key.words()
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
