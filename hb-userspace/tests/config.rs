//! The config file and the output options as docs/config.md promises
//! them: `hb check-config` says what is wrong with the line, `hb run
//! --config` takes the file's settings where the command line gives none,
//! `summary_every` spaces the summary lines, `--log-format json` writes
//! JSON lines, and without `--iface` hb watches the default route's
//! interface.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use hb_testkit::{
    collector::{self, Collector, Proc, is_event},
    control::{self, Log, start_logged},
    netns::{Link, Netns},
};

/// The binary under test.
const HB: &str = env!("CARGO_BIN_EXE_hb");

/// A directory of config files, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("hb-config-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `hb ARGS` outside any namespace (nothing is attached): exit code,
/// stdout, stderr.
fn hb(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(HB)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running hb");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check(path: &Path) -> (Option<i32>, String, String) {
    hb(&["check-config", path.to_str().unwrap()])
}

/// The one `error: ` line of `stderr`.
fn one_error(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0]
}

#[test]
fn check_config_accepts_a_good_file_with_a_one_line_summary() {
    let dir = Dir::new("good");
    let file = dir.write(
        "hb.toml",
        "iface = \"eth1\"\ntimeout = \"20s\"\nsweep = \"500ms\"\nsummary_every = \"5m\"\n\
         metrics_listen = \"127.0.0.1:9743\"\n\n[groups.db]\ntimeout = \"60s\"\n",
    );
    let (code, out, err) = check(&file);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("ok"), "{out}");
    assert!(out.contains("eth1") && out.contains("20s"), "{out}");
    assert!(err.is_empty(), "{err}");
}

#[test]
fn check_config_says_what_is_wrong_with_the_line() {
    let dir = Dir::new("bad");
    let cases: &[(&str, &str, &str)] = &[
        // An unknown key (a typo) is an error, not ignored.
        (
            "timeout = \"10s\"\n\nmetrics_lisen = \"127.0.0.1:9743\"\n",
            ":3:1: ",
            "metrics_lisen",
        ),
        // A bad duration names its key.
        ("port = 43278\ntimeout = \"fast\"\n", ":2:11: ", "timeout"),
        (
            "[inventory]\nunknown_hosts = \"drop\"\n",
            ":2:17: ",
            "\"ignore\"",
        ),
        (
            "[groups.web]\ntimeout = \"5\"\n",
            ":2:11: ",
            "groups.web.timeout",
        ),
        ("[groups.web]\ntimout = \"5s\"\n", ":2:1: ", "timout"),
        ("port = 0\n", ":1:8: ", "port"),
        ("sweep = \"2s\"\ntimeout = \"1s\"\n", ":2:1: ", "--timeout"),
        (
            "[groups.web]\ntimeout = \"500ms\"\n",
            ":2:1: ",
            "groups.web.timeout",
        ),
    ];
    for (i, (text, at, what)) in cases.iter().enumerate() {
        let file = dir.write(&format!("bad{i}.toml"), text);
        let (code, out, err) = check(&file);
        assert_eq!(code, Some(1), "{text:?}: {out}{err}");
        assert!(out.is_empty(), "{out}");
        let line = one_error(&err);
        let prefix = format!("error: {}{at}", file.display());
        assert!(
            line.starts_with(&prefix),
            "{text:?}: {line} (expected {prefix})"
        );
        assert!(line.contains(what), "{text:?}: {line}");
    }
    let (code, _, err) = check(&dir.0.join("missing.toml"));
    assert_eq!(code, Some(1));
    assert!(one_error(&err).contains("missing.toml"), "{err}");
}

#[test]
fn the_sample_config_is_valid() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/hb.toml");
    let (code, out, err) = check(&sample);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("ok"), "{out}");
}

/// Needs the inventory loader (the fleet work, `Fleet::load` in
/// track/fleet.rs): until then `Fleet::load` refuses every inventory.
#[test]
fn check_config_reports_a_bad_inventory_address_with_its_csv_line() {
    let dir = Dir::new("inventory");
    dir.write(
        "hosts.csv",
        "address,name,group\n10.0.0.1,web-1,web\n10.0.0.300,web-2,web\n",
    );
    let file = dir.write("hb.toml", "[inventory]\nfile = \"hosts.csv\"\n");
    let (code, _, err) = check(&file);
    assert_eq!(code, Some(1), "{err}");
    let line = one_error(&err);
    let csv = dir.0.join("hosts.csv");
    assert!(
        line.contains(&format!("{}:3", csv.display())),
        "the CSV file and line 3: {line}"
    );
    assert!(line.contains("10.0.0.300"), "{line}");
    // And a good inventory passes.
    dir.write("hosts.csv", "address,name,group\n10.0.0.1,web-1,web\n");
    let (code, out, err) = check(&file);
    assert_eq!(code, Some(0), "{out}{err}");
}

#[test]
fn hb_run_refuses_a_bad_config_file_before_attaching_anything() {
    let dir = Dir::new("runbad");
    let file = dir.write("hb.toml", "iface = \"lo\"\nbogus = 1\n");
    let (code, _, err) = hb(&["run", "--config", file.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    let line = one_error(&err);
    assert!(
        line.starts_with(&format!("error: {}:2:1: ", file.display())) && line.contains("bogus"),
        "{line}"
    );
}

const NET: &str = "198.18.120";
const SERVER: &str = "198.18.120.1";

fn beat(link: &Link, host: u8) -> Proc {
    collector::beat(HB, link, &format!("{NET}.{host}"), SERVER, "100ms")
}

#[test]
fn command_line_options_override_the_file() {
    let link = Link::for_test_on("cfgover", NET, &[2]);
    let dir = Dir::new("override");
    // The file: a wrong interface and a long timeout, which the command
    // line overrides; a 200 ms sweep, which it does not give.
    let file = dir.write(
        "hb.toml",
        "iface = \"nosuch0\"\ntimeout = \"5s\"\nsweep = \"200ms\"\n",
    );
    let log = Log::new("cfgover");
    // One summary line per second: the harness (no --sweep here) expects
    // one a second.
    let (c, _) = start_logged(
        HB,
        &link.a,
        &[
            "--config",
            file.to_str().unwrap(),
            "--iface",
            &link.a_if,
            "--timeout",
            "1s",
            "--summary-every",
            "1s",
        ],
        &log,
    );
    let b = beat(&link, 2);
    let (new, seen) = c.wait_for(Duration::from_secs(5), |v| {
        is_event(v, "new", "198.18.120.2")
    });
    assert!(new.is_some(), "{seen:?}\n{}", log.read());
    thread_sleep(Duration::from_millis(500));
    drop(b);
    let stopped = Instant::now();
    let (silent, seen) = c.wait_for(Duration::from_secs(6), |v| {
        is_event(v, "silent", "198.18.120.2")
    });
    let (at, v) = silent.unwrap_or_else(|| panic!("no silent: {seen:?}"));
    // The command line's 1 s, not the file's 5 s (the file's 200 ms sweep
    // and slack for a loaded machine).
    let after = at - stopped;
    assert!(
        after < Duration::from_millis(2500),
        "silent {after:?} after the host stopped: {v}"
    );
    let silent_for = v["silent_for_ms"].as_u64().unwrap();
    assert!((1000..2000).contains(&silent_for), "{v}");
    // The file's sweep applies: the stderr's first line says so.
    let stderr = log.read();
    assert!(stderr.contains("sweep every 200ms"), "{stderr}");
    assert!(
        stderr.contains(&link.a_if) && !stderr.contains("nosuch0"),
        "{stderr}"
    );
}

fn thread_sleep(d: Duration) {
    std::thread::sleep(d);
}

/// Lines of `hb run ARGS --format json` in `ns` (stdout read in a thread)
/// for `window`; the collector is stopped after.
fn lines_for(
    ns: &Netns,
    args: &[&str],
    window: Duration,
    beat: impl FnOnce() -> Proc,
) -> Vec<(Instant, serde_json::Value)> {
    let mut cmd = ns.command(HB).unwrap();
    cmd.arg("run")
        .args(args)
        .args(["--format", "json"])
        .stdout(Stdio::piped());
    // Not `Collector::spawn`: these collectors write few summary lines, or
    // none, by design.
    let c = Collector::spawn_sweeping(cmd, Duration::from_secs(3600));
    let _b = beat();
    let start = Instant::now();
    let mut out = Vec::new();
    while start.elapsed() < window {
        let (line, _) = c.wait_for(window.saturating_sub(start.elapsed()), |_| true);
        match line {
            Some(l) => out.push(l),
            None => break,
        }
    }
    out
}

#[test]
fn summary_every_spaces_the_summary_lines() {
    let link = Link::for_test_on("cfgsum", NET, &[2]);
    let run = |every: &str| {
        lines_for(
            &link.a,
            &[
                "--iface",
                &link.a_if,
                "--timeout",
                "1s",
                "--sweep",
                "200ms",
                "--summary-every",
                every,
            ],
            Duration::from_millis(4200),
            || beat(&link, 2),
        )
    };
    // 0: no summary line at all, events still.
    let lines = run("0");
    assert!(
        lines
            .iter()
            .any(|(_, v)| is_event(v, "new", "198.18.120.2")),
        "{lines:?}"
    );
    assert!(
        lines.iter().all(|(_, v)| v["event"] != "summary"),
        "{lines:?}"
    );
    // 1s at a 200 ms sweep: one line a second (not five), the first at the
    // first sweep; each counts the heartbeats since the previous line.
    let lines = run("1s");
    let summaries: Vec<&(Instant, serde_json::Value)> = lines
        .iter()
        .filter(|(_, v)| v["event"] == "summary")
        .collect();
    assert!(
        (3..=5).contains(&summaries.len()),
        "{} summaries in 4.2 s: {summaries:?}",
        summaries.len()
    );
    for pair in summaries.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(gap >= Duration::from_millis(700), "summaries {gap:?} apart");
    }
    // A client beating every 100 ms: about 10 a line, where one sweep
    // holds 2.
    let later = &summaries[2].1;
    let beats = later["heartbeats"].as_u64().unwrap();
    assert!((7..=13).contains(&beats), "{later}");
}

#[test]
fn log_format_json_writes_json_lines() {
    let link = Link::for_test_on("cfgjson", NET, &[2]);
    let log = Log::new("cfgjson");
    let (c, _) = start_logged(
        HB,
        &link.a,
        &[
            "--iface",
            &link.a_if,
            "--sweep",
            "200ms",
            "--log-format",
            "json",
            "--log-level",
            "debug",
        ],
        &log,
    );
    drop(c);
    let text = log.read();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 2, "{text}");
    let mut levels = Vec::new();
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["ts", "level", "target", "message"] {
            assert!(v[key].is_string(), "no {key}: {line}");
        }
        assert!(
            control::timestamp_ms(v["ts"].as_str().unwrap()).is_some(),
            "{line}"
        );
        levels.push(v["level"].as_str().unwrap().to_owned());
    }
    assert!(levels.iter().any(|l| l == "INFO"), "{text}");
    // --log-level debug lets debug lines through.
    assert!(levels.iter().any(|l| l == "DEBUG"), "{text}");
}

#[test]
fn log_level_warn_hides_info() {
    let link = Link::for_test_on("cfgwarn", NET, &[2]);
    let log = Log::new("cfgwarn");
    let (c, _) = start_logged(
        HB,
        &link.a,
        &[
            "--iface",
            &link.a_if,
            "--sweep",
            "200ms",
            "--log-level",
            "warn",
        ],
        &log,
    );
    drop(c);
    let text = log.read();
    assert!(!text.contains("INFO"), "{text}");
}

#[test]
fn without_iface_hb_watches_the_default_route_interface() {
    let link = Link::for_test_on("cfgroute", NET, &[2]);
    link.a
        .ip(&["route", "add", "default", "via", "198.18.120.2"])
        .unwrap();
    let log = Log::new("cfgroute");
    let (c, _) = start_logged(HB, &link.a, &["--sweep", "200ms"], &log);
    let first = log.read().lines().next().unwrap_or_default().to_owned();
    assert!(
        first.contains(&format!("watching {}", link.a_if)) && first.contains("default route"),
        "first log line: {first}"
    );
    let _b = beat(&link, 2);
    let (new, seen) = c.wait_for(Duration::from_secs(5), |v| {
        is_event(v, "new", "198.18.120.2")
    });
    assert!(new.is_some(), "{seen:?}\n{}", log.read());
}

#[test]
fn without_iface_or_default_route_hb_asks_for_iface() {
    let ns = Netns::for_test("cfgnoroute");
    let out = control::hb(HB, &ns, &["run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line = one_error(&err);
    assert!(
        line.contains("--iface") && line.contains("default route"),
        "{line}"
    );
}
