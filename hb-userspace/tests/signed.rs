//! Signed heartbeats end to end: `hb beat --key-file` clients in one
//! namespace, `hb run --key-file --require-auth` attached in another, a bare
//! `hb beat` that must not be recorded; and bad key files, which must stop
//! both commands with one line and leave nothing attached.

use std::{
    net::UdpSocket,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hb_common::auth;
use hb_testkit::{
    collector::{Collector, Proc, get_metrics, is_event},
    netns::{Link, Netns},
};

/// The binary under test.
const HB: &str = env!("CARGO_BIN_EXE_hb");

const TIMEOUT: Duration = Duration::from_secs(2);
const KEY_HEX: &str = "8f1e6a3b5c7d9e0f11223344556677aa\n";
const METRICS_PORT: u16 = 9744;

/// A directory for key files, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("hb-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    fn file(&self, name: &str, content: &[u8], mode: u32) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn key() -> [u8; 16] {
    hb_userspace::parse_key(KEY_HEX.as_bytes()).unwrap()
}

fn beat(link: &Link, from: &str, extra: &[&str]) -> Proc {
    let mut cmd = link.b.command(HB).unwrap();
    cmd.args([
        "beat",
        "--server",
        "198.18.4.1",
        "--period",
        "200ms",
        "--bind",
        from,
    ])
    .args(extra);
    Proc::spawn(cmd)
}

fn metrics(ns: &Netns) -> String {
    get_metrics(ns, METRICS_PORT)
}

fn sample(scrape: &prometheus_parse::Scrape, name: &str, label: (&str, &str)) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: {other:?}"),
        })
}

#[test]
fn signed_clients_are_recorded_and_bare_ones_ignored() {
    let dir = TempDir::new("signed");
    let key_file = dir.file("fleet.key", KEY_HEX.as_bytes(), 0o600);
    let key_arg = key_file.to_str().unwrap();
    let link = Link::for_test("auth");
    link.a
        .ip(&["addr", "add", "198.18.4.1/24", "dev", &link.a_if])
        .unwrap();
    for a in [
        "198.18.4.2/24",
        "198.18.4.3/24",
        "198.18.4.4/24",
        "198.18.4.5/24",
    ] {
        link.b.ip(&["addr", "add", a, "dev", &link.b_if]).unwrap();
    }
    let listen = format!("127.0.0.1:{METRICS_PORT}");
    let timeout = format!("{}ms", TIMEOUT.as_millis());
    let mut collector = Collector::start(
        HB,
        &link.a,
        &[
            "--iface",
            &link.a_if,
            "--timeout",
            &timeout,
            "--sweep",
            "250ms",
            "--max-hosts",
            "1024",
            "--key-file",
            key_arg,
            "--require-auth",
            "--metrics-listen",
            &listen,
            "--metrics-silent-hosts",
            "10",
        ],
    );
    let (first, _) = collector.wait_for(Duration::from_secs(10), |v| v["event"] == "summary");
    assert!(first.is_some(), "collector printed no summary");

    // A: the default host id; B: an explicit one; C: bare PyHB.
    let _a = beat(&link, "198.18.4.2", &["--key-file", key_arg]);
    let mut b = beat(
        &link,
        "198.18.4.3",
        &["--key-file", key_arg, "--host-id", "0x2a"],
    );
    let _c = beat(&link, "198.18.4.4", &[]);
    let (default_id, _) = hb_userspace::default_host_id().unwrap();
    let default_id = format!("{default_id:016x}");
    let mut missing = vec![
        ("198.18.4.2", default_id.as_str()),
        ("198.18.4.3", "000000000000002a"),
    ];
    let (all, seen) = collector.wait_for(Duration::from_secs(6), |v| {
        missing.retain(|(h, id)| !(is_event(v, "new", h) && v["host_id"] == *id));
        missing.is_empty()
    });
    assert!(
        all.is_some(),
        "no `new` event for {missing:?}; saw {seen:?}"
    );

    // A client whose heartbeats 2, 3 and 4 are lost on the way (sent here
    // with its own numbers, through the real network).
    let tx = link
        .b
        .within(|| UdpSocket::bind("198.18.4.5:0").expect("bind in client namespace"))
        .unwrap();
    let run = (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs())
        << 32;
    for n in [0, 1, 5] {
        tx.send_to(&auth::payload(&key(), 77, run + n), "198.18.4.1:43278")
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }

    // B stops: silent, with its id; the lossy client is silent by then too.
    drop(b);
    let (mut b_silent, mut lossy) = (None, None);
    let (_, mut events) = collector.wait_for(TIMEOUT + Duration::from_secs(3), |v| {
        if is_event(v, "silent", "198.18.4.3") {
            b_silent = Some(v.clone());
        }
        if is_event(v, "silent", "198.18.4.5") {
            lossy = Some(v.clone());
        }
        b_silent.is_some() && lossy.is_some()
    });
    let ev = b_silent.unwrap_or_else(|| panic!("no `silent` for B; saw {events:?}"));
    assert_eq!(ev["host_id"], "000000000000002a");
    assert_eq!(ev["lost"], 0);
    let ev = lossy.unwrap_or_else(|| panic!("no `silent` for the lossy client; saw {events:?}"));
    assert_eq!(ev["host_id"], "000000000000004d");
    assert_eq!(ev["lost"], 3);

    // Restarted (a new run, numbers jump): recovered, not a replay, no loss.
    b = beat(
        &link,
        "198.18.4.3",
        &["--key-file", key_arg, "--host-id", "42"],
    );
    let (rec, seen) = collector.wait_for(Duration::from_secs(4), |v| {
        is_event(v, "recovered", "198.18.4.3")
    });
    events.extend(seen);
    let (_, ev) = rec.unwrap_or_else(|| panic!("no `recovered` for B; saw {events:?}"));
    assert_eq!(ev["lost"], 0);
    events.extend(collector.collect(Duration::from_millis(600)));
    assert!(
        !events.iter().any(|v| v["host"] == "198.18.4.4"),
        "the bare client was recorded: {events:?}"
    );
    let summary = events
        .iter()
        .rev()
        .find(|v| v["event"] == "summary")
        .expect("summaries go on");
    assert_eq!(summary["hosts"], 3, "{summary}");
    assert!(
        summary["packets"]["unauthenticated"].as_u64().unwrap() >= 5,
        "{summary}"
    );
    assert_eq!(summary["packets"]["replayed"], 0, "{summary}");
    assert_eq!(summary["packets"]["forged"], 0, "{summary}");

    // Metrics: the new outcomes, the loss total, ids on per-host series.
    let reply = metrics(&link.a);
    let body = reply.split_once("\r\n\r\n").expect("HTTP reply").1;
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text format");
    let lost = scrape
        .samples
        .iter()
        .find(|s| s.metric == "hb_heartbeats_lost_total")
        .expect("hb_heartbeats_lost_total");
    assert!(
        matches!(lost.value, prometheus_parse::Value::Counter(v) if v == 3.0),
        "{lost:?}"
    );
    assert!(sample(&scrape, "hb_packets_total", ("outcome", "unauthenticated")).unwrap() >= 5.0);
    assert_eq!(
        sample(&scrape, "hb_packets_total", ("outcome", "forged")),
        Some(0.0)
    );
    assert!(
        sample(
            &scrape,
            "hb_host_silent_seconds",
            ("host_id", "000000000000004d")
        )
        .is_some(),
        "{body}"
    );

    // hb status in the collector's namespace names the mode.
    let out = link
        .a
        .command(HB)
        .unwrap()
        .args(["status", "--iface", &link.a_if])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{status}");
    assert!(status.contains("auth required"), "{status}");
    assert!(status.contains("id=000000000000004d, 3 lost"), "{status}");

    drop(b);
    assert_eq!(collector.proc.terminate(), Some(0));
}

/// Runs `hb` with `args` in `ns`; returns (exit code, stderr).
fn hb(ns: Option<&Netns>, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = match ns {
        Some(ns) => ns.command(HB).unwrap(),
        None => Command::new(HB),
    };
    let out = cmd.args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn one_line_error(stderr: &str, path: &Path, fix: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        lines[0].contains(path.to_str().unwrap()),
        "file not named: {stderr}"
    );
    assert!(lines[0].contains(fix), "no fix `{fix}`: {stderr}");
}

#[test]
fn bad_key_files_stop_hb_run_with_nothing_attached() {
    let dir = TempDir::new("badkey");
    let missing = dir.0.join("missing.key");
    let short = dir.file("short.key", b"0123456789abcdef\n", 0o600);
    let not_hex = dir.file("nothex.key", b"0123456789abcdefghijklmnopqrstuv", 0o600);
    let open = dir.file("open.key", KEY_HEX.as_bytes(), 0o644);
    let link = Link::for_test("akey");
    for (file, fix) in [
        (&missing, "head -c 16 /dev/urandom"),
        (&short, "head -c 16 /dev/urandom"),
        (&not_hex, "non-hex"),
        (&open, "chmod 600"),
    ] {
        let (code, err) = hb(
            Some(&link.a),
            &[
                "run",
                "--iface",
                &link.a_if,
                "--key-file",
                file.to_str().unwrap(),
                "--require-auth",
            ],
        );
        assert_eq!(code, Some(1), "{err}");
        one_line_error(&err, file, fix);
    }
    let (code, err) = hb(
        Some(&link.a),
        &["run", "--iface", &link.a_if, "--require-auth"],
    );
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--key-file FILE"), "{err}");

    // Nothing attached, pinned or recorded.
    let out = Command::new("ip")
        .args(["-n", &link.a.name, "link", "show", &link.a_if])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !shown.contains("xdp"),
        "attached: {shown}"
    );
    let left = |dir: &str| {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&format!("{}@", link.a_if)))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    assert!(left("/sys/fs/bpf/hb").is_empty(), "pins left");
    assert!(left("/run/hb").is_empty(), "state file left");
}

#[test]
fn bad_key_files_stop_hb_beat_before_it_sends() {
    let dir = TempDir::new("beatkey");
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let server = rx.local_addr().unwrap().to_string();
    let short = dir.file("short.key", b"abc", 0o600);
    let open = dir.file("open.key", KEY_HEX.as_bytes(), 0o666);
    for (file, fix) in [
        (dir.0.join("missing.key"), "head -c 16 /dev/urandom"),
        (short, "found 3 bytes"),
        (open, "chmod 600"),
    ] {
        let (code, err) = hb(
            None,
            &[
                "beat",
                "--server",
                &server,
                "--count",
                "1",
                "--key-file",
                file.to_str().unwrap(),
            ],
        );
        assert_eq!(code, Some(1), "{err}");
        one_line_error(&err, &file, fix);
    }
    let (code, err) = hb(
        None,
        &[
            "beat",
            "--server",
            &server,
            "--count",
            "1",
            "--host-id",
            "5",
        ],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--key-file"), "{err}");
    let mut buf = [0u8; 64];
    assert!(rx.recv(&mut buf).is_err(), "a heartbeat was sent");
}
