//! The silent hosts, longest silent first, paged: what `GET /silent`, the
//! per-host series and `hb status` show.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::clock::monotonic_ns;

use super::{
    events::{Host, host_id, timestamp},
    table::Table,
    tracker::Tracker,
};

/// Silent hosts, longest silent first (stable order for paging).
pub fn longest_silent(tracker: &Tracker, table: &dyn Table) -> Vec<(Host, u64)> {
    let mut slots: Vec<(u64, u32)> = tracker
        .silent_hosts()
        .map(|(slot, seen)| (seen, slot))
        .collect();
    slots.sort_unstable();
    slots
        .into_iter()
        .map(|(seen, slot)| (table.host(slot), seen))
        .collect()
}

#[derive(Serialize)]
pub struct SilentHost {
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
    /// When its last heartbeat became older than the timeout.
    pub silent_since: String,
    pub last_seen: String,
    pub silent_for_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
}

#[derive(Serialize)]
pub struct SilentPage {
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    pub hosts: Vec<SilentHost>,
}

/// A page of the silent hosts, longest silent first.
pub fn silent_page(
    tracker: &Tracker,
    table: &dyn Table,
    timeout: Duration,
    offset: usize,
    limit: usize,
) -> SilentPage {
    let all = longest_silent(tracker, table);
    let now = monotonic_ns();
    let wall = SystemTime::now();
    let hosts = all
        .iter()
        .skip(offset)
        .take(limit)
        .map(|(host, seen)| {
            let ago = Duration::from_nanos(now.saturating_sub(*seen));
            SilentHost {
                host: host.ip.to_string(),
                host_id: host.id.map(host_id),
                lost: host.lost,
                silent_since: timestamp(wall - ago + timeout),
                last_seen: timestamp(wall - ago),
                silent_for_ms: ago.as_millis() as u64,
            }
        })
        .collect();
    SilentPage {
        total: all.len(),
        offset,
        limit,
        hosts,
    }
}
