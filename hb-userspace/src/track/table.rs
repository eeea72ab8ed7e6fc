//! What a sweep, the endpoints and `hb status` read of a host table,
//! whichever path fills it: the kernel's (XDP) or socket mode's own.

use std::sync::atomic::AtomicU32;

use anyhow::Result;
use hb_common::{Counter, Timing};

use super::events::Host;

/// Packet outcome totals, indexed by `Counter as usize`.
pub type Counts = [u64; Counter::COUNT];

pub trait Table {
    /// Last-seen times of the slots in use, in ticks from `epoch_ns` (see
    /// `hb_common::timing`: wrapping, compared with `ticks_since`); 0
    /// means "not ready yet".
    fn last_seen(&self) -> &[AtomicU32];
    /// The CLOCK_MONOTONIC ns that `last_seen`'s ticks count from.
    fn epoch_ns(&self) -> u64;
    /// The host in `slot`, as events name it.
    fn host(&self, slot: u32) -> Host;
    /// Slots in use.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn capacity(&self) -> usize;
    /// Outcome counters since the table was created.
    fn counters(&self) -> Result<Counts>;
    /// What the table learned of `slot`'s heartbeat period (see
    /// `hb_common::timing`); `Timing::NONE` where it learns nothing.
    fn timing(&self, _slot: u32) -> Timing {
        Timing::NONE
    }

    // Forgetting a host frees its slot for a new one, in three steps, a
    // sweep apart at least between the first two (see the sweeper's
    // `Forgetting`): a table that cannot forget does nothing.

    /// First step: the host's heartbeats no longer reach `slot`, whose
    /// last-seen time reads 0. False: this table does not forget.
    fn forget(&self, _slot: u32) -> Result<bool> {
        Ok(false)
    }
    /// Second step: clears what a heartbeat in flight at the first wrote.
    fn release(&self, _slot: u32) {}
    /// Last step: the slot may be handed to a new host.
    fn reuse(&self, _slot: u32) -> Result<()> {
        Ok(())
    }
    /// Whether `slot`'s host was forgotten (first step taken).
    fn forgotten(&self, _slot: u32) -> bool {
        false
    }
}
