//! What docs/wire-format.md and docs/operations.md promise about signed
//! heartbeats, checked on a real collector (and, for the judgement of one
//! datagram, on the real program through BPF_PROG_TEST_RUN): replay state
//! survives SIGUSR2 and SIGKILL but not SIGTERM; a reserved field other
//! than zero is `forged` even under a valid MAC; a client whose clock
//! steps back is `replayed` until its clock passes its previous run, then
//! accepted without a restart; and with
//! `--pass-heartbeats` forged, replayed and unauthenticated datagrams reach
//! sockets while being counted. MACs come from the `siphasher` crate (the
//! kit's `signed_with`), not from hb's code.

use std::{
    net::{SocketAddr, UdpSocket},
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aya::programs::{TestRun as _, TestRunOptions};
use hb_common::{
    Counter, HostKey,
    net::{XDP_DROP, XDP_PASS},
};
use hb_testkit::{
    collector::{Collector, Proc},
    control::{self, Log, packets, signal, start_logged, wait_exit},
    frames::{PORT, ipv4_udp, signed_with},
    netns::Link,
    program as kit,
};
use hb_userspace::xdp::{self, AuthSettings};
use siphasher::sip::SipHasher24;

/// The binary under test.
const HB: &str = env!("CARGO_BIN_EXE_hb");

const KEY: [u8; 16] = *b"guarantees: key!";
/// A client run (the Unix second it started), as `hb beat` numbers them.
const RUN: u64 = 1_800_000_000 << 32;
const SERVER: &str = "198.18.40.1";

/// A key file (mode 600), removed on drop.
struct KeyFile(PathBuf);

impl KeyFile {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("hb-{tag}-{}.key", std::process::id()));
        let hex: String = KEY.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&p, format!("{hex}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        Self(p)
    }

    fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn signed(host_id: u64, seq: u64) -> Vec<u8> {
    signed_with(&KEY, 1, host_id, seq)
}

/// A version 1 payload with reserved bytes `reserved` and a valid MAC over
/// exactly these bytes.
fn signed_reserved(host_id: u64, seq: u64, reserved: [u8; 2]) -> Vec<u8> {
    let mut p = signed(host_id, seq);
    p[6..8].copy_from_slice(&reserved);
    let mac = SipHasher24::new_with_key(&KEY).hash(&p[..24]);
    p[24..].copy_from_slice(&mac.to_le_bytes());
    p
}

fn server(port: u16) -> SocketAddr {
    SocketAddr::from(([198, 18, 40, 1], port))
}

fn setup(tag: &str) -> Link {
    Link::for_test_on(tag, "198.18.40", &[2])
}

/// A UDP socket on the client's address.
fn client(link: &Link) -> UdpSocket {
    link.b
        .within(|| UdpSocket::bind("198.18.40.2:0").unwrap())
        .unwrap()
}

/// `hb run` with the key, a timeout no test here waits out, and `extra`.
fn start(
    link: &Link,
    key: &KeyFile,
    log: &Log,
    extra: &[&str],
) -> (Collector, Vec<serde_json::Value>) {
    let mut args = vec![
        "--iface",
        link.a_if.as_str(),
        "--timeout",
        "20s",
        "--sweep",
        "200ms",
        "--key-file",
        key.arg(),
    ];
    args.extend_from_slice(extra);
    start_logged(HB, &link.a, &args, log)
}

/// The first summary whose counters reach `want` (each at least), within
/// 4 s, with the lines seen on the way; panics if none does.
fn summary_reaching(
    c: &Collector,
    want: &[(&str, u64)],
) -> (serde_json::Value, Vec<serde_json::Value>) {
    let mut last = None;
    let (found, seen) = c.wait_for(Duration::from_secs(4), |v| {
        if v["event"] != "summary" {
            return false;
        }
        last = Some(v.clone());
        want.iter().all(|(k, n)| packets(v, k) >= *n)
    });
    let v = found.unwrap_or_else(|| panic!("no summary reached {want:?}; last {last:?}"));
    (v.1, seen)
}

/// The counters of `summary` named in `want`, as `want` lists them.
fn counts(summary: &serde_json::Value, want: &[(&str, u64)]) -> Vec<(String, u64)> {
    want.iter()
        .map(|(k, _)| ((*k).to_owned(), packets(summary, k)))
        .collect()
}

fn expected(want: &[(&str, u64)]) -> Vec<(String, u64)> {
    want.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
}

fn host_events(lines: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    lines.iter().filter(|v| v["event"] != "summary").collect()
}

/// Waits for a `new` event for `host_id` (16 hex digits).
fn wait_new_id(c: &Collector, host_id: &str) -> Vec<serde_json::Value> {
    let (new, seen) = c.wait_for(Duration::from_secs(4), |v| {
        v["event"] == "new" && v["host_id"] == host_id
    });
    assert!(
        new.is_some(),
        "no `new` for host id {host_id}; saw {seen:?}"
    );
    seen
}

#[test]
fn replay_state_survives_sigusr2_and_sigkill_not_sigterm() {
    let link = setup("replay");
    let key = KeyFile::new("replay");
    let log = Log::new("replay");
    let tx = client(&link);
    let send = |p: &[u8]| {
        tx.send_to(p, server(PORT)).unwrap();
    };
    let first_beat = signed(0x51, RUN + 1);

    let (mut c, _) = start(&link, &key, &log, &[]);
    send(&first_beat);
    wait_new_id(&c, "0000000000000051");

    // SIGUSR2, then SIGKILL: each next collector refuses the replay.
    for (stop, seq) in [(libc::SIGUSR2, RUN + 2), (libc::SIGKILL, RUN + 3)] {
        signal(&c.proc.child, stop);
        let code = wait_exit(&mut c.proc.child, Duration::from_secs(10));
        if stop == libc::SIGUSR2 {
            assert_eq!(code, Some(0), "{}", log.read());
        }
        let (next, lines) = start(&link, &key, &log, &[]);
        c = next;
        let before = lines
            .iter()
            .rev()
            .find(|v| v["event"] == "summary")
            .unwrap();
        let (beats, replayed) = (packets(before, "heartbeat"), packets(before, "replayed"));
        send(&first_beat);
        let want = [("replayed", replayed + 1), ("heartbeat", beats)];
        let (s, seen) = summary_reaching(&c, &want);
        assert_eq!(
            counts(&s, &want),
            expected(&want),
            "after signal {stop}: {s}"
        );
        // A newer one is accepted, and the host is not new again.
        send(&signed(0x51, seq));
        let want = [("replayed", replayed + 1), ("heartbeat", beats + 1)];
        let (s, more) = summary_reaching(&c, &want);
        assert_eq!(counts(&s, &want), expected(&want), "{s}");
        let events: Vec<_> = [lines, seen, more].concat();
        assert!(host_events(&events).is_empty(), "{events:?}");
    }

    // SIGTERM: the replay state starts afresh, the old heartbeat is taken.
    assert_eq!(c.proc.terminate(), Some(0));
    let (c, _) = start(&link, &key, &log, &[]);
    send(&first_beat);
    wait_new_id(&c, "0000000000000051");
    let want = [("replayed", 0), ("heartbeat", 1)];
    let (s, _) = summary_reaching(&c, &want);
    assert_eq!(counts(&s, &want), expected(&want), "{s}");
}

/// Runs the program on one frame; returns its verdict.
fn run(loaded: &mut xdp::Loaded, frame: &[u8]) -> u32 {
    xdp::program(&mut loaded.ebpf)
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::new()
        })
        .expect("BPF_PROG_TEST_RUN")
        .return_value
}

#[test]
fn a_reserved_field_other_than_zero_is_forged() {
    for require in [false, true] {
        let mut loaded = kit::load_auth(64, Some(AuthSettings { key: KEY, require }));
        let src = [198, 18, 40, 2];
        let seq = RUN + 7;
        // Correctly signed, reserved not zero...
        let mut frames: Vec<Vec<u8>> = [[0, 1], [1, 0], [0x80, 0], [0xff, 0xff]]
            .into_iter()
            .map(|r| ipv4_udp(src, PORT, &signed_reserved(3, seq, r)))
            .collect();
        // ...and a valid heartbeat with its reserved bits set on the way.
        for r in [[0, 1], [0x40, 0]] {
            let mut p = signed(3, seq);
            p[6..8].copy_from_slice(&r);
            frames.push(ipv4_udp(src, PORT, &p));
        }
        for f in &frames {
            assert_eq!(run(&mut loaded, f), XDP_DROP, "require {require}");
        }
        let counters = loaded.table.counters().unwrap();
        for c in Counter::ALL {
            let want = if c == Counter::Forged {
                frames.len() as u64
            } else {
                0
            };
            assert_eq!(
                counters[c as usize],
                want,
                "{} (require {require})",
                c.name()
            );
        }
        assert!(loaded.table.is_empty());
        // They moved no replay state: the same number, reserved 0, is taken.
        assert_eq!(
            run(&mut loaded, &ipv4_udp(src, PORT, &signed(3, seq))),
            XDP_DROP
        );
        let counters = loaded.table.counters().unwrap();
        assert_eq!(counters[Counter::Heartbeat as usize], 1);
        assert!(
            loaded
                .table
                .slot(&HostKey::from_host_id(3))
                .is_some_and(|s| loaded.table.last_seq(s) == Some(seq))
        );
    }
    // With --pass-heartbeats it is still counted forged, and passed.
    let loaded = xdp::load_auth(
        xdp::Settings {
            pass_heartbeats: true,
            ..kit::settings(64)
        },
        Some(AuthSettings {
            key: KEY,
            require: false,
        }),
    )
    .unwrap();
    let mut loaded = kit::addressed(loaded);
    let f = ipv4_udp([198, 18, 40, 2], PORT, &signed_reserved(3, RUN, [0, 1]));
    assert_eq!(run(&mut loaded, &f), XDP_PASS);
    assert_eq!(
        loaded.table.counters().unwrap()[Counter::Forged as usize],
        1
    );
    assert!(loaded.table.is_empty());
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

/// `hb beat` with the key as host id 0x77, `count` heartbeats 200 ms
/// apart; waits for it to finish.
fn beat_for(link: &Link, key: &KeyFile, log: &Log, count: u32) {
    let mut cmd = link.b.command(HB).unwrap();
    cmd.args([
        "beat",
        "--server",
        SERVER,
        "--bind",
        "198.18.40.2",
        "--period",
        "200ms",
        "--count",
        &count.to_string(),
        "--key-file",
        key.arg(),
        "--host-id",
        "0x77",
    ])
    .stderr(log.stdio());
    let mut proc = Proc::spawn(cmd);
    // It waits for a fresh second first.
    let code = wait_exit(&mut proc.child, Duration::from_secs(20));
    assert_eq!(code, Some(0), "hb beat: {}", log.read());
}

/// The sum of the summaries' `lost` (each counts since the previous one).
fn lost_in(lines: &[serde_json::Value]) -> u64 {
    lines
        .iter()
        .filter(|v| v["event"] == "summary")
        .map(|v| v["lost"].as_u64().unwrap())
        .sum()
}

#[test]
fn a_client_whose_clock_stepped_back_heals_within_its_run_once_the_clock_passes() {
    let link = setup("stepback");
    let key = KeyFile::new("stepback");
    let log = Log::new("stepback");
    let (c, _) = start(&link, &key, &log, &[]);

    // The client's previous run started at `prev`, 3 s ahead of the clock
    // it has now (the clock stepped back since), and sent 2 heartbeats.
    let prev = unix_now().as_secs() + 3;
    let tx = client(&link);
    for n in 0..2 {
        tx.send_to(&signed(0x77, (prev << 32) | n), server(PORT))
            .unwrap();
    }
    let mut lines = wait_new_id(&c, "0000000000000077");

    // Restarted with the earlier clock: `hb beat` numbers from now + 1, so
    // its first heartbeats are refused; one run of 30 heartbeats over 6 s
    // sees its clock pass `prev` and is accepted from then on, without a
    // restart.
    assert!(
        unix_now().as_secs() + 1 < prev,
        "the machine is too slow for this test's margin"
    );
    beat_for(&link, &key, &log, 30);
    let (s, seen) = c.wait_for(Duration::from_secs(4), |v| {
        v["event"] == "summary" && packets(v, "heartbeat") + packets(v, "replayed") == 32
    });
    lines.extend(seen);
    let (_, s) = s.unwrap_or_else(|| panic!("not all 32 heartbeats judged: {lines:?}"));
    let replayed = packets(&s, "replayed");
    let heartbeat = packets(&s, "heartbeat");
    assert!(
        replayed >= 2 && heartbeat > 2,
        "the client did not heal within its run: {s}"
    );
    assert_eq!(packets(&s, "forged"), 0, "{s}");
    assert_eq!(packets(&s, "new_host"), 1, "{s}");
    // Loss counts the client's heartbeats that were not accepted, by its
    // count: the refused ones numbered 0.., the first accepted one carries
    // on from there, above the previous run's last count (1).
    assert_eq!(lost_in(&lines), replayed - 2, "{s}");
    // No host event after its `new`: the host never looked new or silent.
    assert!(host_events(&lines).is_empty(), "{lines:?}");
}

/// `hb forget` clears one host id's replay state in the pinned maps while
/// the collector runs: a host shut out by a huge sequence number is
/// accepted again at its next valid heartbeat, and counts no loss from
/// the cleared state; an unknown host id is refused in one line.
#[test]
fn hb_forget_lets_a_host_shut_out_by_a_huge_sequence_number_in_again() {
    let link = setup("forget");
    let key = KeyFile::new("forget");
    let log = Log::new("forget");
    let (c, _) = start(&link, &key, &log, &[]);
    let tx = client(&link);
    let send = |seq| {
        tx.send_to(&signed(0x55, seq), server(PORT)).unwrap();
    };
    send(u64::MAX - 1);
    let mut lines = wait_new_id(&c, "0000000000000055");
    send(RUN + 7);
    let want = [("replayed", 1), ("heartbeat", 1)];
    let (s, seen) = summary_reaching(&c, &want);
    lines.extend(seen);
    assert_eq!(counts(&s, &want), expected(&want), "{s}");

    let out = control::hb(
        HB,
        &link.a,
        &["forget", "--iface", &link.a_if, "--host-id", "0x55"],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    send(RUN + 7);
    send(RUN + 8);
    let want = [("replayed", 1), ("heartbeat", 3), ("forged", 0)];
    let (s, seen) = summary_reaching(&c, &want);
    lines.extend(seen);
    assert_eq!(counts(&s, &want), expected(&want), "{s}");
    assert_eq!(lost_in(&lines), 0, "{lines:?}");
    // Forgotten once: the old number is a replay again only if sent after.
    send(RUN + 8);
    let want = [("replayed", 2)];
    summary_reaching(&c, &want);

    let out = control::hb(
        HB,
        &link.a,
        &["forget", "--iface", &link.a_if, "--host-id", "0x56"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("no signed host with host id 0000000000000056"),
        "{err}"
    );
}

#[test]
fn pass_heartbeats_passes_forged_replayed_and_unauthenticated_ones_counted() {
    let link = setup("passauth");
    let key = KeyFile::new("passauth");
    let log = Log::new("passauth");
    let (c, _) = start(&link, &key, &log, &["--require-auth", "--pass-heartbeats"]);
    let rx = link
        .a
        .within(|| UdpSocket::bind("0.0.0.0:43278").unwrap())
        .unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let tx = client(&link);

    let valid = signed(9, RUN + 1);
    let mut bad_mac = signed(9, RUN + 2);
    bad_mac[31] ^= 1;
    let sent: [(&str, Vec<u8>); 5] = [
        ("valid", valid.clone()),
        ("replayed", valid),
        ("bad MAC", bad_mac),
        ("reserved", signed_reserved(9, RUN + 3, [0, 1])),
        ("bare", b"PyHB".to_vec()),
    ];
    let mut buf = [0u8; 64];
    for (what, payload) in &sent {
        tx.send_to(payload, server(PORT)).unwrap();
        let n = rx
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("the {what} heartbeat did not reach the socket: {e}"));
        assert_eq!(&buf[..n], &payload[..], "{what}");
    }
    let want = [
        ("heartbeat", 1),
        ("new_host", 1),
        ("replayed", 1),
        ("forged", 2),
        ("unauthenticated", 1),
        ("wrong_payload", 0),
    ];
    let (s, seen) = summary_reaching(&c, &want);
    assert_eq!(counts(&s, &want), expected(&want), "{s}");
    // Only the valid one made a host.
    let mut events = seen;
    events.extend(c.collect(Duration::from_millis(500)));
    let hosts = host_events(&events);
    assert!(
        hosts.len() == 1 && hosts[0]["event"] == "new" && hosts[0]["host_id"] == "0000000000000009",
        "{events:?}"
    );
    let status = control::status(HB, &link.a, &link.a_if);
    assert_eq!(status["hosts"], 1, "{status}");
}
