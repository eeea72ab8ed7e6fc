//! Upgrading from a collector of map layout 5 loses no host and reports
//! nothing that did not happen (docs/operations.md, "Upgrading across map
//! layouts"): the pins a layout-5 collector left (made here by
//! `hb_testkit::layout5` from that layout's definition: real maps, pinned)
//! are carried over to this build's table by the next `hb run`. Hosts its
//! output was told about are not `new` again, silent ones stay silent until
//! they beat (then `recovered`), alive ones that stop go `silent` a timeout
//! after their last heartbeat, a host that stopped while no collector ran
//! is `silent` at once, replay state holds, and the layout-5 pins are gone.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use hb_common::{AuthSlot, Counter, HostKey};
use hb_testkit::{
    collector::Proc,
    control::{self, Log},
    layout5::{self, Slot, Told},
    netns::Link,
    program::clock_ns,
};

/// The binary under test.
const HB: &str = env!("CARGO_BIN_EXE_hb");

// Longer than a start takes on a loaded 2-core machine: the hosts the
// fixture stamps are alive until their heartbeats reach the new program.
const TIMEOUT: Duration = Duration::from_secs(10);
const SWEEP: &str = "200ms";
const KEY_HEX: &str = "8f1e6a3b5c7d9e0f11223344556677aa\n";
const SIGNED_ID: u64 = 0x77;
const NET: &str = "198.18.11";
const SECOND: u64 = 1_000_000_000;

/// Removes what the collector pinned and its state file, and the key
/// file's directory, however the test ends.
struct Cleanup {
    pins: PathBuf,
    state: PathBuf,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pins);
        let _ = std::fs::remove_file(&self.state);
        let _ = std::fs::remove_file(self.state.with_extension("fleet"));
        let _ = std::fs::remove_file(self.state.with_extension("lock"));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn addr(host: u8) -> String {
    format!("{NET}.{host}")
}

fn key_of(host: u8) -> HostKey {
    HostKey::from_ipv4([198, 18, 11, host])
}

fn host(key: HostKey, last_seen_ns: u64, beats: u64, told: Told) -> Slot {
    Slot::Host {
        key,
        last_seen_ns,
        beats,
        auth: None,
        told,
    }
}

/// The pid of a process that has exited: the layout-5 collector's.
fn gone_pid() -> u32 {
    let mut c = std::process::Command::new("true").spawn().unwrap();
    c.wait().unwrap();
    c.id()
}

fn is_host(v: &serde_json::Value, event: &str, host: &str) -> bool {
    v["event"] == event && v["host"] == host && v["host_id"].is_null()
}

fn is_signed(v: &serde_json::Value, event: &str) -> bool {
    v["event"] == event && v["host_id"] == format!("{SIGNED_ID:016x}")
}

/// After SIGKILL or a crash of the layout-5 collector whose link was lost
/// (or a start on pins alone): nothing records meanwhile.
#[test]
fn a_layout5_table_is_carried_over_with_no_host_lost_and_no_spurious_event() {
    carried_over("migr", false);
}

/// After SIGUSR2: layout 5's own program (as built then) still records
/// into its maps through the pinned link, until the new one replaces it.
#[test]
fn a_layout5_program_recording_is_taken_over_with_its_table() {
    carried_over("migp", true);
}

fn carried_over(tag: &str, old_program: bool) {
    let link = Link::for_test_on(tag, NET, &[2, 3, 4, 5]);
    let iface = link.a_if.clone();
    let (pins, state) = control::pins(&link.a, &iface);
    let dir = std::env::temp_dir().join(format!("hb-{tag}-{}", std::process::id()));
    let _cleanup = Cleanup {
        pins: pins.clone(),
        state: state.clone(),
        dir: dir.clone(),
    };
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("fleet.key");
    std::fs::write(&key_file, KEY_HEX).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    // What a layout-5 collector left: its output was told of .2, .4 and
    // the signed host (alive), .3 and .50 (silent), .60 (alive; it stopped
    // beating 30 s ago, while no collector ran); .70 was recorded after
    // its last sweep (never told); slot 5's host was being forgotten and
    // slot 7 was freed.
    hb_userspace::xdp::ensure_bpffs().unwrap();
    let now = clock_ns(libc::CLOCK_MONOTONIC);
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut counters = [0; layout5::COUNTERS];
    counters[Counter::Heartbeat as usize] = 1000;
    counters[Counter::NewHost as usize] = 9;
    counters[Counter::NotIp as usize] = 55;
    let table = layout5::Table {
        capacity: 100,
        auth: true,
        slots: vec![
            host(key_of(2), now, 40, Told::Alive),
            host(key_of(3), now - 60 * SECOND, 7, Told::Silent),
            host(key_of(4), now, 30, Told::Alive),
            host(key_of(50), now - 90 * SECOND, 3, Told::Silent),
            Slot::Host {
                key: HostKey::from_host_id(SIGNED_ID),
                last_seen_ns: now,
                beats: 12,
                // Its client's clock ran an hour ahead on its last run:
                // the heartbeats of a client with a right clock are
                // replays until then.
                auth: Some(AuthSlot {
                    seq: (unix + 3600) << 32 | 11,
                    lost: 4,
                    addr: key_of(2),
                }),
                told: Told::Alive,
            },
            Slot::Forgotten,
            host(key_of(60), now - 30 * SECOND, 9, Told::Alive),
            Slot::Free,
            host(key_of(70), now, 1, Told::Nothing),
        ],
        last_sweep_ns: now - SECOND / 5,
        counters,
    };
    table.pin(&pins.join("layout-5"));
    layout5::write_state(&state, gone_pid(), 43278, 3000, 100, "optional");
    // What a start stopped before its take-over left: discarded.
    let staging = pins.join(format!(
        "layout-{}-migrating",
        hb_userspace::xdp::LAYOUT_VERSION
    ));
    std::fs::create_dir_all(staging.join("leftover")).unwrap();
    if old_program {
        let (dir, at, name) = (pins.join("layout-5"), pins.join("link"), iface.clone());
        let key = hb_userspace::parse_key(KEY_HEX.as_bytes()).unwrap();
        link.a
            .within(move || layout5::attach_program(&dir, 100, &name, &at, Some(key)))
            .unwrap();
    }

    // The clients beat on; .4 stops later.
    let beat = |from: u8, extra: &[&str]| {
        let mut cmd = link.b.command(HB).unwrap();
        cmd.args(["beat", "--server", &addr(1), "--period", "200ms"])
            .args(["--bind", &addr(from)])
            .args(extra);
        Proc::spawn(cmd)
    };
    let _b2 = beat(2, &[]);
    let _b3 = beat(3, &[]);
    let mut b4 = beat(4, &[]);
    let key_arg = key_file.to_str().unwrap().to_owned();
    let id = format!("{SIGNED_ID:#x}");
    let _signed = beat(2, &["--key-file", &key_arg, "--host-id", &id]);

    let log = Log::new(tag);
    let timeout = format!("{}s", TIMEOUT.as_secs());
    let args = [
        "--iface",
        iface.as_str(),
        "--timeout",
        &timeout,
        "--sweep",
        SWEEP,
        "--max-hosts",
        "100",
        "--key-file",
        &key_arg,
    ];
    let t = Instant::now();
    let (c, mut seen) = control::start_logged(HB, &link.a, &args, &log);
    eprintln!("{tag}: first summary {:?} after the start", t.elapsed());
    let first = seen.last().unwrap().clone();

    // .3 beats again: recovered (maybe by the first sweep already).
    if !seen.iter().any(|v| is_host(v, "recovered", &addr(3))) {
        let (rec, more) = c.wait_for(Duration::from_secs(5), |v| {
            is_host(v, "recovered", &addr(3))
        });
        seen.extend(more);
        seen.push(
            rec.unwrap_or_else(|| panic!(".3 never recovered: {seen:?}"))
                .1,
        );
    }

    // A host never seen before takes a freed slot (5 or 7), not a
    // never-used one: the allocator stays at 9.
    let _b5 = beat(5, &[]);
    if !seen.iter().any(|v| is_host(v, "new", &addr(5))) {
        let (new, more) = c.wait_for(Duration::from_secs(5), |v| is_host(v, "new", &addr(5)));
        seen.extend(more);
        seen.push(new.unwrap_or_else(|| panic!(".5 never new: {seen:?}")).1);
    }

    // .4 stops: silent a timeout after its last heartbeat.
    std::thread::sleep(Duration::from_secs(1));
    let stopped = Instant::now();
    b4.terminate();
    let (sil, more) = c.wait_for(TIMEOUT + Duration::from_secs(3), |v| {
        is_host(v, "silent", &addr(4))
    });
    seen.extend(more);
    let (at, sil) = sil.unwrap_or_else(|| panic!(".4 never silent: {seen:?}"));
    seen.push(sil.clone());
    let after = at - stopped;
    assert!(
        after + Duration::from_millis(300) >= TIMEOUT && after <= TIMEOUT + Duration::from_secs(2),
        ".4 silent {after:?} after it stopped: {sil}"
    );
    // A little more: nothing else may happen.
    seen.extend(c.collect(Duration::from_secs(1)));
    let status = control::status(HB, &link.a, &iface);

    let lines = serde_json::Value::from(seen.clone());
    // No migrated host is new; the one never told is, once.
    for h in [2, 3, 4, 50, 60] {
        assert!(
            !seen
                .iter()
                .any(|v| v["event"] == "new" && v["host"] == addr(h)),
            "{} reported new: {lines}",
            addr(h)
        );
    }
    assert!(!seen.iter().any(|v| is_signed(v, "new")), "{lines}");
    let mut news: Vec<_> = seen
        .iter()
        .filter(|v| v["event"] == "new")
        .map(|v| v["host"].as_str().unwrap_or_default().to_owned())
        .collect();
    news.sort();
    assert_eq!(news, [addr(5), addr(70)], "{lines}");
    // The first sweep knew every host the output had been told of.
    assert_eq!(first["hosts"], 7, "first summary: {first}");
    // .2 beat all along: nothing to report.
    assert!(
        !seen
            .iter()
            .any(|v| v["host"] == addr(2) && v["host_id"].is_null()),
        "{lines}"
    );
    // .3 was silent: recovered, not silent again.
    assert!(
        !seen.iter().any(|v| is_host(v, "silent", &addr(3))),
        "{lines}"
    );
    // .50 stays silent without a word.
    assert!(!seen.iter().any(|v| v["host"] == addr(50)), "{lines}");
    // .60's last heartbeat was carried over: silent at once, for 30 s.
    let s60 = seen
        .iter()
        .find(|v| is_host(v, "silent", &addr(60)))
        .unwrap_or_else(|| panic!(".60 never silent: {lines}"));
    let ms = s60["silent_for_ms"].as_u64().unwrap();
    assert!((29_000..30_000 + 15_000).contains(&ms), "{s60}");
    // The signed host's replay state was carried over: its client's
    // heartbeats are refused as replays, so it goes silent.
    assert!(seen.iter().any(|v| is_signed(v, "silent")), "{lines}");
    assert!(control::packets(&status, "replayed") > 0, "{status}");

    // `hb status` sees the carried-over table: the counters went on from
    // layout 5's, .50 and .60 are among the silent hosts.
    assert!(control::packets(&status, "heartbeat") > 1000, "{status}");
    assert!(control::packets(&status, "not_ip") >= 55, "{status}");
    assert_eq!(
        status["collector"]["layout"],
        hb_userspace::xdp::LAYOUT_VERSION,
        "{status}"
    );
    let silent: Vec<String> = status["silent_hosts"]["hosts"]
        .as_array()
        .unwrap_or_else(|| panic!("{status}"))
        .iter()
        .map(|h| h["host"].as_str().unwrap_or_default().to_owned())
        .collect();
    for h in [50, 60, 4] {
        assert!(
            silent.contains(&addr(h)),
            "{} not silent: {status}",
            addr(h)
        );
    }
    assert_eq!(status["hosts"], 8, "{status}");
    assert_eq!(status["table_used"], 9, "{status}");
    // Said once, in the log; the layout-5 pins are gone.
    let err = log.read();
    if old_program {
        assert!(
            err.contains("took over the program attached"),
            "not taken over:\n{err}"
        );
    }
    assert!(
        err.contains("migrated 7 hosts from layout 5"),
        "no migration logged:\n{err}"
    );
    assert!(!err.contains("reported as new"), "{err}");
    assert!(
        err.contains("left by an interrupted migration, removed (the next migration starts over)"),
        "{err}"
    );
    assert!(!staging.exists(), "{} left", staging.display());
    let ours = format!("layout-{}", hb_userspace::xdp::LAYOUT_VERSION);
    assert!(!pins.join("layout-5").exists(), "layout-5 pins left");
    assert!(pins.join(&ours).is_dir(), "no {ours} pins");
    if old_program {
        return;
    }
    // A migration stopped after its take-over, before it removed
    // layout-5/: the next start removes that and carries on from this
    // layout's table, migrating nothing.
    let mut c = c;
    control::signal(&c.proc.child, libc::SIGUSR2);
    assert_eq!(
        control::wait_exit(&mut c.proc.child, Duration::from_secs(10)),
        Some(0)
    );
    table.pin(&pins.join("layout-5"));
    let log = Log::new(&format!("{tag}2"));
    let (c, seen) = control::start_logged(HB, &link.a, &args, &log);
    let err = log.read();
    assert!(
        err.contains(
            "left by an interrupted migration, removed (its hosts are in this layout's table)"
        ),
        "{err}"
    );
    assert!(
        !err.contains("migrated") && !err.contains("reported as new"),
        "{err}"
    );
    assert!(!pins.join("layout-5").exists(), "layout-5 pins left");
    assert!(!seen.iter().any(|v| v["event"] == "new"), "{seen:?}");
    assert_eq!(seen.last().unwrap()["hosts"], 8, "{seen:?}");
    drop(c);
}

/// Pins under `layout-5/` that are not layout 5's maps are never read as
/// them: replaced, with the reason, as pins of any other layout are.
#[test]
fn what_is_not_layout5_is_replaced_with_the_reason() {
    let link = Link::for_test_on("migx", NET, &[2]);
    let iface = link.a_if.clone();
    let (pins, state) = control::pins(&link.a, &iface);
    let _cleanup = Cleanup {
        pins: pins.clone(),
        state: state.clone(),
        dir: std::env::temp_dir().join(format!("hb-migx-{}", std::process::id())),
    };
    hb_userspace::xdp::ensure_bpffs().unwrap();
    // Layout 5's directory with a map of the wrong kind in it.
    let old = pins.join("layout-5");
    layout5::Table {
        capacity: 64,
        auth: false,
        slots: vec![host(
            key_of(2),
            clock_ns(libc::CLOCK_MONOTONIC),
            1,
            Told::Alive,
        )],
        last_sweep_ns: clock_ns(libc::CLOCK_MONOTONIC),
        counters: [0; layout5::COUNTERS],
    }
    .pin(&old);
    std::fs::remove_file(old.join("HB_BEATS")).unwrap();
    // An array of 16-byte values (BPF_MAP_TYPE_ARRAY), not of counts.
    drop(layout5::create(&old, "HB_BEATS", 2, 4, 16, 64, 1 << 10));
    let _b = {
        let mut cmd = link.b.command(HB).unwrap();
        cmd.args(["beat", "--server", &addr(1), "--period", "200ms"])
            .args(["--bind", &addr(2)]);
        Proc::spawn(cmd)
    };
    let log = Log::new("migx");
    let args = [
        "--iface",
        iface.as_str(),
        "--sweep",
        SWEEP,
        "--max-hosts",
        "64",
    ];
    let (c, seen) = control::start_logged(HB, &link.a, &args, &log);
    if !seen.iter().any(|v| is_host(v, "new", &addr(2))) {
        let (new, seen) = c.wait_for(Duration::from_secs(5), |v| is_host(v, "new", &addr(2)));
        assert!(new.is_some(), "{seen:?}");
    }
    let err = log.read();
    assert!(
        err.contains("cannot be migrated") && err.contains("HB_BEATS is not layout 5's"),
        "{err}"
    );
    assert!(
        err.contains("the hosts it knew will be reported as new"),
        "{err}"
    );
    assert!(!old.exists(), "layout-5 kept");
    let ours = format!("layout-{}", hb_userspace::xdp::LAYOUT_VERSION);
    assert!(pins.join(ours).is_dir());
    drop(c);
}

/// At fleet scale: a full layout-5 table of 2^20 hosts (a tenth of them
/// told silent) is carried over whole, with not one `new` line; how long
/// the start takes, against a start from no pins, is printed (see
/// docs/operations.md, "Upgrading across map layouts"). Slow (the fixture makes 4M map updates): run with
/// `cargo xtask test -p hb-userspace --test migrate -- --ignored`.
#[test]
#[ignore]
fn a_million_hosts_are_carried_over_whole() {
    const N: u32 = 1 << 20;
    let link = Link::for_test_on("migm", "198.18.13", &[2]);
    let iface = link.a_if.clone();
    let (pins, state) = control::pins(&link.a, &iface);
    let _cleanup = Cleanup {
        pins: pins.clone(),
        state: state.clone(),
        dir: std::env::temp_dir().join(format!("hb-migrate-m-{}", std::process::id())),
    };
    let max = N.to_string();
    let args = [
        "--iface",
        iface.as_str(),
        "--timeout",
        "60s",
        "--sweep",
        "1s",
        "--max-hosts",
        max.as_str(),
    ];
    // A start from no pins, for comparison; SIGTERM removes its pins.
    let log = Log::new("migrate-m0");
    let t = Instant::now();
    let (mut c, _) = control::start_logged(HB, &link.a, &args, &log);
    let fresh = t.elapsed();
    assert_eq!(c.proc.terminate(), Some(0));
    assert!(!pins.exists(), "pins left after SIGTERM");

    hb_userspace::xdp::ensure_bpffs().unwrap();
    let now = clock_ns(libc::CLOCK_MONOTONIC);
    let slots = (0..N)
        .map(|i| {
            let [_, a, b, c] = i.to_be_bytes();
            let silent = i % 10 == 0;
            host(
                HostKey::from_ipv4([10, a, b, c]),
                if silent {
                    now - 120 * SECOND
                } else {
                    now - u64::from(i % 1000) * 1_000_000
                },
                5,
                if silent { Told::Silent } else { Told::Alive },
            )
        })
        .collect();
    let made = Instant::now();
    layout5::Table {
        capacity: N,
        auth: false,
        slots,
        last_sweep_ns: now,
        counters: [0; layout5::COUNTERS],
    }
    .pin(&pins.join("layout-5"));
    layout5::write_state(&state, gone_pid(), 43278, 60_000, N, "off");
    eprintln!("fixture: {N} hosts pinned in {:?}", made.elapsed());

    let log = Log::new("migrate-m1");
    let t = Instant::now();
    let (c, seen) = control::start_logged(HB, &link.a, &args, &log);
    let migrating = t.elapsed();
    let err = log.read();
    assert!(
        err.contains(&format!("migrated {N} hosts from layout 5")),
        "{err}"
    );
    assert!(
        !seen.iter().any(|v| v["event"] == "new"),
        "new lines after the migration"
    );
    let first = seen.last().unwrap();
    assert_eq!(first["hosts"], N, "{first}");
    assert_eq!(first["silent"], N / 10 + 1, "{first}");
    assert!(!pins.join("layout-5").exists());
    eprintln!("start to first summary: {fresh:?} from no pins, {migrating:?} migrating {N} hosts");
    drop(c);
}
