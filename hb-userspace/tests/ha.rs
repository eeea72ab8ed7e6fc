//! High availability (docs/alerting.md, "High availability"): two
//! collectors watching the same hosts, each pushing to both members of an
//! Alertmanager cluster of two (its own gossip), give ONE notification per
//! outage; still one with a collector killed, and still delivered with an
//! Alertmanager killed.
//!
//! Namespaces: the hosts' (`H`), with a bridge joining the veths of the two
//! collectors' namespaces (`A`, `B`), so that a host beats to both
//! (`hb beat --server A --server B`) from one address, as in a real
//! network. Both Alertmanagers and the webhook receiver run in `H` too
//! (gossip and the webhook on its loopback; the collectors reach the
//! Alertmanagers at H's address over their veths).

use std::{
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use hb_testkit::{
    collector::{Collector, Proc, is_event},
    netns::{Netns, ip},
    prom::{TempDir, Webhook, http, program},
};
use serde_json::Value;

const HB: &str = env!("CARGO_BIN_EXE_hb");

const NET: &str = "198.18.47";
/// H's address (on its bridge), where the Alertmanagers listen.
const H_ADDR: &str = "198.18.47.200";
const A_ADDR: &str = "198.18.47.1";
const B_ADDR: &str = "198.18.47.254";
/// Web and gossip ports of the two Alertmanagers.
const AM: [(u16, u16); 2] = [(9093, 9094), (9193, 9194)];
/// Alertmanager's `--cluster.peer-timeout`: the member at position N
/// waits N times this before sending, and sends only if the notification
/// log (gossiped) says no one before it did.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// Notifications of a firing `HostSilent` for `host`.
fn firing(hook: &Webhook, host: &str) -> Vec<Value> {
    hook.notes()
        .into_iter()
        .map(|(_, n)| n)
        .filter(|n| {
            n["status"] == "firing"
                && n["alerts"].as_array().is_some_and(|a| {
                    a.iter().any(|a| {
                        a["labels"]["alertname"] == "HostSilent"
                            && a["labels"]["host"] == host
                            && a["status"] == "firing"
                    })
                })
        })
        .collect()
}

/// Waits up to `within` for the first notification of `host`'s outage,
/// then `settle` more: the notifications of it.
fn outage(hook: &Webhook, host: &str, within: Duration, settle: Duration) -> Vec<Value> {
    let started = Instant::now();
    let deadline = started + within;
    while firing(hook, host).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no notification of {host}'s outage within {within:?}; got {:?}",
            hook.notes()
        );
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "{host}: notified {:.1} s after its last heartbeat",
        started.elapsed().as_secs_f64()
    );
    thread::sleep(settle);
    firing(hook, host)
}

/// One member of the Alertmanager cluster, in `ns`: web on all of its
/// addresses (the collectors come over their veths), gossip on its
/// loopback with the other member.
fn alertmanager(ns: &Netns, dir: &TempDir, n: usize, hook: &Webhook) -> Proc {
    let (web, gossip) = AM[n];
    let peer = AM[1 - n].1;
    // One notification per host; group_interval long enough that no
    // update follows within the test.
    let config = dir.write(
        &format!("am{n}.yml"),
        &format!(
            "route:
  receiver: hook
  group_by: [alertname, host]
  group_wait: 1s
  group_interval: 10m
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: http://127.0.0.1:{}/hook
        send_resolved: false
",
            hook.port
        ),
    );
    let log = std::fs::File::create(dir.path().join(format!("am{n}.log"))).unwrap();
    let mut cmd = ns
        .command(program(&["alertmanager", "prometheus-alertmanager"]))
        .unwrap();
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.path={}",
            dir.path().join(format!("data{n}")).display()
        ))
        .arg(format!("--web.listen-address=0.0.0.0:{web}"))
        .arg(format!("--cluster.listen-address=127.0.0.1:{gossip}"))
        .arg(format!("--cluster.advertise-address=127.0.0.1:{gossip}"))
        .arg(format!("--cluster.peer=127.0.0.1:{peer}"))
        .arg(format!(
            "--cluster.peer-timeout={}ms",
            PEER_TIMEOUT.as_millis()
        ))
        .stdout(Stdio::null())
        .stderr(log);
    Proc::spawn(cmd)
}

/// Waits until both Alertmanagers see a cluster of two.
fn cluster_ready(ns: &Netns, dir: &TempDir) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for (web, _) in AM {
        loop {
            let status = http(&ns.path(), web, "GET", "/api/v2/status", None).ok();
            let ready = status.as_ref().is_some_and(|(code, body)| {
                let v: Value = serde_json::from_str(body).unwrap_or_default();
                *code == 200
                    && v["cluster"]["status"] == "ready"
                    && v["cluster"]["peers"].as_array().map_or(0, Vec::len) == 2
            });
            if ready {
                break;
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = (0..2)
                    .map(|n| {
                        std::fs::read_to_string(dir.path().join(format!("am{n}.log")))
                            .unwrap_or_default()
                    })
                    .collect();
                panic!("no Alertmanager cluster of two in 30 s: {status:?}\n{logs:?}");
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

fn collector(ns: &Netns, iface: &str) -> Collector {
    let ams: Vec<String> = AM
        .iter()
        .map(|(web, _)| format!("http://{H_ADDR}:{web}"))
        .collect();
    let c = Collector::start(
        HB,
        ns,
        &[
            "--iface",
            iface,
            "--timeout",
            "2s",
            "--sweep",
            "250ms",
            "--alertmanager",
            &ams[0],
            "--alertmanager",
            &ams[1],
            "--alert-resend",
            "2s",
        ],
    );
    let (first, _) = c.wait_for(Duration::from_secs(10), |v| v["event"] == "summary");
    assert!(first.is_some(), "collector printed no summary");
    c
}

/// A host beating to both collectors from `NET.host`.
fn beat(h: &Netns, host: u8) -> Proc {
    let mut cmd = h.command(HB).unwrap();
    cmd.args([
        "beat",
        "--server",
        A_ADDR,
        "--server",
        B_ADDR,
        "--period",
        "200ms",
        "--bind",
        &format!("{NET}.{host}"),
    ]);
    Proc::spawn(cmd)
}

/// Waits until `c` has reported every host of `hosts` new.
fn sees(c: &Collector, hosts: &[u8]) {
    let mut left: Vec<String> = hosts.iter().map(|h| format!("{NET}.{h}")).collect();
    let (all, seen) = c.wait_for(Duration::from_secs(10), |v| {
        left.retain(|h| !is_event(v, "new", h));
        left.is_empty()
    });
    assert!(all.is_some(), "no `new` for {left:?}; saw {seen:?}");
}

#[test]
fn an_ha_pair_gives_one_notification_per_outage() {
    // Declared first, dropped last: every process below goes before the
    // namespaces (and their veths) are deleted, on failure too.
    let h = Netns::for_test("hah");
    let a = Netns::for_test("haa");
    let b = Netns::for_test("hab");
    let dir = TempDir::new("ha");
    for (ns, iface, peer, addr) in [
        (&a, "hbhaa0", "hbhaa1", A_ADDR),
        (&b, "hbhab0", "hbhab1", B_ADDR),
    ] {
        ip(&[
            "link", "add", iface, "netns", &ns.name, "type", "veth", "peer", "name", peer, "netns",
            &h.name,
        ])
        .unwrap();
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", iface])
            .unwrap();
        ns.ip(&["link", "set", iface, "up"]).unwrap();
    }
    h.ip(&["link", "add", "br0", "type", "bridge"]).unwrap();
    for peer in ["hbhaa1", "hbhab1"] {
        h.ip(&["link", "set", peer, "master", "br0"]).unwrap();
        h.ip(&["link", "set", peer, "up"]).unwrap();
    }
    h.ip(&["link", "set", "br0", "up"]).unwrap();
    for host in [H_ADDR, "198.18.47.2", "198.18.47.3", "198.18.47.5"] {
        h.ip(&["addr", "add", &format!("{host}/24"), "dev", "br0"])
            .unwrap();
    }

    let hook = Webhook::start(&h);
    let mut ams: Vec<Proc> = (0..2).map(|n| alertmanager(&h, &dir, n, &hook)).collect();
    cluster_ready(&h, &dir);
    let ca = collector(&a, "hbhaa0");
    let mut cb = collector(&b, "hbhab0");
    let mut beats: Vec<Option<Proc>> = [2, 3, 5].iter().map(|&n| Some(beat(&h, n))).collect();
    sees(&ca, &[2, 3, 5]);
    sees(&cb, &[2, 3, 5]);

    // The longest a second notification could take: group_wait, then the
    // second member's wait, with slack for gossip and a loaded machine.
    let settle = PEER_TIMEOUT * 3 + Duration::from_secs(2);

    // .2 stops: both collectors alert both Alertmanagers; one notification.
    beats[0] = None;
    let notes = outage(&hook, "198.18.47.2", Duration::from_secs(20), settle);
    assert_eq!(notes.len(), 1, "notifications of one outage: {notes:#?}");
    // And in it one alert: the two collectors' alerts are the same alert
    // (the same labels), not two grouped together.
    assert_eq!(
        notes[0]["alerts"].as_array().map(Vec::len),
        Some(1),
        "{notes:#?}"
    );

    // Collector B killed: .3's outage still notified, once.
    let _ = cb.proc.child.kill();
    let _ = cb.proc.child.wait();
    beats[1] = None;
    let notes = outage(&hook, "198.18.47.3", Duration::from_secs(20), settle);
    assert_eq!(notes.len(), 1, "with one collector: {notes:#?}");

    // The first Alertmanager killed too: .5's outage is still delivered,
    // once.
    let mut first = ams.remove(0);
    let _ = first.child.kill();
    let _ = first.child.wait();
    beats[2] = None;
    let notes = outage(&hook, "198.18.47.5", Duration::from_secs(30), settle);
    assert_eq!(notes.len(), 1, "with one Alertmanager: {notes:#?}");
    drop(ca);
}
