//! SIGHUP re-reads the config file (docs/config.md, "Reload"): a changed
//! timeout takes effect without a restart and without spurious events; an
//! invalid file, or a change that needs the program re-attached, is
//! reported and the running configuration kept; without a config file
//! there is nothing to reload. The harness fails any test whose collector
//! stops sweeping meanwhile.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use hb_testkit::{
    collector::{self, Collector, Proc, is_event},
    control::{self, Log, signal, start_logged},
    netns::Link,
};

/// The binary under test.
const HB: &str = env!("CARGO_BIN_EXE_hb");

const NET: &str = "198.18.121";
const SERVER: &str = "198.18.121.1";
const HOST: &str = "198.18.121.2";
const OTHER: &str = "198.18.121.3";

fn beat(link: &Link, host: &str) -> Proc {
    collector::beat(HB, link, host, SERVER, "100ms")
}

/// A config file, removed on drop.
struct File(PathBuf);

impl File {
    fn new(tag: &str, text: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("hb-reload-{tag}-{}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }

    fn write(&self, text: &str) {
        // Whole or not at all, as an operator's editor or a config tool
        // writes it.
        let tmp = self.0.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.0).unwrap();
    }

    fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The file's settings, with `timeout` and anything `extra`.
fn config(timeout: &str, extra: &str) -> String {
    format!("timeout = \"{timeout}\"\nsweep = \"200ms\"\nsummary_every = \"200ms\"\n{extra}")
}

fn start(link: &Link, file: &File, log: &Log) -> Collector {
    // `--sweep` again on the command line, for the harness to read (the
    // same as the file's).
    let (c, _) = start_logged(
        HB,
        &link.a,
        &[
            "--config",
            file.arg(),
            "--iface",
            &link.a_if,
            "--sweep",
            "200ms",
        ],
        log,
    );
    c
}

/// Reads the collector's lines until `log` has a line containing
/// `needle` (after `from` bytes); returns the lines read meanwhile.
fn wait_log(c: &Collector, log: &Log, from: usize, needle: &str) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        let text = log.read();
        if let Some(line) = text
            .get(from..)
            .and_then(|t| t.lines().find(|l| l.contains(needle)))
        {
            eprintln!("log: {line}");
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {needle:?}; log:\n{text}"
        );
        seen.extend(c.collect(Duration::from_millis(100)));
    }
}

/// Host events (not summaries) among `lines`.
fn host_events(lines: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    lines.iter().filter(|v| v["event"] != "summary").collect()
}

/// Stops the host's client; returns how long after that the collector
/// reported it silent, and its `silent_for_ms`.
fn silent_after_stop(c: &Collector, client: Proc, host: &str) -> (Duration, u64) {
    drop(client);
    let stopped = Instant::now();
    let (silent, seen) = c.wait_for(Duration::from_secs(8), |v| is_event(v, "silent", host));
    let (at, v) = silent.unwrap_or_else(|| panic!("{host} never silent: {seen:?}"));
    assert!(
        host_events(&seen).is_empty(),
        "events before the silent: {seen:?}"
    );
    (at - stopped, v["silent_for_ms"].as_u64().unwrap())
}

fn wait_new(c: &Collector, host: &str) {
    let (new, seen) = c.wait_for(Duration::from_secs(5), |v| is_event(v, "new", host));
    assert!(new.is_some(), "no new for {host}: {seen:?}");
}

#[test]
fn sighup_adopts_a_new_timeout_without_a_restart_or_spurious_events() {
    let link = Link::for_test_on("reltime", NET, &[2]);
    let file = File::new("timeout", &config("6s", ""));
    let log = Log::new("reltime");
    let mut c = start(&link, &file, &log);
    let pid = c.proc.child.id();
    let client = beat(&link, HOST);
    wait_new(&c, HOST);
    let timeout_ms = || control::status(HB, &link.a, &link.a_if)["collector"]["timeout_ms"].clone();
    assert_eq!(timeout_ms(), 6000);

    file.write(&config("1s", ""));
    let from = log.read().len();
    signal(&c.proc.child, libc::SIGHUP);
    let seen = wait_log(&c, &log, from, "reloaded");
    let text = log.read();
    assert!(text[from..].contains("timeout 6s -> 1s"), "{text}");
    // Nothing reported again, nothing new: the host beats on.
    let mut seen = seen;
    seen.extend(c.collect(Duration::from_secs(1)));
    assert!(host_events(&seen).is_empty(), "spurious events: {seen:?}");

    // The new timeout: silent about 1 s after the last heartbeat, not 6.
    let (after, silent_for) = silent_after_stop(&c, client, HOST);
    assert!(
        after < Duration::from_millis(2500),
        "silent after {after:?}"
    );
    assert!(
        (1000..1800).contains(&silent_for),
        "silent_for_ms {silent_for}"
    );
    // `hb status` judges by the new timeout too.
    assert_eq!(timeout_ms(), 1000);
    assert_eq!(control::status(HB, &link.a, &link.a_if)["silent"], 1);
    // The same process all along.
    assert_eq!(c.proc.child.id(), pid);
    assert!(c.proc.child.try_wait().unwrap().is_none(), "hb exited");
    assert_eq!(c.proc.terminate(), Some(0));
}

#[test]
fn an_invalid_file_at_reload_keeps_the_running_configuration() {
    let link = Link::for_test_on("relbad", NET, &[2]);
    let file = File::new("bad", &config("1s", ""));
    let log = Log::new("relbad");
    let c = start(&link, &file, &log);
    let client = beat(&link, HOST);
    wait_new(&c, HOST);

    // A longer timeout, and a typo: nothing of it is adopted.
    file.write(&config("6s", "metrics_lisen = \"127.0.0.1:9743\"\n"));
    let from = log.read().len();
    signal(&c.proc.child, libc::SIGHUP);
    let seen = wait_log(&c, &log, from, "reload failed");
    let text = log.read();
    let line = text[from..]
        .lines()
        .find(|l| l.contains("reload failed"))
        .unwrap();
    assert!(
        line.contains(&format!("{}:4:1", file.arg())) && line.contains("metrics_lisen"),
        "{line}"
    );
    assert!(host_events(&seen).is_empty(), "spurious events: {seen:?}");
    let (after, silent_for) = silent_after_stop(&c, client, HOST);
    assert!(
        after < Duration::from_millis(2500),
        "silent after {after:?}"
    );
    assert!(
        (1000..1800).contains(&silent_for),
        "silent_for_ms {silent_for}"
    );
}

#[test]
fn a_change_that_needs_reattaching_is_refused() {
    let link = Link::for_test_on("relfix", NET, &[2, 3]);
    let file = File::new("fixed", &config("1s", ""));
    let log = Log::new("relfix");
    let c = start(&link, &file, &log);
    let client = beat(&link, HOST);
    wait_new(&c, HOST);

    // Another port (and a longer timeout): refused whole.
    file.write(&config("6s", "port = 5000\n"));
    let from = log.read().len();
    signal(&c.proc.child, libc::SIGHUP);
    let seen = wait_log(&c, &log, from, "reload refused");
    let text = log.read();
    let line = text[from..]
        .lines()
        .find(|l| l.contains("reload refused"))
        .unwrap();
    assert!(line.contains("port"), "{line}");
    assert!(!line.contains("timeout"), "timeout is reloadable: {line}");
    assert!(host_events(&seen).is_empty(), "spurious events: {seen:?}");
    // Still on the old port, with the old timeout.
    let _other = beat(&link, OTHER);
    wait_new(&c, OTHER);
    let (after, _) = silent_after_stop(&c, client, HOST);
    assert!(
        after < Duration::from_millis(2500),
        "silent after {after:?}"
    );
}

#[test]
fn without_a_config_file_sighup_has_nothing_to_reload() {
    let link = Link::for_test_on("relnone", NET, &[2]);
    let log = Log::new("relnone");
    let (c, _) = start_logged(
        HB,
        &link.a,
        &["--iface", &link.a_if, "--timeout", "1s", "--sweep", "200ms"],
        &log,
    );
    let from = log.read().len();
    signal(&c.proc.child, libc::SIGHUP);
    let seen = wait_log(&c, &log, from, "nothing to reload");
    assert!(host_events(&seen).is_empty(), "{seen:?}");
    // And it runs on.
    let _b = beat(&link, HOST);
    wait_new(&c, HOST);
}
