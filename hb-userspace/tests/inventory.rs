//! The inventory with the real program: a collector given a CSV of the
//! hosts it expects, heartbeats from a client namespace over a veth pair.
//! What the issue promises: an inventoried host's first heartbeat is not
//! `new`, one never heard within the grace is `missing` once and
//! `recovered` when it beats, hosts outside the inventory are `new` (or,
//! ignored, only counted), and events, `/silent`, `/missing`, the metrics
//! and `hb status` carry names and labels.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::PathBuf,
    time::Duration,
};

use hb_testkit::{
    collector::{Collector, Proc, is_event, scrape},
    netns::{Link, Netns},
};

const HB: &str = env!("CARGO_BIN_EXE_hb");

/// A file in a directory removed when the test ends.
struct TempFile {
    dir: PathBuf,
    path: PathBuf,
}

impl TempFile {
    fn new(tag: &str, text: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("hb-inv-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hosts.csv");
        std::fs::write(&path, text).unwrap();
        Self { dir, path }
    }

    fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn get(ns: &Netns, port: u16, path: &str) -> serde_json::Value {
    let request = format!("GET {path} HTTP/1.1\r\n\r\n");
    let body = ns
        .within(move || {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            let mut reply = String::new();
            s.read_to_string(&mut reply).unwrap();
            reply.split_once("\r\n\r\n").unwrap().1.to_owned()
        })
        .unwrap();
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn beat(link: &Link, net: &str, host: u8) -> Proc {
    let mut cmd = link.b.command(HB).unwrap();
    cmd.args([
        "beat",
        "--server",
        &format!("{net}.1"),
        "--period",
        "100ms",
        "--bind",
        &format!("{net}.{host}"),
    ]);
    Proc::spawn(cmd)
}

fn host_of(v: &serde_json::Value) -> &str {
    v["host"].as_str().unwrap_or("")
}

#[test]
fn inventoried_hosts_are_expected_named_and_missed() {
    let net = "198.18.40";
    let link = Link::for_test_on("inv", net, &[2, 3, 4, 9]);
    let csv = TempFile::new(
        "a",
        "address,name,group,dc\n\
         198.18.40.2,web-2,web,fra\n\
         198.18.40.3,db-3,db,\n\
         198.18.40.9,web-9,web,fra\n",
    );
    let port = 9751;
    let listen = format!("127.0.0.1:{port}");
    let collector = Collector::start(
        HB,
        &link.a,
        &[
            "--iface",
            &link.a_if,
            "--timeout",
            "1s",
            "--sweep",
            "200ms",
            "--max-hosts",
            "4096",
            "--inventory",
            csv.arg(),
            "--grace",
            "3s",
            "--metrics-listen",
            &listen,
            "--metrics-silent-hosts",
            "10",
        ],
    );
    let _web = beat(&link, net, 2);
    let mut db = beat(&link, net, 3);
    let _stranger = beat(&link, net, 4);
    // Everything up to the missing line of .9 (3 s of grace).
    let (missing, seen) = collector.wait_for(Duration::from_secs(8), |v| v["event"] == "missing");
    let (_, missing) = missing.expect("no missing event");
    let events: Vec<_> = seen.iter().filter(|v| v["event"] != "summary").collect();
    assert_eq!(events.len(), 1, "only the stranger is new: {events:?}");
    assert!(is_event(events[0], "new", "198.18.40.4"), "{events:?}");
    assert_eq!(host_of(&missing), "198.18.40.9");
    assert_eq!(missing["name"], "web-9");
    assert_eq!(
        missing["labels"],
        serde_json::json!({"group": "web", "dc": "fra"})
    );
    assert!(missing["missing_for_ms"].as_u64().unwrap() >= 3000);
    let summary = seen.iter().rev().find(|v| v["event"] == "summary").unwrap();
    assert_eq!(summary["unknown_hosts"], 1, "{summary}");
    assert_eq!(summary["hosts"], 3, "{summary}");

    // The missing host shows on /missing and in the counts.
    let page = get(&link.a, port, "/missing");
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["hosts"][0]["host"], "198.18.40.9");
    assert_eq!(page["hosts"][0]["name"], "web-9");
    assert_eq!(page["hosts"][0]["labels"]["dc"], "fra");
    // Paged as /silent: past the end is an empty page of the same total.
    let past = get(&link.a, port, "/missing?offset=1&limit=5");
    assert_eq!(
        (
            past["total"].as_u64(),
            past["hosts"].as_array().map(Vec::len)
        ),
        (Some(1), Some(0)),
        "{past}"
    );
    let first = get(&link.a, port, "/missing?offset=0&limit=1");
    assert_eq!(first["hosts"][0]["host"], "198.18.40.9", "{first}");
    collector.wait_for(Duration::from_secs(2), |v| v["event"] == "summary");
    let m = scrape(&link.a, port);
    assert_eq!(m.value("hb_hosts_missing", &[]), 1.0);
    assert_eq!(m.value("hb_unknown_hosts", &[]), 1.0);
    assert_eq!(m.value("hb_events_total", &[("event", "missing")]), 1.0);
    assert_eq!(m.value("hb_events_total", &[("event", "new")]), 1.0);
    let group = |g: &str, state: &str| m.value("hb_group_hosts", &[("group", g), ("state", state)]);
    assert_eq!(
        [
            group("web", "alive"),
            group("web", "silent"),
            group("web", "missing")
        ],
        [1.0, 0.0, 1.0]
    );
    assert_eq!(group("db", "alive"), 1.0);

    // db-3 stops: silent, named, labelled (its empty dc is no label).
    db.terminate();
    let (silent, seen) = collector.wait_for(Duration::from_secs(5), |v| v["event"] == "silent");
    let (_, silent) = silent.unwrap_or_else(|| panic!("no silent event: {seen:?}"));
    assert_eq!(host_of(&silent), "198.18.40.3");
    assert_eq!(silent["name"], "db-3");
    assert_eq!(silent["labels"], serde_json::json!({"group": "db"}));
    collector.wait_for(Duration::from_secs(2), |v| v["event"] == "summary");
    let page = get(&link.a, port, "/silent");
    assert_eq!(page["hosts"][0]["name"], "db-3", "{page}");
    assert_eq!(page["hosts"][0]["labels"]["group"], "db", "{page}");
    let m = scrape(&link.a, port);
    let series: Vec<_> = m.samples("hb_host_silent_seconds", &[]).collect();
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(series[0].labels.get("name"), Some("db-3"));
    assert_eq!(series[0].labels.get("group"), Some("db"));
    assert_eq!(
        m.value("hb_group_hosts", &[("group", "db"), ("state", "silent")]),
        1.0
    );

    // `hb status --inventory` names them too, and lists the missing.
    let out = link
        .a
        .command(HB)
        .unwrap()
        .args(["status", "--iface", &link.a_if, "--format", "json"])
        .args(["--inventory", csv.arg()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["silent_hosts"]["hosts"][0]["name"], "db-3", "{st}");
    assert_eq!(st["missing"], 1, "{st}");
    assert_eq!(st["missing_hosts"][0]["name"], "web-9", "{st}");
    let out = link
        .a
        .command(HB)
        .unwrap()
        .args(["status", "--iface", &link.a_if, "--inventory", csv.arg()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |host: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(host))
            .unwrap_or_else(|| panic!("no line for {host}: {text}"))
            .to_owned()
    };
    assert!(line("198.18.40.3").ends_with(" db-3 group=db"), "{text}");
    assert!(
        line("198.18.40.9").ends_with(" web-9 group=web dc=fra"),
        "{text}"
    );
    assert!(text.contains("missing hosts"), "{text}");

    // web-9 starts: recovered, not new.
    let _late = beat(&link, net, 9);
    let (rec, seen) = collector.wait_for(Duration::from_secs(5), |v| {
        v["event"] == "recovered" && host_of(v) == "198.18.40.9"
    });
    let (_, rec) = rec.unwrap_or_else(|| panic!("web-9 never recovered: {seen:?}"));
    assert_eq!(rec["name"], "web-9");
    assert!(!seen.iter().any(|v| v["event"] == "new"), "{seen:?}");
    collector.wait_for(Duration::from_secs(2), |v| v["event"] == "summary");
    let m = scrape(&link.a, port);
    assert_eq!(m.value("hb_hosts_missing", &[]), 0.0);
    assert_eq!(
        m.value("hb_group_hosts", &[("group", "web"), ("state", "alive")]),
        2.0
    );
    assert_eq!(get(&link.a, port, "/missing")["total"], 0);
    let mut collector = collector;
    assert_eq!(collector.proc.terminate(), Some(0));
}

#[test]
fn hosts_outside_the_inventory_can_be_ignored() {
    let net = "198.18.41";
    let link = Link::for_test_on("ign", net, &[2, 4, 5]);
    let csv = TempFile::new("b", "address,name\n198.18.41.2,known\n");
    let collector = Collector::start(
        HB,
        &link.a,
        &[
            "--iface",
            &link.a_if,
            "--timeout",
            "1s",
            "--sweep",
            "200ms",
            "--max-hosts",
            "4096",
            "--inventory",
            csv.arg(),
            "--unknown-hosts",
            "ignore",
        ],
    );
    let _known = beat(&link, net, 2);
    let mut a = beat(&link, net, 4);
    let _b = beat(&link, net, 5);
    let (counted, seen) = collector.wait_for(Duration::from_secs(5), |v| {
        v["event"] == "summary" && v["unknown_hosts"] == 2 && v["hosts"] == 1
    });
    assert!(counted.is_some(), "{seen:?}");
    // A stranger that stops is not reported silent either.
    a.terminate();
    let lines = collector.collect(Duration::from_secs(3));
    let events: Vec<_> = lines
        .iter()
        .chain(&seen)
        .filter(|v| v["event"] != "summary")
        .collect();
    assert!(events.is_empty(), "{events:?}");
    let last = lines
        .iter()
        .rev()
        .find(|v| v["event"] == "summary")
        .unwrap();
    assert_eq!(
        (last["hosts"].as_u64(), last["silent"].as_u64()),
        (Some(1), Some(0))
    );
    let mut collector = collector;
    assert_eq!(collector.proc.terminate(), Some(0));
}

#[test]
fn a_restarted_collector_reports_nothing_again() {
    // Killed (SIGKILL) and started again with the same inventory: the
    // inventoried hosts it heard are neither new nor missing.
    let net = "198.18.42";
    let link = Link::for_test_on("irs", net, &[2, 3]);
    let csv = TempFile::new("c", "address,name\n198.18.42.2,a\n198.18.42.3,b\n");
    let args = [
        "--iface",
        &link.a_if,
        "--timeout",
        "1s",
        "--sweep",
        "200ms",
        "--max-hosts",
        "4096",
        "--inventory",
        csv.arg(),
        "--grace",
        "1s",
    ];
    let _a = beat(&link, net, 2);
    let _b = beat(&link, net, 3);
    let first = Collector::start(HB, &link.a, &args);
    let lines = first.collect(Duration::from_secs(2));
    assert!(lines.iter().all(|v| v["event"] == "summary"), "{lines:?}");
    let mut first = first;
    // SIGKILL: the program records on, the pinned state is what was told.
    first.proc.child.kill().unwrap();
    first.proc.child.wait().unwrap();
    let mut second = Collector::start(HB, &link.a, &args);
    let lines = second.collect(Duration::from_secs(3));
    let events: Vec<_> = lines.iter().filter(|v| v["event"] != "summary").collect();
    assert!(events.is_empty(), "{events:?}");
    let last = lines
        .iter()
        .rev()
        .find(|v| v["event"] == "summary")
        .unwrap();
    assert_eq!(
        (last["hosts"].as_u64(), last["missing"].as_u64()),
        (Some(2), Some(0))
    );
    // SIGTERM detaches and removes the pins.
    assert_eq!(second.proc.terminate(), Some(0));
}

#[test]
fn silent_hosts_are_forgotten_and_their_slots_reused() {
    // Without an inventory, every host silent for --forget-after is
    // forgotten: no event, no longer counted, its slot handed to the next
    // new host (the table's used slots do not grow), and it is new again
    // when it comes back.
    let net = "198.18.43";
    let link = Link::for_test_on("fgt", net, &[2, 3]);
    let port = 9752;
    let listen = format!("127.0.0.1:{port}");
    let mut collector = Collector::start(
        HB,
        &link.a,
        &[
            "--iface",
            &link.a_if,
            "--timeout",
            "1s",
            "--sweep",
            "200ms",
            "--max-hosts",
            "4096",
            "--forget-after",
            "2s",
            "--metrics-listen",
            &listen,
        ],
    );
    let mut a = beat(&link, net, 2);
    let (new, seen) = collector.wait_for(Duration::from_secs(5), |v| {
        is_event(v, "new", "198.18.43.2")
    });
    assert!(new.is_some(), "{seen:?}");
    a.terminate();
    let (silent, seen) = collector.wait_for(Duration::from_secs(4), |v| {
        is_event(v, "silent", "198.18.43.2")
    });
    assert!(silent.is_some(), "{seen:?}");
    // Silent for 2 s more (and a look, a quarter of that apart): gone.
    let (gone, seen) = collector.wait_for(Duration::from_secs(6), |v| {
        v["event"] == "summary" && v["hosts"] == 0
    });
    assert!(gone.is_some(), "never forgotten: {seen:?}");
    assert!(
        seen.iter().all(|v| v["event"] == "summary"),
        "forgetting is no event: {seen:?}"
    );
    let m = scrape(&link.a, port);
    assert_eq!(m.value("hb_hosts_forgotten_total", &[]), 1.0);
    assert_eq!(m.value("hb_hosts_silent", &[]), 0.0);
    assert_eq!(m.value("hb_table_used", &[]), 1.0);

    // A new host takes the freed slot (once it is freed: a sweep later).
    collector.collect(Duration::from_millis(600));
    let _b = beat(&link, net, 3);
    let (new, seen) = collector.wait_for(Duration::from_secs(5), |v| {
        is_event(v, "new", "198.18.43.3")
    });
    assert!(new.is_some(), "{seen:?}");
    collector.wait_for(Duration::from_secs(2), |v| v["event"] == "summary");
    let m = scrape(&link.a, port);
    assert_eq!(
        m.value("hb_table_used", &[]),
        1.0,
        "the slot was not reused"
    );
    assert_eq!(m.value("hb_hosts", &[]), 1.0);
    assert_eq!(m.value("hb_packets_total", &[("outcome", "new_host")]), 2.0);

    // The forgotten host comes back: new again, in a slot of its own.
    let _a = beat(&link, net, 2);
    let (new, seen) = collector.wait_for(Duration::from_secs(5), |v| {
        is_event(v, "new", "198.18.43.2")
    });
    assert!(new.is_some(), "{seen:?}");
    collector.wait_for(Duration::from_secs(2), |v| v["event"] == "summary");
    let m = scrape(&link.a, port);
    assert_eq!(m.value("hb_table_used", &[]), 2.0);
    assert_eq!(m.value("hb_hosts", &[]), 2.0);
    assert_eq!(collector.proc.terminate(), Some(0));
}
