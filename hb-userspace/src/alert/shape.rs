//! What an alert says: Alertmanager's postable alert (API v2,
//! `POST /api/v2/alerts`: labels, annotations, startsAt, endsAt,
//! generatorURL), and the alerts hb raises.
//!
//! Labels are an alert's identity in Alertmanager: two collectors watching
//! the same hosts must give the same labels for the same host, so that an
//! HA pair's alerts de-duplicate. Whatever tells the collectors apart (the
//! collector's name and interface) goes in the annotations.

use std::{borrow::Cow, collections::BTreeMap, fmt::Write as _, net::IpAddr, time::SystemTime};

use hb_common::HostKey;

use crate::track::{
    events::{Host, host_id, host_ip, timestamp},
    fleet::Ident,
};

/// Label (or annotation) name -> value; names are ours (`alertname`,
/// `host`) or the inventory's columns.
pub type Labels = BTreeMap<Cow<'static, str>, String>;

/// An inventoried host's name and labels, owned: what its alerts add to
/// their labels, so that an alert says which machine (and rack, site) is
/// down, and two collectors with the same inventory give the same labels.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HostIdent {
    pub name: Option<String>,
    pub labels: Vec<(String, String)>,
}

impl HostIdent {
    /// `None` for a host the inventory gives neither a name nor labels.
    pub fn of(ident: &Ident<'_>) -> Option<Box<Self>> {
        let this = Self {
            name: ident.name.map(str::to_owned),
            labels: ident
                .labels
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        };
        (this != Self::default()).then(|| Box::new(this))
    }
}

/// Which alert, for the delivery: an alert is replaced, re-sent or resolved
/// by its key. Host alerts are keyed by their slot in the host table.
// A missing host has no slot (it was never heard): keyed by its inventory
// key, which a reload keeps (its entry number it does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Host(u32),
    Missing(HostKey),
    Blind,
}

/// What the sweep says to raise: the few facts an alert is made of, so
/// that the event loop hands over a mass outage cheaply and the delivery
/// thread makes the alerts.
#[derive(Debug, Clone, PartialEq)]
pub enum Raise {
    HostSilent {
        host: Host,
        /// Its name and labels, if inventoried.
        ident: Option<Box<HostIdent>>,
        last_seen: SystemTime,
        silent_since: SystemTime,
    },
    /// An inventoried host never heard: expected since `expected_since`,
    /// missing since its grace ran out at `missing_since`.
    HostMissing {
        key: HostKey,
        ident: Option<Box<HostIdent>>,
        expected_since: SystemTime,
        missing_since: SystemTime,
    },
    CollectorBlind {
        why: &'static str,
        since: SystemTime,
    },
}

impl Raise {
    pub fn alert(&self, collector: &Collector) -> Alert {
        match *self {
            Self::HostSilent {
                ref host,
                ref ident,
                last_seen,
                silent_since,
            } => host_silent(host, ident.as_deref(), last_seen, silent_since, collector),
            Self::HostMissing {
                ref key,
                ref ident,
                expected_since,
                missing_since,
            } => host_missing(
                key,
                ident.as_deref(),
                expected_since,
                missing_since,
                collector,
            ),
            Self::CollectorBlind { why, since } => collector_blind(why, since, collector),
        }
    }
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
        annotations.insert("collector".into(), self.name.clone());
        annotations.insert("interface".into(), self.watches.clone());
    }
}

/// The labels of a host's alerts. The one place that says how a host is
/// named in alerts: its address (`host`), its `host_id` if it signs, and
/// with an inventory its `name` and inventory labels. An inventory label
/// named like one of ours does not replace ours.
pub fn host_labels(
    alertname: &'static str,
    ip: Option<IpAddr>,
    id: Option<u64>,
    ident: Option<&HostIdent>,
) -> Labels {
    let mut labels = Labels::new();
    labels.insert("alertname".into(), alertname.to_owned());
    if let Some(ip) = ip {
        labels.insert("host".into(), ip.to_string());
    }
    if let Some(id) = id {
        labels.insert("host_id".into(), host_id(id));
    }
    if let Some(ident) = ident {
        if let Some(name) = &ident.name {
            labels.insert("name".into(), name.clone());
        }
        for (k, v) in &ident.labels {
            labels.entry(k.clone().into()).or_insert_with(|| v.clone());
        }
    }
    labels
}

/// How a host is called in a summary: its name, else its address or id.
fn called(labels: &Labels) -> &str {
    ["name", "host", "host_id"]
        .iter()
        .find_map(|k| labels.get(*k))
        .map_or("?", String::as_str)
}

/// `HostSilent`: the host's last heartbeat at `last_seen` is older than the
/// timeout since `silent_since`.
pub fn host_silent(
    host: &Host,
    ident: Option<&HostIdent>,
    last_seen: SystemTime,
    silent_since: SystemTime,
    collector: &Collector,
) -> Alert {
    let labels = host_labels("HostSilent", Some(host.ip), host.id, ident);
    let mut annotations = Labels::new();
    annotations.insert(
        "summary".into(),
        format!("host {} sends no heartbeats", called(&labels)),
    );
    annotations.insert("silent_since".into(), timestamp(silent_since));
    annotations.insert("last_seen".into(), timestamp(last_seen));
    collector.annotate(&mut annotations);
    Alert {
        labels,
        annotations,
        starts_at: silent_since,
    }
}

/// `HostMissing`: the inventory lists the host, hb has expected it since
/// `expected_since` and never heard it; its grace ran out at
/// `missing_since`.
pub fn host_missing(
    key: &HostKey,
    ident: Option<&HostIdent>,
    expected_since: SystemTime,
    missing_since: SystemTime,
    collector: &Collector,
) -> Alert {
    let (ip, id) = match key.host_id() {
        Some(id) => (None, Some(id)),
        None => (Some(host_ip(key)), None),
    };
    let labels = host_labels("HostMissing", ip, id, ident);
    let mut annotations = Labels::new();
    annotations.insert(
        "summary".into(),
        format!("inventoried host {} was never heard", called(&labels)),
    );
    annotations.insert("expected_since".into(), timestamp(expected_since));
    collector.annotate(&mut annotations);
    Alert {
        labels,
        annotations,
        starts_at: missing_since,
    }
}

/// `CollectorBlind`: the collector cannot tell silent hosts from its own
/// blindness, and holds their alerts back. Its labels name the collector:
/// two collectors are blind each on its own.
pub fn collector_blind(why: &str, since: SystemTime, collector: &Collector) -> Alert {
    let mut labels = Labels::new();
    labels.insert("alertname".into(), "CollectorBlind".to_owned());
    labels.insert("collector".into(), collector.name.clone());
    labels.insert("interface".into(), collector.watches.clone());
    let mut annotations = Labels::new();
    annotations.insert(
        "summary".into(),
        format!("hb on {} cannot see its hosts: {why}", collector.name),
    );
    annotations.insert("reason".into(), why.to_owned());
    collector.annotate(&mut annotations);
    Alert {
        labels,
        annotations,
        starts_at: since,
    }
}

/// When an alert sent now ends: `Firing` ones some time ahead (the same
/// for a whole POST, formatted once), resolved ones at their recovery.
pub enum Ends {
    Firing,
    At(SystemTime),
}

/// A JSON array of postable alerts, each with its end; `firing_ends` is
/// the `endsAt` of firing alerts. Written by hand: a mass outage is 100k
/// alerts, and this is the one loop over all of them.
pub fn postable<'a>(
    alerts: impl Iterator<Item = (&'a Alert, Ends)>,
    firing_ends: SystemTime,
    generator_url: Option<&str>,
) -> Vec<u8> {
    let firing_ends = timestamp(firing_ends);
    let mut out = String::with_capacity(64 * 1024);
    out.push('[');
    for (n, (a, ends)) in alerts.enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str("{\"labels\":");
        object(&mut out, &a.labels);
        out.push_str(",\"annotations\":");
        object(&mut out, &a.annotations);
        out.push_str(",\"startsAt\":\"");
        out.push_str(&timestamp(a.starts_at));
        out.push_str("\",\"endsAt\":\"");
        match ends {
            Ends::Firing => out.push_str(&firing_ends),
            Ends::At(t) => out.push_str(&timestamp(t.max(a.starts_at))),
        }
        out.push('"');
        if let Some(url) = generator_url {
            out.push_str(",\"generatorURL\":");
            string(&mut out, url);
        }
        out.push('}');
    }
    out.push(']');
    out.into_bytes()
}

fn object(out: &mut String, map: &Labels) {
    out.push('{');
    for (n, (k, v)) in map.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        string(out, k);
        out.push(':');
        string(out, v);
    }
    out.push('}');
}

/// A JSON string literal.
fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
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
        let a = host_silent(&host, None, t, t + Duration::from_secs(15), &collector("a"));
        let b = host_silent(
            &host,
            None,
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
    fn an_inventoried_host_has_its_name_and_labels_but_keeps_ours() {
        let host = Host::addr(&HostKey::from_ipv4([198, 18, 0, 7]));
        let ident = HostIdent {
            name: Some("web-7".into()),
            labels: vec![
                ("group".into(), "web".into()),
                ("host".into(), "not-the-address".into()),
            ],
        };
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let a = host_silent(&host, Some(&ident), t, t, &collector("a"));
        let labels: Vec<(&str, &str)> = a
            .labels
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                ("alertname", "HostSilent"),
                ("group", "web"),
                ("host", "198.18.0.7"),
                ("name", "web-7")
            ]
        );
        assert_eq!(a.annotations["summary"], "host web-7 sends no heartbeats");
        let m = host_missing(
            &HostKey::from_ipv4([198, 18, 0, 7]),
            Some(&ident),
            t,
            t + Duration::from_secs(30),
            &collector("b"),
        );
        assert_eq!(m.labels["alertname"], "HostMissing");
        assert_eq!(m.labels["host"], "198.18.0.7");
        assert_eq!(m.labels["name"], "web-7");
        assert_eq!(m.starts_at, t + Duration::from_secs(30));
    }

    #[test]
    fn postable_has_the_api_v2_field_names() {
        let host = Host::addr(&HostKey::from_ipv4([198, 18, 0, 7]));
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let a = host_silent(&host, None, t, t, &collector("a"));
        let body = postable(
            [(&a, Ends::Firing)].into_iter(),
            t + Duration::from_secs(240),
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

    #[test]
    fn postable_escapes_what_json_must() {
        let mut a = collector_blind("a \"quoted\" \\ reason\n", UNIX_EPOCH, &collector("x"));
        a.annotations.insert("tab".into(), "\t".into());
        let body = postable(
            [(&a, Ends::At(UNIX_EPOCH + Duration::from_secs(1)))].into_iter(),
            UNIX_EPOCH,
            None,
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v[0]["annotations"]["reason"], "a \"quoted\" \\ reason\n");
        assert_eq!(v[0]["annotations"]["tab"], "\t");
        assert_eq!(v[0]["endsAt"], "1970-01-01T00:00:01.000Z");
        assert!(v[0].get("generatorURL").is_none());
    }
}
