//! Per-host state (alive or silent) and the transitions between states. Pure
//! logic over the table's slot-indexed last-seen times and the current
//! CLOCK_MONOTONIC time.
//!
//! Last-seen times are `u32` ticks from the table's epoch (see
//! `hb_common::timing`), compared by their age at the sweep's tick, so that
//! they wrap (every 52 days) without a false transition; durations the
//! tracker reports and takes (timeouts, ages) stay in ns, and ages are
//! right to a tick. A silent host is kept with the tick it went silent
//! with, unwrapped (ticks since the epoch, 64 bits): it recovers only once
//! its stamp differs from that one, so a host silent for longer than the
//! wrap is not taken for alive when the clock comes round to its stamp.
//!
//! State is slot-indexed too: two bits per host (known, silent) plus an entry
//! per *silent* host, so alive hosts cost userspace a quarter of a byte, and
//! a sweep is one linear pass over the last-seen array.
//!
//! A collector that is stopped for good mid-sweep (SIGKILL) must leave state
//! the next one can carry on from without missing anything. So the bits a
//! sweep works on are the tracker's own; the state that outlives the
//! process (the pinned `HB_TRACKER` words) records only what the output has
//! been *told*: a line's transition is applied there (`Tracker::told`) once
//! the line is written. Whatever was decided but not yet written when the
//! process died is decided again, and reported, by the next collector.

use std::sync::atomic::{AtomicU32, Ordering, compiler_fence};

use hashbrown::HashMap;
use hb_common::{
    Timing,
    timing::{TICK_NS, TICK_SHIFT, age, tick, ticks_floor},
};

use super::adaptive;

/// A host state change found by a sweep; `H` identifies the host (a slot
/// here, an address once resolved for output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition<H> {
    /// First heartbeat ever seen from this host; `age_ns` is how long ago.
    New { host: H, age_ns: u64 },
    /// Was alive, its last heartbeat is now older than the timeout.
    Silent { host: H, silent_for_ns: u64 },
    /// Was silent and beats again; `silent_for_ns` is the length of the gap.
    Recovered { host: H, silent_for_ns: u64 },
}

impl<H> Transition<H> {
    pub fn host(&self) -> &H {
        match self {
            Self::New { host, .. } | Self::Silent { host, .. } | Self::Recovered { host, .. } => {
                host
            }
        }
    }

    pub fn with_host<K>(self, host: K) -> Transition<K> {
        match self {
            Self::New { age_ns, .. } => Transition::New { host, age_ns },
            Self::Silent { silent_for_ns, .. } => Transition::Silent {
                host,
                silent_for_ns,
            },
            Self::Recovered { silent_for_ns, .. } => Transition::Recovered {
                host,
                silent_for_ns,
            },
        }
    }
}

/// What a sweep tells its caller: each transition, and for a slot seen
/// for the first time, its policy class (see `track::fleet::Class`).
pub trait Observer {
    /// `slot` was seen for the first time; called before its `New`.
    fn classify(&mut self, _slot: u32) -> u8 {
        0
    }
    fn emit(&mut self, t: Transition<u32>);
    /// A `Silent` or `Recovered` of a host whose timeout is `timeout_ns`
    /// (its learned one, for `AUTO`).
    fn emit_timed(&mut self, t: Transition<u32>, _timeout_ns: u64) {
        self.emit(t)
    }
}

impl<F: FnMut(Transition<u32>)> Observer for F {
    fn emit(&mut self, t: Transition<u32>) {
        self(t)
    }
}

/// What one line of output told: a sweep's transition, or the end of a
/// sweep (its summary). Handed to `Tracker::told` once the line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Told {
    /// The sweep's time (CLOCK_MONOTONIC).
    at: u64,
    slot: u32,
    what: What,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    New,
    Silent,
    Recovered,
    Swept,
}

impl Told {
    /// The line reporting `t`, found by the sweep at `at`.
    pub fn transition(t: &Transition<u32>, at: u64) -> Self {
        let (slot, what) = match *t {
            Transition::New { host, .. } => (host, What::New),
            Transition::Silent { host, .. } => (host, What::Silent),
            Transition::Recovered { host, .. } => (host, What::Recovered),
        };
        // 0 in the words means "nothing told".
        Self {
            at: at.max(1),
            slot,
            what,
        }
    }

    /// The end of the sweep at `at`: told once its last line (its summary
    /// line, or its last event where no summary is written) is written.
    pub fn swept(at: u64) -> Self {
        Self {
            at: at.max(1),
            slot: 0,
            what: What::Swept,
        }
    }
}

/// Counts at the end of a sweep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    pub hosts: u64,
    pub alive: u64,
    pub silent: u64,
}

/// Where the state told to the output is kept: memory of the caller's, or
/// memory shared with something that outlives the process (the pinned
/// `HB_TRACKER` map).
pub enum Words {
    Heap(Vec<u64>),
    Shared(Box<dyn std::ops::DerefMut<Target = [u64]> + Send>),
}

impl Words {
    fn get(&self) -> &[u64] {
        match self {
            Self::Heap(v) => v,
            Self::Shared(m) => m,
        }
    }
    fn get_mut(&mut self) -> &mut [u64] {
        match self {
            Self::Heap(v) => v,
            Self::Shared(m) => m,
        }
    }
}

// The state words: a header, then `known` and `silent` bits, each
// `bitmap_words(slots)` long. `LAST_SWEEP`: the time of the last sweep
// whose every line was told; `TOLD_AT`: of the latest sweep any line of
// which was told (0, 0: nothing told yet; an older hb leaves `TOLD_AT` 0);
// `READY_UPTO`: every slot below is known; `HOSTS`: known bits set. The two
// counts are kept for an older hb that trusts them; this one derives them
// from the bits when it resumes.
const LAST_SWEEP: usize = 0;
const READY_UPTO: usize = 1;
const HOSTS: usize = 2;
const TOLD_AT: usize = 3;
const HEADER: usize = 4;

/// Words of state a tracker needs for `slots` slots.
pub fn state_words(slots: usize) -> usize {
    HEADER + 2 * bitmap_words(slots)
}

fn bitmap_words(slots: usize) -> usize {
    slots.div_ceil(64)
}

const KNOWN: usize = 0;
const SILENT: usize = 1;

#[inline]
fn get_bit(bits: &[u64], i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

#[inline]
fn put_bit(bits: &mut [u64], i: usize, v: bool) {
    let w = &mut bits[i / 64];
    if v {
        *w |= 1 << (i % 64)
    } else {
        *w &= !(1 << (i % 64))
    }
}

/// The first slot whose bit in `known` is clear, from `from` on.
fn first_unknown(known: &[u64], from: usize) -> usize {
    let mut i = from / 64;
    if i >= known.len() {
        return from;
    }
    // Bits of the first word below `from` count as set.
    let mut word = known[i] | ((1u64 << (from % 64)) - 1);
    while word == u64::MAX {
        i += 1;
        match known.get(i) {
            Some(&w) => word = w,
            None => return i * 64,
        }
    }
    i * 64 + word.trailing_ones() as usize
}

/// Ticks from `epoch_ns` to `ns`, not wrapped.
#[inline]
fn unwrapped(ns: u64, epoch_ns: u64) -> u64 {
    ns.wrapping_sub(epoch_ns) >> TICK_SHIFT
}

/// Bit `i` set where `chunk[i]` (a stamp, not 0) is more than `limit`
/// ticks older than `now`. Ages are signed, so that a stamp just ahead of
/// `now` is not 52 days old. On x86-64, four stamps an instruction (SSE2,
/// which every x86-64 has): LLVM does not vectorise the bit packing of the
/// portable loop, which then costs the sweep more than reading the memory.
#[inline]
fn older_than(chunk: &[u32], now: u32, limit: u32) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if chunk.len() == 64 {
        // SAFETY: SSE2 is part of x86-64; the loads read 64 u32 in bounds.
        return unsafe { older_than_sse2(chunk, now, limit) };
    }
    let limit = limit as i32;
    let mut bits = 0u64;
    for (i, &seen) in chunk.iter().enumerate() {
        let old = (now.wrapping_sub(seen) as i32 > limit) & (seen != 0);
        bits |= u64::from(old) << i;
    }
    bits
}

/// `older_than` of 64 stamps with SSE2.
///
/// # Safety
/// `chunk` must hold 64 stamps.
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn older_than_sse2(chunk: &[u32], now: u32, limit: u32) -> u64 {
    use std::arch::x86_64::{
        __m128i, _mm_andnot_si128, _mm_castsi128_ps, _mm_cmpeq_epi32, _mm_cmpgt_epi32,
        _mm_loadu_si128, _mm_movemask_ps, _mm_set1_epi32, _mm_setzero_si128, _mm_sub_epi32,
    };
    // SAFETY: SSE2 is always there on x86-64; 16 loads of 4 u32 each.
    unsafe {
        let (now, limit, zero) = (
            _mm_set1_epi32(now as i32),
            _mm_set1_epi32(limit as i32),
            _mm_setzero_si128(),
        );
        let p = chunk.as_ptr().cast::<__m128i>();
        let mut bits = 0u64;
        for i in 0..16 {
            let seen = _mm_loadu_si128(p.add(i));
            let old = _mm_cmpgt_epi32(_mm_sub_epi32(now, seen), limit);
            let old = _mm_andnot_si128(_mm_cmpeq_epi32(seen, zero), old);
            bits |= (_mm_movemask_ps(_mm_castsi128_ps(old)) as u64) << (4 * i);
        }
        bits
    }
}

#[cfg(test)]
#[test]
fn older_than_is_the_same_vectorised() {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for now in [5u32, 1 << 31, u32::MAX, 3_000] {
        let chunk: Vec<u32> = (0..64)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                match i % 4 {
                    0 => 0,
                    1 => now.wrapping_sub((x % 4000) as u32),
                    2 => now.wrapping_add((x % 50) as u32),
                    _ => x as u32,
                }
            })
            .collect();
        let limit = 1000;
        let portable = chunk.iter().enumerate().fold(0u64, |bits, (i, &seen)| {
            let old = (now.wrapping_sub(seen) as i32 > limit as i32) & (seen != 0);
            bits | (u64::from(old) << i)
        });
        assert_eq!(older_than(&chunk, now, limit), portable, "now {now}");
    }
}

/// A timeout (the tracker's, or a class's) that is learned per host
/// (`--timeout auto`): see `track::adaptive`.
pub const AUTO: u64 = u64::MAX - 1;

/// `timeout` as the tracker keeps it: ns, or `AUTO`.
pub fn timeout_ns(timeout: adaptive::Timeout) -> u64 {
    match timeout {
        adaptive::Timeout::Fixed(d) => d.as_nanos() as u64,
        adaptive::Timeout::Auto => AUTO,
    }
}

/// The timeout of `slot`: its class's, or `default` without classes.
#[inline]
fn timeout_of(class: &[u8], timeouts: &[u64], default: u64, slot: usize) -> u64 {
    match class.get(slot) {
        Some(&c) => timeouts[c as usize],
        None => default,
    }
}

pub struct Tracker {
    timeout_ns: u64,
    /// Known bits, then silent bits, `bitmap` words each: the state the
    /// sweeps decided.
    bits: Vec<u64>,
    bitmap: usize,
    /// Every slot below this is known.
    ready_upto: usize,
    /// Known hosts: the known bits set.
    hosts: u64,
    /// Silent hosts: slot -> last-seen tick when they went silent, as
    /// ticks since `epoch_ns` (not wrapped; its low 32 bits are the stamp).
    silent: HashMap<u32, u64>,
    /// The table's epoch: what its ticks count from.
    epoch_ns: u64,
    /// What the output has been told, where it outlives this tracker
    /// (header, known bits, silent bits; see `state_words`); `told_bitmap`
    /// words a bitmap.
    told: Option<Words>,
    told_bitmap: usize,
    /// Per-slot policy class, and the timeout of each class: empty while
    /// every host has `timeout_ns` (no groups, nothing muted).
    class: Vec<u8>,
    timeouts: Vec<u64>,
    /// Counts changes of the timeouts (`set_timeout`, `set_timeouts`).
    timeouts_gen: u64,
    /// The bounds of the `AUTO` timeouts.
    auto: adaptive::Policy,
}

impl Tracker {
    /// A tracker that keeps nothing beyond its own life.
    pub fn new(timeout_ns: u64) -> Self {
        Self {
            timeout_ns,
            bits: Vec::new(),
            bitmap: 0,
            ready_upto: 0,
            hosts: 0,
            silent: HashMap::new(),
            epoch_ns: 0,
            told: None,
            told_bitmap: 0,
            class: Vec::new(),
            timeouts: Vec::new(),
            timeouts_gen: 0,
            auto: adaptive::Policy::default(),
        }
    }

    /// A tracker that records what the output has been told in `words`
    /// (`state_words(slots)` long), carrying on from what a previous tracker
    /// told there, if anything: hosts it reported are not new, hosts it
    /// reported silent are still silent. Whatever else the previous tracker
    /// decided (its process died before the lines were written) is decided
    /// again. `last_seen` is the table as it is now, its ticks counted from
    /// `epoch_ns`.
    ///
    /// A silent host that beat again while no tracker ran is reported
    /// recovered by the next sweep; the time it last beat before that is
    /// gone, so its `silent_for_ns` is a lower bound: it was already silent
    /// at the previous tracker's last sweep.
    pub fn resume(
        timeout_ns: u64,
        mut words: Words,
        slots: usize,
        last_seen: &[AtomicU32],
        epoch_ns: u64,
    ) -> Self {
        let bitmap = bitmap_words(slots);
        let w = words.get_mut();
        assert!(w.len() >= state_words(slots), "tracker state too small");
        if w[LAST_SWEEP] == 0 && w[TOLD_AT] == 0 {
            // Nothing told: bits here are an older hb's, stopped in its
            // first sweep before it wrote them out.
            w.fill(0);
        }
        // Whether a silent host beat since: after the last sweep told whole
        // (or the first sweep, told in part).
        let last_sweep = match w[LAST_SWEEP] {
            0 => w[TOLD_AT],
            t => t,
        };
        let (header, rest) = w.split_at_mut(HEADER);
        let (known, rest) = rest.split_at_mut(bitmap);
        let silent_bits = &mut rest[..bitmap];
        // The counts follow from the bits, whatever the header says (an
        // older hb killed in a sweep left them behind its bits). Only a
        // known host can be silent.
        let mut hosts = 0;
        for (s, k) in silent_bits.iter_mut().zip(known.iter()) {
            *s &= *k;
            hosts += u64::from(k.count_ones());
        }
        let ready_upto = first_unknown(known, 0).min(slots);
        header[READY_UPTO] = ready_upto as u64;
        header[HOSTS] = hosts;
        let mut silent = HashMap::new();
        let swept = unwrapped(last_sweep, epoch_ns);
        let swept_tick = tick(last_sweep, epoch_ns);
        // Auto: the shortest a host's can be.
        let gap_timeout = match timeout_ns {
            AUTO => adaptive::DEFAULT_MIN.as_nanos() as u64,
            t => t,
        };
        let before_gap = swept.saturating_sub(ticks_floor(gap_timeout).into());
        for (i, &word) in silent_bits.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let slot = i * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let seen = last_seen.get(slot).map_or(0, |t| t.load(Ordering::Relaxed));
                // Beat since the last sweep: the stamp it went silent with
                // is overwritten; before_gap differs from `seen`, so the next
                // sweep reports the recovery.
                let went_silent_at = if seen == 0 {
                    0
                } else if (seen.wrapping_sub(swept_tick) as i32) > 0 {
                    before_gap
                } else {
                    swept.wrapping_sub(age(swept_tick, seen).into())
                };
                silent.insert(slot as u32, went_silent_at);
            }
        }
        let mut bits = Vec::with_capacity(2 * bitmap);
        bits.extend_from_slice(known);
        bits.extend_from_slice(silent_bits);
        Self {
            timeout_ns,
            bits,
            bitmap,
            ready_upto,
            hosts,
            silent,
            epoch_ns,
            told: Some(words),
            told_bitmap: bitmap,
            class: Vec::new(),
            timeouts: Vec::new(),
            timeouts_gen: 0,
            auto: adaptive::Policy::default(),
        }
    }

    /// The epoch of the table this tracker sweeps (`Table::epoch_ns`).
    pub fn set_epoch(&mut self, epoch_ns: u64) {
        self.epoch_ns = epoch_ns;
    }

    /// A new timeout, for the sweeps from now on (a reload). A silent host
    /// stays silent until it beats again, even if the longer timeout would
    /// cover its last heartbeat: nothing is reported that did not happen.
    pub fn set_timeout(&mut self, timeout_ns: u64) {
        self.timeout_ns = timeout_ns;
        self.timeouts_gen += 1;
    }

    /// `--timeout` (fixed or auto) and the bounds of auto timeouts, for the
    /// sweeps from now on (at start and at a reload).
    pub fn set_timeout_policy(&mut self, timeout: adaptive::Timeout, auto: adaptive::Policy) {
        self.set_auto(auto);
        self.set_timeout(timeout_ns(timeout));
    }

    /// The bounds of `AUTO` timeouts (a reload may change them).
    pub fn set_auto(&mut self, policy: adaptive::Policy) {
        if policy != self.auto {
            self.auto = policy;
            self.timeouts_gen += 1;
        }
    }

    pub fn auto(&self) -> adaptive::Policy {
        self.auto
    }

    /// The timeout of the host in `slot` that has learned `timing`: its
    /// class's, or learned (`AUTO`).
    pub fn host_timeout(&self, slot: u32, timing: Timing) -> u64 {
        match self.timeout_of(slot) {
            AUTO => self.auto.timeout_ns(timing),
            t => t,
        }
    }

    /// The timeout of the host in `slot` (its group's, if it has one);
    /// `AUTO` where it is learned (see `host_timeout`).
    pub fn timeout_of(&self, slot: u32) -> u64 {
        if self.timeouts.is_empty() {
            return self.timeout_ns;
        }
        timeout_of(&self.class, &self.timeouts, self.timeout_ns, slot as usize)
    }

    /// Changes whenever a timeout may have (see `timeout_of`).
    pub fn timeouts_gen(&self) -> u64 {
        self.timeouts_gen
    }

    /// The words of what the output was told, for a later `resume`.
    pub fn into_words(self) -> Option<Words> {
        self.told
    }

    /// Whether this tracker carries on from an earlier one's state.
    pub fn resumed(&self) -> bool {
        self.told
            .as_ref()
            .is_some_and(|w| w.get()[LAST_SWEEP] != 0 || w.get()[TOLD_AT] != 0)
    }

    /// Whether this tracker records what the output is told (`told`).
    pub fn keeps_told(&self) -> bool {
        self.told.is_some()
    }

    /// Records that the output has been told `what`: the line is written.
    /// Lines are told in the order their sweeps reported them. Each step
    /// leaves the words a state to resume from: a process that dies here
    /// has told a prefix of its lines.
    pub fn told(&mut self, what: Told) {
        let b = self.told_bitmap;
        let Some(words) = self.told.as_mut() else {
            return;
        };
        let w = words.get_mut();
        // First: a resuming tracker trusts bits only once this is set. The
        // fences keep the compiler from moving these stores across each
        // other or across lines: a process may die between any two.
        if what.at > w[TOLD_AT] {
            w[TOLD_AT] = what.at;
            compiler_fence(Ordering::SeqCst);
        }
        let slot = what.slot as usize;
        let (header, bits) = w.split_at_mut(HEADER);
        let (known, silent) = bits.split_at_mut(b);
        match what.what {
            What::New => {
                if !get_bit(known, slot) {
                    put_bit(known, slot, true);
                    header[HOSTS] += 1;
                    let ready = header[READY_UPTO] as usize;
                    if ready == slot {
                        header[READY_UPTO] = first_unknown(known, ready).min(b * 64) as u64;
                    }
                }
            }
            What::Silent => put_bit(&mut silent[..b], slot, true),
            What::Recovered => put_bit(&mut silent[..b], slot, false),
            What::Swept => header[LAST_SWEEP] = what.at,
        }
        compiler_fence(Ordering::SeqCst);
    }

    /// Makes room for `n` slots (a tracker that keeps its told state has it
    /// sized for the whole table up front).
    fn grow(&mut self, n: usize) {
        let need = bitmap_words(n);
        if need <= self.bitmap {
            return;
        }
        assert!(
            self.told.is_none() || need <= self.told_bitmap,
            "{n} slots do not fit the shared tracker state"
        );
        let need = need.max(self.bitmap * 2);
        let b = self.bitmap;
        let mut new = vec![0; 2 * need];
        new[..b].copy_from_slice(&self.bits[..b]);
        new[need..need + b].copy_from_slice(&self.bits[b..2 * b]);
        self.bits = new;
        self.bitmap = need;
    }

    #[inline]
    fn bit(&self, map: usize, i: usize) -> bool {
        get_bit(&self.bits[map * self.bitmap..], i)
    }

    #[inline]
    fn set_bit(&mut self, map: usize, i: usize, v: bool) {
        let b = self.bitmap;
        put_bit(&mut self.bits[map * b..], i, v)
    }

    /// One sweep over `last_seen` (indexed by slot, ticks from the epoch;
    /// 0 = slot not ready) at `now_ns` (CLOCK_MONOTONIC). Hosts with an
    /// `AUTO` timeout take theirs from `Timing::NONE` (see `sweep_timed`).
    pub fn sweep(&mut self, last_seen: &[AtomicU32], now_ns: u64, obs: impl Observer) {
        self.sweep_timed(last_seen, &|_| Timing::NONE, now_ns, obs)
    }

    /// One sweep over `last_seen`, hosts with an `AUTO` timeout taking
    /// theirs from what `timing` says they learned.
    pub fn sweep_timed(
        &mut self,
        last_seen: &[AtomicU32],
        timing: &dyn Fn(u32) -> Timing,
        now_ns: u64,
        mut obs: impl Observer,
    ) {
        let n = last_seen.len();
        self.grow(n);
        if !self.timeouts.is_empty() && self.class.len() < n {
            self.class
                .resize(n.max(self.class.len() * 2).min(self.bitmap * 64), 0);
        }
        let load = |slot: usize| last_seen[slot].load(Ordering::Relaxed);
        let now = tick(now_ns, self.epoch_ns);
        let now_abs = unwrapped(now_ns, self.epoch_ns);
        // How long ago a stamp `a` ticks old is, from `now_ns`: so that
        // `now_ns` less it is the time `silent_hosts` gives.
        let rem = now_ns.wrapping_sub(self.epoch_ns) & (TICK_NS - 1);
        let since = |a: u32| rem + u64::from(a) * TICK_NS;

        // Slots handed out since the last sweep (or not ready then, or
        // freed and handed out again): the first unknown ones, a word of
        // bits at a time.
        let mut slot = self.ready_upto;
        loop {
            slot = first_unknown(&self.bits[..self.bitmap], slot);
            if slot >= n {
                break;
            }
            let seen = load(slot);
            if seen == 0 {
                slot += 1;
                continue;
            }
            self.set_bit(KNOWN, slot, true);
            self.hosts += 1;
            let class = obs.classify(slot as u32);
            if !self.timeouts.is_empty() {
                self.class[slot] = class;
            }
            obs.emit(Transition::New {
                host: slot as u32,
                age_ns: since(age(now, seen)),
            });
            slot += 1;
        }
        while self.ready_upto < n && self.bit(KNOWN, self.ready_upto) {
            self.ready_upto += 1;
        }

        // Silent hosts that beat again: few, so checked one by one.
        let timeout = self.timeout_ns;
        let (class, timeouts, auto) = (&self.class, &self.timeouts, self.auto);
        let of = |slot: usize| match timeout_of(class, timeouts, timeout, slot) {
            AUTO => auto.timeout_ns(timing(slot as u32)),
            t => t,
        };
        let mut recovered = Vec::new();
        self.silent.retain(|&slot, &mut went_silent_at| {
            let seen = load(slot as usize);
            if seen == 0 || seen == went_silent_at as u32 {
                return true;
            }
            let a = age(now, seen);
            let timeout = of(slot as usize);
            if a <= ticks_floor(timeout) {
                recovered.push(slot);
                let seen_abs = now_abs.wrapping_sub(a.into());
                obs.emit_timed(
                    Transition::Recovered {
                        host: slot,
                        silent_for_ns: seen_abs.saturating_sub(went_silent_at) * TICK_NS,
                    },
                    timeout,
                );
                false
            } else {
                true
            }
        });
        for slot in recovered {
            self.set_bit(SILENT, slot as usize, false);
        }

        // Hosts that just went silent: the one pass over every slot, 64 at
        // a time: a branch-free loop (which the compiler vectorises) makes
        // a word of "older than the shortest timeout" bits, and only those
        // of known hosts not yet silent, rare, are looked at one by one.
        // With classes, the shortest timeout is the pass's; a hit checks
        // the slot's own. A learned timeout is at least `--min-timeout`:
        // only hosts past that read their timing.
        let floor = |t: u64| if t == AUTO { auto.min_ns } else { t };
        let shortest = ticks_floor(floor(
            self.timeouts.iter().copied().min().unwrap_or(timeout),
        ));
        let own = !self.timeouts.is_empty() || timeout == AUTO;
        // SAFETY: AtomicU32 has u32's layout. The words are read plainly so
        // that the loop vectorises (atomic loads never do); the kernel may
        // store to them meanwhile, which only ever makes a host younger: a
        // hit is read again, atomically, before anything is decided.
        let raw: &[u32] = unsafe { std::slice::from_raw_parts(last_seen.as_ptr().cast(), n) };
        let b = self.bitmap;
        for (w, chunk) in raw.chunks(64).enumerate() {
            let old = older_than(chunk, now, shortest);
            let mut hits = old & self.bits[KNOWN * b + w] & !self.bits[SILENT * b + w];
            while hits != 0 {
                let slot = w * 64 + hits.trailing_zeros() as usize;
                hits &= hits - 1;
                let seen = load(slot);
                let a = age(now, seen);
                if seen == 0 || a <= shortest {
                    continue;
                }
                let timeout = if own {
                    match timeout_of(&self.class, &self.timeouts, timeout, slot) {
                        AUTO => auto.timeout_ns(timing(slot as u32)),
                        t => t,
                    }
                } else {
                    timeout
                };
                if a <= ticks_floor(timeout) {
                    continue;
                }
                self.set_bit(SILENT, slot, true);
                self.silent
                    .insert(slot as u32, now_abs.wrapping_sub(a.into()));
                obs.emit_timed(
                    Transition::Silent {
                        host: slot as u32,
                        silent_for_ns: since(a),
                    },
                    timeout,
                );
            }
        }
    }

    /// Timeouts by class (index: the class; `u64::MAX`: never silent), or
    /// none: every host has the tracker's timeout. Slots keep their class
    /// (`set_class`; a new slot gets the sweep observer's).
    pub fn set_timeouts(&mut self, timeouts: Vec<u64>) {
        if timeouts.is_empty() {
            self.class = Vec::new();
        } else if self.class.is_empty() {
            self.class = vec![0; self.bitmap * 64];
        }
        self.timeouts = timeouts;
        self.timeouts_gen += 1;
    }

    /// The timeout every host has unless its class says otherwise.
    pub fn timeout_ns(&self) -> u64 {
        self.timeout_ns
    }

    pub fn set_class(&mut self, slot: u32, class: u8) {
        if let Some(c) = self.class.get_mut(slot as usize) {
            *c = class;
        }
    }

    pub fn class(&self, slot: u32) -> u8 {
        self.class.get(slot as usize).copied().unwrap_or(0)
    }

    /// Whether a sweep has seen `slot`.
    pub fn is_known(&self, slot: u32) -> bool {
        (slot as usize) < self.bitmap * 64 && self.bit(KNOWN, slot as usize)
    }

    pub fn is_silent(&self, slot: u32) -> bool {
        (slot as usize) < self.bitmap * 64 && self.bit(SILENT, slot as usize)
    }

    /// Takes silent `slot` out of the silent hosts without a line (a host
    /// no longer watched): returns what the output is to be told, in
    /// turn with the lines, as for a reported recovery.
    pub fn unsilence(&mut self, slot: u32, at: u64) -> Option<Told> {
        self.silent.remove(&slot)?;
        self.set_bit(SILENT, slot as usize, false);
        Some(Told::transition(
            &Transition::Recovered {
                host: slot,
                silent_for_ns: 0,
            },
            at,
        ))
    }

    /// Forgets `slot`'s host, first step (the table's `forget` is taken):
    /// no longer counted nor silent. Its known bit stays until `free`, so
    /// that a heartbeat in flight is not taken for a new host.
    pub fn forgetting(&mut self, slot: u32) {
        let s = slot as usize;
        if s >= self.bitmap * 64 || !self.bit(KNOWN, s) {
            return;
        }
        if self.silent.remove(&slot).is_some() {
            self.set_bit(SILENT, s, false);
        }
        self.hosts = self.hosts.saturating_sub(1);
    }

    /// Forgets `slot`'s host, last step before the slot is handed out
    /// again: the slot is unknown, here and in the told state, so the
    /// host that takes it next is first seen. The told state is written
    /// directly (there is no line): call it with no line about `slot` in
    /// flight.
    pub fn free(&mut self, slot: u32) {
        let s = slot as usize;
        if s >= self.bitmap * 64 {
            return;
        }
        self.set_bit(KNOWN, s, false);
        self.set_bit(SILENT, s, false);
        self.ready_upto = self.ready_upto.min(s);
        let b = self.told_bitmap;
        let Some(words) = self.told.as_mut() else {
            return;
        };
        let w = words.get_mut();
        let (header, bits) = w.split_at_mut(HEADER);
        let (known, silent) = bits.split_at_mut(b);
        if s >= b * 64 {
            return;
        }
        // Silent first: a process that dies between the two leaves a
        // known, alive host, which the next one finds forgotten (its key)
        // and frees again.
        put_bit(&mut silent[..b], s, false);
        compiler_fence(Ordering::SeqCst);
        if get_bit(known, s) {
            put_bit(known, s, false);
            header[HOSTS] = header[HOSTS].saturating_sub(1);
        }
        header[READY_UPTO] = header[READY_UPTO].min(s as u64);
        compiler_fence(Ordering::SeqCst);
    }

    /// Counts as of the last sweep. Silent hosts are known hosts, so
    /// `alive + silent == hosts`.
    pub fn census(&self) -> Census {
        let silent = self.silent.len() as u64;
        debug_assert!(
            silent <= self.hosts,
            "{silent} silent of {} hosts",
            self.hosts
        );
        Census {
            hosts: self.hosts,
            alive: self.hosts.saturating_sub(silent),
            silent,
        }
    }

    /// Silent hosts (slot) with the time they were last seen
    /// (CLOCK_MONOTONIC ns, to a tick).
    pub fn silent_hosts(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        let epoch = self.epoch_ns;
        self.silent
            .iter()
            .map(move |(&slot, &seen)| (slot, epoch.wrapping_add(seen << TICK_SHIFT)))
    }

    /// Gives back the room of silent hosts that are no more (a mass
    /// outage that recovered); whether there was any.
    pub fn release_spare(&mut self) -> bool {
        super::spare::map(&mut self.silent)
    }

    /// Heap bytes of the tracker's state (for the memory figure).
    pub fn heap_bytes(&self) -> usize {
        let told = match &self.told {
            Some(Words::Heap(v)) => v.capacity() * 8,
            Some(Words::Shared(_)) | None => 0,
        };
        self.bits.capacity() * 8
            + told
            + self.silent.allocation_size()
            + self.class.capacity()
            + self.timeouts.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second, near enough: a whole number of ticks, so that times the
    /// tests give in seconds are exact in the table's ticks.
    const S: u64 = 1024 * TICK_NS;

    /// A table of stamps given in ns (epoch 0), as ticks.
    fn table(v: &[u64]) -> Vec<AtomicU32> {
        v.iter()
            .map(|&x| AtomicU32::new(if x == 0 { 0 } else { tick(x, 0) }))
            .collect()
    }

    fn sweep(t: &mut Tracker, seen: &[u64], now: u64) -> Vec<Transition<u32>> {
        let mut out = Vec::new();
        t.sweep(&table(seen), now, |tr| out.push(tr));
        out
    }

    #[test]
    fn auto_timeouts_are_each_hosts_own() {
        // Host 0 beats every second, host 1 every 10 s (steady: deviation
        // 0 after 60 intervals), host 2 has learned nothing: 2 × 1 s +
        // 250 ms (2.25 s); 2 × 10 s + 250 ms = 20.25 s; the fixed bound
        // (--max-timeout, 60 s here). (`S` is 1024 ticks, about 1.07 s.)
        let learned = |ticks: u32| (0..60).fold(Timing::NONE, |t, _| t.update(ticks));
        let timings = [learned(1024), learned(10 * 1024), Timing::NONE];
        let timing = |slot: u32| timings[slot as usize];
        let mut t = Tracker::new(AUTO);
        t.set_auto(adaptive::Policy {
            min_ns: 2 * S,
            max_ns: 60 * S,
        });
        let mut run = |seen: &[u64], now: u64| {
            let mut out = Vec::new();
            t.sweep_timed(&table(seen), &timing, now, |tr| out.push(tr));
            out
        };
        assert_eq!(run(&[100 * S; 3], 100 * S).len(), 3);
        assert!(run(&[100 * S; 3], 102 * S).is_empty());
        let silent = |host, for_s: u64| Transition::Silent {
            host,
            silent_for_ns: for_s * S,
        };
        assert_eq!(run(&[100 * S; 3], 103 * S), [silent(0, 3)]);
        assert!(run(&[100 * S; 3], 120 * S).is_empty());
        assert_eq!(run(&[100 * S; 3], 121 * S), [silent(1, 21)]);
        assert!(run(&[100 * S; 3], 160 * S).is_empty());
        assert_eq!(run(&[100 * S; 3], 161 * S), [silent(2, 61)]);
        // Host 0 beats again: within its own timeout, recovered.
        assert_eq!(
            run(&[170 * S, 100 * S, 100 * S], 172 * S),
            [Transition::Recovered {
                host: 0,
                silent_for_ns: 70 * S
            }]
        );
    }

    #[test]
    fn new_then_silent_then_recovered() {
        let mut t = Tracker::new(15 * S);
        assert_eq!(
            sweep(&mut t, &[100 * S], 101 * S),
            [Transition::New { host: 0, age_ns: S }]
        );
        assert_eq!(
            t.census(),
            Census {
                hosts: 1,
                alive: 1,
                silent: 0
            }
        );
        // Exactly at the timeout: still alive.
        assert!(sweep(&mut t, &[100 * S], 115 * S).is_empty());
        assert_eq!(
            sweep(&mut t, &[100 * S], 116 * S),
            [Transition::Silent {
                host: 0,
                silent_for_ns: 16 * S
            }]
        );
        // Reported once, not on every sweep.
        assert!(sweep(&mut t, &[100 * S], 130 * S).is_empty());
        assert_eq!(
            t.census(),
            Census {
                hosts: 1,
                alive: 0,
                silent: 1
            }
        );
        assert_eq!(t.silent_hosts().collect::<Vec<_>>(), [(0, 100 * S)]);
        assert_eq!(
            sweep(&mut t, &[140 * S], 141 * S),
            [Transition::Recovered {
                host: 0,
                silent_for_ns: 40 * S
            }]
        );
        assert_eq!(
            t.census(),
            Census {
                hosts: 1,
                alive: 1,
                silent: 0
            }
        );
        assert!(sweep(&mut t, &[145 * S], 146 * S).is_empty());
        // And it can go silent again.
        assert_eq!(
            sweep(&mut t, &[145 * S], 170 * S),
            [Transition::Silent {
                host: 0,
                silent_for_ns: 25 * S
            }]
        );
    }

    #[test]
    fn stale_first_sighting_is_new_and_silent() {
        let mut t = Tracker::new(15 * S);
        assert_eq!(
            sweep(&mut t, &[100 * S], 200 * S),
            [
                Transition::New {
                    host: 0,
                    age_ns: 100 * S
                },
                Transition::Silent {
                    host: 0,
                    silent_for_ns: 100 * S
                }
            ]
        );
        assert_eq!(
            t.census(),
            Census {
                hosts: 1,
                alive: 0,
                silent: 1
            }
        );
    }

    #[test]
    fn others_are_not_disturbed() {
        let mut t = Tracker::new(15 * S);
        sweep(&mut t, &[1, 1, 1], S);
        // Slot 1 stops; 0 and 2 keep beating every 5 s.
        let mut events = Vec::new();
        for i in 1..=10u64 {
            let now = i * 5 * S;
            events.extend(sweep(&mut t, &[now, 1, now], now + S / 2));
        }
        assert_eq!(
            events,
            [Transition::Silent {
                host: 1,
                // Stamped at 1 ns: tick 1.
                silent_for_ns: 15 * S + S / 2 - TICK_NS
            }]
        );
        assert_eq!(
            t.census(),
            Census {
                hosts: 3,
                alive: 2,
                silent: 1
            }
        );
    }

    #[test]
    fn slots_not_ready_are_picked_up_later_once() {
        let mut t = Tracker::new(15 * S);
        // Slot 1 is handed out but its first stamp is not written yet.
        assert_eq!(
            sweep(&mut t, &[10 * S, 0, 10 * S], 10 * S),
            [
                Transition::New { host: 0, age_ns: 0 },
                Transition::New { host: 2, age_ns: 0 }
            ]
        );
        assert_eq!(t.census().hosts, 2);
        assert_eq!(
            sweep(&mut t, &[11 * S, 11 * S, 11 * S, 11 * S], 11 * S),
            [
                Transition::New { host: 1, age_ns: 0 },
                Transition::New { host: 3, age_ns: 0 }
            ]
        );
        assert!(sweep(&mut t, &[12 * S; 4], 12 * S).is_empty());
        assert_eq!(
            t.census(),
            Census {
                hosts: 4,
                alive: 4,
                silent: 0
            }
        );
    }

    #[test]
    fn stamp_newer_than_now_is_alive() {
        // A heartbeat stamped between reading the clock and reading the table.
        let mut t = Tracker::new(15 * S);
        assert_eq!(
            sweep(&mut t, &[10 * S + 1], 10 * S),
            [Transition::New { host: 0, age_ns: 0 }]
        );
        assert!(sweep(&mut t, &[10 * S + 1], 11 * S).is_empty());
    }

    #[test]
    fn a_host_silent_for_longer_than_the_wrap_is_not_alive_again() {
        // Ticks wrap every 2^32: the clock comes round to a silent host's
        // stamp, where its age reads 0. It went silent with that very
        // stamp, so it stays silent; its next heartbeat recovers it, with
        // the whole gap.
        let wrap = (1u64 << 32) * TICK_NS;
        let mut t = Tracker::new(15 * S);
        sweep(&mut t, &[10 * S, 10 * S], 10 * S);
        assert_eq!(
            sweep(&mut t, &[30 * S, 10 * S], 30 * S),
            [Transition::Silent {
                host: 1,
                silent_for_ns: 20 * S
            }]
        );
        // One wrap on: slot 0 beat just now, slot 1's stamp reads 0 old.
        let now = 10 * S + wrap;
        assert!(sweep(&mut t, &[now, 10 * S], now).is_empty());
        assert!(sweep(&mut t, &[now + S, 10 * S], now + S).is_empty());
        assert_eq!(t.census().silent, 1);
        assert_eq!(
            sweep(&mut t, &[now + 2 * S, now + 2 * S], now + 2 * S),
            [Transition::Recovered {
                host: 1,
                silent_for_ns: wrap + 2 * S
            }]
        );
    }

    #[test]
    fn a_stale_restamp_does_not_recover() {
        // The stamp moved but is still older than the timeout (a heartbeat
        // delayed in a queue): the host stays silent. In ticks.
        const T: u64 = TICK_NS;
        let mut t = Tracker::new(10 * T);
        sweep(&mut t, &[100 * T], 100 * T);
        assert_eq!(
            sweep(&mut t, &[100 * T], 200 * T),
            [Transition::Silent {
                host: 0,
                silent_for_ns: 100 * T
            }]
        );
        assert!(sweep(&mut t, &[150 * T], 200 * T).is_empty());
        assert_eq!(t.census().silent, 1);
        assert_eq!(
            sweep(&mut t, &[195 * T], 200 * T),
            [Transition::Recovered {
                host: 0,
                silent_for_ns: 95 * T
            }]
        );
    }

    /// A sweep whose every line reaches the output: each transition, then
    /// the summary, told in order.
    fn sweep_written(t: &mut Tracker, seen: &[u64], now: u64) -> Vec<Transition<u32>> {
        let out = sweep(t, seen, now);
        for tr in &out {
            t.told(Told::transition(tr, now));
        }
        t.told(Told::swept(now));
        out
    }

    fn heap(words: Option<Words>) -> Vec<u64> {
        match words {
            Some(Words::Heap(v)) => v,
            _ => panic!("expected heap words"),
        }
    }

    #[test]
    fn a_resumed_tracker_reports_only_what_happened_in_the_gap() {
        let slots = 4;
        let words = Words::Heap(vec![0; state_words(slots)]);
        let mut a = Tracker::resume(15 * S, words, slots, &table(&[0; 4]), 0);
        assert!(!a.resumed());
        let events = sweep_written(&mut a, &[10 * S, 10 * S, 10 * S], 10 * S);
        assert_eq!(events.len(), 3);
        assert_eq!(
            sweep_written(&mut a, &[30 * S, 10 * S, 28 * S], 30 * S),
            [Transition::Silent {
                host: 1,
                silent_for_ns: 20 * S
            }]
        );
        // The collector stops. While it is gone: host 1 beats again, host 2
        // falls silent, host 3 appears, host 0 carries on.
        let words = a.into_words().unwrap();
        let now = [49 * S, 45 * S, 28 * S, 46 * S];
        let mut b = Tracker::resume(15 * S, words, slots, &table(&now), 0);
        assert!(b.resumed());
        assert_eq!(b.census().hosts, 3);
        assert_eq!(b.census().silent, 1);
        assert_eq!(
            sweep_written(&mut b, &now, 50 * S),
            [
                Transition::New {
                    host: 3,
                    age_ns: 4 * S
                },
                // Silent since at least the last sweep before the gap minus
                // the timeout (30 - 15): 45 - 15.
                Transition::Recovered {
                    host: 1,
                    silent_for_ns: 30 * S
                },
                Transition::Silent {
                    host: 2,
                    silent_for_ns: 22 * S
                },
            ]
        );
        assert_eq!(
            b.census(),
            Census {
                hosts: 4,
                alive: 3,
                silent: 1
            }
        );
        // A host still silent across a restart is not reported again.
        let words = b.into_words().unwrap();
        let later = [60 * S, 60 * S, 28 * S, 60 * S];
        let mut c = Tracker::resume(15 * S, words, slots, &table(&later), 0);
        assert!(sweep(&mut c, &later, 61 * S).is_empty());
        assert_eq!(c.census().silent, 1);
    }

    #[test]
    fn what_was_never_written_is_reported_again() {
        let slots = 4;
        let words = Words::Heap(vec![0; state_words(slots)]);
        let mut a = Tracker::resume(15 * S, words, slots, &table(&[]), 0);
        sweep_written(&mut a, &[10 * S, 10 * S], 10 * S);
        // Decided, but the process dies before the lines are written.
        assert_eq!(sweep(&mut a, &[10 * S, 30 * S, 30 * S], 30 * S).len(), 2);
        assert_eq!(a.census().hosts, 3);
        let now = [10 * S, 31 * S, 31 * S];
        let mut b = Tracker::resume(15 * S, a.into_words().unwrap(), slots, &table(&now), 0);
        assert_eq!(b.census().hosts, 2);
        assert_eq!(
            sweep(&mut b, &now, 31 * S),
            [
                Transition::New { host: 2, age_ns: 0 },
                Transition::Silent {
                    host: 0,
                    silent_for_ns: 21 * S
                }
            ]
        );
        assert_eq!(
            b.census(),
            Census {
                hosts: 3,
                alive: 2,
                silent: 1
            }
        );
    }

    #[test]
    fn a_first_sweep_written_in_part_is_carried_on() {
        let slots = 4;
        let words = Words::Heap(vec![0; state_words(slots)]);
        let mut a = Tracker::resume(15 * S, words, slots, &table(&[]), 0);
        // New 0, 1, 2, silent 0, silent 1; the process dies after the
        // silent line of host 0, before its first summary.
        let events = sweep(&mut a, &[10 * S, 10 * S, 99 * S], 100 * S);
        assert_eq!(events.len(), 5);
        for t in &events[..4] {
            a.told(Told::transition(t, 100 * S));
        }
        // Host 0 beats again before the next collector starts.
        let now = [103 * S, 10 * S, 103 * S];
        let mut b = Tracker::resume(15 * S, a.into_words().unwrap(), slots, &table(&now), 0);
        assert!(b.resumed());
        assert_eq!(
            b.census(),
            Census {
                hosts: 3,
                alive: 2,
                silent: 1
            }
        );
        assert_eq!(
            sweep(&mut b, &now, 104 * S),
            [
                // Silent since at least the sweep it was reported by, minus
                // the timeout: 103 - (100 - 15).
                Transition::Recovered {
                    host: 0,
                    silent_for_ns: 18 * S
                },
                Transition::Silent {
                    host: 1,
                    silent_for_ns: 94 * S
                }
            ]
        );
    }

    /// Memory that outlives a tracker, as the pinned map does; a test reads
    /// it at any moment, as a SIGKILL would leave it.
    struct Pinned {
        ptr: *mut u64,
        len: usize,
    }

    // SAFETY: a test's memory, leaked: valid for the whole run.
    unsafe impl Send for Pinned {}

    impl Pinned {
        fn new(words: Vec<u64>) -> (Words, Self) {
            let mem: &'static mut [u64] = Box::leak(words.into_boxed_slice());
            let (ptr, len) = (mem.as_mut_ptr(), mem.len());
            (
                Words::Shared(Box::new(Self { ptr, len })),
                Self { ptr, len },
            )
        }

        fn snapshot(&self) -> Vec<u64> {
            self.to_vec()
        }
    }

    impl std::ops::Deref for Pinned {
        type Target = [u64];
        fn deref(&self) -> &[u64] {
            // SAFETY: leaked memory of `len` words; the tracker and the test
            // take turns, on one thread.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }

    impl std::ops::DerefMut for Pinned {
        fn deref_mut(&mut self) -> &mut [u64] {
            // SAFETY: as above.
            unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
        }
    }

    const TIMEOUT: u64 = 15 * S;
    /// Hosts a collector knew before the sweep that is cut.
    const OLD: usize = 100;
    /// The cut sweep's time, and the next collector's first sweep.
    const CUT_AT: u64 = 60 * S;
    const NEXT_AT: u64 = 61 * S;

    /// A collector's history: `OLD` hosts, 30 of them silent, every line
    /// written. Returns its pinned words, and the table at `CUT_AT`: `new`
    /// more hosts (every third long silent), 20 more known hosts silent, 10
    /// silent ones back.
    fn history(new: usize) -> (Vec<u64>, Vec<u64>) {
        let slots = OLD + new;
        let mut a = Tracker::resume(
            TIMEOUT,
            Words::Heap(vec![0; state_words(slots)]),
            slots,
            &table(&[]),
            0,
        );
        let mut seen = vec![10 * S; OLD];
        sweep_written(&mut a, &seen, 10 * S);
        seen[30..].fill(39 * S);
        assert_eq!(sweep_written(&mut a, &seen, 40 * S).len(), 30);
        seen[..10].fill(59 * S);
        seen[50..].fill(59 * S);
        seen.extend((0..new).map(|i| if i % 3 == 0 { 20 * S } else { 59 * S }));
        (heap(a.into_words()), seen)
    }

    /// (event, host) of each transition, in a canonical order.
    fn kinds(events: &[Transition<u32>]) -> Vec<(u8, u32)> {
        let mut v: Vec<(u8, u32)> = events
            .iter()
            .map(|t| match *t {
                Transition::New { host, .. } => (0, host),
                Transition::Silent { host, .. } => (1, host),
                Transition::Recovered { host, .. } => (2, host),
            })
            .collect();
        v.sort_unstable();
        v
    }

    /// The next collector, resumed from `words` left by one cut at
    /// `CUT_AT`, whose lines `written` reached the output: together they
    /// report what one uninterrupted sweep reports (`full`), each event
    /// once, and count the same.
    fn check_next(
        words: Vec<u64>,
        seen: &[u64],
        written: &[Transition<u32>],
        full: &[Transition<u32>],
        census: Census,
    ) {
        let mut b = Tracker::resume(TIMEOUT, Words::Heap(words), seen.len(), &table(seen), 0);
        let c = b.census();
        assert_eq!(c.alive + c.silent, c.hosts, "{c:?} on resuming");
        let mut both = written.to_vec();
        both.extend(sweep(&mut b, seen, NEXT_AT));
        assert_eq!(kinds(&both), kinds(full), "{} lines written", written.len());
        assert_eq!(b.census(), census, "{} lines written", written.len());
    }

    #[test]
    fn a_kill_anywhere_in_a_sweep_leaves_a_state_that_misses_nothing() {
        // The memory the tracker tells is read at every transition of the
        // cut sweep (a SIGKILL there: none of its lines are written yet,
        // they go out after the sweep), and once after it.
        let (before, seen) = history(1000);
        let (words, pinned) = Pinned::new(before);
        let mut a = Tracker::resume(TIMEOUT, words, seen.len(), &table(&seen), 0);
        let mut full = Vec::new();
        let mut left = vec![pinned.snapshot()];
        a.sweep(&table(&seen), CUT_AT, |t| {
            full.push(t);
            left.push(pinned.snapshot());
        });
        left.push(pinned.snapshot());
        let census = a.census();
        assert_eq!(
            census,
            Census {
                hosts: 1100,
                alive: 10 + 50 + 666,
                silent: 20 + 20 + 334
            }
        );
        // New for all 1000, silent for the 334 stale ones and 20 known
        // ones, recovered for 10.
        assert_eq!(full.len(), 1000 + 334 + 20 + 10);
        for words in left {
            check_next(words, &seen, &[], &full, census);
        }
    }

    #[test]
    fn lines_written_up_to_a_kill_are_not_reported_again() {
        // The cut sweep's lines are written one by one (its transitions,
        // then its summary); the process dies after any of them.
        let (before, seen) = history(40);
        let cut = || {
            let words = Words::Heap(before.clone());
            let mut a = Tracker::resume(TIMEOUT, words, seen.len(), &table(&seen), 0);
            let events = sweep(&mut a, &seen, CUT_AT);
            (a, events)
        };
        let (a, full) = cut();
        let census = a.census();
        // 40 new, 14 of them silent, 20 known gone silent, 10 back.
        assert_eq!(full.len(), 40 + 14 + 20 + 10);
        for written in 0..=full.len() + 1 {
            let (mut a, events) = cut();
            assert_eq!(kinds(&events), kinds(&full));
            let lines = events
                .iter()
                .map(|t| Told::transition(t, CUT_AT))
                .chain([Told::swept(CUT_AT)]);
            for told in lines.take(written) {
                a.told(told);
            }
            let shown = &events[..written.min(events.len())];
            check_next(heap(a.into_words()), &seen, shown, &full, census);
        }
    }

    #[test]
    fn the_census_follows_the_bits_not_the_header() {
        // Left by an older hb killed in a sweep: 200 hosts known, 150 of
        // them silent, and a header that counts 2; a silent bit on a slot
        // that is not known.
        let slots = 256;
        let mut words = vec![0; state_words(slots)];
        let bitmap = bitmap_words(slots);
        words[LAST_SWEEP] = 100 * S;
        words[READY_UPTO] = 2;
        words[HOSTS] = 2;
        for slot in 0..200 {
            put_bit(&mut words[HEADER..], slot, true);
        }
        for slot in (0..150).chain([230]) {
            put_bit(&mut words[HEADER + bitmap..], slot, true);
        }
        let seen: Vec<u64> = (0..200)
            .map(|i| if i < 150 { 10 * S } else { 99 * S })
            .collect();
        let mut t = Tracker::resume(TIMEOUT, Words::Heap(words), slots, &table(&seen), 0);
        let expect = Census {
            hosts: 200,
            alive: 50,
            silent: 150,
        };
        assert_eq!(t.census(), expect);
        assert!(sweep(&mut t, &seen, 101 * S).is_empty());
        assert_eq!(t.census(), expect);
        let words = heap(t.into_words());
        assert_eq!(words[HOSTS], 200);
        assert_eq!(words[READY_UPTO], 200);
    }

    #[test]
    fn heap_state_grows_without_losing_bits() {
        let mut t = Tracker::new(15 * S);
        sweep(&mut t, &[S; 10], S);
        assert_eq!(sweep(&mut t, &[S; 10], 20 * S).len(), 10);
        // 1000 slots: the bitmaps are re-laid out; the 10 stay silent.
        let mut seen = vec![20 * S; 1000];
        seen[..10].fill(S);
        let events = sweep(&mut t, &seen, 21 * S);
        assert_eq!(events.len(), 990);
        assert!(events.iter().all(|e| matches!(e, Transition::New { .. })));
        assert_eq!(t.census().silent, 10);
    }

    #[test]
    fn many_hosts_census() {
        let mut t = Tracker::new(15 * S);
        let now = 100 * S;
        let seen: Vec<u64> = (0..10_000u64)
            .map(|i| if i % 100 == 0 { now - 20 * S } else { now - S })
            .collect();
        let events = sweep(&mut t, &seen, now);
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, Transition::New { .. }))
                .count(),
            10_000
        );
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, Transition::Silent { .. }))
                .count(),
            100
        );
        assert_eq!(
            t.census(),
            Census {
                hosts: 10_000,
                alive: 9_900,
                silent: 100
            }
        );
    }
}
