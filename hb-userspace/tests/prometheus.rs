//! What ships in contrib/ for Prometheus, Alertmanager and Grafana, against
//! the real programs (Debian's `prometheus` and `prometheus-alertmanager`,
//! installed by `cargo xtask test`): the rules pass `promtool check rules`
//! and their unit tests (and broken copies fail them); a real Prometheus in
//! a test namespace scrapes a real `hb run` and fires the shipped rules on
//! what it sees; every metric the Grafana dashboard queries is one hb
//! exports, and Prometheus accepts each of its queries; Alertmanager, alone
//! or as a gossiping pair, starts and answers.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use hb_testkit::{
    collector::{self, Collector, Proc, get_metrics},
    netns::{Link, Netns},
    prom::{Alertmanager, Cluster, Prometheus, TempDir, run_promtool},
};

/// The binary under test.
const HB: &str = env!("CARGO_BIN_EXE_hb");

/// The collector's metrics port and Prometheus's, each inside its test's
/// own namespace.
const HB_PORT: u16 = 9743;
const PROM_PORT: u16 = 9090;
const AM_PORT: u16 = 9093;

/// Metrics the dashboard and the rules may query before hb exports them:
/// the Alertmanager client's (issue 13) and the per-group gauge (fleet
/// configuration). Nothing else passes without a real scrape showing it.
const NOT_YET_EXPORTED: &[&str] = &[
    "hb_group_hosts",
    "hb_alerts_sent_total",
    "hb_alert_delivery_failures_total",
    "hb_alert_queue_length",
];

/// A file of contrib/.
fn contrib(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib")
        .join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// stdout and stderr of a command, for assertion messages.
fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[track_caller]
fn assert_succeeds(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed: {}", said(out));
}

/// `text` with `from` (which must be there) replaced by `to`.
#[track_caller]
fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} is not in the text any more");
    text.replacen(from, to, 1)
}

/// The alert names `hb-rules.yml` defines.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(|n| n.trim().to_owned())
        .collect()
}

#[test]
fn the_shipped_rules_pass_promtool_and_broken_copies_fail() {
    let rules = contrib("prometheus/hb-rules.yml");
    let tests = contrib("prometheus/hb-rules.test.yml");
    let config = contrib("prometheus/prometheus.yml");
    assert_succeeds(
        &run_promtool([Path::new("check"), Path::new("rules"), &rules]),
        "promtool check rules hb-rules.yml",
    );
    assert_succeeds(
        &run_promtool([Path::new("test"), Path::new("rules"), &tests]),
        "promtool test rules hb-rules.test.yml",
    );
    // The sample configuration loads the rules next to it.
    assert_succeeds(
        &run_promtool([Path::new("check"), Path::new("config"), &config]),
        "promtool check config prometheus.yml",
    );

    // Every rule has unit tests that see it firing and not firing.
    let rules_text = read(&rules);
    let tests_text = read(&tests);
    let names = alert_names(&rules_text);
    assert_eq!(names.len(), 7, "the rules: {names:?}");
    for name in &names {
        let cases = format!("alertname: {name}\n        exp_alerts:");
        let quiet = tests_text.matches(&format!("{cases} []")).count();
        let firing = tests_text.matches(&format!("{cases}\n")).count();
        assert!(
            quiet >= 1 && firing >= 1,
            "{name}: {quiet} not-firing and {firing} firing cases in hb-rules.test.yml"
        );
    }

    // Broken copies, next to a copy of the tests (which name the rules file
    // relative to themselves).
    let dir = TempDir::new("rules");
    let tests_copy = dir.write("hb-rules.test.yml", &tests_text);
    let check = |rules: &str| {
        let path = dir.write("hb-rules.yml", rules);
        run_promtool([Path::new("check"), Path::new("rules"), &path])
    };
    let unit_test = |rules: &str| {
        dir.write("hb-rules.yml", rules);
        run_promtool([Path::new("test"), Path::new("rules"), &tests_copy])
    };
    // The copy itself passes: what fails below is the breakage.
    assert_succeeds(&check(&rules_text), "check of an unbroken copy");
    assert_succeeds(&unit_test(&rules_text), "unit tests of an unbroken copy");

    // Not PromQL: refused by the check.
    let out = check(&replaced(&rules_text, "> 0.9", "> > 0.9"));
    assert!(
        !out.status.success(),
        "a PromQL error passed: {}",
        said(&out)
    );
    assert!(said(&out).contains("HbTableNearlyFull"), "{}", said(&out));
    // Valid, but not what the tests promise: a table 90.1% full would no
    // longer be "nearly full"; a sweep would need to be twice its period.
    for (from, to, rule) in [
        ("> 0.9", "> 0.95", "HbTableNearlyFull"),
        (
            "> hb_sweep_period_seconds",
            "> 2 * hb_sweep_period_seconds",
            "HbSweepSlowerThanPeriod",
        ),
        (
            "up{job=\"hb\"} == 0",
            "up{job=\"hb\"} < 0",
            "HbCollectorDown",
        ),
    ] {
        let out = unit_test(&replaced(&rules_text, from, to));
        assert!(
            !out.status.success(),
            "the unit tests passed {rule} with {from:?} -> {to:?}: {}",
            said(&out)
        );
        assert!(said(&out).contains(rule), "{}", said(&out));
    }
}

/// `hb beat` from `net.host` to the collector at `net.1`, every 200 ms.
fn beat(link: &Link, net: &str, host: u8) -> Proc {
    collector::beat(
        HB,
        link,
        &format!("{net}.{host}"),
        &format!("{net}.1"),
        "200ms",
    )
}

/// The one sample of a query, polled until it equals `want`.
fn wait_value(prom: &Prometheus, expr: &str, want: f64) {
    prom.wait_for(
        Duration::from_secs(20),
        &format!("{expr} == {want}"),
        |p| match p.value(expr) {
            Some(v) if v == want => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
}

#[test]
fn prometheus_scrapes_a_collector_and_fires_the_shipped_rules() {
    const NET: &str = "198.18.60";
    const MAX_HOSTS: u8 = 10;
    let clients: Vec<u8> = (2..2 + MAX_HOSTS).collect();
    let link = Link::for_test_on("prom", NET, &clients);
    let listen = format!("127.0.0.1:{HB_PORT}");
    let mut collector = Collector::start(
        HB,
        &link.a,
        &[
            "--iface",
            &link.a_if,
            "--timeout",
            "2s",
            "--sweep",
            "500ms",
            "--max-hosts",
            &MAX_HOSTS.to_string(),
            "--metrics-listen",
            &listen,
        ],
    );
    // Half the table: not nearly full.
    let mut beats: Vec<Proc> = clients[..5].iter().map(|&c| beat(&link, NET, c)).collect();

    // Prometheus sends what fires to a real Alertmanager.
    let am = Alertmanager::start(&link.a, AM_PORT, Cluster::Single, WEBHOOK_CONFIG);
    let rules = contrib("prometheus/hb-rules.yml");
    let config = Prometheus::config("hb", std::slice::from_ref(&listen), "1s", &[&rules])
        + &Prometheus::alerting(&[AM_PORT]);
    let prom = Prometheus::start(&link.a, PROM_PORT, &config);

    // What Prometheus stored is what the collector serves, and what the
    // test set up: 5 hosts, a table of --max-hosts, sweeps every 500 ms.
    wait_value(&prom, "hb_hosts{job=\"hb\"}", 5.0);
    let direct = collector::scrape(&link.a, HB_PORT);
    for name in [
        "hb_hosts",
        "hb_hosts_alive",
        "hb_table_capacity",
        "hb_table_used",
    ] {
        let through_prometheus = prom
            .value(&format!("{name}{{job=\"hb\",instance=\"{listen}\"}}"))
            .unwrap_or_else(|| panic!("Prometheus has no {name}"));
        assert_eq!(through_prometheus, direct.value(name, &[]), "{name}");
    }
    assert_eq!(direct.value("hb_hosts_alive", &[]), 5.0);
    assert_eq!(direct.value("hb_table_capacity", &[]), f64::from(MAX_HOSTS));
    assert_eq!(prom.value("up{job=\"hb\"}"), Some(1.0));
    assert_eq!(prom.value("hb_sweep_period_seconds"), Some(0.5));

    // The collector's own summary line says the same.
    let (summary, _) = collector.wait_for(Duration::from_secs(5), |v| {
        v["event"] == "summary" && v["hosts"] == 5 && v["alive"] == 5
    });
    assert!(summary.is_some(), "no summary with 5 hosts alive");

    // Two whole evaluations of the rules after the data arrived: the table
    // rule is not even pending, nothing fires, and every rule evaluates
    // without error. (A scrape that times out on a loaded machine may make
    // HbCollectorDown pending for a moment: it needs a minute to fire.)
    prom.wait_evaluated(2);
    let alerts = prom.alerts();
    assert!(
        alerts
            .iter()
            .all(|a| a["state"] == "pending" && a["labels"]["alertname"] == "HbCollectorDown"),
        "alerts on a healthy collector: {alerts:?}"
    );
    let rules_seen = prom.api("rules");
    let mut evaluated = 0;
    for group in rules_seen["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(rule["health"], "ok", "{rule}");
            evaluated += 1;
        }
    }
    assert_eq!(evaluated, alert_names(&read(&rules)).len());

    // The other half: the table is full, and the rule (no `for`) fires.
    beats.extend(clients[5..].iter().map(|&c| beat(&link, NET, c)));
    wait_value(&prom, "hb_hosts{job=\"hb\"}", f64::from(MAX_HOSTS));
    let firing = prom.wait_for(
        Duration::from_secs(10),
        "HbTableNearlyFull firing",
        |p| match &p.alerts_named("HbTableNearlyFull", "firing")[..] {
            [alert] => Ok(alert.clone()),
            _ => Err(format!("{:?}", p.alerts())),
        },
    );
    assert_eq!(firing["labels"]["job"], "hb");
    assert_eq!(firing["labels"]["instance"], listen.as_str());
    assert_eq!(firing["labels"]["severity"], "warning");
    let value: f64 = firing["value"].as_str().unwrap().parse().unwrap();
    assert_eq!(value, 1.0, "{firing}");
    assert_eq!(
        firing["annotations"]["summary"],
        format!("hb table of {listen} is 100% full")
    );
    // Alertmanager has it, labels and all, from Prometheus.
    let delivered = am.wait_for(
        Duration::from_secs(15),
        "HbTableNearlyFull from Prometheus",
        |am| {
            let alerts = am.api("alerts");
            alerts
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .find(|a| a["labels"]["alertname"] == "HbTableNearlyFull")
                        .cloned()
                })
                .ok_or_else(|| alerts.to_string())
        },
    );
    assert_eq!(delivered["labels"]["instance"], listen.as_str());
    assert_eq!(delivered["labels"]["severity"], "warning");
    assert_eq!(delivered["status"]["state"], "active", "{delivered}");

    // And it is the only one firing.
    let firing: Vec<_> = prom
        .alerts()
        .into_iter()
        .filter(|a| a["state"] == "firing")
        .collect();
    assert_eq!(firing.len(), 1, "{firing:?}");

    // The collector goes away: its scrapes fail, HbCollectorDown is pending
    // (it fires after a minute, which the unit tests check).
    assert_eq!(collector.proc.terminate(), Some(0));
    drop(beats);
    let pending = prom.wait_for(
        Duration::from_secs(15),
        "HbCollectorDown pending",
        |p| match &p.alerts_named("HbCollectorDown", "pending")[..] {
            [alert] => Ok(alert.clone()),
            _ => Err(format!("{:?}", p.alerts())),
        },
    );
    assert_eq!(pending["labels"]["instance"], listen.as_str());
    assert_eq!(prom.value("up{job=\"hb\"}"), Some(0.0));
}

/// The metric names a PromQL expression (or a Grafana `label_values(…)`)
/// mentions that start with `hb_`; quoted strings are skipped.
fn hb_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = expr.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '"' {
            while let Some((_, c)) = chars.next() {
                if c == '\\' {
                    chars.next();
                } else if c == '"' {
                    break;
                }
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let mut end = i + c.len_utf8();
            while let Some(&(j, c)) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                    end = j + 1;
                    chars.next();
                } else {
                    break;
                }
            }
            let word = &expr[i..end];
            if word.starts_with("hb_") {
                names.insert(word.to_owned());
            }
        }
    }
    names
}

/// Every `expr` of the dashboard's panels (rows included), and every
/// `query` of its template variables.
fn dashboard_queries(dashboard: &serde_json::Value) -> (Vec<String>, Vec<String>) {
    fn panels(list: &serde_json::Value, exprs: &mut Vec<String>) {
        for panel in list.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(e) = target["expr"].as_str() {
                    exprs.push(e.to_owned());
                }
            }
            panels(&panel["panels"], exprs);
        }
    }
    let mut exprs = Vec::new();
    panels(&dashboard["panels"], &mut exprs);
    let vars = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            v["query"]
                .as_str()
                .or_else(|| v["query"]["query"].as_str())
                .map(str::to_owned)
        })
        .filter(|q| q.contains("hb_"))
        .collect();
    (exprs, vars)
}

/// An expression as Grafana would send it with the dashboard's variables
/// at "all" and a short rate interval.
fn as_grafana_sends(expr: &str) -> String {
    expr.replace("$__rate_interval", "10s")
        .replace("$__interval", "1s")
        .replace("$job", "hb")
        .replace("$instance", ".*")
}

#[test]
fn the_dashboard_queries_only_what_hb_exports() {
    let dashboard = contrib("grafana/hb.json");
    let dashboard: serde_json::Value = serde_json::from_str(&read(&dashboard))
        .unwrap_or_else(|e| panic!("contrib/grafana/hb.json is not JSON: {e}"));
    let (exprs, vars) = dashboard_queries(&dashboard);
    assert!(exprs.len() >= 10, "panel queries: {exprs:?}");

    // A real collector with one host that beats and one that went silent,
    // so that every family it can export is in its /metrics.
    const NET: &str = "198.18.61";
    let link = Link::for_test_on("promd", NET, &[2, 3]);
    let listen = format!("127.0.0.1:{HB_PORT}");
    let collector = Collector::start(
        HB,
        &link.a,
        &[
            "--iface",
            &link.a_if,
            "--timeout",
            "1s",
            "--sweep",
            "250ms",
            "--max-hosts",
            "64",
            "--metrics-silent-hosts",
            "10",
            "--metrics-listen",
            &listen,
        ],
    );
    let _alive = beat(&link, NET, 2);
    let gone = beat(&link, NET, 3);
    let host = format!("{NET}.3");
    let (new, _) = collector.wait_for(Duration::from_secs(10), |v| {
        collector::is_event(v, "new", &host)
    });
    assert!(new.is_some(), "{host} never arrived");
    drop(gone);
    let (silent, _) = collector.wait_for(Duration::from_secs(10), |v| {
        collector::is_event(v, "silent", &host)
    });
    assert!(silent.is_some(), "{host} never went silent");

    let reply = get_metrics(&link.a, HB_PORT);
    let exported: BTreeSet<String> = reply
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    assert!(exported.contains("hb_hosts"), "{reply}");
    assert!(exported.contains("hb_host_silent_seconds"), "{reply}");
    for name in NOT_YET_EXPORTED {
        // Once hb exports one, it belongs to the scrape, not this list.
        assert!(
            !exported.contains(*name),
            "{name} is exported now: drop it from NOT_YET_EXPORTED"
        );
    }

    // Every name queried is exported, or documented as coming.
    let mut queried = BTreeSet::new();
    for q in exprs.iter().chain(&vars) {
        queried.extend(hb_names(q));
    }
    let unknown: Vec<&String> = queried
        .iter()
        .filter(|n| !exported.contains(*n) && !NOT_YET_EXPORTED.contains(&n.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics hb does not export: {unknown:?} (hb exports {exported:?})"
    );
    // It shows what it is for: fleet counts, silent hosts, groups, packets
    // by counter, sweeps, table fill.
    for name in [
        "hb_hosts",
        "hb_hosts_alive",
        "hb_hosts_silent",
        "hb_host_silent_seconds",
        "hb_group_hosts",
        "hb_packets_total",
        "hb_sweep_duration_seconds",
        "hb_table_used",
        "hb_table_capacity",
    ] {
        assert!(queried.contains(name), "no panel shows {name}");
    }

    // Prometheus accepts every query; those on exported metrics show data
    // once it has scraped a few times.
    let prom = Prometheus::start(
        &link.a,
        PROM_PORT,
        &Prometheus::config("hb", std::slice::from_ref(&listen), "1s", &[]),
    );
    wait_value(&prom, "up{job=\"hb\"}", 1.0);
    for expr in &exprs {
        let sent = as_grafana_sends(expr);
        let (status, reply) = prom.try_query(&sent);
        assert!(
            status == 200 && reply["status"] == "success",
            "Prometheus refuses the dashboard's {expr:?}: {status} {reply}"
        );
        let implemented = hb_names(expr)
            .iter()
            .all(|n| !NOT_YET_EXPORTED.contains(&n.as_str()));
        if implemented {
            prom.wait_for(
                Duration::from_secs(20),
                &format!("data for the dashboard's {expr:?}"),
                |p| {
                    let result = p.query(&sent);
                    if result.is_empty() {
                        Err("no samples".into())
                    } else {
                        Ok(())
                    }
                },
            );
        }
    }
}

const WEBHOOK_CONFIG: &str = "\
route:
  receiver: test
  group_by: [alertname]
receivers:
  - name: test
    webhook_configs:
      - url: http://127.0.0.1:9099/hook
";

#[test]
fn alertmanager_starts_alone_and_as_a_gossiping_pair() {
    let ns = Netns::for_test("am");

    // Alone (no gossip): ready, takes an alert, amtool sees it.
    let single = Alertmanager::start(&ns, 9093, Cluster::Single, WEBHOOK_CONFIG);
    let status = single.api("status");
    assert_eq!(status["cluster"]["status"], "disabled", "{status}");
    let alert = serde_json::json!([{
        "labels": {"alertname": "HostSilent", "host": "198.18.62.2"},
        "annotations": {"collector": "test"},
    }]);
    assert_eq!(single.post_alerts(&alert), 200);
    single.wait_for(Duration::from_secs(10), "the alert posted", |am| {
        match am.api("alerts").as_array().map(Vec::len) {
            Some(1) => Ok(()),
            other => Err(format!("{other:?} alerts")),
        }
    });
    let out = single.amtool(&["alert", "query", "-o", "json", "alertname=HostSilent"]);
    assert_succeeds(&out, "amtool alert query");
    let queried: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(queried[0]["labels"]["host"], "198.18.62.2", "{queried}");

    // A pair gossiping on loopback: each sees the other as a peer.
    let a = Alertmanager::start(
        &ns,
        9193,
        Cluster::Peer {
            listen: 9194,
            peers: vec![9294],
        },
        WEBHOOK_CONFIG,
    );
    let b = Alertmanager::start(
        &ns,
        9293,
        Cluster::Peer {
            listen: 9294,
            peers: vec![9194],
        },
        WEBHOOK_CONFIG,
    );
    for am in [&a, &b] {
        am.wait_for(Duration::from_secs(30), "a cluster of two", |am| {
            let status = am.api("status");
            let peers = status["cluster"]["peers"].as_array().map_or(0, Vec::len);
            if status["cluster"]["status"] == "ready" && peers == 2 {
                Ok(())
            } else {
                Err(status["cluster"].to_string())
            }
        });
    }
}

#[test]
fn a_server_that_cannot_start_fails_the_test_with_its_log() {
    // The starters must not pass on a server that never runs: a
    // configuration Alertmanager refuses makes the start panic, naming why.
    let ns = Netns::for_test("ambad");
    let err = std::panic::catch_unwind(|| {
        Alertmanager::start(&ns, 9093, Cluster::Single, "route: [not, a, route]\n")
    })
    .err()
    .expect("an Alertmanager with a broken configuration started");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("exited"), "{msg}");
    assert!(msg.contains("alertmanager.yml"), "the log: {msg}");
}
