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
    collector::{Collector, Metrics, Proc, is_event, scrape},
    netns::{Link, Netns},
};
use siphasher::sip::SipHasher24;

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

fn metrics(ns: &Netns) -> Metrics {
    scrape(ns, METRICS_PORT)
}

/// The host id `hb beat` should derive on this machine, by the rule of
/// docs/wire-format.md (SipHash-2-4 under `hb host id v1\0\0\0` of the
/// trimmed machine id, else of the host name), computed with the reference
/// `siphasher` crate, not with hb's own code.
fn expected_default_host_id() -> String {
    let text = ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .find(|id| !id.trim().is_empty())
        .unwrap_or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap());
    let id = SipHasher24::new_with_key(b"hb host id v1\0\0\0").hash(text.trim().as_bytes());
    format!("{id:016x}")
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
    let default_id = expected_default_host_id();
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
    let m = metrics(&link.a);
    let lost = m
        .samples("hb_heartbeats_lost_total", &[])
        .map(|s| s.value.clone())
        .collect::<Vec<_>>();
    assert!(
        matches!(lost[..], [prometheus_parse::Value::Counter(v)] if v == 3.0),
        "{lost:?}"
    );
    assert!(m.value("hb_packets_total", &[("outcome", "unauthenticated")]) >= 5.0);
    assert_eq!(m.value("hb_packets_total", &[("outcome", "forged")]), 0.0);
    assert_eq!(m.value("hb_packets_total", &[("outcome", "replayed")]), 0.0);
    // The lossy client is silent; B recovered, so it has no series.
    assert!(m.value("hb_host_silent_seconds", &[("host_id", "000000000000004d")]) >= 2.0);
    assert_eq!(
        m.samples("hb_host_silent_seconds", &[("host_id", "000000000000002a")])
            .count(),
        0
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

    // Nothing attached or pinned: no XDP program on the interface, and
    // neither pins nor a state file where the README puts them (outside
    // the host's namespace `<iface>` is `<iface>@netns-<inode>`).
    let ino = link.a.inode().unwrap();
    let pins = PathBuf::from(format!("/sys/fs/bpf/hb/{}@netns-{ino}", link.a_if));
    let state = PathBuf::from(format!("/run/hb/{}@netns-{ino}.json", link.a_if));
    let nothing_left = || {
        assert_eq!(link.a.xdp_prog(&link.a_if).unwrap(), None, "attached");
        assert!(!pins.exists(), "pins left in {pins:?}");
        assert!(!state.exists(), "state file left: {state:?}");
    };
    nothing_left();

    // The same checks see a collector that starts with a good key file:
    // they can fail.
    let good = dir.file("good.key", KEY_HEX.as_bytes(), 0o600);
    let mut c = Collector::start(
        HB,
        &link.a,
        &[
            "--iface",
            &link.a_if,
            "--key-file",
            good.to_str().unwrap(),
            "--require-auth",
            "--timeout",
            "1s",
            "--sweep",
            "200ms",
        ],
    );
    let (first, _) = c.wait_for(Duration::from_secs(10), |v| v["event"] == "summary");
    assert!(first.is_some(), "collector printed no summary");
    assert!(
        link.a.xdp_prog(&link.a_if).unwrap().is_some(),
        "not attached"
    );
    assert!(pins.join("link").exists(), "no pinned link in {pins:?}");
    assert!(state.exists(), "no state file {state:?}");
    assert_eq!(c.proc.terminate(), Some(0));
    nothing_left();
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
    // Group bits alone are refused too, and so is a file of another user
    // (the tests run as root, hb as root: uid 0 is "the one running hb").
    let group = dir.file("group.key", KEY_HEX.as_bytes(), 0o640);
    let theirs = dir.file("theirs.key", KEY_HEX.as_bytes(), 0o600);
    std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
    for (file, fix) in [
        (dir.0.join("missing.key"), "head -c 16 /dev/urandom"),
        (short, "found 3 bytes"),
        (open, "chmod 600"),
        (group, "chmod 600"),
        (theirs, "chown 0"),
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
