//! Event lines on stdout: text for people, JSON lines for machines. Same
//! content in both.

use std::{
    fmt::Write as _,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use hb_common::{Counter, HostKey, Timing};
use serde::Serialize;

use super::{adaptive::period_jitter_ms, fleet::Ident, tracker::Transition};

/// How event lines are written.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// For people.
    Text,
    /// JSON lines, for machines.
    Json,
}

/// The address as people write it: IPv4-mapped keys print as IPv4.
pub fn host_ip(key: &HostKey) -> IpAddr {
    key.ip()
}

/// The key of an address: IPv4 (also IPv4-mapped IPv6, as a dual-stack
/// socket reports IPv4 senders) maps into IPv6, as the XDP program keys it.
pub fn host_key(ip: IpAddr) -> HostKey {
    match ip {
        IpAddr::V4(v4) => HostKey::from_ipv4(v4.octets()),
        IpAddr::V6(v6) => HostKey::from_ipv6(v6.octets()),
    }
}

/// A host as events name it: its address, plus for a host that sends
/// signed heartbeats its host id and the heartbeats it lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    /// The source address (of the last accepted heartbeat, for host ids).
    pub ip: IpAddr,
    pub id: Option<u64>,
    pub lost: Option<u64>,
    /// What the table learned of its heartbeat period (`Timing::NONE`
    /// where a line does not say it).
    pub timing: Timing,
}

impl Host {
    /// Its key in the table: the host id's, else the address's.
    pub fn key(&self) -> HostKey {
        match self.id {
            Some(id) => HostKey::from_host_id(id),
            None => host_key(self.ip),
        }
    }

    /// A host known by its address only.
    pub fn addr(key: &HostKey) -> Self {
        Self {
            ip: host_ip(key),
            id: None,
            lost: None,
            timing: Timing::NONE,
        }
    }
}

/// A host id as printed: 16 hex digits (a string in JSON, where numbers
/// past 2^53 lose digits).
pub fn host_id(id: u64) -> String {
    format!("{id:016x}")
}

/// What a summary line carries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub hosts: u64,
    pub alive: u64,
    pub silent: u64,
    /// Heartbeats recorded since the previous sweep.
    pub heartbeats: u64,
    /// Heartbeats found missing from sequence numbers since the previous sweep.
    pub lost: u64,
    /// Cumulative packet counters since the program was loaded.
    pub packets: [u64; Counter::COUNT],
    pub sweep: Duration,
    /// With an inventory: inventoried hosts reported missing, and hosts
    /// heard that it does not list.
    pub fleet: Option<FleetCounts>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct FleetCounts {
    pub missing: u64,
    pub unknown_hosts: u64,
}

pub enum Event<'a> {
    /// A host's transition; with its name and labels if inventoried.
    Host(Transition<Host>, Option<Ident<'a>>),
    /// An inventoried host not heard within its grace: `host` is its
    /// address or host id key; `for_ns` since hb expected it.
    Missing {
        host: &'a HostKey,
        ident: Ident<'a>,
        for_ns: u64,
    },
    Summary(&'a Summary),
    /// A host starts flapping (`end` false: its `silent` and `recovered`
    /// are held back from now on) or stops; `share`: its state-change
    /// share, percent (see `track::flap`).
    Flapping {
        host: Host,
        ident: Option<Ident<'a>>,
        share: u32,
        end: bool,
    },
}

#[derive(Serialize)]
struct HostJson<'a> {
    ts: &'a str,
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<super::fleet::Labels<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    missing_for_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    silent_for_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seen_ago_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lost: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    period_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jitter_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state_changes_pct: Option<u32>,
}

impl<'a> HostJson<'a> {
    /// A line about a host in the table: what every such line says of it
    /// (address or id, inventory name and labels, loss, learned timing).
    fn of(ts: &'a str, event: &'static str, host: &Host, ident: Option<Ident<'a>>) -> Self {
        let timing = period_jitter_ms(host.timing);
        Self {
            ts,
            event,
            host: Some(host.ip),
            host_id: host.id.map(host_id),
            name: ident.and_then(|i| i.name),
            labels: ident.map(|i| i.labels).filter(|l| !l.is_empty()),
            missing_for_ms: None,
            silent_for_ms: None,
            last_seen_ago_ms: None,
            lost: host.lost,
            period_ms: timing.map(|p| p.0),
            jitter_ms: timing.map(|p| p.1),
            state_changes_pct: None,
        }
    }
}

#[derive(Serialize)]
struct SummaryJson<'a> {
    ts: &'a str,
    event: &'static str,
    hosts: u64,
    alive: u64,
    silent: u64,
    heartbeats: u64,
    lost: u64,
    packets: serde_json::Map<String, serde_json::Value>,
    sweep_ms: f64,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    fleet: Option<FleetCounts>,
}

fn ms(ns: u64) -> u64 {
    ns / 1_000_000
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-24T10:00:00.123Z`.
pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// Formats one event as a single line, without the newline; `ts` is its
/// `timestamp` (one for all the events of a sweep: a sweep that finds 200k
/// new hosts formats it once, not 200k times).
pub fn format_event(format: Format, ts: &str, event: &Event<'_>) -> String {
    match format {
        Format::Json => json(ts, event),
        Format::Text => text(ts, event),
    }
}

fn json(ts: &str, event: &Event<'_>) -> String {
    let line = match *event {
        Event::Missing {
            host,
            ident,
            for_ns,
        } => serde_json::to_string(&HostJson {
            ts,
            event: "missing",
            host: host.host_id().is_none().then(|| host_ip(host)),
            host_id: host.host_id().map(host_id),
            name: ident.name,
            labels: (!ident.labels.is_empty()).then_some(ident.labels),
            missing_for_ms: Some(ms(for_ns)),
            silent_for_ms: None,
            last_seen_ago_ms: None,
            lost: None,
            period_ms: None,
            jitter_ms: None,
            state_changes_pct: None,
        }),
        Event::Flapping {
            host,
            ident,
            share,
            end,
        } => serde_json::to_string(&HostJson {
            state_changes_pct: Some(share),
            ..HostJson::of(
                ts,
                if end { "flapping_end" } else { "flapping" },
                &host,
                ident,
            )
        }),
        Event::Host(t, ident) => {
            let (event, host, silent_for, ago) = match t {
                Transition::New { host, age_ns } => ("new", host, None, Some(ms(age_ns))),
                Transition::Silent {
                    host,
                    silent_for_ns,
                } => ("silent", host, Some(ms(silent_for_ns)), None),
                Transition::Recovered {
                    host,
                    silent_for_ns,
                } => ("recovered", host, Some(ms(silent_for_ns)), None),
            };
            serde_json::to_string(&HostJson {
                silent_for_ms: silent_for,
                last_seen_ago_ms: ago,
                ..HostJson::of(ts, event, &host, ident)
            })
        }
        Event::Summary(s) => {
            let packets = Counter::PACKETS
                .iter()
                .map(|c| (c.name().to_owned(), s.packets[*c as usize].into()))
                .collect();
            serde_json::to_string(&SummaryJson {
                ts,
                event: "summary",
                hosts: s.hosts,
                alive: s.alive,
                silent: s.silent,
                heartbeats: s.heartbeats,
                lost: s.lost,
                packets,
                sweep_ms: s.sweep.as_secs_f64() * 1e3,
                fleet: s.fleet,
            })
        }
    };
    line.expect("serializing plain structs cannot fail")
}

fn text(ts: &str, event: &Event<'_>) -> String {
    let (kind, host, what, ns, after, ident) = match *event {
        Event::Host(Transition::New { host, age_ns }, ident) => {
            ("new      ", host, "last heartbeat ", age_ns, " ago", ident)
        }
        Event::Host(
            Transition::Silent {
                host,
                silent_for_ns,
            },
            ident,
        ) => ("silent   ", host, "silent for ", silent_for_ns, "", ident),
        Event::Host(
            Transition::Recovered {
                host,
                silent_for_ns,
            },
            ident,
        ) => (
            "recovered",
            host,
            "was silent for ",
            silent_for_ns,
            "",
            ident,
        ),
        Event::Missing {
            host,
            ident,
            for_ns,
        } => {
            let mut line = format!("{ts} missing   ");
            match host.host_id() {
                Some(id) => {
                    let _ = write!(line, "id={}", host_id(id));
                }
                None => {
                    let _ = write!(line, "{}", host_ip(host));
                }
            }
            let shown = ident.to_string();
            if !shown.is_empty() {
                let _ = write!(line, " {shown}");
            }
            let _ = write!(
                line,
                " (not heard for {})",
                humantime::format_duration(Duration::from_millis(ms(for_ns)))
            );
            return line;
        }
        Event::Summary(s) => return text_summary(ts, s),
        Event::Flapping {
            host,
            ident,
            share,
            end,
        } => {
            let kind = if end { "flapping_end" } else { "flapping " };
            let mut line = format!("{ts} {kind} {}", host.ip);
            if let Some(id) = host.id {
                let _ = write!(line, " id={}", host_id(id));
            }
            if let Some(shown) = ident.map(|i| i.to_string()).filter(|s| !s.is_empty()) {
                let _ = write!(line, " {shown}");
            }
            let _ = write!(line, " ({share}% state changes");
            push_period(&mut line, host.timing);
            line.push(')');
            return line;
        }
    };
    let mut line = String::with_capacity(96);
    let _ = write!(line, "{ts} {kind} {}", host.ip);
    if let Some(id) = host.id {
        let _ = write!(line, " id={}", host_id(id));
    }
    if let Some(ident) = ident {
        let shown = ident.to_string();
        if !shown.is_empty() {
            let _ = write!(line, " {shown}");
        }
    }
    let _ = write!(
        line,
        " ({what}{}{after}",
        humantime::format_duration(Duration::from_millis(ms(ns)))
    );
    if let Some(lost) = host.lost {
        let _ = write!(line, ", {lost} lost");
    }
    push_period(&mut line, host.timing);
    line.push(')');
    line
}

/// `, period 1s, jitter 52ms` where the host's period is learned.
fn push_period(line: &mut String, timing: Timing) {
    if let Some((period, jitter)) = period_jitter_ms(timing) {
        let d = |ms| humantime::format_duration(Duration::from_millis(ms));
        let _ = write!(line, ", period {}, jitter {}", d(period), d(jitter));
    }
}

fn text_summary(ts: &str, s: &Summary) -> String {
    let mut line = format!(
        "{ts} summary   hosts={} alive={} silent={} heartbeats={} lost={} sweep={:.3}ms packets:",
        s.hosts,
        s.alive,
        s.silent,
        s.heartbeats,
        s.lost,
        s.sweep.as_secs_f64() * 1e3
    );
    if let Some(f) = s.fleet {
        let _ = write!(
            line,
            " missing={} unknown_hosts={}",
            f.missing, f.unknown_hosts
        );
    }
    for &c in Counter::PACKETS {
        let _ = write!(line, " {}={}", c.name(), s.packets[c as usize]);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> SystemTime {
        humantime::parse_rfc3339("2026-11-24T10:00:00.123Z").unwrap()
    }

    #[test]
    fn host_keys_of_addresses() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(host_key(v4), HostKey::from_ipv4([10, 1, 2, 3]));
        assert_eq!(host_key(mapped), host_key(v4));
        assert_eq!(host_ip(&host_key(mapped)), v4);
    }

    #[test]
    fn host_addresses() {
        assert_eq!(
            host_ip(&HostKey::from_ipv4([10, 1, 2, 3])).to_string(),
            "10.1.2.3"
        );
        let v6: std::net::Ipv6Addr = "2001:db8::7".parse().unwrap();
        assert_eq!(
            host_ip(&HostKey::from_ipv6(v6.octets())).to_string(),
            "2001:db8::7"
        );
    }

    #[test]
    fn json_host_events() {
        let host = Host::addr(&HostKey::from_ipv4([10, 1, 2, 3]));
        let silent = Event::Host(
            Transition::Silent {
                host,
                silent_for_ns: 15_210_000_000,
            },
            None,
        );
        assert_eq!(
            format_event(Format::Json, &timestamp(at()), &silent),
            r#"{"ts":"2026-11-24T10:00:00.123Z","event":"silent","host":"10.1.2.3","silent_for_ms":15210}"#
        );
        let new = Event::Host(
            Transition::New {
                host,
                age_ns: 2_000_000,
            },
            None,
        );
        assert_eq!(
            format_event(Format::Json, &timestamp(at()), &new),
            r#"{"ts":"2026-11-24T10:00:00.123Z","event":"new","host":"10.1.2.3","last_seen_ago_ms":2}"#
        );
        let rec = Event::Host(
            Transition::Recovered {
                host,
                silent_for_ns: 20_000_000_000,
            },
            None,
        );
        let v: serde_json::Value =
            serde_json::from_str(&format_event(Format::Json, &timestamp(at()), &rec)).unwrap();
        assert_eq!(v["event"], "recovered");
        assert_eq!(v["silent_for_ms"], 20000);
    }

    #[test]
    fn json_summary() {
        let mut s = Summary {
            hosts: 3,
            alive: 2,
            silent: 1,
            heartbeats: 9,
            sweep: Duration::from_micros(250),
            ..Default::default()
        };
        s.packets[Counter::Heartbeat as usize] = 40;
        s.packets[Counter::NotIp as usize] = 5;
        s.packets[Counter::Forged as usize] = 2;
        s.lost = 4;
        let line = format_event(Format::Json, &timestamp(at()), &Event::Summary(&s));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ts"], "2026-11-24T10:00:00.123Z");
        assert_eq!(v["event"], "summary");
        assert_eq!(
            (
                v["hosts"].as_u64(),
                v["alive"].as_u64(),
                v["silent"].as_u64()
            ),
            (Some(3), Some(2), Some(1))
        );
        assert_eq!(v["heartbeats"], 9);
        assert_eq!(v["lost"], 4);
        assert_eq!(v["packets"]["heartbeat"], 40);
        assert_eq!(v["packets"]["forged"], 2);
        assert_eq!(v["packets"]["unauthenticated"], 0);
        // Lost heartbeats are not packets.
        assert!(v["packets"].get("lost").is_none());
        assert_eq!(v["packets"]["not_ip"], 5);
        assert_eq!(v["packets"]["table_full"], 0);
        assert_eq!(v["sweep_ms"], 0.25);
        assert!(!line.contains('\n'));
    }

    fn signed_host() -> Host {
        Host {
            ip: "198.18.0.2".parse().unwrap(),
            id: Some(42),
            lost: Some(3),
            timing: Timing::NONE,
        }
    }

    #[test]
    fn json_signed_host_events() {
        let silent = Event::Host(
            Transition::Silent {
                host: signed_host(),
                silent_for_ns: 15_210_000_000,
            },
            None,
        );
        assert_eq!(
            format_event(Format::Json, &timestamp(at()), &silent),
            r#"{"ts":"2026-11-24T10:00:00.123Z","event":"silent","host":"198.18.0.2","host_id":"000000000000002a","silent_for_ms":15210,"lost":3}"#
        );
        let rec = Event::Host(
            Transition::Recovered {
                host: Host {
                    id: Some(u64::MAX),
                    lost: Some(0),
                    ..signed_host()
                },
                silent_for_ns: 20_000_000_000,
            },
            None,
        );
        let v: serde_json::Value =
            serde_json::from_str(&format_event(Format::Json, &timestamp(at()), &rec)).unwrap();
        assert_eq!(v["host_id"], "ffffffffffffffff");
        assert_eq!(v["lost"], 0);
    }

    /// A host that learned a period of 1000 ticks (1048.576 ms) and a
    /// deviation of 500 (524.288 ms): one interval (RFC 6298's start).
    fn learned_host() -> Host {
        Host {
            timing: Timing::NONE.update(1000),
            ..Host::addr(&HostKey::from_ipv4([198, 18, 0, 9]))
        }
    }

    #[test]
    fn learned_period_and_jitter_on_host_lines() {
        let silent = Event::Host(
            Transition::Silent {
                host: learned_host(),
                silent_for_ns: 2_380_000_000,
            },
            None,
        );
        let ts = timestamp(at());
        assert_eq!(
            format_event(Format::Json, &ts, &silent),
            r#"{"ts":"2026-11-24T10:00:00.123Z","event":"silent","host":"198.18.0.9","silent_for_ms":2380,"period_ms":1048,"jitter_ms":524}"#
        );
        assert_eq!(
            format_event(Format::Text, &ts, &silent),
            "2026-11-24T10:00:00.123Z silent    198.18.0.9 (silent for 2s 380ms, period 1s 48ms, jitter 524ms)"
        );
        // Nothing learned: no fields, as before.
        let new = Event::Host(
            Transition::New {
                host: Host::addr(&HostKey::from_ipv4([198, 18, 0, 9])),
                age_ns: 0,
            },
            None,
        );
        let line = format_event(Format::Json, &ts, &new);
        assert!(
            !line.contains("period_ms") && !line.contains("jitter_ms"),
            "{line}"
        );
    }

    #[test]
    fn flapping_lines() {
        let ts = timestamp(at());
        let start = Event::Flapping {
            host: learned_host(),
            ident: None,
            share: 52,
            end: false,
        };
        assert_eq!(
            format_event(Format::Json, &ts, &start),
            r#"{"ts":"2026-11-24T10:00:00.123Z","event":"flapping","host":"198.18.0.9","period_ms":1048,"jitter_ms":524,"state_changes_pct":52}"#
        );
        let end = Event::Flapping {
            host: Host::addr(&HostKey::from_ipv4([198, 18, 0, 9])),
            ident: None,
            share: 24,
            end: true,
        };
        assert_eq!(
            format_event(Format::Text, &ts, &end),
            "2026-11-24T10:00:00.123Z flapping_end 198.18.0.9 (24% state changes)"
        );
        assert_eq!(
            format_event(Format::Json, &ts, &end),
            r#"{"ts":"2026-11-24T10:00:00.123Z","event":"flapping_end","host":"198.18.0.9","state_changes_pct":24}"#
        );
        // A signed host's flapping line names it and its loss, as its
        // other lines do.
        let signed = Event::Flapping {
            host: signed_host(),
            ident: None,
            share: 60,
            end: false,
        };
        assert_eq!(
            format_event(Format::Json, &ts, &signed),
            r#"{"ts":"2026-11-24T10:00:00.123Z","event":"flapping","host":"198.18.0.2","host_id":"000000000000002a","lost":3,"state_changes_pct":60}"#
        );
    }

    #[test]
    fn text_signed_host_lines() {
        assert_eq!(
            format_event(
                Format::Text,
                &timestamp(at()),
                &Event::Host(
                    Transition::Recovered {
                        host: signed_host(),
                        silent_for_ns: 20_000_000_000
                    },
                    None
                )
            ),
            "2026-11-24T10:00:00.123Z recovered 198.18.0.2 id=000000000000002a (was silent for 20s, 3 lost)"
        );
    }

    #[test]
    fn text_lines() {
        let host = Host::addr(&HostKey::from_ipv4([10, 1, 2, 3]));
        assert_eq!(
            format_event(
                Format::Text,
                &timestamp(at()),
                &Event::Host(
                    Transition::Silent {
                        host,
                        silent_for_ns: 15_210_000_000
                    },
                    None
                )
            ),
            "2026-11-24T10:00:00.123Z silent    10.1.2.3 (silent for 15s 210ms)"
        );
        let s = Summary {
            hosts: 3,
            alive: 2,
            silent: 1,
            heartbeats: 9,
            ..Default::default()
        };
        let line = format_event(Format::Text, &timestamp(at()), &Event::Summary(&s));
        assert!(line.starts_with("2026-11-24T10:00:00.123Z summary   hosts=3 alive=2 silent=1 heartbeats=9 lost=0 sweep=0.000ms packets: heartbeat=0"), "{line}");
        assert!(
            line.ends_with("table_full=0 forged=0 replayed=0 unauthenticated=0"),
            "{line}"
        );
    }

    #[test]
    fn inventoried_hosts_are_named_in_both_formats() {
        let path = std::env::temp_dir().join(format!("hb-events-{}.csv", std::process::id()));
        std::fs::write(
            &path,
            "address,name,group,dc\n10.1.2.3,web-17,web,fra\n10.1.2.4,,db,\n",
        )
        .unwrap();
        let fleet = crate::track::fleet::Fleet::load(&crate::track::fleet::FleetConfig {
            inventory: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        std::fs::remove_file(&path).unwrap();
        let inv = fleet.inventory().unwrap();
        let key = HostKey::from_ipv4([10, 1, 2, 3]);
        let ident = inv.ident(inv.entry(&key).unwrap());
        let silent = Event::Host(
            Transition::Silent {
                host: Host::addr(&key),
                silent_for_ns: 15_210_000_000,
            },
            Some(ident),
        );
        let ts = timestamp(at());
        assert_eq!(
            format_event(Format::Json, &ts, &silent),
            r#"{"ts":"2026-11-24T10:00:00.123Z","event":"silent","host":"10.1.2.3","name":"web-17","labels":{"group":"web","dc":"fra"},"silent_for_ms":15210}"#
        );
        assert_eq!(
            format_event(Format::Text, &ts, &silent),
            "2026-11-24T10:00:00.123Z silent    10.1.2.3 web-17 group=web dc=fra (silent for 15s 210ms)"
        );
        let other = HostKey::from_ipv4([10, 1, 2, 4]);
        let missing = Event::Missing {
            host: &other,
            ident: inv.ident(inv.entry(&other).unwrap()),
            for_ns: 30_000_000_000,
        };
        assert_eq!(
            format_event(Format::Json, &ts, &missing),
            r#"{"ts":"2026-11-24T10:00:00.123Z","event":"missing","host":"10.1.2.4","labels":{"group":"db"},"missing_for_ms":30000}"#
        );
        assert_eq!(
            format_event(Format::Text, &ts, &missing),
            "2026-11-24T10:00:00.123Z missing   10.1.2.4 group=db (not heard for 30s)"
        );
        let by_id = HostKey::from_host_id(42);
        let id_missing = Event::Missing {
            host: &by_id,
            ident: inv.ident(0),
            for_ns: 1_000_000_000,
        };
        let v: serde_json::Value =
            serde_json::from_str(&format_event(Format::Json, &ts, &id_missing)).unwrap();
        assert_eq!(v["host_id"], "000000000000002a");
        assert!(v.get("host").is_none());
    }
}
