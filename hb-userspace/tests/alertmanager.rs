//! Alerts through the real Alertmanager (Debian's `prometheus-alertmanager`):
//! `hb run --alertmanager` attached to a veth in a test namespace, `hb beat`
//! clients in another, Alertmanager on the collector namespace's loopback
//! (single node, its own storage), and its webhook receiver written here: a
//! small HTTP server collecting the notifications Alertmanager POSTs.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::PathBuf,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use aya::programs::{TestRun as _, TestRunOptions};
use hb_common::net::XDP_DROP;
use hb_testkit::prom::Webhook;
use hb_testkit::{
    collector::{self, Collector, Proc, is_event},
    frames::{hb4, set_ipv4_src, src_addr},
    netns::{Link, Netns},
    program as kit,
};
use hb_userspace::xdp;
use serde_json::Value;

/// The binary under test.
const HB: &str = env!("CARGO_BIN_EXE_hb");

const TIMEOUT: &str = "2s";
const SWEEP: &str = "250ms";
/// Alertmanager's port, on the loopback of the collector's namespace.
const AM_PORT: u16 = 9093;
const METRICS_PORT: u16 = 9743;

/// The Alertmanager binary: the project's install, else Debian's name.
fn alertmanager_binary() -> PathBuf {
    for name in ["alertmanager", "prometheus-alertmanager"] {
        if let Ok(path) = which::which(name) {
            return path;
        }
    }
    panic!("no Alertmanager: install Debian's prometheus-alertmanager (the project's set-up does)")
}

/// A directory of the test's own, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("hb-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A single-node Alertmanager on `ns`'s loopback, sending to `hook`;
/// killed, and its storage removed, on drop.
struct Alertmanager {
    _proc: Proc,
    _dir: TempDir,
}

impl Alertmanager {
    fn start(ns: &Netns, hook: &Webhook, tag: &str) -> Self {
        Self::routed(ns, hook, tag, "[alertname, host]", 0)
    }

    /// Grouped by `group_by`; at most `max_alerts` alerts listed in a
    /// notification (0: all; the others are counted in `truncatedAlerts`).
    fn routed(ns: &Netns, hook: &Webhook, tag: &str, group_by: &str, max_alerts: usize) -> Self {
        let dir = TempDir::new(&format!("am-{tag}"));
        let config = dir.0.join("alertmanager.yml");
        // Short waits: a test sees a notification within a second.
        std::fs::write(
            &config,
            format!(
                "route:
  receiver: hook
  group_by: {group_by}
  group_wait: 100ms
  group_interval: 500ms
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: http://127.0.0.1:{}/hook
        send_resolved: true
        max_alerts: {max_alerts}
",
                hook.port
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.0.join("log")).unwrap();
        let mut cmd = ns.command(alertmanager_binary()).unwrap();
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.0.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{AM_PORT}"))
            // Empty: a single node, no gossip port.
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(log);
        let mut proc = Proc::spawn(cmd);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready(ns) {
            if let Some(status) = proc.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(dir.0.join("log")).unwrap_or_default();
                panic!("Alertmanager exited ({status}): {log}");
            }
            assert!(Instant::now() < deadline, "Alertmanager not ready in 20 s");
            thread::sleep(Duration::from_millis(100));
        }
        Self {
            _proc: proc,
            _dir: dir,
        }
    }
}

/// Whether Alertmanager answers `/-/ready` with 200.
fn ready(ns: &Netns) -> bool {
    get(ns, AM_PORT, "/-/ready").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
}

/// `GET path` from 127.0.0.1:`port` in `ns`: the whole reply, or `None`
/// when nothing listens.
fn get(ns: &Netns, port: u16, path: &str) -> Option<String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: am\r\nConnection: close\r\n\r\n");
    ns.within(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request.as_bytes()).ok()?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).ok()?;
        Some(reply)
    })
    .unwrap()
}

/// Waits up to 10 s for the collector's `metric` to be `value`.
fn metric_becomes(ns: &Netns, metric: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = collector::scrape(ns, METRICS_PORT).value(metric, &[]);
        if now == value {
            return;
        }
        assert!(Instant::now() < deadline, "{metric} is {now}, not {value}");
        thread::sleep(Duration::from_millis(100));
    }
}

fn start_collector(link: &Link) -> Collector {
    start_collector_with(link, TIMEOUT, "2s")
}

fn start_collector_with(link: &Link, timeout: &str, resend: &str) -> Collector {
    start_collector_more(link, timeout, resend, &[])
}

/// With `more` options.
fn start_collector_more(link: &Link, timeout: &str, resend: &str, more: &[&str]) -> Collector {
    let am = format!("http://127.0.0.1:{AM_PORT}");
    let metrics = format!("127.0.0.1:{METRICS_PORT}");
    let mut args = vec![
        "--iface",
        &link.a_if,
        "--timeout",
        timeout,
        "--sweep",
        SWEEP,
        "--alertmanager",
        &am,
        "--alert-resend",
        resend,
        "--metrics-listen",
        &metrics,
    ];
    args.extend_from_slice(more);
    let collector = Collector::start(HB, &link.a, &args);
    let (first, _) = collector.wait_for(Duration::from_secs(10), |v| v["event"] == "summary");
    assert!(first.is_some(), "collector printed no summary");
    collector
}

fn beat(link: &Link, from: &str, to: &str) -> Proc {
    collector::beat(HB, link, from, to, "200ms")
}

fn host_silent(a: &Value, host: &str) -> bool {
    a["labels"]["alertname"] == "HostSilent" && a["labels"]["host"] == host
}

fn rfc3339(v: &Value) -> std::time::SystemTime {
    humantime::parse_rfc3339(v.as_str().expect("a timestamp")).expect("RFC 3339")
}

#[test]
fn a_silent_host_fires_and_its_recovery_resolves() {
    let link = Link::for_test_on("amfire", "198.18.41", &[2, 3]);
    let hook = Webhook::start(&link.a);
    let _am = Alertmanager::start(&link.a, &hook, "fire");
    let mut collector = start_collector(&link);

    let _a = beat(&link, "198.18.41.2", "198.18.41.1");
    let b = beat(&link, "198.18.41.3", "198.18.41.1");
    let mut missing = vec!["198.18.41.2", "198.18.41.3"];
    let (all, seen) = collector.wait_for(Duration::from_secs(5), |v| {
        missing.retain(|h| !is_event(v, "new", h));
        missing.is_empty()
    });
    assert!(all.is_some(), "no `new` for {missing:?}; saw {seen:?}");

    drop(b);
    let (silent, seen) = collector.wait_for(Duration::from_secs(6), |v| {
        is_event(v, "silent", "198.18.41.3")
    });
    assert!(silent.is_some(), "no `silent` event; saw {seen:?}");
    let firing = hook.wait(Duration::from_secs(10), "firing HostSilent", |a| {
        host_silent(a, "198.18.41.3") && a["status"] == "firing"
    });
    // The labels say what is down, nothing about who watches it: an HA
    // pair's alerts are the same alert.
    let labels: Vec<&String> = firing["labels"].as_object().unwrap().keys().collect();
    assert_eq!(labels, ["alertname", "host"]);
    let notes = &firing["annotations"];
    assert_eq!(notes["interface"], link.a_if.as_str());
    assert!(notes["collector"].as_str().is_some_and(|c| !c.is_empty()));
    let (last_seen, since) = (
        rfc3339(&notes["last_seen"]),
        rfc3339(&notes["silent_since"]),
    );
    let gap = since
        .duration_since(last_seen)
        .expect("silent since after last seen");
    assert_eq!(
        gap,
        Duration::from_secs(2),
        "silent_since is last_seen + timeout"
    );
    assert!(
        !hook.alerts().iter().any(|a| host_silent(a, "198.18.41.2")),
        "the host that beats was alerted"
    );

    let _b = beat(&link, "198.18.41.3", "198.18.41.1");
    hook.wait(Duration::from_secs(10), "resolved HostSilent", |a| {
        host_silent(a, "198.18.41.3") && a["status"] == "resolved"
    });
    let m = collector::scrape(&link.a, METRICS_PORT);
    assert!(m.value("hb_alerts_sent_total", &[]) >= 2.0);
    assert_eq!(m.value("hb_alert_delivery_failures_total", &[]), 0.0);
    metric_becomes(&link.a, "hb_alert_queue_length", 0.0);
    assert_eq!(collector.proc.terminate(), Some(0));
}

/// The labels of an alert, as (name, value) pairs.
fn labels_of(a: &Value) -> Vec<(String, String)> {
    a["labels"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn inventoried_hosts_are_alerted_with_their_name_and_labels() {
    let link = Link::for_test_on("aminv", "198.18.42", &[2, 3]);
    let dir = TempDir::new("aminv");
    let csv = dir.0.join("hosts.csv");
    std::fs::write(
        &csv,
        "address,name,group,dc\n\
         198.18.42.2,web-2,web,fra\n\
         198.18.42.3,db-3,db,\n\
         198.18.42.9,web-9,web,fra\n",
    )
    .unwrap();
    let hook = Webhook::start(&link.a);
    let _am = Alertmanager::start(&link.a, &hook, "inv");
    let mut collector = start_collector_more(
        &link,
        TIMEOUT,
        "2s",
        &["--inventory", csv.to_str().unwrap(), "--grace", "2s"],
    );
    let _web = beat(&link, "198.18.42.2", "198.18.42.1");
    let db = beat(&link, "198.18.42.3", "198.18.42.1");

    // .9 never beats: missing after its grace, alerted with its name and
    // labels (the address, no slot: it was never heard).
    let missing = hook.wait(Duration::from_secs(15), "firing HostMissing", |a| {
        a["labels"]["alertname"] == "HostMissing" && a["status"] == "firing"
    });
    assert_eq!(
        labels_of(&missing),
        pairs(&[
            ("alertname", "HostMissing"),
            ("dc", "fra"),
            ("group", "web"),
            ("host", "198.18.42.9"),
            ("name", "web-9"),
        ])
    );
    assert!(
        missing["annotations"]["collector"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
    );

    // .3 goes silent: HostSilent with its name and its one label (its dc
    // cell is empty).
    let (seen, _) = collector.wait_for(Duration::from_secs(5), |v| {
        v["event"] == "summary" && v["alive"] == 2
    });
    assert!(seen.is_some(), "both hosts alive");
    drop(db);
    let silent = hook.wait(Duration::from_secs(15), "firing HostSilent", |a| {
        host_silent(a, "198.18.42.3") && a["status"] == "firing"
    });
    assert_eq!(
        labels_of(&silent),
        pairs(&[
            ("alertname", "HostSilent"),
            ("group", "db"),
            ("host", "198.18.42.3"),
            ("name", "db-3"),
        ])
    );
    assert!(
        !hook
            .alerts()
            .iter()
            .any(|a| a["labels"]["host"] == "198.18.42.2"),
        "the host that beats was alerted"
    );

    // Dropped from the inventory at a reload: its HostMissing resolves.
    std::fs::write(
        &csv,
        "address,name,group,dc\n\
         198.18.42.2,web-2,web,fra\n\
         198.18.42.3,db-3,db,\n",
    )
    .unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(collector.proc.child.id() as i32, libc::SIGHUP) };
    hook.wait(Duration::from_secs(15), "resolved HostMissing", |a| {
        a["labels"]["alertname"] == "HostMissing" && a["status"] == "resolved"
    });
    assert_eq!(collector.proc.terminate(), Some(0));
}

#[test]
fn a_missing_host_that_beats_resolves_its_alert() {
    let link = Link::for_test_on("amfound", "198.18.43", &[2]);
    let dir = TempDir::new("amfound");
    let csv = dir.0.join("hosts.csv");
    std::fs::write(&csv, "address,name\n198.18.43.2,late-2\n").unwrap();
    let hook = Webhook::start(&link.a);
    let _am = Alertmanager::start(&link.a, &hook, "found");
    let collector = start_collector_more(
        &link,
        TIMEOUT,
        "2s",
        &["--inventory", csv.to_str().unwrap(), "--grace", "1s"],
    );
    hook.wait(Duration::from_secs(15), "firing HostMissing", |a| {
        a["labels"]["name"] == "late-2" && a["status"] == "firing"
    });
    let _late = beat(&link, "198.18.43.2", "198.18.43.1");
    let resolved = hook.wait(Duration::from_secs(15), "resolved HostMissing", |a| {
        a["labels"]["alertname"] == "HostMissing" && a["status"] == "resolved"
    });
    assert_eq!(resolved["labels"]["host"], "198.18.43.2");
    drop(collector);
}

#[test]
fn an_alert_raised_while_alertmanager_is_down_is_delivered_when_it_starts() {
    let link = Link::for_test_on("amdown", "198.18.42", &[2]);
    let hook = Webhook::start(&link.a);
    let mut collector = start_collector(&link);

    let b = beat(&link, "198.18.42.2", "198.18.42.1");
    let (new, seen) = collector.wait_for(Duration::from_secs(5), |v| {
        is_event(v, "new", "198.18.42.2")
    });
    assert!(new.is_some(), "no `new`; saw {seen:?}");
    drop(b);
    let (silent, seen) = collector.wait_for(Duration::from_secs(6), |v| {
        is_event(v, "silent", "198.18.42.2")
    });
    assert!(silent.is_some(), "no `silent` event; saw {seen:?}");
    // Tried, failed, backing off.
    let deadline = Instant::now() + Duration::from_secs(5);
    while collector::scrape(&link.a, METRICS_PORT).value("hb_alert_delivery_failures_total", &[])
        < 1.0
    {
        assert!(Instant::now() < deadline, "no delivery failure counted");
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        collector::scrape(&link.a, METRICS_PORT).value("hb_alert_queue_length", &[]),
        1.0
    );

    let _am = Alertmanager::start(&link.a, &hook, "down");
    // The backoff is at a few seconds by now (it doubles from 0.5 s).
    hook.wait(Duration::from_secs(20), "firing HostSilent", |a| {
        host_silent(a, "198.18.42.2") && a["status"] == "firing"
    });
    metric_becomes(&link.a, "hb_alert_queue_length", 0.0);
    assert_eq!(collector.proc.terminate(), Some(0));
}

#[test]
fn a_collector_whose_link_goes_down_raises_collector_blind_not_host_alerts() {
    let link = Link::for_test_on("amblind", "198.18.43", &[2, 3]);
    let hook = Webhook::start(&link.a);
    let _am = Alertmanager::start(&link.a, &hook, "blind");
    let collector = start_collector(&link);
    let _a = beat(&link, "198.18.43.2", "198.18.43.1");
    let _b = beat(&link, "198.18.43.3", "198.18.43.1");
    let mut missing = vec!["198.18.43.2", "198.18.43.3"];
    let (all, seen) = collector.wait_for(Duration::from_secs(5), |v| {
        missing.retain(|h| !is_event(v, "new", h));
        missing.is_empty()
    });
    assert!(all.is_some(), "no `new` for {missing:?}; saw {seen:?}");

    link.a.ip(&["link", "set", &link.a_if, "down"]).unwrap();
    let blind = hook.wait(Duration::from_secs(10), "firing CollectorBlind", |a| {
        a["labels"]["alertname"] == "CollectorBlind" && a["status"] == "firing"
    });
    assert_eq!(blind["labels"]["interface"], link.a_if.as_str());
    // Both hosts fall silent on stdout (what hb sees), and no host alert
    // goes out (what hb cannot trust).
    let mut missing = vec!["198.18.43.2", "198.18.43.3"];
    let (all, seen) = collector.wait_for(Duration::from_secs(6), |v| {
        missing.retain(|h| !is_event(v, "silent", h));
        missing.is_empty()
    });
    assert!(all.is_some(), "no `silent` for {missing:?}; saw {seen:?}");
    // Past Alertmanager's group_wait for an alert sent with them.
    thread::sleep(Duration::from_secs(2));

    link.a.ip(&["link", "set", &link.a_if, "up"]).unwrap();
    hook.wait(Duration::from_secs(15), "resolved CollectorBlind", |a| {
        a["labels"]["alertname"] == "CollectorBlind" && a["status"] == "resolved"
    });
    thread::sleep(Duration::from_secs(1));
    let host_alerts: Vec<Value> = hook
        .alerts()
        .into_iter()
        .filter(|a| a["labels"]["alertname"] == "HostSilent")
        .collect();
    assert!(
        host_alerts.is_empty(),
        "host alerts while blind: {host_alerts:?}"
    );
}

/// The collector's pinned maps, as named from inside its namespace.
fn maps_dir(link: &Link) -> PathBuf {
    let iface = link.a_if.clone();
    let dir = link.a.within(move || xdp::pin_dir(&iface)).unwrap();
    std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("layout-")
        })
        .unwrap_or_else(|| panic!("no maps pinned in {}", dir.display()))
}

/// A heartbeat from each of `hosts` hosts (10.0.0.0 onwards), stamped into
/// the collector's table by the program run on its pinned maps.
fn beat_into_pinned_table(link: &Link, hosts: u32) {
    let settings = xdp::Settings {
        // Not addressed to this test's own addresses: the local-address
        // map is the collector's.
        any_destination: true,
        ..kit::settings(1 << 20)
    };
    let mut loaded = xdp::load_with(settings, None, Some(&maps_dir(link)))
        .expect("loading the program on the pinned maps");
    let prog = xdp::program(&mut loaded.ebpf).unwrap();
    let mut frame = hb4(&[], src_addr(0));
    for i in 0..hosts {
        set_ipv4_src(&mut frame, src_addr(i));
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                ..TestRunOptions::new()
            })
            .expect("BPF_PROG_TEST_RUN");
        assert_eq!(r.return_value, XDP_DROP);
    }
}

/// Within how long of the sweep that found them silent 100k alerts must
/// have reached Alertmanager: the promise (10 s) for a release build; a
/// debug build of hb, on a loaded 2-core test machine, gets three times as
/// long (Alertmanager takes most of it: about 0.15 s per 5000 alerts on an
/// idle machine, up to 0.9 s on a loaded one).
const MASS_DELIVERY: Duration = if cfg!(debug_assertions) {
    Duration::from_secs(30)
} else {
    Duration::from_secs(10)
};

/// A mass outage: 100k hosts go silent at once (while one host still
/// beats, so the collector can tell it hears), and all of them reach
/// Alertmanager in batches within `MASS_DELIVERY` of the sweep that found
/// them silent.
#[test]
fn a_mass_outage_reaches_alertmanager_within_ten_seconds() {
    const HOSTS: u32 = 100_000;
    let link = Link::for_test_on("ammass", "198.18.44", &[2]);
    let hook = Webhook::start(&link.a);
    let _am = Alertmanager::routed(&link.a, &hook, "mass", "[alertname]", 10);
    // A longer timeout: a debug build's sweep of 100k new hosts must not
    // look like a stalled collector (half a timeout late).
    // The default resend (1m): a round of 100k alerts takes seconds.
    let collector = start_collector_with(&link, "5s", "1m");
    let _witness = beat(&link, "198.18.44.2", "198.18.44.1");
    let (new, seen) = collector.wait_for(Duration::from_secs(5), |v| {
        is_event(v, "new", "198.18.44.2")
    });
    assert!(new.is_some(), "no `new`; saw {seen:?}");

    beat_into_pinned_table(&link, HOSTS);
    // Read straight off the lines: the harness's check that summaries
    // keep their pace would fail on a debug build's 200k-line sweeps,
    // which this test is not about.
    let until = Instant::now() + Duration::from_secs(60);
    let found = loop {
        let left = until.saturating_duration_since(Instant::now());
        let (at, v) = collector
            .lines
            .recv_timeout(left)
            .expect("a summary with the 100k hosts silent within 60 s");
        if v["event"] == "summary" && v["silent"].as_u64() >= Some(u64::from(HOSTS)) {
            break at;
        }
    };
    // No resend within the window (1m): alerts sent are distinct alerts.
    let deadline = found + MASS_DELIVERY;
    loop {
        let sent = collector::scrape(&link.a, METRICS_PORT).value("hb_alerts_sent_total", &[]);
        if sent >= f64::from(HOSTS) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{sent} alerts delivered {MASS_DELIVERY:?} after the sweep that found {HOSTS} hosts silent"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let delivered = found.elapsed();
    eprintln!("{HOSTS} HostSilent alerts delivered {delivered:?} after the sweep that found them");
    // Alertmanager took them (its own count), and has them: a sample of
    // hosts asked one by one (the whole list is 50 MB of JSON).
    let reply = get(&link.a, AM_PORT, "/metrics").expect("Alertmanager's /metrics");
    let received: f64 = collector::Metrics::parse(&reply)
        .samples(
            "alertmanager_alerts_received_total",
            &[("status", "firing")],
        )
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("alertmanager_alerts_received_total: {other:?}"),
        })
        .sum();
    assert!(
        received >= f64::from(HOSTS),
        "Alertmanager received {received}"
    );
    for i in [0, 1, 4999, 5000, 54_321, HOSTS - 1] {
        let host = std::net::Ipv4Addr::from(src_addr(i)).to_string();
        let path = format!("/api/v2/alerts?filter=host%3D%22{host}%22");
        let reply = get(&link.a, AM_PORT, &path).expect("Alertmanager's API");
        let (_, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
        let alerts: Value = serde_json::from_str(body).expect("JSON alerts");
        let alerts = alerts.as_array().expect("an array");
        assert_eq!(alerts.len(), 1, "{host}: {alerts:?}");
        assert_eq!(alerts[0]["labels"]["alertname"], "HostSilent");
    }
    assert_eq!(
        collector::scrape(&link.a, METRICS_PORT).value("hb_alert_delivery_failures_total", &[]),
        0.0
    );
}
