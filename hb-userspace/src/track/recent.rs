//! The last few host events the sweep reported, with their time: what the
//! status page shows as recent transitions. A ring of [`RECENT`] entries,
//! so its memory is bounded whatever the fleet does; a sweep that reports
//! 100k events reuses the entries it drops (their name buffers too), so a
//! mass outage costs no allocation here.

use std::{collections::VecDeque, net::IpAddr, time::SystemTime};

use hb_common::HostKey;

use super::{
    events::{Host, host_ip},
    tracker::Transition,
};

/// Events kept.
pub const RECENT: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    New,
    Silent,
    Recovered,
    Missing,
}

impl Kind {
    /// As the event lines name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Silent => "silent",
            Self::Recovered => "recovered",
            Self::Missing => "missing",
        }
    }
}

/// One reported event.
#[derive(Debug, Clone)]
pub struct Change {
    /// The wall time of the sweep that reported it.
    pub at: SystemTime,
    pub kind: Kind,
    pub ip: IpAddr,
    pub host_id: Option<u64>,
    /// Its inventory name; empty if none.
    pub name: String,
    /// Silent for (recovered: the gap; missing: since it was expected); 0
    /// for new and silent.
    pub for_ns: u64,
}

#[derive(Debug, Default)]
pub struct Recent {
    /// Oldest first.
    ring: VecDeque<Change>,
    /// The wall time of the sweep under way, or of the last one.
    swept: Option<SystemTime>,
}

impl Recent {
    /// A sweep at wall time `wall` begins: the events it reports carry it.
    pub fn sweep_at(&mut self, wall: SystemTime) {
        self.swept = Some(wall);
    }

    /// When the last sweep ran (wall time), if any has.
    pub fn last_sweep(&self) -> Option<SystemTime> {
        self.swept
    }

    /// A transition reported of `host`, named `name` in the inventory.
    pub fn transition(&mut self, t: &Transition<u32>, host: &Host, name: Option<&str>) {
        let (kind, for_ns) = match *t {
            Transition::New { .. } => (Kind::New, 0),
            Transition::Silent { .. } => (Kind::Silent, 0),
            Transition::Recovered { silent_for_ns, .. } => (Kind::Recovered, silent_for_ns),
        };
        self.push(kind, host.ip, host.id, name, for_ns);
    }

    /// An inventoried host reported missing, expected for `for_ns`.
    pub fn missing(&mut self, key: &HostKey, name: Option<&str>, for_ns: u64) {
        self.push(Kind::Missing, host_ip(key), key.host_id(), name, for_ns);
    }

    fn push(
        &mut self,
        kind: Kind,
        ip: IpAddr,
        host_id: Option<u64>,
        name: Option<&str>,
        for_ns: u64,
    ) {
        let at = self.swept.unwrap_or(SystemTime::UNIX_EPOCH);
        let mut change = if self.ring.len() >= RECENT {
            self.ring.pop_front().expect("a full ring has a front")
        } else {
            Change {
                at,
                kind,
                ip,
                host_id,
                name: String::new(),
                for_ns,
            }
        };
        change.at = at;
        change.kind = kind;
        change.ip = ip;
        change.host_id = host_id;
        change.name.clear();
        change.name.push_str(name.unwrap_or(""));
        change.for_ns = for_ns;
        self.ring.push_back(change);
    }

    /// The events kept, newest first.
    pub fn newest_first(&self) -> impl Iterator<Item = &Change> {
        self.ring.iter().rev()
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn keeps_the_last_fifty_newest_first() {
        let mut r = Recent::default();
        r.sweep_at(SystemTime::UNIX_EPOCH + Duration::from_secs(7));
        for i in 0..1000u32 {
            let host = Host::addr(&HostKey::from_ipv4([10, 0, (i >> 8) as u8, i as u8]));
            let t = Transition::Silent {
                host: i,
                silent_for_ns: 5,
            };
            r.transition(&t, &host, Some(&format!("h{i}")));
        }
        assert_eq!(r.len(), 50);
        let names: Vec<_> = r.newest_first().map(|c| c.name.as_str()).collect();
        assert_eq!(names[0], "h999");
        assert_eq!(names[49], "h950");
        let first = r.newest_first().next().unwrap();
        assert_eq!(first.kind, Kind::Silent);
        assert_eq!(first.ip.to_string(), "10.0.3.231");
        assert_eq!(first.at, SystemTime::UNIX_EPOCH + Duration::from_secs(7));

        r.missing(&HostKey::from_ipv4([10, 9, 9, 9]), None, 3);
        let m = r.newest_first().next().unwrap();
        assert_eq!((m.kind, m.name.as_str(), m.for_ns), (Kind::Missing, "", 3));
        assert_eq!(r.len(), 50);
    }
}
