//! What an alert says: Alertmanager's postable alert (API v2,
//! `POST /api/v2/alerts`: labels, annotations, startsAt, endsAt,
//! generatorURL), and the alerts hb raises.
//!
//! Labels are an alert's identity in Alertmanager: two collectors watching
//! the same hosts must give the same labels for the same host, so that an
//! HA pair's alerts de-duplicate. Whatever tells the collectors apart (the
//! collector's name and interface) goes in the annotations.

use std::{collections::BTreeMap, time::SystemTime};

use serde::Serialize;

use crate::track::events::{Host, host_id, timestamp};

pub type Labels = BTreeMap<&'static str, String>;

/// Which alert, for the delivery: an alert is replaced, re-sent or resolved
/// by its key. Host alerts are keyed by their slot in the host table.
// The inventory's `HostMissing` alert fits as a third variant keyed by its
// inventory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Host(u32),
    Blind,
}

/// One alert as Alertmanager takes it (without `endsAt`, which the
/// delivery sets when it sends).
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub labels: Labels,
    pub annotations: Labels,
    pub starts_at: SystemTime,
}

/// Who raises the alerts: goes in annotations (never labels).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Collector {
    /// The machine's host name.
    pub name: String,
    /// What it watches: the interface, or `socket` for socket mode.
    pub watches: String,
}

impl Collector {
    fn annotate(&self, annotations: &mut Labels) {
        annotations.insert("collector", self.name.clone());
        annotations.insert("interface", self.watches.clone());
    }
}

/// The labels of a host's alerts. The one place that says how a host is
/// named in alerts; the inventory adds `name` and its labels here.
pub fn host_labels(alertname: &'static str, host: &Host) -> Labels {
    let mut labels = Labels::new();
    labels.insert("alertname", alertname.to_owned());
    labels.insert("host", host.ip.to_string());
    if let Some(id) = host.id {
        labels.insert("host_id", host_id(id));
    }
    labels
}

/// `HostSilent`: the host's last heartbeat at `last_seen` is older than the
/// timeout since `silent_since`.
pub fn host_silent(
    host: &Host,
    last_seen: SystemTime,
    silent_since: SystemTime,
    collector: &Collector,
) -> Alert {
    let labels = host_labels("HostSilent", host);
    let mut annotations = Labels::new();
    annotations.insert(
        "summary",
        format!("host {} sends no heartbeats", labels["host"]),
    );
    annotations.insert("silent_since", timestamp(silent_since));
    annotations.insert("last_seen", timestamp(last_seen));
    collector.annotate(&mut annotations);
    Alert {
        labels,
        annotations,
        starts_at: silent_since,
    }
}

/// `CollectorBlind`: the collector cannot tell silent hosts from its own
/// blindness, and holds their alerts back. Its labels name the collector:
/// two collectors are blind each on its own.
pub fn collector_blind(why: &str, since: SystemTime, collector: &Collector) -> Alert {
    let mut labels = Labels::new();
    labels.insert("alertname", "CollectorBlind".to_owned());
    labels.insert("collector", collector.name.clone());
    labels.insert("interface", collector.watches.clone());
    let mut annotations = Labels::new();
    annotations.insert(
        "summary",
        format!("hb on {} cannot see its hosts: {why}", collector.name),
    );
    annotations.insert("reason", why.to_owned());
    collector.annotate(&mut annotations);
    Alert {
        labels,
        annotations,
        starts_at: since,
    }
}

#[derive(Serialize)]
struct Postable<'a> {
    labels: &'a Labels,
    annotations: &'a Labels,
    #[serde(rename = "startsAt")]
    starts_at: String,
    #[serde(rename = "endsAt")]
    ends_at: String,
    #[serde(rename = "generatorURL", skip_serializing_if = "Option::is_none")]
    generator_url: Option<&'a str>,
}

/// A JSON array of postable alerts, each with its `endsAt`.
pub fn postable<'a>(
    alerts: impl Iterator<Item = (&'a Alert, SystemTime)>,
    generator_url: Option<&str>,
) -> Vec<u8> {
    let alerts: Vec<Postable<'_>> = alerts
        .map(|(a, ends_at)| Postable {
            labels: &a.labels,
            annotations: &a.annotations,
            starts_at: timestamp(a.starts_at),
            ends_at: timestamp(ends_at.max(a.starts_at)),
            generator_url,
        })
        .collect();
    serde_json::to_vec(&alerts).expect("serializing plain structs cannot fail")
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use hb_common::HostKey;

    use super::*;

    fn collector(name: &str) -> Collector {
        Collector {
            name: name.into(),
            watches: "eth0".into(),
        }
    }

    #[test]
    fn two_collectors_give_a_host_the_same_labels() {
        let host = Host::addr(&HostKey::from_ipv4([198, 18, 0, 7]));
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let a = host_silent(&host, t, t + Duration::from_secs(15), &collector("a"));
        let b = host_silent(
            &host,
            t + Duration::from_millis(3),
            t + Duration::from_secs(16),
            &collector("b"),
        );
        assert_eq!(a.labels, b.labels);
        assert_eq!(a.labels["host"], "198.18.0.7");
        assert_eq!(a.labels["alertname"], "HostSilent");
        assert_eq!(a.annotations["collector"], "a");
        assert_eq!(a.annotations["last_seen"], "2023-11-14T22:13:20.000Z");
        assert_eq!(a.annotations["silent_since"], "2023-11-14T22:13:35.000Z");
    }

    #[test]
    fn postable_has_the_api_v2_field_names() {
        let host = Host::addr(&HostKey::from_ipv4([198, 18, 0, 7]));
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let a = host_silent(&host, t, t, &collector("a"));
        let body = postable(
            [(&a, t + Duration::from_secs(240))].into_iter(),
            Some("http://a:9743/silent"),
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let one = &v[0];
        assert_eq!(one["labels"]["host"], "198.18.0.7");
        assert_eq!(one["startsAt"], "2023-11-14T22:13:20.000Z");
        assert_eq!(one["endsAt"], "2023-11-14T22:17:20.000Z");
        assert_eq!(one["generatorURL"], "http://a:9743/silent");
        assert_eq!(one["annotations"]["interface"], "eth0");
    }
}
