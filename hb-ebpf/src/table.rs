//! The host table: where a heartbeat's time is stamped. Kept behind this one
//! module because its layout is what fleet-scale sweeping depends on.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_coarse_ns, macros::map, maps::HashMap};
use hb_common::{DEFAULT_MAX_HOSTS, HostEntry, HostKey};

/// Sized at load time by userspace (`--max-hosts`). A plain hash map, not an
/// LRU: a host that is being watched is never evicted; a full table refuses
/// new hosts instead, and that is counted.
#[map(name = "HB_HOSTS")]
static HOSTS: HashMap<HostKey, HostEntry> = HashMap::with_max_entries(DEFAULT_MAX_HOSTS, 0);

const EEXIST: i32 = 17;

pub enum Stamped {
    Known,
    New,
    TableFull,
}

/// Records a heartbeat from `key` now.
#[inline(always)]
pub fn stamp(key: &HostKey) -> Stamped {
    // Coarse clock: heartbeats come seconds apart, so a tick's resolution is
    // plenty, and it is measurably cheaper than bpf_ktime_get_ns.
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // Update a known host in place: about 2x cheaper than an insert.
    if let Some(entry) = HOSTS.get_ptr_mut(key) {
        touch(entry, now);
        return Stamped::Known;
    }
    let fresh = HostEntry { last_seen_ns: now, beats: 1 };
    match HOSTS.insert(key, &fresh, BPF_NOEXIST as u64) {
        Ok(()) => Stamped::New,
        // Another CPU added it between our lookup and insert.
        Err(e) if e == -EEXIST => match HOSTS.get_ptr_mut(key) {
            Some(entry) => {
                touch(entry, now);
                Stamped::Known
            }
            None => Stamped::TableFull,
        },
        Err(_) => Stamped::TableFull,
    }
}

#[inline(always)]
fn touch(entry: *mut HostEntry, now: u64) {
    // SAFETY: the pointer comes from a successful map lookup; the value stays
    // valid for the program's run (entries are never deleted by the program).
    unsafe {
        core::ptr::write_volatile(&raw mut (*entry).last_seen_ns, now);
        // Not an atomic add: core offers none on the BPF target, and two of
        // one host's heartbeats (seconds apart) racing on two CPUs within the
        // same few nanoseconds costs at most one count, never a stamp.
        let beats = &raw mut (*entry).beats;
        core::ptr::write_volatile(beats, core::ptr::read_volatile(beats) + 1);
    }
}
