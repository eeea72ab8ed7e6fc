//! Event lines on stdout: text for people, JSON lines for machines. Same
//! content in both.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use hb_common::{Counter, HostKey};
use serde::Serialize;

use crate::{cli::Format, tracker::Transition};

/// The address as people write it: IPv4-mapped keys print as IPv4.
pub fn host_ip(key: &HostKey) -> IpAddr {
    let v6 = Ipv6Addr::from(key.addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// What a summary line carries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub hosts: u64,
    pub alive: u64,
    pub silent: u64,
    /// Heartbeats recorded since the previous sweep.
    pub heartbeats: u64,
    /// Cumulative packet counters since the program was loaded.
    pub packets: [u64; Counter::COUNT],
    pub sweep: Duration,
}

pub enum Event<'a> {
    Host(Transition<HostKey>),
    Summary(&'a Summary),
}

#[derive(Serialize)]
struct HostJson<'a> {
    ts: &'a str,
    event: &'static str,
    host: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    silent_for_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seen_ago_ms: Option<u64>,
}

#[derive(Serialize)]
struct SummaryJson<'a> {
    ts: &'a str,
    event: &'static str,
    hosts: u64,
    alive: u64,
    silent: u64,
    heartbeats: u64,
    packets: serde_json::Map<String, serde_json::Value>,
    sweep_ms: f64,
}

fn ms(ns: u64) -> u64 {
    ns / 1_000_000
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-24T10:00:00.123Z`.
pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// Formats one event as a single line, without the newline.
pub fn format_event(format: Format, at: SystemTime, event: &Event<'_>) -> String {
    let ts = timestamp(at);
    match format {
        Format::Json => json(&ts, event),
        Format::Text => text(&ts, event),
    }
}

fn json(ts: &str, event: &Event<'_>) -> String {
    let line = match *event {
        Event::Host(t) => {
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
                ts,
                event,
                host: host_ip(&host),
                silent_for_ms: silent_for,
                last_seen_ago_ms: ago,
            })
        }
        Event::Summary(s) => {
            let packets = Counter::ALL
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
                packets,
                sweep_ms: s.sweep.as_secs_f64() * 1e3,
            })
        }
    };
    line.expect("serializing plain structs cannot fail")
}

fn text(ts: &str, event: &Event<'_>) -> String {
    let secs = |ns: u64| humantime::format_duration(Duration::from_millis(ms(ns)));
    match *event {
        Event::Host(Transition::New { host, age_ns }) => {
            format!(
                "{ts} new       {} (last heartbeat {} ago)",
                host_ip(&host),
                secs(age_ns)
            )
        }
        Event::Host(Transition::Silent {
            host,
            silent_for_ns,
        }) => {
            format!(
                "{ts} silent    {} (silent for {})",
                host_ip(&host),
                secs(silent_for_ns)
            )
        }
        Event::Host(Transition::Recovered {
            host,
            silent_for_ns,
        }) => {
            format!(
                "{ts} recovered {} (was silent for {})",
                host_ip(&host),
                secs(silent_for_ns)
            )
        }
        Event::Summary(s) => {
            let mut line = format!(
                "{ts} summary   hosts={} alive={} silent={} heartbeats={} sweep={:.3}ms packets:",
                s.hosts,
                s.alive,
                s.silent,
                s.heartbeats,
                s.sweep.as_secs_f64() * 1e3
            );
            for c in Counter::ALL {
                let _ = write!(line, " {}={}", c.name(), s.packets[c as usize]);
            }
            line
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> SystemTime {
        humantime::parse_rfc3339("2026-11-24T10:00:00.123Z").unwrap()
    }

    #[test]
    fn host_addresses() {
        assert_eq!(
            host_ip(&HostKey::from_ipv4([10, 1, 2, 3])).to_string(),
            "10.1.2.3"
        );
        let v6: Ipv6Addr = "2001:db8::7".parse().unwrap();
        assert_eq!(
            host_ip(&HostKey::from_ipv6(v6.octets())).to_string(),
            "2001:db8::7"
        );
    }

    #[test]
    fn json_host_events() {
        let host = HostKey::from_ipv4([10, 1, 2, 3]);
        let silent = Event::Host(Transition::Silent {
            host,
            silent_for_ns: 15_210_000_000,
        });
        assert_eq!(
            format_event(Format::Json, at(), &silent),
            r#"{"ts":"2026-11-24T10:00:00.123Z","event":"silent","host":"10.1.2.3","silent_for_ms":15210}"#
        );
        let new = Event::Host(Transition::New {
            host,
            age_ns: 2_000_000,
        });
        assert_eq!(
            format_event(Format::Json, at(), &new),
            r#"{"ts":"2026-11-24T10:00:00.123Z","event":"new","host":"10.1.2.3","last_seen_ago_ms":2}"#
        );
        let rec = Event::Host(Transition::Recovered {
            host,
            silent_for_ns: 20_000_000_000,
        });
        let v: serde_json::Value =
            serde_json::from_str(&format_event(Format::Json, at(), &rec)).unwrap();
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
        let line = format_event(Format::Json, at(), &Event::Summary(&s));
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
        assert_eq!(v["packets"]["heartbeat"], 40);
        assert_eq!(v["packets"]["not_ip"], 5);
        assert_eq!(v["packets"]["table_full"], 0);
        assert_eq!(v["sweep_ms"], 0.25);
        assert!(!line.contains('\n'));
    }

    #[test]
    fn text_lines() {
        let host = HostKey::from_ipv4([10, 1, 2, 3]);
        assert_eq!(
            format_event(
                Format::Text,
                at(),
                &Event::Host(Transition::Silent {
                    host,
                    silent_for_ns: 15_210_000_000
                })
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
        let line = format_event(Format::Text, at(), &Event::Summary(&s));
        assert!(line.starts_with("2026-11-24T10:00:00.123Z summary   hosts=3 alive=2 silent=1 heartbeats=9 sweep=0.000ms packets: heartbeat=0"), "{line}");
        assert!(line.ends_with("table_full=0"));
    }
}
