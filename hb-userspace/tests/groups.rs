//! Groups end to end, with the real program: a config file whose
//! `[groups.NAME]` tables give `web` a 2 s timeout and `db` a 6 s one
//! (hosts from an inventory with a `group` column; a host without a group
//! has the top-level 4 s). Each group's hosts go silent at their own
//! timeout, `/silent` says when (`silent_since`: last heartbeat plus the
//! host's own timeout), and `/metrics` counts hosts by group and state.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::PathBuf,
    time::Duration,
};

use hb_testkit::{
    collector::{self, Collector, Proc, scrape},
    control,
    netns::{Link, Netns},
};

const HB: &str = env!("CARGO_BIN_EXE_hb");
const NET: &str = "198.18.65";
const PORT: u16 = 9763;

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn get(ns: &Netns, path: &str) -> serde_json::Value {
    let request = format!("GET {path} HTTP/1.1\r\n\r\n");
    let body = ns
        .within(move || {
            let mut s = TcpStream::connect(("127.0.0.1", PORT)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            let mut reply = String::new();
            s.read_to_string(&mut reply).unwrap();
            reply.split_once("\r\n\r\n").unwrap().1.to_owned()
        })
        .unwrap();
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Milliseconds of the day of an RFC 3339 UTC timestamp
/// (`2026-01-02T03:04:05.678Z`).
fn ms_of_day(ts: &str) -> i64 {
    let t = ts.split_once('T').unwrap().1.trim_end_matches('Z');
    let mut parts = t.split(':');
    let h: i64 = parts.next().unwrap().parse().unwrap();
    let m: i64 = parts.next().unwrap().parse().unwrap();
    let s: f64 = parts.next().unwrap().parse().unwrap();
    (h * 3600 + m * 60) * 1000 + (s * 1000.0).round() as i64
}

/// `silent_since` less `last_seen` of a `/silent` entry, in ms.
fn timeout_shown(h: &serde_json::Value) -> i64 {
    let d = ms_of_day(h["silent_since"].as_str().unwrap())
        - ms_of_day(h["last_seen"].as_str().unwrap());
    d.rem_euclid(86_400_000)
}

#[test]
fn each_group_goes_silent_at_its_own_timeout() {
    let link = Link::for_test_on("grp", NET, &[2, 3, 4, 5, 6]);
    let dir = TempDir(std::env::temp_dir().join(format!("hb-grp-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    std::fs::write(
        dir.0.join("hosts.csv"),
        format!(
            "address,name,group\n\
             {NET}.2,web-2,web\n\
             {NET}.3,web-3,web\n\
             {NET}.4,db-4,db\n\
             {NET}.5,db-5,db\n\
             {NET}.6,lone-6,\n"
        ),
    )
    .unwrap();
    let config = dir.0.join("hb.toml");
    std::fs::write(
        &config,
        format!(
            "iface = \"{}\"\n\
             timeout = \"4s\"\n\
             metrics_listen = \"127.0.0.1:{PORT}\"\n\
             metrics_silent_hosts = 10\n\
             [inventory]\n\
             file = \"hosts.csv\"\n\
             grace = \"30s\"\n\
             [groups.web]\n\
             timeout = \"2s\"\n\
             [groups.db]\n\
             timeout = \"6s\"\n",
            link.a_if
        ),
    )
    .unwrap();
    let c = Collector::start(
        HB,
        &link.a,
        &["--config", config.to_str().unwrap(), "--sweep", "200ms"],
    );
    let clients: Vec<Proc> = (2..=6)
        .map(|h| {
            collector::beat(
                HB,
                &link,
                &format!("{NET}.{h}"),
                &format!("{NET}.1"),
                "100ms",
            )
        })
        .collect();
    // All five heard (inventoried: no `new` lines).
    let (up, seen) = c.wait_for(Duration::from_secs(8), |v| {
        v["event"] == "summary" && v["alive"] == 5
    });
    assert!(up.is_some(), "{seen:?}");
    assert!(seen.iter().all(|v| v["event"] == "summary"), "{seen:?}");
    let m = scrape(&link.a, PORT);
    let group = |m: &hb_testkit::collector::Metrics, g: &str, s: &str| {
        m.value("hb_group_hosts", &[("group", g), ("state", s)])
    };
    assert_eq!(group(&m, "web", "alive"), 2.0);
    assert_eq!(group(&m, "db", "alive"), 2.0);

    // Every client stops at once.
    drop(clients);
    let mut silent = Vec::new();
    // `hb status` tells what the collector has reported, groups' timeouts
    // included (README): checked once the web hosts are silent (2 s,
    // under the global 4 s) and once the lone host is (4 s, under db's
    // 6 s).
    let mut statuses = Vec::new();
    let (_, seen) = c.wait_for(Duration::from_secs(12), |v| {
        if v["event"] == "silent" {
            silent.push(v.clone());
            // The collector records a line as told once its write is
            // done, a moment after the line is out: polled for up to
            // 500 ms (the next group goes silent 2 s later).
            let n = silent.len();
            if matches!(n, 2 | 3) {
                let until = std::time::Instant::now() + Duration::from_millis(500);
                let st = loop {
                    let st = control::status(HB, &link.a, &link.a_if);
                    if st["silent"] == n || std::time::Instant::now() > until {
                        break st;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                };
                statuses.push((n, st));
            }
        }
        silent.len() == 5
    });
    assert_eq!(silent.len(), 5, "{seen:?}");
    for (n, st) in &statuses {
        assert_eq!(
            (&st["hosts"], &st["silent"], &st["alive"]),
            (&5.into(), &(*n).into(), &(5 - *n).into()),
            "hb status after {n} silent lines: {st}"
        );
        let mut hosts: Vec<_> = st["silent_hosts"]["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["host"].as_str().unwrap_or("").to_owned())
            .collect();
        hosts.sort();
        let mut told: Vec<_> = silent[..*n]
            .iter()
            .map(|v| v["host"].as_str().unwrap_or("").to_owned())
            .collect();
        told.sort();
        assert_eq!(hosts, told, "{st}");
    }
    let order: Vec<_> = silent
        .iter()
        .map(|v| {
            v["name"]
                .as_str()
                .unwrap_or("")
                .split('-')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(order, ["web", "web", "lone", "db", "db"], "{silent:?}");
    // Each at its own timeout: older than it, by less than a sweep and
    // scheduling slack.
    for v in &silent {
        let own = match v["labels"]["group"].as_str() {
            Some("web") => 2000,
            Some("db") => 6000,
            _ => 4000,
        };
        let ms = v["silent_for_ms"].as_u64().unwrap();
        assert!(
            (own..own + 1200).contains(&ms),
            "{v}: silent after {ms} ms, its timeout is {own} ms"
        );
    }

    // /silent: silent_since is the last heartbeat plus the host's own
    // timeout.
    c.wait_for(Duration::from_secs(2), |v| v["event"] == "summary");
    let page = get(&link.a, "/silent");
    assert_eq!(page["total"], 5, "{page}");
    for h in page["hosts"].as_array().unwrap() {
        let own = match h["labels"]["group"].as_str() {
            Some("web") => 2000,
            Some("db") => 6000,
            _ => 4000,
        };
        assert_eq!(timeout_shown(h), own, "{h}");
    }
    let m = scrape(&link.a, PORT);
    for g in ["web", "db"] {
        assert_eq!(
            [
                group(&m, g, "alive"),
                group(&m, g, "silent"),
                group(&m, g, "missing")
            ],
            [0.0, 2.0, 0.0],
            "{g}"
        );
    }
}
