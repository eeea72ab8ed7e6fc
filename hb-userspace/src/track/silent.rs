//! The silent hosts, longest silent first, paged: what `GET /silent`, the
//! per-host series and `hb status` show.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    let (now, wall) = (monotonic_ns(), SystemTime::now());
    silent_page_at(tracker, table, timeout, (offset, limit), now, wall)
}

/// As `silent_page`, at monotonic time `now` and wall time `wall`.
fn silent_page_at(
    tracker: &Tracker,
    table: &dyn Table,
    timeout: Duration,
    (offset, limit): (usize, usize),
    now: u64,
    wall: SystemTime,
) -> SilentPage {
    let all = longest_silent(tracker, table);
    let hosts = all
        .iter()
        .skip(offset)
        .take(limit)
        .map(|(host, seen)| {
            let ago = Duration::from_nanos(now.saturating_sub(*seen));
            let last_seen = earlier(wall, ago);
            SilentHost {
                host: host.ip.to_string(),
                host_id: host.id.map(host_id),
                lost: host.lost,
                silent_since: timestamp(last_seen + timeout),
                last_seen: timestamp(last_seen),
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

/// `ago` before `wall`, or the epoch where that would be earlier: a wall
/// clock behind the uptime (a machine whose clock was never set, a time
/// namespace) must not bring a page down.
fn earlier(wall: SystemTime, ago: Duration) -> SystemTime {
    wall.checked_sub(ago)
        .filter(|t| *t >= UNIX_EPOCH)
        .unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use anyhow::Result;
    use hb_common::HostKey;

    use super::*;
    use crate::track::table::Counts;

    /// One host, last seen at monotonic 1 s.
    struct OneHost([AtomicU64; 1]);

    impl Table for OneHost {
        fn last_seen(&self) -> &[AtomicU64] {
            &self.0
        }
        fn host(&self, _: u32) -> Host {
            Host::addr(&HostKey::from_ipv4([10, 0, 0, 1]))
        }
        fn len(&self) -> usize {
            1
        }
        fn capacity(&self) -> usize {
            1
        }
        fn counters(&self) -> Result<Counts> {
            Ok(Default::default())
        }
    }

    #[test]
    fn a_wall_clock_behind_the_uptime_gives_the_epoch_not_a_panic() {
        let s = 1_000_000_000;
        let table = OneHost([AtomicU64::new(s)]);
        let mut tracker = Tracker::new(15 * s);
        let now = 1_000 * s;
        tracker.sweep(table.last_seen(), now, |_| {});
        // Silent for 999 s, on a clock that reads 10 s after the epoch.
        let wall = UNIX_EPOCH + Duration::from_secs(10);
        let page = silent_page_at(
            &tracker,
            &table,
            Duration::from_secs(15),
            (0, 10),
            now,
            wall,
        );
        assert_eq!(page.total, 1);
        let h = &page.hosts[0];
        assert_eq!(h.last_seen, "1970-01-01T00:00:00.000Z");
        assert_eq!(h.silent_since, "1970-01-01T00:00:15.000Z");
        assert_eq!(h.silent_for_ms, 999_000);
    }
}
